"""``convert predict``: run a published model on photos, write annotated images and detections.

The model is named as a published version and stage (``NAME/VERSION/STAGE``, ``NAME/STAGE`` for
the latest version, ``NAME[/VERSION]`` when it has a single end-to-end model), a version's stage
folder or any artifact folder. Each image goes through the model's recorded preprocessing and
post-processing (:func:`convert.evaluation.predict_image`, what the evaluate pass calls), so its
detections, in original-image pixels, are the evaluation's for the same image and thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convert import versions
from convert.base import ARTIFACT_JSON, Artifact
from convert.errors import ConvertError
from convert.runtime import BACKENDS

RAW_DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 300}
"""Host-side post-processing of raw-head models when not given (ultralytics/YOLOv5 predict's)."""


def resolve_model(artifacts: Path, target: str) -> tuple[Artifact, str]:
    """The model artifact named by ``target`` and a name for it (``spec/version/stage`` or the folder).

    Raises:
        ConvertError: Nothing there, or not a model.
    """
    p = Path(target)
    if (p / ARTIFACT_JSON).is_file():
        return _model(versions.open_artifact(p), str(p)), str(p)
    if (p / versions.MANIFEST).is_file():
        return _only_model(versions.read(p))
    if p.exists():
        raise ConvertError(f"{target} is neither an artifact folder (no {ARTIFACT_JSON}) nor a published version.",
                           hint="give NAME/VERSION/STAGE, a version's stage folder or an artifact folder.")
    parts = target.strip("/").split("/")
    if len(parts) == 2 and not (Path(artifacts) / parts[0] / parts[1] / versions.MANIFEST).is_file():
        parts.insert(1, versions.LATEST)  # NAME/STAGE: a stage of the latest version
    if len(parts) > 3:
        raise ConvertError(f"unknown artifact {target!r}.", hint="give NAME/VERSION/STAGE, NAME/STAGE (latest "
                           "version), a stage folder or an artifact folder.")
    try:
        v = versions.read(versions.resolve(artifacts, "/".join(parts[:2])))
    except ConvertError as e:
        raise ConvertError(f"unknown artifact {target!r}: {e.message}", hint=e.hint) from None
    if len(parts) < 3:
        return _only_model(v)
    if parts[2] not in v.stages:
        raise ConvertError(f"{v.title} has no stage {parts[2]!r}.", hint=_stages_hint(v))
    where = f"{v.title}/{parts[2]}"
    return _model(v.artifact(parts[2]), where), where


def _model(art: Artifact, where: str) -> Artifact:
    if art.kind not in BACKENDS:
        raise ConvertError(f"{where} is a {art.kind!r} artifact, not a model.",
                           hint=f"name a model stage ({', '.join(BACKENDS)} artifacts).")
    if not (art.meta.get("end2end") or art.meta.get("head")):
        raise ConvertError(f"{where} has neither NMS in its graph nor head metadata: its outputs cannot be read "
                           "as detections.", hint="name an end-to-end (postprocess) or raw-head stage.")
    return art


def _model_stages(v: versions.Version) -> list[tuple[str, Artifact]]:
    found = []
    for name in v.stage_order():
        if v.stage_dir(name) is None:
            continue
        art = v.artifact(name)
        if art.kind in BACKENDS and (art.meta.get("end2end") or art.meta.get("head")):
            found.append((name, art))
    return found


def _stages_hint(v: versions.Version) -> str:
    models = [n for n, _ in _model_stages(v)]
    return (f"its model stages: {', '.join(models)}; e.g. {v.title}/{models[-1]}." if models
            else "it has no model stage.")


def _only_model(v: versions.Version) -> tuple[Artifact, str]:
    e2e = [(n, a) for n, a in _model_stages(v) if a.meta.get("end2end")]
    if len(e2e) != 1:
        raise ConvertError(f"{v.title} has {len(e2e) or 'no'} end-to-end models; say which stage to run.",
                           hint=_stages_hint(v))
    return e2e[0][1], f"{v.title}/{e2e[0][0]}"


def image_paths(items: list[str]) -> list[Path]:
    """The image files named: files as given, folders searched recursively (sorted).

    Raises:
        ConvertError: A path that does not exist, or no image at all.
    """
    from convert.preprocess import IMAGE_SUFFIXES, list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ConvertError(f"no images under {p}.", hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}.")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise ConvertError(f"image {p} does not exist.", hint="give image files or folders of images.")
    return paths


def detections_json(det, names: list[str]) -> list[dict[str, Any]]:
    """One image's detections (original pixels) as plain JSON: class, name, score, box [, keypoints]."""
    out = []
    for j in range(len(det.scores)):
        cls = int(det.classes[j])
        d: dict[str, Any] = {"class": cls, "name": names[cls] if 0 <= cls < len(names) else str(cls),
                             "score": round(float(det.scores[j]), 5),
                             "box": [round(float(v), 3) for v in det.boxes[j]]}
        if det.keypoints is not None:
            d["keypoints"] = [[round(float(v), 3) for v in k] for k in det.keypoints[j]]
        out.append(d)
    return out


def coco_json(entries: list[tuple[Path, Any]]) -> list[dict[str, Any]]:
    """COCO results (image ids numbered from 1 in the order given, ``category_id`` = class index,
    ``file_name`` added), formatted exactly as the evaluate pass's ``detections.json``."""
    from convert.evaluation import Dataset, ImageEntry, coco_results

    ds = Dataset([ImageEntry(p, i) for i, (p, _) in enumerate(entries, 1)], {}, [], [])
    ds.category_ids = list(range(1 + max((int(c) for _, d in entries for c in d.classes), default=0)))
    return [{**r, "file_name": entries[r["image_id"] - 1][0].name}
            for r in coco_results(ds, [d for _, d in entries])]


def run(artifact: Artifact, paths: list[Path], out: Path, backend: str | None = None, conf: float | None = None,
        iou: float | None = None, max_det: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Predicts on every image, writes ``out/<image>.jpg`` (annotated) and returns the detections.

    Returns:
        ``model`` (:func:`convert.runtime.model_info`), ``settings`` and ``images``: per image its
        ``file``, ``width``, ``height``, ``annotated`` (path written) and ``detections``
        (:func:`detections_json`); ``_raw``: (path, ImageDetections) pairs for COCO output.
    """
    from convert import draw
    from convert.evaluation import class_names
    from convert.preprocess import load_image
    from convert.progress import bar
    from convert.runtime import load_runner, model_info

    e2e = bool(artifact.meta.get("end2end"))
    # End-to-end models keep the thresholds of their graph (conf only filters on top); raw heads get
    # host-side NMS with predict's usual defaults.
    conf = conf if conf is not None else (0.0 if e2e else RAW_DEFAULTS["conf"])
    iou = iou if iou is not None else RAW_DEFAULTS["iou"]
    max_det = max_det if max_det is not None else RAW_DEFAULTS["max_det"]
    try:
        names = class_names(artifact.meta)
    except ConvertError:
        names = []
    info = model_info(artifact, backend)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    images, raw = [], []
    from convert.evaluation import predict_image

    with load_runner(artifact, backend) as runner:
        for path in bar(paths, desc="predict", enabled=progress and len(paths) > 1):
            img = load_image(path)
            det = predict_image(runner, img, artifact.meta, conf, iou, max_det)
            name = _unique(f"{path.stem}.jpg", used)
            draw.draw_detections(img, det, names).save(out / name, quality=90)
            images.append({"file": str(path), "width": int(img.shape[1]), "height": int(img.shape[0]),
                           "annotated": str(out / name), "detections": detections_json(det, names)})
            raw.append((path, det))
    return {"model": info, "settings": {"conf": conf, "iou": iou, "max_det": max_det, "end2end": e2e,
                                        "in_graph_nms": artifact.meta.get("postprocess") if e2e else None},
            "images": images, "_raw": raw}


def _unique(name: str, used: set[str]) -> str:
    stem, suffix, k = name.rsplit(".", 1)[0], ".jpg", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}{suffix}"
    used.add(name)
    return name
