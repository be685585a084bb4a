"""`archselect bench`: the matrix runs, resumes without recomputing, aggregates correctly; the α-Hessian eigenvalue."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from archselect.arch import parse_nb201
from archselect.bench import aggregate, matrix
from archselect.evaluate import diagnostics
from archselect.pipeline import bench_runner
from archselect.pipeline import stages
from archselect.bench.config import load_bench_config
from archselect.cli import main
from archselect.errors import UserError
from archselect.selection import SELECTORS

from conftest import NB201_CSV, tiny_idx_dir

SECOND = next((s for s in ("shapley", "influence", "perturbation") if s in SELECTORS), None)
SELECTORS_USED = ["magnitude"] + ([SECOND] if SECOND else [])
TIMING = ("search_seconds", "select_seconds")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def bench_yaml(root: Path, data_dir: Path) -> Path:
    table = str(NB201_CSV) if NB201_CSV.is_file() else None
    cfg = {
        "name": "mini",
        "run": {"threads": 1, "benchmark": table,
                "data": {"dataset": "fashion-mnist", "data_dir": str(data_dir), "batch_size": 32},
                "space": {"C": 4, "N": 1},
                "search": {"epochs": 1, "checkpoint_every": 1},
                "select": {"options": {"shapley": {"permutations": 2, "batch_size": 32},
                                       "influence": {"batches": 1},
                                       "perturbation": {"tune_steps": 1, "valid_batches": 1}}}},
        "seeds": [0, 1],
        "optimizers": ["darts"],
        "selectors": SELECTORS_USED,
        "diagnostics": {"correlation_samples": 6 if table else 0, "correlation_images": 64, "hessian_iters": 3,
                        "hessian_batches": 1},
    }
    path = root / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_mini(config: Path, out: Path) -> list:
    cfg = load_bench_config(config)
    failed = bench_runner.run_groups(cfg, out)
    aggregate.write_tables(cfg, out)
    return failed


def comparable(out: Path) -> list[dict]:
    with open(out / "cells.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted mini bench, shared by the tests that compare against it."""
    root = tmp_path_factory.mktemp("bench")
    data = tiny_idx_dir(root / "data")
    config = bench_yaml(root, data)
    out = root / "ref"
    assert run_mini(config, out) == []
    return config, out


# -- the matrix --------------------------------------------------------------------------------------------------------

def test_mini_bench_writes_tables(reference):
    _, out = reference
    with open(out / "results.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["selector"] for r in summary] == SELECTORS_USED
    assert all(r["optimizer"] == "darts" and r["split"] == "none" and r["seeds"] == "2" for r in summary)
    cells = comparable(out)
    assert {(c["selector"], c["seed"]) for c in cells} == {(s, str(seed)) for s in SELECTORS_USED for seed in (0, 1)}
    for c in cells:
        parse_nb201(c["arch"])
        assert 0 <= float(c["param_free_ops"]) <= 6
        assert math.isfinite(float(c["hessian_eig"]))
        if NB201_CSV.is_file():
            assert 0 < float(c["cifar10_test"]) < 100
    if NB201_CSV.is_file():
        for seed in (0, 1):
            corr = json.loads((out / "runs" / f"nb201-darts-none-s{seed}" / "diagnostics.json").read_text())
            assert corr["correlation"]["samples"] == 6 and len(corr["correlation"]["pairs"]) == 6
    md = (out / "results.md").read_text()
    assert "| optimizer | split | selector | seeds | C10 valid | C10 test | C100 test | IN16 valid | IN16 test |" in md
    assert "Published numbers" in md and "DARTS-PT" in md
    metrics = (out / "runs" / "nb201-darts-none-s0" / "metrics.jsonl").read_text()
    assert '"hessian_eig"' in metrics


def test_second_run_recomputes_nothing(reference, monkeypatch):
    config, out = reference
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file() and p.suffix != ".lock"}
    monkeypatch.setattr(bench_runner, "run_group", lambda job: pytest.fail(f"group {job['id']} was run again"))
    assert run_mini(config, out) == []
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == []


