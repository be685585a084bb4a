"""The random-paths selector (RSPS' derivation): distinct seeded paths, the best one by accuracy, from the CLI too."""
import itertools
import json

import torch

from archselect.cli import main
from archselect.scoring.evaluator import NaiveEvaluator, take_batches
from archselect.selection.random_paths import RandomPaths

from test_cli import tiny_args
from test_evaluator import random_alphas, tiny_context
from conftest import tiny_idx_dir

SKIP, CONV = 1, 3  # NAS-Bench-201 op indices of skip_connect and nor_conv_3x3


def two_op_context():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:, [SKIP, CONV]] = True  # 2^6 = 64 paths, all connected
    ctx.supernet.set_mask("cell", mask)
    return ctx


def test_enumerating_every_path_finds_the_brute_force_best():
    ctx = two_op_context()
    options = {"samples": 64, "valid_batches": 1}
    sel = RandomPaths(options).select(ctx)
    assert sel.details["paths"] == 64 and sel.cost.forward == 64
    naive = NaiveEvaluator(ctx.supernet, take_batches(ctx.valid, 1))
    outcomes = {}
    for ops in itertools.product([SKIP, CONV], repeat=6):
        w = torch.zeros(6, 5)
        w[range(6), list(ops)] = 1.0
        o = naive({"cell": w})
        outcomes[ops] = (o.accuracy, -o.loss)
    best = max(outcomes.values())
    chosen = tuple(_ops_of(sel, ctx))
    assert outcomes[chosen] == best
    assert sel.details["best_accuracy"] == best[0]
    assert "tied_edges" not in sel.details  # the architecture is the best path, not an argmax of the scores
    counts = sel.details["counts"]["cell"]
    assert all(row[SKIP] == row[CONV] == 32 and sum(row) == 64 for row in counts)  # each op in half of the paths


def _ops_of(sel, ctx):
    cell = sel.architecture.cell("cell")
    return [ctx.space.op_names.index(cell.op_on(src, dst)) for src, dst in ctx.supernet.edges["cell"]]


def test_paths_are_seeded_distinct_and_leave_the_global_generator_alone():
    ctx = two_op_context()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = RandomPaths({"samples": 10, "valid_batches": 1}).select(ctx)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = RandomPaths({"samples": 10, "valid_batches": 1}).select(ctx)
    assert a.scores == b.scores and str(a.architecture) == str(b.architecture)
    assert sum(sum(row) for row in a.details["counts"]["cell"]) == 10 * 6
    ctx.seed = 1
    assert RandomPaths({"samples": 10, "valid_batches": 1}).select(ctx).details["counts"] != a.details["counts"]


def test_cli_selects_random_paths_on_an_rsps_search(tmp_path, capsys):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "run"
    args = [*tiny_args(data, epochs=1), "search.optimizer=rsps", "select.options.random-paths.samples=5"]
    assert main(["search", "--out", str(run), *args, "--selector", "random-paths"]) == 0
    saved = json.loads((run / "selections" / "random-paths.json").read_text())
    assert saved["details"]["paths"] == 5
    assert f"architecture (random-paths): {saved['architecture']['text']}" in capsys.readouterr().out
    assert main(["select", str(run), "select.options.random-paths.samples=0", "--selector", "random-paths"]) == 2
