"""Accuracy: datasets, predictions from any runner, and COCO mAP with pycocotools.

Ground truth comes from YOLO-format labels or a COCO annotation file and is held as a COCO
dataset dict, so pycocotools scores boxes (``bbox``) and keypoints (``keypoints``, OKS) the
same way whatever the source:

* YOLO labels (``class cx cy w h`` normalised, then ``nk`` times ``x y v`` for pose) give
  categories numbered as the model's classes (0..nc-1, contiguous); no 91-id mapping.
* A COCO file keeps its own image and category ids; model class ``i`` maps to the ``i``-th
  category by sorted id (COCO's 80-of-91 order), or by name when the names differ in count.

Predictions come from :func:`predict`, which runs any :mod:`convert.runtime` runner on the
images with the model's recorded preprocessing and maps boxes and keypoints back to original
pixels. End-to-end models (NMS in the graph) are read as they are; raw or decoded models go
through the host-side decoder and NMS of :mod:`convert.postprocess`.

:func:`evaluate_model` chains the two; it is also what calibration calls to pick a
calibrator on a held-out subset.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from convert.errors import ConvertError
from convert.preprocess import list_images, load_image, preprocess

COCO_KPT_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087,
                   .089, .089]
"""COCO's per-keypoint OKS constants (sigmas) for the 17 person keypoints."""

KPT_AREA_FACTOR = 0.53
"""OKS scale of a YOLO-label object: box area times this, as Ultralytics does, because YOLO labels
have no segmentation area (COCO's ``area``) and a person's is about half its box."""

YOLO_VAL_DEFAULTS = {"conf": 0.001, "iou": 0.6, "max_det": 300}
"""YOLOv5 ``val.py`` defaults: keep nearly every candidate so the precision-recall curve is complete."""

Metric = Literal["mAP50-95", "mAP50", "kpt_mAP50-95", "kpt_mAP50"]
"""A headline figure :func:`evaluate_model` returns (keypoint ones for pose models); the one list of them,
which the gates and the calibration method choice take their ``metric`` from."""
METRICS: tuple[str, ...] = typing.get_args(Metric)


@dataclass
class ImageEntry:
    """One image of a dataset: its file and its id in the ground truth."""

    path: Path
    id: int


