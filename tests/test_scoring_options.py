"""Scoring options per selector (#15): batch_size, draw fixed|fresh and augment on the scoring split, and DARTS-PT's
official decision schedule. Defaults keep earlier results (tests/test_compat.py); these check what each option
changes, that fresh and augmented batches are reproducible, and that bad values are one-line errors."""
import pytest
import torch

from archselect.errors import UserError
from archselect.scoring.evaluator import EvaluatorOptions, MaskedEvaluator, take_batches
from archselect.selection import perturbation as perturbation_mod
from archselect.selection.influence import Influence
from archselect.selection.perturbation import Perturbation, tuning_steps
from archselect.selection.random_paths import RandomPaths
from archselect.selection.shapley import ShapleySelector

from test_evaluator import random_alphas, tiny_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

PT = {"tune_steps": 1, "valid_batches": 1, "update_alpha": "yes"}


def context(workdir=None):
    torch.manual_seed(0)  # the same supernet weights for every run compared
    ctx = tiny_context(workdir=workdir)
    random_alphas(ctx.supernet, seed=3)
    return ctx


def outcome(ctx, options: EvaluatorOptions, limit=None):
    source = options.scoring_source(ctx.valid, ctx.train, ctx.seed)
    ev = MaskedEvaluator(ctx.supernet, take_batches(source, limit), bn=options.bn)
    return ev(ctx.supernet.mixing_weights(detach=True))


def test_batch_size_changes_scores_under_train_mode_bn_only():
    ctx = context()  # 128 validation images, eval batches of 64
    assert EvaluatorOptions().scoring_source(ctx.valid, ctx.train, 0) is ctx.valid  # default: as before
    for bn in ("train", "eval"):
        big, small = (outcome(ctx, EvaluatorOptions(bn=bn, batch_size=b), limit=128 // b) for b in (64, 32))
        assert big.count == small.count == 128
        if bn == "train":  # batch statistics of 64 vs 32 images
            assert big.loss_sum != pytest.approx(small.loss_sum, rel=1e-6)
        else:  # running statistics: the same per-image outputs whatever the batching
            assert big.loss_sum == pytest.approx(small.loss_sum, rel=1e-5) and big.correct == small.correct


def test_fresh_draws_a_seeded_pass_per_candidate_and_fixed_shares_one():
    ctx = context()
    fresh = EvaluatorOptions(draw="fresh", batch_size=16)
    source = fresh.scoring_source(ctx.valid, ctx.train, ctx.seed)
    a, b, again = (fresh.candidate_batches(source, 2, *key) for key in ((0, 0, 1), (0, 0, 2), (0, 0, 1)))
    assert not torch.equal(a[0][0], b[0][0])
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, again))
    fixed = EvaluatorOptions(batch_size=16)
    source = fixed.scoring_source(ctx.valid, ctx.train, ctx.seed)
    a, b = (fixed.candidate_batches(source, 2, *key) for key in ((0, 0, 1), (3, 1, 2)))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))


