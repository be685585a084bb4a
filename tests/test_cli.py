"""The `archselect` command end to end on a tiny IDX dataset: search, show, select, benchmark, errors, kill/resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from archselect.cli import main
from archselect.files import load_latest_checkpoint

from conftest import tiny_idx_dir


def tiny_args(data_dir, epochs=3):
    return [f"data.data_dir={data_dir}", "space.C=4", "space.N=1", "data.batch_size=32", f"search.epochs={epochs}",
            "search.checkpoint_every=2", "threads=1"]


@pytest.fixture
def data_dir(tmp_path):
    return tiny_idx_dir(tmp_path / "data")


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def final_state(run):
    state = load_latest_checkpoint(run, "supernet")["supernet"]
    return {k: v for k, v in state.items()}


def comparable_metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_search_show_select(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(["search", "--out", str(run), *tiny_args(data_dir, epochs=2)], capsys)
    assert code == 0
    result = json.loads((run / "result.json").read_text())
    text = result["architecture"]["text"]
    assert f"architecture (magnitude): {text}" in out
    assert "archselect benchmark import" in result["benchmark"]["note"]
    assert len(comparable_metrics(run)) == 2
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["torch"] == torch.__version__

    code, out, _ = run_cli(["show", str(run)], capsys)
    assert code == 0 and "epochs done: 2/2" in out and text in out
    assert re.search(r"last epoch: train acc \d+\.\d\d%, search-valid acc \d+\.\d\d%", out)

    code, out, _ = run_cli(["select", str(run), "--selector", "magnitude"], capsys)
    assert code == 0 and text in out
    assert json.loads((run / "selections" / "magnitude.json").read_text())["architecture"]["text"] == text
    assert (run / "comparison.json").exists()


def test_search_with_benchmark_table(tmp_path, data_dir, nb201_csv, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(["search", "--out", str(run), f"benchmark={nb201_csv}", *tiny_args(data_dir, 1)], capsys)
    assert code == 0 and re.search(r"^NAS-Bench-201: cifar10_valid \d+\.\d\d%  cifar10_test \d+\.\d\d%", out, re.M)
    # accuracies as percent with two decimals, in the epoch line too
    assert re.search(r"^epoch 1/1  lr [\d.]+  train loss [\d.]+ acc \d+\.\d\d%  valid loss [\d.]+ acc \d+\.\d\d%", out,
                     re.M)
    bench = json.loads((run / "result.json").read_text())["benchmark"]
    assert 0 < bench["cifar10_test"] < 100 and bench["source"]["rows"] == 15625


def test_benchmark_import_and_query(nb201_csv, capsys):
    code, out, _ = run_cli(["benchmark", "import", str(nb201_csv)], capsys)
    assert code == 0 and "imported 15625" in out
    code, out, _ = run_cli(["benchmark", "query", "6111"], capsys)
    assert code == 0 and "cifar10_test: 94.37%" in out  # the table's accuracies, in percent
    best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    code, out, _ = run_cli(["benchmark", "query", best], capsys)
    assert code == 0 and "cifar10_test" in out


@pytest.mark.parametrize("args, words", [
    (["search", "search.epoch=3"], "unknown config key 'search.epoch'"),
    (["search", "--config", "/nonexistent.yaml"], "does not exist"),
    (["search", "--resume", "/nonexistent-run"], "not a run directory"),
    (["search", "data.dataset=cifar11"], "unknown dataset"),
    (["search", "search.optimizer=adamw-magic", "data.dataset=digits"], "unknown search optimizer"),
    (["select", "/nonexistent-run", "--selector", "magnitude"], "not a run directory"),
    (["show", "/nonexistent-run"], "not a run directory"),
    (["benchmark", "query", "|bad~0|"], ""),
    (["frobnicate"], "invalid choice"),
    (["search", "--seed", "x"], "invalid int"),
])
def test_user_errors_are_one_line_exit_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archselect: error:") and words in lines[0]


def test_existing_run_is_not_overwritten(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert run_cli(["search", "--out", str(run), *tiny_args(data_dir, 1)], capsys)[0] == 0
    code, _, err = run_cli(["search", "--out", str(run), *tiny_args(data_dir, 1)], capsys)
    assert code == 2 and "--resume" in err


def test_kill_and_resume_equals_uninterrupted(tmp_path, data_dir, capsys):
    """SIGKILL a search in a subprocess once checkpoints exist, resume it, and compare with an uninterrupted run."""
    reference = tmp_path / "reference"
    assert run_cli(["search", "--out", str(reference), *tiny_args(data_dir)], capsys)[0] == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "archselect", "search", "--out", str(killed), *tiny_args(data_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "checkpoints").glob("search-*.json"))) >= 2:  # mid-way: some steps checkpointed
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the tiny run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists()

    code, out, _ = run_cli(["search", "--resume", str(killed)], capsys)
    assert code == 0 and "resumed at epoch" in out
    assert comparable_metrics(killed) == comparable_metrics(reference)
    a, b = final_state(killed), final_state(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "result.json").read_text())["architecture"] == \
        json.loads((reference / "result.json").read_text())["architecture"]
    assert len(json.loads((killed / "manifest.json").read_text())["resumes"]) == 1
