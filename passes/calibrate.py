"""``calibrate``: activation ranges of a float ONNX model over calibration images.

Writes a ``calib_table`` artifact:

``table.json``
    ``tensors`` (name -> ``{"min", "max"}``), ``method`` and its ``params``, ``num_samples``,
    ``model`` (digest, input), ``preprocess`` used, and ``data``: the source, the content digest
    of the images actually used, their names and sha256, and the images skipped with why.
``samples/``
    The images used, byte for byte (built-in ones as PNG), so that later passes (bias
    correction in ``quantize``) see exactly the calibration inputs without the source.
``calibration.cache``
    The same ranges as a TensorRT calibration cache (see :mod:`calib.trt_cache`), for
    TensorRT 10 users who build INT8 engines from the float ONNX.

Calibrate the network body (the truncated-head ONNX), before post-processing is attached:
decode and NMS are never quantized.

``method: auto`` measures instead of guessing (:mod:`calib.auto`): each of ``auto.candidates`` is
quantized with ``auto.quantize`` (give it the quantize stage's settings) and scored with COCO mAP
on labelled images calibration did not use; the table holds the best method's ranges and, under
``selection``, every candidate's figures, the float model's, and the held-out images used.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from calib.data import LabelledSource
from calib.qdq import QuantizeSettings
from calib.table import TABLE_FORMAT
from convert.base import Input, InputPath, Pass, PassResult
from convert.errors import BackendMissing, ConvertError, PassError
from convert.evaluation import Metric

SAMPLES_DIR = "samples"


def _default_trt_version() -> str:
    try:
        return version("tensorrt")
    except PackageNotFoundError:
        return "10.0.1"


Method = Literal["minmax", "entropy", "percentile", "mse"]


class AutoConfig(LabelledSource):
    """Settings of ``method: auto``: which methods are tried and how they are scored.

    The held-out images are a data source (:class:`calib.data.LabelledSource`): by default the
    calibration source's images that calibration did not use, with its labels.
    """

    replaced: ClassVar[dict[str, str]] = {"max_images": "num (the number of held-out images scored)"}

    candidates: list[Method] = Field(["minmax", "entropy", "percentile"], min_length=1,
                                     description="methods tried, in order of preference (see margin)")
    metric: Metric | None = Field(None, description="figure maximised on the held-out images (default: "
                                  "kpt_mAP50-95 for a pose model, else mAP50-95)")
    data: InputPath | None = Field(None, description="labelled images to score on: a YOLO dataset (directory or "
                                   "YAML), a folder or list file of images with YOLO labels, or a COCO annotation "
                                   "JSON; default: the images of the calibration source that calibration did not "
                                   "use (calibration images are always left out)")
    split: str = Field("val", min_length=1, description="split of a YOLO auto.data")
    num: int = Field(64, ge=1, description="held-out images scored (drawn with seed)")
    seed: int | None = Field(None, description="seed of the held-out draw (default: the calibration seed)")
    margin: float = Field(0.01, ge=0, le=1, description="the first candidate listed that scores within this of the "
                          "best is chosen: on 64 images, scores differ by about a point (0.01) from sampling noise "
                          "alone; lower it when scoring on many more images")
    screen_images: int = Field(16, ge=0, description="first round: every candidate is scored on this many of the "
                               "held-out images, and only those within screen_margin of the best there on all "
                               "num of them (0: one round on all)")
    screen_margin: float = Field(0.03, ge=0, le=1, description="first-round score below the best beyond which a "
                                 "candidate is not scored further (16 images: sampling noise is a few points)")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads while scoring")
    quantize: QuantizeSettings = Field(
        default_factory=QuantizeSettings, description="how each candidate is quantized: give the quantize "
        "stage's settings, e.g. `quantize: ${stages.quantize.with}`, so the choice is made for the model that "
        "will be built")

    @field_validator("candidates")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"candidates {v} lists a method twice")
        return v

    @field_validator("source")
    @classmethod
    def _labelled(cls, v):
        if v == "builtin":
            raise ValueError("the built-in photos have no labels to score on; give labelled images in auto.data")
        return v


class CalibrateConfig(LabelledSource):
    """The calibration images are a data source (:class:`calib.data.LabelledSource`); their labels
    (by convention, or ``labels``) are read only by method auto, to score on the images left over."""

    data: InputPath | None = Field(None, description="calibration images: a folder, a list file, a YOLO dataset "
                                   "(directory or dataset YAML), a COCO annotation JSON; null for the built-in set "
                                   "(photos shipped with scikit-image)")
    num: int = Field(64, ge=1, description="number of images to use (all if the source has fewer)")
    seed: int = Field(0, description="seed of the sampling order")
    batch_size: int = Field(1, ge=1, description="images per inference batch")
    on_bad_image: Literal["skip", "error"] = Field(
        "skip", description="an unreadable image: skip it (counted, replaced by the next one) or fail")
    preprocess: dict[str, Any] | None = Field(
        None, description="preprocessing overrides (keys of convert/preprocess.py) for a model whose artifact "
        "records none; by default calibration uses the model's own meta.preprocess")
    method: Literal["minmax", "entropy", "percentile", "mse", "auto"] = Field(
        "minmax", description="minmax: true extremes; entropy: TensorRT's KL-divergence threshold; "
        "percentile: a percentile of |x|; mse: least expected squared INT8 error; auto: quantize with each of "
        "auto.candidates, score on labelled held-out images, keep the best. The clipping methods lose the "
        "rare large activations of SiLU networks (YOLOv5n on coco128: minmax best, entropy far worst)")
    auto: AutoConfig | None = Field(None, description="settings of method auto (defaults filled in when omitted); "
                                    "dropped with any other method, so a spec switches methods with one override "
                                    "and a non-auto calibration is not re-keyed by them")
    percentile: float = Field(99.99, gt=50, le=100, description="percentile of |x| kept by method percentile")
    num_bins: int = Field(2048, ge=256, description="histogram bins of the entropy, percentile and mse methods")
    entropy_stride: int = Field(1, ge=1, description="step between candidate thresholds of method entropy, in bins")
    op_types: list[str] | None = Field(None, description="calibrate only inputs and outputs of these node types "
                                       "(default: every float tensor, as a TensorRT cache needs)")
    trt_version: str = Field(default_factory=_default_trt_version,
                             description="TensorRT version written in the header of calibration.cache (TensorRT "
                             "ignores a cache of another version); default: the installed one, else 10.0.1")
    trt_cache: InputPath | None = Field(None, description="import this TensorRT calibration cache instead of "
                                        "calibrating (it must name this model's tensors)")

    @field_validator("preprocess")
    @classmethod
    def _known_preprocess_keys(cls, v):
        from convert.preprocess import DEFAULT_PREPROCESS

        unknown = sorted(set(v or {}) - set(DEFAULT_PREPROCESS))
        if unknown:
            raise ValueError(f"unknown preprocess key(s) {unknown}; known: {sorted(DEFAULT_PREPROCESS)}")
        return v

    @field_validator("trt_version")
    @classmethod
    def _trt_version(cls, v):
        from calib.trt_cache import version_number

        try:
            version_number(v)
        except ConvertError as e:
            raise ValueError(e.message) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _auto_block(cls, values):
        # With method auto the block is always there (defaults filled in); with another method it is
        # dropped, after a check that catches a typo in it.
        if not isinstance(values, dict):
            return values
        if values.get("method", "minmax") == "auto":
            return {**values, "auto": values.get("auto") or {}}
        if "auto" in values:
            try:
                AutoConfig.model_validate(values["auto"])
            except ValidationError as e:
                err = e.errors()[0]
                if err["type"] == "replaced":
                    raise PydanticCustomError("replaced", "{key} was replaced: {by}",
                                              {"key": f"auto.{err['ctx']['key']}", "by": err["ctx"]["by"]}) from None
                raise ValueError(f"auto.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
            values = {k: v for k, v in values.items() if k != "auto"}
        return values

    @model_validator(mode="after")
    def _source(self):
        # Resolve the source now so that an empty or wrong source fails `convert validate`,
        # before any model is built. Listing a folder is cheap, and a file is read once (calib.data).
        if self.trt_cache is not None:
            if self.data is not None:
                raise ValueError("give either data (to calibrate) or trt_cache (to import ranges), not both")
            if self.method == "auto":
                raise ValueError("method auto calibrates; it cannot be combined with an imported trt_cache")
            return self
        self.check()
        if self.method == "auto":
            auto = self.auto
            if auto.data is not None:
                auto.check("auto.data")
            elif self.data is None:
                raise ValueError("method auto scores each method on labelled images, and the built-in calibration "
                                 "set has no labels; give data (a YOLO dataset or COCO annotation file) or "
                                 "auto.data")
        return self


class Calibrate(Pass):
    """Measure activation ranges (minmax, entropy, percentile, mse) of a float ONNX body on calibration images."""

    name = "calibrate"
    version = 4  # 3: method auto's candidates are quantized as quantize version 4 does (bias corrections)
    # 4: statistics from ONNX Runtime sessions with graph optimizations on (calib.calibrators._OptimizedSession:
    # the same ranges up to kernel rounding, 94 -> 76 ms per yolov5n image); auto's candidates as quantize v5
    Config = CalibrateConfig
    inputs = {"model": Input(("onnx",), doc="the float32 ONNX network body (truncated head)")}
    output = "calib_table"
    tools = ("onnx", "onnxruntime", "numpy", "pillow")
    requires = ("onnx", "onnxruntime")

    @classmethod
    def key_files(cls, config: CalibrateConfig) -> list:
        """The candidate images (a list file or dataset YAML names them; editing one must re-key) and, for
        method auto, the held-out images and their YOLO labels."""
        if config.trt_cache is not None:
            return []
        files = config.files()
        if config.method == "auto":
            held = config.auto if config.auto.data is not None else config
            paths = held.files()
            if held is not config:
                files += paths
            files += held.label_files(paths)
        return files

    def run(self, inputs, out, ctx) -> PassResult:
        import importlib.util
        import tempfile

        import onnx

        from calib import calibrators, data, trt_cache

        c: CalibrateConfig = self.config
        model = inputs["model"]
        if model.meta.get("precision", "fp32") != "fp32":
            raise PassError(f"the model is {model.meta['precision']}; calibration needs the float32 model.",
                            hint="calibrate the output of export_onnx/simplify, before fp16.")
        if c.method == "auto" and importlib.util.find_spec("pycocotools") is None:
            raise BackendMissing("method auto scores candidates with COCO mAP, which needs pycocotools.",
                                 hint="pip install 'convert[eval]' (or pycocotools), or choose a method.")
        inp = data.model_input(model.file)
        selection = None
        if c.trt_cache is not None:
            cache = trt_cache.read_cache(c.trt_cache)
            graph = onnx.load(str(model.file), load_external_data=False).graph
            tensors = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
            trt_cache.check_belongs(cache, tensors, f"stages.{ctx.stage}.with.trt_cache ({c.trt_cache})")
            ranges, samples, params = cache.ranges(), 0, {"trt_version": cache.version, "algorithm": cache.algorithm}
            pp = {**(model.meta.get("preprocess") or {})}
            record: dict[str, Any] = {"source": "trt_cache", "location": str(c.trt_cache)}
            method = "trt_cache"
        else:
            pp = data.resolve_preprocess(model.meta.get("preprocess"), c.preprocess, inp, c.batch_size)
            cset = data.CalibrationSet(c.resolve(), c.num, c.seed, c.on_bad_image)
            (out / SAMPLES_DIR).mkdir()
            batches = ctx.bar(data.prefetch(data.batches(_keep(cset.samples(), out / SAMPLES_DIR), pp, c.batch_size)),
                              total=math.ceil(cset.expected / c.batch_size), desc=f"{c.method} calibration")
            with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
                try:
                    if c.method == "auto":  # one statistics pass serves every candidate
                        stats, samples = calibrators.collect_histograms(model.file, inp.name, batches, tmp,
                                                                        c.op_types, c.num_bins)
                        candidates = {m: stats.ranges(m, c.percentile, c.entropy_stride)
                                      for m in c.auto.candidates}
                    else:
                        result = calibrators.calibrate(model.file, inp.name, batches, c.method, tmp,
                                                       op_types=c.op_types, percentile=c.percentile,
                                                       num_bins=c.num_bins, stride=c.entropy_stride)
                        ranges, samples, params, method = result.ranges, result.samples, result.params, c.method
                except ConvertError:
                    raise
                except Exception as e:  # ONNX Runtime's errors: the model cannot run on these inputs
                    raise PassError(f"running the model on calibration data failed: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300]}",
                                    hint="check that stages.*.with.preprocess matches the model's input.") from None
            if c.method == "auto":
                selection = self._select(model, candidates, cset, out / SAMPLES_DIR, pp, ctx)
                method, ranges = selection.method, selection.ranges
                params = selection.record["candidates"][method]["params"]
            record = cset.record()
            record["samples"] = sorted(p.relative_to(out).as_posix() for p in (out / SAMPLES_DIR).iterdir())
        if not ranges:
            raise PassError("no float tensor to calibrate was found in the model.",
                            hint="check op_types, or that the model is a float32 network.")
        table = {"format": TABLE_FORMAT, "method": method, "params": params, "num_samples": samples,
                 "model": {"digest": model.digest, "input": inp.name, "input_shape": list(inp.shape)},
                 "preprocess": pp, "data": record,
                 "tensors": {k: {"min": float(lo), "max": float(hi)} for k, (lo, hi) in sorted(ranges.items())}}
        if selection is not None:
            table["selection"] = selection.record
        (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
        trt_cache.write_cache(ranges, out / "calibration.cache", c.trt_version)
        meta = {"method": method, "num_samples": samples, "model_digest": model.digest,
                "data_digest": record.get("digest"), "preprocess": pp, "tensors": len(ranges)}
        summary = {"method": method, "num_samples": samples, "tensors": len(ranges),
                   "skipped": len(record.get("skipped", [])), "data_digest": (record.get("digest") or "")[:12]}
        if selection is not None:
            sel = selection.record
            metric = sel["metric"]
            meta["selection"] = {"metric": metric, "chosen": method, "fp32": sel["fp32"]["metrics"][metric],
                                 "scores": {m: r["metrics"][metric] for m, r in sel["candidates"].items()
                                            if not r.get("screened_out")}}
            dropped = [m for m, r in sel["candidates"].items() if r.get("screened_out")]
            if dropped:  # scored on the first round's images only: not comparable with the scores
                meta["selection"]["screened_out"] = dropped
            # Method and scores first: the run's one-line report shows the first few figures.
            summary = {"method": f"{method} (auto, {metric})", **meta["selection"]["scores"],
                       "fp32": meta["selection"]["fp32"],
                       **({"screened_out": ", ".join(dropped)} if dropped else {}),
                       **{k: v for k, v in summary.items() if k != "method"}}
        return PassResult("calib_table", "table.json", meta, summary)

    def _select(self, model, candidates, cset, samples_dir, pp, ctx):
        """``method: auto``: scores each candidate's ranges on held-out labelled images (:mod:`calib.auto`)."""
        from calib import auto as selection
        from calib.calibrators import method_params
        from calib.table import calibration_batches
        from convert.evaluation import class_names

        c: CalibrateConfig = self.config
        a = c.auto
        held = a if a.data is not None else c
        used_names = {n for n, _ in cset.used}
        used = {cand.path for cand in cset.source.candidates if cand.name in used_names and cand.path is not None}
        meta = {**model.meta, "preprocess": pp}
        nk = int((meta.get("head") or {}).get("nk") or 0)
        dataset = selection.holdout_dataset(held, used, class_names(meta), nk, a.num,
                                            c.seed if a.seed is None else a.seed)
        samples = sorted(samples_dir.iterdir())
        params = {m: method_params(m, c.num_bins, c.percentile, c.entropy_stride) for m in candidates}
        return selection.select(model.file, meta, candidates, params, dataset, a.quantize,
                                lambda: calibration_batches(samples, pp), a.metric, f"stages.{ctx.stage}.with.auto",
                                a.threads, ctx, a.margin, a.screen_images, a.screen_margin)


def _keep(samples, folder):
    """Passes samples through, saving each one into ``folder`` in order."""
    for i, sample in enumerate(samples):
        sample.save(folder / f"{i:05d}")
        yield sample
