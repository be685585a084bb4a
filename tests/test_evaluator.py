"""The masked evaluator: bit-equal to recomputing the whole supernet with every op, in both BN modes, while skipping
known outcomes and cached prefixes; BN running statistics untouched in train mode."""
import pytest
import torch
import torch.nn as nn

from archselect.data import ImageSet, Loader
from archselect.selection.base import Cost, SelectionContext
from archselect.scoring.evaluator import MaskedEvaluator, NaiveEvaluator, take_batches
from archselect.spaces.nb201 import EDGES, NB201Cell, NB201Space
from archselect.supernet import Supernet


# -- shared helpers (imported by test_perturbation and test_shapley) ------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def quadrant_set(n: int, seed: int, size: int = 8) -> ImageSet:
    """Learnable 4-class images: the class is the brightest quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 60, (n, 1, size, size), generator=g)
    h = size // 2
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * h:(r + 1) * h, q * h:(q + 1) * h] += 150
    return ImageSet(x.to(torch.uint8), y, 4, (0.3,), (0.3,), "quadrants", False)


def tiny_context(space=None, supernet=None, workdir=None, train_set=None, valid_set=None, batch=32, eval_batch=64):
    space = space or NB201Space(C=4, N=1, in_channels=1, num_classes=4)
    net = supernet if supernet is not None else space.supernet()
    train = Loader(train_set or quadrant_set(96, 0), batch, seed=0, augment=False)
    valid = Loader(valid_set or quadrant_set(128, 1), eval_batch, seed=0, augment=False, shuffle=False,
                   drop_last=False)
    return SelectionContext(space, net, valid, train, torch.device("cpu"), seed=0, workdir=workdir)


def random_alphas(net, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(scale * torch.randn(a.shape, generator=g))


class TwoCellTypes(Supernet):
    """A toy supernet with NB201 cells of two types, a then b, so the prefix cache has something to skip."""

    def __init__(self, C=4, ops=NB201Space.op_names):
        super().__init__({"a": EDGES, "b": EDGES}, ops, 1.0)
        self.stem_conv = nn.Sequential(nn.Conv2d(1, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList([NB201Cell(C, [ops] * len(EDGES), False, True) for _ in range(4)])
        self.types = ["a", "a", "b", "b"]
        self.classifier = nn.Linear(C, 4)

    def stem(self, x):
        return self.stem_conv(x)

    @property
    def num_layers(self):
        return len(self.cells)

    def layer_cell_type(self, i):
        return self.types[i]

    def run_layer(self, i, x, plans):
        return self.cells[i](x, plans[self.types[i]])

    def head(self, x):
        return self.classifier(x.mean(dim=(2, 3)))


def settings(net):
    """Weight settings a selector asks for: base, single removals (incl. `none`), cumulative removals, one-hot."""
    base = net.mixing_weights(detach=True)
    out = [base]
    for ct in net.cell_types:
        for e, k in [(0, 0), (0, 2), (0, 3), (2, 1), (5, 4)]:  # (0, 2): a first-listed conv of node 0
            w = {c: t.clone() for c, t in base.items()}
            w[ct][e, k] = 0.0
            out.append(w)
    w, cts = {c: t.clone() for c, t in base.items()}, net.cell_types
    for i, (e, k) in enumerate([(1, 2), (3, 3), (4, 1), (0, 1)]):
        w[cts[-1 - i % len(cts)]][e, k] = 0.0  # cumulative, alternating between the last and first cell type
        out.append({c: t.clone() for c, t in w.items()})
    out.append({ct: torch.nn.functional.one_hot(t.argmax(1), t.shape[1]).float() for ct, t in base.items()})
    return out


# -- tests ------------------------------------------------------------------------------------------------------------

def _check_equal(net, batches, bn):
    fast, naive = MaskedEvaluator(net, batches, bn=bn), NaiveEvaluator(net, batches, bn=bn)
    for w in settings(net):
        f, n = fast(w), naive(w)  # fills the prefix cache first, so the logits below come from it
        assert torch.equal(fast.logits(w, 0), naive.logits(w, 0))
        assert (f.correct, f.count, f.loss_sum) == (n.correct, n.count, n.loss_sum)
    return fast, naive


def test_cached_evaluation_equals_naive_nb201():
    ctx = tiny_context(NB201Space(C=4, N=2, in_channels=1, num_classes=4))  # 5 layers: cells and reductions
    random_alphas(ctx.supernet)
    batches = take_batches(ctx.valid, 2)
    for bn in ("train", "eval"):
        fast, naive = _check_equal(ctx.supernet, batches, bn)
        assert fast.layers_run < naive.layers_run  # memo hits (none, repeats) are free


def test_cached_evaluation_equals_naive_two_cell_types_and_skips_prefix():
    net = TwoCellTypes()
    random_alphas(net)
    batches = take_batches(tiny_context().valid, 2)
    for bn in ("train", "eval"):
        _check_equal(net, batches, bn)
    # perturbing only the b cells reuses the state before the first b cell: 2 of 4 layers per batch
    fast = MaskedEvaluator(net, batches, bn="train")
    base = net.mixing_weights(detach=True)
    fast(base)
    before = fast.layers_run
    w = {c: t.clone() for c, t in base.items()}
    w["b"][2, 3] = 0.0
    fast(w)
    assert fast.layers_run - before == 2 * len(batches)
    # a state changed in place after caching is detected and recomputed, not trusted
    w["b"][1, 3] = 0.0
    state = next(v[0] for k, v in fast._cache.items() if k[:2] == (0, 2))  # batch 0, before the first b cell
    state.add_(1.0)
    expected = NaiveEvaluator(net, batches, bn="train")(w)
    assert fast(w).correct == expected.correct and fast(w).loss_sum == expected.loss_sum


@pytest.mark.parametrize("edge, reused", [(5, 5 * 4 + 3), (0, 3 + 2 * 4)])
def test_op_cache_recomputes_only_what_reads_the_changed_edge(edge, reused):
    """NAS-Bench-201's first cell: removing an op from edge 5 (3 <- 2) reuses every other op output of the cell and
    the edge's own other three ops; removing one from edge 0 (1 <- 0) reuses only the ops reading node 0."""
    ctx = tiny_context(NB201Space(C=4, N=2, in_channels=1, num_classes=4))
    random_alphas(ctx.supernet)
    batches = take_batches(ctx.valid, 1)
    fast = MaskedEvaluator(ctx.supernet, batches)
    base = ctx.supernet.mixing_weights(detach=True)
    fast(base)
    assert fast.ops_reused == 0
    w = {"cell": base["cell"].clone()}
    w["cell"][edge, 2] = 0.0
    assert fast(w) == NaiveEvaluator(ctx.supernet, batches)(w)
    assert fast.ops_reused == reused


