"""The DARTS cell space: normal and reduction cells of two input nodes and four intermediate nodes (14 edges), stacked
L times with reductions at layers L//3 and 2L//3, behind a conv3x3-BN stem and before global pooling + a classifier.

Edge order (α rows), the same in both cell types: for intermediate node i = 0..3 (node id 2 + i), its inputs
j = 0..i+1 in increasing order, i.e. 0->2, 1->2, 0->3, 1->3, 2->3, 0->4, ..., 4->5 (`genotype.EDGES`). Node 0 is the
preprocessed output of the cell before the previous one, node 1 that of the previous cell; edges leaving nodes 0 and 1
of a reduction cell have stride 2. The cell output concatenates nodes 2..5.

Options beyond original DARTS:
- partial channels (PC-DARTS, K > 1): only C/K channels of an edge's input go through its candidate ops; the rest
  bypass them (2x2 max-pooled on stride-2 edges), are concatenated after the op output and channel-shuffled with
  K groups. Shapley-NAS' supernet is this with K=4.
- edge normalisation (PC-DARTS): a β per edge, softmax over each node's incoming edges, scales every op weight of the
  edge. It is folded into `mixing_weights`, so selectors, the DARTS parse and one-hot overrides see it like α.

The supernet and the discrete network share their modules: a discrete edge is a MixedEdge holding only its chosen op,
so a discrete network loads its weights from a supernet by name (`load_from_supernet`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import Architecture, Cell, Edge
from ..errors import UserError
from ..genotype import CELL_TYPES, CONCAT, EDGES, INPUTS, NODES, SPACE, SPACE_OPS, STEPS, validate_darts
from ..supernet import Plan, Supernet, Weight, inherit_weights, weighted_sum
from .darts_imagenet import AuxiliaryHeadImageNet, ImageNetStem
from .mixed import Fan, MixedEdge, ops_run_alone
from .ops import DilConv, FactorizedReduce, ReLUConvBN, SepConv, bn, scaled_bn

INCOMING = {dst: tuple(e for e, (_, d) in enumerate(EDGES) if d == dst) for dst in NODES}
SHARED_POOLS = frozenset({"max_pool_3x3", "avg_pool_3x3"})
OUTGOING = {src: tuple((e, dst) for e, (s, dst) in enumerate(EDGES) if s == src) for src in range(NODES[-1])}


def reduction_layers(layers: int) -> frozenset[int]:
    return frozenset({layers // 3, 2 * layers // 3})


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave `groups` equal channel groups (ShuffleNet), keeping x's memory format."""
    n, c, h, w = x.shape
    y = x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    return y.contiguous(memory_format=_memory_format(x))


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability drop_prob, scaling the rest by 1/keep (DARTS' evaluation networks)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * (mask / keep)


class PartialEdge(MixedEdge):
    """PC-DARTS' partial-channel mixed edge over C channels with K groups (C divisible by K): its ops see the first
    C/K channels; `join` adds the bypassed rest and shuffles."""

    def __init__(self, C: int, stride: int, op_names: Sequence[str], affine: bool, track: bool, K: int,
                 pool_bn: bool):
        super().__init__(C // K, C // K, stride, op_names, affine, track, pool_bn)
        self.K = K

    def join(self, mixed: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """channel_shuffle(cat(op part, bypass)) for the edge input x and its op part `mixed` (None: no op ran)."""
        c = x.shape[1] // self.K
        rest = x[:, c:]
        if self.stride > 1:  # ceil_mode: equal to PC-DARTS' MaxPool2d(2, 2) on even sizes, and matches odd ones
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
        if mixed is None:  # the op part is zero; the bypass still flows (as in PC-DARTS)
            mixed = rest.new_zeros(rest.shape[0], c, *rest.shape[2:])
        return channel_shuffle(torch.cat([mixed, rest], dim=1), self.K)


def node_terms(x: torch.Tensor, relu_x, outgoing) -> list[list[tuple[Weight, torch.Tensor]]]:
    """The (weight, output) terms of each edge (MixedEdge, plan) leaving node x. A convolution's or a BN-ed pool's
    mixing weight is folded into its last batch norm (term weight 1.0); a parameter-free pool is computed once per
    stride and shared by the edges reading x; `relu_x()` is x's ReLU, shared by the convolutions. Inside
    `mixed.op_by_op()` each op is a module call of its own (nothing shared, no BN scaled in place)."""
    shared: dict[tuple[str, int], torch.Tensor] = {}
    alone = ops_run_alone()
    out = []
    for edge, plan in outgoing:
        terms = []
        for k, w in plan:
            name = edge.op_names[k]
            op = edge.ops[name]
            if isinstance(op, (SepConv, DilConv)):
                terms.append((1.0, op(relu_x(), pre_activated=True, scale=w)))
            elif isinstance(op, nn.Sequential) and not alone:  # pool + BN(affine=False): MixedEdge's pool_bn
                terms.append((1.0, scaled_bn(op[1], op[0](x), w)))
            elif name in SHARED_POOLS and not alone and next(op.parameters(), None) is None:
                key = (name, edge.stride)
                if key not in shared:
                    shared[key] = op(x)
                terms.append((w, shared[key]))
            else:  # skip_connect (identity, or FactorizedReduce at stride 2), noise (a fresh sample per edge)
                terms.append((w, op(x)))
        out.append(terms)
    return out


def darts_fan(src: int, x: torch.Tensor, relu_x, outgoing) -> list[list[tuple[Weight, torch.Tensor]]]:
    """The DARTS cells' `spaces.mixed.Fan`: `node_terms`, whose terms follow each edge's plan order."""
    return node_terms(x, relu_x, [(edge, plan) for _, edge, plan in outgoing])


def _lazy_relu(x: torch.Tensor):
    """A function returning ReLU(x), computed on its first call only (shared by the ops reading one node)."""
    cache: list[torch.Tensor] = []
    return lambda: cache[0] if cache else cache.append(F.relu(x)) or cache[0]


class DARTSCell(nn.Module):
    """A cell runs node by node: once all edges into a node are summed, the edges leaving it are computed together
    (`node_terms`: its ReLU and parameter-free pools once per node)."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 edge_ops: Sequence[Sequence[str]], affine: bool, track: bool, pool_bn: bool, partial: int):
        super().__init__()
        self.reduction, self.partial = reduction, partial
        self.cell_type = "reduce" if reduction else "normal"
        # node 0 comes from two cells back: halve its resolution if the previous cell was a reduction
        self.pre0 = (FactorizedReduce(C_pp, C, affine, track) if reduction_prev
                     else ReLUConvBN(C_pp, C, 1, 1, 0, 1, affine, track))
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0, 1, affine, track)
        edges = []
        for (src, _), ops in zip(EDGES, edge_ops):
            stride = 2 if reduction and src < INPUTS else 1
            edges.append(PartialEdge(C, stride, ops, affine, track, partial, pool_bn) if partial > 1
                         else MixedEdge(C, C, stride, ops, affine, track, pool_bn))
        self.edges = nn.ModuleList(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, plan: Plan, drop_prob: float = 0.0,
                fan: Fan | None = None) -> torch.Tensor:
        fan = fan or darts_fan
        nodes = [self.pre0(s0), self.pre1(s1)]
        inbox: dict[int, list] = {dst: [] for dst in NODES}  # the (weight, output) terms into each node
        for src in range(NODES[-1]):
            if src >= INPUTS:  # node src is complete: every edge into it starts at an earlier node
                nodes.append(self._sum(inbox.pop(src), nodes[1]))
            x = nodes[src]
            outgoing = OUTGOING[src]
            edges = [(e, self.edges[e], plan[e]) for e, _ in outgoing]
            for (e, dst), terms in zip(outgoing, self._fan_out(src, x, edges, fan)):
                if drop_prob > 0.0 and self.training:  # DARTS drops every op output but the identity's
                    terms = [(w, y if y is x else drop_path(y, drop_prob)) for w, y in terms]
                inbox[dst].extend(terms)
        nodes.append(self._sum(inbox.pop(NODES[-1]), nodes[1]))
        return torch.cat(nodes[INPUTS:], dim=1)

    def _fan_out(self, src: int, x: torch.Tensor, outgoing, fan: Fan):
        if self.partial == 1:
            return fan(src, x, _lazy_relu(x), outgoing)
        part = x[:, :x.shape[1] // self.partial].contiguous(memory_format=_memory_format(x))
        op_terms = fan(src, part, _lazy_relu(part), outgoing)
        return [[(1.0, edge.join(weighted_sum(t), x))] for (_, edge, _), t in zip(outgoing, op_terms)]

    def _sum(self, terms, s: torch.Tensor) -> torch.Tensor:
        """A node: the sum of its terms, or zero (every op masked or `none`) at the cell's output resolution."""
        node = weighted_sum(terms)
        if node is not None:
            return node
        return torch.zeros_like(s[:, :, ::2, ::2] if self.reduction else s)


class AuxiliaryHead(nn.Module):
    """DARTS' CIFAR auxiliary classifier (ReLU, 5x5/3 avg pool, 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN, ReLU,
    linear). DARTS assumes an 8x8 input (32x32 images); other sizes are pooled to the 2x2 it then expects."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if min(x.shape[2:]) >= 5:
            x = F.avg_pool2d(x, 5, 3, 0, count_include_pad=False)
        x = F.adaptive_avg_pool2d(x, 2)  # the identity at DARTS' 8x8
        return self.classifier(torch.flatten(self.features(x), 1))


class DARTSBody(nn.Module):
    """Stem, `layers` cells (reductions at L//3 and 2L//3), optional auxiliary head after cell 2L//3, classifier.
    `imagenet`: DARTS' ImageNet stem (three stride-2 convolutions, `ImageNetStem`) and auxiliary head instead of the
    CIFAR ones (one conv3x3 of stem_multiplier x C channels)."""

    def __init__(self, C: int, layers: int, stem_multiplier: int, in_channels: int, num_classes: int,
                 edge_ops: dict[str, Sequence[Sequence[str]]], affine: bool, track: bool, pool_bn: bool,
                 partial: int = 1, auxiliary: bool = False, imagenet: bool = False):
        super().__init__()
        if imagenet:  # node 0 of the first cell is at twice node 1's resolution, as after a reduction
            self.stem: nn.Module = ImageNetStem(in_channels, C)
            C_pp, C_p, reduction_prev = C, C, True
        else:
            c = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), bn(c, True, True))
            C_pp, C_p, reduction_prev = c, c, False
        c = C
        self.aux_layer = 2 * layers // 3
        cells, C_aux = [], None
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            c = c * 2 if reduction else c
            ops = edge_ops["reduce" if reduction else "normal"]
            cells.append(DARTSCell(C_pp, C_p, c, reduction, reduction_prev, ops, affine, track, pool_bn, partial))
            reduction_prev = reduction
            C_pp, C_p = C_p, STEPS * c
            if i == self.aux_layer:
                C_aux = C_p
        self.cells = nn.ModuleList(cells)
        head = AuxiliaryHeadImageNet if imagenet else AuxiliaryHead
        self.auxiliary = head(C_aux, num_classes) if auxiliary else None
        self.classifier = nn.Linear(C_p, num_classes)

    def inputs(self, x: torch.Tensor):
        """The first cell's two inputs (s0, s1): the stem's output twice (CIFAR), or stem0's and stem1's (ImageNet)."""
        s = self.stem(x)
        return s if isinstance(s, tuple) else (s, s)

    def run_layer(self, i: int, state, plans: dict[str, Plan], drop_prob: float = 0.0, fan: Fan | None = None):
        s0, s1 = state
        cell = self.cells[i]
        return s1, cell(s0, s1, plans[cell.cell_type], drop_prob, fan)

    def head(self, state) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(state[1], 1), 1))


class DARTSSupernet(Supernet):
    fan = staticmethod(darts_fan)

    def __init__(self, op_names: Sequence[str], C=16, layers=8, stem_multiplier=3, in_channels=3, num_classes=10,
                 bn_affine=False, bn_track=True, alpha_init_std=1e-3, partial_channels=1, edge_norm=False,
                 pool_bn=True, recompute=True):
        super().__init__({ct: EDGES for ct in CELL_TYPES}, op_names, alpha_init_std)
        if partial_channels < 1 or C % partial_channels:
            raise UserError(f"space.partial_channels={partial_channels} must be >= 1 and divide space.C={C}")
        if layers < 3:  # reductions sit at layers L//3 and 2L//3: below 3 cells there is no normal cell to search
            raise UserError(f"space.N={layers}: a DARTS supernet needs at least 3 cells")
        edge_ops = {ct: [op_names] * len(EDGES) for ct in CELL_TYPES}
        self.body = DARTSBody(C, layers, stem_multiplier, in_channels, num_classes, edge_ops, bn_affine, bn_track,
                              pool_bn, partial_channels)
        for m in self.body.modules():
            if isinstance(m, (SepConv, DilConv)):
                m.recompute = recompute
        self.edge_norm = edge_norm
        if edge_norm:
            self.betas = nn.ParameterDict({ct: nn.Parameter(alpha_init_std * torch.randn(len(EDGES)))
                                           for ct in CELL_TYPES})

    # -- architecture parameters: α, and β with edge normalisation ------------------------------------------------
    def edge_weights(self, cell_type: str, detach: bool = False) -> torch.Tensor:
        """softmax(β) over each node's incoming edges (PC-DARTS edge normalisation), one weight per edge."""
        b = self.betas[cell_type].detach() if detach else self.betas[cell_type]
        return torch.cat([torch.softmax(b[list(INCOMING[dst])], dim=0) for dst in NODES])

    def mixing_weights(self, detach: bool = False) -> dict[str, torch.Tensor]:
        w = super().mixing_weights(detach)
        if self.edge_norm:
            w = {ct: v * self.edge_weights(ct, detach).unsqueeze(1) for ct, v in w.items()}
        return w

    def arch_parameters(self) -> list[nn.Parameter]:
        betas = [self.betas[ct] for ct in self.cell_types] if self.edge_norm else []
        return super().arch_parameters() + betas

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith(("alphas.", "betas."))]

    # -- staged forward: the state is (s0, s1), the two inputs of the next cell ---------------------------------------
    def stem(self, x: torch.Tensor):
        s = self.body.stem(x)
        return s, s

    @property
    def num_layers(self) -> int:
        return len(self.body.cells)

    def layer_cell_type(self, i: int) -> str:
        return self.body.cells[i].cell_type

    def run_layer(self, i: int, state, plans: dict[str, Plan], fan: Fan | None = None):
        return self.body.run_layer(i, state, plans, fan=fan)

    def head(self, state) -> torch.Tensor:
        return self.body.head(state)


class DARTSNetwork(nn.Module):
    """The discrete network of one architecture: the same cells with one op per kept edge (module names as in the
    supernet). `forward` gives logits; `forward_aux` also the auxiliary logits (training mode, `auxiliary` only).
    Set `drop_path_prob` per epoch (DARTS ramps it linearly); it acts in training mode only. `imagenet`: DARTS'
    NetworkImageNet (its stem and auxiliary head; stem_multiplier unused)."""

    def __init__(self, arch: Architecture, C=36, layers=20, stem_multiplier=3, in_channels=3, num_classes=10,
                 auxiliary=False, bn_affine=True, bn_track=True, pool_bn=False, drop_path_prob=0.0,
                 imagenet=False):
        super().__init__()
        validate_darts(arch)
        self.C, self.layers, self.auxiliary = C, layers, auxiliary
        self.drop_path_prob = drop_path_prob
        edge_ops = {ct: [[op] if op else [] for op in (arch.cell(ct).op_on(s, d) for s, d in EDGES)]
                    for ct in CELL_TYPES}
        self.body = DARTSBody(C, layers, stem_multiplier, in_channels, num_classes, edge_ops, bn_affine, bn_track,
                              pool_bn, 1, auxiliary, imagenet)
        self.plans: dict[str, Plan] = {ct: [[(0, 1.0)] if ops else [] for ops in edge_ops[ct]] for ct in CELL_TYPES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_aux(x)[0]

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        state, aux = self.body.inputs(x), None
        for i in range(len(self.body.cells)):
            state = self.body.run_layer(i, state, self.plans, self.drop_path_prob)
            if i == self.body.aux_layer and self.body.auxiliary is not None and self.training:
                aux = self.body.auxiliary(state[1])
        return self.body.head(state), aux

    @torch.no_grad()
    def load_from_supernet(self, supernet: DARTSSupernet) -> None:
        """Inherit every weight and BN statistic of this network from the supernet (the auxiliary head stays as
        initialised: the supernet has none)."""
        inherit_weights(self.body, supernet.body, skip=("auxiliary.",))


@dataclass
class DARTSSpace:
    """Factory for DARTS-space supernets and networks. `N` is the number of cells (DARTS' "layers")."""

    chooses_none = False  # `derive` never keeps `none` (not a dataclass field: no annotation)

    C: int = 16
    N: int = 8
    in_channels: int = 3
    num_classes: int = 10
    bn_affine: bool = False
    bn_track: bool = True
    alpha_init_std: float = 1e-3
    stem_multiplier: int = 3
    partial_channels: int = 1     # K of PC-DARTS; 1 = every channel through the ops
    edge_norm: bool = False       # PC-DARTS edge normalisation (β)
    pool_bn: bool = True          # BN(affine=False) after pooling ops in the supernet (original DARTS)
    recompute: bool = True        # supernet convolutions recompute their depthwise-pointwise outputs in backward:
                                  # same numbers, ~25% less memory, ~10% more time (benchmarks/darts_step.py)

    name = "darts"
    op_names = SPACE_OPS["darts"]
    cell_types = CELL_TYPES
    inputs_per_node = 2  # each intermediate node keeps 2 input edges (DARTS-PT's topology step prunes to this)

    def edges(self, cell_type: str = "normal") -> tuple[tuple[int, int], ...]:
        return EDGES

    def supernet(self) -> DARTSSupernet:
        return DARTSSupernet(self.op_names, self.C, self.N, self.stem_multiplier, self.in_channels, self.num_classes,
                             self.bn_affine, self.bn_track, self.alpha_init_std, self.partial_channels,
                             self.edge_norm, self.pool_bn, self.recompute)

    def network(self, arch: Architecture, C: int | None = None, layers: int | None = None, auxiliary: bool = False,
                drop_path_prob: float = 0.0, bn_affine: bool = True, pool_bn: bool = False,
                imagenet: bool = False) -> DARTSNetwork:
        """The discrete network (DARTS' evaluation network: affine BN, no BN after pooling); C and layers default to
        this space's (the paper evaluates at C=36, 20 layers; on ImageNet, `imagenet=True`, at C=48, 14 layers).
        pool_bn=True, bn_affine=False give the supernet's exact sub-network for weight inheritance."""
        return DARTSNetwork(arch, C or self.C, layers or self.N, self.stem_multiplier, self.in_channels,
                            self.num_classes, auxiliary, bn_affine, self.bn_track, pool_bn, drop_path_prob, imagenet)

    def architecture(self, chosen: dict[str, Sequence[int | None]]) -> Architecture:
        """The Architecture with op index chosen[cell_type][e] on each kept edge e (None: edge dropped)."""
        cells = []
        for ct in CELL_TYPES:
            edges = tuple(Edge(src, dst, self.op_names[k]) for (src, dst), k in zip(EDGES, chosen[ct]) if k is not None)
            cells.append((ct, Cell(edges, CONCAT)))
        arch = Architecture(SPACE, tuple(cells))
        validate_darts(arch)
        return arch

    def derive(self, scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None) -> Architecture:
        """The DARTS genotype parse: per node keep the 2 incoming edges whose best enabled non-`none` op scores
        highest, with that op on each. `none` is never chosen (original DARTS drops it here too). Ties go to the
        lower index, as in DARTS' stable sort and first-maximum argmax."""
        chosen = {}
        for ct in CELL_TYPES:
            s = scores[ct].detach().float().cpu().tolist()
            m = mask[ct].tolist() if mask is not None else [[True] * len(self.op_names)] * len(EDGES)
            ops: list[int | None] = [None] * len(EDGES)
            for dst in NODES:
                best = {e: self._best_op(s[e], m[e]) for e in INCOMING[dst]}
                candidates = [e for e in INCOMING[dst] if best[e] is not None]
                if len(candidates) < 2:
                    raise UserError(f"{ct} cell: node {dst} has fewer than 2 incoming edges with an enabled op "
                                    f"other than none")
                for e in sorted(candidates, key=lambda e: -best[e][1])[:2]:
                    ops[e] = best[e][0]
            chosen[ct] = ops
        return self.architecture(chosen)

    def _best_op(self, row: list[float], enabled: list[bool]) -> tuple[int, float] | None:
        best = None
        for k, (v, on) in enumerate(zip(row, enabled)):
            if on and self.op_names[k] != "none" and (best is None or v > best[1]):
                best = (k, v)
        return best


@dataclass
class Darts7Space(DARTSSpace):
    """DARTS without `none`: the 7 ops of the official DARTS-PT, Shapley-NAS and GM-NAS code."""
    name = "darts-7"
    op_names = SPACE_OPS["darts-7"]


# R-DARTS space S1 (Zela et al., ICLR 2020) as DARTS-PT defines it: the two candidate ops of each edge, per cell
# type, in DARTS edge order.
S1_EDGE_OPS = {
    "normal": [("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
               ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
               ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
               ("skip_connect", "sep_conv_3x3"), ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
               ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5")],
    "reduce": [("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"), ("max_pool_3x3", "avg_pool_3x3"),
               ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
               ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
               ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
               ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5")],
}


@dataclass
class DartsS1Space(DARTSSpace):
    """R-DARTS S1: two ops per edge, a different pair per edge and cell type (S1_EDGE_OPS), as masks over the 7 DARTS
    ops: the other ops' modules exist but are never computed, and their α weigh 0."""
    name = "darts-s1"
    op_names = SPACE_OPS["darts-s1"]

    def supernet(self) -> DARTSSupernet:
        net = super().supernet()
        for ct, pairs in S1_EDGE_OPS.items():
            net.set_mask(ct, torch.tensor([[op in pair for op in self.op_names] for pair in pairs]))
        return net


@dataclass
class DartsS2Space(DARTSSpace):
    """R-DARTS S2: skip_connect and sep_conv_3x3 on every edge."""
    name = "darts-s2"
    op_names = SPACE_OPS["darts-s2"]


@dataclass
class DartsS3Space(DARTSSpace):
    """R-DARTS S3: none, skip_connect and sep_conv_3x3 on every edge."""
    name = "darts-s3"
    op_names = SPACE_OPS["darts-s3"]


@dataclass
class DartsS4Space(DARTSSpace):
    """R-DARTS S4: noise and sep_conv_3x3 on every edge."""
    name = "darts-s4"
    op_names = SPACE_OPS["darts-s4"]


DARTS_SPACES = (DARTSSpace, Darts7Space, DartsS1Space, DartsS2Space, DartsS3Space, DartsS4Space)
