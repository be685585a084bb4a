"""Running a set of independent jobs on an executor (executors.py), recorded so that a rerun finishes what is missing.

A job is a picklable dict with an "id"; a job function is a module-level function of one job that works in its own
run directory and returns a small summary. A job is idempotent, so an engine may retry it and a user may rerun a
whole set: a finished job returns its recorded result, an interrupted one resumes from its last checkpoint. Each job
logs under its id (`[seed-1] epoch 1/10 ...`). Every set of independent work runs through `run_jobs`: the searches
of `--seeds` (pipeline.py), the leaves of a split search (fewshot/schedule.py), the groups of a bench
(bench/matrix.py).

A recorded set lives in one root directory:

    ROOT/jobs.json      the jobs (written first: `archselect search --resume ROOT` reruns the unfinished ones)
    ROOT/<job id>/      one ordinary run directory per job (seed-0/, seed-1/, ...)
    ROOT/summary.json   one line per job: its summary, or its error after the retries
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

from . import logs
from .errors import UserError
from .executors import Executor, JobResult
from .files import atomic_write_json, read_json
from .runs import RunDir

JobFunction = Callable[[dict[str, Any]], dict[str, Any]]


def _labelled(fn: JobFunction, job: dict[str, Any]) -> dict[str, Any]:
    """`fn(job)` with console logging set up (a Ray worker is a fresh process) and every line prefixed by the job's
    id."""
    logs.setup()
    with logs.prefix(job["id"]):
        return fn(job)


def run_jobs(executor: Executor, fn: JobFunction, jobs: list[dict[str, Any]], root: RunDir | None = None,
             record_jobs: bool = False) -> list[JobResult]:
    """Run `fn` on every job on `executor`; with `root`, record each one's summary or error in ROOT/summary.json (and,
    with `record_jobs`, the jobs first in ROOT/jobs.json, for a --resume). Returns the results, in order."""
    if root is not None and record_jobs:
        atomic_write_json(root.jobs_file, {"jobs": jobs})
    results = executor.map(partial(_labelled, fn), jobs)
    if root is not None:
        atomic_write_json(root.summary_file, {"executor": executor.name, "results": [r.to_dict() for r in results]})
    return results


def read_jobs(root: RunDir, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The recorded jobs of ROOT, each of one of `kinds`."""
    data = read_json(root.jobs_file, "job list")
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and j.get("kind") in kinds and isinstance(
            j.get("id"), str) for j in jobs):
        raise UserError(f"{root.jobs_file} is damaged: expected a list of jobs of kinds {', '.join(kinds)}")
    return jobs
