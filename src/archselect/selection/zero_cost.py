"""Zero-Cost-PT (Xiang et al., AAAI 2023): DARTS-PT's edge-by-edge removal, each candidate scored by a zero-cost
proxy of the supernet (scoring/proxies.py) instead of its validation accuracy, so no trained weights are needed.

For each edge (seeded random order, or edge order), each enabled op is removed in turn (its mixing weight set to 0)
and the proxy of the supernet measured; the edge keeps the op whose removal leaves the lowest proxy (the most
important op) and, with `progressive`, becomes one-hot before the next edge is scored. No fine-tuning. In spaces whose
nodes keep a fixed number of inputs (DARTS: 2) DARTS-PT's topology step follows, with the proxy in the place of
accuracy. With `progressive: false` every edge is scored against the full supernet and the space derives the cell.

Scores are proxy drops, proxy(supernet) − proxy(supernet without the op): higher = more important; `none` and disabled
ops score 0. The selector works through `supernet(x, weights)` alone, on a copy, so any supernet (trained, freshly
initialised, or brought by the user) can be scored.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .. import logs
from ..config import check_rules
from ..scoring.cost import Cost
from ..scoring.evaluator import bn_mode, check_bn_mode, rebatch, take_batches
from ..scoring.proxies import BACKWARD, DATA_FREE, ONE_IMAGE, PROXIES
from ..supernet import Supernet
from .base import Selection, Selector, as_lists, register
from .candidates import plan_key
from .perturbation import ORDERS, decide_op, decision_events
from .topology import select_inputs

log = logging.getLogger(__name__)


@dataclass
class ZeroCostOptions:
    proxy: str = "nwot"               # grad_norm | snip | synflow | jacob_cov | nwot | meco (paper's default: nwot)
    progressive: bool = True          # discretise each edge before scoring the next (paper) | false: all at once
    edge_order: str = "random"        # random (paper) | fixed: edge index order
    batches: int = 1                  # batches of the search-valid split; the proxy is their mean (paper: 1)
    batch_size: int | None = None     # images per batch (null: the validation loader's; paper: 64)
    bn: str = "train"                 # BN while scoring: train (batch statistics, running stats untouched) | eval
    topology: bool = True             # spaces with `inputs_per_node` (DARTS): prune node inputs after the ops

    def check(self, prefix: str) -> None:
        check_rules(self, prefix, [
            (self.proxy in PROXIES, "proxy", f"one of {', '.join(PROXIES)}"),
            (self.edge_order in ORDERS, "edge_order", f"one of {', '.join(ORDERS)}"),
            (self.batches >= 1, "batches", "at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size", "at least 1 (or null)"),
        ])
        check_bn_mode(self.bn, f"{prefix}.bn")


class ProxyOutcome(NamedTuple):
    """A proxy value in the shape DARTS-PT's decisions read (crit acc: the lowest value after removal wins)."""
    accuracy: float
    loss: float


class ProxyEvaluator:
    """`evaluate(settings) -> outcomes`: the proxy of `net` under each mixing-weight setting, the mean over the
    batches. A setting with the plans of one already scored (removing `none`) costs nothing."""

    def __init__(self, net: Supernet, batches: list, proxy: str, bn: str, cost: Cost):
        self.net, self.proxy, self.bn, self.cost = net, proxy, bn, cost
        self.batches = batches[:1] if proxy in DATA_FREE else batches
        self.memo: dict[tuple, float] = {}

    def value(self, weights: dict[str, torch.Tensor]) -> float:
        key = plan_key(self.net, weights)
        if key not in self.memo:
            self.memo[key] = self._compute(weights)
        return self.memo[key]

    def _compute(self, weights: dict[str, torch.Tensor]) -> float:
        fn = PROXIES[self.proxy]
        weights = {ct: w.detach() for ct, w in weights.items()}

        def forward(net, x):  # synflow runs a float64 copy: the weights follow the input's dtype
            return net(x, {ct: w.to(x.dtype) for ct, w in weights.items()})

        values = []
        with bn_mode(self.net, self.bn):
            for x, y in self.batches:
                values.append(fn(self.net, forward, x, y))
                self.cost.count(1 if self.proxy in ONE_IMAGE else y.numel(), backward=self.proxy in BACKWARD)
        return sum(values) / len(values)

    def __call__(self, settings: list[dict[str, torch.Tensor]]) -> list[ProxyOutcome]:
        return [ProxyOutcome(v, -v) for v in map(self.value, settings)]


