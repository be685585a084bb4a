"""Files that survive a kill: atomic writes, JSON, and checkpoints of nested state with tensors.

Every file is written to a temporary name, fsynced and renamed, so a reader sees the old file or the new one, never
half of one. A checkpoint is NAME-STEP.safetensors (the tensors) + NAME-STEP.json (everything else, with the tensors'
sha256); loading verifies it, and the previous checkpoint is kept until a newer one is complete. Nothing is ever
unpickled: tensors are safetensors, the rest JSON.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os has no getter)


# -- atomic files ---------------------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode an ordinary open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def read_json(path: Path, what: str | None = None) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{what or p} not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what or p} is damaged or not JSON: {p} ({e})") from None


# -- nested state with tensors <-> (tensors, JSON) --------------------------------------------------------------------

def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor inside `obj` (dicts, lists, tuples) by {"__tensor__": key}, collecting it in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, split_tensors(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix}")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: join_tensors(v, tensors) for k, v in obj["__dict__"]}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# -- checkpoints -----------------------------------------------------------------------------------------------------

def save_checkpoint(directory: Path, name: str, step: int, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts/lists of tensors and plain values) as NAME-STEP.safetensors + .json, then prune
    older checkpoints of that name beyond the newest KEEP_CHECKPOINTS."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    meta = split_tensors(state, "s", tensors)
    blob = st_save(tensors) if tensors else st_save({"_empty": torch.zeros(0)})
    stem = directory / f"{name}-{step:08d}"
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    atomic_write_json(stem.with_suffix(".json"), {
        "name": name, "step": step, "time": time.time(),
        "sha256": hashlib.sha256(blob).hexdigest(), "state": meta,
    })
    remove_checkpoints(directory, name, keep=KEEP_CHECKPOINTS)
    return stem


def remove_checkpoints(directory: Path, name: str, keep: int = 0) -> None:
    """Delete all but the newest `keep` checkpoints of `name`. The JSON goes first: it is what makes a checkpoint
    visible, so a kill in between leaves a stray tensor file (removed here next time), never a checkpoint whose
    tensors are missing, which would stop every later resume."""
    stems = list_checkpoints(directory, name)
    kept = {s.name for s in stems[len(stems) - keep:]} if keep else set()
    for old in stems:
        if old.name not in kept:
            old.with_suffix(".json").unlink(missing_ok=True)
    for blob in sorted(Path(directory).glob(f"{name}-*.safetensors")):
        if blob.stem not in kept and blob.stem[len(name) + 1:].isdigit():
            blob.unlink(missing_ok=True)


def list_checkpoints(directory: Path, name: str) -> list[Path]:
    """Checkpoint stems of `name`, oldest first (by step, which the file name carries)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stems = [p.with_suffix("") for p in directory.glob(f"{name}-*.json")]
    return sorted(stems, key=lambda p: p.name)


def load_checkpoint_file(stem: Path) -> dict[str, Any]:
    meta = read_json(stem.with_suffix(".json"), "checkpoint metadata")
    blob_path = stem.with_suffix(".safetensors")
    try:
        blob = blob_path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {blob_path} is missing") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise UserError(f"checkpoint {blob_path} is damaged (checksum mismatch)")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise UserError(f"checkpoint {blob_path} is damaged ({e})") from None
    return join_tensors(meta["state"], tensors)


def load_latest_checkpoint(directory: Path, name: str) -> dict[str, Any] | None:
    """The newest checkpoint of `name` that verifies; a damaged newer one is reported and skipped, not deleted."""
    stems = list_checkpoints(directory, name)
    for i, stem in enumerate(reversed(stems)):
        try:
            return load_checkpoint_file(stem)
        except UserError as e:
            if i == len(stems) - 1:
                raise
            log.warning("warning: %s; falling back to the previous checkpoint", e)
    return None
