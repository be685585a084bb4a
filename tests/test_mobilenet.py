"""The MobileNet (ProxylessNAS) space: layout, supernet ≡ discrete network, masks, codec, FLOPs, a CLI search."""
import json

import pytest
import torch

from archselect.arch import Architecture, load_architecture, parse_mobilenet, validate
from archselect.cli import main
from archselect.components import space_of
from archselect.config import load_config
from archselect.errors import UserError
from archselect.evaluate.flops import count_flops, count_parameters
from archselect.mobilenet_text import CELL_TYPES, OPS
from archselect.spaces import get

from conftest import tiny_idx_dir

# Close to the published ProxylessNAS (mobile) net, within this space (its first stage is 24 wide here, not 32).
MOBILE = ("mobilenet:mb3_k5,mb3_k3,zero,zero|mb3_k7,mb3_k3,mb3_k5,mb3_k5|mb6_k7,mb3_k5,mb3_k5,mb3_k5|"
          "mb6_k5,mb3_k5,mb3_k5,mb3_k5|mb6_k7,mb6_k7,mb3_k7,mb3_k7|mb6_k7")
PROXY = dict(resolution=32, width_mult=0.25, stage_layers=[2, 3, 1, 2, 2, 1], in_channels=1, num_classes=4)


def uniform(op: str, layers=(4, 4, 4, 4, 4, 1)) -> str:
    return "mobilenet:" + "|".join(",".join([op] * n) for n in layers)


def test_published_layout_and_masks():
    space = get("mobilenet")
    lay = space.layout
    assert lay.stem == (32, 16) and lay.stem_stride == 2 and lay.head == 1280
    assert [(layer.C_out, layer.stride) for layer in lay.layers if layer.first] == [
        (24, 2), (40, 2), (80, 2), (96, 1), (192, 2), (320, 1)]
    assert len(lay.layers) == 21 and all(layer.stride == 1 for layer in lay.layers if not layer.first)
    net = space.supernet()
    zero = OPS.index("zero")
    for ct, n in zip(CELL_TYPES, (4, 4, 4, 4, 4, 1)):
        mask = net.mask(ct)
        assert mask.shape == (n, 7) and not mask[0, zero] and mask[1:].all() and mask[0, :zero].all()
        w = net.mixing_weights(detach=True)[ct]
        assert w[0, zero] == 0 and torch.allclose(w.sum(1), torch.ones(n))
    small = get("mobilenet", resolution=32).layout
    assert small.stem_stride == 1 and small.layers[0].stride == 1 and small.layers[4].stride == 2


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)


@pytest.mark.parametrize("text", [
    "mobilenet:mb3_k3,zero|mb6_k7,zero,mb3_k5|mb6_k3|mb3_k7,mb6_k5|mb3_k5,mb6_k3|mb6_k7",
    "mobilenet:mb6_k5,mb3_k3|mb3_k3,mb6_k7,zero|mb3_k5|mb6_k3,zero|mb6_k7,zero|mb3_k3",
])
def test_one_hot_supernet_equals_discrete_network(text):
    space = get("mobilenet", **PROXY)
    arch = parse_mobilenet(text)
    supernet = space.supernet().double()
    _randomise(supernet)
    net = space.network(arch, bn_affine=False).double()
    net.load_from_supernet(supernet)
    supernet.eval(), net.eval()
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(supernet(x, supernet.one_hot_weights(arch)), net(x))


def test_mixed_layer_sums_ops_and_residual_and_zero_adds_nothing():
    space = get("mobilenet", **PROXY)
    supernet = space.supernet().double().eval()
    layer = supernet.body.layers[1]  # stage 1, second layer: residual
    x = torch.randn(2, 8, 32, 32, dtype=torch.float64)
    k3, k7, zero = OPS.index("mb3_k3"), OPS.index("mb6_k7"), OPS.index("zero")
    with torch.no_grad():
        mixed = layer(x, [(k3, 0.25), (k7, 0.5), (zero, 0.25)])
        expected = x + 0.25 * layer.ops["mb3_k3"](x) + 0.5 * layer.ops["mb6_k7"](x)
        assert torch.allclose(mixed, expected) and torch.equal(layer(x, [(zero, 1.0)]), x)
        first = supernet.body.layers[2]  # stage 2's first layer: stride 2, no residual; empty plan -> zeros
        assert torch.equal(first(x, []), torch.zeros(2, 16, 16, 16, dtype=torch.float64))


