"""A timed slice of the paper-scale NAS-Bench-201 DARTS-PT pipeline, projected to the whole protocol.

The protocol (docs/protocols.md; reference/methods.md §2): CIFAR-10 search split 25,000 + 25,000 images, batch 64,
NB201 supernet C=16 N=5; 100 epochs of first-order DARTS; then DARTS-PT: 6 decisions, each scoring every op's
removal on the whole validation half, with 25 epochs of fine-tuning (weights and α) spread between them.
On synthetic CIFAR-shaped data this times a few search steps and one perturbation selection on a few validation
batches, and prints a markdown table: the measured seconds per unit and the projected hours of each phase.

    .venv/bin/python benchmarks/paper_slice.py --device cuda          # the paper's sizes
    .venv/bin/python benchmarks/paper_slice.py --device cpu --quick   # C=8 N=1 16x16: the same code paths, quickly
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from archselect.config import SearchConfig
from archselect.data import ImageSet, Loader
from archselect.optimizers.darts import DartsFirstOrder
from archselect.selection.base import SelectionContext
from archselect.selection.perturbation import Perturbation
from archselect.spaces.nb201 import NB201Space

HALF = 25_000  # images in each half of the CIFAR-10 search split
SEARCH_EPOCHS, TUNE_EPOCHS = 100, 25


def random_set(n: int, size: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (n,), generator=g), 10, (0.5,) * 3, (0.25,) * 3, "synthetic", True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(net, loader: Loader, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one first-order DARTS step (α on a valid batch, then the weights on a train batch)."""
    opt = DartsFirstOrder(net, SearchConfig(epochs=1), steps_per_epoch=steps + warmup)
    times = []
    for k in range(warmup + steps):
        train, valid = loader.batch(0, 2 * k % len(loader)), loader.batch(0, (2 * k + 1) % len(loader))
        sync(device)
        start = time.perf_counter()
        opt.step(train, valid, 0)
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="C=8 N=1 16x16 images: the code paths, not the paper's size")
    p.add_argument("--steps", type=int, default=10, help="timed search steps")
    p.add_argument("--valid-batches", type=int, default=4, help="validation batches the timed selection scores")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    device = torch.device(args.device)
    C, N, size = (8, 1, 16) if args.quick else (16, 5, 32)
    torch.manual_seed(0)
    space = NB201Space(C=C, N=N)
    net = space.supernet().to(device, memory_format=torch.channels_last)
    images = max(4 * args.batch, 2 * args.valid_batches * args.batch)
    common = dict(seed=0, augment=False, channels_last=True, device=device)
    loader = Loader(random_set(images, size, 1), args.batch, **common)
    t_step = step_seconds(net, loader, args.steps, 2, device)

    valid = Loader(random_set(args.valid_batches * args.batch, size, 2), args.batch, shuffle=False, **common)
    ctx = SelectionContext(space, net, valid, loader, device, seed=0)
    selection = Perturbation({"tune_steps": 0, "valid_batches": args.valid_batches}).select(ctx)
    t_select = selection.cost.seconds

    per_epoch = HALF // args.batch
    phases = [  # (phase, unit, seconds per unit, units in the protocol)
        ("supernet search (first-order DARTS)", "step", t_step, SEARCH_EPOCHS * per_epoch),
        ("DARTS-PT fine-tuning (weights + α)", "step", t_step, TUNE_EPOCHS * per_epoch),
        ("DARTS-PT scoring (6 decisions, all ops)", f"{args.valid_batches} valid batches", t_select,
         per_epoch / args.valid_batches),
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"NB201 C={C} N={N}, {size}x{size} synthetic images, batch {args.batch}, on {name} "
          f"(torch {torch.__version__}); {args.steps} timed search steps, perturbation scored on "
          f"{args.valid_batches} batches ({selection.cost.forward} forward passes)\n")
    print("| phase | unit | s/unit | units (paper) | projected hours |")
    print("|---|---|---|---|---|")
    total = 0.0
    for phase, unit, seconds, units in phases:
        hours = seconds * units / 3600
        total += hours
        print(f"| {phase} | {unit} | {seconds:.3f} | {units:,.0f} | {hours:.2f} |")
    print(f"| **whole protocol** | | | | **{total:.2f}** |")
    if args.quick:
        print("\n(--quick: a smaller supernet than the paper's; the hours are not the protocol's)")


if __name__ == "__main__":
    main()
