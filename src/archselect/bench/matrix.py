"""The bench matrix: (space, optimizer, split, selector, seed) cells, as supernet groups, and what of them is done.

Post-hoc selectors share one supernet per (space, optimizer, split, seed): a *group*. A group is an ordinary search
run directory, BENCH/runs/<space>-<optimizer>-<split>-s<seed>/: the search trains and saves the supernet once, then
every selector runs on it (selections/NAME.json), then the diagnostics (diagnostics.json). pipeline/bench_runner.py runs the
groups; this module knows the matrix and reads its groups (the tables and the report read them through it).
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from ..config import RunConfig, to_dict
from ..errors import UserError
from ..runs import BenchDir, RunDir
from ..selection.stage import selection_done
from .config import AxisEntry, BenchConfig, excluded, run_config

# Keys that may change between invocations without invalidating finished work (where and how fast it runs, and which
# selectors are wanted: each selector's output is its own file).
VOLATILE_KEYS = ("device", "threads", "select.selectors", "logging.tensorboard")


@dataclasses.dataclass(frozen=True)
class Group:
    space: AxisEntry
    optimizer: AxisEntry
    split: AxisEntry
    seed: int

    @property
    def id(self) -> str:
        return f"{self.space.key}-{self.optimizer.key}-{self.split.key}-s{self.seed}"


def groups(cfg: BenchConfig) -> list[Group]:
    """Every supernet group not excluded, seed-major: after the first seed every method has one result."""
    every = [Group(sp, opt, spl, seed) for seed, sp, opt, spl in
             itertools.product(cfg.seeds, cfg.spaces, cfg.optimizers, cfg.splits)]
    return [g for g in every if not excluded(cfg, {"space": g.space.key, "optimizer": g.optimizer.key,
                                                     "split": g.split.key, "seed": g.seed})]


def group_job(cfg: BenchConfig, group: Group, out: Path, device: str | None = None) -> dict[str, Any]:
    run_cfg = run_config(cfg, group.space, group.optimizer, group.split, group.seed)
    if device:
        run_cfg.device = device
    return {
        "id": group.id, "run": str(BenchDir(out).group(group.id).path), "config": to_dict(run_cfg),
        "selectors": list(cfg.selectors), "diagnostics": dataclasses.asdict(cfg.diagnostics),
        "retrain": dataclasses.asdict(cfg.retrain),
        "labels": {"space": group.space.key, "optimizer": group.optimizer.key, "split": group.split.key,
                   "seed": group.seed},
    }


# -- what is done ------------------------------------------------------------------------------------------------------

def supernet_done(run: RunDir) -> bool:
    if run.is_split():
        return run.result_file.is_file()
    return run.has_supernet()


def cell_dir(run: RunDir, name: str) -> RunDir | None:
    """The run directory holding selector `name`'s cell: the group itself, or, after a split, the sub-supernet that
    the split search chose for this selector (None until it has chosen)."""
    if not run.is_split():
        return run
    result = run.read_result() or {}
    leaf = result.get("split", {}).get("per_selector", {}).get(name, {}).get("leaf")
    return run.node(leaf) if leaf else None


def selection_path(run: RunDir, name: str) -> Path | None:
    cell = cell_dir(run, name)
    return cell.selection_file(name) if cell else None


def cell_done(run: RunDir, name: str) -> bool:
    """Selector `name`'s cell of this group has a valid selection (a damaged one is redone)."""
    cell = cell_dir(run, name)
    return cell is not None and selection_done(cell, name)


def read_diagnostics(run: RunDir) -> dict[str, Any]:
    data = run.read_json(run.diagnostics_file, "bench diagnostics", {})
    return data if isinstance(data, dict) else {}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k != "options" else {key: v})
    return out


def _differences(old: RunConfig, new: RunConfig) -> list[str]:
    a, b = _flatten(to_dict(old)), _flatten(to_dict(new))
    return [k for k in sorted(set(a) | set(b)) if k not in VOLATILE_KEYS and a.get(k) != b.get(k)]


def check_unchanged(run: RunDir, cfg: RunConfig) -> None:
    """An existing group must have been made with the same settings (except where and how fast it runs)."""
    if not run.exists():
        return
    diff = _differences(run.read_config(), cfg)
    if diff:
        raise UserError(f"{run.path} was run with other settings ({', '.join(diff[:5])}); the bench config "
                        f"changed since: restore it, or run the bench into another --out")
