"""Detection post-processing: one definition, three implementations that agree.

The in-graph ONNX post-processing (:mod:`convert.graph`, back-end ``onnx``), the host-side
numpy post-processing (:func:`convert.heads.postprocess`: the head's decode, then :func:`select`
here) and the PyTorch reference (:func:`convert.heads.reference.torch_reference`) compute exactly
the following, so a truncated model post-processed on the host, an end-to-end model and the
PyTorch model give the same detections.

Semantics
---------
1. **Decode**, by the head's family (one module per family in :mod:`convert.heads`, which
   documents its layout and arithmetic: :mod:`convert.heads.yolov5` for YOLOv5 / YOLO-Pose,
   :mod:`convert.heads.yolov8` for ultralytics YOLOv8 / YOLO11, :mod:`convert.heads.distance` and
   :mod:`convert.heads.yolox` for mmyolo's anchor-free families) into candidates, in the order
   level, anchor, y, x (candidate index ``n``):

   * ``boxes [B, N, 4]`` x1, y1, x2, y2 in network-input pixels;
   * ``scores [B, N, C]`` per-class scores;
   * ``keypoints [B, N, nk, 3]`` x, y (input pixels), visibility, for keypoint heads.
2. **Pre-NMS top-k** (optional, ``pre_top_k``): keep the ``k`` candidates with the highest
   best-class score, ties to the lower index, and renumber them in that (descending) order.
   Because the ranking key is the best-class score and a candidate can only pass the score
   threshold of step 3 if its best-class score does, thresholding first and then taking the
   top-k selects the same pairs: the order of the two steps does not matter.
3. **Score threshold**: a (candidate, class) pair competes iff ``score > score_threshold``
   (strict, float32), as ONNX Runtime's NonMaxSuppression.
4. **NMS**, greedy, per class (class-aware) or over the best class of each candidate
   (class-agnostic: score = max over classes, class = the first class reaching it). Pairs are
   visited by descending score, ties to the lower candidate index; a pair is dropped iff its
   IoU with an already kept pair of the same class is ``> iou_threshold`` (strict). IoU is
   computed in float32 as ONNX Runtime does: ``inter / (area_a + area_b - inter)``, 0 when
   the boxes do not overlap. At most ``max_detections`` pairs are kept per class.
5. **Top-K over classes**: the kept pairs ordered by descending score, ties by
   ``class * N + n`` ascending (``N`` candidates after step 2); the first
   ``K = max_detections`` are the detections.
6. **Output** (the project's end-to-end contract): ``num_dets [B, 1] int32``,
   ``boxes [B, K, 4] float32``, ``scores [B, K] float32``, ``classes [B, K] int32`` and, for
   keypoint heads, ``keypoints [B, K, nk, 3] float32``; rows past ``num_dets`` are zeros.
   :meth:`ImageDetections.to_original` maps boxes and keypoints back through the letterbox
   (:class:`convert.preprocess.Transform`).

Back-end differences (only on exact float equalities, which real images practically never hit):
OpenVINO's NonMaxSuppression drops a pair whose IoU *equals* the threshold and its TopK does
not order equal scores by index. TensorRT's EfficientNMS plugins compare with ``>=``; the
graph rewrite passes them the next float32 above each threshold, which makes ``>=`` the same
as ``>``. The plugins also consider only the highest-scoring few thousand pairs per image
(4096, 5000 or 2000 depending on version and device) and leave the order of equal scores
undefined.

The keypoints of a kept pair are those of its candidate, so keypoints follow their box through
every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from convert.errors import ConvertError
from convert.preprocess import Transform

OUTPUT_NAMES = ("num_dets", "boxes", "scores", "classes", "keypoints")
"""Output names of every end-to-end model and of host-side post-processing (keypoints: pose only)."""


@dataclass(frozen=True)
class NMSSettings:
    """Thresholds and limits of steps 2-5 of the module docstring.

    Attributes:
        score_threshold: Pairs with score ``<=`` this are discarded.
        iou_threshold: A pair overlapping a kept one of its class by IoU ``>`` this is dropped.
        max_detections: ``K``, detections per image (and kept pairs per class).
        pre_top_k: Candidates kept before NMS by best-class score; ``None``: all.
        class_agnostic: NMS across classes, each candidate taking its best class.
    """

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    pre_top_k: int | None = None
    class_agnostic: bool = False


@dataclass
class Candidates:
    """Decoded candidates of a batch (step 1).

    Attributes:
        boxes: ``[B, N, 4]`` float32 x1, y1, x2, y2 in network-input pixels.
        scores: ``[B, N, C]`` float32 per-class scores.
        keypoints: ``[B, N, nk, 3]`` float32 x, y, visibility; ``None`` without keypoints.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None = None


