"""Data-parallel search under torchrun: one process per device, each global batch split across them.

`torchrun --nproc_per_node=K -m archselect search ...` starts K copies of the search. Each finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment, joins the process group (gloo on CPU, nccl on CUDA with device cuda:LOCAL_RANK) and

- takes the slice [r·B/K, (r+1)·B/K) of every global batch of B images: batch k of epoch e is a pure function of
  (seed, e, k), so the K slices together are exactly the batch one process would see (`ShardedLoader`);
- averages weight gradients over the ranks after backward and before clipping, and α gradients before every α
  optimizer step; with the same seed and the same optimizer state, parameters stay identical on every rank;
- keeps its own BN batch statistics in training (as torch DDP does); at each epoch end rank 0's parameters and buffers
  (BN running statistics) are broadcast, so every rank evaluates, and rank 0 saves, one and the same supernet.

Rank 0 alone writes the run directory. Without torchrun (or with one process) every helper is a no-op on a world of one.

Why not `torch.nn.parallel.DistributedDataParallel`: the supernet's forward takes per-step mixing weights whose plan
decides which ops run, so the set of parameters with a gradient changes between steps (masked ops, zero weights,
sampling optimizers): DDP would need `find_unused_parameters=True` (a graph walk every step), and the first-order α
step (`autograd.grad` of α alone) never fires DDP's reducer hooks, which breaks its bookkeeping. One flat all-reduce
of the gradients after backward costs the same message size; benchmarks/ddp_speedup.py measures both.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import UserError
from .executors import interleave


# -- the launch environment ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int


def launch_env() -> Launch | None:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or None when not launched by torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        launch = Launch(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                        int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if not 0 <= launch.rank < launch.world_size:
        raise UserError(f"RANK={launch.rank} is outside WORLD_SIZE={launch.world_size}")
    return launch


_OWN_GROUP = False  # whether init() created the process group (shutdown() leaves a caller's group alone)


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun with more than one process; returns this rank's device.
    A process group that already exists (a caller's) is used as it is."""
    global _OWN_GROUP
    launch = launch_env()
    if launch is None or launch.world_size == 1 or not dist.is_available():
        return device
    if device.type == "cuda":
        if launch.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {launch.local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                            f"use --nproc_per_node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWN_GROUP = True
    return device


def shutdown() -> None:
    """Leave the process group that init() created."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


# -- collectives on lists of tensors ---------------------------------------------------------------------------------

def _groups(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of `tensors` by (dtype, device): one flat message per group instead of one per tensor."""
    out: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.dtype, t.device), []).append(i)
    return out


