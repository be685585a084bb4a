"""Shapley-NAS: exact Shapley values on a small game, the Monte-Carlo removal estimator against them, the selector on a
planted supernet, kill/resume, and the Shapley search mode end to end through the CLI."""
import itertools
import json
import math

import pytest
import torch
import torch.nn as nn

from archselect.cli import main
from archselect.config import SearchConfig
from archselect.data import ImageSet
from archselect.optimizers.shapley import ShapleySearch, normalised
from archselect.scoring import shapley as shapley_mod
from archselect.selection.base import Cost
from archselect.scoring.evaluator import MaskedEvaluator
from archselect.selection.magnitude import Magnitude
from archselect.selection.shapley import ShapleySelector
from archselect.scoring.shapley import (ShapleyOptions, antithetic_contributions, batch_source, estimate,
                                          exact_shapley, kernel_coalitions, kernel_row, kernel_sizes, permutation,
                                          removal_contributions, stratified_permutation)
from archselect.spaces.nb201 import EDGES, NB201Space
from archselect.supernet import Supernet, weighted_sum

from conftest import tiny_idx_dir
from test_evaluator import random_alphas, tiny_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

PLAYERS = [0, 1, 2, 3]


def game(S: frozenset) -> float:
    """A 4-player game with synergy (0 and 1), redundancy (2 and 3) and a convex size term."""
    v = sum({0: 1.0, 1: 2.0, 2: 0.5, 3: 0.25}[i] for i in S) + 0.3 * len(S) ** 2
    return v + 1.5 * ({0, 1} <= S) - 0.6 * ({2, 3} <= S)


def present_value(present):
    return game(frozenset(i for i, p in enumerate(present) if p))


def test_exact_shapley_is_efficient_and_symmetric():
    phi = exact_shapley(game, PLAYERS)
    assert sum(phi.values()) == pytest.approx(game(frozenset(PLAYERS)) - game(frozenset()))
    # a symmetric game gives equal values; a dummy player gets 0
    sym = exact_shapley(lambda S: float(len(S & {0, 1, 2}) ** 2), PLAYERS)
    assert sym[0] == pytest.approx(sym[1]) == pytest.approx(sym[2]) == pytest.approx(3.0) and sym[3] == 0.0


def each(value):
    """`removal_contributions` asks for a list of coalitions at a time."""
    return lambda coalitions: [value(c) for c in coalitions]


def test_removal_order_over_all_permutations_is_exact():
    rows = [removal_contributions(each(present_value), 4, order, -math.inf).contributions
            for order in itertools.permutations(PLAYERS)]
    mean = torch.tensor(rows, dtype=torch.float64).mean(0)
    phi = exact_shapley(game, PLAYERS)
    assert mean.tolist() == pytest.approx([phi[i] for i in PLAYERS], abs=1e-12)
    for r in rows:  # untruncated, each permutation is itself efficient
        assert sum(r) == pytest.approx(game(frozenset(PLAYERS)) - game(frozenset()))


def test_monte_carlo_converges_to_exact():
    phi = torch.tensor([exact_shapley(game, PLAYERS)[i] for i in PLAYERS], dtype=torch.float64)

    def error(m):
        rows = [removal_contributions(each(present_value), 4, permutation(4, 7, j), -math.inf).contributions
                for j in range(m)]
        return (torch.tensor(rows, dtype=torch.float64).mean(0) - phi).abs().max().item()

    assert error(3000) < 0.05 < error(3)


def exact_vector(value=game):
    phi = exact_shapley(value, PLAYERS)
    return torch.tensor([phi[i] for i in PLAYERS], dtype=torch.float64)


def additive(S: frozenset) -> float:
    return sum({0: 1.0, 1: -2.0, 2: 0.5, 3: 0.25}[i] for i in S) + 3.0


def cubic(S: frozenset) -> float:
    """`game` plus a three-way synergy: the order that one antithetic pair no longer gets exactly."""
    return game(S) + 2.0 * ({0, 1, 2} <= S)


