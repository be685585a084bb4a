"""Stacked weight settings (scoring/stacking.py): one pass for several settings gives each exactly what it gives
alone, in both BN modes and both memory layouts, on NAS-Bench-201 and DARTS supernets; the selectors' results do not
depend on the stack size; a stack that runs out of memory is split."""
import pytest
import torch

from archselect.errors import UserError
from archselect.scoring import evaluator as evaluator_mod
from archselect.scoring.evaluator import MaskedEvaluator, NaiveEvaluator, take_batches
from archselect.selection.perturbation import Perturbation
from archselect.selection.shapley import ShapleySelector
from archselect.scoring.stacking import groups, union
from archselect.spaces.darts import DARTSSpace, DartsS4Space
from archselect.spaces.nb201 import NB201Space
from archselect.spaces.ops import BatchNorm2d, stacked

from test_evaluator import random_alphas, settings, tiny_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def removals(net):
    """What the selectors stack: each op of one edge removed in turn, and a chain of cumulative removals."""
    base = net.mixing_weights(detach=True)
    ct = net.cell_types[-1]
    out = []
    for k in range(len(net.op_names)):
        w = {c: t.clone() for c, t in base.items()}
        w[ct][1, k] = 0.0
        out.append(w)
    w = {c: t.clone() for c, t in base.items()}
    for e, k in [(0, 2), (3, 3), (2, 1), (2, 2), (2, 3), (2, 4), (2, 0)]:
        w[ct][e, k] = 0.0
        out.append({c: t.clone() for c, t in w.items()})
    return out


def check_stacked_equals_alone(net, batches, bn, stack=4, cache_mb=1024.0):
    ws = removals(net) + settings(net)
    naive = NaiveEvaluator(net, batches, bn=bn)
    expected = [naive(w) for w in ws]
    ev = MaskedEvaluator(net, batches, bn=bn, stack=stack, cache_mb=cache_mb)
    assert ev.many(ws) == expected
    # passes are counted per setting, once for each new one, stacked or not
    assert ev.cost.forward == len(batches) * len({ev._memo_key(ev.plans(w)) for w in ws})
    # the logits themselves, bit for bit: one stacked pass against each setting alone
    group = [ev.plans(w) for w in ws[:stack]]
    alone = MaskedEvaluator(net, batches, bn=bn, cache_mb=0)
    with ev._mode():
        together = ev._stacked_logits(0, batches[0][0], group)
        assert torch.equal(together, torch.cat([alone._logits(0, batches[0][0], p) for p in group]))
    return ev


LAYOUTS = [(False, 1024.0), (True, 1024.0), (True, 0.0)]  # (channels_last, cache_mb); 0: no op cache


def nb201_in_layout(channels_last: bool):
    """A tiny NB201 context (C=4, N=2, random α) and its supernet, channels-last or not."""
    ctx = tiny_context(NB201Space(C=4, N=2, in_channels=1, num_classes=4))
    net = ctx.supernet.to(memory_format=torch.channels_last) if channels_last else ctx.supernet
    random_alphas(net)
    return ctx, net


@pytest.mark.parametrize("bn", ["train", "eval"])
@pytest.mark.parametrize("channels_last, cache_mb", LAYOUTS)
def test_stacked_settings_equal_each_alone_nb201(bn, channels_last, cache_mb):
    ctx, net = nb201_in_layout(channels_last)
    batches = take_batches(ctx.valid, 2)  # 64 and 64 images
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    check_stacked_equals_alone(net, batches, bn, cache_mb=cache_mb)  # 0: no op cache, the first cell stacked too


@pytest.mark.parametrize("bn", ["train", "eval"])
@pytest.mark.parametrize("space", [NB201Space(C=4, N=1, in_channels=1, num_classes=4, bn_track=False),
                                   DARTSSpace(C=4, N=3, in_channels=1, num_classes=4, bn_track=False)])
def test_stacked_settings_equal_each_alone_without_running_statistics(bn, space):
    """BN layers that track no running statistics normalise by batch statistics in eval mode too: per setting
    (fused convolution groups on NAS-Bench-201, BatchNorm2d modules inside DARTS' separable convolutions)."""
    ctx = tiny_context(space)
    random_alphas(ctx.supernet)
    check_stacked_equals_alone(ctx.supernet, take_batches(ctx.valid, 1), bn, stack=3)


