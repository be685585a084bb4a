"""Few-shot NAS: exact partitions, gradient distances, sub-supernets, and the split search end to end."""
import dataclasses
import itertools
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from archselect.cli import main
from archselect.config import load_config
from archselect.errors import UserError
from archselect.fewshot import schedule
from archselect.fewshot.choice import _scored_everywhere, choose, rule_label
from archselect.fewshot.gradient_matching import (candidate_edges, measure, pairwise_distance, parameter_map,
                                                  shared_parameters)
from archselect.fewshot.partition import (admissible_sizes, best_partition, partitions, pick_edge, singletons,
                                          within_distance)
from archselect.fewshot.settings import official_defaults, resolve
from archselect.fewshot.split import split_masks, split_supernet
from archselect.spaces.nb201 import NB201Space
from archselect.supernet import Supernet

from conftest import tiny_idx_dir


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# ---------------------------------------------------------------------------------------------------- partitions

def test_partition_counts_follow_the_official_group_sizes():
    assert admissible_sizes(5, 2) == [(2, 3)]                # NB201: a pair and the other three
    assert admissible_sizes(7, 2) == [(2, 5), (3, 4)]        # DARTS: subsets of size 2..3 as group 0
    assert len(list(partitions(5, 2))) == 10                 # C(5,2)
    assert len(list(partitions(7, 2))) == 21 + 35            # C(7,2) + C(7,3)
    assert len(list(partitions(6, 3))) == 15                 # three pairs
    assert len(list(partitions(5, 2, sizes=[4, 1]))) == 5
    every = list(partitions(7, 2))
    assert len({frozenset(map(frozenset, p)) for p in every}) == len(every)  # no partition twice
    with pytest.raises(ValueError):
        admissible_sizes(5, 3)  # three groups of >= 2 ops need 6 ops


def _brute_force(d, groups, sizes):
    """Minimum within-group distance over every labelling of the ops (g^K of them)."""
    k, best = d.shape[0], float("inf")
    allowed = sorted(sizes) if sizes else None
    for labels in itertools.product(range(groups), repeat=k):
        members = [[i for i in range(k) if labels[i] == g] for g in range(groups)]
        counts = sorted(len(m) for m in members)
        if allowed is not None and counts != allowed or allowed is None and min(counts) < 2:
            continue
        best = min(best, sum(float(d[i, j]) for m in members for a, i in enumerate(m) for j in m[a + 1:]))
    return best


@settings(max_examples=40)
@given(data=st.data(), k=st.integers(4, 7), groups=st.integers(2, 3), explicit=st.booleans())
def test_best_partition_is_the_brute_force_optimum(data, k, groups, explicit):
    if not explicit and 2 * groups > k:
        groups = 2
    sizes = None
    if explicit:
        cuts = sorted(data.draw(st.lists(st.integers(1, k - 1), min_size=groups - 1, max_size=groups - 1,
                                         unique=True)))
        bounds = [0, *cuts, k]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    values = data.draw(st.lists(st.floats(0.0, 2.0), min_size=k * k, max_size=k * k))
    d = torch.tensor(values, dtype=torch.float64).reshape(k, k)
    d = (d + d.T) / 2
    d.fill_diagonal_(0.0)
    p = best_partition(d, groups, sizes)
    assert sorted(i for g in p.groups for i in g) == list(range(k))
    assert p.within == pytest.approx(_brute_force(d, groups, sizes), abs=1e-9)
    assert p.within == pytest.approx(within_distance(d, p.groups))
    assert p.cut == pytest.approx(p.total - p.within)


