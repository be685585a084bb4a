"""Shapley estimators at equal forward passes: how noisy is each, and does it choose what a long run chooses?

One small NAS-Bench-201 search (configs/demo.yaml: C=8, N=1, 16x16 Fashion-MNIST, `--epochs` epochs), or `--run RUN`.
On its supernet the `shapley` selector runs, in process and single-threaded:

  reference    `permutation` with `--reference` permutations (seed 1000)
  permutation  `--permutations` M permutations (the paper's estimator), `--repeats` R seeds
  antithetic   M permutations as M/2 pairs (π, reverse π), R seeds
  kernel       M batches of KernelSHAP coalitions, the count per batch set so that its forward passes match the
               permutation rows' median, R seeds
  stratified   M permutations drawn together, each player's removal time stratified over them, R seeds

Columns (medians over the R seeds, except the spread): forward passes (the Cost of the selection, the budget that
is compared); stderr = the estimator's own standard error, averaged over players; spread = the standard deviation of
φ̂ over the R seeds, averaged over players (the variance each estimator really has); var/pass gain = (spread² x
passes) of permutation over the same of the row, i.e. how many times fewer passes it needs for one variance;
rmse = the root mean square distance of φ̂ from the reference's φ (variance and bias, the reference's own noise
included); agree = the fraction of edges whose chosen op (argmax of the scores) is the reference's; seconds (noisy: shared CPU).
Truncation (`threshold`, 0.5) applies to permutation, antithetic and the reference; kernel estimates the untruncated
Shapley value, so its agreement with a truncated reference also measures truncation's bias.

    .venv/bin/python benchmarks/shapley_variance.py                           # a 3-epoch demo search, made now
    .venv/bin/python benchmarks/shapley_variance.py --run runs/demo --repeats 8 --reference 400
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from archselect.runs import open_run
from archselect.selection.shapley import ShapleySelector
from archselect.selection.stage import build_context

ROOT = Path(__file__).resolve().parents[1]


def make_run(out: Path, epochs: int) -> Path:
    run = out / "search"
    cmd = [sys.executable, "-m", "archselect", "search", "--config", str(ROOT / "configs" / "demo.yaml"), "--out",
           str(run), f"search.epochs={epochs}", "threads=1", "device=cpu", "--selector", "magnitude"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run


def select(ctx, seed: int, options: dict):
    ctx.seed = seed
    s = ShapleySelector(options).select(ctx)
    scores = torch.cat([torch.tensor(m, dtype=torch.float64) for m in s.scores.values()])
    stderr = torch.cat([torch.tensor(m, dtype=torch.float64) for m in s.stderr.values()])
    return scores, stderr, s.cost.forward, s.cost.seconds


def summarise(name: str, runs: list, reference: torch.Tensor, ref_scores: torch.Tensor, enabled: torch.Tensor
              ) -> dict:
    scores = torch.stack([r[0] for r in runs])
    choice = scores.masked_fill(~enabled, -float("inf")).argmax(-1)
    return {"estimator": name, "passes": statistics.median(r[2] for r in runs),
            "rmse": float(((scores - ref_scores)[:, enabled] ** 2).mean().sqrt()),
            "stderr": statistics.median(float(r[1][enabled].mean()) for r in runs),
            "spread": float(scores.std(0)[enabled].mean()),
            "agree": float((choice == reference).double().mean()),
            "seconds": statistics.median(r[3] for r in runs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a finished search (default: a configs/demo.yaml search, made now)")
    p.add_argument("--epochs", type=int, default=3, help="search epochs of the run made here")
    p.add_argument("--permutations", type=int, default=10, help="the budget M (the selector's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference", type=int, default=200, help="permutations of the reference run")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(args.run or make_run(Path(tmp), args.epochs))
        ctx = build_context(run.read_config(), run, torch.device("cpu"))
    ctx.workdir = None  # no progress files
    enabled = torch.cat([ctx.supernet.mask(ct).cpu() for ct in ctx.supernet.cell_types])
    common = {"batch_size": args.batch_size}
    ref_scores, _, ref_passes, _ = select(ctx, 1000, {**common, "permutations": args.reference})
    reference = ref_scores.masked_fill(~enabled, -float("inf")).argmax(-1)
    seeds = range(args.repeats)
    m = args.permutations
    rows = {"permutation": [select(ctx, s, {**common, "permutations": m}) for s in seeds]}
    rows["antithetic"] = [select(ctx, s, {**common, "permutations": m, "estimator": "antithetic"}) for s in seeds]
    per_batch = statistics.median(r[2] for r in rows["permutation"]) / m - 2  # v(N) and v(∅) on each batch
    coalitions = max(2, 2 * round(per_batch / 2))
    rows["kernel"] = [select(ctx, s, {**common, "permutations": m, "estimator": "kernel", "coalitions": coalitions})
                      for s in seeds]
    rows["stratified"] = [select(ctx, s, {**common, "permutations": m, "estimator": "stratified"}) for s in seeds]
    table = [summarise(name, r, reference, ref_scores, enabled) for name, r in rows.items()]
    base = table[0]["spread"] ** 2 * table[0]["passes"]
    print(f"shapley on {run.path} ({int(enabled.sum())} players), batch {args.batch_size}; reference: "
          f"{args.reference} permutations, {ref_passes} passes; {args.repeats} seeds, M = {m} "
          f"(kernel: {coalitions} coalitions per batch)\n")
    print("| estimator | forward passes | mean stderr | spread over seeds | var/pass gain | rmse vs reference "
          "| agree with reference | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        gain = base / (t["spread"] ** 2 * t["passes"])
        print(f"| {t['estimator']} | {t['passes']:.0f} | {t['stderr']:.4f} | {t['spread']:.4f} | {gain:.2f}x "
              f"| {t['rmse']:.4f} | {t['agree']:.2f} | {t['seconds']:.1f} |")


if __name__ == "__main__":
    main()
