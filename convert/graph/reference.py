"""Numpy references of TensorRT's NMS plugins, and a runner for graphs that contain them.

Without TensorRT, a graph with an ``EfficientNMS_TRT`` or ``EfficientNMS_ONNX_TRT`` node can
still be checked end to end: :func:`run_with_references` evaluates the standard part of the
graph in ONNX Runtime and each plugin node with its reference here, so the results can be
compared with the ``onnx`` back-end's.

The references follow the plugin's source (TensorRT ``plugin/efficientNMSPlugin``):

* (candidate, class) pairs with ``score >= score_threshold`` compete, except the background
  class; they are sorted by descending score (equal scores: in element order
  ``candidate * C + class``, which the plugin leaves undefined) and only the first
  ``max_candidates`` are considered (4096 in TensorRT 8, 5000 or 2000 in later versions);
* greedy NMS in that order: a pair is dropped if its IoU with a kept pair of the same class
  (any class when ``class_agnostic``) is ``>= iou_threshold``; IoU 0 without overlap;
* the first ``max_output_boxes`` kept pairs are the detections.

``EfficientNMS_ONNX_TRT`` does the same (class-aware, ``max_output_boxes = max_output_boxes_per_class``,
so at most that many per image over all classes) and returns ``[B*K, 3]`` int32
``(batch, class, candidate)`` rows, then pads with copies of the last valid row, or leaves
-1 everywhere when nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from convert.postprocess import box_areas, iou_one_to_many

DEFAULT_MAX_CANDIDATES = 4096


def _corners(boxes: np.ndarray, box_coding: int) -> np.ndarray:
    if box_coding == 0:
        return boxes.astype(np.float32)
    xy, half = boxes[..., :2], boxes[..., 2:] / 2
    return np.concatenate([xy - half, xy + half], -1).astype(np.float32)


def _efficient_nms_image(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
                         max_output_boxes: int, background_class: int, class_agnostic: bool,
                         max_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: kept (candidate, class, score), best first."""
    n_cand, c = np.nonzero(scores >= np.float32(score_threshold))
    keep_bg = c != background_class
    n_cand, c = n_cand[keep_bg], c[keep_bg]
    s = scores[n_cand, c]
    order = np.argsort(-s, kind="stable")[:max_candidates]  # nonzero's row-major order = candidate*C + class
    n_cand, c, s = n_cand[order], c[order], s[order]
    b = boxes[n_cand]
    areas = box_areas(b)
    thr = np.float32(iou_threshold)
    alive = np.ones(len(s), dtype=bool)
    kept: list[int] = []
    for i in range(len(s)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == max_output_boxes:
            break
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        if not class_agnostic:
            rest = rest[c[rest] == c[i]]
        alive[rest[iou_one_to_many(b[i], areas[i], b[rest], areas[rest]) >= thr]] = False
    k = np.asarray(kept, dtype=np.int64)
    return n_cand[k], c[k], s[k]


def efficient_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                  max_output_boxes: int, background_class: int = -1, score_activation: int = 0,
                  class_agnostic: int = 0, box_coding: int = 0, max_candidates: int = DEFAULT_MAX_CANDIDATES,
                  **_plugin_fields) -> list[np.ndarray]:
    """``EfficientNMS_TRT`` (standard mode, two inputs).

    Args:
        boxes: ``[B, N, 4]`` (``box_coding`` 0: x1y1x2y2, 1: cx cy w h).
        scores: ``[B, N, C]``.
        score_threshold, iou_threshold, max_output_boxes, background_class, score_activation,
        class_agnostic, box_coding: The plugin attributes.
        max_candidates: Pairs considered after sorting.
        **_plugin_fields: Other node attributes (``plugin_version``...), ignored.

    Returns:
        ``num_detections [B,1] int32``, ``detection_boxes [B,K,4]``, ``detection_scores [B,K]``,
        ``detection_classes [B,K] int32`` (zeros past the detections; boxes as corners).
    """
    B, K = boxes.shape[0], int(max_output_boxes)
    boxes = _corners(boxes, box_coding)
    scores = scores.astype(np.float32)
    if score_activation:
        scores = (1 / (1 + np.exp(-scores))).astype(np.float32)
    num = np.zeros((B, 1), np.int32)
    out_boxes, out_scores = np.zeros((B, K, 4), np.float32), np.zeros((B, K), np.float32)
    out_classes = np.zeros((B, K), np.int32)
    for b in range(B):
        n, c, s = _efficient_nms_image(boxes[b], scores[b], score_threshold, iou_threshold, K, background_class,
                                       bool(class_agnostic), max_candidates)
        m = len(n)
        num[b, 0] = m
        out_boxes[b, :m], out_scores[b, :m], out_classes[b, :m] = boxes[b][n], s, c
    return [num, out_boxes, out_scores, out_classes]


