"""Reading the pickle-based batch files (CIFAR, ImageNet16) through archselect.safe_pickle only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import safe_pickle
from ..errors import UserError


def load_batch(path: Path, encoding: str) -> dict:
    """Unpickle a batch file as plain data (never running code from it); it must hold a dict."""
    try:
        with open(path, "rb") as f:
            obj = safe_pickle.load(f, what=str(path), encoding=encoding)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (KeyError, MemoryError, OverflowError, RecursionError, UnicodeError) as e:
        # damaged pickles can fail in ways safe_pickle does not translate
        raise UserError(f"{path}: not a readable data file ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def field(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]`` whether the file was written by Python 2 (bytes keys) or Python 3 (str keys)."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise UserError(f"{path}: missing field {key!r}")


def image_rows(batch: dict, path: Path, row_len: int) -> np.ndarray:
    """The 'data' field as uint8 (N, row_len)."""
    data = field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_len:
        shape = getattr(data, "shape", None)
        raise UserError(f"{path}: 'data' must be uint8 of shape (N, {row_len}), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    return data


def int_labels(batch: dict, key: str, path: Path, n: int, low: int, high: int) -> np.ndarray:
    """Field ``key`` as int64 (n,), every value in [low, high]."""
    try:
        raw = np.asarray(field(batch, key, path))
        if raw.size and raw.dtype.kind not in "iu":  # 1.7 or True must not become class 1 silently
            raise TypeError(raw.dtype)
        labels = raw.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: {key!r} is not a list of integers") from None
    if labels.shape != (n,):
        raise UserError(f"{path}: {key!r} has shape {labels.shape}, expected ({n},) to match 'data'")
    if n and (labels.min() < low or labels.max() > high):
        raise UserError(f"{path}: {key!r} values must lie in {low}..{high}")
    return labels