def test_cache_budget_keeps_the_first_batches():
    """When only batch 0's states fit, every evaluation still reuses them (plain LRU would evict them each sweep)."""
    net = TwoCellTypes()
    random_alphas(net)
    batches = take_batches(tiny_context().valid, 2)  # 64 images: a 64x4x8x8 float state is 1/16 MiB
    fast = MaskedEvaluator(net, batches, cache_mb=2 / 16)
    base = net.mixing_weights(detach=True)
    fast(base)
    w = {c: t.clone() for c, t in base.items()}
    w["b"][2, 3] = 0.0
    before = fast.layers_run
    assert fast(w) == NaiveEvaluator(net, batches)(w)
    assert fast.layers_run - before == 2 + 4  # batch 0 from its cached prefix, batch 1 in full


def test_known_outcomes_cost_nothing():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    cost = Cost()
    ev = MaskedEvaluator(ctx.supernet, take_batches(ctx.valid, 2), cost=cost)
    base = ctx.supernet.mixing_weights(detach=True)
    full = ev(base)
    assert cost.forward == 2 and cost.images == 128
    w = {"cell": base["cell"].clone()}
    w["cell"][:, 0] = 0.0  # every `none`: its output is zero anyway
    assert ev(w) == full and cost.forward == 2
    w["cell"][3, 2] = 0.0
    ev(w)
    assert cost.forward == 4
    w2 = {"cell": w["cell"].clone()}
    w2["cell"][3, 2] = 0.0  # already 0
    ev(w2)
    assert cost.forward == 4


def test_train_mode_bn_leaves_the_supernet_untouched():
    ctx = tiny_context()
    net = ctx.supernet
    random_alphas(net)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = take_batches(ctx.valid, 2)
    w = net.mixing_weights(detach=True)
    train_logits = MaskedEvaluator(net, batches, bn="train").logits(w, 0)
    eval_logits = MaskedEvaluator(net, batches, bn="eval").logits(w, 0)
    assert not torch.equal(train_logits, eval_logits)  # batch statistics vs (initial) running statistics
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert net.training and all(m.training and m.track_running_stats for m in bns)
