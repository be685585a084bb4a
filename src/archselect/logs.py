"""Logging: every module logs to `logging.getLogger(__name__)`; the handlers are configured here, once, by the CLI
(or the Python API): the console, and `log.txt` in the run directory a stage works on.

Prefixes name where a line comes from, without passing anything down: `with prefix("seed-1"):` makes every line
logged inside (in this thread or task) start with `[seed-1] `; prefixes nest (`[0] [0.1] ...` in a split search).
"""
from __future__ import annotations

import contextvars
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = "archselect"
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("archselect_log_prefix", default="")


class _AddPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.prefix = _prefix.get()
        return True


class _Stdout(logging.StreamHandler):
    """The console: whatever sys.stdout is at the time of each line (pytest and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: int = logging.INFO) -> logging.Logger:
    """Log archselect's messages to the console (stdout, one plain line each). Idempotent."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(prefix)s%(message)s"))
        handler.addFilter(_AddPrefix())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


@contextmanager
def prefix(label: str) -> Iterator[None]:
    token = _prefix.set(f"{_prefix.get()}[{label}] ")
    try:
        yield
    finally:
        _prefix.reset(token)


@contextmanager
def to_file(path: Path) -> Iterator[None]:
    """Also append every line logged inside to `path` (a run's log.txt), with its time."""
    logger = logging.getLogger(ROOT)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(prefix)s%(message)s"))
    handler.addFilter(_AddPrefix())
    logger.addHandler(handler)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
