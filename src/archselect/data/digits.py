"""scikit-learn's bundled 8x8 digits: a tiny offline dataset for smoke runs and tests."""
from __future__ import annotations

import torch

from ..errors import UserError
from .imageset import ImageSet

NAME = "digits"
_SPLIT_SEED = 0  # fixed so 'train' and 'test' are the same 80/20 partition in every run
_TRAIN_FRACTION = 0.8


def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the 'digits' dataset needs scikit-learn: pip install archselect[digits]") from None
    bunch = load_digits()
    # pixel values are 0..16: scale to the 0..255 range every other dataset uses
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8)
    return images.unsqueeze(1), torch.from_numpy(bunch.target).to(torch.int64)


def load_digits(split: str, data_dir=None, download: bool = False) -> ImageSet:
    images, labels = _all_digits()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_train = int(len(labels) * _TRAIN_FRACTION)
    train_idx, test_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
    train = images[train_idx].float() / 255  # normalise both splits with train statistics
    idx = train_idx if split == "train" else test_idx
    return ImageSet(images[idx], labels[idx], 10, (train.mean().item(),), (train.std().item(),), NAME, flip=False)
