"""Magnitude (vanilla DARTS): each edge keeps the op with the largest softmax(α). Costs no forward pass."""
from __future__ import annotations

import logging

from .base import Selection, Selector, as_lists, register

log = logging.getLogger(__name__)


@register("magnitude")
class Magnitude(Selector):
    def run(self, ctx):
        optimizer = ctx.optimizer
        if optimizer is not None and not optimizer.trains_alpha:  # e.g. fixed-alpha: every op ties
            log.warning("  magnitude: search.optimizer=%s does not train α, so its magnitudes are its initial values; "
                        "select with %s instead", ctx.search.optimizer, " or ".join(optimizer.recommended_selectors))
        weights = ctx.supernet.mixing_weights(detach=True)
        masks = {ct: ctx.supernet.mask(ct) for ct in ctx.supernet.cell_types}
        arch = ctx.space.derive(weights, masks)
        return Selection(self.name, arch, as_lists(weights))
