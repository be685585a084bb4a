"""The bench configuration: which (space, optimizer, split, selector, seed) cells to run, on what base run config, with
which diagnostics. YAML (`yaml.safe_load`) plus `key=value` overrides, validated by `config.build` like a run config.

Every cell's run config is `run` (the keys of a search config), then the axis entry's own `overrides`, then the cell's
coordinates (`space.name`, `search.optimizer`, `seed`, the selectors).
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, build, check, read_yaml
from ..errors import UserError
from ..executors import EXECUTORS
from ..optimizers import OPTIMIZERS
from ..selection.variants import make_selectors
from ..spaces import SPACES
from .retrain import MISSING, available

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass
class AxisEntry:
    """One value of a matrix axis. `name` is the registered name (space, optimizer or split method); `label` names
    the row in tables and the run directory (default: the name); `overrides` are run-config `key=value` settings that
    apply to this entry only (e.g. a different epoch count for one optimizer)."""

    name: str
    label: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass
class DiagnosticsConfig:
    correlation_samples: int = 50          # NB201 cells sampled for the supernet-benchmark rank correlation (0: off)
    correlation_images: int | None = None  # search-validation images per sampled architecture (None: the whole split)
    correlation_bn: str = "train"          # train: batch statistics (on a copy) | eval: the running statistics
    hessian: bool = True                   # record the dominant α-Hessian eigenvalue each search epoch (metrics.jsonl)
    hessian_batches: int = 2               # search-validation batches averaged in that Hessian
    hessian_iters: int = 20                # power-iteration steps at most


@dataclass
class RetrainConfig:
    enabled: bool = False                  # retrain each derived cell on the search dataset (`archselect train`)
    overrides: list[str] = field(default_factory=list)  # `key=value` settings for that training


@dataclass
class BenchConfig:
    name: str = "bench"
    description: str = ""
    run: dict = field(default_factory=dict)             # the base run config (same keys as a search config)
    seeds: list[int] = field(default_factory=lambda: [0])
    spaces: list[str | AxisEntry] = field(default_factory=lambda: ["nb201"])
    optimizers: list[str | AxisEntry] = field(default_factory=lambda: ["darts"])
    splits: list[str | AxisEntry] = field(default_factory=lambda: ["none"])  # split.method: none | gm | exhaustive
    selectors: list[str] = field(default_factory=lambda: ["magnitude"])  # registered selectors or run.select.variants
    exclude: list[dict] = field(default_factory=list)   # groups left out, e.g. {optimizer: shapley, split: gm}
    executor: str = "sequential"                        # sequential (one group after another) | ray (parallel groups)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    published: bool = True                              # print the papers' numbers beside ours


def _entries(values: list, axis: str) -> list[AxisEntry]:
    out = [AxisEntry(v) if isinstance(v, str) else v for v in values]
    if not out:
        raise UserError(f"bench {axis}: needs at least one entry")
    keys = [e.key for e in out]
    for k in keys:
        if not _LABEL.fullmatch(k):
            raise UserError(f"bench {axis}: label {k!r} must be letters, digits, '.', '_', '+' or '-'")
    if len(set(keys)) != len(keys):
        raise UserError(f"bench {axis}: labels must be unique, got {', '.join(keys)} (give entries a `label`)")
    return out


def load_bench_config(path: str | Path | None, overrides: list[str] = ()) -> BenchConfig:
    data = read_yaml(path) if path else {}
    cfg = build(BenchConfig, apply_overrides(data, list(overrides)))
    cfg.spaces = _entries(cfg.spaces, "spaces")
    cfg.optimizers = _entries(cfg.optimizers, "optimizers")
    cfg.splits = _entries(cfg.splits, "splits")
    _check(cfg)
    return cfg


def _check(cfg: BenchConfig) -> None:
    d = cfg.diagnostics
    rules = [
        (bool(cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds), "bench seeds: needs distinct seeds"),
        (bool(cfg.selectors) and len(set(cfg.selectors)) == len(cfg.selectors),
         "bench selectors: needs distinct names"),
        (d.correlation_samples >= 0, "bench diagnostics.correlation_samples must be >= 0"),
        (d.correlation_images is None or d.correlation_images > 0, "bench diagnostics.correlation_images must be > 0"),
        (d.correlation_bn in ("train", "eval"), "bench diagnostics.correlation_bn: choose train or eval"),
        (d.hessian_batches > 0 and d.hessian_iters > 0, "bench diagnostics.hessian_batches/_iters must be > 0"),
        (cfg.executor in EXECUTORS, f"bench executor {cfg.executor!r}: choose {' or '.join(EXECUTORS)}"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)
    if cfg.retrain.enabled:
        if not available():
            raise UserError(MISSING)
    check_exclude(cfg)
    check_registered(cfg)


EXCLUDE_AXES = ("space", "optimizer", "split", "seed")


def axis_values(cfg: BenchConfig) -> dict[str, list]:
    return {"space": [e.key for e in cfg.spaces], "optimizer": [e.key for e in cfg.optimizers],
            "split": [e.key for e in cfg.splits], "seed": list(cfg.seeds)}


def check_exclude(cfg: BenchConfig) -> None:
    """Each `exclude` entry names values (labels) of the axes; a value no axis has is a typo, not a no-op."""
    values = axis_values(cfg)
    for i, rule in enumerate(cfg.exclude):
        where = f"bench exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            raise UserError(f"{where} must map axes ({', '.join(EXCLUDE_AXES)}) to a value, e.g. "
                            f"{{optimizer: shapley, split: gm}}")
        for axis, value in rule.items():
            if axis not in EXCLUDE_AXES:
                raise UserError(f"{where}: unknown axis {axis!r}; choose from {', '.join(EXCLUDE_AXES)}")
            if value not in values[axis]:
                raise UserError(f"{where}: {axis} {value!r} is not in the bench's {axis}s "
                                f"({', '.join(map(str, values[axis]))})")
    if all(excluded(cfg, dict(zip(EXCLUDE_AXES, c))) for c in itertools.product(*values.values())):
        raise UserError("bench exclude leaves no group to run")


def excluded(cfg: BenchConfig, coordinates: dict[str, Any]) -> bool:
    """Whether a group at these coordinates (axis -> label) matches an `exclude` entry (every key of it)."""
    return any(all(coordinates[a] == v for a, v in rule.items()) for rule in cfg.exclude)


def check_registered(cfg: BenchConfig) -> None:
    """Fail before any work when the config names a space, optimizer or selector that is not registered (split
    methods are checked by the run config's own validation)."""
    for registry, entries in ((SPACES, cfg.spaces), (OPTIMIZERS, cfg.optimizers)):
        for e in entries:
            registry.get(e.name)  # UserError naming the unknown entry and the known ones
    for split in cfg.splits:  # builds a run config per split: validates `run` and the split method before any work
        run = run_config(cfg, cfg.spaces[0], cfg.optimizers[0], split, cfg.seeds[0])
        make_selectors(cfg.selectors, run.select)  # selectors and variants (run.select.variants), with their options


def run_config(cfg: BenchConfig, space: AxisEntry, optimizer: AxisEntry, split: AxisEntry, seed: int) -> RunConfig:
    """The run config of one supernet group (every selector of the group shares it)."""
    data: dict[str, Any] = copy.deepcopy(cfg.run)
    overrides = [*space.overrides, *optimizer.overrides, *split.overrides,
                 f"space.name={space.name}", f"search.optimizer={optimizer.name}", f"seed={seed}"]
    if split.name != "none":
        overrides.append(f"split.method={split.name}")
    apply_overrides(data, overrides)
    data.setdefault("select", {})["selectors"] = list(cfg.selectors)
    search = data.setdefault("search", {})
    if cfg.diagnostics.hessian:
        search.update(hessian_eig=True, hessian_batches=cfg.diagnostics.hessian_batches,
                      hessian_iters=cfg.diagnostics.hessian_iters)
    run = build(RunConfig, data, "run")
    check(run)
    return run
