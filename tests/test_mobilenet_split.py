"""Few-shot splitting on the mobilenet space: layers as edges of their stage, candidates under the base mask, the
shared block weights, GM-NAS' MobileNet settings, exhaustive and gradient-matching splits, the split search."""
import dataclasses
import json

import pytest
import torch

from archselect.cli import main
from archselect.config import load_config
from archselect.errors import UserError
from archselect.fewshot import schedule
from archselect.fewshot.gradient_matching import candidate_edges, parameter_map, shared_parameters
from archselect.fewshot.settings import settings_for
from archselect.fewshot.split import split_masks
from archselect.mobilenet_text import CELL_TYPES, OPS
from archselect.spaces.mobilenet import MobileNetSpace

from conftest import tiny_idx_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

LAYERS = [1, 2, 1, 1, 1, 1]  # stage 2 has a second layer, the only one with `zero`
SPACE = ["space.name=mobilenet", "space.resolution=32", "space.width_mult=0.25", f"space.stage_layers={LAYERS}"]
ZERO = OPS.index("zero")


def tiny_supernet():
    return MobileNetSpace(resolution=32, width_mult=0.25, stage_layers=LAYERS, in_channels=1, num_classes=4).supernet()


def gm_settings(*overrides):
    return settings_for(load_config(None, [*SPACE, "split.method=gm", "search.epochs=3", "split.epochs=[1, 2]",
                                           "split.batches=1", *overrides]))


class Batches:
    """Two seeded batches of 8x8 one-channel images (what decide_split reads from a loader)."""

    def __len__(self):
        return 2

    def batch(self, epoch, k):
        g = torch.Generator().manual_seed(100 * epoch + k)
        return torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)


def test_candidates_are_unsplit_layers_under_the_base_mask():
    net = tiny_supernet()
    every = [(ct, 0) for ct in CELL_TYPES] + [("stage2", 1)]
    assert sorted(candidate_edges(net, CELL_TYPES)) == sorted(every)  # first layers count, without `zero`
    assert not net.mask("stage3")[0, ZERO] and net.base_mask("stage3").tolist() == net.mask("stage3").tolist()
    (child, _) = split_masks(net, "stage2", 1, [[0, 1, ZERO], [2, 3, 4, 5]])
    net.set_mask("stage2", child["stage2"])
    assert ("stage2", 1) not in candidate_edges(net, CELL_TYPES) and ("stage2", 0) in candidate_edges(net, CELL_TYPES)
    with pytest.raises(ValueError, match="do not partition"):  # `zero` is not an op of a stage's first layer
        split_masks(net, "stage1", 0, [[0, 1, 2, ZERO], [3, 4, 5]])


def test_shared_weights_are_the_other_layers_blocks():
    net = tiny_supernet()
    pmap = parameter_map(net)
    assert pmap.fixed == [] and len({(ct, e) for ct, e, *_ in pmap.ops}) == sum(LAYERS)
    layer = 2  # stage2 edge 1 is the third searchable layer
    names = [n for n, _ in shared_parameters(net, "stage2", 1, pmap)]
    others = {f"body.layers.{i}." for i in range(sum(LAYERS)) if i != layer}
    assert names and all(any(n.startswith(o) for o in others) for n in names)  # blocks of the other layers only
    assert {n.split(".ops.")[0] for n in names} == {o[:-1] for o in others}
    net.mask("stage3")[0, 1] = False  # a disabled op is no shared weight
    assert not any(n.startswith("body.layers.3.ops.mb6_k3.") for n, _ in shared_parameters(net, "stage2", 1))
    every = [n for n, _ in shared_parameters(net, "stage2", 1, scope="all")]  # GM-NAS' ProxylessNAS code
    assert any(n.startswith("body.stem.") for n in every) and "body.classifier.weight" in every
    assert not any(n.startswith(f"body.layers.{layer}.") or n.startswith("alphas.") for n in every)


def test_settings_are_gm_nas_mobilenet_official():
    s = gm_settings()
    assert (s.edge_criterion, s.op_weight, s.warmup_alpha, s.restart, s.restart_schedule, s.shared) == \
        ("within", "one", "learn", "inherit", "total", "ops")
    assert s.cell_types == list(CELL_TYPES) and s.groups == [2, 3] and [s.groups_at(i) for i in (0, 1)] == [2, 3]
    assert gm_settings("split.epochs=[1]").groups == [2]
    assert gm_settings("split.groups=2").groups_at(1) == 2
    assert gm_settings("split.sizes=[3, 3]").groups == 2  # the sizes say how many groups
    assert gm_settings("split.shared=all").shared == "all"
    with pytest.raises(UserError, match="add up to the 6 or 7 ops"):
        gm_settings("split.sizes=[2, 2]")
    with pytest.raises(UserError, match="4 groups of at least 2"):
        gm_settings("split.groups=[2, 4]")


