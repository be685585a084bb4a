"""Influential Magnitude: an op's importance is the validation-loss increase its removal causes, estimated by a
second-order Taylor expansion around the trained supernet (docs/selectors.md derives it).

With θ the expansion coordinates (the mixing weights softmax(α), or α itself) and removal of op k on edge e the
perturbation δ = −θ_{e,k}·1_{e,k}:

    ΔL_{e,k} ≈ −θ_{e,k}·∂L/∂θ_{e,k}  +  ½·θ_{e,k}²·∂²L/∂θ_{e,k}²        (first_order + second_order)

Gradient and Hessian diagonal are exact (autograd, double backward: one Hessian-vector product per coordinate, by
default one per backward pass, the least memory; `hvp_batch` vmaps several through one pass) and averaged over
validation batches. Higher ΔL = more important; each edge keeps its argmax, through the space's `derive`.

An exact diagonal costs one Hessian-vector product per coordinate: 30 on NAS-Bench-201 but 224 on the DARTS space.
`hessian: hutchinson` estimates it instead from `probes` products whatever the coordinate count (Hutchinson's
estimator, E[z ⊙ Hz] = diag H for z with independent ±1 entries; seeded, unbiased, and an estimate: its noise adds
to the batch-to-batch standard error the selection reports).
"""
from __future__ import annotations

import logging
import copy
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from .. import logs
from ..data import derive_seed
from ..errors import UserError
from .base import Selection, Selector, as_lists, register

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
CHOICES = {"terms": ("both", "first", "second"), "weights": ("softmax", "alpha"), "bn": ("train", "eval"),
           "hessian": ("exact", "hutchinson")}


@dataclass
class InfluenceOptions:
    terms: str = "both"        # both | first | second: which Taylor terms make the score
    weights: str = "softmax"   # softmax: expand in the mixing weights, removal sets softmax(α)_k to 0 (the others
    #                            keep their weight); alpha: expand in α, removal sets α_k to 0
    batches: int = 4           # validation batches averaged (0: the whole validation split)
    bn: str = "train"          # train: batch statistics, running stats untouched; eval: running statistics
    hvp_batch: int = 1         # Hessian-vector products per backward pass: 1 = one at a time (least memory); k > 1
    #                            vmaps k through one backward (k x the memory; measured 15-25% faster on CPU)
    hessian: str = "exact"     # exact: one product per coordinate | hutchinson: an unbiased estimate from `probes`
    probes: int = 32           # Hutchinson probes per batch (hessian: hutchinson)
    batch_size: int | None = None  # images per batch (null: data.eval_batch_size); with bn train it changes scores
    augment: bool = False      # the training augmentation (pad-crop, flip, data.cutout) on the validation batches


@register("influence")
class Influence(Selector):
    Options = InfluenceOptions

    def __init__(self, options: dict | None = None, label: str | None = None):
        super().__init__(options, label)
        for key, allowed in CHOICES.items():
            value = getattr(self.options, key)
            if value not in allowed:
                raise UserError(f"select.options.influence.{key}: choose one of {', '.join(allowed)}; got {value!r}")
        if self.options.batches < 0:
            raise UserError("select.options.influence.batches must be >= 0 (0: the whole validation split)")
        if self.options.hvp_batch < 1:
            raise UserError("select.options.influence.hvp_batch must be at least 1")
        if self.options.probes < 1:
            raise UserError("select.options.influence.probes must be at least 1")
        if self.options.batch_size is not None and self.options.batch_size < 1:
            raise UserError("select.options.influence.batch_size must be at least 1 (or null: data.eval_batch_size)")
        if not isinstance(self.options.augment, bool):
            raise UserError(f"select.options.influence.augment: true or false, got {self.options.augment!r}")

    def run(self, ctx):
        o = self.options
        model = scoring_copy(ctx.supernet, o.bn)
        valid = scoring_loader(ctx, o)
        batches = _take(valid.epoch(0), o.batches)
        probes = o.probes if o.hessian == "hutchinson" else None
        n_hvp = probes or sum(int(m.sum()) for m in active_coordinates(model, o.weights).values())
        n_batches = _batch_count(valid, o.batches)
        with logs.Progress(self.name, n_batches and n_batches * n_hvp, "Hessian-vector product"):
            theta, per_batch = derivatives(model, batches, o.weights, o.hvp_batch, probes=probes, seed=ctx.seed)
        if not per_batch:
            raise UserError("influence: the validation split yielded no batch")
        taylor = [taylor_terms(theta, g, h) for _, g, h in per_batch]
        sizes = [n for n, _, _ in per_batch]
        first, second = _mean([t[0] for t in taylor], sizes), _mean([t[1] for t in taylor], sizes)
        score = combine(first, second, o.terms)
        masks = {ct: model.mask(ct) for ct in model.cell_types}
        selection = Selection(self.name, ctx.space.derive(score, masks), as_lists(score),
                              _stderr([combine(f, s, o.terms) for f, s in taylor], sizes))
        for n, _, _ in per_batch:
            selection.cost.count(n, backward=True)
            selection.cost.backward += n_hvp
        selection.details = {
            "first_order": as_lists(first), "second_order": as_lists(second),
            "gradient": as_lists(_mean([g for _, g, _ in per_batch], sizes)),
            "hessian_diagonal": as_lists(_mean([h for _, _, h in per_batch], sizes)),
            "expansion_point": as_lists(theta),
            "edge_scores": edge_scores(score, masks, model.op_names),
            "options": vars(o), "batches": len(per_batch), "hvp_per_batch": n_hvp,
        }
        return selection


