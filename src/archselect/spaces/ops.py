"""Primitive candidate operations: name -> factory(C_in, C_out, stride, bn_affine, bn_track) -> nn.Module.

Every op maps (N, C_in, H, W) to (N, C_out, H/stride, W/stride). `none` is registered so that a space can name it, but
a supernet never computes it: its output is zero by definition.
"""
from __future__ import annotations

import abc
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from ..supernet import Weight

OPS: Registry = Registry("operation")


# -- batch norm, per weight setting when several are stacked along the batch -------------------------------------

# The selection evaluator may stack S weight settings of one supernet along the batch (scoring/stacking.py): each
# must then be normalised by its own batch statistics, over its own S-th of the batch, as if it ran alone.
STACKED: ContextVar[int] = ContextVar("stacked_settings", default=1)


@contextmanager
def stacked(settings: int) -> Iterator[None]:
    """Batch norms in training mode normalise each of `settings` equal slices of the batch on its own."""
    token = STACKED.set(settings)
    try:
        yield
    finally:
        STACKED.reset(token)


def per_setting(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, settings: int) -> torch.Tensor:
    """f applied to each of `settings` slices of x's batch, concatenated (a channels-last x stays channels-last)."""
    return torch.cat([f(part) for part in x.chunk(settings)])


# BN recalibration under torchrun (scoring/bn_calibration.py): each process holds a slice of every batch, and the
# statistics must be the whole batch's, so the per-channel sums of each batch norm are summed over the processes.
GLOBAL_SUM: ContextVar[Callable[[list[torch.Tensor]], None] | None] = ContextVar("global_sum", default=None)


@contextmanager
def global_statistics(all_sum: Callable[[list[torch.Tensor]], None]) -> Iterator[None]:
    """Batch norms in training mode normalise by, and track, the statistics of the global batch, of which each
    process holds a slice: `all_sum` replaces a list of tensors, in place, by their sums over the processes."""
    token = GLOBAL_SUM.set(all_sum)
    try:
        yield
    finally:
        GLOBAL_SUM.reset(token)


def global_batch_norm(x: torch.Tensor, mean, var, weight, bias, momentum: float, eps: float,
                      all_sum: Callable[[list[torch.Tensor]], None]) -> torch.Tensor:
    """Training-mode batch norm by the statistics of the global batch: per channel the count and the sum, then the
    sum of squared deviations from the global mean (two passes, float64 sums), each summed over the processes. The
    running `mean` and `var` (when given) move by `momentum` towards the mean and the unbiased variance, as
    F.batch_norm moves them. Forward only: no gradient flows back through the other processes' statistics."""
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("global batch statistics are for passes without gradients (BN recalibration)")
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = torch.tensor([x.numel() // max(x.shape[1], 1)], dtype=torch.float64, device=x.device)
    total = x.sum(dims, dtype=torch.float64)
    all_sum([count, total])
    batch_mean = total / count
    squares = (x - batch_mean.to(x.dtype).view(shape)).square().sum(dims, dtype=torch.float64)
    all_sum([squares])
    batch_var = squares / count
    if mean is not None:
        with torch.no_grad():
            mean.mul_(1 - momentum).add_(batch_mean.to(mean.dtype), alpha=momentum)
            var.mul_(1 - momentum).add_((batch_var * count / (count - 1)).to(var.dtype), alpha=momentum)
    return F.batch_norm(x, batch_mean.to(x.dtype), batch_var.to(x.dtype), weight, bias, False, 0.0, eps)


def tracking_factor(norm: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics factor of `norm`'s next batch, counting the batch as nn.BatchNorm2d does (training and
    tracking: num_batches_tracked + 1; momentum None: the cumulative average 1/num_batches_tracked)."""
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            factor = 1.0 / float(norm.num_batches_tracked)
    return factor


def batch_norm(x: torch.Tensor, mean, var, weight, bias, training: bool, momentum: float, eps: float) -> torch.Tensor:
    """F.batch_norm, with batch statistics per stacked setting (see `stacked`) or of the global batch (see
    `global_statistics`)."""
    all_sum = GLOBAL_SUM.get()
    if all_sum is not None and training:
        return global_batch_norm(x, mean, var, weight, bias, momentum, eps, all_sum)
    n = STACKED.get()
    if n == 1 or not training:
        return F.batch_norm(x, mean, var, weight, bias, training, momentum, eps)
    if mean is not None:
        raise RuntimeError("stacked weight settings cannot update BatchNorm running statistics")
    return per_setting(lambda part: F.batch_norm(part, None, None, weight, bias, True, momentum, eps), x, n)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d, with batch statistics per stacked setting (see `stacked`) or of the global batch (see
    `global_statistics`); same parameters and buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_batch = GLOBAL_SUM.get() is not None
        running = not (self.training or self.running_mean is None)  # running statistics: per image
        if running or (STACKED.get() == 1 and not global_batch):
            return super().forward(x)
        # the global batch's statistics, tracked as nn.BatchNorm2d tracks its own; or batch statistics per stacked
        # setting, where `batch_norm` refuses the running statistics a tracking BN would update
        track = self.track_running_stats
        momentum = tracking_factor(self) if global_batch else 0.0
        return batch_norm(x, self.running_mean if track else None, self.running_var if track else None, self.weight,
                          self.bias, True, momentum, self.eps)


def bn(C: int, affine: bool, track: bool) -> nn.BatchNorm2d:
    return BatchNorm2d(C, affine=affine, track_running_stats=track)


class Zero(nn.Module):
    def __init__(self, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BN (the NAS-Bench-201 `nor_conv`). `pre_activated=True` skips the ReLU for callers that share
    one ReLU of a node among all the convolutions reading it."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation=1, affine=True, track=True):
        super().__init__()
        self.conv = nn.Conv2d(C_in, C_out, kernel, stride, padding, dilation=dilation, bias=False)
        self.bn = bn(C_out, affine, track)

    def forward(self, x: torch.Tensor, pre_activated: bool = False) -> torch.Tensor:
        return self.bn(self.conv(x if pre_activated else F.relu(x)))


class _Pool(nn.Module, metaclass=abc.ABCMeta):
    """A 3x3 pool (padding 1), with a 1x1 ReLUConvBN first when the channel count changes (never in DARTS)."""

    def __init__(self, C_in, C_out, stride, affine, track):
        super().__init__()
        self.pre = None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine, track=track)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x if self.pre is None else self.pre(x))

    @abc.abstractmethod
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling itself."""


class AvgPool(_Pool):
    """3x3 average pool (padding not counted)."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convolutions (DARTS' skip_connect at stride 2)."""

    def __init__(self, C_in, C_out, affine=True, track=True):
        super().__init__()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = bn(C_out, affine, track)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        y = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # shifted by one pixel, zero-padded back to size
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(y)], dim=1))


