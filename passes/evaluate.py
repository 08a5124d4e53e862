"""``evaluate``: COCO mAP of a model (boxes, and keypoints for pose) on a labelled dataset, with gates.

A spec evaluates each artifact in its own stage; a stage may name earlier evaluations as
``reference`` to enforce accuracy gates, e.g. INT8 may lose at most one mAP point against FP32::

    eval_fp32: {pass: evaluate, inputs: {model: export}, with: {data: coco128}}
    eval_int8:
      pass: evaluate
      inputs: {model: quantize, reference: eval_fp32}
      with:
        data: coco128
        gates: [{max_drop: {metric: mAP50-95, reference: fp32, value: 0.01}}]

A failed gate fails the run (exit status 1) after the figures are stored and published.

Beside ``metrics.json`` the artifact holds ``detections.json``: every detection scored, as COCO
results (``bbox`` x, y, w, h in original-image pixels) with each image's ``file_name`` added, the
same records ``convert predict --coco`` writes for the same image.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from calib.data import LabelledSource
from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError
from convert.evaluation import METRICS, Metric


class DropGate(PassConfig):
    """The metric may fall at most ``value`` below the reference's (absolute, 0-1 scale)."""

    metric: Metric = Field(description="figure compared")
    reference: str | None = Field(
        None, description="which reference: its label, precision (fp32) or back-end; optional with one reference")
    value: float = Field(ge=0, le=1, description="largest drop allowed, e.g. 0.01 for one mAP point")


class MinGate(PassConfig):
    """The metric must reach ``value``."""

    metric: Metric = Field(description="figure checked")
    value: float = Field(ge=0, le=1, description="lowest value allowed")


class Gate(PassConfig):
    """One accuracy gate: exactly one of ``max_drop`` or ``min``."""

    max_drop: DropGate | None = Field(None, description="largest drop against a reference evaluation")
    min: MinGate | None = Field(None, description="lowest absolute value")

    @model_validator(mode="after")
    def _one(self):
        if (self.max_drop is None) == (self.min is None):
            raise ValueError("a gate has exactly one of max_drop or min")
        return self


class EvaluateConfig(LabelledSource):
    """The evaluation images are a data source (:class:`calib.data.LabelledSource`) with labels: a COCO
    annotation file, or YOLO labels by convention or under ``labels``."""

    replaced: ClassVar[dict[str, str]] = {
        "annotations": "data (give the COCO annotation file as data, and its image folder as images)",
        "max_images": "num (a seeded draw of num images, evaluated in path order)"}

    data: InputPath = Field(description="labelled images: a YOLO dataset (directory, e.g. coco128, or dataset "
                            "YAML), a folder or list file of images with YOLO labels, or a COCO annotation JSON")
    split: str = Field("val", min_length=1, description="split of a YOLO dataset (YAML key or images/<split>; "
                       "all of images/ when there is no such folder)")
    backend: Literal["onnxruntime", "openvino", "tensorrt", "torch"] | None = Field(
        None, description="back-end to run the model on (default: by kind; an onnx model may use openvino)")
    threads: int | None = Field(None, ge=1, description="inference threads (default: the back-end's)")
    conf: float = Field(0.001, ge=0, le=1, description="score threshold (YOLO validation default)")
    iou: float = Field(0.6, gt=0, le=1, description="IoU threshold of host-side NMS (YOLOv5 val default)")
    max_det: int = Field(300, ge=1, description="detections kept per image by host-side NMS")
    kpt_sigmas: list[float] | None = Field(
        None, description="per-keypoint OKS sigmas (default: COCO's for 17 keypoints, else 1/nk)")
    label: str | None = Field(None, description="name of this evaluation in reports and gates "
                              "(default: kind/precision@backend)")
    gates: list[Gate] = Field(default_factory=list, description="accuracy gates; a failure fails the run (exit 1), "
                              "e.g. [{max_drop: {metric: mAP50-95, reference: fp32, value: 0.01}}, "
                              "{min: {metric: mAP50, value: 0.5}}]; metrics: " + ", ".join(METRICS))

    @model_validator(mode="after")
    def _source(self):
        self.check()  # a wrong or empty source fails `convert validate`, not the run
        return self


