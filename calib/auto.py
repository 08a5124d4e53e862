"""``method: auto``: choose the calibration method by the accuracy it gives, not by its statistics.

One statistics pass over the calibration images gives every candidate's ranges
(:func:`calib.calibrators.collect_histograms`). For each candidate, the float model is quantized
with those ranges and the given quantize settings (best: the spec's quantize stage's own), run on
ONNX Runtime over labelled held-out images (images of the source that calibration did not use),
and scored with COCO mAP (:func:`convert.evaluation.evaluate_model`). The first candidate listed
that scores within ``margin`` of the best wins: on a few dozen images, scores differ by about a
point from sampling noise alone (YOLOv5n, 64 held-out coco128 images: percentile beat minmax by
0.5 and 0.9 points on two calibration seeds, and lost by 0.3 and 0.8 on all 128 images), so a
candidate earlier in the list, MinMax by default, is only left for a clear gain. The float model
is scored on the same images, so each candidate's drop is known.

Scoring is in two rounds, to spend evaluation time on the close contenders only: every candidate
(and the float model) is first scored on the first ``screen`` held-out images, and only those
within ``screen_margin`` of the best there are run on the other images, scored on all of them and
compared with ``margin`` (on yolov5n / coco128 entropy trails by about 10 points after 16 images and
is not scored further: 208 inferences instead of 256).

Candidates are quantized one after the other: ONNX Runtime already runs each on both cores of the
2-core machine this was measured on (two single-threaded sessions side by side did no more work
than one session on two threads). What the candidates could share (the float model's runs at the
sensitivity probes' cuts, the probe sessions; the probes themselves depend on the ranges) comes to
about 3 % of the stage on yolov5n, so each candidate's sensitivity analysis is its own.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calib.data import LabelledSource, draw
from convert.errors import ConvertError


def holdout_dataset(source: LabelledSource, exclude: set[Path], names: list[str], nk: int, num: int, seed: int):
    """Labelled images of ``source`` that are not in ``exclude`` (the calibration images).

    A COCO source brings its annotation file; any other source its YOLO labels (by convention, or
    under its ``labels``). Up to ``num`` images are drawn in a seeded random order
    (:func:`calib.data.draw`), then evaluated in path order.

    Returns:
        A :class:`convert.evaluation.Dataset`.

    Raises:
        ConvertError: No image is left, or the images left have no labels.
    """
    resolved = source.resolve()
    drop = {p.resolve() for p in exclude}
    paths = [c.path for c in resolved.candidates if c.path is not None and c.path.resolve() not in drop]
    if not paths:
        raise ConvertError(f"{resolved.location}: no image is left to score calibration methods on: all "
                           f"{len(resolved.candidates)} are used for calibration.",
                           hint="lower num, or give labelled held-out images in auto.data.")
    paths = sorted(draw(paths, num, seed))
    ds = source.dataset(paths, names, nk)
    if not ds.gt["annotations"]:
        labels = source.label_files(paths[:1])
        where = f"e.g. {labels[0]}" if labels else resolved.location
        raise ConvertError(f"the {len(ds)} held-out images of {resolved.location} have no labels ({where}); "
                           "calibration methods cannot be scored on them.",
                           hint="give a YOLO dataset (images/ and labels/) or a COCO annotation file, in data or "
                           "in auto.data.")
    return ds


def pick(scores: dict[str, float], margin: float = 0.0) -> str:
    """The first candidate (in order of preference) that scores within ``margin`` of the best."""
    best = max(scores.values())
    return next(m for m, s in scores.items() if s >= best - margin - 1e-12)


@dataclass
class Selection:
    """The outcome of :func:`select`.

    Attributes:
        method: The chosen method.
        ranges: Its ranges.
        record: What was compared, for the table (``selection``).
    """

    method: str
    ranges: dict[str, tuple[float, float]]
    record: dict[str, Any]


def select(model_file: Path, meta: dict[str, Any], candidates: dict[str, dict[str, tuple[float, float]]],
           params: dict[str, dict], dataset, quantize, batches, metric: str | None, where: str,
           threads: int | None = None, ctx=None, margin: float = 0.0, screen: int = 0,
           screen_margin: float = 0.03) -> Selection:
    """Quantizes the model with each candidate's ranges, scores each on ``dataset``, keeps the best.

    Args:
        model_file: The float ONNX model.
        meta: Its artifact metadata (preprocessing, head, names).
        candidates: Method -> ranges, in order of preference.
        params: Method -> the parameters of its ranges (for the record).
        dataset: Labelled held-out images (:func:`holdout_dataset`).
        quantize: :class:`calib.qdq.QuantizeSettings` of the candidate models.
        batches: Fresh iterator over the calibration batches, as
            :func:`calib.qdq.quantize_model` takes it.
        metric: Figure to maximise; None: ``kpt_mAP50-95`` for a pose model, else ``mAP50-95``.
        where: Key path of the auto settings, for messages.
        threads: ONNX Runtime threads.
        ctx: Run context, for progress bars.
        margin: A candidate within this of the best score counts as good as the best (see :func:`pick`).
        screen: Images of the first round (0, or at least as many as ``dataset`` has: one round).
        screen_margin: Candidates further than this below the best score of the first round are
            not scored on the rest.

    Raises:
        ConvertError: The metric does not exist for this model, or a candidate cannot be quantized.
    """
    import onnx

    from calib.qdq import quantize_model
    from convert import onnxutil
    from convert.evaluation import METRICS, evaluate_detections, predict
    from convert.runtime import OrtRunner

    metric = metric or ("kpt_mAP50-95" if dataset.nk else "mAP50-95")
    if metric.startswith("kpt_") and not dataset.nk:
        raise ConvertError(f"{where}.metric: {metric} needs a pose model; this one predicts no keypoints.",
                           hint="use mAP50-95 or mAP50.")
    seen: dict[Path, list] = {}  # model -> its detections on the first images of the dataset, in order

    def score(path: Path, label: str, images) -> dict[str, Any]:
        # A model scored in the first round is run on the remaining images only: the detections of
        # an image do not depend on the others, so the figures are those of a run on all of them.
        done = seen.setdefault(path, [])
        rest = images.subset(range(len(done), len(images)))
        bar = (lambda it, **kw: ctx.bar(it, **{**kw, "desc": f"auto: {label}"})) if ctx else None
        if len(rest):
            with OrtRunner(path, threads) as runner:
                done += predict(runner, rest, meta, bar=bar)
        figures = evaluate_detections(images, done[:len(images)])
        # timings stay out: table.json must be byte-identical across rebuilds
        return {"metrics": {k: figures[k] for k in METRICS if k in figures}}

    float_model = onnx.load(str(model_file))  # quantize_model only reads it (and names unnamed nodes, once)
    results: dict[str, dict[str, Any]] = {m: {"params": params.get(m, {})} for m in candidates}
    contenders = list(candidates)
    with tempfile.TemporaryDirectory(prefix="calibrate-auto-") as tmp:
        paths = {}
        for method, ranges in candidates.items():
            q = quantize_model(float_model, ranges, quantize, batches, f"{where}.quantize", ctx, method)
            paths[method] = Path(tmp) / f"{method}.onnx"
            onnxutil.save(q.model, paths[method])
        screened = None
        first = dataset.subset(range(min(screen, len(dataset))))
        if 0 < screen < len(dataset) and len(candidates) > 1 and first.gt["annotations"]:
            ref = score(model_file, "fp32, first round", first)["metrics"][metric]
            firsts = {m: score(paths[m], f"{m}, first round", first)["metrics"] for m in candidates}
            best = max(f[metric] for f in firsts.values())
            contenders = [m for m in candidates if firsts[m][metric] >= best - screen_margin - 1e-12]
            for m, f in firsts.items():
                results[m]["screen"] = {"metrics": f, "drop": ref - f[metric]}
                if m not in contenders:  # its figures are those of the first round
                    results[m].update(metrics=f, drop=ref - f[metric], screened_out=True)
            screened = {"images": len(first), "margin": screen_margin, "fp32": ref, "kept": contenders}
        reference = score(model_file, "fp32", dataset)
        for method in contenders:
            results[method].update(score(paths[method], method, dataset))
            results[method]["drop"] = reference["metrics"][metric] - results[method]["metrics"][metric]
    scores = {m: results[m]["metrics"][metric] for m in contenders}
    chosen = pick(scores, margin)
    record = {"metric": metric, "chosen": chosen, "best": max(scores, key=scores.get), "margin": margin,
              "backend": "onnxruntime", "fp32": reference, "candidates": results,
              "quantize": quantize.model_dump(mode="json"),
              **({"screen": screened} if screened else {}),
              "holdout": {"source": dataset.source, "images": len(dataset), "fingerprint": dataset.fingerprint(),
                          "instances": len(dataset.gt["annotations"]),
                          "files": [im.path.name for im in dataset.images]}}
    return Selection(chosen, candidates[chosen], record)
