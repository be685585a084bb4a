"""Independent jobs on an existing execution engine: one after another in this process (default), or as Ray tasks
on a local Ray instance or a Ray cluster.

A job is a picklable value (a dict of config and paths) and `fn` a module-level function taking one job. Jobs write
their results into their own run directory and return a small summary, so a run looks the same whichever engine ran
it. A job that fails is retried (Ray: `max_retries`, for crashes and exceptions alike, except `UserError`, which
would fail again) and, if it still fails, comes back as a `JobResult` carrying its id and error: never silently lost.

Ray is optional: it is imported only when a RayExecutor runs jobs (`pip install 'archselect[ray]'`).
"""
from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence

from .errors import UserError

RAY_HINT = "the ray executor needs Ray: pip install 'archselect[ray]'"


@dataclass
class JobResult:
    id: str
    ok: bool
    value: Any = None          # what fn returned (a small summary)
    error: str | None = None   # "ExceptionType: message" when the job failed after its retries
    detail: str | None = None  # the traceback, for the record

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[JobResult]:
        """One JobResult per job, in the order of `jobs`."""

    def close(self) -> None:
        """Release the engine (a no-op for engines this executor did not start)."""


def job_id(job: Any, index: int) -> str:
    return str(job["id"]) if isinstance(job, dict) and "id" in job else str(index)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class SequentialExecutor:
    """Each job in turn, in this process. Not retried: a job that failed here would fail the same way again."""

    name = "sequential"

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[JobResult]:
        results = []
        for i, job in enumerate(jobs):
            try:
                results.append(JobResult(job_id(job, i), True, fn(job)))
            except Exception as e:  # reported in the results, with its traceback, rather than ending the other jobs
                results.append(JobResult(job_id(job, i), False, error=_error_text(e), detail=traceback.format_exc()))
        return results

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ray_call(fn: Callable[[Any], Any], job: Any) -> tuple[str, Any]:
    """Runs inside a Ray worker. A UserError is returned, not raised, so Ray does not retry what cannot succeed."""
    try:
        return "ok", fn(job)
    except UserError as e:
        return "user-error", str(e)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(RAY_HINT) from None
    return ray


class RayExecutor:
    """Jobs as Ray remote tasks. `address=None` starts a local Ray instance with `num_cpus` CPUs (default: all);
    otherwise connects to a running cluster ("auto", "HOST:6379", or "ray://HOST:10001" with Ray Client). Each job
    asks for `cpus_per_job` CPUs and `gpus_per_job` GPUs, so Ray runs as many at once as the cluster holds."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 2,
                 cpus_per_job: float = 1, gpus_per_job: float = 0):
        if max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {max_retries}")
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job
        self._ray = import_ray()  # fail before any work when Ray is missing
        self._started = False

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address is None:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False)
        else:
            ray.init(address=self.address)
        self._started = True

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[JobResult]:
        ray = self._ray
        self._connect()
        task = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job, max_retries=self.max_retries,
                          retry_exceptions=True)(_ray_call)
        refs = [task.remote(fn, job) for job in jobs]
        return [self._collect(ref, job_id(job, i)) for i, (job, ref) in enumerate(zip(jobs, refs))]

    def _collect(self, ref, jid: str) -> JobResult:
        try:
            status, value = self._ray.get(ref)
        except Exception as e:  # RayTaskError after the retries, a crashed worker, a lost node, ...
            cause = getattr(e, "cause", None) or e
            return JobResult(jid, False, error=_error_text(cause), detail=str(e))
        if status == "ok":
            return JobResult(jid, True, value)
        return JobResult(jid, False, error=f"UserError: {value}")

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


EXECUTORS = ("sequential", "ray")


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None, max_retries: int = 2,
                  cpus_per_job: float = 1, gpus_per_job: float = 0) -> SequentialExecutor | RayExecutor:
    if name == "sequential":
        if address:
            raise UserError("--ray-address needs --executor ray")
        return SequentialExecutor()
    if name == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus, max_retries=max_retries, cpus_per_job=cpus_per_job,
                           gpus_per_job=gpus_per_job)
    raise UserError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")


# -- independent evaluations split over workers ----------------------------------------------------------------------

def interleave(parts: Sequence[Sequence[Any]], n: int) -> list[Any]:
    """Undo round-robin sharding: parts[w] holds items w, w+W, w+2W, ...; returns the n items in order."""
    w = len(parts)
    out = [None] * n
    for i, part in enumerate(parts):
        out[i::w] = part
    return out


def _run_shard(shard: dict[str, Any]) -> list[Any]:
    fn = shard["fn"]
    return [fn(x) for x in shard["items"]]


def split_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, executor: Executor | None = None
              ) -> list[Any]:
    """`[fn(x) for x in items]` computed by `workers` jobs on `executor`, worker w taking items w, w+W, w+2W, ...;
    the results come back in the original order, so the list is the sequential one whenever fn(x) depends on x alone
    (a Shapley permutation drawn from (seed, j), one perturbation of one edge). Raises if any shard failed."""
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    items = list(items)
    workers = min(workers, max(len(items), 1))
    executor = executor or SequentialExecutor()
    shards = [{"id": f"shard-{w}", "fn": fn, "items": items[w::workers]} for w in range(workers)]
    results = executor.map(_run_shard, shards)
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers} shards failed: " + "; ".join(f"{r.id}: {r.error}"
                                                                                     for r in failed))
    return interleave([r.value for r in results], len(items))
