"""Data-parallel search under torchrun: two gloo processes on loopback reproduce the single-process run.

Exactness: each rank sees half of every global batch and gradients are averaged, so the arithmetic is the
single-process arithmetic except for BatchNorm, whose batch statistics come from the half batch (as in torch DDP).
The comparison therefore runs with BN normalising by its running statistics (frozen at their initial 0 and 1) in
both runs: every sample's loss is then independent of the rest of its batch, so two half batches are exactly one
batch and α, weights, losses and the derived architecture must agree to float rounding (atol 1e-5; measured
~1e-7). A wrong slice, a missing average or a rank writing the run directory all show. With batch-statistics BN
the two runs differ by design (docs/scaling.md states by how much).

The MobileNet trainers run the same comparison (OFA's sub-network draws and KD teacher, ProxylessNAS' sampled paths
and binary gates, both from torch's global generator) in a second torchrun launch; there OFA's epoch-end BN
recalibration estimates real batch statistics, synchronised over the ranks, so the comparison covers it too.

This file doubles as the torchrun worker: `torchrun --nproc_per_node=2 tests/test_distributed.py OUT SPEC.json`, SPEC
naming the searches (argument lists of `archselect`) and the checks to run first.
"""
from __future__ import annotations

import builtins
import copy
import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import archselect
from archselect import distributed
from archselect.cli import main
from archselect.files import list_checkpoints, load_latest_checkpoint
from archselect.optimizers import ofa
from archselect.scoring.bn_calibration import recalibrate_bn
from archselect.supernet import Supernet
from conftest import tiny_idx_dir

OFA_PHASES = ("[{name: full, epochs: 1}, {name: kernel, epochs: 1, kernels: [3,5,7]}, "
              "{name: depth, epochs: 1, kernels: [3,5,7], depths: [1,2]}, "
              "{name: expand, epochs: 1, kernels: [3,5,7], depths: [1,2], expansions: [3,6]}]")

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).resolve().parent


def _train_with_frozen_bn(self, mode: bool = True):
    """Supernet.train that keeps every BN in eval mode: it normalises by its running statistics (never updated), so
    a sample's output ignores the rest of its batch."""
    torch.nn.Module.train(self, mode)
    for m in self.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.training = False
    return self


def _recalibrate_real_bn(model, *args, **kwargs):
    """OFA's epoch-end BN recalibration (on a copy) with BN in ordinary training mode: it estimates real batch
    statistics, which under torchrun must be the global batch's, so the comparison covers that too."""
    model.train = types.MethodType(torch.nn.Module.train, model)
    return recalibrate_bn(model, *args, **kwargs)


def freeze_bn_statistics() -> None:
    Supernet.train = _train_with_frozen_bn
    ofa.recalibrate_bn = _recalibrate_real_bn


def search_args(data_dir, epochs: int = 2) -> list[str]:
    # 128 search-train images, global batch 32 (16 per rank): 4 steps per epoch; a large α lr so α moves visibly
    return [f"data.data_dir={data_dir}", "space.C=4", "space.N=1", "data.batch_size=32", f"search.epochs={epochs}",
            "search.checkpoint_every=2", "search.a_lr=0.03", "threads=1"]


def ofa_args(data_dir) -> list[str]:
    # 32 search-train images, global batch 16 (8 per rank): 2 steps per epoch, one epoch per OFA phase
    return [f"data.data_dir={data_dir}", "space.name=mobilenet", "space.elastic=true", "space.bn_affine=true",
            "space.resolution=32", "space.width_mult=0.25", "space.stage_layers=[2,1,1,1,1,1]", "data.batch_size=16",
            "search.optimizer=ofa", "search.epochs=4", f"search.options.phases={OFA_PHASES}",
            "search.checkpoint_every=1", "threads=1"]


def proxyless_args(data_dir) -> list[str]:
    # an α step (two-path binary gates) after every weight step, from the first epoch. With BN frozen the tiny
    # network's activations fade and its gate gradients (~1e-11) fall below Adam's eps: α moves by the latency term,
    # whose mul-log form scales with each rank's loss, so an α gradient not averaged over the ranks shows
    return [f"data.data_dir={data_dir}", "space.name=mobilenet", "space.resolution=32", "space.width_mult=0.25",
            "space.stage_layers=[1,2,1,1,1,1]", "data.batch_size=16", "search.optimizer=proxylessnas",
            "search.epochs=2", "search.a_lr=0.05", "search.a_beta1=0", "search.options.update_every=1",
            "search.options.skip_first_alpha_epoch=false", "search.options.latency=mul-log",
            "search.options.latency_target=300000", "search.checkpoint_every=1", "threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run `cmd` in its own process group; on timeout end that group (torchrun and its workers), not just torchrun."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout}s:\n{output[-6000:]}")
    return proc.returncode, output


