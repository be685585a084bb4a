"""Accuracy and loss of a supernet under many mixing-weight settings, on a fixed list of validation batches.

Perturbation (DARTS-PT) and Shapley-NAS both ask the same question hundreds of times: how accurate is the supernet
with these mixing weights? `MaskedEvaluator` answers it with levers that never change the answer (a test checks
torch.equal against `NaiveEvaluator`, which recomputes the whole supernet with every op, as the official code does):

- memo: the outcome is a pure function of the per-edge plans (which ops run, with which weights), the batches and the
  parameters. Removing `none` or an op whose weight is already 0 leaves the plans unchanged, so it costs nothing;
- prefix cache: the state entering layer i depends only on the weights of the cell types that layers < i read. It is
  kept per batch and reused when those weights are unchanged (e.g. perturbing the reduce cell of a DARTS supernet
  skips every layer before the first reduction cell; on NAS-Bench-201, with one cell type, only the stem is saved);
- op cache: inside the first cell of a cell type (supernets with `reusable_ops`), each op output depends only on that
  cell's input, the plans of the edges into its source node and the nodes before it, and its own (op, weight). It is
  kept per batch, so an evaluation that changes edge (i -> j) recomputes only the ops reading node j or later nodes:
  on NAS-Bench-201, where one α drives all cells, this first cell is where the reuse is (60% of a C=16 N=1 forward);
- plans: ops with zero weight are not computed at all (the supernet's own planning).

- stacking (option `stack`, off by default): several settings in one pass, their copies of the batch stacked along
  the batch dimension (stacking.py). For accelerators: on CPU, larger batches run slower per image.
- packing (`MaskedEvaluator.packed`; Shapley's `pack`): settings of several evaluators in one pass, each on its own
  evaluator's batch, stacked the same way: one pass of 8 x 32 different images costs what one batch of 256 does.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import logs
from ..config import check_rules
from ..data import Loader, derive_seed
from ..errors import UserError
from ..spaces.mixed import Terms
from ..spaces.ops import stacked
from ..supernet import Plan, Supernet
from . import stacking
from .cost import Cost
from .stacking import StackedFan

BN_MODES = ("train", "eval")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Outcome:
    correct: int
    count: int
    loss_sum: float

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)


def check_bn_mode(mode: str, key: str) -> str:
    if mode not in BN_MODES:
        raise UserError(f"{key}: choose one of {', '.join(BN_MODES)}, got {mode!r}")
    return mode


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Every module in eval mode; with mode 'train' BatchNorm normalises by batch statistics *without* touching its
    running statistics (track_running_stats off for the duration). Flags are restored afterwards."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    model.eval()
    if mode == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def take_batches(loader: Loader, limit: int | None = None, epoch: int = 0) -> list[Batch]:
    """The first `limit` batches (all when None) of `loader`'s epoch `epoch`."""
    n = len(loader) if limit is None else min(limit, len(loader))
    return [loader.batch(epoch, k) for k in range(n)]


def rebatch(loader: Loader, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool = False,
            augment: bool = False, cutout: int = 0) -> Loader:
    """A loader over the same images (same size, device and layout) with another batch size and order, unaugmented
    unless `augment` (archselect's Loader, or a TensorLoader of the caller's own batches)."""
    return loader.rebatch(batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, augment=augment,
                          cutout=cutout)


def _tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _tensors(s)]
    return []


def _plan_key(plan: Plan) -> tuple:
    return tuple(tuple((k, float(w)) for k, w in edge) for edge in plan)


def plans_key(plans: dict[str, Plan], cell_types: Sequence[str]) -> tuple:
    """Hashable form of the plans of `cell_types` (equal keys: equal outcomes of the layers that read them)."""
    return tuple(_plan_key(plans[ct]) for ct in cell_types)


