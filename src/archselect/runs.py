"""The run directory: how stages hand work to each other and survive a kill. This module is the only place that
spells the names of its files; every stage reads and writes a run through `RunDir` (and a bench through `BenchDir`).

    RUN/config.yaml        resolved configuration          RUN/manifest.json    versions, commit, seed, device, argv
    RUN/metrics.jsonl      one record per epoch            RUN/log.txt          the log of every command run on RUN
    RUN/checkpoints/search-STEP.{safetensors,json}         the search's checkpoints (files.py)
    RUN/supernet-0.{safetensors,json}                      the trained supernet, for the selection stage
    RUN/selections/NAME.json                               one Selection per selector (+ NAME-progress-* while running)
    RUN/comparison.json    the selectors side by side      RUN/result.json      the derived architecture(s)
    RUN/split-scores.json  `archselect split RUN`          RUN/diagnostics.json bench diagnostics
    RUN/split/tree.json, RUN/split/<node>/                 a split search: the tree, one run directory per node
    RUN/jobs.json, RUN/summary.json, RUN/<job>/            a set of independent jobs (--seeds): one run per job
    RUN/architecture.json  a retraining's architecture     RUN/report/          plots and index.html
    RUN/tb/                TensorBoard events (logging.tensorboard)
    RUN/retrain/<selector>/                                a bench group's retraining of each selection
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch

from .version import __version__
from .config import RunConfig, dump_yaml, load_config
from .errors import UserError
from .files import (atomic_write_bytes, atomic_write_json, fs_error, list_checkpoints, load_latest_checkpoint,
                    read_json, save_checkpoint)

SEARCH_CHECKPOINT = "search"     # the search loop's checkpoints
SUPERNET_CHECKPOINT = "supernet"  # the trained supernet the selection stage reads
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def safe_name(name: str, what: str) -> str:
    """`name` as one file-name component (a selector, a job or a node id): never a path, never hidden."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"{what} {name!r} is not a valid name (letters, digits, '_', '-', '.'; at most 100)")
    return name


_LOCKED: "weakref.WeakValueDictionary[int, RunDir]" = weakref.WeakValueDictionary()  # lock fd -> its RunDir


