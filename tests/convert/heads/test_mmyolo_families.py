"""The distance and YOLOX head families (mmyolo's anchor-free heads): graph decode == numpy decode ==
the formulas of mmyolo's ``predict_by_feat``, cell by cell; end-to-end == host post-processing.
No mmyolo needed (synthetic maps)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convert import heads
from convert import postprocess as pp
from convert.graph.end2end import make_end2end
from convert.onnxutil import ort_session

from synthetic import decode_model, synthetic_model


def distance_head(nc=3, bins=8, offset=0.5, strides=(8, 16, 32)):
    return {"type": "distance", "strides": list(strides), "nc": nc, "bins": bins, "offset": offset,
            "names": [f"c{i}" for i in range(nc)],
            "outputs": [f"p{int(math.log2(s))}_{p}" for s in strides for p in ("box", "cls")]}


def yolox_head(nc=3, strides=(8, 16, 32)):
    return {"type": "yolox", "strides": list(strides), "nc": nc, "names": [f"c{i}" for i in range(nc)],
            "outputs": [f"p{int(math.log2(s))}_{p}" for s in strides for p in ("box", "cls", "obj")]}


def run(model, x):
    return ort_session(model.SerializeToString()).run(None, {"images": x})


X = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)


@pytest.mark.parametrize("head", [distance_head(), distance_head(bins=0, offset=0.0), yolox_head()],
                         ids=["dfl", "direct", "yolox"])
def test_graph_decode_equals_host_decode(head):
    raw = synthetic_model(head, size=(64, 96), batch=2, logit_scale=1.0)
    got, maps = run(decode_model(raw, head), X), run(raw, X)
    want = heads.decode(maps, head)
    n = 8 * 12 + 4 * 6 + 2 * 3
    assert want.boxes.shape == (2, n, 4) and want.scores.shape == (2, n, 3)
    np.testing.assert_allclose(got[0], want.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got[1], want.scores.transpose(0, 2, 1), atol=1e-6)


def test_distance_decode_follows_mmyolo_formulas_cell_by_cell():
    """DFL expectation over bins 0..R-1, point (x + offset) * stride, sides at distance * stride."""
    rng = np.random.default_rng(1)
    for bins, offset in [(4, 0.5), (0, 0.0)]:
        head = heads.parse(distance_head(nc=2, bins=bins, offset=offset, strides=(16,)))
        box = rng.normal(size=(1, 4 * bins or 4, 2, 3)).astype(np.float32)
        cls = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)
        cands = head.decode([box, cls])
        y, x = 1, 2
        if bins:
            logits = box[0, :, y, x].reshape(4, bins).astype(np.float64)
            d = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True) * np.arange(bins)).sum(1)
        else:
            d = box[0, :, y, x]
        px, py = (x + offset) * 16, (y + offset) * 16
        np.testing.assert_allclose(cands.boxes[0, y * 3 + x], [px - d[0] * 16, py - d[1] * 16, px + d[2] * 16,
                                                               py + d[3] * 16], rtol=1e-5)
        np.testing.assert_allclose(cands.scores[0, y * 3 + x], 1 / (1 + np.exp(-cls[0, :, y, x])), rtol=1e-6)


def test_yolox_decode_follows_mmyolo_formulas_cell_by_cell():
    """Centre (t + grid) * stride with no 0.5 offset, size exp(t) * stride, score sigmoid(cls) * sigmoid(obj)."""
    rng = np.random.default_rng(2)
    head = heads.parse(yolox_head(nc=2, strides=(8,)))
    box, cls, obj = (rng.normal(size=(1, c, 2, 3)).astype(np.float32) for c in (4, 2, 1))
    cands = head.decode([box, cls, obj])
    y, x = 1, 2
    t = box[0, :, y, x]
    cx, cy, w, h = (t[0] + x) * 8, (t[1] + y) * 8, np.exp(t[2]) * 8, np.exp(t[3]) * 8
    np.testing.assert_allclose(cands.boxes[0, y * 3 + x], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5)
    sig = lambda v: 1 / (1 + np.exp(-v))
    np.testing.assert_allclose(cands.scores[0, y * 3 + x], sig(cls[0, :, y, x]) * sig(obj[0, 0, y, x]), rtol=1e-6)


@pytest.mark.parametrize("head", [distance_head(), yolox_head()], ids=["distance", "yolox"])
def test_end_to_end_model_matches_host_postprocessing(head):
    raw = synthetic_model(head, size=(64, 96), batch=2, logit_scale=1.5)
    settings = pp.NMSSettings(score_threshold=0.3, iou_threshold=0.5, max_detections=20)
    e2e = make_end2end(raw, head, settings, "onnx")
    outs = dict(zip(["num_dets", "boxes", "scores", "classes"], run(e2e, X)))
    got, want = pp.Detections.from_outputs(outs), heads.postprocess(run(raw, X), head, settings)
    for i in range(2):
        assert len(want.image(i)) > 0
        assert pp.match(want.image(i), got.image(i), tol=1e-3).same


def test_map_channel_mismatch_is_reported():
    head = heads.parse(distance_head(bins=16))
    with pytest.raises(Exception, match="has 4 channels.*says 64"):
        head.check_maps([(1, 4, 8, 8), (1, 3, 8, 8)] * 3)
