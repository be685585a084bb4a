"""Choosing among the leaves of a split search.

For each selector, the leaf whose selection scores best: by its search-valid accuracy in its own sub-supernet
(`choose: supernet`, legitimate), or by the NAS-Bench-201 table (`choose: oracle`, analysis only: it uses benchmark
knowledge a search does not have, and says so in every output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..arch import Architecture
from ..config import RunConfig
from ..errors import UserError
from ..evaluate.benchmark import IMPORT_HINT, METRIC_COLUMNS
from ..evaluate.lookup import table_for
from .settings import Settings
from .tree import Tree


def check_oracle(cfg: RunConfig, s: Settings) -> None:
    """`choose: oracle` needs a NAS-Bench-201 space, a table and a known column: fail before any training."""
    if s.choose != "oracle":
        return
    if cfg.space.name != "nb201":
        raise UserError(f"split.choose oracle looks architectures up in NAS-Bench-201; the {cfg.space.name} space "
                        f"has no table")
    if s.oracle_metric not in METRIC_COLUMNS:
        raise UserError(f"split.oracle_metric {s.oracle_metric!r}: choose one of {', '.join(METRIC_COLUMNS)}")
    if table_for(cfg.benchmark) is None:
        raise UserError(f"split.choose oracle: {IMPORT_HINT}")


def _score(selection: dict[str, Any], s: Settings) -> float:
    if s.choose == "supernet":
        if selection.get("bn") != s.bn:
            raise UserError(f"a leaf's selections were scored with BN in {selection.get('bn')} mode, not "
                            f"split.bn {s.bn}: score every leaf again with archselect select RUN --selector ...")
        return selection["valid_acc"]
    value = selection["benchmark"].get(s.oracle_metric)
    if value is None:
        why = selection["benchmark"].get("note", f"the benchmark has no {s.oracle_metric!r} value")
        raise UserError(f"split.choose oracle needs benchmark metrics: {why}")
    return float(value)


def choose(leaves: dict[str, dict[str, Any]], names: list[str], s: Settings) -> dict[str, dict[str, Any]]:
    """For each selector, the leaf whose selection scores best (the first leaf on ties)."""
    out = {}
    ids = list(leaves)
    for name in names:
        scores = [_score(leaves[i]["selections"][name], s) for i in ids]
        best = max(range(len(ids)), key=lambda j: (scores[j], -j))
        out[name] = {"leaf": ids[best], "score": scores[best], "scores": dict(zip(ids, scores))}
    return out


def rule_label(s: Settings) -> str:
    if s.choose == "oracle":
        return f"oracle: benchmark {s.oracle_metric} (analysis only, not a legitimate search result)"
    return f"supernet: search-valid accuracy of each selection in its sub-supernet ({s.bn}-mode BN)"


def _scored_everywhere(leaves: dict[str, dict[str, Any]], preferred: list[str]) -> list[str]:
    """Selectors whose selections every leaf holds: the preferred ones first (in order), then the others."""
    common = set.intersection(*(set(leaf["selections"]) for leaf in leaves.values()))
    return list(dict.fromkeys(n for n in preferred if n in common)) + sorted(common - set(preferred))


@dataclass
class SplitOutcome:
    """What a split search found: per selector the architecture of its chosen leaf, the first selector's (the run's
    architecture), the search's totals and the split record for result.json."""

    first: str
    architectures: dict[str, Architecture]
    search: dict[str, Any]
    split: dict[str, Any]


def choose_leaves(cfg: RunConfig, tree: Tree, s: Settings, names: list[str]) -> SplitOutcome:
    """Every selector scored in all leaves gets its chosen leaf (recorded in the tree); the first of the configured
    selectors (else of `names`) gives the run's architecture."""
    leaves = {i: tree.nodes[i]["result"] for i in tree.record["leaves"]}
    names = _scored_everywhere(leaves, [*cfg.select.selectors, *names])
    chosen = choose(leaves, names, s)
    for name, c in chosen.items():
        c["benchmark"] = leaves[c["leaf"]]["selections"][name]["benchmark"]
    first = chosen[names[0]]
    seconds = sum(m.get("seconds", 0.0) for i in tree.nodes for m in tree.node_dir(i).read_metrics())
    seconds += sum(n["split"]["cost"]["seconds"] for n in tree.nodes.values() if n["split"] and n["split"]["cost"])
    tree.set_choice({"rule": s.choose, "label": rule_label(s), "per_selector": chosen})
    return SplitOutcome(
        first=names[0],
        architectures={n: Architecture.from_dict(leaves[c["leaf"]]["selections"][n]["arch"]) for n, c in chosen.items()},
        search={"epochs": s.total_epochs, "seconds": seconds,
                "search_valid_acc": leaves[first["leaf"]]["supernet_valid_acc"]},
        split={"method": s.method, "rule": s.choose, "oracle": s.choose == "oracle", "label": rule_label(s),
               "leaf": first["leaf"], "per_selector": chosen, "leaves": len(leaves), "tree": str(tree.path.relative_to(tree.run.path))})
