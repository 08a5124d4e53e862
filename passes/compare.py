"""``compare``: the same real images through a reference model and every artifact, output by output.

For each artifact (and each back-end it can run on) the pass reports, per output shared with
the reference, the max/mean absolute and relative error and the cosine similarity (computed by
Polygraphy's comparator), and, for detection models, how far the detections agree: boxes
matched to the reference's (same class, IoU >= ``match_iou``), count differences, IoU and score
differences of the matches. End-to-end models (NMS in the graph) are compared by detections
only: their tensors are ordered by score and padded, so element-wise errors mean nothing. A
reference without NMS is post-processed on the host for that.

Tolerances are per precision; exceeding one fails the run (after the figures are stored)::

    compare:
      inputs: {reference: load, models: [simplify, fp16, quantize, openvino]}
      with: {images: data/images, tolerances: {int8: {min_cosine: 0.97}}}
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from calib.data import DataSource
from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import ConvertError
from convert.postprocess import OUTPUT_NAMES, box_iou


class Tolerance(PassConfig):
    """Limits for one precision; ``null`` disables a check.

    The element-wise check is Polygraphy's: an element fails when it exceeds both ``atol`` and
    ``rtol`` (relative to the reference), so small values are held to ``atol`` and large ones to
    ``rtol``.
    """

    atol: float | None = Field(1e-4, ge=0, description="absolute tolerance of the element-wise check")
    rtol: float | None = Field(1e-4, ge=0, description="relative tolerance of the element-wise check")
    min_cosine: float | None = Field(0.9999, ge=-1, le=1, description="lowest cosine similarity per output and image")
    min_agreement: float | None = Field(0.99, ge=0, le=1, description="lowest share of detections matched "
                                        "(matched / larger of the two counts, over all images)")


class FP16Tolerance(Tolerance):
    atol: float | None = Field(0.1, ge=0, description="absolute tolerance of the element-wise check")
    rtol: float | None = Field(0.05, ge=0, description="relative tolerance of the element-wise check")
    min_cosine: float | None = Field(0.999, ge=-1, le=1, description="lowest cosine similarity per output and image")
    min_agreement: float | None = Field(0.9, ge=0, le=1, description="lowest share of detections matched")


class INT8Tolerance(Tolerance):
    atol: float | None = Field(None, ge=0, description="absolute tolerance of the element-wise check (off: "
                               "quantization error is not element-wise small)")
    rtol: float | None = Field(None, ge=0, description="relative tolerance of the element-wise check")
    min_cosine: float | None = Field(0.98, ge=-1, le=1, description="lowest cosine similarity per output and image")
    min_agreement: float | None = Field(0.7, ge=0, le=1, description="lowest share of detections matched")


class Tolerances(PassConfig):
    fp32: Tolerance = Field(default_factory=Tolerance, description="FP32 artifacts: numerically equal up to "
                            "operator order")
    fp16: FP16Tolerance = Field(default_factory=FP16Tolerance, description="FP16 artifacts")
    int8: INT8Tolerance = Field(default_factory=INT8Tolerance, description="INT8 (quantized) artifacts")


class CompareConfig(DataSource):
    """The images compared on are a data source (:class:`calib.data.DataSource`): ``num`` of them drawn
    with ``seed``, in path order; by default eight of the built-in sample photos."""

    replaced: ClassVar[dict[str, str]] = {"max_images": "num (a seeded draw of num images)"}

    num: int = Field(8, ge=1, description="number of images compared on (drawn with seed, used in path order)")
    onnx_backends: list[Literal["onnxruntime", "openvino"]] = Field(
        ["onnxruntime", "openvino"], min_length=1, description="back-ends each onnx artifact runs on")
    threads: int | None = Field(None, ge=1, description="inference threads (default: the back-ends')")
    tolerances: Tolerances = Field(default_factory=Tolerances, description="limits per precision")
    agreement_conf: float = Field(0.25, ge=0, le=1, description="score threshold of the detections compared")
    match_iou: float = Field(0.5, gt=0, le=1, description="IoU for a detection to match the reference's")
    nms_iou: float = Field(0.45, gt=0, le=1, description="IoU of host-side NMS for models without NMS")
    max_det: int = Field(300, ge=1, description="detections per image of host-side NMS")

    @model_validator(mode="after")
    def _source(self):
        self.check()  # a wrong or empty source fails `convert validate`, not the run
        return self


class Compare(Pass):
    """Compare artifacts against a reference on real images: errors, cosine, detection agreement."""

    name = "compare"
    version = 2
    Config = CompareConfig
    inputs = {
        "reference": Input(("torch", "onnx", "openvino"), doc="the reference model (usually the torch model)"),
        "models": Input(("onnx", "openvino", "tensorrt", "torch"), many=True, doc="artifacts to check"),
    }
    output = "metrics"
    tools = ("onnxruntime", "openvino", "tensorrt", "torch", "polygraphy", "pillow", "numpy")
    requires = ("polygraphy",)

    @classmethod
    def key_files(cls, config: CompareConfig) -> list:
        """The images compared on, when a list file, dataset YAML or COCO file names them."""
        return config.named_files(config.drawn())

    def run(self, inputs, out, ctx) -> PassResult:
        from convert.preprocess import preprocess
        from convert.runtime import BACKENDS, infer, load_runner, model_info

        c: CompareConfig = self.config
        ref = inputs["reference"]
        drawn = c.drawn()
        names, photos = [cand.name for cand in drawn], [cand.load()[0] for cand in drawn]
        pp = ref.meta.get("preprocess")
        for m in inputs["models"]:
            if _pp_key(m.meta.get("preprocess")) != _pp_key(pp):
                raise ConvertError(f"a {m.kind} artifact preprocesses images differently from the reference "
                                   "(size or normalisation), so their outputs cannot be compared.")
        xs = [preprocess(img, pp)[0] for img in photos]
        ref_info = model_info(ref)
        with load_runner(ref, threads=c.threads) as runner:
            ref_outs = [infer(runner, x) for x in ctx.bar(xs, desc="reference")]
        ref_dets: dict[tuple, list[dict] | None] = {}  # by NMS settings

        results, failures = [], []
        targets = [(m, b) for m in inputs["models"]
                   for b in (c.onnx_backends if m.kind == "onnx" else BACKENDS[m.kind])]
        for model, backend in targets:
            info = model_info(model, backend)
            tol = getattr(c.tolerances, info["precision"], None)
            if tol is None:
                raise ConvertError(f"{info['label']}: no tolerance for precision {info['precision']!r}.")
            with load_runner(model, backend, c.threads) as runner:
                outs = [infer(runner, x) for x in ctx.bar(xs, desc=info["label"])]
                settings = runner.settings
            entry: dict[str, Any] = {"model": info, "runner": settings, "tolerance": tol.model_dump()}
            entry["outputs"] = {} if info["end2end"] else _tensor_stats(ref_outs, outs, ref_info["label"],
                                                                         info["label"], tol)
            nms = self._nms(model.meta)
            if nms not in ref_dets:
                ref_dets[nms] = self._detections(ref_outs, ref.meta, nms)
            dets = self._detections(outs, model.meta, nms)
            if ref_dets[nms] is not None and dets is not None:
                entry["detections"] = {**agreement(ref_dets[nms], dets, c.match_iou),
                                       "nms": dict(zip(("conf", "iou", "max_det", "class_agnostic", "pre_top_k"), nms))}
            if not entry["outputs"] and "detections" not in entry:
                raise ConvertError(f"{info['label']} shares no output with the reference "
                                   f"({', '.join(outs[0])} vs {', '.join(ref_outs[0])}) and no detections can be "
                                   "compared.", hint="use a reference with the same head (truncated or not).")
            entry["failures"] = _failures(entry, tol)
            entry["passed"] = not entry["failures"]
            failures += [f"{info['label']} vs {ref_info['label']}: {f}" for f in entry["failures"]]
            results.append(entry)

        record = {"type": "comparison", "reference": ref_info, "images": names,
                  "settings": c.model_dump(mode="json", exclude={"data", "images", "tolerances"}), "models": results}
        (out / "metrics.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return PassResult("metrics", "metrics.json", {"metrics_type": "comparison"},
                          _summary(results), gate_failures=failures)

    def _nms(self, meta: dict[str, Any]) -> tuple:
        """NMS settings (conf, iou, max_det, class_agnostic, pre_top_k) the detections are compared with.

        An end-to-end model's own NMS (``meta["postprocess"]``) also post-processes the reference
        on the host, so only the model differs, never the NMS; the score floor is the higher of
        its threshold and ``agreement_conf``.
        """
        c: CompareConfig = self.config
        own = meta.get("postprocess") if meta.get("end2end") else None
        if not own:
            return (c.agreement_conf, c.nms_iou, c.max_det, False, None)
        return (max(c.agreement_conf, float(own.get("score_threshold", 0.0))), float(own["iou_threshold"]),
                int(own["max_detections"]), bool(own.get("class_agnostic", False)), own.get("pre_top_k"))

    def _detections(self, outs: list[dict[str, np.ndarray]], meta: dict[str, Any], nms: tuple) -> list[dict] | None:
        """Per-image detections (network pixels, score >= the NMS floor), or None for a non-detector."""
        from convert.evaluation import end2end_outputs

        if not (meta.get("end2end") or meta.get("head")):
            return None
        dets = []
        for o in outs:
            e2e = end2end_outputs(o, meta, *nms)
            n = int(np.asarray(e2e["num_dets"]).reshape(-1)[0])
            keep = np.asarray(e2e["scores"][0][:n]) >= nms[0]
            d = {k: np.asarray(e2e[k][0][:n])[keep] for k in ("boxes", "scores", "classes")}
            if "keypoints" in e2e:
                d["keypoints"] = np.asarray(e2e["keypoints"][0][:n])[keep]
            dets.append(d)
        return dets


def _pp_key(pp: dict[str, Any] | None) -> str:
    return json.dumps(pp or {}, sort_keys=True)


def _tensor_stats(ref_outs: list[dict], outs: list[dict], ref_name: str, name: str, tol: Tolerance) -> dict:
    """Per shared output: Polygraphy's error statistics and cosine similarity over all images."""
    from polygraphy.comparator import (
        Comparator,
        CosineSimilarityCompareFunc,
        IterationResult,
        RunResults,
        SimpleCompareFunc,
    )
    from polygraphy.logger import G_LOGGER

    common = [k for k in outs[0] if k in ref_outs[0] and k not in OUTPUT_NAMES]
    if not common:
        return {}
    if name == ref_name:
        ref_name = f"reference {ref_name}"
    run = RunResults()
    run.append((name, [IterationResult({k: o[k] for k in common}, runner_name=name) for o in outs]))
    run.append((ref_name, [IterationResult({k: o[k] for k in common}, runner_name=ref_name) for o in ref_outs]))
    elementwise = tol.atol is not None and tol.rtol is not None
    funcs = [SimpleCompareFunc(atol=tol.atol if elementwise else 0.0, rtol=tol.rtol if elementwise else 0.0,
                               check_error_stat="elemwise"),
             CosineSimilarityCompareFunc(tol.min_cosine if tol.min_cosine is not None else -1.0)]
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # verdicts are reported in the figures, not on stdout
        simple, cosine = Comparator.compare_accuracy(run, comparisons=[(0, 1)], compare_func=funcs)
    iters_s = next(iter(simple.values()))
    iters_c = next(iter(cosine.values()))
    stats = {}
    for k in common:
        s = [it[k] for it in iters_s]
        cos = [it[k].cosine_similarity for it in iters_c]
        stats[k] = {"shape": list(outs[0][k].shape),
                    "max_abs": max(r.max_absdiff for r in s), "mean_abs": float(np.mean([r.mean_absdiff for r in s])),
                    "max_rel": max(r.max_reldiff for r in s), "mean_rel": float(np.mean([r.mean_reldiff for r in s])),
                    "min_cosine": min(cos), "mean_cosine": float(np.mean(cos)),
                    "elementwise_passed": all(bool(r) for r in s) if elementwise else None}
    return stats


