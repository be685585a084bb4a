"""The bench matrix: (space, optimizer, split, selector, seed) cells, run as supernet groups that resume.

Post-hoc selectors share one supernet per (space, optimizer, split, seed): a *group*. A group is an ordinary search
run directory, BENCH/runs/<space>-<optimizer>-<split>-s<seed>/: the search trains and saves the supernet once, then
every selector runs on it (selections/NAME.json), then the diagnostics (diagnostics.json). Each step is skipped when
its output is already there and valid, so rerunning a bench finishes what is missing and recomputes nothing: an
interrupted search resumes from its last checkpoint, a finished cell (its selection file) is never redone.

`run_group` is a module-level function of one picklable dict, so an executor (executors.py) may run groups in
parallel, on Ray workers or elsewhere.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig, build, check, dump_yaml, load_config, to_dict
from ..errors import UserError
from ..runs import RunDir, atomic_write_bytes, atomic_write_json, list_checkpoints, manifest, read_json, record_manifest
from .config import AxisEntry, BenchConfig

RUNS_DIR = "runs"
BENCH_FILE = "bench.yaml"
DIAGNOSTICS_FILE = "diagnostics.json"
SUMMARY_FILE = "summary.json"
# Keys that may change between invocations without invalidating finished work (where and how fast it runs, and which
# selectors are wanted: each selector's output is its own file).
VOLATILE_KEYS = ("device", "threads", "select.selectors")


@dataclasses.dataclass(frozen=True)
class Group:
    space: AxisEntry
    optimizer: AxisEntry
    split: AxisEntry
    seed: int

    @property
    def id(self) -> str:
        return f"{self.space.key}-{self.optimizer.key}-{self.split.key}-s{self.seed}"


def groups(cfg: BenchConfig) -> list[Group]:
    """Every supernet group, seed-major: after the first seed every method has one result."""
    return [Group(sp, opt, spl, seed) for seed, sp, opt, spl in
            itertools.product(cfg.seeds, cfg.spaces, cfg.optimizers, cfg.splits)]


def group_job(cfg: BenchConfig, group: Group, out: Path, device: str | None = None) -> dict[str, Any]:
    from .config import run_config

    run_cfg = run_config(cfg, group.space, group.optimizer, group.split, group.seed)
    if device:
        run_cfg.device = device
    return {
        "id": group.id, "run": str(Path(out, RUNS_DIR, group.id)), "config": to_dict(run_cfg),
        "selectors": list(cfg.selectors), "diagnostics": dataclasses.asdict(cfg.diagnostics),
        "retrain": dataclasses.asdict(cfg.retrain),
        "labels": {"space": group.space.key, "optimizer": group.optimizer.key, "split": group.split.key,
                   "seed": group.seed},
    }


# -- what is done ------------------------------------------------------------------------------------------------------

def is_split(run: RunDir) -> bool:
    """A few-shot group: its supernet was split into sub-supernets (fewshot/schedule.py), each selected on."""
    return run.file("split", "tree.json").is_file()


def supernet_done(run: RunDir) -> bool:
    if is_split(run):
        return run.file("result.json").is_file()
    return bool(list_checkpoints(run.path, "supernet"))


def cell_dir(run: RunDir, name: str) -> RunDir | None:
    """The run directory holding selector `name`'s cell: the group itself, or, after a split, the sub-supernet that
    the split search chose for this selector (None until it has chosen)."""
    if not is_split(run):
        return run
    path = run.file("result.json")
    result = read_json(path, "split result") if path.is_file() else {}
    leaf = result.get("split", {}).get("per_selector", {}).get(name, {}).get("leaf")
    return RunDir(run.file("split", leaf)) if leaf else None


def selection_path(run: RunDir, name: str) -> Path | None:
    cell = cell_dir(run, name)
    return cell.file("selections", f"{name}.json") if cell else None


def selection_done(run: RunDir, name: str) -> bool:
    """A selection file that parses as a Selection of this selector (a damaged one is redone)."""
    from ..selection.base import Selection

    path = selection_path(run, name)
    if path is None or not path.is_file():
        return False
    try:
        return Selection.from_dict(json.loads(path.read_text())).selector == name
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, UserError):
        return False


def read_diagnostics(run: RunDir) -> dict[str, Any]:
    path = run.file(DIAGNOSTICS_FILE)
    if not path.is_file():
        return {}
    data = read_json(path, "bench diagnostics")
    return data if isinstance(data, dict) else {}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k != "options" else {key: v})
    return out


def _differences(old: RunConfig, new: RunConfig) -> list[str]:
    a, b = _flatten(to_dict(old)), _flatten(to_dict(new))
    return [k for k in sorted(set(a) | set(b)) if k not in VOLATILE_KEYS and a.get(k) != b.get(k)]


def check_unchanged(run: RunDir, cfg: RunConfig) -> None:
    """An existing group must have been made with the same settings (except where and how fast it runs)."""
    if not run.exists():
        return
    diff = _differences(load_config(run.file("config.yaml")), cfg)
    if diff:
        raise UserError(f"{run.path} was run with other settings ({', '.join(diff[:5])}); the bench config "
                        f"changed since: restore it, or run the bench into another --out")


def prepare_run(run: RunDir, cfg: RunConfig) -> None:
    """Write the group's config and manifest, or check that an existing group was made with the same settings."""
    if run.exists():
        check_unchanged(run, cfg)
    else:
        atomic_write_json(run.file("manifest.json"), manifest(cfg.seed, cfg.device))
    atomic_write_bytes(run.file("config.yaml"), dump_yaml(cfg).encode())


