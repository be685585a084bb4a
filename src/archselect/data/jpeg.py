"""One image file decoded with Pillow and transformed as DARTS' train_imagenet.py does with torchvision (which is not
a dependency here): training = RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3) + horizontal flip + optional
ColorJitter (0.4, 0.4, 0.4, 0.2); evaluation = resize the shorter side to 256/224 of the crop, centre crop.

Random draws come from a torch.Generator the caller seeds, so an image's augmentation is a pure function of its seed.
The output is uint8 (3, size, size); normalisation happens on the batch, on the training device. Pillow's wheels
decode with libjpeg-turbo, the fast decoder; resizing is Pillow's antialiased bilinear, as torchvision's PIL path.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance  # the imagenet extra (pip install 'archselect[imagenet]'); imported on first decode

from ..errors import UserError

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue (DARTS' train_imagenet.py)
RESIZE_RATIO = 256 / 224  # evaluation: shorter side to 256, then the central 224


def open_rgb(path: Path) -> Image.Image:
    """The decoded RGB image (CMYK and greyscale JPEGs converted), or a one-line UserError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() loads the pixels, so a truncated file fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({str(e)[:120]})") from None


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, high: int) -> int:
    """0 .. high inclusive."""
    return int(torch.randint(0, high + 1, (), generator=gen))


def crop_box(width: int, height: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's window (left, top, right, bottom): up to 10 draws of an area share and a log-uniform
    aspect ratio that fit, else the largest centred window within the ratio range (torchvision's algorithm)."""
    area = width * height
    for _ in range(10):
        target = area * _uniform(gen, *SCALE)
        aspect = math.exp(_uniform(gen, math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = _randint(gen, width - w), _randint(gen, height - h)
            return left, top, left + w, top + h
    ratio = width / height
    w, h = width, height
    if ratio < RATIO[0]:
        h = round(w / RATIO[0])
    elif ratio > RATIO[1]:
        w = round(h * RATIO[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _hue(img: Image.Image, shift: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    h = Image.fromarray((np.asarray(h, dtype=np.int16) + round(shift * 255)).astype(np.uint8), "L")  # wraps round
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, gen: torch.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue changed by random factors, in a random order (as torchvision)."""
    b, c, s, hue = JITTER
    steps = [
        lambda im: ImageEnhance.Brightness(im).enhance(_uniform(gen, max(0.0, 1 - b), 1 + b)),
        lambda im: ImageEnhance.Contrast(im).enhance(_uniform(gen, max(0.0, 1 - c), 1 + c)),
        lambda im: ImageEnhance.Color(im).enhance(_uniform(gen, max(0.0, 1 - s), 1 + s)),
        lambda im: _hue(im, _uniform(gen, -hue, hue)),
    ]
    for k in torch.randperm(len(steps), generator=gen).tolist():
        img = steps[k](img)
    return img


def to_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def train_image(path: Path, size: int, gen: torch.Generator, flip: bool = True, jitter: bool = False) -> torch.Tensor:
    img = open_rgb(path)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=crop_box(*img.size, gen))
    if flip and torch.rand((), generator=gen).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if jitter:
        img = color_jitter(img, gen)
    return to_uint8(img)


def eval_image(path: Path, size: int) -> torch.Tensor:
    """Shorter side resized to round(size * 256/224) (256 at 224), then the central size x size."""
    img = open_rgb(path)
    short = round(size * RESIZE_RATIO)
    w, h = img.size
    w, h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = round((w - size) / 2), round((h - size) / 2)
    return to_uint8(img.crop((left, top, left + size, top + size)))