def test_edge_criteria_can_disagree_and_pick_their_own_edge():
    # edge A: two tight clusters far apart (large cut, small within); edge B: all ops far apart (larger cut and
    # larger within). The largest cut (NB201) picks B, the smallest within (DARTS) picks A.
    a = torch.tensor([[0, .1, 1, 1, 1], [.1, 0, 1, 1, 1], [1, 1, 0, .1, .1], [1, 1, .1, 0, .1],
                      [1, 1, .1, .1, 0]], dtype=torch.float64)
    b = torch.full((5, 5), 1.9, dtype=torch.float64).fill_diagonal_(0)
    pa, pb = best_partition(a), best_partition(b)
    assert pa.groups == ((0, 1), (2, 3, 4)) and pa.within == pytest.approx(0.4) and pa.cut == pytest.approx(6.0)
    assert pb.within == pytest.approx(4 * 1.9) and pb.cut == pytest.approx(6 * 1.9)
    assert pick_edge([pa, pb], "cut") == 1
    assert pick_edge([pa, pb], "within") == 0
    assert singletons(a).cut == pytest.approx(float(torch.triu(a, 1).sum()))
    assert pick_edge([pa, pa], "cut") == 0  # ties: the first candidate


# ---------------------------------------------------------------------------------------------------- gradients

class _Neg(nn.Module):
    def forward(self, x):
        return -x


class _Edge(nn.Module):
    def __init__(self, ops):
        super().__init__()
        self.ops = nn.ModuleDict(ops)


class _Cell(nn.Module):
    def __init__(self, C):
        super().__init__()
        # edge 0 (the one split): three parameter-free ops, two identical and one the negation;
        # edge 1: a 1x1 convolution, the shared weight, initialised to zero so the logits are 0 whatever edge 0 does
        lin0 = nn.Conv2d(C, C, 1, bias=False)
        self.edges = nn.ModuleList([_Edge({"id": nn.Identity(), "id2": nn.Identity(), "neg": _Neg(), "lin": lin0}),
                                    _Edge({"lin": nn.Conv2d(C, C, 1, bias=False)})])
        nn.init.zeros_(self.edges[1].ops["lin"].weight)


class ToySupernet(Supernet):
    """x -> edge 0 -> edge 1 -> mean over pixels = logits; one cell per cell type, in order."""

    OPS = ("id", "id2", "neg", "lin")

    def __init__(self, cell_types=("cell",), C=4):
        super().__init__({ct: ((0, 1), (1, 2)) for ct in cell_types}, self.OPS, 1e-3)
        self.stem_conv = nn.Conv2d(C, C, 1)
        self.layers = nn.ModuleList([_Cell(C) for _ in cell_types])
        self.classifier_scale = nn.Parameter(torch.ones(1))
        for ct in cell_types:
            self.set_mask(ct, torch.tensor([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool))

    def stem(self, x):
        return x

    @property
    def num_layers(self):
        return len(self.layers)

    def layer_cell_type(self, i):
        return self.cell_types[i]

    def run_layer(self, i, x, plans):
        plan, cell = plans[self.cell_types[i]], self.layers[i]
        node1 = sum(w * cell.edges[0].ops[self.OPS[k]](x) for k, w in plan[0])
        return sum(w * cell.edges[1].ops[self.OPS[k]](node1) for k, w in plan[1])

    def head(self, x):
        return x.mean((2, 3))


@pytest.mark.parametrize("op_weight", ["one", "softmax"])
def test_identical_gradients_have_distance_0_and_opposite_ones_2(op_weight):
    torch.manual_seed(0)
    net = ToySupernet()
    batches = [(torch.randn(8, 4, 3, 3), torch.randint(0, 4, (8,))) for _ in range(3)]
    (cos,), cost = measure(net, [("cell", 0)], batches, "cos", op_weight)
    assert cos.ops == (0, 1, 2) and cos.batches == 3
    assert cos.mean[0, 1] == pytest.approx(0.0, abs=1e-6)     # id vs id2: the same gradient
    assert cos.mean[0, 2] == pytest.approx(2.0, abs=1e-6)     # id vs neg: the opposite gradient
    assert cos.mean[1, 2] == pytest.approx(2.0, abs=1e-6)
    assert torch.equal(cos.mean, cos.mean.T) and float(cos.stderr.max()) < 1e-6
    assert cost["forward"] == cost["backward"] == 3 * 3 and cost["images"] == 3 * 3 * 8
    (pf,), _ = measure(net, [("cell", 0)], batches, "per-filter-cos", op_weight)
    assert pf.mean[0, 1] == pytest.approx(0.0, abs=1e-5) and pf.mean[0, 2] == pytest.approx(2.0 * 4, abs=1e-5)
    (mse,), _ = measure(net, [("cell", 0)], batches, "mse", op_weight)
    g = _gradient(net, batches, op=0, op_weight=op_weight)
    if op_weight == "one":  # with softmax weights the ops' gradients differ in scale: only the cosines match
        assert mse.mean[0, 1] == pytest.approx(0.0, abs=1e-12)
        assert mse.mean[0, 2] == pytest.approx(4 * g, rel=1e-5)    # |g - (-g)|^2, averaged over the batches


def _gradient(net, batches, op, op_weight):
    """Mean over batches of |grad of the shared conv|^2 with `op` alone on edge 0 (computed directly)."""
    w = net.layers[0].edges[1].ops["lin"].weight
    total = 0.0
    for x, y in batches:
        weights = net.mixing_weights(detach=True)
        weights["cell"][0] = 0.0
        weights["cell"][0, op] = 1.0 if op_weight == "one" else net.mixing_weights(detach=True)["cell"][0, op]
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(x, weights), y), [w])
        total += float(g.double().pow(2).sum())
    return total / len(batches)


