"""Sub-network search on a MobileNet supernet, as Once-for-All specialises its trained network: draw sub-networks
over the elastic dimensions (a depth per stage, a kernel and an expansion per layer; spaces/subnets.py), measure each
one, keep the best that fits the FLOPs limit.

Each candidate is measured as OFA measures a sub-network: its BN statistics recalibrated on `bn_batches` search-train
batches run through it (scoring/bn_calibration.py), then its accuracy on `valid_batches` search-valid batches with
those statistics. This happens on one private copy of the supernet, so the shared supernet stays unchanged.

- `method: evolution` is OFA's evolutionary search: a random population under the limit; each generation keeps the
  best `parents` share, breeds `mutation_ratio` x population children by mutation (each gene redrawn with
  `mutation_prob`) and the rest of a population's worth by crossover, and the next generation chooses among parents
  and children. Paper scale: population 100, 500 generations. OFA ranks candidates with its accuracy predictor
  (an MLP trained on 16K measured sub-networks); here every candidate is measured (a measured sub-network is never
  measured twice), so the defaults are a small proxy. The result is the best sub-network ever measured (OFA reports
  the best parent of its last generation, which never sees its last children).
- `method: random`: `samples` distinct sub-networks drawn uniformly under the limit; the best is kept.

FLOPs are multiply-accumulates of one image at the search data's size (spaces/mobilenet_macs.py). The sets drawn from
default to those the supernet was trained on: the last phase of an `ofa` search, or the whole space. Draws come
from a generator seeded by the run's seed; progress is checkpointed after each generation (every `chunk` samples in
random search) and a new call on the same work directory resumes it.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import logs
from ..config import check_rules
from ..data import derive_seed
from ..errors import UserError
from ..scoring.bn_calibration import recalibrate_bn
from ..scoring.cost import Cost
from ..scoring.evaluator import take_batches
from ..spaces.mobilenet_macs import mobilenet_macs
from ..spaces.subnets import Choices, Genes
from .base import Selection, Selector, register
from .progress import Progress, fingerprint

log = logging.getLogger(__name__)

SEED_SALT = 0x0FA
METHODS = ("evolution", "random")


@dataclass
class OFASearchOptions:
    method: str = "evolution"        # evolution | random
    population: int = 16             # evolution (OFA: 100)
    generations: int = 4             # evolution (OFA: 500)
    parents: float = 0.25            # share of the population kept as parents (OFA)
    mutation_prob: float = 0.1       # per gene (OFA)
    mutation_ratio: float = 0.5      # children by mutation, as a share of the population (OFA); the rest crossover
    samples: int = 50                # random: distinct sub-networks measured
    chunk: int = 10                  # random: checkpoint every this many measured
    max_mflops: float | None = None  # FLOPs limit (MACs of one image at the data's size, millions); null: none
    bn_batches: int = 2              # search-train batches recalibrating BN per candidate (OFA: 2000 images); 0: keep
                                     # the supernet's running statistics (shared by all sub-networks)
    valid_batches: int | None = 2    # search-valid batches per candidate (OFA: its 10K held-out images); null: all
    kernels: list[int] | None = None     # null: as trained (the last ofa phase), else the whole space
    expansions: list[int] | None = None
    depths: list[int] | None = None      # layers kept per stage (min(d, layers)); null: as trained / any
    max_draws: int = 1000            # draws to find one sub-network under the limit

    def check(self, prefix: str) -> None:
        check_rules(self, prefix, [
            (self.method in METHODS, "method", f"one of {', '.join(METHODS)}"),
            (self.population >= 2, "population", "at least 2"), (self.generations >= 0, "generations", ">= 0"),
            (0 < self.parents <= 1, "parents", "in (0, 1]"),
            (0 <= self.mutation_prob <= 1, "mutation_prob", "in [0, 1]"),
            (0 <= self.mutation_ratio <= 1, "mutation_ratio", "in [0, 1]"), (self.samples >= 1, "samples", ">= 1"),
            (self.chunk >= 1, "chunk", ">= 1"), (self.max_mflops is None or self.max_mflops > 0, "max_mflops", "> 0"),
            (self.bn_batches >= 0, "bn_batches", ">= 0"),
            (self.valid_batches is None or self.valid_batches >= 1, "valid_batches", ">= 1 (or null: all)"),
            (self.max_draws >= 1, "max_draws", ">= 1")])


@dataclass(frozen=True)
class Measured:
    accuracy: float
    loss: float
    mflops: float


class Measure:
    """Recalibrate and measure sub-networks on a private copy of the supernet; each one once (memo)."""

    def __init__(self, ctx, choices: Choices, o: OFASearchOptions, cost: Cost):
        self.net, self.choices, self.cost = copy.deepcopy(ctx.supernet), choices, cost
        self.train = take_batches(ctx.train, o.bn_batches)
        self.valid = take_batches(ctx.valid, o.valid_batches)
        x = self.valid[0][0]
        lay, classes = ctx.space.layout, ctx.space.num_classes
        self.mflops: Callable[[Genes], float] = lambda g: mobilenet_macs(
            lay, choices.stages(g), x.shape[1], tuple(x.shape[-2:]), classes) / 1e6
        self.device = x.device
        self.memo: dict[tuple, Measured] = {}

    @torch.no_grad()
    def __call__(self, genes: Genes) -> Measured:
        if genes.key() not in self.memo:
            weights = self.choices.weights(genes, self.device)
            if self.train:
                recalibrate_bn(self.net, weights, self.train, self.cost)
            self.net.eval()
            correct = count = 0
            loss = 0.0
            for x, y in self.valid:
                logits = self.net(x, weights)
                self.cost.count(x.shape[0])
                correct += int((logits.argmax(1) == y).sum())
                count += y.numel()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
            self.memo[genes.key()] = Measured(correct / count, loss / count, self.mflops(genes))
            logs.tick()
        return self.memo[genes.key()]

    def rank(self, population: list[Genes]) -> list[Genes]:
        """Best first: higher accuracy, then lower loss; stable otherwise."""
        return sorted(population, key=lambda g: (-self(g).accuracy, self(g).loss))


def search_choices(ctx, o: OFASearchOptions) -> Choices:
    """The sets to draw from: the options', else the trained ones (an ofa search's last phase), else the space's."""
    trained = getattr(ctx.optimizer, "final_sets", None)
    sets = list(trained(ctx.search)) if trained is not None and ctx.search is not None else [None, None, None]
    own = [o.kernels, o.expansions, o.depths]
    return Choices.of(ctx.supernet, *[mine if mine is not None else t for mine, t in zip(own, sets)])


