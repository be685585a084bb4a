"""DrNAS (Chen et al., ICLR 2021): the mixing weights of each edge are a random variable, w ~ Dirichlet(β), and the
search learns the concentration β. α holds the unconstrained parameters θ of the paper:

    β = ELU(α) + 1                       (positive; β = 1 at α = 0, the uniform Dirichlet)
    w ~ Dir(β) per edge, drawn afresh for every forward pass, in the weight step and in the α step
    α ← Adam on L_val(w(β)) + λ·‖α‖²/2   (pathwise gradient through the sample; λ = search.a_weight_decay)

The gradient of the sample with respect to β is the implicit reparameterisation of torch's Dirichlet `rsample`. The
anchor regulariser is the official code's `reg_type l2` (its NB201 default): Adam weight decay reg_scale = 1e-3 on α,
pulling β towards 1; it is `search.a_weight_decay`, whose default is that value. Over an edge's enabled ops only:
the full sample is renormalised over them, which is exactly Dir(β restricted to them) (the Dirichlet's aggregation
property); disabled ops get 0. Samples come from torch's global generator on the CPU (the same stream on every
device), which the search loop checkpoints, so a resumed run draws the same samples.

The architecture is the argmax of softmax(α) per edge, as the official `genotype()` derives it; per edge this is also
the argmax of the Dirichlet mean β/Σβ (both grow with α). Selectors read the supernet as they read DARTS' (mixing
weights softmax(α)); the end-of-epoch search-valid evaluation does too (the official `infer` draws a sample).
NB201 defaults of the official 201-space/train_search.py (94.36 on CIFAR-10 test): 100 epochs, batch 64, SGD 0.025
→ 0.001 cosine, momentum 0.9, weight decay 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999); partial channels k = 1.
Not implemented: the progressive learning scheme (partial channels and pruning, DARTS space) and `reg_type kl`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import OPTIMIZERS
from .darts import DartsFirstOrder


def concentration(alpha: torch.Tensor) -> torch.Tensor:
    """β = ELU(α) + 1 (the official mapping)."""
    return F.elu(alpha) + 1.0


def dirichlet_sample(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w ~ Dir(ELU(α) + 1) over each edge's enabled ops, with the pathwise gradient to α; 0 on disabled ops and on
    edges with none enabled."""
    beta = concentration(alpha.cpu().double())
    w = torch.distributions.Dirichlet(beta).rsample().to(alpha)
    w = torch.where(mask, w, torch.zeros_like(w))
    total = w.sum(dim=-1, keepdim=True)
    return w / torch.where(total > 0, total, torch.ones_like(total))


@OPTIMIZERS.register("drnas")
class DrNAS(DartsFirstOrder):
    # α is a Dirichlet concentration, not DARTS' softmax logits: selectors must not take DARTS α steps on it
    alpha_by_gradient = False

    def sample(self, detach: bool) -> dict[str, torch.Tensor]:
        sn = self.supernet
        return {ct: dirichlet_sample(sn.alphas[ct].detach() if detach else sn.alphas[ct], sn.mask(ct))
                for ct in sn.cell_types}

    def train_weights(self) -> dict[str, torch.Tensor]:
        return self.sample(detach=True)

    def arch_step(self, valid, epoch):
        return self.alpha_step(valid, self.sample(detach=False))  # Adam's weight decay is DrNAS' L2 anchor
