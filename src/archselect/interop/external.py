"""Any PyTorch supernet, as the selectors see archselect's own.

The protocol a model implements (or `darts_style` wraps it to):

    cell_types   the cell types, e.g. ("normal", "reduce") or ("cell",)
    edges        {cell type: [(src, dst), ...]}: one row of α per edge, in this order
    op_names     [op, ...]: one column of α per op, in this order ("none" for the zero op)
    alphas       {cell type: tensor (edges x ops)}: the architecture parameters; their softmax mixes the ops
    forward(x, weights) -> logits: the network with `weights` ({cell type: edges x ops}) as its mixing weights
    derive(scores, mask) -> Architecture   optional: the discrete cell from per-op scores (default: the best enabled
                                           op on each edge)

`ExternalSupernet` wraps such a model: α (and masks) live in the wrapper, so the selectors' perturbations, Shapley
coalitions and influence gradients reach the model through `forward(x, weights)` alone. The whole model is one opaque
layer to the evaluator: its memo works (repeated settings cost nothing), but there is no prefix or op cache and no
stacking, and masked ops are computed with weight 0 unless the model skips them itself.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..arch import EXTERNAL_SPACE, Architecture, Cell, Edge
from ..errors import UserError
from ..supernet import Plan, Supernet

PROTOCOL = ("cell_types", "edges", "op_names", "alphas")


def check_protocol(model: Any) -> None:
    missing = [a for a in PROTOCOL if not hasattr(model, a)]
    if missing or not callable(model):
        raise UserError(f"{type(model).__name__} does not implement the supernet protocol: it lacks "
                        f"{', '.join(missing) or 'forward(x, weights)'} (see docs/api.md, 'Selection on your "
                        f"supernet'; darts_style(...) wraps a DARTS-style model)")
    for ct in model.cell_types:
        if ct not in model.edges or ct not in model.alphas:
            raise UserError(f"cell type {ct!r} has no edges or no alphas entry")
        shape = tuple(model.alphas[ct].shape)
        if shape != (len(model.edges[ct]), len(model.op_names)):
            raise UserError(f"alphas[{ct!r}] has shape {shape}; expected (edges, ops) = "
                            f"({len(model.edges[ct])}, {len(model.op_names)})")


class ExternalSupernet(Supernet):
    """A protocol model as an archselect Supernet (one opaque layer; see the module docstring)."""

    fan = None
    reusable_ops = False

    def __init__(self, model: nn.Module):
        check_protocol(model)
        super().__init__({ct: model.edges[ct] for ct in model.cell_types}, model.op_names, 0.0)
        with torch.no_grad():
            for ct in self.cell_types:
                source = model.alphas[ct].detach()
                self.alphas[ct].data = source.clone()  # the model's own dtype
        self.model = model
        self._alpha_ids = {id(a) for a in model.alphas.values()}

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if weights is None:
            weights = self.mixing_weights(detach=not torch.is_grad_enabled())
        return self.model(x, weights)

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas.") and id(p) not in self._alpha_ids]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def num_layers(self) -> int:
        return 1

    def layer_cell_type(self, i: int) -> str:
        return self.cell_types[0]

    def run_layer(self, i: int, x: torch.Tensor, plans: dict[str, Plan], fan=None) -> torch.Tensor:
        return self.model(x, self.plan_weights(plans))

    def head(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def plan_weights(self, plans: dict[str, Plan]) -> dict[str, torch.Tensor]:
        """The mixing weights a plan stands for (ops it leaves out: 0)."""
        out = {}
        for ct, plan in plans.items():
            a = self.alphas[ct]
            w = torch.zeros(a.shape, dtype=a.dtype, device=a.device)
            for e, edge in enumerate(plan):
                for k, v in edge:
                    w[e, k] = float(v)
            out[ct] = w
        return out


@dataclass
class ExternalSpace:
    """The space of a protocol model: derive (its own, or the best enabled op per edge) and the names."""

    cell_types: tuple[str, ...]
    edge_lists: dict[str, tuple[tuple[int, int], ...]]
    op_names: tuple[str, ...]
    chooses_none: bool = True
    derive_fn: Callable[..., Architecture] | None = None
    inputs_per_node: int | None = None
    name: str = field(default=EXTERNAL_SPACE)

    @classmethod
    def of(cls, model: Any) -> "ExternalSpace":
        return cls(tuple(model.cell_types), {ct: tuple(map(tuple, model.edges[ct])) for ct in model.cell_types},
                   tuple(model.op_names), bool(getattr(model, "chooses_none", True)),
                   getattr(model, "derive", None), getattr(model, "inputs_per_node", None))

    def edges(self, cell_type: str) -> tuple[tuple[int, int], ...]:
        return self.edge_lists[cell_type]

    def derive(self, scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None) -> Architecture:
        if self.derive_fn is not None:
            return self.derive_fn(scores, mask)
        cells = []
        for ct in self.cell_types:
            s = scores[ct].detach().double().clone().cpu()
            if mask is not None:
                s[~mask[ct].cpu()] = float("-inf")
            if not self.chooses_none and "none" in self.op_names:
                s[:, self.op_names.index("none")] = float("-inf")
            best = s.argmax(dim=1).tolist()
            cells.append((ct, Cell(tuple(Edge(a, b, self.op_names[k]) for (a, b), k in zip(self.edge_lists[ct], best)))))
        return Architecture(EXTERNAL_SPACE, tuple(cells))


# -- the DARTS-style adapter ------------------------------------------------------------------------------------------

class DartsStyle(nn.Module):
    """A model whose mixed edges are modules called as `edge(x, weights)` (DARTS' MixedOp: a ModuleList of ops
    summed with the softmax(α) row it is given), made a protocol model: on a copy of the model, each mixed edge gets
    a forward pre-hook that replaces the weights it is called with by the row of the weights passed to `forward`.
    Everything else of the model (its cells, its own use of the row, partial channels, edge normalisation) runs as
    written."""

    def __init__(self, model: nn.Module, *, op_names: Sequence[str], edges: Mapping[str, Sequence[tuple[int, int]]],
                 mixed_edges: Mapping[str, Sequence[nn.Module]], alphas: Mapping[str, torch.Tensor],
                 derive: Callable[..., Architecture] | None = None, chooses_none: bool = True,
                 copy_model: bool = True):
        super().__init__()
        names = {id(m): n for n, m in model.named_modules()}
        param_names = {id(p): n for n, p in model.named_parameters()}
        self.model = copy.deepcopy(model) if copy_model else model
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        self.cell_types = tuple(edges)
        self.edges = {ct: [tuple(e) for e in edges[ct]] for ct in self.cell_types}
        self.op_names = tuple(op_names)
        self.chooses_none = chooses_none
        if derive is not None:
            self.derive = derive
        # α: the copy's own tensor where α is a parameter of the model (so it is left out of the weights)
        self.alphas = {ct: params.get(param_names.get(id(alphas[ct]), ""), alphas[ct]) for ct in self.cell_types}
        self._current = _Current()  # shared with every hooked edge; a deepcopy of this module copies it once
        for ct in self.cell_types:
            flat = _flatten(mixed_edges.get(ct, ()))
            n_edges = len(self.edges[ct])
            if not flat or len(flat) % n_edges:
                raise UserError(f"mixed_edges[{ct!r}]: {len(flat)} modules, not a multiple of its {n_edges} edges")
            for j, m in enumerate(flat):
                if id(m) not in names:
                    raise UserError(f"mixed_edges[{ct!r}][{j}] is not a module of the model")
                edge = modules[names[id(m)]]
                edge._archselect_edge = (self._current, ct, j % n_edges, names[id(m)])
                edge.register_forward_pre_hook(_replace_weights, with_kwargs=True)

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._current.weights = weights
        try:
            return self.model(x)
        finally:
            self._current.weights = None


class _Current:
    """The mixing weights of the forward pass under way (None outside `DartsStyle.forward`)."""
    weights: dict[str, torch.Tensor] | None = None


def _replace_weights(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of a mixed edge: call it with its row of the current weights. A module-level function
    reading the edge's own attribute, so that copies of the model (the selectors work on copies) hook their own."""
    current, ct, e, name = module._archselect_edge
    if current.weights is None:  # called outside forward(x, weights): the model as it is
        return None
    row = current.weights[ct][e]
    if "weights" in kwargs:
        return args, {**kwargs, "weights": row}
    if len(args) < 2:
        raise UserError(f"mixed edge {name} was called without a weights argument; darts_style needs mixed edges "
                        f"called as edge(x, weights)")
    return (args[0], row, *args[2:]), kwargs


def _flatten(items: Any) -> list[nn.Module]:
    if isinstance(items, nn.Module):
        return [items]
    return [m for item in items for m in _flatten(item)]


def darts_style(model: nn.Module, **kwargs: Any) -> DartsStyle:
    """`DartsStyle(model, op_names=..., edges=..., mixed_edges=..., alphas=...)`; see DartsStyle."""
    return DartsStyle(model, **kwargs)


def darts_mixed_edges(model: nn.Module, cells: str = "cells", ops: str = "_ops") -> dict[str, list[nn.Module]]:
    """The mixed edges of a model laid out as original DARTS' `model_search.Network`: `model.cells[i]` with a
    `reduction` flag and its MixedOps in `cell._ops` (in α row order)."""
    found: dict[str, list[nn.Module]] = {"normal": [], "reduce": []}
    for cell in getattr(model, cells):
        found["reduce" if getattr(cell, "reduction", False) else "normal"].extend(getattr(cell, ops))
    return found
