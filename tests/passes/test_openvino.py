"""Tests of the openvino pass on a small YOLOv5n (random weights, 64x64 input)."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import openvino as ov
import pytest
from PIL import Image
from pydantic import ValidationError

from convert import onnxutil
from convert.errors import PassError
from passes.calibrate import Calibrate, CalibrateConfig
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from passes.load import Load, LoadConfig
from passes.openvino import OpenVINO, OpenVINOConfig, read_rt_info
from passes.quantize import Quantize, QuantizeConfig

from steps import step


def ov_outputs(xml, x: np.ndarray) -> list[np.ndarray]:
    """Runs an IR on OpenVINO's CPU plugin in f32 (the default is bf16 on CPUs that have it)."""
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled(x)
    return [res[o] for o in compiled.outputs]


def op_types(xml) -> set[str]:
    return {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ov")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, _ = step(Load(LoadConfig(arch="yolov5n", input_size=(64, 64), names=["cat", "dog"], nc=2)),
                         tmp, "load")
        art, _ = step(ExportOnnx(ExportOnnxConfig(dynamic_batch=True)), tmp, "export", model=loaded)
    return tmp, art


def write_images(folder, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def qdq(fp32):
    """The INT8 Q/DQ ONNX of the model, from the calibrate and quantize passes."""
    tmp, art = fp32
    write_images(tmp / "images", 2)
    table, _ = step(Calibrate(CalibrateConfig(data=tmp / "images", method="minmax")), tmp, "calib", model=art)
    quantized, _ = step(Quantize(QuantizeConfig()), tmp, "qdq", model=art, table=table)
    assert quantized.meta["precision"] == "int8"
    return quantized


def test_fp32_ir_matches_onnx_and_carries_metadata(fp32, tmp_path):
    _, art = fp32
    ir, res = step(OpenVINO(OpenVINOConfig()), tmp_path, "ov", model=art)
    assert (ir.path / "model.bin").is_file() and ir.main == "model.xml"
    assert res.meta["precision"] == "fp32" and res.kind == "openvino"
    model = ov.Core().read_model(str(ir.file))
    info = read_rt_info(model)
    assert info["names"] == ["cat", "dog"] == res.meta["names"]
    assert info["preprocess"] == art.meta["preprocess"] and info["head"] == art.meta["head"]
    assert info["precision"] == "fp32"
    assert model.inputs[0].partial_shape.is_dynamic  # the dynamic batch survives

    x = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    ref = onnxutil.ort_session(art.file).run(None, {"images": x})
    got = ov_outputs(ir.file, x)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-4)
    assert res.summary["max_abs_diff"] < 1e-4


def test_fp16_compression_halves_the_weights(fp32, tmp_path):
    _, art = fp32
    ir32, _ = step(OpenVINO(OpenVINOConfig()), tmp_path, "ov32", model=art)
    ir16, res = step(OpenVINO(OpenVINOConfig(compress_to_fp16=True)), tmp_path, "ov16", model=art)
    assert res.meta["precision"] == "fp16"
    assert read_rt_info(ov.Core().read_model(str(ir16.file)))["precision"] == "fp16"
    size32, size16 = (ir32.path / "model.bin").stat().st_size, (ir16.path / "model.bin").stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    ref = onnxutil.ort_session(art.file).run(None, {"images": x})[0]
    got = ov_outputs(ir16.file, x)[0]
    magnitude = float(np.abs(ref).max())
    assert 0 < float(np.abs(got - ref).max()) < 1e-2 * magnitude


def test_int8_from_qdq(qdq, tmp_path):
    ir, res = step(OpenVINO(OpenVINOConfig()), tmp_path, "ov8", model=qdq)
    assert res.meta["precision"] == "int8" and res.meta["int8_from"] == "qdq"
    assert "FakeQuantize" in op_types(ir.file)
    # OpenVINO's INT8 kernels and ONNX Runtime's Q/DQ arithmetic round differently, but both
    # quantize with the same scales: the outputs agree to a few quantization steps.
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    ref = onnxutil.ort_session(qdq.file).run(None, {"images": x})[0]
    got = ov_outputs(ir.file, x)[0]
    tolerance = 0.05 * float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) < tolerance
    assert res.summary["max_abs_diff"] < tolerance


def test_nncf_quantization_on_calibration_images(fp32, tmp_path, capfd):
    _, art = fp32
    images = tmp_path / "images"
    write_images(images, 4)
    head = r"/model\.24/m\.\d+/Conv.*"  # the detection head's 1x1 convolutions
    cfg = OpenVINOConfig(quantize="nncf", calib={"data": images, "source": "folder", "num": 3}, preset="performance",
                         ignored_patterns=[head])
    ir, res = step(OpenVINO(cfg), tmp_path, "nncf", model=art)
    assert "Statistics collection" not in capfd.readouterr().out  # stdout stays clean for `convert run --json`
    assert res.meta["precision"] == "int8" and res.meta["int8_from"] == "nncf"
    model = ov.Core().read_model(str(ir.file))
    convs = {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() for op in model.get_ops()
             if op.get_type_name() == "Convolution"}
    in_head = {n: t for n, t in convs.items() if re.fullmatch(head, n)}
    assert len(in_head) == 3 and "FakeQuantize" not in in_head.values()
    assert "FakeQuantize" in {t for n, t in convs.items() if n not in in_head}
    record = json.loads((ir.path / "calibration.json").read_text())
    assert record["num_samples"] == 3 == res.summary["calib_images"]
    assert {f["name"] for f in record["files"]} <= {f"{i}.png" for i in range(4)}
    assert read_rt_info(model)["precision"] == "int8"


def test_nncf_refuses_an_already_quantized_model(qdq, tmp_path):
    with pytest.raises(PassError, match="quantize: nncf quantizes an FP32 model, the input is int8"):
        step(OpenVINO(OpenVINOConfig(quantize="nncf")), tmp_path, "bad", model=qdq)


def test_nncf_calibration_source_is_checked_at_validation(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="holds no image"):
        OpenVINOConfig(quantize="nncf", calib={"data": tmp_path / "empty"})
    OpenVINOConfig(calib={"data": tmp_path / "empty"})  # not read without quantize: nncf


def test_gate(fp32, tmp_path):
    _, art = fp32
    _, res = step(OpenVINO(OpenVINOConfig(compress_to_fp16=True, max_abs_diff=1e-9)), tmp_path, "gate", model=art)
    assert len(res.gate_failures) == 1 and "differs from the ONNX model's" in res.gate_failures[0]

