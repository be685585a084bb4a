"""A mixed edge: all candidate ops of one edge and their weighted sum, computing only the ops its plan names."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..supernet import Weight, weighted_sum
from .ops import OPS, PRE_ACTIVATED


class MixedEdge(nn.Module):
    """One edge: its candidate ops (a ModuleDict by op name; `none` has no module) and their weighted sum."""

    def __init__(self, C_in: int, C_out: int, stride: int, op_names: Sequence[str], affine: bool, track: bool):
        super().__init__()
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleDict(
            {name: OPS.get(name)(C_in, C_out, stride, affine, track) for name in op_names if name != "none"}
        )

    def forward(self, x: torch.Tensor, relu_x, edge_plan: list[tuple[int, Weight]]) -> torch.Tensor | None:
        """`relu_x()` returns ReLU(x), computed once per node and shared by the convolutions reading it."""
        terms = []
        for k, w in edge_plan:
            name = self.op_names[k]
            op = self.ops[name]
            y = op(relu_x(), pre_activated=True) if name in PRE_ACTIVATED else op(x)
            terms.append((w, y))
        return weighted_sum(terms)
