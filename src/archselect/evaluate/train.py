"""Retraining an architecture from scratch: its discrete network trained on the dataset's train split and scored on
its test split, with parameters and FLOPs, checkpointed every epoch and resumable after a kill.

    RUN/architecture.json   the architecture trained          RUN/metrics.jsonl   one record per epoch
    RUN/checkpoints/train-EPOCH.*                             RUN/result.json     test accuracy, params, FLOPs

Protocols (`train` section of the config): NAS-Bench-201 (the defaults: C=16, N=5, 200 epochs, batch 256, SGD
Nesterov lr 0.1 cosine to 0, wd 5e-4) and DARTS (configs/train-darts-paper.yaml: C=36, 20 cells, 600 epochs, batch
96, lr 0.025 cosine, momentum 0.9, wd 3e-4, cutout 16, auxiliary weight 0.4, drop-path 0.2, grad clip 5). Drop-path
grows linearly from 0 to `train.drop_path` over the epochs (DARTS' `drop_path_prob * epoch / epochs`). The schedule
steps once per epoch; batch k of epoch e is a pure function of (seed, e, k) and the RNG state is checkpointed, so a
resumed run ends exactly where an uninterrupted one does (in deterministic mode).

ImageNet (data.dataset=imagenet, configs/train-darts-imagenet.yaml): DARTS' NetworkImageNet (its three-conv stem and
auxiliary head, C=48, 14 cells) on batches decoded from the folder layout by `FolderLoader`; the step schedule
(train.lr_schedule=step, x0.97 per epoch) and label smoothing 0.1 of DARTS' train_imagenet.py.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import logs
from ..arch import Architecture
from ..components import space_of, to_device
from ..config import RunConfig, SpaceConfig, TrainConfig
from ..data import FolderLoader, ImageFolder, ImageSet, Loader, load_dataset
from ..environment import rng_state, set_rng_state
from ..errors import UserError
from ..files import check_optimizer_state, load_latest_checkpoint, nonfinite_tensors, save_checkpoint
from ..runs import RunDir
from .flops import count_flops, count_parameters
from .metrics import loss_and_accuracy

CHECKPOINT = "train"
log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train: Loader | FolderLoader
    test: Loader | FolderLoader
    dataset: str

    @property
    def imagenet(self) -> bool:
        """Large natural images decoded from files: they get DARTS' ImageNet network."""
        return isinstance(self.train.ds, ImageFolder)


def _subset(ds: ImageSet | ImageFolder, n: int | None, seed: int) -> ImageSet | ImageFolder:
    if n is None:
        return ds
    if n > len(ds):
        raise UserError(f"train.subset={n} but {ds.name}'s train split has only {len(ds)} images")
    return ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values)


def train_data(cfg: RunConfig, device: torch.device) -> TrainData:
    """The (subset of the) train split, augmented and shuffled; the whole test split, in order."""
    d, t = cfg.data, cfg.train
    train = _subset(load_dataset(d.dataset, "train", data_dir=d.data_dir, download=d.download), t.subset, cfg.seed)
    test = load_dataset(d.dataset, "test", data_dir=d.data_dir, download=d.download)
    if isinstance(train, ImageFolder):
        return _folder_data(cfg, train, test, device)
    if t.color_jitter:
        raise UserError(f"train.color_jitter applies to image-folder datasets (imagenet), not {d.dataset}")
    common = dict(device=device, image_size=d.image_size, channels_last=t.channels_last)
    return TrainData(
        Loader(train, t.batch_size, seed=cfg.seed, augment=t.augment, cutout=t.cutout, **common),
        Loader(test, d.eval_batch_size, seed=cfg.seed, augment=False, shuffle=False, drop_last=False, **common),
        d.dataset)


