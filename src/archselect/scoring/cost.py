"""What an evaluation costs: forward and backward passes, network calls, images, seconds. Counted by every scorer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cost:
    forward: int = 0      # forward passes: weight settings evaluated on a batch, stacked or packed ones each counted
    backward: int = 0     # backward passes (batches)
    images: int = 0       # images sent through the supernet
    seconds: float = 0.0
    passes: int = 0       # network calls: a stacked or packed pass of several settings counts once (0: not recorded)

    def count(self, batch: int, backward: bool = False, passes: int = 1) -> None:
        self.forward += 1
        self.images += batch
        self.backward += int(backward)
        self.passes += passes

    @property
    def shared_passes(self) -> bool:
        """Whether settings shared network calls (stacked or packed): fewer passes than settings evaluated."""
        return self.passes not in (0, self.forward)

    def add(self, other: "Cost") -> None:
        """Add the passes counted elsewhere (by a worker), not its seconds: wall time is the caller's."""
        self.forward += other.forward
        self.backward += other.backward
        self.images += other.images
        self.passes += other.passes
