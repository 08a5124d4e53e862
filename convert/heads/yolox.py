"""The YOLOX head family: anchor-free, centre offset and log-size regression, with objectness
(mmyolo's ``YOLOXHead``).

Layout
------
Raw (truncated) maps, level-major: for each level (stride 8, 16, 32...)

* ``p{l}_box [B, 4, H, W]``: ``tx, ty, tw, th``;
* ``p{l}_cls [B, nc, H, W]``: class logits;
* ``p{l}_obj [B, 1, H, W]``: objectness logit.

Decode, as mmyolo's ``predict_by_feat`` (``MlvlPointGenerator`` offset 0, ``YOLOXBBoxCoder``),
candidates ordered level, y, x:

* ``xy = t_xy * stride + (x, y) * stride``; ``wh = exp(t_wh) * stride``; box ``xy -/+ wh/2``;
* ``score = sigmoid(cls) * sigmoid(obj)``.

Decoded (untruncated) output: ``[B, N, 4 + nc]``: ``x1, y1, x2, y2`` (input pixels), scores.

mmyolo's YOLOX test config sets ``yolox_style``: no ``max_per_img`` limit after NMS (every kept
pair is returned) and no objectness pre-filter; give ``max_detections`` large enough to agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from convert.heads import Head, XyxyScoresOutput
from convert.heads.yolov5 import _sigmoid, grid


class YOLOXHead(XyxyScoresOutput, Head):
    """YOLOX head metadata (layout: module docstring)."""

    type: Literal["yolox"]

    def map_channels(self) -> list[int]:
        return [4, self.nc, 1] * len(self.strides)

    def decode(self, maps: Sequence[np.ndarray]):
        from convert.postprocess import Candidates

        self.check_maps([np.shape(p) for p in maps])
        boxes, scores = [], []
        for level, stride in enumerate(self.strides):
            box, cls, obj = (np.asarray(m, dtype=np.float32) for m in maps[3 * level:3 * level + 3])
            b, _, h, w = box.shape
            s = np.float32(stride)
            t = box.reshape(b, 4, h * w)
            with np.errstate(over="ignore"):
                wh = np.exp(t[:, 2:4]) * s
            xy = t[:, 0:2] * s + grid(h, w)[0] * s
            boxes.append(np.concatenate([xy - wh / 2, xy + wh / 2], 1).transpose(0, 2, 1))
            sc = _sigmoid(cls.reshape(b, self.nc, h * w)) * _sigmoid(obj.reshape(b, 1, h * w))
            scores.append(sc.transpose(0, 2, 1))
        return Candidates(np.concatenate(boxes, 1), np.concatenate(scores, 1))

    def decode_graph(self, b, maps: Sequence[Any], score_threshold: float | None = None):
        """``score_threshold`` is accepted and not used (the objectness prefilter exists for YOLOv5 only)."""
        from convert.graph.decode import GraphCandidates, as_float, cell_constants, concat

        ts, clss, objs, grids, strides = [], [], [], [], []
        for level, stride in enumerate(self.strides):
            box, cls, obj = (as_float(b, m) for m in maps[3 * level:3 * level + 3])
            ts.append(b.op("Reshape", box, b.const([0, 4, -1], np.int64)))
            clss.append(b.op("Reshape", cls, b.const([0, self.nc, -1], np.int64)))
            objs.append(b.op("Reshape", obj, b.const([0, 1, -1], np.int64)))
            g, s = cell_constants(b, box, 1, float(stride))
            grids.append(g)
            strides.append(s)
        t, g, s = concat(b, ts), concat(b, grids), concat(b, strides)
        two = b.const(2, np.float32)
        xy = b.op("Add", b.op("Mul", b.slice(t, 0, 2, 1), s), b.op("Mul", g, s))
        half = b.op("Div", b.op("Mul", b.op("Exp", b.slice(t, 2, 4, 1)), s), two)
        boxes = b.op("Transpose", b.op("Concat", b.op("Sub", xy, half), b.op("Add", xy, half), attrs={"axis": 1}),
                     attrs={"perm": [0, 2, 1]})
        scores = b.op("Mul", b.op("Sigmoid", concat(b, clss)), b.op("Sigmoid", concat(b, objs)))
        batch = maps[0].shape[0] if maps[0].shape else "batch"
        return GraphCandidates(boxes, scores, None, self.nc, 0, batch)