def agreement(ref: list[dict], other: list[dict], match_iou: float = 0.5) -> dict[str, Any]:
    """How far two models' detections agree, image by image.

    Detections are matched greedily by IoU (highest first), same class only, IoU >= ``match_iou``.

    Args:
        ref: Per image: ``boxes`` [K,4], ``scores`` [K], ``classes`` [K] (and ``keypoints`` [K,nk,3]).
        other: The same for the model checked.
        match_iou: IoU needed for a match.

    Returns:
        ``agreement`` (matched / larger count, summed over images; 1 when neither detects anything),
        ``matched``, ``reference_count``, ``model_count``, ``count_diff_mean``, ``count_diff_max``,
        ``images_with_count_diff``, ``recall`` (reference detections matched / reference count),
        ``mean_iou`` and ``max_score_diff`` of matches, and for pose ``max_kpt_px`` / ``mean_kpt_px``
        (keypoint distance of matches, network pixels) and ``mean_kpt_diag`` / ``p95_kpt_diag``
        (the same as a fraction of the reference box's diagonal, which makes it independent of
        the object's size).
    """
    matched = denom = 0
    ious, score_diffs, kpt_dists, kpt_rel, count_diffs = [], [], [], [], []
    for r, o in zip(ref, other):
        n_r, n_o = len(r["scores"]), len(o["scores"])
        count_diffs.append(abs(n_r - n_o))
        denom += max(n_r, n_o)
        iou = box_iou(r["boxes"], o["boxes"])
        iou[np.asarray(r["classes"])[:, None] != np.asarray(o["classes"])[None, :]] = 0
        used_r, used_o = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), n_o)
            if iou[i, j] < match_iou:
                break
            if i in used_r or j in used_o:
                continue
            used_r.add(i)
            used_o.add(j)
            ious.append(iou[i, j])
            score_diffs.append(abs(float(r["scores"][i]) - float(o["scores"][j])))
            if "keypoints" in r and "keypoints" in o:
                dist = np.linalg.norm(r["keypoints"][i][:, :2] - o["keypoints"][j][:, :2], axis=-1)
                box = np.asarray(r["boxes"][i], np.float64)
                kpt_dists.append(dist)
                kpt_rel.append(dist / max(float(np.hypot(box[2] - box[0], box[3] - box[1])), 1e-9))
        matched += len(used_r)
    n_ref = int(sum(len(r["scores"]) for r in ref))
    out = {"agreement": matched / denom if denom else 1.0, "matched": matched,
           "recall": matched / n_ref if n_ref else 1.0, "reference_count": n_ref,
           "model_count": int(sum(len(o["scores"]) for o in other)),
           "count_diff_mean": float(np.mean(count_diffs)) if count_diffs else 0.0,
           "count_diff_max": int(max(count_diffs, default=0)),
           "images_with_count_diff": int(sum(d > 0 for d in count_diffs)),
           "mean_iou": float(np.mean(ious)) if ious else None,
           "max_score_diff": float(max(score_diffs)) if score_diffs else None}
    if kpt_dists:
        d = np.concatenate(kpt_dists)
        rel = np.concatenate(kpt_rel)
        out.update(max_kpt_px=float(d.max()), mean_kpt_px=float(d.mean()), mean_kpt_diag=float(rel.mean()),
                   p95_kpt_diag=float(np.percentile(rel, 95)))
    return out