def skip(C_in, C_out, stride, affine, track):
    if stride == 1 and C_in == C_out:
        return Identity()
    return FactorizedReduce(C_in, C_out, affine, track)


# -- DARTS ops (the discrete forms, as in DARTS' evaluation network; the DARTS supernet adds BN after pooling) ------

def scaled_bn(norm: nn.BatchNorm2d, x: torch.Tensor, scale: Weight = 1.0) -> torch.Tensor:
    """scale * norm(x), with the scale folded into the batch norm's affine transform: one pass instead of two, and
    for a tensor scale (a mixing weight needing a gradient) nothing more is saved for backward than BN saves anyway.
    Same running-statistics semantics as nn.BatchNorm2d."""
    if isinstance(scale, float) and scale == 1.0:
        return norm(x)
    C = norm.num_features
    ref = norm.weight if norm.affine else norm.running_mean  # BN parameters stay fp32 under bf16 autocast
    dtype = ref.dtype if ref is not None else x.dtype
    s = torch.as_tensor(scale, dtype=dtype, device=x.device).expand(C).contiguous()
    weight, bias = (norm.weight * s, norm.bias * s) if norm.affine else (s, None)
    momentum = tracking_factor(norm)
    use_running = not norm.training or norm.track_running_stats
    return batch_norm(x, norm.running_mean if use_running else None, norm.running_var if use_running else None,
                      weight, bias, norm.training or norm.running_mean is None, momentum, norm.eps)


def depthwise_pointwise(dw: nn.Conv2d, pw: nn.Conv2d, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """pw(dw(x)). With `recompute`, the pointwise convolution does not store its input dw(x) for backward: backward
    recomputes it from x, which dw stores anyway — one cheap depthwise pass instead of one activation tensor. (With
    create_graph the recomputation is itself differentiable, so higher-order gradients stay exact.)"""
    h = dw(x)
    if not (recompute and torch.is_grad_enabled()):
        return pw(h)
    h_ptr = h.data_ptr()  # not h itself: autograd keeps this hook alive until backward, and with it what it holds
    device = x.device.type
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))  # hooks run without autocast

    def pack(t: torch.Tensor):
        return _Recompute(dw, x, autocast) if t.data_ptr() == h_ptr else t

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        return pw(h)


class _Recompute:
    """f(x), to be computed again under the autocast state of the forward pass (bf16 search steps)."""

    def __init__(self, f, x: torch.Tensor, autocast: tuple[bool, torch.dtype]):
        self.f, self.x, self.autocast = f, x, autocast

    def __call__(self) -> torch.Tensor:
        enabled, dtype = self.autocast
        with torch.autocast(self.x.device.type, dtype=dtype, enabled=enabled):
            return self.f(self.x)


