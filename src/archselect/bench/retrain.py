"""Optional bench step: retrain each derived architecture from scratch on the search dataset (`archselect train`,
evaluate/train.py) and record its test accuracy beside the benchmark's numbers.

Each selector's retraining is its own run directory, GROUP/retrain/<selector>/, so it resumes like any other run and
a finished one (its result file) is never redone.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..runs import RunDir, read_json

RETRAIN_DIR = "retrain"
RESULT_FILE = "result.json"
MISSING = ("bench retrain.enabled needs `archselect train` (archselect.evaluate.train), which this installation "
           "lacks; set retrain.enabled=false")


def available() -> bool:
    return importlib.util.find_spec("archselect.evaluate.train") is not None


def retrain_dir(run: RunDir, selector: str) -> Path:
    return run.file(RETRAIN_DIR, selector)


def _accuracy(path: Path) -> float:
    """The retrained test accuracy in %, or NaN when the run is unfinished or its result unreadable."""
    if not path.is_file():
        return math.nan
    try:
        result: Any = read_json(path, "retrain result")
    except UserError:
        return math.nan
    acc = result.get("test_acc") if isinstance(result, dict) else None
    return 100.0 * float(acc) if isinstance(acc, (int, float)) else math.nan


def retrain_done(run: RunDir, selector: str) -> bool:
    return math.isfinite(_accuracy(retrain_dir(run, selector) / RESULT_FILE))


def read_retrained(run: RunDir) -> dict[str, float]:
    base = run.file(RETRAIN_DIR)
    if not base.is_dir():
        return {}
    found = {p.name: _accuracy(p / RESULT_FILE) for p in sorted(base.iterdir()) if p.is_dir()}
    return {k: v for k, v in found.items() if math.isfinite(v)}


def retrain_selections(cfg, run: RunDir, selectors: list[str], overrides: list[str],
                       log: Callable[[str], None]) -> list[str]:
    """Retrain every selector's architecture that has no finished retraining yet; returns those it trained."""
    if not available():
        raise UserError(MISSING)
    from ..evaluate.train import train_command
    from .matrix import selection_path

    done = []
    for name in selectors:
        if retrain_done(run, name):
            continue
        target = retrain_dir(run, name)
        started = RunDir(target).exists()  # an interrupted retraining resumes from its checkpoint
        log(f"retraining the {name} architecture{' (resuming)' if started else ''}")
        train_command(str(selection_path(run, name)), None if started else str(run.file("config.yaml")),
                      None if started else str(target), str(target) if started else None, overrides,
                      seed=cfg.seed, device=cfg.device, log=log)
        done.append(name)
    return done
