"""DARTS-PT (Wang et al., ICLR 2021): perturbation-based selection on a copy of the supernet.

Edges are decided one at a time (one edge per cell type per decision, in a seeded random order, as the official code
draws one, though not the same sequence: its draws come from numpy's global RNG; or in edge order). For the edge, each enabled op is removed in turn (its mixing weight set to 0, no renormalisation) and the
supernet's search-validation accuracy measured; the edge keeps the op whose removal hurts most (crit acc: lowest
accuracy; crit loss: highest loss) and becomes one-hot (its mask restricted to that op). Between decisions the copy
is fine-tuned on the search-train split: SGD on the weights and, when the search trained α by first-order DARTS, Adam
steps on α as well (a fixed-α / "blank" supernet keeps α fixed). In spaces whose nodes keep a fixed number of inputs
(`space.inputs_per_node`, DARTS: 2) the topology step follows (topology.py), as in the official DARTS-space code.

Scores are accuracy drops (full accuracy − accuracy without the op; crit loss: loss increase), so higher = more
important; an op that is `none` or disabled scores exactly 0. Progress is checkpointed after every decision.

Scoring batches (EvaluatorOptions): `batch_size`, `draw` and `augment`. The defaults score every candidate on the
same unaugmented batches (a paired comparison); the official code scores each on a new random pass over the
validation split in batches of 64, with the training augmentation (draw: fresh, augment: true, batch_size: 64).
"""
from __future__ import annotations

import logging
import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import logs
from ..arch import edge_name
from ..config import SearchConfig, check_rules
from ..data import derive_seed
from ..environment import rng_state, set_rng_state
from ..errors import UserError
from ..scoring.cost import Cost
from ..scoring.evaluator import EvaluatorOptions, rebatch, take_batches
from ..supernet import Supernet
from .base import Selection, Selector, as_lists, register
from .candidates import Candidates
from .progress import Progress, fingerprint
from .topology import nodes_to_prune, select_inputs

log = logging.getLogger(__name__)

CRITERIA = ("acc", "loss")
ORDERS = ("random", "fixed")
ALPHA_MODES = ("auto", "yes", "no")
SCHEDULES = ("even", "official")


@dataclass
class PerturbationOptions(EvaluatorOptions):
    crit: str = "acc"                 # acc: keep the op whose removal leaves the lowest accuracy | loss (paper: acc)
    edge_order: str = "random"        # random (paper) | fixed: edge index order
    tune_epochs: float = 0.5          # fine-tuning between decisions, in epochs of search-train (paper: proj_intv 5)
    tune_steps: int | None = None     # fine-tuning steps between decisions; overrides tune_epochs when set
    lr: float = 0.0025                # fine-tuning SGD learning rate (paper: search lr / 10 = 0.0025)
    lr_min: float | None = None       # cosine to this over all fine-tuning (paper: none on NB201, 0.001 on DARTS)
    momentum: float = 0.9             # paper: 0.9
    weight_decay: float = 3e-4        # paper: 3e-4
    grad_clip: float = 5.0            # paper: 5
    update_alpha: str = "auto"        # auto: DARTS α steps iff the search trained α by DARTS (paper) | yes | no
    valid_batches: int | None = 4     # scoring batches of the search-valid split (paper: all of it, null)
    topology: bool = True             # spaces with `inputs_per_node` (DARTS): prune node inputs after the ops (paper)
    schedule: str = "even"            # even: tune_epochs before every decision | official: as the official code
    #                                   (NB201: the last decision one epoch early, α batches fresh and augmented)

    def check(self, prefix: str) -> None:
        rules = [
            (self.crit in CRITERIA, "crit", f"one of {', '.join(CRITERIA)}"),
            (self.edge_order in ORDERS, "edge_order", f"one of {', '.join(ORDERS)}"),
            (self.update_alpha in ALPHA_MODES, "update_alpha", f"one of {', '.join(ALPHA_MODES)}"),
            (self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}"),
            (self.tune_epochs >= 0, "tune_epochs", ">= 0"),
            (self.tune_steps is None or self.tune_steps >= 0, "tune_steps", ">= 0"),
            (self.valid_batches is None or self.valid_batches >= 1, "valid_batches", "at least 1 (or null: all)"),
            (self.lr > 0 and (self.lr_min is None or self.lr_min >= 0), "lr", "> 0 (and lr_min >= 0)"),
        ]
        self.check_evaluator(prefix)
        check_rules(self, prefix, rules)


