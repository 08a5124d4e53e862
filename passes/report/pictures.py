"""The report's pictures: every model's detections drawn on a few photos, side by side, with differences.

Each model artifact runs on each photo with its own recorded preprocessing; end-to-end models keep
the thresholds built into their graph, raw-head models are post-processed on the host
(:func:`convert.evaluation.predict_image`, what ``evaluate`` and ``convert predict`` call). One
picture per photo: a row with each model's detections, then a row with each later model's
difference from the first (red: only in the first, blue: only in that model, grey: matched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import ConvertError

PICTURES_DIR = "pictures"
PICTURES_JSON = "pictures.json"


def photos(images: Path | None, max_images: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB array) of the photos to draw on: a file, a folder's first ones, or the built-in ones."""
    from convert.preprocess import list_images, load_image

    if images is None:
        from calib.builtin import BUILTIN_IMAGES, load_builtin

        return [(n, load_builtin(n)) for n in BUILTIN_IMAGES[:max_images]]
    paths = [images] if images.is_file() else list_images(images)[:max_images]
    if not paths:
        raise ConvertError(f"images: no images under {images}.", hint="point report `images` at photos, or "
                           "leave it null for the built-in sample photos.")
    return [(p.name, load_image(p)) for p in paths]


def labels_of(models: list) -> list[str]:
    """A distinct display label per model (kind/precision@backend, e2e or raw; numbered if repeated)."""
    from convert.runtime import model_info

    labels = []
    for m in models:
        info = model_info(m)
        labels.append(f"{info['label']} {'e2e' if info['end2end'] else 'raw'}")
    for lab in set(labels):
        if labels.count(lab) > 1:
            k = 0
            for i, x in enumerate(labels):
                if x == lab:
                    k += 1
                    labels[i] = f"{lab} #{k}"
    return labels


def draw_models(models: list, images: Path | None, out: Path, *, max_images: int = 4, conf: float = 0.25,
                iou: float = 0.45, max_det: int = 100, match_iou: float = 0.5, kpt_conf: float = 0.5,
                bar=None) -> dict[str, Any]:
    """Runs every model on every photo and writes one JPEG per photo into ``out/pictures``.

    Returns:
        The index written to ``out/pictures.json``: ``models`` (label, digest, kind, precision,
        backend), ``pictures`` (photo name, file, and per model its detection count and the
        differences from the first model).

    Raises:
        ConvertError: A model that is neither end-to-end nor has a head to post-process.
    """
    import json

    from convert import draw
    from convert.evaluation import predict_image
    from convert.runtime import load_runner, model_info

    for m in models:
        if not (m.meta.get("end2end") or m.meta.get("head")):
            raise ConvertError(f"report: a {m.kind} model input has neither NMS in its graph nor head metadata, "
                               "so its detections cannot be drawn.",
                               hint="bind `models` to end-to-end (postprocess) or raw-head stages.")
    shots = photos(images, max_images)
    labels = labels_of(models)
    dets: list[list] = []  # [model][photo]
    for label, m in zip(labels, models):
        with load_runner(m) as runner:
            items = bar(shots, desc=f"drawing {label}") if bar else shots
            # End-to-end models: their graph's thresholds; raw heads: host-side NMS with conf/iou.
            floor = 0.0 if m.meta.get("end2end") else conf
            dets.append([predict_image(runner, img, m.meta, floor, iou, max_det) for _, img in items])
    (out / PICTURES_DIR).mkdir(exist_ok=True)
    index: dict[str, Any] = {"models": [], "pictures": [], "settings": {
        "conf": conf, "iou": iou, "max_det": max_det, "match_iou": match_iou, "kpt_conf": kpt_conf}}
    for label, m in zip(labels, models):
        info = model_info(m)
        index["models"].append({"label": label, "digest": m.digest, "kind": m.kind, "precision": info["precision"],
                                "backend": info["backend"], "end2end": info["end2end"]})
    for p, (name, img) in enumerate(shots):
        tiles, diffs, entry = [], [], {"image": name, "models": []}
        for k, (label, m) in enumerate(zip(labels, models)):
            names = _names(m.meta)
            det = dets[k][p]
            tiles.append((f"{label}: {len(det)} detections", draw.draw_detections(img, det, names, kpt_conf)))
            rec: dict[str, Any] = {"label": label, "detections": len(det)}
            if k:
                pic, counts = draw.draw_difference(img, dets[0][p], det, names, match_iou)
                diffs.append((f"{label} vs {labels[0]}: {counts['only_ref']} only first (red), "
                              f"{counts['only_other']} only this (blue)", pic))
                rec["difference"] = counts
            entry["models"].append(rec)
        picture = draw.panel(tiles + diffs, columns=max(1, len(tiles)), tile_width=_tile_width(len(tiles)))
        file = f"{PICTURES_DIR}/{p:02d}-{Path(name).stem}.jpg"
        (out / file).write_bytes(draw.encode(picture, "JPEG"))
        entry["file"] = file
        index["pictures"].append(entry)
    (out / PICTURES_JSON).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def _names(meta: dict[str, Any]) -> list[str]:
    from convert.evaluation import class_names

    try:
        return class_names(meta)
    except ConvertError:
        return []


def _tile_width(n: int) -> int:
    # About 1600 px per row whatever the number of models, but never tiny tiles.
    return max(320, min(640, 1600 // max(1, n)))
