"""The distance-to-box head family: anchor-free heads predicting, per cell, the distances from a
point to the four box sides, with or without DFL (mmyolo's RTMDet, YOLOv6, PPYOLOE and YOLOv8).

Layout
------
Raw (truncated) maps, level-major: for each level (stride 8, 16, 32...)

* ``p{l}_box [B, 4*bins, H, W]`` with DFL (``bins > 0``): per side (left, top, right, bottom) a
  distribution over ``bins`` distance bins (logits), channel ``side*bins + bin``; without DFL
  (``bins == 0``) ``[B, 4, H, W]``: the four distances directly (grid units);
* ``p{l}_cls [B, nc, H, W]``: class logits (no objectness).

Decode, as mmyolo's ``predict_by_feat`` (``MlvlPointGenerator`` with the config's ``offset``,
``DistancePointBBoxCoder``), candidates ordered level, y, x:

* distances ``d``: with DFL the expectation ``sum_i softmax(box)_i * i`` (mmyolo's ``proj`` is
  ``0..bins-1``: YOLOv8 16 bins, PPYOLOE and DFL YOLOv6 ``reg_max + 1``), else the raw values;
* point ``p = (x + offset, y + offset) * stride`` (RTMDet: offset 0; YOLOv6, PPYOLOE, YOLOv8: 0.5);
* ``x1y1 = p - d_lt * stride``, ``x2y2 = p + d_rb * stride`` (no clipping before NMS);
* ``score = sigmoid(cls)``.

Decoded (untruncated) output: ``[B, N, 4 + nc]``: ``x1, y1, x2, y2`` (input pixels), class scores.

Where mmyolo's post-processing differs from :mod:`convert.postprocess` (see the README's mmyolo
alignment notes): its ``nms_pre`` keeps the top (candidate, class) *pairs* after the score
threshold, not candidates; it runs NMS on boxes already mapped back to the original image with
the class-offset trick (``batched_nms``), and keeps ``max_per_img`` in total.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from convert.heads import Head, XyxyScoresOutput
from convert.heads.yolov5 import _sigmoid, grid


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


class DistanceHead(XyxyScoresOutput, Head):
    """Anchor-free distance-to-box head metadata (layout: module docstring).

    Attributes:
        bins: DFL bins per box side; 0: distances regressed directly.
        offset: Point offset within the cell (0 or 0.5).
        family_name: The model family it came from (rtmdet, yolov6, ppyoloe, yolov8), for messages.
    """

    type: Literal["distance"]
    bins: int = 0
    offset: float = 0.5
    family_name: str = ""

    def map_channels(self) -> list[int]:
        return [4 * self.bins if self.bins else 4, self.nc] * len(self.strides)

    def _distances(self, box: np.ndarray) -> np.ndarray:
        """``[B, C, H, W]`` box map -> ``[B, 4, cells]`` distances (grid units)."""
        b, _, h, w = box.shape
        if not self.bins:
            return box.reshape(b, 4, h * w)
        bins = np.arange(self.bins, dtype=np.float32).reshape(1, 1, self.bins, 1)
        return (_softmax(box.reshape(b, 4, self.bins, h * w), 2) * bins).sum(2)

    def decode(self, maps: Sequence[np.ndarray]):
        from convert.postprocess import Candidates

        self.check_maps([np.shape(p) for p in maps])
        boxes, scores = [], []
        for level, stride in enumerate(self.strides):
            box, cls = (np.asarray(m, dtype=np.float32) for m in maps[2 * level:2 * level + 2])
            b, _, h, w = box.shape
            s = np.float32(stride)
            p = grid(h, w, self.offset)[0] * s  # [1, 2, cell]
            d = self._distances(box) * s
            boxes.append(np.concatenate([p - d[:, 0:2], p + d[:, 2:4]], 1).transpose(0, 2, 1))
            scores.append(_sigmoid(cls.reshape(b, self.nc, h * w)).transpose(0, 2, 1))
        return Candidates(np.concatenate(boxes, 1), np.concatenate(scores, 1))

    def decode_graph(self, b, maps: Sequence[Any], score_threshold: float | None = None):
        """Levels flattened and concatenated (``[B, C, N]``) so the arithmetic runs once.

        ``score_threshold`` is accepted and not used: without objectness no cheap test drops candidates."""
        from convert.graph.decode import GraphCandidates, as_float, cell_constants, concat

        R = self.bins
        dists, clss, points = [], [], []
        for level, stride in enumerate(self.strides):
            box, cls = (as_float(b, m) for m in maps[2 * level:2 * level + 2])
            shape = [0, 4, R, -1] if R else [0, 4, -1]
            dists.append(b.op("Reshape", box, b.const(shape, np.int64)))
            clss.append(b.op("Reshape", cls, b.const([0, self.nc, -1], np.int64)))
            g, s = cell_constants(b, box, 1, float(stride), offset=self.offset)
            points.append((g, s))
        if R:
            prob = b.op("Softmax", concat(b, dists, 3), attrs={"axis": 2})
            bins = b.const(np.arange(R, dtype=np.float32).reshape(1, 1, R, 1), np.float32)
            dist = b.reduce("ReduceSum", b.op("Mul", prob, bins), [2], keepdims=False)  # [B, 4, N]
        else:
            dist = concat(b, dists)
        g, s = concat(b, [p[0] for p in points]), concat(b, [p[1] for p in points])
        p = b.op("Mul", g, s)
        d = b.op("Mul", dist, s)
        boxes = b.op("Concat", b.op("Sub", p, b.slice(d, 0, 2, 1)), b.op("Add", p, b.slice(d, 2, 4, 1)),
                     attrs={"axis": 1})
        boxes = b.op("Transpose", boxes, attrs={"perm": [0, 2, 1]})
        scores = b.op("Sigmoid", concat(b, clss))
        batch = maps[0].shape[0] if maps[0].shape else "batch"
        return GraphCandidates(boxes, scores, None, self.nc, 0, batch)
