"""Several weight settings of one supernet in one pass: their copies of a batch stacked along the batch dimension.

Perturbation and Shapley settings differ from the supernet's weights only by ops set to 0, so a group of settings in
which every op has one weight wherever it is present runs as one supernet whose edges compute the union of the
settings' ops: each op's output is computed once for the whole stacked batch and zeroed in the slices of the settings
that lack it, and batch norms in training mode take their statistics per slice (`spaces.ops.stacked`). Adding an
exact zero leaves a sum unchanged, so each slice is what that setting alone computes, bit for bit where the kernels
give every image the same arithmetic whatever the batch size (the CPU kernels do: tests/test_stacking.py; cuDNN may
pick another algorithm for a larger batch, so on CUDA the last bits can differ).

This pays where one batch leaves the device idle (a GPU at NAS-Bench-201 sizes); on CPU a forward of 256 images is
already compute-bound and larger batches run slower per image (benchmarks/selection_cost.py --probe-batching), so
the selectors stack nothing by default (`stack: 1`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..supernet import Plan

Plans = dict[str, Plan]
Absent = dict[tuple[int, int], list[bool]]  # (edge, op) -> per setting, whether that setting lacks the op


def union(group: Sequence[Plans]) -> tuple[Plans, dict[str, Absent]] | None:
    """The plans computing every op of the group's settings, and per cell type which settings lack which op; None
    when some op has different weights in two settings (they cannot share its output)."""
    plans, absent = {}, {}
    for ct in group[0]:
        edges, lacking = [], {}
        for e in range(len(group[0][ct])):
            weights: dict[int, float] = {}
            for setting in group:
                for k, w in setting[ct][e]:
                    if weights.setdefault(k, w) != w:
                        return None
            edges.append(sorted(weights.items()))
            for k in weights:
                flags = [all(op != k for op, _ in setting[ct][e]) for setting in group]
                if any(flags):
                    lacking[e, k] = flags
        plans[ct], absent[ct] = edges, lacking
    return plans, absent


def groups(items: Sequence[Plans], most: int) -> list[list[int]]:
    """Indices of `items` in runs of at most `most` consecutive settings that `union` can join."""
    out: list[list[int]] = []
    for i, plans in enumerate(items):
        last = out[-1] if out else None
        if last is not None and len(last) < most and union([items[j] for j in last] + [plans]) is not None:
            last.append(i)
        else:
            out.append([i])
    return out


def concat(states: Sequence):
    """Layer states (tensors, or tuples of them) concatenated along the batch, layout kept."""
    if isinstance(states[0], torch.Tensor):
        return torch.cat(list(states))
    return type(states[0])(concat(parts) for parts in zip(*states))


class StackedFan:
    """A `spaces.mixed.Fan` over stacked settings: the supernet's own fan on the union plans, then each op's output
    zeroed in the batch slices of the settings that lack it."""

    def __init__(self, inner, term_order, absent: Absent, batch: int):
        self.inner, self.term_order, self.absent, self.batch = inner, term_order, absent, batch

    def __call__(self, src: int, x: torch.Tensor, relu_x, outgoing) -> list[list[tuple]]:
        out = []
        for (e, edge, plan), terms in zip(outgoing, self.inner(src, x, relu_x, outgoing)):
            out.append([(w, self._zeroed(y, self.absent[e, k]) if (e, k) in self.absent else y)
                        for (k, _), (w, y) in zip(self.term_order(edge, plan), terms)])
        return out

    def _zeroed(self, y: torch.Tensor, lacking: list[bool]) -> torch.Tensor:
        """A copy of y (same layout: a channels-last tensor must stay one, or later kernels change their
        arithmetic) with the flagged settings' slices set to 0."""
        out = y.clone()
        for s, lacks in enumerate(lacking):
            if lacks:
                out[s * self.batch:(s + 1) * self.batch].zero_()
        return out
