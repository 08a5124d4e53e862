"""The compare pass: torch vs ONNX on ONNX Runtime and OpenVINO, tolerances, detection agreement."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from convert.base import Artifact
from convert.errors import ConvertError
from passes.compare import Compare, CompareConfig, agreement
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from passes.load import Load, LoadConfig
from passes.truncate_head import TruncateHead, TruncateHeadConfig

from steps import step

# Randomly initialised models score up to ~7e-3 (YOLOv5's objectness prior): a low threshold gives
# detections to compare, above the bulk of near-equal scores whose ranking float noise may flip.
LOW_CONF = 2e-3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _ = step(Load(LoadConfig(arch="yolov5n", nc=2, input_size=(64, 64))), tmp, "load")
        other, _ = step(Load(LoadConfig(arch="yolov5n", nc=2, input_size=(64, 64), seed=1)), tmp, "load_seed1")
    onnx_fp32, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "onnx", model=ref)
    onnx_other, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "onnx_other", model=other)
    truncated, _ = step(TruncateHead(TruncateHeadConfig()), tmp, "trunc", model=ref)
    onnx_raw, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "onnx_raw", model=truncated)
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(80, 60), (64, 96), (100, 100)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    return {"torch": ref, "onnx": onnx_fp32, "other": onnx_other, "truncated": truncated, "onnx_raw": onnx_raw,
            "images": images, "tmp": tmp}


def test_fp32_onnx_matches_torch_on_onnxruntime_and_openvino(models, tmp_path):
    cfg = CompareConfig(data=models["images"], agreement_conf=LOW_CONF)
    art, res = step(Compare(cfg), tmp_path, "cmp", reference=models["torch"], models=[models["onnx"]])
    rec = json.loads(art.file.read_text())
    assert res.gate_failures == [] and res.summary["checked"] == 2 and res.summary["failed"] == 0
    assert [m["model"]["backend"] for m in rec["models"]] == ["onnxruntime", "openvino"]
    assert rec["images"] == ["0.jpg", "1.jpg", "2.jpg"] and rec["reference"]["label"] == "torch/fp32@torch"
    for m in rec["models"]:
        s = m["outputs"]["predictions"]
        assert s["shape"] == [1, 252, 7] and s["elementwise_passed"] is True
        assert s["max_abs"] < 1e-3 and s["min_cosine"] > 0.99999
        d = m["detections"]
        assert d["reference_count"] > 0 and d["agreement"] == 1.0 and d["count_diff_max"] == 0
        assert d["mean_iou"] > 0.999 and m["passed"] and m["runner"]


def test_raw_head_compares_per_level_map(models, tmp_path):
    cfg = CompareConfig(data=models["images"], onnx_backends=["openvino"], agreement_conf=LOW_CONF, num=1)
    art, res = step(Compare(cfg), tmp_path, "cmp", reference=models["truncated"], models=[models["onnx_raw"]])
    rec = json.loads(art.file.read_text())
    assert list(rec["models"][0]["outputs"]) == ["p3", "p4", "p5"] and res.gate_failures == []
    assert rec["models"][0]["detections"]["agreement"] == 1.0  # raw maps post-processed on the host


def test_exceeded_tolerance_fails_with_output_and_figures(models, tmp_path):
    cfg = CompareConfig(data=models["images"], onnx_backends=["onnxruntime"], agreement_conf=LOW_CONF)
    _, res = step(Compare(cfg), tmp_path, "cmp", reference=models["torch"], models=[models["other"]])
    text = "\n".join(res.gate_failures)
    assert res.summary["failed"] == 1
    assert "onnx/fp32@onnxruntime vs torch/fp32@torch: output 'predictions': max abs error" in text
    assert "cosine similarity" in text and "(fp32 tolerance)" in text
    loose = CompareConfig(data=models["images"], onnx_backends=["onnxruntime"], agreement_conf=LOW_CONF,
                          tolerances={"fp32": {"atol": None, "rtol": None, "min_cosine": -1, "min_agreement": None}})
    _, res = step(Compare(loose), tmp_path, "loose", reference=models["torch"], models=[models["other"]])
    assert res.gate_failures == []


def end2end_model(tmp_path, name, shift, meta):
    """An ONNX model ignoring its input and returning two fixed detections (with 2 keypoints), shifted by `shift`."""
    import onnx
    from onnx import helper, numpy_helper

    boxes = np.array([[[10, 10, 30, 40], [35, 5, 60, 25], [0, 0, 0, 0]]], np.float32)
    outputs = {"num_dets": np.array([[2]], np.int32), "boxes": boxes + [shift, 0, shift, 0],
               "scores": np.array([[0.9, 0.6, 0]], np.float32), "classes": np.array([[0, 1, 0]], np.int32),
               "keypoints": np.array([[[[15, 20, 1], [25, 30, 1]], [[40, 10, 1], [50, 20, 1]], [[0, 0, 0]] * 2]],
                                     np.float32) + [shift, 0, 0]}
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n)) for n, v in outputs.items()]
    graph = helper.make_graph(nodes, "constant",
                              [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for n, v in outputs.items()])
    d = tmp_path / name
    d.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), d / "model.onnx")
    return Artifact("onnx", d, "model.onnx", meta, name)


def test_end2end_models_are_compared_by_detections(models, tmp_path):
    base = {"end2end": True, "names": ["a", "b"], "head": {"type": "yolov5_pose", "nc": 2, "nk": 2},
            "preprocess": models["torch"].meta["preprocess"]}
    perfect = end2end_model(tmp_path, "perfect", 0, {**base, "precision": "fp32"})
    in_graph_nms = {"score_threshold": 0.5, "iou_threshold": 0.7, "max_detections": 8}
    shifted = end2end_model(tmp_path, "shifted", 12, {**base, "precision": "int8", "postprocess": in_graph_nms})
    cfg = CompareConfig(data=models["images"], num=1, onnx_backends=["onnxruntime"])
    art, res = step(Compare(cfg), tmp_path, "cmp", reference=perfect, models=[perfect, shifted])
    rec = json.loads(art.file.read_text())
    same, moved = rec["models"]
    assert same["outputs"] == {} and same["detections"]["agreement"] == 1.0
    assert same["detections"]["max_kpt_px"] == 0.0 and same["passed"]
    # the reference goes through the model's own NMS settings, with the higher score floor
    assert moved["detections"]["nms"] == {"conf": 0.5, "iou": 0.7, "max_det": 8, "class_agnostic": False,
                                          "pre_top_k": None}
    assert same["detections"]["nms"]["conf"] == 0.25
    # shifted by 12 px, the boxes overlap their originals by IoU 0.25 and 0.35: no match
    assert moved["detections"]["reference_count"] == 2 and moved["detections"]["matched"] == 0
    assert moved["detections"]["mean_iou"] is None
    assert len(res.gate_failures) == 1 and "detections agree 0.000 (0 matched of 2" in res.gate_failures[0]
    assert "(int8 tolerance)" in res.gate_failures[0]


def test_mismatched_preprocessing_is_refused(models, tmp_path):
    odd = Artifact("onnx", models["onnx"].path, "model.onnx",
                   {**models["onnx"].meta, "preprocess": {**models["onnx"].meta["preprocess"], "size": [32, 32]}}, "x")
    with pytest.raises(ConvertError, match="preprocesses images differently"):
        step(Compare(CompareConfig(data=models["images"])), tmp_path, "cmp", reference=models["torch"], models=[odd])


def test_agreement_matches_by_class_and_iou():
    box = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    ref = [{"boxes": box, "scores": np.array([0.9, 0.8]), "classes": np.array([0, 1])},
           {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}]
    other = [{"boxes": box + [1, 0, 1, 0], "scores": np.array([0.85, 0.8]), "classes": np.array([0, 0])},
             {"boxes": box[:1], "scores": np.array([0.5]), "classes": np.array([0])}]
    a = agreement(ref, other, match_iou=0.5)
    # image 0: the class-0 boxes match (IoU 9/11); the second differs in class; image 1: one extra
    assert a["matched"] == 1 and a["agreement"] == pytest.approx(1 / 3)
    assert a["count_diff_max"] == 1 and a["images_with_count_diff"] == 1
    assert a["mean_iou"] == pytest.approx(90 / 110) and a["max_score_diff"] == pytest.approx(0.05)
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}]
    assert agreement(empty, empty)["agreement"] == 1.0
