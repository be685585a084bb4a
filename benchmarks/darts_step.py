"""Speed and memory of one first-order DARTS search step on the DARTS-space supernet.

A step is what `archselect search` does per batch (optimizers/darts.py): an Adam step on α from a validation batch
(gradient of α only), then an SGD step on the weights from a training batch. Synthetic data, CPU.

Each measurement runs in a fresh child process, so its peak resident memory (ru_maxrss) is that variant's alone;
the variants are interleaved round by round, so the machine's drift hits them alike. Prints one table:

    .venv/bin/python benchmarks/darts_step.py                      # C=16, 8 cells, batch 64, 32x32 (the paper's)
    .venv/bin/python benchmarks/darts_step.py --rounds 1 --steps 2 --variants K1-cl,K4-cl --threads 1

On cores shared with other busy processes, use --threads 1: two OpenMP threads then wait on each other and a step
can take 10x longer; the CPU-time column stays meaningful either way.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name: (partial-channel K, channels_last, space.recompute)
    "K1-nchw": (1, False, True),
    "K1-cl": (1, True, True),         # the defaults (search.channels_last, space.recompute)
    "K1-cl-store": (1, True, False),  # space.recompute=false: faster, more memory
    "K4-nchw": (4, False, True),
    "K4-cl": (4, True, True),
}


def child(args) -> None:
    import torch

    from archselect.config import SearchConfig
    from archselect.optimizers.darts import DartsFirstOrder
    from archselect.spaces.darts import DARTSSpace

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    K, cl, recompute = VARIANTS[args.variant]
    space = DARTSSpace(C=args.C, N=args.layers, num_classes=10, partial_channels=K, recompute=recompute)
    net = space.supernet()
    fmt = torch.channels_last if cl else torch.contiguous_format
    device = torch.device(args.device)
    net = net.to(device, memory_format=fmt)
    opt = DartsFirstOrder(net, SearchConfig(epochs=1), steps_per_epoch=1)

    def batch():
        x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
        return x, torch.randint(0, 10, (args.batch,), device=device)

    def sync():
        if device.type == "cuda":  # time the kernels, not their launch
            torch.cuda.synchronize(device)

    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        train, valid = batch(), batch()
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.step(train, valid, 0)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    peak_gb = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"  # the GPU's, not the host's
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB on Linux
    print(json.dumps({"variant": args.variant, "times": times, "cpu": cpu, "peak_gb": peak_gb}))


def parent(args) -> None:
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {n: 0.0 for n in names}
    common = ["--device", args.device, "--C", str(args.C), "--layers", str(args.layers), "--batch", str(args.batch), "--size", str(args.size),
              "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for r in range(args.rounds):
        for n in names:
            out = subprocess.run([sys.executable, __file__, "--child", "--variant", n, *common], check=True,
                                 capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            times[n] += result["times"]
            cpu[n] += result["cpu"]
            peaks[n] = max(peaks[n], result["peak_gb"])
            print(f"round {r + 1}/{args.rounds} {n}: " + ", ".join(f"{t:.2f}" for t in result["times"])
                  + f" s/step, peak {result['peak_gb']:.2f} GB", file=sys.stderr)
    print(f"\nDARTS supernet on {args.device}, C={args.C}, {args.layers} cells, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.threads} threads; first-order step (alpha + weights); {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':12} {'K':>2} {'channels_last':>13} {'recompute':>9} {'median s/step':>14} {'min':>7} "
          f"{'CPU s/step':>10} {'peak GB':>12}")
    for n in names:
        K, cl, recompute = VARIANTS[n]
        t = times[n]
        print(f"{n:12} {K:>2} {str(cl):>13} {str(recompute):>9} {statistics.median(t):>14.2f} {min(t):>7.2f} "
              f"{statistics.median(cpu[n]):>10.2f} {peaks[n]:>12.2f}")
    print("CPU s/step: the process's CPU time (all threads), a load-robust estimate of the idle-machine wall time "
          "at 1 thread; peak GB: resident memory on CPU, CUDA memory allocated on a GPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the variants")
    p.add_argument("--steps", type=int, default=2, help="timed steps per child process")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator and kernel warm-up)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
