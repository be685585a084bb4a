"""What an evaluation costs: forward and backward passes, images, seconds. Counted by every scorer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cost:
    forward: int = 0      # forward passes (batches)
    backward: int = 0     # backward passes (batches)
    images: int = 0       # images sent through the supernet
    seconds: float = 0.0

    def count(self, batch: int, backward: bool = False) -> None:
        self.forward += 1
        self.images += batch
        self.backward += int(backward)

    def add(self, other: "Cost") -> None:
        """Add the passes counted elsewhere (by a worker), not its seconds: wall time is the caller's."""
        self.forward += other.forward
        self.backward += other.backward
        self.images += other.images
