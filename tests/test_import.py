"""Official checkpoints into archselect (`archselect import`): each layout's state dict, built by the models of
tests/official_layouts.py, imports into a supernet computing the same function; bad files end in one line."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

import archselect as asel
from archselect.cli import main
from archselect.errors import UserError
from archselect.interop import checkpoints, official
from archselect.interop.official import DARTS_PT_SPACES
from archselect.spaces.darts import S1_EDGE_OPS
from archselect.genotype import SPACE_OPS
from archselect.runs import RunDir

from conftest import tiny_idx_dir
from official_layouts import TinyDarts, TinyNB201, randomise

pytestmark = pytest.mark.usefixtures("one_thread")


def save_nb201(path, model, epoch=50):
    state = {k: v for k, v in model.state_dict().items() if k != "arch"}
    torch.save({"epoch": epoch, "state_dict": state, "alpha": [model.arch.detach()], "optimizer": {"state": {}}}, path)
    return path


def save_darts(path, model, alpha_in_state=False):
    state = model.state_dict()
    if alpha_in_state:  # repos that register α as parameters
        torch.save(state, path)
    else:  # the official search scripts: α apart from the state dict
        alphas = [state.pop("alphas_normal"), state.pop("alphas_reduce")]
        torch.save({"epoch": 3, "state_dict": state, "alpha": alphas}, path)
    return path


def imported_supernet(fmt, path, **options):
    imp = official.FORMATS[fmt](checkpoints.load(path), path, options)
    net = asel.spaces.get(imp.space, in_channels=imp.in_channels, num_classes=imp.num_classes, **imp.options).supernet()
    official.load_into(imp, net, path)
    return imp, net


def assert_same_function(official_model, net, x, weights_of):
    for train in (True, False):
        official_model.train(train)
        net.train(train)
        w = net.mixing_weights()
        assert torch.allclose(official_model(x, weights_of(w)), net(x), atol=1e-10, rtol=0)


def test_darts_pt_nb201_is_the_same_function(tmp_path, float64):
    model = randomise(TinyNB201(C=4, N=1))
    imp, net = imported_supernet("darts-pt-nb201", save_nb201(tmp_path / "checkpoint_50.pth.tar", model))
    assert (imp.space, imp.options["C"], imp.options["N"], imp.epoch) == ("nb201", 4, 1, 50)
    assert torch.equal(net.alphas["cell"], model.arch.detach())
    x = torch.randn(6, 1, 8, 8)
    assert_same_function(model, net, x, lambda w: w["cell"])
    # one-hot: the imported supernet and the discrete network it gives equal the official model on one path
    space = asel.spaces.get("nb201", C=4, N=1, in_channels=1, num_classes=4)
    arch = space.derive({"cell": torch.tensor([[0., 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0],
                                               [1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]])})
    one_hot = net.one_hot_weights(arch)
    model.eval(), net.eval()
    expected = model(x, one_hot["cell"])
    assert torch.allclose(net(x, one_hot), expected, atol=1e-10, rtol=0)
    discrete = space.network(arch, bn_affine=False)
    discrete.load_from_supernet(net)
    assert torch.allclose(discrete.eval()(x), expected, atol=1e-10, rtol=0)


def test_gm_nas_sub_supernet_enc_is_the_mask(tmp_path, float64):
    """GM-NAS saves each sub-supernet with `enc` (1: the op stays); its softmax runs over the kept ops alone."""
    model = randomise(TinyNB201(C=4, N=1))
    enc = torch.ones(6, 5)
    enc[2, [0, 3]] = 0  # the split edge keeps 3 of its 5 ops in this sub-supernet
    path = tmp_path / "supernets_1.pt"
    state = {k: v for k, v in model.state_dict().items() if k != "arch"}
    torch.save({"state_dict": state, "enc": enc, "alpha": [model.arch.detach()]}, path)
    _, net = imported_supernet("darts-pt-nb201", path)
    assert torch.equal(net.mask("cell"), enc.bool())
    theta = model.arch.detach() * enc  # GM-NAS' masked softmax
    for e in range(6):
        theta[e][enc[e] == 1] = torch.softmax(theta[e][enc[e] == 1], -1)
    assert torch.allclose(net.mixing_weights()["cell"], theta * enc, atol=1e-15)
    x = torch.randn(4, 1, 8, 8)
    assert_same_function(model, net, x, lambda w: w["cell"])


@pytest.mark.parametrize("alpha_in_state", [False, True])
def test_darts_is_the_same_function(tmp_path, float64, alpha_in_state):
    model = randomise(TinyDarts(C=4, layers=5))
    imp, net = imported_supernet("darts", save_darts(tmp_path / "weights.pt", model, alpha_in_state))
    assert (imp.space, imp.options["C"], imp.options["N"]) == ("darts", 4, 5)
    assert torch.equal(net.alphas["normal"], model.alphas_normal.detach())
    assert_same_function(model, net, torch.randn(4, 1, 8, 8), lambda w: w)


@pytest.mark.parametrize("space", ["s1", "s3", "s5"])
def test_darts_pt_darts_spaces(tmp_path, float64, space):
    target, per_edge = DARTS_PT_SPACES[space]
    primitives = per_edge or {ct: [list(SPACE_OPS[target])] * 14 for ct in ("normal", "reduce")}
    model = randomise(TinyDarts(primitives, C=4, layers=5))
    imp, net = imported_supernet("darts-pt-darts", save_darts(tmp_path / "c.pth", model), search_space=space)
    assert imp.space == target
    if space == "s1":  # two ops per edge, as masks on the 7 ops
        assert net.mask("normal").sum(1).tolist() == [2] * 14
        ops = SPACE_OPS["darts-s1"]
        assert [ops[k] for k in net.mask("reduce")[1].nonzero().flatten().tolist()] == sorted(
            S1_EDGE_OPS["reduce"][1], key=ops.index)

    def official_weights(w):  # the mixing weights over each edge's own ops, in its own column order
        if per_edge is None:
            return w
        ops = SPACE_OPS[target]
        return {ct: torch.stack([w[ct][e, [ops.index(o) for o in per_edge[ct][e]]] for e in range(14)]) for ct in w}

    assert_same_function(model, net, torch.randn(4, 1, 8, 8), official_weights)


def test_import_select_show_report(tmp_path, capsys):
    """The CLI: import writes an ordinary run (config, manifest with the source's sha256, supernet); select, show and
    report work on it unchanged."""
    data = tiny_idx_dir(tmp_path / "data")
    model = randomise(TinyNB201(C=4, N=1, num_classes=10))
    ckpt = save_nb201(tmp_path / "checkpoint_50.pth.tar", model)
    out = tmp_path / "run"
    common = ["data.dataset=fashion-mnist", f"data.data_dir={data}", "data.subset=64", "data.batch_size=16",
              "data.eval_batch_size=32"]
    assert main(["import", "darts-pt-nb201", str(ckpt), "--out", str(out), *common]) == 0
    run = RunDir(out)
    info = json.loads(run.manifest_file.read_text())["imported"]
    assert info["sha256"] == checkpoints.sha256(ckpt) and info["format"] == "darts-pt-nb201" and info["epoch"] == 50
    assert run.read_config().space.C == 4
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "imported from" in capsys.readouterr().out
    assert main(["select", str(out), "--selector", "magnitude,perturbation",
                 "select.options.perturbation.tune_epochs=0", "select.options.perturbation.valid_batches=1"]) == 0
    sel = asel.Run(out).selections()["magnitude"]
    ops = asel.spaces.get("nb201").op_names
    assert [e.op for e in sel.architecture.cell("cell").edges] == [ops[k] for k in model.arch.argmax(1).tolist()]
    assert asel.Run(out).result["selector"] in ("magnitude", "perturbation")
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "perturbation" in shown and "no selection yet" not in shown
    assert main(["report", str(out), "--engine", "matplotlib"]) == 0


def test_data_must_match_the_checkpoint(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    ckpt = save_nb201(tmp_path / "c.pth", randomise(TinyNB201(C=4, N=1, in_channels=3)))
    assert main(["import", "darts-pt-nb201", str(ckpt), "--out", str(tmp_path / "r"), "data.dataset=fashion-mnist",
                 f"data.data_dir={data}"]) == 2
    err = capsys.readouterr().err
    assert "3-channel images" in err and "data.dataset=fashion-mnist has 1-channel images" in err
    assert not (tmp_path / "r").exists()


def test_bad_checkpoints_are_one_line(tmp_path):
    model = randomise(TinyNB201(C=4, N=1))
    good = save_nb201(tmp_path / "good.pth", model)

    def fails(fmt, path, **options):
        with pytest.raises(UserError) as e:
            official.FORMATS[fmt](checkpoints.load(path), path, options)
        return str(e.value)

    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="arbitrary unpickling"):
        checkpoints.load(tmp_path / "pickled.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        checkpoints.load(tmp_path / "junk.pth")

    state = torch.load(good, weights_only=True)
    state["state_dict"]["cells.0.edges.1<-0.9.op.1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    assert "'cells.0.edges.1<-0.9.op.1.weight'" in fails("darts-pt-nb201", tmp_path / "extra.pth")

    state = torch.load(good, weights_only=True)
    del state["alpha"]
    torch.save(state, tmp_path / "no-alpha.pth")
    assert "no architecture parameters" in fails("darts-pt-nb201", tmp_path / "no-alpha.pth")

    state = torch.load(good, weights_only=True)
    key = "cells.0.edges.2<-1.3.op.1.weight"
    state["state_dict"][key] = torch.zeros(5, 4, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    imp = official.darts_pt_nb201(checkpoints.load(tmp_path / "shape.pth"), tmp_path / "shape.pth", {})
    net = asel.spaces.get("nb201", C=4, N=1, in_channels=1, num_classes=4).supernet()
    with pytest.raises(UserError, match=f"key '{key}' has shape \\(5, 4, 3, 3\\)"):
        official.load_into(imp, net, tmp_path / "shape.pth")

    state = torch.load(good, weights_only=True)
    del state["state_dict"]["cells.1.conv_b.op.1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    imp = official.darts_pt_nb201(checkpoints.load(tmp_path / "missing.pth"), tmp_path / "missing.pth", {})
    with pytest.raises(UserError, match="lacks 1 tensor.*body.layers.1.conv_b.conv.weight"):
        official.load_into(imp, net, tmp_path / "missing.pth")

    darts = save_darts(tmp_path / "darts.pt", randomise(TinyDarts(C=4, layers=5)))
    assert "search_space=s9" in fails("darts-pt-darts", darts, search_space="s9")
    assert "not part of the darts-pt-nb201 layout" in fails("darts-pt-nb201", darts)


def test_format_options_and_unknown_format(tmp_path, capsys):
    ckpt = save_nb201(tmp_path / "c.pth", randomise(TinyNB201(C=4, N=1)))
    assert main(["import", "darts-pt-nb20", str(ckpt), "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'darts-pt-nb201'" in capsys.readouterr().err
    assert main(["import", "darts-pt-nb201", str(ckpt), "--out", str(tmp_path / "r"), "search_space=s1"]) == 2
    assert "not an option of the darts-pt-nb201 format" in capsys.readouterr().err


def test_alpha_from_a_separate_file(tmp_path, float64):
    model = randomise(TinyDarts(C=4, layers=5))
    state = model.state_dict()
    alphas = {"alphas_normal": state.pop("alphas_normal"), "alphas_reduce": state.pop("alphas_reduce")}
    torch.save(state, tmp_path / "weights.pt")
    torch.save(alphas, tmp_path / "alpha.pt")
    with pytest.raises(UserError, match="alpha=FILE"):
        official.darts(checkpoints.load(tmp_path / "weights.pt"), tmp_path / "weights.pt", {})
    imp, net = imported_supernet("darts", tmp_path / "weights.pt", alpha=str(tmp_path / "alpha.pt"))
    assert torch.equal(net.alphas["reduce"], model.alphas_reduce.detach())
