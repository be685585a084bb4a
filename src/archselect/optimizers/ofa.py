"""Once-for-All (Cai et al., ICLR 2020): train one elastic supernet whose sub-networks all work without retraining,
by progressive shrinking.

The supernet is `space.elastic=true` (spaces/elastic.py): each layer's candidates `mbE_kK` are cuts of one shared
block, so a sub-network (a depth per stage, a kernel and an expansion per layer; spaces/subnets.py) is a one-hot
plan. It is a separate supernet class rather than something this optimizer builds, because the selection stage
rebuilds the supernet from the run's config: with the flag in `space.*` every stage sees the same class, and every
selector runs on it through the ordinary Supernet contract (α, masks, plans).

Progressive shrinking: `options.phases`, in order, each a length (`epochs`, or `fraction` of search.epochs) and the
sets its sub-networks are drawn from. The paper's order is the full network, then elastic kernel, elastic depth,
elastic expansion (each later phase keeps the earlier phases' sets). Within a step:

- the sandwich rule (`sandwich: true`): the largest and the smallest sub-network of the phase plus `subnets` uniform
  draws, each forward-backward on the same batch, gradients summed, one SGD step. OFA's released code draws
  `subnets` (its dynamic_batch_size: 1, 2, 4 in the kernel, depth, expand phases) uniformly and nothing else:
  `sandwich: false`;
- knowledge distillation (`kd_ratio` > 0, OFA: 1.0): loss = CE(label smoothing) + kd_ratio · CE(softmax(teacher),
  student). The teacher is the full network as it stands when the first elastic phase begins, frozen (OFA loads the
  separately trained full network), run in train-mode BN as OFA's code does.

Each phase starts as OFA starts each of its training runs: a fresh SGD state (`reset_momentum`), a cosine schedule
of its own from `lr` (or search.w_lr x `lr_scale`) to search.w_lr_min over the phase after `warmup_epochs` of
linear warm-up from `warmup_lr`, stepped per batch; and, when it brings an expansion smaller than any trained
before, OFA's channel sorting (`reorder`): each layer's hidden channels by the L1 norm of their projection weights,
within the widths trained before. α is never used: the architecture comes from searching the sub-networks
(the `ofa-search` selector).

Sub-networks are drawn from torch's global generator, which the search loop checkpoints; under torchrun every rank
draws the same ones from the same state (docs/scaling.md).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..config import build
from ..errors import UserError
from ..mobilenet_text import MAX_LAYERS
from ..scoring.bn_calibration import recalibrate_bn
from ..spaces.subnets import Choices, Genes
from .base import OPTIMIZERS, SearchOptimizer, _set_groups

log = logging.getLogger(__name__)


@dataclass
class Phase:
    name: str = "full"
    epochs: int | None = None            # the phase's length in epochs, or
    fraction: float | None = None        # its share of search.epochs (boundaries rounded cumulatively)
    kernels: list[int] = field(default_factory=lambda: [7])
    expansions: list[int] = field(default_factory=lambda: [6])
    depths: list[int] | None = None      # layers kept per stage (min(d, stage layers)); None: every layer
    subnets: int = 1                     # uniformly drawn sub-networks per step (OFA's dynamic_batch_size)
    lr: float | None = None              # the phase's peak learning rate; None: search.w_lr x lr_scale
    lr_scale: float = 1.0
    warmup_epochs: int = 0               # linear warm-up (per batch) from warmup_lr at the phase's start
    warmup_lr: float = 0.0


def paper_phases() -> list[Phase]:
    """The paper's order, a quarter of the epochs each: full network, elastic kernel, depth, expansion; learning
    rates relative to the full network's as in OFA's scripts (kernel 0.03 / 0.1625 per GPU ≈ 0.2; the second depth
    and expand tasks 0.0075 / 0.1625 ≈ 0.05)."""
    k = [3, 5, 7]
    return [Phase("full", fraction=0.25), Phase("kernel", fraction=0.25, kernels=k, lr_scale=0.2),
            Phase("depth", fraction=0.25, kernels=k, depths=[2, 3, 4], lr_scale=0.05),
            Phase("expand", fraction=0.25, kernels=k, depths=[2, 3, 4], expansions=[3, 6], lr_scale=0.05)]


@dataclass
class OFAOptions:
    phases: list[Phase] = field(default_factory=paper_phases)
    sandwich: bool = True            # largest + smallest + `subnets` random per step (OFA's code: false)
    kd_ratio: float = 1.0            # OFA; 0 = no distillation
    label_smoothing: float = 0.1     # OFA
    no_decay_bn_bias: bool = True    # OFA's no_decay_keys 'bn#bias': no weight decay on BN parameters and biases
    clip: bool = False               # clip the gradient norm at search.grad_clip (OFA does not clip)
    reorder: bool = True             # OFA's channel sorting when a phase brings a smaller expansion
    reset_momentum: bool = True      # a fresh SGD state at each phase (OFA: each phase is a new training run)
    eval_bn_batches: int = 2         # the epoch-end evaluation of the full network recalibrates its BN on this many
                                     # search-train batches (on a copy, as OFA validates); 0: the shared statistics


def phase_bounds(phases: list[Phase], epochs: int) -> list[tuple[int, int]]:
    """(first epoch, end epoch) of each phase; lengths in epochs or fractions of `epochs`, which they must cover."""
    bounds, position = [], 0.0
    for i, p in enumerate(phases):
        if (p.epochs is None) == (p.fraction is None):
            raise UserError(f"search.options.phases[{i}] ({p.name}): give exactly one of epochs and fraction")
        if (p.epochs is not None and p.epochs < 0) or (p.fraction is not None and not 0 <= p.fraction <= 1):
            raise UserError(f"search.options.phases[{i}] ({p.name}): epochs must be >= 0, fraction in [0, 1]")
        start = round(position)
        position += p.epochs if p.epochs is not None else p.fraction * epochs
        bounds.append((start, round(position)))
    if round(position) != epochs:
        raise UserError(f"search.options.phases cover {round(position)} epochs; search.epochs is {epochs}")
    return bounds


def _check_phase(i: int, p: Phase, length: int) -> None:
    rules = [(p.subnets >= 0, "subnets must be >= 0"), (p.lr is None or p.lr > 0, "lr must be > 0"),
             (p.lr_scale > 0, "lr_scale must be > 0"),
             (0 <= p.warmup_epochs <= length, f"warmup_epochs must lie in [0, {length}] (the phase's epochs)"),
             (p.warmup_lr >= 0, "warmup_lr must be >= 0"),
             (p.depths is None or all(d >= 1 for d in p.depths), "depths must be >= 1")]
    for ok, message in rules:
        if not ok:
            raise UserError(f"search.options.phases[{i}] ({p.name}): {message}")


def phase_sets(p: Phase) -> tuple[list[int], list[int], list[int]]:
    """The kernels, expansions and depths a phase draws from (depths None: every layer, the full depth)."""
    return p.kernels, p.expansions, [MAX_LAYERS] if p.depths is None else p.depths


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a soft target distribution, averaged over the batch."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@OPTIMIZERS.register("ofa")
class OnceForAll(SearchOptimizer):
    Options = OFAOptions
    trains_alpha = False
    recommended_selectors = ("ofa-search",)
    elastic_supernet = True  # trains `space.elastic=true` supernets only (spaces/elastic.py)

    def __init__(self, supernet, cfg, steps_per_epoch):
        if not getattr(supernet, "elastic", False):
            raise UserError("search.optimizer=ofa trains an elastic supernet: set space.name=mobilenet and "
                            "space.elastic=true")
        super().__init__(supernet, cfg, steps_per_epoch)
        o = self.options
        if o.kd_ratio < 0 or o.eval_bn_batches < 0 or not 0 <= o.label_smoothing < 1:
            raise UserError("search.options.kd_ratio and eval_bn_batches must be >= 0, label_smoothing in [0, 1)")
        self.bounds = phase_bounds(o.phases, cfg.epochs)
        for i, (p, (a, b)) in enumerate(zip(o.phases, self.bounds)):
            _check_phase(i, p, b - a)
            if not o.sandwich and p.subnets < 1 and b > a:
                raise UserError(f"search.options.phases[{i}] ({p.name}): without the sandwich rule a step needs "
                                f"subnets >= 1")
        self.choices = [Choices.of(supernet, *phase_sets(p)) for p in o.phases]
        self.full = Choices.of(supernet)  # the whole space: its largest sub-network is the full network
        self.w_optimizer = torch.optim.SGD(self._param_groups(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                           nesterov=cfg.w_nesterov)
        self.scheduler = None  # the learning rate is set per step (`_set_lr`)
        self.started = -1      # the last phase whose start (teacher, reorder, fresh SGD state) has been done
        self.position = (-1, 0)  # (epoch, steps done in it)
        self.teacher: nn.Module | None = None

    def _param_groups(self) -> list[dict[str, Any]]:
        no_decay = set()
        if self.options.no_decay_bn_bias:
            for module in self.supernet.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    no_decay.update(id(p) for p in module.parameters(recurse=False))
            no_decay.update(id(p) for n, p in self.supernet.named_parameters() if n.endswith(".bias"))
        params = self.supernet.weight_parameters()
        return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": self.cfg.w_weight_decay},
                {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]

    # -- phases ----------------------------------------------------------------------------------------------------
    def phase_index(self, epoch: int) -> int:
        for i, (a, b) in enumerate(self.bounds):
            if a <= epoch < b:
                return i
        return len(self.bounds) - 1

    def start_epoch(self, epoch: int, valid) -> dict[str, float]:
        i = self.phase_index(epoch)
        if i > self.started:
            self._begin_phase(i)
        return {"ofa_phase": i}

    def _begin_phase(self, i: int) -> None:
        o, choices = self.options, self.choices[i]
        log.info(f"OFA phase {i + 1}/{len(o.phases)} '{o.phases[i].name}': kernels {o.phases[i].kernels}, "
                 f"expansions {o.phases[i].expansions}, depths per stage {[list(d) for d in choices.depths]}")
        if o.kd_ratio > 0 and self.teacher is None and choices.smallest() != self.full.largest():
            self.teacher = self._snapshot()
        earlier = {e for j in range(i) if self.bounds[j][1] > self.bounds[j][0] for e in o.phases[j].expansions}
        if o.reorder and earlier and min(o.phases[i].expansions) < min(earlier):
            self._reorder(sorted(earlier))
        if o.reset_momentum:
            self.w_optimizer.state.clear()
        self.started = i

    def _snapshot(self) -> nn.Module:
        teacher = copy.deepcopy(self.supernet)
        teacher.requires_grad_(False)
        return teacher

    def _reorder(self, expansions: list[int]) -> None:
        """OFA's channel sorting in every layer; the SGD state follows the permutation."""
        for layer in self.supernet.body.layers:
            order = layer.channel_order([layer.C_in * e for e in expansions])
            for t, dim in layer.permute_hidden(order):
                for v in self.w_optimizer.state.get(t, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == t.shape:
                        v.copy_(v.index_select(dim, order.to(v.device)))

    # -- one step --------------------------------------------------------------------------------------------------
    def step(self, train, valid, epoch: int) -> dict[str, float]:
        self.supernet.train()
        i = self.phase_index(epoch)
        if i > self.started:
            self._begin_phase(i)
        self.position = (epoch, self.position[1] if self.position[0] == epoch else 0)
        self._set_lr(i, epoch, self.position[1])
        with self.autocast():
            out = self._sandwich_step(train, self.choices[i], self.options.phases[i])
        self.position = (epoch, self.position[1] + 1)
        return out

    def _set_lr(self, i: int, epoch: int, step: int) -> None:
        """OFA's per-batch schedule inside phase i: linear warm-up, then cosine to search.w_lr_min."""
        p, (start, end) = self.options.phases[i], self.bounds[i]
        peak = self.cfg.w_lr * p.lr_scale if p.lr is None else p.lr
        S = self.steps_per_epoch
        t = (epoch - start) * S + step
        if t < p.warmup_epochs * S:
            lr = p.warmup_lr + (peak - p.warmup_lr) * (t + 1) / (p.warmup_epochs * S)
        else:
            span = max((end - start - p.warmup_epochs) * S, 1)
            lr = self.cfg.w_lr_min + (peak - self.cfg.w_lr_min) * (1 + math.cos(math.pi * (t - p.warmup_epochs * S)
                                                                             / span)) / 2
        for g in self.w_optimizer.param_groups:
            g["lr"] = lr

    def subnets(self, choices: Choices, phase: Phase) -> list[Genes]:
        """The sub-networks of one step: the sandwich's largest and smallest, then `subnets` uniform draws (one
        sub-network only, when the phase has no other)."""
        largest, smallest = choices.largest(), choices.smallest()
        if largest == smallest:
            return [largest]
        fixed = [largest, smallest] if self.options.sandwich else []
        return fixed + [choices.sample(None) for _ in range(phase.subnets)]

    def _sandwich_step(self, train, choices: Choices, phase: Phase) -> dict[str, float]:
        x, y = train
        o, net = self.options, self.supernet
        device = net.alphas[net.cell_types[0]].device
        soft = None
        if o.kd_ratio > 0 and self.teacher is not None:
            self.teacher.train()
            with torch.no_grad():
                soft = F.softmax(self.teacher(x, self.full.weights(self.full.largest(), device)), dim=1)
        self.w_optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for genes in self.subnets(choices, phase):
            logits = net(x, choices.weights(genes, device))
            loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
            if soft is not None:
                loss = loss + o.kd_ratio * soft_cross_entropy(logits, soft)
            loss.backward()
            losses.append(loss.item())
            accs.append((logits.argmax(dim=1) == y).float().mean().item())
        params = net.weight_parameters()
        distributed.average_gradients(params)
        grads = [p.grad for p in params if p.grad is not None]
        if o.clip:
            norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.w_optimizer.step()
        return {"train_loss": sum(losses) / len(losses), "train_acc": sum(accs) / len(accs),
                "grad_norm": float(norm), "subnets": float(len(losses))}

    def evaluation(self, train) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The end-of-epoch evaluation runs the full network with its BN statistics recalibrated on the epoch's first
        `eval_bn_batches` search-train batches, on a copy (the shared statistics blend every sampled sub-network).
        Under torchrun every rank recalibrates its copy with its slice of those batches and the whole batches'
        statistics (all-reduced per BN), so every rank evaluates the copy one process would."""
        device = self.supernet.alphas[self.supernet.cell_types[0]].device
        weights = self.full.weights(self.full.largest(), device)
        n = min(self.options.eval_bn_batches, len(train))
        if n == 0:
            return self.supernet, weights
        model = copy.deepcopy(self.supernet)
        epoch = max(self.position[0], 0)
        recalibrate_bn(model, weights, [train.batch(epoch, k) for k in range(n)], across_ranks=True)
        return model, weights

    def end_epoch(self, epoch: int) -> None:
        pass  # the schedule is per step

    # -- what the selection reads ------------------------------------------------------------------------------------
    @staticmethod
    def final_sets(cfg) -> tuple[list[int], list[int], list[int]]:
        """The kernels, expansions and depths of the last phase of the search config `cfg`: the sub-networks the
        trained supernet supports."""
        return phase_sets(build(OFAOptions, cfg.options, "search.options").phases[-1])

    # -- checkpoint state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"w_optimizer": self.w_optimizer.state_dict(), "started": self.started,
                "position": list(self.position),
                "teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.started = int(state["started"])
        self.position = tuple(int(v) for v in state["position"])
        self.teacher = None
        if state.get("teacher") is not None:
            self.teacher = self._snapshot()
            self.teacher.load_state_dict(state["teacher"])

    def apply_hyperparameters(self) -> list[str]:
        """The learning rate follows the config at every step already; momentum, nesterov and the weight decay (of
        the decayed group) are set here where a resume changed them."""
        c = self.cfg
        changed = _set_groups(self.w_optimizer, {"momentum": c.w_momentum, "nesterov": c.w_nesterov})
        decayed = self.w_optimizer.param_groups[0]
        if decayed["weight_decay"] != c.w_weight_decay:
            decayed["weight_decay"] = c.w_weight_decay
            changed.append("weight_decay")
        return sorted(set(changed))
