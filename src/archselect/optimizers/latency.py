"""Expected latency for ProxylessNAS' regulariser: a cost T per (cell type, edge, op) and its expectation under the
ops' probabilities,

    E[lat] = fixed + Σ_cell types Σ_edges Σ_ops p(edge, op) · T(edge, op)

In the mobilenet space a cell type is a stage (`stage1` .. `stage6`) and an edge one of its layers, so T is one number
per (stage, layer, op). T comes from a table file the user measured (any one unit; the paper's is ms on the target
device) or, by default, the FLOPs (multiply-accumulates) of each candidate block at its layer's input resolution.
`zero` (and `none`) cost nothing unless the table says otherwise. `fixed` is what no choice changes (the stem, the
head and classifier); FLOPs count it, a table may give it.

Table formats (docs/optimizers.md):
  YAML or JSON: a mapping of stage name to a list with one mapping per layer, op name -> cost; an optional
                `fixed: number`.
  CSV (by its .csv suffix): a header with the columns stage, layer, op, latency; one row per (stage, layer, op), layer
                0-based; a row with stage `fixed` (layer and op empty) gives the fixed part.
Every enabled, computed op of every layer needs an entry; a missing, unknown or negative one is a one-line UserError.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import did_you_mean, read_small_file, safe_yaml
from ..errors import UserError
from ..evaluate.flops import counting
from ..supernet import Supernet

ZERO_OPS = ("none", "zero")  # ops that are never computed (their output is zero)
CSV_COLUMNS = ("stage", "layer", "op", "latency")

Entries = dict[tuple[str, int, str], float]


@dataclass
class CostTable:
    costs: dict[str, torch.Tensor]  # per cell type, edges x ops; 0 where no cost was given (zero ops, masked ops)
    fixed: float = 0.0

    def expected(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """E[lat] under per-edge op probabilities (differentiable in `probs`)."""
        total = sum((probs[ct] * self.costs[ct].to(probs[ct])).sum() for ct in self.costs)
        return total + self.fixed


# -- a user's table ----------------------------------------------------------------------------------------------------

def read_table(path: str, supernet: Supernet) -> CostTable:
    """The table file at `path` for `supernet`'s edges and ops (formats in the module docstring)."""
    where = f"latency table {path}"
    p = Path(path).expanduser()
    text = read_small_file(p, where)
    if p.suffix.lower() == ".csv":
        entries, fixed, stages = _csv_entries(text, where)
    else:
        entries, fixed, stages = _mapping_entries(safe_yaml(text, where), where)
    return _table(entries, fixed, stages, supernet, where)


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(f"{what}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{what}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _mapping_entries(data: Any, where: str) -> tuple[Entries, float, dict[str, int]]:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of stage names to lists of layers")
    entries: Entries = {}
    fixed = 0.0
    for stage, layers in data.items():
        if stage == "fixed":
            fixed = _number(layers, f"{where}: fixed")
            continue
        if not isinstance(layers, list):
            raise UserError(f"{where}: {stage} must list one mapping (op: cost) per layer")
        for i, row in enumerate(layers):
            if not isinstance(row, dict):
                raise UserError(f"{where}: {stage} layer {i} must map op names to costs")
            for op, value in row.items():
                entries[(str(stage), i, str(op))] = _number(value, f"{where}: {stage} layer {i} op {op}")
    return entries, fixed, {str(s): len(v) for s, v in data.items() if s != "fixed"}


def _csv_entries(text: bytes, where: str) -> tuple[Entries, float, dict[str, int]]:
    try:
        reader = csv.DictReader(io.StringIO(text.decode("utf-8")))
        rows, header = list(reader), reader.fieldnames or ()
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{where} is not UTF-8 CSV ({e})") from None
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{where}: needs the columns {', '.join(CSV_COLUMNS)} (missing: {', '.join(missing)})")
    entries: Entries = {}
    fixed = 0.0
    for line, row in enumerate(rows, start=2):
        stage, layer, op = ((row[c] or "").strip() for c in CSV_COLUMNS[:3])
        value = _number(row["latency"] or "", f"{where} line {line}")
        if stage == "fixed":
            fixed = value
            continue
        if not layer.isdigit():
            raise UserError(f"{where} line {line}: layer must be a 0-based index, got {layer!r}")
        key = (stage, int(layer), op)
        if key in entries:
            raise UserError(f"{where} line {line}: a second entry for {stage} layer {layer} op {op}")
        entries[key] = value
    stages: dict[str, int] = {}
    for stage, layer, _ in entries:
        stages[stage] = max(stages.get(stage, 0), layer + 1)
    return entries, fixed, stages


