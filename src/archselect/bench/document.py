"""The bench tables as a small document (headings, paragraphs, tables), rendered to markdown (results.md) here and
to HTML by the report, so both show exactly the same numbers with each protocol stated."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from .columns import ACCURACY
from .config import BenchConfig, run_config
from .published import Published, columns_for, matches, published_for


class Code(str):
    """A table cell shown as code (an architecture string)."""


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    id: str = ""          # anchor for the HTML report


Block = Union[Heading, Para, Table]

HEADERS = {
    "cifar10_valid": "C10 valid", "cifar10_test": "C10 test", "cifar100_test": "C100 test",
    "imagenet16_valid": "IN16 valid", "imagenet16_test": "IN16 test", "retrain_acc": "retrained acc (search data)",
    "cifar10_test_error": "C10 test error",
}
KIND = {"search_seconds": "seconds", "select_seconds": "seconds", "select_forward": "count",
        "select_backward": "count", "param_free_ops": "ops", "tied_edges": "ops", "kendall_tau": "corr", "spearman": "corr",
        "hessian_eig": "eig"}
FMT: dict[str, Callable[[float], str]] = {
    "acc": lambda v: f"{v:.2f}", "seconds": lambda v: f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}",
    "count": lambda v: f"{v:.0f}", "corr": lambda v: f"{v:.3f}", "eig": lambda v: f"{v:.3g}",
    "ops": lambda v: f"{v:.1f}",
}


def fmt(value: Any, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return FMT[KIND.get(metric, "acc")](value)
    return str(value)


def pm(row: dict[str, Any], metric: str) -> str:
    """mean ± std, or the mean alone when the std is undefined (one seed)."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    text = fmt(mean, metric)
    return f"{text} ± {fmt(std, metric)}" if text != "–" and math.isfinite(std) else text


def protocol_text(cfg: BenchConfig) -> str:
    run = run_config(cfg, cfg.spaces[0], cfg.optimizers[0], cfg.splits[0], cfg.seeds[0])
    d, s, se = run.data, run.space, run.search
    images = f"{d.subset} training images" if d.subset else "the whole training set"
    size = f" at {d.image_size}px" if d.image_size else ""
    epochs = f"{se.epochs} epoch{'s' if se.epochs != 1 else ''}"
    text = (f"{d.dataset} search ({images}{size}; {d.portion:.0%} trains the weights, the rest α and selection), "
            f"{s.name} supernet C{s.C} N{s.N}, {epochs}, batch {d.batch_size}; "
            f"seed{'s' if len(cfg.seeds) > 1 else ''} {', '.join(map(str, cfg.seeds))}")
    special = [f"{e.key}: {' '.join(e.overrides)}" for e in (*cfg.spaces, *cfg.optimizers, *cfg.splits) if e.overrides]
    return text + (f" (per entry: {'; '.join(special)})" if special else "")


def keys_of(cfg: BenchConfig) -> tuple[str, ...]:
    return ("space", "optimizer", "split", "selector") if len(cfg.spaces) > 1 else ("optimizer", "split", "selector")


# -- sections ----------------------------------------------------------------------------------------------------------

def accuracy_blocks(cfg: BenchConfig, summary: list[dict], metrics: Sequence[str]) -> list[Block]:
    keys = keys_of(cfg)
    heads = [HEADERS[m] for m in metrics]
    mean_rows = [[r[k] for k in keys] + [str(r["seeds"])] + [pm(r, m) for m in metrics] for r in summary]
    best_rows = [[r[k] for k in keys] + [fmt(r["best_seed"])] + [fmt(r[f"{m}_best"], m) for m in metrics]
                 + [Code(r["best_arch"])] for r in summary]
    return [
        Heading(2, "Derived architectures on NAS-Bench-201 (accuracy %, mean ± std over seeds)"),
        Table([*keys, "seeds", *heads], mean_rows, "results"),
        Heading(3, "Best seed (the derived cell with the highest C10 valid)"),
        Table([*keys, "seed", *heads, "architecture"], best_rows, "best"),
    ]


