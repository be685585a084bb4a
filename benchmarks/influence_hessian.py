"""Influence's Hessian diagonal, exact against Hutchinson's estimate, on a small DARTS supernet (196 coordinates).

For each method: seconds, Hessian-vector products per batch, the relative error of the Hessian diagonal
(‖ĥ − h‖ / ‖h‖), the correlation of the op scores with the exact ones, and on how many edges the best non-`none` op
is the same. Hutchinson's cost is `probes` products whatever the coordinate count; its error falls as 1/√probes.

    .venv/bin/python benchmarks/influence_hessian.py                     # probes 32 and 128
    .venv/bin/python benchmarks/influence_hessian.py --probes 8 32 --C 8 --images 16
"""
from __future__ import annotations

import argparse
import time

import torch

from archselect.selection import SELECTORS, SelectionContext
from archselect.spaces.darts import DARTSSpace


class Batches:
    """The part of a Loader the influence selector reads."""

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, e=0, start=0):
        yield from self.batches[start:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--C", type=int, default=4)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--images", type=int, default=8, help="one batch of this many 8x8 images")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = DARTSSpace(C=args.C, N=args.cells, in_channels=1, num_classes=3, alpha_init_std=0.5)
    net = space.supernet()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.images, 1, 8, 8, generator=g), torch.randint(0, 3, (args.images,), generator=g))]
    ctx = SelectionContext(space, net, Batches(batches), None, torch.device("cpu"))
    methods = [("exact", {})] + [(f"hutchinson {n}", {"hessian": "hutchinson", "probes": n}) for n in args.probes]
    runs = {}
    for name, options in methods:
        t = time.perf_counter()
        selection = SELECTORS.get("influence")({"batches": 1, **options}).select(ctx)
        runs[name] = (time.perf_counter() - t, selection)

    def flat(d):
        return torch.cat([torch.tensor(v).flatten() for v in d.values()])

    exact = runs["exact"][1]
    h, s = flat(exact.details["hessian_diagonal"]), flat(exact.scores)
    best = {ct: torch.tensor(v)[:, 1:].argmax(1) for ct, v in exact.scores.items()}  # op 0 is `none`
    edges = sum(len(v) for v in best.values())
    print(f"DARTS C={args.C}, {args.cells} cells, {args.images} images of 8x8, {args.threads} thread(s)")
    print(f"{'method':<16} {'s':>6} {'HVPs':>5} {'|dH|/|H|':>9} {'score corr':>10} {'same op':>8}")
    for name, (seconds, sel) in runs.items():
        err = (flat(sel.details["hessian_diagonal"]) - h).norm() / h.norm()
        corr = torch.corrcoef(torch.stack([flat(sel.scores), s]))[0, 1].item()
        same = sum(int((torch.tensor(v)[:, 1:].argmax(1) == best[ct]).sum()) for ct, v in sel.scores.items())
        print(f"{name:<16} {seconds:>6.1f} {sel.details['hvp_per_batch']:>5} {err:>9.3f} {corr:>10.3f} "
              f"{same:>4}/{edges}")


if __name__ == "__main__":
    main()