class MaskedEvaluator:
    """Outcome of `supernet` under given mixing weights on `batches`, with BN in `bn` mode; counts passes in `cost`.

    The memo and cache assume the supernet's parameters do not change while this evaluator is in use: build a new
    one (or call `reset`) after training the supernet.
    """

    def __init__(self, supernet: Supernet, batches: Sequence[Batch], *, bn: str = "train", cost: Cost | None = None,
                 cache_mb: float = 1024.0, stack: int = 1):
        self.supernet, self.batches = supernet, list(batches)
        self.bn = check_bn_mode(bn, "bn")
        self.cost = cost if cost is not None else Cost()
        self.cache_bytes = int(cache_mb * 2**20)
        # settings per pass (stacking.py): cells must take a fan, and no op may draw random numbers
        self.can_stack = supernet.fan is not None and "noise" not in supernet.op_names
        self.stack = stack if self.can_stack else 1
        self.layers_run = 0  # layers computed, a finer cost measure than whole forward passes
        self.ops_reused = 0  # op outputs taken from the op cache
        self._prefix = self._prefix_cell_types()
        self._op_cache = supernet.reusable_ops and self.cache_bytes > 0
        self.reset()

    def reset(self) -> None:
        self._memo: dict[tuple, Outcome] = {}
        # key (batch, layer, prefix plans) -> (state, its tensors' version counters, bytes, evaluation last used in)
        self._cache: OrderedDict[tuple, tuple[Any, list[int], list[int], int]] = OrderedDict()
        self._storages: dict[int, list[int]] = {}  # storage address -> [bytes, entries holding it]
        self._cached = 0
        self._evaluation = 0

    def _prefix_cell_types(self) -> dict[int, tuple[str, ...]]:
        """Boundaries worth caching at (layer 0 and each cell type's first layer) -> the cell types read before."""
        net, seen, out = self.supernet, [], {0: ()}
        for i in range(net.num_layers):
            ct = net.layer_cell_type(i)
            if ct is not None and ct not in seen:
                out[i] = tuple(seen)
                seen.append(ct)
        return out

    # -- public ----------------------------------------------------------------------------------------------------
    def __call__(self, weights: dict[str, torch.Tensor]) -> Outcome:
        return self.many([weights])[0]

    def many(self, settings: Sequence[dict[str, torch.Tensor]]) -> list[Outcome]:
        """The outcome of each weight setting; new ones `stack` to a pass where they can share one (stacking.py)."""
        plans = [self.plans(w) for w in settings]
        keys = [self._memo_key(p) for p in plans]
        new: dict[tuple, dict[str, Plan]] = {}
        for key, p in zip(keys, plans):
            if key not in self._memo:
                new.setdefault(key, p)
        todo = list(new.items())
        for group in stacking.groups([p for _, p in todo], self.stack):
            self._evaluate([todo[i] for i in group])
        return [self._memo[key] for key in keys]

    def known(self, settings: Sequence[dict[str, torch.Tensor]]) -> list[Outcome] | None:
        """The outcomes of `settings` if every one is already in the memo (no pass), else None."""
        keys = [self._memo_key(self.plans(w)) for w in settings]
        return [self._memo[k] for k in keys] if all(k in self._memo for k in keys) else None

    @staticmethod
    def packed(requests: Sequence[tuple["MaskedEvaluator", dict[str, torch.Tensor]]], most: int) -> list[Outcome]:
        """The outcome of each (evaluator, weight setting) pair, as that evaluator's `many` gives it; but where the
        evaluators differ, up to `most` new settings share one pass, each on its own evaluator's batches (packing:
        slices of different images, where stacking repeats one batch). With `most` 1, each evaluator's `many`."""
        if most <= 1 or not requests[0][0].can_stack:
            per = {}
            for ev, w in requests:
                per.setdefault(id(ev), (ev, []))[1].append(w)
            found = {i: iter(ev.many(ws)) for i, (ev, ws) in per.items()}
            return [next(found[id(ev)]) for ev, _ in requests]
        keyed = [(ev, ev._memo_key(p), p) for ev, p in ((ev, ev.plans(w)) for ev, w in requests)]
        todo = list({(id(ev), key): (ev, key, p) for ev, key, p in keyed if key not in ev._memo}.values())
        for group in _packs(todo, most):
            MaskedEvaluator._evaluate_packed(group)
        return [ev._memo[key] for ev, key, _ in keyed]

    @staticmethod
    def _evaluate_packed(group: list[tuple["MaskedEvaluator", tuple, dict[str, Plan]]]) -> None:
        """`packed` for one group: a pass per batch index, each setting on its evaluator's batch of that index, the
        layers up to the first cell (the first cell too, with the op cache) through that evaluator's caches and the
        rest stacked. A group that runs out of accelerator memory is split in two and retried."""
        if len({id(ev) for ev, _, _ in group}) == 1:
            group[0][0]._evaluate([(key, p) for _, key, p in group])
            return
        first, sums = group[0][0], [[0, 0, 0.0] for _ in group]
        counted = [(ev.cost.forward, ev.cost.images, ev.cost.passes) for ev, _, _ in group]
        net = first.supernet
        split = next(i for i in range(net.num_layers) if net.layer_cell_type(i) is not None) + first._op_cache
        for ev in {id(ev): ev for ev, _, _ in group}.values():
            ev._evaluation += 1
        try:
            with first._mode():
                for b in range(len(first.batches)):
                    states = []
                    for k, (ev, _, p) in enumerate(group):
                        ev.cost.count(ev.batches[b][0].shape[0], passes=int(k == 0))
                        states.append(ev._layers(b, ev.batches[b][0], p, split))
                    logits = first._stacked_tail(stacking.concat(states), [p for _, _, p in group], split)
                    for acc, part, (ev, _, _) in zip(sums, logits.chunk(len(group)), group):
                        y = ev.batches[b][1]
                        acc[0] += int((part.argmax(1) == y).sum())
                        acc[1] += y.numel()
                        acc[2] += float(F.cross_entropy(part, y, reduction="sum"))
                    logs.tick()
        except torch.OutOfMemoryError:
            for (ev, _, _), (forward, images, passes) in zip(group, counted):
                ev.cost.forward, ev.cost.images, ev.cost.passes = forward, images, passes
            half = (len(group) + 1) // 2
            MaskedEvaluator._evaluate_packed(group[:half])
            MaskedEvaluator._evaluate_packed(group[half:])
            return
        for (ev, key, _), (correct, count, loss) in zip(group, sums):
            ev._memo[key] = Outcome(correct, count, loss)

    def _memo_key(self, plans: dict[str, Plan]) -> tuple:
        return plans_key(plans, self.supernet.cell_types)

    def _evaluate(self, group: list[tuple[tuple, dict[str, Plan]]]) -> None:
        """Outcomes of the settings of `group` ((memo key, plans) pairs), into the memo: one pass per batch. A stack
        that runs out of accelerator memory is split in two and retried."""
        sums = [[0, 0, 0.0] for _ in group]
        self._evaluation += 1
        counted = self.cost.forward, self.cost.images, self.cost.passes
        try:
            with self._mode():
                for b, (x, y) in enumerate(self.batches):
                    logits = (self._logits(b, x, group[0][1]) if len(group) == 1
                              else self._stacked_logits(b, x, [p for _, p in group]))
                    for acc, part in zip(sums, logits.chunk(len(group))):
                        acc[0] += int((part.argmax(1) == y).sum())
                        acc[1] += y.numel()
                        acc[2] += float(F.cross_entropy(part, y, reduction="sum"))
                    logs.tick()  # a sign of life for whatever long loop evaluates
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise
            self.cost.forward, self.cost.images, self.cost.passes = counted
            half = (len(group) + 1) // 2
            self.stack = min(self.stack, half)
            self._evaluate(group[:half])
            self._evaluate(group[half:])
            return
        for (key, _), (correct, count, loss) in zip(group, sums):
            self._memo[key] = Outcome(correct, count, loss)

    def logits(self, weights: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        """Logits of batch b (for tests and inspection)."""
        self._evaluation += 1
        with self._mode():
            return self._logits(b, self.batches[b][0], self.plans(weights))

    def plans(self, weights: dict[str, torch.Tensor]) -> dict[str, Plan]:
        return self.supernet.plans({ct: w.detach() for ct, w in weights.items()})

    # -- internals -------------------------------------------------------------------------------------------------
    @contextmanager
    def _mode(self):
        with torch.no_grad(), bn_mode(self.supernet, self.bn):
            yield

    def _logits(self, b: int, x: torch.Tensor, plans: dict[str, Plan]) -> torch.Tensor:
        net = self.supernet
        self.cost.count(x.shape[0])
        return net.head(self._layers(b, x, plans, net.num_layers))

    def _layers(self, b: int, x: torch.Tensor, plans: dict[str, Plan], stop: int) -> Any:
        """The state entering layer `stop` for batch b (x) under `plans`, through the caches."""
        net = self.supernet
        start, state = self._lookup(b, plans, stop)
        if state is None:
            state = net.stem(x)
        for i in range(start, stop):
            if i not in self._prefix:
                state = net.run_layer(i, state, plans)
            else:
                key = self._key(b, i, plans)
                self._store(key, state)
                ct = net.layer_cell_type(i)
                if self._op_cache and ct is not None:
                    state = net.run_layer(i, state, plans, fan=_CachedFan(self, key, net.edges[ct], plans[ct]))
                else:
                    state = net.run_layer(i, state, plans)
            self.layers_run += 1
        if start < stop < net.num_layers and stop in self._prefix:  # where stacked settings part ways
            self._store(self._key(b, stop, plans), state)
        return state

    def _stacked_logits(self, b: int, x: torch.Tensor, group: list[dict[str, Plan]]) -> torch.Tensor:
        """Logits of batch b under each setting of `group`, concatenated: the layers before the first one whose
        weights differ run once, as for one setting (caches included); with the op cache, that first layer runs
        per setting through it; the rest run on the stacked batch."""
        net, n = self.supernet, len(group)
        differ = {ct for ct in net.cell_types if any(p[ct] != group[0][ct] for p in group)}
        split = next(i for i in range(net.num_layers) if net.layer_cell_type(i) in differ)
        for k in range(n):
            self.cost.count(x.shape[0], passes=int(k == 0))
        if self._op_cache:
            return self._stacked_tail(stacking.concat([self._layers(b, x, p, split + 1) for p in group]), group,
                                      split + 1)
        return self._stacked_tail(stacking.concat([self._layers(b, x, group[0], split)] * n), group, split)

    def _stacked_tail(self, state: Any, group: list[dict[str, Plan]], start: int) -> torch.Tensor:
        """Layers `start`… and the head on `state`, the stacked states of `group`'s settings (equal slices): the
        union of their ops, each zeroed in the slices of the settings that lack it."""
        net, n = self.supernet, len(group)
        plans, absent = stacking.union(group)
        batch = _tensors(state)[0].shape[0] // n
        with stacked(n):
            for i in range(start, net.num_layers):
                ct = net.layer_cell_type(i)
                if ct is None:  # a fixed layer (a reduction block): no ops to zero
                    state = net.run_layer(i, state, plans)
                else:
                    state = net.run_layer(i, state, plans, fan=StackedFan(net.fan, net.term_order, absent[ct], batch))
                self.layers_run += n
            return net.head(state)

    def _key(self, b: int, i: int, plans: dict[str, Plan]) -> tuple:
        return (b, i, plans_key(plans, self._prefix[i]))

    def _lookup(self, b: int, plans: dict[str, Plan], stop: int) -> tuple[int, Any]:
        """The deepest cached state of batch b entering a layer <= stop whose prefix weights equal those of `plans`.
        Valid in both BN modes: a prefix state is computed from this batch alone, with no running statistics touched
        and no randomness, by layers that read none of the weights that differ. A state whose tensors were changed
        in place since it was stored (their version counters moved) is dropped rather than trusted."""
        for i in sorted((i for i in self._prefix if i <= stop), reverse=True):
            state = self._get(self._key(b, i, plans))
            if state is not None:
                return i, state
        return 0, None

    def _get(self, key: tuple) -> Any:
        """The cached value under `key` (marked as used now), or None."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        value, versions, storages, _ = entry
        if [t._version for t in _tensors(value)] != versions:
            self._drop(key)
            return None
        self._cache[key] = (value, versions, storages, self._evaluation)
        self._cache.move_to_end(key)
        return value

    def _store(self, key: tuple, value: Any) -> None:
        """Least recently used first out, but never an entry of the current evaluation: evaluations sweep the batches
        in order, so when not all fit, keeping the first ones hits every time where plain LRU would never hit. Memory
        is counted per storage, once however many entries view it (convolution outputs are slices of one tensor)."""
        tensors = _tensors(value)
        storages = list({t.untyped_storage().data_ptr(): t for t in tensors}.items())

        def new_bytes() -> int:  # what storing it adds: the storages no cached entry holds yet
            return sum(t.untyped_storage().nbytes() for ptr, t in storages if ptr not in self._storages)

        if key in self._cache or new_bytes() > self.cache_bytes:
            return
        while self._cached + new_bytes() > self.cache_bytes:
            oldest = next(iter(self._cache))
            if self._cache[oldest][3] == self._evaluation:
                return
            self._drop(oldest)
        for ptr, t in storages:
            held = self._storages.setdefault(ptr, [t.untyped_storage().nbytes(), 0])
            self._cached += held[0] if held[1] == 0 else 0
            held[1] += 1
        self._cache[key] = (value, [t._version for t in tensors], [ptr for ptr, _ in storages], self._evaluation)

    def _drop(self, key: tuple) -> None:
        for ptr in self._cache.pop(key)[2]:
            held = self._storages[ptr]
            held[1] -= 1
            if held[1] == 0:
                self._cached -= held[0]
                del self._storages[ptr]


def _packs(todo: list[tuple[MaskedEvaluator, tuple, dict[str, Plan]]], most: int) -> list[list]:
    """`todo` in groups of at most `most` settings that can share a pass, in order within each kind of batches: ops
    of equal weights (`stacking.union`), batches of equal sizes, one supernet in one BN mode."""
    def shape(ev: MaskedEvaluator) -> tuple:
        return id(ev.supernet), ev.bn, ev._op_cache, tuple(x.shape for x, _ in ev.batches)

    out: list[list] = []
    latest: dict[tuple, list] = {}  # per shape, the group being filled
    for item in todo:
        kind = shape(item[0])
        group = latest.get(kind)
        if group is not None and len(group) < most and stacking.union([p for _, _, p in group] + [item[2]]):
            group.append(item)
        else:
            latest[kind] = [item]
            out.append(latest[kind])
    return out


class _CachedFan:
    """The op outputs of one cell, through the evaluator's cache (see the module docstring): a `spaces.mixed.Fan`
    that looks each (node, edge, op, weight) up and computes only the missing ops, in one call of the supernet's own
    fan, so that every edge's terms come out as that fan would give them, in the same order."""

    def __init__(self, evaluator: MaskedEvaluator, input_key: tuple, edges: Sequence[tuple[int, int]], plan: Plan):
        self.ev, self.input_key, self.edges, self.plan = evaluator, input_key, edges, plan

    def __call__(self, src: int, x: torch.Tensor, relu_x, outgoing) -> list[Terms]:
        upstream = tuple(_plan_key([self.plan[e]]) for e, (_, dst) in enumerate(self.edges) if dst <= src)
        node = (self.input_key, src, upstream)
        found, missing = {}, []
        for e, edge, plan in outgoing:
            need = []
            for k, w in plan:
                term = self.ev._get(("op", node, e, k, float(w)))
                if term is None:
                    need.append((k, w))
                else:
                    found[e, k] = term
            missing.append(need)
        self.ev.ops_reused += len(found)
        if any(missing):
            computed = self.ev.supernet.fan(src, x, relu_x, [(e, edge, need) for (e, edge, _), need in
                                                             zip(outgoing, missing)])
            for (e, edge, _), need, terms in zip(outgoing, missing, computed):
                for (k, w), term in zip(self.ev.supernet.term_order(edge, need), terms):
                    found[e, k] = term
                    self.ev._store(("op", node, e, k, float(w)), term)
        return [[found[e, k] for k, _ in self.ev.supernet.term_order(edge, plan)] for e, edge, plan in outgoing]


class NaiveEvaluator(MaskedEvaluator):
    """The reference: every call recomputes the whole supernet with every op of every edge (zero weights included,
    as the official implementations do), no memo, no cache. Same outcomes as MaskedEvaluator, bit for bit."""

    def __init__(self, supernet: Supernet, batches: Sequence[Batch], *, bn: str = "train", cost: Cost | None = None,
                 cache_mb: float = 0.0, stack: int = 1):
        super().__init__(supernet, batches, bn=bn, cost=cost, cache_mb=0.0, stack=1)
        self.can_stack = False  # nor packed: each setting its own pass

    def known(self, settings: Sequence[dict[str, torch.Tensor]]) -> list[Outcome] | None:
        return None  # everything recomputed, every time

    def many(self, settings: Sequence[dict[str, torch.Tensor]]) -> list[Outcome]:
        out = []
        for weights in settings:
            self._memo.clear()
            out.extend(super().many([weights]))
        return out

    def plans(self, weights: dict[str, torch.Tensor]) -> dict[str, Plan]:
        names = self.supernet.op_names
        return {ct: [[(k, float(v)) for k, v in enumerate(row) if names[k] != "none"]
                     for row in weights[ct].detach().tolist()] for ct in self.supernet.cell_types}

    def _store(self, key: tuple, state: Any) -> None:
        return


EVALUATORS = {"efficient": MaskedEvaluator, "naive": NaiveEvaluator}
DRAWS = ("fixed", "fresh")
SOURCE_SALT = 0x5C0


def make_evaluator(kind: str, supernet: Supernet, batches: Sequence[Batch], *, bn: str, cost: Cost,
                   cache_mb: float, stack: int = 1) -> MaskedEvaluator:
    if kind not in EVALUATORS:
        raise UserError(f"evaluator: choose one of {', '.join(EVALUATORS)}, got {kind!r}")
    return EVALUATORS[kind](supernet, batches, bn=bn, cost=cost, cache_mb=cache_mb, stack=stack)


@dataclass
class EvaluatorOptions:
    """How the settings a selector scores are evaluated: the same keys for every selector that evaluates (perturbation,
    Shapley, random paths); each adds its own options to these."""

    bn: str = "train"             # BN while scoring: train (batch statistics, running stats untouched) | eval
    cache_mb: float = 1024.0      # memory for cached layer states (see scoring/evaluator.py)
    evaluator: str = "efficient"  # efficient | naive (recompute everything; for checks and benchmarks)
    stack: int = 1                # settings per pass, stacked along the batch (for GPUs; see scoring/stacking.py)
    batch_size: int | None = None  # scoring batch size (null: data.eval_batch_size); with bn train it changes scores
    draw: str = "fixed"           # fixed: every candidate on the same batches (paired) | fresh: a seeded pass each
    augment: bool = False         # the training augmentation (pad-crop, flip, data.cutout) on the scoring batches

    def check_evaluator(self, prefix: str) -> None:
        check_rules(self, prefix, [(self.evaluator in EVALUATORS, "evaluator", f"one of {', '.join(EVALUATORS)}"),
                                   (self.cache_mb >= 0, "cache_mb", ">= 0"), (self.stack >= 1, "stack", "at least 1"),
                                   (self.batch_size is None or self.batch_size >= 1, "batch_size",
                                    "at least 1 (or null: data.eval_batch_size)"),
                                   (self.draw in DRAWS, "draw", f"one of {', '.join(DRAWS)}"),
                                   (isinstance(self.augment, bool), "augment", "true or false")])
        check_bn_mode(self.bn, f"{prefix}.bn")

    def scoring_source(self, valid: Loader, train: Loader | None, seed: int) -> Loader:
        """The scoring split as these options batch it. The defaults return `valid` itself (unshuffled,
        unaugmented, data.eval_batch_size), so results stay those of earlier versions; `fresh` shuffles, so that
        each epoch of the returned loader is a new seeded pass; `augment` takes the cutout of the training loader."""
        if self.batch_size is None and self.draw == "fixed" and not self.augment:
            return valid
        return rebatch(valid, self.batch_size or valid.batch_size, seed=derive_seed(seed, SOURCE_SALT),
                       shuffle=self.draw == "fresh", augment=self.augment,
                       cutout=getattr(train, "cutout", 0) if self.augment else 0)

    def candidate_batches(self, source: Loader, limit: int | None, *key: int) -> list[Batch]:
        """The batches candidate `key` is scored on: the first `limit` of `source` (fixed), or of its own seeded
        pass (fresh: epoch derive_seed(*key) of the shuffled source), a pure function of the seed and the key, so
        workers and resumes draw the same ones."""
        return take_batches(source, limit, derive_seed(*key) if self.draw == "fresh" and key else 0)

    def make_evaluator(self, supernet: Supernet, batches: Sequence[Batch], cost: Cost) -> MaskedEvaluator:
        return make_evaluator(self.evaluator, supernet, batches, bn=self.bn, cost=cost, cache_mb=self.cache_mb,
                              stack=self.stack)