# -- fine-tuning between decisions ------------------------------------------------------------------------------------

class FineTuner:
    """SGD on the copy's weights (and optional first-order DARTS Adam steps on α). Step g uses train batch g and
    valid batch g of the loaders' seeded streams, so a resumed fine-tuning sees the same batches; with
    `fresh_alpha`, the α batch of step g is the first batch of valid's epoch g (official: `next(iter(valid_queue))`,
    the first batch of a new random pass every step)."""

    def __init__(self, supernet: Supernet, train, valid, o: PerturbationOptions, search: SearchConfig | None,
                 alpha: bool, total_steps: int, fresh_alpha: bool = False):
        self.supernet, self.train, self.valid, self.o = supernet, train, valid, o
        self.fresh_alpha = fresh_alpha
        self.total_steps, self.step = max(total_steps, 1), 0
        self.w_optimizer = torch.optim.SGD(supernet.weight_parameters(), lr=o.lr, momentum=o.momentum,
                                           weight_decay=o.weight_decay)
        s = search or SearchConfig()
        self.a_optimizer = (torch.optim.Adam(supernet.arch_parameters(), lr=s.a_lr, betas=(s.a_beta1, s.a_beta2),
                                             weight_decay=s.a_weight_decay) if alpha else None)

    def lr(self) -> float:
        o = self.o
        if o.lr_min is None:
            return o.lr
        return o.lr_min + (o.lr - o.lr_min) * (1 + math.cos(math.pi * self.step / self.total_steps)) / 2

    def run(self, steps: int, cost: Cost) -> None:
        self.supernet.train()
        for _ in range(steps):
            for group in self.w_optimizer.param_groups:
                group["lr"] = self.lr()
            if self.a_optimizer is not None:
                self._alpha_step(self.valid.batch(self.step, 0) if self.fresh_alpha else self._batch(self.valid),
                                 cost)
            self._weight_step(self._batch(self.train), cost)
            self.step += 1
            logs.tick()

    def _batch(self, loader):
        return loader.batch(*divmod(self.step, len(loader)))

    def _alpha_step(self, batch, cost: Cost) -> None:
        x, y = batch
        alphas = self.supernet.arch_parameters()
        loss = F.cross_entropy(self.supernet(x, self.supernet.mixing_weights()), y)
        # α may not reach the loss at all (every remaining op `none`), and an edge pruned to no op has a 0/0
        # softmax gradient: both mean a zero gradient
        grads = torch.autograd.grad(loss, alphas, allow_unused=True, materialize_grads=True)
        for a, g in zip(alphas, grads):
            a.grad = torch.nan_to_num(g, 0.0, 0.0, 0.0)
        self.a_optimizer.step()
        cost.count(y.numel(), backward=True)

    def _weight_step(self, batch, cost: Cost) -> None:
        x, y = batch
        self.w_optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.supernet(x, self.supernet.mixing_weights(detach=True)), y)
        loss.backward()
        nn.utils.clip_grad_norm_(self.supernet.weight_parameters(), self.o.grad_clip)
        self.w_optimizer.step()
        cost.count(y.numel(), backward=True)

    def state_dict(self) -> dict[str, Any]:
        out = {"step": self.step, "w_optimizer": self.w_optimizer.state_dict()}
        if self.a_optimizer is not None:
            out["a_optimizer"] = self.a_optimizer.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        if self.a_optimizer is not None:
            self.a_optimizer.load_state_dict(state["a_optimizer"])


# -- decisions --------------------------------------------------------------------------------------------------------

