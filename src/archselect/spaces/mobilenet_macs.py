"""Multiply-accumulates of a MobileNet architecture from its layout alone, without building the network: what a
sub-network search checks a FLOPs limit with, thousands of times. Counted as evaluate/flops.py counts them
(convolutions, the classifier with its bias, the global pooling; BN and the residual additions not), which
tests/test_ofa.py checks against it.
"""
from __future__ import annotations

from typing import Sequence

from ..mobilenet_text import kernel_and_expansion


def _out(size: int, kernel: int, stride: int) -> int:
    """Output side of a convolution with padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def mobilenet_macs(lay, stages: Sequence[Sequence[str]], in_channels: int, image: tuple[int, int],
                   num_classes: int) -> int:
    """MACs of one image of side `image` (h, w) through the network of `stages` (op names per stage) on layout
    `lay` (spaces.mobilenet.Layout)."""
    c0, c1 = lay.stem
    h, w = (_out(s, 3, lay.stem_stride) for s in image)
    total = h * w * c0 * in_channels * 9 + h * w * c0 * 9 + h * w * c1 * c0  # stem conv, expansion-1 block
    ops = [op for stage in stages for op in stage]
    for layer, op in zip(lay.layers, ops):
        if op == "zero":
            continue
        kernel, expansion = kernel_and_expansion(op)
        hidden = layer.C_in * expansion
        ho, wo = _out(h, kernel, layer.stride), _out(w, kernel, layer.stride)
        total += h * w * hidden * layer.C_in + ho * wo * hidden * kernel * kernel + ho * wo * layer.C_out * hidden
        h, w = ho, wo
    c_last = lay.layers[-1].C_out
    return total + h * w * lay.head * c_last + h * w * lay.head + num_classes * (lay.head + 1)