def _folder_data(cfg: RunConfig, train: ImageFolder, test: ImageFolder, device: torch.device) -> TrainData:
    """Loaders decoding image files in data.workers processes: random-resized crops (+ flip, + colour jitter) of
    data.image_size (224) for training, centre crops for the test split."""
    d, t = cfg.data, cfg.train
    if t.cutout:
        raise UserError(f"train.cutout applies to in-memory datasets, not {d.dataset}: set train.cutout=0")
    common = dict(device=device, image_size=d.image_size, channels_last=t.channels_last, workers=d.workers)
    return TrainData(
        FolderLoader(train, t.batch_size, seed=cfg.seed, augment=t.augment, jitter=t.color_jitter, **common),
        FolderLoader(test, d.eval_batch_size, seed=cfg.seed, augment=False, shuffle=False, drop_last=False, **common),
        d.dataset)


def build_network(cfg: RunConfig, arch: Architecture, in_channels: int, num_classes: int,
                  imagenet: bool = False) -> nn.Module:
    """The discrete network of `arch` at the retraining size (train.C, train.N), affine BN with running statistics;
    `imagenet`: DARTS' ImageNet network (its stem and auxiliary head). The space is the architecture's own with
    default settings: the cells name their ops, so the search's space variant and supernet options (partial
    channels, BN policy) do not apply."""
    t = cfg.train
    if arch.space == "mobilenet":
        return _mobilenet_network(cfg, arch, in_channels, num_classes)
    space = space_of(replace(cfg, space=SpaceConfig(name=arch.space, C=t.C, N=t.N)), in_channels, num_classes)
    if arch.space == "nb201":
        if imagenet:
            raise UserError(f"NAS-Bench-201 networks have no ImageNet form: retrain a DARTS-space architecture on "
                            f"{cfg.data.dataset}")
        if t.auxiliary_weight or t.drop_path:
            raise UserError("NAS-Bench-201 networks have no auxiliary head and no drop-path: "
                            "set train.auxiliary_weight=0 and train.drop_path=0")
        return space.network(arch, bn_affine=True)
    return space.network(arch, C=t.C, layers=t.N, auxiliary=t.auxiliary_weight > 0, bn_affine=True,
                         imagenet=imagenet)


