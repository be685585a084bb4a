"""`archselect bench`: every supernet group of a bench matrix (bench/matrix.py) through the pipeline's stages, as
independent jobs that resume.

Each step of a group is skipped when its output is already there and valid, so rerunning a bench finishes what is
missing and recomputes nothing: an interrupted search resumes from its last checkpoint, a finished cell (its
selection file) is never redone. `run_group` is a module-level function of one picklable dict, so an executor may run
groups in parallel, on Ray workers or elsewhere.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from ..bench.config import BenchConfig, load_bench_config
from ..bench.matrix import cell_done, cell_dir, check_unchanged, group_job, groups, read_diagnostics, supernet_done
from ..bench.aggregate import write_tables
from ..bench.retrain import retrain_done
from ..config import RunConfig, build, check
from ..errors import UserError
from ..evaluate.diagnostics import rank_correlation
from ..evaluate.lookup import table_for
from ..executors import JobResult, make_executor
from ..files import atomic_write_bytes, atomic_write_json
from ..fewshot.schedule import reselect
from ..jobs import run_jobs
from ..reporting.html import write_bench_report
from ..runs import BenchDir, RunDir, manifest
from ..selection.stage import build_context
from .stages import _started, _writing, search_run, train, write_result

log = logging.getLogger(__name__)


def run_bench(config: str | Path | BenchConfig, out: str | Path | None = None, *, overrides=(), executor: str | None = None,
          ray_address: str | None = None, device: str | None = None, report: bool = True
          ) -> tuple[BenchDir, list[JobResult]]:
    """Run every unfinished group of the bench matrix CONFIG into OUT (default benches/<name>), then write the
    tables (and, with `report`, the HTML page). Returns the bench directory and the failed groups' results."""
    cfg = config if isinstance(config, BenchConfig) else load_bench_config(config, list(overrides))
    out = BenchDir(out or Path("benches") / cfg.name)
    failed = run_groups(cfg, out.path, executor or cfg.executor, ray_address, device)
    if report:  # aggregates too; `archselect report BENCH` rewrites both from disk
        write_bench_report(out.path)
    else:
        write_tables(cfg, out.path)
    return out, failed


def run_groups(cfg: BenchConfig, out: Path, executor: str = "sequential", address: str | None = None,
              device: str | None = None) -> list[JobResult]:
    """Run every unfinished group on the executor. Returns the failed results."""
    bench_dir = BenchDir(out)
    with bench_dir.as_run_dir() as lock:
        jobs, todo = pending_jobs(cfg, out, device)
        for job in jobs:  # a changed bench config fails here, before anything is written
            check_unchanged(RunDir(job["run"]), build(RunConfig, job["config"], "run"))
        write_bench_header(cfg, bench_dir, device)
        log.info(f"bench {cfg.name}: {len(jobs)} supernet groups x {len(cfg.selectors)} selectors; "
                 f"{len(jobs) - len(todo)} groups already finished, {len(todo)} to run")
        results: list[JobResult] = []
        if todo:
            with make_executor(executor, address) as pool:
                results = run_jobs(pool, run_group, todo, lock)
        else:
            atomic_write_json(bench_dir.summary_file, {"executor": executor, "results": []})
    failed = [r for r in results if not r.ok]
    _raise_common_user_error(failed, len(todo))
    return failed


def write_bench_header(cfg: BenchConfig, out: BenchDir, device: str | None) -> None:
    """bench.yaml (the resolved bench config, for the report and for reruns) and the bench manifest (versions, git
    commit, command line; each group's own manifest has its seed and device)."""
    atomic_write_bytes(out.bench_file, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode())
    info = {**manifest(cfg.seeds[0], device or "as each group's config"), "seeds": list(cfg.seeds)}
    out.as_run_dir().record_manifest(info, resume=True)


def pending_jobs(cfg: BenchConfig, out: Path, device: str | None = None) -> tuple[list[dict], list[dict]]:
    """(all jobs, those with work left): a group is finished when its supernet, every selection and (if asked and
    possible) its correlation exist."""
    jobs = [group_job(cfg, g, out, device) for g in groups(cfg)]
    return jobs, [j for j in jobs if not _group_finished(j, cfg)]


def _group_finished(job: dict[str, Any], cfg: BenchConfig) -> bool:
    run = RunDir(job["run"])
    if not (run.exists() and supernet_done(run) and all(cell_done(run, s) for s in job["selectors"])):
        return False
    if cfg.retrain.enabled and not all(retrain_done(run, s) for s in job["selectors"]):
        return False
    wants_corr = wants_correlation(build(RunConfig, job["config"], "run"), job["diagnostics"])
    if wants_corr and not correlation_current(read_diagnostics(run), job["diagnostics"]):
        return table_for(job["config"].get("benchmark")) is None  # nothing to compute without a table
    return True


