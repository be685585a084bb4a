"""DARTS− (Chu et al., ICLR 2021): first-order DARTS with an auxiliary skip connection on every edge whose
coefficient β decays to zero over the search, so that skip connections no longer win by easing the gradient flow:

    edge output = Σ_k w_k·op_k(x) + β_t·x,   w = softmax(α)
    β_t = skip_beta · (T − t) / T                     (linear, the default; t: epochs done, T = search.epochs)
    β_t = skip_beta · (1 + cos(π t / T)) / 2          (decay: cosine)

On a stride-1 edge, skip_connect *is* x, so β_t·x is β_t added to skip_connect's mixing weight: the optimizer passes
w + β_t·[k = skip_connect] to the supernet in both steps, and the supernet stays as it is. The architecture
is derived from softmax(α) alone, and after the search every selector sees the plain supernet (β = 0), as DARTS−
evaluates. The schedule matches the official `DecayScheduler` (stepped once per epoch; β = 1 in the first epoch and
1/T in the last); its position is the cosine schedule's (epochs completed; checkpointed, inherited by
sub-supernets). The search-valid evaluation at each epoch's end runs the plain supernet too.

NB201 defaults (the paper's: "the same settings as DARTS on NB201"; 93.80 on CIFAR-10 test): 50 epochs, batch 64, SGD
0.025 → 0.001, weight decay 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3; skip_beta 1, linear.
Deviations: on a stride-2 edge (DARTS reduction cells) the official code adds a separate FactorizedReduce as the
auxiliary op, here it is the candidate skip_connect itself (also a FactorizedReduce, its weights shared); an edge whose
skip_connect is masked (a few-shot sub-supernet) gets no auxiliary skip. A space without skip_connect is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import OPTIMIZERS
from .darts import DartsFirstOrder

DECAYS = ("linear", "cosine", "none")


@dataclass
class DartsMinusOptions:
    skip_beta: float = 1.0   # β at the start (official --skip_beta 1.0)
    decay: str = "linear"    # linear | cosine | none (β stays skip_beta: no decay)


def aux_beta(t: int, epochs: int, skip_beta: float, decay: str) -> float:
    """β after t completed epochs of `epochs`."""
    frac = min(t, epochs) / max(epochs, 1)
    if decay == "linear":
        return skip_beta * (1.0 - frac)
    if decay == "cosine":
        return skip_beta * (1.0 + math.cos(math.pi * frac)) / 2.0
    return skip_beta


def with_aux_skip(weights: torch.Tensor, skip: int, beta: float) -> torch.Tensor:
    """Mixing weights with β added to skip_connect's (column `skip`): the edge adds β·x to its output."""
    if beta == 0.0:
        return weights
    return weights + F.one_hot(torch.tensor(skip), weights.shape[1]).to(weights) * beta


@OPTIMIZERS.register("darts-minus")
class DartsMinus(DartsFirstOrder):
    Options = DartsMinusOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        o = self.options
        if o.decay not in DECAYS or not o.skip_beta >= 0:
            raise UserError(f"search.options: decay must be one of {', '.join(DECAYS)} and skip_beta >= 0, got "
                            f"decay={o.decay!r}, skip_beta={o.skip_beta}")
        if "skip_connect" not in supernet.op_names:
            raise UserError("search.optimizer=darts-minus adds an auxiliary skip connection through the space's "
                            "skip_connect op; this space has none")
        self.skip = supernet.op_names.index("skip_connect")

    @property
    def beta(self) -> float:
        return aux_beta(self.scheduler.last_epoch, self.cfg.epochs, self.options.skip_beta, self.options.decay)

    def weights(self, detach: bool) -> dict[str, torch.Tensor]:
        """softmax(α) (masked) plus the auxiliary skip, disabled ops left at 0."""
        beta = self.beta
        return {ct: torch.where(self.supernet.mask(ct), with_aux_skip(w, self.skip, beta), torch.zeros_like(w))
                for ct, w in self.supernet.mixing_weights(detach=detach).items()}

    def train_weights(self) -> dict[str, torch.Tensor]:
        return self.weights(detach=True)

    def arch_step(self, valid, epoch):
        return self.alpha_step(valid, self.weights(detach=False))

    def step(self, train, valid, epoch):
        return {**super().step(train, valid, epoch), "aux_skip": self.beta}
