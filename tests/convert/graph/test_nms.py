"""NMS rewrites on graph-input candidates: op types left, and exact agreement with the host-side semantics."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from convert import postprocess as pp
from convert.errors import ConvertError
from convert.graph.builder import Builder
from convert.graph.decode import GraphCandidates
from convert.graph.nms import TRT_DOMAIN, append_nms, plugin_threshold
from convert.onnxutil import ort_session


def nms_model(settings: pp.NMSSettings, backend: str = "onnx", nc: int = 3, nk: int = 0,
              opset: int = 17) -> onnx.ModelProto:
    """A model whose inputs are decoded candidates (scores class-major) and whose outputs are the detections."""
    graph = gs.Graph(opset=opset)
    boxes = gs.Variable("cand_boxes", np.float32, ["B", "N", 4])
    scores = gs.Variable("cand_scores", np.float32, ["B", nc, "N"])
    kpts = gs.Variable("cand_kpts", np.float32, ["B", "N", nk, 3]) if nk else None
    graph.inputs = [boxes, scores] + ([kpts] if nk else [])
    dets = append_nms(Builder(graph, "postprocess"), GraphCandidates(boxes, scores, kpts, nc, nk, "B"),
                      settings, backend)
    for var, name in zip(dets.as_list(), pp.OUTPUT_NAMES):
        var.name = name
    graph.outputs = dets.as_list()
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 8  # graphsurgeon writes the newest IR version, which ONNX Runtime may not read yet
    if backend != "onnx":
        model.opset_import.append(onnx.helper.make_opsetid(TRT_DOMAIN, 1))
    onnx.checker.check_model(model, full_check=True)
    return model


def run_ort(model: onnx.ModelProto, cands: pp.Candidates) -> pp.Detections:
    feed = {"cand_boxes": cands.boxes, "cand_scores": cands.scores.transpose(0, 2, 1)}
    if cands.keypoints is not None:
        feed["cand_kpts"] = cands.keypoints
    sess = ort_session(model.SerializeToString())
    return pp.Detections.from_outputs(dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed))))


def clustered(batch: int = 2, n: int = 300, nc: int = 3, nk: int = 0, seed: int = 0, ties: bool = True
              ) -> pp.Candidates:
    """Candidates in a few clusters of overlapping boxes, optionally with many exactly tied scores."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, 180, (batch, 6, 2))
    pick = rng.integers(0, 6, (batch, n))
    xy = np.take_along_axis(centers, pick[..., None], 1) + rng.normal(0, 6, (batch, n, 2))
    wh = rng.uniform(10, 40, (batch, n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, n, nc)).astype(np.float32) ** 2
    if ties:
        scores[:, 1::7] = scores[:, 0:1]
    kpts = rng.uniform(0, 200, (batch, n, nk, 3)).astype(np.float32) if nk else None
    return pp.Candidates(boxes, scores, kpts)


def assert_same(got: pp.Detections, want: pp.Detections) -> None:
    for name, arr in want.outputs().items():
        np.testing.assert_array_equal(got.outputs()[name], arr, err_msg=name)


SETTINGS = [
    pp.NMSSettings(0.3, 0.5, 20),
    pp.NMSSettings(0.3, 0.5, 20, class_agnostic=True),
    pp.NMSSettings(0.05, 0.3, 300, pre_top_k=64),
    pp.NMSSettings(0.0, 0.7, 7, pre_top_k=1000, class_agnostic=True),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"t{s.score_threshold}-K{s.max_detections}-"
                         f"pre{s.pre_top_k}-{'agn' if s.class_agnostic else 'cls'}")
@pytest.mark.parametrize("nk", [0, 2])
def test_onnx_nms_matches_host_exactly(settings, nk):
    cands = clustered(nk=nk)
    model = nms_model(settings, nk=nk)
    ops = {n.op_type for n in model.graph.node}
    assert {"NonMaxSuppression", "TopK", "GatherND", "Gather"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert sum(n.op_type == "TopK" for n in model.graph.node) == (1 if settings.pre_top_k is None else 2)
    got, want = run_ort(model, cands), pp.select(cands, settings)
    assert want.num_dets.min() > 0
    assert_same(got, want)
    if nk:  # keypoints follow their boxes: the row of each detection's candidate
        for b in range(2):
            for j in range(int(want.num_dets[b, 0])):
                row = np.flatnonzero((cands.boxes[b] == want.boxes[b, j]).all(1))
                assert any((cands.keypoints[b, r] == got.keypoints[b, j]).all() for r in row)


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_opsets_with_either_reduce_signature(opset):
    # ReduceMax takes axes as an attribute before opset 18 and as an input from 18 on
    cands = clustered(nk=1, seed=2)
    s = pp.NMSSettings(0.2, 0.5, 15, pre_top_k=100, class_agnostic=True)
    assert_same(run_ort(nms_model(s, nk=1, opset=opset), cands), pp.select(cands, s))


def test_thresholds_are_strict_and_ties_go_to_the_lower_index():
    # boxes 0/1: IoU exactly 0.5 (2/4); boxes 2/3 identical with equal scores; box 4 scores exactly at the threshold
    boxes = np.array([[[0, 0, 4, 1], [0, 0, 2, 1], [10, 10, 11, 11], [10, 10, 11, 11], [20, 20, 21, 21]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.7], [0.25]]], np.float32)
    cands = pp.Candidates(boxes, scores)
    s = pp.NMSSettings(0.25, 0.5, 10)
    want = pp.select(cands, s)
    assert want.num_dets[0, 0] == 3  # 0 and 1 kept (IoU == threshold), 2 kept over 3, 4 not above threshold
    np.testing.assert_array_equal(want.boxes[0, :3], boxes[0, [0, 1, 2]])
    assert_same(run_ort(nms_model(s, nc=1), cands), want)