class Drawer:
    """Sub-networks under the FLOPs limit, from one seeded generator."""

    def __init__(self, choices: Choices, measure: Measure, o: OFASearchOptions, generator: torch.Generator):
        self.choices, self.measure, self.o, self.g = choices, measure, o, generator
        self.limit = math.inf if o.max_mflops is None else o.max_mflops
        smallest = measure.mflops(choices.smallest())
        if smallest > self.limit:
            raise UserError(f"select.options.ofa-search.max_mflops={o.max_mflops}: the smallest sub-network needs "
                            f"{smallest:.2f} MFLOPs")

    def fits(self, genes: Genes) -> bool:
        return self.measure.mflops(genes) <= self.limit

    def sample(self) -> Genes:
        for _ in range(self.o.max_draws):
            genes = self.choices.sample(self.g)
            if self.fits(genes):
                return genes
        raise UserError(f"no sub-network under max_mflops={self.o.max_mflops} in {self.o.max_draws} draws "
                        f"(raise select.options.ofa-search.max_mflops or max_draws)")

    def mutate(self, parent: Genes) -> Genes:
        return self._first_fit(lambda: self.choices.mutate(parent, self.o.mutation_prob, self.g), parent)

    def crossover(self, a: Genes, b: Genes) -> Genes:
        return self._first_fit(lambda: self.choices.crossover(a, b, self.g), a)

    def _first_fit(self, draw: Callable[[], Genes], fallback: Genes) -> Genes:
        for _ in range(self.o.max_draws):
            genes = draw()
            if self.fits(genes):
                return genes
        return fallback  # the parent fits; a child never found one in max_draws tries

    def parent(self, parents: list[Genes]) -> Genes:
        return parents[int(torch.randint(len(parents), (), generator=self.g))]


