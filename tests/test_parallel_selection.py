"""Selection split over workers equals one process: the Shapley permutations and the DARTS-PT candidate evaluations
shared out over executor jobs (sequential, Ray) or torchrun ranks give the same scores, standard errors, decisions and
counts of passes, bit for bit; a split run resumes with any number of workers.

This file doubles as the torchrun worker: `torchrun --nproc_per_node=2 tests/test_parallel_selection.py OUT RUN`.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from archselect.arch import Architecture
from archselect.cli import main
from archselect.components import to_device
from archselect.executors import SequentialExecutor, split_map
from archselect.scoring import shapley as shapley_mod
from archselect.selection.perturbation import Perturbation
from archselect.selection.shapley import ShapleySelector
from archselect.scoring.workers import Replica, Workers
from archselect.spaces.nb201 import NB201Space

from conftest import tiny_idx_dir
from test_distributed import free_port, run_bounded
from test_evaluator import TwoCellTypes, random_alphas, tiny_context
from test_executors import ray_executor  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

TESTS = Path(__file__).resolve().parent


@dataclass
class TwoTypeSpace:
    """Two NB201 cell types whose nodes keep 2 inputs: DARTS-PT decides one edge of each type per decision, then
    prunes node inputs, as on the DARTS space, at a fraction of its cost."""

    name = "two-types"
    op_names = NB201Space.op_names
    cell_types = ("a", "b")
    inputs_per_node = 2

    def supernet(self) -> TwoCellTypes:
        return TwoCellTypes()

    def derive(self, scores, mask=None) -> Architecture:
        cells = []
        for ct in self.cell_types:
            s = scores[ct].detach().float().clone()
            if mask is not None:
                s[~mask[ct]] = float("-inf")
            cells.append((ct, NB201Space().architecture({"cell": s.argmax(1).tolist()}).cell("cell")))
        return Architecture(self.name, tuple(cells))


def context(space=None, workers=None, workdir=None):
    torch.manual_seed(0)  # the same supernet weights for every run compared
    space = space or NB201Space(C=4, N=1, in_channels=1, num_classes=4)
    ctx = tiny_context(space=space, supernet=space.supernet(), workdir=workdir)
    random_alphas(ctx.supernet)
    ctx.workers = workers or Workers()
    return ctx


def assert_same(a, b) -> None:
    assert a.scores == b.scores and a.stderr == b.stderr and a.details == b.details
    assert a.architecture.cells == b.architecture.cells
    assert (a.cost.forward, a.cost.backward, a.cost.images) == (b.cost.forward, b.cost.backward, b.cost.images)
    if a.selector == "shapley":  # a unit's passes depend on its rows alone (a worker may stack other settings)
        assert a.cost.passes == b.cost.passes


SHAPLEY = {"permutations": 5, "batch_size": 32, "pack": 1}
PERTURBATION = {"tune_steps": 2, "valid_batches": 2, "update_alpha": "yes"}
CASES = {
    "shapley": (ShapleySelector, SHAPLEY, None),
    "shapley-fixed-batches": (ShapleySelector, {**SHAPLEY, "fixed_valid": True, "batches": 2}, None),
    "perturbation": (Perturbation, PERTURBATION, None),
    "perturbation-naive": (Perturbation, {**PERTURBATION, "evaluator": "naive", "crit": "loss"}, None),
    "perturbation-topology": (Perturbation, {"tune_steps": 1, "valid_batches": 1}, TwoTypeSpace()),
    "perturbation-stacked": (Perturbation, {**PERTURBATION, "stack": 3}, None),  # a worker stacks its share
    "perturbation-official": (Perturbation, {**PERTURBATION, "draw": "fresh", "augment": True, "batch_size": 32,
                                             "schedule": "official"}, None),  # each candidate its own pass
    "shapley-stacked": (ShapleySelector, {**SHAPLEY, "stack": 4}, None),
    "shapley-antithetic": (ShapleySelector, {**SHAPLEY, "permutations": 6, "estimator": "antithetic"}, None),
    "shapley-kernel": (ShapleySelector, {**SHAPLEY, "permutations": 3, "estimator": "kernel", "coalitions": 8}, None),
    "shapley-packed": (ShapleySelector, {**SHAPLEY, "permutations": 20, "pack": 2}, None),  # units of 6-7 rows
}


@pytest.mark.parametrize("case", CASES)
def test_split_over_workers_equals_one_process(case):
    selector, options, space = CASES[case]
    one = selector(options).select(context(space))
    for count in (2, 3) if case == "shapley" else (2,):  # 3: shares of unequal size, a last round of 2
        assert_same(selector(options).select(context(space, Workers(count, SequentialExecutor()))), one)
    if space is not None:  # both cell types decided, inputs pruned: the DARTS-space path
        assert [d["kind"] for d in one.details["decisions"]].count("node") == 2


def test_a_split_run_checkpoints_each_round_and_resumes_with_other_workers(tmp_path, monkeypatch):
    reference = ShapleySelector(SHAPLEY).select(context())
    real = shapley_mod.row_steps

    def dies_on_fourth(*args, calls=itertools.count(1)):
        if next(calls) == 4:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(shapley_mod, "row_steps", dies_on_fourth)
    with pytest.raises(RuntimeError, match="killed"):  # in the second round of 2 permutations, after its first
        ShapleySelector(SHAPLEY).select(context(workers=Workers(2, SequentialExecutor()), workdir=tmp_path))
    monkeypatch.setattr(shapley_mod, "row_steps", real)
    resumed = ShapleySelector(SHAPLEY).select(context(workdir=tmp_path))  # one worker now
    assert resumed.details.pop("resumed_after") == 2  # the first round's checkpoint, not the unfinished second
    reference.details.pop("resumed_after")
    assert_same(resumed, reference)


def test_replica_rebuilds_the_supernet_exactly():
    space = NB201Space(C=4, N=1, in_channels=1, num_classes=4)
    net = to_device(space.supernet(), torch.device("cpu"), True)  # channels_last, as `archselect select` builds it
    random_alphas(net)
    net.set_mask("cell", torch.rand(6, 5) > 0.3)
    rng = torch.get_rng_state()
    replica = Replica.of(space, net)
    copy = replica.build()
    assert torch.equal(torch.get_rng_state(), rng)  # building drew α from a forked RNG
    theirs = copy.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(theirs[k], v) and theirs[k].stride() == v.stride(), k
        assert theirs[k].data_ptr() != v.data_ptr(), k  # a copy: a worker never writes into the caller's supernet
    x = torch.randn(8, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(copy.eval()(x), net.eval()(x))
    threads = torch.get_num_threads()
    replica.threads = threads + 1
    with replica.arithmetic():
        assert torch.get_num_threads() == threads + 1
    assert torch.get_num_threads() == threads


def test_workers_deal_items_round_robin_and_return_them_in_order():
    seen = []

    def record(net, shared, items):
        seen.append(list(items))
        return [shared + i for i in items]

    net, space = context().supernet, NB201Space(C=4, N=1, in_channels=1, num_classes=4)
    assert Workers(3, SequentialExecutor()).map(record, range(7), net, space, 100) == list(range(100, 107))
    assert seen == [[0, 3, 6], [1, 4], [2, 5]]
    seen.clear()
    assert Workers(3, SequentialExecutor()).map(record, [5], net, space, 1) == [6] and seen == [[5]]  # one: here
    with pytest.raises(RuntimeError, match="1 of 2 shards failed"):
        split_map(lambda x: 1 // x, [0, 1, 2, 3], 2)


# -- Ray (skipped when it is not installed) --------------------------------------------------------------------------

@pytest.mark.slow  # Ray start-up: 10-20 s idle, minutes on a loaded machine; split_map over Ray is in the default run
def test_ray_workers_equal_one_process(ray_executor):  # noqa: F811  (the fixture)
    for selector, options, space in ((ShapleySelector, {**SHAPLEY, "permutations": 4}, None),
                                     (Perturbation, {"tune_steps": 1, "valid_batches": 1}, TwoTypeSpace())):
        one = selector(options).select(context(space))
        assert_same(selector(options).select(context(space, Workers(2, ray_executor))), one)


# -- the command line: one process, --workers, torchrun ranks ---------------------------------------------------------

SELECT = ["--selector", "shapley,perturbation", "select.options.shapley.permutations=3",
          "select.options.shapley.batch_size=32", "select.options.shapley.pack=1",  # a unit per permutation
          "select.options.perturbation.tune_steps=1",
          "select.options.perturbation.valid_batches=1"]


def selections(run: Path) -> dict:
    out = {}
    for name in ("shapley", "perturbation"):
        s = json.loads((run / "selections" / f"{name}.json").read_text())
        s["cost"].pop("seconds")
        out[name] = s
    return out


def test_select_command_splits_over_workers_and_torchrun_ranks(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "search"
    assert main(["search", "--out", str(run), f"data.data_dir={data}", "space.C=4", "space.N=1",
                 "data.batch_size=32", "search.epochs=1", "threads=1"]) == 0
    one, split, ranks = (shutil.copytree(run, tmp_path / name) for name in ("one", "split", "ranks"))
    assert main(["select", str(one), *SELECT]) == 0
    assert main(["select", str(split), *SELECT, "--workers", "2"]) == 0
    assert selections(split) == selections(one)
    for bad in (["--workers", "0"], ["--ray-address", "auto"], ["select.executor=dask"]):
        assert main(["select", str(split), *SELECT, *bad]) == 2

    out = tmp_path / "ranks-out"
    out.mkdir()
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)  # the checkout under test
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__)), str(out), str(ranks)]
    code, output = run_bounded(cmd, env, timeout=240)
    assert code == 0, output[-6000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["jobs"] == [[True, [0, 0], None], [False, None, "ValueError: rank 1 cannot"], [True, [0, 2], None]]
    assert [i["code"] for i in info] == [0, 0]
    assert info[1]["writes"] == [], f"rank 1 wrote into the run directory: {info[1]['writes']}"
    # rank 1 scored a permutation of the first round (the second, a single permutation, stays on rank 0) and a share
    # of each of the 6 DARTS-PT decisions
    assert info[1]["shares"] == [1] * (1 + 6)
    assert selections(ranks) == selections(one)
    assert (ranks / "comparison.json").is_file()


# -- the torchrun worker ---------------------------------------------------------------------------------------------

def _fails_on_rank_1(job):
    from archselect import distributed

    if distributed.rank() == 1:
        raise ValueError("rank 1 cannot")
    return distributed.rank(), job["x"]


def _worker(out: Path, run: Path) -> None:
    """One rank: jobs handed out by rank 0 (one fails on rank 1), then `archselect select` as `-m archselect` runs
    it, in the test's process group (archselect leaves a group it did not create alone)."""
    import faulthandler

    from archselect import distributed, ranks
    from archselect.ranks import RankExecutor, serve
    from test_distributed import _forbid_writes_under

    faulthandler.dump_traceback_later(200, exit=True)  # a hung rank reports where, then ends, within the test's time
    torch.distributed.init_process_group("gloo")
    rank = distributed.rank()
    info: dict = {"writes": []}
    if rank == 0:
        with RankExecutor() as ex:
            results = ex.map(_fails_on_rank_1, [{"id": "a", "x": 0}, {"id": "b", "x": 1}, {"id": "c", "x": 2}])
        info["jobs"] = [[r.ok, r.value, r.error] for r in results]
    else:
        serve()
        _forbid_writes_under([run], info["writes"])
        shares, real = [], ranks._run_share
        ranks._run_share = lambda message: shares.append(len(message[1])) or real(message)
        info["shares"] = shares
    info["code"] = main(["select", str(run), *SELECT])
    torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    _worker(*map(Path, sys.argv[1:3]))
