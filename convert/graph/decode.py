"""Decode rewrites: raw head maps in the graph -> decoded candidates (step 1 of :mod:`convert.postprocess`).

Each head family's :meth:`convert.heads.Head.decode_graph` appends its own decode; this module
holds what they share (the candidate tensors, per-cell constants) and the dispatch. The NMS
rewrites (:mod:`convert.graph.nms`) only see the candidates, so every family gets every NMS
back-end.

Spatial sizes are read from the maps at run time (``Shape``/``Range``), so the decode works
for dynamic input sizes; with static shapes, runtimes fold those nodes into constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

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


def as_float(b: Builder, p: gs.Variable) -> gs.Variable:
    """``p`` cast to float32 unless it already is (FP16 models)."""
    if p.dtype is not None and np.dtype(p.dtype) != np.float32:
        return b.op("Cast", p, attrs={"to": TensorProto.FLOAT})
    return p


def cell_constants(b: Builder, p: gs.Variable, na: int, stride: float, anchors=None, offset: float = 0.0
                   ) -> list[gs.Variable]:
    """Per-candidate constants of one level map ``p [B, C, H, W]``, candidates ordered anchor, y, x.

    Returns:
        ``[grid, stride]`` and, with ``anchors``, ``anchor``: cell positions ``[1, 2, na*H*W]``
        (x + offset; y + offset, grid units), stride ``[1, 1, na*H*W]``, anchor sizes
        ``[1, 2, na*H*W]`` (w; h, from ``anchors [na, 2]``).
    """
    h, w = b.dim(p, 2), b.dim(p, 3)
    zero, one = b.const(0, np.int64), b.const(1, np.int64)
    gx = b.op("Cast", b.op("Range", zero, b.scalar(w), one), attrs={"to": TensorProto.FLOAT})
    gy = b.op("Cast", b.op("Range", zero, b.scalar(h), one), attrs={"to": TensorProto.FLOAT})
    if offset:
        gx, gy = (b.op("Add", g, b.const(offset, np.float32)) for g in (gx, gy))
    hw = b.op("Concat", h, w, attrs={"axis": 0})
    xx = b.op("Reshape", b.op("Expand", b.unsqueeze(gx, [0]), hw), b.const([1, 1, -1], np.int64))
    yy = b.op("Reshape", b.op("Expand", b.unsqueeze(gy, [1]), hw), b.const([1, 1, -1], np.int64))
    cells = b.op("Mul", h, w)
    per_anchor = b.op("Concat", b.const([1, 2, na], np.int64), cells, attrs={"axis": 0})  # [1, 2, na, H*W]
    flat = b.const([1, 2, -1], np.int64)
    grid = b.op("Reshape", b.op("Expand", b.unsqueeze(b.op("Concat", xx, yy, attrs={"axis": 1}), [2]), per_anchor),
                flat)
    out = [grid]
    if anchors is not None:
        anchor = b.const(np.asarray(anchors, np.float32).T.reshape(1, 2, na, 1), np.float32)
        anchor = b.op("Reshape", b.op("Expand", anchor, per_anchor), flat)
    s = b.op("Expand", b.const([[[stride]]], np.float32),
             b.op("Concat", b.const([1, 1], np.int64), b.op("Mul", cells, b.const([na], np.int64)), attrs={"axis": 0}))
    out.append(s)
    if anchors is not None:
        out.append(anchor)
    return out


def concat(b: Builder, parts: Sequence[gs.Variable], axis: int = 2) -> gs.Variable:
    """Concatenation of level tensors (no node for a single level)."""
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, attrs={"axis": axis})


def append_decode(b: Builder, maps: Sequence[gs.Variable], head: dict[str, Any],
                  score_threshold: float | None = None) -> GraphCandidates:
    """Appends the decode of ``head``'s family (:func:`convert.heads.parse`); with ``score_threshold``
    the family may drop candidates that cannot score above it (see :meth:`convert.heads.Head.decode_graph`).

    Raises:
        ConvertError: Unsupported head type, or maps that do not match the head metadata.
    """
    from convert import heads

    typed = heads.parse(head)
    typed.check_maps([m.shape for m in maps])
    return typed.decode_graph(b, maps, score_threshold)