def _table(entries: Entries, fixed: float, stages: dict[str, int], supernet: Supernet, where: str) -> CostTable:
    """Costs as tensors, checked against the space: known stages, layers and ops; an entry for every op it computes."""
    names = supernet.op_names
    costs = {ct: torch.zeros(len(supernet.edges[ct]), len(names), dtype=torch.float64) for ct in supernet.cell_types}
    for ct, layers in stages.items():
        if ct not in costs:
            raise UserError(f"{where}: unknown stage {ct!r}{did_you_mean(ct, costs)}; this space has "
                            f"{', '.join(costs)}")
        if layers > len(costs[ct]):
            raise UserError(f"{where}: {ct} has {len(costs[ct])} layers in this space; the table gives {layers}")
    for (ct, e, op), value in entries.items():
        if op not in names:
            raise UserError(f"{where}: unknown op {op!r}{did_you_mean(op, names)}; the ops are {', '.join(names)}")
        costs[ct][e, names.index(op)] = value
    gaps = [(ct, e, op) for ct in supernet.cell_types for e, row in enumerate(supernet.mask(ct).tolist())
            for on, op in zip(row, names) if on and op not in ZERO_OPS and (ct, e, op) not in entries]
    if gaps:
        ct, e, op = gaps[0]
        more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
        raise UserError(f"{where}: no entry for {ct} layer {e} op {op}{more}")
    return CostTable(costs, fixed)


# -- FLOPs, the default ------------------------------------------------------------------------------------------------

def layer_edges(supernet: Supernet) -> list[tuple[str, int]]:
    """(cell type, edge) of each layer, for supernets whose every layer is one searchable edge (mobilenet)."""
    out, seen = [], {}
    for i in range(supernet.num_layers):
        ct = supernet.layer_cell_type(i)
        if ct is None:
            break
        out.append((ct, seen.get(ct, 0)))
        seen[ct] = seen.get(ct, 0) + 1
    if len(out) < supernet.num_layers or any(seen.get(ct, 0) != len(supernet.edges[ct]) for ct in supernet.cell_types):
        raise UserError("FLOPs per op need a space whose every layer is one searchable edge (mobilenet); give "
                        "search.options.latency_table")
    return out


@torch.no_grad()
def flops_table(supernet: Supernet, image_shape: tuple[int, ...]) -> CostTable:
    """FLOPs (multiply-accumulates, evaluate/flops.py) of every enabled op of every layer at that layer's input
    resolution for one image of `image_shape`, and of the stem and head as `fixed`. Eval mode, so no BN statistic
    moves; the supernet's mode is restored."""
    edges = layer_edges(supernet)
    names, a = supernet.op_names, supernet.alphas[supernet.cell_types[0]]
    masks = {ct: supernet.mask(ct).tolist() for ct in supernet.cell_types}
    computed = {ct: [[k for k, on in enumerate(row) if on and names[k] not in ZERO_OPS] for row in rows]
                for ct, rows in masks.items()}
    plans = {ct: [[(ks[0], 1.0)] if ks else [] for ks in rows] for ct, rows in computed.items()}
    costs = {ct: torch.zeros(len(rows), len(names), dtype=torch.float64) for ct, rows in masks.items()}
    was_training = supernet.training
    supernet.eval()
    try:
        with counting() as stem:
            state = supernet.stem(torch.zeros(1, *image_shape, dtype=a.dtype, device=a.device))
        for i, (ct, e) in enumerate(edges):
            for k in computed[ct][e]:
                one = {**plans, ct: [*plans[ct][:e], [(k, 1.0)], *plans[ct][e + 1:]]}
                with counting() as c:
                    supernet.run_layer(i, state, one)
                costs[ct][e, k] = c.total
            state = supernet.run_layer(i, state, plans)  # every op gives the same shape
        with counting() as head:
            supernet.head(state)
    finally:
        supernet.train(was_training)
    return CostTable(costs, float(stem.total + head.total))
