"""The selection stage: load a finished search's supernet, run selectors on it, write one Selection each and a
comparison (chosen architectures, agreement per edge, benchmark metrics, cost) into the run directory."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..components import eval_loader, loaders, space_of, to_device
from ..config import RunConfig
from ..evaluate.lookup import benchmark_metrics
from ..runs import RunDir, atomic_write_json
from ..search.loop import load_supernet
from . import SELECTORS
from .base import Selection, SelectionContext
from .workers import Workers, open_workers


def build_context(cfg: RunConfig, run: RunDir, device: torch.device, log: Callable[[str], None]) -> SelectionContext:
    data = loaders(cfg, device)
    space = space_of(cfg, data.in_channels, data.num_classes)
    supernet = to_device(space.supernet(), device, cfg.search.channels_last)
    load_supernet(run, supernet)
    valid = eval_loader(cfg, data.valid.ds, device)
    return SelectionContext(space, supernet, valid, data.train, device, cfg.seed, run.file("selections"), log,
                            search=cfg.search)


def run_selectors(cfg: RunConfig, run: RunDir, names: list[str], device: torch.device,
                  log: Callable[[str], None] = print, workers: Workers | None = None) -> dict[str, Selection]:
    """The selectors `names` on RUN's supernet, each Selection written to RUN/selections/. Independent evaluations run
    on `workers`, or on those `select.workers` and `select.executor` ask for."""
    classes = [SELECTORS.get(n) for n in names]  # fail on an unknown name before any work
    selectors = [cls(cfg.select.options.get(n)) for cls, n in zip(classes, names)]
    if workers is None:
        with open_workers(cfg.select.workers, cfg.select.executor, device=device) as opened:
            return run_selectors(cfg, run, names, device, log, opened)
    ctx = build_context(cfg, run, device, log)
    ctx.workers = workers
    reference = copy.deepcopy(ctx.supernet.state_dict())
    results = {}
    for selector in selectors:
        log(f"selecting with {selector.name} ...")
        selection = selector.select(ctx)
        _assert_unchanged(ctx.supernet, reference, selector.name)
        atomic_write_json(run.file("selections", f"{selector.name}.json"), selection.to_dict())
        log(f"  {selector.name}: {selection.architecture}  ({selection.cost.forward} forward passes, "
            f"{selection.cost.seconds:.1f}s)")
        results[selector.name] = selection
    write_comparison(cfg, run, load_selections(run))
    return results


def _assert_unchanged(supernet, reference: dict[str, torch.Tensor], name: str) -> None:
    for k, v in supernet.state_dict().items():
        if not torch.equal(v, reference[k]):
            raise RuntimeError(f"selector {name} changed the shared supernet ({k}); selectors must work on a copy")


def load_selections(run: RunDir) -> dict[str, Selection]:
    from ..runs import read_json

    out = {}
    for path in sorted(run.file("selections").glob("*.json")):
        d = read_json(path, "selection")
        if isinstance(d, dict) and "selector" in d:
            out[d["selector"]] = Selection.from_dict(d)
    return out


def agreement(selections: dict[str, Selection]) -> dict[str, Any]:
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


def write_comparison(cfg: RunConfig, run: RunDir, selections: dict[str, Selection]) -> dict[str, Any]:
    comparison = {
        "selectors": {
            n: {"architecture": str(s.architecture), "cost": vars(s.cost),
                "benchmark": benchmark_metrics(s.architecture, cfg.benchmark)}
            for n, s in selections.items()
        },
        "agreement": agreement(selections),
    }
    atomic_write_json(run.file("comparison.json"), comparison)
    return comparison
