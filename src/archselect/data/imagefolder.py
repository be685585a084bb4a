"""ImageNet in its standard folder layout, listed rather than loaded: ROOT/train/<wnid>/*.JPEG for training and
ROOT/val/<wnid>/*.JPEG (the validation images sorted into class folders) as the test split, as DARTS' and DARTS-PT's
train_imagenet.py read them (torchvision's ImageFolder). 1.28M images do not fit in memory as uint8 tensors, so an
`ImageFolder` holds paths and labels, and `FolderLoader` decodes batches as they are needed.

Classes are the sorted folder names of train/; val/ must hold the same folders. Files ending in .jpeg, .jpg or .png
(any case) are images; anything else in a class folder is ignored with one warning. An empty class folder is an
error (a bad copy, or the flat val/ layout not yet sorted into class folders).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from .paths import data_root, describe_dirs

NAME = "imagenet"
SUFFIXES = (".jpeg", ".jpg", ".png")
FOLDERS = {"train": "train", "test": "val"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DARTS' train_imagenet.py
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFolder:
    """The images of one split: `files[i]` (bytes, relative to `root`, in one numpy buffer so that forked decoding
    workers share it instead of copying a million Python strings) has label `labels[i]`."""

    root: Path
    files: np.ndarray
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = NAME
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    flip: bool = True
    channels: int = 3

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, i: int) -> Path:
        return self.root / self.files[i].decode()

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageFolder:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return replace(self, files=self.files[idx.numpy()], labels=self.labels[idx])


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def scan(folder: Path, classes: Sequence[str], name: str = NAME) -> ImageFolder:
    """The images of `folder`/<class>/ for each of `classes` (label = position in `classes`)."""
    files, labels, ignored = [], [], 0
    for label, wnid in enumerate(classes):
        entries = sorted(e.name for e in os.scandir(folder / wnid) if e.is_file())
        images = [f for f in entries if f.lower().endswith(SUFFIXES)]
        ignored += len(entries) - len(images)
        if not images:
            raise UserError(f"{name}: class folder {folder / wnid} holds no .JPEG images")
        files += [f"{wnid}/{f}" for f in images]
        labels += [label] * len(images)
    if ignored:
        log.warning(f"{name}: ignored {ignored} files in {folder} that are not .jpeg, .jpg or .png")
    return ImageFolder(folder, np.array(files, dtype=np.bytes_), torch.tensor(labels, dtype=torch.int64),
                       tuple(classes), name)


def find_root(data_dir) -> Path:
    """The folder holding train/ and val/: data_dir itself, or its imagenet/ subfolder."""
    base = data_root(data_dir)
    dirs = [base, base / NAME]
    root = next((d for d in dirs if (d / "train").is_dir()), None)
    if root is None:
        raise UserError(f"{NAME}: no train/ folder in {describe_dirs(dirs)}; point data.data_dir at the folder "
                        f"holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageNet needs a login at "
                        f"image-net.org: there is no download)")
    return root


def load_imagenet(split: str, data_dir=None, download: bool = False) -> ImageFolder:
    # download is accepted for a uniform signature; ImageNet has no public download URL
    root = find_root(data_dir)
    classes = _class_folders(root / "train")
    if not classes:
        raise UserError(f"{NAME}: {root / 'train'} holds no class folders")
    folder = root / FOLDERS[split]
    if not folder.is_dir():
        raise UserError(f"{NAME}: {folder} does not exist (the test split is val/<wnid>/*.JPEG)")
    found = _class_folders(folder)
    if found != classes:
        odd = sorted(set(found) ^ set(classes))
        raise UserError(f"{NAME}: {folder} and {root / 'train'} hold different class folders (e.g. "
                        f"{odd[0] if odd else 'none'}); val/ must be sorted into the same <wnid> folders as train/")
    return scan(folder, classes)
