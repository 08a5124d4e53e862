"""Tests of the tensorrt pass.

TensorRT cannot be installed on the development machines (its wheels fetch their libraries
from NVIDIA's package index), so the tests are in two groups:

* the pure-Python parts, run everywhere: build planning (typing, flags, profiles, calibration
  shape), the calibrator's batch feeding and cache hand-over (against a stand-in for the
  ``tensorrt`` module that has only the calibrator base classes), calibration caches from the
  calibrate pass's table, plugin loading, and the manager's handling of a missing TensorRT
  (optional stage skipped, required stage exit status 2);
* engine builds, which need TensorRT and a GPU: skipped where ``tensorrt`` is not importable.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pydantic import ValidationError

from calib import trt_cache
from convert.base import Artifact, RunContext
from convert.errors import ConvertError, PassError
from passes.calibrate import Calibrate, CalibrateConfig
from passes.tensorrt import (
    BatchFeeder,
    Capabilities,
    TensorRT,
    TensorRTConfig,
    cache_for,
    load_plugins,
    make_calibrator,
    onnx_inputs,
    plan_build,
)

NO_TRT = "TensorRT is not installed (its wheels fetch libraries from NVIDIA's index, unreachable here)"
TRT10 = Capabilities("10.3.0", strongly_typed=True, weak_typing=True, implicit_int8=True)
TRT11 = Capabilities("11.0.0", strongly_typed=True, weak_typing=False, implicit_int8=False)
TRT8 = Capabilities("8.6.1", strongly_typed=False, weak_typing=True, implicit_int8=True)
PP = {"size": [32, 64], "layout": "NCHW"}
STATIC = [("images", (1, 3, 32, 64))]
DYNAMIC = [("images", (None, 3, None, None))]


def tiny_onnx(path, batch="batch") -> None:
    """images [batch,3,32,64] -> Conv 3x3 -> Relu -> Conv 1x1 -> maps [batch,4,32,64]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["maps"], name="conv2")]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 1, 1)), ("b2", (4,)))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [batch, 3, 32, 64])],
                              [helper.make_tensor_value_info("maps", TensorProto.FLOAT, [batch, 4, 32, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    tiny_onnx(d / "model.onnx")
    return Artifact("onnx", d, "model.onnx", {"precision": "fp32", "preprocess": dict(PP)}, digest="m")


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    ({"batch": (2, 1, 4)}, "min <= opt <= max"),
    ({"typing": "strong", "fp16": True}, "typing: strong takes precisions from the ONNX"),
    ({"typing": "strong", "int8_calibrator": "minmax"}, "typing: strong takes precisions from the ONNX"),
    ({"calib_cache": "c.cache"}, "calib_cache needs int8_calibrator"),
    ({"calib_cache": "c.cache", "calib": {"data": "d"}, "int8_calibrator": "minmax"}, "either calib.data"),
])
def test_config_rejects_inconsistent_parameters(params, message):
    with pytest.raises(ValidationError, match=message):
        TensorRTConfig(**params)


def test_config_rejects_a_calibration_folder_without_images(tmp_path):
    with pytest.raises(ValidationError, match="calib.data: .*holds no image"):
        TensorRTConfig(int8_calibrator="minmax", calib={"data": tmp_path})


def test_capabilities_read_from_the_api_names():
    class Flags:
        FP16 = INT8 = object()

    trt10 = SimpleNamespace(__version__="10.3.0", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
                            BuilderFlag=Flags, IInt8EntropyCalibrator2=object, IInt8MinMaxCalibrator=object)
    trt11 = SimpleNamespace(__version__="11.0.0", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
                            BuilderFlag=SimpleNamespace())
    assert Capabilities.of(trt10) == TRT10
    assert Capabilities.of(trt11) == TRT11


# -- build planning ---------------------------------------------------------------------------

@pytest.mark.parametrize("precision, params, caps, strong, flags, engine", [
    ("fp32", {}, TRT10, False, (), "fp32"),
    ("fp32", {"fp16": True}, TRT10, False, ("FP16",), "fp16"),
    ("fp16", {}, TRT10, True, (), "fp16"),
    ("int8", {}, TRT10, True, (), "int8"),
    ("int8", {"fp16": True}, TRT10, False, ("FP16", "INT8"), "int8"),  # float layers of a Q/DQ model in FP16
    ("int8", {}, TRT8, False, ("INT8",), "int8"),  # no strong typing: Q/DQ needs the INT8 flag
    ("fp16", {}, TRT8, False, ("FP16",), "fp16"),
    ("fp16", {"typing": "weak"}, TRT10, False, ("FP16",), "fp16"),
    ("fp32", {}, TRT11, True, (), "fp32"),  # TensorRT 11 is always strongly typed
    ("fp32", {"int8_calibrator": "entropy2"}, TRT10, False, ("INT8",), "int8"),
])
def test_plan_typing_and_flags(precision, params, caps, strong, flags, engine):
    plan = plan_build(TensorRTConfig(**params), precision, STATIC, PP, caps)
    assert (plan.strongly_typed, plan.flags, plan.precision) == (strong, flags, engine)
    assert plan.profile == {}


@pytest.mark.parametrize("precision, params, caps, message", [
    ("int8", {"int8_calibrator": "minmax"}, TRT10, "calibrates an FP32 model; the input is int8"),
    ("fp32", {"int8_calibrator": "minmax"}, TRT11, "removed in TensorRT 11"),
    ("fp32", {"fp16": True}, TRT11, "has no weak typing"),
    ("fp16", {"typing": "strong"}, TRT8, "cannot build strongly typed networks"),
])
def test_plan_refuses_what_the_model_or_tensorrt_cannot_do(precision, params, caps, message):
    with pytest.raises(PassError, match=message):
        plan_build(TensorRTConfig(**params), precision, STATIC, PP, caps)


def test_plan_profile_for_dynamic_batch_and_size():
    plan = plan_build(TensorRTConfig(batch=(1, 4, 8)), "fp32", DYNAMIC, PP, TRT10)
    assert plan.profile == {"images": ((1, 3, 32, 64), (4, 3, 32, 64), (8, 3, 32, 64))}
    nhwc = plan_build(TensorRTConfig(batch=(2, 2, 2)), "fp32", [("x", (None, None, None, 3))],
                      {"size": [32, 64], "layout": "NHWC"}, TRT10)
    assert nhwc.profile == {"x": ((2, 32, 64, 3),) * 3}


def test_plan_profile_errors():
    with pytest.raises(PassError, match="fixed batch of 1; batch \\[1, 2, 4\\] needs a dynamic batch"):
        plan_build(TensorRTConfig(batch=(1, 2, 4)), "fp32", STATIC, PP, TRT10)
    with pytest.raises(PassError, match="no preprocessing size"):
        plan_build(TensorRTConfig(), "fp32", DYNAMIC, {}, TRT10)


def test_plan_calibration_shape():
    plan = plan_build(TensorRTConfig(int8_calibrator="minmax", calib_batch=4, batch=(1, 2, 8)), "fp32", DYNAMIC,
                      PP, TRT10)
    assert plan.calibrator == "minmax" and plan.calib_shape == (4, 3, 32, 64)
    with pytest.raises(PassError, match="fixed batch of 1, calib_batch is 4"):
        plan_build(TensorRTConfig(int8_calibrator="minmax", calib_batch=4), "fp32", STATIC, PP, TRT10)
    with pytest.raises(PassError, match="feeds one image input; the model has 2"):
        plan_build(TensorRTConfig(int8_calibrator="minmax"), "fp32", STATIC + [("extra", (1, 4))], PP, TRT10)


def test_onnx_inputs_and_tensors(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    inputs, tensors = onnx_inputs(tmp_path / "m.onnx")
    assert inputs == [("images", (None, 3, 32, 64))]
    assert tensors == {"images", "c1", "r1", "maps"}


# -- calibrator -------------------------------------------------------------------------------

class FakeDevice:
    """Device memory stand-in: addresses are indices of the uploaded copies."""

    def __init__(self):
        self.uploads: list[tuple[str, np.ndarray]] = []

    def upload(self, name, host):
        self.uploads.append((name, host.copy()))
        return 1000 + len(self.uploads)


def test_feeder_hands_out_full_batches_and_skips_odd_shapes():
    rng = np.random.default_rng(0)
    full = [rng.random((2, 3, 8, 8), dtype=np.float32) for _ in range(2)]
    short = rng.random((1, 3, 8, 8), dtype=np.float32)
    dev = FakeDevice()
    feeder = BatchFeeder([full[0], short, full[1].astype(np.float64)], (2, 3, 8, 8), dev.upload)
    assert feeder.next(["images"]) == [1001]
    assert feeder.next(["images"]) == [1002]
    assert feeder.next(["images"]) is None
    assert (feeder.fed, feeder.skipped) == (4, 1)
    np.testing.assert_array_equal(dev.uploads[0][1], full[0])
    assert dev.uploads[1][1].dtype == np.float32 and dev.uploads[1][1].flags.c_contiguous
    np.testing.assert_allclose(dev.uploads[1][1], full[1])


class FakeCalibratorBase:
    def __init__(self):
        self.base_initialised = True


FAKE_TRT = SimpleNamespace(IInt8EntropyCalibrator2=type("E2", (FakeCalibratorBase,), {}),
                           IInt8MinMaxCalibrator=type("MM", (FakeCalibratorBase,), {}))


@pytest.mark.parametrize("algorithm, base", [("entropy2", "E2"), ("minmax", "MM")])
def test_calibrator_feeds_batches_and_keeps_the_written_cache(algorithm, base):
    x = np.ones((2, 3, 8, 8), np.float32)
    dev = FakeDevice()
    calib = make_calibrator(FAKE_TRT, algorithm, BatchFeeder([x], (2, 3, 8, 8), dev.upload), None)
    assert type(calib).__mro__[1].__name__ == base and calib.base_initialised
    assert calib.get_batch_size() == 2
    assert calib.read_calibration_cache() is None  # no cache: TensorRT calibrates
    assert calib.get_batch(["images"]) == [1001] and calib.get_batch(["images"]) is None
    calib.write_calibration_cache(memoryview(b"TRT-100300-MinMaxCalibration\n"))
    assert calib.written == b"TRT-100300-MinMaxCalibration\n"
    cached = make_calibrator(FAKE_TRT, algorithm, BatchFeeder([], (2, 3, 8, 8), dev.upload), b"cache")
    assert cached.read_calibration_cache() == b"cache"


# -- calibration caches -----------------------------------------------------------------------

def test_cache_from_the_calibrate_pass_table(tmp_path, model, images):
    out = tmp_path / "calib"
    out.mkdir()
    res = Calibrate(CalibrateConfig(data=images, num=3, method="minmax")).run({"model": model}, out,
                                                                              RunContext("calibrate", progress=False))
    table = json.loads((out / res.main).read_text())["tensors"]
    _, tensors = onnx_inputs(model.file)
    text = cache_for(TensorRTConfig(int8_calibrator="entropy2"), out / res.main, tensors, TRT10, "trt")
    cache = trt_cache.parse_cache(text.decode())
    assert (cache.version, cache.algorithm) == (100300, "EntropyCalibration2")
    amax = max(abs(table["r1"]["min"]), abs(table["r1"]["max"]))
    assert cache.scales["r1"] == pytest.approx(amax / 127, rel=1e-6)
    with pytest.raises(ConvertError, match="does not belong to this model"):
        cache_for(TensorRTConfig(int8_calibrator="entropy2"), out / res.main, {"images", "other"}, TRT10, "trt")


def test_cache_file_must_match_version_and_algorithm(tmp_path):
    ranges = {"images": (0.0, 1.0), "r1": (0.0, 3.0)}
    path = tmp_path / "calib.cache"
    tensors = {"images", "c1", "r1", "maps"}
    trt_cache.write_cache(ranges, path, "10.3.0", "MinMaxCalibration")
    good = cache_for(TensorRTConfig(int8_calibrator="minmax", calib_cache=path), None, tensors, TRT10, "trt")
    assert good == path.read_bytes()
    with pytest.raises(ConvertError, match="written by TensorRT version 100300 with MinMaxCalibration; this build "
                                           "uses 100300 with EntropyCalibration2"):
        cache_for(TensorRTConfig(int8_calibrator="entropy2", calib_cache=path), None, tensors, TRT10, "trt")
    trt_cache.write_cache(ranges, path, "10.0.1", "MinMaxCalibration")
    with pytest.raises(ConvertError, match="version 100001"):
        cache_for(TensorRTConfig(int8_calibrator="minmax", calib_cache=path), None, tensors, TRT10, "trt")
    assert cache_for(TensorRTConfig(int8_calibrator="minmax"), None, tensors, TRT10, "trt") is None


# -- plugins ----------------------------------------------------------------------------------

def test_plugins_registered_then_libraries_loaded(tmp_path):
    calls = []
    fake = SimpleNamespace(init_libnvinfer_plugins=lambda logger, namespace: calls.append((logger, namespace)))
    import _ctypes  # a shared library that is surely there: one of Python's own extension modules

    load_plugins(fake, "logger", [Path(_ctypes.__file__)])
    assert calls == [("logger", "")]
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not a library")
    with pytest.raises(PassError, match="plugin library .*libbogus.so cannot be loaded"):
        load_plugins(fake, "logger", [bogus])


# -- the manager without TensorRT -------------------------------------------------------------

def _spec(tmp_path, optional: bool):
    tiny_onnx(tmp_path / "tiny.onnx")
    spec = tmp_path / f"trt_{'optional' if optional else 'required'}.yaml"
    spec.write_text(
        "stages:\n"
        f"  load: {{with: {{source: onnx, weights: {tmp_path / 'tiny.onnx'}, input_size: [32, 64]}}}}\n"
        f"  tensorrt: {{with: {{fp16: true}}, optional: {str(optional).lower()}}}\n")
    return spec


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_optional_stage_is_skipped_and_locked_as_skipped(tmp_path, cli):
    spec = _spec(tmp_path, optional=True)
    code, out, err = cli("run", spec, "--no-progress")
    assert code == 0, err
    assert "tensorrt (tensorrt): skipped — tensorrt is not installed (optional stage)" in out
    lock = json.loads(spec.with_suffix(".lock").read_text())
    assert lock["stages"]["tensorrt"] == {"pass": "tensorrt", "inputs": {"model": ["load"]},
                                          "skipped": "tensorrt is not installed (optional stage)"}
    assert "output" in lock["stages"]["load"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_required_stage_fails_with_exit_2_naming_the_pass(tmp_path, cli):
    spec = _spec(tmp_path, optional=False)
    code, out, err = cli("run", spec, "--no-progress")
    assert code == 2
    assert "stage 'tensorrt' (pass tensorrt) needs the Python module 'tensorrt', which is not installed" in err
    assert "Hint:" in err and "optional: true" in err
    assert not spec.with_suffix(".lock").exists()


# -- engine builds (TensorRT and a GPU) -------------------------------------------------------

def build(tmp_path, art, name="trt", table=None, **params):
    out = tmp_path / name
    out.mkdir()
    inputs = {"model": art, **({"table": table} if table is not None else {})}
    res = TensorRT(TensorRTConfig(**params)).run(inputs, out, RunContext(name, progress=False))
    return res, out


def test_build_fp32_and_fp16_engines_with_dynamic_batch(tmp_path, model):
    pytest.importorskip("tensorrt", reason=NO_TRT)
    cache = tmp_path / "timing.cache"
    res, out = build(tmp_path, model, batch=(1, 2, 4), workspace_mib=256, timing_cache=cache)
    assert (out / "model.engine").stat().st_size > 0 and cache.stat().st_size > 0
    assert res.meta["precision"] == "fp32" and res.summary["max_abs_diff"] < 1e-2  # TF32 is on by default
    assert res.meta["tensorrt"]["profile"] == {"images": [[1, 3, 32, 64], [2, 3, 32, 64], [4, 3, 32, 64]]}
    res16, _ = build(tmp_path, model, "trt16", fp16=True, builder_optimization_level=1, timing_cache=cache)
    assert res16.meta["precision"] == "fp16" and res16.summary["flags"] == "FP16"
    assert res16.summary["max_abs_diff"] < 5e-2


def test_build_strongly_typed_from_the_fp16_pass(tmp_path, model):
    pytest.importorskip("tensorrt", reason=NO_TRT)
    from passes.fp16 import FP16, FP16Config

    out = tmp_path / "fp16"
    out.mkdir()
    half = FP16(FP16Config()).run({"model": model}, out, RunContext("fp16", progress=False))
    art = Artifact("onnx", out, half.main, half.meta, digest="h")
    res, _ = build(tmp_path, art)
    assert res.summary["strongly_typed"] is True and res.meta["precision"] == "fp16"
    assert res.summary["max_abs_diff"] < 5e-2


def test_build_implicit_int8_from_images_and_from_the_table(tmp_path, model, images):
    pytest.importorskip("tensorrt", reason=NO_TRT)
    res, out = build(tmp_path, model, int8_calibrator="minmax", calib={"data": images, "num": 4}, calib_batch=2,
                     batch=(1, 2, 4))
    assert res.meta["precision"] == "int8" and res.summary["calib_images"] == 4
    written = trt_cache.read_cache(out / "calibration.cache")
    assert written.algorithm == "MinMaxCalibration" and "r1" in written.scales

    tdir = tmp_path / "table"
    tdir.mkdir()
    t = Calibrate(CalibrateConfig(data=images, num=3)).run({"model": model}, tdir, RunContext("c", progress=False))
    table = Artifact("calib_table", tdir, t.main, t.meta, digest="t")
    res2, _ = build(tmp_path, model, "from_table", table=table, int8_calibrator="entropy2")
    assert res2.meta["precision"] == "int8" and res2.summary["calib_images"] == 0  # scales came from the cache


def test_build_strongly_typed_int8_from_the_quantize_pass(tmp_path, model, images):
    pytest.importorskip("tensorrt", reason=NO_TRT)
    from passes.quantize import Quantize, QuantizeConfig

    ctx = RunContext("q", progress=False)
    tdir, qdir = tmp_path / "table", tmp_path / "qdq"
    tdir.mkdir()
    qdir.mkdir()
    t = Calibrate(CalibrateConfig(data=images, num=3)).run({"model": model}, tdir, ctx)
    table = Artifact("calib_table", tdir, t.main, t.meta, digest="t")
    q = Quantize(QuantizeConfig()).run({"model": model, "table": table}, qdir, ctx)
    res, _ = build(tmp_path, Artifact("onnx", qdir, q.main, q.meta, digest="q"))
    assert res.summary["strongly_typed"] is True and res.summary["flags"] == ""
    assert res.meta["precision"] == "int8" and res.meta["tensorrt"]["calibrator"] is None


def test_old_calibration_keys_fail_validation_naming_their_new_place(tmp_path, cli):
    tiny_onnx(tmp_path / "tiny.onnx")
    spec = tmp_path / "old.yaml"
    spec.write_text("stages:\n"
                    f"  load: {{with: {{source: onnx, weights: {tmp_path / 'tiny.onnx'}, input_size: [32, 64]}}}}\n"
                    f"  tensorrt: {{with: {{int8_calibrator: minmax, calib_num: 8}}}}\n")
    code, out, err = cli("validate", spec)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert ("stages.tensorrt.with.calib_num: no longer a parameter of pass 'tensorrt': it was replaced by "
            "calib.num") in line
    assert "Hint: update the spec" in line
    spec.write_text(spec.read_text().replace("calib_num: 8", "calib: {num: 8}"))
    assert cli("validate", spec)[0] == 0
