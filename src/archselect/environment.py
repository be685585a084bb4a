"""Process set-up shared by every stage: device choice, seeding, determinism, thread count."""
from __future__ import annotations

import ctypes
import os
import random

import numpy as np
import torch

from .errors import UserError


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks of up to 32 MiB for reuse instead of handing them back to the OS: a
    training step frees and reallocates hundreds of MB of activations, and fresh pages cost a page fault each
    (measured: ~35k faults and 10-15 % of a NAS-Bench-201 supernet step on CPU). The process keeps its peak memory.
    A no-op (False) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def configure(seed: int, deterministic: bool, threads: int | None) -> None:
    # --seed and other late settings bypass config.check: the same ranges, checked before anything is seeded
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise UserError(f"seed must be an integer in [0, 2**32), got {str(seed)[:40]}")
    if threads is not None and not 1 <= threads <= 1024:
        raise UserError(f"threads must lie in 1..1024 (or null for torch's default), got {str(threads)[:40]}")
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_deterministic(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(seed)


def set_deterministic(enabled: bool) -> None:
    """`use_deterministic_algorithms(enabled, warn_only=True)` without its import of torch._inductor (~1.4 s at every
    CLI start and in every selection worker) to set a torch.compile flag; archselect never compiles."""
    torch.set_deterministic_debug_mode("warn" if enabled else "default")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _py_state_to_json(random.getstate()),
             "numpy": _np_state_to_json(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_py_state_from_json(state["python"]))
    np.random.set_state(_np_state_from_json(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _py_state_to_json(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _py_state_from_json(s):
    return (s[0], tuple(s[1]), s[2])


def _np_state_to_json(s):
    name, keys, pos, has_gauss, cached = s
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _np_state_from_json(s):
    name, keys, pos, has_gauss, cached = s
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