def _drop_inherited_locks() -> None:
    """In a forked child (an image-decoding worker, say): close the copies of this process's run-lock descriptors.
    A child's copy would otherwise hold the lock (flock belongs to the open file, shared across fork) after the
    parent is killed, until the child exits, and a --resume would find the run in use. Closing a copy leaves the
    parent's lock as it is."""
    for fd, run in list(_LOCKED.items()):
        os.close(fd)
        run._lock_fd = None
    _LOCKED.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunDir:
    """A run directory, held under an exclusive lock while this process writes to it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- the files -----------------------------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.yaml")
    manifest_file = property(lambda self: self.path / "manifest.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    log_file = property(lambda self: self.path / "log.txt")
    result_file = property(lambda self: self.path / "result.json")
    comparison_file = property(lambda self: self.path / "comparison.json")
    split_scores_file = property(lambda self: self.path / "split-scores.json")
    diagnostics_file = property(lambda self: self.path / "diagnostics.json")
    architecture_file = property(lambda self: self.path / "architecture.json")
    leaf_file = property(lambda self: self.path / "leaf.json")
    jobs_file = property(lambda self: self.path / "jobs.json")
    summary_file = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    selections_dir = property(lambda self: self.path / "selections")
    report_dir = property(lambda self: self.path / "report")
    report_page = property(lambda self: self.path / "report" / "index.html")
    tensorboard_dir = property(lambda self: self.path / "tb")
    split_dir = property(lambda self: self.path / "split")
    retrain_root = property(lambda self: self.path / "retrain")
    tree_file = property(lambda self: self.path / "split" / "tree.json")

    def selection_file(self, selector: str) -> Path:
        return self.selections_dir / f"{safe_name(selector, 'selector')}.json"

    def selection_files(self) -> list[Path]:
        """The selection files (not the progress checkpoints of a running selector), sorted by name."""
        return sorted(p for p in self.selections_dir.glob("*.json") if _SAFE_NAME.fullmatch(p.stem) and
                      "-progress-" not in p.name)

    def node(self, node_id: str) -> "RunDir":
        """The run directory of node `node_id` of a split search's tree."""
        return RunDir(self.split_dir / safe_name(node_id, "split node"))

    def retrain(self, selector: str) -> "RunDir":
        """The retraining (run directory) of selector `selector`'s architecture, in a bench group."""
        return RunDir(self.retrain_root / safe_name(selector, "selector"))

    def job(self, job_id: str) -> "RunDir":
        """The run directory of job `job_id` of a set of jobs."""
        return RunDir(self.path / safe_name(job_id, "job"))

    def exists(self) -> bool:
        return self.config_file.is_file()

    def is_split(self) -> bool:
        """A split (few-shot) search: its supernet was split into sub-supernets, each a node of the tree."""
        return self.tree_file.is_file()

    def is_job_set(self) -> bool:
        return self.jobs_file.is_file()

    # -- config, manifest, result --------------------------------------------------------------------------------------
    def read_config(self, overrides=()) -> RunConfig:
        return load_config(self.config_file, list(overrides))

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_bytes(self.config_file, dump_yaml(cfg).encode())

    def read_manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_file, "run manifest")

    def record_manifest(self, info: dict[str, Any], resume: bool = False, overrides=()) -> None:
        """Write the manifest; on a resume keep the original and append this start (with its overrides) to
        `resumes`."""
        if resume and self.manifest_file.is_file():
            old = self.read_manifest()
            if not isinstance(old, dict) or not isinstance(old.setdefault("resumes", []), list):
                raise UserError(f"run manifest {self.manifest_file} is damaged (not an archselect manifest)")
            old["resumes"].append({**info, "overrides": list(overrides)})
            info = old
        atomic_write_json(self.manifest_file, info)

    def read_result(self) -> dict[str, Any] | None:
        return read_result(self.result_file) if self.result_file.is_file() else None

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_file, result)

    def read_json(self, path: Path, what: str, default: Any = None) -> Any:
        """A JSON file of this run, or `default` when it is absent."""
        return read_json(path, what) if path.is_file() else default

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj)

    # -- the supernet --------------------------------------------------------------------------------------------------
    def has_search_checkpoint(self) -> bool:
        return bool(list_checkpoints(self.checkpoints, SEARCH_CHECKPOINT))

    def has_supernet(self) -> bool:
        return bool(list_checkpoints(self.path, SUPERNET_CHECKPOINT))

    def save_supernet(self, state: dict[str, torch.Tensor]) -> None:
        """The trained supernet, alone, for the selection stage (safetensors + checksum via the checkpoint
        writer)."""
        save_checkpoint(self.path, SUPERNET_CHECKPOINT, 0, {"supernet": state})

    def load_supernet(self, into: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The trained supernet's state; loaded `into` a supernet when given (a saved state that does not fit it
        falls back to the previous one, as a damaged one does)."""
        apply = (lambda state: into.load_state_dict(state["supernet"])) if into is not None else None
        state = load_latest_checkpoint(self.path, SUPERNET_CHECKPOINT, apply=apply)
        if state is None:
            raise UserError(f"{self.path} has no trained supernet yet; finish (or --resume) its search first")
        return state["supernet"]

    # -- lock ----------------------------------------------------------------------------------------------------------
    def lock(self) -> "RunDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise fs_error(e, "create the run directory", self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"run directory {self.path} is in use by another archselect process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        _LOCKED[fd] = self
        remove_stale_temporaries(self.path)
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            _LOCKED.pop(self._lock_fd, None)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    # -- metrics -------------------------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise fs_error(e, "write", self.metrics_file) from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        try:
            text = self.metrics_file.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {self.metrics_file} ({e.strerror or e})") from None
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                break  # a line cut by a kill: everything after it is lost work anyway
            if not _metrics_record_ok(record):
                break  # a record edited into the wrong types: read like a cut line
            records.append(record)
        return records

    def truncate_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Keep only records for which keep(record) is true (drops epochs redone after a resume)."""
        kept = [r for r in self.read_metrics() if keep(r)]
        atomic_write_bytes(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept).encode())


