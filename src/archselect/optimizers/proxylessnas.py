"""ProxylessNAS (Cai, Zhu, Han, ICLR 2019): path-level binarisation, so a weight step costs one path of memory.

Weight step (search-train batch): draw ONE op per edge from p = softmax(α) over its enabled ops. The mixing weights are
that one-hot draw, so only the drawn block runs; SGD on cross-entropy with label smoothing (their ImageNet search).

α step (search-valid batch, once every `update_every` weight steps, after the weight step as the released code orders
them): binary gates g, 1 on one active op per edge and 0 elsewhere, multiply the outputs of the edge's involved ops,
so autograd gives ∂L/∂g_j = <∂L/∂out, o_j(x)> (an inactive op runs with gate 0: it changes nothing but its gradient).
  paths two (the paper's two-path mode, the released `two`): draw two ops from the multinomial over p (without
      replacement), q = softmax of the α of just those two, the active one drawn from q. Then
          ∂L/∂α_i = Σ_j ∂L/∂g_j q_j (δ_ij − q_i)      for i, j in the pair, 0 for the other ops,
      one Adam step, and the pair's α shift by a common offset that keeps their logsumexp: the unsampled ops keep
      their probabilities.
  paths full (the released `full`/`full_v2`): the active op drawn from p, every enabled op involved (all computed),
      the same formula with q = p, no rescaling.
`zero` (and `none`) are never computed: their gate gradient is 0.

Optional latency regulariser (their `target_hardware`): E[lat] = fixed + Σ_edges Σ_ops q · T(edge, op) with the
step's q (the pair's renormalised softmax in two-path mode, as the released code), T from a table file or the FLOPs
of each block (latency.py). Its gradient reaches α directly through q:
    add            loss + λ·E[lat]                       the paper's loss
    add-relative   loss + λ·(E[lat] − T₀)/T₀            the released `add#linear`
    mul-log        a·loss·(log E[lat] / log T₀)^β        the released `mul#log` (its default form; a 0.2, β 0.3)

Schedule: the first `warmup_epochs` train the weights only, at their own cosine from `warmup_lr` to 0 (the released
`warm_up`), then cosine from search.w_lr to search.w_lr_min over the remaining epochs; the released code also skips α
in the first epoch after the warm-up (`skip_first_alpha_epoch`). Epoch-wise here, per batch there. Draws come from
torch's global generator on the CPU, which the search loop checkpoints, so a resumed run draws the same paths.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from ..config import check_rules
from ..supernet import Plan
from .base import OPTIMIZERS, accuracy
from .darts import DartsFirstOrder
from .latency import ZERO_OPS, CostTable, flops_table, read_table

log = logging.getLogger(__name__)
PATHS = ("two", "full")
LATENCY_LOSSES = ("none", "add", "add-relative", "mul-log")


@dataclass
class ProxylessOptions:
    paths: str = "two"                 # two (paper; released `two`) | full (released `full`/`full_v2`)
    update_every: int = 5              # one α step every this many weight steps (grad_update_arch_param_every)
    warmup_epochs: int = 0             # weights only, first (released ImageNet script: 40 before its 120 epochs)
    warmup_lr: float = 0.05            # the warm-up's cosine starts here and ends at 0 (released lr_max)
    skip_first_alpha_epoch: bool = True  # no α step in the first epoch after the warm-up (released code)
    label_smoothing: float = 0.1       # weight step only (released ImageNet search)
    update_zero_active: bool = True    # α of an edge whose active op is `zero` still moves (the paper's estimator);
                                       # false: it does not, as the released code (which skips such a layer)
    latency: str = "none"              # none | add | add-relative | mul-log
    latency_table: str | None = None   # cost file (YAML/JSON/CSV); None: FLOPs of each candidate block
    latency_target: float | None = None  # T₀ of add-relative and mul-log, in the table's unit (FLOPs: MACs)
    latency_lambda: float = 0.1        # λ of add / add-relative (grad_reg_loss_lambda)
    latency_alpha: float = 0.2         # a of mul-log (grad_reg_loss_alpha)
    latency_beta: float = 0.3          # β of mul-log (grad_reg_loss_beta)


# -- drawing paths -----------------------------------------------------------------------------------------------------

def enabled_probs(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(α) over each edge's enabled ops, 0 elsewhere and on edges with none (float64, CPU, no gradient)."""
    a, m = alpha.detach().cpu().double(), mask.cpu()
    p = torch.softmax(a.masked_fill(~m, float("-inf")).masked_fill(~m.any(1, keepdim=True), 0.0), dim=-1)
    return torch.where(m, p, torch.zeros_like(p))


