"""Once-for-All on the mobilenet space: the elastic layer (kernel transformation, shared channels, BN slices, channel
sorting), sub-networks ≡ discrete networks, the progressive-shrinking trainer (sandwich step, distillation, phases,
schedule, kill/resume) and the sub-network search (BN recalibration on a copy, evolution under a FLOPs limit,
resume)."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from archselect.arch import mobilenet_stages, parse_mobilenet
from archselect.cli import main
from archselect.config import load_config
from archselect.errors import UserError
from archselect.evaluate.flops import count_flops
from archselect.mobilenet_text import OPS
from archselect.optimizers.ofa import OnceForAll, Phase, phase_bounds
from archselect.scoring.bn_calibration import recalibrate_bn
from archselect.selection.base import SelectionContext
from archselect.selection.ofa_search import OFASearch
from archselect.spaces import get
from archselect.spaces.elastic import ElasticLayer, centre_crop
from archselect.spaces.mobilenet_macs import mobilenet_macs
from archselect.spaces.subnets import Choices

from conftest import tiny_idx_dir

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(resolution=32, width_mult=0.25, stage_layers=[2, 2, 1, 2, 1, 1], in_channels=1, num_classes=4,
            elastic=True, bn_affine=True)
ARCH = "mobilenet:mb3_k3,zero|mb6_k5,mb3_k7|mb6_k3|mb3_k5,mb6_k7|mb6_k5|mb3_k3"
PHASES = ("[{name: full, epochs: 1}, {name: kernel, epochs: 1, kernels: [3,5,7]}, "
          "{name: depth, epochs: 1, kernels: [3,5,7], depths: [1,2]}, "
          "{name: expand, epochs: 1, kernels: [3,5,7], depths: [1,2], expansions: [3,6]}]")


def tiny_space(**extra):
    return get("mobilenet", **{**TINY, **extra})


def randomise(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)


def search_cfg(*overrides, epochs=4):
    return load_config(None, ["space.name=mobilenet", "search.optimizer=ofa", f"search.epochs={epochs}",
                              f"search.options.phases={PHASES}", *overrides]).search


# -- the elastic layer ----------------------------------------------------------------------------------------------

def test_kernel_transformation_identity_crop_and_chain():
    layer = ElasticLayer(8, 8, 1, True, OPS, True, True).double()
    w = layer.depthwise.weight
    assert layer.transforms["7to5"].shape == (25, 25) and layer.transforms["5to3"].shape == (9, 9)
    with torch.no_grad():  # identity transformations: the kernels are the 7x7's centre crops
        assert torch.equal(layer.kernel(3, 48), w[:, :, 2:5, 2:5])
        assert torch.equal(layer.kernel(5, 24), w[:24, :, 1:6, 1:6])
        assert torch.equal(layer.kernel(7, 48), w)
        m5, m3 = torch.randn(25, 25, dtype=torch.float64), torch.randn(9, 9, dtype=torch.float64)
        layer.transforms["7to5"].copy_(m5)
        layer.transforms["5to3"].copy_(m3)
        five = (w[:, :, 1:6, 1:6].reshape(48, 25) @ m5.T).reshape(48, 1, 5, 5)
        three = (centre_crop(five, 3).reshape(48, 9) @ m3.T).reshape(48, 1, 3, 3)  # 3x3 from the transformed 5x5
        assert torch.allclose(layer.kernel(5, 48), five) and torch.allclose(layer.kernel(3, 48), three)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    layer(x, [(OPS.index("mb3_k3"), 1.0)]).sum().backward()
    assert layer.transforms["5to3"].grad.abs().sum() > 0 and layer.transforms["7to5"].grad.abs().sum() > 0
    assert layer.expand.weight.grad[24:].abs().sum() == 0 and layer.expand.weight.grad[:24].abs().sum() > 0


@pytest.mark.parametrize("text", [ARCH, "mobilenet:mb6_k7,mb6_k7|mb3_k3,zero|mb3_k5|mb6_k3,zero|mb3_k7|mb6_k5"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_hot_elastic_weights_equal_the_discrete_subnetwork(text, mode):
    """A one-hot plan of the elastic supernet computes exactly the discrete network loaded with its cut weights
    (kernels through the transformations, first channels, BN slices), in eval and in train mode."""
    space = tiny_space()
    supernet = space.supernet().double()
    randomise(supernet)
    arch = parse_mobilenet(text)
    net = space.network(arch).double()
    net.load_from_supernet(supernet)
    getattr(supernet, mode)(), getattr(net, mode)()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(supernet(x, supernet.one_hot_weights(arch)), net(x))
    with pytest.raises(ValueError, match="supernet lacks"):  # an affine network from a non-affine supernet
        space.network(arch).load_from_supernet(tiny_space(bn_affine=False).supernet())


def test_sub_width_bn_updates_only_its_channels_and_zero_is_identity():
    layer = ElasticLayer(8, 8, 1, True, OPS, True, True)
    before = layer.expand_bn.running_mean.clone()
    x = torch.randn(4, 8, 5, 5)
    layer(x, [(OPS.index("mb3_k5"), 1.0)])
    after = layer.expand_bn.running_mean
    assert not torch.equal(after[:24], before[:24]) and torch.equal(after[24:], before[24:])
    assert torch.equal(layer(x, [(OPS.index("zero"), 1.0)]), x)


def test_channel_sorting_keeps_the_full_block_and_orders_by_importance():
    layer = ElasticLayer(8, 8, 1, True, OPS, True, True).double().eval()
    randomise(layer)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    full = [(OPS.index("mb6_k7"), 1.0)]
    with torch.no_grad():
        y = layer(x, full)
        order = layer.channel_order([])
        layer.permute_hidden(order)
        assert torch.allclose(layer(x, full), y)  # a permutation of the whole block changes nothing
    importance = layer.project.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    banded = layer.channel_order([24])  # channels trained as the first 24 stay among the first 24
    assert sorted(banded[:24].tolist()) == list(range(24)) and sorted(banded[24:].tolist()) == list(range(24, 48))


# -- sub-networks ---------------------------------------------------------------------------------------------------

def test_choices_sample_within_sets_masks_and_depth_suffixes():
    supernet = tiny_space().supernet()
    mask = supernet.mask("stage2").clone()
    mask[1, [OPS.index("mb3_k7"), OPS.index("mb6_k7")]] = False  # stage 2's second layer: no 7x7 kernel
    supernet.set_mask("stage2", mask)
    c = Choices.of(supernet, kernels=[5, 7], expansions=[3, 6], depths=[1, 2, 3])
    assert c.depths == ((1, 2), (1, 2), (1,), (1, 2), (1,), (1,))
    assert c.pairs[3] == {5: (3, 6)} and c.pairs[0] == {5: (3, 6), 7: (3, 6)}
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        genes = c.sample(g)
        stages = c.stages(genes)
        assert all(ops[0] != "zero" for ops in stages) and stages[1][1] not in ("mb3_k7", "mb6_k7")
        for ops in stages:  # zero only as a suffix (elastic depth)
            assert "zero" not in ops or all(op == "zero" for op in ops[ops.index("zero"):])
        assert c.mutate(genes, 0.0, g) == genes and c.from_list(c.to_list(genes)) == genes
        child = c.crossover(genes, c.largest(), g)
        assert all(k in (a, b) for k, a, b in zip(child.kernels, genes.kernels, c.largest().kernels))
        c.stages(c.mutate(genes, 1.0, g))  # valid whatever is redrawn
    assert c.stages(c.largest())[0] == ["mb6_k7", "mb6_k7"] and c.stages(c.smallest())[0] == ["mb3_k5", "zero"]
    with pytest.raises(UserError, match="does not fit"):
        Choices.of(supernet, kernels=[3]).from_list(c.to_list(c.largest()))


@pytest.mark.parametrize("side", [32, 13])
def test_macs_from_the_layout_equal_counted_flops(side):
    space = tiny_space()
    for text in (ARCH, "mobilenet:mb6_k7,mb6_k7|mb6_k7,mb6_k7|mb6_k7|mb6_k7,mb6_k7|mb6_k7|mb6_k7"):
        arch = parse_mobilenet(text)
        counted = count_flops(space.network(arch), (1, side, side)).total
        assert mobilenet_macs(space.layout, mobilenet_stages(arch), 1, (side, side), 4) == counted


# -- the trainer ----------------------------------------------------------------------------------------------------

def test_phase_bounds_from_epochs_and_fractions():
    f = lambda **kw: Phase(**kw)  # noqa: E731
    assert phase_bounds([f(fraction=0.25)] * 4, 10) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert phase_bounds([f(epochs=2), f(fraction=0.5), f(epochs=1)], 6) == [(0, 2), (2, 5), (5, 6)]
    with pytest.raises(UserError, match="cover 3 epochs; search.epochs is 4"):
        phase_bounds([f(epochs=1), f(epochs=2)], 4)
    with pytest.raises(UserError, match="exactly one of epochs and fraction"):
        phase_bounds([f(epochs=1, fraction=0.5)], 1)
    with pytest.raises(UserError, match="space.elastic=true"):
        OnceForAll(get("mobilenet", **{**TINY, "elastic": False}).supernet(), search_cfg(), 4)


@pytest.mark.parametrize("name", ["mobilenet-ofa-imagenet.yaml", "mobilenet-ofa-proxy.yaml"])
def test_shipped_ofa_configs_have_phases_covering_their_epochs(name):
    from pathlib import Path

    from archselect.config import build
    from archselect.optimizers.ofa import OFAOptions

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    options = build(OFAOptions, cfg.search.options, "search.options")
    bounds = phase_bounds(options.phases, cfg.search.epochs)
    assert bounds[-1][1] == cfg.search.epochs and cfg.space.elastic and cfg.select.selectors == ["ofa-search"]


def test_sandwich_step_sums_the_gradients_of_its_subnetworks():
    """Largest + smallest + one drawn sub-network, each backpropagated on the same batch, one SGD step on the sum."""
    supernet = tiny_space().supernet()
    opt = OnceForAll(supernet, search_cfg("search.options.kd_ratio=0", "search.options.label_smoothing=0"), 4)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))
    choices = opt.choices[2]
    torch.manual_seed(5)
    nets = opt.subnets(choices, opt.options.phases[2])
    assert nets[:2] == [choices.largest(), choices.smallest()] and len(nets) == 3
    assert opt.subnets(opt.choices[0], opt.options.phases[0]) == [opt.choices[0].largest()]  # the full phase: one
    reference = copy.deepcopy(supernet)
    for genes in nets:
        F.cross_entropy(reference(x, choices.weights(genes)), y).backward()
    opt.start_epoch(2, None)
    torch.manual_seed(5)
    out = opt.step((x, y), None, 2)
    assert out["subnets"] == 3.0
    for (name, p), q in zip(supernet.named_parameters(), reference.parameters()):
        if q.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert not torch.equal(supernet.body.layers[0].expand.weight, reference.body.layers[0].expand.weight)


def test_teacher_schedule_reorder_and_state():
    supernet = tiny_space().supernet()
    opts = ("[{name: full, epochs: 2}, {name: kernel, epochs: 4, kernels: [3,7], lr: 0.4, warmup_epochs: 1, "
            "warmup_lr: 0.1}, {name: expand, epochs: 2, kernels: [3,7], expansions: [3,6]}]")
    cfg = load_config(None, ["space.name=mobilenet", "search.optimizer=ofa", "search.epochs=8", "search.w_lr=0.1",
                             "search.w_lr_min=0", "search.options.reset_momentum=false",
                             f"search.options.phases={opts}"]).search
    opt = OnceForAll(supernet, cfg, 2)
    batch = (torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,)))
    lrs = []
    for epoch in range(8):
        opt.start_epoch(epoch, None)
        if epoch == 2:  # the first elastic phase: the teacher is the full network as it stands
            assert opt.teacher is not None
            assert all(torch.equal(a, b) for a, b in zip(opt.teacher.state_dict().values(),
                                                         supernet.state_dict().values()))
        if epoch == 6:  # expansion 3 arrives: channels sorted, SGD momentum permuted alike, the full net unchanged
            layer = supernet.body.layers[1]
            importance = layer.project.weight.abs().sum(dim=(0, 2, 3))
            assert torch.all(importance[:-1] >= importance[1:])
        for _ in range(2):
            opt.step(batch, None, epoch)
            lrs.append(opt.lr)
    assert opt.teacher is not None and len(lrs) == 16
    # full: cosine from 0.1 over its 4 steps; kernel: warm-up over 2 steps from 0.1 to 0.4, then cosine over 6
    cosine = [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert lrs[:4] == pytest.approx(cosine) and lrs[4:7] == pytest.approx([0.25, 0.4, 0.4])
    assert lrs[7] == pytest.approx(0.2 * (1 + math.cos(math.pi / 6)))
    state = opt.state_dict()
    again = OnceForAll(copy.deepcopy(supernet), cfg, 2)
    again.load_state_dict(state)
    assert again.started == 2 and again.position == (7, 2) and again.teacher is not None


def test_epoch_evaluation_runs_the_full_network_recalibrated_on_a_copy():
    from archselect.data import TensorLoader

    supernet = tiny_space().supernet()
    opt = OnceForAll(supernet, search_cfg(), 4)
    train = TensorLoader(torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,)), batch_size=8)
    reference = copy.deepcopy(supernet.state_dict())
    model, weights = opt.evaluation(train)
    assert model is not supernet and all(torch.equal(v, reference[k]) for k, v in supernet.state_dict().items())
    assert weights["stage1"].tolist() == [[0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1, 0]]  # mb6_k7 everywhere
    assert not torch.equal(model.body.stem[1].running_mean, supernet.body.stem[1].running_mean)
    opt.options.eval_bn_batches = 0
    assert opt.evaluation(train)[0] is supernet


def test_cli_ofa_search_then_ofa_search_selector(tmp_path, capsys):
    """The CPU proxy from the CLI: progressive shrinking over 4 one-epoch phases, then the sub-network search."""
    data = tiny_idx_dir(tmp_path / "data", n_train=64)
    run = tmp_path / "run"
    assert main(["search", "--out", str(run), f"data.data_dir={data}", "space.name=mobilenet", "space.elastic=true",
                 "space.bn_affine=true", "space.resolution=32", "space.width_mult=0.25",
                 "space.stage_layers=[2,1,1,1,1,1]", "data.batch_size=16", "search.optimizer=ofa",
                 "search.epochs=4", f"search.options.phases={PHASES}", "threads=1", "select.selectors=[ofa-search]",
                 "select.options={ofa-search: {population: 4, generations: 1, valid_batches: 1, bn_batches: 1}}"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert f"architecture (ofa-search): {result['architecture']['text']}" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["ofa_phase"] for r in records] == [0, 1, 2, 3]
    assert [r["subnets"] for r in records] == [1.0, 3.0, 3.0, 3.0]
    details = json.loads((run / "selections" / "ofa-search.json").read_text())["details"]
    assert details["measured"] >= 4 and details["history"]


# -- the sub-network search -----------------------------------------------------------------------------------------

def context(tmp_path, supernet, space, optimizer=None, search=None):
    from archselect.data import TensorLoader

    torch.manual_seed(3)
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 4, (48,))
    loader = TensorLoader(x, y, batch_size=8, seed=0)
    return SelectionContext(space, supernet, loader, loader, torch.device("cpu"), seed=0, workdir=tmp_path,
                            search=search, optimizer=optimizer)


def test_bn_recalibration_changes_the_copy_only(tmp_path):
    space = tiny_space()
    supernet = space.supernet()
    randomise(supernet)
    reference = copy.deepcopy(supernet.state_dict())
    ctx = context(tmp_path, supernet, space)
    batches = [ctx.train.batch(0, k) for k in range(3)]
    work = copy.deepcopy(supernet)
    choices = Choices.of(supernet)
    recalibrate_bn(work, choices.weights(choices.smallest()), batches)
    assert all(torch.equal(v, reference[k]) for k, v in supernet.state_dict().items())
    stem_bn = work.body.stem[1]  # the plain average of the batches' means
    expected = torch.stack([F.conv2d(x, supernet.body.stem[0].weight, padding=1).mean(dim=(0, 2, 3))
                            for x, _ in batches]).mean(0)
    assert torch.allclose(stem_bn.running_mean, expected, atol=1e-5) and not work.training
    assert stem_bn.momentum == supernet.body.stem[1].momentum


def test_evolution_returns_a_valid_architecture_within_the_flops_limit(tmp_path):
    space = tiny_space()
    supernet = space.supernet()
    randomise(supernet)
    choices = Choices.of(supernet)
    small = mobilenet_macs(space.layout, choices.stages(choices.smallest()), 1, (8, 8), 4) / 1e6
    large = mobilenet_macs(space.layout, choices.stages(choices.largest()), 1, (8, 8), 4) / 1e6
    limit = (small + large) / 2
    options = {"population": 6, "generations": 2, "max_mflops": limit, "bn_batches": 1, "valid_batches": 2}
    selection = OFASearch(options).select(context(tmp_path, supernet, space))
    arch, d = selection.architecture, selection.details
    assert d["best_mflops"] <= limit and d["smallest_mflops"] == pytest.approx(small)
    assert count_flops(space.network(arch), (1, 8, 8)).total / 1e6 == pytest.approx(d["best_mflops"])
    assert len(d["history"]) == 2 and d["measured"] >= 6 and selection.cost.forward == 3 * d["measured"]
    assert str(parse_mobilenet(str(arch))) == str(arch)
    with pytest.raises(UserError, match="the smallest sub-network needs"):
        OFASearch({"max_mflops": small / 2}).select(context(tmp_path, supernet, space))


def test_search_sets_follow_the_trained_phases_and_random_method(tmp_path):
    space = tiny_space()
    supernet = space.supernet()
    cfg = search_cfg()
    ctx = context(tmp_path, supernet, space, optimizer=OnceForAll, search=cfg)
    selection = OFASearch({"method": "random", "samples": 5, "valid_batches": 1, "bn_batches": 1}).select(ctx)
    assert selection.details["measured"] == 5
    ops = {op for ops in mobilenet_stages(selection.architecture) for op in ops}
    cfg3 = search_cfg("search.options.phases=[{name: full, epochs: 4, kernels: [3], expansions: [3], depths: [9]}]")
    only = OFASearch({"method": "random", "samples": 1, "valid_batches": 1, "bn_batches": 1}).select(
        context(tmp_path, supernet, space, optimizer=OnceForAll, search=cfg3))
    assert {op for ops in mobilenet_stages(only.architecture) for op in ops} == {"mb3_k3"}
    assert ops <= set(OPS)


def test_evolution_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from archselect.selection import progress as progress_module

    space = tiny_space()
    supernet = space.supernet()
    randomise(supernet)
    options = {"population": 4, "generations": 3, "bn_batches": 1, "valid_batches": 1, "mutation_prob": 0.5}
    whole = OFASearch(options).select(context(tmp_path / "a", supernet, space))
    saves = []
    real = progress_module.Progress.save

    def dying(self, step, state):
        real(self, step, state)
        saves.append(step)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed after the first generation's checkpoint

    monkeypatch.setattr(progress_module.Progress, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        OFASearch(options).select(context(tmp_path / "b", supernet, space))
    monkeypatch.setattr(progress_module.Progress, "save", real)
    resumed = OFASearch(options).select(context(tmp_path / "b", supernet, space))
    assert str(resumed.architecture) == str(whole.architecture)
    assert resumed.details["history"] == whole.details["history"] and resumed.scores == whole.scores
    assert resumed.cost.forward == whole.cost.forward


@pytest.mark.slow
def test_ofa_search_killed_and_resumed(tmp_path):
    """The trainer's own state across SIGKILLs: phase starts (teacher snapshot, channel sorting, fresh SGD state),
    the per-step schedule and the drawn sub-networks (the checkpointed RNG)."""
    from killharness import search_survives_kills

    data = tiny_idx_dir(tmp_path / "data")
    args = [f"data.data_dir={data}", "space.name=mobilenet", "space.elastic=true", "space.bn_affine=true",
            "space.resolution=32", "space.width_mult=0.25", "space.stage_layers=[2,2,1,1,1,1]", "data.batch_size=32",
            "search.optimizer=ofa", "search.epochs=4", f"search.options.phases={PHASES}", "threads=1",
            "search.checkpoint_every=1"]
    search_survives_kills(tmp_path, args, kills=3, seed=0, spread=6)
