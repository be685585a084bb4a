"""Build a run's pieces from its config: data splits and loaders, the search space, the supernet.

Shared by every stage, so `select` on a finished search sees exactly the data and network the search saw.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .config import RunConfig, SpaceConfig, check_search_memory
from .data import FolderLoader, ImageFolder, Loader, load_dataset, search_split
from .errors import UserError
from .spaces import SPACES


@dataclass
class SearchData:
    train: Any      # search-train split (trains the weights)
    valid: Any      # search-validation split (trains α, scores ops)
    in_channels: int
    num_classes: int


def search_data(cfg: RunConfig) -> tuple[Any, Any]:
    """(search-train, search-valid) of the train split: in-memory ImageSets, or ImageFolders (file lists) for a
    folder dataset such as ImageNet."""
    d = cfg.data
    full = load_dataset(d.dataset, "train", data_dir=d.data_dir, download=d.download)
    return search_split(full, cfg.seed, subset=d.subset, portion=d.portion, valid_size=d.valid_size,
                        balanced=d.valid_balanced)


def loaders(cfg: RunConfig, device: torch.device) -> SearchData:
    """Search-train loader (augmented, shuffled) and search-valid loader (unaugmented, shuffled for the paired α
    batches)."""
    d = cfg.data
    check_search_memory(cfg)  # before the supernet is built (for ImageNet, before its files are listed too)
    train_set, valid_set = search_data(cfg)
    common = dict(device=device, image_size=d.image_size, channels_last=cfg.search.channels_last)
    if isinstance(train_set, ImageFolder):  # decoded from files: random-resized crop + flip / resize + centre crop
        if d.cutout:
            raise UserError(f"data.cutout applies to in-memory datasets, not {d.dataset}: set data.cutout=0")
        train = FolderLoader(train_set, d.batch_size, seed=cfg.seed, augment=d.augment, workers=d.workers, **common)
        valid = FolderLoader(valid_set, d.batch_size, seed=cfg.seed + 1, augment=False, workers=d.workers, **common)
    else:
        train = Loader(train_set, d.batch_size, seed=cfg.seed, augment=d.augment, cutout=d.cutout, **common)
        valid = Loader(valid_set, d.batch_size, seed=cfg.seed + 1, augment=False, **common)
    return SearchData(train, valid, train_set.channels, train_set.num_classes)


def eval_loader(cfg: RunConfig, dataset, device: torch.device):
    """Unshuffled, unaugmented pass over a split, keeping every image."""
    common = dict(seed=cfg.seed, augment=False, shuffle=False, drop_last=False, device=device,
                  image_size=cfg.data.image_size, channels_last=cfg.search.channels_last)
    if isinstance(dataset, ImageFolder):
        return FolderLoader(dataset, cfg.data.eval_batch_size, workers=cfg.data.workers, **common)
    return Loader(dataset, cfg.data.eval_batch_size, **common)


def space_of(cfg: RunConfig, in_channels: int, num_classes: int):
    """The space dataclass, given every space.* field it declares; a field it lacks must keep its default (a
    DARTS-only option set for nb201 is an error, not silently ignored)."""
    s = cfg.space
    cls = SPACES.get(s.name)
    accepted = {f.name for f in dataclasses.fields(cls)}
    defaults = SpaceConfig()
    kwargs = {}
    for f in dataclasses.fields(s):
        if f.name == "name":
            continue
        value = getattr(s, f.name)
        if f.name in accepted:
            kwargs[f.name] = value
        elif value != getattr(defaults, f.name):
            raise UserError(f"space.{f.name} does not apply to the {s.name!r} space")
    return cls(in_channels=in_channels, num_classes=num_classes, **kwargs)


def to_device(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