def test_pairwise_distance_formulas():
    a = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([3.0])]
    b = [torch.tensor([[0.0, 1.0], [0.0, 2.0]]), torch.tensor([-3.0])]
    cos = pairwise_distance([a, b], "cos")
    assert cos[0, 1] == pytest.approx(1 - (4 - 9) / 14)                  # 1-D parameters count for cos
    pf = pairwise_distance([a, b], "per-filter-cos")
    assert pf[0, 1] == pytest.approx((1 - 0) + (1 - 1))                   # rows: orthogonal, equal; 1-D skipped
    mse = pairwise_distance([a, b], "mse")
    assert mse[0, 1] == pytest.approx(1 + 1 + 36) and torch.all(mse.diagonal() == 0)


def test_shared_weights_follow_the_official_choice_on_nb201():
    net = NB201Space(C=4, N=1, in_channels=1, num_classes=3).supernet()
    mask = net.mask("cell").clone()
    mask[4, 2] = False  # a disabled op gets no gradient: not shared
    net.set_mask("cell", mask)
    names = {n for n, _ in shared_parameters(net, "cell", 2)}
    ops = {n for n, _ in net.named_parameters() if ".ops." in n}
    cells = [i for i in range(net.num_layers) if net.layer_cell_type(i) == "cell"]
    expected_ops = {n for n in ops if ".edges.2." not in n and ".edges.4.ops.nor_conv_1x1." not in n}
    reduction = {n for n, _ in net.named_parameters() if n.startswith(("body.layers.1.", "body.layers.3."))}
    assert cells == [0, 2, 4] and reduction and names == expected_ops | reduction
    assert not any(n.startswith(("body.stem", "body.lastact", "body.classifier", "alphas")) for n in names)


def test_shared_weights_follow_the_official_choice_in_the_darts_space():
    from archselect.spaces import SPACES

    net = SPACES.get("darts")(C=4, N=3, in_channels=1, num_classes=3).supernet()
    types = [net.layer_cell_type(i) for i in range(net.num_layers)]
    names = {n for n, _ in shared_parameters(net, "normal", 0)}
    ops = {n for n, _ in net.named_parameters() if ".ops." in n}
    same_edge = {n for n in ops if any(n.startswith(f"body.cells.{i}.edges.0.") for i, t in enumerate(types)
                                       if t == "normal")}
    assert same_edge and names == ops - same_edge  # other edges of normal cells + every op of the reduce cells
    assert any(n.startswith("body.cells.1.edges.0.") for n in names) and types[1] == "reduce"
    assert not any(".pre0." in n or ".pre1." in n or "stem" in n or "classifier" in n for n in names)
    assert official_defaults(net.cell_types, "gm")["cell_types"] == ["normal"]


def test_shared_weights_with_two_cell_types():
    net = ToySupernet(("normal", "reduce"))
    names = {n for n, _ in shared_parameters(net, "normal", 1)}
    # normal cell (layer 0): its edge 1 is the candidate, edge 0's `lin` is disabled; reduce cell: every enabled op
    assert names == {"layers.1.edges.1.ops.lin.weight"}
    assert {n for n, _ in shared_parameters(net, "reduce", 1)} == {"layers.0.edges.1.ops.lin.weight"}
    assert parameter_map(net).fixed == []
    assert candidate_edges(net, ["normal", "reduce"]) == []  # no row is fully enabled in the toy


