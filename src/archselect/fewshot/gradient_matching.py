"""Gradient matching (GM-NAS): how much the ops of one edge disagree about how to train the weights they share.

For a candidate edge e and each op o enabled on it, the supernet runs with o alone on e (its mixing weight set to 1,
NB201 official, or kept at its softmax value, DARTS official; the other ops of e at 0; every other edge with its
current mixing weights). The gradient g_o of the training cross-entropy with respect to the *shared* weights is taken
on a training batch, and the ops are compared pairwise: D = 1 − cos(vec g_o, vec g_o') (alternatives: per-filter
cosine, squared distance). D is averaged over R batches (official R = 100), as the official code averages its
per-batch distance matrices.

Shared weights are found by module name: an op parameter lives at `<cell>.<e>.ops.<op_name>.*` (NB201:
`body.layers.{i}.edges.{e}.ops.{op}`); a cell is the module holding those edges. A supernet may list its mixed edges
itself instead (`Supernet.mixed_edges`; MobileNet, whose edges are its searchable layers `body.layers.{i}`). They are
- the parameters of the enabled ops on every other edge of every cell of the candidate's type, and on every edge of
  the cells of the other types (DARTS: normal/reduce; MobileNet: every other searchable layer of every stage);
- the parameters of the fixed layers stacked between the cells (NB201: the residual reduction blocks).
The stem, the final BN, the classifier and any non-op part of a cell (DARTS' preprocess layers) are excluded, as in the
paper and the NB201/DARTS code. Parameters of disabled ops are excluded too: they get no gradient in this
sub-supernet. Scope `all` takes every other weight as well (stem, head, classifier), as GM-NAS' ProxylessNAS code does.

Measuring does not change the supernet: BN runs in train mode (batch statistics, as the official code does) and its
running statistics are restored afterwards; gradients come from autograd.grad, never through `.grad`.
"""
from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import logs
from ..arch import edge_label
from ..supernet import Supernet

METRICS = ("cos", "per-filter-cos", "mse")
_EDGE_MODULE = re.compile(r"^(?P<cell>.+)\.(?P<edge>\d+)$")


# -- which weights are shared --------------------------------------------------------------------------------------

@dataclass
class ParameterMap:
    """Where the supernet's parameters live: op parameters by (cell type, edge, op index), and fixed-layer ones."""

    ops: list[tuple[str, int, int, str, nn.Parameter]] = field(default_factory=list)  # (type, edge, op, name, p)
    fixed: list[tuple[str, nn.Parameter]] = field(default_factory=list)


def _edge_modules(supernet: Supernet) -> list[tuple[str, int, str, nn.Module]]:
    """(cell module name, edge index, edge module name, edge module) for every mixed edge, in registration order."""
    out = []
    for name, module in supernet.named_modules():
        ops = getattr(module, "ops", None)
        match = _EDGE_MODULE.match(name)
        if match and isinstance(ops, nn.ModuleDict) and set(ops) <= set(supernet.op_names):
            out.append((match["cell"].rsplit(".", 1)[0], int(match["edge"]), name, module))
    return out


def _cell_types_of(supernet: Supernet, cells: list[str]) -> dict[str, str]:
    """Cell module name -> cell type, pairing the cells (in registration order) with the layers that read α."""
    if len(supernet.cell_types) == 1:
        return {c: supernet.cell_types[0] for c in cells}
    layer_types = [t for t in (supernet.layer_cell_type(i) for i in range(supernet.num_layers)) if t is not None]
    if len(layer_types) != len(cells):
        raise ValueError(f"found {len(cells)} cells holding mixed edges but {len(layer_types)} cell layers; "
                         f"gradient matching cannot tell the cell types apart")
    return dict(zip(cells, layer_types))


def parameter_map(supernet: Supernet) -> ParameterMap:
    """The op parameters of every mixed edge, and the fixed layers' parameters shared with them. A supernet that
    lists its mixed edges (`mixed_edges`, MobileNet: every searchable layer) has no shared fixed layer; otherwise
    the edges and the fixed layers between the cells are found by module name."""
    listed = supernet.mixed_edges()
    if listed is not None:
        names = {id(m): n for n, m in supernet.named_modules()}
        return ParameterMap(_op_entries(supernet, [(ct, e, names[id(m)], m) for ct, e, m in listed]))
    edges = _edge_modules(supernet)
    if not edges:
        raise ValueError(f"{type(supernet).__name__} has no mixed edges named '<cell>.<e>.ops.<op>'")
    cells = list(dict.fromkeys(cell for cell, _, _, _ in edges))
    types = _cell_types_of(supernet, cells)
    ops = _op_entries(supernet, [(types[cell], e, name, module) for cell, e, name, module in edges])
    return ParameterMap(ops, _fixed_layer_parameters(supernet, cells))


