"""Host-side post-processing: decode against the model code, NMS semantics, PyTorch reference, letterbox inverse."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from convert import heads
from convert import postprocess as pp
from convert.errors import ConvertError
from convert.heads.reference import torch_reference
from convert.preprocess import preprocess


def decoded(batch: int = 2, n: int = 400, nc: int = 4, nk: int = 0, seed: int = 0) -> np.ndarray:
    """A decoded-layout batch (cx, cy, w, h, obj=1, classes, keypoints): overlapping boxes in clusters,
    many class scores exactly tied."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, 300, (batch, 8, 2))
    xy = (np.take_along_axis(centers, rng.integers(0, 8, (batch, n, 1)), 1) + rng.normal(0, 8, (batch, n, 2)))
    wh = rng.uniform(8, 60, (batch, n, 2))
    out = np.concatenate([xy, wh, np.ones((batch, n, 1)), rng.uniform(0, 1, (batch, n, nc)) ** 2,
                          rng.uniform(0, 320, (batch, n, 3 * nk))], -1).astype(np.float32)
    out[:, 1::5, 5:5 + nc] = out[:, 0:1, 5:5 + nc]
    return out


def as_candidates(d: np.ndarray, nc: int, nk: int) -> pp.Candidates:
    """The candidates of a decoded batch, computed as the decoders compute them."""
    half = d[..., 2:4] / 2
    boxes = np.concatenate([d[..., 0:2] - half, d[..., 0:2] + half], -1)
    kpts = d[..., 5 + nc:].reshape(*d.shape[:2], nk, 3) if nk else None
    return pp.Candidates(boxes, d[..., 4:5] * d[..., 5:5 + nc], kpts)


SETTINGS = [pp.NMSSettings(0.2, 0.45, 50), pp.NMSSettings(0.05, 0.6, 300, pre_top_k=100),
            pp.NMSSettings(0.1, 0.3, 10, class_agnostic=True), pp.NMSSettings(0.0, 0.5, 30, 64, True)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("nk", [0, 3])
def test_torch_reference_equals_host_exactly(settings, nk):
    torch = pytest.importorskip("torch")
    d = decoded(nk=nk)
    host = pp.select(as_candidates(d, 4, nk), settings)
    head = {"type": "yolov5_pose" if nk else "yolov5", "nc": 4, "nk": nk, "na": 1, "strides": [8],
            "anchors": [[[1, 1]]]}
    ref = torch_reference(torch.from_numpy(d), head, settings)
    assert host.num_dets.min() > 0
    for name, arr in host.outputs().items():
        np.testing.assert_array_equal(ref.outputs()[name], arr, err_msg=name)


def test_pre_top_k_commutes_with_the_score_threshold():
    cands = as_candidates(decoded(n=600, nk=2, seed=4), 4, 2)
    s = pp.NMSSettings(0.3, 0.5, 40, pre_top_k=120)
    best = cands.scores.max(2)
    firsts = []
    for b in range(2):  # threshold first, then the top-k of what is left
        passing = np.flatnonzero(best[b] > np.float32(0.3))
        order = passing[np.argsort(-best[b, passing], kind="stable")][:120]
        assert len(passing) > 120
        firsts.append(pp.select(pp.Candidates(cands.boxes[b:b + 1, order], cands.scores[b:b + 1, order],
                                              cands.keypoints[b:b + 1, order]), replace(s, pre_top_k=None)))
    got = pp.select(cands, s)
    for b, first in enumerate(firsts):
        for name, arr in first.outputs().items():
            np.testing.assert_array_equal(got.outputs()[name][b], arr[0], err_msg=name)


def test_nms_semantics_on_a_small_case():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.6, 0.95], [0.3, 0.31]]], np.float32)
    cands = pp.Candidates(boxes, scores)
    aware = pp.select(cands, pp.NMSSettings(0.3, 0.5, 10)).image(0)
    # class 0: 0 kept, 1 and 2 overlap it; class 1: 2 kept, 1 overlaps it, 3 kept; 3 at exactly 0.3 is out for class 0
    assert list(zip(aware.classes.tolist(), aware.scores.tolist())) == [(1, pytest.approx(0.95)),
                                                                         (0, pytest.approx(0.9)),
                                                                         (1, pytest.approx(0.31))]
    agnostic = pp.select(cands, pp.NMSSettings(0.3, 0.5, 10, class_agnostic=True)).image(0)
    assert agnostic.classes.tolist() == [1, 1] and len(pp.select(cands, pp.NMSSettings(0.3, 0.5, 1)).image(0)) == 1