@dataclass
class ImageDetections:
    """The valid detections of one image, best first.

    Attributes:
        boxes: ``[n, 4]`` x1, y1, x2, y2.
        scores: ``[n]``.
        classes: ``[n]`` int32.
        keypoints: ``[n, nk, 3]`` x, y, visibility, or ``None``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def to_original(self, tf: Transform) -> ImageDetections:
        """Maps boxes (clipped to the image) and keypoint positions to original-image pixels."""
        kpts = None
        if self.keypoints is not None:
            kpts = self.keypoints.copy()
            kpts[..., :2] = tf.points_to_original(self.keypoints[..., :2])
        return replace(self, boxes=tf.boxes_to_original(self.boxes), keypoints=kpts)


@dataclass
class Detections:
    """Padded detections of a batch, laid out as the end-to-end output contract (step 6).

    Attributes:
        num_dets: ``[B, 1]`` int32.
        boxes: ``[B, K, 4]`` float32.
        scores: ``[B, K]`` float32.
        classes: ``[B, K]`` int32.
        keypoints: ``[B, K, nk, 3]`` float32, or ``None``.
    """

    num_dets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    keypoints: np.ndarray | None = None

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray]) -> Detections:
        """Wraps the named outputs of an end-to-end model (extra outputs are ignored)."""
        missing = [n for n in OUTPUT_NAMES[:4] if n not in outputs]
        if missing:
            raise ConvertError(f"model outputs lack {', '.join(missing)} (have {', '.join(outputs)}).",
                               hint="run an end-to-end model (postprocess stage), or post-process on the host.")
        return cls(*(np.asarray(outputs[n]) for n in OUTPUT_NAMES[:4]),
                   keypoints=np.asarray(outputs["keypoints"]) if "keypoints" in outputs else None)

    def outputs(self) -> dict[str, np.ndarray]:
        """The arrays by output name (``keypoints`` only when present)."""
        out = dict(zip(OUTPUT_NAMES, (self.num_dets, self.boxes, self.scores, self.classes)))
        if self.keypoints is not None:
            out["keypoints"] = self.keypoints
        return out

    def __len__(self) -> int:
        return len(self.num_dets)

    def image(self, i: int) -> ImageDetections:
        """The ``num_dets[i]`` valid detections of image ``i``."""
        n = int(self.num_dets[i, 0])
        return ImageDetections(self.boxes[i, :n], self.scores[i, :n], self.classes[i, :n],
                               None if self.keypoints is None else self.keypoints[i, :n])


# --- steps 2-6 -------------------------------------------------------------------------------


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[..., 4]`` x1y1x2y2 boxes, in float32 as ONNX Runtime computes them."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of x1y1x2y2 boxes (0 where a union is empty), in float64: what
    detection matching (compare, the drawn difference view, benches) uses, not the NMS hot loop."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_one_to_many(box: np.ndarray, area: np.float32, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of one box with many, float32, in ONNX Runtime's operation order (0 without overlap)."""
    return iou_rows(box[None], np.asarray(area)[None], boxes, areas)[0]


