"""Gumbel-softmax supernet optimizers: GDAS (Dong & Yang, CVPR 2019) and SNAS (Xie et al., ICLR 2019, as GM-NAS runs
it). Both draw fresh mixing weights from a Gumbel-softmax of α for every forward pass, in the weight step and in the
α step; α takes the DARTS Adam step (first order, on the validation batch); the temperature τ falls linearly over the
epochs. The schedule position is the optimizer's own state (checkpointed, like the learning-rate schedule), so a
sub-supernet that inherits the optimizer also inherits τ, as GM-NAS' splitting copies it.

GDAS, as its official code (AutoDL-Projects, `search_model_gdas.py`):
    p = softmax((log_softmax(α) + G) / τ),  i = argmax p,  h = one_hot(i) − p.detach() + p   (straight-through)
    edge output = h_i · op_i(x)
Only the sampled op is computed, in both steps, and α's gradient comes through h_i alone: ∂L/∂p_i = <∂L/∂out, op_i(x)>,
then through the softmax to every α of the edge. This is the official DARTS-space cell (`MixedOp.forward_gdas`). The
official NAS-Bench-201 cell also adds the other ops' h_k (value 0) to the edge output as scalars, which sends each of
them the sum of the output gradient; that quirk is left out here. If the sampled op is `none`, the edge contributes
zero and passes no gradient (official: h_none · 0, the same). τ: 10 → 0.1, reaching 0.1 in the last epoch
(official NB201 script: tau_max − (tau_max − tau_min) · epoch / (epochs − 1)).

SNAS, as GM-NAS' `search_model_ws_snas.py`: soft weights softmax((α + G) / τ) over the enabled ops, every op computed;
α starts at N(1, 0.01) and is read as log-α. τ: GM-NAS' `TempScheduler`, tau_max − (tau_max − tau_min) · epoch /
epochs (never quite reaching tau_min); 1 → 0.03 in its DARTS-space scripts, 1 → 0.1 in its NAS-Bench-201 ones.
SNAS' resource constraint is not part of it (GM-NAS does not use it).

G is standard Gumbel noise, −log(E) with E ~ Exp(1), redrawn where it is infinite (as both official codes do). It
comes from torch's global generator, which the search loop checkpoints, so a resumed run draws the same samples.
Both sample from α alone: a space's other architecture parameters (PC-DARTS' edge-normalisation β) are not used.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..supernet import Plan
from .base import OPTIMIZERS, accuracy
from .darts import DartsFirstOrder


def gumbel_noise(shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard Gumbel samples, drawn on the CPU (the same stream on every device)."""
    e = torch.empty(shape, dtype=torch.float64).exponential_()
    while (bad := e == 0).any():  # −log(0) = inf
        e[bad] = torch.empty(int(bad.sum()), dtype=torch.float64).exponential_()
    return (-e.log()).to(device=device, dtype=dtype)


def linear_tau(epoch: int, epochs: int, tau_max: float, tau_min: float, reach_min: bool) -> float:
    """τ at `epoch` (0-based), falling linearly from tau_max; with `reach_min` it is tau_min in the last epoch
    (GDAS), otherwise it would be tau_min one epoch after the last (GM-NAS' SNAS). Never below tau_min."""
    span = epochs - 1 if reach_min else epochs
    if span <= 0:
        return tau_max
    return max(tau_min, tau_max - (tau_max - tau_min) * epoch / span)


