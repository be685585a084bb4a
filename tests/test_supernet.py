"""The fast NAS-Bench-201 supernet against a straightforward one: exact equalities where promised (one-hot weights vs
the discrete network, masked ops), gradients w.r.t. α against a plain per-edge Σ softmax(α)_k·op_k(x), and the
weighted-sum / plan / grouped batch-norm building blocks."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archselect.arch import Architecture
from archselect.config import SearchConfig
from archselect.optimizers.darts import DartsFirstOrder
from archselect.spaces.mixed import conv_bn_group, group_batch_norm
from archselect.spaces.nb201 import EDGES, NB201Cell, NB201Space
from archselect.spaces.ops import ReLUConvBN
from archselect.supernet import make_plan, weighted_sum

C, N, CLASSES, SIZE, BATCH = 4, 1, 5, 8, 6
OPS = NB201Space.op_names  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|",
    "|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def space() -> NB201Space:
    return NB201Space(C=C, N=N, num_classes=CLASSES)


def data(seed: int = 0, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def supernet(seed: int = 0, channels_last: bool = False, std: float = 1.0):
    torch.manual_seed(seed)
    net = space().supernet()
    with torch.no_grad():
        net.alphas["cell"].normal_(0.0, std)  # far from uniform, so every op's weight differs
    return net.to(memory_format=torch.channels_last) if channels_last else net


def reference_forward(net, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The textbook supernet: every edge is Σ_k w_k·op_k(x) over its enabled ops, each op its own module call."""
    body = net.body
    x = body.stem(x)
    for layer in body.layers:
        if not isinstance(layer, NB201Cell):
            x = layer(x)
            continue
        nodes = [x]
        for dst in range(1, 4):
            total = 0
            for e, (src, d) in enumerate(EDGES):
                for k, name in enumerate(OPS):
                    if d == dst and name != "none" and bool(net.mask("cell")[e, k]):
                        total = total + weights[e, k] * layer.edges[e].ops[name](nodes[src])
            nodes.append(total if torch.is_tensor(total) else torch.zeros_like(x))
        x = nodes[-1]
    return body.head(x)


# -- weighted_sum ----------------------------------------------------------------------------------------------------

def test_weighted_sum_empty_and_lone_unit_term():
    y = torch.randn(2, 3)
    assert weighted_sum([]) is None
    assert weighted_sum([(1.0, y)]) is y
    assert torch.equal(weighted_sum([(0.5, y)]), y * 0.5)


def test_weighted_sum_float_weights_leave_inputs_alone():
    ys = [torch.randn(4, 5) for _ in range(4)]
    before = [y.clone() for y in ys]
    ws = [1.0, 0.25, -2.0, 0.5]
    out = weighted_sum(list(zip(ws, ys)))
    assert torch.allclose(out, sum(w * y for w, y in zip(ws, ys)), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ys, before))
    assert all(out.data_ptr() != y.data_ptr() for y in ys)
    out2 = weighted_sum([(0.3, ys[0]), (0.7, ys[1])])
    assert torch.allclose(out2, 0.3 * ys[0] + 0.7 * ys[1], atol=1e-6)


def test_weighted_sum_tensor_weights_gradients():
    ys = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    ws = torch.tensor([0.2, -1.3, 0.7], requires_grad=True)
    g = torch.randn(3, 4)
    out = weighted_sum([(ws[i], ys[i]) for i in range(3)])
    gw, *gy = torch.autograd.grad(out, [ws, *ys], g)
    assert torch.allclose(out, sum(ws[i] * ys[i] for i in range(3)), atol=1e-6)
    assert torch.allclose(gw, torch.stack([(g * y).sum() for y in ys]), atol=1e-5)
    assert all(torch.allclose(gy[i], g * ws[i].detach(), atol=1e-6) for i in range(3))
    # a pre-weighted term (weight 1.0) first, tensor-weighted terms after it
    out = weighted_sum([(1.0, ys[0]), (ws[1], ys[1]), (ws[2], ys[2])])
    assert torch.allclose(out, ys[0] + ws[1] * ys[1] + ws[2] * ys[2], atol=1e-6)


# -- make_plan -------------------------------------------------------------------------------------------------------

def test_make_plan_skips_masked_none_and_zero_weight_ops():
    w = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.4], [0.2, 0.2, 0.2, 0.2, 0.2]])
    mask = torch.tensor([[True, True, True, False, True], [True, True, True, True, True]])
    plan = make_plan(w, mask, OPS)
    assert [k for k, _ in plan[0]] == [1, 4]            # none never; 2 has weight 0; 3 is masked
    assert all(isinstance(v, float) for _, v in plan[0])
    assert [k for k, _ in plan[1]] == [1, 2, 3, 4]
    assert plan[0][0][1] == pytest.approx(0.2)


def test_make_plan_with_gradient_keeps_zero_weight_ops_as_tensors():
    w = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.4]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False, True]])
    plan = make_plan(w, mask, OPS)
    assert [k for k, _ in plan[0]] == [1, 2, 4]
    assert all(torch.is_tensor(v) and v.requires_grad for _, v in plan[0])