def iou_rows(rows: np.ndarray, row_areas: np.ndarray, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU ``[r, m]`` of each of ``rows`` with each of ``boxes``, float32, in ONNX Runtime's
    operation order (0 without overlap): every element as :func:`iou_one_to_many` computes it."""
    iw = np.minimum(rows[:, None, 2], boxes[None, :, 2]) - np.maximum(rows[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(rows[:, None, 3], boxes[None, :, 3]) - np.maximum(rows[:, None, 1], boxes[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, np.float32(0))
    with np.errstate(invalid="ignore", divide="ignore"):  # non-overlapping degenerate boxes: 0/0, masked below
        iou = inter / (row_areas[:, None] + areas[None, :] - inter)
    return np.where(overlap & (inter > 0), iou, np.float32(0))


NMS_BLOCK = 256
"""Rows of the IoU matrix :func:`greedy_nms` computes at once (256 x m float32 at most)."""


def greedy_nms(boxes: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS over boxes already in visiting order (step 4 for one class).

    Args:
        boxes: ``[m, 4]`` float32, best first.
        iou_threshold: A box is dropped if its IoU with a kept one is strictly greater.
        limit: Stop after this many kept boxes.

    Returns:
        Positions of the kept boxes, in visiting order.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    thr = np.float32(iou_threshold)
    areas = box_areas(boxes)
    alive = np.ones(len(boxes), dtype=bool)
    keep: list[int] = []
    # The IoUs of a block of boxes with all are computed at once (the same float32 values as box by
    # box), so the loop over the kept boxes only combines masks (random boxes: about 2x faster)
    for start in range(0, len(boxes), NMS_BLOCK):
        stop = min(start + NMS_BLOCK, len(boxes))
        if not alive[start:stop].any():
            continue
        suppress = iou_rows(boxes[start:stop], areas[start:stop], boxes, areas) > thr
        for i in range(start, stop):
            if not alive[i]:
                continue
            keep.append(i)
            if len(keep) == limit:
                return np.asarray(keep, dtype=np.int64)
            alive[i + 1:] &= ~suppress[i - start, i + 1:]
    return np.asarray(keep, dtype=np.int64)


def select(cands: Candidates, settings: NMSSettings) -> Detections:
    """Steps 2-6 on decoded candidates: pre-top-k, threshold, NMS, top-K, padding."""
    B, N, C = cands.scores.shape
    K = settings.max_detections
    nk = None if cands.keypoints is None else cands.keypoints.shape[2]
    out = Detections(np.zeros((B, 1), np.int32), np.zeros((B, K, 4), np.float32), np.zeros((B, K), np.float32),
                     np.zeros((B, K), np.int32), None if nk is None else np.zeros((B, K, nk, 3), np.float32))
    thr = np.float32(settings.score_threshold)
    for b in range(B):
        boxes, scores = np.asarray(cands.boxes[b], np.float32), np.asarray(cands.scores[b], np.float32)
        kpts = None if cands.keypoints is None else cands.keypoints[b]
        if settings.pre_top_k is not None:
            order = np.argsort(-scores.max(1), kind="stable")[:settings.pre_top_k]
            boxes, scores = boxes[order], scores[order]
            kpts = None if kpts is None else kpts[order]
        n_cand = len(scores)
        if settings.class_agnostic:
            best = scores.argmax(1)
            scores = scores[np.arange(n_cand), best][:, None]
        cand, cls = np.nonzero(scores > thr)
        kept_n, kept_c = [], []
        for c in np.unique(cls):
            idx = cand[cls == c]
            idx = idx[np.argsort(-scores[idx, c], kind="stable")]
            keep = idx[greedy_nms(boxes[idx], settings.iou_threshold, K)]
            kept_n.append(keep)
            kept_c.append(np.full(len(keep), c, dtype=np.int64))
        if not kept_n:
            continue
        n_all, c_all = np.concatenate(kept_n), np.concatenate(kept_c)
        s_all = scores[n_all, c_all]
        top = np.lexsort((c_all * n_cand + n_all, -s_all))[:K]
        n_top, m = n_all[top], len(top)
        out.num_dets[b, 0] = m
        out.boxes[b, :m] = boxes[n_top]
        out.scores[b, :m] = s_all[top]
        out.classes[b, :m] = best[n_top] if settings.class_agnostic else c_all[top]
        if kpts is not None:
            out.keypoints[b, :m] = kpts[n_top]
    return out


# --- comparing detection sets ------------------------------------------------------------------


@dataclass
class Agreement:
    """How two detection sets of one image compare (:func:`match`).

    Attributes:
        count_a: Detections in the first set.
        count_b: Detections in the second set.
        matched: Pairs of equal class whose boxes (and keypoints) agree within the tolerance.
        max_box_diff: Largest coordinate difference over matched pairs (px).
        max_kpt_diff: Largest keypoint x/y difference over matched pairs (px).
    """

    count_a: int
    count_b: int
    matched: int
    max_box_diff: float = 0.0
    max_kpt_diff: float = 0.0

    @property
    def same(self) -> bool:
        """Same count and every detection matched."""
        return self.count_a == self.count_b == self.matched


def match(a: ImageDetections, b: ImageDetections, tol: float = 1e-3) -> Agreement:
    """Pairs detections of two sets one to one (same class, every box coordinate within ``tol``).

    Order is not compared: runtimes may order near-equal scores differently. Keypoints, when
    both sets have them, must agree within ``tol`` too (x and y).
    """
    used = np.zeros(len(b), dtype=bool)
    matched, box_diff, kpt_diff = 0, 0.0, 0.0
    for i in range(len(a)):
        diffs = np.abs(b.boxes - a.boxes[i]).max(1) if len(b) else np.zeros(0)
        if a.keypoints is not None and b.keypoints is not None and len(b):
            kd = np.abs(b.keypoints[..., :2] - a.keypoints[i, :, :2]).reshape(len(b), -1).max(1)
        else:
            kd = np.zeros(len(b))
        ok = (~used) & (b.classes == a.classes[i]) & (diffs <= tol) & (kd <= tol)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(diffs[ok])])
            used[j] = True
            matched += 1
            box_diff, kpt_diff = max(box_diff, float(diffs[j])), max(kpt_diff, float(kd[j]))
    return Agreement(len(a), len(b), matched, box_diff, kpt_diff)
