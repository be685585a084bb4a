"""The IDX format of (Fashion-)MNIST: 2 zero bytes, a dtype code, the number of dims, big-endian uint32 dims, data."""
from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

import numpy as np

from ..errors import UserError

_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path}: damaged gzip file ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_idx(data: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into a native-endian array; any inconsistency raises UserError naming ``what``."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{what}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES or ndim == 0:
        raise UserError(f"{what}: not an IDX file (dtype code {code:#04x}, {ndim} dims)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{what}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    expected = header + prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"{what}: IDX file has {len(data)} bytes, its header {dims} needs {expected} "
                        f"(truncated or corrupt)")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path: Path) -> np.ndarray:
    return parse_idx(read_bytes(Path(path)), what=str(path))


def encode_idx(arr: np.ndarray) -> bytes:
    """The IDX bytes for ``arr`` (used to write test fixtures and caches of converted data)."""
    native = np.dtype(arr.dtype).newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    code = _CODES[native]
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError("IDX needs 1..255 dimensions")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as IDX, gzipped when the name ends in .gz."""
    data = encode_idx(arr)
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
