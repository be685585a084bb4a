"""Kill-safe progress of a long selector: a checkpoint in the selection work directory after each unit of work
(a DARTS-PT decision, a Shapley permutation), resumed by the next call only if it was made for the same supernet,
options and seed (a fingerprint), and removed once the selection is complete."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..files import load_latest_checkpoint, remove_checkpoints, save_checkpoint

log = logging.getLogger(__name__)


def fingerprint(supernet: torch.nn.Module, options: Any, seed: int, extra: Any = None) -> str:
    """sha256 over the supernet's state (parameters, masks, BN statistics), the options and the seed."""
    h = hashlib.sha256()
    h.update(json.dumps([vars(options), seed, extra], sort_keys=True, default=str).encode())
    for name, t in supernet.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Progress:
    def __init__(self, workdir: Path | None, name: str, key: str):
        self.workdir, self.name, self.key = workdir, f"{name}-progress", key

    def load(self) -> dict[str, Any] | None:
        """The saved state, if there is one for this fingerprint; a stale one (other supernet/options) is removed."""
        if self.workdir is None:
            return None
        state = load_latest_checkpoint(self.workdir, self.name)
        if state is None:
            return None
        if state.get("fingerprint") != self.key:
            log.info(f"  discarding {self.name} in {self.workdir}: made for another supernet, options or seed")
            self.clear()
            return None
        return state

    def save(self, step: int, state: dict[str, Any]) -> None:
        if self.workdir is not None:
            save_checkpoint(self.workdir, self.name, step, {**state, "fingerprint": self.key})

    def clear(self) -> None:
        if self.workdir is not None:
            remove_checkpoints(self.workdir, self.name)
