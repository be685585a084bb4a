"""The reports' comparison figures (PNG bytes). The bench's: accuracy by method, diagnostics over epochs (α-Hessian
eigenvalue, search-validation accuracy), supernet-vs-benchmark scatter, selector agreement. The selectors of one
supernet side by side (run report, and each bench group): NB201 accuracy on three datasets, cost vs accuracy and the
magnitude cell's accuracy per search epoch. Per-run figures (α trajectories, score
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


def accuracy_bars(summary: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]], metrics: dict[str, str],
                  reference: dict[str, float]) -> bytes:
    """One panel per metric (column -> label): mean ± std per selector (x) and optimizer/split (bars), each seed a
    dot; the reference (the optimum) a dashed line labelled inside the frame."""
    selectors = list(dict.fromkeys(r["selector"] for r in summary))
    methods = list(dict.fromkeys((r["space"], r["optimizer"], r["split"]) for r in summary))
    width = 0.8 / max(len(methods), 1)
    panel = max(3.6, 0.9 * len(selectors) * max(1.0, len(methods) / 2))
    fig = new_figure(panel * len(metrics) + 2.0, 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, metrics.items()):
        for j, method in enumerate(methods):
            for i, sel in enumerate(selectors):
                row = next((r for r in summary if (r["space"], r["optimizer"], r["split"]) == method
                            and r["selector"] == sel), None)
                if row is None or not math.isfinite(row[f"{metric}_mean"]):
                    continue
                x = i - 0.4 + width * (j + 0.5)
                std = row[f"{metric}_std"]
                ax.bar(x, row[f"{metric}_mean"], width * 0.9, color=PALETTE[j % len(PALETTE)], alpha=0.75,
                       yerr=std if math.isfinite(std) else None, capsize=3,
                       label="/".join(method[1:]) if i == 0 and ax is axes[0] else None)
                seeds = [c[metric] for c in cells if (c["space"], c["optimizer"], c["split"]) == method
                         and c["selector"] == sel and math.isfinite(c[metric])]
                ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
        top = reference.get(metric, math.nan)
        if math.isfinite(top):
            ax.axhline(top, color="grey", linestyle="--", linewidth=1)
            ax.text(-0.45, top, f"optimum {top:.2f}", va="bottom", ha="left", fontsize=7.5, color="dimgrey")
        highest = max([top] + [c[metric] for c in cells if math.isfinite(c[metric])], default=math.nan)
        if math.isfinite(highest):
            ax.set_ylim(0, highest * 1.12 + 1)  # room for the optimum's label inside the frame
        ax.set_xticks(range(len(selectors)), selectors, rotation=20 if len(selectors) > 3 else 0, fontsize=8)
        ax.set_xlim(-0.5, len(selectors) - 0.5)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("NAS-Bench-201 test accuracy (%)", fontsize=9)
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


# -- selectors compared on one supernet (the run report; per group in the bench) --------------------------------------

def _headroom(ax, top: float) -> None:
    """Room above the highest bar or line for its label, so no text crosses the frame."""
    ax.set_ylim(0, top * 1.12 + 1)


def nb201_bars(standing: dict[str, dict[str, dict[str, float]]], optima: dict[str, float],
               datasets: dict[str, str], colours: dict[str, str]) -> bytes:
    """Test accuracy of each selector's cell on every NB201 dataset (groups), the optimum as a dashed segment over
    its group; every number written inside the frame."""
    names = list(standing)
    width = 0.8 / max(len(names), 1)
    fig = new_figure(max(7.0, 1.1 * len(names) * len(datasets)) + 1.8, 3.8)
    ax = fig.subplots()
    for i, name in enumerate(names):
        xs = [d - 0.4 + width * (i + 0.5) for d in range(len(datasets))]
        ys = [standing[name][c]["accuracy"] for c in datasets]
        bars = ax.bar(xs, ys, width * 0.9, color=colours[name], label=name)
        # inside the bar's top, so a value never collides with the optimum's line just above it
        ax.bar_label(bars, [f"{y:.1f}" if math.isfinite(y) else "" for y in ys], fontsize=7.5, padding=-12,
                     color="white")
    for d, c in enumerate(datasets):
        ax.hlines(optima[c], d - 0.45, d + 0.45, colors="black", linestyles="--", linewidth=1)
        ax.text(d - 0.44, optima[c], f"optimum {optima[c]:.2f}", fontsize=7.5, va="bottom", ha="left")
    _headroom(ax, max(optima.values()))
    ax.set_xticks(range(len(datasets)), [f"{label} test" for label in datasets.values()], fontsize=9)
    ax.set_xlim(-0.5, len(datasets) - 0.5)
    ax.set_ylabel("NAS-Bench-201 test accuracy (%)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False, title="selector", title_fontsize=8)
    return png_bytes(fig)


def cost_scatter(points: dict[str, tuple[float, int, float]], colours: dict[str, str], ylabel: str) -> bytes:
    """One point per selector: x = selection seconds (log scale), y = accuracy; its passes and seconds in the legend
    (labels beside the points would overlap when two selectors cost and score alike)."""
    fig = new_figure(7.8, 3.6)
    ax = fig.subplots()
    for name, (seconds, passes, acc) in points.items():
        x = max(seconds, 1e-4)  # a free selector (magnitude) still has a place on the log axis
        ax.scatter([x], [acc], s=70, color=colours[name], edgecolor="black", linewidth=0.5, zorder=3,
                   label=f"{name}: {seconds:.3g} s, {passes} passes")
    xs = [max(s, 1e-4) for s, _, _ in points.values()]
    ys = [a for _, _, a in points.values()]
    span = max(max(ys) - min(ys), 1.0)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 3, max(xs) * 3)
    ax.set_ylim(min(ys) - 0.15 * span, max(ys) + 0.15 * span)
    ax.set_xlabel("selection cost: wall seconds (log scale)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False,
               title="passes: forward + backward mini-batches", title_fontsize=8)
    return png_bytes(fig)


def collapse_figure(series: dict[str, list[tuple[int, float]]], optima: dict[str, float], datasets: dict[str, str],
                    finals: dict[str, dict[str, float]], colours: dict[str, str]) -> bytes:
    """One panel per dataset: test accuracy of the magnitude-derived cell after each search epoch (line), the optimum
    (dashed) and, at the last epoch, each final selector's cell (markers side by side)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(4.3 * len(datasets) + 1.8, 3.4)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    markers = "DosP^v<>"
    for ax, (c, label) in zip(axes, datasets.items()):
        pts = series.get(c, [])
        xs, ys = [e + 1 for e, _ in pts], [a for _, a in pts]
        ax.plot(xs, ys, color="#333333", marker="o", markersize=3, linewidth=1.3, label="magnitude cell per epoch")
        last = max(xs, default=1)
        for i, (name, acc) in enumerate(finals.items()):
            offset = 0.12 * (i - (len(finals) - 1) / 2)
            ax.scatter([last + 0.3 + offset], [acc[c]], s=36, marker=markers[i % len(markers)], color=colours[name],
                       edgecolor="black", linewidth=0.5, zorder=4, label=f"{name} (final)")
        ax.axhline(optima[c], color="black", linestyle="--", linewidth=0.9)
        ax.text(0.02, optima[c], f"optimum {optima[c]:.2f}", transform=ax.get_yaxis_transform(), fontsize=7.5,
                va="bottom")
        _headroom(ax, optima[c])
        ax.set_xlim(0.5, last + 0.9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, never 1.5
        ax.set_title(f"{label} test", fontsize=10)
        ax.set_xlabel("search epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NAS-Bench-201 test accuracy (%)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return png_bytes(fig)
