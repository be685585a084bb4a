"""Selectors side by side: the op each chose per edge, whether they agree, their cost and benchmark accuracy.

`Comparison(selections)` is data (`to_dict()` is RUN/comparison.json) and reads as a table (`str()`).
"""
from __future__ import annotations

from typing import Any

import math

from ..evaluate.lookup import benchmark_metrics, table_for
from .base import Selection

BENCHMARK_COLUMNS = ("cifar10_test", "cifar100_test", "imagenet16_test")
PERCENTILE_COLUMN = "cifar10_test"


def agreement(selections: dict[str, Selection]) -> dict[str, list[dict[str, Any]]]:
    """Per cell type and edge: the op each selector chose, and whether they all agree."""
    per_edge: dict[str, list[dict[str, Any]]] = {}
    names = list(selections)
    if not names:
        return per_edge
    first = selections[names[0]].architecture
    for ct in first.cell_types:
        rows = []
        edges = sorted({(e.src, e.dst) for s in selections.values() for e in s.architecture.cell(ct).edges},
                       key=lambda e: (e[1], e[0]))
        for src, dst in edges:
            chosen = {n: selections[n].architecture.cell(ct).op_on(src, dst) for n in names}
            rows.append({"edge": f"{src}->{dst}", "chosen": chosen, "agree": len(set(chosen.values())) == 1})
        per_edge[ct] = rows
    return per_edge


class Comparison:
    def __init__(self, selections: dict[str, Selection], benchmark: str | None = None):
        self.selections = dict(selections)
        self.benchmark = {n: benchmark_metrics(s.architecture, benchmark) for n, s in self.selections.items()}
        self.agreement = agreement(self.selections)
        table = table_for(benchmark)
        self.percentile = {n: table.percentile(PERCENTILE_COLUMN, m[PERCENTILE_COLUMN])
                           for n, m in self.benchmark.items()
                           if table is not None and isinstance(m.get(PERCENTILE_COLUMN), (int, float))}

    def uncertainty(self, name: str) -> float | None:
        """The mean standard error of each edge's highest score (None: the method estimates none)."""
        sel = self.selections[name]
        if not sel.stderr:
            return None
        values = [errors[max(range(len(scores)), key=scores.__getitem__)]
                  for ct, rows in sel.scores.items() for scores, errors in zip(rows, sel.stderr[ct]) if scores]
        finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        return sum(finite) / len(finite) if finite else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "selectors": {n: {"architecture": str(s.architecture), "cost": vars(s.cost), "benchmark": self.benchmark[n]}
                          for n, s in self.selections.items()},
            "agreement": self.agreement,
            "percentile": {"column": PERCENTILE_COLUMN, "values": self.percentile},
        }

    def agreed_edges(self) -> tuple[int, int]:
        """(edges on which every selector chose the same op, edges in all)."""
        rows = [r for rs in self.agreement.values() for r in rs]
        return sum(r["agree"] for r in rows), len(rows)

    def __str__(self) -> str:
        names = list(self.selections)
        if not names:
            return "no selections"
        lines = [["edge", *names]]
        for ct, rows in self.agreement.items():
            for r in rows:
                label = f"{ct} {r['edge']}" if len(self.agreement) > 1 else r["edge"]
                lines.append([label + ("" if r["agree"] else " *"), *(r["chosen"][n] or "-" for n in names)])
        uncertainty = [self.uncertainty(n) for n in names]
        if any(u is not None for u in uncertainty):
            lines.append(["score stderr (mean)", *("-" if u is None else f"{u:.4f}" for u in uncertainty)])
        lines.append(["forward passes", *(str(self.selections[n].cost.forward) for n in names)])
        if any(self.selections[n].cost.shared_passes for n in names):
            lines.append(["network passes", *(str(self.selections[n].cost.passes or "-") for n in names)])
        lines.append(["backward passes", *(str(self.selections[n].cost.backward) for n in names)])
        lines.append(["seconds", *(f"{self.selections[n].cost.seconds:.1f}" for n in names)])
        for key in BENCHMARK_COLUMNS:
            values = [self.benchmark[n].get(key) for n in names]
            if any(isinstance(v, (int, float)) for v in values):
                lines.append([f"NB201 {key} (%)", *(f"{v:.2f}" if isinstance(v, (int, float)) else "-"
                                                    for v in values)])
        if self.percentile:
            lines.append([f"percentile, {PERCENTILE_COLUMN}", *(f"{self.percentile[n]:.1f}" if n in self.percentile
                                                                 else "-" for n in names)])
        widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
        text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines)
        agree, total = self.agreed_edges()
        return f"{text}\n(* the selectors disagree; they agree on {agree} of {total} edges)"