# -- in one process: the pieces --------------------------------------------------------------------------------------

def test_sharded_loader_slices_make_the_global_batch(tmp_path):
    from archselect.data import Loader, load_dataset

    ds = load_dataset("fashion-mnist", "train", data_dir=tiny_idx_dir(tmp_path / "d"))
    loader = Loader(ds, 32, seed=3, augment=True)
    shards = [distributed.ShardedLoader(loader, r, 4) for r in range(4)]
    assert len(shards[0]) == len(loader) == 8 and shards[2].batch_size == 32
    for k in (0, 5):
        x, y = loader.batch(1, k)
        parts = [s.batch(1, k) for s in shards]
        assert all(len(p[1]) == 8 for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert [len(b[1]) for b in shards[1].epoch(0, start=6)] == [8, 8]


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.active() and distributed.world() == 1 and distributed.rank() == 0
    assert distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    distributed.all_reduce_mean([t])
    assert t.tolist() == [1.0, 2.0]
    p = torch.nn.Parameter(torch.ones(2))
    distributed.average_gradients([p])
    assert p.grad is None
    assert distributed.mean_over_ranks({"a": 1.5}) == {"a": 1.5}
    assert distributed.rank_map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")


def test_global_batch_statistics_of_one_process_are_batch_norms():
    """The global-statistics batch norm with a world of one (sums over the processes = local sums) normalises and
    tracks as torch's batch norm: the full network and the narrowest sub-network (sliced BN) of an elastic supernet,
    recalibrated both ways. Outside torchrun `across_ranks` changes nothing, bit for bit."""
    from archselect.spaces import get
    from archselect.spaces.ops import GLOBAL_SUM, global_statistics
    from archselect.spaces.subnets import Choices

    torch.manual_seed(0)
    supernet = get("mobilenet", resolution=32, width_mult=0.25, stage_layers=[2, 1, 1, 1, 1, 1], in_channels=1,
                   num_classes=4, elastic=True, bn_affine=True).supernet()
    batches = [(torch.randn(4, 1, 16, 16) * 2 + 1,) for _ in range(2)]
    choices = Choices.of(supernet)
    calls = []
    for genes in (choices.largest(), choices.smallest()):
        weights = choices.weights(genes)
        plain, synced, flagged = copy.deepcopy(supernet), copy.deepcopy(supernet), copy.deepcopy(supernet)
        recalibrate_bn(plain, weights, batches)
        recalibrate_bn(flagged, weights, batches, across_ranks=True)
        assert all(torch.equal(v, flagged.state_dict()[k]) for k, v in plain.state_dict().items())
        with global_statistics(lambda tensors: calls.append(len(tensors))), torch.no_grad():
            recalibrate_bn(synced, weights, batches)
            out = synced.train()(batches[0][0], weights)
        with torch.no_grad():
            reference = plain.train()(batches[0][0], weights)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
        a, b = plain.state_dict(), synced.state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
    assert calls and GLOBAL_SUM.get() is None


def test_bad_launch_environment_is_a_user_error(monkeypatch):
    from archselect.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="outside WORLD_SIZE"):
        distributed.launch_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="integers"):
        distributed.launch_env()


# -- two processes: torchrun on loopback -----------------------------------------------------------------------------

