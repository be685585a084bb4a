"""Once-for-All's elastic layer (Cai et al., ICLR 2020): one MobileNet layer whose candidate blocks `mbE_kK` share
their weights instead of each owning a block.

The layer holds a single inverted residual block at its largest size (expansion max E, kernel max K) and cuts the
candidate `mbE_kK` out of it, as OFA's elastic kernel and elastic width do:

- expansion E uses the first C_in·E hidden channels: the first rows of the 1x1 expansion conv and of its BN, the
  first depthwise filters and their BN, the first input columns of the 1x1 projection;
- kernel K < max K is the centre K x K crop of the next larger kernel, sent through a learned K²xK² matrix shared by
  all channels of the layer (OFA's kernel transformation; `7to5` is 25x25, `5to3` is 9x9, both start as the
  identity). A 3x3 kernel is thus derived from the transformed 5x5, which is derived from the 7x7 weights;
- the BN of a cut uses the first channels of the shared BN's parameters and running statistics (its running
  statistics are shared by every sub-network; OFA recalibrates them per sub-network before evaluating it).

`sort_channels` is OFA's channel-importance reorder for elastic expansion: the hidden channels are sorted by the L1
norm of their projection weights, most important first, so that the smaller expansions keep the important ones.

A layer runs a *plan* as the other spaces' layers do: Σ_k w_k · block_k(x), plus x where the layer keeps width and
stride. With a one-hot plan it computes exactly one sub-network's layer (the discrete network with `block_state`'s
weights computes the same numbers). `zero` (no block) makes a non-first layer the identity: OFA's elastic depth.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mobilenet_text import kernel_and_expansion
from ..supernet import weighted_sum
from .ops import batch_norm, bn, tracking_factor


def centre_crop(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size window of a (..., k, k) kernel."""
    start = (kernel.shape[-1] - size) // 2
    return kernel[..., start:start + size, start:start + size]


def transform_kernel(kernel: torch.Tensor, size: int, matrix: torch.Tensor) -> torch.Tensor:
    """OFA's kernel transformation: the centre size x size crop of each (C, 1, k, k) filter, flattened to size² values
    and multiplied by `matrix` (size² x size², the same for every channel)."""
    crop = centre_crop(kernel, size)
    flat = crop.reshape(crop.shape[0], -1)
    return F.linear(flat, matrix).reshape(crop.shape)


def sliced_batch_norm(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Batch norm of x's channels with the first x.shape[1] channels of `norm` (parameters and running statistics,
    updated in place through the slices), following nn.BatchNorm2d's rules for train/eval and tracking (and
    ops.batch_norm's for stacked settings and global statistics)."""
    d = x.shape[1]
    if d == norm.num_features:
        return norm(x)
    factor = tracking_factor(norm)
    batch_stats = norm.training or norm.running_mean is None
    keep = not norm.training or norm.track_running_stats
    mean = norm.running_mean[:d] if keep and norm.running_mean is not None else None
    var = norm.running_var[:d] if keep and norm.running_var is not None else None
    weight = None if norm.weight is None else norm.weight[:d]
    bias = None if norm.bias is None else norm.bias[:d]
    return batch_norm(x, mean, var, weight, bias, batch_stats, factor, norm.eps)