def _masked_logits(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """α with disabled ops at −inf; an edge with no enabled op keeps finite zeros (its weights are zeroed later)."""
    empty = ~mask.any(dim=1, keepdim=True)
    return torch.where(mask | empty, alpha, torch.full_like(alpha, float("-inf"))).masked_fill(empty, 0.0)


def _zero_empty_rows(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.any(dim=1, keepdim=True), w, torch.zeros_like(w))


def gdas_sample(alpha: torch.Tensor, mask: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GDAS' straight-through weights h (value one-hot, gradient of the soft sample) and the sampled op per edge."""
    logits = _masked_logits(alpha, mask)
    p = torch.softmax((logits.log_softmax(dim=-1) + gumbel_noise(alpha.shape, alpha.device, alpha.dtype)) / tau, -1)
    index = p.argmax(dim=-1)
    hard = torch.zeros_like(p).scatter_(-1, index.unsqueeze(-1), 1.0)
    return _zero_empty_rows(hard - p.detach() + p, mask), index


def snas_sample(alpha: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """SNAS' soft Gumbel-softmax weights over the enabled ops."""
    logits = _masked_logits(alpha, mask)
    w = torch.softmax((logits + gumbel_noise(alpha.shape, alpha.device, alpha.dtype)) / tau, dim=-1)
    return _zero_empty_rows(w, mask)


@dataclass
class GumbelOptions:
    tau_max: float = 1.0
    tau_min: float = 0.03
    tau_reach_min: bool = False  # τ = tau_min in the last epoch (GDAS) or one epoch after it (GM-NAS' SNAS)


class GumbelOptimizer(DartsFirstOrder, abc.ABC):
    """Shared parts: the τ schedule (and its checkpointed position) and the α step on a sampled forward."""

    Options = GumbelOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        o = self.options
        if not 0 < o.tau_min <= o.tau_max:
            raise UserError(f"search.options: need 0 < tau_min <= tau_max, got tau_min={o.tau_min}, "
                            f"tau_max={o.tau_max}")
        self.tau_epoch = 0  # schedule position: epochs completed under this optimizer

    @property
    def tau(self) -> float:
        o = self.options
        return linear_tau(self.tau_epoch, self.cfg.epochs, o.tau_max, o.tau_min, o.tau_reach_min)

    def step(self, train, valid, epoch):
        out = super().step(train, valid, epoch)
        out["tau"] = self.tau
        return out

    def arch_step(self, valid, epoch):
        x, y = valid
        logits = self.sampled_forward(x)
        loss = F.cross_entropy(logits, y)
        alphas = self.supernet.arch_parameters()
        for a, g in zip(alphas, torch.autograd.grad(loss, alphas, allow_unused=True)):
            a.grad = g
        self.a_optimizer.step()
        return {"valid_loss": loss.item(), "valid_acc": accuracy(logits, y)}

    @abc.abstractmethod
    def sampled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """A forward pass whose mixing weights are a fresh sample carrying α's gradient."""

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        self.tau_epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tau_epoch": self.tau_epoch}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.tau_epoch = int(state["tau_epoch"])


@dataclass
class GDASOptions(GumbelOptions):
    tau_max: float = 10.0      # GDAS official NAS-Bench-201 script
    tau_min: float = 0.1
    tau_reach_min: bool = True


@OPTIMIZERS.register("gdas")
class GDAS(GumbelOptimizer):
    Options = GDASOptions

    def sample(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        sn = self.supernet
        return {ct: gdas_sample(sn.alphas[ct], sn.mask(ct), self.tau) for ct in sn.cell_types}

    def train_weights(self) -> dict[str, torch.Tensor]:
        """The hard sample as exact one-hot floats: the plan computes only the sampled op, at weight 1."""
        return {ct: h.detach().round() for ct, (h, _) in self.sample().items()}

    def sampled_forward(self, x):
        plans = {ct: self._plan(h, index, self.supernet.mask(ct)) for ct, (h, index) in self.sample().items()}
        return self.supernet.forward_plans(x, plans)

    def _plan(self, h: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> Plan:
        """Each edge computes its sampled op only, weighted by h_i (which carries the gradient to α)."""
        names, enabled = self.supernet.op_names, mask.any(dim=1).tolist()
        return [[(k, h[e, k])] if enabled[e] and names[k] != "none" else []
                for e, k in enumerate(index.tolist())]


@dataclass
class SNASOptions(GumbelOptions):
    tau_max: float = 1.0       # GM-NAS (its NAS-Bench-201 scripts: tau_min 0.1)
    tau_min: float = 0.03      # GM-NAS DARTS-space scripts
    tau_reach_min: bool = False
    alpha_init_mean: float | None = 1.0  # GM-NAS: α ~ N(1, 0.01); null keeps the space's initialisation
    alpha_init_std: float = 0.01


@OPTIMIZERS.register("snas")
class SNAS(GumbelOptimizer):
    Options = SNASOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        if self.options.alpha_init_mean is not None:
            with torch.no_grad():
                for ct in supernet.cell_types:
                    supernet.alphas[ct].normal_(self.options.alpha_init_mean, self.options.alpha_init_std)

    def sample(self, detach: bool) -> dict[str, torch.Tensor]:
        sn = self.supernet
        return {ct: snas_sample(sn.alphas[ct].detach() if detach else sn.alphas[ct], sn.mask(ct), self.tau)
                for ct in sn.cell_types}

    def train_weights(self) -> dict[str, torch.Tensor]:
        return self.sample(detach=True)

    def sampled_forward(self, x):
        return self.supernet(x, self.sample(detach=False))