# -- one group ---------------------------------------------------------------------------------------------------------

def run_group(job: dict[str, Any]) -> dict[str, Any]:
    """Search (or resume), every missing selection, the missing diagnostics; returns what it computed."""
    from ..environment import choose_device, configure

    cfg = build(RunConfig, job["config"], "run")
    check(cfg)
    device = choose_device(cfg.device)
    configure(cfg.seed, cfg.deterministic, cfg.threads)
    log = _logger(job["id"])
    run = RunDir(job["run"])
    done: dict[str, Any] = {"id": job["id"], "searched": False, "selected": [], "diagnostics": []}
    with run:
        prepare_run(run, cfg)
        if cfg.split.method != "none":
            done.update(_split_group(cfg, run, job["selectors"], device, log))
        else:
            if not supernet_done(run):
                _search(cfg, run, device, log)
                done["searched"] = True
            for name in job["selectors"]:
                if not selection_done(run, name):
                    _select(cfg, run, name, device, log)
                    done["selected"].append(name)
            done["diagnostics"] = _diagnostics(cfg, run, job["diagnostics"], device, log)
        if job["retrain"]["enabled"]:
            done["retrained"] = _retrain(cfg, run, job["selectors"], job["retrain"]["overrides"], log)
    return done


def _logger(group_id: str) -> Callable[[str], None]:
    def log(text: str) -> None:
        print(f"[{group_id}] {text}", flush=True)
    return log


def _search(cfg: RunConfig, run: RunDir, device, log) -> None:
    from ..search.loop import SearchRun, save_supernet

    search = SearchRun(cfg, run, device, log)
    if search.restore():
        log(f"resumed the search at epoch {search.epoch + 1}, step {search.step}")
    search.train()
    save_supernet(run, search.supernet)


def _split_group(cfg: RunConfig, run: RunDir, selectors: list[str], device, log) -> dict[str, Any]:
    """A few-shot group: the split search (resumable: its tree is on disk) selects in every sub-supernet and chooses
    one per selector; a selector added later is run in every leaf by `reselect`."""
    from ..fewshot.schedule import reselect, split_search

    done: dict[str, Any] = {"searched": False, "selected": []}
    if not supernet_done(run):
        split_search(cfg, run, device, log)
        done.update(searched=True, selected=list(selectors))
    missing = [n for n in selectors if not selection_done(run, n)]
    if missing:
        reselect(cfg, run, missing, device, log)
        done["selected"] += missing
    return done


def _select(cfg: RunConfig, run: RunDir, name: str, device, log) -> None:
    """One selector on the saved supernet, from a freshly seeded RNG, so a cell's result never depends on which
    other cells ran before it in this process."""
    from ..environment import seed_everything
    from ..selection.stage import run_selectors

    seed_everything(cfg.seed)
    run_selectors(cfg, run, [name], device, log)


def _diagnostics(cfg: RunConfig, run: RunDir, options: dict[str, Any], device, log) -> list[str]:
    """The supernet-benchmark rank correlation, once per group (needs a NAS-Bench-201 table and the NB201 space)."""
    from ..evaluate.lookup import table_for
    from ..selection.stage import build_context
    from .diagnostics import rank_correlation

    record = read_diagnostics(run)
    if correlation_current(record, options) or not wants_correlation(cfg, options):
        return []
    table = table_for(cfg.benchmark)
    if table is None:
        log("no NAS-Bench-201 table: skipping the supernet-benchmark rank correlation")
        return []
    ctx = build_context(cfg, run, device, log)
    corr = rank_correlation(ctx.supernet, ctx.valid, table, options["correlation_samples"], seed=cfg.seed,
                            images=options["correlation_images"], bn=options["correlation_bn"])
    corr["requested"] = options["correlation_samples"]
    log(f"supernet vs NB201 cifar10_valid on {corr['samples']} architectures: Kendall tau {corr['kendall_tau']:.3f}, "
        f"Spearman {corr['spearman']:.3f} ({corr['seconds']:.0f}s)")
    record["correlation"] = corr
    atomic_write_json(run.file(DIAGNOSTICS_FILE), record)
    return ["correlation"]


