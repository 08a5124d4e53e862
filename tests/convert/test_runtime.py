"""Runners: ONNX Runtime, OpenVINO (IR and ONNX), PyTorch; thread settings; back-end checks."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from convert.base import Artifact, RunContext
from convert.errors import BackendMissing, ConvertError
from convert.runtime import infer, input_meta, load_runner, model_info, resolve_backend
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from passes.load import Load, LoadConfig
from passes.truncate_head import TruncateHead, TruncateHeadConfig


def step(pass_obj, tmp_path, name, **inputs):
    out = tmp_path / name
    out.mkdir()
    res = pass_obj.run(inputs, out, RunContext(name, progress=False))
    return Artifact(res.kind, out, res.main, res.meta, name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-class YOLOv5n at 64x96: its torch artifact, truncated torch artifact and both ONNX exports."""
    tmp = tmp_path_factory.mktemp("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = step(Load(LoadConfig(arch="yolov5n", nc=2, input_size=(64, 96))), tmp, "load")
    truncated = step(TruncateHead(TruncateHeadConfig()), tmp, "trunc", model=loaded)
    onnx_dec = step(ExportOnnx(ExportOnnxConfig()), tmp, "onnx_dec", model=loaded)
    onnx_raw = step(ExportOnnx(ExportOnnxConfig()), tmp, "onnx_raw", model=truncated)
    return {"torch": loaded, "torch_raw": truncated, "onnx": onnx_dec, "onnx_raw": onnx_raw}


def x64():
    return np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)


@pytest.mark.parametrize("which", ["onnx", "onnx_raw"])
def test_torch_onnxruntime_and_openvino_agree(tiny, which):
    ref_art = tiny["torch" if which == "onnx" else "torch_raw"]
    outs = {}
    for art, backend in ((ref_art, None), (tiny[which], "onnxruntime"), (tiny[which], "openvino")):
        with load_runner(art, backend, threads=1) as runner:
            outs[runner.backend] = infer(runner, x64())
    names = ["predictions"] if which == "onnx" else ["p3", "p4", "p5"]
    for backend, got in outs.items():
        assert list(got) == names, backend
        for n in names:
            assert got[n].dtype == np.float32
            assert np.allclose(got[n], outs["torch"][n], rtol=1e-4, atol=1e-4), (backend, n)


def test_runners_record_settings_and_input(tiny):
    with load_runner(tiny["onnx"], threads=1) as ort:
        assert ort.settings["intra_op_num_threads"] == 1 and ort.settings["allow_spinning"] is False
        assert input_meta(ort) == ("images", np.dtype(np.float32), [1, 3, 64, 96])
    with load_runner(tiny["onnx"], "openvino") as ov:
        assert ov.settings["inference_num_threads"] == "default"
        assert ov.settings["inference_precision_hint"] == "f32"
    with load_runner(tiny["torch"]) as tr:
        assert input_meta(tr) == ("images", np.dtype(np.float32), [None, 3, 64, 96])


def test_torch_threads_are_set_per_inference_and_restored(tiny):
    before = torch.get_num_threads()
    one, two = load_runner(tiny["torch"], threads=1), load_runner(tiny["torch"], threads=2)
    with one, two:  # both alive, as in the benchmark: each inference uses its own setting
        infer(one, x64())
        assert torch.get_num_threads() == 1
        infer(two, x64())
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_openvino_ir_runs(tiny, tmp_path):
    import openvino as ov

    ov.save_model(ov.convert_model(str(tiny["onnx"].file)), str(tmp_path / "model.xml"))
    art = Artifact("openvino", tmp_path, "model.xml", {"precision": "fp32"}, "d")
    with load_runner(art) as runner:
        got = infer(runner, x64())
    with load_runner(tiny["onnx"]) as runner:
        ref = infer(runner, x64())
    assert np.allclose(got["predictions"], ref["predictions"], rtol=1e-4, atol=1e-4)
    assert model_info(art)["label"] == "openvino/fp32@openvino"


def test_float16_inputs_are_cast_and_outputs_returned_as_float32(tmp_path):
    graph = helper.make_graph([helper.make_node("Mul", ["images", "two"], ["out"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 2])],
                              [helper.make_tensor("two", TensorProto.FLOAT16, [1], [2.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    art = Artifact("onnx", tmp_path, "m.onnx", {"precision": "fp16"}, "d")
    for backend in ("onnxruntime", "openvino"):
        with load_runner(art, backend) as runner:
            got = infer(runner, np.array([[1.5, -3.0]], np.float32))["out"]
        assert got.dtype == np.float32 and got.tolist() == [[3.0, -6.0]], backend


def test_model_info_and_backend_checks(tiny):
    info = model_info(tiny["onnx"], "openvino")
    assert info["label"] == "onnx/fp32@openvino" and info["precision"] == "fp32" and not info["end2end"]
    assert info["size_bytes"] == tiny["onnx"].file.stat().st_size  # artifact.json is not counted
    assert resolve_backend(tiny["torch"]) == "torch"
    with pytest.raises(ConvertError, match="cannot run a 'torch' artifact"):
        load_runner(tiny["torch"], "openvino")
    with pytest.raises(ConvertError, match="not a model"):
        resolve_backend(Artifact("metrics", tiny["onnx"].path, "metrics.json", {}, "d"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_backend_missing(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"not an engine")
    with pytest.raises(BackendMissing, match="needs 'tensorrt'"):
        load_runner(Artifact("tensorrt", tmp_path, "model.engine", {"precision": "fp16"}, "d"))


def test_openvino_names_outputs_as_the_onnx_model_does(tiny, tmp_path):
    from passes.fp16 import FP16, FP16Config

    # With float32 I/O kept, each output is also the name of the Cast before it (graph_output_cast_N).
    fp16 = step(FP16(FP16Config()), tmp_path, "fp16", model=tiny["onnx_raw"])
    with load_runner(fp16, "openvino") as runner:
        assert list(infer(runner, x64())) == ["p3", "p4", "p5"]
