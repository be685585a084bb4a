"""Zero-Cost-PT (Xiang et al., AAAI 2023): DARTS-PT's edge-by-edge removal, each candidate scored by a zero-cost
proxy of the supernet (scoring/proxies.py) instead of its validation accuracy, so no trained weights are needed.

A projection: for each edge (seeded random order, or edge order), each enabled op is removed in turn (its mixing
weight set to 0) and the proxy of the supernet measured; the edge keeps the op whose removal leaves the lowest proxy
(the most important op) and, with `progressive`, becomes one-hot before the next edge is scored. No fine-tuning. In
spaces whose nodes keep a fixed number of inputs (DARTS: 2) DARTS-PT's topology step follows, with the proxy in the
place of accuracy. With `progressive: false` every edge is scored against the full supernet and the space derives
the cell.

The official procedure repeats the projection `pool_size` times (each from the undecided supernet, with its own
seeded edge order and, with `draw: fresh`, its own batches), then builds each distinct candidate as a standalone,
freshly initialised network and keeps the one whose proxy, summed over `validate_rounds` batches, is highest
(scoring/standalone.py). `validate_rounds: 0` skips that and keeps the first projection's candidate.

Scores are proxy drops, proxy(supernet) − proxy(supernet without the op): higher = more important; `none` and disabled
ops score 0; with several projections, their mean (stderr: the standard error over projections). The selector works
through `supernet(x, weights)` alone, on a copy, so any supernet (trained, freshly initialised, or brought by the
user) can be scored. Progress is checkpointed after each projection and each validated candidate.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from .. import logs
from ..arch import Architecture
from ..config import check_rules
from ..data import derive_seed
from ..errors import UserError
from ..scoring.cost import Cost
from ..scoring.evaluator import DRAWS, bn_mode, check_bn_mode, rebatch, take_batches
from ..scoring.proxies import DATA_FREE, PROXIES, bind, charge
from ..scoring.standalone import fresh_network, summed_proxy
from ..supernet import Supernet
from .base import Selection, Selector, as_lists, register
from .candidates import plan_key
from .perturbation import ORDERS, decide_op, decision_events
from .progress import Progress, fingerprint
from .topology import select_inputs

log = logging.getLogger(__name__)

SOURCE_SALT, ORDER_SALT, VALIDATE_SALT, PROXY_SALT = 0x2C0, 0x2C1, 0x2C2, 0x2C3


@dataclass
class ZeroCostOptions:
    proxy: str = "nwot"               # one of PROXIES (official: nwot, which its code calls "jacob")
    progressive: bool = True          # discretise each edge before scoring the next (paper) | false: all at once
    edge_order: str = "random"        # random (paper) | fixed: edge index order
    pool_size: int = 1                # projections, each with its own seeded edge order (official: 10)
    validate_rounds: int = 0          # batches scoring each distinct candidate's fresh network; 0: keep projection 1's
    #                                   candidate (official: 100)
    batches: int = 1                  # batches per projection decision; the proxy is their mean (official: 1)
    batch_size: int | None = None     # images per batch, projection and validation (null: the validation loader's;
    #                                   official script: 256)
    draw: str = "fixed"               # fixed: every decision on the same first batches | fresh: each decision on its
    #                                   own seeded batches (official: a new random batch per edge)
    augment: bool = False             # the training augmentation on the scoring batches (official: yes)
    bn: str = "train"                 # BN while scoring: train (batch statistics, running stats untouched) | eval
    topology: bool = True             # spaces with `inputs_per_node` (DARTS): prune node inputs after the ops

    def check(self, prefix: str) -> None:
        check_rules(self, prefix, [
            (self.proxy in PROXIES, "proxy", f"one of {', '.join(PROXIES)}"),
            (self.edge_order in ORDERS, "edge_order", f"one of {', '.join(ORDERS)}"),
            (self.pool_size >= 1, "pool_size", "at least 1"),
            (self.validate_rounds >= 0, "validate_rounds", ">= 0 (0: no validation)"),
            (self.batches >= 1, "batches", "at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size", "at least 1 (or null)"),
            (self.draw in DRAWS, "draw", f"one of {', '.join(DRAWS)}"),
            (isinstance(self.augment, bool), "augment", "true or false"),
        ])
        check_bn_mode(self.bn, f"{prefix}.bn")


class ProxyOutcome(NamedTuple):
    """A proxy value in the shape DARTS-PT's decisions read (crit acc: the lowest value after removal wins)."""
    accuracy: float
    loss: float


