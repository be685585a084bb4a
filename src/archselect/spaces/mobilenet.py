"""ProxylessNAS' mobile search space (Cai et al., ICLR 2019): a MobileNetV2 backbone whose searchable layers each
choose an inverted residual block (kernel 3, 5 or 7; expansion 3 or 6) or `zero`, which skips the layer.

Layout at 224 px (the paper's ImageNet space, as its released code builds it): a 3x3 stride-2 conv to 32 channels, a
fixed inverted residual block of expansion 1 to 16 channels, then six stages of (width, layers, first stride)
(24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1), a 1x1 conv to 1280 channels, global average
pooling and a linear classifier. At 32 px (CIFAR-sized images) the stem conv and the first stage keep stride 1, as
MobileNetV2's CIFAR adaptations do, so the network downsamples 8x instead of 32x. `width_mult` scales every width
(to multiples of 8, as MobileNetV2 does; the 1280-channel head only grows), `stage_layers` sets the layers per stage
(the CPU proxy: e.g. width 0.25 and 2 layers per stage).

In archselect's terms each stage is a cell type (`stage1` .. `stage6`) whose edges i->i+1 are its layers, so α is
one `layers x 7` matrix per stage, and a selector's prefix cache reuses the stages before the one it varies. A
stage's first layer changes the width or stride: it has no residual, and its mask disables `zero`. Every other layer
computes x + Σ_k w_k op_k(x), so `zero` (never computed) leaves the identity. Supernet and discrete network are the
same modules, so a discrete network loads its weights from a supernet by name (`load_from_supernet`).

`space.elastic=true` builds Once-for-All's elastic supernet instead (`ElasticMobileNetSupernet`, layers from
elastic.py): the same stem, head, α, masks and plans, but each layer's candidates are cuts of one shared block (the
kernel's centre crops through learned transformations, the first channels of the widest expansion). A selector runs
on it unchanged; a one-hot plan runs exactly one sub-network, and a discrete network loads that sub-network's weights
from it (`load_from_supernet`). It is what `search.optimizer=ofa` trains (docs/optimizers.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import Architecture, mobilenet_architecture, mobilenet_stages
from ..errors import UserError
from ..mobilenet_text import (CELL_TYPES, HEAD_WIDTH, MAX_LAYERS, OPS, STAGE_SPECS, STAGES, STEM_WIDTHS,
                              kernel_and_expansion)
from ..supernet import Plan, Supernet, inherit_weights, weighted_sum
from .elastic import ElasticLayer
from .ops import bn

RESOLUTIONS = (224, 32)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor` (at least `divisor`), never below 90% of `value` (MobileNetV2's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


@dataclass(frozen=True)
class Layer:
    stage: int      # 0-based
    index: int      # within its stage
    C_in: int
    C_out: int
    stride: int

    @property
    def first(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class Layout:
    stem: tuple[int, int]       # first conv width, expansion-1 block width
    stem_stride: int
    layers: tuple[Layer, ...]   # the searchable layers, stage by stage
    head: int                   # 1x1 conv width before pooling


def layout(resolution: int, width_mult: float, stage_layers: Sequence[int]) -> Layout:
    stem = tuple(make_divisible(c * width_mult) for c in STEM_WIDTHS)
    small = resolution == 32
    layers, c_in = [], stem[1]
    for s, ((width, _, stride), n) in enumerate(zip(STAGE_SPECS, stage_layers)):
        c_out = make_divisible(width * width_mult)
        first_stride = 1 if small and s == 0 else stride
        for i in range(n):
            layers.append(Layer(s, i, c_in if i == 0 else c_out, c_out, first_stride if i == 0 else 1))
        c_in = c_out
    head = make_divisible(HEAD_WIDTH * width_mult) if width_mult > 1.0 else HEAD_WIDTH
    return Layout(stem, 1 if small else 2, tuple(layers), head)


class InvertedResidual(nn.Module):
    """MobileNetV2's block without its residual: 1x1 expand (skipped at expansion 1) + BN + ReLU6, depthwise k x k
    (the stride) + BN + ReLU6, 1x1 project + BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, expansion: int, affine: bool, track: bool):
        super().__init__()
        hidden = C_in * expansion
        self.expand = None if expansion == 1 else nn.Sequential(
            nn.Conv2d(C_in, hidden, 1, bias=False), bn(hidden, affine, track), nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            bn(hidden, affine, track), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(hidden, C_out, 1, bias=False), bn(C_out, affine, track))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.depthwise(x if self.expand is None else self.expand(x)))


class MixedLayer(nn.Module):
    """One searchable layer: its candidate blocks (a ModuleDict by op name; `zero` has no module), their weighted
    sum, plus the input where the layer keeps width and stride (not a stage's first layer)."""

    def __init__(self, layer: Layer, op_names: Sequence[str], affine: bool, track: bool):
        super().__init__()
        self.op_names = tuple(op_names)
        self.residual = not layer.first
        self.C_out, self.stride = layer.C_out, layer.stride
        self.ops = nn.ModuleDict({name: _block(layer, name, affine, track) for name in op_names if name != "zero"})

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        y = weighted_sum([(w, self.ops[self.op_names[k]](x)) for k, w in plan if self.op_names[k] != "zero"])
        if self.residual:
            return x if y is None else x + y
        if y is None:  # every op removed (a selector's ablation): the layer outputs zeros of its shape
            n, _, h, w = x.shape
            s = self.stride
            return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)
        return y


