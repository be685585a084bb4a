"""NAS-Bench-201: a 4-node cell with 6 edges and 5 ops, stacked N times per stage over three stages (C, 2C, 4C)
joined by residual reduction blocks; one α matrix shared by every cell.

The supernet and the discrete network are the same modules: a discrete edge is a MixedEdge holding only its chosen op,
so a discrete network loads its weights from a supernet by name (`load_from_supernet`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import NB201_NODES, NB201_OPS, Architecture, Cell, Edge
from ..supernet import Plan, Supernet, inherit_weights, weighted_sum
from .mixed import Fan, MixedEdge, plain_fan, term_order
from .ops import ReLUConvBN, bn

EDGES = tuple((src, dst) for dst in range(1, NB201_NODES) for src in range(dst))  # 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2


# The edges leaving each node, as (edge index, destination): a cell runs node by node, computing each node's
# outgoing edges together (see mixed.fan_out) once all edges into it are summed.
OUTGOING = tuple(tuple((e, dst) for e, (s, dst) in enumerate(EDGES) if s == src) for src in range(NB201_NODES - 1))


class NB201Cell(nn.Module):
    def __init__(self, C: int, edge_ops: Sequence[Sequence[str]], affine: bool, track: bool):
        super().__init__()
        self.edges = nn.ModuleList([MixedEdge(C, C, 1, ops, affine, track) for ops in edge_ops])

    def forward(self, x: torch.Tensor, plan: Plan, fan: Fan = plain_fan) -> torch.Tensor:
        inbox: list[list] = [[] for _ in range(NB201_NODES)]
        node = x
        for src, outgoing in enumerate(OUTGOING):
            relu = _Lazy(F.relu, node)
            terms = fan(src, node, relu, [(e, self.edges[e], plan[e]) for e, _ in outgoing])
            for (_, dst), t in zip(outgoing, terms):
                inbox[dst].extend(t)
            total = weighted_sum(inbox[src + 1])  # node src+1 is complete: its edges come from nodes <= src
            node = total if total is not None else torch.zeros_like(x)
        return node


class _Lazy:
    """f(x), computed on the first call only."""

    def __init__(self, f, x):
        self.f, self.x, self.y = f, x, None

    def __call__(self) -> torch.Tensor:
        if self.y is None:
            self.y = self.f(self.x)
        return self.y


class ResNetBlock(nn.Module):
    """The stride-2 residual block between stages: two ReLU-conv3x3-BN and an avg-pool + 1x1 conv shortcut."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201Body(nn.Module):
    """Stem, 3 stages of N cells with residual reductions between, BN-ReLU, global pooling, classifier."""

    def __init__(self, C, N, in_channels, num_classes, edge_ops, affine, track):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), bn(C, True, True))
        layers, c_prev = [], C
        for stage in range(3):
            c = C * 2**stage
            if stage:
                layers.append(ResNetBlock(c_prev, c))
            layers.extend(NB201Cell(c, edge_ops, affine, track) for _ in range(N))
            c_prev = c
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(bn(c_prev, True, True), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(c_prev, num_classes)

    def run(self, x: torch.Tensor, plan: Plan) -> torch.Tensor:
        x = self.stem(x)
        for i in range(len(self.layers)):
            x = self.run_layer(i, x, plan)
        return self.head(x)

    def run_layer(self, i: int, x: torch.Tensor, plan: Plan, fan: Fan = plain_fan) -> torch.Tensor:
        layer = self.layers[i]
        return layer(x, plan, fan) if isinstance(layer, NB201Cell) else layer(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lastact(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class NB201Supernet(Supernet):
    fan = staticmethod(plain_fan)
    term_order = staticmethod(term_order)
    reusable_ops = True

    def __init__(self, C=16, N=5, in_channels=3, num_classes=10, op_names=NB201_OPS, bn_affine=False, bn_track=True,
                 alpha_init_std=1e-3):
        super().__init__({"cell": EDGES}, op_names, alpha_init_std)
        self.body = NB201Body(C, N, in_channels, num_classes, [op_names] * len(EDGES), bn_affine, bn_track)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.stem(x)

    @property
    def num_layers(self) -> int:
        return len(self.body.layers)

    def layer_cell_type(self, i: int) -> str | None:
        return "cell" if isinstance(self.body.layers[i], NB201Cell) else None

    def run_layer(self, i: int, x: torch.Tensor, plans: dict[str, Plan], fan: Fan = plain_fan) -> torch.Tensor:
        return self.body.run_layer(i, x, plans["cell"], fan)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.head(x)


class NB201Network(nn.Module):
    """The discrete network of one architecture; same module names as the supernet."""

    def __init__(self, arch: Architecture, C=16, N=5, in_channels=3, num_classes=10, bn_affine=True, bn_track=True):
        super().__init__()
        cell = arch.cell("cell")
        self.edge_ops = [cell.op_on(src, dst) for src, dst in EDGES]
        self.body = NB201Body(C, N, in_channels, num_classes, [[op] for op in self.edge_ops], bn_affine, bn_track)
        self.plan: Plan = [[] if op == "none" else [(0, 1.0)] for op in self.edge_ops]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.run(x, self.plan)

    @torch.no_grad()
    def load_from_supernet(self, supernet: NB201Supernet) -> None:
        """Inherit every weight and BN statistic whose name this network shares with the supernet."""
        inherit_weights(self.body, supernet.body)


@dataclass
class NB201Space:
    """Factory for NAS-Bench-201 supernets and networks of a given size."""

    chooses_none = True  # `derive` may keep `none` on an edge (not a dataclass field: no annotation)

    C: int = 16
    N: int = 5
    in_channels: int = 3
    num_classes: int = 10
    bn_affine: bool = False
    bn_track: bool = True
    alpha_init_std: float = 1e-3

    name = "nb201"
    op_names = NB201_OPS
    cell_types = ("cell",)

    def edges(self, cell_type: str = "cell") -> tuple[tuple[int, int], ...]:
        return EDGES

    def supernet(self) -> NB201Supernet:
        return NB201Supernet(self.C, self.N, self.in_channels, self.num_classes, self.op_names, self.bn_affine,
                             self.bn_track, self.alpha_init_std)

    def network(self, arch: Architecture, bn_affine: bool = True) -> NB201Network:
        return NB201Network(arch, self.C, self.N, self.in_channels, self.num_classes, bn_affine, self.bn_track)

    def architecture(self, chosen: dict[str, Sequence[int]]) -> Architecture:
        """The Architecture with op index chosen[cell_type][e] on each edge e."""
        ops = chosen["cell"]
        edges = tuple(Edge(src, dst, self.op_names[k]) for (src, dst), k in zip(EDGES, ops))
        return Architecture("nb201", (("cell", Cell(edges)),))

    def derive(self, scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None) -> Architecture:
        """Keep on each edge the enabled op with the highest score (NB201 keeps `none` as a candidate, as the
        benchmark's own DARTS baseline does)."""
        s = scores["cell"].detach().float().clone()
        if mask is not None:
            s[~mask["cell"].to(s.device)] = float("-inf")
        return self.architecture({"cell": s.argmax(dim=1).tolist()})
