"""Random search with parameter sharing (RSPS; Li & Talwalkar 2019), as GM-NAS trains it: every weight step runs one
path of the supernet, one enabled op per edge drawn uniformly (one-hot mixing weights, so only that op is computed).
α is never used or changed.

With `none` among the ops, a drawn cell may have no path from its input to its output that avoids `none`; such a draw
is redrawn (`connected: true`, GM-NAS' `check_connect`). For cells with several outputs (DARTS concatenates nodes
2..5) the check asks for a path to the last node. GM-NAS builds the RSPS supernet with BN `track_running_stats=False`
(`space.bn_track: false`), so that every path is evaluated with its own batch statistics.

Selecting the architecture is RSPS' own step, not α's argmax: evaluate many distinct random paths on the validation
data and keep the best (GM-NAS: 200 paths on the whole validation half): the `random-paths` selector
(selection/random_paths.py; `--selector random-paths`). The magnitude selector would read the untouched α.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .base import OPTIMIZERS, SearchOptimizer


def connected(edges: Sequence[tuple[int, int]], live: Sequence[bool]) -> bool:
    """Whether the last node is reachable from an input node (a node no edge enters) over the live edges."""
    targets = {dst for _, dst in edges}
    nodes = {n for e in edges for n in e}
    reached = {n for n in nodes if n not in targets}
    for (src, dst), ok in sorted(zip(edges, live), key=lambda t: t[0][1]):  # by destination: a topological order
        if ok and src in reached:
            reached.add(dst)
    return max(nodes) in reached


def _can_connect(supernet, ct: str) -> bool:
    names = supernet.op_names
    live = [any(on and names[k] != "none" for k, on in enumerate(row)) for row in supernet.mask(ct).tolist()]
    return connected(supernet.edges[ct], live)


def sample_path(supernet, require_connected: bool = True) -> dict[str, torch.Tensor]:
    """One-hot mixing weights of a uniformly drawn path (an edge without enabled ops gets a zero row). Draws come
    from torch's global generator on the CPU."""
    names = supernet.op_names
    out = {}
    for ct in supernet.cell_types:
        mask = supernet.mask(ct).cpu()
        has_op = mask.any(dim=1)
        probs = torch.where(has_op.unsqueeze(1), mask.float(), torch.ones_like(mask, dtype=torch.float))
        check = require_connected and "none" in names and _can_connect(supernet, ct)
        while True:
            index = torch.multinomial(probs, 1).squeeze(1)
            live = [bool(h) and names[k] != "none" for h, k in zip(has_op.tolist(), index.tolist())]
            if not check or connected(supernet.edges[ct], live):
                break
        w = torch.zeros(mask.shape).scatter_(1, index.unsqueeze(1), 1.0) * has_op.unsqueeze(1)
        out[ct] = w.to(supernet.alphas[ct].device)
    return out


@dataclass
class RSPSOptions:
    connected: bool = True  # redraw paths whose cell has no route from input to output avoiding `none` (GM-NAS)


@OPTIMIZERS.register("rsps")
class RSPS(SearchOptimizer):
    Options = RSPSOptions

    def train_weights(self) -> dict[str, torch.Tensor]:
        return sample_path(self.supernet, self.options.connected)