def correlation_current(record: dict[str, Any], options: dict[str, Any]) -> bool:
    """A recorded correlation made with the current settings (changing them recomputes it; it is cheap)."""
    corr = record.get("correlation")
    return isinstance(corr, dict) and (corr.get("requested"), corr.get("images"), corr.get("bn")) == (
        options["correlation_samples"], options["correlation_images"], options["correlation_bn"])


def wants_correlation(cfg: RunConfig, options: dict[str, Any]) -> bool:
    """Rank correlation needs NB201 (the table) and one supernet (a split group has a tree of them: skipped)."""
    return options["correlation_samples"] > 0 and cfg.space.name == "nb201" and cfg.split.method == "none"


def _retrain(cfg: RunConfig, run: RunDir, selectors: list[str], overrides: list[str], log) -> list[str]:
    from .retrain import retrain_selections

    return retrain_selections(cfg, run, selectors, overrides, log)


# -- the whole matrix --------------------------------------------------------------------------------------------------

def write_bench_header(cfg: BenchConfig, out: Path, device: str | None) -> None:
    """bench.yaml (the resolved bench config, for the report and for reruns) and the bench manifest (versions, git
    commit, command line; each group's own manifest has its seed and device)."""
    import yaml

    data = dataclasses.asdict(cfg)
    atomic_write_bytes(Path(out, BENCH_FILE), yaml.safe_dump(data, sort_keys=False).encode())
    info = {**manifest(cfg.seeds[0], device or "as each group's config"), "seeds": list(cfg.seeds)}
    record_manifest(Path(out, "manifest.json"), info, resume=True)


def pending_jobs(cfg: BenchConfig, out: Path, device: str | None = None) -> tuple[list[dict], list[dict]]:
    """(all jobs, those with work left): a group is finished when its supernet, every selection and (if asked and
    possible) its correlation exist."""
    jobs = [group_job(cfg, g, out, device) for g in groups(cfg)]
    return jobs, [j for j in jobs if not _group_finished(j, cfg)]


def _group_finished(job: dict[str, Any], cfg: BenchConfig) -> bool:
    run = RunDir(job["run"])
    if not (run.exists() and supernet_done(run) and all(selection_done(run, s) for s in job["selectors"])):
        return False
    if cfg.retrain.enabled:
        from .retrain import retrain_done

        if not all(retrain_done(run, s) for s in job["selectors"]):
            return False
    wants_corr = wants_correlation(build(RunConfig, job["config"], "run"), job["diagnostics"])
    if wants_corr and not correlation_current(read_diagnostics(run), job["diagnostics"]):
        from ..evaluate.lookup import table_for

        return table_for(job["config"].get("benchmark")) is None  # nothing to compute without a table
    return True


def run_bench(cfg: BenchConfig, out: Path, executor: str = "sequential", address: str | None = None,
              device: str | None = None, log: Callable[[str], None] = print):
    """Run every unfinished group on the executor, then aggregate everything on disk. Returns the failed results."""
    from ..executors import make_executor

    out = Path(out)
    bench_lock = RunDir(out)
    with bench_lock:
        jobs, todo = pending_jobs(cfg, out, device)
        for job in jobs:  # a changed bench config fails here, before anything is written
            check_unchanged(RunDir(job["run"]), build(RunConfig, job["config"], "run"))
        write_bench_header(cfg, out, device)
        log(f"bench {cfg.name}: {len(jobs)} supernet groups x {len(cfg.selectors)} selectors; "
            f"{len(jobs) - len(todo)} groups already finished, {len(todo)} to run")
        results = []
        if todo:
            with make_executor(executor, address) as ex:
                results = ex.map(run_group, todo)
        atomic_write_json(out / SUMMARY_FILE, {"executor": executor, "results": [r.to_dict() for r in results]})
    failed = [r for r in results if not r.ok]
    _raise_common_user_error(failed, len(todo))
    return failed


def _raise_common_user_error(failed, n: int) -> None:
    """Every group failing with the same user error (a missing dataset, a bad option) is one error, not n."""
    errors = {r.error for r in failed}
    if failed and len(failed) == n and len(errors) == 1 and next(iter(errors)).startswith("UserError: "):
        raise UserError(next(iter(errors))[len("UserError: "):])
