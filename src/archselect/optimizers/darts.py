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
        x, y = valid
        alphas = self.supernet.arch_parameters()
        logits = self.supernet(x, self.supernet.mixing_weights())
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, alphas)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.a_optimizer.step()
        return {"valid_loss": loss.item(), "valid_acc": accuracy(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "a_optimizer": self.a_optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.a_optimizer.load_state_dict(state["a_optimizer"])
