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
import math
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

def fs_error(e: OSError, action: str, path: Path) -> UserError:
    """A file-system failure (read-only, full disk, a path under a file, a name too long) as one line."""
    return UserError(f"cannot {action} {path}: {e.strerror or type(e).__name__}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename, directory fsync); a file-system error is
    a one-line UserError and leaves no temporary file."""
    path = Path(path)
    try:
        _atomic_write_bytes(path, data)
    except OSError as e:
        raise fs_error(e, "write", path) from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
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


MAX_JSON_BYTES = 256 << 20  # no run file comes near this; a bigger one is not ours


def read_json(path: Path, what: str | None = None) -> Any:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{what or p} is too large to be an archselect file ({p.stat().st_size} bytes): {p}")
        return json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what or p} not found: {p}") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{what or p} is damaged or not JSON: {p} ({_one_line(e)})") from None
    except RecursionError:
        raise UserError(f"{what or p} is damaged or not JSON: {p} (nested too deeply)") from None
    except OSError as e:
        raise UserError(f"cannot read {what or p}: {p} ({e.strerror or e})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def state_digest(meta: Any) -> str:
    """sha256 of a checkpoint's JSON state in a canonical form (JSON round-trips it exactly)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """The inverse of `split_tensors`; a structure it did not write raises KeyError, TypeError or ValueError."""
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
        "sha256": hashlib.sha256(blob).hexdigest(), "state_sha256": state_digest(meta), "state": meta,
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
    """A checkpoint's state, verified: the tensor file's sha256 and (written since the JSON state got one; older
    checkpoints have only the first) the JSON state's, then the structure. Any failure is a one-line UserError."""
    meta = read_json(stem.with_suffix(".json"), "checkpoint metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or "state" not in meta:
        raise UserError(f"checkpoint {stem.with_suffix('.json')} is damaged (not a checkpoint record)")
    blob_path = stem.with_suffix(".safetensors")
    try:
        blob = blob_path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {blob_path} is missing") from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint {blob_path} ({e.strerror or e})") from None
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise UserError(f"checkpoint {blob_path} is damaged (checksum mismatch)")
    if "state_sha256" in meta and state_digest(meta["state"]) != meta["state_sha256"]:
        raise UserError(f"checkpoint {stem.with_suffix('.json')} is damaged (state checksum mismatch)")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise UserError(f"checkpoint {blob_path} is damaged ({_one_line(e)})") from None
    try:
        state = join_tensors(meta["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise UserError(f"checkpoint {stem.with_suffix('.json')} is damaged (bad structure: "
                        f"{type(e).__name__} {_one_line(e)})") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {stem.with_suffix('.json')} is damaged (its state is not a mapping)")
    return state


def load_latest_checkpoint(directory: Path, name: str, apply=None) -> dict[str, Any] | None:
    """The newest checkpoint of `name` that verifies (and, given `apply`, that `apply(state)` accepts: loads into
    the model, optimizers and position without error); a damaged or unfitting newer one is reported in one line and
    skipped, not deleted. When none is left, the oldest one's error is raised."""
    stems = list_checkpoints(directory, name)
    for i, stem in enumerate(reversed(stems)):
        try:
            state = load_checkpoint_file(stem)
            if apply is not None:
                _apply(stem, apply, state)
            return state
        except UserError as e:
            if i == len(stems) - 1:
                raise
            log.warning("warning: %s; falling back to the previous checkpoint", e)
    return None


def _apply(stem: Path, apply, state: dict[str, Any]) -> None:
    try:
        apply(state)
    except UserError as e:
        raise UserError(f"checkpoint {stem} does not fit this run ({e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to load a verified state means it does not fit
        raise UserError(f"checkpoint {stem} does not fit this run ({type(e).__name__}: {_one_line(e)})") from None


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Paths of the floating-point tensors inside `state` that hold a NaN or an infinity (checked before a
    checkpoint is written, so a checkpoint never holds them)."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix] if bad else []
    if isinstance(state, dict):
        return [p for k, v in state.items() for p in nonfinite_tensors(v, f"{prefix}/{k}" if prefix else str(k))]
    if isinstance(state, (list, tuple)):
        return [p for i, v in enumerate(state) for p in nonfinite_tensors(v, f"{prefix}/{i}")]
    if isinstance(state, float) and not math.isfinite(state):
        return [prefix]
    return []


def check_optimizer_state(optimizer) -> None:
    """torch loads an optimizer's per-parameter state without comparing shapes; a checkpoint of another model
    would fail at the next step (or silently broadcast). Compare them here."""
    for opt in [v for v in vars(optimizer).values() if isinstance(v, torch.optim.Optimizer)]:
        for group in opt.param_groups:
            for p in group["params"]:
                for k, v in opt.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                        raise UserError(f"optimizer state {k!r} of shape {tuple(v.shape)} for a parameter of "
                                        f"shape {tuple(p.shape)}")
