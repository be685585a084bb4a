"""The search-time split of NAS-Bench-201 / DARTS: the training set halved into search-train and search-valid."""
from __future__ import annotations

import torch

from ..errors import UserError
from .imageset import ImageSet


def search_split(ds: ImageSet, seed: int, subset: int | None = None,
                 portion: float = 0.5) -> tuple[ImageSet, ImageSet]:
    """Split ``ds`` (a train set) into (search-train, search-valid), a pure function of ``seed``.

    ``subset`` first draws that many images (seeded) from ``ds``; ``portion`` of them go to search-train.
    """
    n = len(ds) if subset is None else subset
    if n > len(ds):
        raise UserError(f"{ds.name}: subset of {n} images asked for, but the training set has only {len(ds)}")
    if not 0.0 < portion < 1.0:
        raise UserError(f"search split portion must lie strictly between 0 and 1, got {portion}")
    n_train = int(round(n * portion))
    if n_train < 1 or n - n_train < 1:
        raise UserError(f"{ds.name}: {n} images cannot be split into search-train and search-valid with "
                        f"portion {portion}: each part needs at least one image")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    # sorted: which images land in each half depends on the seed, their storage order does not
    return ds.subset(perm[:n_train].sort().values), ds.subset(perm[n_train:].sort().values)