class ProxyEvaluator:
    """`evaluate(settings) -> outcomes`: the proxy of `net` under each mixing-weight setting, the mean over the
    batches. A setting with the plans of one already scored (removing `none`; a projection repeating an earlier
    one's setting on the same batches) costs nothing."""

    def __init__(self, net: Supernet, batches: list, proxy: str, bn: str, cost: Cost, seed: int):
        self.net, self.proxy, self.bn, self.cost = net, proxy, bn, cost
        self.fn = bind(proxy, seed)
        self.batches = batches[:1] if proxy in DATA_FREE else batches
        self.memo: dict[tuple, float] = {}

    def value(self, weights: dict[str, torch.Tensor]) -> float:
        key = plan_key(self.net, weights)
        if key not in self.memo:
            self.memo[key] = self._compute(weights)
        return self.memo[key]

    def _compute(self, weights: dict[str, torch.Tensor]) -> float:
        weights = {ct: w.detach() for ct, w in weights.items()}

        def forward(net, x):  # synflow runs a float64 copy: the weights follow the input's dtype
            return net(x, {ct: w.to(x.dtype) for ct, w in weights.items()})

        values = []
        with bn_mode(self.net, self.bn):
            for x, y in self.batches:
                values.append(self.fn(self.net, forward, x, y))
                charge(self.cost, self.proxy, x)
        return sum(values) / len(values)

    def __call__(self, settings: list[dict[str, torch.Tensor]]) -> list[ProxyOutcome]:
        return [ProxyOutcome(v, -v) for v in map(self.value, settings)]


