"""Fetch a file over urllib into place atomically, accepting it only when its checksum matches."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import UserError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class Checksum:
    """Expected digest of a file; ``decompressed`` hashes the gunzipped bytes (survives re-gzipping)."""

    algorithm: str  # 'md5' or 'sha256'
    hexdigest: str
    decompressed: bool = False


def file_digest(path: Path, algorithm: str, decompressed: bool = False) -> str:
    h = hashlib.new(algorithm)
    opener = gzip.open if decompressed else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: Checksum) -> bool:
    try:
        return file_digest(path, checksum.algorithm, checksum.decompressed) == checksum.hexdigest.lower()
    except (gzip.BadGzipFile, EOFError, zlib.error):
        return False


def _fetch_to(url: str, f) -> None:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
        shutil.copyfileobj(r, f, _CHUNK)


def download_file(urls: Sequence[str], dest: Path, checksum: Checksum) -> Path:
    """Download ``dest`` from the first mirror in ``urls`` that delivers bytes matching ``checksum``.

    The file only appears under its final name once verified (temp file in the same folder + rename), so an
    interrupted or corrupted download never looks like a good file.
    """
    dest = Path(dest)
    if dest.is_file() and verify(dest, checksum):  # already there, e.g. put there by hand
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create download folder {dest.parent} ({e.strerror or e})") from None
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch_to(url, f)
            if verify(Path(tmp), checksum):
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: {checksum.algorithm} checksum mismatch")
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise UserError(f"could not download {dest.name} ({'; '.join(failures)}); "
                    f"download it by hand and put it at {dest}")
