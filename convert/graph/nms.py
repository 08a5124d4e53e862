"""NMS rewrites: decoded candidates -> padded detections (steps 2-6 of :mod:`convert.postprocess`).

Back-ends (:data:`BACKENDS`), all producing the same outputs ``num_dets [B,1] int32``,
``boxes [B,K,4]``, ``scores [B,K]``, ``classes [B,K] int32`` and ``keypoints [B,K,nk,3]``:

* ``onnx``: standard ``NonMaxSuppression``, then the top ``K`` kept pairs over all classes
  (runs on ONNX Runtime, OpenVINO and TensorRT);
* ``efficient_nms_trt``: TensorRT's ``EfficientNMS_TRT`` plugin, whose outputs are the
  detections; it returns no indices, so it cannot carry keypoints;
* ``efficient_nms_onnx_trt``: TensorRT's ``EfficientNMS_ONNX_TRT`` plugin, which returns
  ``(batch, class, candidate)`` indices as ``NonMaxSuppression`` does; boxes, scores, classes
  and keypoints are gathered by those indices, as for ``onnx``.

From kept ``(batch, class, candidate)`` rows to fixed-shape outputs (``onnx`` and
``efficient_nms_onnx_trt``): a ``[B, M + K]`` matrix holds, in row ``b``, the score of every
kept row of image ``b`` (-1 elsewhere) followed by ``K`` padding columns at -1; ``TopK(K)``
over it gives each image's K best kept pairs, best first. Equal scores go to the earlier row,
and ONNX Runtime lists kept rows by class, then by score with equal scores by candidate
index, so ties resolve by ``(class, candidate)`` as step 5 defines. This costs ``O(B*M)``
whatever the number of candidates and classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from convert.errors import ConvertError
from convert.graph.builder import Builder
from convert.graph.decode import GraphCandidates
from convert.postprocess import NMSSettings

TRT_DOMAIN = "TRT"
"""Domain of TensorRT plugin nodes (TensorRT's ONNX parser looks plugins up by op type)."""


@dataclass
class GraphDetections:
    """The end-to-end outputs as graph tensors (dtypes and shapes declared)."""

    num_dets: gs.Variable
    boxes: gs.Variable
    scores: gs.Variable
    classes: gs.Variable
    keypoints: gs.Variable | None = None

    def as_list(self) -> list[gs.Variable]:
        outs = [self.num_dets, self.boxes, self.scores, self.classes]
        return outs + ([self.keypoints] if self.keypoints is not None else [])


def plugin_threshold(value: float) -> float:
    """The threshold to give a plugin comparing with ``>=`` so that it keeps exactly what ``>`` keeps.

    For float32 values, ``x >= nextafter(t)`` is ``x > t``: passing the next float32 above the
    threshold makes TensorRT's EfficientNMS (``score >= t``, ``IoU >= t``) agree with ONNX
    NonMaxSuppression (``>``) and with :mod:`convert.postprocess`.
    """
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def _declare(var: gs.Variable, dtype, shape: list) -> gs.Variable:
    var.dtype, var.shape = dtype, shape
    return var


def append_pre_top_k(b: Builder, cands: GraphCandidates, k: int) -> GraphCandidates:
    """Step 2: keeps the ``k`` candidates with the highest best-class score, best first."""
    best = b.reduce("ReduceMax", cands.scores, [1], keepdims=False)  # [B, N]
    kk = b.op("Min", b.const([k], np.int64), b.dim(cands.scores, 2))
    _, order = b.op("TopK", best, kk, attrs={"axis": 1, "largest": 1, "sorted": 1}, n_out=2)
    idx = b.unsqueeze(order, [2])

    def take(x):
        return b.op("GatherND", x, idx, attrs={"batch_dims": 1})

    per_class = b.op("Expand", b.unsqueeze(order, [1]), b.const([1, cands.num_classes, 1], np.int64))  # [B, C, k]
    scores = b.op("GatherElements", cands.scores, per_class, attrs={"axis": 2})
    return replace(cands, boxes=take(cands.boxes), scores=scores,
                   keypoints=take(cands.keypoints) if cands.keypoints is not None else None)


def _agnostic_scores(b: Builder, cands: GraphCandidates):
    """Best-class score ``[B, 1, N]`` and class ``[B, N]`` (first maximum) of each candidate."""
    best = b.reduce("ReduceMax", cands.scores, [1], keepdims=True)
    cls = b.op("ArgMax", cands.scores, attrs={"axis": 1, "keepdims": 0, "select_last_index": 0})
    return best, cls


def _kept_to_detections(b: Builder, cands: GraphCandidates, nms_scores: gs.Variable, selected: gs.Variable,
                        k: int, class_of_box: gs.Variable | None, padded_rows: bool) -> GraphDetections:
    """Steps 5-6 from NMS-selected ``(batch, class, candidate)`` rows (see the module docstring).

    Args:
        b: The builder.
        cands: The candidates NMS ran on.
        nms_scores: ``[B, C', N]`` scores NMS ran on (``C' = 1`` class-agnostic).
        selected: ``[M, 3]`` int64 rows.
        k: ``K``.
        class_of_box: ``[B, N]`` class of each candidate when class-agnostic, else ``None``.
        padded_rows: Rows may be padding (TensorRT: all -1, or copies of the last valid row).
    """
    i64, f32 = np.int64, np.float32
    zero = b.const(0, i64)

    def column(x, j: int, axis: int):
        return b.op("Squeeze", b.slice(x, j, j + 1, axis), b.const([axis], i64))

    if padded_rows:
        # Padding is -1 rows, or repeats of the row just before (NMS never keeps a pair twice).
        previous = b.op("Concat", b.const([[-1, -1, -1]], i64),
                        b.op("Slice", selected, b.const([0], i64), b.const([-1], i64), b.const([0], i64)),
                        attrs={"axis": 0})
        same = b.op("Cast", b.op("Equal", selected, previous), attrs={"to": TensorProto.INT64})
        repeat = b.op("Equal", b.reduce("ReduceSum", same, [1], keepdims=False), b.const(3, i64))
        row_ok = b.op("And", b.op("GreaterOrEqual", column(selected, 0, 1), zero), b.op("Not", repeat))
        selected = b.op("Max", selected, zero)
    score = b.op("GatherND", nms_scores, selected)  # [M]
    if padded_rows:
        score = b.op("Where", row_ok, score, b.const(-1, f32))
    batch = b.dim(nms_scores, 0)
    images = b.unsqueeze(b.op("Range", zero, b.scalar(batch), b.const(1, i64)), [1])  # [B, 1]
    keys = b.op("Where", b.op("Equal", b.unsqueeze(column(selected, 0, 1), [0]), images), b.unsqueeze(score, [0]),
                b.const(-1, f32))  # [B, M]
    pad = b.op("Expand", b.const([[-1]], f32), b.op("Concat", batch, b.const([k], i64), attrs={"axis": 0}))
    values, top = b.op("TopK", b.op("Concat", keys, pad, attrs={"axis": 1}), b.const([k], i64),
                       attrs={"axis": 1, "largest": 1, "sorted": 1}, n_out=2)
    valid = b.op("GreaterOrEqual", values, b.const(0, f32))
    # Padding columns point past the kept rows: they pick a dummy row whose candidate index is valid.
    rows = b.op("Concat", selected, b.const([[0, 0, 0]], i64), attrs={"axis": 0})
    picked = b.op("Gather", rows, b.op("Min", top, b.dim(selected, 0)), attrs={"axis": 0})  # [B, K, 3]
    box_idx = column(picked, 2, 2)
    if class_of_box is not None:
        cls = b.op("GatherElements", class_of_box, box_idx, attrs={"axis": 1})
    else:
        cls = column(picked, 1, 2)
    gather_idx = b.unsqueeze(box_idx, [2])
    bdim = cands.batch
    zero_f = b.const(0, f32)
    num_dets = b.reduce("ReduceSum", b.op("Cast", valid, attrs={"to": TensorProto.INT32}), [1], keepdims=True)
    boxes = b.op("Where", b.unsqueeze(valid, [2]),
                 b.op("GatherND", cands.boxes, gather_idx, attrs={"batch_dims": 1}), zero_f)
    scores = b.op("Where", valid, values, zero_f)
    classes = b.op("Cast", b.op("Where", valid, cls, zero), attrs={"to": TensorProto.INT32})
    kpts = None
    if cands.keypoints is not None:
        kpts = b.op("Where", b.unsqueeze(valid, [2, 3]),
                    b.op("GatherND", cands.keypoints, gather_idx, attrs={"batch_dims": 1}), zero_f)
        _declare(kpts, np.float32, [bdim, k, cands.num_keypoints, 3])
    return GraphDetections(_declare(num_dets, np.int32, [bdim, 1]), _declare(boxes, np.float32, [bdim, k, 4]),
                           _declare(scores, np.float32, [bdim, k]), _declare(classes, np.int32, [bdim, k]), kpts)


def append_onnx_nms(b: Builder, cands: GraphCandidates, s: NMSSettings) -> GraphDetections:
    """Steps 3-6 with the standard ``NonMaxSuppression`` operator (``onnx`` back-end)."""
    nms_scores, class_of_box = _agnostic_scores(b, cands) if s.class_agnostic else (cands.scores, None)
    selected = b.op("NonMaxSuppression", cands.boxes, nms_scores, b.const([s.max_detections], np.int64),
                    b.const([s.iou_threshold], np.float32), b.const([s.score_threshold], np.float32),
                    attrs={"center_point_box": 0})
    return _kept_to_detections(b, cands, nms_scores, selected, s.max_detections, class_of_box, padded_rows=False)


def append_efficient_nms_trt(b: Builder, cands: GraphCandidates, s: NMSSettings) -> GraphDetections:
    """Steps 3-6 as one ``EfficientNMS_TRT`` plugin node (``efficient_nms_trt`` back-end).

    Raises:
        ConvertError: The candidates have keypoints (the plugin returns no indices to gather them by).
    """
    if cands.keypoints is not None:
        raise ConvertError("EfficientNMS_TRT returns no indices, so keypoints cannot follow their boxes.",
                           hint="use backend efficient_nms_onnx_trt or onnx, or keypoints: false.")
    k, bdim = s.max_detections, cands.batch
    outs = [b.variable("num_dets", np.int32, [bdim, 1]), b.variable("boxes", np.float32, [bdim, k, 4]),
            b.variable("scores", np.float32, [bdim, k]), b.variable("classes", np.int32, [bdim, k])]
    attrs = {"score_threshold": plugin_threshold(s.score_threshold),
             "iou_threshold": plugin_threshold(s.iou_threshold),
             "max_output_boxes": k, "background_class": -1, "score_activation": 0,
             "class_agnostic": int(s.class_agnostic), "box_coding": 0,  # 0: x1, y1, x2, y2
             "plugin_version": "1", "plugin_namespace": ""}
    scores = b.op("Transpose", cands.scores, attrs={"perm": [0, 2, 1]})  # the plugin takes [B, N, C]
    b.op("EfficientNMS_TRT", cands.boxes, scores, attrs=attrs, outputs=outs, domain=TRT_DOMAIN)
    return GraphDetections(*outs)


def append_efficient_nms_onnx_trt(b: Builder, cands: GraphCandidates, s: NMSSettings) -> GraphDetections:
    """Steps 3-6 with the index-returning ``EfficientNMS_ONNX_TRT`` plugin (``efficient_nms_onnx_trt``).

    The plugin keeps at most ``max_output_boxes_per_class`` pairs per image over all classes,
    best first, and returns ``[B*K, 3]`` int32 rows, padded with copies of the last valid row
    (all -1 when nothing is kept); the padding is masked out when gathering.
    """
    nms_scores, class_of_box = _agnostic_scores(b, cands) if s.class_agnostic else (cands.scores, None)
    k, bdim = s.max_detections, cands.batch
    rows = f"{bdim}*{k}" if isinstance(bdim, str) else bdim * k
    out = b.variable("selected_indices", np.int32, [rows, 3])
    attrs = {"score_threshold": plugin_threshold(s.score_threshold),
             "iou_threshold": plugin_threshold(s.iou_threshold),
             "max_output_boxes_per_class": k, "center_point_box": 0,
             "plugin_version": "1", "plugin_namespace": ""}
    plugin_scores = b.op("Transpose", nms_scores, attrs={"perm": [0, 2, 1]})  # the plugin takes [B, N, C]
    b.op("EfficientNMS_ONNX_TRT", cands.boxes, plugin_scores, attrs=attrs, outputs=[out], domain=TRT_DOMAIN)
    selected = b.op("Cast", out, attrs={"to": TensorProto.INT64})
    return _kept_to_detections(b, cands, nms_scores, selected, k, class_of_box, padded_rows=True)


BACKENDS: dict[str, Callable[[Builder, GraphCandidates, NMSSettings], GraphDetections]] = {
    "onnx": append_onnx_nms,
    "efficient_nms_trt": append_efficient_nms_trt,
    "efficient_nms_onnx_trt": append_efficient_nms_onnx_trt,
}
"""NMS back-end name -> rewrite."""


def append_nms(b: Builder, cands: GraphCandidates, s: NMSSettings, backend: str = "onnx") -> GraphDetections:
    """Steps 2-6: optional pre-NMS top-k, then the back-end's NMS and output layout."""
    if backend not in BACKENDS:
        raise ConvertError(f"unknown NMS back-end {backend!r}.", hint=f"use one of: {', '.join(BACKENDS)}.")
    if s.pre_top_k is not None:
        cands = append_pre_top_k(b, cands, s.pre_top_k)
    return BACKENDS[backend](b, cands, s)
