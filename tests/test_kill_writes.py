"""Kills inside every kind of write (issue #19): `tests/killpoint.py` SIGKILLs a stage inside its N-th file write —
before it, half-way (a torn temporary file or half a metrics line) or right after it — at 20 seeded points per
stage (seed 0 in the first three writes: before the first checkpoint), then the command a user would run next runs
to completion and must end exactly where the uninterrupted run does (metrics, result, supernet, selections). Two
points per stage run by default, the others are `slow`."""
import shutil

import pytest
import torch

from archselect.cli import main
from archselect.files import load_latest_checkpoint

from conftest import tiny_idx_dir
from killharness import count_writes, kill_in_write, write_kill_point
from test_cli import comparable_metrics, tiny_args
from test_fewshot import tiny_split_args
from test_kill_stages import ARCH, assert_equal_state, read

POINTS = [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in range(2, 20))]
TRAIN = ["data.dataset=digits", "train.C=8", "train.N=1", "train.batch_size=32", "train.subset=192",
         "train.epochs=3", "train.eval_every=2", "data.eval_batch_size=360", "threads=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_idx_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def search_args(data):
    return [*tiny_args(data, epochs=2), "--selector", "magnitude,shapley",
            "select.options.shapley={permutations: 3, batch_size: 32, threshold: 0}"]


@pytest.fixture(scope="module")
def searched(search_args, tmp_path_factory):
    run = tmp_path_factory.mktemp("searched") / "run"
    assert main(["search", "--out", str(run), *search_args]) == 0
    return run


WRITES: dict[str, int] = {}


def writes(stage, args):
    """The writes of an uninterrupted run of `args` (deterministic: counted once per stage and module)."""
    if stage not in WRITES:
        WRITES[stage] = count_writes(args)
    return WRITES[stage]


def next_command(run, start, resume):
    """What a user runs after a kill: --resume once the directory is a run (config.yaml written), else the start
    command again (a kill before config.yaml leaves at most an empty directory with a lock file)."""
    return lambda: resume if (run / "config.yaml").exists() else start


def same_supernet(a, b):
    x, y = load_latest_checkpoint(a, "supernet")["supernet"], load_latest_checkpoint(b, "supernet")["supernet"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in y)


@pytest.mark.parametrize("seed", POINTS)
def test_search_killed_inside_a_write(searched, search_args, tmp_path, seed, capsys):
    run = tmp_path / "run"
    start = ["search", "--out", str(run), *search_args]
    n, phase = write_kill_point(seed, writes("search", ["search", "--out", str(tmp_path / "count"), *search_args]))
    assert kill_in_write(start, next_command(run, start, ["search", "--resume", str(run)]), n, phase)
    print(f"search: killed in write {n} of {WRITES['search']} ({phase})")
    assert comparable_metrics(run) == comparable_metrics(searched)
    assert same_supernet(run, searched)
    assert read(run / "result.json") == read(searched / "result.json")
    for name in ("magnitude", "shapley"):
        assert read(run / "selections" / f"{name}.json") == read(searched / "selections" / f"{name}.json")
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("sklearn")
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(run), ARCH, *TRAIN]) == 0
    return run


@pytest.mark.parametrize("seed", POINTS)
def test_retraining_killed_inside_a_write(trained, tmp_path, seed):
    run = tmp_path / "run"
    start = ["train", "--out", str(run), ARCH, *TRAIN]
    n, phase = write_kill_point(seed, writes("train", ["train", "--out", str(tmp_path / "count"), ARCH, *TRAIN]))
    assert kill_in_write(start, next_command(run, start, ["train", "--resume", str(run), ARCH]), n, phase)
    print(f"train: killed in write {n} of {WRITES['train']} ({phase})")
    assert comparable_metrics(run) == comparable_metrics(trained)
    assert read(run / "result.json") == read(trained / "result.json")
    a = load_latest_checkpoint(run / "checkpoints", "train")
    b = load_latest_checkpoint(trained / "checkpoints", "train")
    for part in ("model", "optimizer", "scheduler"):
        assert_equal_state(a[part], b[part])


@pytest.fixture(scope="module")
def unselected(searched, tmp_path_factory):
    """The searched run without its selections, and the same run selected uninterrupted by `archselect select`."""
    base = tmp_path_factory.mktemp("unselected") / "run"
    shutil.copytree(searched, base)
    shutil.rmtree(base / "selections")
    (base / "comparison.json").unlink(missing_ok=True)
    reference = base.parent / "reference"
    shutil.copytree(base, reference)
    assert main(["select", str(reference), "--selector", "shapley"]) == 0
    return base, reference


