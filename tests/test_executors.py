"""Executors: sequential (default) and Ray; failed jobs reported, never lost; evaluations split over workers and
gathered exactly; `archselect search --seeds` into RUN/seed-N/ and its resume."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archselect.cli import main
from archselect.errors import UserError
from archselect.executors import JobResult, SequentialExecutor, interleave, make_executor, split_map

from conftest import tiny_idx_dir

TESTS = Path(__file__).resolve().parent


def tiny_args(data_dir) -> list[str]:
    return [f"data.data_dir={data_dir}", "space.C=4", "space.N=1", "data.batch_size=32", "search.epochs=1",
            "threads=1"]


# -- toy jobs (module level: an executor ships them by reference) -----------------------------------------------------

def square(job):
    if job.get("fail"):
        raise ValueError(f"job {job['id']} cannot")
    return job["x"] ** 2


def flaky(job):
    """Fails on its first attempt, succeeds on the second (attempts counted in a file); UserErrors always."""
    marker = Path(job["dir"], job["id"])
    attempts = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempts))
    if job.get("user_error"):
        raise UserError("bad input")
    if job.get("always") or attempts == 1:
        raise RuntimeError(f"attempt {attempts} failed")
    return attempts


# A 4-player game with interactions; permutation j of all 24 is a pure function of j.
WEIGHTS = {0: 1.0, 1: 2.0, 2: -0.5, 3: 0.25}
PERMUTATIONS = list(itertools.permutations(range(4)))


def game(coalition) -> float:
    s = set(coalition)
    return sum(WEIGHTS[i] for i in s) + (1.5 if {0, 1} <= s else 0.0) - (0.75 if {2, 3} <= s else 0.0)


def marginals(j: int) -> list[float]:
    """Each player's marginal contribution in permutation j (players added in its order)."""
    out, before = [0.0] * 4, []
    for p in PERMUTATIONS[j]:
        out[p] = game(before + [p]) - game(before)
        before.append(p)
    return out


def exact_shapley() -> list[float]:
    n = 4
    phi = []
    for i in range(n):
        others = [p for p in range(n) if p != i]
        phi.append(sum(math.factorial(len(S)) * math.factorial(n - len(S) - 1) / math.factorial(n)
                       * (game(list(S) + [i]) - game(S)) for r in range(n) for S in itertools.combinations(others, r)))
    return phi


def mean_rows(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(rows) for col in zip(*rows)]


# -- sequential ---------------------------------------------------------------------------------------------------------

def test_sequential_reports_failures_with_ids():
    jobs = [{"id": "a", "x": 2}, {"id": "b", "x": 3, "fail": True}, {"id": "c", "x": 4}]
    results = SequentialExecutor().map(square, jobs)
    assert [r.id for r in results] == ["a", "b", "c"]
    assert [r.ok for r in results] == [True, False, True] and results[0].value == 4 and results[2].value == 16
    assert results[1].error == "ValueError: job b cannot" and "Traceback" in results[1].detail
    assert JobResult("x", True, 1).to_dict() == {"id": "x", "ok": True, "value": 1, "error": None, "detail": None}
    assert [r.id for r in SequentialExecutor().map(square, [{"x": 1}, {"x": 2}])] == ["0", "1"]


def test_interleave_undoes_round_robin():
    items = list(range(11))
    for w in (1, 2, 3, 5, 11):
        assert interleave([items[i::w] for i in range(w)], len(items)) == items


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_split_shapley_permutations_is_exact(workers):
    one = [marginals(j) for j in range(24)]
    split = split_map(marginals, range(24), workers)
    assert split == one  # the same floats, in the same order
    assert mean_rows(split) == pytest.approx(exact_shapley(), abs=1e-12)  # all 24 permutations: the exact values


def test_split_map_raises_when_a_shard_fails():
    with pytest.raises(RuntimeError, match="1 of 2 shards failed: shard-1: ValueError"):
        split_map(square, [{"id": "a", "x": 1}, {"id": "b", "x": 2, "fail": True}], 2)


def test_make_executor_checks_its_arguments():
    assert make_executor("sequential").name == "sequential"
    with pytest.raises(UserError, match="--ray-address needs --executor ray"):
        make_executor("sequential", address="auto")
    with pytest.raises(UserError, match="unknown executor 'dask'"):
        make_executor("dask")


