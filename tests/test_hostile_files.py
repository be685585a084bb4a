"""Run files someone hands you (issue #19): they never make archselect write outside the run directory, and a file
of the wrong shape or type is one line and exit code 2, never a traceback."""
import json
import shutil
from pathlib import Path

import pytest

from archselect.cli import main

V0 = Path(__file__).parent / "data" / "run-v0" / "finished"


def files_under(root):
    return {p for p in Path(root).rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["x/../../../../elsewhere/anything", "../../escaped", "a\x00b"])
def test_report_never_writes_outside_the_run_directory(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    run = tmp_path / "deep" / "er" / "run"
    shutil.copytree(V0, run)
    sel = json.loads((run / "selections" / "magnitude.json").read_text())
    sel["selector"] = name
    (run / "selections" / "evil.json").write_text(json.dumps(sel))
    before = files_under(tmp_path)
    code = main(["report", str(run), "--engine", "matplotlib"])
    written = files_under(tmp_path) - before
    assert code == 0, capsys.readouterr().err
    assert written and all(run / "report" in p.parents for p in written), sorted(map(str, written))


@pytest.mark.parametrize("edit", [
    {"selector": 3}, {"scores": "high"}, {"scores": {"cell": [[1, "a"]]}}, {"cost": {"forward": "many"}},
    {"cost": {"nonsense": 1}}, {"architecture": {"space": "nb201", "cells": {"cell": {"edges": [[1e309, 1, "x"]]}}}},
])
def test_a_selection_file_of_the_wrong_types_is_one_line(tmp_path, capsys, edit):
    run = tmp_path / "run"
    shutil.copytree(V0, run)
    sel = json.loads((run / "selections" / "magnitude.json").read_text())
    (run / "selections" / "magnitude.json").write_text(json.dumps({**sel, **edit}))
    code = main(["report", str(run), "--engine", "matplotlib"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("archselect: error:")


# -- input classes of the outside stress test: one line and exit code 2, nothing left behind ---------------------------

def run_main(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def one_line(code, err):
    return code == 2 and len(err) == 1 and err[0].startswith("archselect: error:")


def test_scientific_notation_is_a_number():
    from archselect.config import load_config

    cfg = load_config("configs/nb201-paper.yaml" if Path("configs/nb201-paper.yaml").is_file() else None,
                      ["search.w_weight_decay=5e-4", "search.a_lr=3E-4", "search.w_lr=.025"])
    assert (cfg.search.w_weight_decay, cfg.search.a_lr, cfg.search.w_lr) == (5e-4, 3e-4, 0.025)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n" \
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
ALIAS_BOMB = "select:\n  options:\n    magnitude:\n" + "".join("      " + line + "\n" for line in ALIAS_BOMB.splitlines())


@pytest.mark.parametrize("content", [ALIAS_BOMB.encode(), b"[" * 5000 + b"]" * 5000, b"search: {epochs: \xff\xfe}\n",
                                     ("a:\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(1, 60))).encode()])
def test_a_hostile_config_file_is_one_line_and_writes_nothing(tmp_path, capsys, content):
    (tmp_path / "c.yaml").write_bytes(content)
    code, err = run_main(["search", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")], capsys)
    assert one_line(code, err) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["threads=-1", "threads=0", f"seed={2 ** 70}", "seed=-1", "space.C=1000000",
                                      "space.N=100000", "data.image_size=100000", "search.w_lr=1e999",
                                      "search.w_lr=.inf", "data.batch_size=10000000", "search.a_beta1=2",
                                      "search.w_nesterov=true search.w_momentum=0"])
def test_settings_that_cannot_run_are_refused_up_front(tmp_path, capsys, override):
    code, err = run_main(["search", "--out", str(tmp_path / "run"), *override.split()], capsys)
    assert one_line(code, err) and not (tmp_path / "run").exists()


def test_a_config_error_found_after_the_run_directory_exists_leaves_no_half_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_main(["search", "--out", str(run), "data.data_dir=" + str(tmp_path / "nowhere")], capsys)
    assert one_line(code, err) and not run.exists()
    code, err = run_main(["search", "--out", str(run), "data.data_dir=" + str(tmp_path / "nowhere")], capsys)
    assert "already holds a run" not in err[0]


def test_stale_temporary_files_are_removed_when_a_run_is_locked(tmp_path):
    from archselect.runs import RunDir, atomic_write_bytes

    run = RunDir(tmp_path / "run")
    atomic_write_bytes(run.path.joinpath("config.yaml"), b"seed: 0\n")
    stale = [run.path.joinpath(".config.yaml.abc.tmp"), run.path.joinpath("checkpoints", ".search-00000004.safetensors.x.tmp"),
             run.path.joinpath("selections", ".shapley.json.y.tmp")]
    nested = run.path.joinpath("split", "0", ".config.yaml.z.tmp")  # a node's own writer may be alive: not ours to remove
    for p in [*stale, nested]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 1000)
    with run:
        assert not any(p.exists() for p in stale) and nested.exists() and run.path.joinpath("config.yaml").exists()


@pytest.mark.parametrize("text", ["|nor_conv_3x3~²|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|",
                                  "|nor_conv_3x3~٠|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|",
                                  "Genotype(normal=[('sep_conv_3x3', " + "9" * 5000 + ")])",
                                  "x" * 5000, "/" + "a" * 300 + "/b", "a\0b"])
def test_hostile_architecture_arguments_are_one_line(tmp_path, capsys, text):
    code, err = run_main(["train", text, "--out", str(tmp_path / "run")], capsys)
    assert one_line(code, err) and not (tmp_path / "run").exists()


def test_ascii_digits_only_are_benchmark_indices():
    from archselect.arch import parse_index

    assert parse_index("15") == 15 and parse_index("٣") is None and parse_index("²") is None
    assert parse_index("1" * 13) is None


@pytest.mark.parametrize("content", [b'{"architecture": {"space": "nb201", "cells": {"cell": {"edges": [[Infinity, 1, "none"]]}}}}',
                                     b"[" * 100000 + b"]" * 100000, b'{"architecture": "\xff\xfe"}', b"NaN"])
def test_hostile_architecture_files_are_one_line(tmp_path, capsys, content):
    (tmp_path / "a.json").write_bytes(content)
    code, err = run_main(["train", str(tmp_path / "a.json"), "--out", str(tmp_path / "run")], capsys)
    assert one_line(code, err) and not (tmp_path / "run").exists()


def test_an_idx_header_cannot_demand_more_than_the_reader_allows(tmp_path):
    import gzip
    import struct

    from archselect.data.idx import read_idx
    from archselect.errors import UserError

    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:  # a header declaring 60000 x 1000 x 1000 bytes, and a zero-filled body
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 1000, 1000) + b"\0" * 100_000)
    assert path.stat().st_size < 2000
    with pytest.raises(UserError, match="declares"):
        read_idx(path)
    with pytest.raises(UserError, match="more than"):  # a body beyond the limit is never decompressed in full
        read_idx(path, limit=1000)


def test_a_bz2_bomb_is_stopped_at_the_limit(tmp_path, monkeypatch):
    import bz2

    from archselect.evaluate import benchmark
    from archselect.errors import UserError

    monkeypatch.setattr(benchmark, "MAX_PBZ2_BYTES", 10_000)
    path = tmp_path / "meta.pickle.pbz2"
    path.write_bytes(bz2.compress(b"\0" * 1_000_000))
    with pytest.raises(UserError, match="decompresses to more"):
        benchmark._load_pbz2(path)


def test_a_small_pickle_cannot_allocate_gigabytes():
    import pickle
    import resource

    from archselect import safe_pickle
    from archselect.errors import UserError

    bomb = b"\x80\x04\x8c\x08builtins\x8c\tbytearray\x93\x8a\x05\x00\x00\x00\x00\x04\x85R."  # bytearray(16 GiB)
    assert pickle.loads.__name__ and len(bomb) < 40
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError, match="refusing to allocate"):
        safe_pickle.loads(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


class _HugeArray:
    def __init__(self, via):
        self.via = via

    def __reduce__(self):
        import numpy as np

        if self.via == "ndarray":
            return np.ndarray, ((10 ** 11,), np.dtype("uint8"))
        return np._core.multiarray._reconstruct, (np.ndarray, (10 ** 6, 10 ** 6), b"b")


@pytest.mark.parametrize("via", ["ndarray", "_reconstruct"])
def test_a_small_pickle_cannot_allocate_a_huge_array(via):
    import pickle

    import numpy as np

    from archselect import safe_pickle
    from archselect.errors import UserError

    with pytest.raises(UserError, match="refusing to allocate"):
        safe_pickle.loads(pickle.dumps(_HugeArray(via)))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)  # an ordinary array still loads, by either protocol
    for protocol in (2, 4):  # (protocol 5 pickles arrays through numpy._frombuffer, which is not allowed)
        assert np.array_equal(safe_pickle.loads(pickle.dumps({"data": array}, protocol=protocol))["data"], array)


@pytest.mark.parametrize("labels", [[1.7, 2.2], [True, False], ["1", "2"]])
def test_labels_of_the_wrong_dtype_are_refused_not_truncated(labels):
    from archselect.data.pickled import int_labels
    from archselect.errors import UserError

    with pytest.raises(UserError, match="not a list of integers"):
        int_labels({"labels": labels}, "labels", Path("batch"), 2, 0, 9)


def test_file_system_errors_are_one_line(tmp_path, capsys):
    import os

    (tmp_path / "file").write_text("x")
    code, err = run_main(["search", "--out", str(tmp_path / "file" / "run")], capsys)  # a path under a file
    assert one_line(code, err)
    if os.geteuid() != 0:  # root writes into read-only directories
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, err = run_main(["search", "--out", str(ro / "run")], capsys)
        assert one_line(code, err)


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from archselect.errors import UserError
    from archselect.files import atomic_write_bytes

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        atomic_write_bytes(tmp_path / "config.yaml", b"seed: 0\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [str(2 ** 70), "-1"])
def test_a_seed_option_beyond_range_is_one_line(tmp_path, capsys, seed):
    code, err = run_main(["search", "--out", str(tmp_path / "run"), "--seed", seed, "data.data_dir=/nonexistent"],
                         capsys)
    assert one_line(code, err) and "seed" in err[0]


def test_show_on_metrics_without_search_fields_is_no_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(V0, run)
    (run / "metrics.jsonl").write_text('{"epoch": 0, "lr": 0.1}\n')  # e.g. a retraining's records
    code, err = run_main(["show", str(run)], capsys)
    assert code == 0 and err == []
