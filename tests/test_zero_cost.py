"""Zero-cost proxies on cases whose value is known in closed form, and the zero-cost selector (Zero-Cost-PT) on tiny
NAS-Bench-201 and DARTS supernets, on a user's own supernet, and from the CLI (a trained run and one at
initialisation)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import archselect as asel
from archselect.cli import main
from archselect.errors import UserError
from archselect.scoring import proxies
from archselect.scoring.evaluator import bn_mode
from archselect.scoring.cost import Cost
from archselect.scoring.proxies import (JACOB_K, grad_norm, jacob_cov, meco, meco_modules, meco_opt, nwot, snip,
                                        synflow)
from archselect.scoring.standalone import fresh_network, summed_proxy
from archselect.selection import zero_cost
from archselect.selection.zero_cost import ZeroCost
from archselect.spaces.darts import DARTSSpace
from archselect.spaces.mixed import op_by_op
from archselect.spaces.nb201 import NB201Space

from conftest import tiny_idx_dir
from test_cli import tiny_args
from test_evaluator import quadrant_set, random_alphas, tiny_context
from test_external import adapted, archselect_twin, batches
from official_layouts import TinyNB201, randomise

pytestmark = pytest.mark.usefixtures("one_thread")


def call(m, x):
    return m(x)


# -- proxies, in closed form ------------------------------------------------------------------------------------------

def linear_case():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(3, 4).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 3, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    # cross-entropy of a linear model: ∂L/∂W = (P − Y)ᵀ X / N, ∂L/∂b = mean(P − Y)
    residual = torch.softmax(x @ lin.weight.detach().T + lin.bias.detach(), 1) - F.one_hot(y, 4).double()
    return lin, x, y, residual.T @ x / 5, residual.mean(0)


def test_grad_norm_of_a_linear_model():
    lin, x, y, gw, gb = linear_case()
    assert grad_norm(lin, call, x, y) == pytest.approx(float(gw.norm() + gb.norm()), rel=1e-12)
    assert lin.weight.grad is None  # no gradients left behind


def test_snip_of_a_linear_model():
    lin, x, y, gw, gb = linear_case()
    expected = (gw * lin.weight.detach()).abs().sum() + (gb * lin.bias.detach()).abs().sum()
    assert snip(lin, call, x, y) == pytest.approx(float(expected), rel=1e-12)


def test_grad_norm_by_hand():
    lin = nn.Linear(2, 2).double()
    nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)
    x, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64), torch.tensor([0, 1])
    # P − Y = [[-½, ½], [½, -½]]: ∂L/∂W = [[½, ½], [-½, -½]] (norm 1), ∂L/∂b = 0
    assert grad_norm(lin, call, x, y) == pytest.approx(1.0, rel=1e-12)


def test_synflow_of_a_linear_network_is_its_depth_times_the_linearised_output():
    """With biases off, R = 1ᵀ|W₃| diag|γ| |W₁| 1 is linear in each layer's parameters, so Σ w ∂R/∂w = R per layer.
    BN counts as a layer with unit statistics whatever its running statistics; signs and dtype stay as they were."""
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.BatchNorm1d(5), nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        for p in (net[0].weight, net[2].weight, net[1].weight):
            p.copy_(torch.randn(p.shape, generator=g))
        net[1].bias.zero_()
        net[1].running_mean.copy_(torch.randn(5, generator=g))
        net[1].running_var.fill_(7.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    w1, gamma, w3 = (t.detach().double().abs() for t in (net[0].weight, net[1].weight, net[2].weight))
    R = torch.ones(2, dtype=torch.float64) @ w3 @ torch.diag(gamma) @ w1 @ torch.ones(3, dtype=torch.float64)
    x = torch.randn(4, 3)
    assert synflow(net, call, x, None) == pytest.approx(3 * float(R), rel=1e-12)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k
    assert net.training and net[0].weight.dtype == torch.float32


def test_jacob_cov_of_a_linear_map():
    """Every image has the same Jacobian Wᵀ1: the correlation matrix is all ones, eigenvalues N and 0 (N − 1 times)."""
    lin = nn.Linear(6, 3, bias=False).double()
    x, N, k = torch.randn(4, 6, dtype=torch.float64), 4, JACOB_K
    expected = -(math.log(N + k) + 1 / (N + k)) - (N - 1) * (math.log(k) + 1 / k)
    assert jacob_cov(lin, call, x, None) == pytest.approx(expected, rel=1e-9)


def test_jacob_cov_of_uncorrelated_jacobians():
    """f(x) = ½ Σ x² has Jacobian x: rows orthogonal with zero mean correlate as the identity, eigenvalues all 1."""
    x = torch.tensor([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    half_square = lambda m, x: (x * x).sum(1, keepdim=True) / 2  # noqa: E731
    expected = -3 * (math.log(1 + JACOB_K) + 1 / (1 + JACOB_K))
    assert jacob_cov(nn.Identity(), half_square, x, None) == pytest.approx(expected, rel=1e-12)


def test_nwot_counts_every_relu_however_written():
    """Codes of x = [[1, -1], [1, 1]] are [1,0] and [1,1]: K = ccᵀ + (1−c)(1−c)ᵀ = [[2,1],[1,2]]; the codes of −x give
    the same K. Two ReLUs (a module, then in place): K = [[4,2],[2,4]], log det = log 12."""
    x = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert nwot(nn.Identity(), lambda m, x: F.relu(x), x, None) == pytest.approx(math.log(3), rel=1e-12)
    two = lambda m, x: nn.ReLU()(x) + torch.relu_(-x)  # noqa: E731
    assert nwot(nn.Identity(), two, x, None) == pytest.approx(math.log(12), rel=1e-12)
    assert nwot(nn.Identity(), lambda m, x: x.relu(), x, None) == pytest.approx(math.log(3), rel=1e-12)


def test_meco_sums_the_smallest_eigenvalue_of_each_layers_channel_correlation():
    """Channels [1,2,3,4] and [1,3,2,4] correlate at ρ = 0.8 (λ_min = 1 − ρ = 0.2); orthogonal centred channels at 0
    (λ_min = 1). Only the first image counts; a ReLU on a vector (no positions) is not a feature map."""
    a = torch.tensor([[1.0, 2, 3, 4], [1, 3, 2, 4]]).view(1, 2, 2, 2)
    b = torch.tensor([[1.0, -1, 1, -1], [1, 1, -1, -1]]).view(1, 2, 2, 2)
    x = torch.cat([torch.cat([a, b], 1), torch.randn(1, 4, 2, 2)])  # image 2 must not matter

    def layers(m, x):
        return F.relu(x[:, :2]) + F.relu(x[:, 2:]), F.relu(x.flatten(1))

    assert meco(nn.Identity(), layers, x, None) == pytest.approx(0.2 + 1.0, rel=1e-12)


class Pick(nn.Module):
    """Channels lo..hi of its input."""

    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return x[:, self.lo:self.hi]


class Layers(nn.Module):
    """Module outputs with known channel correlations: `a` (a container) and its child both give channels 0-1 (ρ 0.8,
    λ_min 0.2), `b` channels 2-3 (orthogonal: λ_min 1); one channel, a vector per image and the tuple the network
    returns are not channel maps."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.one, self.flat = nn.Sequential(Pick(0, 2)), Pick(2, 4), Pick(0, 1), nn.Flatten()

    def forward(self, x):
        return self.a(x), self.b(x), self.one(x), self.flat(x)