# -- grouped batch norm ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine,track,momentum", [(False, True, 0.1), (True, True, None), (False, False, 0.1)])
def test_group_batch_norm_equals_separate_batch_norms(affine, track, momentum):
    torch.manual_seed(1)
    bns = [nn.BatchNorm2d(3, affine=affine, track_running_stats=track, momentum=momentum) for _ in range(3)]
    if affine:
        for b in bns:
            nn.init.uniform_(b.weight, 0.5, 1.5)
            nn.init.uniform_(b.bias, -0.5, 0.5)
    twins = copy.deepcopy(bns)
    ws = [0.5, 1.0, -0.25]
    for training in (True, True, False):
        for b in bns + twins:
            b.train(training)
        y = torch.randn(4, 9, 5, 5)
        out = group_batch_norm(y, bns, ws)
        expected = torch.cat([w * b(part) for w, b, part in zip(ws, twins, y.split(3, dim=1))], dim=1)
        assert torch.allclose(out, expected, atol=1e-5)
        for a, b in zip(bns, twins):
            for name, buf in b.named_buffers():
                assert torch.allclose(dict(a.named_buffers())[name].float(), buf.float(), atol=1e-6), name


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_conv_bn_group_equals_separate_ops(training, affine):
    """One convolution + one BN for three ReLUConvBN ops (eval mode: BN folded into the convolution)."""
    torch.manual_seed(2)
    ops = [ReLUConvBN(3, 4, 3, 1, 1, affine=affine) for _ in range(3)]
    for op in ops:  # non-trivial running statistics and affine parameters
        op.bn.running_mean.uniform_(-1, 1)
        op.bn.running_var.uniform_(0.5, 2)
        if affine:
            nn.init.uniform_(op.bn.weight, 0.5, 1.5)
            nn.init.uniform_(op.bn.bias, -0.5, 0.5)
    twins = copy.deepcopy(ops)
    for op in ops + twins:
        op.train(training)
    x = torch.randn(5, 3, 6, 6)
    ws = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    outs = conv_bn_group(F.relu(x), ops, [ws[0], ws[1], ws[2]])
    expected = [w * op(x) for w, op in zip(ws, twins)]
    for out, exp in zip(outs, expected):
        assert torch.allclose(out, exp, atol=1e-5)
    g = [torch.randn_like(e) for e in expected]
    grad, = torch.autograd.grad(outs, [ws], g)
    ref, = torch.autograd.grad(expected, [ws], g)
    assert torch.allclose(grad, ref, atol=1e-4)
    for a, b in zip(ops, twins):
        assert torch.allclose(a.bn.running_mean, b.bn.running_mean, atol=1e-6)


# -- the supernet ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_one_hot_supernet_equals_discrete_network(arch, channels_last):
    net = supernet(channels_last=channels_last)
    a = Architecture.from_nb201_string(arch)
    weights = net.one_hot_weights(a)
    model = space().network(a, bn_affine=False)
    model.load_from_supernet(net)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for step in range(2):  # train mode (batch statistics, running statistics updated in both) ...
        x, _ = data(step, channels_last)
        assert torch.equal(net(x, weights), model(x))
    assert all(torch.equal(net.body.state_dict()[k], v) for k, v in model.body.state_dict().items())
    net.eval(), model.eval()  # ... and eval mode (the running statistics)
    x, _ = data(5, channels_last)
    with torch.no_grad():
        assert torch.equal(net(x, weights), model(x))


class Counter:
    """Counts the convolution output channels and 3x3 average pools the network computes (F.conv2d/avg_pool2d)."""

    def __init__(self, monkeypatch):
        self.conv_channels, self.pools = 0, 0
        conv, pool = F.conv2d, F.avg_pool2d

        def counting_conv(x, weight, *args, **kwargs):
            self.conv_channels += weight.shape[0]
            return conv(x, weight, *args, **kwargs)

        def counting_pool(x, *args, **kwargs):
            self.pools += 1
            return pool(x, *args, **kwargs)

        monkeypatch.setattr(F, "conv2d", counting_conv)
        monkeypatch.setattr(F, "avg_pool2d", counting_pool)


def cell_channels() -> int:
    """Output channels of one op on one edge, summed over every cell of the network (C, 2C, 4C per stage)."""
    return N * (C + 2 * C + 4 * C)


@pytest.mark.parametrize("needs_grad", [False, True])
def test_masked_op_is_never_computed(monkeypatch, needs_grad):
    net = supernet()
    x, _ = data()
    counter = Counter(monkeypatch)
    weights = net.mixing_weights(detach=not needs_grad)
    net(x, weights)
    full_channels, full_pools = counter.conv_channels, counter.pools
    # one nor_conv_3x3 masked: C_out fewer channels per cell; every avg pool masked: the cells pool nothing
    conv3, pool = OPS.index("nor_conv_3x3"), OPS.index("avg_pool_3x3")
    mask = torch.ones(len(EDGES), len(OPS), dtype=torch.bool)
    mask[2, conv3] = False
    mask[:, pool] = False
    net.set_mask("cell", mask)
    counter.conv_channels = counter.pools = 0
    net(x, net.mixing_weights(detach=not needs_grad))
    assert counter.conv_channels == full_channels - cell_channels()
    cells = 3 * N
    assert full_pools - counter.pools == 3 * cells  # pooled once per node read (nodes 0, 1, 2), not once per edge


