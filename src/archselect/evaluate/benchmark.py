"""NAS-Bench-201 lookup: the benchmark table, importing it into the user's cache, and finding it again.

The table is a CSV with one row per NB201 cell (format: `COLUMNS`; blank cell = missing value). Row i must hold index i,
so `metric_array(col)[index]` is that architecture's value. Architectures are matched by their canonical arch string
(`Architecture.to_nb201_string()`). Every result can name the table that answered through `describe()`: its path,
version label and sha256.

`import_table` also converts the official releases (NAS-Bench-201 `.pth`, NATS-Bench topology archives) into that CSV,
reading them without running code: `torch.load(weights_only=True)` for `.pth`, `archselect.safe_pickle` for `.pbz2`.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from .. import logs, safe_pickle
from ..arch import NB201_OPS, Architecture, parse_nb201
from ..errors import UserError
from ..files import atomic_write_bytes

METRIC_COLUMNS = (
    "cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_valid", "imagenet16_test",
    "params_m", "flops_m", "edgegpu_latency_ms", "raspi4_latency_ms", "pixel3_latency_ms",
)
COLUMNS = ("index", "arch", *METRIC_COLUMNS)
TABLE_NAME = "nb201.csv"  # inside <cache>/benchmarks/, next to its sidecar nb201.json
IMPORT_HINT = (
    "no NAS-Bench-201 table found: import one with `archselect benchmark import PATH` (PATH: a nb201 CSV, "
    "NAS-Bench-201-v1_*.pth or a NATS-tss-v1_0-3ffb9-simple directory), or set ARCHSELECT_NB201 to a table CSV"
)

# Matches exactly the canonical form, so the common case skips the (slower) full parser at load time.
_OP = "(?:" + "|".join(NB201_OPS) + ")"
_CANONICAL = re.compile(rf"\|{_OP}~0\|\+\|{_OP}~0\|{_OP}~1\|\+\|{_OP}~0\|{_OP}~1\|{_OP}~2\|")


class Best(NamedTuple):
    index: int
    arch: str
    value: float


def _canonical(arch: Architecture | str) -> str:
    if isinstance(arch, Architecture):
        return arch.to_nb201_string()
    if isinstance(arch, str):
        s = arch.strip()
        return s if _CANONICAL.fullmatch(s) else parse_nb201(s).to_nb201_string()
    raise UserError(f"expected a NAS-Bench-201 architecture or arch string, got {type(arch).__name__}")


def _csv_rows(reader, where: str):
    try:
        yield from reader
    except csv.Error as e:  # e.g. an unterminated quote
        raise UserError(f"{where}:{reader.line_num}: not valid CSV ({e})") from None


def _parse_csv(data: bytes, where: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Validate and parse table bytes; errors name `where` (the file) and the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not a text (UTF-8) table ({e})") from None
    reader = csv.reader(io.StringIO(text), strict=True)
    rows = _csv_rows(reader, where)
    header = [h.strip() for h in next(rows, [])]
    if "index" not in header or "arch" not in header:
        raise UserError(f"{where}:1: wrong header, expected the columns {','.join(COLUMNS)}")
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        detail = "; ".join(filter(None, [missing and f"missing columns {', '.join(missing)}",
                                         unknown and f"unknown columns {', '.join(unknown)}",
                                         len(set(header)) != len(header) and "a column appears twice"]))
        raise UserError(f"{where}:1: wrong header: {detail}")
    pos = {c: header.index(c) for c in COLUMNS}
    archs: list[str] = []
    seen: dict[str, int] = {}  # arch -> line, to name both lines of a duplicate
    values: dict[str, list[float]] = {c: [] for c in METRIC_COLUMNS}
    for row in rows:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank line (e.g. at the end of the file)
        if len(row) != len(header):
            raise UserError(f"{where}:{line}: expected {len(header)} cells, got {len(row)}")
        if row[pos["index"]].strip() != str(len(archs)):
            raise UserError(f"{where}:{line}: index {row[pos['index']]!r} out of order (expected {len(archs)}: "
                            "rows must be in index order 0, 1, 2, ...)")
        try:
            arch = _canonical(row[pos["arch"]])
        except UserError as e:
            raise UserError(f"{where}:{line}: {e}") from None
        if arch in seen:
            raise UserError(f"{where}:{line}: arch {arch} already appears on line {seen[arch]}")
        seen[arch] = line
        archs.append(arch)
        for c in METRIC_COLUMNS:
            cell = row[pos[c]].strip()
            if not cell:
                values[c].append(math.nan)
                continue
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):  # also refuses 'nan'/'inf': the format marks a missing value by a blank
                raise UserError(f"{where}:{line}: {c} = {cell!r} is not a number (leave the cell blank if missing)")
            values[c].append(v)
    if not archs:
        raise UserError(f"{where}: the table has no rows")
    metrics = {c: np.array(v, dtype=np.float64) for c, v in values.items()}
    for a in metrics.values():
        a.flags.writeable = False  # metric_array hands these out without copying
    return archs, metrics


class NB201Table:
    """The NAS-Bench-201 table: canonical arch strings plus one float array (NaN = missing) per metric column."""

    def __init__(self, archs: list[str], metrics: dict[str, np.ndarray], *, path: str, sha256: str, version: str):
        self._archs = archs
        self._index = {a: i for i, a in enumerate(archs)}
        self._metrics = metrics
        self.path, self.sha256, self.version = path, sha256, version

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NB201Table":
        p = Path(path).expanduser()
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read NAS-Bench-201 table {p}: {e.strerror or e}") from None
        archs, metrics = _parse_csv(data, str(p))
        sha = hashlib.sha256(data).hexdigest()
        return cls(archs, metrics, path=str(p), sha256=sha, version=_version_label(p, sha))

    # -- queries --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._archs)

    def __repr__(self) -> str:
        return f"NB201Table({len(self)} archs, version={self.version!r}, path={self.path!r})"

    @property
    def columns(self) -> tuple[str, ...]:
        return METRIC_COLUMNS

    @property
    def arch_strings(self) -> tuple[str, ...]:
        return tuple(self._archs)

    def index_of(self, arch: Architecture | str) -> int:
        key = _canonical(arch)
        try:
            return self._index[key]
        except KeyError:
            raise UserError(f"architecture {key} is not in the NAS-Bench-201 table {self.path}") from None

    def arch_at(self, index: int) -> Architecture:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise UserError(f"NAS-Bench-201 index {index!r} out of range 0..{len(self) - 1}")
        return parse_nb201(self._archs[int(index)])

    def lookup(self, arch: Architecture | str) -> dict[str, Any]:
        """All metrics of one architecture (None where the table has no value), plus its 'index' and 'arch'."""
        i = self.index_of(arch)
        out: dict[str, Any] = {"index": i, "arch": self._archs[i]}
        for c, a in self._metrics.items():
            v = float(a[i])
            out[c] = None if math.isnan(v) else v
        return out

    def metric_array(self, column: str) -> np.ndarray:
        """Read-only array of `column`, position = NB201 index, NaN where missing."""
        try:
            return self._metrics[column]
        except KeyError:
            choices = ", ".join(METRIC_COLUMNS)
            raise UserError(f"unknown NAS-Bench-201 column {column!r}; choose one of: {choices}") from None

    def percentile(self, column: str, value: float) -> float:
        """The share (%) of the table's cells with a value of `column` at most `value` (100: none is better)."""
        a = self.metric_array(column)
        a = a[~np.isnan(a)]
        return 100.0 * float((a <= value).sum()) / max(len(a), 1)

    def best(self, column: str, *, minimize: bool = False) -> Best:
        """The architecture with the highest (or, with minimize, lowest) value; ties go to the lowest index."""
        a = self.metric_array(column)
        if np.isnan(a).all():
            raise UserError(f"column {column} of {self.path} has no values")
        i = int(np.nanargmin(a) if minimize else np.nanargmax(a))
        return Best(i, self._archs[i], float(a[i]))

    def describe(self) -> dict[str, Any]:
        """Which benchmark answered: for results and reports."""
        return {"benchmark": "nas-bench-201", "version": self.version, "sha256": self.sha256,
                "path": self.path, "rows": len(self)}


