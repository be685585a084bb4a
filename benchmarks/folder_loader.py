"""How fast FolderLoader feeds a search from image files: images per second of the training stream (`epoch()`, whole
batches per DataLoader worker), and of random access (`batch(e, k)`: one batch cut over the decoding pool, the next
one read ahead) with the caller computing between calls as a search step does, against decoding in the main process.

A folder of generated JPEGs at ImageNet's typical size (500x375, quality 90) is written to a temporary directory;
crops are 224 px. Each timing is the median of the repeats, after one untimed warm-up pass (pool and workers started).

    .venv/bin/python benchmarks/folder_loader.py                                  # 256 images, batch 64, 4 workers
    .venv/bin/python benchmarks/folder_loader.py --images 2048 --batch 256 --workers 15 --compute 0.2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from archselect.data import FolderLoader, load_dataset


def write_folder(root: Path, images: int, classes: int = 8) -> Path:
    """root/train/<class>/*.JPEG: smooth random colour fields (JPEG sizes like photographs', not like noise)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(folder / f"{i}.JPEG", quality=90)
    return root


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: workers and pool started, files in the page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--compute", type=float, default=0.05, help="seconds the caller works between random batches")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset("imagenet", "train", write_folder(Path(tmp), args.images))
        common = dict(seed=0, augment=True, image_size=224)
        stream = FolderLoader(ds, args.batch, workers=args.workers, **common)
        pooled = FolderLoader(ds, args.batch, workers=args.workers, **common)
        inline = FolderLoader(ds, args.batch, workers=0, **common)
        n = len(stream) * args.batch

        def consume(loader: FolderLoader, compute: float) -> None:
            for k in range(len(loader)):
                loader.batch(0, k)
                time.sleep(compute)  # the step the batch feeds (the pool decodes the next batch meanwhile)

        rows = [("epoch() stream, DataLoader workers", timed(lambda: list(stream.epoch(0)), args.repeats), 0.0),
                ("batch(e, k), pool + read-ahead", timed(lambda: consume(pooled, args.compute), args.repeats),
                 args.compute),
                ("batch(e, k), main process", timed(lambda: consume(inline, args.compute), args.repeats),
                 args.compute)]
    print(f"{args.images} JPEGs 500x375 -> 224 px crops, batch {args.batch}, {args.workers} workers, "
          f"{args.compute * 1000:.0f} ms of work per random batch")
    print(f"{'loader':40s} {'s/epoch':>8s} {'images/s':>9s} {'wait/batch ms':>14s}")
    for name, seconds, compute in rows:
        wait = (seconds - compute * len(stream)) / len(stream)
        print(f"{name:40s} {seconds:8.2f} {n / seconds:9.0f} {wait * 1000:14.1f}")


if __name__ == "__main__":
    main()
