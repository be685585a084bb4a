"""The bench report: one self-contained HTML page (BENCH/report/index.html) and the same tables in markdown.

Every image is embedded (base64 PNG, or SVG from graphviz for cell diagrams) and the style is inline, so the file
stands alone: it can be mailed, archived or opened offline. The page holds the comparison tables (ours, then the
papers' numbers with their protocols), cost, the diagnostics over epochs, selector agreement and, per supernet group,
the α trajectories, every selector's score heatmap and the derived cells.
"""
from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path
from typing import Any, Sequence

from ..version import __version__
from ..bench.aggregate import write_tables
from ..bench.config import load_bench_config
from ..bench.document import Code, Heading, Para, Table, bench_document, fmt, results_markdown
from ..bench.matrix import cell_dir, cell_done, groups, read_diagnostics, selection_path
from ..bench.published import published_for
from ..components import space_of
from ..errors import UserError
from ..evaluate.benchmark import IMPORT_HINT
from ..evaluate.lookup import benchmark_metrics, table_for
from ..files import atomic_write_bytes, read_json
from ..runs import BenchDir, RunDir
from ..selection.base import Selection
from ..selection.stage import load_selections
from . import compare, figures, plots
from .compare import ordered

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d2733; background: #f6f7f9;
       margin: 0; line-height: 1.45; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; background: white; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e8ef; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0; max-width: 1100px; }