def _failures(entry: dict[str, Any], tol: Tolerance) -> list[str]:
    """The tolerance violations of one artifact, as messages naming the output and figures."""
    prec = entry["model"]["precision"]
    msgs = []
    for name, s in entry["outputs"].items():
        if s["elementwise_passed"] is False:
            msgs.append(f"output {name!r}: max abs error {s['max_abs']:.3g} exceeds atol {tol.atol:g} where the "
                        f"relative error exceeds rtol {tol.rtol:g} ({prec} tolerance)")
        if tol.min_cosine is not None and s["min_cosine"] < tol.min_cosine:
            msgs.append(f"output {name!r}: cosine similarity {s['min_cosine']:.6f} < {tol.min_cosine} "
                        f"({prec} tolerance)")
    det = entry.get("detections")
    if det is not None and tol.min_agreement is not None and det["agreement"] < tol.min_agreement:
        msgs.append(f"detections agree {det['agreement']:.3f} ({det['matched']} matched of {det['reference_count']} "
                    f"reference / {det['model_count']} model) < {tol.min_agreement} ({prec} tolerance)")
    return msgs


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst figure per artifact, for `convert run`'s one-line summary and the manifest."""
    summary: dict[str, Any] = {"checked": len(results), "failed": sum(not r["passed"] for r in results)}
    for r in results:
        label = r["model"]["label"]
        if r["outputs"]:
            summary[f"{label} max_abs"] = max(s["max_abs"] for s in r["outputs"].values())
            summary[f"{label} min_cosine"] = min(s["min_cosine"] for s in r["outputs"].values())
        if "detections" in r:
            summary[f"{label} agreement"] = r["detections"]["agreement"]
            if "mean_kpt_diag" in r["detections"]:
                summary[f"{label} kpt_err_diag"] = r["detections"]["mean_kpt_diag"]
    return summary
