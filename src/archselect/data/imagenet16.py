"""ImageNet16-120: the 16x16 downsampled ImageNet batches (Chrabaszcz et al. 2017), first 120 classes only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .imageset import ImageSet
from .paths import data_root, describe_dirs, find_file
from .pickled import image_rows, int_labels, load_batch

NAME = "imagenet16-120"
NUM_CLASSES = 120
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST_FILES = ("val_data",)
MEAN = (122.68 / 255, 116.66 / 255, 104.01 / 255)
STD = (63.22 / 255, 61.26 / 255, 65.09 / 255)


def _search_dirs(root: Path, split: str) -> list[Path]:
    sub = "Imagenet16_train" if split == "train" else "Imagenet16_val"
    return [root / sub, root / "ImageNet16" / sub, root / "ImageNet16", root / NAME, root / NAME / sub, root]


def _missing(root: Path, split: str, name: str) -> UserError:
    return UserError(
        f"{NAME}: {name} not found in {describe_dirs(_search_dirs(root, split))}. ImageNet16 has no public "
        f"download URL: get Imagenet16_train.zip and Imagenet16_val.zip (the 16x16 'Downsampled ImageNet' from "
        f"image-net.org, login required; NAS-Bench-201 also distributes them) and unpack both into {root}, "
        f"giving Imagenet16_train/train_data_batch_1..10 and Imagenet16_val/val_data")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and 0-based labels of one batch, keeping only classes 1..120 (the ImageNet16-120 subset)."""
    batch = load_batch(path, encoding="latin1")  # latin1 restores Python 2 numpy arrays as well as Python 3 ones
    data = image_rows(batch, path, 3 * 16 * 16)
    labels = int_labels(batch, "labels", path, len(data), 1, 1000)
    keep = labels <= NUM_CLASSES
    return data[keep].reshape(-1, 3, 16, 16), labels[keep] - 1


def load_imagenet16(split: str, data_dir=None, download: bool = False) -> ImageSet:
    # download is accepted for a uniform signature; there is nothing to fetch it from
    root = data_root(data_dir)
    parts = []
    for name in TRAIN_FILES if split == "train" else TEST_FILES:
        path = find_file([name], _search_dirs(root, split))
        if path is None:
            raise _missing(root, split, name)
        parts.append(_read_batch(path))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageSet(images, labels, NUM_CLASSES, MEAN, STD, NAME, flip=True)
