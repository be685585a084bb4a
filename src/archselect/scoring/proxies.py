"""Zero-cost proxies: one number that scores a network from one batch, without training it (higher = better).

Each proxy is `proxy(net, forward, x, y) -> float`, where `forward(net, x)` returns the logits (a supernet passes its
mixing weights there) and the parameters are `net.parameters()` (those the forward pass does not reach, e.g. α when
the weights are given, count as zero). Proxies run `net` as they find it: its train/eval and BatchNorm modes are the
caller's (a training-mode BN updates its running statistics unless the caller wraps the call in evaluator.bn_mode).
Gradients are taken with `torch.autograd.grad`, so no `.grad` is left behind.

Activation proxies (nwot, meco) read the input of every ReLU the forward pass applies, however it is written
(`nn.ReLU`, `F.relu`, `torch.relu`, `x.relu()`, in place): archselect's cells apply one functional ReLU per node, so
there is no module to hook. In these ReLU-Conv-BN spaces those inputs are the node feature maps. `meco_modules` and
`meco_opt` read MeCo's official layers instead: the output of every module the forward pass calls (containers
included), with every op of a cell run as a module call of its own (spaces.mixed.op_by_op).

`meco_opt` draws channels at random: it takes a `seed` keyword (`bind(name, seed)` gives any proxy in the common form).
"""
from __future__ import annotations

import copy
import zlib
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..data import derive_seed
from ..spaces.mixed import op_by_op
from .cost import Cost

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]

JACOB_K = 1e-5  # Mellor et al.'s regulariser of the eigenvalues
MECO_OPT_CHANNELS = 8  # channels MeCo_opt samples per layer (its official code)
RELUS = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})


