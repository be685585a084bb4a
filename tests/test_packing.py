"""Packed weight settings (MaskedEvaluator.packed): settings of several evaluators, each on its own batches, share one
pass and get exactly what each evaluator gives alone, in both BN modes and memory layouts, on NAS-Bench-201 and
DARTS; Shapley rows scored `pack` at a time equal the rows scored one by one, in fewer passes, resumed or split over
workers."""
import json
import math

import pytest
import torch

from archselect.cli import main
from archselect.errors import UserError
from archselect.executors import SequentialExecutor
from archselect.scoring.evaluator import MaskedEvaluator, NaiveEvaluator, rebatch
from archselect.scoring.shapley import ShapleyOptions, unit_starts
from archselect.scoring.workers import Workers
from archselect.selection.shapley import ShapleySelector
from archselect.spaces.darts import DARTSSpace
from archselect.spaces.nb201 import NB201Space

from conftest import tiny_idx_dir
from test_evaluator import random_alphas, settings, tiny_context
from test_stacking import LAYOUTS, nb201_in_layout, removals, small_memory

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def evaluators(ctx, count, batch=32, channels_last=False, **kw):
    """`count` evaluators, each on its own batch of `batch` validation images."""
    source = rebatch(ctx.valid, batch, seed=0, shuffle=True, drop_last=True)
    out = []
    for i in range(count):
        x, y = source.batch(0, i)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(MaskedEvaluator(ctx.supernet, [(x, y)], **kw))
    return out


def check_packed_equals_alone(net, evs, bn, most=3):
    ws = removals(net) + settings(net)
    requests = [(evs[i % len(evs)], w) for i, w in enumerate(ws)]
    expected = [NaiveEvaluator(net, ev.batches, bn=bn)(w) for ev, w in requests]
    assert MaskedEvaluator.packed(requests, most) == expected
    new = sum(ev.cost.forward for ev in evs)
    assert new == len({(id(ev), ev._memo_key(ev.plans(w))) for ev, w in requests})  # one per new setting
    passes = sum(ev.cost.passes for ev in evs)
    assert math.ceil(new / most) <= passes < new
    assert MaskedEvaluator.packed(requests, most) == expected  # the second time from the memos, no pass
    assert sum(ev.cost.forward for ev in evs) == new


@pytest.mark.parametrize("bn", ["train", "eval"])
@pytest.mark.parametrize("channels_last, cache_mb", LAYOUTS)
def test_packed_settings_equal_each_alone_nb201(bn, channels_last, cache_mb):
    ctx, net = nb201_in_layout(channels_last)
    evs = evaluators(ctx, 3, channels_last=channels_last, bn=bn, cache_mb=cache_mb)
    check_packed_equals_alone(net, evs, bn)


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_packed_settings_equal_each_alone_darts(bn):
    ctx = tiny_context(DARTSSpace(C=4, N=3, in_channels=1, num_classes=4, edge_norm=True))
    random_alphas(ctx.supernet)
    check_packed_equals_alone(ctx.supernet, evaluators(ctx, 2, bn=bn), bn, most=2)


def test_only_batches_of_one_shape_share_a_pass():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    big, small = evaluators(ctx, 1, batch=32)[0], evaluators(ctx, 1, batch=16)[0]
    ws = removals(ctx.supernet)[:3]
    MaskedEvaluator.packed([(ev, w) for w in ws for ev in (big, small)], 4)
    assert big.cost.passes == small.cost.passes == 1  # each evaluator's three settings stacked on its own batch


def test_a_pack_out_of_memory_is_split(monkeypatch):
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    evs = evaluators(ctx, 4)
    ws = removals(ctx.supernet)[1:5]  # four settings that need a pass each
    requests = list(zip(evs, ws))
    expected = [NaiveEvaluator(ctx.supernet, ev.batches)(w) for ev, w in requests]
    small_memory(monkeypatch)
    assert MaskedEvaluator.packed(requests, 4) == expected
    assert [ev.cost.forward for ev in evs] == [1] * 4 and sum(ev.cost.passes for ev in evs) == 2