def _unpack(saved):
    return saved() if isinstance(saved, _Recompute) else saved


class SepConv(nn.Module):
    """DARTS' separable convolution: ReLU, depthwise kxk (strided), pointwise 1x1, BN, then the same again unstrided.
    `scale` multiplies the output (folded into the last BN); `recompute` see `depthwise_pointwise`."""

    def __init__(self, C_in, C_out, kernel, stride, padding, affine, track):
        super().__init__()
        self.dw1 = nn.Conv2d(C_in, C_in, kernel, stride, padding, groups=C_in, bias=False)
        self.pw1 = nn.Conv2d(C_in, C_in, 1, bias=False)
        self.bn1 = bn(C_in, affine, track)
        self.dw2 = nn.Conv2d(C_in, C_in, kernel, 1, padding, groups=C_in, bias=False)
        self.pw2 = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn2 = bn(C_out, affine, track)
        self.recompute = False

    def forward(self, x: torch.Tensor, pre_activated: bool = False, scale: Weight = 1.0) -> torch.Tensor:
        x = self.bn1(depthwise_pointwise(self.dw1, self.pw1, x if pre_activated else F.relu(x), self.recompute))
        return scaled_bn(self.bn2, depthwise_pointwise(self.dw2, self.pw2, F.relu(x), self.recompute), scale)


class DilConv(nn.Module):
    """DARTS' dilated separable convolution: ReLU, depthwise kxk with dilation 2, pointwise 1x1, BN. `scale` and
    `recompute` as in SepConv."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation, affine, track):
        super().__init__()
        self.dw = nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False)
        self.pw = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = bn(C_out, affine, track)
        self.recompute = False

    def forward(self, x: torch.Tensor, pre_activated: bool = False, scale: Weight = 1.0) -> torch.Tensor:
        x = depthwise_pointwise(self.dw, self.pw, x if pre_activated else F.relu(x), self.recompute)
        return scaled_bn(self.bn, x, scale)


class _MaxPool3x3(torch.autograd.Function):
    """3x3 max pool (padding 1) that stores its input only and finds the argmax again in backward: the int64
    indices PyTorch would keep are twice the size of the output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.stride = stride
        return F.max_pool2d(x, 3, stride, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = ctx.stride
        _, indices = F.max_pool2d(x, 3, s, 1, return_indices=True)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [3, 3], [s, s], [1, 1], [1, 1], False,
                                                               indices), None


class MaxPool(_Pool):
    """3x3 max pool; in training it keeps no argmax indices (see _MaxPool3x3)."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return _MaxPool3x3.apply(x, self.stride) if x.requires_grad else F.max_pool2d(x, 3, self.stride, 1)


class Noise(nn.Module):
    """R-DARTS' `noise` op (space S4): a fresh standard Gaussian sample shaped like the op's output, independent of
    the input's values, in training and evaluation mode alike (R-DARTS' NoiseOp(stride, mean 0, std 1))."""

    def __init__(self, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s, dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        return out.normal_()


OPS.register("none")(lambda C_in, C_out, stride, affine, track: Zero(C_out, stride))
OPS.register("skip_connect")(skip)
OPS.register("nor_conv_1x1")(lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 1, stride, 0, 1, affine, track))
OPS.register("nor_conv_3x3")(lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 3, stride, 1, 1, affine, track))
OPS.register("avg_pool_3x3")(lambda C_in, C_out, stride, affine, track: AvgPool(C_in, C_out, stride, affine, track))
# DARTS (avg_pool_3x3 and skip_connect above are DARTS' own definitions too)
OPS.register("max_pool_3x3")(lambda C_in, C_out, stride, affine, track: MaxPool(C_in, C_out, stride, affine, track))
OPS.register("sep_conv_3x3")(lambda C_in, C_out, stride, affine, track: SepConv(C_in, C_out, 3, stride, 1, affine, track))
OPS.register("sep_conv_5x5")(lambda C_in, C_out, stride, affine, track: SepConv(C_in, C_out, 5, stride, 2, affine, track))
OPS.register("dil_conv_3x3")(lambda C_in, C_out, stride, affine, track: DilConv(C_in, C_out, 3, stride, 2, 2, affine, track))
OPS.register("dil_conv_5x5")(lambda C_in, C_out, stride, affine, track: DilConv(C_in, C_out, 5, stride, 4, 2, affine, track))
OPS.register("noise")(lambda C_in, C_out, stride, affine, track: Noise(C_out, stride))

# Ops whose first layer is a ReLU of their input: a cell may compute that ReLU once per node and pass it pre-activated.
PRE_ACTIVATED = frozenset({"nor_conv_1x1", "nor_conv_3x3",
                           "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"})
PARAMETER_FREE = frozenset({"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3", "noise"})
