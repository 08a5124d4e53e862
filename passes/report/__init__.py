"""``report``: a Markdown and self-contained HTML report of a run's figures and pictures.

Two renderings share one renderer (:mod:`passes.report.render`):

* the ``report`` stage (cached like any other) renders what its inputs know — the ``metrics``
  artifacts of evaluate, benchmark and compare stages — and draws the detections of its
  ``models`` on a few photos (:mod:`passes.report.pictures`)::

      report:
        inputs: {metrics: [eval_fp32, eval_int8, compare, benchmark], models: [postprocess_fp32, postprocess]}
        with: {images: data/photos}     # null: the built-in sample photos

* every published version gets ``<version>/report.html`` and ``report.md``, rendered once the
  version is assembled (:func:`render_version`, registered as the engine's ``version`` renderer),
  from its manifest: the pipeline (table and graph), per-pass timings, cache hits, artifact sizes,
  every stage's figures and the report stage's pictures.
  ``convert report NAME/VERSION`` renders it again; ``convert report A B`` compares two.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError


class ReportConfig(PassConfig):
    title: str = Field("run", min_length=1, description="title of the report")
    images: InputPath | None = Field(
        None, description="photos the `models` inputs' detections are drawn on: an image or a folder (its first "
        "`max_images`, sorted by path); null: the built-in sample photos (scikit-image's)")
    max_images: int = Field(4, ge=1, le=32, description="photos drawn on")
    conf: float = Field(0.25, ge=0, le=1, description="score threshold of raw-head models, post-processed on the "
                        "host (end-to-end models keep the thresholds in their graph)")
    iou: float = Field(0.45, gt=0, le=1, description="IoU threshold of host-side NMS for raw-head models")
    max_det: int = Field(100, ge=1, description="detections per image of host-side NMS")
    match_iou: float = Field(0.5, gt=0, le=1, description="IoU at which a box matches the first model's in the "
                             "difference view")
    kpt_conf: float = Field(0.5, ge=0, le=1, description="keypoints below this visibility are not drawn")


class Report(Pass):
    """Render the run's figures (accuracy x back-end x precision, latency, errors, plots) and drawn
    detections as MD + HTML."""

    name = "report"
    version = 2
    Config = ReportConfig
    inputs = {"metrics": Input(("metrics",), required=False, many=True,
                               doc="figures of evaluate, benchmark and compare stages"),
              "models": Input(("onnx", "openvino", "tensorrt", "torch"), required=False, many=True,
                              doc="end-to-end or raw-head models whose detections are drawn on `images`, side by "
                                  "side, the first being the reference of the difference view")}
    output = "report"
    tools = ("matplotlib", "pillow", "onnxruntime", "openvino", "tensorrt", "torch", "numpy")
    requires = ("matplotlib",)

    def run(self, inputs, out, ctx) -> PassResult:
        from passes.report.render import from_records, pictures_of, write_report

        c: ReportConfig = self.config
        metrics, models = inputs.get("metrics") or [], inputs.get("models") or []
        if not metrics and not models:
            raise ConvertError("report: nothing to report (no `metrics` and no `models` input).",
                               hint="bind `metrics` to evaluate/benchmark/compare stages or `models` to models.")
        records = [json.loads(a.file.read_text()) for a in metrics]
        data = from_records(records, c.title)
        if models:
            from passes.report.pictures import draw_models

            draw_models(models, c.images, out, max_images=c.max_images, conf=c.conf, iou=c.iou,
                        max_det=c.max_det, match_iou=c.match_iou, kpt_conf=c.kpt_conf, bar=ctx.bar)
            data.pictures = pictures_of(out, None, {})
        write_report(data, out)
        kinds = sorted({r.get("type", "?") for r in records})
        return PassResult("report", "report.html", {"report_of": kinds},
                          {"figures": len(records), "pictures": len(data.pictures),
                           "files": sum(1 for p in out.rglob("*") if p.is_file())})


def render_version(version_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Renders a published (or being-published) version's report into ``out_dir``.

    Returns:
        (Markdown path, HTML path).
    """
    from passes.report.render import load_version, write_report

    return write_report(load_version(version_dir), out_dir)


def render_comparison(a_dir: Path, b_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Renders two published versions side by side into ``out_dir``."""
    from passes.report.render import load_version, write_comparison

    return write_comparison(load_version(a_dir), load_version(b_dir), out_dir)


def render_matrix(summary: dict, out_dir: Path) -> tuple[Path, Path]:
    """Renders a matrix summary (one row per combination, shared stages) into ``out_dir``."""
    from passes.report.render import write_matrix

    return write_matrix(summary, out_dir)
