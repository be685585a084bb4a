"""The search-time split: the training set divided into search-train (trains the weights) and search-valid (trains α,
scores ops). NAS-Bench-201 / DARTS halve it (`portion`); ProxylessNAS holds out a fixed number of images
(`valid_size`: 50,000 of ImageNet's train split), in its released code the same number from each class.

Works on any set with `len`, `labels`, `num_classes`, `name` and `subset(indices)`: an in-memory `ImageSet`, or an
`ImageFolder` (whose subset is a shorter file list; nothing is decoded).
"""
from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

import torch

from ..errors import UserError


class Splittable(Protocol):
    labels: torch.Tensor
    name: str

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def subset(self, indices: torch.Tensor | Sequence[int]): ...


S = TypeVar("S", bound=Splittable)


def search_split(ds: S, seed: int, subset: int | None = None, portion: float = 0.5,
                 valid_size: int | None = None, balanced: bool = False) -> tuple[S, S]:
    """Split ``ds`` (a train set) into (search-train, search-valid), a pure function of ``seed``.

    ``subset`` first draws that many images (seeded) from ``ds``. Then ``portion`` of them go to search-train, or,
    with ``valid_size``, exactly that many go to search-valid and the rest to search-train; ``balanced`` draws those
    ``valid_size`` images class by class (``valid_size // classes`` each, one more for the first
    ``valid_size % classes`` classes: ProxylessNAS' released `random_sample_valid_set`).
    """
    n = len(ds) if subset is None else subset
    if n > len(ds):
        raise UserError(f"{ds.name}: subset of {n} images asked for, but the training set has only {len(ds)}")
    if not 0.0 < portion < 1.0:
        raise UserError(f"search split portion must lie strictly between 0 and 1, got {portion}")
    n_valid = n - int(round(n * portion)) if valid_size is None else valid_size
    if n_valid < 1 or n - n_valid < 1:
        how = f"portion {portion}" if valid_size is None else f"data.valid_size={valid_size}"
        raise UserError(f"{ds.name}: {n} images cannot be split into search-train and search-valid with "
                        f"{how}: each part needs at least one image")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    in_valid = _balanced_draw(ds, perm, n_valid) if balanced else torch.arange(n) >= n - n_valid
    # sorted: which images land in each part depends on the seed, their storage order does not
    return ds.subset(perm[~in_valid].sort().values), ds.subset(perm[in_valid].sort().values)


def _balanced_draw(ds: Splittable, perm: torch.Tensor, n_valid: int) -> torch.Tensor:
    """Which positions of ``perm`` go to search-valid: walking ``perm`` in order, an image is held out while its
    class still has room in its quota."""
    classes = ds.num_classes
    quota = torch.full((classes,), n_valid // classes, dtype=torch.int64)
    quota[:n_valid % classes] += 1
    labels = ds.labels[perm]
    counts = torch.bincount(labels, minlength=classes)
    short = (counts < quota).nonzero().flatten()
    if len(short):
        c = int(short[0])
        raise UserError(f"{ds.name}: data.valid_balanced holds out {int(quota[c])} images of class {c}, but the "
                        f"images drawn hold only {int(counts[c])} of it")
    by_class = torch.argsort(labels, stable=True)  # within a class, in the order of perm
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[by_class] = torch.arange(len(labels)) - starts[labels[by_class]]
    return rank < quota[labels]
