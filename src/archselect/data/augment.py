"""Whole-batch augmentation in plain torch: pad-crop, horizontal flip, cutout, normalisation, resize.

Random draws come from a CPU ``torch.Generator`` and are then moved to the images' device, so a batch is the same
whichever device augments it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_padding(size: int) -> int:
    """The usual pad-crop margin: 4 pixels at 32px, 2 at 16px, in general round(size / 8)."""
    return round(size / 8)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad (B, C, H, W) by ``pad``, cut an H x W window at a random offset per image and, if ``flip``, mirror
    each image left-right with probability 1/2. One gather does all of it (~4x faster than advanced indexing)."""
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=gen).to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        mirrored = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None]
        cols = torch.where(mirrored, cols.flip(-1), cols)
    rows = off[0] + torch.arange(h, device=x.device)  # (B, H) in padded coordinates
    cols = off[1] + cols  # (B, W)
    src = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    return padded.reshape(b, c, -1).gather(2, src).view(b, c, h, w)


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square (clipped at the border) centred anywhere in each image (DeVries &
    Taylor 2017). Applied after normalisation, as in DARTS, so the hole has the mean colour."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1), generator=gen).to(x.device)
    cx = torch.randint(0, w, (b, 1), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device) - cy + length // 2  # inside the hole iff in [0, length)
    xs = torch.arange(w, device=x.device) - cx + length // 2
    in_y, in_x = (ys >= 0) & (ys < length), (xs >= 0) & (xs < length)
    hole = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ((x / 255) - mean) / std, in one multiply-add."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=x.device)[:, None, None]
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device)[:, None, None]
    return torch.addcmul(shift, x.float(), scale)


def resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to size x size (bilinear, antialiased), in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images
    out = [F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
           .round_().clamp_(0, 255).to(torch.uint8) for part in images.split(chunk)]
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], size, size))


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, flip: bool) -> torch.Tensor:
    """Training augmentation of a uint8 batch, before normalisation: pad-crop, plus flips if ``flip``."""
    return random_crop_flip(x, crop_padding(x.shape[-1]), flip, gen)
