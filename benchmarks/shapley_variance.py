"""Shapley estimators at equal forward passes: how noisy is each, and does it choose what a long run chooses?

One small NAS-Bench-201 search (configs/demo.yaml: C=8, N=1, 16x16 Fashion-MNIST, `--epochs` epochs), or `--run RUN`.
On its supernet the `shapley` selector runs, in process and single-threaded:

  reference    `permutation` with `--reference` permutations (seed REFERENCE_SEED, 1000)
  permutation  `--permutations` M permutations (the paper's estimator), `--repeats` R seeds
  antithetic   M permutations as M/2 pairs (π, reverse π), R seeds
  kernel       M batches of KernelSHAP coalitions, the count per batch set so that its forward passes match the
               permutation rows' median, R seeds
  stratified   M permutations drawn together, each player's removal time stratified over them, R seeds
  small batch  for each S of `--split` (default 8): `permutation` with S x M permutations of batch/S images, one to a
               pass (`pack: 1`): the same images, R seeds
  packed       the same rows, S of them advanced together, their coalitions sharing one forward pass of
               `--batch-size` images (`pack: S`): the same scores, bit for bit, in fewer passes
               (`--estimators-packed`: antithetic and stratified rows the same way)

Columns (medians over the R seeds, except the spread): evaluations (weight settings evaluated on a batch);
forward passes (the network's calls, `Cost.passes`: the budget that is compared); stderr = the estimator's own standard error, averaged over players; spread = the standard deviation of
φ̂ over the R seeds, averaged over players (the variance each estimator really has); var/pass gain = (spread² x
passes) of permutation over the same of the row, i.e. how many times fewer passes it needs for one variance;
var/image gain = the same with images instead of passes (the compute, at unequal batch sizes);
rmse = the root mean square distance of φ̂ from the reference's φ (variance and bias, the reference's own noise
included); agree = the fraction of edges whose chosen op (argmax of the scores) is the reference's; seconds (noisy: shared CPU).
Truncation (`threshold`, 0.5) applies to permutation, antithetic and the reference; kernel estimates the untruncated
Shapley value, so its agreement with a truncated reference also measures truncation's bias.

    .venv/bin/python benchmarks/shapley_variance.py                           # a 3-epoch demo search, made now
    .venv/bin/python benchmarks/shapley_variance.py --run runs/demo --repeats 8 --reference 400

Then, where the variance of a permutation row comes from (`--sources P`, 0 to skip): over the reference's rows, the
share of Σ (Δ − φ̂)² from the removal that truncated its permutation, from players a truncation cut off (Δ = 0), and
from the rest; and, P permutations each rescored on 6 fresh batches, the share of a row's variance that is the
batch's (the mean over permutations of the variance over batches, over the total).
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
from archselect.scoring import shapley
from archselect.scoring.cost import Cost
from archselect.selection.shapley import ShapleySelector
from archselect.selection.stage import build_context

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SEED = 1000


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
    return scores, stderr, s.cost.passes, s.cost.seconds, s.cost.images, s.cost.forward


def summarise(name: str, runs: list, reference: torch.Tensor, ref_scores: torch.Tensor, enabled: torch.Tensor
              ) -> dict:
    scores = torch.stack([r[0] for r in runs])
    choice = scores.masked_fill(~enabled, -float("inf")).argmax(-1)
    return {"estimator": name, "passes": statistics.median(r[2] for r in runs),
            "evaluations": statistics.median(r[5] for r in runs),
            "images": statistics.median(r[4] for r in runs),
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
    p.add_argument("--split", type=int, nargs="+", default=[8], help="small-batch rows for each S: S x the "
                   "permutations of batch-size / S images, alone and packed S to a pass")
    p.add_argument("--estimators-packed", action="store_true", help="antithetic and stratified rows at each split too")
    p.add_argument("--sources", type=int, default=12, help="permutations rescored on 6 batches (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(args.run or make_run(Path(tmp), args.epochs))
        ctx = build_context(run.read_config(), run, torch.device("cpu"))
    ctx.workdir = None  # no progress files
    enabled = torch.cat([ctx.supernet.mask(ct).cpu() for ct in ctx.supernet.cell_types])
    common = {"batch_size": args.batch_size}
    ref, ref_scores, ref_passes = reference_estimate(ctx, args)
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
    for split in args.split:
        small = {"permutations": m * split, "batch_size": args.batch_size // split, "pack": 1}
        rows[f"permutation, {small['permutations']} x batch {small['batch_size']}"] = [select(ctx, s, small)
                                                                                       for s in seeds]
        rows[f"the same, packed {split} per pass"] = [select(ctx, s, {**small, "pack": split}) for s in seeds]
        for estimator in ("antithetic", "stratified") if args.estimators_packed else ():
            rows[f"{estimator}, the same packed"] = [select(ctx, s, {**small, "pack": split, "estimator": estimator})
                                                     for s in seeds]
    table = [summarise(name, r, reference, ref_scores, enabled) for name, r in rows.items()]
    base = table[0]["spread"] ** 2
    print(f"shapley on {run.path} ({int(enabled.sum())} players), batch {args.batch_size}; reference: "
          f"{args.reference} permutations, {ref_passes} passes; {args.repeats} seeds, M = {m} "
          f"(kernel: {coalitions} coalitions per batch)\n")
    print("| estimator | evaluations | forward passes | images | mean stderr | spread over seeds | var/pass gain "
          "| var/image gain | rmse vs reference | agree with reference | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        gain = {unit: base * table[0][unit] / (t["spread"] ** 2 * t[unit]) for unit in ("passes", "images")}
        print(f"| {t['estimator']} | {t['evaluations']:.0f} | {t['passes']:.0f} | {t['images']:.0f} "
              f"| {t['stderr']:.4f} | {t['spread']:.4f} "
              f"| {gain['passes']:.2f}x | {gain['images']:.2f}x | {t['rmse']:.4f} | {t['agree']:.2f} "
              f"| {t['seconds']:.1f} |")
    if args.sources:
        print_sources(ctx, args, ref)


def reference_estimate(ctx, args) -> tuple[shapley.ShapleyEstimate, torch.Tensor, int]:
    """The reference as the `shapley` selector computes it (`permutation`, --reference permutations, REFERENCE_SEED):
    its rows (for the sources table), its scores over all (edge, op) entries and its forward passes."""
    opts = shapley.ShapleyOptions(permutations=args.reference, batch_size=args.batch_size)
    cost = Cost()
    est = shapley.estimate(ctx.supernet, shapley.batch_source(ctx.valid, opts, REFERENCE_SEED), opts, REFERENCE_SEED,
                           cost)
    return est, torch.cat(list(est.matrices(ctx.supernet, est.values()).values())), cost.forward


def print_sources(ctx, args, est: shapley.ShapleyEstimate) -> None:
    """Where a permutation row's variance comes from (see the module's docstring), `est` the reference's rows."""
    rows, n = est.contributions.shape
    position = torch.argsort(torch.tensor([shapley.permutation(n, REFERENCE_SEED, j) for j in range(rows)]), 1)
    removed = torch.tensor(est.removed)[:, None]
    squares = (est.contributions - est.contributions.mean(0)) ** 2
    shares = {"the truncating removal": squares[position == removed - 1].sum(),
              "players cut off by truncation": squares[position >= removed].sum()}
    shares["the other removals"] = squares.sum() - sum(shares.values())
    batch = batch_share(ctx, args, args.sources)
    print(f"\nwhere a row's variance comes from ({rows} rows of the reference; batch: {args.sources} permutations "
          f"x 6 batches)\n\n| source | share |\n|---|---|")
    for name, value in shares.items():
        print(f"| {name} | {float(value / squares.sum()):.2f} |")
    print(f"| the batch (within a permutation) | {batch:.2f} |")


def batch_share(ctx, args, permutations: int, batches: int = 6) -> float:
    """Mean over `permutations` of the variance of a row over `batches` batches, over the variance of all rows."""
    opts = shapley.ShapleyOptions(batch_size=args.batch_size)
    source = shapley.batch_source(ctx.valid, opts, 5)
    game = {"players": shapley.players_of(ctx.supernet), "base": ctx.supernet.mixing_weights(detach=True),
            "opts": opts, "seed": 5, "batches": None}
    rows = [[unit[0].contributions for unit, _ in shapley.score_permutations(
        ctx.supernet, game, [[(j, shapley.fresh_batches(source, j * batches + b, 1))] for b in range(batches)])]
        for j in range(permutations)]
    out = torch.tensor(rows, dtype=torch.float64)
    return float(out.var(1).mean() / out.reshape(-1, out.shape[-1]).var(0).mean())


if __name__ == "__main__":
    main()
