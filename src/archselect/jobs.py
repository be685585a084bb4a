"""Independent jobs that an executor (executors.py) may run anywhere: each is a module-level function of one picklable
dict that works in its own run directory and returns a small summary.

A job is idempotent, so an engine may retry it and a user may rerun a whole set: a finished job returns its recorded
result, an interrupted one resumes from its last checkpoint. A set of jobs lives in one root directory:

    ROOT/jobs.json      the jobs (written first: `archselect search --resume ROOT` reruns the unfinished ones)
    ROOT/<job id>/      one ordinary run directory per job (seed-0/, seed-1/, ...)
    ROOT/summary.json   one line per job: its summary, or its error after the retries

Other independent work plugs in the same way: a function of one dict in JOB_KINDS. `leaf` finishes one few-shot
sub-supernet (fewshot.schedule.run_leaf); the bench matrix runs its groups through an executor itself
(bench.matrix.run_group).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, build, check, to_dict
from .errors import UserError
from .executors import Executor, JobResult
from .runs import RunDir, atomic_write_json, read_json

JOBS_FILE, SUMMARY_FILE = "jobs.json", "summary.json"


def search_job(job: dict[str, Any]) -> dict[str, Any]:
    """One complete search (train, save the supernet, select) into job["out"]."""
    from .cli import search_into
    from .config import load_config
    from .environment import choose_device, configure

    run = RunDir(job["out"])
    if not run.file("result.json").exists():
        resume = run.exists()  # an earlier attempt got this far: continue from its checkpoint and its config
        cfg = load_config(run.file("config.yaml")) if resume else _config(job["config"])
        device = choose_device(cfg.device)
        configure(cfg.seed, cfg.deterministic, cfg.threads)
        search_into(run, cfg, device, resume=resume, log=lambda text: print(f"[{job['id']}] {text}", flush=True))
    return _search_summary(run)


def leaf_job(job: dict[str, Any]) -> dict[str, Any]:
    """One few-shot leaf of the split search in job["root"]: finish its search, select, score (idempotent)."""
    from .fewshot.schedule import run_leaf

    return run_leaf(_config(job["config"]), job["root"], job["id"], job["device"],
                    log=lambda text: print(f"[{job['id']}] {text}", flush=True))


def leaf_jobs(cfg: RunConfig, root: Path, leaves: list[str], device: str) -> list[dict[str, Any]]:
    """The leaves of a split search as jobs: `executor.map(run_one, leaf_jobs(...))` in place of running them in turn."""
    return [{"id": leaf, "kind": "leaf", "root": str(root), "device": device, "config": to_dict(cfg)}
            for leaf in leaves]


JOB_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"search": search_job, "leaf": leaf_job}


def _config(data: dict[str, Any]) -> RunConfig:
    cfg = build(RunConfig, data)
    check(cfg)
    return cfg


def _search_summary(run: RunDir) -> dict[str, Any]:
    result = read_json(run.file("result.json"), "search result")
    return {"run": str(run.path), "architecture": result["architecture"]["text"],
            "selections": result.get("selections", {}),
            "search_valid_acc": result.get("search", {}).get("search_valid_acc"),
            "benchmark": {k: v for k, v in result.get("benchmark", {}).items() if isinstance(v, (int, float))}}


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def seed_jobs(cfg: RunConfig, root: Path, seeds: str) -> list[dict[str, Any]]:
    """One search job per seed, the same config otherwise, into ROOT/seed-N/."""
    if Path(root, JOBS_FILE).exists():
        raise UserError(f"{root} already holds a set of jobs; continue it with --resume {root} or choose another --out")
    return [{"id": f"seed-{s}", "kind": "search", "out": str(Path(root, f"seed-{s}")),
             "config": to_dict(dataclasses.replace(cfg, seed=s))} for s in _parse_seeds(seeds)]


def read_jobs(root: Path) -> list[dict[str, Any]]:
    data = read_json(Path(root, JOBS_FILE), "job list")
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and j.get("kind") in JOB_KINDS for j in jobs):
        raise UserError(f"{Path(root, JOBS_FILE)} is damaged: expected a list of jobs of kinds {', '.join(JOB_KINDS)}")
    return jobs


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """The single function an executor ships: dispatch on the job's kind (a fixed table, never a name lookup)."""
    return JOB_KINDS[job["kind"]](job)


def run_jobs(executor: Executor, jobs: list[dict[str, Any]], root: Path) -> list[JobResult]:
    """Record the jobs, run them on `executor`, record each one's summary or error; returns the results."""
    root = Path(root)
    atomic_write_json(root / JOBS_FILE, {"jobs": jobs})
    results = executor.map(run_one, jobs)
    atomic_write_json(root / SUMMARY_FILE, {"executor": executor.name, "results": [r.to_dict() for r in results]})
    return results