class Evaluate(Pass):
    """COCO mAP (boxes, keypoint OKS for pose) with pycocotools, for any back-end; accuracy gates."""

    name = "evaluate"
    version = 3
    Config = EvaluateConfig
    inputs = {
        "model": Input(("onnx", "openvino", "tensorrt", "torch"), doc="the model to evaluate"),
        "reference": Input(("metrics",), required=False, many=True,
                           doc="earlier evaluations the gates compare against"),
    }
    output = "metrics"
    tools = ("onnxruntime", "openvino", "tensorrt", "torch", "pycocotools", "pillow", "numpy")
    requires = ("pycocotools",)

    @classmethod
    def key_files(cls, config: EvaluateConfig) -> list:
        """The images a list file, dataset YAML or COCO file names, and their YOLO labels found by convention
        (which may lie outside ``data``)."""
        drawn = config.drawn()
        return config.named_files(drawn) + config.label_files([c.path for c in drawn])

    def run(self, inputs, out, ctx) -> PassResult:
        from convert.evaluation import class_names, coco_results, evaluate_model
        from convert.runtime import load_runner, model_info

        c: EvaluateConfig = self.config
        model = inputs["model"]
        references = [_read_metrics(r) for r in inputs.get("reference") or []]
        info = model_info(model, c.backend)
        label = c.label or info["label"]
        meta = model.meta
        nk = int((meta.get("head") or {}).get("nk") or 0)
        dataset = c.dataset([cand.path for cand in c.drawn()], class_names(meta), nk)
        if not dataset.gt["annotations"]:
            raise ConvertError(f"the {len(dataset)} evaluation images ({dataset.source}) hold no labelled object: "
                               "every figure would be 0.", hint="evaluate on labelled images.")
        settings = {"conf": c.conf, "iou": c.iou, "max_det": c.max_det, "end2end": info["end2end"],
                    "in_graph_nms": meta.get("postprocess") if info["end2end"] else None,
                    "preprocess": meta.get("preprocess"), "kpt_sigmas": c.kpt_sigmas}
        runner = load_runner(model, c.backend, c.threads)
        detections: list = []
        figures = evaluate_model(runner, dataset, meta, c.conf, c.iou, c.max_det, c.kpt_sigmas, bar=ctx.bar,
                                 keep=detections)
        metrics = {k: figures[k] for k in METRICS if k in figures}
        record: dict[str, Any] = {
            "type": "evaluation", "label": label, "model": info, "runner": runner.settings,
            "dataset": {"source": dataset.source, "images": len(dataset), "fingerprint": dataset.fingerprint(),
                        "instances": len(dataset.gt["annotations"])},
            "settings": settings, "metrics": metrics, "detections": figures["detections"],
            "per_class": _class_list(figures["per_class"]),
        }  # no wall-clock time here: the artifact's bytes must not depend on the machine's load
        if "kpt_per_class" in figures:
            record["kpt_per_class"] = _class_list(figures["kpt_per_class"])
        checks = [_check_gate(g, label, metrics, references, record) for g in c.gates]
        record["gates"] = checks
        (out / "metrics.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        files = {im.id: im.path.name for im in dataset.images}
        results = [{**r, "file_name": files[r["image_id"]]} for r in coco_results(dataset, detections)]
        (out / "detections.json").write_text(json.dumps(results, separators=(",", ":")) + "\n")
        summary = {**{k: round(v, 4) for k, v in metrics.items()}, "images": len(dataset),
                   "eval_seconds": figures["seconds"]}
        failures = [g["message"] for g in checks if not g["passed"]]
        return PassResult("metrics", "metrics.json", {"metrics_type": "evaluation", "label": label},
                          summary, gate_failures=failures)


def _class_list(per_class: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    # A list keeps the model's class order through JSON written with sorted keys.
    return [{"class": name, **figures} for name, figures in per_class.items()]


def _read_metrics(artifact) -> dict[str, Any]:
    record = json.loads(artifact.file.read_text())
    if record.get("type") != "evaluation":
        raise ConvertError(f"reference input holds {record.get('type', 'unknown')!r} figures, not an evaluation.",
                           hint="bind `reference` to evaluate stages.")
    return record


def _pick_reference(name: str | None, references: list[dict[str, Any]]) -> dict[str, Any]:
    if not references:
        raise ConvertError("a max_drop gate needs a reference evaluation, and none is bound.",
                           hint="add `inputs: {reference: <an evaluate stage>}` to this stage.")
    if name is None:
        if len(references) > 1:
            raise ConvertError(f"max_drop gate: {len(references)} references are bound; say which one with "
                               f"`reference` ({', '.join(r['label'] for r in references)}).")
        return references[0]
    for key in ("label", "precision", "backend"):
        found = [r for r in references if (r["label"] if key == "label" else r["model"][key]) == name]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConvertError(f"max_drop gate: reference {name!r} matches {len(found)} references by {key}.",
                               hint="give the reference's label instead.")
    raise ConvertError(f"max_drop gate: no reference matches {name!r} "
                       f"(references: {', '.join(r['label'] for r in references)}).",
                       hint="name a reference by label, precision (fp32) or back-end.")


def _check_gate(gate: Gate, label: str, metrics: dict[str, float], references: list[dict[str, Any]],
                record: dict[str, Any]) -> dict[str, Any]:
    """Checks one gate; the returned record says what was compared and whether it passed."""
    spec = gate.max_drop or gate.min
    metric = spec.metric
    if metric not in metrics:
        raise ConvertError(f"gate on {metric}: this model has no such figure (it has {', '.join(metrics)}).",
                           hint="keypoint metrics exist only for pose models.")
    value = metrics[metric]
    if gate.min is not None:
        passed = value >= spec.value
        return {"gate": "min", "metric": metric, "value": value, "threshold": spec.value, "passed": passed,
                "message": f"{metric} of {label} is {value:.4f}, below the minimum {spec.value:.4f}"}
    ref = _pick_reference(spec.reference, references)
    for what, mine, theirs in (("dataset", record["dataset"]["fingerprint"], ref["dataset"]["fingerprint"]),
                               ("settings", _comparable(record["settings"]), _comparable(ref["settings"]))):
        if mine != theirs:
            raise ConvertError(f"max_drop gate: reference {ref['label']!r} was evaluated with a different {what}, "
                               "so the drop would mean nothing.",
                               hint="evaluate both with the same data, labels and thresholds.")
    if metric not in ref["metrics"]:
        raise ConvertError(f"max_drop gate: reference {ref['label']!r} has no {metric}.")
    ref_value = ref["metrics"][metric]
    drop = ref_value - value
    passed = drop <= spec.value + 1e-12
    return {"gate": "max_drop", "metric": metric, "reference": ref["label"], "reference_value": ref_value,
            "value": value, "drop": drop, "threshold": spec.value, "passed": passed,
            "message": (f"{metric} of {label} dropped {drop:.4f} ({ref_value:.4f} -> {value:.4f}) against reference "
                        f"{ref['label']!r}; allowed drop {spec.value:.4f}")}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    # Whether (and how) NMS ran in the graph is part of what is being measured, not a setting.
    return {k: v for k, v in settings.items() if k not in ("end2end", "in_graph_nms")}
