"""The DARTS cell space: genotype codec, supernet/discrete equivalence, masking, partial channels, derive, config."""
import json
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch.nn import BatchNorm2d

from archselect.arch import Architecture, load_architecture
from archselect.cli import main
from archselect.config import load_config
from archselect.components import space_of
from archselect.errors import UserError
from archselect.arch import parse_genotype
from archselect.genotype import EDGES, GENOTYPE_OPS, to_genotype_string
from archselect.spaces import SPACES
from archselect.spaces.darts import DARTSSpace, DartsS3Space, PartialEdge, channel_shuffle, reduction_layers
from archselect.spaces.ops import OPS, scaled_bn

from conftest import tiny_idx_dir

DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# -- genotype codec -------------------------------------------------------------------------------------------------

def test_parse_darts_v2():
    arch = parse_genotype(DARTS_V2)
    assert arch.space == "darts" and arch.cell_types == ("normal", "reduce")
    normal = arch.cell("normal")
    assert normal.concat == (2, 3, 4, 5) and len(normal.edges) == 8
    assert normal.op_on(2, 5) == "dil_conv_3x3" and normal.op_on(0, 4) == "skip_connect"
    assert normal.op_on(2, 3) is None
    assert arch.cell("reduce").op_on(2, 3) == "skip_connect"
    text = str(arch)
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),")
    assert "normal_concat=range(2, 6)" in text and text.endswith("reduce_concat=range(2, 6))")
    assert parse_genotype(text) == arch
    assert Architecture.from_json(arch.to_json()) == arch
    assert load_architecture("  " + DARTS_V2 + "\n") == arch


def test_parse_accepts_formatting_variants():
    variant = (DARTS_V2.replace("'", '"').replace("[2, 3, 4, 5]", "range(2,6)", 1).replace("), (", "),\n  (")
               .replace('("dil_conv_3x3", 2)]', '["dil_conv_3x3", 2],]'))
    assert '["dil_conv_3x3", 2],]' in variant and parse_genotype(variant) == parse_genotype(DARTS_V2)


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.replace("dil_conv_3x3", "conv_7x7"), "unknown DARTS operation 'conv_7x7'"),
    (lambda g: g.replace("('dil_conv_3x3', 2)", "('none', 2)"), "never keeps 'none'"),
    (lambda g: g.replace(", ('dil_conv_3x3', 2)", ""), "normal has 7 (op, input) pairs"),
    (lambda g: g.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "node 5 cannot take input from node 5"),
    (lambda g: g.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 0)"), "node 5 takes node 0 twice"),
    (lambda g: g.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 3]"), "concat [2, 3] is not supported"),
    (lambda g: g.replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing field 'reduce_concat'"),
    (lambda g: g[:-1], "expected ',' or ')'"),
    (lambda g: g + ")", "expected the end of the genotype"),
    (lambda g: g.replace("normal=", "normal=1, "), "expected '['"),
    (lambda g: g[:20], "unclosed quote at position 18"),
    (lambda g: g.replace("Genotype", "eval"), "expected 'Genotype('"),
    (lambda g: g.replace("normal_concat", "extra"), "unknown field 'extra'"),
    (lambda g: g.replace("[2, 3, 4, 5]", "range(0, 10**99)", 1), "unexpected character '*'"),
])
def test_parse_errors_name_the_problem(mutate, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_genotype(mutate(DARTS_V2))


def test_validate_darts_json():
    d = parse_genotype(DARTS_V2).to_dict()
    d["cells"]["normal"]["edges"][0][2] = "nor_conv_3x3"
    with pytest.raises(UserError, match="unknown DARTS operation 'nor_conv_3x3'"):
        Architecture.from_dict(d)
    d = parse_genotype(DARTS_V2).to_dict()
    d["cells"]["reduce"]["edges"].pop()
    with pytest.raises(UserError, match="node 5 has 1 inputs"):
        Architecture.from_dict(d)
    d = parse_genotype(DARTS_V2).to_dict()
    del d["cells"]["reduce"]
    with pytest.raises(UserError, match="cell types normal and reduce"):
        Architecture.from_dict(d)


@st.composite
def genotype_cells(draw):
    """A valid cell in canonical order: per node 2 distinct inputs (ascending), any genotype op on each."""
    pairs = []
    for dst in range(2, 6):
        srcs = sorted(draw(st.lists(st.integers(0, dst - 1), min_size=2, max_size=2, unique=True)))
        pairs += [(draw(st.sampled_from(GENOTYPE_OPS)), s) for s in srcs]
    return pairs


def _text(normal, reduce):
    fmt = lambda ps: "[" + ", ".join(f"({op!r}, {s})" for op, s in ps) + "]"  # noqa: E731
    return (f"Genotype(normal={fmt(normal)}, normal_concat=range(2, 6), "
            f"reduce={fmt(reduce)}, reduce_concat=range(2, 6))")


@given(genotype_cells(), genotype_cells())
def test_genotype_round_trip(normal, reduce):
    text = _text(normal, reduce)
    arch = parse_genotype(text)
    assert to_genotype_string(arch) == text
    assert Architecture.from_json(arch.to_json()) == arch
    for ct, pairs in (("normal", normal), ("reduce", reduce)):
        for k, (op, src) in enumerate(pairs):
            assert arch.cell(ct).op_on(src, 2 + k // 2) == op


ALPHABET = "()[],='\" 0123456789_abcdeGnoprstuvxyz\n-+.*"


@given(st.data())
def test_mutated_text_gives_architecture_or_user_error(data):
    text = DARTS_V2
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        ch = data.draw(st.sampled_from(ALPHABET))
        if kind == "insert":
            text = text[:i] + ch + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + 1:]
        elif kind == "replace":
            text = text[:i] + ch + text[i + 1:]
        else:
            text = text[:i]
    try:
        arch = parse_genotype(text)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(arch, Architecture) and parse_genotype(str(arch)) == arch


# -- ops ------------------------------------------------------------------------------------------------------------

def test_darts_op_shapes_and_noise():
    x = torch.randn(2, 6, 9, 9)
    for name in ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                 "dil_conv_5x5", "noise"):
        for stride in (1, 2):
            op = OPS.get(name)(6, 6, stride, False, True)
            assert op(x).shape == (2, 6, 5 if stride == 2 else 9, 5 if stride == 2 else 9), (name, stride)
    noise = OPS.get("noise")(6, 6, 1, False, True).eval()
    a, b = noise(x), noise(torch.zeros_like(x))
    assert not torch.equal(a, b) and not a.requires_grad  # fresh N(0,1) each call, whatever the input, in eval too
    big = noise(torch.zeros(8, 6, 32, 32))
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1.0) < 0.05