def correlated_channels():
    a = torch.tensor([[1.0, 2, 3, 4], [1, 3, 2, 4]]).view(1, 2, 2, 2)
    b = torch.tensor([[1.0, -1, 1, -1], [1, 1, -1, -1]]).view(1, 2, 2, 2)
    return torch.cat([torch.cat([a, b], 1), torch.randn(1, 4, 2, 2)])  # image 2 is not read


def test_meco_modules_sums_every_module_output_containers_included():
    x = correlated_channels()
    assert meco_modules(Layers(), call, x, None) == pytest.approx(0.2 + 0.2 + 1.0, rel=1e-12)
    x[1] = 100 * torch.randn(4, 2, 2)
    assert meco_modules(Layers(), call, x, None) == pytest.approx(1.4, rel=1e-12)


def hadamard(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def test_meco_opt_scales_the_smallest_eigenvalue_of_eight_sampled_channels_by_C_over_8():
    """16 channels u + e_c (u, e_c orthogonal, zero-mean rows of a Hadamard matrix of equal norm) correlate at ρ = ½
    pairwise, so any 8 of them have λ_min = ½: meco_opt = ½ · 16/8 whatever the draw; all 16: λ_min = ½."""
    H = hadamard(32)
    x = (H[1] + H[2:18]).view(1, 16, 4, 8)
    for seed in (0, 1, 2):
        assert meco_opt(nn.Identity(), call, x, None, seed=seed) == pytest.approx(1.0, rel=1e-9)
    assert meco_modules(nn.Identity(), call, x, None) == pytest.approx(0.5, rel=1e-9)
    g = torch.Generator().manual_seed(3)
    r16, r8 = torch.randn(1, 16, 4, 4, generator=g), torch.randn(1, 8, 4, 4, generator=g)
    assert meco_opt(nn.Identity(), call, r16, None, seed=5) == meco_opt(nn.Identity(), call, r16, None, seed=5)
    assert meco_opt(nn.Identity(), call, r16, None, seed=5) != meco_opt(nn.Identity(), call, r16, None, seed=6)
    # 8 channels or fewer: every channel, scale 1 (the same matrix, permuted)
    assert meco_opt(nn.Identity(), call, r8, None, seed=5) == pytest.approx(meco_modules(nn.Identity(), call, r8, None),
                                                                           rel=1e-9)


def test_op_by_op_calls_every_op_module_and_computes_the_same():
    """Fused, NB201's convolutions of a node run as one (their modules are not called) and DARTS' pools are shared by
    the edges of a node; under op_by_op every enabled op is a module call of its own, with the same output."""
    for space, n_ops in ((NB201Space(C=4, N=1, in_channels=1, num_classes=4), 4 * 6 * 3),
                         (DARTSSpace(C=4, N=3, in_channels=1, num_classes=4), 7 * 14 * 3)):
        net = space.supernet()
        ops = {m: 0 for edge in net.modules() if hasattr(edge, "ops") for m in edge.ops.values()}
        hooks = [m.register_forward_hook(lambda m, i, o: ops.__setitem__(m, ops[m] + 1)) for m in ops]
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad(), bn_mode(net, "train"):
            fused = net(x)
            assert sum(ops.values()) < n_ops
            ops.update({m: 0 for m in ops})
            with op_by_op():
                alone = net(x)
        for h in hooks:
            h.remove()
        assert sum(ops.values()) == n_ops and all(ops.values())
        assert torch.allclose(fused, alone, atol=1e-5)


def test_every_proxy_is_registered_and_leaves_the_network_alone():
    assert set(proxies.PROXIES) == {"grad_norm", "snip", "synflow", "jacob_cov", "nwot", "meco", "meco_modules",
                                    "meco_opt"}
    net = tiny_context().supernet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    w = net.mixing_weights(detach=True)
    for name in proxies.PROXIES:
        fn = proxies.bind(name, seed=1)
        with bn_mode(net, "train"):
            assert math.isfinite(fn(net, lambda m, x: m(x, {ct: v.to(x.dtype) for ct, v in w.items()}), x, y)), name
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


# -- the selector ---------------------------------------------------------------------------------------------------

def test_selector_on_nb201_is_valid_deterministic_and_leaves_the_supernet_alone():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    before = {k: v.clone() for k, v in ctx.supernet.state_dict().items()}
    a = ZeroCost({"proxy": "nwot"}).select(ctx)
    b = ZeroCost({"proxy": "nwot"}).select(ctx)
    assert a.scores == b.scores and a.architecture == b.architecture
    assert all(torch.equal(v, before[k]) for k, v in ctx.supernet.state_dict().items())
    ops = [e.op for e in a.architecture.cell("cell").edges]
    assert len(ops) == 6 and all(op in ctx.space.op_names for op in ops)
    assert all(row[0] == 0.0 for row in a.scores["cell"])  # removing `none` changes nothing
    decisions = a.details["decisions"]
    assert a.details["proxy"] == "nwot" and len(decisions) == 6
    for d in decisions:  # the kept op is the one whose removal lowers the proxy most
        assert d["op"] == ctx.space.op_names[min(range(5), key=lambda k: (d["proxy"][k], k))]
    # 6 edges x 4 ops, plus the full supernet once per decision; `none` removals are memoised
    assert a.cost.forward <= 6 * 5 and a.cost.backward == 0
    assert sorted(d["edge"] for d in decisions) == list(range(6))
    fixed = ZeroCost({"proxy": "nwot", "edge_order": "fixed"}).select(ctx)
    assert [d["edge"] for d in fixed.details["decisions"]] == list(range(6))


def test_one_shot_scores_are_proxy_drops_of_the_full_supernet():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    sel = ZeroCost({"proxy": "meco", "progressive": False, "edge_order": "fixed"}).select(ctx)
    net, x = ctx.supernet, ctx.valid.batch(0, 0)[0]
    full = net.mixing_weights(detach=True)

    def value(w):
        with bn_mode(net, "train"):
            return meco(net, lambda m, x: m(x, w), x, None)

    for e in (0, 4):
        for k in (2, 3):
            w = {"cell": full["cell"].clone()}
            w["cell"][e, k] = 0.0
            assert sel.details["decisions"][e]["proxy"][k] == value(w)  # the same computation, bit for bit
            assert sel.scores["cell"][e][k] == pytest.approx(value(full) - value(w), rel=1e-6)  # scores: float32
    assert sel.architecture == ctx.space.derive({"cell": torch.tensor(sel.scores["cell"])}, {"cell": net.mask("cell")})


def test_selector_on_darts_prunes_each_node_to_two_inputs():
    space = DARTSSpace(C=4, N=3, in_channels=1, num_classes=4)
    ctx = tiny_context(space=space, eval_batch=8)
    two_ops = torch.zeros(14, len(space.op_names), dtype=torch.bool)
    two_ops[:, [space.op_names.index("skip_connect"), space.op_names.index("sep_conv_3x3")]] = True
    for ct in space.cell_types:
        ctx.supernet.set_mask(ct, two_ops)
    sel = ZeroCost({"proxy": "nwot"}).select(ctx)
    for ct in space.cell_types:
        edges = sel.architecture.cell(ct).edges
        assert len(edges) == 2 * 4 and {e.op for e in edges} <= {"skip_connect", "sep_conv_3x3"}  # 2 inputs a node
    assert sum(d["kind"] == "node" for d in sel.details["decisions"]) == 2 * 3  # nodes 3, 4, 5 of each cell type


def test_selector_through_the_supernet_interface_scores_as_on_archselects_own_network(tmp_path, float64):
    """A user's own NB201 model (computing its zero-weight ops) and archselect's twin: equal gradient-proxy scores."""
    model = randomise(TinyNB201(C=4, N=1))
    data = batches(n=1)
    options = {"zero-cost": {"proxy": "snip", "edge_order": "fixed"}}
    ours = asel.select_supernet(adapted(model), "zero-cost", valid=data, options=options)["zero-cost"]
    net, space = archselect_twin(model, tmp_path)
    theirs = asel.select_supernet(net, "zero-cost", valid=data, space=space, options=options)["zero-cost"]
    a, b = torch.tensor(ours.scores["cell"]), torch.tensor(theirs.scores["cell"])
    assert torch.allclose(a, b, atol=1e-9, rtol=1e-6)  # scores are stored as float32
    assert [e.op for e in ours.architecture.cell("cell").edges] == [e.op for e in theirs.architecture.cell("cell").edges]


def test_options_are_checked():
    with pytest.raises(UserError, match="proxy"):
        ZeroCost({"proxy": "fisher"})
    with pytest.raises(UserError, match="batches"):
        ZeroCost({"batches": 0})
    for key, bad in (("pool_size", 0), ("validate_rounds", -1), ("draw", "twice"), ("augment", "yes")):
        with pytest.raises(UserError, match=key):
            ZeroCost({key: bad})


# -- the official procedure: several projections, then validation of standalone networks ----------------------------

def small_context(**kwargs):
    """NB201 C=4 N=1 on 8x8 images, 16 validation images in batches of 8 (a projection: ~30 tiny passes); the same
    supernet at every call."""
    torch.manual_seed(0)
    ctx = tiny_context(valid_set=quadrant_set(16, 1), eval_batch=8, **kwargs)
    random_alphas(ctx.supernet)
    return ctx


def comparable(sel):
    d = copy.deepcopy(sel.to_dict())
    d["cost"].pop("seconds")
    d["details"]["validation_cost"].pop("seconds")
    return d


POOL = {"pool_size": 3, "validate_rounds": 2}


@pytest.fixture(scope="module")
def runs():
    """One projection, three, and three with their validation, on one small supernet (computed once: ~3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ctx = small_context()
    before = {k: v.clone() for k, v in ctx.supernet.state_dict().items()}
    out = {"one": ZeroCost({}).select(ctx), "three": ZeroCost({"pool_size": 3}).select(ctx),
           "pool": ZeroCost(POOL).select(ctx)}
    out["unchanged"] = all(torch.equal(v, before[k]) for k, v in ctx.supernet.state_dict().items())
    torch.set_num_threads(threads)
    return out


def test_projections_each_have_their_own_edge_order_and_the_first_is_the_single_projection(runs):
    one, three = runs["one"], runs["three"]
    orders = [[d["edge"] for d in p["decisions"]] for p in three.details["projections"]]
    assert len(orders) == 3 and all(sorted(o) == list(range(6)) for o in orders) and len(set(map(tuple, orders))) > 1
    assert three.details["projections"][0]["decisions"] == one.details["decisions"]
    assert three.architecture == one.architecture  # no validation: the first projection's candidate
    assert three.details["winner"] == {"architecture": str(one.architecture), "projection": 0, "validation": None}
    # scores: the mean over projections, stderr their standard error
    per = torch.zeros(3, 6, 5, dtype=torch.float64)
    for p, proj in enumerate(three.details["projections"]):
        for d in proj["decisions"]:
            per[p, d["edge"]] = torch.tensor(d["scores"], dtype=torch.float64)
    assert torch.allclose(torch.tensor(three.scores["cell"]), per.mean(0).float())
    assert torch.allclose(torch.tensor(three.stderr["cell"]), (per.std(0) / 3 ** 0.5).float())
    assert one.stderr is None and three.details["scores_are"] == "the mean over projections"


def test_validation_keeps_the_argmax_of_the_summed_proxy_of_fresh_standalone_networks(runs):
    sel, d = runs["pool"], runs["pool"].details
    assert runs["unchanged"]  # the caller's supernet is never changed
    assert d["projections"] == runs["three"].details["projections"]  # validation comes after, on its own networks
    candidates = [p["architecture"] for p in d["projections"]]
    validated = d["validation"]
    assert [v["architecture"] for v in validated] == list(dict.fromkeys(candidates))  # each distinct one, once
    assert sorted(p for v in validated for p in v["projections"]) == [0, 1, 2]
    assert all(candidates[p] == v["architecture"] for v in validated for p in v["projections"])
    scores = [v["score"] for v in validated]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert d["winner"]["validation"] == best and str(sel.architecture) == validated[best]["architecture"]
    assert d["winner"]["projection"] == validated[best]["projections"][0]
    assert d["decisions"] == d["projections"][d["winner"]["projection"]]["decisions"]
    assert len(set(scores)) == len(scores) and all(math.isfinite(v) for v in scores)


def test_validate_rounds_counts_its_passes(runs):
    sel, plain = runs["pool"], runs["three"]
    n = len(sel.details["validation"])
    spent = comparable(sel)["details"]["validation_cost"]
    assert spent == {"forward": 2 * n, "backward": 0, "images": 2 * n * 8, "passes": 2 * n}
    assert 0 < sel.details["validation_cost"]["seconds"] < sel.cost.seconds
    assert sel.cost.forward == plain.cost.forward + 2 * n and sel.cost.images == plain.cost.images + 16 * n
    assert runs["one"].details["validation_cost"]["forward"] == 0


def test_a_candidates_validation_score_depends_on_it_alone(runs):
    """Validated alone, projection 1's candidate scores as it did among three: its network's init is seeded by the seed
    and the architecture, and every candidate is scored on the same batches."""
    alone = ZeroCost({"validate_rounds": 2}).select(small_context()).details["validation"]
    among = {v["architecture"]: v["score"] for v in runs["pool"].details["validation"]}
    assert len(alone) == 1 and among[alone[0]["architecture"]] == alone[0]["score"]


def test_summed_proxy_of_a_fresh_network():
    space = NB201Space(C=4, N=1, in_channels=1, num_classes=4)
    arch = asel.Architecture.from_nb201_string("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|"
                                                "nor_conv_1x1~1|nor_conv_3x3~2|")
    torch.manual_seed(1)
    net = fresh_network(space, arch, 7, torch.device("cpu"))
    torch.manual_seed(2)
    again = fresh_network(space, arch, 7, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    other = fresh_network(space, arch, 8, torch.device("cpu"))
    assert not torch.equal(net.body.stem[0].weight, other.body.stem[0].weight)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(3)]
    cost = Cost()
    total = summed_proxy(net, "nwot", batches, bn="train", seed=0, cost=cost)
    with bn_mode(net, "train"):
        assert total == sum(nwot(net, call, x, y) for x, y in batches)
    assert (cost.forward, cost.backward, cost.images) == (3, 0, 18)
    cost = Cost()  # synflow is data-free: the same on every batch, computed once
    total = summed_proxy(net, "synflow", batches, bn="train", seed=0, cost=cost)
    with bn_mode(net, "train"):
        assert total == 3 * synflow(net, call, batches[0][0], None)
    assert (cost.forward, cost.backward, cost.images) == (1, 1, 1)


def test_draw_fresh_scores_each_decision_on_its_own_batches():
    ctx = small_context()
    fixed = ZeroCost({"pool_size": 2, "edge_order": "fixed"}).select(ctx)
    fresh = ZeroCost({"pool_size": 2, "edge_order": "fixed", "draw": "fresh", "augment": True}).select(ctx)
    full = lambda sel, p: [d["full_proxy"] for d in sel.details["projections"][p]["decisions"]]  # noqa: E731
    assert full(fixed, 0) == full(fixed, 1)  # the same order and batches: the same projection, all memoised
    assert fixed.cost.forward == ZeroCost({"edge_order": "fixed"}).select(ctx).cost.forward
    assert full(fresh, 0) != full(fresh, 1)
    assert len(set(full(fresh, 0))) == 6  # a new batch for each decision


def test_deterministic_with_the_seed_and_resumes_after_a_kill(runs, tmp_path, monkeypatch):
    """Killed while validating its second candidate, the selection resumes from its checkpoint to the result of an
    uninterrupted run (the projections recomputed by the killed run equal it too: deterministic with the seed)."""
    calls = []

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return summed_proxy(*args, **kwargs)

    ctx = small_context(workdir=tmp_path)
    monkeypatch.setattr(zero_cost, "summed_proxy", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        ZeroCost(POOL).select(ctx)
    assert list(tmp_path.glob("zero-cost-progress-*.json"))
    counted = []
    monkeypatch.setattr(zero_cost, "summed_proxy", lambda *a, **k: counted.append(1) or summed_proxy(*a, **k))
    resumed = comparable(ZeroCost(POOL).select(ctx))
    assert len(counted) == len(resumed["details"]["validation"]) - 1  # the first candidate is not validated again
    assert not list(tmp_path.glob("zero-cost-progress-*"))
    expected = comparable(runs["pool"])
    for key in ("architecture", "scores", "stderr"):
        assert resumed[key] == expected[key]
    for key in ("projections", "validation", "winner", "validation_cost"):
        assert resumed["details"][key] == expected["details"][key]
    other = small_context()
    other.seed = 1  # another seed: another edge order
    edges = lambda decisions: [d["edge"] for d in decisions]  # noqa: E731
    assert edges(ZeroCost({}).select(other).details["decisions"]) != edges(runs["one"].details["decisions"])


def test_validation_needs_a_space_with_standalone_networks():
    ctx = small_context()
    ctx.space = type("NoNetworks", (), {"op_names": ctx.space.op_names, "derive": ctx.space.derive})()
    with pytest.raises(UserError, match="validate_rounds"):
        ZeroCost({"validate_rounds": 1}).select(ctx)


def test_meco_opt_selects_through_the_supernet_and_validates():
    sel = ZeroCost({"proxy": "meco_opt", "edge_order": "fixed", "validate_rounds": 1}).select(small_context())
    assert sel.details["proxy"] == "meco_opt" and len(sel.details["decisions"]) == 6
    assert math.isfinite(sel.details["validation"][0]["score"])


# -- the command line -----------------------------------------------------------------------------------------------

def test_cli_selects_on_a_trained_run_and_at_initialisation(tmp_path):
    data = tiny_idx_dir(tmp_path / "data", n_train=128, n_test=32)
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), *tiny_args(data, epochs=1), "--selector", "magnitude"]) == 0
    assert main(["select", str(run), "select.options.zero-cost.proxy=synflow", "--selector", "zero-cost"]) == 0
    saved = json.loads((run / "selections" / "zero-cost.json").read_text())
    assert saved["details"]["proxy"] == "synflow" and saved["cost"]["backward"] > 0
    assert saved["cost"]["images"] == saved["cost"]["forward"]  # synflow: one image of ones a pass

    init = tmp_path / "init"  # Zero-Cost-PT's own setting: an untrained supernet, several projections, validation
    assert main(["search", "--out", str(init), *tiny_args(data, epochs=0), "--selector", "zero-cost",
                 "select.options.zero-cost.pool_size=2", "select.options.zero-cost.validate_rounds=1"]) == 0
    saved = json.loads((init / "selections" / "zero-cost.json").read_text())
    assert saved["details"]["proxy"] == "nwot" and len(saved["architecture"]["cells"]) == 1
    assert len(saved["details"]["projections"]) == 2 and saved["details"]["validation"]
    assert saved["details"]["winner"]["architecture"] == saved["architecture"]["text"]