@pytest.mark.parametrize("options", [{}, {"estimator": "antithetic"}, {"estimator": "kernel", "coalitions": 6},
                                     {"threshold": 0.0, "batches": 2}])
def test_shapley_scores_do_not_depend_on_packing(options):
    results = []
    for pack in (1, 3):
        ctx = tiny_context(NB201Space(C=4, N=1, in_channels=1, num_classes=4))
        torch.manual_seed(0)
        ctx.supernet = ctx.space.supernet()
        random_alphas(ctx.supernet)
        results.append(ShapleySelector({"permutations": 6, "batch_size": 16, **options, "pack": pack}).select(ctx))
    one, packed = results
    assert one.scores == packed.scores and one.stderr == packed.stderr and one.details == packed.details
    assert one.cost.forward == packed.cost.forward and one.cost.images == packed.cost.images
    assert one.cost.passes == one.cost.forward and packed.cost.passes < one.cost.forward / 2


def test_packed_rows_split_over_workers_equal_one_process():
    opts = {"permutations": 20, "batch_size": 16, "pack": 2}
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    one = ShapleySelector(opts).select(ctx)
    ctx.workers = Workers(2, SequentialExecutor())
    split = ShapleySelector(opts).select(ctx)
    assert split.scores == one.scores and split.cost.forward == one.cost.forward
    assert split.cost.passes == one.cost.passes  # a unit's passes depend on its rows alone


def test_units_are_near_equal_and_cover_every_row():
    assert unit_starts(ShapleyOptions(permutations=5, pack=1)) == [0, 1, 2, 3, 4]
    assert unit_starts(ShapleyOptions(permutations=40, pack=4)) == [0, 13, 26]  # 40 rows in 3 units of <= 16
    assert unit_starts(ShapleyOptions(permutations=8, pack=4, estimator="antithetic")) == [0]  # 4 pairs
    assert ShapleyOptions().rows_per_pass == 8 and unit_starts(ShapleyOptions()) == [0, 26, 53]  # 256 // 32
    assert ShapleyOptions(batch_size=1024).rows_per_pass == ShapleyOptions(batch_size=None).rows_per_pass == 1


def test_a_pack_below_one_is_refused_in_one_line():
    with pytest.raises(UserError, match="pack.*at least 1 \\(or null\\)"):
        ShapleySelector({"pack": 0})


def test_select_command_packs_by_default_and_on_request(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    run = tmp_path / "search"
    assert main(["search", "--out", str(run), f"data.data_dir={data}", "space.C=4", "space.N=1", "data.batch_size=32",
                 "search.epochs=1", "threads=1", "--selector", "magnitude"]) == 0
    costs = {}
    for pack in ("null", "1", "2"):
        assert main(["select", str(run), "--selector", "shapley", "select.options.shapley.permutations=8",
                     "select.options.shapley.batch_size=16", f"select.options.shapley.pack={pack}"]) == 0
        record = json.loads((run / "selections" / "shapley.json").read_text())
        costs[pack] = record["cost"]
        scores = costs.setdefault("scores", record["scores"])
        assert record["scores"] == scores
    assert costs["null"]["forward"] == costs["1"]["forward"] == costs["1"]["passes"]
    assert costs["null"]["passes"] < costs["2"]["passes"] < costs["1"]["passes"]  # null: 256 // 16 rows to a pass


def test_the_naive_evaluator_never_packs():
    ctx = tiny_context()
    random_alphas(ctx.supernet)
    evs = [NaiveEvaluator(ctx.supernet, ev.batches) for ev in evaluators(ctx, 2)]
    ws = removals(ctx.supernet)[1:3]
    MaskedEvaluator.packed([(ev, w) for w in ws for ev in evs] * 2, 4)  # each asked twice: recomputed
    assert [ev.cost.passes for ev in evs] == [ev.cost.forward for ev in evs] == [4, 4]
    assert evs[0].known(ws) is None
