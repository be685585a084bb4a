"""Report figures (PNG): per-edge score heatmaps of every selector (one shared scale), scores with error bars, α
trajectories over the search, cell diagrams.

matplotlib is an optional extra (`pip install 'archselect[plots]'`), imported only here and only when a figure is
drawn. Figures are built with the object-oriented API on the Agg canvas (never pyplot), so drawing a report does not
touch a caller's matplotlib backend or global state. Cell diagrams use Graphviz `dot` when it is installed (cleaner
edge routing) and matplotlib otherwise.
"""
from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from ..arch import Architecture, Cell
from ..components import space_of
from ..errors import UserError
from ..files import atomic_write_bytes
from ..runs import open_run
from ..selection.stage import load_selections
from .compare import ordered

ENGINES = ("auto", "dot", "matplotlib")
NONE_COLOUR = "#9a9a9a"  # `none` edges: drawn dashed in grey, present but carrying nothing
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _mpl():
    """matplotlib's Figure class, or a UserError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'archselect[plots]'") from None
    return Figure


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # constrained layout already fits; "tight" would draw twice
    return buf.getvalue()


def save_png(data: bytes, path: Path) -> Path:
    atomic_write_bytes(path, data)
    return path


def report_file(out_dir: Path, kind: str, name: str) -> Path:
    """`out_dir/KIND_NAME.png` for a name read from a run's files (a selector, a cell type): anything but letters,
    digits, '-' and '_' becomes '_', so a crafted name can never reach outside `out_dir`."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(name))[:80] or "_"
    path = Path(out_dir) / f"{kind}_{safe}.png"
    if path.parent != Path(out_dir):
        raise UserError(f"refusing to write {path}: outside {out_dir}")
    return path


def op_colour(op: str, op_names: Sequence[str]) -> str:
    """One colour per op, the same in every figure of a run (by the op's index in the space)."""
    i = list(op_names).index(op) if op in op_names else len(op_names)
    return PALETTE[i % len(PALETTE)]


def edge_label(edge: tuple[int, int]) -> str:
    return f"{edge[0]}->{edge[1]}"


def _fmt(v: float | None) -> str:
    """Three significant digits, compact exponent form outside [0.01, 1000)."""
    if v is None or not math.isfinite(v):
        return "" if v is None else str(v)
    if v == 0 or 0.01 <= abs(v) < 1000:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def cell_title(cell_type: str) -> str:
    return "cell" if cell_type == "cell" else f"{cell_type} cell"


# -- (a) score heatmaps --------------------------------------------------------------------------------------------------

def max_abs(scores: dict[str, list[list[float]]]) -> float:
    """The largest |score| of a selection (all cell types): the unit of its shared-scale colours (1 if all zero)."""
    values = [abs(v) for rows in scores.values() for row in rows for v in row if v is not None and math.isfinite(v)]
    return max(values, default=0.0) or 1.0


def _annotation(v: float, err: float | None) -> str:
    return _fmt(v) + (f"\n±{_fmt(err)}" if err is not None and math.isfinite(err) else "")


