"""Mixed edges, and the work every edge leaving one node shares.

A MixedEdge holds one edge's candidate ops. `fan_out` computes the weighted terms of all edges leaving a node at once,
so that work depending only on the node is done once: its ReLU, parameter-free ops (a 3x3 average pool of node 0 is
the same on the three edges reading node 0), and the convolutions — every ReLU-Conv-BN reading the node with the same
geometry runs as one convolution over the concatenated filters and one batch norm over the concatenated channels
(per-channel BN, so the same maths; each op's running statistics stay in its own BN buffers). The mixing weight of a
convolution is folded into that batch norm's affine scale, which saves a pass over its output. Only ops named by the
plan are computed, so a masked op costs nothing and contributes exactly zero.

Inside `op_by_op()` every op runs as its own module call instead (no fused convolutions, no output shared between
edges), so that forward hooks on the modules see each op's output: MeCo's every-module variant reads them
(scoring/proxies.py). The same maths, up to rounding.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..supernet import Weight, weighted_sum
from .ops import OPS, PRE_ACTIVATED, ReLUConvBN, batch_norm, bn

# Ops whose output is a function of the input alone (given the edge's geometry): shared by the edges reading a node
# when their module holds no parameters or buffers (a pooling op with a BN after it is not shared).
SHAREABLE = frozenset({"skip_connect", "avg_pool_3x3", "max_pool_3x3"})

EdgePlan = Sequence[tuple[int, Weight]]
Terms = list[tuple[Weight, torch.Tensor]]
_OP_BY_OP: contextvars.ContextVar[bool] = contextvars.ContextVar("archselect_op_by_op", default=False)


@contextmanager
def op_by_op() -> Iterator[None]:
    """Cells run every op as its own module call while inside (see the module docstring)."""
    token = _OP_BY_OP.set(True)
    try:
        yield
    finally:
        _OP_BY_OP.reset(token)


def ops_run_alone() -> bool:
    return _OP_BY_OP.get()


class MixedEdge(nn.Module):
    """One edge: its candidate ops (a ModuleDict by op name; `none` has no module) and their weighted sum."""

    def __init__(self, C_in: int, C_out: int, stride: int, op_names: Sequence[str], affine: bool, track: bool,
                 pool_bn: bool = False):
        """`pool_bn`: follow each pooling op by BN(affine=False), as original DARTS' supernet does."""
        super().__init__()
        self.op_names = tuple(op_names)
        self.stride = stride
        self.ops = nn.ModuleDict(
            {name: _make_op(name, C_in, C_out, stride, affine, track, pool_bn) for name in op_names if name != "none"}
        )
        self.shared = frozenset(name for name, op in self.ops.items() if name in SHAREABLE and _stateless(op))
        self.conv_keys = {name: key for name, op in self.ops.items() if (key := _conv_key(op)) is not None}

    def forward(self, x: torch.Tensor, relu_x: Callable[[], torch.Tensor], edge_plan: EdgePlan) -> torch.Tensor | None:
        """`relu_x()` returns ReLU(x), computed once per node and shared by the convolutions reading it."""
        return weighted_sum(fan_out(x, relu_x, [(self, edge_plan)])[0])


def _make_op(name: str, C_in: int, C_out: int, stride: int, affine: bool, track: bool, pool_bn: bool) -> nn.Module:
    op = OPS.get(name)(C_in, C_out, stride, affine, track)
    if pool_bn and "pool" in name:
        op = nn.Sequential(op, bn(C_out, False, track))
    return op


def _stateless(module: nn.Module) -> bool:
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _conv_key(op: nn.Module):
    """ReLUConvBN ops with equal keys (and train/eval mode) read the same input the same way and can run as one."""
    if type(op) is not ReLUConvBN:
        return None
    c, b = op.conv, op.bn
    return (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, c.bias is None,
            b.eps, b.momentum, b.affine, b.track_running_stats)


def fan_out(x: torch.Tensor, relu_x: Callable[[], torch.Tensor],
            outgoing: Sequence[tuple[MixedEdge, EdgePlan]]) -> list[Terms]:
    """The (weight, output) terms of each edge leaving node `x`, in plan order except that convolutions come last
    (in plan order among themselves) and already carry their weight (as weight 1.0). An edge's summation order thus
    depends on its own plan alone, never on which ops the other edges run: an evaluation that skips an op elsewhere
    adds the same terms in the same order, bit for bit."""
    terms: list[Terms] = [[] for _ in outgoing]
    convs: list[list[tuple[int, torch.Tensor]]] = [[] for _ in outgoing]
    shared: dict[tuple, torch.Tensor] = {}
    groups: dict[tuple, list[tuple[int, int, ReLUConvBN, Weight]]] = {}
    alone = ops_run_alone()
    for i, (edge, plan) in enumerate(outgoing):
        for position, (k, w) in enumerate(plan):
            name = edge.op_names[k]
            op = edge.ops[name]
            key = None if alone else edge.conv_keys.get(name)
            if key is not None:
                groups.setdefault((key, op.bn.training), []).append((i, position, op, w))
            elif name in edge.shared and not alone:
                sig = (name, edge.stride)
                y = shared[sig] if sig in shared else shared.setdefault(sig, op(x))
                terms[i].append((w, y))
            else:
                terms[i].append((w, op(relu_x(), pre_activated=True) if name in PRE_ACTIVATED else op(x)))
    for members in groups.values():
        outs = conv_bn_group(relu_x(), [op for _, _, op, _ in members], [w for *_, w in members])
        for (i, position, _, _), y in zip(members, outs):
            convs[i].append((position, y))
    for i, ys in enumerate(convs):
        terms[i].extend((1.0, y) for _, y in sorted(ys, key=lambda py: py[0]))
    return terms