def test_interrupted_bench_resumes_to_the_same_table(reference, tmp_path, monkeypatch, capsys):
    """Seed 0 fails in its second selector; seed 1's search dies mid-epoch. The rerun redoes neither the finished
    search nor the finished selection, resumes the search from its checkpoint, and ends with the reference table."""
    config, ref_out = reference
    out = tmp_path / "bench"
    from archselect.optimizers.base import SearchOptimizer

    calls = {"group": "", "steps": 0}
    step, search = SearchOptimizer.step, stages.train_supernet

    def dying_step(self, *args, **kwargs):
        if calls["group"].endswith("-s1"):
            calls["steps"] += 1
            if calls["steps"] == 3:
                raise RuntimeError("killed mid-epoch")
        return step(self, *args, **kwargs)

    def tracked_search(search_run, resume=True):
        calls["group"] = search_run.run.path.name
        return search(search_run, resume)

    monkeypatch.setattr(SearchOptimizer, "step", dying_step)
    monkeypatch.setattr(stages, "train_supernet", tracked_search)
    if SECOND:
        cls = SELECTORS.get(SECOND)
        monkeypatch.setattr(cls, "run", lambda self, ctx: (_ for _ in ()).throw(RuntimeError("selector died")))
    failed = run_mini(config, out)
    assert sorted(r.id for r in failed) == (["nb201-darts-none-s0", "nb201-darts-none-s1"] if SECOND
                                            else ["nb201-darts-none-s1"])
    monkeypatch.undo()

    capsys.readouterr()
    searched = {}
    original = stages.train_supernet

    def spy(search_run, resume=True):
        searched[search_run.run.path.name] = True
        return original(search_run, resume)
    monkeypatch.setattr(stages, "train_supernet", spy)
    assert run_mini(config, out) == []
    assert searched == {"nb201-darts-none-s1": True}
    assert "[nb201-darts-none-s1] resumed at epoch 1, step 2" in capsys.readouterr().out
    assert comparable(out) == comparable(ref_out)


def test_changed_config_is_refused(reference, tmp_path):
    config, out = reference
    data = yaml.safe_load(config.read_text())
    data["run"]["search"]["epochs"] = 2
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="search.epochs"):
        bench_runner.run_groups(load_bench_config(other), out)


