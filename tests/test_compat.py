"""Run directories written before the pipeline redesign (tests/data/run-v0/, made by tests/data/make_v0_runs.py with
the code of commit 5da8509) still resume, select, show and report, with the results that code computed."""
import json
import shutil

import pytest
import torch

from archselect.cli import main
from archselect.files import load_latest_checkpoint

from conftest import REPO, tiny_idx_dir

V0 = REPO / "tests" / "data" / "run-v0"
pytestmark = pytest.mark.usefixtures("one_thread")


def copy_run(name, tmp_path):
    """The committed run, pointed at a tiny dataset written here (identical to the one it was made on)."""
    data = tiny_idx_dir(tmp_path / "data", n_train=128, n_test=32)
    run = tmp_path / name
    shutil.copytree(V0 / name, run)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("/tmp/archselect-v0-data", str(data)))
    return run


def supernet(run):
    return load_latest_checkpoint(run, "supernet")["supernet"]


V0_SHAPLEY = "select.options.shapley.batch_size=256"  # v0's default scoring batch (the default is 32 now)


def test_a_v0_run_killed_after_its_first_epoch_resumes_to_the_v0_result(tmp_path, capsys):
    run = copy_run("killed", tmp_path)
    assert main(["search", "--resume", str(run), "--selector", "magnitude,shapley", V0_SHAPLEY]) == 0
    finished = V0 / "finished"
    reference, resumed = supernet(finished), supernet(run)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    for name in ("magnitude", "shapley"):
        old = json.loads((finished / "selections" / f"{name}.json").read_text())
        new = json.loads((run / "selections" / f"{name}.json").read_text())
        assert new["scores"] == old["scores"] and new["architecture"] == old["architecture"]
    assert json.loads((run / "result.json").read_text())["selections"] == \
        json.loads((finished / "result.json").read_text())["selections"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert "resumed at epoch 2" in capsys.readouterr().out


def test_a_finished_v0_run_selects_shows_and_reports(tmp_path, capsys):
    run = copy_run("finished", tmp_path)
    old = json.loads((run / "selections" / "shapley.json").read_text())
    assert main(["select", str(run), "--selector", "shapley,perturbation", V0_SHAPLEY,
                 "select.options.perturbation.tune_steps=1", "select.options.perturbation.valid_batches=1"]) == 0
    new = json.loads((run / "selections" / "shapley.json").read_text())
    assert new["scores"] == old["scores"]  # the same selector on the same saved supernet: the same numbers
    assert (run / "selections" / "perturbation.json").is_file()
    out = capsys.readouterr().out
    assert "they agree on" in out  # the comparison table of the two selectors
    assert main(["show", str(run)]) == 0
    assert "epochs done: 2/2" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert main(["report", str(run), "--engine", "matplotlib"]) == 0
    assert (run / "report" / "index.html").is_file() and (run / "log.txt").is_file()


def test_old_checkpoints_have_no_state_checksum_and_still_load():
    meta = json.loads((V0 / "killed" / "checkpoints" / "search-00000002.json").read_text())
    assert "state_sha256" not in meta
    assert load_latest_checkpoint(V0 / "killed" / "checkpoints", "search")["epoch"] == 1


def test_a_killed_v0_run_resumes_with_its_data_directory_given_on_the_command_line(tmp_path):
    data = tiny_idx_dir(tmp_path / "data", n_train=128, n_test=32)
    run = tmp_path / "killed"
    shutil.copytree(V0 / "killed", run)
    assert main(["search", "--resume", str(run), f"data.data_dir={data}"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