# -- the pieces ---------------------------------------------------------------------------------------------------------

def scoring_loader(ctx, o: InfluenceOptions):
    """The validation split as the options batch it: ctx.valid itself by default (results as before), else rebatched
    in storage order, augmented by the training loader's settings when asked."""
    if o.batch_size is None and not o.augment:
        return ctx.valid
    cutout = getattr(ctx.train, "cutout", 0) if o.augment else 0
    return ctx.valid.rebatch(o.batch_size or ctx.valid.batch_size, seed=derive_seed(ctx.seed, 0x1F), shuffle=False,
                             augment=o.augment, cutout=cutout)


def scoring_copy(supernet, bn: str):
    """A private copy whose weights need no gradient, in the requested BN mode. Train mode on the copy is "batch
    statistics without updating running stats" as far as the caller's supernet is concerned."""
    model = copy.deepcopy(supernet)
    model.requires_grad_(False)
    return model.train(bn == "train")


def expansion_point(model, kind: str) -> Tensors:
    """The coordinates θ the loss is expanded in, as leaves that require grad: fresh copies of the mixing weights,
    or the α parameters of `model` (a private copy) themselves, so that `model.mixing_weights()` maps θ to mixing
    weights with whatever else the space puts in them (e.g. PC-DARTS edge normalisation, held fixed)."""
    if kind == "softmax":
        return {ct: w.clone().requires_grad_(True) for ct, w in model.mixing_weights(detach=True).items()}
    return {ct: model.alphas[ct].requires_grad_(True) for ct in model.cell_types}


def mixing(model, theta: Tensors, kind: str) -> Tensors:
    return theta if kind == "softmax" else model.mixing_weights()


def active_coordinates(model, kind: str) -> Tensors:
    """Coordinates whose derivatives can be non-zero: enabled ops; in softmax coordinates not `none` either (a
    `none` op outputs zero whatever its weight, so the loss does not depend on that weight)."""
    out = {}
    for ct in model.cell_types:
        m = model.mask(ct).clone()
        if kind == "softmax" and "none" in model.op_names:
            m[:, model.op_names.index("none")] = False
        out[ct] = m
    return out


def batch_derivatives(model, theta: Tensors, kind: str, x: torch.Tensor, y: torch.Tensor, active: Tensors,
                      hvp_batch: int = 1, probes: int | None = None,
                      generator: torch.Generator | None = None) -> tuple[Tensors, Tensors]:
    """∂L/∂θ and the diagonal of ∂²L/∂θ² on one batch (L = mean cross-entropy): exact, or with `probes` Hutchinson's
    estimate (`generator` draws the probes)."""
    cts = list(theta)
    leaves = [theta[ct] for ct in cts]
    loss = F.cross_entropy(model(x, mixing(model, theta, kind)), y)
    grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    mask = [active[ct] for ct in cts]
    hdiag = (hessian_diagonal(grads, leaves, mask, hvp_batch) if probes is None
             else hutchinson_diagonal(grads, leaves, mask, probes, hvp_batch, generator))
    return {ct: g.detach() for ct, g in zip(cts, grads)}, dict(zip(cts, hdiag))


def hessian_diagonal(grads: list[torch.Tensor], leaves: list[torch.Tensor], active: list[torch.Tensor],
                     hvp_batch: int) -> list[torch.Tensor]:
    """H_ii for the active coordinates i: row i of the Hessian is the gradient of g_i (one Hessian-vector product
    with the unit vector e_i); `hvp_batch` of them share one vmapped backward (is_grads_batched)."""
    flat = torch.cat([g.flatten() for g in grads])
    out = torch.zeros(flat.numel(), dtype=flat.dtype, device=flat.device)
    coords = torch.cat([a.flatten() for a in active]).nonzero().flatten().tolist()
    for start in range(0, len(coords) if flat.requires_grad else 0, hvp_batch):
        part = coords[start:start + hvp_batch]
        if len(part) == 1:
            rows = torch.autograd.grad(flat[part[0]], leaves, retain_graph=True, allow_unused=True)
        else:
            seeds = torch.zeros(len(part), flat.numel(), dtype=flat.dtype, device=flat.device)
            seeds[range(len(part)), part] = 1.0
            rows = torch.autograd.grad(flat, leaves, seeds, retain_graph=True, allow_unused=True,
                                       is_grads_batched=True)
        block = torch.cat([torch.zeros(len(part), t.numel(), dtype=flat.dtype, device=flat.device) if r is None
                           else r.detach().reshape(len(part), -1) for r, t in zip(rows, leaves)], dim=1)
        out[part] = block[range(len(part)), part]
        logs.tick(len(part))
    return [h.view_as(t) for h, t in zip(out.split([t.numel() for t in leaves]), leaves)]


