"""NAS-Bench-201 table, import/convert into the cache, locating the table, and the rank correlations."""
from __future__ import annotations

import bz2
import hashlib
import itertools
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archselect.arch import NB201_OPS, parse_nb201
from archselect.errors import UserError
from archselect.evaluate.benchmark import (COLUMNS, IMPORT_HINT, METRIC_COLUMNS, NB201Table, default_table, find_table,
                                           import_table)
from archselect.evaluate.correlation import kendall_tau, rankdata, spearman

REAL = Path(__file__).resolve().parents[1].parent / "shared/data/nb201/nb201.csv"
REAL_SHA = "95e195936c34d738b745e773db94a1587524612d10e05b2e8225fa8b550f0b41"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="development table ../shared/data/nb201/nb201.csv absent")

# The first few archs of the space in product order: distinct, valid, canonical.
ARCHS = [f"|{a}~0|+|{b}~0|{c}~1|+|{d}~0|{e}~1|{f}~2|"
         for a, b, c, d, e, f in itertools.islice(itertools.product(NB201_OPS, repeat=6), 200, 204)]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # Never read or write the real user cache, whatever the developer's environment holds.
    monkeypatch.setenv("ARCHSELECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ARCHSELECT_NB201", raising=False)


@pytest.fixture(scope="module")
def real():
    if not REAL.is_file():
        pytest.skip("development table absent")
    return NB201Table.load(REAL)


def tiny_csv(path: Path, rows: list[list[str]] | None = None, header: str = ",".join(COLUMNS)) -> Path:
    if rows is None:
        rows = [[str(i), a, f"{80 + i}", f"{90 + i}", "70", "", "40", "0.5", "50", "1", "2", "3"]
                for i, a in enumerate(ARCHS)]
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


# -- the real table (data/README.md checks) --------------------------------------------------------------------------
@needs_real
def test_real_table_checks(real):
    assert len(real) == 15625
    assert len(set(real.arch_strings)) == 15625
    assert real.sha256 == REAL_SHA
    for column, value, index in [("cifar10_test", 94.3733, 6111), ("cifar100_test", 73.5133, 9930),
                                 ("imagenet16_test", 47.3111, 857)]:
        best = real.best(column)
        assert (best.index, best.value) == (index, pytest.approx(value))
        assert best.arch == real.arch_strings[index]
    assert np.isnan(real.metric_array("imagenet16_valid")).sum() == 6180


@needs_real
def test_real_round_trip_every_row(real):
    for i in range(len(real)):
        arch = real.arch_at(i)
        assert real.index_of(arch) == i
        assert arch.to_nb201_string() == real.arch_strings[i]


@needs_real
def test_real_lookup_by_string_and_architecture(real):
    s = real.arch_strings[6111]
    by_string, by_arch = real.lookup(s), real.lookup(parse_nb201(s))
    assert by_string == by_arch
    assert set(by_string) == set(COLUMNS)
    assert by_string["index"] == 6111 and by_string["cifar10_test"] == pytest.approx(94.3733)
    assert real.lookup(real.arch_strings[3])["imagenet16_valid"] is None  # blank cell -> None
    # The same cell written with its edges in another order is the same architecture.
    groups = s.split("+")
    reordered = "+".join(groups[:2] + ["|" + "|".join(reversed(groups[2][1:-1].split("|"))) + "|"])
    assert reordered != s and real.index_of(reordered) == 6111


# -- table behaviour on a tiny table ---------------------------------------------------------------------------------
def test_tiny_table_queries(tmp_path):
    t = NB201Table.load(tiny_csv(tmp_path / "t.csv"))
    assert len(t) == 4 and t.columns == METRIC_COLUMNS
    assert t.lookup(ARCHS[2])["cifar10_valid"] == 82.0 and t.lookup(ARCHS[2])["imagenet16_valid"] is None
    assert t.best("cifar10_test") == (3, ARCHS[3], 93.0)
    assert t.best("cifar10_test", minimize=True).index == 0
    assert t.best("cifar100_test").index == 0  # ties go to the lowest index
    arr = t.metric_array("cifar10_valid")
    assert arr.tolist() == [80, 81, 82, 83]
    with pytest.raises(ValueError):
        arr[0] = 1.0  # read-only: callers cannot corrupt the table
    assert t.describe()["sha256"] == hashlib.sha256((tmp_path / "t.csv").read_bytes()).hexdigest()
    assert t.version == "t.csv"


