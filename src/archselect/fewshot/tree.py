"""The split tree on disk.

    RUN/split/tree.json        the settings, every node (its epochs, enabled ops, split, leaf result), the choice
    RUN/split/root/            the supernet before the first split: a normal run directory (config.yaml, checkpoints,
    RUN/split/0/, RUN/split/1/   metrics.jsonl); children are named by their group index under the parent,
    RUN/split/0-1/ ...           so node "0-1" is group 1 of the split of node "0"

Each node trains epochs [start, end): the root up to the first split epoch, a node of level l (after l splits) up to
the next split epoch, a leaf (after the last split) up to search.epochs. tree.json is rewritten atomically after each
event (a split decided, a leaf finished), so a resumed search never recomputes a split it already recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..arch import edge_label
from ..errors import UserError
from ..logs import percent
from ..files import atomic_write_json, read_json
from ..runs import RunDir

ROOT = "root"
POST_HOC = ("choose", "oracle_metric", "bn")  # settings that only score and choose among finished leaves
ADDED = {"shared": "ops"}  # settings added after trees were recorded: the value those trees used


def child_id(parent: str, group: int) -> str:
    return str(group) if parent == ROOT else f"{parent}-{group}"


def node_path(node_id: str) -> tuple[int, ...]:
    """Group indices from the root down to the node (() for the root)."""
    return () if node_id == ROOT else tuple(int(g) for g in node_id.split("-"))


def phase(level: int, split_epochs: list[int], total: int) -> tuple[int, int]:
    """[start, end) epochs a node of this level trains."""
    start = 0 if level == 0 else split_epochs[level - 1]
    end = split_epochs[level] if level < len(split_epochs) else total
    return start, end


class Tree:
    def __init__(self, run: RunDir, record: dict[str, Any]):
        self.run, self.record = run, record

    @property
    def path(self) -> Path:
        return self.run.tree_file

    @classmethod
    def open(cls, run: RunDir, settings: dict[str, Any]) -> "Tree":
        """The run's tree, created on first use; a resumed run must have kept its split settings."""
        path = run.tree_file
        if not path.exists():
            tree = cls(run, {"settings": settings, "nodes": {}, "leaves": [], "choice": None})
            tree.add_node(ROOT, None, 0, phase(0, settings["epochs"], settings["total_epochs"]))
            return tree
        record = read_json(path, "split tree")
        old = record.get("settings", {})
        changed = sorted(k for k in settings if k not in POST_HOC and old.get(k, ADDED.get(k)) != settings[k])
        if changed:
            raise UserError(f"{run.path} was started with other split settings ({', '.join(changed)}); "
                            f"resume it with the settings it was started with, or start a new run")
        record["settings"] = settings
        return cls(run, record)

    def save(self) -> None:
        atomic_write_json(self.path, self.record)

    # nodes
    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return self.record["nodes"]

    def node_dir(self, node_id: str) -> RunDir:
        return self.run.node(node_id)

    def add_node(self, node_id: str, parent: str | None, level: int, epochs: tuple[int, int],
                 enabled: dict[str, list[list[str]]] | None = None) -> None:
        if node_id not in self.nodes:
            self.nodes[node_id] = {"parent": parent, "level": level, "epochs": list(epochs), "enabled": enabled,
                                   "split": None, "children": [], "result": None}
            self.save()

    def has_checkpoint(self, node_id: str) -> bool:
        return self.node_dir(node_id).has_search_checkpoint()

    def set_split(self, node_id: str, split: dict[str, Any], children: list[str]) -> None:
        self.nodes[node_id]["split"] = split
        self.nodes[node_id]["children"] = children
        self.save()

    def set_result(self, node_id: str, result: dict[str, Any]) -> None:
        self.nodes[node_id]["result"] = result
        self.save()

    def set_leaves(self, leaves: list[str]) -> None:
        self.record["leaves"] = leaves
        self.save()

    def set_choice(self, choice: dict[str, Any]) -> None:
        self.record["choice"] = choice
        self.save()


def describe(run: RunDir) -> str:
    """A few lines on a split search's tree: each node's progress and split, each leaf's selections, the choice."""
    if not run.is_split():
        return "split search: not started"
    record = read_json(run.tree_file, "split tree")
    s, lines = record["settings"], []
    lines.append(f"split search ({s['method']}): splits at epochs {s['epochs']} of {s['total_epochs']}, "
                 f"{len(record['leaves']) or '?'} sub-supernets")
    for node_id, node in record["nodes"].items():
        start, end = node["epochs"]
        done = len(run.node(node_id).read_metrics())
        text = f"  {node_id:>8}: epochs {start}-{end}, {done}/{end - start} trained"
        if node["split"]:
            sp = node["split"]
            text += (f"; split {sp['cell_type']} {edge_label(sp['edge'], *sp['nodes'])} into "
                     + " | ".join("{" + ", ".join(g) + "}" for g in sp["groups"]))
        for name, sel in ((node["result"] or {}).get("selections") or {}).items():
            text += f"\n{'':>12}{name}: {sel['architecture']}  search-valid acc {percent(sel['valid_acc'])}"
        lines.append(text)
    if record["choice"]:
        first = next(iter(record["choice"]["per_selector"].items()))
        lines.append(f"chosen: sub-supernet {first[1]['leaf']} for {first[0]} ({record['choice']['label']})")
    return "\n".join(lines)