# -- cache, sidecar, locating the table ------------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The user's archselect cache: `cache_dir`, else $ARCHSELECT_CACHE, else ~/.cache/archselect."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ARCHSELECT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archselect"


def _sidecar(table: Path) -> Path:
    return table.with_suffix(".json")


def _version_label(table: Path, sha: str) -> str:
    # Trust the sidecar's label only while the table is the very file it describes.
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        meta = json.loads(_sidecar(table).read_text())
        if meta.get("sha256") == sha and isinstance(meta.get("version"), str):
            return meta["version"]
    return table.name


def default_table(cache_dir: str | os.PathLike | None = None) -> NB201Table | None:
    """The table imported into the cache, or None if there is none yet."""
    path = cache_root(cache_dir) / "benchmarks" / TABLE_NAME
    return NB201Table.load(path) if path.is_file() else None


def find_table(path: str | None = None, cache_dir: str | os.PathLike | None = None) -> NB201Table | None:
    """An explicit table path first, then $ARCHSELECT_NB201, then the imported table; None if none (see IMPORT_HINT)."""
    for given, origin in ((path, ""), (os.environ.get("ARCHSELECT_NB201"), " (from ARCHSELECT_NB201)")):
        if given:
            p = Path(given).expanduser()
            if not p.exists():
                raise UserError(f"NAS-Bench-201 table {given}{origin} does not exist")
            if p.is_dir() or p.suffix in (".pth", ".pbz2"):
                raise UserError(f"{given}{origin} is a benchmark release, not a table: "
                                f"run `archselect benchmark import {given}` once, then use the imported table")
            return NB201Table.load(p)
    return default_table(cache_dir)