class ElasticLayer(nn.Module):
    """One searchable MobileNet layer whose candidates `mbE_kK` are cuts of one shared inverted residual block."""

    def __init__(self, C_in: int, C_out: int, stride: int, residual: bool, op_names: Sequence[str], affine: bool,
                 track: bool):
        super().__init__()
        self.op_names = tuple(op_names)
        self.blocks = {k: kernel_and_expansion(name) for k, name in enumerate(self.op_names) if name != "zero"}
        self.kernels = tuple(sorted({kernel for kernel, _ in self.blocks.values()}))
        self.C_in, self.C_out, self.stride, self.residual = C_in, C_out, stride, residual
        hidden = C_in * max(e for _, e in self.blocks.values())
        big = self.kernels[-1]
        self.expand = nn.Conv2d(C_in, hidden, 1, bias=False)
        self.expand_bn = bn(hidden, affine, track)
        self.depthwise = nn.Conv2d(hidden, hidden, big, stride, big // 2, groups=hidden, bias=False)
        self.depthwise_bn = bn(hidden, affine, track)
        self.project = nn.Conv2d(hidden, C_out, 1, bias=False)
        self.project_bn = bn(C_out, affine, track)
        self.transforms = nn.ParameterDict({f"{a}to{b}": nn.Parameter(torch.eye(b * b))
                                            for b, a in zip(self.kernels, self.kernels[1:])})

    def kernel(self, size: int, channels: int) -> torch.Tensor:
        """The depthwise filters of the first `channels` hidden channels at kernel `size`: the largest kernel's
        weights, transformed down one kernel size at a time."""
        out = self.depthwise.weight[:channels]
        for a, b in zip(reversed(self.kernels), reversed(self.kernels[:-1])):
            if a <= size:
                break
            out = transform_kernel(out, b, self.transforms[f"{a}to{b}"])
        return out

    def block(self, x: torch.Tensor, kernel: int, expansion: int) -> torch.Tensor:
        """The candidate mb{expansion}_k{kernel} on x, from the shared weights."""
        h = self.C_in * expansion
        y = F.relu6(sliced_batch_norm(self.expand_bn, F.conv2d(x, self.expand.weight[:h])))
        y = F.conv2d(y, self.kernel(kernel, h), None, self.stride, kernel // 2, 1, h)
        y = F.relu6(sliced_batch_norm(self.depthwise_bn, y))
        return self.project_bn(F.conv2d(y, self.project.weight[:, :h]))

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        y = weighted_sum([(w, self.block(x, *self.blocks[k])) for k, w in plan if k in self.blocks])
        if self.residual:
            return x if y is None else x + y
        if y is None:  # every op removed (a selector's ablation): zeros of the layer's output shape
            n, _, h, w = x.shape
            s = self.stride
            return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)
        return y

    # -- a sub-network's weights ------------------------------------------------------------------------------------
    @torch.no_grad()
    def block_state(self, op: str) -> dict[str, torch.Tensor]:
        """The weights and BN state of candidate `op` as a standalone block, named as spaces.mobilenet's
        InvertedResidual names them (expand.0/1, depthwise.0/1, project.0/1)."""
        kernel, expansion = kernel_and_expansion(op)
        h = self.C_in * expansion
        out = {"expand.0.weight": self.expand.weight[:h], "depthwise.0.weight": self.kernel(kernel, h),
               "project.0.weight": self.project.weight[:, :h]}
        for prefix, norm, d in (("expand.1", self.expand_bn, h), ("depthwise.1", self.depthwise_bn, h),
                                ("project.1", self.project_bn, self.C_out)):
            for name, t in norm.state_dict().items():
                out[f"{prefix}.{name}"] = t if t.dim() == 0 else t[:d]
        return {k: v.detach().clone() for k, v in out.items()}

    # -- OFA's channel sorting for elastic expansion ---------------------------------------------------------------
    def channel_order(self, bands: Sequence[int]) -> torch.Tensor:
        """The hidden channels by decreasing importance (L1 norm of their projection weights), each kept inside its
        band: `bands` are the widths already trained as sub-network widths (ascending); a channel between two of them
        stays between them (OFA sorts within the expansions of earlier stages)."""
        importance = self.project.weight.detach().abs().sum(dim=(0, 2, 3))
        edges = sorted({0, *[b for b in bands if 0 < b < importance.numel()], importance.numel()})
        parts = [lo + torch.argsort(importance[lo:hi], descending=True, stable=True)
                 for lo, hi in zip(edges, edges[1:])]
        return torch.cat(parts)

    @torch.no_grad()
    def permute_hidden(self, order: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Reorder the hidden channels (a function-preserving permutation of the full block); returns each tensor
        changed with the dimension permuted, so that an optimizer can permute its state alike."""
        changed = [(self.expand.weight, 0), (self.depthwise.weight, 0), (self.project.weight, 1)]
        for norm in (self.expand_bn, self.depthwise_bn):
            changed += [(t, 0) for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var) if t is not None]
        for t, dim in changed:
            t.copy_(t.index_select(dim, order.to(t.device)))
        return changed
