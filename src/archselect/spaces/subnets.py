"""MobileNet sub-networks in Once-for-All's terms: a depth per stage, a kernel and an expansion per layer.

`Genes` is one sub-network (OFA's `ks`, `e`, `d` lists): a kernel and an expansion for every layer, skipped or not,
and a depth per stage; the stage keeps its first `depth` layers and the rest are `zero` (OFA only ever drops a
stage's *last* layers, so a sub-network never has `zero` in the middle of a stage). `Choices` is what may be drawn:
per layer the (kernel, expansion) pairs that are allowed and enabled in the supernet's mask, per stage the depths
whose skipped layers all have `zero` enabled. The training phases (optimizers/ofa.py) and the sub-network search
(selection/ofa_search.py) both draw from it: uniform samples, the largest and smallest sub-networks (the sandwich
rule), OFA's mutation and crossover. Draws come from the torch generator passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..arch import Architecture, mobilenet_architecture
from ..errors import UserError
from ..mobilenet_text import kernel_and_expansion


@dataclass(frozen=True)
class Genes:
    kernels: tuple[int, ...]      # per layer (all layers of all stages)
    expansions: tuple[int, ...]   # per layer
    depths: tuple[int, ...]       # per stage: layers kept

    def key(self) -> tuple:
        return self.kernels, self.expansions, self.depths


def _pick(options: Sequence, generator: torch.Generator):
    return options[int(torch.randint(len(options), (), generator=generator))]


def _coin(p: float, generator: torch.Generator) -> bool:
    return float(torch.rand((), generator=generator)) < p


@dataclass(frozen=True)
class Choices:
    """What each layer and stage of a supernet may take."""

    cell_types: tuple[str, ...]
    stage_of: tuple[int, ...]                        # per layer: its stage index
    index_in_stage: tuple[int, ...]                  # per layer: its position in its stage
    pairs: tuple[dict[int, tuple[int, ...]], ...]    # per layer: kernel -> allowed expansions (ascending)
    depths: tuple[tuple[int, ...], ...]              # per stage: allowed depths (ascending)
    op_names: tuple[str, ...]

    @classmethod
    def of(cls, supernet, kernels: Sequence[int] | None = None, expansions: Sequence[int] | None = None,
           depths: Sequence[int] | None = None) -> "Choices":
        """The choices of `supernet` (a MobileNet supernet: its cell types are stages, their edges layers) within the
        given kernel, expansion and depth sets (None: all). A depth d keeps min(d, layers) layers of a stage."""
        names = tuple(supernet.op_names)
        stage_of, index, pairs, stage_depths = [], [], [], []
        for s, ct in enumerate(supernet.cell_types):
            mask = supernet.mask(ct).cpu()
            n = mask.shape[0]
            for i in range(n):
                allowed: dict[int, list[int]] = {}
                for k, name in enumerate(names):
                    if name == "zero" or not mask[i, k]:
                        continue
                    kernel, e = kernel_and_expansion(name)
                    if (kernels is None or kernel in kernels) and (expansions is None or e in expansions):
                        allowed.setdefault(kernel, []).append(e)
                if not allowed:
                    raise UserError(f"{ct} layer {i + 1}: no block is both enabled and within kernels {kernels} "
                                    f"and expansions {expansions}")
                pairs.append({kernel: tuple(sorted(es)) for kernel, es in sorted(allowed.items())})
                stage_of.append(s)
                index.append(i)
            skippable = [i for i in range(n) if "zero" in names and bool(mask[i, names.index("zero")])]
            wanted = range(1, n + 1) if depths is None else {min(max(int(d), 1), n) for d in depths}
            ok = tuple(sorted(d for d in wanted if all(i in skippable for i in range(d, n))))
            if not ok:
                raise UserError(f"{ct}: no depth in {list(depths or [])} can skip its last layers (zero disabled)")
            stage_depths.append(ok)
        return cls(tuple(supernet.cell_types), tuple(stage_of), tuple(index), tuple(pairs), tuple(stage_depths),
                   names)

    # -- drawing ---------------------------------------------------------------------------------------------------
    def sample(self, generator: torch.Generator) -> Genes:
        """Every gene uniform over its allowed values (OFA's `sample_active_subnet`): a layer's kernel first, then
        an expansion allowed with it."""
        kernels = [_pick(tuple(p), generator) for p in self.pairs]
        expansions = [_pick(p[k], generator) for p, k in zip(self.pairs, kernels)]
        depths = [_pick(d, generator) for d in self.depths]
        return Genes(tuple(kernels), tuple(expansions), tuple(depths))

    def largest(self) -> Genes:
        kernels = [max(p) for p in self.pairs]
        return Genes(tuple(kernels), tuple(p[k][-1] for p, k in zip(self.pairs, kernels)),
                     tuple(d[-1] for d in self.depths))

    def smallest(self) -> Genes:
        kernels = [min(p) for p in self.pairs]
        return Genes(tuple(kernels), tuple(p[k][0] for p, k in zip(self.pairs, kernels)),
                     tuple(d[0] for d in self.depths))

    def mutate(self, genes: Genes, prob: float, generator: torch.Generator) -> Genes:
        """OFA's mutation: each kernel, expansion and depth redrawn with probability `prob` (an expansion that its
        layer's new kernel does not allow is redrawn too)."""
        kernels = [_pick(tuple(p), generator) if _coin(prob, generator) else k
                   for p, k in zip(self.pairs, genes.kernels)]
        expansions = [_pick(p[k], generator) if _coin(prob, generator) or e not in p[k] else e
                      for p, k, e in zip(self.pairs, kernels, genes.expansions)]
        depths = [_pick(ds, generator) if _coin(prob, generator) else d for ds, d in zip(self.depths, genes.depths)]
        return Genes(tuple(kernels), tuple(expansions), tuple(depths))

    def crossover(self, a: Genes, b: Genes, generator: torch.Generator) -> Genes:
        """OFA's crossover: every gene from one of the two parents at random (a layer's kernel and expansion are
        drawn separately; a pair its layer does not allow takes the first parent's expansion, which is allowed)."""
        kernels = [_pick((x, y), generator) for x, y in zip(a.kernels, b.kernels)]
        expansions = []
        for p, k, x, y in zip(self.pairs, kernels, a.expansions, b.expansions):
            e = _pick((x, y), generator)
            expansions.append(e if e in p[k] else (x if x in p[k] else y))
        depths = [_pick((x, y), generator) for x, y in zip(a.depths, b.depths)]
        return Genes(tuple(kernels), tuple(expansions), tuple(depths))

    # -- what a sub-network is -------------------------------------------------------------------------------------
    def stages(self, genes: Genes) -> list[list[str]]:
        """The op names per stage: mbE_kK on the kept layers, `zero` after the stage's depth."""
        out: list[list[str]] = [[] for _ in self.cell_types]
        for layer, (s, i) in enumerate(zip(self.stage_of, self.index_in_stage)):
            kept = i < genes.depths[s]
            out[s].append(f"mb{genes.expansions[layer]}_k{genes.kernels[layer]}" if kept else "zero")
        return out

    def architecture(self, genes: Genes) -> Architecture:
        return mobilenet_architecture(self.stages(genes))

    def weights(self, genes: Genes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """One-hot mixing weights that run exactly this sub-network."""
        out = {}
        for ct, ops in zip(self.cell_types, self.stages(genes)):
            w = torch.zeros(len(ops), len(self.op_names), device=device)
            for i, op in enumerate(ops):
                w[i, self.op_names.index(op)] = 1.0
            out[ct] = w
        return out

    def to_list(self, genes: Genes) -> list[list[int]]:
        return [list(genes.kernels), list(genes.expansions), list(genes.depths)]

    def from_list(self, data) -> Genes:
        """Genes saved by `to_list` (a progress checkpoint), checked against these choices."""
        genes = Genes(*(tuple(int(v) for v in part) for part in data))
        ok = (len(genes.kernels) == len(self.pairs) == len(genes.expansions) and len(genes.depths) == len(self.depths)
              and all(k in p and e in p[k] for p, k, e in zip(self.pairs, genes.kernels, genes.expansions))
              and all(d in ds for ds, d in zip(self.depths, genes.depths)))
        if not ok:
            raise UserError("a saved sub-network does not fit this supernet's choices")
        return genes