def test_sep_conv_pre_activated_equals_plain():
    op = OPS.get("sep_conv_3x3")(4, 4, 1, False, True).eval()
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(op(x), op(torch.relu(x), pre_activated=True))


@pytest.mark.parametrize("affine", [False, True])
def test_scaled_bn_folds_the_weight(affine):
    a, b = BatchNorm2d(3, affine=affine), BatchNorm2d(3, affine=affine)
    if affine:
        with torch.no_grad():
            a.weight.uniform_(0.5, 1.5), a.bias.uniform_(-1, 1)
        b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 5, 5)
    w1, w2 = torch.tensor(0.3, requires_grad=True), torch.tensor(0.3, requires_grad=True)
    folded, plain = scaled_bn(a, x, w1), b(x) * w2
    assert torch.allclose(folded, plain, atol=1e-6)
    assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert a.num_batches_tracked == b.num_batches_tracked == 1
    (folded * x).sum().backward(), (plain * x).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, rtol=1e-5)
    a.eval(), b.eval()
    assert torch.allclose(scaled_bn(a, x, 2.0), b(x) * 2.0, atol=1e-6) and torch.equal(scaled_bn(a, x, 1.0), b(x))


def test_max_pool_recomputing_indices_has_the_same_gradient():
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    for stride in (1, 2):
        g = torch.randn_like(F.max_pool2d(x, 3, stride, 1))
        ours = torch.autograd.grad(OPS.get("max_pool_3x3")(3, 3, stride, False, True)(x), x, g)[0]
        assert torch.equal(ours, torch.autograd.grad(F.max_pool2d(x, 3, stride, 1), x, g)[0])


# -- supernet ---------------------------------------------------------------------------------------------------------

def small_space(**kw):
    return DARTSSpace(C=4, N=3, num_classes=5, **kw)


