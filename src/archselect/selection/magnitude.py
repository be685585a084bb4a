"""Magnitude (vanilla DARTS): each edge keeps the op with the largest softmax(α). Costs no forward pass."""
from __future__ import annotations

from .base import Selection, Selector, as_lists, register

# Optimizers that never move α: magnitude would read its initial values (fixed-alpha: exact ties).
ALPHA_UNTRAINED = {"fixed-alpha": "perturbation or shapley", "rsps": "random-paths"}


@register("magnitude")
class Magnitude(Selector):
    def run(self, ctx):
        optimizer = getattr(ctx.search, "optimizer", None)
        if optimizer in ALPHA_UNTRAINED:
            ctx.log(f"  magnitude: search.optimizer={optimizer} does not train α, so its magnitudes are its initial "
                    f"values; select with {ALPHA_UNTRAINED[optimizer]} instead")
        weights = ctx.supernet.mixing_weights(detach=True)
        masks = {ct: ctx.supernet.mask(ct) for ct in ctx.supernet.cell_types}
        arch = ctx.space.derive(weights, masks)
        return Selection(self.name, arch, as_lists(weights))
