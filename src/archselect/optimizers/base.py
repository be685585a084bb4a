"""The supernet-optimizer contract: one training step of weights (and, for most, architecture parameters).

An optimizer owns its torch optimizers and schedule; the search loop (`loop.py`) owns data, epochs, checkpoints and
logging. A new optimizer is one module with a `register` line and an `Options` dataclass for its own settings.

Under torchrun (see `distributed.py`) each rank holds a slice of every batch: `weight_step` averages the weight
gradients over the ranks before clipping, and every other torch optimizer held as an attribute (the α optimizers)
averages its gradients right before each step. A subclass that overrides `weight_step`, or updates parameters
without a torch optimizer, calls `distributed.average_gradients` itself (a no-op in a single process).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..config import SearchConfig, build
from ..registry import Registry
from ..supernet import Supernet

OPTIMIZERS: Registry = Registry("search optimizer")


@dataclass
class NoOptions:
    pass


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


class SearchOptimizer:
    """Shared parts: SGD with cosine schedule for the weights, gradient clipping, state for checkpoints.
    Subclasses implement `arch_step` (or leave α alone)."""

    Options: type = NoOptions
    # Capabilities, read by the stages that come after the search (never a table of optimizer names):
    trains_alpha = True               # moves α; when False, α's magnitudes are its initial values
    alpha_by_gradient = False         # moves α by DARTS gradient steps (DARTS-PT keeps stepping α while fine-tuning)
    recommended_selectors: tuple[str, ...] = ()  # where α is untrained: the selectors that fit this optimizer


    def __init__(self, supernet: Supernet, cfg: SearchConfig, steps_per_epoch: int):
        self.supernet, self.cfg = supernet, cfg
        self.options = build(self.Options, cfg.options, "search.options")
        self.steps_per_epoch = steps_per_epoch
        self.alpha_frozen = False  # freeze_alpha(): weights only (few-shot warm-up)
        self.w_optimizer = torch.optim.SGD(supernet.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                           weight_decay=cfg.w_weight_decay, nesterov=cfg.w_nesterov)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, T_max=max(cfg.epochs, 1),
                                                                    eta_min=cfg.w_lr_min)

    # -- one step --------------------------------------------------------------------------------------------------
    def step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
             epoch: int) -> dict[str, float]:
        self.supernet.train()
        for opt in vars(self).values():  # α gradients averaged over the ranks before each α step (torchrun only)
            if isinstance(opt, torch.optim.Optimizer) and opt is not self.w_optimizer:
                distributed.sync_optimizer_gradients(opt)
        with self.autocast():
            out = {} if self.alpha_frozen else (self.arch_step(valid, epoch) or {})
            out.update(self.weight_step(train))
        return out

    def autocast(self) -> torch.autocast:
        """bf16 autocast over the step when `search.bf16` is set (convolutions and matmuls in bf16, weights,
        gradients and optimizer state stay fp32); a no-op context otherwise."""
        device = next(self.supernet.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def arch_step(self, valid, epoch: int) -> dict[str, float] | None:
        return None

    def valid_batch_index(self, epoch: int, step: int, batches: int) -> int | None:
        """Which of the epoch's `batches` search-valid batches the next `step` reads (for its α step), or None if it
        reads none: the loop then draws none (ImageNet batches are decoded from files). DARTS pairs weight step k
        with batch k mod `batches`. Batches are pure functions of (seed, epoch, index), so skipping one changes no
        other."""
        return step % batches if self.trains_alpha and not self.alpha_frozen else None

    def freeze_alpha(self) -> None:
        """Train the weights only from now on (not checkpointed: whoever freezes does so after every restore)."""
        self.alpha_frozen = True

    def start_epoch(self, epoch: int, valid) -> dict[str, float] | None:
        """Called by the loop before the first step of each epoch with the search-valid loader (Shapley-NAS
        estimates and updates α here); what it returns goes into the epoch's metrics record."""
        return None

    def weight_step(self, train) -> dict[str, float]:
        x, y = train
        self.w_optimizer.zero_grad(set_to_none=True)
        logits = self.supernet(x, self.train_weights())
        loss = self.weight_loss(logits, y)
        loss.backward()
        distributed.average_gradients(self.supernet.weight_parameters())  # before clipping: the global-batch norm
        grad_norm = nn.utils.clip_grad_norm_(self.supernet.weight_parameters(), self.cfg.grad_clip)
        self.w_optimizer.step()
        return {"train_loss": loss.item(), "train_acc": accuracy(logits, y), "grad_norm": float(grad_norm)}

    def weight_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The weight step's training loss (ProxylessNAS smooths the labels)."""
        return F.cross_entropy(logits, y)

    def train_weights(self) -> dict[str, torch.Tensor]:
        """Mixing weights for the weight step (no gradient to α). Sampling optimizers override this."""
        return self.supernet.mixing_weights(detach=True)

    def evaluation(self, train) -> tuple[nn.Module, dict[str, torch.Tensor] | None]:
        """What the end-of-epoch search-valid evaluation runs: a model and its mixing weights (None: its own,
        softmax(α)). Here the supernet itself; Once-for-All evaluates its full network with recalibrated BN (a
        copy), for which it gets the search-train loader `train`."""
        return self.supernet, None

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    # -- checkpoint state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"w_optimizer": self.w_optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def apply_hyperparameters(self) -> list[str]:
        """After `load_state_dict`: make the torch optimizers and the schedule follow `self.cfg` wherever it differs
        from the checkpointed settings (a `--resume` that lowers a learning rate). The weight lr continues on the
        cosine schedule of the new `w_lr`/`w_lr_min` from the current epoch. Unchanged settings are left untouched,
        so a plain resume stays bit-identical. Returns the settings changed."""
        c = self.cfg
        changed = self.apply_schedule()
        wanted = {"momentum": c.w_momentum, "weight_decay": c.w_weight_decay, "nesterov": c.w_nesterov}
        changed += _set_groups(self.w_optimizer, wanted)
        a_opt = getattr(self, "a_optimizer", None)
        if isinstance(a_opt, torch.optim.Adam):
            wanted = {"lr": c.a_lr, "betas": (c.a_beta1, c.a_beta2), "weight_decay": c.a_weight_decay}
            changed += [f"a_{k}" for k in _set_groups(a_opt, wanted)]
        return sorted(set(changed))

    def apply_schedule(self) -> list[str]:
        """The weight lr part of `apply_hyperparameters`: continue on the cosine schedule of the config's
        `w_lr`/`w_lr_min` from the current epoch when they changed."""
        c, changed = self.cfg, []
        sched = self.scheduler
        if list(sched.base_lrs) != [c.w_lr] * len(sched.base_lrs) or sched.eta_min != c.w_lr_min:
            changed += ["w_lr", "w_lr_min"]
            t = min(max(sched.last_epoch, 0), sched.T_max)
            lr = c.w_lr_min + (c.w_lr - c.w_lr_min) * (1 + math.cos(math.pi * t / sched.T_max)) / 2
            sched.base_lrs, sched.eta_min = [c.w_lr] * len(sched.base_lrs), c.w_lr_min
            sched._last_lr = [lr] * len(sched.base_lrs)
            for g in self.w_optimizer.param_groups:
                g["lr"], g["initial_lr"] = lr, c.w_lr
        return changed


def _set_groups(optimizer: torch.optim.Optimizer, wanted: dict[str, Any]) -> list[str]:
    changed = []
    for g in optimizer.param_groups:
        for k, v in wanted.items():
            current = tuple(g[k]) if isinstance(g.get(k), (list, tuple)) else g.get(k)
            if current != v:
                g[k] = v
                changed.append(k)
    return changed
