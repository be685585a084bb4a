"""What every search space's supernet shares: architecture parameters, per-op masks, mixing weights, mixed edges.

Each cell type ("cell" in NAS-Bench-201; "normal" and "reduce" in DARTS) has an `edges x ops` matrix of architecture
parameters α and a boolean mask of the same shape. Mixing weights are the softmax of α restricted to the enabled ops
(GM-NAS' encoding); `forward(x, weights)` runs the supernet with any given mixing weights instead (a perturbation, a
Shapley coalition, a one-hot sub-network). An op is computed only when it is enabled and its weight is non-zero (or
the weights need a gradient), so a masked or removed op costs nothing and contributes exactly zero.
"""
from __future__ import annotations

import abc

from typing import Sequence, Union

import torch
import torch.nn as nn


Weight = Union[float, torch.Tensor]
# For each edge, the (op index, weight) pairs to compute.
Plan = list[list[tuple[int, Weight]]]


def weighted_sum(terms: Sequence[tuple[Weight, torch.Tensor]]) -> torch.Tensor | None:
    """Σ w·y without needless copies: a lone weight-1 term is returned as is; float weights accumulate in place
    into one new buffer; tensor weights (which need a gradient) are summed out of place."""
    if not terms:
        return None
    if len(terms) == 1 and isinstance(terms[0][0], float) and terms[0][0] == 1.0:
        return terms[0][1]
    if all(isinstance(w, float) for w, _ in terms):
        w0, y0 = terms[0]
        out = y0.clone() if w0 == 1.0 else torch.mul(y0, w0)
        for w, y in terms[1:]:
            out.add_(y, alpha=w)
        return out
    out = terms[0][0] * terms[0][1]
    for w, y in terms[1:]:
        out = out + w * y
    return out


def make_plan(weights: torch.Tensor, mask: torch.Tensor, op_names: Sequence[str]) -> Plan:
    """Which ops each edge computes, with their weights: enabled, not `none`, and weight != 0 unless a gradient
    with respect to the weights is needed (then every enabled op is computed, as its gradient is non-zero)."""
    needs_grad = weights.requires_grad
    values = weights.detach().tolist()
    enabled = mask.tolist()
    plan: Plan = []
    for e, row in enumerate(values):
        edge = []
        for k, v in enumerate(row):
            if not enabled[e][k] or op_names[k] == "none":
                continue
            if needs_grad:
                edge.append((k, weights[e, k]))
            elif v != 0.0:
                edge.append((k, float(v)))
        plan.append(edge)
    return plan


class Supernet(nn.Module, abc.ABC):
    """Base class: α and masks per cell type; subclasses build the network and implement `forward_weighted`."""

    def __init__(self, edges: dict[str, Sequence[tuple[int, int]]], op_names: Sequence[str], alpha_init_std: float):
        super().__init__()
        self.cell_types = tuple(edges)
        self.edges = {ct: tuple(tuple(e) for e in es) for ct, es in edges.items()}
        self.op_names = tuple(op_names)
        K = len(self.op_names)
        self.alphas = nn.ParameterDict(
            {ct: nn.Parameter(alpha_init_std * torch.randn(len(es), K)) for ct, es in self.edges.items()}
        )
        for ct, es in self.edges.items():
            self.register_buffer(f"mask_{ct}", torch.ones(len(es), K, dtype=torch.bool))

    # -- masks and weights -------------------------------------------------------------------------------------------
    def mask(self, cell_type: str) -> torch.Tensor:
        return getattr(self, f"mask_{cell_type}")

    def set_mask(self, cell_type: str, mask: torch.Tensor) -> None:
        m = self.mask(cell_type)
        m.copy_(mask.to(device=m.device, dtype=torch.bool))

    def mixing_weights(self, detach: bool = False) -> dict[str, torch.Tensor]:
        """softmax(α) over each edge's enabled ops; disabled ops get exactly 0."""
        out = {}
        for ct in self.cell_types:
            a = self.alphas[ct].detach() if detach else self.alphas[ct]
            m = self.mask(ct)
            w = torch.softmax(a.masked_fill(~m, float("-inf")), dim=-1)
            out[ct] = torch.where(m, w, torch.zeros_like(w))  # an edge with no enabled op gives 0, not NaN
        return out

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas[ct] for ct in self.cell_types]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas.")]

    def plans(self, weights: dict[str, torch.Tensor]) -> dict[str, Plan]:
        return {ct: make_plan(weights[ct], self.mask(ct), self.op_names) for ct in self.cell_types}

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if weights is None:
            weights = self.mixing_weights(detach=not torch.is_grad_enabled())
        return self.forward_plans(x, self.plans(weights))

    @abc.abstractmethod
    def forward_plans(self, x: torch.Tensor, plans: dict[str, Plan]) -> torch.Tensor:
        """Run the network with the given per-cell-type plans (see `make_plan`)."""

    def one_hot_weights(self, arch) -> dict[str, torch.Tensor]:
        """Mixing weights that select exactly `arch` (an Architecture of this space)."""
        out = {}
        for ct in self.cell_types:
            w = torch.zeros(len(self.edges[ct]), len(self.op_names), device=self.alphas[ct].device)
            cell = arch.cell(ct)
            for i, (src, dst) in enumerate(self.edges[ct]):
                op = cell.op_on(src, dst)
                if op is not None:
                    w[i, self.op_names.index(op)] = 1.0
            out[ct] = w
        return out