def decision_events(supernet: Supernet, order: str, seed: int, inputs_per_node: int | None) -> list[list[tuple]]:
    """The decisions, in order: each is a list of (kind, cell type, edge or node), one per cell type. Op decisions
    first (every edge), then topology decisions (every node with too many inputs), each in seeded random order."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 0x50, 0x54))

    def arrange(items: list[int]) -> list[int]:
        if order == "fixed":
            return items
        return [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]

    def interleave(kind: str, per_type: dict[str, list[int]]) -> list[list[tuple]]:
        n = max((len(v) for v in per_type.values()), default=0)
        return [[(kind, ct, items[i]) for ct, items in per_type.items() if i < len(items)] for i in range(n)]

    cts = supernet.cell_types
    events = interleave("op", {ct: arrange(list(range(len(supernet.edges[ct])))) for ct in cts})
    if inputs_per_node:
        events += interleave("node", {ct: arrange(nodes_to_prune(supernet, ct, inputs_per_node)) for ct in cts})
    return events


def tuning_steps(events: int, per_event: int, steps_per_epoch: int, schedule: str, topology: bool) -> list[int]:
    """Fine-tuning steps before each decision (0 before the first). even: `per_event` each. official: as the official
    NB201 code (projection.py: decisions at tuning epochs 0, intv, 2·intv, … and the last at epoch intv·(n−1) − 1,
    i.e. 0, 5, 10, 15, 20, 24), the last decision one epoch (`steps_per_epoch`) early, never before the previous one;
    the official DARTS-space code (with a topology step) spaces its decisions evenly (0, 5, …, 80 of 81 epochs)."""
    gaps = [0] + [per_event] * (events - 1)
    if schedule == "official" and not topology and events > 1:
        gaps[-1] = max(per_event - steps_per_epoch, 0)
    return gaps


def decide_op(supernet: Supernet, evaluate, cell_type: str, edge: int, crit: str,
              keep_none: bool = True) -> dict[str, Any] | None:
    """Score every enabled op of `edge` by removal, make the edge one-hot on the winner; returns the record.
    `evaluate(settings) -> outcomes` evaluates a list of mixing weights (candidates.Candidates: here or split over
    workers). `keep_none=False` never lets `none` win (spaces that prune node inputs drop edges by topology instead)."""
    mask = supernet.mask(cell_type)
    enabled = mask[edge].nonzero().flatten().tolist()
    candidates = [k for k in enabled if keep_none or supernet.op_names[k] != "none"] or enabled
    if not enabled:
        return None
    base = supernet.mixing_weights(detach=True)
    removals = []
    for k in enabled:
        w = {ct: t.clone() for ct, t in base.items()}
        w[cell_type][edge, k] = 0.0
        removals.append(w)
    full, *outcomes = evaluate([base, *removals])
    K = len(supernet.op_names)
    accuracy, loss = [full.accuracy] * K, [full.loss] * K  # removing a disabled op changes nothing
    for k, out in zip(enabled, outcomes):
        accuracy[k], loss[k] = out.accuracy, out.loss
    if crit == "acc":
        chosen = min(candidates, key=lambda k: (accuracy[k], k))
        scores = [full.accuracy - a for a in accuracy]
    else:
        chosen = max(candidates, key=lambda k: (loss[k], -k))
        scores = [v - full.loss for v in loss]
    decided = mask.clone()
    decided[edge] = False
    decided[edge, chosen] = True
    supernet.set_mask(cell_type, decided)
    src, dst = supernet.edges[cell_type][edge]
    return {"kind": "op", "cell_type": cell_type, "edge": edge, "edge_name": edge_name(src, dst),
            "op": supernet.op_names[chosen], "full_accuracy": full.accuracy, "full_loss": full.loss,
            "accuracy": accuracy, "loss": loss, "scores": scores}


@register("perturbation")
class Perturbation(Selector):
    Options = PerturbationOptions

    def run(self, ctx) -> Selection:
        o = self.options
        search = ctx.search
        alpha = o.update_alpha == "yes" or (o.update_alpha == "auto" and ctx.optimizer is not None
                                             and ctx.optimizer.alpha_by_gradient)
        keep = getattr(ctx.space, "inputs_per_node", None) if o.topology else None
        net = copy.deepcopy(ctx.supernet)
        events = decision_events(net, o.edge_order, ctx.seed, keep)
        tunes = o.tune_steps if o.tune_steps is not None else o.tune_epochs
        if tunes and ctx.train is None:
            raise UserError("perturbation fine-tunes the supernet between decisions and needs training batches "
                            "(train=...); or set its option tune_epochs=0 for no fine-tuning")
        per_event = o.tune_steps if o.tune_steps is not None else round(o.tune_epochs * len(ctx.train or ()))
        gaps = tuning_steps(len(events), per_event, len(ctx.train or ()), o.schedule, bool(keep))
        batch_size = (ctx.train or ctx.valid).batch_size
        official = o.schedule == "official"  # α batches: official augmented random batches
        alpha_stream = rebatch(ctx.valid, batch_size, seed=ctx.seed + 1, shuffle=True, drop_last=True,
                               augment=official, cutout=getattr(ctx.train, "cutout", 0) if official else 0)
        tuner = FineTuner(net, ctx.train, alpha_stream, o, search, alpha, sum(gaps), fresh_alpha=official)
        source = o.scoring_source(ctx.valid, ctx.train, ctx.seed)
        batches = take_batches(source, o.valid_batches) if o.draw == "fixed" else []

        progress = Progress(ctx.workdir, self.name, fingerprint(ctx.supernet, o, ctx.seed, [alpha, keep]))
        cost, records, done = Cost(), [], 0
        saved = progress.load()
        if saved is not None:
            net.load_state_dict(saved["supernet"])
            tuner.load_state_dict(saved["tuner"])
            set_rng_state(saved["rng"])
            cost, records, done = Cost(**saved["cost"]), saved["records"], saved["done"]
            log.info(f"  resuming {self.name} after {done} of {len(events)} decisions")

        # the candidates of each decision are scored on `net` as it is then, here or split over ctx.workers; the
        # fine-tuning between decisions stays in this process
        evaluate = Candidates(ctx.workers, ctx.space, net, batches, o, cost, source, o.valid_batches)
        with logs.Progress(self.name, len(events), "decision", done=done) as decisions:
            for i in range(done, len(events)):
                if i > 0:
                    tuner.run(gaps[i], cost)
                for j, (kind, ct, where) in enumerate(events[i]):
                    on = evaluate.at(i, j)  # fresh batches: keyed by (decision, event, candidate)
                    record = (decide_op(net, on, ct, where, o.crit, keep_none=not keep) if kind == "op"
                              else {"kind": "node", **select_inputs(net, on, ct, where, keep, o.crit)})
                    if record is not None:
                        records.append(record)
                        log.info(f"  decision {i + 1}/{len(events)}: {_describe(record, net.edges)}")
                progress.save(i + 1, {"supernet": net.state_dict(), "tuner": tuner.state_dict(), "rng": rng_state(),
                                      "cost": vars(cost), "records": records, "done": i + 1})
                decisions.update()
        progress.clear()
        return self._selection(ctx, net, records, cost, alpha, per_event, gaps, done)

    def _selection(self, ctx, net: Supernet, records, cost: Cost, alpha: bool, per_event: int, gaps: list[int],
                   resumed: int):
        K = len(net.op_names)
        scores = {ct: torch.zeros(len(net.edges[ct]), K, dtype=torch.float64) for ct in net.cell_types}
        chosen = {ct: torch.zeros(len(net.edges[ct]), K) for ct in net.cell_types}
        for r in records:
            if r["kind"] == "op":
                scores[r["cell_type"]][r["edge"]] = torch.tensor(r["scores"], dtype=torch.float64)
        masks = {ct: net.mask(ct).cpu() for ct in net.cell_types}
        for ct in net.cell_types:
            chosen[ct][masks[ct]] = 1.0  # one-hot on decided edges, all zero on pruned ones
        arch = ctx.space.derive(chosen, masks)
        details = {"crit": self.options.crit, "update_alpha": alpha, "tune_steps_per_decision": per_event,
                   "tune_steps_before": gaps,
                   "decisions": records, "resumed_after": resumed}
        return Selection(self.name, arch, as_lists(scores), None, cost, details)


def _describe(r: dict[str, Any], edges: dict[str, list[tuple[int, int]]]) -> str:
    if r["kind"] == "op":
        return f"{r['cell_type']} {r['edge_name']} keeps {r['op']} (full accuracy {logs.percent(r['full_accuracy'])})"
    kept = ", ".join(edge_name(*edges[r["cell_type"]][e]) for e in r["kept"])
    return f"{r['cell_type']} node {r['node']} keeps edges {kept}"
