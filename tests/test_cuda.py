"""The CUDA path (marker `cuda`; skipped without a GPU; benchmarks/gpu_check.sh runs them first): the pipeline on a
GPU, stacked settings under cuDNN, the evaluator's levers against the naive evaluator, and CPU/GPU agreement.

On a GPU cuDNN may pick other kernels for other batch shapes, so stacked and single passes agree to rounding, not
bit for bit as on the CPU (tests/test_stacking.py): the checks here use tolerances and compare decisions."""
from __future__ import annotations

import os

import pytest
import torch

import archselect as asel
from archselect.scoring.evaluator import MaskedEvaluator, NaiveEvaluator
from archselect.spaces.darts import DARTSSpace
from archselect.spaces.nb201 import NB201Space

from conftest import tiny_idx_dir
from test_evaluator import random_alphas, settings, tiny_context
from test_stacking import removals

# ARCHSELECT_TEST_DEVICE=cpu runs the same code on the CPU (benchmarks/gpu_check.sh --device cpu: a dry run)
DEVICE = os.environ.get("ARCHSELECT_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]


@pytest.fixture
def cudnn_deterministic():
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # no-op on the CPU
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def on_cuda(ctx):
    dev = torch.device(DEVICE)
    ctx.supernet = ctx.supernet.to(dev, memory_format=torch.channels_last)
    ctx.device = dev
    batches = [(x.to(dev), y.to(dev)) for x, y in (ctx.valid.batch(0, k) for k in range(len(ctx.valid)))]
    return ctx, batches


@pytest.mark.parametrize("space", [NB201Space(C=4, N=2, in_channels=1, num_classes=4),
                                   DARTSSpace(C=4, N=3, in_channels=1, num_classes=4)])
@pytest.mark.parametrize("bn", ["train", "eval"])
def test_stacked_and_cached_evaluations_agree_with_naive_under_cudnn(space, bn, cudnn_deterministic):
    ctx, batches = on_cuda(tiny_context(space))
    batches = batches[:1]
    random_alphas(ctx.supernet)
    ws = (removals(ctx.supernet) + settings(ctx.supernet))[::3]  # every kind of setting, a third of them
    naive = NaiveEvaluator(ctx.supernet, batches, bn=bn)
    for stack in (1, 4):
        ev = MaskedEvaluator(ctx.supernet, batches, bn=bn, stack=stack)
        for got, want in zip(ev.many(ws), (naive(w) for w in ws)):
            assert abs(got.loss_sum - want.loss_sum) <= 1e-3 * max(1.0, abs(want.loss_sum))
            assert abs(got.correct - want.correct) <= 1  # a rounding flip of one borderline image at most


def test_search_select_report_on_cuda(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    overrides = {"space.C": 4, "space.N": 1, "data.batch_size": 32, "search.epochs": 1, "data.data_dir": str(data),
                 "select.options.shapley.permutations": 2}
    run = asel.search(out=tmp_path / "run", overrides=overrides, device=DEVICE)
    sels = asel.select(run, ["perturbation", "shapley", "influence"], device=DEVICE)
    assert set(sels) == {"perturbation", "shapley", "influence"}
    assert run.read_manifest()["device"].startswith(DEVICE)
    assert asel.report(run, engine="matplotlib")[-1].is_file()


def test_cpu_and_cuda_decide_alike(tmp_path):
    data = tiny_idx_dir(tmp_path / "data")
    overrides = {"space.C": 4, "space.N": 1, "data.batch_size": 32, "search.epochs": 1, "data.data_dir": str(data),
                 "deterministic": True}
    runs = [asel.search(out=tmp_path / f"run-{i}", overrides=overrides, device=d, selectors=["magnitude"])
            for i, d in enumerate(("cpu", DEVICE))]
    a, b = (run.supernet().alphas["cell"].detach() for run in runs)
    assert torch.allclose(a, b, atol=1e-3)  # one epoch of the same batches: α moved alike


def test_bf16_autocast_search_step_on_cuda():
    from archselect.config import SearchConfig
    from archselect.optimizers.darts import DartsFirstOrder

    net = DARTSSpace(C=4, N=3, num_classes=10).supernet().to(DEVICE, memory_format=torch.channels_last)
    opt = DartsFirstOrder(net, SearchConfig(epochs=1, bf16=True), steps_per_epoch=1)
    x = torch.randn(8, 3, 16, 16, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=DEVICE)
    before = net.alphas["normal"].detach().clone()
    opt.step((x, y), (x, y), 0)
    assert torch.isfinite(net.alphas["normal"]).all() and not torch.equal(before, net.alphas["normal"])
