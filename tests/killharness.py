"""Kill a stage with SIGKILL at seeded random moments, resume it, and let the caller compare with an uninterrupted run.

`kill_and_resume(start, resume, progress, kills, seed)` runs `archselect START` in a subprocess. Each kill point is
"the stage has saved new progress n times, then a seeded random delay": the harness waits until `progress()` has
changed n times since the process started (n seeded, 1..`spread`; a change is a new checkpoint, say), sleeps
`uniform(0, max_delay)` and sends SIGKILL, then starts `archselect RESUME` and repeats, up to `kills` times; finally
it lets `resume` run to completion. Waiting for new progress makes every kill land after real work, so a resume
always has something to resume; `spread` spreads the kills over the whole run and the delay over the next unit of
work (training, scoring, writing the next checkpoint).

Returns one `Kill` per delivered kill (a process that finishes before its kill point is not counted).
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TIMEOUT = 300
CHECKPOINT = re.compile(r"-\d{8}\.json$")  # runs.save_checkpoint's NAME-STEP.json


@dataclass
class Kill:
    delay: float   # seconds after the new progress appeared
    progress: Any  # progress() right after the kill: where it landed


def saved_files(root: Path, extra: tuple[str, ...] = ("selections/*.json", "**/leaf.json")) -> frozenset[str]:
    """Progress of a run directory: every checkpoint JSON under `root` (search, train, selector progress, supernet)
    and the finished-unit files matched by `extra`. A new or removed name means the stage saved something."""
    root = Path(root)
    names = {p for p in root.rglob("*.json") if CHECKPOINT.search(p.name)}
    names.update(p for pattern in extra for p in root.glob(pattern))
    return frozenset(str(p.relative_to(root)) for p in names)


def steps_done(progress: frozenset[str], name: str) -> int:
    """The newest step of checkpoint `name` in a `saved_files` snapshot (0 if none)."""
    steps = [int(p[-13:-5]) for p in progress if Path(p).name.startswith(f"{name}-") and CHECKPOINT.search(p)]
    return max(steps, default=0)


class FinishedFiles:
    """Files a stage has finished must never be rewritten by a resume: snapshot them after each kill (their
    modification times and bytes), check at the end that each is still there, unchanged."""

    def __init__(self, root: Path, patterns: tuple[str, ...]):
        self.root, self.patterns, self.seen = Path(root), patterns, {}

    def snapshot(self) -> None:
        for pattern in self.patterns:
            for p in self.root.glob(pattern):
                self.seen.setdefault(p, (p.stat().st_mtime_ns, p.read_bytes()))

    def rewritten(self) -> list[str]:
        return [str(p) for p, (t, data) in self.seen.items()
                if not p.exists() or p.stat().st_mtime_ns != t or p.read_bytes() != data]


def _spawn(args: list[str], err) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "archselect", *args], stdout=subprocess.DEVNULL, stderr=err,
                            env=env)


def _check(proc: subprocess.Popen, err) -> None:
    err.seek(0)
    assert proc.returncode == 0, f"archselect exited {proc.returncode}: {err.read().decode()[-2000:]}"


def _wait_for_progress(proc: subprocess.Popen, progress: Callable[[], Any], changes: int) -> None:
    last, deadline = progress(), time.time() + TIMEOUT
    while changes and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # a poll costs ~1 ms on a bench directory
        now = progress()
        if now != last:
            last, changes = now, changes - 1


def kill_and_resume(start: list[str], resume: list[str], progress: Callable[[], Any], kills: int, seed: int,
                    max_delay: float = 1.0, spread: int = 1,
                    after_kill: Callable[[], None] | None = None) -> list[Kill]:
    """Start, kill up to `kills` times (each after 1..`spread` changes of progress plus a seeded delay), resume to
    completion. `after_kill()` runs after each kill, before the resume (e.g. `FinishedFiles.snapshot`)."""
    rng = random.Random(seed)
    delivered: list[Kill] = []
    args = start
    with tempfile.TemporaryFile() as err:
        for _ in range(kills):
            proc = _spawn(args, err)
            _wait_for_progress(proc, progress, rng.randint(1, spread))
            delay = rng.uniform(0.0, max_delay)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=TIMEOUT)
            if proc.returncode != -signal.SIGKILL:  # finished (or failed) before its kill point
                _check(proc, err)
                return delivered
            delivered.append(Kill(delay, progress()))
            if after_kill is not None:
                after_kill()
            args = resume
        proc = _spawn(args, err)
        proc.wait(timeout=TIMEOUT)
        _check(proc, err)
    return delivered


def search_survives_kills(root: Path, args: list[str], kills: int, seed: int, spread: int, what: str = "search"
                          ) -> list[Kill]:
    """`archselect search ARGS` into ROOT/reference uninterrupted and into ROOT/killed with up to `kills` SIGKILLs
    (each resumed with --resume); asserts that a kill was delivered and that both runs end with the same metrics and
    the same saved supernet. Returns the kills (ROOT/killed and ROOT/reference stay for further checks)."""
    import torch

    from archselect.cli import main
    from archselect.files import load_latest_checkpoint
    from test_cli import comparable_metrics

    reference, killed = root / "reference", root / "killed"
    assert main(["search", "--out", str(reference), *args]) == 0
    delivered = kill_and_resume(["search", "--out", str(killed), *args], ["search", "--resume", str(killed)],
                                progress=lambda: saved_files(killed), kills=kills, seed=seed, max_delay=0.5,
                                spread=spread)
    assert delivered, f"{what}: no kill was delivered; make the tiny run longer"
    assert comparable_metrics(killed) == comparable_metrics(reference)
    a = load_latest_checkpoint(killed, "supernet")["supernet"]
    b = load_latest_checkpoint(reference, "supernet")["supernet"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    return delivered


# -- kills inside a write (tests/killpoint.py) -------------------------------------------------------------------------

KILLPOINT = Path(__file__).with_name("killpoint.py")
PHASES = ("before", "torn", "after")


def _spawn_killpoint(n: int, phase: str, args: list[str], err) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(KILLPOINT), str(n), phase, *args], stdout=subprocess.DEVNULL,
                            stderr=err, env=env)


def count_writes(args: list[str]) -> int:
    """The file writes (atomic writes and metrics lines) an uninterrupted `archselect ARGS` makes."""
    with tempfile.TemporaryFile() as err:
        proc = _spawn_killpoint(0, "before", args, err)
        proc.wait(timeout=TIMEOUT)
        _check(proc, err)
        err.seek(0)
        return int(re.findall(rb"writes: (\d+)", err.read())[-1])


def write_kill_point(seed: int, writes: int) -> tuple[int, str]:
    """Seed -> (N, PHASE), distinct for distinct seeds (a seeded permutation of every write and phase of the run):
    seed 0 lands in the first three writes (the run's config, manifest and first records: the window before the
    first checkpoint), the others anywhere in the run."""
    points = [(n, phase) for n in range(1, writes + 1) for phase in PHASES]
    random.Random(writes).shuffle(points)
    early = next(p for p in points if p[0] <= 3)
    rest = [p for p in points if p != early]
    return early if seed == 0 else rest[(seed - 1) % len(rest)]


def kill_in_write(start: list[str], resume: Callable[[], list[str]], n: int, phase: str) -> bool:
    """SIGKILL `archselect START` in its N-th write at PHASE, then run `resume()` (the command a user would run
    next, which may depend on what the kill left) to completion. True if the kill was delivered."""
    with tempfile.TemporaryFile() as err:
        proc = _spawn_killpoint(n, phase, start, err)
        proc.wait(timeout=TIMEOUT)
        if proc.returncode != -signal.SIGKILL:
            _check(proc, err)
            return False
        proc = _spawn(resume(), err)
        proc.wait(timeout=TIMEOUT)
        _check(proc, err)
    return True
