"""The Shapley value of each candidate op on a supernet (Shapley-NAS, Xiao et al., CVPR 2022): the game and its
Monte-Carlo estimate, shared by the `shapley` selector and the `shapley` search optimizer.

Players are the enabled (cell type, edge, op) triples. The value of a coalition S is the supernet's validation accuracy
(a fraction) when the mixing weights of every op outside S are set to 0, the others keeping softmax(α), with no
renormalisation. It is estimated by Monte-Carlo permutation sampling in "removal" order, as the official code does:
start from the full supernet, remove the players of a random permutation one at a time (cumulatively); a player's
marginal contribution is the accuracy before its removal minus the accuracy after. A permutation is truncated once
the accuracy falls below `threshold` x the full accuracy; the players it did not reach get 0 for that permutation.

Each permutation is scored on a fresh batch (`draw: fresh`, the default; official: 1024 images from the validation
half), or on a fixed set of batches (`draw: fixed`; `fixed_valid: true` is the older spelling of the same). The estimate is the mean over permutations (the paper's estimator) or, with
`estimate: mean-std`, the mean minus the population standard deviation (what the official code computes).

Four estimators (`estimator`), each a mean of rows, one row per batch j (independent rows, except `stratified`'s),
so that workers, resume and the standard error treat them alike:
  permutation  (the paper's) one permutation π_j per row;
  antithetic   a pair per row: π_j and its reverse, on the same batch, averaged;
  kernel       unbiased KernelSHAP with paired sampling (Covert & Lee, AISTATS 2021; KernelSHAP-NAS): `coalitions`
               coalitions drawn from the Shapley kernel, each with its complement; the row is the constrained weighted
               least-squares solution with the kernel's exact Gram matrix (`kernel_row`);
  stratified   one permutation per row, as `permutation`, but the M permutations are drawn together so that each
               player's removal time is stratified over them (Latin hypercube keys, `stratified_permutation`).

Packing (`pack`): rows are generators of the coalitions they need next (`row_steps`), so `pack` rows can advance
together, the next coalition of each on its own batch, all in one pass (`MaskedEvaluator.packed`). The values are
those of scoring each row alone, bit for bit on a CPU; what changes is the passes: 8 rows of 32 images take the
passes of one row of 256. Small batches are where the estimate gains (docs/selectors.md §3), so packing is what makes
the selector's default of 80 permutations of 32 images cost, per pass, what 10 of 256 cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Generator, Hashable, Sequence

import torch

from .. import distributed
from ..config import check_rules
from ..data import Loader, derive_seed
from ..supernet import Supernet
from .cost import Cost
from .evaluator import EvaluatorOptions, MaskedEvaluator, rebatch, take_batches
from .workers import Workers

Player = tuple[str, int, int]  # (cell type, edge, op index)
ESTIMATES = ("mean", "mean-std")
ESTIMATORS = ("permutation", "antithetic", "kernel", "stratified")
PACKED_ROWS = 4  # rows per place in a packed pass, per unit of work (`unit_starts`)
PACK_IMAGES = 256  # images of a packed pass with `pack: null` (a CPU runs batches of 256 at its best speed per image)


@dataclass
class ShapleyOptions(EvaluatorOptions):
    # The selector's default spends the images of 10 permutations of 256 on 80 of 32, 8 of them to a pass of 256
    # images: a row's variance is mostly the permutation's, not the batch's, so at equal images, and at equal passes
    # once packed, the estimate is ~5x less noisy (docs/selectors.md §3)
    permutations: int = 80        # Monte-Carlo permutations (paper: 10)
    threshold: float = 0.5        # truncate once accuracy < threshold x full accuracy (paper: 0.5; 0: never)
    batch_size: int | None = 32   # images per batch (paper: 1024; null: the split's)
    batches: int = 1              # batches per permutation (paper: 1)
    draw: str = "fresh"           # fresh: new batches per permutation (paper) | fixed: the same first batches for all
    fixed_valid: bool = False     # older spelling of draw: fixed (true wins over draw)
    estimate: str = "mean"        # mean (paper) | mean-std (the official code)
    estimator: str = "permutation"  # permutation (paper) | antithetic | kernel | stratified (the module's docstring)
    coalitions: int = 0           # kernel: coalitions per batch, in complementary pairs (0: the even count >= players)
    pack: int | None = None       # rows advanced together, their coalitions sharing a pass, each on its own batch
                                  # (null: as many as fill PACK_IMAGES images, 8 of 32; 1: no packing)

    @property
    def rows_per_pass(self) -> int:
        if self.pack is not None:
            return self.pack
        return max(1, PACK_IMAGES // self.batch_size) if self.batch_size else 1

    @property
    def fixed(self) -> bool:
        return self.fixed_valid or self.draw == "fixed"

    def check(self, prefix: str) -> None:
        self.check_evaluator(prefix)
        pairs = self.estimator != "antithetic" or self.permutations % 2 == 0
        check_rules(self, prefix, [(self.permutations >= 1 and pairs, "permutations",
                                    "at least 1 (antithetic: an even number)"),
                                   (self.estimator in ESTIMATORS, "estimator", f"one of {', '.join(ESTIMATORS)}"),
                                   (self.coalitions >= 0 and self.coalitions % 2 == 0, "coalitions",
                                    "an even number >= 0"),
                                   (self.batches >= 1, "batches", "at least 1"),
                                   (self.pack is None or self.pack >= 1, "pack", "at least 1 (or null)"),
                                   (self.estimate in ESTIMATES, "estimate", f"one of {', '.join(ESTIMATES)}")])


# -- cooperative games ------------------------------------------------------------------------------------------------

def exact_shapley(value_fn: Callable[[frozenset], float], players: Sequence[Hashable]) -> dict[Hashable, float]:
    """Brute force over all 2^n coalitions: φ_i = Σ_{S ⊆ P∖{i}} |S|!(n−|S|−1)!/n! · (v(S∪{i}) − v(S))."""
    n = len(players)
    value = {frozenset(c): value_fn(frozenset(c)) for r in range(n + 1) for c in combinations(players, r)}
    weight = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    return {i: sum(weight[len(S)] * (value[S | {i}] - v) for S, v in value.items() if i not in S) for i in players}


@dataclass
class Permutation:
    contributions: list[float]  # per player; 0 for players the truncation did not reach
    full: float                 # value of the grand coalition
    removed: int                # players removed before truncation


# A row is scored by a generator that yields the coalitions whose values it needs next (lists of presence flags) and
# is sent their values, until it returns its Permutation: so that rows can be advanced together, several rows'
# coalitions sharing a pass (`pack`), or one at a time through `drive`.
Steps = Generator[list[list[bool]], list[float], Permutation]
Values = Callable[[list[list[bool]]], list[float]]


def drive(steps: Steps, values: Values) -> Permutation:
    """Run `steps` to its end, answering each request with values(coalitions)."""
    try:
        request = next(steps)
        while True:
            request = steps.send(values(request))
    except StopIteration as done:
        return done.value


def removal_contributions(values: Values, n: int, order: Sequence[int], threshold: float,
                          ahead: int = 1) -> Permutation:
    """One permutation in removal order: values(coalitions) are the values with exactly the players flagged present."""
    return drive(removal_steps(n, order, threshold, ahead), values)


def removal_steps(n: int, order: Sequence[int], threshold: float, ahead: int = 1) -> Steps:
    """`removal_contributions` as steps. `ahead` coalitions of the sequence are asked for at once (stacked in one
    pass): those past a truncation are computed but not used, so the contributions are those of asking one at a
    time."""
    sequence = [[True] * n]
    for p in order:
        sequence.append(sequence[-1].copy())
        sequence[-1][p] = False
    contributions = [0.0] * n
    full, removed, start = None, 0, 0
    while start < len(sequence):
        values = yield sequence[start:start + ahead]
        for i, value in enumerate(values, start):
            if i == 0:
                full = before = value
                continue
            contributions[order[i - 1]] = before - value
            before, removed = value, removed + 1
            if value < threshold * full:
                return Permutation(contributions, full, removed)
        start += ahead
    return Permutation(contributions, full, removed)


def permutation(n: int, seed: int, j: int) -> list[int]:
    """Permutation j of n players: a pure function of (seed, j), so a resumed estimate draws the same ones."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, 0x5A, j))).tolist()


