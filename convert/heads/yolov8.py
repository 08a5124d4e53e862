"""The YOLOv8 head family: ultralytics' anchor-free ``Detect`` and ``Pose`` heads (YOLOv8, YOLO11).

Layout
------
Raw (truncated) maps, level-major: for each level (stride 8, 16, 32...)

* ``p{l}_box [B, 4*reg_max, H, W]``: per side (left, top, right, bottom) a distribution over
  ``reg_max`` distance bins (logits), channel ``side*reg_max + bin``;
* ``p{l}_cls [B, nc, H, W]``: class logits (no objectness);
* ``p{l}_kpt [B, 3*nk, H, W]`` (pose): per keypoint ``(x, y, visibility)`` raw values.

Decode, exactly as ultralytics (``DFL``, ``make_anchors``, ``dist2bbox``, ``Pose.kpts_decode``),
candidates ordered level, y, x:

* distances ``d = sum_i softmax(box)_i * i`` per side (the DFL expectation, grid units);
* anchor points at cell centres ``a = (x + 0.5, y + 0.5)``; ``x1y1 = a - d_lt``,
  ``x2y2 = a + d_rb``; centre ``c = (x1y1 + x2y2)/2 * stride``, ``wh = (x2y2 - x1y1) * stride``;
  the box is ``c -/+ wh/2``;
* ``score = sigmoid(cls)``;
* keypoint ``xy = (raw*2 + (a - 0.5)) * stride``, visibility ``sigmoid(raw)``.

Decoded (untruncated) output, as ultralytics' own inference and ONNX export: ``[B, 4+nc+3*nk, N]``,
rows ``cx, cy, w, h`` (input pixels), class scores (sigmoid), then ``nk`` times ``(x, y, v)``.

Every later step (NMS, output contract, mapping back through the letterbox) is the shared one of
:mod:`convert.postprocess`; ultralytics' NMS has no objectness either, so with one class (pose) the
detections are the same as its ``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from convert.errors import ConvertError
from convert.heads import Head
from convert.heads.yolov5 import _sigmoid, grid


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


class YOLOv8Head(Head):
    """Ultralytics YOLOv8 / YOLO11 detection and pose head metadata (layout: module docstring).

    Attributes:
        reg_max: Distance bins per box side (DFL).
    """

    type: Literal["yolov8", "yolov8_pose"]
    reg_max: int = 16

    @property
    def parts(self) -> int:
        """Raw maps per level: box, cls (and kpt)."""
        return 3 if self.nk else 2

    def map_channels(self) -> list[int]:
        return [4 * self.reg_max, self.nc, *([3 * self.nk] if self.nk else [])] * len(self.strides)

    def decode(self, maps: Sequence[np.ndarray]):
        from convert.postprocess import Candidates

        self.check_maps([np.shape(p) for p in maps])
        nc, nk, R, k = self.nc, self.nk, self.reg_max, self.parts
        bins = np.arange(R, dtype=np.float32).reshape(1, 1, R, 1)
        boxes, scores, kpts = [], [], []
        for level, stride in enumerate(self.strides):
            box, cls = (np.asarray(m, dtype=np.float32) for m in maps[level * k:level * k + 2])
            b, _, h, w = box.shape
            dist = (_softmax(box.reshape(b, 4, R, h * w), 2) * bins).sum(2)  # [B, 4, cell]
            a, s = grid(h, w, 0.5)[0], np.float32(stride)  # [1, 2, cell]
            x1y1, x2y2 = a - dist[:, 0:2], a + dist[:, 2:4]
            c, wh = (x1y1 + x2y2) / 2 * s, (x2y2 - x1y1) * s
            boxes.append(np.concatenate([c - wh / 2, c + wh / 2], 1).transpose(0, 2, 1))
            scores.append(_sigmoid(cls.reshape(b, nc, h * w)).transpose(0, 2, 1))
            if nk:
                kp = np.asarray(maps[level * k + 2], dtype=np.float32).reshape(b, nk, 3, h * w)
                kxy = (kp[:, :, 0:2] * 2 + (a[:, None] - 0.5)) * s
                kpt = np.concatenate([kxy, _sigmoid(kp[:, :, 2:3])], 2)  # [B, nk, 3, cell]
                kpts.append(kpt.transpose(0, 3, 1, 2))
        return Candidates(np.concatenate(boxes, 1), np.concatenate(scores, 1),
                          np.concatenate(kpts, 1) if nk else None)

    def decode_graph(self, b, maps: Sequence[Any], score_threshold: float | None = None):
        """Levels flattened and concatenated first (``[B, C, N]``), so DFL, box, score and keypoint
        arithmetic run once over all candidates; scores come out class-major, as NMS takes them."""
        from convert.graph.decode import GraphCandidates, as_float, cell_constants, concat

        nc, nk, R, k = self.nc, self.nk, self.reg_max, self.parts
        dists, clss, kps, grids, strides = [], [], [], [], []
        for level, stride in enumerate(self.strides):
            box, cls = (as_float(b, m) for m in maps[level * k:level * k + 2])
            dists.append(b.op("Reshape", box, b.const([0, 4, R, -1], np.int64)))  # [B, 4, R, cells]
            clss.append(b.op("Reshape", cls, b.const([0, nc, -1], np.int64)))
            if nk:
                kps.append(b.op("Reshape", as_float(b, maps[level * k + 2]), b.const([0, nk, 3, -1], np.int64)))
            g, s = cell_constants(b, box, 1, float(stride), offset=0.5)
            grids.append(g)
            strides.append(s)
        prob = b.op("Softmax", concat(b, dists, 3), attrs={"axis": 2})
        dist = b.reduce("ReduceSum", b.op("Mul", prob, b.const(np.arange(R, dtype=np.float32).reshape(1, 1, R, 1),
                                                                np.float32)), [2], keepdims=False)  # [B, 4, N]
        a, s = concat(b, grids), concat(b, strides)
        two = b.const(2, np.float32)
        x1y1, x2y2 = b.op("Sub", a, b.slice(dist, 0, 2, 1)), b.op("Add", a, b.slice(dist, 2, 4, 1))
        c = b.op("Mul", b.op("Div", b.op("Add", x1y1, x2y2), two), s)
        half = b.op("Div", b.op("Mul", b.op("Sub", x2y2, x1y1), s), two)
        boxes = b.op("Transpose", b.op("Concat", b.op("Sub", c, half), b.op("Add", c, half), attrs={"axis": 1}),
                     attrs={"perm": [0, 2, 1]})
        scores = b.op("Sigmoid", concat(b, clss))  # [B, nc, N]
        kpts = None
        if nk:
            kp = concat(b, kps, 3)  # [B, nk, 3, N]
            offset = b.op("Sub", b.unsqueeze(a, [1]), b.const(0.5, np.float32))
            kxy = b.op("Mul", b.op("Add", b.op("Mul", b.slice(kp, 0, 2, 2), two), offset), b.unsqueeze(s, [1]))
            kpts = b.op("Concat", kxy, b.op("Sigmoid", b.slice(kp, 2, 3, 2)), attrs={"axis": 2})
            kpts = b.op("Transpose", kpts, attrs={"perm": [0, 3, 1, 2]})
        batch = maps[0].shape[0] if maps[0].shape else "batch"
        return GraphCandidates(boxes, scores, kpts, nc, nk, batch)

    def decoded_candidates(self, decoded: np.ndarray):
        from convert.postprocess import Candidates

        nc, nk = self.nc, self.nk
        d = np.asarray(decoded, dtype=np.float32)
        if d.ndim != 3 or d.shape[1] != 4 + nc + 3 * nk:
            raise ConvertError(f"decoded output has shape {list(d.shape)}, the {self.type!r} head says "
                               f"[B, 4+nc+3*nk = {4 + nc + 3 * nk}, N].")
        d = d.transpose(0, 2, 1)
        half = d[..., 2:4] / 2
        boxes = np.concatenate([d[..., 0:2] - half, d[..., 0:2] + half], -1)
        kpts = d[..., 4 + nc:].reshape(*d.shape[:2], nk, 3) if nk else None
        return Candidates(boxes, np.ascontiguousarray(d[..., 4:4 + nc]), kpts)

    def torch_candidates(self, decoded):
        import torch

        nc, nk = self.nc, self.nk
        d = decoded.detach().float().cpu().transpose(1, 2)
        B, N, _ = d.shape
        xy, wh = d[..., 0:2], d[..., 2:4]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        return boxes, d[..., 4:4 + nc], d[..., 4 + nc:].reshape(B, N, nk, 3) if nk else None
