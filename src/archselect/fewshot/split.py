"""Splitting a supernet: sub-supernets that inherit its trained state and enable only one group of ops on one edge.

A sub-supernet is a deep copy (weights, α, BN statistics, masks) whose mask on the split edge keeps only its group.
Its mixing weights are then the softmax of α over the enabled ops alone (`Supernet.mixing_weights`), GM-NAS'
encoding-restricted softmax.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..arch import edge_label
from ..supernet import Supernet


def enabled_ops(supernet: Supernet, cell_type: str, edge: int) -> tuple[int, ...]:
    return tuple(k for k, on in enumerate(supernet.mask(cell_type)[edge].tolist()) if on)


def check_groups(supernet: Supernet, cell_type: str, edge: int, groups: Sequence[Sequence[int]]) -> None:
    """The groups must be non-empty and partition the ops enabled on the edge."""
    if cell_type not in supernet.cell_types:
        raise ValueError(f"unknown cell type {cell_type!r}; the supernet has {', '.join(supernet.cell_types)}")
    if not 0 <= edge < len(supernet.edges[cell_type]):
        raise ValueError(f"edge {edge} out of range for cell type {cell_type!r}")
    flat = [k for g in groups for k in g]
    if any(len(g) == 0 for g in groups) or len(groups) < 2:
        raise ValueError(f"a split needs at least two non-empty groups, got {[list(g) for g in groups]}")
    if sorted(flat) != list(enabled_ops(supernet, cell_type, edge)):
        raise ValueError(f"groups {[list(g) for g in groups]} do not partition the ops enabled on "
                         f"{edge_label(edge, *supernet.edges[cell_type][edge])} "
                         f"({list(enabled_ops(supernet, cell_type, edge))})")


def group_mask(mask: torch.Tensor, edge: int, group: Sequence[int]) -> torch.Tensor:
    """A copy of `mask` (edges x ops) whose row `edge` enables exactly `group`."""
    out = mask.clone()
    out[edge] = False
    out[edge, list(group)] = True
    return out


def split_masks(supernet: Supernet, cell_type: str, edge: int,
                groups: Sequence[Sequence[int]]) -> list[dict[str, torch.Tensor]]:
    """One full mask set (per cell type) for each group's sub-supernet."""
    check_groups(supernet, cell_type, edge, groups)
    masks = {ct: supernet.mask(ct).detach().clone() for ct in supernet.cell_types}
    return [{**masks, cell_type: group_mask(masks[cell_type], edge, g)} for g in groups]


def split_supernet(supernet: Supernet, cell_type: str, edge: int, groups: Sequence[Sequence[int]]) -> list[Supernet]:
    """Sub-supernets, one per group, each a deep copy of `supernet` with that group alone on the edge. The caller's
    supernet is unchanged."""
    children = []
    for masks in split_masks(supernet, cell_type, edge, groups):
        child = copy.deepcopy(supernet)
        for ct, m in masks.items():
            child.set_mask(ct, m)
        children.append(child)
    return children