def stratified_permutation(n: int, seed: int, j: int, rows: int) -> list[int]:
    """Row j of `rows` jointly drawn permutations of n players, a pure function of (seed, j, rows). A uniform random
    permutation is the order of n independent uniform keys; here player i's keys over the rows form a Latin hypercube
    sample (one key in each interval [r/rows, (r+1)/rows)), so every player is removed early in as many rows as late,
    instead of a binomial count of them, and truncation cuts each player off in about the same share of rows. Each
    row alone is still a uniform random permutation (a key is uniform and independent of the other players' keys),
    so the mean stays unbiased; the rows are negatively correlated, so std/√rows overstates its standard error."""
    shared = torch.Generator().manual_seed(derive_seed(seed, 0x5D, rows))
    stratum = [int(torch.randperm(rows, generator=shared)[j]) for _ in range(n)]
    jitter = torch.rand(n, generator=torch.Generator().manual_seed(derive_seed(seed, 0x5E, j)), dtype=torch.float64)
    keys = (torch.tensor(stratum, dtype=torch.float64) + jitter) / rows
    return torch.argsort(keys).tolist()


def antithetic_contributions(values: Values, n: int, order: Sequence[int], threshold: float,
                             ahead: int = 1) -> Permutation:
    """A permutation and its reverse on the same values, averaged: a player removed late in one is removed early in
    the other, so the pair's errors partly cancel. `removed` counts both."""
    return drive(antithetic_steps(n, order, threshold, ahead), values)


