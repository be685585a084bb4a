"""The pipeline: every stage as a function over a run directory.

    search   train a supernet (or a tree of sub-supernets: --split), save it, select, write result.json
    select   run selectors on the saved supernet of a finished search (no retraining)
    split    the gradient-matching split a trained supernet would make
    train    retrain an architecture from scratch
    report   plots and an HTML page of a run (or of a bench)

The CLI, the bench, the job executors and the Python API all call these; nothing above them repeats a stage, and
result.json is built here alone. Each function configures the process (device, seed, threads, determinism) from the
run's config, locks the run directory while it writes, and logs to the console and to the run's log.txt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .. import distributed, logs
from ..arch import Architecture, load_architecture
from ..components import loaders, space_of, to_device
from ..config import SEARCH_RESUMABLE, TRAIN_RESUMABLE, RunConfig, build, check, load_config, resume_config, to_dict
from ..environment import choose_device, configure
from ..errors import UserError
from ..evaluate.lookup import benchmark_metrics
from ..evaluate.train import TrainRun
from ..executors import Executor, JobResult, make_executor
from ..fewshot.choice import SplitOutcome
from ..fewshot.schedule import analyse, reselect, split_search
from ..fewshot.tree import describe
from ..jobs import read_jobs, run_jobs
from ..ranks import serve
from ..reporting import html, plots
from ..runs import RunDir, discard_if_stillborn, is_bench, manifest, open_run
from ..scoring.workers import Workers, launch_workers
from ..optimizers.loop import SearchRun, train_supernet
from ..selection.base import Selection
from ..selection.comparison import Comparison
from ..selection.stage import load_selections, run_selectors, selection_done
from ..selection.variants import make_selectors

log = logging.getLogger(__name__)
Overrides = Mapping[str, Any] | Sequence[str]


class Run(RunDir):
    """A run directory with its contents as Python objects: what the API returns and accepts."""

    @property
    def config(self) -> RunConfig:
        return self.read_config()

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.read_metrics()

    @property
    def result(self) -> dict[str, Any] | None:
        return self.read_result()

    @property
    def architecture(self) -> Architecture | None:
        """The run's derived architecture (its first selector's), once the search has finished."""
        result = self.read_result()
        return Architecture.from_dict(result["architecture"]) if result and "architecture" in result else None

    def selections(self) -> dict[str, Selection]:
        return load_selections(self)

    def supernet(self, device: str = "cpu") -> torch.nn.Module:
        """The trained supernet, rebuilt from the config and loaded (for your own analysis)."""
        cfg = self.read_config()
        data = loaders(cfg, torch.device(device))
        net = space_of(cfg, data.in_channels, data.num_classes).supernet()
        self.load_supernet(into=net)
        return to_device(net, torch.device(device), cfg.search.channels_last)


def as_run(run: str | Path | RunDir) -> Run:
    """An existing run directory as a Run (a one-line error when it is not one)."""
    return Run(open_run(run.path if isinstance(run, RunDir) else run).path)


def override_list(overrides: Overrides | None) -> list[str]:
    """`key=value` texts from a mapping ({"search.epochs": 5}) or a list of texts."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


@contextlib.contextmanager
def _started(cfg: RunConfig) -> Iterator[torch.device]:
    """Device (this rank's, under torchrun), seed, threads and determinism from the config; the process group shut
    down at the end."""
    device = distributed.init(choose_device(cfg.device))
    try:
        configure(cfg.seed, cfg.deterministic, cfg.threads)
        yield device
    finally:
        distributed.shutdown()


@contextlib.contextmanager
def _writing(run: RunDir) -> Iterator[None]:
    """Lock RUN and log to RUN/log.txt while a stage writes to it."""
    with run, logs.to_file(run.log_file):
        yield


# -- search -----------------------------------------------------------------------------------------------------------