def test_masked_op_contributes_exactly_zero():
    net = supernet()
    x, _ = data()
    conv3 = OPS.index("nor_conv_3x3")
    w = net.mixing_weights(detach=True)
    w["cell"][4, conv3] = 0.0  # zero weight (not masked): not computed either
    with torch.no_grad():
        expected = net(x, w)
        mask = torch.ones(len(EDGES), len(OPS), dtype=torch.bool)
        mask[4, conv3] = False
        net.set_mask("cell", mask)
        op = net.body.layers[0].edges[4].ops["nor_conv_3x3"]
        op.conv.weight.fill_(float("nan"))  # were it computed, the output would be NaN
        stats = op.bn.running_mean.clone()
        out = net(x, w)
    assert torch.equal(out, expected)
    assert torch.equal(op.bn.running_mean, stats)  # its BN never saw a batch


@pytest.mark.parametrize("channels_last", [False, True])
def test_alpha_gradient_matches_reference(channels_last):
    net = supernet(channels_last=channels_last)
    mask = torch.ones(len(EDGES), len(OPS), dtype=torch.bool)
    mask[1, OPS.index("skip_connect")] = False
    net.set_mask("cell", mask)
    twin = copy.deepcopy(net)
    x, y = data(channels_last=channels_last)
    alpha = net.alphas["cell"]
    loss = F.cross_entropy(net(x, net.mixing_weights()), y)
    grad, = torch.autograd.grad(loss, [alpha])
    ref_loss = F.cross_entropy(reference_forward(twin, x, twin.mixing_weights()["cell"]), y)
    ref_grad, = torch.autograd.grad(ref_loss, [twin.alphas["cell"]])
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-4)
    assert grad[1, OPS.index("skip_connect")] == 0  # masked: no gradient
    for name, buf in twin.state_dict().items():  # BN running statistics moved the same way
        assert torch.allclose(net.state_dict()[name].float(), buf.float(), atol=1e-5), name


def test_weight_gradients_match_reference():
    net = supernet()
    twin = copy.deepcopy(net)
    x, y = data()
    F.cross_entropy(net(x, net.mixing_weights(detach=True)), y).backward()
    F.cross_entropy(reference_forward(twin, x, twin.mixing_weights(detach=True)["cell"]), y).backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        if name.startswith("alphas."):
            continue
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_darts_step_matches_reference_step():
    """One first-order DARTS step (α on a validation batch, then the weights) against the same step on the textbook
    supernet with loss.backward() for both."""
    cfg = SearchConfig()
    net = supernet(std=1e-3)
    twin = copy.deepcopy(net)
    train, valid = data(0), data(1)
    DartsFirstOrder(net, cfg, 10).step(train, valid, 0)
    a_opt = torch.optim.Adam([twin.alphas["cell"]], lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                             weight_decay=cfg.a_weight_decay)
    w_params = twin.weight_parameters()
    w_opt = torch.optim.SGD(w_params, lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    twin.train()
    F.cross_entropy(reference_forward(twin, valid[0], twin.mixing_weights()["cell"]), valid[1]).backward()
    a_opt.step()
    w_opt.zero_grad()
    F.cross_entropy(reference_forward(twin, train[0], twin.mixing_weights(detach=True)["cell"]), train[1]).backward()
    nn.utils.clip_grad_norm_(w_params, cfg.grad_clip)
    w_opt.step()
    for name, value in twin.state_dict().items():
        assert torch.allclose(net.state_dict()[name].float(), value.float(), atol=1e-5, rtol=1e-4), name


def test_bf16_option_trains_in_bf16_with_fp32_state():
    """search.bf16: the step runs under bf16 autocast (numerics change a little), parameters, α and optimizer state
    stay fp32; the default step is fp32."""
    net = supernet(std=1e-3, channels_last=True)
    twin = copy.deepcopy(net)
    train, valid = data(0, channels_last=True), data(1, channels_last=True)
    out16 = DartsFirstOrder(net, SearchConfig(bf16=True), 10).step(train, valid, 0)
    out32 = DartsFirstOrder(twin, SearchConfig(), 10).step(train, valid, 0)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert abs(out16["valid_loss"] - out32["valid_loss"]) < 0.05 * out32["valid_loss"]
    assert out16["valid_loss"] != out32["valid_loss"]  # bf16 really ran
    # Adam's first step moves each α by about a_lr either way, in bf16 as in fp32
    assert (net.alphas["cell"] - twin.alphas["cell"]).abs().max() <= 2.01 * SearchConfig().a_lr
