"""Rank correlations in numpy: Kendall's tau-b and Spearman's rho, both tie-aware, O(n log n).

Used to compare a proxy ranking (supernet scores, selector scores) with the benchmark's ranking over thousands of
architectures, so no O(n^2) pair matrices. Constant input has no defined correlation: the result is NaN.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"rank correlation needs two 1-D sequences of equal length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise UserError("rank correlation needs at least 2 values")
    if np.isnan(x).any() or np.isnan(y).any():
        raise UserError("rank correlation got missing (NaN) values: drop those architectures first")
    return x, y


def rankdata(x) -> np.ndarray:
    """1-based ranks; tied values share the average of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first sorted position of each distinct value
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho: the Pearson correlation of average ranks."""
    x, y = _pair(a, b)
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else math.nan


def _tied_pairs(sorted_values: np.ndarray) -> int:
    """Number of pairs with equal value, given the values sorted so that equal ones are adjacent."""
    counts = np.diff(np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1], True]))
    return int((counts * (counts - 1) // 2).sum())


def _inversions(r: np.ndarray) -> int:
    """Pairs i < j with r[i] > r[j] (r: non-negative ints), by a bottom-up merge sort vectorised per level.

    At width w the array is sorted within blocks of w; each right block counts the left-block values above each of
    its own values with searchsorted, then each block pair is merged by one global sort of (pair, value) keys.
    """
    n = len(r)
    r = r.astype(np.int64)
    big = int(r.max()) + 1
    pos = np.arange(n)
    total, width = 0, 1
    while width < n:
        block = pos // width
        pair = block // 2
        right = block % 2 == 1
        keys = pair * big + r  # sorted within each block, and left blocks are globally sorted by these keys
        left_keys = keys[~right]
        not_above = (np.searchsorted(left_keys, keys[right], side="right")
                     - np.searchsorted(left_keys, pair[right] * big, side="left"))
        left_sizes = np.bincount(pair[~right], minlength=int(pair[-1]) + 1)
        total += int((left_sizes[pair[right]] - not_above).sum())
        r = np.sort(keys) - pair * big  # merge: pair ids are non-decreasing along the array, so they stay in place
        width *= 2
    return total


def kendall_tau(a, b) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_a) * (n0 - ties_b))."""
    x, y = _pair(a, b)
    order = np.lexsort((y, x))  # by x, then y: within a tie in x, y ascends, so it adds no inversions
    x, y = x[order], y[order]
    n0 = len(x) * (len(x) - 1) // 2
    ties_x = _tied_pairs(x)
    ties_y = _tied_pairs(np.sort(y))
    joint = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1]), True]  # runs of equal (x, y)
    run = np.diff(np.flatnonzero(joint))
    ties_xy = int((run * (run - 1) // 2).sum())
    _, y_rank = np.unique(y, return_inverse=True)
    discordant = _inversions(y_rank)  # pairs with x_i < x_j but y_i > y_j
    concordant = n0 - ties_x - ties_y + ties_xy - discordant
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    return (concordant - discordant) / denom if denom > 0 else math.nan