def _op_entries(supernet: Supernet, edges) -> list[tuple[str, int, int, str, nn.Parameter]]:
    """(cell type, edge, op index, parameter name, parameter) for the ops of the given (type, edge, name, module)."""
    out = []
    for ct, e, name, module in edges:
        for op_name, op in module.ops.items():
            k = supernet.op_names.index(op_name)
            out += [(ct, e, k, f"{name}.ops.{op_name}.{pname}", p) for pname, p in op.named_parameters()]
    return out


def _fixed_layer_parameters(supernet: Supernet, cells: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the non-cell layers stacked in the same indexed container as the cells (NB201:
    `body.layers.{i}` residual reduction blocks). The stem, head and classifier live elsewhere and are not taken."""
    cell_set = set(cells)
    containers = {c.rsplit(".", 1)[0] for c in cells if "." in c and c.rsplit(".", 1)[1].isdigit()}
    out = []
    for name, p in supernet.named_parameters():
        for container in containers:
            if name.startswith(container + "."):
                index = name[len(container) + 1:].split(".", 1)[0]
                if index.isdigit() and f"{container}.{index}" not in cell_set:
                    out.append((name, p))
                break
    return out


SCOPES = ("ops", "all")


def shared_parameters(supernet: Supernet, cell_type: str, edge: int, pmap: ParameterMap | None = None,
                      scope: str = "ops") -> list[tuple[str, nn.Parameter]]:
    """The weights whose gradients the ops of (cell_type, edge) are compared on (see the module docstring).
    scope `all` (GM-NAS' ProxylessNAS code): every weight of the network but the edge's own ops and disabled ops,
    so the stem, head and classifier too."""
    pmap = pmap or parameter_map(supernet)
    masks = {ct: supernet.mask(ct) for ct in supernet.cell_types}
    if scope == "all":
        own = {id(p) for ct, e, k, _, p in pmap.ops if (ct == cell_type and e == edge) or not bool(masks[ct][e, k])}
        own |= {id(a) for a in supernet.arch_parameters()}
        return [(name, p) for name, p in supernet.named_parameters() if id(p) not in own]
    if scope != "ops":
        raise ValueError(f"unknown shared-weight scope {scope!r}; choose one of {', '.join(SCOPES)}")
    out = [(name, p) for ct, e, k, name, p in pmap.ops
           if not (ct == cell_type and e == edge) and bool(masks[ct][e, k])]
    return out + list(pmap.fixed)


def candidate_edges(supernet: Supernet, cell_types: Sequence[str]) -> list[tuple[str, int]]:
    """Edges not split yet: the edge's mask is still the space's base mask (official: rows of the encoding that
    are all ones; a MobileNet stage's first layer starts without `zero`), with at least 2 ops to compare."""
    out = []
    for ct in cell_types:
        base = supernet.base_mask(ct).tolist()
        out += [(ct, e) for e, row in enumerate(supernet.mask(ct).tolist()) if row == base[e] and sum(row) >= 2]
    return out


# -- distances -----------------------------------------------------------------------------------------------------

def _unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; an all-zero row stays zero (its cosine with anything is 0, distance 1)."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def pairwise_distance(grads: Sequence[Sequence[torch.Tensor]], metric: str = "cos") -> torch.Tensor:
    """K x K distances between K gradient lists (one tensor per shared parameter, same shapes across ops).

    cos: 1 − cosine of the concatenated vectors. per-filter-cos: Σ over parameters with ≥ 2 dims and over their
    output filters (rows of the parameter reshaped to (out, −1)) of 1 − cosine; 1-D parameters are skipped, as
    officially. mse: Σ of squared differences (the official 'mse' is a sum, not a mean)."""
    k = len(grads)
    if metric == "cos":
        g = torch.stack([torch.cat([t.reshape(-1) for t in gs]) for gs in grads]).double()
        u = _unit_rows(g)
        d = 1.0 - u @ u.T
    elif metric == "per-filter-cos":
        d = torch.zeros(k, k, dtype=torch.float64, device=grads[0][0].device)
        for i in range(len(grads[0])):
            if grads[0][i].dim() < 2:
                continue
            t = torch.stack([gs[i].reshape(gs[i].shape[0], -1) for gs in grads]).double()  # K x out x rest
            u = _unit_rows(t)
            d += t.shape[1] - torch.einsum("kod,lod->kl", u, u)
    elif metric == "mse":
        g = torch.stack([torch.cat([t.reshape(-1) for t in gs]) for gs in grads]).double()
        d = torch.zeros(k, k, dtype=torch.float64, device=g.device)
        for i, j in itertools.combinations(range(k), 2):  # differences, not the Gram trick: exact 0 for equal ones
            d[i, j] = d[j, i] = (g[i] - g[j]).pow(2).sum()
    else:
        raise ValueError(f"unknown gradient distance {metric!r}; choose one of {', '.join(METRICS)}")
    d.fill_diagonal_(0.0)
    return d


# -- measuring -----------------------------------------------------------------------------------------------------

@dataclass
class EdgeDistance:
    cell_type: str
    edge: int
    ops: tuple[int, ...]    # op indices enabled on the edge: the rows/columns of `mean`
    mean: torch.Tensor      # K x K distance averaged over the batches
    stderr: torch.Tensor    # K x K standard error of that mean (0 with one batch)
    batches: int

    def to_dict(self, op_names: Sequence[str]) -> dict[str, Any]:
        return {"cell_type": self.cell_type, "edge": self.edge, "ops": [op_names[k] for k in self.ops],
                "distance": self.mean.tolist(), "stderr": self.stderr.tolist(), "batches": self.batches}


def probe_weights(base: dict[str, torch.Tensor], cell_type: str, edge: int, op: int,
                  op_weight: str) -> dict[str, torch.Tensor]:
    """Mixing weights with `op` alone on the edge: weight 1 (`one`) or its current value (`softmax`)."""
    w = {ct: t.clone() for ct, t in base.items()}
    value = 1.0 if op_weight == "one" else float(base[cell_type][edge, op])
    if op_weight not in ("one", "softmax"):
        raise ValueError(f"unknown op weight {op_weight!r}; choose one or softmax")
    w[cell_type][edge] = 0.0
    w[cell_type][edge, op] = value
    return w


def op_gradients(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, cell_type: str, edge: int,
                 ops: Sequence[int], params: Sequence[nn.Parameter], op_weight: str) -> list[list[torch.Tensor]]:
    """For each op: the gradient of the batch's cross-entropy with respect to `params`, that op alone on the edge."""
    base = supernet.mixing_weights(detach=True)
    out = []
    for k in ops:
        loss = F.cross_entropy(supernet(x, probe_weights(base, cell_type, edge, k, op_weight)), y)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        out.append([torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)])
        logs.tick(1)
    return out


class _RunningMean:
    def __init__(self):
        self.n, self.sum, self.sq = 0, None, None

    def add(self, d: torch.Tensor) -> None:
        self.n += 1
        self.sum = d.clone() if self.sum is None else self.sum + d
        self.sq = d * d if self.sq is None else self.sq + d * d

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.n
        if self.n < 2:
            return mean, torch.zeros_like(mean)
        var = ((self.sq - self.n * mean * mean) / (self.n - 1)).clamp_min(0.0)
        return mean, (var / self.n).sqrt()


def measure(supernet: Supernet, edges: Sequence[tuple[str, int]], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            metric: str = "cos", op_weight: str = "one",
            scope: str = "ops") -> tuple[list[EdgeDistance], dict[str, float]]:
    """Distance matrices of the enabled ops of each edge, averaged over `batches` (every edge sees the same
    batches), and the cost {forward, backward, images, seconds}. The supernet is left exactly as it was."""
    start = time.perf_counter()
    pmap = parameter_map(supernet)
    plan = []
    for ct, e in edges:
        ops = tuple(k for k, on in enumerate(supernet.mask(ct)[e].tolist()) if on)
        if len(ops) < 2:
            raise ValueError(f"{edge_label(e, *supernet.edges[ct][e])} of cell type {ct!r} has {len(ops)} enabled "
                             f"op(s); nothing to compare")
        plan.append((ct, e, ops, [p for _, p in shared_parameters(supernet, ct, e, pmap, scope)]))
    stats = [_RunningMean() for _ in plan]
    was_training = supernet.training
    saved = {n: b.detach().clone() for n, b in supernet.named_buffers()}
    passes = images = 0
    try:
        supernet.train()
        for x, y in batches:
            for (ct, e, ops, params), acc in zip(plan, stats):
                grads = op_gradients(supernet, x, y, ct, e, ops, params, op_weight)
                acc.add(pairwise_distance(grads, metric))
                passes += len(ops)
                images += len(ops) * y.numel()
    finally:
        with torch.no_grad():
            for n, b in supernet.named_buffers():
                b.copy_(saved[n])
        supernet.train(was_training)
    if plan and stats[0].n == 0:
        raise ValueError("gradient matching needs at least one batch")
    out = []
    for (ct, e, ops, _), acc in zip(plan, stats):
        mean, stderr = acc.result()
        out.append(EdgeDistance(ct, e, ops, mean.float().cpu(), stderr.float().cpu(), acc.n))
    cost = {"forward": passes, "backward": passes, "passes": passes, "images": images,
            "seconds": time.perf_counter() - start}
    return out, cost


def cyclic_batches(loader, epoch: int, count: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches starting with batch 0 of `epoch`, running on into the next epochs if needed
    (a pure function of the loader's seed, so a resumed split measures on the same batches)."""
    n = len(loader)
    for i in range(count):
        yield loader.batch(epoch + i // n, i % n)

