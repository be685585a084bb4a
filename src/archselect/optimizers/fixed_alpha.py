"""The fixed-α supernet ("blank" in DARTS-PT): only the weights train, under a uniform mixture of the enabled ops.

DARTS-PT found that selecting by perturbation on such a supernet beats trained α. By default α is set to zero at the
start (an exactly uniform mixture); `keep_init: true` keeps the 1e-3·N(0,1) initialisation as the official code does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import OPTIMIZERS, SearchOptimizer


@dataclass
class FixedAlphaOptions:
    keep_init: bool = False


@OPTIMIZERS.register("fixed-alpha")
class FixedAlpha(SearchOptimizer):
    Options = FixedAlphaOptions
    trains_alpha = False
    recommended_selectors = ("perturbation", "shapley")

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        if not self.options.keep_init:
            with torch.no_grad():
                for a in supernet.arch_parameters():
                    a.zero_()