def draw_one_hot(probs: torch.Tensor) -> torch.Tensor:
    """One op per edge drawn from `probs` (rows of zeros stay zero), as one-hot float64 rows."""
    out = torch.zeros_like(probs)
    rows = probs.sum(dim=1) > 0
    if rows.any():
        out[rows] = out[rows].scatter_(1, torch.multinomial(probs[rows], 1), 1.0)
    return out


def binarize(alpha: torch.Tensor, mask: torch.Tensor, paths: str) -> tuple[list[int], torch.Tensor]:
    """The α step's draw per edge: its active op (-1 if it has no enabled op) and which ops are involved (bool,
    edges x ops): the drawn pair, or every enabled op (`full`, or an edge with a single op)."""
    p, a = enabled_probs(alpha, mask), alpha.detach().cpu().double()
    involved = torch.zeros_like(p, dtype=torch.bool)
    active = []
    for e, row in enumerate(p):
        n = int(mask[e].sum())
        if n == 0:
            active.append(-1)
        elif paths == "full" or n == 1:
            involved[e] = mask[e].cpu()
            active.append(int(torch.multinomial(row, 1)))
        else:
            pair = torch.multinomial(row, 2, replacement=False)
            q = torch.softmax(a[e, pair], dim=0)
            active.append(int(pair[torch.multinomial(q, 1)]))
            involved[e, pair] = True
    return active, involved


def gate_values(active: list[int], like: torch.Tensor) -> torch.Tensor:
    """Binary gates (edges x ops): 1 on each edge's active op; a leaf that asks for its gradient."""
    g = torch.zeros_like(like)
    for e, k in enumerate(active):
        if k >= 0:
            g[e, k] = 1.0
    return g.requires_grad_(True)


def gate_plan(gates: torch.Tensor, involved: torch.Tensor, op_names) -> Plan:
    """Each edge computes its involved ops (never `zero`/`none`), each output times its gate."""
    return [[(k, gates[e, k]) for k in row.nonzero().flatten().tolist() if op_names[k] not in ZERO_OPS]
            for e, row in enumerate(involved.cpu())]


def involved_probs(alpha: torch.Tensor, involved: torch.Tensor) -> torch.Tensor:
    """q: softmax(α) renormalised over each edge's involved ops, 0 elsewhere (differentiable in α)."""
    m = involved.to(alpha.device)
    q = torch.softmax(alpha.masked_fill(~m, float("-inf")).masked_fill(~m.any(1, keepdim=True), 0.0), dim=-1)
    return torch.where(m, q, torch.zeros_like(q))


def alpha_gradient(q: torch.Tensor, gate_grad: torch.Tensor) -> torch.Tensor:
    """∂L/∂α_i = Σ_j ∂L/∂g_j q_j (δ_ij − q_i) per edge: q_i (G_i − Σ_j q_j G_j), 0 where q is 0."""
    return q * (gate_grad - (q * gate_grad).sum(dim=1, keepdim=True))


@torch.no_grad()
def rescale_pairs(alpha: torch.Tensor, before: torch.Tensor, involved: torch.Tensor) -> None:
    """Shift each edge's involved α by one offset so their logsumexp is what it was before the step: the ops not
    drawn keep their probabilities (two-path mode)."""
    m = involved.to(alpha.device)
    lse = lambda a: torch.logsumexp(a.masked_fill(~m, float("-inf")), dim=1, keepdim=True)  # noqa: E731
    rows = m.any(dim=1, keepdim=True)
    offset = torch.where(rows, lse(alpha) - lse(before), torch.zeros_like(alpha[:, :1]))
    alpha.sub_(torch.where(m, offset.expand_as(alpha), torch.zeros_like(alpha)))


# -- the schedule ------------------------------------------------------------------------------------------------------

