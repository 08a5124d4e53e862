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
"""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError, PassError

TABLE_FORMAT = 1
SAMPLES_DIR = "samples"


def _default_trt_version() -> str:
    try:
        return version("tensorrt")
    except PackageNotFoundError:
        return "10.0.1"


class CalibrateConfig(PassConfig):
    data: InputPath | None = Field(None, description="calibration images: a folder, a list file, a YOLO dataset "
                                   "(directory or dataset YAML), a COCO annotation JSON; null for the built-in set "
                                   "(photos shipped with scikit-image)")
    source: Literal["auto", "folder", "list", "yolo", "coco", "builtin"] = Field(
        "auto", description="kind of `data` (auto: guessed from the path)")
    split: str = Field("train", min_length=1, description="split of a YOLO dataset (YAML key or images/<split>)")
    images: InputPath | None = Field(None, description="image folder of a COCO annotation file "
                                     "(default: searched next to it)")
    num: int = Field(64, ge=1, description="number of images to use (all if the source has fewer)")
    seed: int = Field(0, description="seed of the sampling order")
    batch_size: int = Field(1, ge=1, description="images per inference batch")
    on_bad_image: Literal["skip", "error"] = Field(
        "skip", description="an unreadable image: skip it (counted, replaced by the next one) or fail")
    preprocess: dict[str, Any] | None = Field(
        None, description="preprocessing overrides (keys of convert/preprocess.py) for a model whose artifact "
        "records none; by default calibration uses the model's own meta.preprocess")
    method: Literal["minmax", "entropy", "percentile", "mse"] = Field(
        "minmax", description="minmax: true extremes; entropy: TensorRT's KL-divergence threshold; "
        "percentile: a percentile of |x|; mse: least expected squared INT8 error. The clipping methods lose the "
        "rare large activations of SiLU networks (YOLOv5n on coco128: minmax best, entropy far worst)")
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

    @model_validator(mode="after")
    def _source(self):
        # Resolve the source now so that an empty or wrong source fails `convert validate`,
        # before any model is built. Listing a folder or reading a list file is cheap.
        from calib.data import check_source

        if self.trt_cache is not None:
            if self.data is not None:
                raise ValueError("give either data (to calibrate) or trt_cache (to import ranges), not both")
            return self
        check_source(self.data, self.source, self.split, self.images)
        return self


class Calibrate(Pass):
    """Measure activation ranges (minmax, entropy, percentile, mse) of a float ONNX body on calibration images."""

    name = "calibrate"
    version = 1
    Config = CalibrateConfig
    inputs = {"model": Input(("onnx",), doc="the float32 ONNX network body (truncated head)")}
    output = "calib_table"
    tools = ("onnx", "onnxruntime", "numpy", "pillow")
    requires = ("onnx", "onnxruntime")

    def run(self, inputs, out, ctx) -> PassResult:
        import tempfile

        import onnx

        from calib import calibrators, data, trt_cache

        c: CalibrateConfig = self.config
        model = inputs["model"]
        if model.meta.get("precision", "fp32") != "fp32":
            raise PassError(f"the model is {model.meta['precision']}; calibration needs the float32 model.",
                            hint="calibrate the output of export_onnx/simplify, before fp16.")
        inp = data.model_input(model.file)
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
            cset = data.CalibrationSet(data.resolve_source(c.data, c.source, c.split, c.images), c.num, c.seed,
                                       c.on_bad_image)
            (out / SAMPLES_DIR).mkdir()
            batches = ctx.bar(data.batches(_keep(cset.samples(), out / SAMPLES_DIR), pp, c.batch_size),
                              total=math.ceil(cset.expected / c.batch_size), desc=f"{c.method} calibration")
            with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
                try:
                    result = calibrators.calibrate(model.file, inp.name, batches, c.method, tmp, op_types=c.op_types,
                                                   percentile=c.percentile, num_bins=c.num_bins,
                                                   stride=c.entropy_stride)
                except ConvertError:
                    raise
                except Exception as e:  # ONNX Runtime's errors: the model cannot run on these inputs
                    raise PassError(f"running the model on calibration data failed: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300]}",
                                    hint="check that stages.*.with.preprocess matches the model's input.") from None
            ranges, samples, params, method = result.ranges, result.samples, result.params, c.method
            record = cset.record()
            record["samples"] = sorted(p.relative_to(out).as_posix() for p in (out / SAMPLES_DIR).iterdir())
        if not ranges:
            raise PassError("no float tensor to calibrate was found in the model.",
                            hint="check op_types, or that the model is a float32 network.")
        table = {"format": TABLE_FORMAT, "method": method, "params": params, "num_samples": samples,
                 "model": {"digest": model.digest, "input": inp.name, "input_shape": list(inp.shape)},
                 "preprocess": pp, "data": record,
                 "tensors": {k: {"min": float(lo), "max": float(hi)} for k, (lo, hi) in sorted(ranges.items())}}
        (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
        trt_cache.write_cache(ranges, out / "calibration.cache", c.trt_version)
        meta = {"method": method, "num_samples": samples, "model_digest": model.digest,
                "data_digest": record.get("digest"), "preprocess": pp, "tensors": len(ranges)}
        summary = {"method": method, "num_samples": samples, "tensors": len(ranges),
                   "skipped": len(record.get("skipped", [])), "data_digest": (record.get("digest") or "")[:12]}
        return PassResult("calib_table", "table.json", meta, summary)


def _keep(samples, folder):
    """Passes samples through, saving each one into ``folder`` in order."""
    for i, sample in enumerate(samples):
        sample.save(folder / f"{i:05d}")
        yield sample