def perturbed_model(arch: str, nc: int | None = None):
    """A random-init model whose objectness and class biases are raised, so many candidates overlap."""
    torch = pytest.importorskip("torch")
    from convert.models.yolo import build_model, load_arch

    model = build_model(load_arch(arch), nc=nc, seed=0)
    head = model.head
    with torch.no_grad():
        for conv in head.m:
            b = conv.bias.view(head.na, -1)
            b[:, 4:] = torch.randn_like(b[:, 4:], generator=torch.Generator().manual_seed(0)) * 0.5
    return model


@pytest.mark.parametrize("arch,nc", [("yolov5n", 3), ("yolov5s-pose", None)])
def test_host_postprocess_agrees_with_model_decode_and_torch_reference(arch, nc):
    torch = pytest.importorskip("torch")
    model = perturbed_model(arch, nc)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    settings = pp.NMSSettings(0.3, 0.45, 300)  # K above the count: no near-tie at the K boundary
    with torch.no_grad():
        ref = torch_reference(model(x), model.head_meta(), settings)
        maps = model.truncate_head()(x)
    host = heads.postprocess([m.numpy() for m in maps], model.head_meta(), settings)
    assert ref.num_dets.min() >= 10 and ref.num_dets.max() < 300
    for i in range(2):
        agr = pp.match(ref.image(i), host.image(i), tol=1e-3)
        assert agr.same, agr
    assert (host.keypoints is not None) == bool(model.head.nk)


