"""The search stage: train a supernet with a registered optimizer, one checkpoint per epoch (and optionally every
`checkpoint_every` steps), one metrics record per epoch, the final supernet saved for the selection stage.

Resuming restores the supernet, the optimizers, the schedule, the RNG states and the position (epoch, step); batch k
of epoch e is a pure function of (seed, e, k), so a resumed run sees exactly the batches an uninterrupted one would.

Hooks extend the loop without changing it: each `EpochHook` is called after every epoch's evaluation with the epoch's
metrics record and may add entries to it (R-DARTS' Hessian eigenvalue, on when `search.hessian_eig` is set) or send
it elsewhere (TensorBoard, on when `logging.tensorboard` is set).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

import torch

from .. import distributed, logs
from ..components import loaders, space_of, to_device
from ..config import RunConfig
from ..environment import rng_state, set_rng_state
from ..errors import UserError
from ..evaluate.diagnostics import hessian_record
from ..evaluate.metrics import loss_and_accuracy
from ..files import check_optimizer_state, load_latest_checkpoint, nonfinite_tensors, save_checkpoint
from ..runs import SEARCH_CHECKPOINT, RunDir
from . import OPTIMIZERS

log = logging.getLogger(__name__)
EpochHook = Callable[["SearchRun", "dict[str, Any]"], "dict[str, Any] | None"]


class NumericalFault(UserError):
    """A NaN or inf appeared; the last good checkpoint is kept."""


def _check_finite(values: dict[str, float], supernet, epoch: int, step: int, run: RunDir | None = None) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad and all(torch.isfinite(a).all() for a in supernet.arch_parameters()):
        return
    what = ", ".join(bad) if bad else "architecture parameters"
    raise NumericalFault(f"non-finite {what} at epoch {epoch} step {step}; {_kept(run)}")


def _kept(run: RunDir | None) -> str:
    """What a numerical fault leaves behind, truthfully: a checkpoint to resume from, or none."""
    if run is None or run.has_search_checkpoint():
        return "the last good checkpoint is kept (lower search.w_lr or search.a_lr and --resume)"
    return ("no checkpoint was written before it (start again with a lower search.w_lr or search.a_lr; "
            "--resume with one starts from scratch)")


def check_state_finite(state: dict[str, Any], epoch: int, step: int, run: RunDir | None = None) -> None:
    """Everything a checkpoint saves (weights, BN running statistics, optimizer states, meters) must be finite
    before it is written, so the checkpoint a NaN leaves behind is a good one."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NumericalFault(f"non-finite values in {shown} at epoch {epoch} step {step}, not checkpointed; "
                             f"{_kept(run)}")


def _check_int(state: dict[str, Any], key: str, low: int, high: int) -> int:
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise UserError(f"{key} {v!r} is not an integer in [{low}, {high}]")
    return v


