"""Issue #19, defects 1, 2, 4 and 5: what `--resume` does with overrides, with a NaN's last checkpoint, with a
checkpoint that verifies but does not fit, and with metrics written past the last checkpoint. Each test fails on the
code before the fix (commit 5da8509)."""
import json
import math
import shutil

import pytest
import torch

from archselect.cli import main
from archselect.files import list_checkpoints, load_checkpoint_file, load_latest_checkpoint, save_checkpoint

from conftest import tiny_idx_dir
from test_cli import comparable_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 2-epoch search (4 steps an epoch, checkpoints at epoch ends: positions 4 and 8)."""
    root = tmp_path_factory.mktemp("finished")
    data = tiny_idx_dir(root / "data")
    run = root / "run"
    assert main(["search", "--out", str(run), *tiny_args(data, epochs=2), "search.checkpoint_every=0"]) == 0
    return run


def killed_after_epoch_1(finished, dest):
    """`finished` as a kill right after the first epoch's checkpoint leaves it."""
    shutil.copytree(finished, dest)
    for name in ("result.json", "comparison.json"):
        (dest / name).unlink(missing_ok=True)
    shutil.rmtree(dest / "selections", ignore_errors=True)
    for p in [*dest.glob("supernet-*"), *(dest / "checkpoints").glob("search-00000008.*")]:
        p.unlink()
    lines = (dest / "metrics.jsonl").read_text().splitlines()
    (dest / "metrics.jsonl").write_text(lines[0] + "\n")
    return dest


def all_finite(obj):
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def supernet_of(run):
    return load_latest_checkpoint(run, "supernet")["supernet"]


def one_error_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("archselect: error:")


# -- 1. overrides given with --resume take effect, or are refused before anything is written ---------------------------

def test_resume_overrides_of_learning_rates_take_effect(finished, tmp_path):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    assert main(["search", "--resume", str(run), "search.w_lr=0.0001", "search.a_lr=0.1"]) == 0
    before, after = comparable_metrics(finished), comparable_metrics(run)
    assert after[0] == before[0]
    # epoch 2 of 2 on the new cosine: w_lr_min + (w_lr - w_lr_min) * (1 + cos(pi / 2)) / 2
    assert after[1]["lr"] == pytest.approx(0.001 + (0.0001 - 0.001) / 2) and before[1]["lr"] == pytest.approx(0.013)
    state = load_latest_checkpoint(run / "checkpoints", "search")
    assert state["optimizer"]["a_optimizer"]["param_groups"][0]["lr"] == 0.1
    assert not all(torch.equal(v, supernet_of(finished)[k]) for k, v in supernet_of(run).items())
    assert "w_lr: 0.0001" in (run / "config.yaml").read_text()


def test_resume_without_overrides_is_unchanged_by_the_override_machinery(finished, tmp_path):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    assert main(["search", "--resume", str(run), "search.w_lr=0.025", "device=cpu"]) == 0
    assert comparable_metrics(run) == comparable_metrics(finished)
    assert all(torch.equal(v, supernet_of(finished)[k]) for k, v in supernet_of(run).items())


@pytest.mark.parametrize("override", ["space.C=8", "data.subset=100", "seed=3", "search.optimizer=fixed-alpha",
                                      "search.epochs=5", "--seed=7"])
def test_resume_refuses_overrides_that_cannot_take_effect(finished, tmp_path, capsys, override):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main(["search", "--resume", str(run), override])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and "--resume cannot change" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


# -- 2. the checkpoint a NaN leaves behind is a good one ------------------------------------------------------------------

def test_a_huge_learning_rate_leaves_no_poisoned_checkpoint_and_a_sane_resume_finishes(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["search", "--out", str(run), *tiny_args(data, epochs=2), "search.checkpoint_every=0",
                 "search.w_lr=100000"])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and "non-finite" in err
    for stem in list_checkpoints(run / "checkpoints", "search"):
        assert all_finite(load_checkpoint_file(stem))
    if not list_checkpoints(run / "checkpoints", "search"):
        assert "no checkpoint" in err and "last good checkpoint is kept" not in err
    assert main(["search", "--resume", str(run), "search.w_lr=0.01"]) == 0
    metrics = comparable_metrics(run)
    assert [m["epoch"] for m in metrics] == [0, 1] and all(math.isfinite(m["train_loss"]) for m in metrics)


# -- 4. a checkpoint that verifies but does not fit falls back to the previous one --------------------------------------

def _bad_shape(state):
    key = next(k for k, v in state["supernet"].items() if v.dim() == 4)
    state["supernet"][key] = state["supernet"][key][:1].clone()


def _missing_key(state):
    state["supernet"].pop(next(iter(state["supernet"])))


def _wrong_type(state):
    state["epoch"] = "1"


def _momentum_shape(state):
    opt = state["optimizer"]["w_optimizer"]
    k = next(iter(opt["state"]))
    opt["state"][k]["momentum_buffer"] = torch.zeros(3)


@pytest.mark.parametrize("damage", [_bad_shape, _missing_key, _wrong_type, _momentum_shape, "edit-json"])
def test_a_verified_checkpoint_that_does_not_fit_falls_back_to_the_previous_one(finished, tmp_path, capsys, damage):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    newest = finished / "checkpoints" / "search-00000008"
    if damage == "edit-json":  # a hand edit of the JSON state (checksum of the tensors still valid)
        shutil.copy(newest.with_suffix(".safetensors"), run / "checkpoints")
        meta = json.loads(newest.with_suffix(".json").read_text())
        meta["state"]["__dict__"] = [[k, 0 if k == "epoch" else v] for k, v in meta["state"]["__dict__"]]
        (run / "checkpoints" / "search-00000008.json").write_text(json.dumps(meta))
    else:
        state = load_checkpoint_file(newest)
        damage(state)
        save_checkpoint(run / "checkpoints", "search", 8, state)
    capsys.readouterr()
    assert main(["search", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "falling back to the previous checkpoint" in out and "search-00000008" in out
    assert comparable_metrics(run) == comparable_metrics(finished)
    assert all(torch.equal(v, supernet_of(finished)[k]) for k, v in supernet_of(run).items())


def test_an_edited_config_that_fits_no_checkpoint_is_one_line(finished, tmp_path, capsys):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("  C: 4\n", "  C: 8\n"))
    code = main(["search", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and "does not fit" in err


def test_an_edited_run_file_of_the_wrong_type_is_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "manifest.json").write_text('["not", "a", "manifest"]')
    code = main(["search", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err)


# -- 5. metrics never count an epoch twice --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["killed-before-first-checkpoint", "every-checkpoint-deleted"])
def test_resume_without_a_checkpoint_starts_the_metrics_again(finished, tmp_path, case):
    run = killed_after_epoch_1(finished, tmp_path / "run")
    for p in (run / "checkpoints").glob("search-*"):
        p.unlink()
    if case == "every-checkpoint-deleted":
        shutil.copy(finished / "metrics.jsonl", run / "metrics.jsonl")
    assert main(["search", "--resume", str(run)]) == 0
    assert comparable_metrics(run) == comparable_metrics(finished)
    result = json.loads((run / "result.json").read_text())
    assert result["search"]["epochs"] == 2
