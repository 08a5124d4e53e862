"""Renders a report's HTML page to a PNG with headless Chromium (not part of CI).

The page is self-contained, so Chromium is started with every network request sent to a dead
proxy: what renders here renders anywhere offline.

    python bench/render_report.py artifacts/yolov5n_int8/latest/report.html -o report.png
    python bench/render_report.py artifacts/yolov5n_int8/latest            # the version's report.html
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(given: str | None) -> str:
    """The Chromium executable: the one given, else the first of :data:`BROWSERS` on PATH."""
    for name in ([given] if given else BROWSERS):
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"error: no Chromium found (looked for {given or ', '.join(BROWSERS)}). "
             "Hint: apt-get install chromium, or pass --browser PATH.")


def render(page: Path, out: Path, browser: str, width: int, height: int) -> None:
    """Screenshots ``page`` at ``width`` x ``height`` CSS pixels into ``out``."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
               f"--window-size={width},{height}", f"--screenshot={out.resolve()}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"error: Chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="a report .html, or a version directory holding report.html")
    p.add_argument("-o", "--output", type=Path, help="PNG to write (default: beside the page, .png)")
    p.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    p.add_argument("--height", type=int, default=4000, help="viewport height (the screenshot's height)")
    p.add_argument("--browser", help="Chromium executable (default: found on PATH)")
    args = p.parse_args(argv)
    page = args.report / "report.html" if args.report.is_dir() else args.report
    if not page.is_file():
        sys.exit(f"error: {page} not found. Hint: write it with `convert report NAME/VERSION`.")
    out = args.output or page.with_suffix(".png")
    render(page, out, find_browser(args.browser), args.width, args.height)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
