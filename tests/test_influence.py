"""Influential Magnitude: exact Taylor terms (against finite differences, in float64 on a real NB201 supernet with
train-mode BN) and the selection on a toy supernet where one op is planted as essential while α points elsewhere."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archselect.arch import Architecture, Cell, Edge
from archselect.errors import UserError
from archselect.selection import SELECTORS, SelectionContext
from archselect.selection.influence import (active_coordinates, batch_derivatives, expansion_point,
                                            hutchinson_diagonal, mixing, scoring_copy)
from archselect.spaces.nb201 import NB201Space
from archselect.supernet import Supernet, weighted_sum


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def tiny_nb201(dtype=torch.float64):
    torch.manual_seed(0)
    return NB201Space(C=4, N=1, in_channels=1, num_classes=3, alpha_init_std=0.5).supernet().to(dtype)


def batch(seed=0, n=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


class Batches:
    """The part of a Loader a selector reads: `epoch(e)` yields (x, y)."""

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, e=0, start=0):
        yield from self.batches[start:]


def context(space, supernet, batches):
    return SelectionContext(space, supernet, Batches(batches), None, torch.device("cpu"))


@pytest.fixture
def smooth(monkeypatch):
    """GELU for every ReLU: finite differences across ReLU kinks (thousands of activations even in a tiny net) are
    not derivatives; on a smooth network they are, and what is checked is autograd through conv, BN and the cell."""
    gelu = F.gelu
    monkeypatch.setattr(torch.nn.functional, "relu", lambda x, inplace=False: gelu(x))


def loss_at(model, kind, theta, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x, mixing(model, theta, kind)), y))


# -- exactness --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["softmax", "alpha"])
def test_hessian_diagonal_matches_central_differences(kind, smooth):
    model = scoring_copy(tiny_nb201(), "train")
    x, y = batch()
    theta = expansion_point(model, kind)
    active = active_coordinates(model, kind)
    g, h = batch_derivatives(model, theta, kind, x, y, active)
    _, h_vmapped = batch_derivatives(model, theta, kind, x, y, active, hvp_batch=7)  # 7 does not divide 24 or 30
    assert torch.allclose(h_vmapped["cell"], h["cell"], rtol=1e-10, atol=1e-12)
    eps = 1e-4
    checked = 0
    for e, k in active["cell"].nonzero().tolist():
        values = []
        for step in (eps, 0.0, -eps):
            with torch.no_grad():
                theta["cell"][e, k] += step
            values.append(loss_at(model, kind, theta, x, y))
            with torch.no_grad():
                theta["cell"][e, k] -= step
        fd2 = (values[0] - 2 * values[1] + values[2]) / eps**2
        fd1 = (values[0] - values[2]) / (2 * eps)
        assert h["cell"][e, k].item() == pytest.approx(fd2, rel=1e-4, abs=1e-5)
        assert g["cell"][e, k].item() == pytest.approx(fd1, rel=1e-5, abs=1e-8)
        checked += 1
    assert checked == (24 if kind == "softmax" else 30)  # `none` has no derivative in softmax coordinates
    assert h["cell"].abs().max() > 1e-3  # a non-trivial curvature was checked
    if kind == "softmax":
        assert torch.all(g["cell"][:, 0] == 0) and torch.all(h["cell"][:, 0] == 0)


def test_taylor_terms_are_the_derivatives_along_the_removal_path(smooth):
    """φ(t) = L(θ − t·θ_{e,k}·1_{e,k}): first_order = φ'(0), second_order = φ''(0)/2, checked by finite differences
    through the whole selector (one batch, so the averages are the batch's own derivatives)."""
    sn = tiny_nb201()
    x, y = batch(1)
    sel = SELECTORS.get("influence")({"batches": 1}).select(context(NB201Space(), sn, [(x, y)]))
    model = scoring_copy(sn, "train")
    theta = expansion_point(model, "softmax")
    first = torch.tensor(sel.details["first_order"]["cell"], dtype=torch.float64)
    second = torch.tensor(sel.details["second_order"]["cell"], dtype=torch.float64)
    eps = 1e-4
    for e, k in [(0, 1), (2, 3), (5, 4), (3, 2)]:
        a = theta["cell"][e, k].item()
        phi = []
        for t in (eps, 0.0, -eps):
            th = {"cell": theta["cell"].detach().clone()}
            th["cell"][e, k] -= t * a
            phi.append(loss_at(model, "softmax", th, x, y))
        assert first[e, k].item() == pytest.approx((phi[0] - phi[2]) / (2 * eps), rel=1e-5, abs=1e-9)
        assert second[e, k].item() == pytest.approx((phi[0] - 2 * phi[1] + phi[2]) / eps**2 / 2, rel=1e-4, abs=1e-7)
    score = torch.tensor(sel.scores["cell"], dtype=torch.float64)
    assert torch.allclose(score, first + second)
    assert str(sel.architecture) == str(NB201Space().derive({"cell": score}))


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    theta = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([3.0, -1.0, 0.5, 7.0], dtype=torch.float64)
    (g,) = torch.autograd.grad((0.5 * a * theta**2).sum() + theta.sum(), [theta], create_graph=True)
    active = torch.tensor([True, True, False, True])
    (h,) = hutchinson_diagonal([g], [theta], [active], probes=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(h, a * active)  # z_i² = 1: every draw gives H_ii exactly; inactive coordinates stay 0


@pytest.mark.slow  # 50 s; the exact-per-draw property above stays in the default run
def test_hutchinson_converges_to_the_exact_diagonal():
    model = scoring_copy(tiny_nb201(), "train")
    x, y = batch()
    theta = expansion_point(model, "softmax")
    active = active_coordinates(model, "softmax")
    _, exact = batch_derivatives(model, theta, "softmax", x, y, active)

    def error(probes):
        gen = torch.Generator().manual_seed(1)
        _, h = batch_derivatives(model, theta, "softmax", x, y, active, hvp_batch=64, probes=probes, generator=gen)
        assert torch.all(h["cell"][:, 0] == 0)  # `none` is not a coordinate
        return (h["cell"] - exact["cell"]).abs().max().item()

    scale = exact["cell"].abs().max().item()
    assert error(4096) < 0.1 * scale and error(4096) < error(4) / 4  # the error falls as 1/sqrt(probes)


def test_hutchinson_selector_is_seeded_and_counts_its_products():
    sn = tiny_nb201(torch.float32)
    batches = [batch(s, dtype=torch.float32) for s in range(2)]
    options = {"batches": 2, "hessian": "hutchinson", "probes": 5}
    one, two = (SELECTORS.get("influence")(options).select(context(NB201Space(), sn, batches)) for _ in range(2))
    assert one.scores == two.scores and one.details["options"]["hessian"] == "hutchinson"
    assert one.details["hvp_per_batch"] == 5 and one.cost.backward == 2 * (1 + 5)
    exact = SELECTORS.get("influence")({"batches": 2}).select(context(NB201Space(), sn, batches))
    assert one.details["first_order"] == exact.details["first_order"]  # only the curvature is estimated
    assert one.details["hessian_diagonal"] != exact.details["hessian_diagonal"]


# -- the selector -----------------------------------------------------------------------------------------------------

def test_selector_averages_batches_reports_cost_and_leaves_the_supernet_alone():
    sn = tiny_nb201(torch.float32)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    batches = [batch(s, dtype=torch.float32) for s in range(3)]
    sel = SELECTORS.get("influence")({"batches": 2, "terms": "second"}).select(
        context(NB201Space(), sn, batches))
    assert all(torch.equal(v, before[k]) for k, v in sn.state_dict().items())
    assert all(p.requires_grad for p in sn.parameters())
    assert sel.details["batches"] == 2 and sel.details["hvp_per_batch"] == 24
    assert sel.cost.forward == 2 and sel.cost.images == 16 and sel.cost.backward == 2 * (1 + 24)
    assert sel.scores == sel.details["second_order"]
    assert len(sel.stderr["cell"]) == 6 and all(v >= 0 for row in sel.stderr["cell"] for v in row)
    edge = sel.details["edge_scores"]["cell"]
    assert edge == [max(row[1:]) for row in sel.scores["cell"]]
    one = SELECTORS.get("influence")({"batches": 1, "bn": "eval"}).select(context(NB201Space(), sn, batches))
    assert one.stderr is None and one.details["options"]["bn"] == "eval"


@pytest.mark.parametrize("options", [{"terms": "all"}, {"weights": "logits"}, {"bn": "frozen"}, {"batches": -1},
                                     {"hessian": "fisher"}, {"hvp_batch": 0}, {"probes": 0}])
def test_bad_options_are_user_errors(options):
    with pytest.raises(UserError, match="influence"):
        SELECTORS.get("influence")(options)


# -- a planted essential op -------------------------------------------------------------------------------------------

OPS = ("none", "skip_connect", "signal", "noise")
TOY_EDGES = {"a": ((0, 1), (0, 2), (1, 2)), "b": ((0, 1),)}
D = 4  # coordinate 0 carries the label's sign, 1..3 are noise


class ToySupernet(Supernet):
    """Two cell types over D-vectors; op k on edge e is a fixed linear map, each cell's output goes through tanh."""

    def __init__(self):
        super().__init__(TOY_EDGES, OPS, alpha_init_std=0.0)
        noise_only = torch.diag(torch.tensor([0.0, 1.0, 1.0, 1.0]))
        mats = {}
        for ct, es in TOY_EDGES.items():
            m = torch.zeros(len(es), len(OPS), D, D)
            m[:, 1] = torch.eye(D) if ct == "b" else noise_only      # skip: identity (cell a: blind to the label)
            m[:, 2] = noise_only                                     # signal: ... except on one planted edge
            m[:, 3] = noise_only.roll(1, dims=1)                     # noise: shuffles the noise coordinates
            mats[ct] = m
        mats["a"][1, 2] = torch.eye(D)  # the planted op: the label reaches the head only through signal on 0->2
        self.mats = nn.ParameterDict({ct: nn.Parameter(m) for ct, m in mats.items()})
        self.classifier = nn.Linear(D, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[-20.0, 0.3, -0.2, 0.1], [20.0, -0.1, 0.2, 0.3]]))
            self.classifier.bias.zero_()
            self.alphas["a"][1, 1:3] = torch.tensor([2.0, 1.0])  # α favours skip_connect on the planted edge

    def stem(self, x):
        return x

    @property
    def num_layers(self):
        return 2

    def layer_cell_type(self, i):
        return self.cell_types[i]

    def run_layer(self, i, x, plans):
        ct = self.cell_types[i]
        nodes = [x]
        for dst in range(1, max(d for _, d in TOY_EDGES[ct]) + 1):
            terms = [(w, nodes[s] @ self.mats[ct][e, k].T)
                     for e, (s, d) in enumerate(TOY_EDGES[ct]) if d == dst for k, w in plans[ct][e]]
            node = weighted_sum(terms)
            nodes.append(torch.zeros_like(x) if node is None else node)
        return torch.tanh(nodes[-1])

    def head(self, x):
        return self.classifier(x)


