"""Primitive candidate operations: name -> factory(C_in, C_out, stride, bn_affine, bn_track) -> nn.Module.

Every op maps (N, C_in, H, W) to (N, C_out, H/stride, W/stride). `none` is registered so that a space can name it, but
a supernet never computes it: its output is zero by definition.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

OPS: Registry = Registry("operation")


def bn(C: int, affine: bool, track: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, affine=affine, track_running_stats=track)


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


class AvgPool(nn.Module):
    """3x3 average pool (padding not counted), with a 1x1 ReLUConvBN first when the channel count changes."""

    def __init__(self, C_in, C_out, stride, affine, track):
        super().__init__()
        self.pre = None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine, track=track)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
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


OPS.register("none")(lambda C_in, C_out, stride, affine, track: Zero(C_out, stride))
OPS.register("skip_connect")(skip)
OPS.register("nor_conv_1x1")(lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 1, stride, 0, 1, affine, track))
OPS.register("nor_conv_3x3")(lambda C_in, C_out, stride, affine, track: ReLUConvBN(C_in, C_out, 3, stride, 1, 1, affine, track))
OPS.register("avg_pool_3x3")(lambda C_in, C_out, stride, affine, track: AvgPool(C_in, C_out, stride, affine, track))

# Ops whose first layer is a ReLU of their input: a cell may compute that ReLU once per node and pass it pre-activated.
PRE_ACTIVATED = frozenset({"nor_conv_1x1", "nor_conv_3x3"})
PARAMETER_FREE = frozenset({"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3", "noise"})