def test_decode_matches_model_code():
    torch = pytest.importorskip("torch")
    from convert.models.yolo import decode_raw

    model = perturbed_model("yolov5s-pose").truncate_head()
    with torch.no_grad():
        maps = model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    meta = model.head_meta()
    d = decode_raw(maps, meta).numpy()
    cands = heads.decode([m.numpy() for m in maps], meta)
    np.testing.assert_allclose(cands.boxes, as_candidates(d, 1, 17).boxes, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(cands.scores, d[..., 4:5] * d[..., 5:6], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cands.keypoints, d[..., 6:].reshape(1, -1, 17, 3), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("resize,minimal_pad", [("letterbox", False), ("letterbox", True), ("stretch", False)])
@pytest.mark.parametrize("h,w", [(150, 260), (300, 170)])
def test_detections_map_back_through_the_transform(resize, minimal_pad, h, w):
    """A white rectangle drawn on a non-square image is found in the network input and mapped back."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(0.3 * w), int(0.25 * h), int(0.65 * w), int(0.7 * h)
    img[y1:y2, x1:x2] = 255
    x, tf = preprocess(img, {"size": [128, 160], "resize": resize, "minimal_pad": minimal_pad, "stride": 32,
                             "pad_value": 0})
    net_h, net_w = x.shape[2:]
    assert (net_h, net_w) == (128, 160) or (minimal_pad and net_h % 32 == 0 and net_w % 32 == 0)
    ys, xs = np.nonzero(x[0, 0] > 0.5)
    net_box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    kpts = np.array([[[net_box[0, 0], net_box[0, 1], 0.8], [net_box[0, 2], net_box[0, 3], 0.3]]], np.float32)
    det = pp.ImageDetections(net_box, np.array([0.9], np.float32), np.array([2], np.int32), kpts)
    back = det.to_original(tf)
    tol = 2 / min(tf.gain)  # the rectangle's edges blur over about a network pixel when resampled
    np.testing.assert_allclose(back.boxes[0], [x1, y1, x2, y2], atol=tol)
    np.testing.assert_allclose(back.keypoints[0, :, :2], [[x1, y1], [x2, y2]], atol=tol)
    assert back.keypoints[0, :, 2].tolist() == pytest.approx([0.8, 0.3]) and back.classes.tolist() == [2]
    # exact inverse of net = orig * gain + pad, boxes clipped to the image
    pts = np.array([[10.5, 20.25], [w - 3.0, h - 7.0]], np.float32)
    net = pts * np.float32(tf.gain) + np.float32(tf.pad)
    np.testing.assert_allclose(tf.points_to_original(net), pts, atol=1e-3)
    out = pp.ImageDetections(np.array([[-50, -50, 1e4, 1e4]], np.float32), np.ones(1), np.zeros(1, np.int32))
    assert out.to_original(tf).boxes[0].tolist() == [0, 0, w, h]


def test_match_pairs_by_class_and_box():
    a = pp.ImageDetections(np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32), np.array([0.9, 0.8]),
                           np.array([1, 2], np.int32))
    b = replace(a, boxes=a.boxes[::-1] + np.float32(5e-4), classes=a.classes[::-1], scores=a.scores[::-1])
    assert pp.match(a, b).same and pp.match(a, b).max_box_diff == pytest.approx(5e-4, rel=1e-2)
    assert not pp.match(a, replace(b, classes=np.array([2, 2], np.int32))).same
    assert pp.match(a, replace(b, boxes=b.boxes + 1)).matched == 0


def test_outputs_round_trip_and_errors():
    dets = pp.select(as_candidates(decoded(nk=2), 4, 2), pp.NMSSettings(0.2, 0.5, 20))
    again = pp.Detections.from_outputs({**dets.outputs(), "extra": np.zeros(1)})
    assert list(again.outputs()) == list(pp.OUTPUT_NAMES) and len(again) == 2
    assert len(again.image(1)) == int(dets.num_dets[1, 0])
    with pytest.raises(ConvertError, match="scores"):
        pp.Detections.from_outputs({"num_dets": dets.num_dets, "boxes": dets.boxes})
    with pytest.raises(ConvertError, match="not supported"):
        heads.decode([], {"type": "yolov10"})
    with pytest.raises(ConvertError, match="no head metadata"):
        heads.decode([], None)
    with pytest.raises(ConvertError, match="channels"):
        heads.decode([np.zeros((1, 10, 2, 2), np.float32)], {"type": "yolov5", "nc": 1, "na": 3, "strides": [8],
                                                          "anchors": [[[1, 1]] * 3]})


@pytest.mark.parametrize("block", [1, 7, 256])
def test_greedy_nms_in_blocks_keeps_what_box_by_box_nms_keeps(monkeypatch, block):
    from convert import postprocess as pp

    def box_by_box(boxes, thr, limit):
        areas, alive, keep = pp.box_areas(boxes), np.ones(len(boxes), bool), []
        for i in range(len(boxes)):
            if alive[i]:
                keep.append(i)
                if len(keep) == limit:
                    break
                rest = np.flatnonzero(alive[i + 1:]) + i + 1
                alive[rest[pp.iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest]) > np.float32(thr)]] = False
        return keep

    monkeypatch.setattr(pp, "NMS_BLOCK", block)
    rng = np.random.default_rng(block)
    for trial in range(40):
        m = int(rng.integers(0, 300))
        xy, wh = rng.random((m, 2)) * 100, rng.random((m, 2)) * 40
        wh[: m // 4 if trial % 3 == 0 else 0] = 0  # degenerate boxes
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        boxes[m // 2: m // 2 + 5] = boxes[:5][: max(0, min(5, m - m // 2))]  # exact duplicates
        for thr, limit in [(0.45, 300), (0.7, 5), (0.0, 1000)]:
            assert pp.greedy_nms(boxes, thr, limit).tolist() == box_by_box(boxes, thr, limit)
