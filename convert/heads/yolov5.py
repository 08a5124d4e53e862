"""The YOLOv5 head family: YOLOv5 v6.1 ``Detect`` and YOLO-Pose ``IKeypoint`` (anchor-based); also
mmyolo's ``YOLOv5Head`` and ``YOLOv7Head``, whose ``convs_pred`` maps have this layout and whose
``YOLOv5BBoxCoder`` decode is this one (mmyolo writes the centre as ``(s - 0.5)*2*stride +
(grid + 0.5)*stride``, equal up to float rounding, and orders candidates level, y, x, anchor, which
only matters for ties).

Layout
------
Raw (truncated) maps, one per level, ``[B, na*no, H, W]`` with ``no = 5 + nc + 3*nk``; channel
``a*no + c`` is field ``c`` of anchor ``a``: ``tx, ty, tw, th, obj, cls_0..cls_{nc-1}`` then
``nk`` times ``(x, y, conf)``.

Decode (candidates ordered level, anchor, y, x), ``s = sigmoid`` of the box, objectness and
class channels:

* ``xy = (s*2 - 0.5 + grid) * stride``, ``wh = (s*2)**2 * anchor``, ``x1y1 = xy - wh/2``,
  ``x2y2 = xy + wh/2``;
* ``score = sigmoid(obj) * sigmoid(cls)``;
* keypoint ``xy = (raw*2 - 0.5 + grid) * stride`` (no sigmoid), visibility ``sigmoid(raw)``.

Decoded (untruncated) output: ``[B, N, no]``, columns ``cx, cy, w, h`` (input pixels), ``obj``,
class scores (sigmoid), then ``nk`` times ``(x, y, conf)``.

The numpy, graph and PyTorch (:mod:`convert.models.yolo`) decodes are written with the same
arithmetic in the same order, so they differ only by the runtimes' sigmoid rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from convert.errors import ConvertError
from convert.heads import Head


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: sigmoid -> 0, as wanted
        return 1 / (1 + np.exp(-x))


def grid(h: int, w: int, offset: float = 0.0) -> np.ndarray:
    """Cell positions ``[1, 1, 2, h*w]`` (x; y) + ``offset``, y-major as the maps are flattened."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return (np.stack([gx.ravel(), gy.ravel()]) + np.float32(offset))[None, None]