def new_run(config: str | Path | RunConfig | None, out: str | Path | None, overrides: Overrides | None = None,
            prefix: str = "search") -> tuple[Run, RunConfig]:
    """A new run directory (refused if OUT already holds one) and its validated config."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, override_list(overrides))
    path = Path(out) if out else Path("runs") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    run = Run(path)
    if run.exists() or run.is_job_set():
        raise UserError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
    return run, cfg


def resumed_run(path: str | Path, overrides: Overrides | None = None, allowed=SEARCH_RESUMABLE
                ) -> tuple[Run, RunConfig]:
    """An existing run and its config with `overrides`; an override a resume cannot honour (one the checkpoint
    fixes, e.g. space.C or the seed) is refused in one line before anything is written."""
    run = Run(path)
    if not run.exists():
        raise UserError(f"{path} is not a run directory (no config.yaml)")
    return run, resume_config(run.config_file, override_list(overrides), allowed)


def search(config: str | Path | RunConfig | None = None, out: str | Path | None = None, *,
           overrides: Overrides | None = None, resume: str | Path | None = None,
           selectors: Sequence[str] | None = None, seed: int | None = None, device: str | None = None,
           split: str | None = None, executor: str = "sequential", ray_address: str | None = None) -> Run:
    """Train a supernet, save it, run the selectors and write result.json in a new run directory OUT (from a YAML
    config file or a RunConfig, with key=value overrides), or continue the run RESUME after a kill. `split` ("gm" or
    "exhaustive") searches a tree of sub-supernets (few-shot NAS), whose leaves run on `executor`. Under torchrun
    every rank trains its share of each batch; rank 0 writes."""
    extra = override_list(overrides) + ([f"split.method={split}"] if split else [])
    if resume is not None:
        if config is not None or out is not None:
            raise UserError("--resume takes its config from the run directory; drop --config/--out")
        run, cfg = resumed_run(resume, extra + ([f"seed={seed}"] if seed is not None else []))
    else:
        run, cfg = new_run(config, out, extra)
        if config is None:
            log.info(f"no --config: the built-in defaults, the paper's supernet scale ({cfg.space.name} C={cfg.space.C}, "
                     f"N={cfg.space.N}, {cfg.search.epochs} epochs on {cfg.data.dataset}: hours on a CPU); for a run "
                     f"in minutes use --config configs/demo.yaml")
        if seed is not None:
            cfg.seed = seed
    if device:
        cfg.device = device
    if selectors:
        cfg.select.selectors = list(selectors)
    check(cfg)
    make_selectors(cfg.select.selectors, cfg.select)  # an unknown selector or a bad option fails before training
    pool = None
    if executor != "sequential" or ray_address:
        if cfg.split.method == "none":
            raise UserError("--executor and --ray-address run independent jobs: add --seeds (one search per seed) "
                            "or --split (sub-supernets); one search on several devices runs under torchrun "
                            "(docs/scaling.md)")
        pool = make_executor(executor, ray_address)
    with _started(cfg) as dev, pool or contextlib.nullcontext():
        distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
        search_run(run, cfg, dev, resume=resume is not None, overrides=extra, executor=pool)
    return run


def search_run(run: RunDir, cfg: RunConfig, device: torch.device, resume: bool = False, overrides: Sequence[str] = (),
               executor: Executor | None = None) -> None:
    """The search stage in RUN: record config and manifest, train (or finish training) the supernet, save it, run
    every configured selector that has no valid selection yet, write result.json. Under torchrun rank 0 alone locks
    and writes the run directory and selects, the other ranks computing shares of its evaluations."""
    main = distributed.is_main()
    with discard_if_stillborn(run.path, main and not resume), _writing(run) if main else contextlib.nullcontext():
        if main:
            run.write_config(cfg)
            run.record_manifest({**manifest(cfg.seed, str(device)), "world_size": distributed.world()}, resume,
                                overrides)
            log.info(f"run directory: {run.path}")
        if cfg.split.method != "none":
            if distributed.world() > 1:
                raise UserError("a split search (--split) runs in one process: launch it without torchrun")
            write_result(run, cfg, split_search(cfg, run, device, executor))
            return
        if not (resume and run.has_supernet()):  # a saved supernet is a finished training
            train_supernet(SearchRun(cfg, run, device), resume=resume or run.has_search_checkpoint())
        if not main:
            serve()  # compute shares of rank 0's selection evaluations
            return
        with launch_workers(cfg.select.workers, cfg.select.executor, device=device) as workers:
            missing = [n for n in cfg.select.selectors if not (resume and selection_done(run, n))]
            run_selectors(cfg, run, missing, device, workers)
        write_result(run, cfg)


def write_result(run: RunDir, cfg: RunConfig, split: SplitOutcome | None = None) -> dict[str, Any]:
    """RUN/result.json: the first configured selector's architecture (the run's), every selector's, benchmark
    metrics and the search's totals; for a split search, the sub-supernet each selector's architecture came from."""
    if split is None:
        selections = load_selections(run)
        names = [n for n in cfg.select.selectors if n in selections] or list(selections)
        architectures = {n: selections[n].architecture for n in names}
        metrics = run.read_metrics()
        totals = {"epochs": len(metrics), "seconds": sum(m.get("seconds", 0.0) for m in metrics),
                  "search_valid_acc": metrics[-1]["search_valid_acc"] if metrics else None}
        first = names[0]
    else:
        architectures, totals, first = split.architectures, split.search, split.first
    result = {"architecture": architectures[first].to_dict(), "selector": first,
              "selections": {n: str(a) for n, a in architectures.items()},
              "benchmark": benchmark_metrics(architectures[first], cfg.benchmark), "search": totals}
    if split is not None:
        result["split"] = split.split
    run.write_result(result)
    return result


# -- one search per seed ----------------------------------------------------------------------------------------------

def search_job(job: dict[str, Any]) -> dict[str, Any]:
    """One complete search into job["out"] (an executor job: picklable in, a small summary out; idempotent)."""
    run = Run(job["out"])
    if not run.result_file.exists():
        resume = run.exists()  # an earlier attempt got this far: continue from its checkpoint and its config
        cfg = run.read_config() if resume else build(RunConfig, job["config"], "run")
        check(cfg)
        with _started(cfg) as device:
            search_run(run, cfg, device, resume=resume)
    result = run.read_result()
    return {"run": str(run.path), "architecture": result["architecture"]["text"],
            "selections": result.get("selections", {}),
            "search_valid_acc": result.get("search", {}).get("search_valid_acc"),
            "benchmark": {k: v for k, v in result.get("benchmark", {}).items() if isinstance(v, (int, float))}}


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if isinstance(text, str) else [int(s) for s in text]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def search_seeds(config: str | Path | RunConfig | None = None, out: str | Path | None = None, *,
                 seeds: str | Sequence[int] = (0,), overrides: Overrides | None = None, resume: str | Path | None = None,
                 selectors: Sequence[str] | None = None, device: str | None = None, executor: str = "sequential",
                 ray_address: str | None = None) -> list[JobResult]:
    """One independent search per seed into OUT/seed-N/ on `executor`; `resume=ROOT` reruns the unfinished ones
    (each resumes from its own checkpoint). Returns each job's result (its summary, or its error)."""
    launch = distributed.launch_env()
    if launch is not None and launch.world_size > 1:
        raise UserError("--seeds runs independent searches: launch it without torchrun (docs/scaling.md)")
    if resume is not None:
        root = RunDir(resume)
        jobs = read_jobs(root, ("search",))
    else:
        run, cfg = new_run(config, out, overrides)
        if device:
            cfg.device = device
        if selectors:
            cfg.select.selectors = list(selectors)
        check(cfg)
        make_selectors(cfg.select.selectors, cfg.select)
        root = RunDir(run.path)
        jobs = [{"id": f"seed-{s}", "kind": "search", "out": str(root.job(f"seed-{s}").path),
                 "config": to_dict(dataclasses.replace(cfg, seed=s))} for s in parse_seeds(seeds)]
    with make_executor(executor, ray_address) as pool:
        return run_jobs(pool, search_job, jobs, root, record_jobs=True)


