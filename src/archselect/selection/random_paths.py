"""Best of random paths: evaluate distinct random one-hot paths of the supernet on the search-validation data and
keep the most accurate one.

This is how RSPS derives its architecture (Li & Talwalkar's random search with weight sharing, as NAS-Bench-201 and
GM-NAS run it: GM-NAS evaluates 200 distinct paths on the whole validation half). A supernet trained by
`search.optimizer=rsps` never moves α, so `magnitude` has nothing to read there: use this selector. It also serves as
a baseline on any supernet.

The architecture is the best path itself, not an argmax of the scores. As scores, each (edge, op) gets the mean
accuracy of the sampled paths that use it (0 where no path did; `details.counts` says how many did), a cheap view of
which ops the supernet favours.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import logs
from ..config import check_rules
from ..data import derive_seed
from ..scoring.cost import Cost
from ..scoring.evaluator import EvaluatorOptions, take_batches
from ..spaces.sampling import sample_path
from .base import Selection, Selector, register

log = logging.getLogger(__name__)

SEED_SALT = 0x5A7


@dataclass
class RandomPathsOptions(EvaluatorOptions):
    samples: int = 200                # distinct paths evaluated (GM-NAS: 200; NAS-Bench-201's RSPS: 100)
    connected: bool = True            # redraw paths with no route from input to output avoiding `none` (GM-NAS)
    valid_batches: int | None = 4     # scoring batches of the search-valid split (paper: all of it, null)
    max_draws: int = 50               # give up after samples x max_draws draws (a tiny space has few paths)

    def check(self, prefix: str) -> None:
        rules = [
            (self.samples >= 1, "samples", "at least 1"),
            (self.valid_batches is None or self.valid_batches >= 1, "valid_batches", "at least 1 (or null: all)"),
            (self.max_draws >= 1, "max_draws", "at least 1"),
        ]
        self.check_evaluator(prefix)
        check_rules(self, prefix, rules)


@register("random-paths")
class RandomPaths(Selector):
    Options = RandomPathsOptions
    ties_matter = False  # the architecture is the best path, not an argmax of the (per-op mean) scores

    def run(self, ctx) -> Selection:
        opts, net = self.options, ctx.supernet
        cost = Cost()
        source = opts.scoring_source(ctx.valid, ctx.train, ctx.seed)
        paths = list(self._distinct_paths(ctx))
        if opts.draw == "fresh":  # each path on its own seeded pass (keyed by its index), its own evaluator
            outcomes = [opts.make_evaluator(net, opts.candidate_batches(source, opts.valid_batches, SEED_SALT, i),
                                            cost)(w) for i, w in enumerate(paths)]
        else:
            outcomes = self._evaluate(opts.make_evaluator(net, take_batches(source, opts.valid_batches), cost), paths)
        tried = [(o.accuracy, o.loss, w) for o, w in zip(outcomes, paths)]
        log.info(f"  random-paths: {len(tried)} distinct paths, accuracy {logs.percent(min(t[0] for t in tried))} "
                 f"to {logs.percent(max(t[0] for t in tried))}")
        best = max(range(len(tried)), key=lambda i: (tried[i][0], -tried[i][1], -i))  # ties: lower loss, then first
        masks = {ct: net.mask(ct) for ct in net.cell_types}
        arch = ctx.space.derive(tried[best][2], masks)
        scores, counts = self._op_means(tried)
        return Selection(self.name, arch, scores, cost=cost,
                         details={"paths": len(tried), "best_accuracy": tried[best][0], "best_loss": tried[best][1],
                                  "counts": counts})

    @staticmethod
    def _evaluate(evaluate, paths: list) -> list:
        """Outcomes of `paths`, a few stacks at a time so that progress (and its ETA) shows; the same outcomes."""
        chunk = 4 * max(evaluate.stack, 1)
        with logs.Progress("random-paths", len(paths), "path") as progress:
            out = []
            for i in range(0, len(paths), chunk):
                out += evaluate.many(paths[i:i + chunk])
                progress.update(len(paths[i:i + chunk]))
        return out

    def _distinct_paths(self, ctx):
        """Up to `samples` distinct paths, drawn from a generator seeded by the run's seed (the global one is left
        as it was)."""
        seen = set()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, SEED_SALT))
            for _ in range(self.options.samples * self.options.max_draws):
                weights = sample_path(ctx.supernet, self.options.connected)
                key = tuple(tuple(w.argmax(dim=1).tolist()) for w in weights.values())
                if key not in seen:
                    seen.add(key)
                    yield weights
                    if len(seen) == self.options.samples:
                        return

    @staticmethod
    def _op_means(tried) -> tuple[dict[str, list[list[float]]], dict[str, list[list[int]]]]:
        sums, counts = {}, {}
        for accuracy, _, weights in tried:
            for ct, w in weights.items():
                w = w.detach().cpu()
                sums[ct] = sums.get(ct, torch.zeros_like(w, dtype=torch.float64)) + accuracy * w
                counts[ct] = counts.get(ct, torch.zeros_like(w, dtype=torch.float64)) + w
        means = {ct: (sums[ct] / counts[ct].clamp(min=1)).tolist() for ct in sums}
        return means, {ct: c.long().tolist() for ct, c in counts.items()}