class YOLOv5Head(Head):
    """YOLOv5 / YOLO-Pose head metadata (see the module docstring for the layout).

    Attributes:
        anchors: Per level, ``na`` anchor sizes ``[w, h]`` in input pixels.
        na: Anchors per cell.
    """

    type: Literal["yolov5", "yolov5_pose"]
    anchors: list[list[list[float]]]
    na: int

    @property
    def no(self) -> int:
        return 5 + self.nc + 3 * self.nk

    def map_channels(self) -> list[int]:
        return [self.na * self.no] * len(self.strides)

    def decode(self, maps: Sequence[np.ndarray]):
        """Decodes the raw maps; runs on their channel-major layout and transposes the results once."""
        from convert.postprocess import Candidates

        self.check_maps([np.shape(p) for p in maps])
        nc, nk, na, no = self.nc, self.nk, self.na, self.no
        boxes, scores, kpts = [], [], []
        for p, stride, anchors in zip(maps, self.strides, self.anchors, strict=True):
            p = np.asarray(p, dtype=np.float32)
            b, _, h, w = p.shape
            x = p.reshape(b, na, no, h * w)  # [B, na, field, cell]
            g, s = grid(h, w), np.float32(stride)
            anchor = np.asarray(anchors, dtype=np.float32).reshape(1, na, 2, 1)
            det = _sigmoid(x[:, :, :5 + nc])
            xy = (det[:, :, 0:2] * 2 - 0.5 + g) * s
            t = det[:, :, 2:4] * 2
            half = t * t * anchor / 2
            boxes.append(np.concatenate([xy - half, xy + half], 2).transpose(0, 1, 3, 2).reshape(b, -1, 4))
            scores.append((det[:, :, 4:5] * det[:, :, 5:]).transpose(0, 1, 3, 2).reshape(b, -1, nc))
            if nk:
                k = x[:, :, 5 + nc:].reshape(b, na, nk, 3, h * w)
                kxy = (k[:, :, :, 0:2] * 2 - 0.5 + g[:, :, None]) * s
                kpt = np.concatenate([kxy, _sigmoid(k[:, :, :, 2:3])], 3)  # [B, na, nk, 3, cell]
                kpts.append(kpt.transpose(0, 1, 4, 2, 3).reshape(b, -1, nk, 3))
        return Candidates(np.concatenate(boxes, 1), np.concatenate(scores, 1),
                          np.concatenate(kpts, 1) if nk else None)

    def decode_graph(self, b, maps: Sequence[Any], score_threshold: float | None = None):
        """Every level laid out as ``[B, no, na*H*W]`` and the levels concatenated, so the decode runs
        once over all candidates and the class scores come out class-major without a transpose.

        With ``score_threshold``, only candidates whose objectness is above it in some image of the
        batch are decoded: a score is objectness x class probability, and a float32 product by a
        factor <= 1 never exceeds the other factor, so no other candidate can pass the threshold.
        Candidates keep their order, so NMS, its tie-breaking and the detections are unchanged, and
        decode and NMS run on the few hundred candidates left instead of all (yolov5n, 640 px: 25 200).
        The test reads only the objectness channel of each level map, and the passing candidates
        are gathered straight from the map's own layout (:meth:`_gather_passing`): the maps are
        never transposed nor concatenated whole, which cost yolov5n more than the NMS itself
        (0.5 of 1.8 ms in the transpose of the stride-8 map, 0.6 ms in the concatenation).
        """
        from convert.graph.decode import cell_constants, concat

        raw, consts = [], []
        for level, (p, stride, anchors) in enumerate(zip(maps, self.strides, self.anchors, strict=True)):
            c = cell_constants(b, p, self.na, float(stride), anchors)
            if score_threshold is None:
                x = self._level(b, p)
            else:
                x, c = self._gather_passing(b, p, c, score_threshold, keep_first=level == 0)
            raw.append(x)
            consts.append(c)
        x = concat(b, raw)  # [B, no, N]
        g, stride, anchor = (concat(b, [c[i] for c in consts]) for i in range(3))
        return self._decode_fields(b, maps, x, g, stride, anchor)

    def _level(self, b, p):
        """One level map ``[B, na*no, H, W]`` as ``[B, no, na*H*W]`` (candidates ordered anchor, y, x)."""
        from convert.graph.decode import as_float

        x = b.op("Reshape", as_float(b, p), b.const([0, self.na, self.no, -1], np.int64))
        x = b.op("Transpose", x, attrs={"perm": [0, 2, 1, 3]})
        return b.op("Reshape", x, b.const([0, self.no, -1], np.int64))

    def _gather_passing(self, b, p, consts, score_threshold: float, keep_first: bool):
        """The candidates of one level whose objectness passes ``score_threshold`` in some image.

        Args:
            b: The builder.
            p: The level map ``[B, na*no, H, W]``.
            consts: Its :func:`convert.graph.decode.cell_constants`.
            score_threshold: The threshold.
            keep_first: Keep candidate 0 whatever its score (it cannot pass either way): the padding
                rows of NMS point at the first candidate.

        Returns:
            ``[B, no, M]`` raw values of the ``M`` candidates kept, in candidate order, and the
            constants gathered alike.
        """
        from onnx import TensorProto

        from convert.graph.decode import as_float

        i64 = np.int64
        na, no = self.na, self.no
        x = b.op("Reshape", as_float(b, p), b.const([0, na, no, -1], i64))  # [B, na, no, HW] (no copy)
        obj = b.op("Sigmoid", b.slice(x, 4, 5, 2))  # [B, na, 1, HW]
        passing = b.op("Cast", b.op("Greater", obj, b.const(np.float32(score_threshold), np.float32)),
                       attrs={"to": TensorProto.FLOAT})
        mask = b.op("Reshape", b.reduce("ReduceMax", passing, [0, 2], keepdims=False), b.const([-1], i64))  # [na*HW]
        if keep_first:
            first = b.op("Cast", b.op("Equal", b.op("Range", b.const(0, i64), b.scalar(b.dim(mask, 0)),
                                                      b.const(1, i64)), b.const(0, i64)),
                         attrs={"to": TensorProto.FLOAT})
            mask = b.op("Max", mask, first)
        keep = b.op("Reshape", b.op("NonZero", mask), b.const([-1], i64))  # [M] level-local indices, ascending
        # Candidate (a, cell) sits at a*no*HW + field*HW + cell of the flattened map.
        cells = b.op("Mul", b.dim(p, 2), b.dim(p, 3))  # [1]
        anchor_of, cell_of = b.op("Div", keep, cells), b.op("Mod", keep, cells)
        base = b.op("Add", b.op("Mul", anchor_of, b.op("Mul", cells, b.const([no], i64))), cell_of)  # [M]
        fields = b.op("Mul", b.unsqueeze(b.op("Range", b.const(0, i64), b.const(no, i64), b.const(1, i64)), [1]),
                      cells)  # [no, 1]
        index = b.op("Add", fields, b.unsqueeze(base, [0]))  # [no, M]
        flat = b.op("Reshape", x, b.const([0, -1], i64))  # [B, na*no*HW]
        picked = b.op("Gather", flat, index, attrs={"axis": 1})  # [B, no, M]
        return picked, [b.op("Gather", t, keep, attrs={"axis": 2}) for t in consts]

    def _decode_fields(self, b, maps, x, g, stride, anchor):
        """The YOLOv5 arithmetic on ``[B, no, N]`` raw values and their cell constants."""
        from convert.graph.decode import GraphCandidates

        nc, nk, no = self.nc, self.nk, self.no
        two, half_px = b.const(2, np.float32), b.const(0.5, np.float32)
        det = b.op("Sigmoid", b.slice(x, 0, 5 + nc, 1) if nk else x)  # no copy when there is nothing to cut off
        xy = b.op("Mul", b.op("Add", b.op("Sub", b.op("Mul", b.slice(det, 0, 2, 1), two), half_px), g), stride)
        t = b.op("Mul", b.slice(det, 2, 4, 1), two)
        half = b.op("Div", b.op("Mul", b.op("Mul", t, t), anchor), two)
        boxes = b.op("Concat", b.op("Sub", xy, half), b.op("Add", xy, half), attrs={"axis": 1})
        boxes = b.op("Transpose", boxes, attrs={"perm": [0, 2, 1]})
        scores = b.op("Mul", b.slice(det, 4, 5, 1), b.slice(det, 5, 5 + nc, 1))
        kpts = None
        if nk:
            k = b.op("Reshape", b.slice(x, 5 + nc, no, 1), b.const([0, nk, 3, -1], np.int64))  # [B, nk, 3, N]
            kxy = b.op("Mul", b.op("Add", b.op("Sub", b.op("Mul", b.slice(k, 0, 2, 2), two), half_px),
                                   b.unsqueeze(g, [1])), b.unsqueeze(stride, [1]))
            kpts = b.op("Concat", kxy, b.op("Sigmoid", b.slice(k, 2, 3, 2)), attrs={"axis": 2})
            kpts = b.op("Transpose", kpts, attrs={"perm": [0, 3, 1, 2]})
        batch = maps[0].shape[0] if maps[0].shape else "batch"
        return GraphCandidates(boxes, scores, kpts, nc, nk, batch)

    def decoded_candidates(self, decoded: np.ndarray):
        from convert.postprocess import Candidates

        nc, nk = self.nc, self.nk
        d = np.asarray(decoded, dtype=np.float32)
        if d.shape[-1] != self.no:
            raise ConvertError(f"decoded output has {d.shape[-1]} columns, the head says 5+nc+3*nk = {self.no}.")
        half = d[..., 2:4] / 2
        boxes = np.concatenate([d[..., 0:2] - half, d[..., 0:2] + half], -1)
        kpts = d[..., 5 + nc:].reshape(*d.shape[:2], nk, 3) if nk else None
        return Candidates(boxes, d[..., 4:5] * d[..., 5:5 + nc], kpts)

    def torch_candidates(self, decoded):
        import torch

        nc, nk = self.nc, self.nk
        d = decoded.detach().float().cpu()
        B, N, _ = d.shape
        half = d[..., 2:4] / 2
        boxes = torch.cat([d[..., 0:2] - half, d[..., 0:2] + half], -1)
        return boxes, d[..., 4:5] * d[..., 5:5 + nc], d[..., 5 + nc:].reshape(B, N, nk, 3) if nk else None
