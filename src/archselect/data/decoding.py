"""Image files decoded into uint8 batches: here, or split over a persistent pool of worker processes.

A job is one image: its path and the seed of its augmentation (None: the evaluation transform). The result of a job
depends on the job alone, so a batch is the same however its images are shared out. The pool (one per worker count,
started on first use, shared by every loader of the process) lets a loader fetch any batch at random, k of epoch e,
with all workers on that one batch; `FolderLoader.epoch` streams whole batches through torch's DataLoader instead.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError

Job = tuple[str, "int | None"]  # (path, augmentation seed or None)
_POOLS: dict[int, cf.ProcessPoolExecutor] = {}


@dataclass(frozen=True)
class Transform:
    size: int     # crop side
    flip: bool    # training: mirror with probability 1/2
    jitter: bool  # training: DARTS' colour jitter


def jpeg():
    """data/jpeg.py, which needs Pillow (the imagenet extra): a missing Pillow is one line, not a traceback."""
    try:
        from . import jpeg as module
    except ImportError:
        raise UserError("decoding ImageNet's JPEG files needs Pillow: pip install 'archselect[imagenet]'") from None
    return module


def decode(jobs: Sequence[Job], t: Transform) -> np.ndarray:
    """uint8 (len(jobs), 3, size, size); a file that does not decode raises a UserError naming it."""
    codec = jpeg()
    out = np.empty((len(jobs), 3, t.size, t.size), dtype=np.uint8)
    for j, (path, seed) in enumerate(jobs):
        if seed is None:
            image = codec.eval_image(Path(path), t.size)
        else:
            image = codec.train_image(Path(path), t.size, torch.Generator().manual_seed(seed), t.flip, t.jitter)
        out[j] = image.numpy()
    return out


def _start_worker(parent: int) -> None:
    torch.set_num_threads(1)  # decoding workers share the machine with the training process (as DataLoader's do)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A pool worker blocks on its task queue, whose write end it inherited too: it would outlive a parent killed
    with SIGKILL forever. It exits once it has been orphaned (DataLoader's workers watch their parent likewise)."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def pool(workers: int) -> cf.ProcessPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = cf.ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(os.getpid(),))
    return _POOLS[workers]


@atexit.register
def _close_pools() -> None:
    """Shut the pools down while the interpreter is whole (collected during its teardown, they complain)."""
    for p in _POOLS.values():
        p.shutdown(cancel_futures=True)
    _POOLS.clear()


def submit(jobs: Sequence[Job], t: Transform, workers: int) -> list[cf.Future]:
    """`jobs` cut into one contiguous chunk per worker, each decoded in the pool."""
    size = -(-len(jobs) // workers)
    return [pool(workers).submit(decode, list(jobs[i:i + size]), t) for i in range(0, len(jobs), size)]


def gather(futures: list[cf.Future]) -> torch.Tensor:
    """The chunks, in order, as one uint8 batch; a worker's UserError is raised here as it was raised there."""
    try:
        return torch.from_numpy(np.concatenate([f.result() for f in futures]))
    except cf.process.BrokenProcessPool as e:
        _POOLS.clear()  # a broken pool takes no more work: the next use starts a fresh one
        raise UserError(f"an image-decoding worker process died ({e}); lower data.workers if memory ran out") from None