def lr_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine to train.lr_min over the epochs (NB201, DARTS on CIFAR), or x train.lr_gamma every train.lr_step
    epochs (DARTS' and DARTS-PT's ImageNet protocol: 0.97 every epoch); stepped once per epoch."""
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step, gamma=t.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t.epochs, 1), eta_min=t.lr_min)


def _mobilenet_network(cfg: RunConfig, arch: Architecture, in_channels: int, num_classes: int) -> nn.Module:
    """A MobileNet at the config's space.resolution and space.width_mult, with the architecture's own layers per
    stage (train.C and train.N do not apply)."""
    t, s = cfg.train, cfg.space
    if t.auxiliary_weight or t.drop_path:
        raise UserError("MobileNet networks have no auxiliary head and no drop-path: "
                        "set train.auxiliary_weight=0 and train.drop_path=0")
    layers = [len(cell.edges) for _, cell in arch.cells]
    own = SpaceConfig(name=arch.space, resolution=s.resolution, width_mult=s.width_mult, stage_layers=layers)
    return space_of(replace(cfg, space=own), in_channels, num_classes).network(arch, bn_affine=True)


class TrainRun:
    """One retraining: the network, its optimizer and schedule, the position, and the loop."""

    def __init__(self, cfg: RunConfig, run: RunDir, arch: Architecture, device: torch.device):
        self.cfg, self.run, self.arch, self.device = cfg, run, arch, device
        t: TrainConfig = cfg.train
        self.data = train_data(cfg, device)
        channels, num_classes = self.data.train.image_shape[0], self.data.train.ds.num_classes
        self.model = to_device(build_network(cfg, arch, channels, num_classes, self.data.imagenet), device,
                               t.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay, nesterov=t.nesterov)
        self.scheduler = lr_scheduler(self.optimizer, t)
        self.epoch = 0
        self.test: dict[str, float] | None = None  # the latest test evaluation

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "epoch": self.epoch,
                "test": self.test}

    def save(self) -> None:
        state = self.state()
        if nonfinite_tensors(state):
            raise UserError(f"non-finite values in the model or optimizer after epoch {self.epoch}, not "
                            f"checkpointed (lower train.lr and start again)")
        save_checkpoint(self.run.checkpoints, CHECKPOINT, self.epoch, state)

    def restore(self) -> bool:
        """Continue from the newest checkpoint that verifies and fits; metrics past it (all when none) are dropped."""
        state = load_latest_checkpoint(self.run.checkpoints, CHECKPOINT, apply=self._load_state)
        if state is None:
            self.run.truncate_metrics(lambda r: False)
            return False
        done = self.epoch
        self.run.truncate_metrics(lambda r: isinstance(r.get("epoch"), int) and r["epoch"] < done)
        return True

    def _load_state(self, state: dict[str, Any]) -> None:
        epoch, test = state["epoch"], state["test"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= max(self.cfg.train.epochs, 0):
            raise UserError(f"epoch {epoch!r} is not an epoch of this run")
        if test is not None and not (isinstance(test, dict) and all(
                isinstance(test.get(k), (int, float)) for k in ("epoch", "test_loss", "test_acc"))):
            raise UserError("its test record is malformed")
        if nonfinite_tensors(state["model"]):
            raise UserError("its model holds non-finite values")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(self)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.test = epoch, test

    # -- the loop ------------------------------------------------------------------------------------------------------
    def train(self) -> None:
        while self.epoch < self.cfg.train.epochs:
            self.run_epoch()

    def run_epoch(self) -> None:
        t, start = self.cfg.train, time.perf_counter()
        drop_path = t.drop_path * self.epoch / max(t.epochs, 1)
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = drop_path
        self.model.train()
        sums = {"train_loss": 0.0, "train_acc": 0.0}
        loader = self.data.train
        for x, y in logs.track(loader.epoch(self.epoch), f"epoch {self.epoch + 1}/{t.epochs}", len(loader),
                               final=False):
            for k, v in self.train_step(x, y).items():
                sums[k] += v
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        record = {"epoch": self.epoch, "lr": lr, "drop_path": drop_path,
                  **{k: v / max(len(loader), 1) for k, v in sums.items()}}
        if self._evaluate_now():
            loss, acc = loss_and_accuracy(self.model, self.data.test)
            self.test = {"epoch": self.epoch, "test_loss": loss, "test_acc": acc}
            record.update(test_loss=loss, test_acc=acc)
        record["seconds"] = time.perf_counter() - start
        self.run.append_metrics(record)
        test = (f"  test loss {record['test_loss']:.3f} acc {logs.percent(record['test_acc'])}"
                if "test_acc" in record else "")
        log.info(f"epoch {self.epoch + 1}/{t.epochs}  lr {lr:.4f}  train loss {record['train_loss']:.3f} "
                 f"acc {logs.percent(record['train_acc'])}{test}  {record['seconds']:.1f}s")
        self.epoch += 1
        self.save()

    def _evaluate_now(self) -> bool:
        every, last = self.cfg.train.eval_every, self.epoch == self.cfg.train.epochs - 1
        return last or (every > 0 and (self.epoch + 1) % every == 0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        if t.auxiliary_weight > 0:
            logits, aux = self.model.forward_aux(x)
        else:
            logits, aux = self.model(x), None
        loss = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
        if aux is not None:
            loss = loss + t.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=t.label_smoothing)
        loss.backward()
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return {"train_loss": loss.item(), "train_acc": (logits.argmax(1) == y).float().mean().item()}

    # -- the report ----------------------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        if self.test is None:  # zero epochs: the untrained network
            loss, acc = loss_and_accuracy(self.model, self.data.test)
            self.test = {"epoch": -1, "test_loss": loss, "test_acc": acc}
        flops = count_flops(self.model, self.data.train.image_shape, self.device)
        metrics = self.run.read_metrics()
        t = self.cfg.train
        return {
            "architecture": self.arch.to_dict(), "space": self.arch.space, "dataset": self.data.dataset,
            "test_acc": self.test["test_acc"], "test_loss": self.test["test_loss"],
            "params": count_parameters(self.model), "flops": flops.total, "flops_by_kind": flops.by_kind,
            "input_shape": list(self.data.train.image_shape), "C": t.C, "N": t.N, "epochs": self.epoch,
            "train_images": len(self.data.train.ds), "test_images": len(self.data.test.ds),
            "seconds": sum(m.get("seconds", 0.0) for m in metrics),
        }
