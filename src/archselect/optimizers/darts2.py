"""Second-order DARTS (Liu et al. 2019, eqs. 7-8): the architecture gradient through one unrolled weight step.

    w'  = w − ξ·(μ·v + ∇_w L_train(w, α) + λ·w)          the next SGD step (momentum buffer v, weight decay λ)
    ∇α  = ∇_α L_val(w', α) − ξ·[∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)] / (2ε)
    w±  = w ± ε·∇_{w'} L_val(w', α),    ε = r / ‖∇_{w'} L_val(w', α)‖,  r = 0.01

ξ is the weights' current learning rate, as in the official architect (quark0/darts; reused unchanged by DARTS-PT and
GM-NAS), and α then takes one Adam step as in first-order DARTS. The unrolled and perturbed weights are plain tensors
run through `torch.func.functional_call`, so the supernet is never copied and its parameters never touched; any
registered space works. Central differences err by O(r²) on a smooth loss, more where a ReLU kink lies within r;
the tests check the formula against autograd through the unrolled step. Like the official code, the virtual step
ignores Nesterov and gradient clipping. Unlike it, a parameter without a momentum buffer (an op masked from the
start) gets zero momentum alone, where the official code then drops the momentum of every parameter. Under torchrun
the virtual step's gradient and the direction v are averaged over the ranks, as the global batch's would be.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .. import distributed
from ..errors import UserError
from .base import OPTIMIZERS, accuracy
from .darts import DartsFirstOrder


@dataclass
class DartsSecondOrderOptions:
    radius: float = 0.01  # r in ε = r / ‖∇_{w'} L_val‖, the finite-difference step in weight space (official: 0.01)


def _grads(loss: torch.Tensor, tensors) -> list[torch.Tensor]:
    """d loss / d tensors, zeros for tensors the loss does not reach (masked ops)."""
    return list(torch.autograd.grad(loss, list(tensors), allow_unused=True, materialize_grads=True))


def _momentum(buffers: dict, p: torch.Tensor, momentum: float) -> torch.Tensor | float:
    b = buffers.get(p)
    return momentum * b if b is not None else 0.0


def _alpha_grads_at(supernet, names, weights, batch) -> list[torch.Tensor]:
    """∇_α L(weights, α) on `batch`, the supernet's own weights replaced by `weights`."""
    x, y = batch
    logits = functional_call(supernet, dict(zip(names, weights)), (x, supernet.mixing_weights()))
    return _grads(F.cross_entropy(logits, y), supernet.arch_parameters())


def unrolled_alpha_grads(supernet, train, valid, xi: float, momentum: float, weight_decay: float,
                         momentum_buffers: dict, radius: float = 0.01):
    """The second-order architecture gradient (one tensor per cell type, in `arch_parameters()` order), the
    validation loss at the unrolled weights and its logits. `momentum_buffers` maps a weight parameter to its SGD
    momentum buffer (missing: zero)."""
    names_of = {id(p): n for n, p in supernet.named_parameters()}
    params = supernet.weight_parameters()
    names = [names_of[id(p)] for p in params]
    alphas = supernet.arch_parameters()

    # 1. w' = one virtual SGD step on the training batch (α held fixed: no gradient to it needed here)
    x, y = train
    g = _grads(F.cross_entropy(supernet(x, supernet.mixing_weights(detach=True)), y), params)
    distributed.all_reduce_mean(g)  # under torchrun: the global batch's gradient (no-op otherwise)
    with torch.no_grad():
        unrolled = [p - xi * (_momentum(momentum_buffers, p, momentum) + gi + weight_decay * p)
                    for p, gi in zip(params, g)]
    unrolled = [u.requires_grad_() for u in unrolled]

    # 2. L_val(w', α): its gradient with respect to α (direct term) and to w' (the direction v)
    xv, yv = valid
    logits = functional_call(supernet, dict(zip(names, unrolled)), (xv, supernet.mixing_weights()))
    val_loss = F.cross_entropy(logits, yv)
    grads = _grads(val_loss, [*alphas, *unrolled])
    d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
    distributed.all_reduce_mean(v)  # the α gradient itself is linear in the rest: averaged before the Adam step

    # 3. the mixed second derivative ∇²_{α,w} L_train · v by central differences around w
    norm = torch.cat([t.flatten() for t in v]).norm()
    if norm == 0:
        return d_alpha, val_loss.detach(), logits.detach()
    eps = radius / norm
    with torch.no_grad():
        plus = [p + eps * vi for p, vi in zip(params, v)]
        minus = [p - eps * vi for p, vi in zip(params, v)]
    g_plus = _alpha_grads_at(supernet, names, plus, train)
    g_minus = _alpha_grads_at(supernet, names, minus, train)
    out = [da - xi * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, g_plus, g_minus)]
    return out, val_loss.detach(), logits.detach()


@OPTIMIZERS.register("darts-2nd")
class DartsSecondOrder(DartsFirstOrder):
    Options = DartsSecondOrderOptions

    def __init__(self, supernet, cfg, steps_per_epoch):
        super().__init__(supernet, cfg, steps_per_epoch)
        if not self.options.radius > 0:
            raise UserError(f"search.options.radius must be > 0, got {self.options.radius}")
        self._train_batch = None

    def step(self, train, valid, epoch):
        self._train_batch = train  # the α step unrolls a weight step on the same training batch
        return super().step(train, valid, epoch)

    def arch_step(self, valid, epoch):
        train, self._train_batch = self._train_batch, None
        return self.unrolled_arch_step(train, valid)

    def unrolled_arch_step(self, train, valid) -> dict[str, float]:
        buffers = {p: s["momentum_buffer"] for p, s in self.w_optimizer.state.items()
                   if s.get("momentum_buffer") is not None}
        grads, loss, logits = unrolled_alpha_grads(self.supernet, train, valid, self.lr, self.cfg.w_momentum,
                                                   self.cfg.w_weight_decay, buffers, self.options.radius)
        for a, g in zip(self.supernet.arch_parameters(), grads):
            a.grad = g
        self.a_optimizer.step()
        return {"valid_loss": loss.item(), "valid_acc": accuracy(logits, valid[1])}