@register("ofa-search")
class OFASearch(Selector):
    Options = OFASearchOptions
    ties_matter = False  # the architecture is the best sub-network measured, not an argmax of the scores

    def run(self, ctx) -> Selection:
        if getattr(ctx.space, "name", None) != "mobilenet":
            raise UserError("the ofa-search selector searches MobileNet sub-networks: use it on space.name=mobilenet")
        o, cost = self.options, Cost()
        choices = search_choices(ctx, o)
        measure = Measure(ctx, choices, o, cost)
        generator = torch.Generator().manual_seed(derive_seed(ctx.seed, SEED_SALT))
        drawer = Drawer(choices, measure, o, generator)
        progress = Progress(ctx.workdir, self.name, fingerprint(ctx.supernet, o, ctx.seed))
        state = self._restore(progress.load(), measure, choices, generator, cost)
        if o.method == "evolution":
            history = self._evolve(drawer, state, lambda s: self._save(progress, s, measure, choices, generator, cost))
        else:
            history = self._random(drawer, state, lambda s: self._save(progress, s, measure, choices, generator, cost))
        progress.clear()
        return self._selection(ctx, measure, choices, history)

    # -- the two searches ------------------------------------------------------------------------------------------
    def _evolve(self, drawer: Drawer, state: dict, save) -> list[float]:
        o, measure = self.options, drawer.measure
        n_parents = max(1, int(round(o.parents * o.population)))
        n_mutated = int(round(o.mutation_ratio * o.population))
        population = state.get("population") or [drawer.sample() for _ in range(o.population)]
        history, start = state.get("history", []), state.get("generation", 0)
        with logs.Progress(self.name, o.generations, "generation", done=start) as progress:
            if not state:
                measure.rank(population)
                save({"population": population, "history": history, "generation": 0})
            for generation in range(start, o.generations):
                parents = measure.rank(population)[:n_parents]
                history.append(measure(parents[0]).accuracy)
                children = [drawer.mutate(drawer.parent(parents)) for _ in range(n_mutated)]
                children += [drawer.crossover(drawer.parent(parents), drawer.parent(parents))
                             for _ in range(o.population - n_mutated)]
                population = parents + children
                measure.rank(children)
                save({"population": population, "history": history, "generation": generation + 1})
                log.info(f"  ofa-search: generation {generation + 1}/{o.generations}, best parent "
                         f"{logs.percent(history[-1])}, {len(measure.memo)} sub-networks measured")
                progress.update()
        return history

    def _random(self, drawer: Drawer, state: dict, save) -> list[float]:
        o, measure = self.options, drawer.measure
        draws = state.get("draws", 0)
        with logs.Progress(self.name, o.samples, "sub-network", done=len(measure.memo)) as progress:
            while len(measure.memo) < o.samples and draws < o.samples * o.max_draws:
                genes, draws = drawer.sample(), draws + 1
                if genes.key() in measure.memo:
                    continue
                measure(genes)
                progress.update()
                if len(measure.memo) % o.chunk == 0:
                    save({"draws": draws})
        return []

    # -- progress --------------------------------------------------------------------------------------------------
    @staticmethod
    def _save(progress: Progress, state: dict, measure: Measure, choices: Choices, generator: torch.Generator,
              cost: Cost) -> None:
        memo = [[list(map(list, key)), m.accuracy, m.loss, m.mflops] for key, m in measure.memo.items()]
        saved = {**state, "memo": memo, "generator": generator.get_state(), "cost": vars(cost)}
        if "population" in state:
            saved["population"] = [choices.to_list(g) for g in state["population"]]
        progress.save(len(memo), saved)

    @staticmethod
    def _restore(saved: dict | None, measure: Measure, choices: Choices, generator: torch.Generator,
                 cost: Cost) -> dict:
        if saved is None:
            return {}
        for key, accuracy, loss, mflops in saved["memo"]:
            measure.memo[choices.from_list(key).key()] = Measured(float(accuracy), float(loss), float(mflops))
        generator.set_state(saved["generator"])
        for k, v in saved["cost"].items():
            setattr(cost, k, v)
        state = {k: saved[k] for k in ("history", "generation", "draws") if k in saved}
        if "population" in saved:
            state["population"] = [choices.from_list(g) for g in saved["population"]]
        log.info(f"  resuming ofa-search with {len(measure.memo)} sub-networks measured")
        return state

    # -- the result --------------------------------------------------------------------------------------------------
    def _selection(self, ctx, measure: Measure, choices: Choices, history: list[float]) -> Selection:
        order = list(measure.memo)
        best_key = min(order, key=lambda k: (-measure.memo[k].accuracy, measure.memo[k].loss, order.index(k)))
        best = Genes(*best_key)
        scores, counts = self._op_means(measure, choices)
        m = measure.memo[best_key]
        log.info(f"  ofa-search: best of {len(order)} sub-networks: {logs.percent(m.accuracy)}, {m.mflops:.2f} MFLOPs")
        details = {"method": self.options.method, "measured": len(order), "best_accuracy": m.accuracy,
                   "best_loss": m.loss, "best_mflops": m.mflops, "max_mflops": self.options.max_mflops,
                   "history": history, "genes": choices.to_list(best), "counts": counts,
                   "largest_mflops": measure.mflops(choices.largest()),
                   "smallest_mflops": measure.mflops(choices.smallest())}
        return Selection(self.name, choices.architecture(best), scores, cost=measure.cost, details=details)

    @staticmethod
    def _op_means(measure: Measure, choices: Choices) -> tuple[dict, dict]:
        """Per (layer, op): the mean accuracy of the measured sub-networks that use it (0 where none did)."""
        sums, counts = {}, {}
        for key, m in measure.memo.items():
            for ct, w in choices.weights(Genes(*key)).items():
                sums[ct] = sums.get(ct, torch.zeros_like(w, dtype=torch.float64)) + m.accuracy * w
                counts[ct] = counts.get(ct, torch.zeros_like(w, dtype=torch.float64)) + w
        means = {ct: (sums[ct] / counts[ct].clamp(min=1)).tolist() for ct in sums}
        return means, {ct: c.long().tolist() for ct, c in counts.items()}