@pytest.mark.parametrize("bn", ["train", "eval"])
@pytest.mark.parametrize("partial", [1, 2])
def test_stacked_settings_equal_each_alone_darts(bn, partial):
    ctx = tiny_context(DARTSSpace(C=4, N=3, in_channels=1, num_classes=4, partial_channels=partial, edge_norm=True))
    random_alphas(ctx.supernet)
    batches = take_batches(ctx.valid, 1)
    ev = check_stacked_equals_alone(ctx.supernet, batches, bn, stack=3)
    # perturbing the reduce cell only: the normal cell before it runs once per batch, not once per setting
    base = ctx.supernet.mixing_weights(detach=True)
    ws = []
    for k in range(4, 7):
        w = {c: t.clone() for c, t in base.items()}
        w["reduce"][6, k] = 0.0
        ws.append(w)
    before = ev.layers_run
    ev.many(ws)
    assert ev.layers_run - before == 3 * 2  # the two reduce layers for each of 3 settings; layer 0 came from cache


def test_union_joins_settings_whose_common_ops_agree():
    a = {"cell": [[(1, 0.5), (2, 0.25)], [(3, 1.0)]]}
    b = {"cell": [[(2, 0.25)], [(3, 1.0), (4, 0.5)]]}
    plans, absent = union([a, b])
    assert plans == {"cell": [[(1, 0.5), (2, 0.25)], [(3, 1.0), (4, 0.5)]]}
    assert absent == {"cell": {(0, 1): [False, True], (1, 4): [True, False]}}
    clash = {"cell": [[(1, 0.4)], []]}
    assert union([a, clash]) is None
    assert groups([a, b, clash, a, b, a], 2) == [[0, 1], [2], [3, 4], [5]]


def test_batch_norm_takes_statistics_per_stacked_setting():
    bn = BatchNorm2d(3, track_running_stats=False).train()
    x = torch.randn(8, 3, 4, 4)
    with stacked(2):
        both = bn(x)
    assert torch.equal(both, torch.cat([bn(x[:4]), bn(x[4:])]))
    assert not torch.equal(both, bn(x))  # one set of statistics would differ
    tracking = BatchNorm2d(3).train()
    with stacked(2), pytest.raises(RuntimeError, match="running statistics"):
        tracking(x)


def small_memory(monkeypatch, most: int = 2) -> None:
    """Simulate an accelerator on which a pass of more than `most` stacked (or packed) settings runs out of memory."""
    real = evaluator_mod.MaskedEvaluator._stacked_tail

    def tail(self, state, group, start):
        if len(group) > most:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, state, group, start)

    monkeypatch.setattr(evaluator_mod.MaskedEvaluator, "_stacked_tail", tail)


def test_a_stack_out_of_memory_is_split(monkeypatch):
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    batches = take_batches(ctx.valid, 1)
    ws = removals(ctx.supernet)
    expected = NaiveEvaluator(ctx.supernet, batches).many(ws)
    small_memory(monkeypatch)
    ev = MaskedEvaluator(ctx.supernet, batches, stack=8)
    assert ev.many(ws) == expected
    assert ev.stack == 2 and ev.cost.forward == len(expected) - 1  # removing `none` repeats the base: memo


def test_noise_ops_are_never_stacked():
    net = DARTSSpace(C=4, N=3, in_channels=1, num_classes=4).supernet()
    assert MaskedEvaluator(net, [], stack=4).stack == 4
    noisy = DartsS4Space(C=4, N=3, in_channels=1, num_classes=4).supernet()
    assert MaskedEvaluator(noisy, [], stack=4).stack == 1


@pytest.mark.parametrize("selector, options", [
    (Perturbation, {"tune_steps": 1, "valid_batches": 2, "edge_order": "random"}),
    (ShapleySelector, {"permutations": 3, "batch_size": 32, "batches": 2, "threshold": 0.9}),
])
def test_selectors_give_the_same_results_whatever_the_stack(selector, options):
    results = []
    for stack in (1, 3):
        torch.manual_seed(0)  # the supernet's initial weights
        ctx = tiny_context()
        random_alphas(ctx.supernet)
        results.append(selector({**options, "stack": stack}).select(ctx))
    one, three = results
    assert one.scores == three.scores and one.architecture == three.architecture
    if selector is Perturbation:  # every setting of a decision is asked for anyway: the same passes
        assert one.cost.forward == three.cost.forward
    else:  # coalitions past a truncation may be computed, never fewer passes
        assert three.cost.forward >= one.cost.forward


@pytest.mark.parametrize("selector", [Perturbation, ShapleySelector])
def test_a_stack_below_one_is_refused_in_one_line(selector):
    with pytest.raises(UserError, match="stack.*at least 1"):
        selector({"stack": 0})
