"""Preprocessing and mapping back: a point drawn on a non-square photo comes back where it was drawn."""

from __future__ import annotations

import numpy as np
import pytest

from convert.errors import ConvertError
from convert.preprocess import DEFAULT_PREPROCESS, preprocess


def _blob_centre(x: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre (continuous pixel coordinates) of the bright blob in a [1,3,H,W] input."""
    v = x[0, 0]
    w = np.clip(v - 0.5, 0, None)
    ys, xs = np.mgrid[0:v.shape[0], 0:v.shape[1]]
    return float((w * (xs + 0.5)).sum() / w.sum()), float((w * (ys + 0.5)).sum() / w.sum())


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("shape", [(720, 1280), (1080, 810), (333, 500)])
def test_points_map_back_to_where_they_were_drawn(resize, shape):
    h0, w0 = shape
    rng = np.random.default_rng(h0)
    pp = {**DEFAULT_PREPROCESS, "resize": resize, "size": [640, 640]}
    for _ in range(3):
        cx, cy = rng.uniform(40, w0 - 40), rng.uniform(40, h0 - 40)
        img = np.zeros((h0, w0, 3), np.uint8)
        r = 12  # a square blob, large enough to survive downscaling
        img[int(cy) - r:int(cy) + r, int(cx) - r:int(cx) + r] = 255
        want = (int(cx), int(cy))  # the blob's centre in continuous coordinates
        x, tf = preprocess(img, pp)
        assert x.shape == (1, 3, 640, 640)
        got = tf.points_to_original(np.array([_blob_centre(x)], np.float32))[0]
        # within half an original pixel plus one network pixel's worth of original pixels
        assert np.abs(got - want).max() <= 0.5 + 1 / min(tf.gain), (resize, shape, got, want)
        if resize == "letterbox":
            assert tf.gain[0] == pytest.approx(tf.gain[1], rel=2e-3)
        else:
            assert tf.gain == (640 / w0, 640 / h0)


def test_boxes_map_back_and_clip_to_the_image():
    img = np.zeros((720, 1280, 3), np.uint8)
    _, tf = preprocess(img, DEFAULT_PREPROCESS)
    assert tf.pad == (0.0, 140.0) and tf.gain == (0.5, 0.5)
    box = np.array([[10, 150, 650, 400]], np.float32)
    np.testing.assert_allclose(tf.boxes_to_original(box), [[20, 20, 1280, 520]])


def test_mmyolo_style_letterboxes():
    """cv2_area truncates the resized size (YOLOv5KeepRatioResize), cv2_bilinear rounds half up (mmcv's
    rescale_size); top_left pads only bottom/right (mmdet's Pad); results map back through the transform."""
    pytest.importorskip("cv2")

    from convert.preprocess import letterbox

    img = np.random.default_rng(0).integers(0, 255, (500, 741, 3), dtype=np.uint8)
    out, tf = letterbox(img, (320, 320), 114, interpolation="cv2_area")
    assert out.shape == (320, 320, 3) and tf.gain[1] == 215 / 500 and tf.pad == (0.0, 52.0)
    assert (out[:52] == 114).all() and (out[52 + 215:] == 114).all()
    out, tf = letterbox(img, (320, 320), 0, interpolation="cv2_bilinear", align="top_left")
    assert tf.gain[1] == 216 / 500 and tf.pad == (0.0, 0.0) and (out[216:] == 0).all() and out[:216].any()
    _, tf = letterbox(img, (320, 320))
    assert tf.gain[1] == 216 / 500  # PIL default: round()
    with pytest.raises(ConvertError, match="preprocess.align"):
        letterbox(img, (320, 320), align="middle")
    with pytest.raises(ConvertError, match="preprocess.interpolation"):
        letterbox(img, (320, 320), interpolation="cubic")