def efficient_nms_onnx(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                       max_output_boxes_per_class: int, center_point_box: int = 0,
                       max_candidates: int = DEFAULT_MAX_CANDIDATES, **_plugin_fields) -> list[np.ndarray]:
    """``EfficientNMS_ONNX_TRT``: ``[B*K, 3]`` int32 ``(batch, class, candidate)`` rows, padded.

    Args:
        boxes: ``[B, N, 4]`` (``center_point_box`` 0: corners, 1: cx cy w h).
        scores: ``[B, N, C]``.
        score_threshold, iou_threshold, max_output_boxes_per_class, center_point_box: The plugin attributes.
        max_candidates: Pairs considered after sorting.
        **_plugin_fields: Other node attributes, ignored.
    """
    B, K = boxes.shape[0], int(max_output_boxes_per_class)
    corners = _corners(boxes, center_point_box)
    rows = []
    for b in range(B):
        n, c, _ = _efficient_nms_image(corners[b], scores[b].astype(np.float32), score_threshold, iou_threshold,
                                       K, -1, False, max_candidates)
        rows += [(b, ci, ni) for ni, ci in zip(n, c)]
    out = np.full((B * K, 3), -1, dtype=np.int32)
    if rows:
        out[:len(rows)] = rows
        out[len(rows):] = rows[-1]
    return [out]


PLUGINS: dict[str, Callable[..., list[np.ndarray]]] = {
    "EfficientNMS_TRT": efficient_nms,
    "EfficientNMS_ONNX_TRT": efficient_nms_onnx,
}
"""Plugin op type -> reference ``(*inputs, **attributes) -> outputs``."""


def run_with_references(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                        plugins: Mapping[str, Callable[..., list[np.ndarray]]] | None = None
                        ) -> dict[str, np.ndarray]:
    """Evaluates a graph whose plugin nodes ONNX Runtime cannot run.

    Plugin nodes are taken in graph order; for each, the sub-graph computing its inputs from
    what is already known runs in ONNX Runtime, then the plugin's reference runs; finally the
    sub-graph from everything known to the graph outputs runs.

    Args:
        model: The model.
        feeds: Graph input name -> array.
        plugins: Op type -> reference; default :data:`PLUGINS`.

    Returns:
        Graph output name -> array.
    """
    from onnx.utils import Extractor

    from convert.onnxutil import ort_session

    plugins = dict(PLUGINS if plugins is None else plugins)
    model = onnx.shape_inference.infer_shapes(model)
    extractor = Extractor(model)
    known: dict[str, np.ndarray] = dict(feeds)

    def evaluate(names: list[str]) -> None:
        wanted = [n for n in names if n not in known]
        if not wanted:
            return
        sub = extractor.extract_model(list(known), wanted)
        sess = ort_session(sub.SerializeToString())
        inputs = {i.name for i in sess.get_inputs()}
        known.update(zip(wanted, sess.run(wanted, {k: v for k, v in known.items() if k in inputs})))

    for node in model.graph.node:
        if node.op_type not in plugins:
            continue
        evaluate([i for i in node.input if i])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        results = plugins[node.op_type](*(known[i] for i in node.input if i), **attrs)
        known.update(zip(node.output, results))
    outputs = [o.name for o in model.graph.output]
    evaluate(outputs)
    return {n: known[n] for n in outputs}
