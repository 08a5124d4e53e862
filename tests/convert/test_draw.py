"""Drawing: boxes and tags, the COCO-17 skeleton where the keypoints are, panels, difference views."""

from __future__ import annotations

import numpy as np

from convert import draw
from convert.postprocess import ImageDetections


def _pose(offset=0.0, vis_nose=1.0):
    # a stick person in a 200x160 photo: shoulders (5, 6) at y=60, left elbow (7) below the left shoulder
    k = np.zeros((17, 3), np.float32)
    k[:, 2] = 0.9
    k[0] = (80, 30, vis_nose)
    for i, (x, y) in {5: (60, 60), 6: (100, 60), 7: (60, 100), 8: (100, 100), 9: (60, 130), 10: (100, 130),
                      11: (65, 120), 12: (95, 120), 13: (65, 150), 14: (95, 150), 15: (65, 180), 16: (95, 180),
                      1: (75, 25), 2: (85, 25), 3: (70, 28), 4: (90, 28)}.items():
        k[i, :2] = (x + offset, y)
    return ImageDetections(np.array([[40 + offset, 10, 120 + offset, 190]], np.float32), np.array([0.9], np.float32),
                           np.array([0], np.int32), k[None])


def test_skeleton_is_drawn_along_the_limbs_and_hidden_keypoints_are_not():
    img = np.zeros((200, 160, 3), np.uint8)
    out = np.asarray(draw.draw_detections(img, _pose(vis_nose=0.1), ["person"]))
    arm = out[80, 60]  # midway between the left shoulder (60, 60) and elbow (60, 100)
    assert tuple(arm) == draw._limb_colour(5, 7) and tuple(out[60, 80]) == draw._limb_colour(5, 6)
    assert out[30, 80].max() == 0  # the nose (visibility 0.1 < 0.5): neither point nor limb
    assert out[100, 60].min() > 200  # keypoints are white dots
    assert out[10, 80].max() > 0 and out[100, 40].max() > 0  # the box outline
    assert out[150, 30].max() == 0  # nothing outside


def test_match_and_difference_view():
    a = ImageDetections(np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32),
                        np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 0], np.int32))
    b = ImageDetections(np.array([[21, 21, 40, 40], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32),
                        np.array([0.9, 0.8, 0.6], np.float32), np.array([1, 0, 1], np.int32))
    assert draw.match_boxes(a, b, 0.5) == [(0, 1), (1, 0)]  # the third pair differs in class
    img = np.zeros((70, 70, 3), np.uint8)
    pic, counts = draw.draw_difference(img, a, b, ["x", "y"])
    assert counts == {"matched": 2, "only_ref": 1, "only_other": 1}
    px = np.asarray(pic)[55, 50]  # the left edge of box 3, drawn red (only in a) then blue (only in b) on top
    assert tuple(px) == draw._ONLY_MODEL
    assert tuple(np.asarray(pic)[5, 0]) == draw._SAME


def test_panel_and_encoding_are_deterministic():
    img = np.full((100, 200, 3), 128, np.uint8)
    tiles = [("a", draw.draw_detections(img, _pose())), ("b", draw.draw_detections(img, _pose(offset=5)))]
    p = draw.panel(tiles + tiles[:1], columns=2, tile_width=100)
    assert p.size == (2 * 100 + 6, 2 * (22 + 50) + 6)
    assert draw.encode(p) == draw.encode(draw.panel(tiles + tiles[:1], columns=2, tile_width=100))
    assert draw.encode(p, "PNG").startswith(b"\x89PNG") and draw.encode(p)[:2] == b"\xff\xd8"
