"""Speed of the NAS-Bench-201 supernet on CPU: seconds per first-order DARTS search step and evaluation images/s.

A step is what `archselect search` does per batch (optimizers/darts.py): an Adam step on α from a validation batch, then
an SGD step on the weights from a training batch. Evaluation is a forward pass in eval mode without gradients.
Variants, interleaved round by round in one process so that the machine's drift hits them alike (synthetic data,
warm-up steps not timed, medians over the repeats):

  reference   a straightforward supernet: per edge a Python loop over all ops, Σ softmax(α)_k·op_k(x) with every op
              computed (`none` as x·0), contiguous (NCHW) tensors, loss.backward() for both steps
  nchw        archselect's supernet and DARTS step, contiguous tensors (search.channels_last=false)
  cl          the same with channels_last tensors (the default)
  cl+bf16     channels_last and bf16 autocast (search.bf16=true; changes numerics)

Like the CLI, the script makes glibc malloc keep freed memory (--default-malloc: don't). The machine's load average
is printed before and after: on a shared machine, compare variants within one table, not across tables.

    .venv/bin/python benchmarks/step_time.py                      # the full grid (with C=16 N=5 32x32 batch 64)
    .venv/bin/python benchmarks/step_time.py --quick              # a small grid, about a minute on an idle machine
    .venv/bin/python benchmarks/step_time.py --grid 16,5,32,64 --variants reference,cl
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from archselect.config import SearchConfig
from archselect.environment import keep_freed_memory
from archselect.optimizers.darts import DartsFirstOrder
from archselect.spaces.nb201 import EDGES, NB201Cell, NB201Space

FULL_GRID = [(16, 5, 32, 64), (16, 1, 32, 64), (8, 1, 32, 64), (16, 1, 16, 64), (16, 2, 32, 32)]  # C, N, size, B
QUICK_GRID = [(8, 1, 16, 32), (16, 1, 32, 64)]
VARIANTS = ("reference", "nchw", "cl", "cl+bf16")
CLASSES = 10
DEVICE = torch.device("cpu")  # --device


class PlainSupernet(nn.Module):
    """The textbook supernet over the same modules: every op of every edge computed and weighted."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.alpha = net.alphas["cell"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.alpha, dim=-1)
        body = self.net.body
        x = body.stem(x)
        for layer in body.layers:
            x = self.cell(layer, x, w) if isinstance(layer, NB201Cell) else layer(x)
        return body.head(x)

    def cell(self, cell: NB201Cell, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for dst in range(1, 4):
            total = 0
            for e, (src, d) in enumerate(EDGES):
                if d != dst:
                    continue
                for k, name in enumerate(self.net.op_names):
                    y = nodes[src] * 0.0 if name == "none" else cell.edges[e].ops[name](nodes[src])
                    total = total + w[e, k] * y
            nodes.append(total)
        return nodes[-1]


def reference_step(plain: PlainSupernet, cfg: SearchConfig) -> Callable:
    a_opt = torch.optim.Adam([plain.alpha], lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                             weight_decay=cfg.a_weight_decay)
    w_params = plain.net.weight_parameters()
    w_opt = torch.optim.SGD(w_params, lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)

    def step(train, valid):
        plain.train()
        a_opt.zero_grad()
        F.cross_entropy(plain(valid[0]), valid[1]).backward()
        a_opt.step()
        w_opt.zero_grad()
        F.cross_entropy(plain(train[0]), train[1]).backward()
        nn.utils.clip_grad_norm_(w_params, cfg.grad_clip)
        w_opt.step()

    return step


@dataclass
class Variant:
    name: str
    step: Callable           # (train, valid) -> None
    model: nn.Module         # what evaluation runs, in eval mode
    bf16: bool
    fmt: torch.memory_format

    def evaluate(self, x: torch.Tensor) -> float:
        """Seconds for one forward pass in eval mode, no gradients."""
        self.model.eval()
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
            t = timed(lambda: self.model(x))
        self.model.train()
        return t


def build(name: str, C: int, N: int) -> Variant:
    torch.manual_seed(0)
    net = NB201Space(C=C, N=N, num_classes=CLASSES).supernet()
    cl = name in ("cl", "cl+bf16")
    fmt = torch.channels_last if cl else torch.contiguous_format
    net = net.to(DEVICE, memory_format=fmt)
    cfg = SearchConfig(epochs=1, channels_last=cl, bf16=name == "cl+bf16")
    if name == "reference":
        plain = PlainSupernet(net)
        return Variant(name, reference_step(plain, cfg), plain, False, fmt)
    opt = DartsFirstOrder(net, cfg, steps_per_epoch=1)
    return Variant(name, lambda train, valid: opt.step(train, valid, 0), net, cfg.bf16, fmt)


def batch(B: int, size: int, fmt: torch.memory_format, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, size, size, generator=g).contiguous(memory_format=fmt)
    return x.to(DEVICE), torch.randint(0, CLASSES, (B,), generator=g).to(DEVICE)


CLOCK = time.perf_counter  # or time.process_time (--clock cpu)


def timed(f: Callable) -> float:
    sync()
    start = CLOCK()
    f()
    sync()
    return CLOCK() - start


def sync() -> None:
    if DEVICE.type == "cuda":  # kernels run asynchronously: time them, not their launch
        torch.cuda.synchronize(DEVICE)


def measure(C: int, N: int, size: int, B: int, names, args) -> dict[str, tuple[float, float, float]]:
    """{variant: (median s/step, fastest s/step, median eval images/s)}, the variants interleaved."""
    variants = [build(n, C, N) for n in names]
    data = {v.name: (batch(B, size, v.fmt, 0), batch(B, size, v.fmt, 1), batch(args.eval_batch, size, v.fmt, 2)[0])
            for v in variants}
    steps: dict[str, list[float]] = {v.name: [] for v in variants}
    evals: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.warmup + args.repeats):
        for v in variants:
            train, valid, _ = data[v.name]
            t = timed(lambda: v.step(train, valid))
            if r >= args.warmup:
                steps[v.name].append(t)
    for r in range(args.warmup + args.eval_repeats):
        for v in variants:
            t = v.evaluate(data[v.name][2])
            if r >= args.warmup:
                evals[v.name].append(args.eval_batch / t)
    return {n: (statistics.median(steps[n]), min(steps[n]), statistics.median(evals[n])) for n in steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"the small grid {QUICK_GRID} instead of {FULL_GRID}")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (and evaluations) per variant first")
    p.add_argument("--eval-batch", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluation batches per variant (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--grid", nargs="+", type=config, metavar="C,N,SIZE,BATCH",
                   help="measure these configurations instead, e.g. --grid 16,5,32,64 8,1,16,32")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed seconds (default); cpu: this process's CPU seconds, a proxy that other "
                        "processes on the machine disturb less (best with --threads 1)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc as it is (the CLI makes it keep freed memory: fewer page faults)")
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    global CLOCK, DEVICE
    DEVICE = torch.device(args.device)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    tuned = not args.default_malloc and keep_freed_memory()
    grid = args.grid or (QUICK_GRID if args.quick else FULL_GRID)
    print(f"NAS-Bench-201 supernet on {DEVICE}: first-order DARTS step (α + weights) and eval (batch "
          f"{args.eval_batch}); {args.threads} threads, {args.clock} clock, torch {torch.__version__}, malloc keeps freed memory: {tuned}; "
          f"medians of {args.repeats} steps / {args.eval_repeats} eval batches after {args.warmup} warm-up; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| C | N | size | batch | variant | s/step (median) | speed-up | s/step (min) | eval img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for C, N, size, B in grid:
        results = measure(C, N, size, B, names, args)
        base = results.get("reference", (None,))[0]
        for n, (step, fastest, ips) in results.items():
            speedup = f"{base / step:.2f}x" if base else "-"
            print(f"| {C} | {N} | {size} | {B} | {n} | {step:.3f} | {speedup} | {fastest:.3f} | {ips:.0f} |",
                  flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (this machine's cores: {os.cpu_count()})")


def config(text: str) -> tuple[int, int, int, int]:
    try:
        C, N, size, B = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,N,SIZE,BATCH (four integers)") from None
    return C, N, size, B


if __name__ == "__main__":
    main()
