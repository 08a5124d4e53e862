"""truncate_head + export_onnx + simplify on small built-in YOLO models, checked under ONNX Runtime."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from convert.errors import ConvertError
from convert.onnxutil import ort_session
from convert.torchmodel import load_module
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from passes.load import Load, LoadConfig
from passes.simplify import Simplify, SimplifyConfig
from passes.truncate_head import TruncateHead, TruncateHeadConfig

from steps import step


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pose")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, _ = step(Load(LoadConfig(arch="yolov5s-pose", input_size=(64, 96))), tmp, "load")
    truncated, _ = step(TruncateHead(TruncateHeadConfig()), tmp, "trunc", model=loaded)
    return tmp, loaded, truncated


def test_truncate_records_head_outputs(pose):
    _, loaded, truncated = pose
    assert truncated.meta["truncated"] and truncated.meta["head"]["outputs"] == ["p3", "p4", "p5"]
    maps = load_module(truncated)(torch.zeros(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 3 * (6 + 51), 8, 12), (1, 171, 4, 6), (1, 171, 2, 3)]
    with pytest.raises(ConvertError, match="already truncated"):
        step(TruncateHead(TruncateHeadConfig()), pose[0], "again", model=truncated)


def test_export_truncated_dynamic_batch_matches_torch_and_carries_metadata(pose):
    tmp, _, truncated = pose
    art, res = step(ExportOnnx(ExportOnnxConfig(dynamic_batch=True)), tmp, "export", model=truncated)
    model = onnx.load(str(art.file))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["names"]) == ["person"] and json.loads(props["kpt_shape"]) == [17, 3]
    assert json.loads(props["stride"]) == [8, 16, 32] and json.loads(props["truncated"]) is True
    assert json.loads(props["preprocess"])["size"] == [64, 96]
    assert [o.name for o in model.graph.output] == ["p3", "p4", "p5"]
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    got = ort_session(art.file).run(None, {"images": x})
    want = load_module(truncated)(torch.from_numpy(x))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.detach().numpy(), atol=1e-4)
    assert res.summary["max_abs_diff"] < 1e-4
    # deterministic bytes: the same export twice gives the same file
    again, _ = step(ExportOnnx(ExportOnnxConfig(dynamic_batch=True)), tmp, "export2", model=truncated)
    assert again.file.read_bytes() == art.file.read_bytes()


def test_export_decoded_fp16(pose):
    tmp, loaded, _ = pose
    art, res = step(ExportOnnx(ExportOnnxConfig(fp16=True, opset=13)), tmp, "export16", model=loaded)
    sess = ort_session(art.file)
    assert sess.get_inputs()[0].type == "tensor(float16)"
    assert [o.name for o in sess.get_outputs()] == ["predictions"]
    out = sess.run(None, {"images": np.zeros((1, 3, 64, 96), np.float16)})[0]
    assert out.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 6 + 51)
    assert art.meta["precision"] == "fp16" and res.summary["opset"] == 13


def test_simplify_keeps_outputs(pose):
    tmp, _, truncated = pose
    exported, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "export_s", model=truncated)
    art, res = step(Simplify(SimplifyConfig()), tmp, "simplify", model=exported)
    assert res.summary["nodes_after"] <= res.summary["nodes_before"]
    feed = {"images": np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)}
    for a, b in zip(ort_session(exported.file).run(None, feed), ort_session(art.file).run(None, feed)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    props = {p.key for p in onnx.load(str(art.file)).metadata_props}
    assert {"names", "head", "preprocess"} <= props


def test_simplify_failure_fails_or_keeps_the_model(pose, monkeypatch):
    tmp, _, truncated = pose
    exported, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "export_f", model=truncated)

    def broken(self, model):
        raise RuntimeError("simplifier crashed")

    monkeypatch.setattr(Simplify, "_simplify", broken)
    with pytest.raises(ConvertError, match="simplification failed: onnxsim failed: RuntimeError: simplifier crashed"):
        step(Simplify(SimplifyConfig()), tmp, "simplify_f", model=exported)
    art, res = step(Simplify(SimplifyConfig(keep_on_failure=True)), tmp, "simplify_k", model=exported)
    assert art.file.read_bytes() == exported.file.read_bytes() and "kept unsimplified" in res.summary["warning"]
