"""Parameters and FLOPs of a network, for the retraining report.

FLOPs are counted the way the NAS literature (NAS-Bench-201, DARTS) reports them: multiply-accumulates of one image,
i.e. a 3x3 convolution costs C_in/groups x 9 per output element and a linear layer in_features per output plus one
for its bias. A convolution's bias is not counted: the networks here have none, and the mixed edges fold an
inference-mode batch norm into its convolution as a bias. Pooling costs its window per output element (adaptive
average pooling: one per input element). The headline total counts convolutions, linear layers and pooling; batch
norms left unfolded (2 per element: scale and shift) are reported apart.

The count is of the work this implementation does, seen by watching torch functions rather than module hooks: the
cells fuse convolutions and call pooling functionally, which module hooks cannot see. Its one departure from the
papers' per-edge count: the cells compute a parameter-free pooling once for all the edges that apply it to the same
node, so each extra edge doing so is not counted again (NAS-Bench-201 at C=16, N=5: 1.29 MFLOPs per such edge).

The NAS-Bench-201 table's `flops_m` (from NAS-Bench-Suite-Zero) counts element-wise work too: for the C=16, N=5
CIFAR-10 networks it exceeds the headline total here by 3 per output element of every ReLU-conv-BN op in the cells
(ReLU + BN) plus a constant 0.13 M, i.e. by 0.13 + 0.43 x (conv ops per cell) MFLOPs, 1-6 %, plus the shared pooling
above. Parameters match it exactly.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

HEADLINE = ("conv", "linear", "pool")


def count_parameters(model: nn.Module, exclude: tuple[str, ...] = ("auxiliary",)) -> int:
    """Trainable-or-not parameters, leaving out modules whose name contains an excluded word (DARTS leaves out the
    auxiliary head, which only exists during training)."""
    return sum(p.numel() for name, p in model.named_parameters() if not any(word in name for word in exclude))


def _kernel_area(kernel) -> int:
    return math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** 2


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class FlopCount:
    by_kind: dict[str, int] = field(default_factory=lambda: {k: 0 for k in (*HEADLINE, "bn")})

    @property
    def total(self) -> int:
        return sum(self.by_kind[k] for k in HEADLINE)

    def add(self, name: str, args: tuple, kwargs: dict, out) -> None:
        y = _first_tensor(out)
        arg = lambda i, key: args[i] if len(args) > i else kwargs.get(key)  # noqa: E731
        if name in ("conv1d", "conv2d", "conv3d"):
            self.by_kind["conv"] += y.numel() * arg(1, "weight")[0].numel()
        elif name == "linear":
            weight, bias = arg(1, "weight"), arg(2, "bias")
            self.by_kind["linear"] += y.numel() * weight.shape[1] + (y.numel() if bias is not None else 0)
        elif name in ("avg_pool2d", "max_pool2d"):
            self.by_kind["pool"] += y.numel() * _kernel_area(arg(1, "kernel_size"))
        elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            self.by_kind["pool"] += arg(0, "input").numel()
        elif name == "batch_norm":
            self.by_kind["bn"] += 2 * y.numel()


class _Counter(TorchFunctionMode):
    def __init__(self, count: FlopCount):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count.add(getattr(func, "__name__", ""), args, kwargs, out)
        return out


@contextlib.contextmanager
def counting() -> Iterator[FlopCount]:
    """FLOPs of every torch function called inside the block (the caller chooses the modes and inputs)."""
    count = FlopCount()
    with _Counter(count):
        yield count


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> FlopCount:
    """FLOPs (multiply-accumulates) of one forward pass of a single image of `input_shape` (C, H, W), in eval mode
    (so no auxiliary head and no drop-path); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=device)
    try:
        with counting() as count:
            model(x)
    finally:
        model.train(was_training)
    return count
