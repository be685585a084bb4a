"""What path binarisation saves on the mobilenet supernet: seconds per weight step and per α step, and the megabytes
autograd saves for backward in each (the activation memory a step holds), for ProxylessNAS' two-path and full modes
against first-order DARTS on the same supernet (every op of every layer mixed by softmax(α)).

Synthetic data; warm-up steps untimed; medians over the repeats (each ProxylessNAS step draws its own paths, so its
numbers vary with the blocks drawn), variants interleaved round by round so the machine's drift hits them alike. Saved
bytes are counted with autograd's saved-tensor hooks (each stored tensor once).

    .venv/bin/python benchmarks/proxylessnas_step.py                           # 224 px, width 1.0, batch 8
    .venv/bin/python benchmarks/proxylessnas_step.py --resolution 32 --width 0.25 --batch 64 --size 32
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from archselect.config import SearchConfig
from archselect.optimizers import OPTIMIZERS
from archselect.spaces import get

VARIANTS = {"proxylessnas two": ("proxylessnas", {"paths": "two"}),
            "proxylessnas full": ("proxylessnas", {"paths": "full"}),
            "darts (all ops)": ("darts", {})}


class SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the block (each storage counted once)."""

    def __init__(self):
        self.bytes, self.seen = 0, set()

    def pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += key[1]
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def build(name: str, options: dict, args) -> tuple:
    torch.manual_seed(0)
    space = get("mobilenet", resolution=args.resolution, width_mult=args.width, num_classes=args.classes)
    sn = space.supernet().train().to(memory_format=torch.channels_last)
    options = {**options, "update_every": 1, "skip_first_alpha_epoch": False} if name == "proxylessnas" else {}
    cfg = SearchConfig(optimizer=name, epochs=1, options=options, a_beta1=0.0)
    return sn, OPTIMIZERS.get(name)(sn, cfg, steps_per_epoch=1)


def timed(fn) -> tuple[float, int]:
    with SavedBytes() as saved:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, saved.bytes


def darts_weight_step(opt, batch):
    x, y = batch
    opt.w_optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(opt.supernet(x, opt.train_weights()), y).backward()
    opt.w_optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=224, choices=(224, 32))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.size, args.size, generator=g).contiguous(
        memory_format=torch.channels_last), torch.randint(0, args.classes, (args.batch,), generator=g))
    built = {v: build(*VARIANTS[v], args) for v in VARIANTS}
    steps = {v: ((lambda o=o: darts_weight_step(o, batch)) if VARIANTS[v][0] == "darts" else
                 (lambda o=o: o.weight_step(batch)), lambda o=o: o.arch_step(batch, 0)) for v, (_, o) in built.items()}
    for w, a in steps.values():  # warm-up
        w(), a()
    times = {v: ([], []) for v in steps}
    saved = {v: ([], []) for v in steps}  # each step draws its own paths: the median over the repeats
    for _ in range(args.repeats):
        for v, fns in steps.items():
            for i, fn in enumerate(fns):
                seconds, nbytes = timed(fn)
                times[v][i].append(seconds)
                saved[v][i].append(nbytes)
    print(f"mobilenet {args.resolution} px layout, width {args.width}, {args.size} px images, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<20}{'weight step s':>15}{'α step s':>12}{'weight saved MB':>18}{'α saved MB':>13}")
    for v in steps:
        w, a = (statistics.median(t) for t in times[v])
        sw, sa = (statistics.median(b) / 2 ** 20 for b in saved[v])
        print(f"{v:<20}{w:>15.3f}{a:>12.3f}{sw:>18.1f}{sa:>13.1f}")


if __name__ == "__main__":
    main()
