"""CIFAR-10 / CIFAR-100 in the official python-pickle batch format."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .download import Checksum, download_file
from .imageset import ImageSet
from .paths import data_root, describe_dirs
from .pickled import image_rows, int_labels, load_batch


@dataclass(frozen=True)
class CifarDataset:
    name: str
    folder: str  # the folder the official tarball unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    checksum: Checksum
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarDataset(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    "labels", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    Checksum("md5", "c58f30108f718f92721af3b95e74349a"),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))

CIFAR100 = CifarDataset(
    "cifar100", "cifar-100-python", ("train",), ("test",),
    "fine_labels", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    Checksum("md5", "eb9058c3a382ffc7106e4002c42a8d85"),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


def _find_dir(spec: CifarDataset, files: tuple[str, ...], root: Path) -> Path | None:
    for d in (root / spec.folder, root):
        if all((d / f).is_file() for f in files):
            return d
    return None


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Unpack into a temp folder (tarfile's 'data' filter refuses links out, absolute paths and '..') and move
    ``folder`` into place, so a failed extraction leaves nothing half-written under its final name."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive}: does not contain the folder {folder}/")
        if (root / folder).exists():  # not ours (ours appear whole, by rename): leave the user's files alone
            raise UserError(f"{root / folder}: incomplete (batch files missing); remove it and retry")
        os.replace(tmp / folder, root / folder)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive}: cannot extract ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(spec: CifarDataset, root: Path) -> None:
    archive = download_file([spec.url], root / spec.url.rsplit("/", 1)[1], spec.checksum)
    _extract(archive, root, spec.folder)
    archive.unlink()


def _read_batch(spec: CifarDataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_batch(path, encoding="bytes")  # the official files are Python 2 pickles: bytes keys
    data = image_rows(batch, path, 3 * 32 * 32)
    labels = int_labels(batch, spec.label_key, path, len(data), 0, spec.num_classes - 1)
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(spec: CifarDataset, split: str, data_dir=None, download: bool = False) -> ImageSet:
    root = data_root(data_dir)
    files = spec.train_files if split == "train" else spec.test_files
    folder = _find_dir(spec, files, root)
    if folder is None and download:
        _fetch(spec, root)
        folder = _find_dir(spec, files, root)
    if folder is None:
        raise UserError(f"{spec.name}: batch files {', '.join(files)} not found in "
                        f"{describe_dirs([root / spec.folder, root])}; enable downloading or unpack "
                        f"{spec.url.rsplit('/', 1)[1]} ({spec.url}) into {root}")
    parts = [_read_batch(spec, folder / f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageSet(images, labels, spec.num_classes, spec.mean, spec.std, spec.name, flip=True)
