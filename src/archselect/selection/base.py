"""The Selector contract: decide each edge's operation on a trained supernet, and say how sure and how costly.

`select(ctx) -> Selection`. A Selection holds per-edge op scores (higher = more important) with their standard error
where the method has one, the chosen Architecture and the cost (forward/backward passes, images, seconds). Selectors
never change the caller's supernet: progressive ones work on a copy.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..arch import Architecture
from ..config import build
from ..registry import Registry
from ..supernet import Supernet

SELECTORS: Registry = Registry("selector")


@dataclass
class NoOptions:
    pass


@dataclass
class Cost:
    forward: int = 0      # forward passes (batches)
    backward: int = 0     # backward passes (batches)
    images: int = 0       # images sent through the supernet
    seconds: float = 0.0

    def count(self, batch: int, backward: bool = False) -> None:
        self.forward += 1
        self.images += batch
        self.backward += int(backward)


@dataclass
class Selection:
    selector: str
    architecture: Architecture
    scores: dict[str, list[list[float]]]                 # cell type -> edges x ops
    stderr: dict[str, list[list[float]]] | None = None   # same shape, where the method estimates one
    cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector, "architecture": self.architecture.to_dict(), "scores": self.scores,
            "stderr": self.stderr, "cost": vars(self.cost), "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Selection":
        return cls(d["selector"], Architecture.from_dict(d["architecture"]), d["scores"], d.get("stderr"),
                   Cost(**d.get("cost", {})), d.get("details", {}))


@dataclass
class SelectionContext:
    """Everything a selector may use. `train` is for selectors that fine-tune; `workdir` for progress checkpoints."""

    space: Any
    supernet: Supernet
    valid: Any
    train: Any
    device: torch.device
    seed: int = 0
    workdir: Path | None = None
    log: Callable[[str], None] = print
    search: Any = None  # the run's SearchConfig (optimizer and its settings), for selectors that keep training


class Selector(abc.ABC):
    Options: type = NoOptions
    name = "selector"

    def __init__(self, options: dict | None = None):
        self.options = build(self.Options, options or {}, f"select.options.{self.name}")

    def select(self, ctx: SelectionContext) -> Selection:
        start = time.perf_counter()
        selection = self.run(ctx)
        selection.cost.seconds = time.perf_counter() - start
        return selection

    @abc.abstractmethod
    def run(self, ctx: SelectionContext) -> Selection:
        """The method itself; `select` adds the wall time."""


def as_lists(scores: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    return {ct: s.detach().float().cpu().tolist() for ct, s in scores.items()}


def register(name: str):
    """Register a Selector subclass under `name` (and give it that name)."""
    def add(cls):
        cls.name = name
        return SELECTORS.register(name)(cls)
    return add