def test_gradient_matching_splits_a_candidate_layer_into_the_levels_groups(monkeypatch):
    """Root: 2 groups; next level: 3 groups (2|2|2 on a 6-op first layer, 2|2|3 on a 7-op layer). The chosen layer
    is the candidate with the smallest within-group distance; the children's masks partition its enabled ops."""
    net = tiny_supernet()
    s = gm_settings("split.cell_types=[stage2]")
    record = schedule.decide_split(net, Batches(), 0, s, 0)
    cands = record["candidates"]
    assert {(c["cell_type"], c["edge"]) for c in cands} == {("stage2", 0), ("stage2", 1)}
    assert [len(c["ops"]) for c in cands] == [6, 7] and record["cost"]["forward"] == 13
    best = min(cands, key=lambda c: c["within"])
    assert (record["cell_type"], record["edge"]) == (best["cell_type"], best["edge"])
    assert record["criterion"] == "within"
    groups = [[OPS.index(o) for o in g] for g in record["groups"]]
    assert len(groups) == 2 and min(map(len, groups)) >= 2
    children = split_masks(net, record["cell_type"], record["edge"], groups)
    rows = torch.stack([c[record["cell_type"]][record["edge"]] for c in children])
    assert rows.sum(dim=0).tolist() == net.mask(record["cell_type"])[record["edge"]].int().tolist()  # a partition
    scopes, real = [], schedule.measure
    monkeypatch.setattr(schedule, "measure", lambda *a: scopes.append(a[-1]) or real(*a))
    deeper = schedule.decide_split(net, Batches(), 1, dataclasses.replace(s, shared="all"), 1)
    assert scopes == ["all"]  # split.shared reaches the measurement
    sizes = {len(c["ops"]): sorted(map(len, c["groups"])) for c in deeper["candidates"]}
    assert sizes == {6: [2, 2, 2], 7: [2, 2, 3]} and len(deeper["groups"]) == 3


def test_exhaustive_split_gives_one_child_per_enabled_op(monkeypatch):
    monkeypatch.setattr(schedule, "measure", lambda *a, **k: pytest.fail("exhaustive on the first edge measures"))
    net = tiny_supernet()
    s = settings_for(load_config(None, [*SPACE, "split.method=exhaustive", "search.epochs=2", "split.epochs=[1]"]))
    record = schedule.decide_split(net, None, 1, s, 0)
    assert s.edge_criterion == "first" and (record["cell_type"], record["edge"]) == ("stage1", 0)
    assert record["groups"] == [[op] for op in OPS if op != "zero"]  # the stage's first layer: 6 ops
    net.set_mask("stage1", split_masks(net, "stage1", 0, [[k] for k in range(6)])[0]["stage1"])
    record = schedule.decide_split(net, None, 1, s, 0)  # the next unsplit layer, with `zero`
    assert (record["cell_type"], record["edge"]) == ("stage2", 0)
    s = settings_for(load_config(None, [*SPACE, "split.method=exhaustive", "search.epochs=2", "split.epochs=[1]",
                                        "split.edges=[1]", "split.cell_types=[stage2]"]))
    assert schedule.decide_split(net, None, 1, s, 0)["groups"] == [[op] for op in OPS]


def split_search_args(data, run, *extra):
    return ["search", "--split", "gm", "--out", str(run), f"data.data_dir={data}", *SPACE, "data.batch_size=16",
            "data.subset=64", "split.batches=1", "threads=1", *extra]


@pytest.mark.slow
def test_gm_split_search_on_mobilenet_runs_end_to_end(tmp_path, capsys):
    """One split (2 sub-supernets, children inherit the parent: MobileNet official), magnitude in each leaf."""
    data = tiny_idx_dir(tmp_path / "data", n_train=64, n_test=8)
    run = tmp_path / "run"
    assert main(split_search_args(data, run, "search.epochs=2", "split.epochs=[1]", "split.cell_types=[stage2]")) == 0
    tree = json.loads((run / "split" / "tree.json").read_text())
    assert tree["settings"]["restart"] == "inherit" and tree["leaves"] == ["0", "1"]
    root = tree["nodes"]["root"]["split"]
    assert root["cell_type"] == "stage2" and len(root["candidates"]) == 2
    for k, leaf in enumerate(tree["leaves"]):
        result = tree["nodes"][leaf]["result"]
        assert result["enabled"]["stage2"][root["edge"]] == root["groups"][k]
        arch = result["selections"]["magnitude"]["arch"]["cells"]["stage2"]["edges"]
        assert arch[root["edge"]][2] in root["groups"][k]  # magnitude chose within the leaf's group
    result = json.loads((run / "result.json").read_text())
    assert result["architecture"]["text"].startswith("mobilenet:") and result["split"]["method"] == "gm"
    assert result["architecture"]["text"] in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["darts", "gdas", "snas", "rsps", "fixed-alpha"])
def test_two_level_split_search_with_each_optimizer(tmp_path, optimizer):
    """The official two levels (2 then 3 groups: 6 sub-supernets) under every optimizer that makes sense here."""
    data = tiny_idx_dir(tmp_path / "data", n_train=64, n_test=8)
    run = tmp_path / "run"
    assert main(split_search_args(data, run, "search.epochs=3", "split.epochs=[1, 2]",
                                  f"search.optimizer={optimizer}")) == 0
    tree = json.loads((run / "split" / "tree.json").read_text())
    assert len(tree["leaves"]) == 6 and tree["settings"]["groups"] == [2, 3]
    for node in ("0", "1"):
        assert len(tree["nodes"][node]["split"]["groups"]) == 3
    assert json.loads((run / "result.json").read_text())["split"]["leaves"] == 6