def test_measuring_leaves_the_supernet_as_it_was():
    torch.manual_seed(1)
    net = NB201Space(C=4, N=1, in_channels=1, num_classes=3).supernet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [(torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))) for _ in range(2)]
    edges = candidate_edges(net, ["cell"])
    out, _ = measure(net, edges[:2], batches)
    assert not net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    for d in out:
        assert torch.allclose(d.mean, d.mean.T) and torch.all(d.mean.diagonal() == 0)
        assert float(d.mean.min()) >= 0 and float(d.mean.max()) <= 2 + 1e-6 and d.mean.shape == (5, 5)


# ---------------------------------------------------------------------------------------------------- splitting

def test_sub_supernets_inherit_weights_and_enable_only_their_group():
    torch.manual_seed(2)
    net = NB201Space(C=4, N=1, in_channels=1, num_classes=3).supernet()
    with torch.no_grad():
        net.alphas["cell"].normal_()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    children = split_supernet(net, "cell", 3, [[0, 2], [1, 3, 4]])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the caller is unchanged
    for child, group in zip(children, [[0, 2], [1, 3, 4]]):
        mask = child.mask("cell")
        assert mask[3].nonzero().flatten().tolist() == group
        assert mask[[0, 1, 2, 4, 5]].all()
        state = child.state_dict()
        assert all(torch.equal(state[k], v) for k, v in before.items() if not k.startswith("mask"))
        w = child.mixing_weights(detach=True)["cell"]
        expected = torch.softmax(net.alphas["cell"][3, group].detach(), dim=0)
        assert torch.allclose(w[3, group], expected) and w[3].sum() == pytest.approx(1.0)
        assert torch.all(w[3][[k for k in range(5) if k not in group]] == 0)
        assert child.alphas["cell"] is not net.alphas["cell"]
    deeper = split_masks(children[1], "cell", 0, [[0, 1], [2, 3, 4]])
    assert deeper[0]["cell"][3].nonzero().flatten().tolist() == [1, 3, 4]  # the first split stays
    for bad in ([[0, 1], [2, 3]], [[0, 1, 2, 3, 4]], [[0, 2], [1, 3, 4, 4]]):
        with pytest.raises(ValueError, match="partition|two non-empty"):
            split_masks(net, "cell", 3, bad)
    with pytest.raises(ValueError, match="partition"):
        split_masks(children[0], "cell", 3, [[0], [1]])  # op 1 is not enabled on that edge any more


def test_exhaustive_split_makes_one_sub_supernet_per_op_without_measuring(monkeypatch):
    net = NB201Space(C=4, N=1, in_channels=1, num_classes=3).supernet()
    monkeypatch.setattr(schedule, "measure", lambda *a, **k: pytest.fail("exhaustive on a given edge measures"))
    cfg = load_config(None, ["split.method=exhaustive", "search.epochs=4", "split.epochs=[1]"])
    s = resolve(cfg, ("cell",), 5)
    record = schedule.decide_split(net, None, 1, s, 0)
    assert s.edge_criterion == "first" and record["edge"] == 0 and record["cost"] is None
    assert record["groups"] == [[op] for op in net.op_names]


def test_official_defaults_per_space():
    nb = resolve(load_config(None, ["split.method=gm"]), ("cell",), 5)
    assert (nb.edge_criterion, nb.op_weight, nb.warmup_alpha, nb.restart_schedule, nb.cell_types) == \
        ("cut", "one", "init", "total", ["cell"])
    assert (nb.epochs, nb.batches, nb.restart, nb.choose) == ([15, 30], 100, "final", "supernet")
    darts = resolve(load_config(None, ["split.method=gm"]), ("normal", "reduce"), 7)
    assert (darts.edge_criterion, darts.op_weight, darts.warmup_alpha, darts.restart_schedule, darts.cell_types) == \
        ("within", "softmax", "equal", "remaining", ["normal"])