def hutchinson_diagonal(grads: list[torch.Tensor], leaves: list[torch.Tensor], active: list[torch.Tensor],
                        probes: int, hvp_batch: int = 1,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Hutchinson's estimate of H_ii for the active coordinates: the mean of z ⊙ Hz over `probes` vectors z with
    independent ±1 entries on the active coordinates (0 elsewhere, so inactive ones add no noise); `hvp_batch`
    products share one vmapped backward."""
    flat = torch.cat([g.flatten() for g in grads])
    mask = torch.cat([a.flatten() for a in active]).to(flat.device)
    total = torch.zeros(flat.numel(), dtype=flat.dtype, device=flat.device)
    if flat.requires_grad:
        for start in range(0, probes, hvp_batch):
            n = min(hvp_batch, probes - start)
            z = (torch.randint(0, 2, (n, flat.numel()), generator=generator) * 2 - 1).to(flat) * mask
            rows = torch.autograd.grad(flat, leaves, z if n > 1 else z[0], retain_graph=True, allow_unused=True,
                                       is_grads_batched=n > 1)
            hz = torch.cat([torch.zeros(n, t.numel(), dtype=flat.dtype, device=flat.device) if r is None
                            else r.detach().reshape(n, -1) for r, t in zip(rows, leaves)], dim=1)
            total += (z * hz).sum(0)
            logs.tick(n)
    out = total / probes
    return [h.view_as(t) for h, t in zip(out.split([t.numel() for t in leaves]), leaves)]


def derivatives(model, batches: Iterable, kind: str, hvp_batch: int = 1, probes: int | None = None,
                seed: int = 0) -> tuple[Tensors, list[tuple[int, Tensors, Tensors]]]:
    """θ and, per batch, (batch size, gradient, Hessian diagonal); with `probes`, Hutchinson's estimate of the
    diagonal, its probes drawn from a generator seeded with `seed`."""
    theta = expansion_point(model, kind)
    active = active_coordinates(model, kind)
    dtype = next(iter(theta.values())).dtype
    generator = torch.Generator().manual_seed(seed) if probes is not None else None
    out = []
    for x, y in batches:
        g, h = batch_derivatives(model, theta, kind, x.to(dtype), y, active, hvp_batch, probes, generator)
        out.append((int(y.numel()), g, h))
    return {ct: t.detach().clone() for ct, t in theta.items()}, out


def taylor_terms(theta: Tensors, grad: Tensors, hdiag: Tensors) -> tuple[Tensors, Tensors]:
    """First- and second-order terms of ΔL for δ = −θ_{e,k}·1_{e,k}."""
    first = {ct: -theta[ct] * grad[ct] for ct in theta}
    second = {ct: 0.5 * theta[ct] ** 2 * hdiag[ct] for ct in theta}
    return first, second


def combine(first: Tensors, second: Tensors, terms: str) -> Tensors:
    if terms == "first":
        return dict(first)
    if terms == "second":
        return dict(second)
    return {ct: first[ct] + second[ct] for ct in first}


def edge_scores(score: Tensors, masks: Tensors, op_names) -> dict[str, list[float | None]]:
    """Per edge, the score of its best enabled op other than `none` (for ranking an edge in a topology choice);
    None for an edge with no such op."""
    out = {}
    for ct, s in score.items():
        m = masks[ct].clone()
        if "none" in op_names:
            m[:, list(op_names).index("none")] = False
        best = s.masked_fill(~m.to(s.device), float("-inf")).max(dim=1).values
        out[ct] = [float(v) if torch.isfinite(v) else None for v in best]
    return out


def _batch_count(loader, n: int) -> int | None:
    """How many batches `_take(loader.epoch(0), n)` yields (None: unknown)."""
    size = len(loader) if hasattr(loader, "__len__") else None
    if not n:
        return size
    return n if size is None else min(n, size)


def _take(batches: Iterable, n: int) -> Iterable:
    for i, b in enumerate(batches):
        if n and i >= n:
            return
        yield b


def _mean(items: list[Tensors], sizes: list[int]) -> Tensors:
    total = float(sum(sizes))
    return {ct: sum(t[ct] * (n / total) for t, n in zip(items, sizes)) for ct in items[0]}


def _stderr(items: list[Tensors], sizes: list[int]) -> dict[str, list[list[float]]] | None:
    """Standard error of the size-weighted mean over batches; None from a single batch."""
    if len(items) < 2:
        return None
    mean = _mean(items, sizes)
    w = torch.tensor(sizes, dtype=torch.float64)
    w = w / w.sum()
    out = {}
    for ct in mean:
        stack = torch.stack([t[ct].double() for t in items])
        var = ((stack - mean[ct].double()) ** 2 * w.view(-1, *[1] * (stack.dim() - 1))).sum(0)
        out[ct] = (var * (w ** 2).sum() / (1 - (w ** 2).sum())).sqrt()
    return as_lists(out)
