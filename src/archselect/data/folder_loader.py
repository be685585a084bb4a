"""Seeded, resumable mini-batches decoded from image files in worker processes (`ImageFolder`, i.e. ImageNet).

The interface is `Loader`'s (`epoch(e, start=k)`, `batch(e, k)`, `rebatch`, `len()`, `image_shape`, `ds`,
`batch_size`, `seed`), so the search, every selector and `TrainRun` take either. Batch k of epoch e is a pure function
of (seed, e, k), whatever the number of workers and whichever way it is fetched: the epoch's order comes from a
generator seeded by (seed, e), image j of the batch is augmented with one seeded by (seed, e, k, j). A run killed
mid-epoch therefore resumes with the batches it would have seen. What is not pinned: Pillow's decoder and resampling,
which may change across Pillow versions (a resumed run must use the same Pillow to see the same pixels).

Two ways to fetch, the same batches: `epoch()` streams whole batches through torch's DataLoader (each worker decodes
whole batches, handed back in order: the training stream); `batch(e, k)` cuts one batch over a persistent pool of
worker processes (data/decoding.py) and reads one batch ahead, guessing the next key from the step between the last
two (the search's paired search-valid batch every step or every few steps, a selector's batches in turn).

A file that cannot be decoded stops the run with a one-line error naming it, rather than being skipped: skipping
would change the batches (and so break resumption), and a corrupt file in ImageNet means a bad copy to fix.
Workers return uint8 batches; normalisation (and channels_last) happen on the training device.
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .augment import normalize
from .decoding import Job, Transform, decode, gather, jpeg, submit
from .imagefolder import ImageFolder
from .loader import batches_per_epoch, derive_seed

DEFAULT_SIZE = 224
Key = tuple[int, int]  # (epoch, batch)


class FolderBatches(Dataset):
    """Item (epoch, k) is batch k of that epoch: (uint8 images (B, 3, size, size), labels (B,)), or the one-line
    message of a file that failed to decode (raised in the main process as a UserError)."""

    def __init__(self, ds: ImageFolder, batch_size: int, seed: int, augment: bool, shuffle: bool, t: Transform):
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.augment, self.shuffle, self.transform = augment, shuffle, t
        self._order: tuple[int, torch.Tensor] | None = None  # each process caches its epoch's permutation

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            n = len(self.ds)
            perm = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
            self._order = (epoch, perm)
        return self._order[1]

    def jobs(self, epoch: int, k: int) -> tuple[list[Job], torch.Tensor]:
        """The batch's images (path, augmentation seed) and labels."""
        idx = self.order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        jobs = [(str(self.ds.path(i)), derive_seed(self.seed, epoch, k, j) if self.augment else None)
                for j, i in enumerate(idx.tolist())]
        return jobs, self.ds.labels[idx]

    def __getitem__(self, key: Key):
        jobs, labels = self.jobs(*key)
        try:
            images = decode(jobs, self.transform)
        except UserError as e:  # returned, not raised: DataLoader would wrap it in a worker traceback
            return str(e)
        return torch.from_numpy(images), labels

    def __len__(self) -> int:  # DataLoader asks; items are keyed by (epoch, k), not by position
        return batches_per_epoch(len(self.ds), self.batch_size, drop_last=False)


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


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
        if image_size is not None and image_size < 1:
            raise UserError(f"image size must be at least 1, got {image_size}")
        jpeg()  # Pillow missing: one line now, not a traceback from a worker later
        self.ds, self.batch_size, self.seed, self.drop_last = ds, batch_size, seed, drop_last
        self.augment, self.shuffle, self.jitter = augment, shuffle, jitter
        self.device, self.channels_last, self.workers = torch.device(device), channels_last, workers
        self.size = image_size or DEFAULT_SIZE
        self.batches = FolderBatches(ds, batch_size, seed, augment, shuffle, Transform(self.size, ds.flip, jitter))
        self._ahead: dict[Key, tuple[list[cf.Future], torch.Tensor]] = {}  # the batch read ahead
        self._last: Key | None = None  # the key batch() served last

    def __len__(self) -> int:
        return batches_per_epoch(len(self.ds), self.batch_size, self.drop_last)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.ds.channels, self.size, self.size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start` on (`start` > 0 resumes an interrupted epoch)."""
        keys = [(epoch, k) for k in range(start, len(self))]
        # DataLoader draws its workers' base seed from `generator`, by default from the global RNG: a stream opened
        # mid-epoch after a resume would then shift the RNG state the checkpoint restored (the search's draws)
        batches = DataLoader(self.batches, batch_size=None, sampler=keys, num_workers=self.workers,
                             pin_memory=self.device.type == "cuda", generator=_generator(self.seed, epoch, start))
        for item in batches:
            if isinstance(item, str):
                raise UserError(item)
            yield self._to_device(*item)

    def batch(self, epoch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `k` of epoch `epoch`, the same as `epoch(epoch)`'s k-th."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range: an epoch has {len(self)} batches")
        if self.workers == 0:
            jobs, labels = self.batches.jobs(epoch, k)
            return self._to_device(torch.from_numpy(decode(jobs, self.batches.transform)), labels)
        pending = self._ahead.pop((epoch, k), None) or self._submit((epoch, k))
        self._read_ahead((epoch, k))
        futures, labels = pending
        return self._to_device(gather(futures), labels)

    def _submit(self, key: Key) -> tuple[list[cf.Future], torch.Tensor]:
        jobs, labels = self.batches.jobs(*key)
        return submit(jobs, self.batches.transform, self.workers), labels

    def _read_ahead(self, key: Key) -> None:
        """Start decoding the batch most likely asked for next: one more step of (epoch, k) as between the last two
        requests, within the epoch's batches (k + 1 at first). A wrong guess costs one batch of decoding."""
        (e, k), last = key, self._last
        step = (e - last[0], (k - last[1]) % len(self)) if last is not None else (0, 1)
        nxt = (e + step[0], (k + step[1]) % len(self)) if step != (0, 0) else (e, (k + 1) % len(self))
        self._last = key
        for old, (futures, _) in list(self._ahead.items()):
            if old != nxt:
                for f in futures:
                    f.cancel()  # not started: dropped; started: finishes unread
                del self._ahead[old]
        if nxt not in self._ahead and nxt[0] >= 0:
            self._ahead[nxt] = self._submit(nxt)

    def rebatch(self, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool = False, augment: bool = False,
                cutout: int = 0) -> "FolderLoader":
        """A loader over the same files (same crop size, device, layout and workers) with another batch size and
        order, unaugmented unless `augment` (the training crop and flip; colour jitter if this loader has it)."""
        if cutout:
            raise UserError(f"cutout applies to in-memory datasets, not {self.ds.name}: leave data.cutout at 0")
        return FolderLoader(self.ds, batch_size, seed=seed, augment=augment, device=self.device, shuffle=shuffle,
                            drop_last=drop_last, image_size=self.size, channels_last=self.channels_last,
                            workers=self.workers, jitter=self.jitter and augment)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(x.to(self.device, non_blocking=True), self.ds.mean, self.ds.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)
