"""Search diagnostics: the dominant eigenvalue of the validation-loss Hessian w.r.t. α (R-DARTS' collapse signal),
the supernet-benchmark rank correlation, parameter-free ops in derived cells, and agreement between selectors.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import logs
from ..arch import Architecture
from ..evaluate.correlation import kendall_tau, spearman

# Ops without learnable weights: a cell full of them is the DARTS failure mode (collapse to skip connections).
PARAM_FREE_OPS = frozenset({"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"})

HVP = Callable[[list[torch.Tensor]], list[torch.Tensor]]


# -- Hessian eigenvalue ------------------------------------------------------------------------------------------------

def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def power_iteration(hvp: HVP, like: Sequence[torch.Tensor], iters: int = 20, tol: float = 1e-3,
                    seed: int = 0) -> tuple[float, int]:
    """The eigenvalue of largest magnitude of the symmetric operator `hvp` (and the steps used): v <- Hv/|Hv| from a
    seeded random start, stopping when the Rayleigh quotient v·Hv changes by less than `tol` (relative)."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in like]
    norm = math.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    value = 0.0
    for step in range(1, iters + 1):
        hv = hvp(v)
        new = _dot(v, hv)
        hv_norm = math.sqrt(_dot(hv, hv))
        if hv_norm == 0.0:
            return 0.0, step
        v = [x / hv_norm for x in hv]
        if step > 1 and abs(new - value) <= tol * abs(new):
            return new, step
        value = new
    return value, iters


def largest_eigenvalue(hvp: HVP, like: Sequence[torch.Tensor], iters: int = 20, tol: float = 1e-3,
                       seed: int = 0) -> float:
    """The largest (algebraic) eigenvalue, R-DARTS' λmax: power iteration finds the one of largest magnitude; when
    that one is negative it is the smallest, so H − λ·I is positive semi-definite with largest eigenvalue λmax − λ."""
    value, _ = power_iteration(hvp, like, iters, tol, seed)
    if value >= 0:
        return value

    def shifted(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return [h - value * x for h, x in zip(hvp(v), v)]
    gap, _ = power_iteration(shifted, like, iters, tol, seed + 1)
    return value + gap


def loss_hvp(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> HVP:
    """Hessian-vector products of `loss` w.r.t. `params` by double backward: the gradient is built once with its
    graph, each product differentiates g·v."""
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        logs.tick()
        return [h.detach() for h in torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)]
    return hvp


def alpha_hessian_eigenvalue(supernet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], iters: int = 20,
                             tol: float = 1e-3, seed: int = 0) -> float:
    """The largest eigenvalue of ∇²_α L_val (R-DARTS' dominant eigenvalue), L_val the mean cross-entropy over
    `batches`, BN in train mode as during the search. Runs on a copy, so the supernet's BN running statistics and
    gradients are left exactly as they were."""
    model = copy.deepcopy(supernet).train()
    alphas = model.arch_parameters()
    with torch.enable_grad():
        loss = sum(F.cross_entropy(model(x, model.mixing_weights()), y) for x, y in batches) / len(batches)
        return largest_eigenvalue(loss_hvp(loss, alphas), alphas, iters, tol, seed)


def hessian_record(supernet, valid_loader, epoch: int, batches: int, iters: int, seed: int) -> dict[str, float]:
    """The per-epoch metrics entry: `hessian_eig` on the first `batches` search-validation batches of the epoch."""
    start = time.perf_counter()
    data = [valid_loader.batch(epoch, k % len(valid_loader)) for k in range(batches)]
    with logs.Progress("α-Hessian eigenvalue", unit="Hessian-vector product"):
        value = alpha_hessian_eigenvalue(supernet, data, iters, seed=seed + epoch)
    return {"hessian_eig": value, "hessian_seconds": time.perf_counter() - start}


# -- supernet-benchmark rank correlation -------------------------------------------------------------------------------

@torch.no_grad()
def one_hot_accuracy(model, arch: Architecture, loader, images: int | None = None) -> float:
    """Accuracy of the sub-network `arch` inside the supernet (one-hot mixing weights) on up to `images` images."""
    weights = model.one_hot_weights(arch)
    correct = count = 0
    for x, y in loader.epoch(0):
        if images is not None and count >= images:
            break
        if images is not None and count + len(y) > images:
            x, y = x[: images - count], y[: images - count]
        correct += (model(x, weights).argmax(1) == y).sum().item()
        count += len(y)
    return correct / max(count, 1)


def sample_indices(n_table: int, samples: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_table, size=min(samples, n_table), replace=False).tolist())


def rank_correlation(supernet, loader, table, samples: int = 50, seed: int = 0, images: int | None = None,
                     bn: str = "train", target: str = "cifar10_valid") -> dict[str, Any]:
    """Kendall τ and Spearman ρ between the supernet's one-hot accuracy and the benchmark's `target` on a seeded
    sample of NB201 architectures. bn=train uses batch statistics (on a copy of the supernet), bn=eval the running
    ones."""
    start = time.perf_counter()
    model = copy.deepcopy(supernet)
    model.train(bn == "train")
    column = table.metric_array(target)
    pairs = []
    for index in logs.track(sample_indices(len(table), samples, seed), "rank correlation", unit="architecture"):
        if math.isnan(column[index]):
            continue
        acc = one_hot_accuracy(model, table.arch_at(index), loader, images)
        pairs.append([index, acc, float(column[index])])
    ours, theirs = [p[1] for p in pairs], [p[2] for p in pairs]
    enough = len(pairs) >= 2
    return {
        "kendall_tau": kendall_tau(ours, theirs) if enough else math.nan,
        "spearman": spearman(ours, theirs) if enough else math.nan,
        "target": target, "samples": len(pairs), "images": images, "bn": bn, "seed": seed,
        "seconds": time.perf_counter() - start, "pairs": pairs,
    }


# -- derived cells -----------------------------------------------------------------------------------------------------

def param_free_ops(arch: Architecture) -> int:
    """Edges of the derived cell(s) that carry an op without weights (skip, pooling, none), over all cell types."""
    return sum(e.op in PARAM_FREE_OPS for _, cell in arch.cells for e in cell.edges)


def _edge_ops(arch: Architecture) -> dict[tuple[str, int, int], str]:
    return {(ct, e.src, e.dst): e.op for ct, cell in arch.cells for e in cell.edges}


def edge_agreement(a: Architecture, b: Architecture) -> float:
    """Fraction of edges on which two architectures hold the same op; edges either one keeps (DARTS topology) count."""
    ea, eb = _edge_ops(a), _edge_ops(b)
    edges = set(ea) | set(eb)
    return sum(ea.get(k) == eb.get(k) for k in edges) / len(edges) if edges else 1.0


def pairwise_agreement(archs: dict[str, Architecture]) -> dict[tuple[str, str], float]:
    """Edge agreement for every unordered pair of selectors (keys in the order given)."""
    return {(x, y): edge_agreement(archs[x], archs[y]) for x, y in itertools.combinations(archs, 2)}
