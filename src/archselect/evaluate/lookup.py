"""Benchmark metrics for a derived architecture, or a note saying why there are none (and how to get them)."""
from __future__ import annotations

import functools
import os
from typing import Any

from ..arch import Architecture
from .benchmark import IMPORT_HINT, NB201Table, find_table


@functools.lru_cache(maxsize=4)
def _table(path: str | None, env: str | None, cache: str | None) -> NB201Table | None:
    return find_table(path)


def table_for(path: str | None = None) -> NB201Table | None:
    """The NAS-Bench-201 table a run should use (explicit path, $ARCHSELECT_NB201, or the imported one); cached."""
    return _table(path, os.environ.get("ARCHSELECT_NB201"), os.environ.get("ARCHSELECT_CACHE"))


def benchmark_metrics(arch: Architecture, path: str | None = None) -> dict[str, Any]:
    if arch.space != "nb201":
        return {"note": f"no tabular benchmark for the {arch.space} space: retrain with `archselect train`"}
    table = table_for(path)
    if table is None:
        return {"note": IMPORT_HINT}
    return {**table.lookup(arch), "source": table.describe()}
