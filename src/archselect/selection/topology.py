"""DARTS-PT's topology step for spaces whose intermediate nodes keep a fixed number of inputs (DARTS: 2).

For a node with more candidate input edges than it may keep, repeatedly zero each remaining edge (every op of it), and
drop the edge whose removal leaves the highest validation accuracy (crit loss: the lowest loss), i.e. the least
important one, until `keep` remain. Dropped edges are disabled in the supernet's mask, so they contribute exactly zero
from then on. Written over `supernet.edges[cell_type]` alone, for any space with (src, dst) edges.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..supernet import Supernet
from ..scoring.evaluator import Outcome

Weights = dict[str, torch.Tensor]


def node_inputs(edges: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """Destination node -> indices of its incoming edges."""
    out: dict[int, list[int]] = {}
    for i, (_, dst) in enumerate(edges):
        out.setdefault(dst, []).append(i)
    return out


def nodes_to_prune(supernet: Supernet, cell_type: str, keep: int) -> list[int]:
    """Nodes with more than `keep` incoming edges that still have an enabled op."""
    alive = supernet.mask(cell_type).any(dim=1).tolist()
    return [n for n, es in sorted(node_inputs(supernet.edges[cell_type]).items())
            if sum(alive[e] for e in es) > keep]


def select_inputs(supernet: Supernet, evaluate: Callable[[list[Weights]], list[Outcome]], cell_type: str, node: int,
                  keep: int, crit: str = "acc") -> dict[str, Any]:
    """Prune `node`'s inputs in `supernet` (its masks) down to `keep`; returns the record of every round.
    `evaluate(settings) -> outcomes` evaluates a list of mixing weights (a round's removals at once)."""
    mask = supernet.mask(cell_type)
    remaining = [e for e in node_inputs(supernet.edges[cell_type])[node] if bool(mask[e].any())]
    rounds = []
    while len(remaining) > keep:
        base = supernet.mixing_weights(detach=True)
        removals = []
        for e in remaining:
            w = {ct: t.clone() for ct, t in base.items()}
            w[cell_type][e] = 0.0
            removals.append(w)
        outcomes = dict(zip(remaining, evaluate(removals)))
        if crit == "acc":
            drop = max(remaining, key=lambda e: (outcomes[e].accuracy, -remaining.index(e)))
        else:
            drop = min(remaining, key=lambda e: (outcomes[e].loss, remaining.index(e)))
        supernet.set_mask(cell_type, _without_edge(mask, drop))
        remaining.remove(drop)
        rounds.append({"accuracy": {str(e): o.accuracy for e, o in outcomes.items()},
                       "loss": {str(e): o.loss for e, o in outcomes.items()}, "dropped": drop})
    return {"cell_type": cell_type, "node": node, "kept": remaining, "rounds": rounds}


def _without_edge(mask: torch.Tensor, edge: int) -> torch.Tensor:
    m = mask.clone()
    m[edge] = False
    return m