def _block(layer: Layer, op: str, affine: bool, track: bool) -> InvertedResidual:
    kernel, expansion = kernel_and_expansion(op)
    return InvertedResidual(layer.C_in, layer.C_out, kernel, layer.stride, expansion, affine, track)


class MobileNetBody(nn.Module):
    """Stem conv + expansion-1 block, the searchable layers, 1x1 conv head, global pooling, classifier."""

    def __init__(self, lay: Layout, in_channels: int, num_classes: int, layer_ops: Sequence[Sequence[str]],
                 affine: bool, track: bool, make_layer=MixedLayer):
        super().__init__()
        c0, c1 = lay.stem
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, lay.stem_stride, 1, bias=False), bn(c0, True, True),
                                  nn.ReLU6(inplace=True), InvertedResidual(c0, c1, 3, 1, 1, True, True))
        self.layers = nn.ModuleList([make_layer(layer, ops, affine, track)
                                     for layer, ops in zip(lay.layers, layer_ops)])
        c_last = lay.layers[-1].C_out
        self.lastconv = nn.Sequential(nn.Conv2d(c_last, lay.head, 1, bias=False), bn(lay.head, True, True),
                                      nn.ReLU6(inplace=True))
        self.classifier = nn.Linear(lay.head, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.lastconv(x), 1), 1))


def stage_mask(layers: int, op_names: Sequence[str]) -> torch.Tensor:
    """A stage's base mask (layers x ops): every op, but no `zero` on its first layer, which cannot be skipped."""
    mask = torch.ones(layers, len(op_names), dtype=torch.bool)
    if "zero" in op_names:
        mask[0, list(op_names).index("zero")] = False
    return mask


def stage_edges(lay: Layout) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per stage (cell type), its layers as edges i->i+1."""
    counts = [sum(1 for layer in lay.layers if layer.stage == s) for s in range(STAGES)]
    return {ct: tuple((i, i + 1) for i in range(n)) for ct, n in zip(CELL_TYPES, counts)}


def elastic_layer(layer: Layer, op_names: Sequence[str], affine: bool, track: bool) -> ElasticLayer:
    return ElasticLayer(layer.C_in, layer.C_out, layer.stride, not layer.first, op_names, affine, track)


class MobileNetSupernet(Supernet):
    elastic = False  # whether the candidates of a layer share weights (Once-for-All)
    make_layer = staticmethod(MixedLayer)

    def __init__(self, lay: Layout, in_channels=3, num_classes=1000, op_names=OPS, bn_affine=False, bn_track=True,
                 alpha_init_std=1e-3):
        super().__init__(stage_edges(lay), op_names, alpha_init_std)
        self.body = MobileNetBody(lay, in_channels, num_classes, [op_names] * len(lay.layers), bn_affine, bn_track,
                                  self.make_layer)
        self.position = [(CELL_TYPES[layer.stage], layer.index) for layer in lay.layers]
        for ct in self.cell_types:
            self.set_mask(ct, self.base_mask(ct))

    def base_mask(self, cell_type: str) -> torch.Tensor:
        return stage_mask(len(self.edges[cell_type]), self.op_names).to(self.mask(cell_type).device)

    def mixed_edges(self) -> list[tuple[str, int, nn.Module]]:
        """Each searchable layer as edge j of its stage; the stem (with its fixed expansion-1 block) and the head
        hold no mixed edge."""
        return [(ct, j, layer) for (ct, j), layer in zip(self.position, self.body.layers)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.stem(x)

    @property
    def num_layers(self) -> int:
        return len(self.body.layers)

    def layer_cell_type(self, i: int) -> str:
        return self.position[i][0]

    def run_layer(self, i: int, x: torch.Tensor, plans: dict[str, Plan]) -> torch.Tensor:
        ct, j = self.position[i]
        return self.body.layers[i](x, plans[ct][j])

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.head(x)


class ElasticMobileNetSupernet(MobileNetSupernet):
    """Once-for-All's elastic supernet: every layer an ElasticLayer (one shared block per layer)."""

    elastic = True
    make_layer = staticmethod(elastic_layer)

    def subnet_state(self, layer_ops: Sequence[str]) -> dict[str, torch.Tensor]:
        """The body state of the discrete network with op layer_ops[i] on layer i: stem and head as they are, each
        layer's block cut out of its shared weights (`ElasticLayer.block_state`)."""
        out = {k: v.detach().clone() for k, v in self.body.state_dict().items() if not k.startswith("layers.")}
        for i, op in enumerate(layer_ops):
            if op != "zero":
                out.update({f"layers.{i}.ops.{op}.{k}": v for k, v in self.body.layers[i].block_state(op).items()})
        return out