def test_antithetic_pair_is_exact_up_to_pairwise_interactions_and_converges():
    # `game` has only pairwise interactions: each is met once in π and once in reverse(π), so one pair is exact
    for value in (additive, game):
        pair = antithetic_contributions(each(lambda p: value(frozenset(i for i in PLAYERS if p[i]))), 4, [2, 0, 3, 1],
                                        -math.inf)
        assert pair.contributions == pytest.approx(exact_vector(value).tolist(), abs=1e-12) and pair.removed == 8

    def error(m):
        rows = [antithetic_contributions(each(lambda p: cubic(frozenset(i for i in PLAYERS if p[i]))), 4,
                                         permutation(4, 7, j), -math.inf).contributions for j in range(m)]
        return (torch.tensor(rows, dtype=torch.float64).mean(0) - exact_vector(cubic)).abs().max().item()

    assert error(1500) < 0.05 < error(1)
    assert error(24) == pytest.approx(0.0, abs=1e-12) or error(24) < error(1)


def test_stratified_permutations_stratify_each_players_key_and_stay_unbiased():
    n, rows = 6, 8
    orders = [stratified_permutation(n, 3, j, rows) for j in range(rows)]
    assert orders == [stratified_permutation(n, 3, j, rows) for j in range(rows)]  # a pure function of (seed, j, rows)
    assert all(sorted(o) == list(range(n)) for o in orders) and len({tuple(o) for o in orders}) > 1
    # every player is among the first half removed in exactly half the rows up to the jitter of one stratum
    for i in range(n):
        early = sum(o.index(i) < n // 2 for o in orders)
        assert 2 <= early <= 6
    # unbiased: the mean over many independent draws (seeds) of the M-row estimate is the Shapley value

    def estimate_once(seed, value=cubic):
        return torch.tensor([removal_contributions(each(lambda p: value(frozenset(i for i in PLAYERS if p[i]))), 4,
                                                   stratified_permutation(4, seed, j, 4), -math.inf).contributions
                             for j in range(4)], dtype=torch.float64).mean(0)

    mean = torch.stack([estimate_once(seed) for seed in range(600)]).mean(0)
    assert (mean - exact_vector(cubic)).abs().max().item() < 0.05
    # a game where a player's contribution depends on its removal time only: stratification beats independent draws
    def timed(seed, draw):
        rows = [removal_contributions(each(lambda p: float(sum(p) ** 2)), 4, draw(seed, j), -math.inf).contributions
                for j in range(4)]
        return torch.tensor(rows, dtype=torch.float64).mean(0)

    strat = torch.stack([timed(s, lambda s, j: stratified_permutation(4, s, j, 4)) for s in range(200)]).var(0).mean()
    plain = torch.stack([timed(s, lambda s, j: permutation(4, s, j)) for s in range(200)]).var(0).mean()
    assert strat < plain / 2


def all_coalitions(n):
    """Every coalition of size 1 … n−1 with its probability under the Shapley kernel."""
    q = kernel_sizes(n).tolist()
    out = [(c, q[len(c) - 1] / math.comb(n, len(c))) for s in range(1, n) for c in itertools.combinations(range(n), s)]
    return [[i in c for i in range(n)] for c, _ in out], [w for _, w in out]


@pytest.mark.parametrize("value", [game, cubic, additive, lambda S: float(len(S & {0, 1, 2}) ** 2)])
def test_kernel_over_all_coalitions_is_exact(value):
    coalitions, weights = all_coalitions(4)
    assert sum(weights) == pytest.approx(1.0)
    v = [value(frozenset(i for i in PLAYERS if z[i])) for z in coalitions]
    phi = kernel_row(coalitions, v, value(frozenset()), value(frozenset(PLAYERS)), weights)
    assert phi == pytest.approx(exact_vector(value).tolist(), abs=1e-12)


def test_kernel_sampling_is_paired_efficient_and_converges():
    n = 4
    coalitions = kernel_coalitions(n, 7, 0, 6)
    assert coalitions == kernel_coalitions(n, 7, 0, 6) != kernel_coalitions(n, 7, 1, 6)  # a pure function of (seed, j)
    for z, complement in zip(coalitions[::2], coalitions[1::2]):
        assert 1 <= sum(z) <= n - 1 and complement == [not p for p in z]
    # the size distribution is the kernel's: ∝ 1/(s(n−s)) = 1/3, 1/4, 1/3 for n = 4, i.e. 4/11, 3/11, 4/11
    sizes = torch.tensor([sum(z) for j in range(500) for z in kernel_coalitions(n, 3, j, 2)[::2]])
    assert [(sizes == s).float().mean().item() for s in (1, 2, 3)] == pytest.approx([4 / 11, 3 / 11, 4 / 11], abs=0.05)

    def row(j, count=8):
        zs = kernel_coalitions(n, 7, j, count)
        return kernel_row(zs, [present_value(z) for z in zs], game(frozenset()), game(frozenset(PLAYERS)))

    total = game(frozenset(PLAYERS)) - game(frozenset())
    assert all(sum(row(j)) == pytest.approx(total, abs=1e-12) for j in range(20))  # every row is efficient

    def error(m):
        return (torch.tensor([row(j) for j in range(m)], dtype=torch.float64).mean(0) - exact_vector()).abs().max()

    assert error(2000).item() < 0.05 < error(1).item()


@pytest.mark.parametrize("ahead", [1, 2, 3, 10])
def test_truncation_leaves_unreached_players_at_zero(ahead):
    asked = []

    def values(coalitions):
        asked.append(len(coalitions))
        return [float(sum(p)) for p in coalitions]

    out = removal_contributions(values, 4, [2, 0, 3, 1], 0.6, ahead)
    assert out.contributions == [1.0, 0.0, 1.0, 0.0] and out.removed == 2 and out.full == 4.0
    # coalitions are asked for `ahead` at a time, and none after the truncation's batch
    assert asked[:-1] == [ahead] * (len(asked) - 1) and sum(asked) == min(5, ahead * -(-3 // ahead))


# -- a planted supernet: only nor_conv_3x3 on edge 3 (0->3) carries the label ---------------------------------------

class Planted(Supernet):
    """NB201 cell with hand-set ops on 2-channel images. Channel 0 holds the label's sign, channel 1 noise; the
    classifier reads channel 1 of the cell output, which the label reaches only through nor_conv_3x3 on edge 0->3
    (centre weight 40 from channel 0 to channel 1). Every other conv is zero; skip and pooling carry the noise."""

    def __init__(self):
        super().__init__({"cell": EDGES}, NB201Space.op_names, 0.0)
        self.edge_ops = nn.ModuleList()
        for e in range(len(EDGES)):
            c1, c3 = nn.Conv2d(2, 2, 1, bias=False), nn.Conv2d(2, 2, 3, padding=1, bias=False)
            nn.init.zeros_(c1.weight)
            nn.init.zeros_(c3.weight)
            if EDGES[e] == (0, 3):
                with torch.no_grad():
                    c3.weight[1, 0, 1, 1] = 40.0
            self.edge_ops.append(nn.ModuleDict({"skip_connect": nn.Identity(), "nor_conv_1x1": c1, "nor_conv_3x3": c3,
                                                "avg_pool_3x3": nn.AvgPool2d(3, 1, 1, count_include_pad=False)}))
        with torch.no_grad():
            self.alphas["cell"][3, 1] = 3.0  # α says skip_connect on 0->3

    def stem(self, x):
        return x

    @property
    def num_layers(self):
        return 1

    def layer_cell_type(self, i):
        return "cell"

    def run_layer(self, i, x, plans):
        nodes = [x]
        for dst in range(1, 4):
            terms = []
            for e, (src, d) in enumerate(EDGES):
                if d == dst:
                    y = weighted_sum([(w, self.edge_ops[e][self.op_names[k]](nodes[src])) for k, w in plans["cell"][e]])
                    if y is not None:
                        terms.append((1.0, y))
            nodes.append(weighted_sum(terms) if terms else torch.zeros_like(x))
        return nodes[-1]

    def head(self, x):
        z = x[:, 1].mean(dim=(1, 2))
        return torch.stack([-z, z], dim=1)


def planted_set(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n,), generator=g)
    noise = torch.rand(n, generator=g) - 0.5
    x = torch.empty(n, 2, 4, 4)
    x[:, 0] = (128 + 100 * (2 * sign - 1)).float()[:, None, None]
    x[:, 1] = (128 + 127 * noise)[:, None, None]
    return ImageSet(x.round().to(torch.uint8), sign.long(), 2, (0.5, 0.5), (0.5, 0.5), "planted", False)


def planted_context(workdir=None):
    return tiny_context(supernet=Planted(), workdir=workdir, train_set=planted_set(64, 0),
                        valid_set=planted_set(256, 1), eval_batch=128)


@pytest.mark.parametrize("estimator", ["permutation", "antithetic", "kernel", "stratified"])
def test_shapley_finds_the_planted_op_that_alpha_misses(estimator):
    ctx = planted_context()
    assert Magnitude().select(ctx).architecture.cell("cell").op_on(0, 3) == "skip_connect"
    s = ShapleySelector({"permutations": 8, "batch_size": 128, "estimator": estimator}).select(ctx)
    scores = torch.tensor(s.scores["cell"])
    assert divmod(int(scores.argmax()), scores.shape[1]) == (3, 3)
    assert scores[3, 3] > 0.3
    if estimator != "kernel":  # `none` is a null player; kernel's regression only gets it to 0 in expectation
        assert scores[:, 0].abs().max() == 0.0
    assert s.architecture.cell("cell").op_on(0, 3) == "nor_conv_3x3"
    assert torch.tensor(s.stderr["cell"]).shape == (6, 5)


def test_estimate_options():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    o = ShapleyOptions(permutations=3, batch_size=32, threshold=0.0)
    est = estimate(ctx.supernet, batch_source(ctx.valid, o, 0), o, 0, Cost())
    assert est.contributions.shape == (3, 30) and est.removed == [30, 30, 30]
    mean, std = est.values("mean"), est.contributions.std(0, unbiased=False)
    assert torch.equal(est.values("mean-std"), mean - std)
    # untruncated, each permutation's contributions sum to v(all) − v(none) on its own batch
    zero = {"cell": torch.zeros(6, 5)}
    for j, (row, full) in enumerate(zip(est.contributions, est.full)):
        batches = shapley_mod.fresh_batches(batch_source(ctx.valid, o, 0), j, 1)
        empty = MaskedEvaluator(ctx.supernet, batches)(zero).accuracy
        assert row.sum().item() == pytest.approx(full - empty, abs=1e-12)
    with pytest.raises(Exception, match="estimate"):
        ShapleySelector({"estimate": "median"})
    for bad, match in (({"estimator": "owen"}, "estimator"), ({"estimator": "antithetic", "permutations": 3},
                       "even"), ({"estimator": "kernel", "coalitions": 5}, "coalitions")):
        with pytest.raises(Exception, match=match):
            ShapleySelector(bad)


@pytest.mark.parametrize("estimator", ["antithetic", "kernel", "stratified"])
def test_estimators_on_a_supernet_are_efficient_per_row(estimator):
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    o = ShapleyOptions(permutations=4, batch_size=32, threshold=0.0, estimator=estimator)
    cost = Cost()
    est = estimate(ctx.supernet, batch_source(ctx.valid, o, 0), o, 0, cost)
    rows = 2 if estimator == "antithetic" else 4
    assert est.contributions.shape == (rows, 30) and est.stderr().shape == (30,)
    assert est.removed == ([60] * 2 if estimator == "antithetic" else [30] * 4)  # kernel: coalitions per batch
    passes = {"antithetic": (2 * 31 - 1) * 2, "kernel": 32 * 4, "stratified": 31 * 4}[estimator]
    assert 0 < cost.forward <= passes
    zero = {"cell": torch.zeros(6, 5)}
    for j, (row, full) in enumerate(zip(est.contributions, est.full)):
        batches = shapley_mod.fresh_batches(batch_source(ctx.valid, o, 0), j, 1)
        empty = MaskedEvaluator(ctx.supernet, batches)(zero).accuracy
        assert row.sum().item() == pytest.approx(full - empty, abs=1e-12)


@pytest.mark.parametrize("options, killed_at, resumed_after", [
    ({"estimator": "permutation"}, 3, 2), ({"estimator": "antithetic"}, 2, 1), ({"estimator": "stratified"}, 3, 2),
    ({"estimator": "kernel"}, 3, 2),
    ({"permutations": 16, "pack": 2}, 10, 8)])  # units of 4 x 2 rows: killed in the second, after its first row
def test_kill_and_resume_gives_identical_estimates(tmp_path, monkeypatch, options, killed_at, resumed_after):
    opts = {"permutations": 4, "batch_size": 32, "coalitions": 10, "pack": 1, **options}
    ctx = tiny_context(workdir=tmp_path / "a")
    random_alphas(ctx.supernet)
    reference = ShapleySelector(opts).select(ctx)

    ctx.workdir = tmp_path / "b"
    calls, real = [0], shapley_mod.row_steps

    def dies(*args):  # when row `killed_at` starts
        calls[0] += 1
        if calls[0] == killed_at:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(shapley_mod, "row_steps", dies)
    with pytest.raises(RuntimeError, match="killed"):
        ShapleySelector(opts).select(ctx)
    monkeypatch.setattr(shapley_mod, "row_steps", real)
    resumed = ShapleySelector(opts).select(ctx)
    assert resumed.details["resumed_after"] == resumed_after
    assert resumed.scores == reference.scores and resumed.stderr == reference.stderr
    assert resumed.cost.forward == reference.cost.forward and resumed.cost.passes == reference.cost.passes
    assert not list((tmp_path / "b").glob("shapley-progress-*"))  # progress removed once complete


# -- the search mode --------------------------------------------------------------------------------------------------

def test_alpha_update_normalises_and_keeps_momentum():
    phi = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    z = normalised(phi, torch.ones(2, 2, dtype=torch.bool))
    assert z.mean().item() == pytest.approx(0.0) and z.std().item() == pytest.approx(1.0)
    assert torch.equal(normalised(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool)), torch.zeros(2, 2))

    ctx = tiny_context()
    cfg = SearchConfig(optimizer="shapley", epochs=4, options={"permutations": 2, "batch_size": 32})
    opt = ShapleySearch(ctx.supernet, cfg, len(ctx.train))
    assert opt.warmup == 2 and opt.start_epoch(1, ctx.valid) is None
    alpha, m0 = ctx.supernet.alphas["cell"].detach().clone(), opt.m["cell"].clone()
    info = opt.start_epoch(2, ctx.valid)
    assert info["shapley_forward"] > 0
    m1 = opt.m["cell"]
    assert torch.allclose(ctx.supernet.alphas["cell"].detach(), alpha + 0.1 * m1)
    assert not torch.equal(m1, 0.8 * m0)
    other = ShapleySearch(tiny_context().supernet, cfg, len(ctx.train))
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.m["cell"], m1) and other.cost == opt.cost


