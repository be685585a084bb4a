"""First-order DARTS: alternate one Adam step on α (validation batch) with one SGD step on the weights (train batch).

Defaults follow the NAS-Bench-201 / DARTS-PT settings: Adam lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.
The α step asks autograd for the gradient of α alone, so no weight gradients are computed for it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import OPTIMIZERS, SearchOptimizer, accuracy


@OPTIMIZERS.register("darts")
class DartsFirstOrder(SearchOptimizer):
    alpha_by_gradient = True

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        self.a_optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                                            weight_decay=cfg.a_weight_decay)

    def arch_step(self, valid, epoch):
        return self.alpha_step(valid, self.supernet.mixing_weights())

    def alpha_step(self, valid, weights: dict[str, torch.Tensor], regulariser: torch.Tensor | None = None
                   ) -> dict[str, float]:
        """One Adam step on α from the validation loss with mixing weights `weights` (a function of α: softmax for
        DARTS, a Dirichlet sample for DrNAS, ...), plus `regulariser` (a scalar function of α) when given."""
        x, y = valid
        alphas = self.supernet.arch_parameters()
        logits = self.supernet(x, weights)
        loss = F.cross_entropy(logits, y)
        total = loss if regulariser is None else loss + regulariser
        grads = torch.autograd.grad(total, alphas, allow_unused=True, materialize_grads=True)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.a_optimizer.step()
        return {"valid_loss": loss.item(), "valid_acc": accuracy(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "a_optimizer": self.a_optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.a_optimizer.load_state_dict(state["a_optimizer"])