class ToySpace:
    op_names = OPS
    cell_types = ("a", "b")

    def derive(self, scores, mask=None):
        cells = []
        for ct, es in TOY_EDGES.items():
            s = scores[ct].clone()
            if mask is not None:
                s[~mask[ct]] = float("-inf")
            ops = [OPS[k] for k in s.argmax(dim=1).tolist()]
            cells.append((ct, Cell(tuple(Edge(a, b, op) for (a, b), op in zip(es, ops)))))
        return Architecture("toy", tuple(cells))


def toy_batches(n_batches=2, n=32):
    out = []
    for b in range(n_batches):
        g = torch.Generator().manual_seed(b)
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, D, generator=g)
        x[:, 0] = (2 * y - 1).float()
        out.append((x, y))
    return out


@pytest.mark.parametrize("options", [{}, {"terms": "second"}, {"weights": "alpha"}])
def test_influence_finds_the_planted_op_where_magnitude_does_not(options):
    sn = ToySupernet()
    ctx = context(ToySpace(), sn, toy_batches())
    magnitude = SELECTORS.get("magnitude")().select(ctx)
    assert magnitude.architecture.cell("a").op_on(0, 2) == "skip_connect"
    sel = SELECTORS.get("influence")(options).select(ctx)
    assert sel.architecture.cell("a").op_on(0, 2) == "signal"
    scores = torch.tensor(sel.scores["a"])
    assert scores[1, 2] > 10 * scores[1, [1, 3]].abs().max()  # by a wide margin, not a tie-break
    assert set(sel.details["edge_scores"]) == {"a", "b"} and len(sel.details["edge_scores"]["a"]) == 3


