"""The bench report's own figures (PNG bytes): accuracy by method, diagnostics over epochs (α-Hessian eigenvalue,
search-validation accuracy), supernet-vs-benchmark scatter, selector agreement. Per-run figures (α trajectories, score
heatmaps, cell diagrams) come from reporting/plots.py.

Like plots.py, figures are built on matplotlib's object-oriented API (never pyplot), so writing a report leaves a
caller's backend and global state alone; matplotlib is the optional `plots` extra.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import UserError
from .plots import PALETTE, png_bytes


def new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("the bench report's figures need matplotlib: pip install 'archselect[plots]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def _method(group_id: str) -> str:
    """'nb201-darts-none-s0' -> 'nb201-darts-none' (the group without its seed)."""
    return group_id.rsplit("-s", 1)[0]


def accuracy_bars(summary: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]], metric: str,
                  label: str, reference: dict[str, float]) -> bytes:
    """Mean ± std of `metric` per selector (x) and optimizer/split (bars), each seed a dot; dashed reference lines."""
    selectors = list(dict.fromkeys(r["selector"] for r in summary))
    methods = list(dict.fromkeys((r["space"], r["optimizer"], r["split"]) for r in summary))
    width = 0.8 / max(len(methods), 1)
    fig = new_figure(max(6.5, 1.5 * len(selectors) * max(1.0, len(methods) / 2)) + 2.0, 3.8)
    ax = fig.subplots()
    for j, method in enumerate(methods):
        color = PALETTE[j % len(PALETTE)]
        for i, sel in enumerate(selectors):
            row = next((r for r in summary if (r["space"], r["optimizer"], r["split"]) == method
                        and r["selector"] == sel), None)
            if row is None or not math.isfinite(row[f"{metric}_mean"]):
                continue
            x = i - 0.4 + width * (j + 0.5)
            std = row[f"{metric}_std"]
            ax.bar(x, row[f"{metric}_mean"], width * 0.9, color=color, alpha=0.75,
                   yerr=std if math.isfinite(std) else None, capsize=3, label="/".join(method[1:]) if i == 0 else None)
            seeds = [c[metric] for c in cells if (c["space"], c["optimizer"], c["split"]) == method
                     and c["selector"] == sel and math.isfinite(c[metric])]
            ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
    for name, value in reference.items():
        ax.axhline(value, color="grey", linestyle="--", linewidth=1)
        ax.text(len(selectors) - 0.45, value, f"{name} {value:.2f}", va="bottom", ha="right", fontsize=8,
                color="dimgrey")
    ax.set_xticks(range(len(selectors)), selectors)
    ax.set_xlim(-0.5, len(selectors) - 0.5)
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="optimizer/split", title_fontsize=8, frameon=False)
    return png_bytes(fig)


def over_epochs(series: dict[str, dict[str, list[tuple[int, float]]]], titles: dict[str, str]) -> bytes:
    """One panel per metric; one line per supernet group, coloured by optimizer/split (one line per seed)."""
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in titles if series.get(m)]
    fig = new_figure(5.0 * len(metrics) + 2.0, 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    methods = sorted({_method(g) for m in metrics for g in series[m]})
    color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    for ax, m in zip(axes, metrics):
        epochs = sorted({x + 1 for points in series[m].values() for x, _ in points})
        for group, points in sorted(series[m].items()):
            xs, ys = zip(*points)
            ax.plot([x + 1 for x in xs], ys, color=color[_method(group)], marker="o", markersize=3, linewidth=1.2)
        ax.set_title(titles[m], fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for method in methods:
        axes[0].plot([], [], color=color[method], label=method)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return png_bytes(fig)


def correlation_scatter(points: dict[str, list[tuple[float, float]]], taus: dict[str, float]) -> bytes:
    """Supernet one-hot accuracy vs NAS-Bench-201 cifar10_valid: one panel per optimizer/split, one colour per seed."""
    methods = sorted({_method(g) for g in points})
    fig = new_figure(4.2 * len(methods) + 0.5, 3.6)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        for i, g in enumerate(sorted(g for g in points if _method(g) == method)):
            xs, ys = zip(*points[g]) if points[g] else ((), ())
            ax.scatter([100 * x for x in xs], ys, s=12, color=PALETTE[i % len(PALETTE)],
                       label=f"seed {g.rsplit('-s', 1)[1]} (τ {taus.get(g, math.nan):.2f})")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("supernet accuracy, one-hot (%)", fontsize=9)
        ax.set_ylabel("NAS-Bench-201 C10 valid (%)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def agreement_matrices(agreement: Sequence[dict[str, Any]], selectors: Sequence[str]) -> bytes:
    """Pairwise edge agreement between selectors, one matrix per optimizer/split."""
    methods = list(dict.fromkeys((a["space"], a["optimizer"], a["split"]) for a in agreement))
    n = len(selectors)
    fig = new_figure((0.8 * n + 1.4) * len(methods) + 0.4, 0.8 * n + 1.4)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        m = [[1.0 if i == j else math.nan for j in range(n)] for i in range(n)]
        for a in agreement:
            if (a["space"], a["optimizer"], a["split"]) == method:
                i, j = selectors.index(a["selector_a"]), selectors.index(a["selector_b"])
                m[i][j] = m[j][i] = a["agreement"]
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for i in range(n):
            for j in range(n):
                if math.isfinite(m[i][j]):
                    ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if m[i][j] > 0.6 else "black")
        ax.set_xticks(range(n), selectors, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(n), selectors, fontsize=8)
        ax.set_title("/".join(method[1:]), fontsize=10)
    return png_bytes(fig)
