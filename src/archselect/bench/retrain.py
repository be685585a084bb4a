"""Optional bench step: retrain each derived architecture from scratch on the search dataset (`archselect train`;
run by pipeline/bench_runner.py) and record its test accuracy beside the benchmark's numbers.

Each selector's retraining is its own run directory, GROUP/retrain/<selector>/, so it resumes like any other run and
a finished one (its result file) is never redone.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_json
from ..runs import RunDir

MISSING = ("bench retrain.enabled needs `archselect train` (archselect.evaluate.train), which this installation "
           "lacks; set retrain.enabled=false")


def available() -> bool:
    return importlib.util.find_spec("archselect.evaluate.train") is not None


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
    return math.isfinite(_accuracy(run.retrain(selector).result_file))


def read_retrained(run: RunDir) -> dict[str, float]:
    if not run.retrain_root.is_dir():
        return {}
    found = {p.name: _accuracy(RunDir(p).result_file) for p in sorted(run.retrain_root.iterdir()) if p.is_dir()}
    return {k: v for k, v in found.items() if math.isfinite(v)}
