"""Decode rewrites: raw head maps in the graph -> decoded candidates (step 1 of :mod:`convert.postprocess`).

Each head type has one function ``(builder, maps, head) -> GraphCandidates`` registered in
:data:`DECODERS`; the NMS rewrites (:mod:`convert.graph.nms`) only see the candidates, so a
new head type (e.g. an anchor-free DFL head) is one more function here and one more entry in
:data:`convert.postprocess.HEADS`.

Spatial sizes are read from the maps at run time (``Shape``/``Range``), so the decode works
for dynamic input sizes; with static shapes, runtimes fold those nodes into constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from convert.errors import ConvertError
from convert.graph.builder import Builder


@dataclass
class GraphCandidates:
    """Decoded candidates as graph tensors (the graph twin of :class:`convert.postprocess.Candidates`).

    Attributes:
        boxes: ``[B, N, 4]`` float32 x1, y1, x2, y2 (input pixels).
        scores: ``[B, C, N]`` float32, class-major: the layout ONNX NonMaxSuppression takes
            (the host-side :class:`~convert.postprocess.Candidates` holds ``[B, N, C]``).
        keypoints: ``[B, N, nk, 3]`` float32, or ``None``.
        num_classes: ``C``.
        num_keypoints: ``nk`` (0 without keypoints).
        batch: ``B``: an int, or the name of a dynamic dimension.
    """

    boxes: gs.Variable
    scores: gs.Variable
    keypoints: gs.Variable | None
    num_classes: int
    num_keypoints: int
    batch: int | str


def _level_constants(b: Builder, p: gs.Variable, na: int, stride: float, anchors) -> list[gs.Variable]:
    """Per-candidate cell offsets ``[1, 2, na*H*W]`` (x; y), stride ``[1, 1, na*H*W]`` and anchor
    ``[1, 2, na*H*W]`` (w; h) of one level, candidates ordered anchor, y, x like its flattened map."""
    h, w = b.dim(p, 2), b.dim(p, 3)
    zero, one = b.const(0, np.int64), b.const(1, np.int64)
    gx = b.op("Cast", b.op("Range", zero, b.scalar(w), one), attrs={"to": TensorProto.FLOAT})
    gy = b.op("Cast", b.op("Range", zero, b.scalar(h), one), attrs={"to": TensorProto.FLOAT})
    hw = b.op("Concat", h, w, attrs={"axis": 0})
    xx = b.op("Reshape", b.op("Expand", b.unsqueeze(gx, [0]), hw), b.const([1, 1, -1], np.int64))
    yy = b.op("Reshape", b.op("Expand", b.unsqueeze(gy, [1]), hw), b.const([1, 1, -1], np.int64))
    cells = b.op("Mul", h, w)
    per_anchor = b.op("Concat", b.const([1, 2, na], np.int64), cells, attrs={"axis": 0})  # [1, 2, na, H*W]
    flat = b.const([1, 2, -1], np.int64)
    grid = b.op("Reshape", b.op("Expand", b.unsqueeze(b.op("Concat", xx, yy, attrs={"axis": 1}), [2]), per_anchor),
                flat)
    anchor = b.const(np.asarray(anchors, np.float32).T.reshape(1, 2, na, 1), np.float32)
    anchor = b.op("Reshape", b.op("Expand", anchor, per_anchor), flat)
    s = b.op("Expand", b.const([[[stride]]], np.float32),
             b.op("Concat", b.const([1, 1], np.int64), b.op("Mul", cells, b.const([na], np.int64)), attrs={"axis": 0}))
    return [grid, s, anchor]


def decode_yolov5(b: Builder, maps: Sequence[gs.Variable], head: dict[str, Any]) -> GraphCandidates:
    """Appends the YOLOv5 / YOLO-Pose decode of the raw maps ``[B, na*no, H, W]``.

    Every level is laid out as ``[B, no, na*H*W]`` and the levels concatenated, so the decode
    runs once over all candidates with per-candidate grid, stride and anchor tensors, and the
    class scores come out class-major without another transpose. The arithmetic is that of
    :func:`convert.postprocess.decode_yolov5` and of the PyTorch model, in the same order.
    """
    nc, nk, na = int(head["nc"]), int(head.get("nk") or 0), int(head["na"])
    no = 5 + nc + 3 * nk
    raw, consts = [], []
    for level, (p, stride, anchors) in enumerate(zip(maps, head["strides"], head["anchors"], strict=True)):
        if p.shape is not None and len(p.shape) == 4 and isinstance(p.shape[1], int) and p.shape[1] != na * no:
            raise ConvertError(f"head output {p.name!r} (level {level}) has {p.shape[1]} channels, but the head "
                               f"metadata says na*(5+nc+3*nk) = {na}*{no} = {na * no}.",
                               hint="check the head's nc/nk against the model.")
        if p.dtype is not None and np.dtype(p.dtype) != np.float32:
            p = b.op("Cast", p, attrs={"to": TensorProto.FLOAT})
        x = b.op("Transpose", b.op("Reshape", p, b.const([0, na, no, -1], np.int64)), attrs={"perm": [0, 2, 1, 3]})
        raw.append(b.op("Reshape", x, b.const([0, no, -1], np.int64)))  # [B, no, na*H*W]
        consts.append(_level_constants(b, p, na, float(stride), anchors))

    def cat(parts, axis=2):
        return parts[0] if len(parts) == 1 else b.op("Concat", *parts, attrs={"axis": axis})

    x = cat(raw)  # [B, no, N]
    grid, stride, anchor = (cat([c[i] for c in consts]) for i in range(3))
    two, half_px = b.const(2, np.float32), b.const(0.5, np.float32)
    det = b.op("Sigmoid", b.slice(x, 0, 5 + nc, 1) if nk else x)  # no copy when there is nothing to cut off
    xy = b.op("Mul", b.op("Add", b.op("Sub", b.op("Mul", b.slice(det, 0, 2, 1), two), half_px), grid), stride)
    t = b.op("Mul", b.slice(det, 2, 4, 1), two)
    half = b.op("Div", b.op("Mul", b.op("Mul", t, t), anchor), two)
    boxes = b.op("Concat", b.op("Sub", xy, half), b.op("Add", xy, half), attrs={"axis": 1})
    boxes = b.op("Transpose", boxes, attrs={"perm": [0, 2, 1]})
    scores = b.op("Mul", b.slice(det, 4, 5, 1), b.slice(det, 5, 5 + nc, 1))
    kpts = None
    if nk:
        k = b.op("Reshape", b.slice(x, 5 + nc, no, 1), b.const([0, nk, 3, -1], np.int64))  # [B, nk, 3, N]
        kxy = b.op("Mul", b.op("Add", b.op("Sub", b.op("Mul", b.slice(k, 0, 2, 2), two), half_px),
                               b.unsqueeze(grid, [1])), b.unsqueeze(stride, [1]))
        kpts = b.op("Concat", kxy, b.op("Sigmoid", b.slice(k, 2, 3, 2)), attrs={"axis": 2})
        kpts = b.op("Transpose", kpts, attrs={"perm": [0, 3, 1, 2]})
    batch = maps[0].shape[0] if maps[0].shape else "batch"
    return GraphCandidates(boxes, scores, kpts, nc, nk, batch)


DECODERS: dict[str, Callable[[Builder, Sequence[gs.Variable], dict[str, Any]], GraphCandidates]] = {
    "yolov5": decode_yolov5,
    "yolov5_pose": decode_yolov5,
}
"""Head type -> decode rewrite (keys equal :data:`convert.postprocess.HEADS`)."""


def append_decode(b: Builder, maps: Sequence[gs.Variable], head: dict[str, Any]) -> GraphCandidates:
    """Appends the decode for ``head["type"]``.

    Raises:
        ConvertError: Unsupported head type, or a level count that does not match the head.
    """
    if head.get("type") not in DECODERS:
        raise ConvertError(f"head type {head.get('type')!r} has no in-graph decode.",
                           hint=f"supported: {', '.join(DECODERS)}.")
    if len(maps) != len(head["strides"]):
        raise ConvertError(f"{len(maps)} head outputs for {len(head['strides'])} levels in the head metadata.")
    return DECODERS[head["type"]](b, maps, head)
