"""Cost of the scoring selectors: the efficient masked evaluator against the naive one, same supernet, same budget.

"Naive" is what the official DARTS-PT and Shapley-NAS code does: a full forward of the whole supernet for every weight
setting, every op of every edge computed (a zero weight multiplies its output). "Efficient" is
scoring/evaluator.py: memo of known outcomes (removing `none` or an op already at 0), prefix cache, op cache in the
first cell (only the ops reading the changed edge's destination or later nodes are recomputed), zero-weight ops not
computed; with --stack S, also S settings per pass (scoring/stacking.py). Both give the same scores (the table
checks; tests/test_evaluator.py checks the logits bit for bit), so the ratio is pure overhead removed. NAS-Bench-201 shares one α across all its cells, so a perturbation changes every cell
from the first on: the reuse is confined to the first cell, which is 60% of a forward at N=1 but 1/15 of the cells
(about 13% of the time) at N=5.

NAS-Bench-201 supernet (C=16, N=1 and N=5), random 32x32 images with random labels, eval batch 256. Perturbation runs
without fine-tuning (tune_steps 0: scoring cost only); Shapley with the default truncation (which rarely triggers on
an untrained supernet and random labels, so most permutations remove all 30 players). Variants alternate per row so
that the machine's drift hits them alike. Seconds are wall time; CPU is this process's CPU time.

    .venv/bin/python benchmarks/selection_cost.py                     # N=1 and N=5
    .venv/bin/python benchmarks/selection_cost.py --N 1 --batches 2 --permutations 3
    .venv/bin/python benchmarks/selection_cost.py --stack 4           # also stacking 4 settings per pass
    .venv/bin/python benchmarks/selection_cost.py --probe-batching    # images/s by batch size: can stacking pay?
"""
from __future__ import annotations

import argparse
import time

import torch

from archselect.data import ImageSet, Loader
from archselect.environment import keep_freed_memory
from archselect.selection.base import SelectionContext
from archselect.selection.perturbation import Perturbation
from archselect.selection.shapley import ShapleySelector
from archselect.spaces.nb201 import NB201Space


def random_set(n: int, size: int = 32, classes: int = 10, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageSet(images, labels, classes, (0.5,) * 3, (0.25,) * 3, "random", True)


def context(N: int, batch: int, batches: int, device: torch.device) -> SelectionContext:
    torch.manual_seed(0)  # the supernet's initial weights: the same workload (and Shapley truncations) every run
    space = NB201Space(C=16, N=N)
    net = space.supernet().to(device, memory_format=torch.channels_last)  # the search default (channels_last)
    common = dict(seed=0, augment=False, channels_last=True, device=device)
    valid = Loader(random_set(batch * batches, seed=1), batch, shuffle=False, drop_last=False, **common)
    train = Loader(random_set(64, seed=2), 64, **common)
    return SelectionContext(space, net, valid, train, device, seed=0)


def measure(selector_cls, options: dict, ctx: SelectionContext):
    cpu = time.process_time()
    s = selector_cls(options).select(ctx)
    return s, s.cost.seconds, time.process_time() - cpu


def rows_for(N: int, args) -> list[tuple]:
    device = torch.device(args.device)
    ctx = context(N, args.batch, args.batches, device)
    budgets = {
        "perturbation": (Perturbation, {"tune_steps": 0, "valid_batches": args.batches}),
        "shapley": (ShapleySelector, {"permutations": args.permutations, "batch_size": args.batch,
                                      "batches": args.batches}),
    }
    variants = {"naive": {"evaluator": "naive"}, "efficient": {"evaluator": "efficient"}}
    if args.stack > 1:
        variants[f"stack {args.stack}"] = {"evaluator": "efficient", "stack": args.stack}
    rows = []
    for name, (cls, options) in budgets.items():
        order = list(variants) if len(rows) % 2 == 0 else list(variants)[::-1]
        out = {kind: measure(cls, {**options, **variants[kind]}, ctx) for kind in order}
        naive, t_naive, c_naive = out["naive"]
        for kind in variants:
            if kind == "naive":
                continue
            fast, t_fast, c_fast = out[kind]
            gap = max_gap(fast.scores, naive.scores)
            # on the CPU the scores are equal bit for bit; cuDNN may pick other kernels for other shapes
            assert gap == 0.0 or device.type == "cuda", f"{name}: {kind} and naive scores differ"
            if gap:
                print(f"  N={N} {name}: {kind} and naive scores differ by up to {gap:.2e} on {device}", flush=True)
            rows.append((N, name, kind, naive.cost.forward, fast.cost.forward, t_naive, t_fast, c_naive, c_fast))
            print(f"  N={N} {name}: naive {t_naive:.1f}s, {kind} {t_fast:.1f}s", flush=True)
    return rows


def max_gap(a: dict, b: dict) -> float:
    return max(abs(x - y) for ct in a for ra, rb in zip(a[ct], b[ct]) for x, y in zip(ra, rb))


def probe_batching(N: int, rounds: int = 3, sizes=(64, 128, 256, 1024), device: str = "cpu") -> None:
    """Images per second of one eval-mode forward by batch size: whether stacking weight settings along the batch
    can pay on this device (stacking.py). Interleaved rounds, best of each."""
    net = NB201Space(C=16, N=N).supernet().to(device, memory_format=torch.channels_last).eval()
    w = net.mixing_weights(detach=True)
    best = {}
    with torch.no_grad():
        for _ in range(rounds):
            for b in sizes:
                x = torch.randn(b, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
                t = time.perf_counter()
                net(x, w).sum().item()  # .item(): wait for the kernels
                best[b] = max(best.get(b, 0.0), b / (time.perf_counter() - t))
    print(f"N={N} eval forward, images/s by batch size: " + ", ".join(f"{b}: {best[b]:.0f}" for b in sizes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--N", type=int, nargs="+", default=[1, 5])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=1, help="scoring batches (perturbation) / per permutation")
    p.add_argument("--permutations", type=int, default=2)
    p.add_argument("--stack", type=int, default=1, help="also measure the efficient evaluator stacking S settings")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--probe-batching", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = p.parse_args()
    keep_freed_memory()  # as the CLI does: without it, whichever variant runs after a larger one skips page faults
    torch.set_num_threads(args.threads)
    if args.probe_batching:
        for N in args.N:
            probe_batching(N, device=args.device)
        return
    rows = [r for N in args.N for r in rows_for(N, args)]
    same = "scores identical in every row" if args.device == "cpu" else "scores compared above"
    print(f"\nNB201 C=16 on {args.device}, batch {args.batch} x {args.batches}, {args.permutations} Shapley "
          f"permutations, {args.threads} thread(s); {same}")
    print(f"{'N':>2} {'selector':<13} {'variant':<10} {'fwd naive':>9} {'fwd var':>8} {'s naive':>8} {'s var':>7} "
          f"{'cpu naive':>9} {'cpu var':>8} {'wall ratio':>10} {'cpu ratio':>9}")
    for N, name, kind, fn, fe, tn, te, cn, ce in rows:
        print(f"{N:>2} {name:<13} {kind:<10} {fn:>9} {fe:>8} {tn:>8.1f} {te:>7.1f} {cn:>9.1f} {ce:>8.1f} "
              f"{tn / te:>9.2f}x {cn / ce:>8.2f}x")


if __name__ == "__main__":
    main()