def test_padding_few_candidates_and_empty_images():
    rng = np.random.default_rng(1)
    boxes = np.sort(rng.uniform(0, 50, (2, 4, 4)).astype(np.float32).reshape(2, 4, 2, 2), 2).reshape(2, 4, 4)
    scores = np.array([[[0.9, 0.1], [0.1, 0.1], [0.2, 0.6], [0.1, 0.1]], [[0.1, 0.2]] * 4], np.float32)
    cands = pp.Candidates(boxes, scores)
    s = pp.NMSSettings(0.5, 0.5, 300)  # K > C*N: the padded TopK still has K columns
    got = run_ort(nms_model(s, nc=2), cands)
    assert got.num_dets.ravel().tolist() == [2, 0]
    assert got.boxes.shape == (2, 300, 4) and got.classes.dtype == np.int32 and got.num_dets.dtype == np.int32
    assert got.classes[0, :2].tolist() == [0, 1] and not got.boxes[0, 2:].any() and not got.scores[1].any()
    assert_same(got, pp.select(cands, s))
    nothing = run_ort(nms_model(pp.NMSSettings(1.0, 0.5, 5), nc=2), cands)  # no score can exceed 1
    assert nothing.num_dets.tolist() == [[0], [0]] and not nothing.boxes.any() and nothing.boxes.shape == (2, 5, 4)


def test_max_detections_caps_over_classes_by_score():
    cands = clustered(batch=1, n=400, nc=5, seed=3)
    s = pp.NMSSettings(0.01, 0.9, 5)
    want = pp.select(cands, s)
    assert want.num_dets[0, 0] == 5 and np.all(np.diff(want.scores[0]) <= 0)
    assert_same(run_ort(nms_model(s, nc=5), cands), want)


def test_openvino_runs_the_same_graph():
    # OpenVINO's TopK orders equal scores arbitrarily (documented in convert.postprocess): no ties here
    ov = pytest.importorskip("openvino")
    cands = clustered(nk=2, seed=5, ties=False)
    s = pp.NMSSettings(0.2, 0.45, 30, pre_top_k=200)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(nms_model(s, nk=2).SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({"cand_boxes": cands.boxes, "cand_scores": cands.scores.transpose(0, 2, 1),
                    "cand_kpts": cands.keypoints})
    got = pp.Detections.from_outputs({o.get_any_name(): res[o] for o in compiled.outputs})
    assert_same(got, pp.select(cands, s))


def test_trt_plugins_nodes_and_attributes():
    s = pp.NMSSettings(0.25, 0.45, 100, class_agnostic=True)
    (node,) = [n for n in nms_model(s, "efficient_nms_trt").graph.node if n.domain == TRT_DOMAIN]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "EfficientNMS_TRT" and len(node.input) == 2 and len(node.output) == 4
    assert attrs["max_output_boxes"] == 100 and attrs["background_class"] == -1 and attrs["class_agnostic"] == 1
    assert attrs["score_activation"] == 0 and attrs["box_coding"] == 0 and attrs["plugin_version"] == b"1"
    # the plugin keeps score >= t and drops IoU >= t: the next float32 up makes that > t
    assert np.float32(attrs["score_threshold"]) == np.nextafter(np.float32(0.25), np.float32(1))
    assert np.float32(attrs["iou_threshold"]) > np.float32(0.45) and plugin_threshold(0.45) == attrs["iou_threshold"]
    model = nms_model(pp.NMSSettings(0.25, 0.45, 50), "efficient_nms_onnx_trt", nk=3)
    (node,) = [n for n in model.graph.node if n.domain == TRT_DOMAIN]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "EfficientNMS_ONNX_TRT" and attrs["max_output_boxes_per_class"] == 50
    assert attrs["center_point_box"] == 0 and "NonMaxSuppression" not in {n.op_type for n in model.graph.node}


def test_efficient_nms_trt_refuses_keypoints():
    with pytest.raises(ConvertError, match="keypoints"):
        nms_model(pp.NMSSettings(), "efficient_nms_trt", nk=2)
