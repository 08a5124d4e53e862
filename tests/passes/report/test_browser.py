"""The published report as a person sees it: rendered by headless Chromium, images decoded, not blank.

Chromium comes from Debian's `chromium` package (`.ci/run` installs it); without it these tests skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                "chromium); the report is not checked in a browser")

# Appended to a copy of the page: once loaded, list every image as the browser decoded it.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
    shown: i.getBoundingClientRect().width, complete: i.complete}));
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({imgs, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});</script>"""


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_chromium_with_plots_and_pictures(tiny_e2e_run, tmp_path):
    _, vdir = tiny_e2e_run
    page = (vdir / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    imgs = {i["alt"]: i for i in found["imgs"]}
    for alt in ("Per-pass time", "Pipeline", "Latency distribution per configuration", "Accuracy vs latency",
                "Detections on 0.jpg", "Detections on 1.jpg"):
        assert alt in imgs, alt
        assert imgs[alt]["complete"] and imgs[alt]["w"] > 100 and imgs[alt]["h"] > 50 and imgs[alt]["shown"] > 100

    # The page itself (no probe), as a screenshot tall enough for all of it.
    height = min(int(found["height"]) + 50, 16000)
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", f"--window-size=1280,{height}", (vdir / "report.html").as_uri())
    px = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert px.shape[:2] == (height, 1280)
    grey = px.mean(axis=2)
    ink = (grey < 200).mean()  # text, table borders, plots, photos
    colour = (px.std(axis=2) > 25).mean()  # plot bars and drawn boxes; text and the random photos are greyish
    print(f"screenshot {px.shape[1]}x{px.shape[0]}: grey std {grey.std():.1f}, ink {ink:.3f}, colour {colour:.4f}")
    assert grey.std() > 20 and 0.01 < ink < 0.9 and colour > 0.002, (grey.std(), ink, colour)
    # the pictures are in the lower part of the page: it is not blank there either
    lower = grey[height // 2:]
    assert lower.std() > 20 and (lower < 200).mean() > 0.01