class MobileNetNetwork(nn.Module):
    """The discrete network of one architecture; same module names as the supernet."""

    def __init__(self, arch: Architecture, lay: Layout, in_channels=3, num_classes=1000, bn_affine=True,
                 bn_track=True):
        super().__init__()
        self.layer_ops = [op for ops in mobilenet_stages(arch) for op in ops]
        self.body = MobileNetBody(lay, in_channels, num_classes, [[op] for op in self.layer_ops], bn_affine, bn_track)
        self.plan = [[] if op == "zero" else [(0, 1.0)] for op in self.layer_ops]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body.stem(x)
        for layer, plan in zip(self.body.layers, self.plan):
            x = layer(x, plan)
        return self.body.head(x)

    @torch.no_grad()
    def load_from_supernet(self, supernet: MobileNetSupernet) -> None:
        """Inherit every weight and BN statistic whose name this network shares with the supernet; from an elastic
        supernet, this architecture's cut of each layer's shared block."""
        if not getattr(supernet, "elastic", False):
            inherit_weights(self.body, supernet.body)
            return
        state, own = supernet.subnet_state(self.layer_ops), self.body.state_dict()
        missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if missing:
            raise ValueError(f"supernet lacks {len(missing)} tensors of this network, e.g. {missing[0]}")
        self.body.load_state_dict({k: state[k] for k in own})


@dataclass
class MobileNetSpace:
    """Factory for ProxylessNAS-style MobileNet supernets and networks of a given size."""

    chooses_none = True  # `derive` may keep `zero` (a skipped layer) wherever the mask allows it

    resolution: int = 224                 # 224: ImageNet layout (32x downsampling); 32: CIFAR layout (8x)
    width_mult: float = 1.0
    stage_layers: Sequence[int] | None = None  # layers per stage; None: the paper's (4, 4, 4, 4, 4, 1)
    in_channels: int = 3
    num_classes: int = 1000
    bn_affine: bool = False
    bn_track: bool = True
    alpha_init_std: float = 1e-3
    elastic: bool = False                 # Once-for-All's weight-sharing layers (search.optimizer=ofa trains them)

    name = "mobilenet"
    op_names = OPS
    cell_types = CELL_TYPES

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise UserError(f"space.resolution={self.resolution}: choose 224 (ImageNet layout) or 32 (CIFAR layout)")
        if not 0 < self.width_mult <= 8:
            raise UserError(f"space.width_mult={self.width_mult} must lie in (0, 8]")
        layers = tuple(spec[1] for spec in STAGE_SPECS) if self.stage_layers is None else tuple(self.stage_layers)
        if len(layers) != STAGES or not all(isinstance(n, int) and 1 <= n <= MAX_LAYERS for n in layers):
            raise UserError(f"space.stage_layers must list {STAGES} layer counts from 1 to {MAX_LAYERS}, "
                            f"got {list(layers)}")
        self.stage_layers = layers
        self.layout = layout(self.resolution, self.width_mult, layers)

    def edges(self, cell_type: str) -> tuple[tuple[int, int], ...]:
        return stage_edges(self.layout)[cell_type]

    def base_mask(self, cell_type: str) -> torch.Tensor:
        """The supernet's starting mask for a stage, without building the supernet."""
        return stage_mask(len(self.edges(cell_type)), self.op_names)

    def supernet(self) -> MobileNetSupernet:
        cls = ElasticMobileNetSupernet if self.elastic else MobileNetSupernet
        return cls(self.layout, self.in_channels, self.num_classes, self.op_names, self.bn_affine, self.bn_track,
                   self.alpha_init_std)

    def network(self, arch: Architecture, bn_affine: bool = True) -> MobileNetNetwork:
        counts = [len(ops) for ops in mobilenet_stages(arch)]
        if counts != list(self.stage_layers):
            raise UserError(f"the architecture has {counts} layers per stage; this mobilenet space has "
                            f"{list(self.stage_layers)} (space.stage_layers)")
        return MobileNetNetwork(arch, self.layout, self.in_channels, self.num_classes, bn_affine, self.bn_track)

    def architecture(self, chosen: dict[str, Sequence[int]]) -> Architecture:
        """The Architecture with op index chosen[stage][i] on each layer i of each stage."""
        return mobilenet_architecture([[self.op_names[k] for k in chosen[ct]] for ct in CELL_TYPES])

    def derive(self, scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None) -> Architecture:
        """Keep on each layer the enabled op with the highest score; without a mask, a stage's first layer still
        never takes `zero`."""
        chosen = {}
        for ct in CELL_TYPES:
            s = scores[ct].detach().float().clone()
            if mask is not None:
                s[~mask[ct].to(s.device)] = float("-inf")
            if "zero" in self.op_names:
                s[0, self.op_names.index("zero")] = float("-inf")
            chosen[ct] = s.argmax(dim=1).tolist()
        return self.architecture(chosen)
