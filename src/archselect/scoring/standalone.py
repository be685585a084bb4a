"""A zero-cost proxy of a standalone network: an architecture built by its space (`space.network(arch)`), freshly
initialised and never trained, scored by the proxy summed over V batches (Zero-Cost-PT's validation stage,
zerocostnas/post_validate.py of its official code).

The initialisation is seeded by (seed, architecture) alone, so an architecture gets the same weights whichever
candidates are scored before it, and a resumed validation scores it as an uninterrupted one would.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterable

import torch
import torch.nn as nn

from .. import logs
from ..data import derive_seed
from .cost import Cost
from .evaluator import Batch, bn_mode
from .proxies import DATA_FREE, bind, charge

INIT_SALT = 0x1417


def fresh_network(space: Any, arch: Any, seed: int, device: torch.device) -> nn.Module:
    """`space.network(arch)` with its parameters drawn from a generator seeded by (seed, arch); the caller's RNG is
    left as it was."""
    key = zlib.crc32(str(arch).encode())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, INIT_SALT, key))
        net = space.network(arch)
    return net.to(device)


def summed_proxy(net: nn.Module, proxy: str, batches: Iterable[Batch], *, bn: str, seed: int, cost: Cost) -> float:
    """Σ over `batches` of proxy(net) (BN as `bn`: evaluator.bn_mode). A data-free proxy (synflow) is the same on
    every batch: computed once, and that value summed."""
    fn = bind(proxy, seed)
    total, value, first = 0.0, 0.0, True
    with bn_mode(net, bn):
        for x, y in batches:
            if first or proxy not in DATA_FREE:
                value = fn(net, _call, x, y)
                charge(cost, proxy, x)
            total, first = total + value, False
            logs.tick(1)
    return total


def _call(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)