class WarmupCosine:
    """Epoch-wise weight lr: cosine from `warmup_lr` to 0 over the warm-up epochs, then cosine from cfg.w_lr to
    cfg.w_lr_min over the rest. Its position (epochs completed) is checkpointed; the lr is a function of it."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, warmup_epochs: int, warmup_lr: float):
        self.optimizer, self.cfg = optimizer, cfg
        self.warmup_epochs, self.warmup_lr = warmup_epochs, warmup_lr
        self.last_epoch = 0
        self.apply()

    def lr_at(self, epoch: int) -> float:
        w = self.warmup_epochs
        if epoch < w:
            return self.warmup_lr * (1 + math.cos(math.pi * epoch / w)) / 2
        span = max(self.cfg.epochs - w, 1)
        t = min(epoch - w, span)
        return self.cfg.w_lr_min + (self.cfg.w_lr - self.cfg.w_lr_min) * (1 + math.cos(math.pi * t / span)) / 2

    def apply(self) -> bool:
        """Set the lr of the current epoch; whether it differed (a resume with a new w_lr or w_lr_min)."""
        lr = self.lr_at(self.last_epoch)
        changed = any(g["lr"] != lr for g in self.optimizer.param_groups)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return changed

    def step(self) -> None:
        self.last_epoch += 1
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])  # the lr itself comes back with the weight optimizer's state


# -- the optimizer -----------------------------------------------------------------------------------------------------

@OPTIMIZERS.register("proxylessnas")
class ProxylessNAS(DartsFirstOrder):
    Options = ProxylessOptions
    alpha_by_gradient = False  # α moves by the binary-gate estimate, not by DARTS steps on the mixture

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        o = self.options
        check_rules(o, "search.options", [
            (o.paths in PATHS, "paths", " or ".join(PATHS)),
            (o.update_every >= 1, "update_every", ">= 1"),
            (0 <= o.warmup_epochs <= max(cfg.epochs, 0), "warmup_epochs", f"in [0, search.epochs={cfg.epochs}]"),
            (o.warmup_lr > 0, "warmup_lr", "> 0"),
            (0 <= o.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (o.latency in LATENCY_LOSSES, "latency", " | ".join(LATENCY_LOSSES)),
            (o.latency != "none" or o.latency_table is None, "latency_table",
             "unset while latency is none (choose add, add-relative or mul-log)"),
            (o.latency not in ("add-relative", "mul-log") or (o.latency_target or 0) > 0, "latency_target",
             f"a number > 0 for latency {o.latency}"),
            (o.latency != "mul-log" or o.latency_target != 1, "latency_target", "!= 1 for mul-log (log 1 = 0)"),
            (o.latency_lambda >= 0 and o.latency_alpha > 0 and o.latency_beta >= 0, "latency_lambda",
             ">= 0 (and latency_alpha > 0, latency_beta >= 0)"),
        ])
        if o.paths == "two" and cfg.a_beta1 > 0:
            log.warning(f"proxylessnas: search.a_beta1={cfg.a_beta1} lets Adam's momentum move the α of ops not "
                        f"drawn, so their probabilities drift; ProxylessNAS uses 0")
        self.scheduler = WarmupCosine(self.w_optimizer, cfg, o.warmup_epochs, o.warmup_lr)
        self.costs: CostTable | None = (read_table(o.latency_table, supernet) if o.latency_table else None)
        self.batch_index = 0  # weight steps done in this epoch: the α step follows every update_every-th

    # -- one step: weights, then (when due) α ----------------------------------------------------------------------
    def step(self, train, valid, epoch):
        self.supernet.train()
        distributed.sync_optimizer_gradients(self.a_optimizer)
        with self.autocast():
            out = self.weight_step(train)
            if self.alpha_due(epoch):
                out.update(self.arch_step(valid, epoch))
        self.batch_index += 1
        return out

    def valid_batch_index(self, epoch: int, step: int, batches: int) -> int | None:
        """The epoch's i-th α step reads batch i (mod `batches`), as the released code takes the next batch of its
        validation loader for each α step: with an α step every `update_every` weight steps, pairing by weight step
        would leave all but every `update_every`-th held-out batch unused."""
        return (self.batch_index // self.options.update_every) % batches if self.alpha_due(epoch) else None

    def alpha_due(self, epoch: int) -> bool:
        o = self.options
        first = o.warmup_epochs + (1 if o.skip_first_alpha_epoch else 0)
        return not self.alpha_frozen and epoch >= first and (self.batch_index + 1) % o.update_every == 0

    def weight_loss(self, logits, y):
        return F.cross_entropy(logits, y, label_smoothing=self.options.label_smoothing)

    def train_weights(self) -> dict[str, torch.Tensor]:
        sn = self.supernet
        return {ct: draw_one_hot(enabled_probs(sn.alphas[ct], sn.mask(ct))).to(sn.alphas[ct])
                for ct in sn.cell_types}

    def evaluation(self, train) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """The supernet on its most likely path (the released code validates its `chosen` ops)."""
        return self.supernet, self.most_likely_path()

    def most_likely_path(self) -> dict[str, torch.Tensor]:
        sn = self.supernet
        out = {}
        for ct in sn.cell_types:
            p = enabled_probs(sn.alphas[ct], sn.mask(ct))
            one = torch.zeros_like(p).scatter_(1, p.argmax(dim=1, keepdim=True), 1.0)
            out[ct] = torch.where(p.sum(1, keepdim=True) > 0, one, torch.zeros_like(one)).to(sn.alphas[ct])
        return out

    def arch_step(self, valid, epoch):
        x, y = valid
        sn, paths = self.supernet, self.options.paths
        alphas = [sn.alphas[ct] for ct in sn.cell_types]
        draws = [binarize(a, sn.mask(ct), paths) for ct, a in zip(sn.cell_types, alphas)]
        gates = [gate_values(active, a.detach()) for (active, _), a in zip(draws, alphas)]
        plans = {ct: gate_plan(g, involved, sn.op_names) for ct, g, (_, involved) in zip(sn.cell_types, gates, draws)}
        logits = sn.forward_plans(x, plans)
        loss = F.cross_entropy(logits, y)
        q = [involved_probs(a, involved) for a, (_, involved) in zip(alphas, draws)]
        total, metrics = self.regularised(loss, dict(zip(sn.cell_types, q)), x)
        self._set_alpha_grads(total, alphas, gates, q, [active for active, _ in draws])
        before = [a.detach().clone() for a in alphas]
        self.a_optimizer.step()
        if paths == "two":
            for a, old, (_, involved) in zip(alphas, before, draws):
                rescale_pairs(a, old, involved)
        return {"valid_loss": loss.item(), "valid_acc": accuracy(logits, y), **metrics}

    def _set_alpha_grads(self, total, alphas, gates, q, active) -> None:
        """α.grad: the binary-gate estimate from ∂total/∂g, plus the latency term's own gradient through q."""
        direct = self.options.latency != "none"
        grads = torch.autograd.grad(total, gates + (alphas if direct else []), allow_unused=True,
                                    materialize_grads=True)
        for i, a in enumerate(alphas):
            g = alpha_gradient(q[i].detach(), grads[i])
            if direct:
                g = g + grads[len(gates) + i]
            if not self.options.update_zero_active:
                g = g.masked_fill(self._zero_active(active[i], g.device), 0.0)
            a.grad = g

    def _zero_active(self, active: list[int], device) -> torch.Tensor:
        """(edges x 1) rows whose active op is a zero op."""
        names = self.supernet.op_names
        return torch.tensor([[k >= 0 and names[k] in ZERO_OPS] for k in active], device=device)

    # -- the latency regulariser -----------------------------------------------------------------------------------
    def regularised(self, loss: torch.Tensor, q: dict[str, torch.Tensor], x: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The α step's objective from its cross-entropy `loss`, and what to record of it."""
        o = self.options
        if o.latency == "none":
            return loss, {}
        if self.costs is None:  # FLOPs at the batch's resolution, counted once
            self.costs = flops_table(self.supernet, tuple(x.shape[1:]))
        lat = self.costs.expected(q)
        if o.latency == "add":
            total = loss + o.latency_lambda * lat
        elif o.latency == "add-relative":
            total = loss + o.latency_lambda * (lat - o.latency_target) / o.latency_target
        else:
            total = o.latency_alpha * loss * (torch.log(lat) / math.log(o.latency_target)) ** o.latency_beta
        p = {ct: enabled_probs(self.supernet.alphas[ct], self.supernet.mask(ct)) for ct in self.supernet.cell_types}
        return total, {"arch_loss": total.item(), "expected_latency": self.costs.expected(p).item()}

    # -- checkpoint state ------------------------------------------------------------------------------------------
    def apply_schedule(self) -> list[str]:
        return ["w_lr", "w_lr_min"] if self.scheduler.apply() else []

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        self.batch_index = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "batch_index": self.batch_index}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.batch_index = int(state["batch_index"])
