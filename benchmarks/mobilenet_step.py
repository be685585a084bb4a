"""Step time and memory of one search step on the mobilenet supernet (ProxylessNAS' space), per search optimizer.

A step is what `archselect search` does per batch: the optimizer's `step(train, valid)` (an α step, if it trains α,
then a weight step), on synthetic data at the paper's ImageNet size by default: 224 px, width 1.0, the paper's
layers per stage (4, 4, 4, 4, 4, 1), 1000 classes, channels_last, on a small batch. Optimizers are looked up by name
in the registry, so any registered one can be given (`archselect.optimizers.names()`).

Each optimizer runs in a fresh child process, so its memory is its own: on CPU the peak resident memory
(ru_maxrss) and its rise over the steps (above the built supernet and optimizer); on CUDA
torch.cuda.max_memory_allocated over the steps and its rise above the memory allocated before them. The time is the
median (and minimum) over the timed steps after the warm-up steps. Prints one markdown table:

    .venv/bin/python benchmarks/mobilenet_step.py                           # darts, gdas, snas, rsps on the CPU
    .venv/bin/python benchmarks/mobilenet_step.py --optimizers darts,fixed-alpha --device cuda --batch 32
    .venv/bin/python benchmarks/mobilenet_step.py --quick                   # 32 px layout, width 0.25, 1 layer/stage
    .venv/bin/python benchmarks/mobilenet_step.py --optimizers proxylessnas,ofa   # the two MobileNet trainers

An optimizer that refuses the space (e.g. darts-minus, which needs skip_connect) gets a row with its one-line reason.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_OPTIMIZERS = "darts,gdas,snas,rsps"
PAPER = {"resolution": 224, "width_mult": 1.0, "stage_layers": None, "classes": 1000}
QUICK = {"resolution": 32, "width_mult": 0.25, "stage_layers": [1, 1, 1, 1, 1, 1], "classes": 10}


def _rss_mib() -> float:
    """The process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(name: str, size: dict, batch: int, steps: int, warmup: int, device: str, threads: int) -> dict:
    """One optimizer's step times and memory in this process (the parent runs it in a fresh child)."""
    import torch

    from archselect import optimizers
    from archselect.config import SearchConfig
    from archselect.environment import keep_freed_memory
    from archselect.spaces.mobilenet import MobileNetSpace

    keep_freed_memory()  # as the CLI does
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    dev = torch.device(device)
    side = size["resolution"]
    cls = optimizers.get(name)
    elastic = getattr(cls, "elastic_supernet", False)  # Once-for-All: weight-sharing layers, affine BN as OFA's
    space = MobileNetSpace(resolution=side, width_mult=size["width_mult"], stage_layers=size["stage_layers"],
                           num_classes=size["classes"], elastic=elastic, bn_affine=elastic)
    net = space.supernet().to(dev, memory_format=torch.channels_last)
    opt = cls(net, SearchConfig(optimizer=name, epochs=1), steps_per_epoch=warmup + steps)

    def data():
        x = torch.randn(batch, 3, side, side, device=dev).contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, size["classes"], (batch,), device=dev)

    def sync():
        if dev.type == "cuda":  # time the kernels, not their launch
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before = _rss_mib()
    times, cpu = [], []
    for i in range(warmup + steps):
        train, valid = data(), data()
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.step(train, valid, 0)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10)  # KiB on Linux
    params = sum(p.numel() for p in net.weight_parameters())
    return {"optimizer": name, "times": times, "cpu": cpu, "peak_mib": peak, "rise_mib": max(0.0, peak - before),
            "params": params}


def child(args) -> None:
    from archselect.errors import UserError

    try:
        result = measure(args.optimizer, size_of(args), args.batch, args.steps, args.warmup, args.device,
                         args.threads)
    except UserError as e:
        result = {"optimizer": args.optimizer, "error": str(e)}
    print(json.dumps(result))


def size_of(args) -> dict:
    size = dict(QUICK if args.quick else PAPER)
    if args.resolution is not None:
        size["resolution"] = args.resolution
    if args.width is not None:
        size["width_mult"] = args.width
    return size


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['optimizer']} | refused: {r['error']} | | | | |"
    return (f"| {r['optimizer']} | {statistics.median(r['times']):.3f} | {min(r['times']):.3f} | "
            f"{statistics.median(r['cpu']):.3f} | {r['peak_mib']:.0f} | {r['rise_mib']:.0f} |")


def table(results: list[dict], args) -> str:
    size = size_of(args)
    layers = size["stage_layers"] or [4, 4, 4, 4, 4, 1]
    params = next((r["params"] for r in results if "params" in r), 0)
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak resident memory (ru_maxrss)"
    lines = [f"mobilenet supernet on {args.device}: {size['resolution']} px, width {size['width_mult']}, "
             f"layers per stage {layers}, {size['classes']} classes, {params / 1e6:.2f} M weights; batch "
             f"{args.batch} (train) + {args.batch} (valid), {args.threads} threads; median of {args.steps} steps "
             f"after {args.warmup} warm-up",
             "",
             "| optimizer | median s/step | min s/step | CPU s/step | peak MiB | rise MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [row(r) for r in results]
    lines += ["", f"peak: {memory} of the process; rise: the peak above the memory held before the first step "
              "(supernet, optimizer); CPU s/step: the process's CPU time over all threads"]
    return "\n".join(lines)


def parent(args) -> None:
    from archselect import optimizers
    from archselect.errors import UserError

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    try:
        for n in names:
            optimizers.get(n)
    except UserError as e:
        sys.exit(str(e))
    common = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--threads", str(args.threads), *(["--quick"] if args.quick else []),
              *(["--resolution", str(args.resolution)] if args.resolution is not None else []),
              *(["--width", str(args.width)] if args.width is not None else [])]
    results = []
    for n in names:
        done = subprocess.run([sys.executable, __file__, "--child", "--optimizer", n, *common], capture_output=True,
                              text=True)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            results.append({"optimizer": n, "error": why})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{n}: " + (results[-1].get("error") or ", ".join(f"{t:.3f}" for t in results[-1]["times"]) + " s"),
              file=sys.stderr)
    print(table(results, args))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help="comma-separated registered optimizer names")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--batch", type=int, default=2, help="images per train batch (and per valid batch)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator and kernel warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the 32 px layout, width 0.25, one layer per stage")
    p.add_argument("--resolution", type=int, choices=(224, 32), default=None, help="override the stride layout")
    p.add_argument("--width", type=float, default=None, help="override width_mult")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--optimizer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