def test_choosing_among_leaves_supernet_oracle_and_ties():
    s = resolve(load_config(None, ["split.method=gm"]), ("cell",), 5)

    def sel(acc, bench, bn="train"):
        return {"bn": bn, "valid_acc": acc, "benchmark": {"cifar10_valid": bench}}

    leaves = {"0": {"selections": {"magnitude": sel(0.5, 90.0), "shapley": sel(0.7, 80.0)}},
              "1": {"selections": {"magnitude": sel(0.6, 85.0)}},
              "2": {"selections": {"magnitude": sel(0.6, 70.0)}}}
    assert _scored_everywhere(leaves, ["shapley", "magnitude"]) == ["magnitude"]
    chosen = choose(leaves, ["magnitude"], s)["magnitude"]
    assert chosen["leaf"] == "1" and chosen["scores"] == {"0": 0.5, "1": 0.6, "2": 0.6}  # a tie: the first leaf
    oracle = dataclasses.replace(s, choose="oracle")
    assert choose(leaves, ["magnitude"], oracle)["magnitude"]["leaf"] == "0"
    assert "oracle" in rule_label(oracle) and "oracle" not in rule_label(s)
    leaves["2"]["selections"]["magnitude"]["bn"] = "eval"
    with pytest.raises(UserError, match="BN in eval mode"):
        choose(leaves, ["magnitude"], s)
    leaves["2"]["selections"]["magnitude"]["benchmark"] = {"note": "no table"}
    with pytest.raises(UserError, match="no table"):
        choose(leaves, ["magnitude"], oracle)


def test_group_sizes_must_fit_the_space():
    with pytest.raises(UserError, match="add up to the 5 ops"):
        resolve(load_config(None, ["split.method=gm", "split.sizes=[2, 2]"]), ("cell",), 5)
    with pytest.raises(UserError, match="groups of at least 2"):
        resolve(load_config(None, ["split.method=gm", "split.groups=3"]), ("cell",), 5)
    assert resolve(load_config(None, ["split.method=gm", "split.groups=3", "split.sizes=[1, 2, 2]"]),
                            ("cell",), 5).sizes == [1, 2, 2]


@pytest.mark.parametrize("override, words", [
    ("split.method=random", "split.method"),
    ("split.epochs=[30, 15]", "increase"),
    ("split.epochs=[10, 50]", "search.epochs"),
    ("split.sizes=[2, 2, 0]", "split.sizes"),
    ("split.groups=[2, 2, 2]", "one per split epoch"),
    ("split.groups=1", "split.groups must lie"),
    ("split.groups=many", "choose auto"),
    ("split.shared=stem", "split.shared"),
    ("split.distance=l1", "per-filter-cos"),
    ("split.choose=best", "oracle"),
    ("split.batches=0", "split.batches"),
    ("split.edges=[0]", "one edge per split"),
])
def test_split_config_errors_name_the_key(override, words):
    with pytest.raises(UserError, match=words):
        load_config(None, ["split.method=gm", override])


# ---------------------------------------------------------------------------------------------------- the search

def tiny_split_args(data_dir, epochs=3, split_epochs="[1,2]"):
    return [f"data.data_dir={data_dir}", "space.C=4", "space.N=1", "data.batch_size=32", f"search.epochs={epochs}",
            f"split.epochs={split_epochs}", "split.batches=1", "threads=1"]


@pytest.fixture
def data_dir(tmp_path):
    return tiny_idx_dir(tmp_path / "data")


