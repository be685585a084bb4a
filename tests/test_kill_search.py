"""Search survives repeated SIGKILLs at seeded random moments: the resumed result equals an uninterrupted run."""
import json

import pytest
import torch

from archselect.cli import main
from archselect.runs import load_latest_checkpoint

from conftest import tiny_idx_dir
from killharness import kill_and_resume
from test_cli import comparable_metrics, tiny_args


@pytest.mark.parametrize("seed", [0, 1])
def test_search_killed_at_random_moments(tmp_path, seed, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    args = [*tiny_args(data, epochs=4), "search.checkpoint_every=1"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["search", "--out", str(reference), *args]) == 0
    capsys.readouterr()
    kills = kill_and_resume(["search", "--out", str(killed), *args], ["search", "--resume", str(killed)],
                            ready=lambda: (killed / "checkpoints").is_dir(), kills=3, seed=seed)
    assert kills >= 1
    assert comparable_metrics(killed) == comparable_metrics(reference)
    a = load_latest_checkpoint(killed, "supernet")["supernet"]
    b = load_latest_checkpoint(reference, "supernet")["supernet"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    result = json.loads((killed / "result.json").read_text())
    assert result["architecture"] == json.loads((reference / "result.json").read_text())["architecture"]
    print(f"search: {kills} kills delivered (seed {seed})")