nav { margin: 10px 0 4px; font-size: 14px; }
nav a { margin-right: 14px; color: #2a5db0; text-decoration: none; }
.protocol { background: #f2f6fc; border-left: 4px solid #4a78c2; padding: 8px 12px; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e6e9ee; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #f0f5fd; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.text { min-width: 180px; max-width: 420px; }
code { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 11.5px; word-break: break-all; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e6e9ee; }
figcaption { font-size: 13px; color: #55606e; margin-top: 4px; max-width: 1100px; }
details { border: 1px solid #e3e8ef; border-radius: 6px; margin: 10px 0; padding: 4px 14px; }
summary { cursor: pointer; font-weight: 600; padding: 6px 0; }
.cells { display: flex; flex-wrap: wrap; gap: 14px; }
.cells figure { margin: 4px 0; flex: 0 0 calc(50% - 7px); }
.cells img { background: white; width: 100%; height: 260px; object-fit: contain; }
.note { color: #6b7480; font-size: 13px; }
table.matrix td { min-width: 80px; text-align: center; }
table.matrix tbody th { position: static; }
footer { margin-top: 40px; font-size: 12px; color: #7a8490; }
"""


# -- HTML pieces -------------------------------------------------------------------------------------------------------

def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(data: bytes, caption: str, alt: str, mime: str = "image/png") -> str:
    return (f'<figure><img src="{data_uri(data, mime)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _is_number(text: str) -> bool:
    head = str(text).split(" ± ")[0].replace("–", "").strip()
    try:
        float(head)
        return True
    except ValueError:
        return text.strip() == "–"


def table_html(block) -> str:
    def cell(c: Any) -> str:
        if isinstance(c, Code):
            return f"<td><code>{esc(c)}</code></td>"
        cls = "num" if _is_number(str(c)) else ("text" if len(str(c)) > 40 else "")
        return f'<td class="{cls}">{esc(c)}</td>' if cls else f"<td>{esc(c)}</td>"
    head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
    rows = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in block.rows)
    ident = f' id="{esc(block.id)}"' if block.id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def blocks_html(blocks: Sequence) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{esc(b.text)}</p>")
        else:
            out.append(table_html(b))
    return "\n".join(out)


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


# -- the bench page ----------------------------------------------------------------------------------------------------

def _sections(blocks: Sequence) -> list[tuple[str, list]]:
    """Split the document body at its level-2 headings: [(heading text, blocks)]."""
    out: list[tuple[str, list]] = []
    for b in blocks:
        if isinstance(b, Heading) and b.level == 2:
            out.append((b.text, [b]))
        elif out:
            out[-1][1].append(b)
        else:
            out.append(("", [b]))
    return out


def _anchor(title: str) -> str:
    word = title.split(" ")[0].lower()
    return {"derived": "results"}.get(word, word)


def _over_epochs(cells_groups: dict[str, RunDir]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    series: dict[str, dict[str, list[tuple[int, float]]]] = {"hessian_eig": {}, "search_valid_acc": {}}
    for gid, run in cells_groups.items():
        metrics = run.read_metrics()
        for key in series:
            pts = [(m["epoch"], float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))]
            if pts:
                series[key][gid] = [(e, 100 * v if key == "search_valid_acc" else v) for e, v in pts]
    return series


def diagnostics_figures(groups: dict[str, RunDir], agreement: list[dict], selectors: list[str]) -> str:
    parts = []
    series = _over_epochs(groups)
    titles = {"hessian_eig": "largest eigenvalue of ∇²_α L_val", "search_valid_acc": "search-validation accuracy (%)"}
    if any(series[k] for k in titles):
        parts.append(figure(figures.over_epochs(series, titles), "Per epoch, one line per supernet (colour: "
                            "optimizer/split). A growing largest α-Hessian eigenvalue is R-DARTS' sign of collapse.",
                            "diagnostics over epochs"))
    corr = {gid: read_diagnostics(run).get("correlation") for gid, run in groups.items()}
    corr = {g: c for g, c in corr.items() if c}
    if corr:
        points = {g: [(p[1], p[2]) for p in c["pairs"]] for g, c in corr.items()}
        taus = {g: c["kendall_tau"] for g, c in corr.items()}
        n = max(c["samples"] for c in corr.values())
        parts.append(figure(figures.correlation_scatter(points, taus), f"Supernet accuracy with one-hot weights vs "
                            f"NAS-Bench-201 cifar10_valid, {n} sampled cells per supernet.", "rank correlation"))
    if agreement and len(selectors) > 1:
        parts.append(figure(figures.agreement_matrices(agreement, selectors), "Fraction of edges on which two "
                            "selectors chose the same op (mean over seeds).", "selector agreement"))
    return "\n".join(parts)


def standing_table(standing: dict[str, dict[str, dict[str, float]]]) -> Table:
    short = {"cifar10_test": "C10", "cifar100_test": "C100", "imagenet16_test": "IN16"}
    headers = ["selector"] + [f"{short[c]} {what}" for c in compare.DATASETS for what in ("test", "regret", "pct")]
    rows = [[name] + [fmt(v[c][k]) for c in compare.DATASETS for k in ("accuracy", "regret", "percentile")]
            for name, v in standing.items()]
    return Table(headers, rows, "nb201-standing")


def _tau_colour(v: float) -> str:
    """Background of a τ cell: white at 0, towards red at +1 and blue at −1 (grey when undefined)."""
    if not math.isfinite(v):
        return "#eeeeee"
    end = (178, 24, 43) if v > 0 else (33, 102, 172)
    return "#" + "".join(f"{round(255 + (c - 255) * min(abs(v), 1.0)):02x}" for c in end)


def tau_html(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> str:
    """The selectors' rank agreement as an annotated matrix (an HTML table, so the numbers can be copied)."""
    def cell(v: float) -> str:
        text = f"{v:.2f}" if math.isfinite(v) else "n/a"
        colour = "white" if math.isfinite(v) and abs(v) > 0.6 else "black"
        return f'<td class="num" style="background:{_tau_colour(v)};color:{colour}">{text}</td>'
    head = "<th>Kendall τ</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{esc(n)}</th>" + "".join(cell(v) for v in row) + "</tr>" for n, row in zip(names, matrix))
    return ('<figure><div class="scroll"><table id="kendall-tau" class="matrix"><thead><tr>' + head +
            f"</tr></thead><tbody>{rows}</tbody></table></div><figcaption>Rank agreement of the selectors' scores: "
            "Kendall τ-b between two selectors' scores of the ops of one edge, averaged over every edge where both "
            "rank the ops (1: same order, −1: reversed, 0: unrelated).</figcaption></figure>")


def standing_parts(table, standing: dict, selections: dict[str, Selection], colours: dict[str, str]) -> list[str]:
    """NB201 accuracy, regret and percentile of each selector's cell (table and bars), then cost vs accuracy."""
    parts = [f'<p class="note">NAS-Bench-201 test accuracy (%) on CIFAR-10, CIFAR-100 and ImageNet16-120; regret: '
             f"the table's best test accuracy minus the cell's (points); pct: the percentile, the share (%) of the "
             f"table's {len(table):,} cells at most as accurate.</p>", table_html(standing_table(standing)),
             figure(figures.nb201_bars(standing, compare.optima(table), compare.DATASETS, colours),
                    "NAS-Bench-201 test accuracy of each selector's cell on all three datasets; dashed: the best cell "
                    "in the table.", "NB201 accuracy by selector")]
    points = {n: (selections[n].cost.seconds, selections[n].cost.forward + selections[n].cost.backward,
                  v["cifar10_test"]["accuracy"]) for n, v in standing.items()
              if math.isfinite(v["cifar10_test"]["accuracy"])}
    if points:
        parts.append(figure(figures.cost_scatter(points, colours, "NAS-Bench-201 CIFAR-10 test (%)"),
                            "Cost vs accuracy: wall seconds of the selection (log scale) against the CIFAR-10 test "
                            "accuracy of its cell (the other datasets are in the table above).", "cost vs accuracy"))
    return parts


def collapse_parts(cfg, metrics: list[dict], table, standing: dict, colours: dict[str, str]) -> list[str]:
    """The magnitude-derived cell's NB201 accuracy after each search epoch, the final selectors marked."""
    series = compare.collapse_series(metrics, space_of(cfg, 3, 10), table)
    if not any(series.values()):
        return []
    finals = {n: {c: v["accuracy"] for c, v in standing[n].items()} for n in standing}
    png = figures.collapse_figure(series, compare.optima(table), compare.DATASETS, finals, colours)
    return [figure(png, "After each search epoch, the NAS-Bench-201 test accuracy of the cell that magnitude (argmax "
                   "softmax(α) per edge) derives from that epoch's α: a falling line is DARTS' collapse. Markers at "
                   "the last epoch: the final selectors' cells.", "magnitude cell accuracy per epoch")]


def comparison_parts(cfg, metrics: list[dict], selections: dict[str, Selection], full: bool = True) -> list[str]:
    """The selectors of one supernet side by side: NB201 standing, cost vs accuracy, rank agreement of their scores,
    the magnitude cell per search epoch. `full=False` (a bench group, whose page already has the accuracy and cost
    tables): agreement and the per-epoch plot only. Without a table, a note says how to import one."""
    parts, colours = [], compare.selector_colours(list(selections))
    table = table_for(cfg.benchmark) if cfg.space.name == "nb201" else None
    if table is None:
        why = IMPORT_HINT if cfg.space.name == "nb201" else f"no tabular benchmark for the {cfg.space.name} space"
        parts.append(f'<p class="note">No NAS-Bench-201 accuracy, regret or percentile: {esc(why)}.</p>')
    standing = compare.standing(selections, table) if table is not None and selections else {}
    if standing and full:
        parts += standing_parts(table, standing, selections, colours)
    if len(selections) > 1:
        parts.append(tau_html(list(selections), compare.tau_matrix(selections)))
    if standing:
        parts += collapse_parts(cfg, metrics, table, standing, colours)
    return parts


def run_figures(cfg, metrics: list[dict], selections: dict, captions: dict[str, str] | None = None,
                engine: str = "auto") -> list[str]:
    """α trajectories and score heatmaps per cell type, then one cell diagram per selection (reporting/plots.py; engine:
    auto, dot or matplotlib), as embedded <figure>s; `captions` names each selector's cell diagram."""
    space = space_of(cfg, 3, 10)  # channels and classes change neither the edges nor the ops
    ops, parts = tuple(space.op_names), []
    alpha = [m for m in metrics if isinstance(m.get("alpha"), dict)]
    for ct in space.cell_types:
        edges = tuple(space.edges(ct))
        if alpha:
            parts.append(figure(plots.png_bytes(plots.alpha_trajectories(alpha, ct, edges, ops)),
                                "softmax(α) of every op on every edge at the end of each search epoch.",
                                f"alpha trajectories, {ct}"))
        if selections:
            parts.append(figure(plots.png_bytes(plots.score_heatmaps(selections, ct, edges, ops)),
                                "Each selector's op scores (higher = more important), raw values written in the cells "
                                "(± standard error where the selector estimates one). Colour: one shared scale, each "
                                "selector's scores divided by its own max |score|, so a nearly flat score looks flat. "
                                "Outlined: the op it kept.", f"score heatmaps, {ct}"))
        if any(s.stderr for s in selections.values()):
            parts.append(figure(plots.png_bytes(plots.score_errorbars(selections, ct, edges, ops)),
                                "Scores of the selectors that estimate their uncertainty, ± 1 standard error; raw "
                                "values, each on its own scale.", f"score error bars, {ct}"))
    captions = captions or {}
    cells = [figure(plots.cell_diagram(sel.architecture, ops, engine),
                    f"{name}: {captions.get(name, sel.architecture)}", f"cell chosen by {name}")
             for name, sel in selections.items()]
    if cells:
        parts.append('<div class="cells">' + "".join(cells) + "</div>")
    return parts


def group_section(gid: str, run: RunDir, selectors: list[str], cells: list[dict], open_: bool,
                  engine: str = "auto") -> str:
    """α trajectories, score heatmaps and derived cells of one supernet group, in a collapsible block."""
    sels = {name: Selection.from_dict(read_json(selection_path(run, name), "selection"))
            for name in selectors if cell_done(run, name)}
    first = next(iter(sels), None)
    source = cell_dir(run, first) if first else run  # a split group: the sub-supernet chosen for the first selector
    acc = {n: next((c["cifar10_test"] for c in cells if c["group"] == gid and c["selector"] == n), math.nan)
           for n in sels}
    captions = {n: f"NB201 C10 test {fmt(acc[n])}" for n in sels}
    cfg, metrics = run.read_config(), source.read_metrics()
    parts = run_figures(cfg, metrics, sels, captions, engine) + comparison_parts(cfg, metrics, sels, full=False)
    if run.is_split() and first:
        parts.insert(0, f'<p class="note">α trajectories: sub-supernet {esc(source.path.name)}, the one chosen for '
                        f"{esc(first)}.</p>")
    summary = " · ".join(f"{n}: {fmt(a)}" for n, a in acc.items())
    return (f'<details{" open" if open_ else ""}><summary>{esc(gid)} <span class="note">(C10 test: '
            f"{esc(summary)})</span></summary>\n" + "\n".join(parts) + "\n</details>")


def bench_html(cfg, out: Path, tables: dict[str, Any], engine: str = "auto") -> str:
    head, body = bench_document(cfg, tables)
    runs = {g.id: BenchDir(out).group(g.id) for g in groups(cfg)}
    runs = {gid: r for gid, r in runs.items() if r.exists()}
    sections = _sections(body)
    nav = "".join(f'<a href="#{_anchor(t)}">{esc(t.split(" (")[0])}</a>' for t, _ in sections if t)
    nav += '<a href="#groups">Supernets</a>' if runs else ""
    parts = [blocks_html(head[:1]), f"<nav>{nav}</nav>"]
    parts += [f'<p class="protocol">{esc(b.text)}</p>' for b in head[1:]]
    summary, cells = tables["summary"], tables["cells"]
    for title, blocks in sections:
        parts.append(f'<section id="{_anchor(title)}">' + blocks_html(blocks))
        if _anchor(title) == "results" and summary and any(math.isfinite(r["cifar10_test_mean"]) for r in summary):
            optimum = next((p for p in published_for("nb201") if p.method.startswith("optimum")), None)
            ref = {c: optimum.values[c][0] for c in compare.DATASETS if c in optimum.values} if optimum else {}
            datasets = {c: f"{label} test" for c, label in compare.DATASETS.items()}
            parts.append(figure(figures.accuracy_bars(summary, cells, datasets, ref),
                                "NAS-Bench-201 test accuracy of the derived cells on all three datasets: bars mean ± "
                                "std over seeds, dots single seeds; dashed: the benchmark's optimum "
                                f"({optimum.source if optimum else 'none'}).", "accuracy by selector"))
        if _anchor(title) == "diagnostics":
            parts.append(diagnostics_figures(runs, tables["agreement"], list(cfg.selectors)))
        parts.append("</section>")
    if runs:
        parts.append('<section id="groups"><h2>Supernets: α, selector scores and derived cells</h2>')
        parts += [group_section(gid, run, list(cfg.selectors), cells, i == 0, engine)
                  for i, (gid, run) in enumerate(runs.items())]
        parts.append("</section>")
    parts.append(f"<footer>archselect {esc(__version__)} · {esc(out)} · {time.strftime('%Y-%m-%d %H:%M')}</footer>")
    return page(f"archselect bench: {cfg.name}", "\n".join(parts))


def write_bench_report(out: str | Path, engine: str = "auto") -> Path:
    """Re-aggregate the bench in `out` from disk and write report/index.html and report/results.md."""
    bench = BenchDir(out)
    if not bench.exists():
        raise UserError(f"{out} is not a bench directory (no {bench.bench_file.name})")
    cfg = load_bench_config(bench.bench_file)
    tables = write_tables(cfg, bench.path)
    atomic_write_bytes(bench.report_page, bench_html(cfg, bench.path, tables, engine).encode())
    atomic_write_bytes(bench.report_results_md, results_markdown(cfg, tables).encode())
    return bench.report_page


# -- one run directory -------------------------------------------------------------------------------------------------

def run_html(run: RunDir, engine: str = "auto") -> str:
    """The page of one search run: its selections with benchmark numbers and cost, the figures of plots.py, and the
    per-epoch diagnostics."""
    cfg = run.read_config()
    metrics, selections = run.read_metrics(), ordered(load_selections(run), cfg.select.selectors)
    rows, captions = [], {}
    for name, sel in selections.items():
        bench = benchmark_metrics(sel.architecture, cfg.benchmark)
        captions[name] = f"NB201 C10 test {fmt(bench.get('cifar10_test'))} · {sel.architecture}"
        rows.append([name, *[fmt(bench.get(c)) for c in ("cifar10_valid", "cifar10_test", "cifar100_test",
                                                          "imagenet16_test")],
                     fmt(sel.cost.seconds, "select_seconds"), str(sel.cost.forward), str(sel.cost.backward),
                     Code(str(sel.architecture))])
    s, d = cfg.space, cfg.data
    blocks = [Heading(1, f"archselect run: {run.path.name}"),
              Para(f"{d.dataset} search, {s.name} supernet C{s.C} N{s.N}, optimizer {cfg.search.optimizer}, "
                   f"{len(metrics)}/{cfg.search.epochs} epochs, seed {cfg.seed}.")]
    if rows:
        blocks += [Heading(2, "Selections"),
                   Table(["selector", "C10 valid", "C10 test", "C100 test", "IN16 test", "select s", "forward passes",
                          "backward passes", "architecture"], rows, "selections")]
    parts = [blocks_html(blocks)]
    if selections:
        parts += ['<h2 id="compare">Selectors compared</h2>', *comparison_parts(cfg, metrics, selections),
                  "<h2>Scores, α and cells</h2>"]
    parts += run_figures(cfg, metrics, selections, captions, engine)
    series = _over_epochs({run.path.name: run})
    titles = {"hessian_eig": "largest eigenvalue of ∇²_α L_val", "search_valid_acc": "search-validation accuracy (%)"}
    if any(series[k] for k in titles):
        parts.append("<h2>Search diagnostics</h2>")
        parts.append(figure(figures.over_epochs(series, titles), "Per search epoch.", "diagnostics over epochs"))
    return page(f"archselect run: {run.path.name}", "\n".join(parts))


def write_run_report(path: str | Path, engine: str = "auto") -> Path:
    """RUN/report/index.html: one self-contained page for a search run directory."""
    run = RunDir(path)
    if not run.exists():
        raise UserError(f"{path} is neither a run directory (no config.yaml) nor a bench directory")
    atomic_write_bytes(run.report_page, run_html(run, engine).encode())
    return run.report_page
