"""The YOLOv8 head family: graph decode == numpy decode == the model code's (ultralytics) decode."""

from __future__ import annotations

import numpy as np
import pytest

from convert import heads
from convert import postprocess as pp
from convert.graph.end2end import make_end2end
from convert.graph.reference import run_with_references
from convert.onnxutil import ort_session

from synthetic import decode_model, synthetic_model, synthetic_yolov8_head

DECODE_OPS = {"Reshape", "Transpose", "Slice", "Sigmoid", "Softmax", "ReduceSum", "Mul", "Add", "Sub", "Div",
              "Concat", "Shape", "Squeeze", "Unsqueeze", "Range", "Cast", "Expand"}


def images(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, h, w), dtype=np.float32)


def run(model, x):
    return ort_session(model.SerializeToString()).run(None, {"images": x})


@pytest.mark.parametrize("nk", [0, 4])
def test_graph_decode_equals_host_decode(nk):
    head = synthetic_yolov8_head(nc=3, nk=nk, reg_max=8)
    raw = synthetic_model(head, size=(64, 96), batch=2)
    model = decode_model(raw, head)
    assert {n.op_type for n in model.graph.node} - {"AveragePool", "Conv"} <= DECODE_OPS
    x = images(2, 64, 96)
    got, maps = run(model, x), run(raw, x)
    want = heads.decode(maps, head)
    n = 8 * 12 + 4 * 6 + 2 * 3
    assert got[0].shape == (2, n, 4) and got[1].shape == (2, 3, n) and want.scores.shape == (2, n, 3)
    np.testing.assert_allclose(got[0], want.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got[1], want.scores.transpose(0, 2, 1), atol=1e-6)
    if nk:
        assert got[2].shape == (2, n, nk, 3)
        np.testing.assert_allclose(got[2], want.keypoints, rtol=1e-5, atol=1e-3)


def test_graph_decode_with_dynamic_input_size():
    head = synthetic_yolov8_head(nc=2, nk=2)
    raw = synthetic_model(head, batch=None, dynamic_hw=True)
    model = decode_model(raw, head)
    for b, h, w in [(1, 64, 96), (3, 96, 32)]:
        x = images(b, h, w, seed=h)
        got, want = run(model, x), heads.decode(run(raw, x), head)
        np.testing.assert_allclose(got[0], want.boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(got[2], want.keypoints, rtol=1e-5, atol=1e-3)


def test_host_decode_follows_the_ultralytics_formulas_cell_by_cell():
    """One cell decoded by hand: DFL expectation, centre-anchored distances, keypoints, sigmoid scores."""
    head = heads.parse(synthetic_yolov8_head(nc=2, nk=1, strides=(8,), reg_max=4))
    rng = np.random.default_rng(3)
    box, cls, kpt = rng.normal(size=(1, 16, 2, 3)), rng.normal(size=(1, 2, 2, 3)), rng.normal(size=(1, 3, 2, 3))
    cands = head.decode([box.astype(np.float32), cls.astype(np.float32), kpt.astype(np.float32)])
    y, x = 1, 2
    n = y * 3 + x
    logits = box[0, :, y, x].reshape(4, 4)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    d = (p * np.arange(4)).sum(1)  # l, t, r, b in cells
    ax, ay = x + 0.5, y + 0.5
    np.testing.assert_allclose(cands.boxes[0, n], [(ax - d[0]) * 8, (ay - d[1]) * 8, (ax + d[2]) * 8, (ay + d[3]) * 8],
                               rtol=1e-5)
    np.testing.assert_allclose(cands.scores[0, n], 1 / (1 + np.exp(-cls[0, :, y, x])), rtol=1e-6)
    k = kpt[0, :, y, x]
    np.testing.assert_allclose(cands.keypoints[0, n, 0], [(k[0] * 2 + x) * 8, (k[1] * 2 + y) * 8,
                                                          1 / (1 + np.exp(-k[2]))], rtol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "efficient_nms_onnx_trt"])
def test_end_to_end_model_matches_host_postprocessing(backend):
    head = synthetic_yolov8_head(nc=3, nk=2)
    raw = synthetic_model(head, size=(64, 96), batch=2, logit_scale=1.5)
    settings = pp.NMSSettings(0.3, 0.5, 50)
    e2e = make_end2end(raw, head, settings, backend)
    x = images(2, 64, 96, seed=5)
    got = run_with_references(e2e, {"images": x})  # TensorRT plugins by their numpy references
    host = heads.postprocess(run(raw, x), head, settings)
    assert host.num_dets.min() > 0
    names = [o.name for o in e2e.graph.output]
    dets = pp.Detections.from_outputs(dict(zip(names, got)) if isinstance(got, list) else got)
    for i in range(2):
        agr = pp.match(dets.image(i), host.image(i), tol=2e-3)
        assert agr.same, agr
