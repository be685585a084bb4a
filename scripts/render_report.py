#!/usr/bin/env python3
"""Render an HTML report to a PNG screenshot with headless Chromium, to check how it reads in a browser.

    python scripts/render_report.py BENCH/report/index.html [-o shot.png] [--width 1400] [--height 3000]

Needs Debian's `chromium` (apt-get install -y chromium) or Google Chrome on PATH. No network access is needed: the
report is self-contained, and Chromium's background networking is switched off.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html: Path, png: Path, width: int = 1400, height: int = 3000, timeout: float = 120.0) -> Path:
    """Screenshot `html` into `png`; raises RuntimeError when no browser is found or the screenshot fails."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError(f"no headless browser found (tried {', '.join(BROWSERS)}): apt-get install -y chromium")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archselect-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
               html.as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"{Path(browser).name} wrote no screenshot (exit {done.returncode}): "
                           f"{done.stderr.strip().splitlines()[-1:] or ''}")
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path, help="the report's index.html")
    p.add_argument("-o", "--out", type=Path, help="PNG to write (default: next to the HTML, screenshot.png)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=3000)
    args = p.parse_args(argv)
    if not args.html.is_file():
        print(f"render_report: {args.html} does not exist", file=sys.stderr)
        return 2
    try:
        out = render(args.html, args.out or args.html.with_name("screenshot.png"), args.width, args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"render_report: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
