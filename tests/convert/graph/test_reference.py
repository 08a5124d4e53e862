"""TensorRT NMS plugin graphs without TensorRT: structure, plugin references, and substituted semantics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from convert import postprocess as pp
from convert.graph.end2end import make_end2end
from convert.graph.nms import TRT_DOMAIN, plugin_threshold
from convert.graph.reference import PLUGINS, efficient_nms, efficient_nms_onnx, run_with_references
from convert.onnxutil import ort_session

from synthetic import synthetic_head, synthetic_model

BOXES = np.array([[[0, 0, 4, 1], [0, 0, 2, 1], [10, 10, 11, 11], [10, 10, 11, 11], [20, 20, 21, 21]]], np.float32)


def test_efficient_nms_reference_compares_with_greater_or_equal():
    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.7, 0.1], [0.25, 0.0]]], np.float32)
    num, boxes, sc, cls = efficient_nms(BOXES, scores, score_threshold=0.25, iou_threshold=0.5, max_output_boxes=10)
    # IoU(0, 1) == 0.5 suppresses 1; 3 is a duplicate of 2 (equal score: element order); 0.25 >= 0.25 is kept
    assert num.tolist() == [[3]] and sc[0, :3].tolist() == pytest.approx([0.9, 0.7, 0.25])
    np.testing.assert_array_equal(boxes[0, :3], BOXES[0, [0, 2, 4]])
    assert cls.dtype == np.int32 and not boxes[0, 3:].any()
    # with the thresholds the graph passes (next float32 up), it is the strict comparison of ONNX NMS
    num, *_ = efficient_nms(BOXES, scores, score_threshold=plugin_threshold(0.25),
                            iou_threshold=plugin_threshold(0.5), max_output_boxes=10)
    want = pp.select(pp.Candidates(BOXES, scores), pp.NMSSettings(0.25, 0.5, 10))
    assert num[0, 0] == want.num_dets[0, 0] == 3


def test_efficient_nms_reference_options():
    scores = np.array([[[0.9, 0.8], [0.6, 0.95], [0.1, 0.1], [0.3, 0.2], [0.5, 0.4]]], np.float32)
    kw = {"score_threshold": 0.15, "iou_threshold": 0.4, "max_output_boxes": 10}
    num, _, _, cls = efficient_nms(BOXES, scores, **kw)
    assert num[0, 0] == 6  # per class: (0,c0) (1,c1) (0,c1)... box 1 vs 0 IoU 0.5 across classes does not count
    num, _, sc, cls = efficient_nms(BOXES, scores, class_agnostic=1, **kw)
    assert num[0, 0] == 3 and cls[0, :3].tolist() == [1, 0, 0] and sc[0, 0] == np.float32(0.95)
    num, _, _, cls = efficient_nms(BOXES, scores, background_class=0, **kw)
    assert set(cls[0, :num[0, 0]].tolist()) == {1}
    centers = np.concatenate([(BOXES[..., :2] + BOXES[..., 2:]) / 2, BOXES[..., 2:] - BOXES[..., :2]], -1)
    for a, b in zip(efficient_nms(centers, scores, box_coding=1, **kw), efficient_nms(BOXES, scores, **kw)):
        np.testing.assert_array_equal(a, b)
    assert efficient_nms(BOXES, scores, max_candidates=2, **kw)[0][0, 0] == 2
    assert efficient_nms(BOXES, scores, **{**kw, "max_output_boxes": 2})[0][0, 0] == 2


def test_efficient_nms_onnx_reference_pads_rows():
    scores = np.zeros((2, 5, 2), np.float32)
    scores[0, [0, 2], 1] = 0.9, 0.8
    (rows,) = efficient_nms_onnx(BOXES.repeat(2, 0), scores, score_threshold=0.5, iou_threshold=0.5,
                                 max_output_boxes_per_class=3)
    assert rows.shape == (6, 3) and rows.dtype == np.int32
    assert rows.tolist() == [[0, 1, 0], [0, 1, 2]] + [[0, 1, 2]] * 4  # copies of the last valid row
    (rows,) = efficient_nms_onnx(BOXES, np.zeros((1, 5, 2), np.float32), score_threshold=0.5, iou_threshold=0.5,
                                 max_output_boxes_per_class=3)
    assert (rows == -1).all()


def trt_case(backend: str, nk: int, agnostic: bool):
    head = synthetic_head(nc=3, nk=nk)
    raw = synthetic_model(head, size=(64, 96), batch=None, seed=2)
    settings = pp.NMSSettings(0.3, 0.45, 25, pre_top_k=150 if nk else None, class_agnostic=agnostic)
    x = np.random.default_rng(3).random((2, 3, 64, 96), dtype=np.float32)
    return head, raw, settings, x


CASES = [("efficient_nms_trt", 0, False), ("efficient_nms_trt", 0, True), ("efficient_nms_onnx_trt", 0, False),
         ("efficient_nms_onnx_trt", 0, True), ("efficient_nms_onnx_trt", 4, False), ("efficient_nms_onnx_trt", 4, True)]


@pytest.mark.parametrize("backend,nk,agnostic", CASES)
def test_trt_graph_structure(backend, nk, agnostic):
    head, raw, settings, _ = trt_case(backend, nk, agnostic)
    model = make_end2end(raw, head, settings, backend)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert {o.domain: o.version for o in model.opset_import}[TRT_DOMAIN] == 1
    plugins = [n for n in model.graph.node if n.domain == TRT_DOMAIN]
    want_op = "EfficientNMS_TRT" if backend == "efficient_nms_trt" else "EfficientNMS_ONNX_TRT"
    assert [n.op_type for n in plugins] == [want_op]
    assert "NonMaxSuppression" not in {n.op_type for n in model.graph.node}
    outputs = {o.name: o.type.tensor_type for o in inferred.graph.output}
    names = list(pp.OUTPUT_NAMES[:4]) + (["keypoints"] if nk else [])
    assert list(outputs) == names
    dims = {n: [d.dim_value or d.dim_param for d in t.shape.dim] for n, t in outputs.items()}
    assert dims["num_dets"] == ["batch", 1] and dims["boxes"] == ["batch", 25, 4] and dims["scores"] == ["batch", 25]
    assert outputs["num_dets"].elem_type == outputs["classes"].elem_type == onnx.TensorProto.INT32
    assert outputs["boxes"].elem_type == outputs["scores"].elem_type == onnx.TensorProto.FLOAT
    assert not nk or dims["keypoints"] == ["batch", 25, nk, 3]
    # the plugin's inputs: boxes [B, N, 4] corners, scores [B, N, C] (C = 1 for the agnostic ONNX variant)
    values = {v.name: v.type.tensor_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    box_in, score_in = (values[i] for i in plugins[0].input)
    assert box_in.shape.dim[2].dim_value == 4 and box_in.elem_type == onnx.TensorProto.FLOAT
    c = 1 if backend == "efficient_nms_onnx_trt" and agnostic else 3
    assert score_in.shape.dim[2].dim_value == c


@pytest.mark.parametrize("backend,nk,agnostic", CASES)
def test_trt_graph_with_reference_plugin_equals_onnx_backend(backend, nk, agnostic):
    head, raw, settings, x = trt_case(backend, nk, agnostic)
    sess = ort_session(make_end2end(raw, head, settings, "onnx").SerializeToString())
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))
    assert want["num_dets"].min() > 0
    got = run_with_references(make_end2end(raw, head, settings, backend), {"images": x})
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_index_rows_in_any_order_give_the_same_detections():
    """The ONNX plugin writes rows of different images in whatever order their blocks finish."""
    head, raw, settings, x = trt_case("efficient_nms_onnx_trt", 4, False)
    model = make_end2end(raw, head, settings, "efficient_nms_onnx_trt")

    def shuffled(*args, **kw):
        (rows,) = efficient_nms_onnx(*args, **kw)
        kept = np.unique(rows[rows[:, 0] >= 0], axis=0)  # the distinct kept (batch, class, candidate) rows
        assert set(kept[:, 0]) == {0, 1}
        out = np.empty_like(rows)
        out[:len(kept)] = kept[np.random.default_rng(0).permutation(len(kept))]
        out[len(kept):] = out[len(kept) - 1]
        return [out]

    want = run_with_references(model, {"images": x})
    got = run_with_references(model, {"images": x}, {**PLUGINS, "EfficientNMS_ONNX_TRT": shuffled})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