TEMP_DIRS = ("", "checkpoints", "selections", "report")  # where a run's own writers put temporary files


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files (`.NAME.XXXX.tmp`, up to a checkpoint in size) that a kill inside
    `atomic_write_bytes` left in a run directory. Called with the run's lock held, so no writer of this run is alive;
    nested run directories (a split search's nodes) have their own locks and are left to their own writers."""
    removed = []
    for sub in TEMP_DIRS:
        d = Path(path) / sub
        if d.is_dir():
            for tmp in d.glob(".*.tmp"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed


_STARTER_FILES = {"config.yaml", "manifest.json", ".lock", "architecture.json", "log.txt"}


@contextlib.contextmanager
def discard_if_stillborn(path: str | Path, enabled: bool = True):
    """Around the start of a new run: if a UserError (a config error found only once the run directory exists, a
    missing dataset) stops it before it recorded any work, remove the directory it created, so the same --out can
    be used again. A directory that existed before, or holds any work (metrics, a checkpoint), is left alone."""
    path = Path(path)
    existed = path.exists()
    try:
        yield
    except UserError:
        if enabled and not existed and path.is_dir():
            entries = list(path.rglob("*"))
            if all(p.name in _STARTER_FILES or (p.is_dir() and not any(p.iterdir())) or p.name.endswith(".tmp")
                   for p in entries):
                shutil.rmtree(path, ignore_errors=True)
        raise


def read_result(path: Path) -> dict[str, Any]:
    """A run's result.json, its types checked where a summary reads it (selections, benchmark metrics)."""
    result = read_json(path, "result")
    bench = result.get("benchmark", {}) if isinstance(result, dict) else None
    ok = (isinstance(result, dict) and isinstance(result.get("selections", {}), dict)
          and all(isinstance(k, str) and isinstance(v, str) for k, v in result.get("selections", {}).items())
          and isinstance(bench, dict) and (isinstance(bench.get("note"), str) if "note" in bench else all(
              v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for k, v in bench.items()
              if k in ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test"))))
    if not ok:
        raise UserError(f"result {path} is damaged (not an archselect result)")
    return result


def _metrics_record_ok(r: Any) -> bool:
    """A metrics record: a mapping with a non-negative integer epoch whose timing, lr, loss and accuracy fields
    are numbers."""
    if not isinstance(r, dict) or isinstance(r.get("epoch"), bool) or not isinstance(r.get("epoch"), int):
        return False
    numeric = [v for k, v in r.items() if k in ("seconds", "lr") or k.endswith(("_loss", "_acc"))]
    return r["epoch"] >= 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numeric)


class BenchDir:
    """A bench directory: BENCH/bench.yaml (the resolved bench config), manifest.json, summary.json,
    runs/<group>/ (one run directory per supernet group), the tables and report/."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    bench_file = property(lambda self: self.path / "bench.yaml")
    manifest_file = property(lambda self: self.path / "manifest.json")
    summary_file = property(lambda self: self.path / "summary.json")
    results_md = property(lambda self: self.path / "results.md")
    results_csv = property(lambda self: self.path / "results.csv")
    agreement_csv = property(lambda self: self.path / "agreement.csv")
    cells_csv = property(lambda self: self.path / "cells.csv")
    report_dir = property(lambda self: self.path / "report")
    report_page = property(lambda self: self.path / "report" / "index.html")
    report_results_md = property(lambda self: self.path / "report" / "results.md")
    runs_dir = property(lambda self: self.path / "runs")

    def group(self, group_id: str) -> RunDir:
        return RunDir(self.runs_dir / safe_name(group_id, "bench group"))

    def exists(self) -> bool:
        return self.bench_file.is_file()

    def as_run_dir(self) -> RunDir:
        """The directory's lock, manifest and summary, as for a run (one bench process per directory)."""
        return RunDir(self.path)


def is_bench(path: str | Path) -> bool:
    return BenchDir(path).exists()


def open_run(path: str | Path) -> RunDir:
    """An existing run directory, or a one-line error saying it is not one."""
    run = RunDir(path)
    if not run.exists():
        raise UserError(f"{path} is not a run directory (no config.yaml)")
    return run


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def manifest(seed: int, device: str, argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "archselect": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "git_commit": git_commit(), "seed": seed, "device": device,
        "threads": torch.get_num_threads(), "argv": list(sys.argv if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
