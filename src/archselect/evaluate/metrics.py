"""Loss and accuracy of a network over one pass of a loader: the number every stage reports."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import logs


@torch.no_grad()
def loss_and_accuracy(model, loader, epoch: int = 0, weights=None) -> tuple[float, float]:
    """Mean loss and accuracy over one pass of `loader`, eval-mode BN."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in logs.track(loader.epoch(epoch), "evaluation", len(loader), "batch"):
        logits = model(x, weights) if weights is not None else model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    return total_loss / max(count, 1), correct / max(count, 1)
