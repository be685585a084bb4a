"""Shapley-NAS search (Xiao et al., CVPR 2022): α moved by momentum-averaged, normalised Shapley values, never by
gradient.

Warm-up epochs train the weights only (official: 25 of 50; by default here half of `search.epochs`, as the official
ImageNet script computes it). From then on every epoch starts with one Shapley estimation (scoring/shapley.py) on
the search-validation split and one α update per cell type, then trains the weights for the epoch:

    z = (φ − mean φ) / std φ       over the cell type's whole edges x ops matrix (its enabled ops)
    m ← β·m + (1 − β)·z            β = momentum (0.8); m starts at 1e-3·N(0, 1)
    α ← α + η·m                    η = step_size (0.1)

The final architecture comes from the α's, as usual (the magnitude selector). The momentum is part of the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data import derive_seed
from ..errors import UserError
from ..scoring.cost import Cost
from ..scoring.shapley import ShapleyOptions, batch_source, estimate
from .base import OPTIMIZERS, SearchOptimizer


@dataclass
class ShapleySearchOptions(ShapleyOptions):
    permutations: int = 10             # per epoch (paper: 10)
    batch_size: int = 1024             # images per permutation (paper: 1024)
    warmup_epochs: int | None = None   # weight-only epochs first (paper: 25 of 50; null: half of search.epochs)
    momentum: float = 0.8              # β of the momentum average (paper: 0.8)
    step_size: float = 0.1             # η added to α (paper: 0.1)


def normalised(phi: torch.Tensor, enabled: torch.Tensor) -> torch.Tensor:
    """(φ − mean) / std over the enabled entries (unbiased std, as the official code's torch .std()); 0 elsewhere,
    and 0 everywhere when the values do not vary (nothing to learn from them)."""
    values = phi[enabled]
    z = torch.zeros_like(phi)
    if values.numel() > 1 and float(values.std()) > 0:
        z[enabled] = (values - values.mean()) / values.std()
    return z


@OPTIMIZERS.register("shapley")
class ShapleySearch(SearchOptimizer):
    Options = ShapleySearchOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        o = self.options
        o.check("search.options")
        if not (0.0 <= o.momentum < 1.0) or (o.warmup_epochs is not None and o.warmup_epochs < 0):
            raise UserError(f"search.options: momentum must lie in [0, 1) and warmup_epochs be >= 0, got "
                            f"momentum={o.momentum}, warmup_epochs={o.warmup_epochs}")
        self.warmup = cfg.epochs // 2 if o.warmup_epochs is None else o.warmup_epochs
        self.m = {ct: 1e-3 * torch.randn_like(a.detach()) for ct, a in supernet.alphas.items()}
        self.cost = Cost()

    def start_epoch(self, epoch: int, valid) -> dict[str, float] | None:
        if epoch < self.warmup or self.alpha_frozen:
            return None
        o, net = self.options, self.supernet
        seed = derive_seed(valid.seed, epoch)
        before = self.cost.forward
        est = estimate(net, batch_source(valid, o, seed), o, seed, self.cost)
        phi = est.matrices(net, est.values(o.estimate))
        with torch.no_grad():
            for ct, a in net.alphas.items():
                z = normalised(phi[ct], net.mask(ct).cpu()).to(a)
                self.m[ct] = o.momentum * self.m[ct] + (1.0 - o.momentum) * z
                a.add_(o.step_size * self.m[ct])
        return {"shapley_full_acc": sum(est.full) / len(est.full),
                "shapley_removed": sum(est.removed) / len(est.removed),
                "shapley_forward": float(self.cost.forward - before)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "shapley_momentum": dict(self.m), "shapley_cost": vars(self.cost)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.m = {ct: t.to(self.supernet.alphas[ct]) for ct, t in state["shapley_momentum"].items()}
        self.cost = Cost(**state["shapley_cost"])
