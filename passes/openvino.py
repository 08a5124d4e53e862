"""``openvino``: an ONNX model to an OpenVINO IR (``model.xml`` + ``model.bin``), checked against ONNX Runtime.

Precision follows the input and the parameters:

* an FP32 ONNX gives an FP32 IR, or an FP16 one with ``compress_to_fp16`` (weights stored as
  FP16; the device decides the compute precision);
* an INT8 ONNX with Q/DQ nodes (the ``quantize`` pass) gives an INT8 IR: OpenVINO turns the
  Q/DQ pairs into FakeQuantize and runs INT8 kernels;
* ``quantize: nncf`` quantizes an FP32 model with NNCF's post-training quantization instead,
  calibrated on the same images the ``calibrate`` pass reads (:mod:`calib.data`), so the two
  INT8 routes can be compared on equal data.

The artifact's metadata (class names, preprocessing, head...) is also written into the IR's
``rt_info`` under ``convert``, one JSON string per key, so an application holding only the IR
knows how to feed it and decode it::

    json.loads(core.read_model("model.xml").get_rt_info(["convert", "preprocess"]).astype(str))
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from calib.data import DataSource, moved_into
from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import PassError

RT_INFO_SECTION = "convert"
RT_INFO_KEYS = ("names", "preprocess", "head", "precision", "end2end", "truncated", "input", "outputs")
"""Metadata keys copied into the IR's rt_info (those present in the artifact's meta)."""


class NNCFImages(DataSource):
    """NNCF's calibration images (:class:`calib.data.DataSource`), as the calibrate pass reads them."""

    num: int = Field(300, ge=1, description="number of calibration images (NNCF's subset_size)")


class OpenVINOConfig(PassConfig):
    replaced: ClassVar[dict[str, str]] = moved_into(
        "calib", {**{f"calib_{k}": k for k in ("data", "source", "split", "images", "seed")}, "subset_size": "num"})

    compress_to_fp16: bool = Field(False, description="store float weights as FP16 (openvino.save_model's "
                                   "compress_to_fp16); the IR's precision is then fp16 unless it is INT8")
    quantize: Literal["none", "nncf"] = Field("none", description="nncf: quantize the FP32 model to INT8 with "
                                              "nncf.quantize (an alternative to the Q/DQ ONNX of the quantize pass)")
    preset: Literal["mixed", "performance"] = Field("mixed", description="NNCF preset: mixed (symmetric weights, "
                                                    "asymmetric activations) or performance (all symmetric)")
    fast_bias_correction: bool = Field(True, description="NNCF: the fast bias correction (false: the slower, "
                                       "more accurate one)")
    ignored_types: list[str] = Field(default_factory=list, description="NNCF: OpenVINO op types left in float "
                                     "(e.g. [Sigmoid, Multiply] to keep a decoding head exact)")
    ignored_patterns: list[str] = Field(default_factory=list, description="NNCF: regular expressions of node names "
                                        "left in float")
    calib: NNCFImages = Field(default_factory=NNCFImages, description="NNCF calibration images (data: folder, "
                              "list file, YOLO dataset, COCO JSON; null: the built-in photos), num of them drawn "
                              "with seed")
    max_abs_diff: float | None = Field(None, gt=0, description="gate: fail the run when an IR output differs from "
                                       "the ONNX model's (ONNX Runtime) by more than this on the check input")
    seed: int = Field(0, description="seed of the check input (sample photos, else uniform noise)")

    @model_validator(mode="after")
    def _calibration_source(self):
        # Resolve the images now so that a wrong path fails `convert validate`, not the run.
        if self.quantize == "nncf":
            self.calib.check("calib.data")
        return self


