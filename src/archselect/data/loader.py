"""Seeded, resumable mini-batches from an in-memory ImageSet.

Batch k of epoch e is a pure function of (seed, e, k): the epoch's order comes from a generator seeded by
(seed, e) and the batch's augmentation from one seeded by (seed, e, k). A run killed mid-epoch therefore resumes
with exactly the batches it would have seen, by ``loader.epoch(e, start=k)``.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch

from ..errors import UserError
from .augment import augment_batch, cutout, normalize, resize
from .imageset import ImageSet


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """With `drop_last` and fewer images than a batch, one smaller batch rather than none."""
    if not drop_last:
        return -(-n // batch_size)
    return n // batch_size if n >= batch_size else min(n, 1)


class Loader:
    """Mini-batches of (x float32 normalised (B, C, H, W), y int64 (B,)) on ``device``.

    Images stay uint8 in memory (moved to ``device`` once) and become float one batch at a time. ``image_size``
    resizes the whole set once, up front. Augmentation (``augment=True``): pad-crop, horizontal flip where
    ``ds.flip``, and cutout of side ``cutout`` if > 0. With ``drop_last`` and fewer images than ``batch_size``,
    the epoch is one smaller batch rather than none.
    """

    def __init__(self, ds: ImageSet, batch_size: int, *, seed: int, augment: bool,
                 device: str | torch.device = "cpu", shuffle: bool = True, drop_last: bool = True,
                 cutout: int = 0, image_size: int | None = None, channels_last: bool = False):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if cutout < 0:
            raise UserError(f"cutout length must be >= 0, got {cutout}")
        if image_size is not None and image_size < 1:
            raise UserError(f"image size must be at least 1, got {image_size}")
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.cutout, self.channels_last = cutout, channels_last
        self.device = torch.device(device)
        images = ds.images if image_size is None else resize(ds.images, image_size)
        self.images = images.to(self.device)
        self.labels = ds.labels.to(self.device)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) of the last epoch used

    def __len__(self) -> int:
        return batches_per_epoch(len(self.ds), self.batch_size, self.drop_last)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            n = len(self.ds)
            perm = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
            self._order = (epoch, perm.to(self.device))
        return self._order[1]

    def batch(self, epoch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``k`` of epoch ``epoch``."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range: an epoch has {len(self)} batches")
        idx = self._permutation(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        x, y = self.images[idx], self.labels[idx]
        gen = _generator(self.seed, epoch, k) if self.augment else None
        if gen is not None:
            x = augment_batch(x, gen, flip=self.ds.flip)
        x = normalize(x, self.ds.mean, self.ds.std)
        if gen is not None and self.cutout > 0:
            x = cutout(x, self.cutout, gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on (``start`` > 0 resumes an interrupted epoch)."""
        for k in range(start, len(self)):
            yield self.batch(epoch, k)

    def rebatch(self, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool = False, augment: bool = False,
                cutout: int = 0) -> "Loader":
        """A loader over the same images (same size, device and layout) with another batch size and order,
        unaugmented unless `augment` (with `cutout`)."""
        size = self.images.shape[-1]
        return Loader(self.ds, batch_size, seed=seed, augment=augment, shuffle=shuffle, drop_last=drop_last,
                      device=self.device, image_size=None if size == self.ds.image_size else size,
                      channels_last=self.channels_last, cutout=cutout)
