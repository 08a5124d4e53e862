"""A tiny COCO annotation file for data-source tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def coco_file(tmp_path: Path, n: int = 3) -> Path:
    """Writes n 40x30 images to tmp_path/imgs and a COCO file labelling each with one box; returns its path."""
    (tmp_path / "imgs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((30, 40, 3), 40 * i % 256, np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(n)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
                         "iscrowd": 0} for i in range(n)],
        "categories": [{"id": 1, "name": "square"}]}))
    return ann