def _warm_bn(model, x, n=3):
    model.train()
    with torch.no_grad():
        for _ in range(n):
            model(x + torch.randn_like(x))
    model.eval()


def test_layout_edges_and_reductions():
    assert len(EDGES) == 14 and EDGES[:5] == ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3)) and EDGES[-1] == (4, 5)
    assert reduction_layers(8) == {2, 5} and reduction_layers(20) == {6, 13}
    net = DARTSSpace(C=4, N=8).supernet()
    assert [net.layer_cell_type(i) for i in range(8)] == ["normal", "normal", "reduce", "normal", "normal", "reduce",
                                                          "normal", "normal"]
    assert {k: tuple(v.shape) for k, v in net.alphas.items()} == {"normal": (14, 8), "reduce": (14, 8)}
    assert SPACES.get("darts-7").op_names == DARTSSpace.op_names[1:]
    assert SPACES.get("darts-s4").op_names == ("noise", "sep_conv_3x3")


def test_darts_v2_parameter_count():
    """DARTS' own log for DARTS_V2 at C=36, 20 cells, CIFAR-10: 'param size = 3.349342MB' (auxiliary head not
    counted)."""
    net = DARTSSpace(num_classes=10).network(parse_genotype(DARTS_V2), C=36, layers=20, auxiliary=True)
    n = sum(p.numel() for name, p in net.named_parameters() if ".auxiliary." not in f".{name}")
    assert n == 3_349_342


@pytest.mark.parametrize("space_cls", [DARTSSpace, DartsS3Space])
def test_one_hot_supernet_equals_discrete_network(space_cls):
    torch.manual_seed(1)
    space = space_cls(C=4, N=3, num_classes=5)
    supernet = space.supernet()
    x = torch.randn(3, 3, 12, 12)
    _warm_bn(supernet, x)
    with torch.no_grad():
        for a in supernet.alphas.values():
            a.normal_()
    arch = space.derive(supernet.mixing_weights(detach=True))
    net = space.network(arch, bn_affine=False, pool_bn=True)
    net.load_from_supernet(supernet)
    net.eval()
    with torch.no_grad():
        assert torch.equal(supernet(x, supernet.one_hot_weights(arch)), net(x))


def test_masked_ops_are_not_computed():
    torch.manual_seed(0)
    space = small_space()
    supernet = space.supernet()
    calls = []
    for name, module in supernet.named_modules():
        if name.endswith("ops.sep_conv_5x5") or name.endswith("ops.max_pool_3x3"):
            module.register_forward_hook(lambda *a, n=name: calls.append(n))
    x = torch.randn(2, 3, 8, 8)
    supernet(x)
    assert calls  # the hooks see the ops when enabled
    calls.clear()
    k5, kmax = space.op_names.index("sep_conv_5x5"), space.op_names.index("max_pool_3x3")
    for ct in space.cell_types:
        mask = torch.ones(14, len(space.op_names), dtype=torch.bool)
        mask[:, [k5, kmax]] = False
        supernet.set_mask(ct, mask)
    w = supernet.mixing_weights()  # requires grad: every *enabled* op is computed
    assert w["normal"][:, k5].eq(0).all()
    out = supernet(x, w)
    out.sum().backward()
    assert calls == [] and torch.isfinite(out).all()


@pytest.mark.parametrize("bf16", [False, True])
def test_recompute_gives_the_same_step(bf16):
    """Recomputing the depthwise outputs in backward changes memory, not numbers: gradients of α and weights, BN
    statistics, and a Hessian-vector product in α (double backward through the recomputation); also under the bf16
    autocast of `search.bf16`."""
    x, results = torch.randn(2, 3, 8, 8), []
    for recompute in (False, True):
        torch.manual_seed(5)
        supernet = small_space(recompute=recompute).supernet()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = supernet(x, supernet.mixing_weights()).float().logsumexp(1).sum()
            alphas = supernet.arch_parameters()
            g = torch.autograd.grad(loss, alphas, create_graph=True)
            hvp = torch.autograd.grad(sum(gi.sum() for gi in g), alphas, retain_graph=True)
            loss.backward()
        grads = {n: p.grad for n, p in supernet.named_parameters()}
        results.append((supernet.state_dict(), grads, hvp))
    (s0, g0, h0), (s1, g1, h1) = results
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert all(torch.equal(g0[k], g1[k]) for k in g0)
    assert all(torch.equal(a, b) for a, b in zip(h0, h1)) and h0[0].abs().sum() > 0