def test_gm_split_search_end_to_end(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["search", "--split", "gm", "--out", str(run), *tiny_split_args(data_dir)]) == 0
    out = capsys.readouterr().out
    tree = json.loads((run / "split" / "tree.json").read_text())
    assert tree["leaves"] == ["0-0", "0-1", "1-0", "1-1"]
    assert tree["settings"]["edge_criterion"] == "cut" and tree["settings"]["method"] == "gm"
    root = tree["nodes"]["root"]["split"]
    assert len(root["candidates"]) == 6 and root["cost"]["forward"] == 6 * 5 * 1
    best = max(root["candidates"], key=lambda c: c["cut"])
    assert root["edge"] == best["edge"] and sorted(map(len, root["groups"])) == [2, 3]
    for child in ("0", "1"):
        node = tree["nodes"][child]
        assert node["epochs"] == [1, 2] and len(node["split"]["candidates"]) == 5  # the split edge is no candidate
        assert node["split"]["edge"] != root["edge"]
        assert node["enabled"]["cell"][root["edge"]] == root["groups"][int(child)]
    for leaf in tree["leaves"]:
        node, parent = tree["nodes"][leaf], tree["nodes"][leaf.split("-")[0]]
        enabled = node["result"]["enabled"]["cell"]
        assert enabled[root["edge"]] == root["groups"][int(leaf[0])]
        assert enabled[parent["split"]["edge"]] == parent["split"]["groups"][int(leaf[-1])]
        assert node["epochs"] == [2, 3] and (run / "split" / leaf / "selections" / "magnitude.json").exists()
        arch = node["result"]["selections"]["magnitude"]
        assert 0.0 <= arch["valid_acc"] <= 1.0
        ops = {e[2] for e in arch["arch"]["cells"]["cell"]["edges"] if [e[0], e[1]] == root["nodes"]}
        assert ops <= set(root["groups"][int(leaf[0])])  # the selection respects the sub-supernet's ops
    result = json.loads((run / "result.json").read_text())
    scores = result["split"]["per_selector"]["magnitude"]["scores"]
    assert result["split"]["rule"] == "supernet" and not result["split"]["oracle"]
    assert scores[result["split"]["leaf"]] == max(scores.values())
    assert f"supernet choice among 4 sub-supernets): {result['selections']['magnitude']}" in out

    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "split search (gm)" in shown and "chosen: sub-supernet" in shown and "epochs 2-3, 1/1 trained" in shown


def test_oracle_without_a_table_fails_before_training(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["search", "--split", "gm", "--out", str(run), *tiny_split_args(data_dir), "split.choose=oracle"]) == 2
    assert "archselect benchmark import" in capsys.readouterr().err and not (run / "split" / "root").exists()


