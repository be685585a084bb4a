"""Every long stage survives repeated SIGKILLs at seeded random moments (tests/killharness.py): the progressive
perturbation selection, Shapley sampling, retraining, the few-shot split search and the bench. Each test runs the
stage uninterrupted once (in this process), then through the real CLI in a subprocess killed up to 3 times after new
progress plus a seeded delay and resumed, and asserts the results equal (deterministic mode). Seeds beyond two are
`slow`. Each prints "STAGE: N kills delivered" for docs/reliability.md."""
import csv
import json
import shutil
from pathlib import PurePath

import pytest
import torch
import yaml

from archselect.cli import main
from archselect.files import load_latest_checkpoint

from conftest import NB201_CSV, tiny_idx_dir
from killharness import FinishedFiles, kill_and_resume, saved_files, steps_done
from test_cli import comparable_metrics, tiny_args
from test_fewshot import tiny_split_args

SEEDS = [0, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 8))]  # default run: one kill moment each
KILLS = 3
VOLATILE = ("seconds", "resumed_after", "search_seconds", "select_seconds")  # timings, and where a resume started
SELECT_OPTIONS = ["select.options.perturbation={tune_steps: 6, valid_batches: 2}",
                  "select.options.shapley={permutations: 6, batch_size: 32, threshold: 0, pack: 1}"]  # a checkpoint a row