def test_tiny_table_user_errors(tmp_path):
    t = NB201Table.load(tiny_csv(tmp_path / "t.csv"))
    other = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"  # valid, but not in this table
    with pytest.raises(UserError, match="not in the NAS-Bench-201 table"):
        t.lookup(other)
    with pytest.raises(UserError, match="not in the NAS-Bench-201 table"):
        t.index_of(parse_nb201(other))
    with pytest.raises(UserError, match="unknown NAS-Bench-201 operation"):
        t.lookup("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    for bad in (-1, 4, True, 1.0):
        with pytest.raises(UserError, match="out of range"):
            t.arch_at(bad)
    with pytest.raises(UserError, match="unknown NAS-Bench-201 column"):
        t.metric_array("cifar10_tset")
    with pytest.raises(UserError, match="no values"):
        t.best("imagenet16_valid")


def _row(i: int, arch: str | None = None) -> list[str]:
    return [str(i), arch or ARCHS[i], "80", "90", "70", "", "40", "0.5", "50", "1", "2", "3"]


@pytest.mark.parametrize("header,rows,needle", [
    (",".join(COLUMNS[:-1]), [r[:-1] for r in map(_row, range(2))], ":1: wrong header: missing columns pixel3"),
    (",".join(COLUMNS) + ",extra", [_row(0) + ["1"]], ":1: wrong header: unknown columns extra"),
    (",".join(_row(0)), [_row(1)], ":1: wrong header"),  # no header line at all
    (",".join(COLUMNS), [_row(0), _row(1)[:5]], ":3: expected 12 cells, got 5"),
    (",".join(COLUMNS), [_row(0), _row(1)[:3] + ["9x"] + _row(1)[4:]], ":3: cifar10_test = '9x' is not a number"),
    (",".join(COLUMNS), [_row(0), _row(1)[:3] + ["nan"] + _row(1)[4:]], ":3: cifar10_test = 'nan' is not a number"),
    (",".join(COLUMNS), [_row(0), _row(1, ARCHS[0])], ":3: arch .* already appears on line 2"),
    (",".join(COLUMNS), [_row(0), _row(2)], ":3: index '2' out of order"),
    (",".join(COLUMNS), [_row(0), _row(1, "|bogus~0|")], ":3: bad NAS-Bench-201 arch string"),
    (",".join(COLUMNS), [], "the table has no rows"),
    (",".join(COLUMNS), [_row(0), ['"1'] + _row(1)[1:]], ":3: not valid CSV"),
])
def test_malformed_tables_name_file_and_line(tmp_path, header, rows, needle):
    path = tiny_csv(tmp_path / "bad.csv", rows, header)
    pattern = r"bad\.csv" + (needle if needle.startswith(":") else ": " + needle)
    with pytest.raises(UserError, match=pattern):
        NB201Table.load(path)


def test_unreadable_tables(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        NB201Table.load(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="bin.csv: not a text"):
        NB201Table.load(tmp_path / "bin.csv")


# -- import into the cache and find the table again ------------------------------------------------------------------
def test_import_csv_into_cache_and_reload(tmp_path):
    src = tiny_csv(tmp_path / "mine.csv")
    assert default_table() is None and find_table(None) is None
    dest = import_table(src)
    assert dest == tmp_path / "cache" / "benchmarks" / "nb201.csv"
    assert dest.read_bytes() == src.read_bytes()  # a CSV is copied byte for byte
    meta = json.loads(dest.with_suffix(".json").read_text())
    assert meta["source"] == str(src.resolve()) and meta["rows"] == 4 and meta["imported_at"]
    assert meta["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["nb201.csv", "nb201.json"]  # no temp files left
    t = default_table()
    assert t is not None and t.version == "mine.csv" and t.sha256 == meta["sha256"]
    assert find_table(None).path == str(dest)
    # An edited table no longer claims the sidecar's label.
    dest.write_text(dest.read_text().replace(",80,", ",79,"))
    assert default_table().version == "nb201.csv"


def test_import_explicit_cache_dir_and_refusals(tmp_path):
    dest = import_table(tiny_csv(tmp_path / "mine.csv"), cache_dir=tmp_path / "elsewhere")
    assert dest.parent == tmp_path / "elsewhere" / "benchmarks"
    bad = tiny_csv(tmp_path / "bad.csv", [_row(0), _row(0)])
    with pytest.raises(UserError, match="bad.csv:3"):
        import_table(bad)
    assert not (tmp_path / "cache" / "benchmarks" / "nb201.csv").exists()  # nothing cached from a bad source
    with pytest.raises(UserError, match="does not exist"):
        import_table(tmp_path / "nope.csv")


@needs_real
def test_import_real_table(tmp_path):
    dest = import_table(REAL)
    t = default_table()
    assert len(t) == 15625 and t.sha256 == REAL_SHA and t.path == str(dest)
    assert json.loads(dest.with_suffix(".json").read_text())["rows"] == 15625


def test_find_table_precedence(tmp_path, monkeypatch):
    a = tiny_csv(tmp_path / "a.csv")
    b = tiny_csv(tmp_path / "b.csv")
    import_table(tiny_csv(tmp_path / "c.csv"))
    assert find_table(None).version == "c.csv"
    monkeypatch.setenv("ARCHSELECT_NB201", str(b))
    assert find_table(None).path == str(b)
    assert find_table(str(a)).path == str(a)
    monkeypatch.setenv("ARCHSELECT_NB201", str(tmp_path / "gone.csv"))
    with pytest.raises(UserError, match="from ARCHSELECT_NB201"):
        find_table(None)
    with pytest.raises(UserError, match="does not exist"):
        find_table(str(tmp_path / "missing.csv"))
    (tmp_path / "NAS-Bench-201-v1_1-096897.pth").write_bytes(b"")
    with pytest.raises(UserError, match="archselect benchmark import"):
        find_table(str(tmp_path / "NAS-Bench-201-v1_1-096897.pth"))
    assert "archselect benchmark import PATH" in IMPORT_HINT


# -- official release converters on synthetic files --------------------------------------------------------------
# These files imitate the structure documented by the NAS-Bench-201 / NATS-Bench APIs; they are small and synthetic.
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test")}
OFFSET = {("cifar10-valid", "x-valid"): 10, ("cifar10", "ori-test"): 20, ("cifar100", "x-test"): 30,
          ("ImageNet16-120", "x-valid"): 40, ("ImageNet16-120", "x-test"): 45}
SEEDS = (777, 888)


def arch_results(i: int, epochs: int, scalar=float) -> dict:
    """An ArchResults state dict: the last epoch's accuracy is OFFSET + i + seed position; earlier epochs are 1.0."""
    all_results, dataset_seed = {}, {}
    for ds, sets in EVAL_SETS.items():
        dataset_seed[ds] = list(SEEDS)
        for k, seed in enumerate(SEEDS):
            accs = {f"{s}@{e}": scalar(OFFSET.get((ds, s), 5) + i + k if e == epochs - 1 else 1.0)
                    for s in sets for e in range(epochs)}
            all_results[(ds, seed)] = {
                "name": ds, "net_state_dict": None, "seed": seed, "epochs": epochs, "eval_names": list(sets),
                "eval_acc1es": accs, "eval_losses": {key: scalar(0.5) for key in accs}, "eval_times": {},
                "params": scalar(0.1 * (i + 1) + k * 0.01), "flop": scalar(10.0 * (i + 1)), "latency": [0.01],
                "train_acc1es": {e: scalar(50.0) for e in range(epochs)}, "arch_config": {"arch_str": ARCHS[i]}}
    return {"arch_index": i, "arch_str": ARCHS[i], "all_results": all_results, "dataset_seed": dataset_seed,
            "clear_net_done": True}


def expected_row(i: int) -> dict:
    return {"index": i, "arch": ARCHS[i], "cifar10_valid": 10 + i + 0.5, "cifar10_test": 20 + i + 0.5,
            "cifar100_test": 30 + i + 0.5, "imagenet16_valid": 40 + i + 0.5, "imagenet16_test": 45 + i + 0.5,
            "params_m": pytest.approx(0.1 * (i + 1) + 0.005), "flops_m": 10.0 * (i + 1),
            "edgegpu_latency_ms": None, "raspi4_latency_ms": None, "pixel3_latency_ms": None}


def write_pbz2(path: Path, obj) -> Path:
    path.write_bytes(bz2.compress(pickle.dumps(obj, protocol=4)))
    return path


def nats_dir(root: Path, n: int = 3) -> Path:
    root.mkdir()
    write_pbz2(root / "meta.pickle.pbz2", {"meta_archs": ARCHS[:n], "arch2infos": {}, "evaluated_indexes": []})
    for i in range(n):
        write_pbz2(root / f"{i:06d}.pickle.pbz2", {"12": arch_results(i, 12), "200": arch_results(i, 4)})
    return root


def test_convert_nas_bench_201_pth(tmp_path):
    torch = pytest.importorskip("torch")
    release = {"meta_archs": ARCHS[:3], "evaluated_indexes": [0, 1, 2],
               "arch2infos": {i: {"less": arch_results(i, 12, np.float64), "full": arch_results(i, 4, np.float64)}
                              for i in range(3)}}
    src = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    torch.save(release, src)
    import_table(src)
    t = default_table()
    assert len(t) == 3 and t.version == "NAS-Bench-201-v1_1-096897"
    for i in range(3):
        assert t.lookup(ARCHS[i]) == expected_row(i)


def test_convert_nats_simple_directory_and_single_file(tmp_path):
    src = nats_dir(tmp_path / "NATS-tss-v1_0-3ffb9-simple")
    import_table(src)
    t = default_table()
    assert t.version == "NATS-tss-v1_0-3ffb9-simple"
    assert [t.lookup(a) for a in ARCHS[:3]] == [expected_row(i) for i in range(3)]
    single = write_pbz2(tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2", {
        "meta_archs": ARCHS[:2], "evaluated_indexes": [0, 1],
        "arch2infos": {i: {"12": arch_results(i, 12), "200": arch_results(i, 4)} for i in range(2)}})
    import_table(single)
    t = default_table()
    assert t.version == "NATS-tss-v1_0-3ffb9"
    assert [t.lookup(a) for a in ARCHS[:2]] == [expected_row(i) for i in range(2)]
    for i in range(3):  # per-arch files may also be named without zero padding
        (src / f"{i:06d}.pickle.pbz2").rename(src / f"{i}.pickle.pbz2")
    import_table(src)
    assert [default_table().lookup(a) for a in ARCHS[:3]] == [expected_row(i) for i in range(3)]


def _drop(d: dict, *path):
    for key in path[:-1]:
        d = d[key]
    del d[path[-1]]


@pytest.mark.parametrize("path,needle", [
    (("200",), "missing key '200'"),
    (("200", "dataset_seed"), "missing key 'dataset_seed'"),
    (("200", "dataset_seed", "cifar100"), "missing key 'cifar100'"),
    (("200", "all_results", ("ImageNet16-120", 888)), r"missing key \('ImageNet16-120', 888\)"),
    (("200", "all_results", ("cifar100", 777), "eval_acc1es", "x-test@3"), "missing key 'x-test@3'"),
    (("200", "all_results", ("cifar10", 777), "epochs"), "missing key 'epochs'"),
    (("200", "all_results", ("cifar10", 888), "flop"), "missing key 'flop'"),
])
def test_release_missing_keys_are_named(tmp_path, path, needle):
    root = nats_dir(tmp_path / "NATS-tss-v1_0-3ffb9-simple", n=2)
    hps = {"12": arch_results(1, 12), "200": arch_results(1, 4)}
    _drop(hps, *path)
    write_pbz2(root / "000001.pickle.pbz2", hps)
    with pytest.raises(UserError, match=f"000001.pickle.pbz2: arch 1.*{needle}"):
        import_table(root)


def test_release_structure_errors(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"arch2infos": {}}, tmp_path / "a.pth")
    with pytest.raises(UserError, match="missing key 'meta_archs'"):
        import_table(tmp_path / "a.pth")
    torch.save({"meta_archs": ARCHS[:2], "arch2infos": {0: {"full": arch_results(0, 4)}}}, tmp_path / "b.pth")
    with pytest.raises(UserError, match="arch2infos: missing key 1"):
        import_table(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="c.pth: (not a readable .pth file|could not be read safely)"):
        import_table(tmp_path / "c.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no meta.pickle.pbz2"):
        import_table(tmp_path / "empty")
    root = nats_dir(tmp_path / "NATS-tss-v1_0-3ffb9-simple", n=2)
    (root / "000001.pickle.pbz2").unlink()
    with pytest.raises(UserError, match="missing 000001.pickle.pbz2"):
        import_table(root)
    (root / "000001.pickle.pbz2").write_bytes(b"BZh9 truncated")
    with pytest.raises(UserError, match="not a readable .pbz2"):
        import_table(root)


class _Trap:
    """Unpickling this would call open(marker, 'w'), creating the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pbz2_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    root = nats_dir(tmp_path / "NATS-tss-v1_0-3ffb9-simple", n=2)
    write_pbz2(root / "000001.pickle.pbz2", {"200": _Trap(marker)})
    with pytest.raises(UserError, match="000001.pickle.pbz2: not a readable data file"):
        import_table(root)
    full = root.rename(tmp_path / "NATS-tss-v1_0-3ffb9-full")  # that archive's weights would be refused the same way
    with pytest.raises(UserError, match="use the NATS-tss-v1_0-3ffb9-simple archive"):
        import_table(full)
    write_pbz2(full / "meta.pickle.pbz2", {"meta_archs": _Trap(marker)})
    with pytest.raises(UserError, match="meta.pickle.pbz2: not a readable data file"):
        import_table(full)
    assert not marker.exists()


def test_malicious_pth_refused_without_running(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    torch.save({"meta_archs": ARCHS[:1], "arch2infos": {0: _Trap(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="could not be read safely"):
        import_table(tmp_path / "evil.pth")
    assert not marker.exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    """The table import writes through files.atomic_write_bytes: a failed write keeps the old file, leaves no
    temporary file and is one line."""
    from archselect import files

    dest = tmp_path / "f.txt"
    dest.write_text("old")

    def boom(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(UserError, match="cannot write .*f.txt: No space left on device"):
        files.atomic_write_bytes(dest, b"new")
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# -- rank correlations -------------------------------------------------------------------------------------------
def brute_kendall(x, y) -> float:
    conc = disc = only_x_tied = only_y_tied = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        conc += dx * dy > 0
        disc += dx * dy < 0
        only_x_tied += dx == 0 and dy != 0
        only_y_tied += dy == 0 and dx != 0
    denom = math.sqrt((conc + disc + only_x_tied) * (conc + disc + only_y_tied))
    return (conc - disc) / denom if denom else math.nan


def brute_spearman(x, y) -> float:
    def ranks(v):  # 1 + (#smaller) + (#equal others) / 2
        return [1 + sum(w < u for w in v) + (sum(w == u for w in v) - 1) / 2 for u in v]

    rx, ry = np.array(ranks(x)), np.array(ranks(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry) / denom if denom else math.nan


pairs = st.integers(2, 25).flatmap(lambda n: st.tuples(st.lists(st.integers(0, 4), min_size=n, max_size=n),
                                                       st.lists(st.integers(-3, 3), min_size=n, max_size=n)))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@settings(max_examples=200, deadline=None)
@given(pairs)
def test_kendall_matches_brute_force(xy):
    x, y = xy
    assert _same(kendall_tau(x, y), brute_kendall(x, y))


@settings(max_examples=200, deadline=None)
@given(pairs)
def test_spearman_matches_brute_force(xy):
    x, y = xy
    assert _same(spearman(x, y), brute_spearman(x, y))


def test_correlation_known_values():
    # Textbook examples (the same ones scipy's documentation uses).
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    x = np.random.default_rng(0).permutation(1000)
    assert kendall_tau(x, x) == 1.0 and kendall_tau(x, -x) == -1.0 and spearman(x, 2 * x + 1) == pytest.approx(1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert rankdata([10, 20, 10, 30]).tolist() == [1.5, 3.0, 1.5, 4.0]


def test_kendall_large_matches_chunked_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    y = y + (x // 10)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    s = (sx * sy).sum() / 2
    expected = s / math.sqrt((np.abs(sx).sum() / 2) * (np.abs(sy).sum() / 2))
    assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)


def test_correlation_input_errors():
    with pytest.raises(UserError, match="equal length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(UserError, match="at least 2"):
        spearman([1], [2])
    with pytest.raises(UserError, match="NaN"):
        kendall_tau([1, np.nan, 3], [1, 2, 3])