def epoch_means(meters: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the steps that reported it (`SearchRun._accumulate`'s sums and counts); a checkpoint
    written before per-metric counts existed counts every metric over all `n` steps."""
    n = max(meters.get("n", 1), 1)
    counts = {k[2:]: v for k, v in meters.items() if k.startswith("n/")}
    return {k: v / max(counts.get(k, n), 1) for k, v in meters.items()
            if k not in ("n", "seconds") and not k.startswith("n/")}


def _alpha_record(supernet) -> dict[str, list[list[float]]]:
    return {ct: w.cpu().tolist() for ct, w in supernet.mixing_weights(detach=True).items()}


def hessian_hook(search: "SearchRun", record: dict[str, Any]) -> dict[str, Any] | None:
    """R-DARTS' collapse signal: the largest eigenvalue of the α Hessian on the epoch's first validation batches."""
    s = search.cfg.search
    if not s.hessian_eig or not distributed.is_main():
        return None
    return hessian_record(search.supernet, search.data.valid, search.epoch, s.hessian_batches, s.hessian_iters,
                          search.cfg.seed)


def tensorboard_hook(search: "SearchRun", record: dict[str, Any]) -> None:
    """The epoch's numbers as TensorBoard scalars (`search/NAME`) and softmax(α) per edge (`alpha/CELL/SRC->DST/OP`),
    step = epoch, into RUN/tb/ (rank 0)."""
    if not search.cfg.logging.tensorboard or not distributed.is_main():
        return None
    writer = search.tensorboard_writer()
    epoch = record["epoch"]
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"search/{key}", value, epoch)
    for ct, rows in record.get("alpha", {}).items():
        for (src, dst), row in zip(search.supernet.edges[ct], rows):
            for op, weight in zip(search.supernet.op_names, row):
                writer.add_scalar(f"alpha/{ct}/{src}->{dst}/{op}", weight, epoch)
    writer.flush()
    return None


DEFAULT_HOOKS: tuple[EpochHook, ...] = (hessian_hook, tensorboard_hook)


class SearchRun:
    """Holds the pieces of one search so the loop reads as the algorithm. The optimizer's schedules span
    `cfg.search.epochs`; the loop stops after epoch `until` (default: all of them; a few-shot node stops at its
    split)."""

    def __init__(self, cfg: RunConfig, run: RunDir, device: torch.device, *, until: int | None = None,
                 hooks: Sequence[EpochHook] = DEFAULT_HOOKS):
        # Under torchrun every rank trains on its slice of each batch; only rank 0 logs and writes to `run`.
        self.cfg, self.run, self.device = cfg, run, device
        self.until = cfg.search.epochs if until is None else until
        self.hooks = list(hooks)
        self._tensorboard = None
        self.data = distributed.shard_data(loaders(cfg, device))
        self.space = space_of(cfg, self.data.in_channels, self.data.num_classes)
        self.supernet = to_device(self.space.supernet(), device, cfg.search.channels_last)
        self.optimizer = OPTIMIZERS.get(cfg.search.optimizer)(self.supernet, cfg.search, len(self.data.train))
        self.epoch, self.step, self.meters = 0, 0, {}
        self.epoch_start: dict[str, float] = {}  # what the optimizer's start_epoch reported for this epoch

    def tensorboard_writer(self):
        """RUN/tb/'s event writer, opened on first use (TensorBoard is an optional extra, imported only then)."""
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run.tensorboard_dir))
        return self._tensorboard

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"supernet": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                "epoch": self.epoch, "step": self.step, "meters": self.meters, "epoch_start": self.epoch_start}

    def save(self) -> None:
        self.meters = distributed.mean_over_ranks(self.meters)  # linear: averaging early equals averaging at the end
        if not distributed.is_main():
            return
        position = self.epoch * len(self.data.train) + self.step
        state = self.state()
        check_state_finite(state, self.epoch, self.step, self.run)
        save_checkpoint(self.run.checkpoints, SEARCH_CHECKPOINT, position, state)

    def restore(self) -> bool:
        """Continue from the newest checkpoint that verifies and fits (a damaged or unfitting one is reported and
        the previous one used); metrics past it (all of them when there is none) are dropped. Settings a resume
        changed (learning rates, ...) take effect here."""
        state = load_latest_checkpoint(self.run.checkpoints, SEARCH_CHECKPOINT, apply=self._load_state)
        if state is None:
            if distributed.is_main():  # a kill before the first checkpoint: its epoch starts again from scratch
                self.run.truncate_metrics(lambda r: False)
            return False
        changed = self.optimizer.apply_hyperparameters()
        if changed:
            log.info(f"resume: the optimizers now use the config's {', '.join(changed)}")
        done = self.epoch
        if distributed.is_main():
            self.run.truncate_metrics(lambda r: isinstance(r.get("epoch"), int) and r["epoch"] < done)
        return True

    def _load_state(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state, checking that every part fits this run (raises on the first that does not)."""
        epoch = _check_int(state, "epoch", 0, max(self.cfg.search.epochs, 10 ** 6))
        step = _check_int(state, "step", 0, max(len(self.data.train) - 1, 0))
        meters, epoch_start = state["meters"], state.get("epoch_start", {})
        for what, d in (("meters", meters), ("epoch_start", epoch_start)):
            if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) for k, v in d.items()):
                raise UserError(f"{what} is not a mapping of names to numbers")
        bad = nonfinite_tensors({"supernet": state["supernet"], "meters": meters})
        if bad:
            raise UserError(f"non-finite values in {bad[0]}")
        self.supernet.load_state_dict(state["supernet"])  # strict: every key, every shape
        self.optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(self.optimizer)
        set_rng_state(state["rng"])
        self.epoch, self.step, self.meters, self.epoch_start = epoch, step, dict(meters), dict(epoch_start)

    # -- the loop ------------------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg.search
        train, valid = self.data.train, self.data.valid
        distributed.sync_module(self.supernet)  # every rank starts from rank 0's (fresh or restored) supernet
        distributed.check_same_rng()  # and draws what rank 0 draws (sampled paths, sub-networks)
        while self.epoch < self.until:
            start_time = time.perf_counter() - self.meters.get("seconds", 0.0)
            with logs.Progress(f"epoch {self.epoch + 1}/{cfg.epochs}", len(train), done=self.step,
                               final=False) as progress:
                if self.step == 0:  # once per epoch, never again after a mid-epoch resume
                    self.epoch_start = self.optimizer.start_epoch(self.epoch, valid) or {}
                for x, y in train.epoch(self.epoch, start=self.step):
                    k = self.optimizer.valid_batch_index(self.epoch, self.step, len(valid))
                    v = None if k is None else valid.batch(self.epoch, k)
                    out = self.optimizer.step((x, y), v, self.epoch)
                    _check_finite(out, self.supernet, self.epoch, self.step, self.run)
                    self._accumulate(out)
                    self.step += 1
                    progress.update()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < len(train):
                        self.meters["seconds"] = time.perf_counter() - start_time
                        self.save()
                self._finish_epoch(time.perf_counter() - start_time)  # its evaluation's progress continues this one

    def _accumulate(self, out: dict[str, float]) -> None:
        """Sums per metric, and how many steps reported each (an optimizer may report some only on some steps:
        ProxylessNAS' α step runs every few weight steps)."""
        for k, v in out.items():
            self.meters[k] = self.meters.get(k, 0.0) + v
            self.meters[f"n/{k}"] = self.meters.get(f"n/{k}", 0) + 1
        self.meters["n"] = self.meters.get("n", 0) + 1

    def _finish_epoch(self, seconds: float) -> None:
        means = epoch_means(distributed.mean_over_ranks(self.meters))
        lr = self.optimizer.lr
        self.optimizer.end_epoch(self.epoch)
        distributed.sync_module(self.supernet)  # rank 0's BN running statistics everywhere, before eval and save
        distributed.check_same_rng()
        # Each rank evaluates its equal slice of every batch: the mean of the ranks' means is the full-batch mean.
        model, weights = self.optimizer.evaluation(self.data.train)
        valid_loss, valid_acc = loss_and_accuracy(model, self.data.valid, weights=weights)
        valid = distributed.mean_over_ranks({"loss": valid_loss, "acc": valid_acc})
        valid_loss, valid_acc = valid["loss"], valid["acc"]
        _check_finite({"search_valid_loss": valid_loss}, self.supernet, self.epoch, self.step, self.run)
        record = {"epoch": self.epoch, "lr": lr, **means, "search_valid_loss": valid_loss,
                  "search_valid_acc": valid_acc, "seconds": seconds, "alpha": _alpha_record(self.supernet),
                  **self.epoch_start}
        for hook in self.hooks:
            record.update(hook(self, record) or {})
        if distributed.is_main():
            self.run.append_metrics(record)
        if distributed.is_main():
            log.info(f"epoch {self.epoch + 1}/{self.cfg.search.epochs}  lr {lr:.4f}  "
                     f"train loss {means.get('train_loss', float('nan')):.3f} "
                     f"acc {logs.percent(means.get('train_acc', float('nan')))}  valid loss {valid_loss:.3f} "
                     f"acc {logs.percent(valid_acc)}  {seconds:.1f}s")
        self.epoch, self.step, self.meters, self.epoch_start = self.epoch + 1, 0, {}, {}
        self.save()


def train_supernet(search: SearchRun, resume: bool = True) -> None:
    """Continue from the newest checkpoint (when resuming), train to the end and save the trained supernet (rank 0)
    for the selection stage."""
    if resume and search.restore():
        log.info(f"resumed at epoch {search.epoch + 1}, step {search.step}")
    search.train()
    if distributed.is_main():
        search.run.save_supernet(search.supernet.state_dict())
