"""Batch-norm recalibration of one sub-network, as Once-for-All evaluates its sub-networks (`set_running_statistics`):
the running statistics a weight-sharing supernet keeps are a blend over every sub-network it trained, so before a
sub-network is measured its BN statistics are recomputed on a few training batches, run through that sub-network.

The statistics become the plain average over those batches of each batch's mean and variance (torch's cumulative
moving average, momentum None). OFA averages the biased batch variance, torch the unbiased one: a factor
n/(n-1), n = images x pixels per batch (1.0002 for 200 images at 7x7), which is left as torch computes it.
Run it on a copy: it overwrites the statistics of every tracking BN of the model.

Under torchrun (`across_ranks`) every rank passes its slice of the same batches, and each BN normalises by, and
records, the statistics of the whole batch (its per-channel sums all-reduced: spaces.ops.global_statistics): every
rank ends with the same statistics, those one process computes from the whole batches (to float rounding).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn as nn

from .. import distributed
from ..spaces.ops import global_statistics
from .cost import Cost


@torch.no_grad()
def recalibrate_bn(model: nn.Module, weights: dict[str, torch.Tensor], batches: Sequence[tuple[torch.Tensor, ...]],
                   cost: Cost | None = None, across_ranks: bool = False) -> None:
    """Reset every tracking BN of `model` and re-estimate its running statistics from `batches` run with mixing
    `weights`; `model` is left in eval mode. `across_ranks`: `batches` are this rank's slices of global batches, and
    every rank makes the same call (a collective; outside torchrun the flag changes nothing)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    synced = global_statistics(distributed.all_reduce_sum) if across_ranks and distributed.active() else nullcontext()
    try:
        with synced:
            for batch in batches:
                model(batch[0], weights)
                if cost is not None:
                    cost.count(batch[0].shape[0])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