def test_unregistered_names_fail_before_work(tmp_path, capsys):
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"selectors": ["magnitude", "no-such-selector"]}))
    assert main(["bench", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no-such-selector" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    config.write_text(yaml.safe_dump({"optimizers": ["darts", {"name": "nope", "label": "x"}]}))
    with pytest.raises(UserError, match="'nope'"):
        load_bench_config(config)
    config.write_text(yaml.safe_dump({"optimizers": ["darts", "darts"]}))
    with pytest.raises(UserError, match="unique"):
        load_bench_config(config)


@pytest.mark.parametrize("name", ["nb201-proxy", "nb201-paper", "nb201-beyond-proxy"])
def test_shipped_configs_load(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "bench" / f"{name}.yaml"
    cfg = load_bench_config(path)
    variants = cfg.run.get("select", {}).get("variants", {})
    assert all(s in SELECTORS or variants[s]["selector"] in SELECTORS for s in cfg.selectors)
    every = len(cfg.seeds) * len(cfg.optimizers) * len(cfg.splits) * len(cfg.spaces)
    assert len(matrix.groups(cfg)) == every - len(cfg.exclude) * len(cfg.seeds)  # each shipped rule drops one per seed


# -- aggregation on crafted rows ---------------------------------------------------------------------------------------

def _row(selector, seed, c10v, c10t, **extra):
    row = {"space": "nb201", "optimizer": "darts", "split": "none", "selector": selector, "seed": seed,
           "group": f"g{seed}", "optimizer_name": "darts", "split_name": "none", "arch": extra.pop("arch", "")}
    row.update({m: math.nan for m in aggregate.METRICS})
    row.update(cifar10_valid=c10v, cifar10_test=c10t, **extra)
    return row


def test_summary_mean_std_best():
    rows = [_row("a", 0, 80.0, 85.0), _row("a", 1, 90.0, 93.0), _row("a", 2, 85.0, 95.0),
            _row("b", 0, math.nan, 70.0), _row("b", 1, 60.0, math.nan)]
    a, b = aggregate.summarize(rows)
    assert a["seeds"] == 3 and a["cifar10_test_mean"] == pytest.approx(91.0)
    assert a["cifar10_test_std"] == pytest.approx(np.std([85, 93, 95], ddof=1))
    assert a["best_seed"] == 1 and a["cifar10_test_best"] == 93.0  # best by C10 valid, not by test
    assert b["cifar10_test_mean"] == 70.0 and math.isnan(b["cifar10_test_std"])  # one finite value: no std
    assert b["best_seed"] == 1 and math.isnan(b["cifar10_test_best"])
    assert math.isnan(a["retrain_acc_mean"])


def test_agreement_and_param_free_ops():
    x = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    y = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|skip_connect~2|"
    assert diagnostics.param_free_ops(parse_nb201(x)) == 3
    assert diagnostics.edge_agreement(parse_nb201(x), parse_nb201(y)) == pytest.approx(4 / 6)
    rows = [_row("a", 0, 1.0, 1.0, arch=x), _row("b", 0, 1.0, 1.0, arch=y),
            _row("a", 1, 1.0, 1.0, arch=x), _row("b", 1, 1.0, 1.0, arch=x)]
    rows[2]["group"] = rows[3]["group"] = "g1"
    (agree,) = aggregate.agreement(rows)
    assert (agree["selector_a"], agree["selector_b"], agree["seeds"]) == ("a", "b", 2)
    assert agree["agreement"] == pytest.approx((4 / 6 + 1) / 2)


# -- the α-Hessian eigenvalue ------------------------------------------------------------------------------------------

def test_power_iteration_finds_the_dominant_and_the_largest_eigenvalue():
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([-5.0, 3.0, 1.0, 0.5], dtype=torch.float64)) @ q.T
    value, steps = diagnostics.power_iteration(lambda v: [a @ v[0]], [torch.zeros(4, dtype=torch.float64)],
                                               iters=500, tol=1e-12)
    assert value == pytest.approx(-5.0, rel=1e-6) and steps < 500
    assert diagnostics.largest_eigenvalue(lambda v: [a @ v[0]], [torch.zeros(4, dtype=torch.float64)], iters=500,
                                          tol=1e-12) == pytest.approx(3.0, rel=1e-6)


def test_alpha_hessian_eigenvalue_matches_the_explicit_hessian():
    from archselect.spaces.nb201 import NB201Space

    torch.manual_seed(0)
    space = NB201Space(C=2, N=1, in_channels=1, num_classes=3)
    net = space.supernet().double()
    with torch.no_grad():
        net.alphas["cell"].normal_(0, 0.5)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (4,), generator=gen))
               for _ in range(2)]
    value = diagnostics.alpha_hessian_eigenvalue(net, batches, iters=300, tol=1e-7)

    model = net.train()

    def loss_of(flat):
        w = {"cell": torch.softmax(flat.view(6, 5), dim=-1)}
        return sum(F.cross_entropy(model(x, w), y) for x, y in batches) / len(batches)
    hessian = torch.autograd.functional.hessian(loss_of, net.alphas["cell"].detach().flatten().clone())
    eig = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    assert value == pytest.approx(eig[-1].item(), rel=1e-3)
    assert net.alphas["cell"].grad is None  # the supernet itself was left alone


def test_hessian_hook_leaves_the_search_unchanged(tmp_path):
    """Recording hessian_eig must not change the trajectory (it runs on a copy, with its own RNG)."""
    from archselect.config import load_config
    from archselect.environment import configure
    from archselect.runs import RunDir
    from archselect.optimizers.loop import SearchRun

    data = tiny_idx_dir(tmp_path / "data", n_train=128)
    states = []
    for hook in (False, True):
        cfg = load_config(None, [f"data.data_dir={data}", "space.C=2", "space.N=1", "data.batch_size=32",
                                 "search.epochs=2", "threads=1", f"search.hessian_eig={str(hook).lower()}",
                                 "search.hessian_iters=3"])
        configure(cfg.seed, cfg.deterministic, cfg.threads)
        run = RunDir(tmp_path / f"run-{hook}")
        with run:
            search = SearchRun(cfg, run, torch.device("cpu"))
            search.train()
        states.append(search.supernet.state_dict())
        assert ("hessian_eig" in run.read_metrics()[-1]) == hook
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
