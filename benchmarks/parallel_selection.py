"""Selection split over workers: `archselect select --selector shapley|perturbation` with 1 worker against 2.

One small NAS-Bench-201 search (configs/demo.yaml: C=8, N=1, 16x16 Fashion-MNIST; searched for `--epochs` epochs,
enough for timing) is made once; every variant then runs `archselect select` on its own copy of it, as a command,
with the selectors' default options (Shapley: 10 permutations of one 256-image batch; DARTS-PT: 6 decisions, each
scoring every op's removal on 4 batches of 256, with 16 fine-tuning steps between decisions). Variants, interleaved
round by round so that the machine's drift hits them alike (the median over the rounds is printed):

  1 proc x 1 thread     `archselect select RUN --selector S threads=1` (the baseline)
  1 proc x 2 threads    the same process given 2 intra-op threads
  2 Ray workers         `--workers 2 --executor ray threads=1` on a local Ray instance (each worker 1 thread)
  2 torchrun ranks      `torchrun --nproc_per_node=2 -m archselect select RUN --selector S threads=1`

"seconds" is the selector's own time (recorded in RUN/selections/S.json: the Ray instance and its worker processes are
started before it, the torchrun processes before any selection); "command" is the whole command's wall time, startup
included. The script checks that the split variants chose and scored exactly what the baseline did.

    .venv/bin/python benchmarks/parallel_selection.py                     # 3 rounds, both selectors
    .venv/bin/python benchmarks/parallel_selection.py --rounds 1 --selectors shapley --run runs/demo
    .venv/bin/python benchmarks/parallel_selection.py --selectors shapley select.options.shapley.permutations=40
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHSELECT = [sys.executable, "-m", "archselect"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--master_addr=127.0.0.1"]
VARIANTS = {  # name -> (launcher, extra arguments)
    "1 proc x 1 thread": (ARCHSELECT, ["threads=1"]),
    "1 proc x 2 threads": (ARCHSELECT, ["threads=2"]),
    "2 Ray workers": (ARCHSELECT, ["--workers", "2", "--executor", "ray", "threads=1"]),
    "2 torchrun ranks": (TORCHRUN, ["threads=1"]),
}
EXACT = ("1 proc x 1 thread", "2 Ray workers", "2 torchrun ranks")  # same arithmetic: identical selections


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(out: Path, epochs: int) -> Path:
    run = out / "search"
    cmd = [*ARCHSELECT, "search", "--config", str(ROOT / "configs" / "demo.yaml"), "--out", str(run),
           f"search.epochs={epochs}", "threads=1", "device=cpu"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run


def select(run: Path, work: Path, variant: str, selector: str, overrides: list[str]) -> tuple[float, float, dict]:
    """(selector seconds, command seconds, the selection without its seconds) of one variant on a copy of `run`."""
    copy = work / f"{variant.replace(' ', '-')}-{selector}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("selections", "comparison.json"))
    launcher, extra = VARIANTS[variant]
    port = [f"--master_port={free_port()}", "-m", "archselect"] if launcher is TORCHRUN else []
    cmd = [*launcher, *port, "select", str(copy), "--selector", selector, "device=cpu", *extra, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    command = time.perf_counter() - start
    selection = json.loads((copy / "selections" / f"{selector}.json").read_text())
    seconds = selection["cost"].pop("seconds")
    return seconds, command, selection


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a finished search to select from (default: a configs/demo.yaml search, made now)")
    p.add_argument("--epochs", type=int, default=2, help="search epochs of the run made here")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--selectors", default="shapley,perturbation")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="select overrides, e.g. select.options.shapley.permutations=30")
    args = p.parse_args()
    variants = args.variants.split(",")
    selectors = args.selectors.split(",")
    with tempfile.TemporaryDirectory(prefix="parallel-selection-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else make_run(work, args.epochs)
        times = {(v, s): [] for v in variants for s in selectors}
        reference: dict[str, dict] = {}
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                for s in selectors:
                    seconds, command, selection = select(run, work, v, s, args.overrides)
                    times[v, s].append((seconds, command))
                    if v in EXACT:
                        if reference.setdefault(s, selection) != selection:
                            raise SystemExit(f"{v} {s}: the selection differs from one process's")
    print(f"archselect select on a configs/demo.yaml NB201 supernet (C=8, N=1, 16x16), selector options: "
          f"{' '.join(args.overrides) or 'defaults'}; {os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.rounds} rounds")
    print(f"| {'selector':<12} | {'variant':<20} | seconds | speed-up | command |")
    print(f"|{'-' * 14}|{'-' * 22}|---------|----------|---------|")
    for s in selectors:
        base = statistics.median(t for t, _ in times[variants[0], s])
        for v in variants:
            seconds = statistics.median(t for t, _ in times[v, s])
            command = statistics.median(c for _, c in times[v, s])
            print(f"| {s:<12} | {v:<20} | {seconds:7.1f} | {base / seconds:7.2f}x | {command:6.1f}s |")


if __name__ == "__main__":
    main()
