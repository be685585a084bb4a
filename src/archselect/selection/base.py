"""The Selector contract: decide each edge's operation on a trained supernet, and say how sure and how costly.

`select(ctx) -> Selection`. A Selection holds per-edge op scores (higher = more important) with their standard error
where the method has one, the chosen Architecture and the cost (forward/backward passes, images, seconds). Selectors
never change the caller's supernet: progressive ones work on a copy.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..arch import Architecture, edge_name
from ..config import build
from ..errors import UserError
from ..registry import Registry
from ..supernet import Supernet
from ..scoring.cost import Cost
from ..scoring.workers import Workers

SELECTORS: Registry = Registry("selector")
log = logging.getLogger(__name__)


@dataclass
class NoOptions:
    pass


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
        """A selection read from a file, its types checked (a hand-edited file is a one-line UserError)."""
        check_selection_record(d)
        return cls(d["selector"], Architecture.from_dict(d["architecture"]), d["scores"], d.get("stderr"),
                   Cost(**d.get("cost", {})), d.get("details", {}))


def _is_matrix_map(m: Any) -> bool:
    return isinstance(m, dict) and all(
        isinstance(k, str) and isinstance(rows, list) and all(
            isinstance(r, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
            for r in rows)
        for k, rows in m.items())


def check_selection_record(d: Any) -> None:
    cost_keys = {"forward": int, "backward": int, "passes": int, "images": int, "seconds": (int, float)}
    cost = d.get("cost", {}) if isinstance(d, dict) else None
    ok = (isinstance(d, dict) and isinstance(d.get("selector"), str) and "architecture" in d
          and _is_matrix_map(d.get("scores")) and (d.get("stderr") is None or _is_matrix_map(d["stderr"]))
          and isinstance(d.get("details", {}), dict) and isinstance(cost, dict)
          and all(k in cost_keys and isinstance(v, cost_keys[k]) and not isinstance(v, bool) for k, v in cost.items()))
    if not ok:
        raise UserError("not an archselect selection record (selector, architecture, scores, stderr, cost, details "
                        "of the wrong types)")


@dataclass
class SelectionContext:
    """Everything a selector may use. `train` is for selectors that fine-tune; `workdir` for progress checkpoints;
    `workers` for selectors whose evaluations are independent of each other (scoring/workers.py); `optimizer` is the
    search optimizer's class, whose capabilities (`trains_alpha`, `alpha_by_gradient`) a selector may read."""

    space: Any
    supernet: Supernet
    valid: Any
    train: Any
    device: torch.device
    seed: int = 0
    workdir: Path | None = None
    search: Any = None  # the run's SearchConfig (optimizer and its settings), for selectors that keep training
    workers: Workers = field(default_factory=Workers)  # where independent evaluations run (default: here, in turn)
    optimizer: Any = None  # the SearchOptimizer subclass that trained the supernet (None: unknown, trained elsewhere)


class Selector(abc.ABC):
    Options: type = NoOptions
    name = "selector"
    ties_matter = True  # the architecture is derived from the scores, so a tie makes the choice arbitrary

    def __init__(self, options: dict | None = None, label: str | None = None):
        """`label`: run under another name (a variant, selection/variants.py); the Selection carries it."""
        self.base_name = self.name
        if label is not None:
            self.name = label
        prefix = f"select.variants.{label}" if label else f"select.options.{self.name}"
        self.options = build(self.Options, options or {}, prefix)
        if hasattr(self.options, "check"):
            self.options.check(prefix)

    def select(self, ctx: SelectionContext) -> Selection:
        start = time.perf_counter()
        selection = self.run(ctx)
        selection.cost.seconds = time.perf_counter() - start
        if self.name != self.base_name:
            selection.details["variant_of"] = self.base_name
        chooses_none = getattr(ctx.space, "chooses_none", True)
        ties = self.ties_matter and tied_edges(selection.scores, ctx.supernet, chooses_none)
        if ties:
            selection.details["tied_edges"] = ties
            where = ", ".join(f"{ct} {edge_name(*ctx.supernet.edges[ct][e])}" for ct, edges in ties.items()
                              for e in edges)
            log.info(f"  {self.name}: the best op ties on {sum(map(len, ties.values()))} edge(s) ({where}): the "
                     f"choice there is arbitrary")
        return selection

    @abc.abstractmethod
    def run(self, ctx: SelectionContext) -> Selection:
        """The method itself; `select` adds the wall time."""


def tied_edges(scores: dict[str, list[list[float]]], supernet: Supernet, chooses_none: bool = True
               ) -> dict[str, list[int]]:
    """Per cell type, the edges whose highest score among the ops `derive` may choose is shared by several ops (e.g.
    magnitude on a fixed-α supernet, where every op ties): on those the choice is arbitrary."""
    out = {}
    for ct, rows in scores.items():
        mask = supernet.mask(ct).tolist()
        tied = []
        for e, row in enumerate(rows):
            values = [v for k, v in enumerate(row)
                      if mask[e][k] and (chooses_none or supernet.op_names[k] != "none")]
            if len(values) > 1 and values.count(max(values)) > 1:
                tied.append(e)
        if tied:
            out[ct] = tied
    return out


def as_lists(scores: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    return {ct: s.detach().float().cpu().tolist() for ct, s in scores.items()}


def register(name: str):
    """Register a Selector subclass under `name` (and give it that name)."""
    def add(cls):
        cls.name = name
        return SELECTORS.register(name)(cls)
    return add