@register("zero-cost")
class ZeroCost(Selector):
    Options = ZeroCostOptions

    def run(self, ctx) -> Selection:
        o = self.options
        keep = getattr(ctx.space, "inputs_per_node", None) if o.topology and o.progressive else None
        net = copy.deepcopy(ctx.supernet)
        loader = ctx.valid if o.batch_size is None else rebatch(ctx.valid, o.batch_size, seed=ctx.seed,
                                                                shuffle=False)
        cost = Cost()
        evaluate = ProxyEvaluator(net, take_batches(loader, o.batches), o.proxy, o.bn, cost)
        events = decision_events(net, o.edge_order, ctx.seed, keep)
        masks = {ct: net.mask(ct).clone() for ct in net.cell_types}
        records = []
        for event in logs.track(events, self.name, unit="decision"):
            for kind, ct, where in event:
                record = (decide_op(net, evaluate, ct, where, "acc", keep_none=not keep) if kind == "op"
                          else {"kind": "node", **select_inputs(net, evaluate, ct, where, keep, "acc")})
                if record is None:
                    continue
                if not o.progressive:
                    net.set_mask(ct, masks[ct])  # score every edge against the full supernet
                records.append(_renamed(record))
                log.info(f"  zero-cost: {_describe(record)}")
        return self._selection(ctx, net, records, masks, cost)

    def _selection(self, ctx, net: Supernet, records: list, masks: dict, cost: Cost) -> Selection:
        K = len(net.op_names)
        scores = {ct: torch.zeros(len(net.edges[ct]), K, dtype=torch.float64) for ct in net.cell_types}
        for r in records:
            if r["kind"] == "op":
                scores[r["cell_type"]][r["edge"]] = torch.tensor(r["scores"], dtype=torch.float64)
        if self.options.progressive:  # the decisions are the masks: one-hot on decided edges, none on pruned ones
            masks = {ct: net.mask(ct).cpu() for ct in net.cell_types}
            arch = ctx.space.derive({ct: m.float() for ct, m in masks.items()}, masks)
        else:
            arch = ctx.space.derive(scores, {ct: m.cpu() for ct, m in masks.items()})
        details = {"proxy": self.options.proxy, "progressive": self.options.progressive, "decisions": records}
        return Selection(self.name, arch, as_lists(scores), None, cost, details)


def _renamed(record: dict[str, Any]) -> dict[str, Any]:
    """A DARTS-PT decision record in proxy terms (its accuracy is the proxy; its loss, the negated proxy, dropped)."""
    if record["kind"] == "op":
        return {"kind": "op", "cell_type": record["cell_type"], "edge": record["edge"],
                "edge_name": record["edge_name"], "op": record["op"], "full_proxy": record["full_accuracy"],
                "proxy": record["accuracy"], "scores": record["scores"]}
    rounds = [{"proxy": r["accuracy"], "dropped": r["dropped"]} for r in record["rounds"]]
    return {**{k: v for k, v in record.items() if k != "rounds"}, "rounds": rounds}


def _describe(r: dict[str, Any]) -> str:
    if r["kind"] == "op":
        return f"{r['cell_type']} edge {r['edge_name']} -> {r['op']} (proxy {r['full_accuracy']:.4g})"
    return f"{r['cell_type']} node {r['node']} keeps edges {r['kept']}"
