"""Shapley-NAS (Xiao et al., CVPR 2022) as a selector: each edge keeps the op with the largest estimated Shapley value.

The game, its players and the Monte-Carlo estimate live in scoring/shapley.py (the search optimizer of the same name
uses them too); this module adds resumable progress and the derivation.
"""
from __future__ import annotations

import logging
import torch

from .. import logs
from ..environment import rng_state, set_rng_state
from ..scoring.cost import Cost
from ..scoring.shapley import Permutation, ShapleyOptions, batch_source, estimate, rows_wanted
from .base import Selection, Selector, as_lists, register
from .progress import Progress, fingerprint

log = logging.getLogger(__name__)


# -- the selector -----------------------------------------------------------------------------------------------------

@register("shapley")
class ShapleySelector(Selector):
    """Each edge keeps the op with the largest estimated Shapley value (the space's usual derivation rule on these
    scores). Checkpoints after every round of rows (permutations, pairs or kernel batches; one per worker of
    `ctx.workers`); a new call on the same work directory resumes, with any number of workers."""

    Options = ShapleyOptions

    def run(self, ctx) -> Selection:
        o, net = self.options, ctx.supernet
        unit = {"antithetic": "pair", "kernel": "batch"}.get(o.estimator, "permutation")
        progress = Progress(ctx.workdir, self.name, fingerprint(net, o, ctx.seed))
        saved = progress.load()
        cost, done = Cost(), []
        if saved is not None:
            cost = Cost(**saved["cost"])
            done = [Permutation(c, f, r) for c, f, r in
                    zip(saved["contributions"].tolist(), saved["full"], saved["removed"])]
            set_rng_state(saved["rng"])
            log.info(f"  resuming {self.name} after {len(done)} of {rows_wanted(o)} {unit}s")

        def checkpoint(rows: list[Permutation]) -> None:
            log.info(f"  {unit} {len(rows)}/{rows_wanted(o)}: full accuracy {logs.percent(rows[-1].full)}, "
                     f"{rows[-1].removed} {'coalitions' if o.estimator == 'kernel' else 'players removed'}")
            contributions = torch.tensor([r.contributions for r in rows], dtype=torch.float64)
            progress.save(len(rows), {"contributions": contributions, "full": [r.full for r in rows],
                                      "removed": [r.removed for r in rows], "cost": vars(cost), "rng": rng_state()})
            permutations.update(len(rows) - permutations.count)

        with logs.Progress(self.name, rows_wanted(o), unit, done=len(done)) as permutations:
            est = estimate(net, batch_source(ctx.valid, o, ctx.seed, getattr(ctx.train, "cutout", 0)), o, ctx.seed, cost, done, checkpoint,
                           ctx.workers, ctx.space)
        progress.clear()
        scores = est.matrices(net, est.values(o.estimate))
        stderr = est.stderr()
        masks = {ct: net.mask(ct) for ct in net.cell_types}
        arch = ctx.space.derive({ct: s.float() for ct, s in scores.items()}, masks)
        rows = len(est.full)
        details = {"estimate": o.estimate, "estimator": o.estimator, "players": len(est.players),
                   "permutations": {"antithetic": 2 * rows, "kernel": 0}.get(o.estimator, rows),
                   "full_accuracy": est.full, "removed": est.removed, "resumed_after": len(done),
                   **({"batches": rows, "coalitions": est.removed[0]} if o.estimator == "kernel" else {})}
        return Selection(self.name, arch, as_lists(scores),
                         as_lists(est.matrices(net, stderr)) if stderr is not None else None, cost, details)