def test_fresh_perturbation_is_reproducible_differs_from_fixed_and_resumes(tmp_path, monkeypatch):
    opts = {**PT, "draw": "fresh", "batch_size": 32}
    reference = Perturbation(opts).select(context(tmp_path / "a"))
    assert Perturbation(opts).select(context()).scores == reference.scores
    assert Perturbation({**PT, "batch_size": 32}).select(context()).scores != reference.scores
    calls, real = [0], perturbation_mod.FineTuner.run

    def dies_on_third(self, *args):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("killed")
        return real(self, *args)

    ctx = context(tmp_path / "b")
    monkeypatch.setattr(perturbation_mod.FineTuner, "run", dies_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        Perturbation(opts).select(ctx)
    monkeypatch.setattr(perturbation_mod.FineTuner, "run", real)
    resumed = Perturbation(opts).select(ctx)
    assert resumed.details["resumed_after"] == 3 and resumed.scores == reference.scores
    assert (resumed.cost.forward, resumed.cost.images) == (reference.cost.forward, reference.cost.images)


def test_fresh_batches_are_not_memoised_across_candidates():
    """Removing `none` leaves the plans unchanged: free on fixed batches, a pass of its own on fresh ones."""
    fixed = Perturbation({**PT, "tune_steps": 0}).select(context())
    fresh = Perturbation({**PT, "tune_steps": 0, "draw": "fresh"}).select(context())
    assert fresh.cost.forward > fixed.cost.forward
    assert fresh.cost.images == fresh.cost.forward * 64  # one batch of 64 per candidate


def test_augment_changes_scores_deterministically():
    opts = {**PT, "crit": "loss", "augment": True}  # losses: an untrained supernet's accuracies hardly move
    a, b = Perturbation(opts).select(context()), Perturbation(opts).select(context())
    assert a.scores == b.scores
    assert a.scores != Perturbation({**PT, "crit": "loss"}).select(context()).scores
    inf = {"batches": 1, "augment": True}
    assert Influence(inf).select(context()).scores == Influence(inf).select(context()).scores
    assert Influence(inf).select(context()).scores != Influence({"batches": 1}).select(context()).scores


def test_influence_and_random_paths_take_their_own_batch_size_and_draw():
    assert Influence({"batches": 1, "batch_size": 32}).select(context()).scores != \
        Influence({"batches": 1}).select(context()).scores
    paths = {"samples": 6, "valid_batches": 1}
    fresh = RandomPaths({**paths, "draw": "fresh", "batch_size": 32}).select(context())
    assert fresh.scores == RandomPaths({**paths, "draw": "fresh", "batch_size": 32}).select(context()).scores
    assert fresh.scores != RandomPaths({**paths, "batch_size": 32}).select(context()).scores
    assert fresh.cost.images == 6 * 32


def test_shapley_fixed_valid_is_draw_fixed():
    opts = {"permutations": 2, "batch_size": 32}
    old = ShapleySelector({**opts, "fixed_valid": True}).select(context())
    assert ShapleySelector({**opts, "draw": "fixed"}).select(context()).scores == old.scores
    assert ShapleySelector(opts).select(context()).scores != old.scores  # default: fresh per permutation


def test_official_schedule_decides_at_the_official_tuning_epochs():
    gaps = tuning_steps(6, 5, 1, "official", topology=False)  # NB201: 6 edges, proj_intv 5, 1 step per epoch
    assert [sum(gaps[:i + 1]) for i in range(6)] == [0, 5, 10, 15, 20, 24]
    assert tuning_steps(6, 10, 2, "official", topology=False) == [0, 10, 10, 10, 10, 8]
    assert tuning_steps(6, 10, 2, "even", topology=False) == [0] + [10] * 5
    assert tuning_steps(4, 10, 2, "official", topology=True) == [0, 10, 10, 10]  # the DARTS-space code: even
    assert tuning_steps(3, 1, 4, "official", topology=False) == [0, 1, 0]  # never before the previous decision
    ctx = context()  # 96 train images in batches of 32: 3 steps per epoch
    s = Perturbation({**PT, "tune_steps": 4, "schedule": "official"}).select(ctx)
    assert s.details["tune_steps_before"] == [0, 4, 4, 4, 4, 1]
    assert s.cost.backward == 2 * 17  # α + weight step per tuning step


def test_bad_values_are_one_line_errors():
    bad = [(Perturbation, {"draw": "sometimes"}, "draw"), (Perturbation, {"batch_size": 0}, "batch_size"),
           (Perturbation, {"schedule": "weekly"}, "schedule"), (Perturbation, {"augment": "yes"}, "augment"),
           (RandomPaths, {"draw": "new"}, "draw"), (ShapleySelector, {"batch_size": 0}, "batch_size"),
           (Influence, {"batch_size": 0}, "batch_size"), (Influence, {"augment": 1}, "augment")]
    for cls, options, key in bad:
        with pytest.raises(UserError, match=key) as info:
            cls(options)
        assert "\n" not in str(info.value)
