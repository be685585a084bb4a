"""Batches the caller already holds: any iterable of (images, labels) tensor pairs, as a loader the selectors use
like archselect's own (seeded order, batch k of epoch e a pure function of the seed)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from ..errors import UserError
from .loader import _generator, batches_per_epoch


class TensorLoader:
    """Mini-batches of images given as float tensors (already normalised as the supernet expects), unaugmented."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, seed: int = 0,
                 shuffle: bool = False, drop_last: bool = False, device: str | torch.device = "cpu",
                 channels_last: bool = False):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.channels_last = channels_last
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) of the last epoch used

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size, self.drop_last)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def batch(self, epoch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range: an epoch has {len(self)} batches")
        idx = self._permutation(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        x = self.images[idx]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order, drawn once per epoch (not once per batch)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.labels)
            perm = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
            self._order = (epoch, perm.to(self.device))
        return self._order[1]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(start, len(self)):
            yield self.batch(epoch, k)

    def rebatch(self, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool = False, augment: bool = False,
                cutout: int = 0) -> "TensorLoader":
        if augment:  # the caller's own tensors: no dataset metadata (flip, mean, std) to augment them by
            raise UserError("augment: scoring batches given as tensors cannot be augmented; set augment: false")
        return TensorLoader(self.images, self.labels, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                            device=self.device, channels_last=self.channels_last)


def from_batches(batches: Iterable[Any], what: str, *, device: str | torch.device = "cpu", seed: int = 0,
                 shuffle: bool = False, drop_last: bool = False) -> TensorLoader:
    """A TensorLoader over every image of `batches` (an iterable of (images, labels) pairs: a DataLoader, a list),
    in batches of the first one's size. Each bad item is one line naming `what` and its position."""
    xs, ys = [], []
    for i, item in enumerate(batches):
        if not (isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor)
                and isinstance(item[1], torch.Tensor)):
            raise UserError(f"{what}: batch {i} is not an (images, labels) pair of tensors")
        x, y = item[0], item[1]
        if x.dim() != 4 or not x.is_floating_point():
            raise UserError(f"{what}: batch {i} images have shape {tuple(x.shape)} and dtype {x.dtype}; expected "
                            f"float (batch, channels, height, width)")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
            raise UserError(f"{what}: batch {i} labels must be integer class indices, one per image")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise UserError(f"{what}: batch {i} images are {tuple(x.shape[1:])}, batch 0's {tuple(xs[0].shape[1:])}")
        xs.append(x.detach())
        ys.append(y.detach().long())
    if not xs:
        raise UserError(f"{what}: no batches")
    return TensorLoader(torch.cat(xs), torch.cat(ys), xs[0].shape[0], seed=seed, shuffle=shuffle,
                        drop_last=drop_last, device=device)