def _gradients(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor):
    """(parameter, ∂CE/∂parameter) for every parameter the loss reaches."""
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = F.cross_entropy(forward(net, x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [(p.detach(), g) for p, g in zip(params, grads) if g is not None]


def grad_norm(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ_tensors ‖∂L/∂w‖₂ of the cross-entropy loss L (Abdelfattah et al., ICLR 2021)."""
    return float(sum(g.double().norm() for _, g in _gradients(net, forward, x, y)))


def snip(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ |∂L/∂w ⊙ w| (SNIP's connection sensitivity, summed over the network)."""
    return float(sum((g.double() * p.double()).abs().sum() for p, g in _gradients(net, forward, x, y)))


def synflow(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ ∂R/∂w ⊙ w with R = Σ logits of an all-ones image, on a float64 copy of `net` whose parameters and buffers are
    replaced by their absolute values and whose BatchNorms are exactly x·|γ| + |β| (mean 0, variance 1 − eps: synflow
    is computed without normalisation, as Abdelfattah et al. do). Data-free: only x's shape is used."""
    linear = copy.deepcopy(net).double()
    with torch.no_grad():
        for t in linear.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    for m in linear.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.track_running_stats = True
            m.running_mean = torch.zeros(m.num_features, dtype=torch.float64, device=x.device)
            m.running_var = torch.full((m.num_features,), 1.0 - m.eps, dtype=torch.float64, device=x.device)
    params = [p for p in linear.parameters() if p.requires_grad]
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        grads = torch.autograd.grad(forward(linear, ones).sum(), params, allow_unused=True)
    return float(sum((g * p.detach()).sum() for p, g in zip(params, grads) if g is not None))


def jacob_cov(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """−Σ_i (log(λ_i + k) + 1/(λ_i + k)), λ the eigenvalues of the correlation matrix (images × images) of the
    per-image input Jacobians of Σ logits, k = 1e-5 (Mellor et al. 2020, v1)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (jac,) = torch.autograd.grad(forward(net, x).sum(), x)
    return _log_spectrum_penalty(_correlation(jac.flatten(1).double()))


def nwot(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """log|det K|, K = Σ_ReLUs c cᵀ + (1−c)(1−c)ᵀ with c ∈ {0,1}^(images × units) the ReLUs' on/off codes (NASWOT,
    Mellor et al., ICML 2021): high when the images fall in distinct linear regions."""
    K = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)

    def see(pre: torch.Tensor) -> None:
        c = (pre.detach().flatten(1) > 0).double()
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    _run_watching_relus(net, forward, x, see)
    return float(torch.linalg.slogdet(K).logabsdet)


def meco(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ_layers λ_min(P), P the Pearson correlation matrix (channels × channels) of one image's feature map, its
    channels flattened over the positions (MeCo, Jiang et al., NeurIPS 2023: one image, one forward pass). The layers
    are the ReLU inputs that are feature maps (channels and positions)."""
    total = []

    def see(pre: torch.Tensor) -> None:
        if pre.dim() >= 3:
            total.append(torch.linalg.eigvalsh(_correlation(pre.detach()[0].flatten(1).double()))[0])

    _run_watching_relus(net, forward, x[:1], see)
    return float(sum(total))


def meco_modules(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> float:
    """MeCo over its official layers (HamsterMimi/MeCo): Σ λ_min(P) over the output of every module the forward pass
    calls, containers included (a container's output counts again), P the channels × positions correlation of the
    first image's map. The whole batch goes through the network (train-mode BN normalises over it) and only image 0's
    maps are read, as MeCo's Zero-Cost-PT search code does. Outputs without positions (logits) or with one channel add
    0 there and are skipped here; non-finite values are dropped."""
    return _meco_over_modules(net, forward, x, None)


def meco_opt(net: nn.Module, forward: Forward, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """MeCo_opt (official code): as meco_modules, but each layer's λ_min is that of 8 of its C channels drawn at
    random, times C/8. The draw is seeded by (seed, module name, call), so every setting of a supernet samples the same
    channels of a module. A layer with fewer than 8 channels uses all of them (the official code fails there)."""
    return _meco_over_modules(net, forward, x, seed)


PROXIES: dict[str, Callable[..., float]] = {
    "grad_norm": grad_norm, "snip": snip, "synflow": synflow, "jacob_cov": jacob_cov, "nwot": nwot, "meco": meco,
    "meco_modules": meco_modules, "meco_opt": meco_opt}
BACKWARD = frozenset({"grad_norm", "snip", "synflow", "jacob_cov"})  # one backward pass per batch
ONE_IMAGE = frozenset({"synflow", "meco"})  # send one image through the network, not the batch
DATA_FREE = frozenset({"synflow"})  # the same value for every batch
SEEDED = frozenset({"meco_opt"})  # draw random numbers: take a seed


def bind(name: str, seed: int) -> Callable[[nn.Module, Forward, torch.Tensor, torch.Tensor], float]:
    """Proxy `name` as `proxy(net, forward, x, y)`, its random draws (if any) seeded by `seed`."""
    return partial(PROXIES[name], seed=seed) if name in SEEDED else PROXIES[name]


def charge(cost: Cost, name: str, x: torch.Tensor) -> None:
    """Count one evaluation of proxy `name` on batch x: one forward pass (and a backward one for gradient proxies)."""
    cost.count(1 if name in ONE_IMAGE else x.shape[0], backward=name in BACKWARD)


def _correlation(rows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between rows; a constant row correlates 0 with everything (itself included)."""
    return torch.nan_to_num(torch.corrcoef(rows), nan=0.0, posinf=0.0, neginf=0.0)


def _meco_over_modules(net: nn.Module, forward: Forward, x: torch.Tensor, seed: int | None) -> float:
    """Σ over module outputs of λ_min of the first image's channel correlation; `seed`: MeCo_opt's channel sample."""
    values: list[torch.Tensor] = []
    calls: dict[str, int] = {}

    def see(name: str, out) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() < 3 or out.shape[1] < 2:
            return
        fea = out.detach()[0].flatten(1).double()  # channels x positions
        C, scale = fea.shape[0], 1.0
        if seed is not None and C > MECO_OPT_CHANNELS:
            calls[name] = calls.get(name, 0) + 1
            g = torch.Generator().manual_seed(derive_seed(seed, zlib.crc32(name.encode()), calls[name]))
            fea = fea[torch.randperm(C, generator=g)[:MECO_OPT_CHANNELS].to(fea.device)]
            scale = C / MECO_OPT_CHANNELS
        values.append(torch.linalg.eigvalsh(_correlation(fea))[0] * scale)

    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: see(name, out))
             for name, m in net.named_modules()]
    try:
        with torch.no_grad(), op_by_op():
            forward(net, x)
    finally:
        for h in hooks:
            h.remove()
    return float(sum(v for v in values if torch.isfinite(v)))


def _log_spectrum_penalty(corr: torch.Tensor) -> float:
    lam = torch.linalg.eigvalsh(corr).clamp(min=0.0)  # a correlation matrix is PSD: negatives are rounding
    return float(-(torch.log(lam + JACOB_K) + 1.0 / (lam + JACOB_K)).sum())


class _ReLUInputs(TorchFunctionMode):
    """Calls `see(x)` with the input of every ReLU applied while active, before it is applied (in place or not)."""

    def __init__(self, see: Callable[[torch.Tensor], None]):
        super().__init__()
        self.see = see

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELUS:
            self.see(args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


def _run_watching_relus(net: nn.Module, forward: Forward, x: torch.Tensor, see) -> None:
    with torch.no_grad(), _ReLUInputs(see):
        forward(net, x)
