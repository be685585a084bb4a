"""Seeded, resumable mini-batches decoded from image files in worker processes (`ImageFolder`, i.e. ImageNet).

The interface is `Loader`'s (`epoch(e, start=k)`, `len()`, `image_shape`, `ds`), so `TrainRun` takes either.
Batch k of epoch e is a pure function of (seed, e, k), whatever the number of workers: the epoch's order comes from a
generator seeded by (seed, e), image j of the batch is augmented with one seeded by (seed, e, k, j), and each worker
decodes whole batches that torch's DataLoader hands back in order. A run killed mid-epoch therefore resumes with the
batches it would have seen. What is not pinned: Pillow's decoder and resampling, which may change across Pillow
versions (a resumed run must use the same Pillow to see the same pixels).

A file that cannot be decoded stops the run with a one-line error naming it, rather than being skipped: skipping
would change the batches (and so break resumption), and a corrupt file in ImageNet means a bad copy to fix.
Workers return uint8 batches; normalisation (and channels_last) happen on the training device.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .augment import normalize
from .imagefolder import ImageFolder
from .loader import batches_per_epoch, derive_seed

DEFAULT_SIZE = 224


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class FolderBatches(Dataset):
    """Item (epoch, k) is batch k of that epoch: (uint8 images (B, 3, size, size), labels (B,)), or the one-line
    message of a file that failed to decode (raised in the main process as a UserError)."""

    def __init__(self, ds: ImageFolder, batch_size: int, seed: int, augment: bool, shuffle: bool, size: int,
                 jitter: bool):
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.augment, self.shuffle, self.size, self.jitter = augment, shuffle, size, jitter
        self._order: tuple[int, torch.Tensor] | None = None  # each worker caches its epoch's permutation

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            n = len(self.ds)
            perm = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
            self._order = (epoch, perm)
        return self._order[1]

    def image(self, i: int, epoch: int, k: int, j: int) -> torch.Tensor:
        from .jpeg import eval_image, train_image  # Pillow: the imagenet extra, needed only to decode
        path = self.ds.path(i)
        if not self.augment:
            return eval_image(path, self.size)
        return train_image(path, self.size, _generator(self.seed, epoch, k, j), self.ds.flip, self.jitter)

    def __getitem__(self, key: tuple[int, int]):
        epoch, k = key
        idx = self.order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        try:
            images = [self.image(i, epoch, k, j) for j, i in enumerate(idx.tolist())]
        except UserError as e:  # returned, not raised: DataLoader would wrap it in a worker traceback
            return str(e)
        return torch.stack(images), self.ds.labels[idx]

    def __len__(self) -> int:  # DataLoader asks; items are keyed by (epoch, k), not by position
        return batches_per_epoch(len(self.ds), self.batch_size, drop_last=False)


class FolderLoader:
    """Mini-batches of (x float32 normalised (B, 3, size, size), y int64 (B,)) on `device`, decoded by `workers`
    processes (0: in this one). `augment`: random-resized crop, flip and, with `jitter`, DARTS' colour jitter;
    otherwise resize and centre crop. `image_size` is the crop size (None: 224)."""

    def __init__(self, ds: ImageFolder, batch_size: int, *, seed: int, augment: bool,
                 device: str | torch.device = "cpu", shuffle: bool = True, drop_last: bool = True,
                 image_size: int | None = None, channels_last: bool = False, workers: int = 0,
                 jitter: bool = False):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.ds, self.batch_size, self.drop_last = ds, batch_size, drop_last
        self.device, self.channels_last, self.workers = torch.device(device), channels_last, workers
        self.size = image_size or DEFAULT_SIZE
        self.batches = FolderBatches(ds, batch_size, seed, augment, shuffle, self.size, jitter)

    def __len__(self) -> int:
        return batches_per_epoch(len(self.ds), self.batch_size, self.drop_last)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.ds.channels, self.size, self.size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start` on (`start` > 0 resumes an interrupted epoch)."""
        keys = [(epoch, k) for k in range(start, len(self))]
        batches = DataLoader(self.batches, batch_size=None, sampler=keys, num_workers=self.workers,
                             pin_memory=self.device.type == "cuda")
        for item in batches:
            if isinstance(item, str):
                raise UserError(item)
            yield self._to_device(*item)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(x.to(self.device, non_blocking=True), self.ds.mean, self.ds.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)