# -- select -----------------------------------------------------------------------------------------------------------

def select(run: str | Path | RunDir, selectors: str | Sequence[str], *, overrides: Overrides | None = None,
           workers: int | None = None, executor: str | None = None, ray_address: str | None = None,
           device: str | None = None) -> dict[str, Selection]:
    """Run `selectors` on the saved supernet of RUN's finished search (no retraining); each Selection is written to
    RUN/selections/ and the comparison to RUN/comparison.json. On a split search, in every sub-supernet, choosing
    again (result.json is rewritten); the Selections returned are those of each selector's chosen sub-supernet.
    `workers` splits the independent evaluations (same results); under torchrun every rank is one."""
    run = as_run(run)
    names = [selectors] if isinstance(selectors, str) else list(selectors)
    if not names:
        raise UserError("--selector needs at least one selector name")
    chosen = {"workers": workers, "executor": executor}
    cfg = run.read_config([*override_list(overrides), *(f"select.{k}={v}" for k, v in chosen.items() if v is not None)])
    if device:
        cfg.device = device
    make_selectors(names, cfg.select)  # an unknown selector or a bad option: one line, before the supernet loads
    launch = distributed.launch_env()
    if launch is not None and launch.world_size > 1:  # checked on every rank, before rank 0 starts handing out work
        if ray_address or any(v is not None for v in chosen.values()):
            raise UserError("under torchrun every rank is a worker: drop --workers, --executor and --ray-address")
        if cfg.split.method != "none":
            raise UserError("selection in a split search runs in one process: launch it without torchrun")
    elif ray_address and cfg.select.executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    with _started(cfg) as dev:
        if not distributed.is_main():
            serve()
            return {}
        with launch_workers(cfg.select.workers, cfg.select.executor, ray_address, dev) as pool, _writing(run):
            return _select_in(run, cfg, names, dev, pool)