def kill_selection_in_write(stage, base, reference, name, options, tmp_path, seed):
    """`select RUN --selector NAME` on a copy of `base`, killed in a write and rerun: the same selection as
    `reference`'s, and no progress file left."""
    args = lambda run: ["select", str(run), "--selector", name, *options]  # noqa: E731
    if stage not in WRITES:
        shutil.copytree(base, tmp_path / "count")
    n, phase = write_kill_point(seed, writes(stage, args(tmp_path / "count")))
    run = tmp_path / "run"
    shutil.copytree(base, run)
    assert kill_in_write(args(run), lambda: args(run), n, phase)
    print(f"{stage}: killed in write {n} of {WRITES[stage]} ({phase})")
    assert read(run / "selections" / f"{name}.json") == read(reference / "selections" / f"{name}.json")
    assert not list((run / "selections").glob(f"{name}-progress-*"))


@pytest.mark.parametrize("seed", POINTS)
def test_selection_killed_inside_a_write(unselected, tmp_path, seed):
    """`select` (Shapley: progress after every permutation, the selection, the comparison) killed in a write, rerun."""
    base, reference = unselected
    kill_selection_in_write("select", base, reference, "shapley", [], tmp_path, seed)


# -- perturbation (DARTS-PT), the split search and the bench: one point by default, 19 slow ----------------------------

MORE_POINTS = [0, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 20))]
PERTURBATION_OPTIONS = ["select.options.perturbation={tune_steps: 2, valid_batches: 1}"]


@pytest.fixture(scope="module")
def perturbed(unselected):
    base, _ = unselected
    reference = base.parent / "perturbed"
    shutil.copytree(base, reference)
    assert main(["select", str(reference), "--selector", "perturbation", *PERTURBATION_OPTIONS]) == 0
    return reference


@pytest.mark.parametrize("seed", MORE_POINTS)
def test_perturbation_selection_killed_inside_a_write(unselected, perturbed, tmp_path, seed):
    """DARTS-PT (progress after every decision: the fine-tuned copy, the tuner, the decisions) killed in a write."""
    base, _ = unselected
    kill_selection_in_write("perturbation", base, perturbed, "perturbation", PERTURBATION_OPTIONS, tmp_path, seed)


@pytest.fixture(scope="module")
def split_args(data):
    return tiny_split_args(data, epochs=2, split_epochs="[1]")


@pytest.fixture(scope="module")
def split_searched(split_args, tmp_path_factory):
    run = tmp_path_factory.mktemp("split") / "run"
    assert main(["search", "--split", "gm", "--out", str(run), *split_args]) == 0
    return run


@pytest.mark.parametrize("seed", MORE_POINTS)
def test_split_search_killed_inside_a_write(split_searched, split_args, tmp_path, seed):
    """The split search (the tree, every node's checkpoints and metrics, each leaf's selections and leaf.json)."""
    run = tmp_path / "run"
    start = ["search", "--split", "gm", "--out", str(run), *split_args]
    count = ["search", "--split", "gm", "--out", str(tmp_path / "count"), *split_args]
    n, phase = write_kill_point(seed, writes("split", count))
    assert kill_in_write(start, next_command(run, start, ["search", "--resume", str(run)]), n, phase)
    print(f"split: killed in write {n} of {WRITES['split']} ({phase})")
    assert read(run / "result.json") == read(split_searched / "result.json")
    tree = read(run / "split" / "tree.json")
    assert tree == read(split_searched / "split" / "tree.json")
    for node in tree["nodes"]:
        assert comparable_metrics(run / "split" / node) == comparable_metrics(split_searched / "split" / node)
    for leaf in tree["leaves"]:
        assert same_supernet(run / "split" / leaf, split_searched / "split" / leaf)


@pytest.fixture(scope="module")
def bench_config(data, tmp_path_factory):
    import yaml

    cfg = {"name": "writes", "seeds": [0], "optimizers": ["darts"], "selectors": ["magnitude", "shapley"],
           "run": {"threads": 1, "space": {"C": 4, "N": 1},
                   "data": {"dataset": "fashion-mnist", "data_dir": str(data), "batch_size": 32},
                   "search": {"epochs": 1},
                   "select": {"options": {"shapley": {"permutations": 2, "batch_size": 32}}}},
           "diagnostics": {"correlation_samples": 0}}
    path = tmp_path_factory.mktemp("bench") / "writes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reference = path.parent / "reference"
    assert main(["bench", str(path), "--out", str(reference), "--no-report"]) == 0
    return path, reference


@pytest.mark.parametrize("seed", MORE_POINTS)
def test_bench_killed_inside_a_write(bench_config, tmp_path, seed):
    """The bench (bench.yaml, its manifest, each group's run files, summary and tables) killed in a write, rerun."""
    path, reference = bench_config
    args = lambda out: ["bench", str(path), "--out", str(out), "--no-report"]  # noqa: E731
    n, phase = write_kill_point(seed, writes("bench", args(tmp_path / "count")))
    out = tmp_path / "bench"
    assert kill_in_write(args(out), lambda: args(out), n, phase)
    print(f"bench: killed in write {n} of {WRITES['bench']} ({phase})")
    for table in ("cells.csv", "agreement.csv"):
        assert bench_rows(out / table) == bench_rows(reference / table)


def bench_rows(path):
    import csv

    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("search_seconds", "select_seconds")}
                for row in csv.DictReader(f)]