def test_importing_archselect_never_imports_ray():
    code = ("import sys, archselect, archselect.cli, archselect.executors, archselect.jobs, archselect.distributed; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ray_executor_without_ray_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    root = tmp_path / "seeds"
    code = main(["search", "--seeds", "0,1", "--executor", "ray", "--out", str(root), *tiny_args(tmp_path)])
    assert code == 2
    assert "pip install 'archselect[ray]'" in capsys.readouterr().err
    assert not root.exists()  # refused before any work


# -- archselect search --seeds ---------------------------------------------------------------------------------------

def test_seeds_run_one_search_each_and_resume(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    root = tmp_path / "seeds"
    (root).mkdir()
    (root / "seed-1").write_text("in the way")  # seed-1's run directory cannot be created: that job fails
    assert main(["search", "--seeds", "0,1,2", "--out", str(root), *tiny_args(data)]) == 1
    out, err = capsys.readouterr()
    assert "1 of 3 jobs failed" in err and f"--resume {root}" in err
    summary = json.loads((root / "summary.json").read_text())
    assert summary["executor"] == "sequential"
    by_id = {r["id"]: r for r in summary["results"]}
    assert by_id["seed-0"]["ok"] and by_id["seed-2"]["ok"] and not by_id["seed-1"]["ok"]
    assert by_id["seed-1"]["error"]
    for s in (0, 2):
        run = root / f"seed-{s}"
        result = json.loads((run / "result.json").read_text())
        assert by_id[f"seed-{s}"]["value"]["architecture"] == result["architecture"]["text"]
        assert json.loads((run / "manifest.json").read_text())["seed"] == s
        assert main(["show", str(run)]) == 0
    capsys.readouterr()
    finished = (root / "seed-0" / "result.json").stat().st_mtime_ns

    (root / "seed-1").unlink()
    assert main(["search", "--resume", str(root)]) == 0
    summary = json.loads((root / "summary.json").read_text())
    assert all(r["ok"] for r in summary["results"])
    assert (root / "seed-0" / "result.json").stat().st_mtime_ns == finished  # done jobs are not redone
    assert json.loads((root / "seed-1" / "manifest.json").read_text())["seed"] == 1


def test_leaf_jobs_carry_everything_run_leaf_needs(tmp_path, monkeypatch):
    import pickle

    from archselect.config import load_config
    from archselect.fewshot.schedule import leaf_job, leaf_jobs

    cfg = load_config(None, ["space.C=4", "split.method=gm", "search.epochs=40", "seed=3"])
    calls = []
    monkeypatch.setattr("archselect.fewshot.schedule.run_leaf",
                        lambda c, root, leaf, device: calls.append((c, str(root.path), leaf, str(device))) or {"id": leaf})
    jobs = pickle.loads(pickle.dumps(leaf_jobs(cfg, tmp_path, ["0", "1"], "cpu")))  # plain data, picklable
    results = SequentialExecutor().map(leaf_job, jobs)
    assert [r.value for r in results] == [{"id": "0"}, {"id": "1"}]
    assert [c[1:] for c in calls] == [(str(tmp_path), "0", "cpu"), (str(tmp_path), "1", "cpu")]
    assert calls[0][0] == cfg  # the RunConfig survives the round trip through plain data


def test_seeds_option_errors(tmp_path, capsys):
    assert main(["search", "--seeds", "0,x", "--out", str(tmp_path / "a")]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["search", "--seeds", "1,1", "--out", str(tmp_path / "a")]) == 2
    assert main(["search", "--seeds", "1", "--seed", "2", "--out", str(tmp_path / "a")]) == 2
    assert main(["search", "--executor", "ray", "--out", str(tmp_path / "a")]) == 2
    assert "add --seeds" in capsys.readouterr().err


# -- Ray (skipped when it is not installed) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from archselect.executors import RayExecutor

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)  # workers import this module
    executor = RayExecutor(num_cpus=2, max_retries=2)
    try:
        yield executor
    finally:
        executor.close()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def test_ray_retries_then_reports(ray_executor, tmp_path):
    jobs = [{"id": "ok", "x": 3, "dir": str(tmp_path)}, {"id": "flaky", "dir": str(tmp_path)},
            {"id": "broken", "always": True, "dir": str(tmp_path)},
            {"id": "user", "user_error": True, "dir": str(tmp_path)}]
    results = ray_executor.map(flaky, jobs[1:]) + ray_executor.map(square, jobs[:1])
    by_id = {r.id: r for r in results}
    assert by_id["ok"].ok and by_id["ok"].value == 9
    assert by_id["flaky"].ok and by_id["flaky"].value == 2  # failed once, retried, succeeded
    assert not by_id["broken"].ok and "RuntimeError: attempt 3 failed" in by_id["broken"].error  # 1 + 2 retries
    assert not by_id["user"].ok and by_id["user"].error == "UserError: bad input"
    assert (tmp_path / "user").read_text() == "1"  # a UserError is not retried


def test_ray_split_map_matches_sequential(ray_executor):
    assert split_map(marginals, range(24), 2, ray_executor) == [marginals(j) for j in range(24)]


@pytest.mark.slow
def test_seeds_on_ray_match_sequential(ray_executor, tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    runs = {}
    for name in ("sequential", "ray"):
        root = tmp_path / name
        assert main(["search", "--seeds", "0,1", "--executor", name, "--out", str(root), *tiny_args(data)]) == 0
        runs[name] = root
    for s in (0, 1):
        a, b = (json.loads((runs[n] / f"seed-{s}" / "result.json").read_text()) for n in ("sequential", "ray"))
        assert a["architecture"] == b["architecture"]
    assert json.loads((runs["ray"] / "summary.json").read_text())["executor"] == "ray"