def _select_in(run: Run, cfg: RunConfig, names: list[str], device: torch.device, workers: Workers
               ) -> dict[str, Selection]:
    if cfg.split.method == "none":
        selections = run_selectors(cfg, run, names, device, workers)
        if imported(run):  # no search wrote a result: the selections are the run's result
            write_result(run, cfg)
        return selections
    outcome = reselect(cfg, run, names, device, workers)
    write_result(run, cfg, outcome)
    per_selector = outcome.split["per_selector"]
    return {n: load_selections(run.node(per_selector[n]["leaf"]))[n] for n in names if n in per_selector}


def compare(selections: Mapping[str, Selection] | str | Path | RunDir, benchmark: str | None = None) -> Comparison:
    """The selectors side by side (per edge the op each chose, agreement, cost, benchmark): data, and a table via
    str(). Takes Selections or a run directory (its selections)."""
    if not isinstance(selections, Mapping):
        run = as_run(selections)
        cfg = run.config
        return Comparison(_in_config_order(run.selections(), cfg), benchmark or cfg.benchmark)
    return Comparison(dict(selections), benchmark)


def _in_config_order(found: dict[str, Selection], cfg: RunConfig) -> dict[str, Selection]:
    """The configured selectors first, in their order, then the others (run later with `select`)."""
    order = [n for n in cfg.select.selectors if n in found] + [n for n in found if n not in cfg.select.selectors]
    return {n: found[n] for n in order}


# -- split, train, report, show ---------------------------------------------------------------------------------------

def split(run: str | Path | RunDir, *, overrides: Overrides | None = None, device: str | None = None
          ) -> dict[str, Any]:
    """The gradient-matching split RUN's trained supernet would make: every candidate edge's distances and scores,
    the edge GM-NAS would split and its groups (also written to RUN/split-scores.json). Nothing is trained."""
    run = as_run(run)
    cfg = run.read_config(override_list(overrides))
    if device:
        cfg.device = device
    with _started(cfg) as dev, _writing(run):
        return analyse(cfg, run, dev)


def train(arch: str | Architecture, config: str | Path | RunConfig | None = None, out: str | Path | None = None, *,
          resume: str | Path | None = None, overrides: Overrides | None = None, seed: int | None = None,
          device: str | None = None) -> dict[str, Any]:
    """Retrain ARCH (an Architecture, an architecture JSON / result.json / selection file, an NB201 string or a DARTS
    genotype) from scratch into a new run directory, or resume one; returns (and writes) result.json's content: test
    accuracy, parameters, FLOPs."""
    arch = arch if isinstance(arch, Architecture) else load_architecture(arch)
    if resume is not None:
        if config is not None or out is not None:
            raise UserError("--resume takes its config from the run directory; drop --config/--out")
        run, cfg = resumed_run(resume, override_list(overrides) + ([f"seed={seed}"] if seed is not None else []),
                               TRAIN_RESUMABLE)
        stored = Architecture.from_dict(run.read_json(run.architecture_file, "trained architecture", {}))
        if str(stored) != str(arch):
            raise UserError(f"{resume} retrains {stored}, not {arch}")
    else:
        run, cfg = new_run(config, out, overrides, prefix="train")
    if seed is not None:
        cfg.seed = seed
    if device:
        cfg.device = device
    with _started(cfg) as dev, discard_if_stillborn(run.path, resume is None), _writing(run):
        # the architecture before config.yaml (which makes the directory a run): a kill in between must not leave
        # a run that --resume cannot check the architecture of
        run.write_json(run.architecture_file, arch.to_dict())
        run.write_config(cfg)
        run.record_manifest(manifest(cfg.seed, str(dev)), resume is not None, override_list(overrides))
        log.info(f"run directory: {run.path}")
        trainer = TrainRun(cfg, run, arch, dev)
        if resume is not None and trainer.restore():
            log.info(f"resumed at epoch {trainer.epoch + 1}")
        trainer.train()
        result = trainer.result()
        run.write_result(result)
    log.info(f"{arch}: test accuracy {100 * result['test_acc']:.2f}% on {result['dataset']}, "
             f"{result['params'] / 1e6:.3f}M parameters, {result['flops'] / 1e6:.2f}M FLOPs")
    return result


