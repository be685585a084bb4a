"""Run directories written by the code before issue #19 (tests/data/run-v0/, made at commit 5da8509 by
tests/data/make_v0_runs.py: their checkpoints' checksum covers only the tensors) still resume, select and show."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from archselect.cli import main
from archselect.runs import load_latest_checkpoint

from conftest import tiny_idx_dir

V0 = Path(__file__).parent / "data" / "run-v0"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def v0(tmp_path):
    data = tiny_idx_dir(tmp_path / "data", n_train=128, n_test=32)  # the data make_v0_runs.py used (same seed)
    shutil.copytree(V0, tmp_path / "v0")
    return tmp_path / "v0", data


def test_old_checkpoints_have_no_state_checksum_and_still_load():
    meta = json.loads((V0 / "killed" / "checkpoints" / "search-00000002.json").read_text())
    assert "state_sha256" not in meta
    assert load_latest_checkpoint(V0 / "killed" / "checkpoints", "search")["epoch"] == 1


def test_a_killed_old_run_resumes_to_the_old_finished_one(v0, capsys):
    root, data = v0
    assert main(["search", "--resume", str(root / "killed"), f"data.data_dir={data}"]) == 0
    metrics = [json.loads(line) for line in (root / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    old = load_latest_checkpoint(root / "finished", "supernet")["supernet"]
    new = load_latest_checkpoint(root / "killed", "supernet")["supernet"]
    assert all(torch.equal(v, old[k]) for k, v in new.items())


def test_an_old_finished_run_selects_and_shows(v0, capsys):
    root, data = v0
    assert main(["select", str(root / "finished"), "--selector", "magnitude", f"data.data_dir={data}"]) == 0
    assert main(["show", str(root / "finished")]) == 0
    assert "epochs done: 2/2" in capsys.readouterr().out
