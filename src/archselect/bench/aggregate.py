"""Bench tables: one row per cell from what the groups wrote to disk, then mean ± std and best over seeds for each
(space, optimizer, split, selector), as CSV and markdown, with the papers' published numbers beside ours.

std is the sample standard deviation (ddof=1; undefined, shown blank, for one seed). "Best" is the seed whose derived
architecture has the highest NAS-Bench-201 cifar10_valid (the benchmark's validation column, so no test peeking),
with all of that architecture's numbers.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..arch import Architecture, load_architecture
from ..evaluate.diagnostics import pairwise_agreement, param_free_ops
from ..evaluate.lookup import benchmark_metrics
from ..files import atomic_write_bytes, read_json
from ..runs import BenchDir, RunDir
from ..selection.base import Selection
from .columns import ACCURACY, BEST_BY, KEYS, METRICS
from .config import BenchConfig
from .document import results_markdown
from .matrix import Group, cell_dir, cell_done, groups, read_diagnostics, selection_path
from .retrain import read_retrained



# -- cells -------------------------------------------------------------------------------------------------------------

def _benchmark(arch, path: str | None) -> dict[str, float]:
    found = benchmark_metrics(arch, path)
    return {c: float(found[c]) if isinstance(found.get(c), (int, float)) else math.nan for c in ACCURACY}


def _last(metrics: list[dict], key: str) -> float:
    values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
    return float(values[-1]) if values else math.nan


def group_rows(cfg: BenchConfig, out: Path, group: Group) -> list[dict[str, Any]]:
    """The finished cells of one group (selectors whose selection file is valid)."""
    run = BenchDir(out).group(group.id)
    if not run.exists():
        return []
    run_cfg = run.read_config()
    corr = read_diagnostics(run).get("correlation", {})
    retrained = _retrained(run)
    search_seconds = _search_seconds(run)
    rows = []
    for name in cfg.selectors:
        if not cell_done(run, name):
            continue
        sel = Selection.from_dict(read_json(selection_path(run, name), "selection"))
        metrics = cell_dir(run, name).read_metrics()  # a split group: the chosen sub-supernet's own epochs
        rows.append({
            "space": group.space.key, "optimizer": group.optimizer.key, "split": group.split.key, "selector": name,
            "seed": group.seed, "group": group.id, "optimizer_name": group.optimizer.name,
            "split_name": group.split.name, "arch": str(sel.architecture),
            **_benchmark(sel.architecture, run_cfg.benchmark),
            "retrain_acc": retrained.get(name, math.nan),
            "search_seconds": search_seconds,
            **_selection_cost(run, name, sel),
            "param_free_ops": float(param_free_ops(sel.architecture)),
            "tied_edges": float(sum(len(e) for e in sel.details.get("tied_edges", {}).values())),
            "kendall_tau": float(corr.get("kendall_tau", math.nan)), "spearman": float(corr.get("spearman", math.nan)),
            "hessian_eig": _last(metrics, "hessian_eig"),
        })
    return rows


def _selection_cost(run: RunDir, name: str, sel) -> dict[str, float]:
    """The selector's cost; after a split, summed over every sub-supernet it ran in (the choice needs them all)."""
    costs = [sel.cost]
    if run.is_split():
        leaves = run.read_result()["split"]["per_selector"][name]["scores"]
        paths = [run.node(leaf).selection_file(name) for leaf in leaves]
        costs = [Selection.from_dict(read_json(p, "selection")).cost for p in paths if p.is_file()]
    return {"select_seconds": float(sum(c.seconds for c in costs)),
            "select_forward": float(sum(c.forward for c in costs)),
            "select_backward": float(sum(c.backward for c in costs))}


def _search_seconds(run: RunDir) -> float:
    """Wall seconds of the group's search (for a split group: every node of its tree and the split decisions)."""
    if run.is_split():
        return float(run.read_result()["search"]["seconds"])
    return float(sum(m.get("seconds", 0.0) for m in run.read_metrics()))


def _retrained(run: RunDir) -> dict[str, float]:
    return read_retrained(run)


def cell_rows(cfg: BenchConfig, out: Path) -> list[dict[str, Any]]:
    return [row for g in groups(cfg) for row in group_rows(cfg, out, g)]


# -- statistics --------------------------------------------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1) of the finite values, and their count; NaN where undefined."""
    v = np.array([x for x in values if isinstance(x, (int, float)) and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def best_row(rows: Sequence[dict[str, Any]], by: str = BEST_BY) -> dict[str, Any] | None:
    """The row with the highest finite `by` (the lowest seed on ties); None if no row has one."""
    scored = [r for r in rows if math.isfinite(r.get(by, math.nan))]
    return max(scored, key=lambda r: (r[by], -r["seed"])) if scored else None


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (space, optimizer, split, selector), in first-seen order: seeds, and for each metric its mean, std
    and the best seed's value."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(tuple(r[k] for k in KEYS), []).append(r)
    out = []
    for key, members in grouped.items():
        best = best_row(members)
        summary: dict[str, Any] = dict(zip(KEYS, key))
        summary.update(optimizer_name=members[0]["optimizer_name"], split_name=members[0]["split_name"],
                       seeds=len(members), best_seed=best["seed"] if best else None,
                       best_arch=best["arch"] if best else "")
        for m in METRICS:
            mean, std, _ = mean_std(r[m] for r in members)
            summary[f"{m}_mean"], summary[f"{m}_std"] = mean, std
            summary[f"{m}_best"] = best[m] if best else math.nan
        out.append(summary)
    return out


def agreement(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (space, optimizer, split) and pair of selectors: the fraction of edges where their choices agree, averaged
    over the seeds where both finished."""
    by_group: dict[tuple, dict[str, dict[str, Architecture]]] = {}
    for r in rows:
        key = (r["space"], r["optimizer"], r["split"])
        by_group.setdefault(key, {}).setdefault(r["group"], {})[r["selector"]] = load_architecture(r["arch"])
    out = []
    for key, per_seed in by_group.items():
        pairs: dict[tuple[str, str], list[float]] = {}
        for archs in per_seed.values():
            for pair, value in pairwise_agreement(archs).items():
                pairs.setdefault(pair, []).append(value)
        for (a, b), values in pairs.items():
            out.append({"space": key[0], "optimizer": key[1], "split": key[2], "selector_a": a, "selector_b": b,
                        "agreement": float(np.mean(values)), "seeds": len(values)})
    return out


# -- files -------------------------------------------------------------------------------------------------------------

def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    return "" if v is None else v


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def write_tables(cfg: BenchConfig, out: Path) -> dict[str, Any]:
    """cells.csv (one row per cell), results.csv (one per method), agreement.csv and results.md; returns the tables."""
    rows = cell_rows(cfg, out)
    summary = summarize(rows)
    agree = agreement(rows)
    tables = {"cells": rows, "summary": summary, "agreement": agree}
    bench = BenchDir(out)
    atomic_write_bytes(bench.cells_csv, to_csv(rows).encode())
    atomic_write_bytes(bench.results_csv, to_csv(summary).encode())
    atomic_write_bytes(bench.agreement_csv, to_csv(agree).encode())
    atomic_write_bytes(bench.results_md, results_markdown(cfg, tables).encode())
    return tables
