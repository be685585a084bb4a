"""Supernets in the official code's layouts, written here from the layouts' key names and shapes (docs/api.md,
interop/official.py) — not archselect's modules, not the official code. Each computes what its paper's supernet
computes, so importing its state dict into archselect must give the same function.

- `TinyNB201`: DARTS-PT's NAS-Bench-201 supernet (`TinyNetworkDarts`): keys stem.*, cells.i.edges.<d><-<s>.k.op.{1,2}.*,
  cells.i.conv_{a,b}.op.{1,2}.*, cells.i.downsample.1.*, lastact.*, classifier.*. Its mixed edges are ModuleLists
  called as edge(x, weights), so it is also a DARTS-style model for the adapter.
- `TinyDarts`: original DARTS' `model_search.Network` (per-edge op lists give DARTS-PT's spaces s1-s5): keys stem.*,
  cells.i.preprocess{0,1}.*, cells.i._ops.e._ops.k.*, classifier.*; α alphas_normal / alphas_reduce.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
DARTS_OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
             "dil_conv_5x5"]


class Zero(nn.Module):
    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride, pad, affine, dilation=1):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=False),
                                nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Mixed(nn.ModuleList):
    """A mixed edge: its ops, summed with the weights row it is called with."""

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self))


# -- NAS-Bench-201 ----------------------------------------------------------------------------------------------------

def nb201_op(name, C):
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    k = 1 if name == "nor_conv_1x1" else 3
    return ReLUConvBN(C, C, k, 1, k // 2, affine=False)


class SearchCell(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.edges = nn.ModuleDict({f"{d}<-{s}": Mixed(nb201_op(o, C) for o in NB201_OPS)
                                    for d in range(1, 4) for s in range(d)})
        self.keys = sorted(self.edges)  # α rows: the sorted "d<-s" keys

    def forward(self, x, weights):
        nodes = [x]
        for d in range(1, 4):
            nodes.append(sum(self.edges[f"{d}<-{s}"](nodes[s], weights[self.keys.index(f"{d}<-{s}")])
                             for s in range(d)))
        return nodes[-1]


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1, affine=True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, affine=True)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class TinyNB201(nn.Module):
    def __init__(self, C=4, N=1, in_channels=1, num_classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells, c = [], C
        for stage in range(3):
            if stage:
                cells.append(ResBlock(c, 2 * c))
                c *= 2
            cells += [SearchCell(c) for _ in range(N)]
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)
        self.arch = nn.Parameter(torch.randn(6, len(NB201_OPS)))

    def mixed_edges(self):
        return [cell.edges[k] for cell in self.cells if isinstance(cell, SearchCell) for k in cell.keys]

    def forward(self, x, weights=None):
        weights = torch.softmax(self.arch, dim=-1) if weights is None else weights
        for cell in [self.stem, *self.cells]:
            x = cell(x, weights) if isinstance(cell, SearchCell) else cell(x)
        x = self.lastact(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- DARTS ------------------------------------------------------------------------------------------------------------

class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class SepConv(nn.Module):
    def __init__(self, C, k, stride):
        super().__init__()
        p = k // 2
        self.op = nn.Sequential(
            nn.ReLU(), nn.Conv2d(C, C, k, stride, p, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=False),
            nn.ReLU(), nn.Conv2d(C, C, k, 1, p, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, k, stride, k - 1, dilation=2, groups=C, bias=False),
                                nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.op(x)


def darts_op(name, C, stride):
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
    if "pool" in name:
        pool = (nn.MaxPool2d(3, stride, 1) if name.startswith("max")
                else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        return nn.Sequential(pool, nn.BatchNorm2d(C, affine=False))
    k = int(name[-1])
    return SepConv(C, k, stride) if name.startswith("sep") else DilConv(C, k, stride)


class DartsMixedOp(nn.Module):
    def __init__(self, C, stride, ops):
        super().__init__()
        self._ops = nn.ModuleList(darts_op(o, C, stride) for o in ops)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class DartsCell(nn.Module):
    def __init__(self, c_pp, c_p, C, reduction, reduction_prev, edge_ops):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(c_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(c_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(c_p, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        e = 0
        for i in range(4):
            for j in range(2 + i):
                self._ops.append(DartsMixedOp(C, 2 if reduction and j < 2 else 1, edge_ops[e]))
                e += 1

    def forward(self, s0, s1, weights):
        states, offset = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for i in range(4):
            states.append(sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-4:], dim=1)


class TinyDarts(nn.Module):
    """`primitives`: {"normal": 14 op lists, "reduce": 14 op lists} (DARTS: the 8 ops on every edge)."""

    def __init__(self, primitives=None, C=4, layers=5, in_channels=1, num_classes=4):
        super().__init__()
        primitives = primitives or {ct: [DARTS_OPS] * 14 for ct in ("normal", "reduce")}
        c = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        c_pp, c_p, c = c, c, C
        self.cells, reduction_prev = nn.ModuleList(), False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c = 2 * c if reduction else c
            self.cells.append(DartsCell(c_pp, c_p, c, reduction, reduction_prev,
                                        primitives["reduce" if reduction else "normal"]))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c
        self.classifier = nn.Linear(c_p, num_classes)
        width = len(primitives["normal"][0])
        self.alphas_normal = nn.Parameter(torch.randn(14, width))
        self.alphas_reduce = nn.Parameter(torch.randn(14, width))

    def forward(self, x, weights=None):
        if weights is None:
            weights = {"normal": F.softmax(self.alphas_normal, -1), "reduce": F.softmax(self.alphas_reduce, -1)}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.5)
    return model
