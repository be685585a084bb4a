"""Logging: every module logs to `logging.getLogger(__name__)`; the handlers are configured here, once, by the CLI
(or the Python API): the console, and `log.txt` in the run directory a stage works on.

Prefixes name where a line comes from, without passing anything down: `with prefix("seed-1"):` makes every line
logged inside (in this thread or task) start with `[seed-1] `; prefixes nest (`[0] [0.1] ...` in a split search).

Progress of a long loop is a log line too, at most one every 10 s (`Progress`, `track`), so that the console, CI logs
and log.txt all show a slow step moving, with its ETA, without a line per iteration. Deep inner loops (an evaluator's
batches, a Hessian-vector product) call `tick()` to count their units in the innermost active Progress. A helper
thread writes the line when one is due, so it comes on time however long one unit takes; a step that is one long call
with nothing to count (writing a bench's report) runs inside `heartbeat()`.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from . import distributed

ROOT = "archselect"
EVERY = 10.0  # seconds: the longest a long step stays silent
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("archselect_log_prefix", default="")
_active: contextvars.ContextVar[tuple["Progress", ...]] = contextvars.ContextVar("archselect_progress", default=())
T = TypeVar("T")


class _AddPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.prefix = _prefix.get()
        _REAL.last = time.monotonic()
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


def percent(fraction: float) -> str:
    """An accuracy as users read it (files keep fractions): 0.93274 -> '93.27%'."""
    return f"{100 * fraction:.2f}%"


# -- progress ---------------------------------------------------------------------------------------------------------

def duration(seconds: float) -> str:
    """'8 s', '1 min 42 s', '2 h 05 min'."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Timer:
    """When the last line was written. Every Progress on the real clock shares one, which every archselect log line
    resets (_AddPrefix): progress lines fill silences, they never add to a step that already talks."""

    def __init__(self, clock: Callable[[], float]):
        self.clock, self.last = clock, clock()


_REAL = _Timer(time.monotonic)


class Progress:
    """Progress lines of a long loop, through the `archselect` logger: `shapley: permutation 12/50, 34 s elapsed,
    ETA 1 min 42 s` (no ETA without a total), written when nothing was logged for `every` seconds (the first `every`
    after the start at the earliest; from a helper thread on the real clock), and a closing line if the loop took
    longer than that; a short loop says nothing. Use as a context manager, calling `update()` per unit done; `done`
    units were done before (a resume: the ETA counts only this session's pace). `final=False` drops the closing line
    (for loops that log their own summary). Only torchrun's rank 0 speaks (the others run the same loops). `clock` is
    for tests (no helper thread then); a Progress entered inside another shares its clock."""

    def __init__(self, what: str, total: int | None = None, unit: str = "step", *, done: int = 0, final: bool = True,
                 every: float = EVERY, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.count, self.final = what, total, unit, done, final
        self.quiet = not distributed.is_main()
        self.every, self._first, self._clock = every, done, clock
        self._timer: _Timer | None = None
        self._nest: list[Progress] = [self]  # this one and those entered inside it, innermost last
        self._beat: _Beat | None = None
        self.start = 0.0

    def __enter__(self) -> "Progress":
        outer = _active.get()
        if outer:
            self._timer, self._nest = outer[-1]._timer, outer[-1]._nest
            self._nest.append(self)
        else:
            self._timer = _REAL if self._clock is time.monotonic else _Timer(self._clock)
        self.start = self._timer.clock()
        if not outer:  # a step's first line comes `every` after it starts, however long the step before was silent
            self._timer.last = self.start
            if self._timer is _REAL and not self.quiet:  # a line on time however long one unit takes
                self._beat = _Beat(lambda: self._nest[-1].line(time.monotonic()), self.every,
                                   min(1.0, self.every / 4)).__enter__()
        _active.set((*outer, self))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _active.set(tuple(p for p in _active.get() if p is not self))
        if self in self._nest[1:]:
            self._nest.remove(self)
        if self._beat is not None:
            self._beat.__exit__(None, None, None)
        elapsed = self._timer.clock() - self.start
        if exc_type is None and self.final and not self.quiet and elapsed >= self.every:
            logging.getLogger(ROOT).info(f"{self.what}: {self._position()}, done in {duration(elapsed)}")

    def update(self, n: int = 1) -> None:
        self.count += n
        self.poll()

    def poll(self) -> None:
        """Write a line if one is due."""
        timer = self._timer
        if timer is None:
            return
        now = timer.clock()
        if now - timer.last >= self.every:
            timer.last = now
            if not self.quiet:
                logging.getLogger(ROOT).info(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.what}: {self._position()}, {duration(elapsed)} elapsed"
        done = self.count - self._first
        if self.total is not None and done > 0 and self.count < self.total:
            text += f", ETA {duration(elapsed / done * (self.total - self.count))}"
        return text

    def _position(self) -> str:
        return f"{self.unit} {self.count}" + (f"/{self.total}" if self.total is not None else "")


def tick(n: int = 0) -> None:
    """From inside a long loop: advance the innermost active Progress by `n` units (0: only let it write a line if one
    is due). Nothing when no Progress is active (e.g. in a worker process)."""
    active = _active.get()
    if active:
        active[-1].update(n)


def track(items: Iterable[T], what: str, total: int | None = None, unit: str = "step", **kwargs) -> Iterator[T]:
    """`items`, one Progress unit each (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()


class _Beat:
    """A helper thread that writes `line()` whenever nothing was logged for `every` seconds (in the context, hence
    with the prefix, of the thread that starts it)."""

    def __init__(self, line: Callable[[], str], every: float = EVERY, poll: float = 1.0):
        self.line, self.every, self.poll, self.stop = line, every, poll, threading.Event()
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.poll):
            now = time.monotonic()
            if now - _REAL.last >= self.every:
                _REAL.last = now
                logging.getLogger(ROOT).info(self.line())

    def __enter__(self) -> "_Beat":
        _REAL.last = max(_REAL.last, time.monotonic())  # the first line `every` after the start
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def heartbeat(what: str, every: float = EVERY, poll: float = 1.0) -> _Beat:
    """For one long call that cannot report its own progress: `with heartbeat("report"):` writes `report: 40 s
    elapsed` whenever nothing was logged for `every` seconds."""
    start = time.monotonic()
    return _Beat(lambda: f"{what}: {duration(time.monotonic() - start)} elapsed", every if distributed.is_main()
                 else float("inf"), poll)
