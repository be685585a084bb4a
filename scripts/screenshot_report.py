#!/usr/bin/env python3
"""Write the report of a run or bench directory, screenshot it in headless Chromium and cut the shot into tiles that
an image viewer shows at full size: the check to make by eye after changing a report (overlaps, labels outside their
frame, unreadable text).

    python scripts/screenshot_report.py RUN_OR_BENCH [-o DIR] [--width 1400] [--height 9000] [--tile 1100]

Writes DIR/page.png (the whole page, empty tail cut off) and DIR/page_0.png, page_1.png, ... (default DIR:
RUN_OR_BENCH/report/shots). Needs Debian's `chromium` (apt-get install -y chromium) and the `plots` extra; the NB201
numbers need an imported table (`archselect benchmark import PATH`, or ARCHSELECT_NB201). Not part of CI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_report  # noqa: E402  (this folder's screenshot helper)


def tiles(shot: Path, height: int) -> list[Path]:
    """Cut `shot` below its last non-background row, then into tiles `height` pixels high."""
    from PIL import Image, ImageChops  # a matplotlib dependency

    with Image.open(shot) as im:
        page = im.convert("RGB")
    background = Image.new("RGB", page.size, page.getpixel((page.width - 1, page.height - 1)))
    box = ImageChops.difference(page, background).getbbox()
    page = page.crop((0, 0, page.width, box[3] + 20 if box else page.height))
    page.save(shot)
    out = []
    for i, top in enumerate(range(0, page.height, height)):
        path = shot.with_name(f"{shot.stem}_{i}.png")
        page.crop((0, top, page.width, min(top + height, page.height))).save(path)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path, help="a run or bench directory")
    p.add_argument("-o", "--out", type=Path, help="folder for the PNGs (default: PATH/report/shots)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=9000, help="browser window height: more than the page")
    p.add_argument("--tile", type=int, default=1100, help="height of each tile")
    args = p.parse_args(argv)
    from archselect.pipeline import report

    page = report(args.path)[-1]
    out = args.out or args.path / "report" / "shots"
    shot = render_report.render(page, out / "page.png", args.width, args.height)
    for path in [shot, *tiles(shot, args.tile)]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
