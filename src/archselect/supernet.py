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
    """Σ w·y with one fresh output buffer and no needless passes: a lone weight-1 term is returned as is; otherwise
    the first two terms make a new tensor and the rest accumulate into it in place (add_ for float weights, addcmul_
    for tensor weights — autograd-safe, as no backward formula reads the buffer being accumulated into)."""
    if not terms:
        return None
    (w0, y0), rest = terms[0], terms[1:]
    if not rest:
        return y0 if _is_one(w0) else torch.mul(y0, w0)
    w1, y1 = rest[0]
    if _is_one(w0) and isinstance(w1, float):
        out = torch.add(y0, y1, alpha=w1)
    elif _is_one(w0):
        out = torch.addcmul(y0, y1, w1)
    else:
        out = _accumulate(torch.mul(y0, w0), w1, y1)
    for w, y in rest[1:]:
        _accumulate(out, w, y)
    return out


def _is_one(w: Weight) -> bool:
    return isinstance(w, float) and w == 1.0


def _accumulate(out: torch.Tensor, w: Weight, y: torch.Tensor) -> torch.Tensor:
    return out.add_(y, alpha=w) if isinstance(w, float) else out.addcmul_(y, w)


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

    def base_mask(self, cell_type: str) -> torch.Tensor:
        """The mask a fresh supernet of the space starts with: every op, unless the space rules some out on an edge
        (MobileNet: `zero` on a stage's first layer). Few-shot splitting takes an edge whose mask still equals its
        base row as not split yet."""
        return torch.ones_like(self.mask(cell_type))

    def mixed_edges(self) -> list[tuple[str, int, nn.Module]] | None:
        """Every mixed edge of the network as (cell type, edge index, the module whose `ops` ModuleDict holds its
        candidate ops by name), for gradient matching's shared weights; modules not listed (stem, head) are not
        shared. None (the default): gradient matching finds the edges by module name (`<cell>.<e>.ops.<op>`)."""
        return None

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

    def forward_plans(self, x: torch.Tensor, plans: dict[str, Plan]) -> torch.Tensor:
        """Run the network with the given per-cell-type plans (see `make_plan`)."""
        state = self.stem(x)
        for i in range(self.num_layers):
            state = self.run_layer(i, state, plans)
        return self.head(state)

    # The staged form of forward: stem -> layers -> head. A selector that perturbs the weights of one cell type can
    # cache the state before the first layer reading that cell type and run only the rest (see `layer_cell_type`).
    @abc.abstractmethod
    def stem(self, x: torch.Tensor):
        """The state entering layer 0 (a tensor, or a tuple of tensors for two-input cells)."""

    @property
    @abc.abstractmethod
    def num_layers(self) -> int:
        """Number of layers between stem and head."""

    @abc.abstractmethod
    def layer_cell_type(self, i: int) -> str | None:
        """The cell type whose mixing weights layer i reads; None for a fixed layer (e.g. a reduction block)."""

    @abc.abstractmethod
    def run_layer(self, i: int, state, plans: dict[str, Plan]):
        """Layer i applied to `state`. A supernet with a `fan` also takes `fan=` (a `spaces.mixed.Fan`), through which
        its cells compute their op outputs: the selection evaluator passes one that reuses them across evaluations or
        stacks several weight settings along the batch."""

    # The Fan its cells use by default when run_layer takes `fan=` (None: it does not). The terms a fan returns for an
    # edge follow `term_order(edge, plan)`.
    fan = None
    # Whether an op's output in the first cell of a cell type is a function of that cell's input and the plans
    # upstream of it alone, so that the selection evaluator may keep it across evaluations (no random ops).
    reusable_ops = False

    @staticmethod
    def term_order(edge, plan):
        """The (op, weight) pairs of an edge's plan in the order its fan returns their terms."""
        return list(plan)

    @abc.abstractmethod
    def head(self, state) -> torch.Tensor:
        """Logits from the state after the last layer."""

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


@torch.no_grad()
def inherit_weights(network_body: nn.Module, supernet_body: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """A discrete network's body takes every weight and BN statistic it shares by name with the supernet's body (the
    spaces build both from the same modules); tensors whose names start with `skip` keep their values (e.g. an
    auxiliary head the supernet lacks)."""
    source = supernet_body.state_dict()
    own = {k: v for k, v in network_body.state_dict().items() if not k.startswith(skip)} if skip else \
        network_body.state_dict()
    missing = [k for k in own if k not in source or source[k].shape != own[k].shape]
    if missing:
        raise ValueError(f"supernet lacks {len(missing)} tensors of this network, e.g. {missing[0]}")
    network_body.load_state_dict({k: source[k] for k in own}, strict=not skip)
