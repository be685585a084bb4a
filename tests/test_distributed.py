"""Data-parallel search under torchrun: two gloo processes on loopback reproduce the single-process run.

Exactness: each rank sees half of every global batch and gradients are averaged, so the arithmetic is the
single-process arithmetic except for BatchNorm, whose batch statistics come from the half batch (as in torch DDP).
The comparison therefore runs with BN normalising by its running statistics (frozen at their initial 0 and 1) in
both runs: every sample's loss is then independent of the rest of its batch, so two half batches are exactly one
batch and α, weights, losses and the derived architecture must agree to float rounding (atol 1e-5; measured
~1e-7). A wrong slice, a missing average or a rank writing the run directory all show. With batch-statistics BN
the two runs differ by design; the `slow` test states that tolerance.

This file doubles as the torchrun worker: `torchrun --nproc_per_node=2 tests/test_distributed.py OUT DATA FRESH RESUME`.
"""
from __future__ import annotations

import builtins
import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from archselect import distributed
from archselect.cli import main
from archselect.files import list_checkpoints, load_latest_checkpoint
from archselect.supernet import Supernet
from conftest import tiny_idx_dir

TESTS = Path(__file__).resolve().parent


def _train_with_frozen_bn(self, mode: bool = True):
    """Supernet.train that keeps every BN in eval mode: it normalises by its running statistics (never updated), so
    a sample's output ignores the rest of its batch."""
    torch.nn.Module.train(self, mode)
    for m in self.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.training = False
    return self


def freeze_bn_statistics() -> None:
    Supernet.train = _train_with_frozen_bn


def search_args(data_dir, epochs: int = 2) -> list[str]:
    # 128 search-train images, global batch 32 (16 per rank): 4 steps per epoch; a large α lr so α moves visibly
    return [f"data.data_dir={data_dir}", "space.C=4", "space.N=1", "data.batch_size=32", f"search.epochs={epochs}",
            "search.checkpoint_every=2", "search.a_lr=0.03", "threads=1"]


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


def _kill_after_mid_epoch_checkpoint(src: Path, dst: Path) -> None:
    """A copy of finished run `src` as a kill would have left it after its last mid-epoch checkpoint."""
    shutil.copytree(src, dst)
    newest = list_checkpoints(dst / "checkpoints", "search")[-1]
    newest.with_suffix(".json").unlink()
    newest.with_suffix(".safetensors").unlink()
    (dst / "result.json").unlink()


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
    for ra, rb in zip(ma, mb):
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "grad_norm", "lr"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-5), key
        np.testing.assert_allclose(ra["alpha"]["cell"], rb["alpha"]["cell"], rtol=0, atol=1e-6)
    ra, rb = (json.loads((r / "result.json").read_text()) for r in (a, b))
    assert ra["architecture"]["text"] == rb["architecture"]["text"]


def test_torchrun_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setattr(Supernet, "train", _train_with_frozen_bn)
    data = tiny_idx_dir(tmp_path / "data")
    single = tmp_path / "single"
    assert main(["search", "--out", str(single), *search_args(data)]) == 0
    alpha0 = torch.tensor(_metrics(single)[0]["alpha"]["cell"])
    assert (torch.tensor(_metrics(single)[-1]["alpha"]["cell"]) - alpha0).abs().max() > 1e-3  # α really moved
    single_resumed, ddp_resumed = tmp_path / "single-resumed", tmp_path / "ddp-resumed"
    _kill_after_mid_epoch_checkpoint(single, single_resumed)
    _kill_after_mid_epoch_checkpoint(single, ddp_resumed)
    assert main(["search", "--resume", str(single_resumed)]) == 0

    out, fresh = tmp_path / "ranks", tmp_path / "ddp-fresh"
    out.mkdir()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__)),
           str(out), str(data), str(fresh), str(ddp_resumed)]
    code, output = run_bounded(cmd, env, timeout=240)
    assert code == 0, output[-6000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world"] == 2 and info["codes"] == [0, 0]
        assert info["grad_error"] < 1e-6 and info["missing_grad_is_none"] and info["half_missing_grad"] == 0.5
        assert info["rank_map"] == [j * j for j in range(7)] and info["shapley_split_exact"]
        assert info["drift_detected"]
        assert info["writes"] == [], f"rank {r} wrote into a run directory: {info['writes']}"
    assert (fresh / ".lock").read_text().strip() == str(ranks[0]["pid"])
    assert json.loads((fresh / "manifest.json").read_text())["world_size"] == 2

    assert_same_search(single, fresh)          # two processes, half batches each == one process, full batches
    assert_same_search(single_resumed, ddp_resumed)  # resumed mid-epoch by two processes == by one
    assert_same_search(single, ddp_resumed)    # and both == the uninterrupted run


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
    """Gradient averaging, missing gradients, rank_map and the drift check, on a toy model without BN."""
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


def _worker(out: Path, data: Path, fresh: Path, resumed: Path) -> None:
    """One torchrun rank: the helper checks, then a fresh search and a resumed one, all in one process group (the
    test's; archselect leaves a group it did not create alone)."""
    faulthandler.dump_traceback_later(200, exit=True)  # a hung rank reports where, then ends, within the test's time
    freeze_bn_statistics()
    torch.distributed.init_process_group("gloo")
    info: dict = {"pid": os.getpid(), "writes": [], "rank": distributed.rank(), "world": distributed.world()}
    _helper_checks(info)
    if info["rank"] != 0:
        _forbid_writes_under([fresh, resumed], info["writes"])
    info["codes"] = [main(["search", "--device", "cpu", "--out", str(fresh), *search_args(data)]),
                     main(["search", "--device", "cpu", "--resume", str(resumed)])]
    torch.distributed.destroy_process_group()
    Path(out, f"rank{info['rank']}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    _worker(*map(Path, sys.argv[1:5]))
