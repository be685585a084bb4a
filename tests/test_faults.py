"""Numerical faults stop a run cleanly (last good checkpoint kept, resumable with changed settings); arbitrary CLI
input ends in success or one error line with exit code 2."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from archselect.cli import main
from archselect.files import list_checkpoints

from conftest import tiny_idx_dir
from test_cli import tiny_args


def test_nan_loss_stops_with_epoch_and_step_and_resume_with_lower_lr(tmp_path, capsys, monkeypatch):
    from archselect.optimizers.base import SearchOptimizer

    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    real = SearchOptimizer.weight_step
    calls = {"n": 0}

    def poisoned(self, train):  # the 5th weight step sees NaN images: epoch 1 (0-based), step 0 at 4 steps/epoch
        calls["n"] += 1
        x, y = train
        return real(self, (x * float("nan") if calls["n"] == 5 else x, y))

    monkeypatch.setattr(SearchOptimizer, "weight_step", poisoned)
    code = main(["search", "--out", str(run), *tiny_args(data, epochs=2), "search.checkpoint_every=0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "non-finite train_loss" in err and "at epoch 1 step 0" in err and "last good checkpoint is kept" in err
    assert [p.name for p in list_checkpoints(run / "checkpoints", "search")] == ["search-00000004"]

    monkeypatch.setattr(SearchOptimizer, "weight_step", real)
    assert main(["search", "--resume", str(run), "search.w_lr=0.01"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumes"][0]["overrides"] == ["search.w_lr=0.01"]
    assert "w_lr: 0.01" in (run / "config.yaml").read_text()
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [0, 1]


keys = st.sampled_from(["seed", "device", "space.C", "space.name", "search.epochs", "search.optimizer", "data.subset",
                        "data.portion", "select.selectors", "nonsense", "search.w_lr", "data"])
values = st.one_of(st.integers(-5, 5), st.text(alphabet="abc,.-=1[]{}: ", max_size=6), st.sampled_from(["", "null"]))


@settings(max_examples=60)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_fuzz_search_overrides_never_traceback(tmp_path_factory, pairs):
    """Every override list either fails validation with one line, or gets as far as loading a dataset that does not
    exist (also one line): nothing heavy runs and nothing escapes as a traceback."""
    import contextlib
    import io

    overrides = [f"{k}={v}" for k, v in pairs] + ["data.dataset=fashion-mnist", "data.data_dir=/nonexistent-dir"]
    out = tmp_path_factory.mktemp("fuzz") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["search", "--out", str(out), "--device", "cpu", *overrides])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archselect: error:")


@settings(max_examples=60)
@given(st.lists(st.text(alphabet="abcdeos-=|~+0123 ", min_size=0, max_size=8), max_size=4))
def test_fuzz_argv_never_traceback(argv):
    import contextlib
    import io

    argv = [a for a in argv if a.strip()]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["benchmark", "query", *argv[:1]] if argv and argv[0].startswith("|") else argv)
        except SystemExit as e:  # --help/-h print usage and exit 0
            code = e.code
    assert code in (0, 2)
