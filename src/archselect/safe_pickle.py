"""Read the pickle-based data formats (CIFAR batches, ImageNet16 batches, NATS-Bench files) without running code.

Only plain containers, numbers, strings, bytes and numpy arrays may be built; any other global a file asks for
(os.system, builtins.eval, ...) is refused before anything is called.
"""
from __future__ import annotations

import io
import pickle
from typing import IO

import numpy as np

from .errors import UserError

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("builtins", "bool"), ("builtins", "complex"), ("collections", "OrderedDict"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # numpy arrays pickled under python 2 carry their bytes through this
}


MAX_ALLOCATION = 1 << 31  # bytes one constructor call may ask for (2 GiB; a CIFAR batch holds 30 MB)


def _bounded_size(n) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_ALLOCATION:
        raise pickle.UnpicklingError(f"refusing to allocate {n} bytes (more than {MAX_ALLOCATION})")


def _bounded(kind):
    """`bytes(n)` and `bytearray(n)` allocate n bytes from a few bytes of pickle: bound n before calling."""
    def make(*args, **kwargs):
        if args:
            _bounded_size(args[0])
        return kind(*args, **kwargs)
    return make


def _bounded_array(kind):
    """`numpy.ndarray(shape, dtype)` and `_reconstruct(cls, shape, dtype)` allocate shape x itemsize bytes from a few
    bytes of pickle: bound that before calling (__setstate__ then checks the data against the shape)."""
    def make(*args, **kwargs):
        shape = kwargs.get("shape", args[1] if kind.__name__ == "_reconstruct" and len(args) > 1 else
                           args[0] if args else ())
        dtype = kwargs.get("dtype", args[2] if kind.__name__ == "_reconstruct" and len(args) > 2 else
                           args[1] if len(args) > 1 else float)
        dims = shape if isinstance(shape, (tuple, list)) else (shape,)
        try:
            count = int(np.prod([int(d) for d in dims], dtype=object))
            itemsize = np.dtype(dtype).itemsize if not isinstance(dtype, (bytes, str)) or dtype else 1
        except (TypeError, ValueError):
            raise pickle.UnpicklingError("an array with a malformed shape or dtype") from None
        _bounded_size(count * max(itemsize, 1))
        args = tuple(getattr(a, "wrapped_type", a) for a in args)  # _reconstruct(ndarray, ...) gets the real type
        return kind(*args, **kwargs)
    make.__name__ = kind.__name__
    make.wrapped_type = kind
    return make


def _guarded() -> dict:
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return {("builtins", "bytes"): _bounded(bytes), ("builtins", "bytearray"): _bounded(bytearray),
            ("numpy", "ndarray"): _bounded_array(np.ndarray),
            ("numpy.core.multiarray", "_reconstruct"): _bounded_array(reconstruct),
            ("numpy._core.multiarray", "_reconstruct"): _bounded_array(reconstruct)}


_GUARDED = _guarded()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not plain data")
        if (module, name) in _GUARDED:
            return _GUARDED[module, name]
        return super().find_class(module, name)


def load(f: IO[bytes], *, what: str = "file", encoding: str = "ASCII"):
    """Unpickle plain data from ``f``; raise UserError naming ``what`` if it is not plain data or is damaged."""
    try:
        return _RestrictedUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OverflowError, UnicodeError) as e:
        raise UserError(f"{what}: not a readable data file ({' '.join(str(e).split())[:300]})") from None


def loads(data: bytes, *, what: str = "file", encoding: str = "ASCII"):
    return load(io.BytesIO(data), what=what, encoding=encoding)
