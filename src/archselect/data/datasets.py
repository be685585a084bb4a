"""``load_dataset``: one entry point over every supported dataset."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..registry import Registry
from .cifar import CIFAR10, CIFAR100, load_cifar
from .digits import load_digits
from .imagefolder import ImageFolder, load_imagenet
from .imagenet16 import load_imagenet16
from .imageset import ImageSet
from .mnist import FASHION_MNIST, MNIST, load_idx_dataset
from .svhn import load_svhn

SPLITS = ("train", "test")

_LOADERS: Registry[Callable[..., ImageSet | ImageFolder]] = Registry("dataset")
_LOADERS.register("fashion-mnist")(partial(load_idx_dataset, FASHION_MNIST))
_LOADERS.register("mnist")(partial(load_idx_dataset, MNIST))
_LOADERS.register("cifar10")(partial(load_cifar, CIFAR10))
_LOADERS.register("cifar100")(partial(load_cifar, CIFAR100))
_LOADERS.register("imagenet16-120")(load_imagenet16)
_LOADERS.register("digits")(load_digits)
_LOADERS.register("svhn")(load_svhn)
_LOADERS.register("imagenet")(load_imagenet)  # listed, not loaded: an ImageFolder for FolderLoader

DATASETS: tuple[str, ...] = tuple(_LOADERS.names())


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> ImageSet | ImageFolder:
    """Load a whole split into memory (ImageNet: list its files). 'test' is the official test set (ImageNet16: its
    val_data file, ImageNet: val/);
    search-time validation data comes from ``search_split`` of 'train', never from 'test'."""
    loader = _LOADERS.get(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for dataset {name}; choose one of: {', '.join(SPLITS)}")
    if data_dir is not None and not download and not Path(data_dir).expanduser().is_dir():
        # An explicit directory that is not there is a typo to report, not a reason to read data from elsewhere.
        raise UserError(f"data directory {data_dir} does not exist (set data.download=true to fetch {name} into it)")
    return loader(split, data_dir, download)
