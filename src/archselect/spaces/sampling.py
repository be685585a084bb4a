"""Uniformly drawn paths of a supernet: one enabled op per edge, as one-hot mixing weights (RSPS trains on them, the
random-paths selector and the rank-correlation diagnostic evaluate them)."""
from __future__ import annotations

from typing import Sequence

import torch


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
