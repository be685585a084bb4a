"""What Zero-Cost-PT's official procedure costs here: the zero-cost selector on an untrained NAS-Bench-201 supernet
(C=16, N=5, 32x32 random images, batches of 256, nwot, draw fresh), timed for a few projections and validation
batches (the selection's own record of its validation time), and the official run (pool_size 10, validate_rounds 100)
extrapolated from them: seconds per projection x 10 + seconds per validation batch x 100 x the distinct candidates
(1 to 10). Seconds are wall time; CPU is this process's CPU time.

    .venv/bin/python benchmarks/zero_cost_official.py                    # 2 projections, 2 validation batches
    .venv/bin/python benchmarks/zero_cost_official.py --N 1 --pool-size 3 --rounds 4 --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch

from archselect.data import ImageSet, Loader
from archselect.selection.base import SelectionContext
from archselect.selection.zero_cost import ZeroCost
from archselect.spaces.nb201 import NB201Space


def random_set(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (n,), generator=g), 10, (0.5,) * 3, (0.25,) * 3, "random", True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--pool-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    space = NB201Space(C=16, N=args.N)
    valid = Loader(random_set(4 * args.batch, 1), args.batch, seed=0, augment=False, shuffle=False, drop_last=False,
                   device=device)
    ctx = SelectionContext(space, space.supernet().to(device), valid, None, device, seed=0)
    options = {"proxy": "nwot", "batch_size": args.batch, "draw": "fresh", "augment": True,
               "pool_size": args.pool_size, "validate_rounds": args.rounds}
    cpu = time.process_time()
    sel = ZeroCost(options).select(ctx)
    cpu = time.process_time() - cpu
    spent = sel.details["validation_cost"]
    distinct = len(sel.details["validation"])
    per_projection = (sel.cost.seconds - spent["seconds"]) / args.pool_size
    per_batch = spent["seconds"] / (distinct * args.rounds)
    print(f"NB201 C=16 N={args.N}, batch {args.batch}, nwot, {device}, {torch.get_num_threads()} thread(s): "
          f"{sel.cost.seconds:.1f} s (CPU {cpu:.1f} s)")
    print(f"  projections: {args.pool_size}, {sel.cost.forward - spent['forward']} passes: "
          f"{per_projection:.1f} s each")
    print(f"  validation: {distinct} distinct candidate(s) x {args.rounds} batches, {spent['forward']} passes: "
          f"{per_batch:.2f} s per batch")
    low, high = 10 * per_projection + 100 * per_batch, 10 * per_projection + 1000 * per_batch
    print(f"  official pool_size 10, validate_rounds 100 at this size: {low / 60:.0f}-{high / 60:.0f} min "
          f"(1 to 10 distinct candidates; here {distinct} of {args.pool_size} projections were distinct)")

if __name__ == "__main__":
    main()
