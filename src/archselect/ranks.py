"""The ranks of a torchrun launch as an executor: rank 0 runs the program and hands out jobs, the others serve them.

`torchrun --nproc_per_node=K -m archselect select RUN ...` starts K processes. Rank 0 alone runs the selectors and
writes the run directory; ranks 1..K-1 wait in `serve()`. Whenever rank 0 has independent jobs (Shapley permutations,
the candidate removals of one DARTS-PT decision) it calls `RankExecutor.map`: rank r receives jobs r, r+K, ... (one
scatter), computes them and sends the results back (one gather); rank 0 computes its own share meanwhile. Closing the
executor tells the serving ranks to return, so rank 0 must close it on every path, errors included (it is a context
manager). Jobs travel pickled between processes of this launch only, never through a file.

Unlike `distributed.rank_map`, where every rank runs the same program and computes its share of every call (the
search), here only rank 0 knows what comes next (it fine-tunes between DARTS-PT decisions, checkpoints, resumes), so
the other ranks need nothing but the jobs.
"""
from __future__ import annotations

import traceback
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch.distributed as dist

from . import distributed
from .errors import UserError
from .executors import JobResult, interleave, job_id

_STOP = None  # the message that ends `serve`
# How long a serving rank waits for rank 0's next jobs: rank 0 fine-tunes between DARTS-PT decisions, which can take
# longer than the process group's default 30 minutes. A rank that dies ends the launch sooner (torchrun stops all).
SERVE_TIMEOUT = timedelta(hours=24)


def _group():
    """A group of every rank with the long timeout; a collective: rank 0 creates it in RankExecutor(), the others in
    serve()."""
    return dist.new_group(timeout=SERVE_TIMEOUT)


def _attempt(fn: Callable[[Any], Any], job: Any) -> tuple[str, Any, str | None]:
    """(status, value or error, traceback): a failing job is reported to rank 0, never left to hang the others."""
    try:
        return "ok", fn(job), None
    except UserError as e:
        return "user-error", str(e), None
    except Exception as e:
        return "error", f"{type(e).__name__}: {e}", traceback.format_exc()


def _result(jid: str, status: str, value: Any, detail: str | None) -> JobResult:
    if status == "ok":
        return JobResult(jid, True, value)
    return JobResult(jid, False, error=value if status == "error" else f"UserError: {value}", detail=detail)


def _run_share(message: tuple[Callable[[Any], Any], list[Any]]) -> list[tuple[str, Any, str | None]]:
    fn, jobs = message
    return [_attempt(fn, job) for job in jobs]


class RankExecutor:
    """Rank 0's side: jobs computed on every rank of the process group, results back on rank 0 in order."""

    name = "ranks"

    def __init__(self):
        if not distributed.is_main():
            raise RuntimeError("only rank 0 hands out jobs; the other ranks call ranks.serve()")
        self.world = distributed.world()
        self._open = distributed.active()
        self._group = _group() if self._open else None

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[JobResult]:
        jobs = list(jobs)
        if not self._open:
            raise RuntimeError("the rank executor is closed")
        dist.scatter_object_list([None], [(fn, jobs[r::self.world]) for r in range(self.world)], src=0,
                                 group=self._group)
        own = _run_share((fn, jobs[0::self.world]))
        gathered: list[Any] = [None] * self.world
        dist.gather_object(own, gathered, dst=0, group=self._group)
        outcomes = interleave(gathered, len(jobs))
        return [_result(job_id(job, i), *outcome) for i, (job, outcome) in enumerate(zip(jobs, outcomes))]

    def close(self) -> None:
        """Release the serving ranks (once)."""
        if self._open:
            self._open = False
            dist.scatter_object_list([None], [_STOP] * self.world, src=0, group=self._group)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve() -> None:
    """The other ranks' side: compute the share of every job list rank 0 hands out until it closes its executor."""
    group = _group()
    while True:
        box: list[Any] = [None]
        dist.scatter_object_list(box, None, src=0, group=group)
        if box[0] is _STOP:
            return
        dist.gather_object(_run_share(box[0]), None, dst=0, group=group)
