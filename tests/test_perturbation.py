"""DARTS-PT perturbation selection: finds the planted op that α misses, equals its naive evaluation, prunes node inputs
in spaces that keep a fixed number of them, never touches the caller's supernet, and resumes after a kill."""
import re

import pytest
import torch

from archselect.selection import perturbation as perturbation_mod
from archselect.scoring.evaluator import MaskedEvaluator, take_batches
from archselect.optimizers import OPTIMIZERS
from archselect.selection.perturbation import Perturbation, decision_events
from archselect.selection.topology import nodes_to_prune, select_inputs
from archselect.spaces.nb201 import NB201Space

from test_evaluator import random_alphas, tiny_context
from test_shapley import planted_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

FAST = {"tune_steps": 0, "valid_batches": 2}


def test_perturbation_finds_the_planted_op_that_alpha_misses(caplog):
    ctx = planted_context()
    with caplog.at_level("INFO", logger="archselect"):
        s = Perturbation(FAST).select(ctx)
    # edges as source->destination, accuracies in percent
    assert any(r.getMessage().endswith(": cell 0->3 keeps nor_conv_3x3 (full accuracy 100.00%)") for r in caplog.records)
    assert s.architecture.cell("cell").op_on(0, 3) == "nor_conv_3x3"
    scores = torch.tensor(s.scores["cell"])
    assert scores[3, 3] > 0.3 and scores[3, 3] == scores.max()
    decisions = s.details["decisions"]
    assert sorted(d["edge"] for d in decisions) == list(range(6))
    assert all(d["full_accuracy"] == 1.0 for d in decisions)
    # crit loss agrees; fixed order decides edges in index order
    s = Perturbation({**FAST, "crit": "loss", "edge_order": "fixed"}).select(ctx)
    assert s.architecture.cell("cell").op_on(0, 3) == "nor_conv_3x3"
    assert [d["edge"] for d in s.details["decisions"]] == list(range(6))


def test_efficient_equals_naive_and_caller_supernet_is_untouched():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    before = {k: v.clone() for k, v in ctx.supernet.state_dict().items()}
    opts = {"tune_steps": 2, "valid_batches": 2, "update_alpha": "yes"}
    fast = Perturbation(opts).select(ctx)
    naive = Perturbation({**opts, "evaluator": "naive"}).select(ctx)
    assert fast.scores == naive.scores and fast.details["decisions"] == naive.details["decisions"]
    assert str(fast.architecture) == str(naive.architecture)
    assert fast.cost.forward < naive.cost.forward  # `none` removals are free
    assert all(torch.equal(v, before[k]) for k, v in ctx.supernet.state_dict().items())
    assert fast.cost.backward == 2 * 2 * 5  # (α + weight step) x 2 steps between 6 decisions


def test_alpha_updates_follow_the_search_optimizer():
    """DARTS-PT steps α while fine-tuning iff the search moved α by gradient: an optimizer capability, not a name."""
    assert OPTIMIZERS.get("darts").alpha_by_gradient and OPTIMIZERS.get("darts-2nd").alpha_by_gradient
    assert not OPTIMIZERS.get("fixed-alpha").alpha_by_gradient and not OPTIMIZERS.get("shapley").alpha_by_gradient
    assert not OPTIMIZERS.get("fixed-alpha").trains_alpha and OPTIMIZERS.get("shapley").trains_alpha
    with pytest.raises(Exception, match="crit"):
        Perturbation({"crit": "entropy"})


def test_kill_and_resume_gives_the_same_decisions(tmp_path, monkeypatch):
    opts = {"tune_steps": 2, "valid_batches": 1, "update_alpha": "yes"}
    ctx = tiny_context(workdir=tmp_path / "a")
    random_alphas(ctx.supernet, seed=3)
    reference = Perturbation(opts).select(ctx)

    ctx.workdir = tmp_path / "b"
    calls, real = [0], perturbation_mod.FineTuner.run

    def dies_on_third(self, *args):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("killed")
        return real(self, *args)

    monkeypatch.setattr(perturbation_mod.FineTuner, "run", dies_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        Perturbation(opts).select(ctx)
    monkeypatch.setattr(perturbation_mod.FineTuner, "run", real)
    resumed = Perturbation(opts).select(ctx)
    assert resumed.details["resumed_after"] == 3
    assert resumed.details["decisions"] == reference.details["decisions"]
    assert resumed.scores == reference.scores and str(resumed.architecture) == str(reference.architecture)
    assert (resumed.cost.forward, resumed.cost.backward) == (reference.cost.forward, reference.cost.backward)
    assert not list((tmp_path / "b").glob("perturbation-progress-*"))
    # a changed option does not resume stale progress
    monkeypatch.setattr(perturbation_mod.FineTuner, "run", dies_on_third)
    calls[0] = 0
    with pytest.raises(RuntimeError):
        Perturbation(opts).select(ctx)
    monkeypatch.setattr(perturbation_mod.FineTuner, "run", real)
    assert Perturbation({**opts, "crit": "loss"}).select(ctx).details["resumed_after"] == 0


def test_topology_keeps_the_important_inputs():
    ctx = planted_context()
    net = ctx.supernet
    assert nodes_to_prune(net, "cell", 2) == [3] and nodes_to_prune(net, "cell", 1) == [2, 3]
    evaluator = MaskedEvaluator(net, take_batches(ctx.valid, 2))
    record = select_inputs(net, lambda settings: [evaluator(w) for w in settings], "cell", 3, 2)
    assert 3 in record["kept"] and len(record["kept"]) == 2  # edge 0->3 carries the label
    dropped = record["rounds"][0]["dropped"]
    assert not net.mask("cell")[dropped].any() and record["rounds"][0]["accuracy"]["3"] < 0.75


class TwoInputNB201(NB201Space):
    inputs_per_node = 2


def test_topology_runs_after_the_op_decisions(caplog):
    ctx = planted_context()
    ctx.space = TwoInputNB201()
    events = decision_events(ctx.supernet, "random", 0, 2)
    assert [e[0][0] for e in events] == ["op"] * 6 + ["node"]
    with caplog.at_level("INFO", logger="archselect"):
        s = Perturbation(FAST).select(ctx)
    assert any(re.search(r"decision 7/7: cell node 3 keeps edges \d->3, 0->3$|decision 7/7: cell node 3 keeps edges "
                         r"0->3, \d->3$", r.getMessage()) for r in caplog.records)
    kinds = [d["kind"] for d in s.details["decisions"]]
    assert kinds == ["op"] * 6 + ["node"]
    cell = s.architecture.cell("cell")
    assert cell.op_on(0, 3) == "nor_conv_3x3"
    # the dropped input of node 3 reads as `none`; no op decision picked `none` where topology prunes instead
    assert sum(cell.op_on(src, 3) == "none" for src in range(3)) == 1
    assert all(d["op"] != "none" for d in s.details["decisions"] if d["kind"] == "op")