def term_order(edge: MixedEdge, plan: EdgePlan) -> list[tuple[int, Weight]]:
    """The plan's (op, weight) pairs in the order `fan_out` returns their terms."""
    return sorted(plan, key=lambda kw: edge.op_names[kw[0]] in edge.conv_keys)  # stable: plan order within each


# A cell computes the terms of a node's outgoing edges through a `Fan`: fan(src, x, relu_x, [(edge index, edge,
# plan)]) -> terms per edge, as `fan_out` (the default, `plain_fan`). The selection evaluator passes one that
# remembers op outputs across evaluations (scoring/evaluator.py).
Fan = Callable[[int, torch.Tensor, Callable[[], torch.Tensor], Sequence[tuple[int, MixedEdge, EdgePlan]]],
               list[Terms]]


def plain_fan(src: int, x: torch.Tensor, relu_x: Callable[[], torch.Tensor],
              outgoing: Sequence[tuple[int, MixedEdge, EdgePlan]]) -> list[Terms]:
    return fan_out(x, relu_x, [(edge, plan) for _, edge, plan in outgoing])


def conv_bn_group(x: torch.Tensor, ops: Sequence[ReLUConvBN], weights: Sequence[Weight]) -> list[torch.Tensor]:
    """[w_i · BN_i(conv_i(x))] for ReLUConvBN ops of equal geometry on an already activated x, as one convolution and
    one batch norm; the outputs are channel slices of one tensor. A BN using running statistics (eval mode) is an
    affine map, folded into the convolution's filters and bias (saves the pass over the output)."""
    conv, bns = ops[0].conv, [op.bn for op in ops]
    weight = conv.weight if len(ops) == 1 else torch.cat([op.conv.weight for op in ops])
    if not bns[0].training and bns[0].track_running_stats:
        mean, var = _running_stats(bns)
        scale, shift = _affine(bns, weights, var)
        scale = torch.rsqrt(var + bns[0].eps) * (1.0 if scale is None else scale)
        bias = -mean * scale + (0.0 if shift is None else shift)
        y = F.conv2d(x, weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        y = group_batch_norm(y, bns, weights)
    return list(y.split(conv.out_channels, dim=1)) if len(ops) > 1 else [y]


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


def _running_stats(bns: Sequence[nn.BatchNorm2d]) -> tuple[torch.Tensor, torch.Tensor]:
    return _cat([b.running_mean for b in bns]), _cat([b.running_var for b in bns])


def _affine(bns: Sequence[nn.BatchNorm2d], weights: Sequence[Weight], ref: torch.Tensor):
    """Per-channel (scale, shift) after normalisation: each op's mixing weight times its BN's γ and β (None where it
    is the identity: unit weights, no affine BN)."""
    b0 = bns[0]
    unit = all(isinstance(w, float) and w == 1.0 for w in weights)
    if unit and not b0.affine:
        return None, None
    if unit:
        return _cat([b.weight for b in bns]), _cat([b.bias for b in bns])
    if all(isinstance(w, float) for w in weights):
        w = torch.tensor(weights, dtype=ref.dtype, device=ref.device)
    else:  # differentiable with respect to the weights
        w = torch.stack([torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in weights])
    w = w.repeat_interleave(b0.num_features)
    if not b0.affine:
        return w, None
    return w * _cat([b.weight for b in bns]), w * _cat([b.bias for b in bns])


def group_batch_norm(y: torch.Tensor, bns: Sequence[nn.BatchNorm2d], weights: Sequence[Weight]) -> torch.Tensor:
    """Per-channel batch norm of y (the channels of `bns`, concatenated) times each op's mixing weight, as each
    nn.BatchNorm2d would do on its own channels (train/eval mode, running statistics and their update, momentum=None
    as a cumulative average, track_running_stats=False)."""
    b0 = bns[0]
    update = b0.training and b0.track_running_stats
    factor = 0.0 if b0.momentum is None else b0.momentum
    if update:
        for b in bns:
            b.num_batches_tracked.add_(1)
        if b0.momentum is None:
            factor = 1.0 / float(b0.num_batches_tracked)
    tracked = b0.track_running_stats and b0.running_mean is not None
    mean, var = _running_stats(bns) if tracked else (None, None)
    weight, bias = _affine(bns, weights, mean if tracked else y)
    out = batch_norm(y, mean, var, weight, bias, b0.training or mean is None, factor, b0.eps)
    if update and len(bns) > 1:  # the concatenated statistics were updated: hand each BN its own
        with torch.no_grad():
            for b, m, v in zip(bns, mean.split(b0.num_features), var.split(b0.num_features)):
                b.running_mean.copy_(m)
                b.running_var.copy_(v)
    return out