@pytest.mark.parametrize("estimator", ["antithetic", "kernel", "stratified"])
def test_search_mode_takes_each_estimator(estimator):
    ctx = tiny_context()
    cfg = SearchConfig(optimizer="shapley", epochs=2, options={"permutations": 2, "batch_size": 32,
                                                               "estimator": estimator, "coalitions": 6})
    opt = ShapleySearch(ctx.supernet, cfg, len(ctx.train))
    alpha = ctx.supernet.alphas["cell"].detach().clone()
    info = opt.start_epoch(1, ctx.valid)
    assert 0 < info["shapley_forward"] <= {"antithetic": 2 * 31 - 1, "kernel": 2 * 8, "stratified": 2 * 31}[estimator]
    assert not torch.equal(ctx.supernet.alphas["cell"].detach(), alpha)


def test_shapley_search_and_selectors_through_the_cli(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["search", "--out", str(run), f"data.data_dir={data}", "space.C=4", "space.N=1", "data.batch_size=32",
                 "search.epochs=2", "threads=1", "search.optimizer=shapley", "search.options.warmup_epochs=1",
                 "search.options.permutations=2", "search.options.batch_size=64"])
    assert code == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "shapley_forward" not in records[0] and records[1]["shapley_forward"] > 0
    assert records[0]["alpha"] != records[1]["alpha"]
    capsys.readouterr()
    code = main(["select", str(run), "--selector", "magnitude,perturbation,shapley",
                 "select.options.perturbation.tune_steps=1", "select.options.perturbation.valid_batches=1",
                 "select.options.shapley.permutations=2", "select.options.shapley.batch_size=32"])
    out = capsys.readouterr().out
    assert code == 0 and "perturbation:" in out and "shapley:" in out
    comparison = json.loads((run / "comparison.json").read_text())
    assert set(comparison["selectors"]) == {"magnitude", "perturbation", "shapley"}


