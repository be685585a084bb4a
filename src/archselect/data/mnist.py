"""MNIST and Fashion-MNIST: 28x28 grayscale IDX files, gzipped or raw."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .download import Checksum, download_file
from .idx import read_idx
from .imageset import ImageSet
from .paths import data_root, describe_dirs, find_file


@dataclass(frozen=True)
class IdxDataset:
    name: str
    mirrors: tuple[str, ...]
    checksums: dict[str, Checksum]  # by file stem, e.g. 'train-images-idx3-ubyte'
    mean: float
    std: float
    flip: bool
    system_dirs: tuple[Path, ...] = ()
    torchvision_dir: str = ""  # torchvision's layout <data_dir>/<this>/raw


def _sha(hexdigest: str) -> Checksum:
    return Checksum("sha256", hexdigest, decompressed=True)


def _md5(hexdigest: str) -> Checksum:
    return Checksum("md5", hexdigest)


# Debian's dataset-fashion-mnist re-gzipped the upstream files, so the .gz md5s differ between sources; these
# sha256s are of the decompressed IDX bytes (computed from the Debian files), equal for every source.
FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    checksums={
        "train-images-idx3-ubyte": _sha("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": _sha("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": _sha("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": _sha("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
    mean=0.2860, std=0.3530, flip=True,
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),  # Debian package dataset-fashion-mnist
    torchvision_dir="FashionMNIST",
)

# md5s of the upstream .gz files, as published with torchvision/TF dataset code; all mirrors serve the same
# bytes. Not re-verifiable offline here, but a wrong value fails loudly (download refused), never silently.
MNIST = IdxDataset(
    "mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    checksums={
        "train-images-idx3-ubyte": _md5("f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": _md5("d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": _md5("9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte": _md5("ec29112dd5afa0611ce80d1b7f02629c"),
    },
    mean=0.1307, std=0.3081, flip=False,
    torchvision_dir="MNIST",
)


def _search_dirs(spec: IdxDataset, root: Path) -> list[Path]:
    return [root, root / spec.name, root / spec.torchvision_dir / "raw", *spec.system_dirs]


def _locate(spec: IdxDataset, stem: str, root: Path, download: bool) -> Path:
    dirs = _search_dirs(spec, root)
    found = find_file([stem, stem + ".gz"], dirs)
    if found is not None:
        return found
    if not download:
        raise UserError(f"{spec.name}: {stem}[.gz] not found in {describe_dirs(dirs)}; "
                        f"enable downloading or put the file there")
    name = stem + ".gz"
    return download_file([m + name for m in spec.mirrors], root / spec.name / name, spec.checksums[stem])


def _read(spec: IdxDataset, stem: str, root: Path, download: bool, ndim: int) -> tuple[np.ndarray, Path]:
    path = _locate(spec, stem, root, download)
    arr = read_idx(path)
    if arr.ndim != ndim or arr.dtype != np.uint8:
        raise UserError(f"{path}: expected {ndim}-d uint8 IDX data, got {arr.ndim}-d {arr.dtype}")
    return arr, path


def load_idx_dataset(spec: IdxDataset, split: str, data_dir=None, download: bool = False) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    root = data_root(data_dir)
    images, _ = _read(spec, f"{prefix}-images-idx3-ubyte", root, download, ndim=3)
    labels, lpath = _read(spec, f"{prefix}-labels-idx1-ubyte", root, download, ndim=1)
    if len(labels) != len(images):
        raise UserError(f"{lpath}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() >= 10:
        raise UserError(f"{lpath}: label {labels.max()} out of range 0..9")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    num_classes=10, mean=(spec.mean,), std=(spec.std,), name=spec.name, flip=spec.flip)