def _flat_collective(tensors: Sequence[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
    """Apply the in-place collective `op` to `tensors` through one flat buffer per dtype; results copied back."""
    for (dtype, _), idx in _groups(tensors).items():
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool
        flat = torch.cat([tensors[i].detach().reshape(-1).to(wire) for i in idx])
        op(flat)
        offset = 0
        for i in idx:
            t = tensors[i]
            n = t.numel()
            t.data.copy_(flat[offset:offset + n].view(t.shape).to(dtype))
            offset += n


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its mean over the ranks."""
    if not active() or not tensors:
        return
    k = world()

    def op(flat):
        dist.all_reduce(flat)
        flat.div_(k)

    _flat_collective(list(tensors), op)


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its sum over the ranks."""
    if active() and tensors:
        _flat_collective(list(tensors), dist.all_reduce)


def broadcast(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank `src`'s value."""
    if active() and tensors:
        _flat_collective(list(tensors), lambda flat: dist.broadcast(flat, src))


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average `.grad` over the ranks, in one message. A parameter without a gradient on some rank counts as zero
    there (as DDP with find_unused_parameters does); one without a gradient on every rank keeps `.grad = None`, so
    the optimizer skips it exactly as a single process would."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    all_reduce_mean(grads + [present])
    for p, g, seen in zip(params, grads, present.tolist()):
        if seen > 0 and p.grad is None:
            p.grad = g


def sync_optimizer_gradients(optimizer: torch.optim.Optimizer) -> None:
    """From now on, average the gradients of `optimizer`'s parameters over the ranks right before each of its steps
    (once per optimizer; a no-op outside torchrun)."""
    if not active() or getattr(optimizer, "_archselect_synced", False):
        return

    def hook(opt, args, kwargs):
        average_gradients([p for group in opt.param_groups for p in group["params"]])

    optimizer.register_step_pre_hook(hook)
    optimizer._archselect_synced = True


def _comm_device() -> torch.device:
    """Where small control tensors live: nccl only moves CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Mean of each numeric value over the ranks (same keys on every rank)."""
    if not active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    all_reduce_mean([t])
    return dict(zip(keys, t.tolist()))


def sync_module(module: torch.nn.Module, tolerance: float = 1e-4) -> None:
    """Broadcast rank 0's parameters and buffers. Parameters should already agree (averaged gradients, same
    optimizer); a larger disagreement means some update skipped the averaging, which is a bug, not noise."""
    if not active():
        return
    params = [p.detach() for p in module.parameters()]
    local = [p.clone() for p in params]
    broadcast(params + list(module.buffers()))
    drift = torch.tensor([max((float((a - p).abs().max()) for a, p in zip(local, params) if a.numel()),
                              default=0.0)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    if drift.item() > tolerance:
        raise RuntimeError(f"supernet parameters differ across ranks by {drift.item():.3g}: an optimizer updated "
                           f"them without averaging gradients (see archselect.distributed.average_gradients)")


def check_same_rng() -> None:
    """Raise unless torch's random generators (the CPU one, and the current CUDA device's once CUDA is in use) are in
    the same state on every rank. Sampling optimizers draw their paths and sub-networks from them on every rank
    alike (GDAS, SNAS, RSPS, ProxylessNAS, Once-for-All); a rank that drew more or less would train another network."""
    if not active():
        return
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    digest = hashlib.blake2b(b"".join(s.numpy().tobytes() for s in states), digest_size=7).digest()
    value = int.from_bytes(digest, "little")
    extremes = torch.tensor([value, -value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)  # [max, -min]
    if extremes[0] != -extremes[1]:
        raise RuntimeError("torch's random generator differs across ranks: some rank drew random numbers the others "
                           "did not, so their sampled paths would differ")


# -- data -------------------------------------------------------------------------------------------------------------

class ShardedLoader:
    """This rank's slice of every global batch of `loader`; the loader still yields the single-process batches (same
    order, same augmentation), so K ranks together see exactly what one process sees. The slices are equal when the
    global batch is divisible by K, which `shard_data` requires."""

    def __init__(self, loader: Any, rank: int, world_size: int):
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # ds, batch_size, seed, image_shape, ... of the global loader
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def batch(self, epoch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.loader.batch(epoch, k)
        n = len(y)
        lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
        return x[lo:hi], y[lo:hi]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(start, len(self)):
            yield self.batch(epoch, k)


def shard_data(data: Any) -> Any:
    """A copy of a SearchData whose train and valid loaders yield this rank's slices (unchanged on one process)."""
    if not active():
        return data
    k = world()
    for name in ("train", "valid"):
        b = getattr(data, name).batch_size
        if b % k:
            raise UserError(f"data.batch_size={b} (the global batch) must be divisible by the {k} processes")
    return replace(data, train=ShardedLoader(data.train, rank(), k), valid=ShardedLoader(data.valid, rank(), k))


# -- independent evaluations split over the ranks ---------------------------------------------------------------------

def rank_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """`[fn(x) for x in items]`, with rank r computing items r, r+K, r+2K, ... and every rank receiving all results in
    the original order. Exact whenever fn(x) depends on x alone (e.g. permutation j drawn from (seed, j))."""
    if not active():
        return [fn(x) for x in items]
    k, r = world(), rank()
    mine = [fn(x) for x in items[r::k]]
    gathered: list[list[Any]] = [[] for _ in range(k)]
    dist.all_gather_object(gathered, mine)  # pickles between our own processes only, never a file

    return interleave(gathered, len(items))