def score_heatmaps(selections: dict[str, Any], cell_type: str, edges: Sequence[tuple[int, int]],
                   op_names: Sequence[str]):
    """One panel per selector, in the given order: rows = edges, columns = ops. Selectors score on different scales,
    so colour is score / max |score| of that selector (one shared colourbar, -1..1, zero white): a flat score stays
    flat instead of being stretched over the full range. Each cell shows the raw score (± its standard error where the
    selector estimates one); the chosen op of each edge is outlined."""
    Figure = _mpl()
    from matplotlib.patches import Rectangle

    names = list(selections)
    n_e, n_o = len(edges), len(op_names)
    cols = len(names) if len(names) <= 2 else 2  # two panels a row keep the figure at page width, its text legible
    rows = -(-len(names) // cols)
    panel_w, panel_h = 0.82 * n_o + 0.5, 0.5 * n_e + 1.3
    fig = Figure(figsize=(panel_w * cols + 1.4, panel_h * rows + 0.5), layout="constrained")
    grid_axes = fig.subplots(rows, cols, squeeze=False)
    axes = grid_axes.ravel()[:len(names)]
    for ax in grid_axes.ravel()[len(names):]:
        ax.set_visible(False)
    image = None
    for ax, name in zip(axes, names):
        sel = selections[name]
        unit = max_abs(sel.scores)
        raw = sel.scores[cell_type]
        errs = (sel.stderr or {}).get(cell_type)
        grid = [[v / unit if math.isfinite(v) else float("nan") for v in row] for row in raw]
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
        cell = sel.architecture.cell(cell_type)
        for e, edge in enumerate(edges):
            for k, v in enumerate(raw[e]):
                shade = grid[e][k]
                ax.text(k, e, _annotation(v, errs[e][k] if errs else None), ha="center", va="center",
                        fontsize=7.5, linespacing=1.0, color="white" if shade == shade and abs(shade) > 0.6 else "black")
            chosen = cell.op_on(*edge)
            if chosen in op_names:
                k = list(op_names).index(chosen)
                for colour, width in (("black", 3.0), ("white", 1.0)):  # visible on every colour of the map
                    ax.add_patch(Rectangle((k - 0.45, e - 0.45), 0.9, 0.9, fill=False, edgecolor=colour,
                                           linewidth=width))
        ax.set_title(f"{name}\nmax |score| {_fmt(unit)}" + (" (± s.e.)" if errs else ""), fontsize=9)
        ax.set_xticks(range(n_o), op_names, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(n_e), [edge_label(e) for e in edges], fontsize=8)
        ax.tick_params(length=0)
    for row in grid_axes:
        row[0].set_ylabel("edge (src->dst)", fontsize=9)
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.6, pad=0.02)
    cbar.set_label("score / max |score| of its selector", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    fig.suptitle(f"operation scores, {cell_title(cell_type)}: one colour scale, each selector's scores divided by its "
                 f"max |score|\n(raw values written; outline: chosen op)", fontsize=10)
    return fig


def score_errorbars(selections: dict[str, Any], cell_type: str, edges: Sequence[tuple[int, int]],
                    op_names: Sequence[str]):
    """For the selectors that estimate a standard error: one panel each, the raw scores of every op grouped by edge,
    ±1 s.e. as error bars, the chosen op's bar edged in black. Raw values: each panel has its own y scale."""
    Figure = _mpl()
    from matplotlib.patches import Patch

    names = [n for n, s in selections.items() if s.stderr and cell_type in s.stderr]
    n_o = len(op_names)
    width = 0.8 / n_o
    fig = Figure(figsize=(max(6.0, 0.75 * len(edges) + 2.4), 2.3 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        sel = selections[name]
        cell = sel.architecture.cell(cell_type)
        for k, op in enumerate(op_names):
            xs = [e - 0.4 + width * (k + 0.5) for e in range(len(edges))]
            ys = [row[k] for row in sel.scores[cell_type]]
            err = [row[k] for row in sel.stderr[cell_type]]
            edge_colours = ["black" if cell.op_on(*edge) == op else "none" for edge in edges]
            ax.bar(xs, ys, width * 0.9, yerr=err, capsize=2, color=op_colour(op, op_names), edgecolor=edge_colours,
                   linewidth=1.4, error_kw={"elinewidth": 0.9}, label=op)
        ax.axhline(0, color="#777777", linewidth=0.8)
        ax.set_xticks(range(len(edges)), [edge_label(e) for e in edges], fontsize=8)
        ax.set_ylabel("raw score, own scale", fontsize=8)
        ax.set_title(f"{name}: score ± 1 standard error (black edge: chosen op)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=op_colour(op, op_names), label=op) for op in op_names]  # bars' edges vary: not these
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"scores with their uncertainty, {cell_title(cell_type)}", fontsize=10)
    return fig


# -- (b) α trajectories ------------------------------------------------------------------------------------------------

def alpha_trajectories(metrics: list[dict[str, Any]], cell_type: str, edges: Sequence[tuple[int, int]],
                       op_names: Sequence[str]):
    """One subplot per edge, one line per op: the mixing weights softmax(α) at the end of each search epoch."""
    Figure = _mpl()
    records = [m for m in metrics if isinstance(m.get("alpha"), dict) and cell_type in m["alpha"]]
    epochs = [int(m.get("epoch", i)) + 1 for i, m in enumerate(records)]
    cols = min(len(edges), 4 if len(edges) > 9 else 3)
    rows = -(-len(edges) // cols)
    fig = Figure(figsize=(3.0 * cols + 1.8, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    values = [v for m in records for row in m["alpha"][cell_type] for v in row]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(hi - lo, 1e-3) * 0.08  # the weights' own range: a short search moves them by less than 1e-2
    marker = "o" if len(records) <= 20 else None
    for e, edge in enumerate(edges):
        ax = axes[e // cols][e % cols]
        for k, op in enumerate(op_names):
            ys = [m["alpha"][cell_type][e][k] for m in records]
            ax.plot(epochs, ys, color=op_colour(op, op_names), marker=marker, markersize=3, linewidth=1.4, label=op)
        ax.axhline(1.0 / len(op_names), color="#999999", linestyle=":", linewidth=1, label="uniform 1/K")
        ax.set_title(edge_label(edge), fontsize=9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for e in range(len(edges), rows * cols):
        axes[e // cols][e % cols].set_visible(False)
    for r in range(rows):
        axes[r][0].set_ylabel("softmax(α)", fontsize=8)
    for c in range(cols):
        axes[rows - 1][c].set_xlabel("epoch", fontsize=8)
        axes[rows - 1][c].xaxis.set_tick_params(labelbottom=True)
    if epochs:
        axes[0][0].set_xticks(_epoch_ticks(epochs))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"mixing weights over the search, {cell_title(cell_type)}", fontsize=11)
    return fig


def _epoch_ticks(epochs: list[int]) -> list[int]:
    step = max(1, math.ceil(len(epochs) / 6))
    return epochs[::step]


# -- (c) cell diagrams -------------------------------------------------------------------------------------------------

def _roles(cell: Cell) -> tuple[list[int], dict[int, str], int | None]:
    """Nodes in order, their labels, and the output node (None when an extra concat node is the output)."""
    srcs, dsts = {e.src for e in cell.edges}, {e.dst for e in cell.edges}
    nodes = sorted(srcs | dsts | set(cell.concat))
    inputs = [n for n in nodes if n not in dsts and n not in cell.concat]
    labels = {n: str(n) for n in nodes}
    if len(inputs) == 2:
        labels.update({inputs[0]: "c_{k-2}", inputs[1]: "c_{k-1}"})
    elif len(inputs) == 1:
        labels[inputs[0]] = "input"
    output = None if cell.concat else (max(nodes) if nodes else None)
    if output is not None:
        labels[output] = f"{output}: output"
    return nodes, labels, output


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cell_dot(cell_type: str, cell: Cell, op_names: Sequence[str]) -> str:
    """Graphviz source of one cell; a `none` edge (no connection) is drawn dashed and grey, so every cell of a space
    has the same shape and a reader sees where the op was removed."""
    nodes, labels, _ = _roles(cell)
    lines = ["digraph cell {", "  rankdir=LR; nodesep=0.3; ranksep=0.6; labelloc=t; fontname=\"Helvetica\";",
             f"  label={_quote(cell_title(cell_type))};",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for n in nodes:
        lines.append(f"  {_quote(str(n))} [label={_quote(labels[n])}];")
    for e in cell.edges:
        colour = _quote(op_colour(e.op, op_names) if e.op != "none" else NONE_COLOUR)
        style = "style=dashed, penwidth=1.0" if e.op == "none" else "penwidth=1.6"
        lines.append(f"  {_quote(str(e.src))} -> {_quote(str(e.dst))} "
                     f"[label={_quote(e.op)}, color={colour}, fontcolor={colour}, {style}];")
    if cell.concat:
        lines.append('  "out" [label="c_{k}", fillcolor="#fbeee6"];')
        lines += [f'  {_quote(str(n))} -> "out" [style=dashed, color="#999999"];' for n in cell.concat]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _stack(pngs: list[bytes]) -> bytes:
    """PNGs one above the other (Graphviz does not keep clusters in a chosen order, so each cell is its own graph)."""
    from PIL import Image  # a dependency of matplotlib, so present with the plots extra

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def _dot_png(source: str) -> bytes | None:
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-Tpng", "-Gdpi=110"], input=source.encode(), capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.startswith(b"\x89PNG") else None


def cell_figure(arch: Architecture, op_names: Sequence[str]):
    """matplotlib drawing: nodes on a line, each edge an arc (longer spans arc higher, alternating above and below)
    labelled with its op at the arc's apex."""
    Figure = _mpl()
    from matplotlib.patches import FancyArrowPatch

    cts = arch.cell_types
    widest = max(len(_roles(arch.cell(ct))[0]) + bool(arch.cell(ct).concat) for ct in cts)
    fig = Figure(figsize=(2.0 * widest + 1.0, 3.6 * len(cts)), layout="constrained")
    axes = fig.subplots(len(cts), 1, squeeze=False)[:, 0]
    gap, rad = 2.0, 0.32
    for ax, ct in zip(axes, cts):
        cell = arch.cell(ct)
        nodes, labels, _ = _roles(cell)
        x = {n: gap * i for i, n in enumerate(nodes)}
        links = [(e.src, e.dst, e.op) for e in cell.edges]
        if cell.concat:
            x["out"] = gap * len(nodes)
            labels = {**labels, "out": "c_{k}"}
            links += [(n, "out", None) for n in cell.concat]
        lowest = highest = 0.0
        for src, dst, op in links:
            span = (x[dst] - x[src]) / gap
            r = 0.0 if span <= 1 else (-rad if span % 2 == 0 else rad)  # negative rad bends a left-to-right arc up
            style = (dict(color="#aaaaaa", linewidth=1.0, linestyle="--", zorder=1) if op is None  # concat: faint
                     else dict(color=NONE_COLOUR, linewidth=1.0, linestyle="--", zorder=1) if op == "none"
                     else dict(color=op_colour(op, op_names), linewidth=1.6, zorder=2))
            ax.add_patch(FancyArrowPatch((x[src], 0), (x[dst], 0), connectionstyle=f"arc3,rad={r}", arrowstyle="-|>",
                                         mutation_scale=12, shrinkA=16, shrinkB=16, **style))
            apex = -0.5 * r * (x[dst] - x[src])  # the quadratic arc's midpoint lies half-way to its control point
            lowest, highest = min(lowest, apex), max(highest, apex)
            if op is not None:
                ax.text((x[src] + x[dst]) / 2, apex, op, ha="center", va="center", fontsize=8, color=style["color"],
                        zorder=4,
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9))
        for n, xn in x.items():
            text = f"${labels[n]}$" if labels[n].startswith("c_") else labels[n]  # c_{k-1} as mathtext
            ax.text(xn, 0, text, ha="center", va="center", fontsize=9, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.35", facecolor="#eef3fb", edgecolor="#4a6fa5"))
        ax.set_xlim(-gap * 0.6, max(x.values()) + gap * 0.6)
        ax.set_ylim(lowest - 0.7, highest + 0.7)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(cell_title(ct), fontsize=10)
    return fig


def cell_diagram(arch: Architecture, op_names: Sequence[str], engine: str = "auto") -> bytes:
    """PNG of the architecture's cells: Graphviz when `engine` is dot (or auto and dot is installed), else
    matplotlib."""
    if engine not in ENGINES:
        raise UserError(f"--engine: choose one of {', '.join(ENGINES)}; got {engine!r}")
    if engine != "matplotlib":
        pngs = [_dot_png(cell_dot(ct, arch.cell(ct), op_names)) for ct in arch.cell_types]
        if pngs and all(p is not None for p in pngs):
            return pngs[0] if len(pngs) == 1 else _stack(pngs)
        if engine == "dot":
            raise UserError("Graphviz `dot` is not installed or failed; use --engine matplotlib")
    return png_bytes(cell_figure(arch, op_names))


# -- a run's report ----------------------------------------------------------------------------------------------------

def _space_layout(cfg, shapes: dict[str, tuple[int, int]]):
    """(edges per cell type, op names) of the run's space, checked against the shapes of the recorded scores."""
    space = space_of(cfg, 1, 2)  # channels and classes change neither edges nor ops
    ops = tuple(space.op_names)
    edges = {}
    for ct, (n_edges, n_ops) in shapes.items():
        edges[ct] = tuple(space.edges(ct)) if ct in space.cell_types else ()
        if (len(edges[ct]), len(ops)) != (n_edges, n_ops):
            raise UserError(f"the recorded {ct!r} scores ({n_edges} x {n_ops}) do not fit the run's space "
                            f"{cfg.space.name!r} ({len(edges[ct])} edges x {len(ops)} ops)")
    return edges, ops


def plot_run(run_path: str | Path, engine: str = "auto") -> list[Path]:
    """Write RUN/report/*.png: α trajectories (alpha_CT.png), score heatmaps (scores_CT.png), scores with error bars
    where a selector has standard errors (stderr_CT.png) and one cell diagram per selection (cell_SELECTOR.png), the
    selectors in the run's configured order. Returns the paths written."""
    _mpl()
    run = open_run(run_path)
    cfg = run.read_config()
    metrics = [m for m in run.read_metrics() if isinstance(m.get("alpha"), dict)]
    selections = ordered(load_selections(run), cfg.select.selectors)
    shapes = {}
    for source in [s.scores for s in selections.values()] + [m["alpha"] for m in metrics[-1:]]:
        for ct, rows in source.items():
            shapes.setdefault(ct, (len(rows), len(rows[0]) if rows else 0))
    if not shapes:
        raise UserError(f"nothing to plot: {run.path} has no search metrics with α and no selections yet")
    edges, ops = _space_layout(cfg, shapes)
    out_dir, written = run.report_dir, []
    for ct in shapes:
        if metrics:
            fig = alpha_trajectories(metrics, ct, edges[ct], ops)
            written.append(save_png(png_bytes(fig), report_file(out_dir, "alpha", ct)))
        if selections:
            fig = score_heatmaps(selections, ct, edges[ct], ops)
            written.append(save_png(png_bytes(fig), report_file(out_dir, "scores", ct)))
        if any(s.stderr for s in selections.values()):
            fig = score_errorbars(selections, ct, edges[ct], ops)
            written.append(save_png(png_bytes(fig), report_file(out_dir, "stderr", ct)))
    for name, sel in selections.items():
        written.append(save_png(cell_diagram(sel.architecture, ops, engine), report_file(out_dir, "cell", name)))
    return written