class OpenVINO(Pass):
    """Convert ONNX to an OpenVINO IR (FP32, FP16 weights, INT8 from Q/DQ or NNCF), checked against ONNX Runtime."""

    name = "openvino"
    version = 3  # 3: 7-bit weights only where activations can overflow them (convert.ovutil.seven_bit_weights)
    Config = OpenVINOConfig
    inputs = {"model": Input(("onnx",), doc="the ONNX model (FP32, FP16, or INT8 with Q/DQ nodes)")}
    output = "openvino"
    tools = ("openvino", "nncf")
    requires = ("openvino",)

    @classmethod
    def key_files(cls, config: OpenVINOConfig) -> list:
        """NNCF's calibration images a list file, dataset YAML or COCO file names."""
        if config.quantize != "nncf":
            return []
        return config.calib.named_files(list(config.calib.resolve().candidates))

    def run(self, inputs, out, ctx) -> PassResult:
        import openvino as ov

        c: OpenVINOConfig = self.config
        art = inputs["model"]
        src_precision = art.meta.get("precision", "fp32")
        if c.quantize == "nncf" and src_precision != "fp32":
            raise PassError(f"stages.{ctx.stage}.with.quantize: nncf quantizes an FP32 model, the input is "
                            f"{src_precision}.", hint="feed the FP32 ONNX (e.g. the simplify stage), or set quantize: "
                            "none to convert this model as it is.")
        from convert.ovutil import read_onnx

        model = read_onnx(art.file)
        if c.quantize == "nncf":
            model, calib_record = self._nncf(model, art, ctx)
            precision = "int8"
        else:
            calib_record = None
            precision = "fp16" if c.compress_to_fp16 and src_precision == "fp32" else src_precision
        meta = {**art.meta, "precision": precision}
        if precision == "int8":
            meta["int8_from"] = "nncf" if c.quantize == "nncf" else "qdq"
        write_rt_info(model, meta)
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=c.compress_to_fp16)

        checked = check_against_onnx(out / "model.xml", art.file, art.meta, c.seed)
        summary = {"precision": precision, **checked.summary(),
                   "bytes": (out / "model.xml").stat().st_size + (out / "model.bin").stat().st_size}
        if calib_record is not None:
            # Which images NNCF saw, to compare with the calibrate stage's table.
            (out / "calibration.json").write_text(json.dumps(calib_record, indent=1, sort_keys=True) + "\n")
            summary["calib_images"] = calib_record["num_samples"]
            summary["calib_digest"] = calib_record["digest"]
        gates = checked.failures(c.max_abs_diff, "IR", "ONNX model")
        return PassResult("openvino", "model.xml", meta, summary, gate_failures=gates)

    def _nncf(self, model, art, ctx):
        """Quantizes ``model`` with NNCF on the configured calibration images.

        Returns:
            (quantized model, record of the calibration set: source, digest, files used).
        """
        import contextlib
        import io
        import sys

        import nncf

        from calib import data

        c: OpenVINOConfig = self.config
        # One image per batch: NNCF's subset_size counts dataset items, and a batch of one fits
        # static and dynamic batch dimensions alike.
        pp = data.resolve_preprocess(art.meta.get("preprocess"), None, data.model_input(art.file), 1)
        calib = data.CalibrationSet(c.calib.resolve(), c.calib.num, c.calib.seed)
        items = list(ctx.bar(data.batches(calib.samples(), pp, 1), total=calib.expected, desc="calibration images"))
        ignored = None
        if c.ignored_types or c.ignored_patterns:
            # validate=False: a pattern matching nothing is not an error (heads differ between models).
            ignored = nncf.IgnoredScope(types=list(c.ignored_types), patterns=list(c.ignored_patterns),
                                        validate=False)
        # NNCF draws its progress bars on stdout, where `convert run --json` prints its report:
        # send them to stderr with the other progress bars, or nowhere.
        with contextlib.redirect_stdout(sys.stderr if ctx.progress else io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset(c.preset),
                                      subset_size=len(items), fast_bias_correction=c.fast_bias_correction,
                                      ignored_scope=ignored)
        return quantized, calib.record()


def write_rt_info(model, meta: dict) -> None:
    """Writes the metadata keys of :data:`RT_INFO_KEYS` into ``model``'s rt_info as JSON strings."""
    for key in RT_INFO_KEYS:
        if key in meta:
            model.set_rt_info(json.dumps(meta[key], sort_keys=True), [RT_INFO_SECTION, key])


def read_rt_info(model) -> dict:
    """The metadata written by :func:`write_rt_info` (keys absent from the IR are left out)."""
    return {key: json.loads(model.get_rt_info([RT_INFO_SECTION, key]).astype(str))
            for key in RT_INFO_KEYS if model.has_rt_info([RT_INFO_SECTION, key])}


def check_against_onnx(xml, onnx_path, meta: dict, seed: int):
    """The IR (OpenVINO, CPU, f32) against the ONNX model (ONNX Runtime), a :class:`convert.refcheck.Check`.

    Both run on the check input of :func:`calib.data.check_feed` (sample photos, else noise).
    OpenVINO runs with its inference precision pinned to f32 (see
    :class:`convert.runtime.OpenVINORunner`), so an FP32 IR matches to float rounding; its
    outputs are named as the ONNX model's are (an OpenVINO output may carry several names).
    """
    from calib.data import check_feed
    from convert import refcheck
    from convert.runtime import OpenVINORunner

    return refcheck.check(onnx_path, lambda names: OpenVINORunner(xml, output_names=names),
                          lambda sess: check_feed(sess, meta, seed))