@pytest.mark.slow
def test_shapley_search_resumes_mid_epoch_without_a_second_update(tmp_path, capsys, monkeypatch):
    """Killed inside a Shapley epoch, the resumed search must not estimate and update α again for that epoch."""
    data = tiny_idx_dir(tmp_path / "data")
    args = [f"data.data_dir={data}", "space.C=4", "space.N=1", "data.batch_size=32", "search.epochs=2", "threads=1",
            "search.optimizer=shapley", "search.options.warmup_epochs=1", "search.options.permutations=2",
            "search.options.batch_size=64", "search.checkpoint_every=1"]
    assert main(["search", "--out", str(tmp_path / "a"), *args, "--selector", "magnitude"]) == 0
    calls, real = [0], ShapleySearch.weight_step

    def interrupted(self, batch):
        calls[0] += 1
        if calls[0] == 7:  # epoch 1 (4 steps per epoch), after the epoch's α update and two checkpointed steps
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ShapleySearch, "weight_step", interrupted)
    assert main(["search", "--out", str(tmp_path / "b"), *args, "--selector", "magnitude"]) == 130
    monkeypatch.setattr(ShapleySearch, "weight_step", real)
    assert main(["search", "--resume", str(tmp_path / "b")]) == 0
    capsys.readouterr()

    def final(run):
        from archselect.files import load_latest_checkpoint
        return load_latest_checkpoint(run, "supernet")["supernet"]

    a, b = final(tmp_path / "a"), final(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_selector_spends_its_images_on_permutations_and_the_search_keeps_the_papers():
    """The selector's default: 80 permutations of 32 images, 8 to a pass (docs/selectors.md §3); the search mode: the
    paper's 10 of 1024, one to a pass."""
    from archselect.optimizers.shapley import ShapleySearchOptions

    selector, search = ShapleyOptions(), ShapleySearchOptions()
    assert (selector.permutations, selector.batch_size, selector.rows_per_pass) == (80, 32, 8)
    assert (search.permutations, search.batch_size, search.rows_per_pass) == (10, 1024, 1)


def test_variance_benchmark_splits_a_rows_variance_into_its_sources(capsys):
    """benchmarks/shapley_variance.py's sources table on a tiny supernet: the three removal shares add up to 1 and
    the batch's share is a share."""
    import argparse
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "shapley_variance", Path(__file__).resolve().parents[1] / "benchmarks" / "shapley_variance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    args = argparse.Namespace(reference=6, batch_size=16, sources=2)
    reference, scores, passes = bench.reference_estimate(ctx, args)
    assert scores.shape == (6, 5) and passes > 0
    bench.print_sources(ctx, args, reference)
    lines = capsys.readouterr().out.splitlines()
    shares = {line.split(" | ")[0][2:]: float(line.split(" | ")[1].rstrip(" |")) for line in lines
              if line.startswith("| ") and line[2:6] != "sour"}
    assert len(shares) == 4
    assert sum(v for k, v in shares.items() if "batch" not in k) == pytest.approx(1.0, abs=0.011)
    assert 0 <= shares["the batch (within a permutation)"] <= 2
