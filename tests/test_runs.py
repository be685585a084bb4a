import json
from pathlib import Path

import pytest
import torch

from archselect.errors import UserError
from archselect.files import list_checkpoints, load_latest_checkpoint, remove_checkpoints, save_checkpoint
from archselect.runs import RunDir


def state(v):
    return {"model": {"w": torch.full((3,), float(v))}, "step": v, "opt": [{"m": torch.ones(2) * v, "lr": 0.1}],
            "pair": (1, "a")}


def test_checkpoint_round_trip_keeps_types(tmp_path):
    save_checkpoint(tmp_path, "x", 1, state(1))
    got = load_latest_checkpoint(tmp_path, "x")
    assert torch.equal(got["model"]["w"], torch.ones(3)) and got["step"] == 1
    assert got["opt"][0]["lr"] == 0.1 and got["pair"] == (1, "a")


def test_only_the_newest_two_are_kept(tmp_path):
    for v in range(5):
        save_checkpoint(tmp_path, "x", v, state(v))
    assert [p.name for p in list_checkpoints(tmp_path, "x")] == ["x-00000003", "x-00000004"]
    assert load_latest_checkpoint(tmp_path, "x")["step"] == 4


def test_a_kill_while_checkpoints_are_removed_never_leaves_one_without_tensors(tmp_path, monkeypatch):
    """Found by the SIGKILL harness: removing a tensor file before its JSON left, after a kill in between, a visible
    checkpoint whose tensors were missing, and every later resume stopped on it."""
    for v in (1, 2):
        save_checkpoint(tmp_path, "x", v, state(v))
    real, calls = Path.unlink, []

    def killed_on_fourth(self, *args, **kwargs):  # every removal before the last one happens, then the process dies
        calls.append(self.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        remove_checkpoints(tmp_path, "x")
    monkeypatch.undo()
    assert load_latest_checkpoint(tmp_path, "x") is None  # nothing visible: a resume starts cleanly
    assert [p.name for p in tmp_path.iterdir()] == ["x-00000002.safetensors"]
    remove_checkpoints(tmp_path, "x")  # the stray tensor file goes next time
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_falls_back_to_the_previous_good_one(tmp_path, damage, caplog):
    save_checkpoint(tmp_path, "x", 1, state(1))
    stem = save_checkpoint(tmp_path, "x", 2, state(2))
    blob = stem.with_suffix(".safetensors")
    data = blob.read_bytes()
    if damage == "truncate":
        blob.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        blob.unlink()
    with caplog.at_level("WARNING", logger="archselect"):
        got = load_latest_checkpoint(tmp_path, "x")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert got["step"] == 1 and len(warnings) == 1 and "x-00000002" in warnings[0]
    assert blob.with_suffix(".json").exists()  # the damaged one is reported, not deleted


def test_single_damaged_checkpoint_is_a_clear_error(tmp_path):
    stem = save_checkpoint(tmp_path, "x", 1, state(1))
    stem.with_suffix(".json").write_text("{")
    with pytest.raises(UserError, match="damaged"):
        load_latest_checkpoint(tmp_path, "x")


def test_malicious_pickle_named_like_a_checkpoint_is_refused_unexecuted(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    stem = save_checkpoint(tmp_path, "x", 1, state(1))
    stem.with_suffix(".safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError):
        load_latest_checkpoint(tmp_path, "x")
    assert not marker.exists()


def test_lock_refuses_a_second_writer(tmp_path):
    with RunDir(tmp_path / "run"):
        with pytest.raises(UserError, match="in use"):
            RunDir(tmp_path / "run").lock()
    RunDir(tmp_path / "run").lock().unlock()  # free again once released


def test_metrics_survive_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 0})
    run.append_metrics({"epoch": 1})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]
    run.truncate_metrics(lambda r: r["epoch"] < 1)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]