def test_oracle_choice_is_labelled_everywhere(tmp_path, data_dir, nb201_csv, capsys):
    run = tmp_path / "run"
    args = [*tiny_split_args(data_dir, epochs=2, split_epochs="[1]"), f"benchmark={nb201_csv}"]
    assert main(["search", "--split", "gm", "--out", str(run), *args]) == 0
    capsys.readouterr()
    assert main(["select", str(run), "split.choose=oracle", "--selector", "magnitude"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert result["split"]["rule"] == "oracle" and result["split"]["oracle"]
    assert "oracle" in result["split"]["label"] and "oracle choice" in out
    tree = json.loads((run / "split" / "tree.json").read_text())
    assert tree["choice"]["rule"] == "oracle" and "analysis only" in tree["choice"]["label"]
    per = result["split"]["per_selector"]["magnitude"]
    assert per["score"] == max(per["scores"].values()) == result["benchmark"]["cifar10_valid"]


def test_split_search_resumes_without_redoing_work(tmp_path, data_dir, monkeypatch, capsys):
    """A crash while the children of a split are created: the resumed search reuses the recorded split and ends
    exactly where an uninterrupted search ends."""
    args = tiny_split_args(data_dir, epochs=2, split_epochs="[1]")
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert main(["search", "--split", "gm", "--out", str(whole), *args]) == 0

    real_init = schedule.init_node

    def crash_at_child_1(cfg, s, tree, node_id, *rest):
        if node_id == "1":
            raise KeyboardInterrupt
        return real_init(cfg, s, tree, node_id, *rest)

    monkeypatch.setattr(schedule, "init_node", crash_at_child_1)
    assert main(["search", "--split", "gm", "--out", str(crashed), *args]) == 130
    monkeypatch.setattr(schedule, "init_node", real_init)
    monkeypatch.setattr(schedule, "measure", lambda *a, **k: pytest.fail("the recorded split was measured again"))
    assert main(["search", "--resume", str(crashed)]) == 0
    capsys.readouterr()
    a = json.loads((whole / "split" / "tree.json").read_text())
    b = json.loads((crashed / "split" / "tree.json").read_text())
    assert a["nodes"]["root"]["split"] == {**b["nodes"]["root"]["split"], "cost": a["nodes"]["root"]["split"]["cost"]}
    for leaf in ("0", "1"):
        assert (whole / "split" / leaf / "supernet-00000000.safetensors").read_bytes() == \
            (crashed / "split" / leaf / "supernet-00000000.safetensors").read_bytes()
    assert json.loads((whole / "result.json").read_text())["selections"] == \
        json.loads((crashed / "result.json").read_text())["selections"]
    # a resumed run must keep its split settings
    config = (crashed / "config.yaml").read_bytes()
    assert main(["search", "--resume", str(crashed), "split.batches=3"]) == 2
    assert "--resume cannot change split.batches" in capsys.readouterr().err
    assert (crashed / "config.yaml").read_bytes() == config  # refused before anything is written


@pytest.mark.slow
def test_exhaustive_split_search_end_to_end(tmp_path, data_dir):
    run = tmp_path / "run"
    args = [*tiny_split_args(data_dir, epochs=2, split_epochs="[1]"), "split.edges=[3]", "split.restart=inherit"]
    assert main(["search", "--split", "exhaustive", "--out", str(run), *args]) == 0
    tree = json.loads((run / "split" / "tree.json").read_text())
    assert tree["leaves"] == ["0", "1", "2", "3", "4"]
    for k, leaf in enumerate(tree["leaves"]):
        assert tree["nodes"][leaf]["result"]["enabled"]["cell"][3] == [tree["nodes"]["root"]["split"]["groups"][k][0]]
    assert tree["nodes"]["root"]["split"]["cost"] is None


def test_split_command_scores_a_finished_search(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    args = tiny_split_args(data_dir, epochs=1)[:5] + ["threads=1"]
    assert main(["search", "--out", str(run), *args]) == 0
    supernet = (run / "supernet-00000000.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["split", str(run), "split.batches=1", "split.edge_criterion=within"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("* cell edge") for line in lines) == 1 and len(lines) == 7
    nb201 = ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]  # edges by index where split.edges needs it, and by nodes
    assert [line[2:].split(":")[0] for line in lines[:6]] == [f"cell edge {e} ({n})" for e, n in enumerate(nb201)]
    scores = json.loads((run / "split-scores.json").read_text())
    assert scores["criterion"] == "within" and len(scores["candidates"]) == 6
    assert scores["edge"] == min(scores["candidates"], key=lambda c: c["within"])["edge"]
    assert (run / "supernet-00000000.safetensors").read_bytes() == supernet


def _leaf_results(run):
    tree = json.loads((run / "split" / "tree.json").read_text())
    return {leaf: tree["nodes"][leaf]["result"] for leaf in tree["leaves"]}


@pytest.mark.slow  # 30 s; tests/test_executors.py keeps the executor contract in the default run
def test_leaves_as_executor_jobs_equal_the_sequential_loop(tmp_path, data_dir, capsys, monkeypatch):
    """`--executor` runs the sub-supernets as independent jobs (Ray when installed; the job path in-process
    otherwise): same leaves, same results, same choice as the plain loop."""
    import importlib.util

    import archselect.cli as cli
    from archselect.executors import SequentialExecutor

    plain, jobs = tmp_path / "plain", tmp_path / "jobs"
    assert main(["search", "--split", "gm", "--out", str(plain), *tiny_split_args(data_dir)]) == 0
    executor = ["--executor", "ray"] if importlib.util.find_spec("ray") is not None else []
    if not executor:  # no Ray: hand the job path the sequential executor explicitly
        real = cli._split_and_report
        monkeypatch.setattr(cli, "_split_and_report",
                            lambda run, cfg, device, log, ex=None: real(run, cfg, device, log, SequentialExecutor()))
    assert main(["search", "--split", "gm", "--out", str(jobs), *executor, *tiny_split_args(data_dir)]) == 0
    assert _leaf_results(jobs) == _leaf_results(plain)
    a, b = (json.loads((r / "result.json").read_text()) for r in (plain, jobs))
    assert a["selections"] == b["selections"] and a["split"]["leaf"] == b["split"]["leaf"]
    capsys.readouterr()
