"""Split settings: the `split` config section with every `auto` resolved to the official value for the space.

GM-NAS' scripts differ between NAS-Bench-201 (one cell type) and the DARTS space (normal + reduce cells): edge
criterion, op weight while measuring, α during warm-up, the schedule after the final restart, candidate cell types.
The resolved settings are recorded in tree.json, so a run says exactly what it did.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..components import space_of
from ..config import RunConfig, SplitConfig
from ..errors import UserError


@dataclass(frozen=True)
class Settings:
    """SplitConfig with every `auto` replaced by the official value for the space (recorded in tree.json)."""

    method: str
    epochs: list[int]
    total_epochs: int
    groups: int
    sizes: list[int] | None
    batches: int
    distance: str
    edge_criterion: str
    edges: list[int] | None
    cell_types: list[str]
    op_weight: str
    warmup_alpha: str
    restart: str
    restart_schedule: str
    choose: str
    oracle_metric: str
    bn: str

    @property
    def levels(self) -> int:
        return len(self.epochs)


def official_defaults(cell_types: tuple[str, ...], method: str) -> dict[str, Any]:
    """GM-NAS' official settings: NB201 scripts for a one-cell-type space, DARTS-space scripts for normal/reduce."""
    darts = "normal" in cell_types
    criterion = "first" if method == "exhaustive" else ("within" if darts else "cut")
    return {"edge_criterion": criterion, "op_weight": "softmax" if darts else "one",
            "warmup_alpha": "equal" if darts else "init", "restart_schedule": "remaining" if darts else "total",
            "cell_types": ["normal"] if darts else list(cell_types)}


def resolve(cfg: RunConfig, cell_types: tuple[str, ...], n_ops: int) -> Settings:
    """Settings for a space with these cell types and `n_ops` candidate ops per edge (checked against the sizes)."""
    s = cfg.split
    if s.sizes is not None and sum(s.sizes) != n_ops:
        raise UserError(f"split.sizes {s.sizes} must add up to the {n_ops} ops of an edge")
    if s.method == "gm" and s.sizes is None and 2 * s.groups > n_ops:
        raise UserError(f"split.groups {s.groups}: {n_ops} ops cannot form {s.groups} groups of at least 2 ops; "
                        f"give split.sizes")
    auto = official_defaults(cell_types, s.method)
    values = {f.name: getattr(s, f.name) for f in dataclasses.fields(SplitConfig)}
    for key in ("edge_criterion", "op_weight", "warmup_alpha", "restart_schedule"):
        if values[key] == "auto":
            values[key] = auto[key]
    values["cell_types"] = list(s.cell_types) if s.cell_types is not None else auto["cell_types"]
    unknown = [ct for ct in values["cell_types"] if ct not in cell_types]
    if unknown:
        raise UserError(f"split.cell_types: {', '.join(unknown)} not in the {cfg.space.name} space "
                        f"(cell types: {', '.join(cell_types)})")
    return Settings(total_epochs=cfg.search.epochs, **values)


def settings_for(cfg: RunConfig) -> Settings:
    space = space_of(cfg, 3, 10)
    return resolve(cfg, tuple(space.cell_types), len(space.op_names))
