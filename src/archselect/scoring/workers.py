"""Where a selector's independent evaluations run: here, in turn (the default), or split over W workers (executor
jobs, sequential or Ray, or the ranks of a torchrun launch) and gathered back in order, with the same results.

A selector hands `Workers.map` a module-level function `fn(supernet, shared, items) -> one result per item`, the
items (Shapley permutations, the weight settings of one DARTS-PT decision) and what every item needs (`shared`:
batches, options). With one worker, fn runs here on the selector's own supernet. With W workers, worker w takes items
w, w+W, ... and receives a `Replica` of the supernet with the job: the space that builds it and its current
state_dict (never a path to a file that may be half written), plus this process's intra-op thread count and
deterministic flag, since how many threads split a convolution or a BatchNorm reduction changes its floats. fn then
computes on the replica exactly what it would compute here.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import distributed
from ..environment import keep_freed_memory, set_deterministic
from ..executors import interleave, make_executor, split_map
from ..ranks import RankExecutor
from ..supernet import Supernet

Task = Callable[[Supernet, Any, list[Any]], list[Any]]


def move_tensors(obj: Any, device: torch.device | str) -> Any:
    """`obj` with every tensor inside (dicts, lists, tuples) on `device`; layouts kept, no copy when already there."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_tensors(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_tensors(v, device) for v in obj)
    return obj


@dataclass
class Replica:
    """What a worker needs to rebuild the supernet exactly: its space, its state (CPU copies, each tensor's layout
    kept: channels_last convolutions stay channels_last) and the arithmetic settings of the caller."""

    space: Any
    state: dict[str, torch.Tensor]
    device_type: str
    threads: int
    deterministic: bool

    @classmethod
    def of(cls, space: Any, supernet: Supernet) -> "Replica":
        state = {k: v.detach().to("cpu", copy=True) for k, v in supernet.state_dict().items()}
        device = next(iter(supernet.parameters())).device.type
        return cls(space, state, device, torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())

    def build(self) -> Supernet:
        device = torch.device(self.device_type)  # a worker's own device of that type (its GPU under Ray/torchrun)
        with torch.random.fork_rng(devices=[]):  # building draws a fresh α: leave this process's RNG as it was
            net = self.space.supernet().to(device)
        # assign: the module takes the shipped tensors themselves, so their layout, not the new module's, holds
        net.load_state_dict(move_tensors(self.state, device), assign=True)
        return net

    @contextmanager
    def arithmetic(self) -> Iterator[None]:
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(self.threads)
        set_deterministic(self.deterministic)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            set_deterministic(deterministic)


def _on_replica(fn: Task, replica: Replica, shared: Any, items: list[Any]) -> list[Any]:
    """One worker's share: fn on a rebuilt supernet, inputs on its device."""
    keep_freed_memory()  # as the command does for itself (a process setting; a no-op once set)
    with replica.arithmetic():
        net = replica.build()
        device = torch.device(replica.device_type)
        return fn(net, move_tensors(shared, device), move_tensors(items, device))


@dataclass
class Workers:
    """`count` workers on `executor` (an executors.Executor or a ranks.RankExecutor); one worker runs here."""

    count: int = 1
    executor: Any = None

    def map(self, fn: Task, items: Sequence[Any], supernet: Supernet, space: Any, shared: Any = None) -> list[Any]:
        """fn(supernet, shared, items), computed here or split over the workers; one result per item, in order."""
        items = list(items)
        w = min(self.count, len(items))
        if w <= 1 or self.executor is None:
            return fn(supernet, shared, items)
        task = partial(_on_replica, fn, Replica.of(space, supernet), move_tensors(shared, "cpu"))
        shares = [move_tensors(items[i::w], "cpu") for i in range(w)]
        parts = split_map(task, shares, w, self.executor)  # one share per job
        return interleave(parts, len(items))


def _ready(_: Any) -> int:
    return os.getpid()


@contextmanager
def open_workers(count: int, executor: str = "sequential", address: str | None = None,
                 device: torch.device | None = None) -> Iterator[Workers]:
    """`count` workers on the named executor (`select.workers`, `select.executor`); with one, nothing is started.
    A Ray job asks for as many CPUs as this process has threads (the workers compute with that many) and, on a
    CUDA run, one GPU."""
    if count == 1:
        yield Workers()
        return
    gpus = 1 if device is not None and device.type == "cuda" else 0
    with make_executor(executor, address, cpus_per_job=torch.get_num_threads(), gpus_per_job=gpus) as ex:
        # start the engine and its worker processes now: an unreachable cluster fails before any selection work,
        # and a selector's recorded seconds are its own
        split_map(_ready, range(count), count, ex)
        yield Workers(count, ex)


@contextmanager
def launch_workers(count: int = 1, executor: str = "sequential", address: str | None = None,
                   device: torch.device | None = None) -> Iterator[Workers]:
    """The workers of this launch. Under torchrun (rank 0; the other ranks must be in `ranks.serve()`): every rank,
    released on exit, whatever happens; otherwise those of `open_workers`."""
    if distributed.world() == 1:
        with open_workers(count, executor, address, device) as workers:
            yield workers
        return

    with RankExecutor() as ex:
        yield Workers(ex.world, ex)
