"""The candidate weight settings of one DARTS-PT decision (each op of an edge removed in turn, or each input edge of a
node), evaluated on the supernet's current state: here, or split over the selector's workers.

The outcome of a setting depends on its plans alone (which ops run, with which weights), and an evaluator computes a
repeated plan once: removing `none` leaves the full supernet's plans, so one process pays for it once. Settings with
equal plans therefore go to the same worker, whose fresh evaluator memoises the repeat just as one process's would:
outcomes and the count of forward passes are the same however the decision is split.

With `draw: fresh` each candidate is scored on its own seeded pass (EvaluatorOptions.candidate_batches, keyed by
decision, event and candidate): no two share batches, so each is a group of its own, shipped with its batches.
"""
from __future__ import annotations

from typing import Any

import torch

from ..supernet import Supernet
from ..scoring.cost import Cost
from ..scoring.evaluator import EvaluatorOptions, Outcome, plans_key
from ..scoring.workers import Workers

Weights = dict[str, torch.Tensor]


def plan_key(supernet: Supernet, weights: Weights) -> tuple:
    """Hashable form of the plans `weights` give on `supernet` (equal keys: equal outcomes)."""
    return plans_key(supernet.plans(weights), supernet.cell_types)


def evaluate_groups(supernet: Supernet, setup: dict[str, Any], items: list[tuple[list[Weights], list | None]]
                    ) -> list[tuple[list[Outcome], Cost]]:
    """Each item (settings with equal plans, their own batches or None: the setup's) evaluated; per item its
    outcomes and passes. Items on the setup's batches share one evaluator; the others get one each."""
    out: list = [None] * len(items)
    shared = [i for i, (_, batches) in enumerate(items) if batches is None]
    for i, result in zip(shared, _on_batches(supernet, setup, setup["batches"], [items[i][0] for i in shared])):
        out[i] = result
    for i, (group, batches) in enumerate(items):
        if batches is not None:
            out[i] = _on_batches(supernet, setup, batches, [group])[0]
    return out


def _on_batches(supernet: Supernet, setup: dict[str, Any], batches: list, groups: list[list[Weights]]
                ) -> list[tuple[list[Outcome], Cost]]:
    """Each group of settings (equal plans within a group) on one evaluator over `batches`."""
    if not groups:
        return []
    cost = Cost()
    ev = setup["options"].make_evaluator(supernet, batches, cost)
    # the first setting of each group is new to this evaluator and costs the same passes as any other: compute them
    # together (stacked where the evaluator can) and share their passes out equally
    firsts = ev.many([group[0] for group in groups])
    counted = ("forward", "images", "passes")
    first_cost = Cost(**{k: getattr(cost, k) // len(groups) for k in counted})
    out = []
    for group, first in zip(groups, firsts):
        before = {k: getattr(cost, k) for k in counted}
        outcomes = [first, *(ev(w) for w in group[1:])]
        out.append((outcomes, Cost(**{k: getattr(first_cost, k) + getattr(cost, k) - before[k] for k in counted})))
    return out


class Candidates:
    """`candidates(settings) -> outcomes` for `supernet` as it is at the call (masks, fine-tuned weights), on
    `batches`; the passes are added to `cost`."""

    def __init__(self, workers: Workers, space: Any, supernet: Supernet, batches: list, options: EvaluatorOptions,
                 cost: Cost, source: Any = None, limit: int | None = None):
        self.workers, self.space, self.supernet, self.cost = workers, space, supernet, cost
        self.setup = {"batches": batches, "options": options}
        self.source, self.limit = source, limit  # fresh: each candidate's pass is drawn from `source`
        self.key: tuple[int, ...] = ()

    def at(self, *key: int) -> "Candidates":
        """The same evaluation, its candidates keyed by `key` (decision, event) for fresh batches."""
        self.key = key
        return self

    def __call__(self, settings: list[Weights]) -> list[Outcome]:
        fresh = self.setup["options"].draw == "fresh"
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(settings):
            groups.setdefault((i,) if fresh else plan_key(self.supernet, w), []).append(i)
        members = list(groups.values())
        items = [([settings[i] for i in idx],
                  self.setup["options"].candidate_batches(self.source, self.limit, *self.key, idx[0]) if fresh
                  else None) for idx in members]
        results = self.workers.map(evaluate_groups, items, self.supernet, self.space, self.setup)
        outcomes: list[Outcome] = [None] * len(settings)  # type: ignore[list-item]
        for idx, (group_outcomes, spent) in zip(members, results):
            self.cost.add(spent)
            for i, outcome in zip(idx, group_outcomes):
                outcomes[i] = outcome
        return outcomes