def test_masked_ops_score_zero_and_are_never_chosen():
    sn = ToySupernet()
    mask = torch.ones(3, len(OPS), dtype=torch.bool)
    mask[1, 2] = False  # disable the planted op
    sn.set_mask("a", mask)
    sel = SELECTORS.get("influence")().select(context(ToySpace(), sn, toy_batches(1)))
    assert sel.scores["a"][1][2] == 0.0
    assert sel.architecture.cell("a").op_on(0, 2) != "signal"


@pytest.mark.slow
def test_darts_space_with_edge_normalisation():
    """The real DARTS supernet (two cell types, 14 edges, PC-DARTS β held fixed): two enabled ops per edge keep it
    to 56 Hessian-vector products; the genotype keeps 2 inputs per node, ranked by `edge_scores`."""
    from archselect.spaces.darts import DARTSSpace

    torch.manual_seed(0)
    space = DARTSSpace(C=4, N=3, in_channels=1, num_classes=3, edge_norm=True)
    sn = space.supernet()
    keep = [space.op_names.index(op) for op in ("skip_connect", "sep_conv_3x3")]
    for ct in space.cell_types:
        mask = torch.zeros(14, len(space.op_names), dtype=torch.bool)
        mask[:, keep] = True
        sn.set_mask(ct, mask)
    sel = SELECTORS.get("influence")({"batches": 1}).select(context(space, sn, [batch(0, 8, torch.float32)]))
    assert sel.details["hvp_per_batch"] == 2 * 14 * 2
    for ct in space.cell_types:
        scores = torch.tensor(sel.scores[ct])
        assert torch.all(scores[:, [k for k in range(len(space.op_names)) if k not in keep]] == 0)
        edges = {(e.src, e.dst) for e in sel.architecture.cell(ct).edges}
        assert len(edges) == 8
        best = sel.details["edge_scores"][ct]
        for dst in range(2, 6):
            incoming = [i for i, (s, d) in enumerate(space.edges(ct)) if d == dst]
            top2 = sorted(incoming, key=lambda i: -best[i])[:2]
            assert {space.edges(ct)[i] for i in top2} == {(s, d) for s, d in edges if d == dst}