def antithetic_steps(n: int, order: Sequence[int], threshold: float, ahead: int = 1) -> Steps:
    one = yield from removal_steps(n, order, threshold, ahead)
    back = yield from removal_steps(n, list(reversed(order)), threshold, ahead)
    return Permutation([(a + b) / 2 for a, b in zip(one.contributions, back.contributions)], one.full,
                       one.removed + back.removed)


# -- KernelSHAP -------------------------------------------------------------------------------------------------------

def kernel_sizes(n: int) -> torch.Tensor:
    """Probability of each coalition size s = 1 … n−1 under the Shapley kernel: ∝ (n−1) / (s (n−s))."""
    s = torch.arange(1, n, dtype=torch.float64)
    q = 1.0 / (s * (n - s))
    return q / q.sum()


def kernel_coalitions(n: int, seed: int, j: int, count: int) -> list[list[bool]]:
    """Block j's `count` coalitions, a pure function of (seed, j): count/2 drawn from the Shapley kernel (a size, then
    a uniform subset of that size), each followed by its complement (paired sampling)."""
    g = torch.Generator().manual_seed(derive_seed(seed, 0x5C, j))
    out = []
    for s in (torch.multinomial(kernel_sizes(n), count // 2, replacement=True, generator=g) + 1).tolist():
        z = [False] * n
        for p in torch.randperm(n, generator=g)[:s].tolist():
            z[p] = True
        out += [z, [not p for p in z]]
    return out


def kernel_row(coalitions: Sequence[Sequence[bool]], values: Sequence[float], empty: float, full: float,
               weights: Sequence[float] | None = None) -> list[float]:
    """KernelSHAP: φ = argmin E_z[(v(z) − v(∅) − zᵀφ)²] subject to Σφ = v(N) − v(∅), z drawn from the Shapley kernel.
    Its exact Gram matrix E[zzᵀ] is a·I + c·11ᵀ (E[z_i] = 1/2, c = E[z_i z_k] for i ≠ k), and the Lagrangian
    solution is φ = (b − mean b) / a + (v(N) − v(∅)) / n with b = E[z (v(z) − v(∅))]. Only b is estimated: the
    weighted mean over `coalitions` (`weights` = their probabilities; None: drawn, equal weights). Linear in b, so
    the rows of several batches average to the estimate over all of them, unbiased."""
    n = len(coalitions[0])
    z = torch.tensor(coalitions, dtype=torch.float64)
    w = torch.full((len(z),), 1.0 / len(z), dtype=torch.float64) if weights is None else \
        torch.tensor(weights, dtype=torch.float64)
    b = (w * (torch.tensor(values, dtype=torch.float64) - empty)) @ z
    s = torch.arange(1, n, dtype=torch.float64)
    a = 0.5 - float((kernel_sizes(n) * s * (s - 1)).sum()) / (n * (n - 1))
    return ((b - b.mean()) / a + (full - empty) / n).tolist()


def row_steps(n: int, opts: "ShapleyOptions", seed: int, j: int, ahead: int = 1) -> Steps:
    """Row j of `opts.estimator` (see the module's docstring), as steps. For kernel, `full` is v(N) and `removed` the
    number of coalitions."""
    if opts.estimator == "kernel":
        coalitions = kernel_coalitions(n, seed, j, opts.coalitions or n + n % 2)
        full, empty, *rest = yield [[True] * n, [False] * n, *coalitions]
        return Permutation(kernel_row(coalitions, rest, empty, full), full, len(coalitions))
    if opts.estimator == "stratified":
        return (yield from removal_steps(n, stratified_permutation(n, seed, j, opts.permutations), opts.threshold,
                                         ahead))
    steps = antithetic_steps if opts.estimator == "antithetic" else removal_steps
    return (yield from steps(n, permutation(n, seed, j), opts.threshold, ahead))


def score_row(values: Values, n: int, opts: "ShapleyOptions", seed: int, j: int, ahead: int = 1) -> Permutation:
    """Row j of `opts.estimator`, with values(coalitions) the values of coalitions."""
    return drive(row_steps(n, opts, seed, j, ahead), values)


def rows_wanted(opts: "ShapleyOptions") -> int:
    """Rows the estimate averages: `permutations` permutations, their pairs (antithetic) or batches (kernel)."""
    return opts.permutations // 2 if opts.estimator == "antithetic" else opts.permutations


# -- the supernet game ------------------------------------------------------------------------------------------------

def players_of(supernet: Supernet) -> list[Player]:
    return [(ct, e, k) for ct in supernet.cell_types for e, k in supernet.mask(ct).nonzero().tolist()]


def without(base: dict[str, torch.Tensor], players: Sequence[Player],
            present: Sequence[bool]) -> dict[str, torch.Tensor]:
    """Mixing weights with every absent player's weight set to 0 (no renormalisation)."""
    w = {ct: t.clone() for ct, t in base.items()}
    for (ct, e, k), keep in zip(players, present):
        if not keep:
            w[ct][e, k] = 0.0
    return w


@dataclass
class ShapleyEstimate:
    players: list[Player]
    contributions: torch.Tensor  # rows x players (float64): permutations, pairs or kernel batches
    full: list[float]            # full-supernet accuracy per row
    removed: list[int]           # players removed per row before truncation (kernel: coalitions)

    def values(self, estimate: str = "mean") -> torch.Tensor:
        mean = self.contributions.mean(0)
        # mean − std uses the population std (numpy's default in the official code)
        return mean - self.contributions.std(0, unbiased=False) if estimate == "mean-std" else mean

    def stderr(self) -> torch.Tensor | None:
        m = self.contributions.shape[0]
        return self.contributions.std(0, unbiased=True) / math.sqrt(m) if m > 1 else None

    def matrices(self, supernet: Supernet, per_player: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per cell type, edges x ops; ops that are not players (disabled) get 0."""
        out = {ct: torch.zeros(len(supernet.edges[ct]), len(supernet.op_names), dtype=torch.float64)
               for ct in supernet.cell_types}
        for (ct, e, k), v in zip(self.players, per_player.tolist()):
            out[ct][e, k] = v
        return out


def batch_source(valid: Loader, opts: ShapleyOptions, seed: int, cutout: int = 0) -> Loader:
    """The images of `valid` in batches of `opts.batch_size`: a seeded shuffled stream (fresh batches per permutation)
    or, fixed, the split in storage order; `augment`: with the training augmentation (and `cutout`)."""
    fixed = opts.fixed
    return rebatch(valid, opts.batch_size or valid.batch_size, seed=derive_seed(seed, 0x5B), shuffle=not fixed,
                   drop_last=not fixed, augment=opts.augment, cutout=cutout if opts.augment else 0)


Item = tuple[int, "list | None"]  # a row j and its batches (None: the game's fixed batches)


def score_permutations(supernet: Supernet, game: dict, units: list[list[Item]]) -> list[tuple[list[Permutation], Cost]]:
    """Each unit of rows of `game` (players, base weights, options, seed): its rows and the Cost of scoring them.
    Each row has its own evaluator, and its contributions depend on (seed, j) and its batches alone; `pack` rows of a
    unit advance together, their next coalitions sharing a pass, a finished row's place taken by the unit's next
    row. A unit's Cost depends on its rows alone, however the units are shared out or resumed."""
    return [_score_unit(supernet, game, unit) for unit in units]


@dataclass
class _Row:
    index: int                           # in its unit
    ev: MaskedEvaluator                  # on the row's batches
    steps: Steps
    asked: list[dict[str, torch.Tensor]]  # the mixing weights of the coalitions whose values it waits for


def _score_unit(supernet: Supernet, game: dict, unit: list[Item]) -> tuple[list[Permutation], Cost]:
    players, base, opts = game["players"], game["base"], game["opts"]
    cost, waiting, rows, active = Cost(), list(enumerate(unit)), {}, []

    def weights(coalitions: list[list[bool]]) -> list[dict[str, torch.Tensor]]:
        return [without(base, players, present) for present in coalitions]

    def answer(row: _Row, values: list[float]) -> bool:
        """Send the row its values, then those its evaluator already knows (removing `none` changes nothing),
        so that a pass holds only coalitions that need one; False once the row has returned."""
        try:
            while values is not None:
                row.asked = weights(row.steps.send(values))
                known = row.ev.known(row.asked)
                values = None if known is None else [o.accuracy for o in known]
        except StopIteration as done:
            rows[row.index] = done.value
            return False
        return True

    while waiting or active:
        while waiting and len(active) < opts.rows_per_pass:
            i, (j, batches) = waiting.pop(0)
            ev = opts.make_evaluator(supernet, game["batches"] if batches is None else batches, cost)
            steps = row_steps(len(players), opts, game["seed"], j, ev.stack)
            active.append(_Row(i, ev, steps, weights(next(steps))))
        outcomes = iter(MaskedEvaluator.packed([(row.ev, w) for row in active for w in row.asked], opts.rows_per_pass))
        active = [row for row in active if answer(row, [next(outcomes).accuracy for _ in row.asked])]
    return [rows[i] for i in range(len(unit))], cost


def unit_starts(opts: ShapleyOptions) -> list[int]:
    """Where each unit of work starts (a unit is what one worker scores at a time, and a checkpoint's grain): every
    row, or with packing near-equal units of about PACKED_ROWS rows per place in a pass, so that the places stay
    filled until a unit's last rows."""
    wanted = rows_wanted(opts)
    pack = opts.rows_per_pass
    units = wanted if pack == 1 else math.ceil(wanted / (PACKED_ROWS * pack))
    return [k * wanted // units for k in range(units)]


def estimate(supernet: Supernet, source: Loader, opts: ShapleyOptions, seed: int, cost: Cost,
             done: Sequence[Permutation] = (), after: Callable[[list[Permutation]], None] | None = None,
             workers: Workers | None = None, space=None) -> ShapleyEstimate:
    """Monte-Carlo Shapley values of `supernet`'s enabled ops on batches of `source` (see `batch_source`). `done` are
    rows already scored (a resume). The rows are scored in units (`unit_starts`). With `workers` (and the `space` that
    rebuilds the supernet on them) in rounds of one unit per worker, `after(all rows so far)` called after each
    round (a checkpoint); without, in one round shared out over the ranks under torchrun (the search mode: every
    rank runs this). Either way the rows, and the passes added to `cost`, are those of one process scoring them in
    turn."""
    players = players_of(supernet)
    game = {"players": players, "base": supernet.mixing_weights(detach=True), "opts": opts, "seed": seed,
            "batches": take_batches(source, opts.batches) if opts.fixed else None}
    rows, wanted = list(done), rows_wanted(opts)
    bounds = [*unit_starts(opts), wanted]

    def unit(start: int) -> list[Item]:  # from `start` to the next unit's start
        stop = next(k for k in bounds if k > start)
        return [(j, None if opts.fixed else fresh_batches(source, j, opts.batches)) for j in range(start, stop)]

    while len(rows) < wanted:
        starts = [len(rows), *(k for k in bounds[:-1] if k > len(rows))]
        if workers is None:
            scored = distributed.rank_map(lambda k: score_permutations(supernet, game, [unit(k)])[0], starts)
        else:
            scored = workers.map(score_permutations, [unit(k) for k in starts[:workers.count]], supernet, space, game)
        for unit_rows, spent in scored:
            rows.extend(unit_rows)
            cost.add(spent)
        if after is not None:
            after(rows)
    contributions = torch.tensor([r.contributions for r in rows], dtype=torch.float64).reshape(len(rows), len(players))
    return ShapleyEstimate(players, contributions, [r.full for r in rows], [r.removed for r in rows])


def fresh_batches(source: Loader, j: int, count: int):
    """Batches j·count … (j+1)·count − 1 of the shuffled stream, epoch after epoch: new images per permutation."""
    n = len(source)
    return [source.batch(g // n, g % n) for g in range(j * count, (j + 1) * count)]
