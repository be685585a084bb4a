"""Zero-cost proxies on cases whose value is known in closed form, and the zero-cost selector (Zero-Cost-PT) on tiny
NAS-Bench-201 and DARTS supernets, on a user's own supernet, and from the CLI (a trained run and one at
initialisation)."""
from __future__ import annotations

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
from archselect.scoring.proxies import JACOB_K, grad_norm, jacob_cov, meco, nwot, snip, synflow
from archselect.selection.zero_cost import ZeroCost
from archselect.spaces.darts import DARTSSpace

from conftest import tiny_idx_dir
from test_cli import tiny_args
from test_evaluator import random_alphas, tiny_context
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


def test_every_proxy_is_registered_and_leaves_the_network_alone():
    assert set(proxies.PROXIES) == {"grad_norm", "snip", "synflow", "jacob_cov", "nwot", "meco"}
    net = tiny_context().supernet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    w = net.mixing_weights(detach=True)
    for name, fn in proxies.PROXIES.items():
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


# -- the command line -----------------------------------------------------------------------------------------------

def test_cli_selects_on_a_trained_run_and_at_initialisation(tmp_path):
    data = tiny_idx_dir(tmp_path / "data", n_train=128, n_test=32)
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), *tiny_args(data, epochs=1), "--selector", "magnitude"]) == 0
    assert main(["select", str(run), "select.options.zero-cost.proxy=synflow", "--selector", "zero-cost"]) == 0
    saved = json.loads((run / "selections" / "zero-cost.json").read_text())
    assert saved["details"]["proxy"] == "synflow" and saved["cost"]["backward"] > 0
    assert saved["cost"]["images"] == saved["cost"]["forward"]  # synflow: one image of ones a pass

    init = tmp_path / "init"
    assert main(["search", "--out", str(init), *tiny_args(data, epochs=0), "--selector", "zero-cost"]) == 0
    saved = json.loads((init / "selections" / "zero-cost.json").read_text())
    assert saved["details"]["proxy"] == "nwot" and len(saved["architecture"]["cells"]) == 1