def _state(run: Path, name: str = "supernet") -> dict[str, torch.Tensor]:
    return load_latest_checkpoint(run, name)["supernet"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _position(stem: Path) -> int:
    return int(stem.name.rsplit("-", 1)[1])


def _killed_copy(src: Path, dst: Path, position: int | None = None) -> None:
    """A copy of finished run `src` as a kill would have left it right after its search checkpoint at `position`
    (default: the last mid-epoch one): the later checkpoints, the saved supernet, selections and result gone (a saved
    supernet would tell --resume that the search had finished)."""
    shutil.copytree(src, dst)
    stems = list_checkpoints(dst / "checkpoints", "search")
    keep = _position(stems[-2]) if position is None else position
    for stem in stems:
        if _position(stem) > keep:
            stem.with_suffix(".json").unlink()
            stem.with_suffix(".safetensors").unlink()
    for path in dst.glob("supernet-*"):
        path.unlink()
    shutil.rmtree(dst / "selections")
    for name in ("result.json", "comparison.json"):
        (dst / name).unlink(missing_ok=True)


def assert_trained_again(resumed: Path, finished: Path) -> None:
    """`resumed` redid the training `finished` did after its newest checkpoint: it wrote the same checkpoints."""
    names = lambda run: [stem.name for stem in list_checkpoints(run / "checkpoints", "search")]  # noqa: E731
    assert names(resumed) == names(finished)


def assert_same_search(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=k)
        else:
            assert torch.equal(sa[k], sb[k]), k
    ma, mb = _metrics(a), _metrics(b)
    assert len(ma) == len(mb)
    for ra, rb in zip(ma, mb):  # every number of every epoch's record: losses, accuracies, norms, lr, α
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if key == "alpha":
                for ct, rows in value.items():
                    np.testing.assert_allclose(rows, rb[key][ct], rtol=0, atol=1e-6, err_msg=ct)
            elif key != "seconds" and isinstance(value, (int, float)):
                assert value == pytest.approx(rb[key], rel=1e-7, abs=1e-5), key  # rel: latency in MACs
    ra, rb = (json.loads((r / "result.json").read_text()) for r in (a, b))
    assert ra["architecture"]["text"] == rb["architecture"]["text"]


def single_process_runs(root: Path, args: list[str], position: int | None = None) -> tuple[Path, Path, Path]:
    """One process: a fresh search, and a copy of it cut back to its checkpoint at `position` (default: the last
    mid-epoch one), resumed. Returns (fresh, resumed, a second such copy for two processes to resume)."""
    single, single_resumed, ddp_resumed = root / "single", root / "single-resumed", root / "ddp-resumed"
    assert main(["search", "--out", str(single), *args]) == 0
    _killed_copy(single, single_resumed, position)
    _killed_copy(single, ddp_resumed, position)
    assert main(["search", "--resume", str(single_resumed)]) == 0
    assert_trained_again(single_resumed, single)
    return single, single_resumed, ddp_resumed


def torchrun_workers(tmp_path: Path, spec: dict, timeout: float = 240) -> list[dict]:
    """Run this file as a 2-process gloo launch on loopback with `spec`; each rank's report."""
    out = tmp_path / "ranks"
    out.mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    # the workers import this file's helpers and the archselect this process imported (not another install's)
    path = os.pathsep.join([str(TESTS), str(Path(archselect.__file__).resolve().parents[1])])
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__)), str(out), str(spec_file)]
    code, output = run_bounded(cmd, env, timeout=timeout)
    assert code == 0, output[-6000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world"] == 2 and info["codes"] == [0] * len(spec["searches"])
        assert info["writes"] == [], f"rank {r} wrote into a run directory: {info['writes']}"
    return ranks


def test_torchrun_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setattr(Supernet, "train", _train_with_frozen_bn)
    data = tiny_idx_dir(tmp_path / "data")
    single, single_resumed, ddp_resumed = single_process_runs(tmp_path, search_args(data))
    alpha0 = torch.tensor(_metrics(single)[0]["alpha"]["cell"])
    assert (torch.tensor(_metrics(single)[-1]["alpha"]["cell"]) - alpha0).abs().max() > 1e-3  # α really moved

    fresh = tmp_path / "ddp-fresh"
    ranks = torchrun_workers(tmp_path, {
        "checks": ["helpers", "recalibration"], "protected": [str(fresh), str(ddp_resumed)],
        "searches": [["search", "--device", "cpu", "--out", str(fresh), *search_args(data)],
                     ["search", "--device", "cpu", "--resume", str(ddp_resumed)]]})
    for info in ranks:
        assert info["grad_error"] < 1e-6 and info["missing_grad_is_none"] and info["half_missing_grad"] == 0.5
        assert info["rank_map"] == [j * j for j in range(7)] and info["shapley_split_exact"]
        assert info["drift_detected"] and info["rng_difference_detected"]
        # BN recalibration (OFA's evaluation) from each rank's half batches == from the whole batches in one process
        assert max(info["recalibration_error"]) < 1e-5 and info["recalibration_moved"] > 0.1
    assert ranks[0]["recalibrated"] == ranks[1]["recalibrated"]  # the same statistics on both ranks, bit for bit
    assert (fresh / ".lock").read_text().strip() == str(ranks[0]["pid"])
    assert json.loads((fresh / "manifest.json").read_text())["world_size"] == 2

    assert_trained_again(ddp_resumed, single)
    assert_same_search(single, fresh)          # two processes, half batches each == one process, full batches
    assert_same_search(single_resumed, ddp_resumed)  # resumed mid-epoch by two processes == by one
    assert_same_search(single, ddp_resumed)    # and both == the uninterrupted run


@pytest.mark.slow
def test_torchrun_mobilenet_trainers_match_one_process(tmp_path, monkeypatch):
    """Once-for-All (sandwich of sub-networks drawn per step, KD teacher, per-phase schedule, channel sorting, BN
    recalibrated for the epoch-end evaluation) and ProxylessNAS (one sampled path per weight step, two-path binary
    gates and a latency term per α step): two processes == one process, fresh and resumed mid-epoch, in one launch.
    ~20 s on 2 shared cores, hence slow; the default run's launch above checks the pieces they add (the RNG check,
    BN recalibration across ranks)."""
    monkeypatch.setattr(Supernet, "train", _train_with_frozen_bn)
    monkeypatch.setattr(ofa, "recalibrate_bn", _recalibrate_real_bn)
    data = tiny_idx_dir(tmp_path / "data", n_train=64, n_test=16)
    runs, searches, protected = {}, [], []
    # resumed in the middle of OFA's second phase (teacher, sub-network draws) and of ProxylessNAS' first epoch
    for name, args, position in (("ofa", ofa_args(data), 3), ("proxyless", proxyless_args(data), 1)):
        single, single_resumed, ddp_resumed = single_process_runs(tmp_path / name, args, position)
        fresh = tmp_path / name / "ddp-fresh"
        runs[name] = single, single_resumed, ddp_resumed, fresh
        searches += [["search", "--device", "cpu", "--out", str(fresh), *args],
                     ["search", "--device", "cpu", "--resume", str(ddp_resumed)]]
        protected += [str(fresh), str(ddp_resumed)]
    torchrun_workers(tmp_path, {"checks": [], "protected": protected, "searches": searches})
    assert [r["subnets"] for r in _metrics(runs["ofa"][0])] == [1.0, 3.0, 3.0, 3.0]  # largest, smallest, a draw
    records = _metrics(runs["proxyless"][0])
    assert all("arch_loss" in r for r in records)  # α steps in both epochs, and α really moved
    moved = [np.abs(np.array(records[-1]["alpha"][ct]) - np.array(records[0]["alpha"][ct])).max() for ct in
             records[0]["alpha"]]
    assert max(moved) > 1e-3
    for name, (single, single_resumed, ddp_resumed, fresh) in runs.items():
        assert_trained_again(ddp_resumed, single)
        assert_same_search(single, fresh)
        assert_same_search(single_resumed, ddp_resumed)
        assert_same_search(single, ddp_resumed)


# -- the torchrun worker ---------------------------------------------------------------------------------------------

def _forbid_writes_under(roots: list[Path], log: list[str]) -> None:
    """Record (and refuse) any attempt by this process to create or write a file below `roots`."""
    roots = [str(r.resolve()) for r in roots]

    def inside(path) -> bool:
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def guard(name, fn, is_write):
        def wrapped(path, *args, **kwargs):
            if is_write(args, kwargs) and inside(path):
                log.append(f"{name} {path}")
                raise PermissionError(f"rank {distributed.rank()} must not write {path}")
            return fn(path, *args, **kwargs)
        return wrapped

    always = lambda args, kwargs: True  # noqa: E731
    writes_mode = lambda args, kwargs: any(c in (args[0] if args else kwargs.get("mode", "r")) for c in "wax+")  # noqa
    writes_flags = lambda args, kwargs: bool((args[0] if args else 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))  # noqa
    builtins.open = guard("open", builtins.open, writes_mode)
    os.open = guard("os.open", os.open, writes_flags)
    os.replace = guard("os.replace", os.replace, always)
    os.mkdir = guard("os.mkdir", os.mkdir, always)
    os.unlink = guard("os.unlink", os.unlink, always)


def _helper_checks(info: dict) -> None:
    """Gradient averaging, missing gradients, rank_map, the drift check and the RNG check, on a toy model without
    BN."""
    r, k = distributed.rank(), distributed.world()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    unused, half_used = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    full = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    part = slice(r * 8 // k, (r + 1) * 8 // k)
    loss = torch.nn.functional.cross_entropy(model(x[part]), y[part])
    if r == 0:
        loss = loss + half_used.sum()  # a gradient of 1 on rank 0, none on rank 1: mean 0.5
    loss.backward()
    distributed.average_gradients(list(model.parameters()) + [unused, half_used])
    info["grad_error"] = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), full))
    info["missing_grad_is_none"] = unused.grad is None
    info["half_missing_grad"] = float(half_used.grad[0])
    info["rank_map"] = distributed.rank_map(lambda j: j * j, list(range(7)))
    from test_executors import marginals  # a toy Shapley game: permutation j is a pure function of j

    info["shapley_split_exact"] = distributed.rank_map(marginals, list(range(24))) == [marginals(j) for j in range(24)]
    with torch.no_grad():
        model.weight.add_(float(r))  # rank 1 drifts by 1
    try:
        distributed.sync_module(model)
        info["drift_detected"] = False
    except RuntimeError:
        info["drift_detected"] = True
    distributed.check_same_rng()  # same draws so far: passes
    torch.rand(r)  # rank 1 draws one number more
    try:
        distributed.check_same_rng()
        info["rng_difference_detected"] = False
    except RuntimeError:
        info["rng_difference_detected"] = True


