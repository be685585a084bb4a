"""Partitioning one edge's operations into groups, exactly, by enumeration, and choosing which edge to split.

Given the pairwise gradient distances D (K x K, symmetric) of an edge's K ops, GM-NAS keeps together the ops whose
gradients agree: the best partition minimises the total within-group distance. K is small (5 on NAS-Bench-201, 7 in
the DARTS space), so every admissible partition is enumerated; nothing is approximated.

Which edge to split (among the candidates, each with its best partition) is decided by one of two official criteria:
- `cut`: the largest cut value, total − within (NB201 scripts, `mincut_split_201`);
- `within`: the smallest within-group distance (DARTS-space scripts, `mincut_split_darts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

Groups = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Partition:
    groups: Groups   # positions 0..K-1 (into the distance matrix), each group sorted, groups by their first element
    within: float    # Σ over groups of Σ_{i<j in group} D_ij
    total: float     # Σ_{i<j} D_ij

    @property
    def cut(self) -> float:
        """Σ of the distances between ops in different groups."""
        return self.total - self.within


def admissible_sizes(k: int, groups: int, sizes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """The sorted group-size tuples allowed for K ops: exactly `sizes` if given, otherwise every split into
    `groups` groups of at least 2 ops (NB201: 2|3; DARTS: 2|5 and 3|4, i.e. sizes 2..⌊K/2⌋ for 2 groups)."""
    if sizes is not None:
        if sum(sizes) != k or len(sizes) != groups:
            raise ValueError(f"group sizes {list(sizes)} do not partition {k} ops into {groups} groups")
        return [tuple(sorted(sizes))]
    if groups * 2 > k:
        raise ValueError(f"{k} ops cannot form {groups} groups of at least 2 ops; give explicit sizes")
    out: list[tuple[int, ...]] = []

    def grow(prefix: tuple[int, ...], left: int, slots: int) -> None:
        if slots == 0:
            if left == 0:
                out.append(prefix)
            return
        low = prefix[-1] if prefix else 2
        for s in range(low, left + 1):
            grow(prefix + (s,), left - s, slots - 1)

    grow((), k, groups)
    return out


def partitions(k: int, groups: int, sizes: Sequence[int] | None = None) -> Iterator[Groups]:
    """Every partition of range(k) into `groups` unordered groups with admissible sizes, each exactly once.

    Restricted-growth enumeration: op i joins an existing group or opens the next one, so no partition appears
    twice under a relabelling of its groups."""
    allowed = set(admissible_sizes(k, groups, sizes))
    largest = max(max(s) for s in allowed)
    label = [0] * k

    def assign(i: int, used: int, counts: list[int]) -> Iterator[Groups]:
        if k - i < groups - used:  # not enough ops left to open the remaining groups
            return
        if i == k:
            if tuple(sorted(counts)) in allowed:
                yield tuple(tuple(j for j in range(k) if label[j] == g) for g in range(groups))
            return
        for g in range(min(used + 1, groups)):
            if g < used and counts[g] >= largest:
                continue
            label[i] = g
            if g == used:
                counts.append(1)
                yield from assign(i + 1, used + 1, counts)
                counts.pop()
            else:
                counts[g] += 1
                yield from assign(i + 1, used, counts)
                counts[g] -= 1

    yield from assign(0, 0, [])


def within_distance(distance: torch.Tensor | list[list[float]], groups: Groups) -> float:
    d = distance.double().tolist() if isinstance(distance, torch.Tensor) else distance
    return float(sum(d[i][j] for g in groups for a, i in enumerate(g) for j in g[a + 1:]))


def total_distance(distance: torch.Tensor) -> float:
    return float(torch.triu(distance.double(), diagonal=1).sum())


def best_partition(distance: torch.Tensor, groups: int = 2, sizes: Sequence[int] | None = None) -> Partition:
    """The admissible partition with the smallest within-group distance (the first one found on ties)."""
    _check_square(distance)
    k, rows = distance.shape[0], distance.double().tolist()
    best: Groups | None = None
    best_within = float("inf")
    for p in partitions(k, groups, sizes):
        w = within_distance(rows, p)
        if w < best_within:
            best, best_within = p, w
    assert best is not None  # admissible_sizes guarantees at least one partition
    return Partition(best, best_within, total_distance(distance))


def singletons(distance: torch.Tensor) -> Partition:
    """Exhaustive (Few-Shot NAS) splitting: one group per op; its cut is the total distance."""
    _check_square(distance)
    k = distance.shape[0]
    return Partition(tuple((i,) for i in range(k)), 0.0, total_distance(distance))


def edge_score(p: Partition, criterion: str) -> float:
    """Higher is better: the cut value, or minus the within-group distance."""
    if criterion == "cut":
        return p.cut
    if criterion == "within":
        return -p.within
    raise ValueError(f"unknown edge criterion {criterion!r}")


def pick_edge(scored: Sequence[Partition], criterion: str) -> int:
    """Index of the candidate edge to split (the first one on ties)."""
    if not scored:
        raise ValueError("no candidate edge to split")
    scores = [edge_score(p, criterion) for p in scored]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _check_square(distance: torch.Tensor) -> None:
    if distance.dim() != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance matrix must be square, got shape {tuple(distance.shape)}")