def _raise_common_user_error(failed: list[JobResult], n: int) -> None:
    """Every group failing with the same user error (a missing dataset, a bad option) is one error, not n."""
    errors = {r.error for r in failed}
    if failed and len(failed) == n and len(errors) == 1 and next(iter(errors)).startswith("UserError: "):
        raise UserError(next(iter(errors))[len("UserError: "):])


# -- one group ---------------------------------------------------------------------------------------------------------

def run_group(job: dict[str, Any]) -> dict[str, Any]:
    """Search (or resume), every missing selection, the missing diagnostics and retrainings; returns what it
    computed."""
    cfg = build(RunConfig, job["config"], "run")
    cfg.select.selectors = list(job["selectors"])
    check(cfg)
    run = RunDir(job["run"])
    done: dict[str, Any] = {"id": job["id"], "searched": not supernet_done(run),
                            "selected": [n for n in job["selectors"] if not cell_done(run, n)], "diagnostics": []}
    if run.exists():
        check_unchanged(run, cfg)
    with _started(cfg) as device:
        if cfg.split.method != "none" and supernet_done(run):
            _reselect_missing(cfg, run, done["selected"], device)
        elif done["searched"] or done["selected"]:
            search_run(run, cfg, device, resume=True)
        with _writing(run):
            done["diagnostics"] = _diagnostics(cfg, run, job["diagnostics"], device)
    if job["retrain"]["enabled"]:
        done["retrained"] = _retrain(cfg, run, job["selectors"], job["retrain"]["overrides"])
    return done


def _reselect_missing(cfg: RunConfig, run: RunDir, names: list[str], device: torch.device) -> None:
    """A finished split group: a selector added later is run in every leaf, then the leaves are chosen again."""
    if names:
        with _writing(run):
            write_result(run, cfg, reselect(cfg, run, names, device))


def _diagnostics(cfg: RunConfig, run: RunDir, options: dict[str, Any], device: torch.device) -> list[str]:
    """The supernet-benchmark rank correlation, once per group (needs a NAS-Bench-201 table and the NB201 space)."""
    record = read_diagnostics(run)
    if correlation_current(record, options) or not wants_correlation(cfg, options):
        return []
    table = table_for(cfg.benchmark)
    if table is None:
        log.info("no NAS-Bench-201 table: skipping the supernet-benchmark rank correlation")
        return []
    ctx = build_context(cfg, run, device)
    corr = rank_correlation(ctx.supernet, ctx.valid, table, options["correlation_samples"], seed=cfg.seed,
                            images=options["correlation_images"], bn=options["correlation_bn"])
    corr["requested"] = options["correlation_samples"]
    log.info(f"supernet vs NB201 cifar10_valid on {corr['samples']} architectures: Kendall tau "
             f"{corr['kendall_tau']:.3f}, Spearman {corr['spearman']:.3f} ({corr['seconds']:.0f}s)")
    record["correlation"] = corr
    atomic_write_json(run.diagnostics_file, record)
    return ["correlation"]


def correlation_current(record: dict[str, Any], options: dict[str, Any]) -> bool:
    """A recorded correlation made with the current settings (changing them recomputes it; it is cheap)."""
    corr = record.get("correlation")
    return isinstance(corr, dict) and (corr.get("requested"), corr.get("images"), corr.get("bn")) == (
        options["correlation_samples"], options["correlation_images"], options["correlation_bn"])


def wants_correlation(cfg: RunConfig, options: dict[str, Any]) -> bool:
    """Rank correlation needs NB201 (the table) and one supernet (a split group has a tree of them: skipped)."""
    return options["correlation_samples"] > 0 and cfg.space.name == "nb201" and cfg.split.method == "none"


def _retrain(cfg: RunConfig, run: RunDir, selectors: list[str], overrides: list[str]) -> list[str]:
    """Retrain every selector's architecture that has no finished retraining yet; returns those it trained."""
    done = []
    for name in selectors:
        if retrain_done(run, name):
            continue
        target = run.retrain(name)
        started = target.exists()  # an interrupted retraining resumes from its checkpoint
        log.info(f"retraining the {name} architecture{' (resuming)' if started else ''}")
        arch = str(cell_dir(run, name).selection_file(name))
        if started:
            train(arch, resume=target.path, overrides=overrides, seed=cfg.seed, device=cfg.device)
        else:
            train(arch, run.config_file, target.path, overrides=overrides, seed=cfg.seed, device=cfg.device)
        done.append(name)
    return done