def test_partial_channels_forward_backward():
    torch.manual_seed(0)
    space = DARTSSpace(C=8, N=3, num_classes=5, partial_channels=4)
    supernet = space.supernet()
    edge = supernet.body.cells[0].edges[0]
    assert isinstance(edge, PartialEdge) and edge.ops["sep_conv_3x3"].pw2.out_channels == 2
    x = torch.randn(4, 3, 10, 10)
    out = supernet(x, supernet.mixing_weights())
    assert out.shape == (4, 5)
    out.logsumexp(1).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
    assert all(p.grad is not None for p in supernet.weight_parameters())
    with pytest.raises(UserError, match="partial_channels=3"):
        DARTSSpace(C=8, partial_channels=3).supernet()
    with pytest.raises(UserError, match="space.N=2: a DARTS supernet needs at least 3 cells"):
        DARTSSpace(C=8, N=2).supernet()


def test_partial_channels_1_is_the_plain_supernet():
    torch.manual_seed(3)
    plain = small_space().supernet()
    torch.manual_seed(3)
    k1 = small_space(partial_channels=1).supernet()
    assert plain.state_dict().keys() == k1.state_dict().keys()
    x = torch.randn(2, 3, 8, 8)
    plain.eval(), k1.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), k1(x))


def test_partial_edge_bypass_and_shuffle():
    """Ops see the first C/K channels; the rest bypass; channel j*K+g of the output is channel g*C/K+j of the join."""
    C, K = 8, 4
    edge = PartialEdge(C, 1, ["skip_connect"], False, True, K, pool_bn=False)
    x = torch.randn(2, C, 5, 5)
    y = edge.join(x[:, :C // K] * 3.0, x)
    joined = torch.cat([x[:, :C // K] * 3.0, x[:, C // K:]], 1)
    perm = [g * (C // K) + j for j in range(C // K) for g in range(K)]
    assert torch.equal(y, joined[:, perm]) and torch.equal(channel_shuffle(joined, K), joined[:, perm])
    strided = PartialEdge(C, 2, ["max_pool_3x3"], False, True, K, pool_bn=False)
    y = strided.join(None, x)  # no op ran: zero op part, 2x2 max-pooled bypass (ceil mode at odd sizes)
    assert y.shape == (2, C, 3, 3)
    pooled = torch.nn.functional.max_pool2d(x[:, C // K:], 2, 2, ceil_mode=True)
    assert torch.equal(y[:, perm.index(C // K)], pooled[:, 0])
    assert y[:, 0].abs().sum() == 0


def test_edge_normalisation():
    torch.manual_seed(0)
    supernet = small_space(partial_channels=2, edge_norm=True).supernet()
    with torch.no_grad():
        supernet.betas["normal"].normal_()
    ew = supernet.edge_weights("normal")
    assert torch.allclose(ew[:2].sum(), torch.tensor(1.0)) and torch.allclose(ew[9:].sum(), torch.tensor(1.0))
    w = supernet.mixing_weights()
    plain = torch.softmax(supernet.alphas["normal"], -1)
    assert torch.allclose(w["normal"], plain * ew.unsqueeze(1))
    names = {id(p) for p in supernet.weight_parameters()}
    assert all(id(b) not in names for b in supernet.betas.values())
    assert len(supernet.arch_parameters()) == 4
    supernet(torch.randn(2, 3, 8, 8), w).sum().backward()
    assert supernet.betas["normal"].grad.abs().sum() > 0


# -- derive -------------------------------------------------------------------------------------------------------

def test_derive_top2_edges_drops_none():
    space = DARTSSpace()
    K = len(space.op_names)
    none, skip, sep3, dil5 = (space.op_names.index(n) for n in ("none", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"))
    s = torch.full((14, K), 0.01)
    s[:, none] = 0.9                        # `none` is never chosen, however large
    s[0, sep3], s[1, skip] = 0.5, 0.4       # node 2: both of its edges
    s[2, dil5], s[3, sep3], s[4, skip] = 0.2, 0.3, 0.25   # node 3: edges 1->3 and 2->3
    s[5, sep3] = s[6, sep3] = s[7, sep3] = 0.3            # node 4: a tie of three: lower edge index wins
    s[12, skip] = 0.8                       # node 5 (edges 9..13): 3->5, then a tie at 0.01 -> edge 9 (0->5)
    arch = space.derive({"normal": s, "reduce": s})
    normal = arch.cell("normal")
    assert {(e.src, e.dst): e.op for e in normal.edges} == {
        (0, 2): "sep_conv_3x3", (1, 2): "skip_connect", (1, 3): "sep_conv_3x3", (2, 3): "skip_connect",
        (0, 4): "sep_conv_3x3", (1, 4): "sep_conv_3x3", (3, 5): "skip_connect", (0, 5): "max_pool_3x3"}
    mask = torch.ones(14, K, dtype=torch.bool)
    mask[0] = False                         # edge 0->2 disabled: node 2 must take... only one edge left
    with pytest.raises(UserError, match="node 2 has fewer than 2"):
        space.derive({"normal": s, "reduce": s}, {"normal": mask, "reduce": mask})
    mask = torch.ones(14, K, dtype=torch.bool)
    mask[12, skip] = False                  # 3->5 loses its skip: 0.01 everywhere else, ties by edge index
    arch = space.derive({"normal": s, "reduce": s}, {"normal": mask, "reduce": mask})
    assert {(e.src, e.dst) for e in arch.cell("normal").edges if e.dst == 5} == {(0, 5), (1, 5)}


# -- config, CLI ------------------------------------------------------------------------------------------------------

def test_space_config_reaches_the_space():
    cfg = load_config(None, ["space.name=darts-7", "space.C=8", "space.N=5", "space.partial_channels=4",
                             "space.edge_norm=true", "space.stem_multiplier=2"])
    space = space_of(cfg, 1, 10)
    assert (space.C, space.N, space.partial_channels, space.edge_norm, space.stem_multiplier) == (8, 5, 4, True, 2)
    with pytest.raises(UserError, match="space.partial_channels does not apply to the 'nb201' space"):
        space_of(load_config(None, ["space.partial_channels=2", "space.C=8"]), 1, 10)
    with pytest.raises(UserError, match="space.partial_channels must be positive and divide space.C"):
        load_config(None, ["space.partial_channels=3"])


def test_cli_darts_search(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["search", "--out", str(run), f"data.data_dir={data}", "space.name=darts", "space.C=4", "space.N=3",
                 "data.batch_size=32", "search.epochs=1", "threads=1"])
    out = capsys.readouterr().out
    assert code == 0
    text = json.loads((run / "result.json").read_text())["architecture"]["text"]
    assert text.startswith("Genotype(normal=[") and text in out
    assert parse_genotype(text).space == "darts"


def test_rdarts_s1_has_two_ops_per_edge_and_derives_from_them(tmp_path):
    """darts-s1: each edge of each cell type offers R-DARTS' pair of ops alone (masks over the 7 ops); a search derives
    a genotype from those pairs only."""
    from archselect.spaces.darts import S1_EDGE_OPS

    space = SPACES.get("darts-s1")(C=4, N=3, in_channels=1, num_classes=4)
    net = space.supernet()
    for ct, pairs in S1_EDGE_OPS.items():
        enabled = [{space.op_names[k] for k in row.nonzero().flatten().tolist()} for row in net.mask(ct)]
        assert enabled == [set(p) for p in pairs]
        w = net.mixing_weights(detach=True)[ct]
        assert torch.allclose(w.sum(1), torch.ones(len(pairs))) and (w[~net.mask(ct)] == 0).all()
    arch = space.derive({ct: torch.randn(14, 7) for ct in S1_EDGE_OPS}, {ct: net.mask(ct) for ct in S1_EDGE_OPS})
    for ct in S1_EDGE_OPS:
        for e in arch.cell(ct).edges:
            assert e.op in S1_EDGE_OPS[ct][EDGES.index((e.src, e.dst))]
    data = tiny_idx_dir(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "space.name=darts-s1", "space.C=4", "space.N=3", "search.epochs=1",
                 "data.batch_size=32", f"data.data_dir={data}", "threads=1"]) == 0
    result = json.loads((out / "result.json").read_text())
    derived = Architecture.from_dict(result["architecture"])
    for ct in S1_EDGE_OPS:
        assert all(e.op in S1_EDGE_OPS[ct][EDGES.index((e.src, e.dst))] for e in derived.cell(ct).edges)
