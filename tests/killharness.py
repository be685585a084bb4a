"""Kill a stage with SIGKILL at seeded random moments, resume it, and let the caller compare with an uninterrupted run.

`kill_and_resume(start, resume, ready, kills, seed)` starts `start` in a subprocess; once `ready()` is true (the stage has
written something worth resuming) it waits a seeded random delay, SIGKILLs it, then starts `resume` and repeats, up to
`kills` times; finally it lets `resume` run to completion. Returns the number of kills actually delivered (a process
that finishes before its kill point counts as not killed).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Callable

TIMEOUT = 300


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "archselect", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"archselect exited {proc.returncode}: {err.decode()[-2000:]}"


def kill_and_resume(start: list[str], resume: list[str], ready: Callable[[], bool], kills: int, seed: int,
                    max_delay: float = 1.5) -> int:
    rng = random.Random(seed)
    delivered, args = 0, start
    for _ in range(kills):
        proc = _spawn(args)
        deadline = time.time() + TIMEOUT
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:  # finished (or failed) before the kill point
            _finish(proc)
            return delivered
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        delivered += 1
        args = resume
    _finish(_spawn(args))
    return delivered