def report(run: str | Path | RunDir, engine: str = "auto") -> list[Path]:
    """Plots and one self-contained HTML page of a run (RUN/report/), or a bench's comparison page
    (BENCH/report/index.html); returns the files written, the page last."""
    path = run.path if isinstance(run, RunDir) else Path(run)
    with logs.heartbeat("report"):
        if is_bench(path):
            return [html.write_bench_report(path, engine)]
        return [*plots.plot_run(path, engine), html.write_run_report(path, engine)]


def show(run: str | Path | RunDir) -> str:
    """A few lines on a run of any kind: a search (settings, progress, last epoch, each selection with its benchmark
    accuracy and cost, a few-shot tree) or a retraining (epochs, test accuracy, size)."""
    run = as_run(run)
    if run.architecture_file.is_file():
        return _show_retraining(run)
    cfg, metrics = run.config, run.metrics
    lines = [f"run {run.path}: {cfg.space.name} (C={cfg.space.C}, N={cfg.space.N}) on {cfg.data.dataset}, "
             f"optimizer {cfg.search.optimizer}, seed {cfg.seed}"]
    source = imported(run)
    if source:
        epoch = f", epoch {source['epoch']}" if source.get("epoch") is not None else ""
        lines.append(f"imported from {source['source']} ({source['format']}{epoch}, sha256 {source['sha256'][:12]}...)")
    else:
        lines.append(describe(run) if cfg.split.method != "none" else f"epochs done: {len(metrics)}/{cfg.search.epochs}")
    if metrics:
        last = metrics[-1]
        lines.append(f"last epoch: train acc {logs.percent(last.get('train_acc', float('nan')))}, "
                     f"search-valid acc {logs.percent(last.get('search_valid_acc', float('nan')))}, "
                     f"{sum(m.get('seconds', 0.0) for m in metrics):.0f}s in all")
    result = run.result
    if result is None and source:
        lines.append(f"no selection yet: archselect select {run.path} --selector magnitude,perturbation")
    elif result is None:
        lines.append("no result yet (search unfinished: archselect search --resume RUN)")
    else:
        first = result.get("selector")
        lines.append(f"result ({first}): {result.get('selections', {}).get(first, '?')}")
        lines.append(benchmark_line(result.get("benchmark", {"note": "no benchmark metrics recorded"})))
    selections = _in_config_order(load_selections(run), cfg) if cfg.split.method == "none" else {}
    for name, sel in selections.items():
        bench = benchmark_metrics(sel.architecture, cfg.benchmark)
        acc = f"  NB201 C10 test {bench['cifar10_test']:.2f}%" if isinstance(bench.get("cifar10_test"), float) else ""
        c = sel.cost
        lines.append(f"{name:>14}: {sel.architecture}{acc}  ({c.forward} forward, {c.backward} backward passes, "
                     f"{c.seconds:.1f}s)")
    if result is not None and not selections:
        lines += [f"{name:>14}: {text}" for name, text in result.get("selections", {}).items()]
    return "\n".join(lines)


def imported(run: RunDir) -> dict[str, Any] | None:
    """Where an imported run's supernet came from (its manifest's `imported` record); None for a search."""
    info = run.read_json(run.manifest_file, "run manifest", {})
    source = info.get("imported") if isinstance(info, dict) else None
    return source if isinstance(source, dict) and {"source", "format", "sha256"} <= source.keys() else None


def _show_retraining(run: Run) -> str:
    cfg, metrics, result = run.config, run.metrics, run.result
    arch = Architecture.from_dict(run.read_json(run.architecture_file, "trained architecture"))
    lines = [f"run {run.path}: retraining of {arch} on {cfg.data.dataset} (C={cfg.train.C}, N={cfg.train.N}), "
             f"seed {cfg.seed}", f"epochs done: {len(metrics)}/{cfg.train.epochs}"]
    if result is None:
        lines.append("no result yet (training unfinished: archselect train --resume RUN ARCH)")
    else:
        lines.append(f"test accuracy {100 * result['test_acc']:.2f}%, {result['params'] / 1e6:.3f}M parameters, "
                     f"{result['flops'] / 1e6:.2f}M FLOPs, {result.get('seconds', 0.0):.0f}s")
    return "\n".join(lines)


def benchmark_line(bench: dict[str, Any]) -> str:
    if "note" in bench:
        return f"benchmark: {bench['note']}"
    keys = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test")
    return "NAS-Bench-201: " + "  ".join(f"{k} {bench[k]:.2f}%" for k in keys if bench.get(k) is not None)
