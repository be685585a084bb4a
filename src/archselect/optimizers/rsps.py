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
import torch

from ..spaces.sampling import sample_path
from .base import OPTIMIZERS, SearchOptimizer


@dataclass
class RSPSOptions:
    connected: bool = True  # redraw paths whose cell has no route from input to output avoiding `none` (GM-NAS)


@OPTIMIZERS.register("rsps")
class RSPS(SearchOptimizer):
    Options = RSPSOptions
    trains_alpha = False
    recommended_selectors = ("random-paths",)

    def train_weights(self) -> dict[str, torch.Tensor]:
        return sample_path(self.supernet, self.options.connected)
