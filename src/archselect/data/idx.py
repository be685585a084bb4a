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


MAX_IDX_BYTES = 1 << 31  # 2 GiB decompressed: 40x Fashion-MNIST's training images; a header asking more is refused


def read_bytes(path: Path, limit: int = MAX_IDX_BYTES) -> bytes:
    """The file's content, gunzipped when the name ends in .gz; never more than `limit` bytes are decompressed
    (a small gzip file can expand a thousandfold)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(limit + 1)
        else:
            if path.stat().st_size > limit:
                raise UserError(f"{path}: larger than the {limit} bytes archselect reads from a data file")
            data = path.read_bytes()
        if len(data) > limit:
            raise UserError(f"{path}: decompresses to more than the {limit} bytes archselect reads from a data file")
        return data
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


def read_idx(path: Path, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file, checking the size its header declares against `limit` before reading (decompressing)
    the data: a header cannot make archselect allocate more than that."""
    path = Path(path)
    head = _read_head(path)
    if len(head) >= 4 and head[0] == 0 == head[1] and head[2] in _DTYPES and 0 < head[3] and len(head) >= 4 + 4 * head[3]:
        dims = struct.unpack(f">{head[3]}I", head[4:4 + 4 * head[3]])
        need = 4 + 4 * head[3] + prod(dims) * _DTYPES[head[2]].itemsize
        if need > limit:
            raise UserError(f"{path}: its IDX header declares {dims} ({need} bytes), more than the {limit} bytes "
                            f"archselect reads from a data file")
        limit = need
    return parse_idx(read_bytes(path, limit), what=str(path))


def _read_head(path: Path) -> bytes:
    """The first bytes (magic number and dims) of an IDX file, gunzipped when needed; b'' when unreadable (the full
    read then reports the error)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            return head + (f.read(4 * head[3]) if len(head) == 4 else b"")
    except (OSError, EOFError, zlib.error):
        return b""


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