def test_alpha_gets_gradients_and_derive_respects_masks():
    space = get("mobilenet", **PROXY)
    supernet = space.supernet()
    supernet(torch.randn(4, 1, 8, 8)).sum().backward()
    assert all(supernet.alphas[ct].grad.abs().sum() > 0 for ct in CELL_TYPES)
    scores = {ct: torch.zeros(len(space.edges(ct)), 7) for ct in CELL_TYPES}
    for s in scores.values():
        s[:, OPS.index("zero")] = 1.0  # zero scores best everywhere ...
    arch = space.derive(scores, {ct: supernet.mask(ct) for ct in CELL_TYPES})
    for ct in CELL_TYPES:  # ... but only layers past a stage's first may take it
        ops = [e.op for e in arch.cell(ct).edges]
        assert ops[0] != "zero" and all(op == "zero" for op in ops[1:])
    assert space.derive(scores) == arch


def test_codec_round_trips_and_json():
    arch = parse_mobilenet(MOBILE)
    assert str(arch) == MOBILE and arch.cell_types == CELL_TYPES
    assert load_architecture("  " + MOBILE + "\n") == arch
    assert parse_mobilenet(MOBILE.replace(",", " , ")) == arch  # spaces around tokens are allowed
    d = json.loads(arch.to_json())
    assert d["text"] == MOBILE and Architecture.from_dict(d) == arch
    validate(arch)


