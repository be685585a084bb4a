"""SVHN (Street View House Numbers, cropped digits) from the official `train_32x32.mat` / `test_32x32.mat`.

The files are MATLAB 5 MAT-files, read with `scipy.io.loadmat` (a parser: nothing in the file is executed; scipy is
the optional extra `archselect[svhn]`). `X` is 32 x 32 x 3 x N uint8, `y` is N x 1 with the digit 0 stored as 10,
mapped to class 0 here. Normalisation and augmentation follow DARTS-PT's `_data_transforms_svhn` (pad-crop and
horizontal flip, SVHN mean and std).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .download import Checksum, download_file
from .imageset import ImageSet
from .paths import data_root, describe_dirs

URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train": ("train_32x32.mat", Checksum("md5", "e26dedcc434d2e4c54c9b2d4a06d8373")),
         "test": ("test_32x32.mat", Checksum("md5", "eb5a983be6a315427106f1b164d9cef3"))}
MEAN, STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
FOLDER = "svhn"


def _scipy_io():
    try:
        from scipy.io import loadmat, matlab  # optional: only SVHN needs it
    except ImportError:
        raise UserError("SVHN's .mat files need scipy: pip install 'archselect[svhn]'") from None
    return loadmat, matlab.MatReadError


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels N int64 in 0..9) from one official file; a damaged one is one line."""
    loadmat, mat_read_error = _scipy_io()
    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except (mat_read_error, ValueError, OSError, TypeError, NotImplementedError) as e:
        raise UserError(f"{path}: not an SVHN MAT-file ({str(e)[:120]})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise UserError(f"{path}: X must be 32 x 32 x 3 x N uint8, found {getattr(x, 'shape', None)}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
        raise UserError(f"{path}: y must hold one label per image ({x.shape[3]})")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise UserError(f"{path}: labels must be 1..10 (10 stands for the digit 0)")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels % 10


def load_svhn(split: str, data_dir=None, download: bool = False) -> ImageSet:
    root = data_root(data_dir)
    name, checksum = FILES[split]
    dirs = [root / FOLDER, root]
    path = next((d / name for d in dirs if (d / name).is_file()), None)
    if path is None and download:
        (root / FOLDER).mkdir(parents=True, exist_ok=True)
        path = download_file([URL + name], root / FOLDER / name, checksum)
    if path is None:
        raise UserError(f"svhn: {name} not found in {describe_dirs(dirs)}; enable downloading (data.download=true) "
                        f"or put {URL + name} there")
    images, labels = read_mat(path)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), 10, MEAN, STD, "svhn", flip=True)