@register("zero-cost")
class ZeroCost(Selector):
    Options = ZeroCostOptions

    def run(self, ctx) -> Selection:
        o = self.options
        if o.validate_rounds and not hasattr(ctx.space, "network"):
            raise UserError("zero-cost: validate_rounds needs a space that builds standalone networks "
                            "(space.network); set select.options.zero-cost.validate_rounds=0")
        progress = Progress(ctx.workdir, self.name, fingerprint(ctx.supernet, o, ctx.seed) if ctx.workdir else "")
        state = progress.load() or {"projections": [], "validation": [], "cost": {}}
        if state["projections"]:
            log.info(f"  resuming {self.name} after {len(state['projections'])} projection(s) and "
                     f"{len(state['validation'])} validated candidate(s)")
        cost = Cost(**state["cost"])
        self._project_all(ctx, state, cost, progress)
        validation_cost = Cost(**state.get("validation_cost", {}))
        if o.validate_rounds:
            self._validate_all(ctx, state, cost, validation_cost, progress)
        progress.clear()
        return self._selection(ctx, state, cost, validation_cost)

    # -- projections ----------------------------------------------------------------------------------------------
    def _project_all(self, ctx, state: dict, cost: Cost, progress: Progress) -> None:
        """Projections len(state["projections"]) .. pool_size − 1, each appended to the state and checkpointed."""
        o = self.options
        keep = getattr(ctx.space, "inputs_per_node", None) if o.topology and o.progressive else None
        net = copy.deepcopy(ctx.supernet)
        masks = {ct: net.mask(ct).clone() for ct in net.cell_types}
        orders = [decision_events(net, o.edge_order, _order_seed(ctx.seed, p), keep) for p in range(o.pool_size)]
        evaluator_at = self._evaluators(ctx, net, cost)
        done = len(state["projections"])
        with logs.Progress(self.name, sum(map(len, orders)), "decision", done=sum(map(len, orders[:done]))) as bar:
            for p in range(done, o.pool_size):
                for ct in net.cell_types:  # each projection starts from the undecided supernet
                    net.set_mask(ct, masks[ct])
                records = []
                for i, event in enumerate(orders[p]):
                    for j, step in enumerate(event):
                        record = self._decide(net, step, evaluator_at(p, i, j), keep, masks)
                        if record is not None:
                            records.append(record)
                    bar.update()
                arch, scores = self._candidate(ctx, net, records, masks)
                state["projections"].append({"architecture": arch.to_dict(), "decisions": records,
                                             "scores": {ct: s.tolist() for ct, s in scores.items()}})
                if o.pool_size > 1:
                    log.info(f"  {self.name}: projection {p + 1}/{o.pool_size} -> {arch}")
                progress.save(len(state["projections"]), {**state, "cost": vars(cost)})

    def _evaluators(self, ctx, net: Supernet, cost: Cost) -> Callable[[int, int, int], ProxyEvaluator]:
        """evaluator_at(projection, decision, event): with `draw: fixed` one evaluator on the source's first batches
        (its memo shared by all projections); `fresh`: one per decision event, on its own seeded batches."""
        o = self.options
        source = ctx.valid
        if o.batch_size is not None or o.draw == "fresh" or o.augment:
            source = rebatch(ctx.valid, o.batch_size or ctx.valid.batch_size, seed=derive_seed(ctx.seed, SOURCE_SALT),
                             shuffle=o.draw == "fresh", augment=o.augment, cutout=_cutout(ctx, o.augment))
        seed = derive_seed(ctx.seed, PROXY_SALT)
        if o.draw == "fixed":
            shared = ProxyEvaluator(net, take_batches(source, o.batches), o.proxy, o.bn, cost, seed)
            return lambda p, i, j: shared
        return lambda p, i, j: ProxyEvaluator(net, take_batches(source, o.batches, derive_seed(ctx.seed, p, i, j)),
                                              o.proxy, o.bn, cost, seed)

    def _decide(self, net: Supernet, step: tuple, evaluate: ProxyEvaluator, keep: int | None,
                masks: dict) -> dict[str, Any] | None:
        """One decision (an edge's op, or a node's inputs) on `net`; its record in proxy terms (None: nothing to
        decide)."""
        kind, ct, where = step
        record = (decide_op(net, evaluate, ct, where, "acc", keep_none=not keep) if kind == "op"
                  else {"kind": "node", **select_inputs(net, evaluate, ct, where, keep, "acc")})
        if record is None:
            return None
        if not self.options.progressive:
            net.set_mask(ct, masks[ct])  # score every edge against the full supernet
        log.info(f"  zero-cost: {_describe(record)}")
        return _renamed(record)

    def _candidate(self, ctx, net: Supernet, records: list, masks: dict
                   ) -> tuple[Architecture, dict[str, torch.Tensor]]:
        """A projection's architecture and its proxy-drop scores (edges x ops, float64)."""
        K = len(net.op_names)
        scores = {ct: torch.zeros(len(net.edges[ct]), K, dtype=torch.float64) for ct in net.cell_types}
        for r in records:
            if r["kind"] == "op":
                scores[r["cell_type"]][r["edge"]] = torch.tensor(r["scores"], dtype=torch.float64)
        if self.options.progressive:  # the decisions are the masks: one-hot on decided edges, none on pruned ones
            decided = {ct: net.mask(ct).cpu() for ct in net.cell_types}
            return ctx.space.derive({ct: m.float() for ct, m in decided.items()}, decided), scores
        return ctx.space.derive(scores, {ct: m.cpu() for ct, m in masks.items()}), scores

    # -- validation -----------------------------------------------------------------------------------------------
    def _validate_all(self, ctx, state: dict, cost: Cost, validation_cost: Cost, progress: Progress) -> None:
        """Each distinct candidate's fresh standalone network scored by the proxy summed over `validate_rounds`
        batches (the same batches for every candidate), appended to state["validation"] and checkpointed."""
        o = self.options
        distinct = _distinct(state["projections"])
        source = rebatch(ctx.valid, o.batch_size or ctx.valid.batch_size, seed=derive_seed(ctx.seed, VALIDATE_SALT),
                         shuffle=True, drop_last=True, augment=o.augment, cutout=_cutout(ctx, o.augment))
        rounds = o.validate_rounds
        done = len(state["validation"])
        with logs.Progress(f"{self.name} validation", len(distinct) * rounds, "batch", done=done * rounds):
            for arch_dict, projections in distinct[done:]:
                spent, start = Cost(), time.perf_counter()
                arch = Architecture.from_dict(arch_dict)
                net = fresh_network(ctx.space, arch, ctx.seed, ctx.device)
                batches = (source.batch(*divmod(g, len(source))) for g in range(rounds))
                score = summed_proxy(net, o.proxy, batches, bn=o.bn, seed=derive_seed(ctx.seed, PROXY_SALT),
                                     cost=spent)
                cost.add(spent)
                validation_cost.add(spent)
                validation_cost.seconds += time.perf_counter() - start
                state["validation"].append({"architecture": arch_dict, "projections": projections, "score": score})
                log.info(f"  {self.name}: validation {len(state['validation'])}/{len(distinct)}: {arch} -> "
                         f"{o.proxy} {score:.6g} over {rounds} batches")
                progress.save(len(state["projections"]) + len(state["validation"]),
                              {**state, "cost": vars(cost), "validation_cost": vars(validation_cost)})

    # -- the result -----------------------------------------------------------------------------------------------
    def _selection(self, ctx, state: dict, cost: Cost, validation_cost: Cost) -> Selection:
        o = self.options
        projections, validation = state["projections"], state["validation"]
        best = _argmax([v["score"] for v in validation]) if validation else None
        winner = validation[best]["projections"][0] if validation else 0
        stacked = {ct: torch.tensor([p["scores"][ct] for p in projections], dtype=torch.float64)
                   for ct in projections[0]["scores"]}
        scores = {ct: s.mean(0) for ct, s in stacked.items()}
        stderr = ({ct: s.std(0) / math.sqrt(len(projections)) for ct, s in stacked.items()}
                  if len(projections) > 1 else None)
        arch = Architecture.from_dict(projections[winner]["architecture"])
        details = {
            "proxy": o.proxy, "progressive": o.progressive, "pool_size": o.pool_size,
            "validate_rounds": o.validate_rounds,
            "scores_are": "the mean over projections" if len(projections) > 1 else "the projection's",
            "decisions": projections[winner]["decisions"],  # the winning projection's
            "projections": [{"architecture": str(Architecture.from_dict(p["architecture"])),
                             "decisions": p["decisions"]} for p in projections],
            "validation": [{"architecture": str(Architecture.from_dict(v["architecture"])),
                            "projections": v["projections"], "score": v["score"]} for v in validation],
            "winner": {"architecture": str(arch), "projection": winner, "validation": best},
            "validation_cost": vars(validation_cost),
        }
        return Selection(self.name, arch, as_lists(scores), as_lists(stderr) if stderr else None, cost, details)


def _order_seed(seed: int, projection: int) -> int:
    """The seed of projection p's edge order: the run seed for the first (as with one projection), derived after."""
    return seed if projection == 0 else derive_seed(seed, ORDER_SALT, projection)


def _cutout(ctx, augment: bool) -> int:
    return getattr(ctx.train, "cutout", 0) if augment else 0


def _distinct(projections: list[dict]) -> list[tuple[dict, list[int]]]:
    """The distinct candidate architectures, in order of first appearance, with the projections that gave each."""
    found: dict[str, tuple[dict, list[int]]] = {}
    for p, proj in enumerate(projections):
        key = str(Architecture.from_dict(proj["architecture"]))
        found.setdefault(key, (proj["architecture"], []))[1].append(p)
    return list(found.values())


def _argmax(values: list[float]) -> int:
    """The index of the highest value, NaN ignored (the official np.nanargmax), the first on ties; 0 if all NaN."""
    best = None
    for i, v in enumerate(values):
        if not math.isnan(v) and (best is None or v > values[best]):
            best = i
    return 0 if best is None else best


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
