"""Data-parallel search steps per second: 1 process vs 2 processes (gloo on loopback), same global batch.

A step is one first-order DARTS step of `archselect search` (α step on a validation batch, then the weight step on a
training batch), global batch B; with K processes each computes B/K images and the gradients are averaged
(archselect.distributed). Variants, each in fresh processes, interleaved round by round so that the machine's drift
hits them alike (warm-up steps not timed; the median over the rounds is printed):

  1 proc x 1 thread     the single-process baseline
  1 proc x T threads    the same process given all T threads (intra-op parallelism)
  K procs x 1 thread    archselect: one flat all-reduce of the gradients after backward (the default under torchrun)
  K procs x 1 thread    torch DDP(find_unused_parameters=True) for the weight step instead, for comparison
      (DDP)

    .venv/bin/python benchmarks/ddp_speedup.py                      # C=8 N=1 16x16, global batch 64
    .venv/bin/python benchmarks/ddp_speedup.py --C 16 --size 32 --rounds 3

On a machine whose cores are shared with other work the speed-up is bounded by the cores actually free.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(args, device):
    """Supernet, optimizer and (sharded) loaders as `archselect search` builds them, on synthetic images."""
    from archselect import distributed
    from archselect.components import SearchData, to_device
    from archselect.config import SearchConfig
    from archselect.data import ImageSet, Loader
    from archselect.optimizers.darts import DartsFirstOrder
    from archselect.spaces.nb201 import NB201Space

    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + args.warmup)
    images = torch.randint(0, 256, (n, 1, args.size, args.size), generator=g, dtype=torch.uint8)
    ds = ImageSet(images, torch.randint(0, 10, (n,), generator=g), 10, (0.5,), (0.25,), "synthetic", True)
    common = dict(augment=False, device=device, channels_last=True)
    data = SearchData(Loader(ds, args.batch, seed=0, **common), Loader(ds, args.batch, seed=1, **common), 1, 10)
    data = distributed.shard_data(data)
    space = NB201Space(C=args.C, N=args.N, in_channels=1, num_classes=10)
    net = to_device(space.supernet(), device, True)
    opt = DartsFirstOrder(net, SearchConfig(epochs=1), len(data.train))
    return net, opt, data


def ddp_weight_step(opt, ddp, batch):
    """SearchOptimizer.weight_step with torch DDP averaging the gradients during backward."""
    x, y = batch
    opt.w_optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ddp(x, opt.train_weights()), y)
    loss.backward()
    nn.utils.clip_grad_norm_(opt.supernet.weight_parameters(), opt.cfg.grad_clip)
    opt.w_optimizer.step()
    return {"train_loss": loss.item()}


def worker(rank: int, world: int, port: int, threads: int, use_ddp: bool, args, queue) -> None:
    from archselect import distributed

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
        distributed.init(torch.device("cpu"))
    net, opt, data = build(args, torch.device("cpu"))
    ddp = None
    if use_ddp:
        ddp = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
        opt.weight_step = lambda batch: ddp_weight_step(opt, ddp, batch)
    for k in range(args.warmup + args.steps):
        if k == args.warmup:
            distributed.barrier()
            start = time.perf_counter()
        opt.step(data.train.batch(0, k), data.valid.batch(0, k), 0)
    distributed.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        queue.put(args.steps / seconds)
    distributed.shutdown()


def measure(procs: int, threads: int, use_ddp: bool, args) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(worker, args=(procs, free_port(), threads, use_ddp, args, queue), nprocs=procs,
                       start_method="spawn", join=True)
    return queue.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--N", type=int, default=1)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    cores = args.procs
    variants = [("1 proc x 1 thread", 1, 1, False), (f"1 proc x {cores} threads", 1, cores, False),
                (f"{args.procs} procs x 1 thread", args.procs, 1, False),
                (f"{args.procs} procs x 1 thread (DDP)", args.procs, 1, True)]
    rates: dict[str, list[float]] = {v[0]: [] for v in variants}
    for r in range(args.rounds):
        for name, procs, threads, use_ddp in (variants if r % 2 == 0 else variants[::-1]):
            rates[name].append(measure(procs, threads, use_ddp, args))
    base = statistics.median(rates[variants[0][0]])
    print(f"NB201 supernet C={args.C} N={args.N} {args.size}x{args.size}, global batch {args.batch}, first-order "
          f"DARTS steps; {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"| {'variant':<28} | steps/s | images/s | speed-up |")
    print(f"|{'-' * 30}|---------|----------|----------|")
    for name, *_ in variants:
        rate = statistics.median(rates[name])
        print(f"| {name:<28} | {rate:7.2f} | {rate * args.batch:8.0f} | {rate / base:7.2f}x |")


if __name__ == "__main__":
    main()
