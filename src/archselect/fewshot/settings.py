"""Split settings: the `split` config section with every `auto` resolved to the official value for the space.

GM-NAS' code has three protocols, one per family of spaces, and they differ in the edge criterion, the op weight
while measuring, α before the last split, the restart, the schedule after a final restart, the candidate cell types
and the groups per split:
- `nb201`: NAS-Bench-201 (one cell type), `ws-so-darts-201.sh`;
- `darts`: the DARTS space (normal + reduce cells), `darts-sota-ws-res.sh`;
- `mobilenet`: ProxylessNAS' space (one cell type per stage),
  `Proxylessnas-GM/search/weight_sharing_imagenet_arch_search.py` with the README's `--split_ckpts 40,80
  --split_num 2,3 --edge_crit grad`.
The resolved settings are recorded in tree.json, so a run says exactly what it did.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from ..components import space_of
from ..config import RunConfig, SplitConfig
from ..errors import UserError
from ..mobilenet_text import CELL_TYPES as MOBILENET_CELL_TYPES


@dataclass(frozen=True)
class Settings:
    """SplitConfig with every `auto` replaced by the official value for the space (recorded in tree.json)."""

    method: str
    epochs: list[int]
    total_epochs: int
    groups: int | list[int]   # groups at every split, or one count per split (MobileNet official: [2, 3])
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
    shared: str

    @property
    def levels(self) -> int:
        return len(self.epochs)

    def groups_at(self, level: int) -> int:
        """Groups at the split of this level (0: the root's)."""
        return self.groups if isinstance(self.groups, int) else self.groups[level]


# The official value of each `auto` setting per protocol. `groups` is a function of the number of splits.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "nb201": {"edge_criterion": "cut", "op_weight": "one", "warmup_alpha": "init", "restart": "final",
              "restart_schedule": "total", "groups": lambda levels: 2},
    "darts": {"edge_criterion": "within", "op_weight": "softmax", "warmup_alpha": "equal", "restart": "final",
              "restart_schedule": "remaining", "groups": lambda levels: 2},
    # ProxylessNAS-GM: smallest within-group distance; binary gate 1 on the measured op; α learned between the
    # splits and every child inherits the parent's state (no restart, one cosine over all epochs); 2 then 3 groups.
    "mobilenet": {"edge_criterion": "within", "op_weight": "one", "warmup_alpha": "learn", "restart": "inherit",
                  "restart_schedule": "total", "groups": lambda levels: [2] + [3] * (levels - 1)},
}


def protocol(cell_types: Sequence[str]) -> str:
    """The GM-NAS protocol of a space with these cell types."""
    if "normal" in cell_types:
        return "darts"
    if tuple(cell_types) == MOBILENET_CELL_TYPES:
        return "mobilenet"
    return "nb201"


def official_defaults(cell_types: tuple[str, ...], method: str, levels: int = 2) -> dict[str, Any]:
    """GM-NAS' official settings for the space's protocol (exhaustive splitting takes the first edge)."""
    name = protocol(cell_types)
    p = PROTOCOLS[name]
    out = {k: v for k, v in p.items() if k != "groups"} | {"groups": p["groups"](levels)}
    out["cell_types"] = ["normal"] if name == "darts" else list(cell_types)
    if method == "exhaustive":
        out["edge_criterion"] = "first"
    return out


def _check_groups(s: SplitConfig, groups: int | list[int], op_counts: set[int], levels: int) -> None:
    counts = sorted(op_counts)
    if s.sizes is not None and sum(s.sizes) not in op_counts:
        raise UserError(f"split.sizes {s.sizes} must add up to the {' or '.join(map(str, counts))} ops of an edge")
    per_level = [groups] * levels if isinstance(groups, int) else groups
    too_many = [g for g in per_level if 2 * g > counts[-1]]
    if s.method == "gm" and s.sizes is None and too_many:
        raise UserError(f"split.groups {too_many[0]}: {counts[-1]} ops cannot form {too_many[0]} groups of at least "
                        f"2 ops; give split.sizes")


def resolve(cfg: RunConfig, cell_types: tuple[str, ...], n_ops: int, op_counts: set[int] | None = None) -> Settings:
    """Settings for a space with these cell types and `n_ops` candidate ops, of which the edges start with
    `op_counts` enabled (default: all n_ops; MobileNet: 6 on a stage's first layer, 7 elsewhere)."""
    s = cfg.split
    auto = official_defaults(cell_types, s.method, len(s.epochs))
    values = {f.name: getattr(s, f.name) for f in dataclasses.fields(SplitConfig)}
    for key in ("edge_criterion", "op_weight", "warmup_alpha", "restart", "restart_schedule", "groups"):
        if values[key] == "auto":
            values[key] = auto[key]
    if s.groups == "auto" and s.sizes is not None:  # the sizes say how many groups
        values["groups"] = len(s.sizes)
    _check_groups(s, values["groups"], op_counts or {n_ops}, len(s.epochs))
    values["cell_types"] = list(s.cell_types) if s.cell_types is not None else auto["cell_types"]
    unknown = [ct for ct in values["cell_types"] if ct not in cell_types]
    if unknown:
        raise UserError(f"split.cell_types: {', '.join(unknown)} not in the {cfg.space.name} space "
                        f"(cell types: {', '.join(cell_types)})")
    return Settings(total_epochs=cfg.search.epochs, **values)


def settings_for(cfg: RunConfig) -> Settings:
    space = space_of(cfg, 3, 10)
    base = getattr(space, "base_mask", None)  # a space that rules ops out on some edges says which
    counts = {int(n) for ct in space.cell_types for n in base(ct).sum(dim=1).tolist()} if base else None
    return resolve(cfg, tuple(space.cell_types), len(space.op_names), counts)
