"""The numbers behind the report's selector comparison (no plotting here): the selectors in the configured order,
their NAS-Bench-201 standing (accuracy, regret to the optimum, percentile among all cells), the rank agreement of
their scores, and the accuracy of the magnitude-derived cell after every search epoch.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch

from ..evaluate.benchmark import NB201Table
from ..evaluate.correlation import kendall_tau
from ..selection.base import Selection

# The test accuracy of each NAS-Bench-201 dataset, with the label the report prints.
DATASETS = {"cifar10_test": "CIFAR-10", "cifar100_test": "CIFAR-100", "imagenet16_test": "ImageNet16-120"}
SELECTOR_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def ordered(selections: dict[str, Selection], order: Iterable[str]) -> dict[str, Selection]:
    """The selections in the configured order, then any others in the order given (a run may hold extra ones)."""
    first = [n for n in dict.fromkeys(order) if n in selections]
    return {n: selections[n] for n in first + [n for n in selections if n not in first]}


def selector_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per selector, by its place in the order, the same in every comparison figure of a page."""
    return {n: SELECTOR_PALETTE[i % len(SELECTOR_PALETTE)] for i, n in enumerate(names)}


def optima(table: NB201Table) -> dict[str, float]:
    """The best test accuracy in the table, per dataset."""
    return {c: table.best(c).value for c in DATASETS}


def standing(selections: dict[str, Selection], table: NB201Table) -> dict[str, dict[str, dict[str, float]]]:
    """Per selector and dataset: test accuracy, regret (optimum − accuracy, points) and percentile (share of the
    table's cells at most as accurate, %). Only NB201 selections have a standing."""
    best = optima(table)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, sel in selections.items():
        if sel.architecture.space != "nb201":
            continue
        row = table.lookup(sel.architecture)
        out[name] = {}
        for c in DATASETS:
            acc = row.get(c)
            out[name][c] = ({"accuracy": acc, "regret": best[c] - acc, "percentile": table.percentile(c, acc)}
                            if acc is not None else {"accuracy": math.nan, "regret": math.nan, "percentile": math.nan})
    return out


def score_tau(a: Selection, b: Selection) -> float:
    """Mean over edges (every cell type) of Kendall's τ-b between two selectors' scores of that edge's ops: do they
    rank the candidates of an edge alike? Edges where either ranking is constant (τ undefined) are left out."""
    taus = []
    for ct, rows in a.scores.items():
        for ra, rb in zip(rows, b.scores.get(ct, [])):
            pairs = [(x, y) for x, y in zip(ra, rb) if math.isfinite(x) and math.isfinite(y)]
            if len(pairs) >= 2:
                tau = kendall_tau(*zip(*pairs))
                if math.isfinite(tau):
                    taus.append(tau)
    return sum(taus) / len(taus) if taus else math.nan


def tau_matrix(selections: dict[str, Selection]) -> list[list[float]]:
    """score_tau for every pair of selectors (rows and columns in the selections' order); 1 on the diagonal."""
    sels = list(selections.values())
    return [[1.0 if i == j else score_tau(a, b) for j, b in enumerate(sels)] for i, a in enumerate(sels)]


def magnitude_per_epoch(metrics: list[dict[str, Any]], space) -> list[tuple[int, Any]]:
    """(epoch, cell) for every epoch that recorded α: the cell the magnitude selector would derive from that epoch's
    mixing weights (the space's own rule, as selection/magnitude.py applies it; masked ops weigh 0)."""
    out = []
    for m in metrics:
        alpha = m.get("alpha")
        if isinstance(alpha, dict) and set(space.cell_types) <= set(alpha):
            weights = {ct: torch.tensor(alpha[ct], dtype=torch.float64) for ct in space.cell_types}
            out.append((int(m.get("epoch", len(out))), space.derive(weights)))
    return out


def collapse_series(metrics: list[dict[str, Any]], space, table: NB201Table) -> dict[str, list[tuple[int, float]]]:
    """Per dataset, (epoch, test accuracy) of the magnitude-derived cell after each search epoch: table lookups only."""
    cells = magnitude_per_epoch(metrics, space)
    rows = [(epoch, table.lookup(arch)) for epoch, arch in cells]
    return {c: [(epoch, row[c]) for epoch, row in rows if row.get(c) is not None] for c in DATASETS}
