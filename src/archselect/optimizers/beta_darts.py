"""β-DARTS (Ye et al., CVPR 2022): first-order DARTS whose α step adds the Beta-Decay regulariser, the smooth maximum
of each edge's α averaged over the edges, with a weight that grows linearly over the search:

    L_β = mean over edges e of log Σ_k exp(α_e,k)          (over the edge's enabled ops)
    α ← Adam on L_val + λ_t · L_β,   λ_t = lambda_max · t / T   (t: epochs done, T = search.epochs)

∂L_β/∂α_e,k = softmax(α_e)_k / E: every α of an edge is pushed down in proportion to its softmax weight, which keeps
α's magnitudes small and their softmax from saturating. With several cell types (DARTS space) L_β is the sum of each
one's mean. λ's position is the cosine schedule's (epochs completed; checkpointed, inherited by sub-supernets).
NB201 defaults of the official nasbench201/train_search.py and its architect (94.36 on CIFAR-10 test): λ = 50 ·
epoch / 100 over 100 epochs (lambda_max 50), batch 64, SGD 0.025 → 0.001, weight decay 3e-4, clip 5; Adam 3e-4,
betas (0.5, 0.999), weight decay 1e-3. Set search.epochs=100 for the paper's run (the optimizer scales λ to
search.epochs, where the official code divides by 100 whatever its epochs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import OPTIMIZERS
from .darts import DartsFirstOrder


@dataclass
class BetaDartsOptions:
    lambda_max: float = 50.0  # λ at the end of the search (official NB201: 50 · epoch / 100)


def beta_loss(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over edges with an enabled op of logsumexp(α) over the enabled ops."""
    rows = mask.any(dim=1)
    return torch.logsumexp(alpha.masked_fill(~mask, float("-inf"))[rows], dim=-1).mean()


@OPTIMIZERS.register("beta-darts")
class BetaDarts(DartsFirstOrder):
    Options = BetaDartsOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        if not self.options.lambda_max >= 0:
            raise UserError(f"search.options.lambda_max must be >= 0, got {self.options.lambda_max}")

    @property
    def weight(self) -> float:
        """λ_t: linear from 0 over search.epochs, t = the epochs completed."""
        return self.options.lambda_max * self.scheduler.last_epoch / max(self.cfg.epochs, 1)

    def arch_step(self, valid, epoch):
        sn = self.supernet
        reg = sum(beta_loss(sn.alphas[ct], sn.mask(ct)) for ct in sn.cell_types)
        return {**self.alpha_step(valid, sn.mixing_weights(), self.weight * reg), "beta_loss": float(reg.detach())}

    def step(self, train, valid, epoch):
        return {**super().step(train, valid, epoch), "beta_weight": self.weight}