def published_blocks(cfg: BenchConfig, summary: list[dict]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Published numbers (the papers' protocols, not ours)")]
    for space in dict.fromkeys(e.name for e in cfg.spaces):
        cols = columns_for(space)
        rows = [_published_row(p, cols, summary) for p in published_for(space)]
        if rows:
            blocks.append(Table(["method", "protocol", *[HEADERS[c] for c in cols], "source", "our rows"], rows,
                                f"published-{space}"))
    blocks.append(Para("Each number's source is in its row. Our rows share the role (optimizer, split, selector), not "
                       "the protocol."))
    return blocks


def _published_row(p: Published, cols: Sequence[str], summary: list[dict]) -> list[str]:
    def value(c: str) -> str:
        if c not in p.values:
            return "–"
        mean, std = p.values[c]
        return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    ours = sorted({f"{r['optimizer']}/{r['split']}/{r['selector']}" for r in summary
                   if matches(p, r["optimizer_name"], r["split_name"], r["selector"])})
    source = p.source + (f"; {p.note}" if p.note else "")
    return [p.method, p.protocol, *[value(c) for c in cols], source, ", ".join(ours) or "–"]


def cost_blocks(cfg: BenchConfig, summary: list[dict]) -> list[Block]:
    keys = keys_of(cfg)
    metrics = ("search_seconds", "select_seconds", "select_forward", "select_backward")
    rows = [[r[k] for k in keys] + [pm(r, m) for m in metrics] for r in summary]
    return [
        Heading(2, "Cost (mean ± std over seeds)"),
        Para("Search seconds are per supernet, shared by every selector of the group; passes count mini-batches. "
             "After a split, a selector's cost sums its runs in every sub-supernet."),
        Table([*keys, "search s", "select s", "forward passes", "backward passes"], rows, "cost"),
    ]


def diagnostics_blocks(cfg: BenchConfig, summary: list[dict], agreement: list[dict]) -> list[Block]:
    keys = keys_of(cfg)
    group_keys = keys[:-1]
    per_group = {tuple(r[k] for k in group_keys): r for r in summary}
    sup_rows = [[*k, pm(r, "kendall_tau"), pm(r, "spearman"), pm(r, "hessian_eig")] for k, r in per_group.items()]
    sel_rows = [[r[k] for k in keys] + [pm(r, "param_free_ops"), pm(r, "tied_edges")] for r in summary]
    blocks: list[Block] = [
        Heading(2, "Diagnostics"),
        Para("Supernet vs benchmark: rank correlation between the supernet's accuracy with one-hot weights on the "
             "search-validation split and NAS-Bench-201 cifar10_valid, on sampled cells. λmax: the largest eigenvalue "
             "of the validation-loss Hessian w.r.t. α at the last epoch (its growth signals DARTS collapse)."),
        Table([*group_keys, "Kendall τ", "Spearman ρ", "α-Hessian λmax"], sup_rows, "supernet"),
        Para("Parameter-free ops (skip, pooling, none) among the edges of each derived cell, and the edges on which "
             "the selector's best op was tied (there its choice is arbitrary: e.g. magnitude on a fixed-α supernet, "
             "where every op ties):"),
        Table([*keys, "param-free ops", "tied edges"], sel_rows, "param-free"),
    ]
    if agreement:
        rows = [[*(a[k] for k in group_keys), f"{a['selector_a']} / {a['selector_b']}", f"{a['agreement']:.2f}",
                 str(a["seeds"])] for a in agreement]
        blocks += [Para("Selector agreement: the fraction of edges on which two selectors chose the same op, mean "
                        "over seeds."), Table([*group_keys, "selectors", "agreement", "seeds"], rows, "agreement")]
    return blocks


def bench_document(cfg: BenchConfig, tables: dict[str, Any]) -> tuple[list[Block], list[Block]]:
    """(the head: title and protocol, the body: every table), so the report can put figures between them."""
    summary = tables["summary"]
    metrics = list(ACCURACY)
    if any(math.isfinite(r.get("retrain_acc_mean", math.nan)) for r in summary):
        metrics.append("retrain_acc")
    head: list[Block] = [Heading(1, f"archselect bench: {cfg.name}")]
    if cfg.description.strip():
        head.append(Para(cfg.description.strip()))
    head.append(Para(f"Our protocol: {protocol_text(cfg)}. The NAS-Bench-201 columns are the benchmark's own "
                     "accuracies of each derived cell (trained on CIFAR-10, CIFAR-100 and ImageNet16-120), whatever "
                     "the search dataset."))
    if not summary:
        return head, [Para("No finished cells yet.")]
    body = accuracy_blocks(cfg, summary, metrics)
    if cfg.published:
        body += published_blocks(cfg, summary)
    body += cost_blocks(cfg, summary) + diagnostics_blocks(cfg, summary, tables["agreement"])
    return head, body


# -- markdown ----------------------------------------------------------------------------------------------------------

def _md_cell(c: Any) -> str:
    text = str(c).replace("|", "\\|")
    return f"`{text}`" if isinstance(c, Code) else text


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        else:
            lines = ["| " + " | ".join(b.headers) + " |", "|" + "---|" * len(b.headers)]
            out.append("\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]))
    return "\n\n".join(out) + "\n"


def results_markdown(cfg: BenchConfig, tables: dict[str, Any]) -> str:
    head, body = bench_document(cfg, tables)
    return to_markdown([*head, *body])