@pytest.mark.parametrize("text, message", [
    ("mb3_k3|mb3_k3", "starts with 'mobilenet:'"),
    ("mobilenet:mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3", "expected 6 stages"),
    ("mobilenet:mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3", "expected 6 stages"),
    ("mobilenet:mb3_k3|mb3_k3|mb3_k9|mb3_k3|mb3_k3|mb3_k3", "unknown op 'mb3_k9' in stage 3"),
    ("mobilenet:mb3_k3|zero,mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3", "stage 2 starts with 'zero'"),
    ("mobilenet:mb3_k3||mb3_k3|mb3_k3|mb3_k3|mb3_k3", "stage 2 has 0 layers"),
    ("mobilenet:mb3_k3,|mb3_k3|mb3_k3|mb3_k3|mb3_k3|mb3_k3", "unknown op ''"),
    ("mobilenet:" + "|".join([",".join(["mb3_k3"] * 17)] * 6), "stage 1 has 17 layers"),
])
def test_strict_parsing(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as e:
        parse_mobilenet(text)
    assert "\n" not in str(e.value)


def test_json_and_network_refuse_what_the_space_cannot_build():
    d = parse_mobilenet(MOBILE).to_dict()
    d["cells"]["stage3"]["edges"][0][2] = "zero"
    with pytest.raises(UserError, match="stage 3 starts with 'zero'"):
        Architecture.from_dict(d)
    d = parse_mobilenet(MOBILE).to_dict()
    d["cells"]["stage2"]["edges"][1][:2] = [2, 3]
    with pytest.raises(UserError, match="edges 0->1, 1->2"):
        Architecture.from_dict(d)
    with pytest.raises(UserError, match=r"\[4, 4, 4, 4, 4, 1\] layers per stage; this mobilenet space has \[2, 3"):
        get("mobilenet", **PROXY).network(parse_mobilenet(MOBILE))


def test_flops_and_parameters_at_224():
    """ProxylessNAS (mobile) reports 320 M MACs and 4.1 M parameters; MobileNetV2-like blocks everywhere cost more,
    the widest and largest kernels most."""
    space = get("mobilenet")
    measured = {}
    for name, text in (("mobile", MOBILE), ("mb6_k3", uniform("mb6_k3")), ("mb6_k7", uniform("mb6_k7"))):
        net = space.network(parse_mobilenet(text))
        measured[name] = count_flops(net, (3, 224, 224)).total / 1e6, count_parameters(net) / 1e6
    assert measured["mobile"][0] == pytest.approx(304.3, abs=0.1) and measured["mobile"][1] == pytest.approx(4.074, abs=1e-3)
    assert measured["mb6_k3"][0] == pytest.approx(472.7, abs=0.1) and measured["mb6_k3"][1] == pytest.approx(4.685, abs=1e-3)
    assert measured["mb6_k7"][0] == pytest.approx(606.7, abs=0.1) and measured["mb6_k7"][1] == pytest.approx(5.103, abs=1e-3)
    every_layer_skipped = "mobilenet:" + "|".join(",".join(["mb3_k3"] + ["zero"] * (n - 1)) for n in (4, 4, 4, 4, 4, 1))
    skipped = space.network(parse_mobilenet(every_layer_skipped))
    assert count_flops(skipped, (3, 224, 224)).total < 0.5 * measured["mobile"][0] * 1e6


def test_config_fields_apply_to_mobilenet_only():
    cfg = load_config(None, ["space.name=mobilenet", "space.resolution=32", "space.width_mult=0.5",
                             "space.stage_layers=[1,1,1,1,1,1]"])
    space = space_of(cfg, 3, 10)
    assert space.layout.stem_stride == 1 and space.stage_layers == (1, 1, 1, 1, 1, 1) and space.layout.stem == (16, 8)
    with pytest.raises(UserError, match="space.width_mult does not apply to the 'nb201' space"):
        space_of(load_config(None, ["space.width_mult=0.5"]), 3, 10)
    with pytest.raises(UserError, match="space.C does not apply to the 'mobilenet' space"):
        space_of(load_config(None, ["space.name=mobilenet", "space.C=8"]), 3, 10)
    with pytest.raises(UserError, match="space.resolution=64"):
        space_of(load_config(None, ["space.name=mobilenet", "space.resolution=64"]), 3, 10)
    with pytest.raises(UserError, match="space.stage_layers must list 6"):
        space_of(load_config(None, ["space.name=mobilenet", "space.stage_layers=[1,1]"]), 3, 10)


def test_cli_search_and_select(tmp_path, capsys):
    """The CPU proxy on the tiny dataset (8 px images): search, then magnitude and perturbation select from it."""
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), f"data.data_dir={data}", "space.name=mobilenet", "space.resolution=32",
                 "space.width_mult=0.25", "space.stage_layers=[1,2,1,1,1,1]", "data.batch_size=32",
                 "search.epochs=1", "threads=1"]) == 0
    text = json.loads((run / "result.json").read_text())["architecture"]["text"]
    assert parse_mobilenet(text).space == "mobilenet" and text in capsys.readouterr().out
    assert main(["select", str(run), "--selector", "magnitude,perturbation",
                 "select.options={perturbation: {tune_epochs: 0, valid_batches: 1}}"]) == 0
    out = capsys.readouterr().out
    for name in ("magnitude", "perturbation"):
        arch = load_architecture(str(next((run / "selections").glob(f"*{name}*.json"))))
        assert arch.space == "mobilenet" and str(arch) in out
        assert arch.cell("stage2").edges[0].op != "zero"


def test_retraining_builds_the_architecture_at_the_configs_layout():
    from archselect.evaluate.train import build_network

    text = "mobilenet:mb3_k3|mb6_k5,zero|mb3_k7|mb6_k3|mb3_k5|mb6_k7"
    cfg = load_config(None, ["space.name=mobilenet", "space.resolution=32", "space.width_mult=0.25"])
    net = build_network(cfg, parse_mobilenet(text), 1, 4)
    assert net.layer_ops == [op for ops in text[len("mobilenet:"):].split("|") for op in ops.split(",")]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(UserError, match="no auxiliary head"):
        build_network(load_config(None, ["train.drop_path=0.2"]), parse_mobilenet(text), 1, 4)
