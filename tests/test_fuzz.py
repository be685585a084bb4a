"""Property-based fuzzing of every reader a user can hand a file or a string to (issue #19): configs, overrides,
architecture strings and files, genotypes, checkpoints, run files, benchmark tables, IDX and pickle data files, and
the CLI entry points on a run directory with generated files. Each example must end in a result or one UserError
(on the CLI: one line on stderr, exit code 2): no traceback, no file outside the target directory, bounded memory,
no code run (the pickle reader's allowed globals never include a callable with side effects; a canary global
counts calls). Default run: modest `max_examples` (about 20 s on the shared 2-core machine)."""
import contextlib
import io
import json
import resource
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archselect.cli import main
from archselect.errors import UserError

V0 = Path(__file__).parent / "data" / "run-v0" / "finished"
FUZZ = settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                deadline=None)
MEMORY_KIB = 1_500_000  # growth of the peak RSS over the whole module


def plain_json():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                        st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                        max_leaves=20)


hostile_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="|~+0123456789²٣ nor_conv_3x3skipavgpool", max_size=60),
    st.builds(lambda n, c: c * n, st.integers(1, 3000), st.sampled_from(["[", "{", "a: ", "- ", "|", "9"])),
    st.sampled_from(["5e-4", ".inf", "-.nan", "1e999", "&a [*a]", "!!python/object:os.system ls", "{a: *b}",
                     "Infinity", str(2 ** 80)]),
)
hostile_bytes = st.one_of(st.binary(max_size=200), hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                          plain_json().map(lambda o: json.dumps(o, allow_nan=True).encode()))


def only_user_errors(fn, *args):
    try:
        return fn(*args)
    except UserError as e:
        assert "\n" not in str(e).strip(), str(e)
        return e


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < MEMORY_KIB


@FUZZ
@given(hostile_bytes)
def test_config_files(tmp_path, data):
    from archselect.config import load_config

    (tmp_path / "c.yaml").write_bytes(data)
    only_user_errors(load_config, tmp_path / "c.yaml")


@settings(FUZZ, max_examples=40)  # each example may parse kilobytes of nested YAML: the slowest property
@given(st.lists(st.tuples(st.sampled_from(["seed", "threads", "space.C", "space.N", "data.image_size",
                                           "search.w_lr", "search.w_weight_decay", "select.options", "a.b.c",
                                           "search", "data.subset", "search.epochs"]), hostile_text), max_size=3))
def test_overrides(pairs):
    from archselect.config import load_config

    only_user_errors(load_config, None, [f"{k}={v}" for k, v in pairs])


@FUZZ
@given(hostile_text)
def test_architecture_strings_and_genotypes(text):
    from archselect.arch import load_architecture, parse_index

    for spec in (text, "|" + text, "Genotype(" + text):
        only_user_errors(load_architecture, spec)
    index = parse_index(text)
    assert index is None or (text.strip().isascii() and 0 <= index < 10 ** 12)


@FUZZ
@given(hostile_bytes)
def test_architecture_and_selection_files(tmp_path, data):
    from archselect.arch import load_architecture
    from archselect.selection.base import Selection

    (tmp_path / "a.json").write_bytes(data)
    only_user_errors(load_architecture, str(tmp_path / "a.json"))
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    only_user_errors(Selection.from_dict, obj)


@FUZZ
@given(plain_json(), st.sampled_from(["state", "sha256", "state_sha256", None]))
def test_checkpoint_json(tmp_path, value, field):
    """A checkpoint JSON of any shape: the loader verifies or refuses it, in one line."""
    from archselect.files import load_latest_checkpoint, save_checkpoint, state_digest

    import torch

    stem = save_checkpoint(tmp_path, "x", 1, {"w": torch.zeros(2), "epoch": 1})
    meta = json.loads(stem.with_suffix(".json").read_text())
    if field is None:
        meta = value
    else:
        meta[field] = value
        if field == "state":
            meta["state_sha256"] = state_digest(value)  # a well-checksummed state of the wrong shape
    stem.with_suffix(".json").write_text(json.dumps(meta))
    only_user_errors(load_latest_checkpoint, tmp_path, "x",
                     lambda s: (s["w"].shape == (2,)) or (_ for _ in ()).throw(UserError("does not fit")))


@FUZZ
@given(hostile_bytes)
def test_benchmark_tables(tmp_path, data):
    from archselect.evaluate.benchmark import NB201Table

    (tmp_path / "t.csv").write_bytes(b"index,arch,cifar10_valid\n" + data)
    only_user_errors(NB201Table.load, tmp_path / "t.csv")


@FUZZ
@given(st.integers(0, 255), st.integers(0, 4), st.lists(st.integers(0, 2 ** 32 - 1), max_size=4),
       st.binary(max_size=100))
def test_idx_files(tmp_path, code, ndim, dims, body):
    from archselect.data.idx import read_idx

    import gzip

    data = bytes([0, 0, code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + body
    (tmp_path / "x-idx").write_bytes(data)
    with gzip.open(tmp_path / "x-idx.gz", "wb") as f:
        f.write(data)
    for name in ("x-idx", "x-idx.gz"):
        only_user_errors(read_idx, tmp_path / name)


CALLED = []


def canary(*args):  # never reachable from a pickle: not an allowed global
    CALLED.append(args)


@FUZZ
@given(st.binary(max_size=120), st.sampled_from([b"", b"\x80\x04\x95", b"ctests.test_fuzz\ncanary\n(tR.",
                                                 b"\x80\x04\x8c\x08builtins\x8c\x05bytes\x93\x8a\x05\x00\x00\x00\x00\x04\x85R."]))
def test_pickled_data(prefix, data):
    from archselect import safe_pickle

    only_user_errors(safe_pickle.loads, prefix + data)
    only_user_errors(safe_pickle.loads, data + prefix)
    assert not CALLED


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["metrics.jsonl", "result.json", "manifest.json", "config.yaml",
                        "selections/magnitude.json", "checkpoints/search-00000004.json"]), hostile_bytes)
def test_cli_on_a_run_with_a_hostile_file(tmp_path_factory, name, data):
    """`show` and `search --resume` on a run directory with one file replaced: success or one line, nothing
    written outside it."""
    root = tmp_path_factory.mktemp("fuzzrun")
    run = root / "run"
    shutil.copytree(V0, run)
    (run / name).write_bytes(data)
    before = {p for p in root.parent.iterdir()}
    for argv in (["show", str(run)], ["search", "--resume", str(run), "data.data_dir=/nonexistent-fuzz"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        lines = err.getvalue().strip().splitlines()
        assert code == 0 or (code == 2 and len(lines) == 1 and lines[0].startswith("archselect: error:")), lines
    assert {p for p in root.parent.iterdir()} == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile_text)
def test_cli_architecture_arguments(tmp_path_factory, text):
    """`train ARCH` with any text: one line and exit code 2 (an unknown dataset stops a valid one), and no run
    directory is left behind by the error."""
    root = tmp_path_factory.mktemp("fuzzarch")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", text or "x", "--out", str(root / "run"), "data.dataset=no-such-dataset"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("archselect: error:"), lines
    assert not (root / "run").exists()