def import_table(src: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Validate/convert `src` into <cache>/benchmarks/nb201.csv (+ nb201.json sidecar); return the table's path.

    `src`: a table CSV (copied byte for byte), a NAS-Bench-201 release `.pth`, a NATS-Bench topology archive
    directory (`NATS-tss-v1_0-3ffb9-simple`), or the single-file NATS release `NATS-tss-v1_0-3ffb9.pickle.pbz2`.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise UserError(f"benchmark source {src} does not exist")
    with logs.heartbeat("benchmark import"):  # a release takes minutes to read and convert
        data, version = _table_data(src)
        archs, _ = _parse_csv(data, str(src))  # never cache a table that would not load
    dest_dir = cache_root(cache_dir) / "benchmarks"
    dest = dest_dir / TABLE_NAME
    sha = hashlib.sha256(data).hexdigest()
    meta = {"source": str(src.resolve()), "version": version, "sha256": sha, "rows": len(archs),
            "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_bytes(dest, data)  # a file-system error is one line naming the file
    atomic_write_bytes(_sidecar(dest), (json.dumps(meta, indent=2) + "\n").encode())
    return dest


def _table_data(src: Path) -> tuple[bytes, str]:
    """The table CSV of `src` and the version it records."""
    if src.is_dir():
        return _convert_nats_dir(src), src.name
    if src.suffix == ".pth":
        return _convert_release(_load_pth(src), src.name), src.stem
    if src.name.endswith(".pbz2"):
        return _convert_release(_load_pbz2(src), src.name), src.name.split(".")[0]
    try:
        return src.read_bytes(), src.name
    except OSError as e:
        raise UserError(f"cannot read {src}: {e.strerror or e}") from None


# -- official releases ------------------------------------------------------------------------------------------------
# The structure below follows the published NAS-Bench-201 / NATS-Bench API documentation (nas_201_api, nats_bench):
#   release = {'meta_archs': [arch str, ...], 'arch2infos': {index: {hp: ArchResults state}}, 'evaluated_indexes': ...}
#   hp: '200' (NATS-Bench) or 'full' (NAS-Bench-201 .pth) for the 200-epoch schedule;
#   ArchResults state = {'dataset_seed': {dataset: [seed, ...]}, 'all_results': {(dataset, seed): ResultsCount state}};
#   ResultsCount state = {'epochs': n, 'params': M, 'flop': M, 'eval_acc1es': {'<set>@<epoch>': accuracy}}.
# It is tested on small synthetic files written in that structure only, never on the real (multi-GB) releases.
_SPLITS = {  # table column -> (dataset, evaluation set); the test columns are the ones the papers report
    "cifar10_valid": ("cifar10-valid", "x-valid"),
    "cifar10_test": ("cifar10", "ori-test"),
    "cifar100_test": ("cifar100", "x-test"),
    "imagenet16_valid": ("ImageNet16-120", "x-valid"),
    "imagenet16_test": ("ImageNet16-120", "x-test"),
}


def _need(d: Any, key: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a dict, found {type(d).__name__}")
    if key not in d:
        raise UserError(f"{where}: missing key {key!r}")
    return d[key]


def _number(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise UserError(f"{where}: {v!r} is not a number")
    return x


def _release_row(index: int, arch: Any, hps: Any, where: str) -> list[Any]:
    """One table row from an architecture's per-hyper-parameter results (mean over seeds, last epoch, 200 epochs)."""
    if not isinstance(arch, str):
        raise UserError(f"{where}: meta_archs[{index}] is not an arch string")
    try:
        arch = _canonical(arch)
    except UserError as e:
        raise UserError(f"{where}: meta_archs[{index}]: {e}") from None
    if not isinstance(hps, dict) or not ("200" in hps or "full" in hps):
        _need(hps, "200", f"{where}: arch {index} (200-epoch results: '200', or 'full' in NAS-Bench-201 .pth files)")
    state = hps["200"] if "200" in hps else hps["full"]
    seeds_of = _need(state, "dataset_seed", f"{where}: arch {index}")
    runs = _need(state, "all_results", f"{where}: arch {index}")

    def per_seed(dataset: str, read: Callable[[dict, str], float]) -> float:
        seeds = _need(seeds_of, dataset, f"{where}: arch {index} dataset_seed")
        if not isinstance(seeds, (list, tuple)) or not seeds:
            raise UserError(f"{where}: arch {index}: no seeds for {dataset!r}")
        vals = []
        for seed in seeds:
            at = f"{where}: arch {index} {dataset!r} seed {seed}"
            vals.append(read(_need(runs, (dataset, seed), f"{where}: arch {index} all_results"), at))
        return float(np.mean(vals))

    def accuracy(evalset: str) -> Callable[[dict, str], float]:
        def read(run: dict, at: str) -> float:
            epochs = _need(run, "epochs", at)
            if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
                raise UserError(f"{at}: 'epochs' = {epochs!r} is not a positive integer")
            accs = _need(run, "eval_acc1es", at)
            key = f"{evalset}@{epochs - 1}"
            return _number(_need(accs, key, f"{at} eval_acc1es"), f"{at} eval_acc1es[{key!r}]")
        return read

    row: list[Any] = [index, arch]
    row += [per_seed(ds, accuracy(s)) for ds, s in _SPLITS.values()]
    for key in ("params", "flop"):  # the CIFAR-10 network, as in the table's params_m / flops_m
        row.append(per_seed("cifar10", lambda run, at, key=key: _number(_need(run, key, at), f"{at} {key}")))
    return row + [None, None, None]  # device latencies come from HW-NAS-Bench, not from these releases


def _table_bytes(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in r])
    return out.getvalue().encode()


def _meta_archs(release: Any, where: str) -> list:
    archs = _need(release, "meta_archs", where)
    if not isinstance(archs, (list, tuple)) or not archs:
        raise UserError(f"{where}: 'meta_archs' is not a non-empty list of arch strings")
    return list(archs)


def _convert_release(release: Any, where: str) -> bytes:
    """A whole release held in memory (NAS-Bench-201 .pth, NATS single file)."""
    archs = _meta_archs(release, where)
    infos = _need(release, "arch2infos", where)
    rows = []
    for i, arch in enumerate(logs.track(archs, "benchmark import", unit="architecture")):
        key = str(i) if isinstance(infos, dict) and str(i) in infos else i  # the releases key by int
        hps = _need(infos, key, f"{where}: arch2infos")
        rows.append(_release_row(i, arch, hps, where))
    return _table_bytes(rows)


def _load_pbz2(path: Path) -> Any:
    """A bz2-compressed pickle of plain data, read with the restricted unpickler (never pickle.load)."""
    try:
        decompressor = bz2.BZ2Decompressor()
        data = decompressor.decompress(path.read_bytes(), max_length=MAX_PBZ2_BYTES + 1)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable .pbz2 file ({e})") from None
    if len(data) > MAX_PBZ2_BYTES:
        raise UserError(f"{path}: decompresses to more than the {MAX_PBZ2_BYTES} bytes a NATS-Bench file may hold")
    return safe_pickle.loads(data, what=str(path))


MAX_PBZ2_BYTES = 1 << 30  # the NATS-Bench fast-mode meta file is well under this; a bz2 bomb is stopped here


def _convert_nats_dir(root: Path) -> bytes:
    """The NATS-Bench 'fast mode' archive: meta.pickle.pbz2 + one {index:06d}.pickle.pbz2 per architecture."""
    meta_path = root / "meta.pickle.pbz2"
    if not meta_path.is_file():
        raise UserError(f"{root} is not a NATS-Bench archive directory: it has no meta.pickle.pbz2")
    archs = _meta_archs(_load_pbz2(meta_path), str(meta_path))
    rows = []
    for i, arch in enumerate(logs.track(archs, "benchmark import", unit="architecture")):
        f = next((p for p in (root / f"{i:06d}.pickle.pbz2", root / f"{i}.pickle.pbz2") if p.is_file()), None)
        if f is None:
            raise UserError(f"{root}: missing {i:06d}.pickle.pbz2 (architecture {i} of {len(archs)})")
        try:
            hps = _load_pbz2(f)
        except UserError as e:
            if root.name.endswith("-full"):  # that archive also stores trained weights, which are not plain data
                raise UserError(f"{e}; use the NATS-tss-v1_0-3ffb9-simple archive instead") from None
            raise
        rows.append(_release_row(i, arch, hps, f.name))
    return _table_bytes(rows)


def _load_pth(path: Path) -> Any:
    """torch.load with weights_only=True only; numpy scalars/arrays are allowed as the data they are."""
    import torch  # imported here: loading a CSV table must not pay for torch

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(c)) for c in "?bhilqBHILQefdFD"}  # numpy 2 pickles a dtype via its class
    allowed = [np.dtype, *dtype_classes, np.ndarray, core.scalar, core._reconstruct,
               (core.scalar, "numpy.core.multiarray.scalar"),  # files written under numpy 1.x name the old module
               (core._reconstruct, "numpy.core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside torch.load in many ways, all "unreadable"
        msg = str(e)
        if "WeightsUnpickler error:" in msg:  # the file asks for code, not data: refuse, naming what it asked for
            reason = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". Please")[0]
            raise UserError(f"{path}: could not be read safely ({reason}): archselect reads .pth files only with "
                            "torch.load(weights_only=True), which refuses anything but plain data") from None
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        raise UserError(f"{path}: not a readable .pth file ({first})") from None