def timeless(obj):
    """`obj` without timings (and resume positions), at any depth."""
    if isinstance(obj, dict):
        return {k: timeless(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [timeless(v) for v in obj]
    return obj


def read(path):
    return timeless(json.loads(path.read_text()))


def report(stage, kills, seed, where):
    print(f"{stage}: {len(kills)} kills delivered (seed {seed}; {where})")
    assert kills, f"{stage}: no kill was delivered; make the tiny run longer"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_idx_dir(tmp_path_factory.mktemp("data"))


# -- selection: DARTS-PT decisions, Shapley permutations -------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("searched") / "run"
    assert main(["search", "--out", str(run), *tiny_args(data, epochs=1), *SELECT_OPTIONS]) == 0
    return run


@pytest.fixture(scope="module")
def selected(searched, tmp_path_factory):
    """The uninterrupted selections, each from its own `archselect select` call as in the killed runs."""
    run = tmp_path_factory.mktemp("selected") / "run"
    shutil.copytree(searched, run)
    for name in ("perturbation", "shapley"):
        assert main(["select", str(run), "--selector", name]) == 0
    return run


def kill_selection(searched, selected, tmp_path, seed, name, unit, max_delay):
    run = tmp_path / "run"
    shutil.copytree(searched, run)
    args = ["select", str(run), "--selector", name]
    kills = kill_and_resume(args, args, lambda: saved_files(run), KILLS, seed, max_delay, spread=2)
    # kills follow progress, so none saved means the finished selection had removed it
    done = [steps_done(k.progress, f"{name}-progress") for k in kills]
    where = [str(d) if d else "all (progress removed)" for d in done]
    report(name, kills, seed, f"after {', '.join(where)} of 6 {unit}")
    result = json.loads((run / "selections" / f"{name}.json").read_text())
    assert result["details"]["resumed_after"] == done[-1]  # the last resume continued, it did not start over
    assert timeless(result) == read(selected / "selections" / f"{name}.json")
    assert not list((run / "selections").glob(f"{name}-progress-*"))
    return result


@pytest.mark.parametrize("seed", SEEDS)
def test_perturbation_selection_killed_between_and_within_decisions(searched, selected, tmp_path, seed):
    """Kills land after a decision is checkpointed: in the fine-tuning before the next one, in its scoring, or in
    the checkpoint write; the decisions, scores, costs and architecture equal the uninterrupted selection."""
    result = kill_selection(searched, selected, tmp_path, seed, "perturbation", "decisions", 0.3)
    assert len(result["details"]["decisions"]) == 6 and result["cost"]["backward"] > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_shapley_selection_killed_during_permutation_sampling(searched, selected, tmp_path, seed):
    result = kill_selection(searched, selected, tmp_path, seed, "shapley", "permutations", 0.2)
    assert result["details"]["permutations"] == 6 and result["stderr"] is not None


# -- retraining --------------------------------------------------------------------------------------------------------

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
TRAIN = ["data.dataset=digits", "train.C=8", "train.N=1", "train.batch_size=32", "train.subset=384",
         "train.epochs=6", "train.eval_every=2", "data.eval_batch_size=360", "threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(run), ARCH, *TRAIN]) == 0
    return run


@pytest.mark.parametrize("seed", SEEDS)
def test_retraining_killed_mid_epoch(trained, tmp_path, seed):
    run = tmp_path / "run"
    kills = kill_and_resume(["train", "--out", str(run), ARCH, *TRAIN], ["train", "--resume", str(run), ARCH],
                            lambda: saved_files(run), KILLS, seed, max_delay=0.2, spread=2)
    report("train", kills, seed, f"after {', '.join(str(steps_done(k.progress, 'train')) for k in kills)} of 6 epochs")
    assert comparable_metrics(run) == comparable_metrics(trained)
    assert read(run / "result.json") == read(trained / "result.json")
    a = load_latest_checkpoint(run / "checkpoints", "train")
    b = load_latest_checkpoint(trained / "checkpoints", "train")
    for part in ("model", "optimizer", "scheduler"):
        assert_equal_state(a[part], b[part])
    assert len(json.loads((run / "manifest.json").read_text())["resumes"]) == len(kills)


def assert_equal_state(a, b):
    """Nested checkpoint states equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_state(x, y)
    else:
        assert a == b


# -- few-shot: the split search ---------------------------------------------------------------------------------------

STEPS = 3 * 4  # 3 epochs of 4 steps (tiny_idx_dir: 256 images, half for training, batches of 32)


@pytest.fixture(scope="module")
def split_args(data):
    return [*tiny_split_args(data, epochs=3, split_epochs="[1,2]"), "search.checkpoint_every=2"]


@pytest.fixture(scope="module")
def split_searched(split_args, tmp_path_factory):
    run = tmp_path_factory.mktemp("split") / "run"
    assert main(["search", "--split", "gm", "--out", str(run), *split_args]) == 0
    return run


@pytest.mark.parametrize("seed", SEEDS)
def test_split_search_killed_in_any_node(split_searched, split_args, tmp_path, seed):
    """Kills land while the root or a sub-supernet trains, while a split is decided or children are created, and
    while a leaf selects; every node's metrics, every leaf's supernet, the tree and the result equal the reference."""
    run = tmp_path / "run"
    finished = FinishedFiles(run, ("split/*/leaf.json",))
    start = ["search", "--split", "gm", "--out", str(run), *split_args]
    kills = kill_and_resume(start, ["search", "--resume", str(run)], lambda: saved_files(run), KILLS, seed,
                            max_delay=0.5, spread=8, after_kill=finished.snapshot)
    # the newest position checkpointed in any node (nodes count epochs from the search's start), leaves finished
    where = [f"step {steps_done(k.progress, 'search')} of {STEPS}, {sum(p.endswith('leaf.json') for p in k.progress)} "
             f"of 4 leaves done" for k in kills]
    report("split", kills, seed, "; ".join(where))
    assert finished.rewritten() == []
    assert read(run / "result.json") == read(split_searched / "result.json")
    tree = read(run / "split" / "tree.json")
    assert tree == read(split_searched / "split" / "tree.json") and len(tree["leaves"]) == 4
    for node in tree["nodes"]:
        assert comparable_metrics(run / "split" / node) == comparable_metrics(split_searched / "split" / node)
    for leaf in tree["leaves"]:
        name = f"split/{leaf}/supernet-00000000.safetensors"
        assert (run / name).read_bytes() == (split_searched / name).read_bytes()


# -- the bench: supernet groups, selections, diagnostics, retraining ---------------------------------------------------

BENCH_UNITS = ("runs/*/supernet-00000000.json", "runs/*/selections/magnitude.json", "runs/*/selections/shapley.json",
               "runs/*/diagnostics.json", "runs/*/retrain/*/result.json")


@pytest.fixture(scope="module")
def bench_config(data, tmp_path_factory):
    table = str(NB201_CSV) if NB201_CSV.is_file() else None
    cfg = {
        "name": "kill", "seeds": [0, 1], "optimizers": ["darts"], "selectors": ["magnitude", "shapley"],
        "run": {"threads": 1, "benchmark": table, "space": {"C": 4, "N": 1},
                "data": {"dataset": "fashion-mnist", "data_dir": str(data), "batch_size": 32},
                "search": {"epochs": 2, "checkpoint_every": 2},
                "select": {"options": {"shapley": {"permutations": 4, "batch_size": 32}}}},
        "diagnostics": {"correlation_samples": 6 if table else 0, "correlation_images": 64, "hessian_iters": 3,
                        "hessian_batches": 1},
        "retrain": {"enabled": True, "overrides": ["train.C=4", "train.N=1", "train.epochs=2", "train.subset=128",
                                                   "train.batch_size=32", "data.eval_batch_size=64"]},
    }
    path = tmp_path_factory.mktemp("bench") / "kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def benched(bench_config):
    out = bench_config.parent / "reference"
    assert main(["bench", str(bench_config), "--out", str(out), "--no-report"]) == 0
    return out


def units_done(progress) -> int:
    """Finished bench units (supernets, selections, diagnostics, retrainings) in a `saved_files` snapshot."""
    return sum(any(PurePath(p).match(u) for u in BENCH_UNITS) for p in progress)


def bench_table(out, name):
    with open(out / name) as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


@pytest.mark.parametrize("seed", SEEDS)
def test_bench_killed_and_rerun(bench_config, benched, tmp_path, seed):
    """Rerunning the killed bench finishes it: a finished unit (supernet, selection, diagnostics, retraining) is
    never recomputed, and the tables equal the uninterrupted bench's."""
    out = tmp_path / "bench"
    args = ["bench", str(bench_config), "--out", str(out), "--no-report"]
    finished = FinishedFiles(out, BENCH_UNITS)
    kills = kill_and_resume(args, args, lambda: saved_files(out, BENCH_UNITS), KILLS, seed, max_delay=1.0,
                            spread=8, after_kill=finished.snapshot)
    total = units_done(saved_files(benched, BENCH_UNITS))
    report("bench", kills, seed, f"after {', '.join(str(units_done(k.progress)) for k in kills)} of {total} units")
    assert finished.rewritten() == []
    for table in ("cells.csv", "agreement.csv"):
        assert bench_table(out, table) == bench_table(benched, table)
    for path in benched.glob("runs/*/retrain/*/result.json"):
        assert read(out / path.relative_to(benched)) == read(path)
