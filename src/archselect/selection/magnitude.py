"""Magnitude (vanilla DARTS): each edge keeps the op with the largest softmax(α). Costs no forward pass."""
from __future__ import annotations

from .base import Selection, Selector, as_lists, register


@register("magnitude")
class Magnitude(Selector):
    def run(self, ctx):
        weights = ctx.supernet.mixing_weights(detach=True)
        masks = {ct: ctx.supernet.mask(ct) for ct in ctx.supernet.cell_types}
        arch = ctx.space.derive(weights, masks)
        return Selection(self.name, arch, as_lists(weights))