@dataclass
class Dataset:
    """Images plus ground truth as a COCO dataset dict.

    Attributes:
        images: The images, in evaluation order.
        gt: COCO dict (``images``, ``annotations``, ``categories``) for exactly these images.
        names: Class names, index = model class.
        category_ids: Model class index -> ``category_id`` in ``gt``.
        nk: Keypoints per object (0 for detection).
        source: Where the ground truth came from (for messages and records).
    """

    images: list[ImageEntry]
    gt: dict[str, Any]
    names: list[str]
    category_ids: list[int]
    nk: int = 0
    source: str = ""
    _by_image: dict[int, list[dict]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, image_id: int) -> list[dict]:
        """The ground-truth annotations of one image."""
        if not self._by_image:
            for a in self.gt["annotations"]:
                self._by_image.setdefault(a["image_id"], []).append(a)
        return self._by_image.get(image_id, [])

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The dataset restricted to ``images[i]`` for ``i`` in ``indices`` (e.g. a held-out split)."""
        images = [self.images[i] for i in indices]
        ids = {im.id for im in images}
        gt = {**self.gt, "images": [im for im in self.gt["images"] if im["id"] in ids],
              "annotations": [a for a in self.gt["annotations"] if a["image_id"] in ids]}
        return replace(self, images=images, gt=gt, _by_image={})

    def without(self, paths: Iterable[str | Path]) -> Dataset:
        """The dataset minus the given image files (e.g. those used for calibration)."""
        drop = {Path(p).resolve() for p in paths}
        return self.subset(i for i, im in enumerate(self.images) if im.path.resolve() not in drop)

    def fingerprint(self) -> str:
        """sha256 of the ground truth (image names, sizes, annotations): equal means same evaluation set."""
        files = {im.id: im.path.name for im in self.images}
        material = {"images": [[files[im["id"]], im["width"], im["height"]] for im in self.gt["images"]],
                    "annotations": [{k: a[k] for k in ("image_id", "category_id", "bbox", "iscrowd", "keypoints")
                                     if k in a} for a in self.gt["annotations"]],
                    "categories": self.category_ids}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# --- loading ---------------------------------------------------------------------------------


def _exif_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as :func:`convert.preprocess.load_image` sees it (EXIF-rotated)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                w, h = h, w
    except (UnidentifiedImageError, OSError) as e:
        raise ConvertError(f"image {path}: cannot be read ({e}).", hint="remove or replace the file.") from None
    return w, h


def yolo_label_path(image: Path, images_root: Path | None, labels_root: Path | None) -> Path:
    """Where the YOLO label of ``image`` is.

    With ``labels_root`` the label mirrors the image's path under ``images_root``; otherwise the
    YOLO convention applies: the last ``images`` directory of the path becomes ``labels``.
    """
    if labels_root is not None:
        return (labels_root / image.relative_to(images_root)).with_suffix(".txt")
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def load_yolo(images: str | Path, names: list[str], labels: str | Path | None = None, nk: int = 0,
              max_images: int | None = None) -> Dataset:
    """Reads images with YOLO-format labels.

    Args:
        images: Folder of images (searched recursively), e.g. ``coco128`` or ``coco128/images``.
        names: Class names of the model (labels hold class indices only).
        labels: Folder of labels mirroring ``images``; default: the YOLO convention (``images``
            -> ``labels`` in each image's path).
        nk: Keypoints per object: each label row is then ``class cx cy w h`` plus ``nk`` times
            ``x y v`` (or ``x y``, all visible). 0 reads boxes only (extra columns are ignored).
        max_images: Use only the first N images (sorted by path).

    Returns:
        The dataset; images without a label file have no objects.

    Raises:
        ConvertError: No images, a malformed label row, or a class index the model does not have.
    """
    root = Path(images)
    paths = list_images(root)[:max_images]
    if not paths:
        raise ConvertError(f"no images found under {root}.", hint="point `data` at a folder of images.")
    return yolo_dataset(paths, names, nk, Path(labels) if labels is not None else None, root)


def yolo_dataset(paths: list[Path], names: list[str], nk: int = 0, labels_root: Path | None = None,
                 images_root: Path | None = None) -> Dataset:
    """A dataset of the given image files with YOLO-format labels (see :func:`load_yolo`).

    Args:
        paths: The image files, in evaluation order.
        names: Class names of the model.
        nk: Keypoints per object.
        labels_root: Folder of labels mirroring ``images_root``; default: the YOLO convention.
        images_root: The folder ``paths`` are under (needed with ``labels_root``).
    """
    nc = len(names)
    gt_images, anns = [], []
    entries = []
    labelled = 0
    first_label = None
    for image_id, path in enumerate(paths, 1):
        w, h = _exif_size(path)
        entries.append(ImageEntry(path, image_id))
        gt_images.append({"id": image_id, "file_name": path.name, "width": w, "height": h})
        label = yolo_label_path(path, images_root, labels_root)
        first_label = first_label or label
        if label.exists() and not label.is_file():
            raise ConvertError(f"label path {label} is not a regular file.", hint="YOLO labels are .txt files.")
        if not label.is_file():
            continue  # an image without a label file is a background image, as in YOLO training
        labelled += 1
        for line_no, line in enumerate(label.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{label}:{line_no}"
            try:
                row = [float(v) for v in line.split()]
            except ValueError:
                raise ConvertError(f"{where}: not a row of numbers: {line.strip()[:60]!r}.") from None
            anns.append(_yolo_annotation(row, w, h, nc, nk, where, image_id, len(anns) + 1))
    if not labelled:
        # Without this, an unlabelled folder scores mAP 0 and a max_drop gate between two of them passes.
        raise ConvertError(f"none of the {len(paths)} images has a YOLO label file (looked for e.g. {first_label}).",
                           hint="put labels in labels/ mirroring images/ (YOLO layout), give `labels`, or use a "
                           "COCO annotation file.")
    gt = {"images": gt_images, "annotations": anns,
          "categories": [_category(i, n, nk) for i, n in enumerate(names)]}
    return Dataset(entries, gt, list(names), list(range(nc)), nk,
                   source=f"YOLO labels ({labels_root or 'beside images'})")


def class_names(meta: dict[str, Any]) -> list[str]:
    """The class names a model artifact records (``meta.names``, else ``meta.head.names``).

    Raises:
        ConvertError: It records none.
    """
    names = list(meta.get("names") or (meta.get("head") or {}).get("names") or [])
    if not names:
        raise ConvertError("the model records no class names (meta 'names').",
                           hint="load it with the load pass, which records them.")
    return names


def _category(cid: int, name: str, nk: int) -> dict[str, Any]:
    cat: dict[str, Any] = {"id": cid, "name": name, "supercategory": ""}
    if nk:
        cat["keypoints"] = [f"kpt{j}" for j in range(nk)]
        cat["skeleton"] = []
    return cat


def _yolo_annotation(row: list[float], w: int, h: int, nc: int, nk: int, where: str, image_id: int,
                     ann_id: int) -> dict[str, Any]:
    if len(row) < 5:
        raise ConvertError(f"{where}: a YOLO label row needs at least 5 values (class cx cy w h), found {len(row)}.")
    if not all(math.isfinite(v) for v in row):
        raise ConvertError(f"{where}: non-finite value in a label row.", hint="fix or remove the row.")
    eps = 1e-3  # rounding in label files written with few decimals
    if not (all(-eps <= v <= 1 + eps for v in row[1:5]) and row[3] > 0 and row[4] > 0):
        raise ConvertError(f"{where}: box {row[1:5]} is not normalised (cx cy w h in 0..1, w and h > 0).",
                           hint="YOLO labels hold coordinates divided by the image width and height.")
    cls = int(row[0])
    if cls != row[0] or not 0 <= cls < nc:
        raise ConvertError(f"{where}: class {row[0]:g} is not one of the model's {nc} classes (0..{nc - 1}).",
                           hint="check that the labels belong to this model's dataset.")
    cx, cy, bw, bh = row[1] * w, row[2] * h, row[3] * w, row[4] * h
    ann: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": cls, "iscrowd": 0,
                           "bbox": [cx - bw / 2, cy - bh / 2, bw, bh], "area": bw * bh}
    if nk:
        extra = row[5:]
        dims = 3 if len(extra) == 3 * nk else 2 if len(extra) == 2 * nk else 0
        if not dims:
            raise ConvertError(f"{where}: expected {nk} keypoints ({5 + 3 * nk} or {5 + 2 * nk} values), "
                               f"found {len(row)} values.",
                               hint="the model's keypoint count must match the labels'.")
        k = np.asarray(extra, dtype=np.float64).reshape(nk, dims)
        v = k[:, 2] if dims == 3 else np.full(nk, 2.0)
        xy = k[:, :2] * (w, h)
        xy[v <= 0] = 0  # COCO stores absent keypoints as (0, 0, 0)
        ann["keypoints"] = np.column_stack([xy, v]).ravel().round(3).tolist()
        ann["num_keypoints"] = int((v > 0).sum())
        ann["area"] = bw * bh * KPT_AREA_FACTOR
    return ann


def load_coco(annotations: str | Path, images: str | Path, names: list[str] | None = None,
              max_images: int | None = None, content: dict[str, Any] | None = None) -> Dataset:
    """Reads a COCO annotation file (instances or person keypoints) and its images.

    Args:
        annotations: The COCO ``.json``.
        images: Folder holding the files named by ``file_name`` (searched recursively).
        names: The model's class names, to map model classes to categories when the file has
            a different number of categories (mapped by name).
        max_images: Use only the first N images that exist (sorted by file name).
        content: The file's parsed content when the caller has it already (it is not modified).

    Raises:
        ConvertError: Unreadable file, no image found, or classes that cannot be mapped.
    """
    data = content
    if data is None:
        try:
            data = json.loads(Path(annotations).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConvertError(f"annotations {annotations}: cannot be read as JSON ({e}).") from None
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise ConvertError(f"annotations {annotations}: no categories.")
    cat_names = [c["name"] for c in cats]
    if names is None or len(names) == len(cats):
        category_ids = [c["id"] for c in cats]
    else:
        by_name = {c["name"]: c["id"] for c in cats}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ConvertError(f"annotations {annotations}: {len(cats)} categories for a model with {len(names)} "
                               f"classes, and classes {missing[:3]} are not among the category names.",
                               hint="evaluate with the annotation file of the model's dataset.")
        category_ids = [by_name[n] for n in names]
    found = {p.name: p for p in list_images(images)}
    entries, kept = [], []
    for im in sorted(data.get("images", []), key=lambda im: im["file_name"]):
        path = found.get(Path(im["file_name"]).name)
        if path is not None:
            entries.append(ImageEntry(path, im["id"]))
            kept.append(im)
    entries, kept = entries[:max_images], kept[:max_images]
    if not entries:
        raise ConvertError(f"none of the images of {annotations} are under {images}.",
                           hint="`images` must be the folder holding the annotation file's images.")
    ids = {im["id"] for im in kept}
    nk = max((len(c.get("keypoints", [])) for c in cats), default=0)
    anns = [a for a in data.get("annotations", []) if a["image_id"] in ids]
    if nk:  # new records: the content may be shared (calib.data.coco_json)
        anns = [a if "num_keypoints" in a else
                {**a, "num_keypoints": int(np.count_nonzero(np.asarray(a.get("keypoints", [0, 0, 0]))[2::3]))}
                for a in anns]
    gt = {"images": kept, "annotations": anns, "categories": cats}
    model_names = list(names) if names is not None else cat_names
    return Dataset(entries, gt, model_names, category_ids, nk, source=f"COCO annotations {annotations}")


def load_dataset(images: str | Path, names: list[str], labels: str | Path | None = None,
                 annotations: str | Path | None = None, nk: int = 0, max_images: int | None = None) -> Dataset:
    """Reads a dataset: a COCO file when ``annotations`` is given, else YOLO labels."""
    if annotations is not None:
        ds = load_coco(annotations, images, names, max_images)
        if nk and ds.nk != nk:
            raise ConvertError(f"the model predicts {nk} keypoints but {annotations} has {ds.nk}.")
    else:
        ds = load_yolo(images, names, labels, nk, max_images)
    if not ds.gt["annotations"]:
        raise ConvertError(f"the {len(ds)} evaluation images ({ds.source}) hold no labelled object: every "
                           "figure would be 0.", hint="evaluate on labelled images.")
    return ds


# --- predictions -----------------------------------------------------------------------------


def end2end_outputs(outputs: dict[str, np.ndarray], meta: dict[str, Any], conf: float, iou: float,
                    max_det: int, class_agnostic: bool = False, pre_top_k: int | None = None
                    ) -> dict[str, np.ndarray]:
    """A model's outputs in the end-to-end layout (``num_dets``, ``boxes``, ``scores``, ``classes``
    [, ``keypoints``]; network pixels).

    End-to-end models' outputs are returned as they are (their own thresholds apply). Raw
    (truncated) and decoded outputs are post-processed on the host by :mod:`convert.postprocess`
    (per-class NMS unless ``class_agnostic``, so a box may be kept for several classes, as YOLOv5's
    validation does) with ``conf``, ``iou``, ``max_det`` and ``pre_top_k`` (see
    :class:`convert.postprocess.NMSSettings`).

    Raises:
        ConvertError: The outputs do not match the model's metadata.
    """
    from convert import heads
    from convert import postprocess as pp

    if meta.get("end2end"):
        return pp.Detections.from_outputs(outputs).outputs()
    head = heads.parse(meta.get("head"))  # a clear error for a model without (supported) head metadata
    settings = pp.NMSSettings(score_threshold=conf, iou_threshold=iou, max_detections=max_det,
                              pre_top_k=pre_top_k, class_agnostic=class_agnostic)
    if meta.get("truncated"):
        names = head.outputs or list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ConvertError(f"the truncated model has no output {missing[0]!r} (outputs: {', '.join(outputs)}).")
        return heads.postprocess([outputs[n] for n in names], head, settings).outputs()
    if len(outputs) != 1:
        raise ConvertError(f"a decoded model has one output, this one has {len(outputs)} ({', '.join(outputs)}).",
                           hint="mark truncated models as such (truncate_head) or add NMS (postprocess).")
    return pp.select(head.decoded_candidates(next(iter(outputs.values()))), settings).outputs()


def image_detections(e2e: dict[str, np.ndarray], index: int, transform, conf: float = 0.0):
    """Image ``index`` of an end-to-end batch in original pixels, scores >= ``conf`` kept.

    Returns:
        :class:`convert.postprocess.ImageDetections`.
    """
    from convert.postprocess import Detections

    det = Detections.from_outputs(e2e).image(index)
    keep = np.asarray(det.scores) >= conf
    det = replace(det, boxes=det.boxes[keep], scores=det.scores[keep], classes=det.classes[keep],
                  keypoints=None if det.keypoints is None else det.keypoints[keep])
    return det.to_original(transform)


def predict(runner, dataset: Dataset, meta: dict[str, Any], conf: float = YOLO_VAL_DEFAULTS["conf"],
            iou: float = YOLO_VAL_DEFAULTS["iou"], max_det: int = YOLO_VAL_DEFAULTS["max_det"],
            bar: Callable | None = None) -> list:
    """Runs a model on every image of a dataset.

    Args:
        runner: An active runner (:func:`convert.runtime.load_runner`).
        dataset: The images.
        meta: The model artifact's metadata (``preprocess``; ``end2end`` or ``head`` to decode).
        conf: Score threshold (host-side NMS, and a filter on end-to-end outputs).
        iou: IoU threshold of host-side NMS.
        max_det: Detections kept per image by host-side NMS.
        bar: Progress bar factory like :meth:`convert.base.RunContext.bar`.

    Returns:
        One :class:`convert.postprocess.ImageDetections` per image, in original pixels.
    """
    images = bar(dataset.images, total=len(dataset), desc="images") if bar else dataset.images
    return [predict_image(runner, load_image(entry.path), meta, conf, iou, max_det) for entry in images]


def predict_image(runner, img: np.ndarray, meta: dict[str, Any], conf: float = YOLO_VAL_DEFAULTS["conf"],
                  iou: float = YOLO_VAL_DEFAULTS["iou"], max_det: int = YOLO_VAL_DEFAULTS["max_det"]):
    """One image through a model: the model's preprocessing, inference, post-processing (in the
    graph, or on the host for raw and decoded heads), boxes and keypoints mapped back.

    What :func:`predict` (the evaluate pass), ``convert predict`` and the report's pictures all
    call, so they see the same detections for the same image and settings.

    Args:
        runner: An active runner.
        img: HxWx3 uint8 RGB (:func:`convert.preprocess.load_image`).
        meta: The model artifact's metadata.
        conf, iou, max_det: As for :func:`predict`.

    Returns:
        :class:`convert.postprocess.ImageDetections` in original-image pixels.
    """
    from convert.runtime import infer

    x, tf = preprocess(img, meta.get("preprocess"))
    e2e = end2end_outputs(infer(runner, x), meta, conf, iou, max_det)
    return image_detections(e2e, 0, tf, conf)


def coco_results(dataset: Dataset, detections: list) -> list[dict[str, Any]]:
    """Per-image detections (:class:`convert.postprocess.ImageDetections`, original pixels) as COCO
    results: ``bbox`` in x, y, w, h; ``keypoints`` with the visibility score as third value."""
    results = []
    for entry, det in zip(dataset.images, detections):
        for j in range(len(det.scores)):
            x1, y1, x2, y2 = (float(v) for v in det.boxes[j])
            r = {"image_id": entry.id, "category_id": dataset.category_ids[int(det.classes[j])],
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                 "score": round(float(det.scores[j]), 5)}
            if det.keypoints is not None:
                r["keypoints"] = det.keypoints[j].astype(np.float64).round(3).ravel().tolist()
            results.append(r)
    return results


# --- metrics ---------------------------------------------------------------------------------


def coco_map(dataset: Dataset, results: list[dict[str, Any]], iou_type: str = "bbox",
             kpt_sigmas: list[float] | None = None) -> dict[str, Any]:
    """COCO mAP of results against the dataset's ground truth, with pycocotools.

    Args:
        dataset: The ground truth.
        results: COCO results (:func:`coco_results`).
        iou_type: ``bbox`` or ``keypoints`` (OKS).
        kpt_sigmas: Per-keypoint OKS constants; default COCO's for 17 keypoints, else 1/nk each
            (as Ultralytics does).

    Returns:
        ``mAP50-95``, ``mAP50`` (area "all"; pycocotools' max detections: 100 for boxes, 20 for
        keypoints) and ``per_class``: name -> {``mAP50-95``, ``mAP50``, ``instances``}, for the
        classes present in the ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    instances: dict[int, int] = {}
    for a in dataset.gt["annotations"]:
        if not a.get("iscrowd", 0):
            instances[a["category_id"]] = instances.get(a["category_id"], 0) + 1
    empty = {"mAP50-95": 0.0, "mAP50": 0.0,
             "per_class": {n: {"mAP50-95": 0.0, "mAP50": 0.0, "instances": instances[c]}
                           for n, c in zip(dataset.names, dataset.category_ids) if c in instances}}
    if iou_type == "keypoints":
        results = [r for r in results if "keypoints" in r]
    if not results or not dataset.gt["annotations"]:
        return empty
    # pycocotools prints progress on stdout and mutates what it is given.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset.gt)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = [im.id for im in dataset.images]
        # Only classes with ground truth count in COCO's mean (the others' precision is -1), so only
        # they are evaluated: the same figures, in a fraction of the time on a subset such as
        # method auto's held-out images (coco128, 64 images: 38 of 80 classes)
        ev.params.catIds = sorted(instances)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.asarray(_sigmas(dataset.nk, kpt_sigmas), dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [iou thresholds, recall points, categories]

    def ap(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else 0.0

    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        if cid not in instances:
            continue
        name = dataset.names[dataset.category_ids.index(cid)] if cid in dataset.category_ids else str(cid)
        per_class[name] = {"mAP50-95": ap(precision[:, :, k]), "mAP50": ap(precision[0, :, k]),
                           "instances": instances[cid]}
    return {"mAP50-95": ap(precision), "mAP50": ap(precision[0]), "per_class": per_class}


def _sigmas(nk: int, given: list[float] | None) -> list[float]:
    if given is not None:
        if len(given) != nk:
            raise ConvertError(f"kpt_sigmas: {len(given)} values for a model with {nk} keypoints.")
        return list(given)
    return COCO_KPT_SIGMAS if nk == 17 else [1.0 / nk] * nk


def evaluate_detections(dataset: Dataset, detections: list,
                        kpt_sigmas: list[float] | None = None) -> dict[str, Any]:
    """Box mAP (and keypoint mAP when the dataset has keypoints) of per-image detections.

    Returns:
        ``mAP50-95``, ``mAP50``, ``per_class`` and, for pose, ``kpt_mAP50-95``, ``kpt_mAP50``,
        ``kpt_per_class``; plus ``detections`` (count).
    """
    results = coco_results(dataset, detections)
    box = coco_map(dataset, results, "bbox")
    out: dict[str, Any] = {"mAP50-95": box["mAP50-95"], "mAP50": box["mAP50"]}
    if dataset.nk:
        kpt = coco_map(dataset, results, "keypoints", kpt_sigmas)
        out.update({"kpt_mAP50-95": kpt["mAP50-95"], "kpt_mAP50": kpt["mAP50"]})
        out["kpt_per_class"] = kpt["per_class"]
    out["per_class"] = box["per_class"]
    out["detections"] = len(results)
    return out


def evaluate_model(runner, dataset: Dataset, meta: dict[str, Any], conf: float = YOLO_VAL_DEFAULTS["conf"],
                   iou: float = YOLO_VAL_DEFAULTS["iou"], max_det: int = YOLO_VAL_DEFAULTS["max_det"],
                   kpt_sigmas: list[float] | None = None, bar: Callable | None = None,
                   keep: list | None = None) -> dict[str, Any]:
    """Predicts on a dataset and scores it: the one call calibration and evaluation need.

    Example (choosing a calibrator on held-out images)::

        ds = load_dataset(images, names=meta["names"], nk=meta["head"]["nk"]).without(calib_files)
        with OrtRunner(candidate_onnx, threads=2) as runner:
            score = evaluate_model(runner, ds, meta)["mAP50-95"]

    Args:
        runner: A runner, not yet active (:func:`convert.runtime.load_runner`, or
            :class:`convert.runtime.OrtRunner` on a bare ``.onnx`` path); activated here.
        dataset: Images and ground truth (:func:`load_dataset`).
        meta: Metadata of the model (``preprocess``, ``end2end`` or ``head``).
        conf, iou, max_det: Post-processing (YOLOv5 validation defaults).
        kpt_sigmas: OKS constants for pose (see :func:`coco_map`).
        bar: Progress bar factory (``ctx.bar``).
        keep: A list the per-image detections are appended to (to store them).

    Returns:
        :func:`evaluate_detections`' figures plus ``images`` and ``seconds``.
    """
    if not dataset.gt["annotations"]:
        raise ConvertError(f"the {len(dataset)} evaluation images ({dataset.source}) hold no labelled object: every "
                           "figure would be 0.", hint="evaluate on labelled images.")
    t0 = time.perf_counter()
    with runner:
        detections = predict(runner, dataset, meta, conf, iou, max_det, bar)
    if keep is not None:
        keep.extend(detections)
    out = evaluate_detections(dataset, detections, kpt_sigmas)
    out.update(images=len(dataset), seconds=round(time.perf_counter() - t0, 3))
    return out