def _recalibration_check(info: dict) -> None:
    """recalibrate_bn across the ranks, each with its half of two batches, against one process with the whole
    batches, for the full network and the narrowest sub-network (sliced BN) of a tiny elastic supernet."""
    from archselect.spaces import get
    from archselect.spaces.subnets import Choices

    r, k = distributed.rank(), distributed.world()
    torch.manual_seed(0)
    supernet = get("mobilenet", resolution=32, width_mult=0.25, stage_layers=[2, 1, 1, 1, 1, 1], in_channels=1,
                   num_classes=4, elastic=True, bn_affine=True).supernet()
    batches = [(torch.randn(8, 1, 32, 32) * 2 + 1, None) for _ in range(2)]
    choices = Choices.of(supernet)
    info["recalibration_error"], info["recalibrated"], moved = [], [], 0.0
    for genes in (choices.largest(), choices.smallest()):
        weights = choices.weights(genes)
        whole, split = copy.deepcopy(supernet), copy.deepcopy(supernet)
        _recalibrate_real_bn(whole, weights, batches)  # (the worker froze Supernet.train's BN)
        _recalibrate_real_bn(split, weights, [(x[r * 8 // k:(r + 1) * 8 // k], y) for x, y in batches],
                             across_ranks=True)
        a, b = whole.state_dict(), split.state_dict()
        info["recalibration_error"].append(max(float((a[n] - b[n]).abs().max()) for n in a if "running" in n))
        info["recalibrated"].append(sum(float(b[n].double().sum()) for n in b if "running" in n))
        moved = max(moved, max(float((a[n] - supernet.state_dict()[n]).abs().max()) for n in a if "running" in n))
    info["recalibration_moved"] = moved


def _worker(out: Path, spec_file: Path) -> None:
    """One torchrun rank: the spec's checks, then its searches, all in one process group (the test's; archselect
    leaves a group it did not create alone)."""
    faulthandler.dump_traceback_later(200, exit=True)  # a hung rank reports where, then ends, within the test's time
    spec = json.loads(spec_file.read_text())
    freeze_bn_statistics()
    torch.distributed.init_process_group("gloo")
    info: dict = {"pid": os.getpid(), "writes": [], "rank": distributed.rank(), "world": distributed.world()}
    if "helpers" in spec["checks"]:
        _helper_checks(info)
    if "recalibration" in spec["checks"]:
        _recalibration_check(info)
    if info["rank"] != 0:
        _forbid_writes_under([Path(p) for p in spec["protected"]], info["writes"])
    info["codes"] = [main(argv) for argv in spec["searches"]]
    torch.distributed.destroy_process_group()
    Path(out, f"rank{info['rank']}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
