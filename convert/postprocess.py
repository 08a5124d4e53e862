"""Detection post-processing: one definition, three implementations that agree.

The in-graph ONNX post-processing (:mod:`convert.graph`, back-end ``onnx``), the host-side
numpy post-processing here (:func:`postprocess`) and the PyTorch reference
(:func:`torch_reference`) compute exactly the following, so a truncated model post-processed
on the host, an end-to-end model and the PyTorch model give the same detections.

Semantics
---------
1. **Decode** (per head type, see :data:`HEADS`) into candidates, in the order level, anchor,
   y, x (candidate index ``n``):

   * ``boxes [B, N, 4]`` x1, y1, x2, y2 in network-input pixels;
   * ``scores [B, N, C]`` per-class scores;
   * ``keypoints [B, N, nk, 3]`` x, y (input pixels), visibility, for keypoint heads.

   ``yolov5`` / ``yolov5_pose`` (YOLOv5 v6.1, YOLO-Pose): ``s = sigmoid`` of the box,
   objectness and class channels; ``xy = (s*2 - 0.5 + grid) * stride``,
   ``wh = (s*2)**2 * anchor``, ``x1y1 = xy - wh/2``, ``x2y2 = xy + wh/2``,
   ``score = sigmoid(obj) * sigmoid(cls)``; keypoint ``xy = (raw*2 - 0.5 + grid) * stride``
   (no sigmoid), visibility ``sigmoid(raw)``.
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

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


# --- step 1: decoding, one function per head type -------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: sigmoid -> 0, as wanted
        return 1 / (1 + np.exp(-x))


def _grid(h: int, w: int) -> np.ndarray:
    """Cell offsets ``[1, 1, 2, h*w]`` (x; y), y-major as the maps are flattened."""
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()])[None, None]


def decode_yolov5(maps: Sequence[np.ndarray], head: dict[str, Any]) -> Candidates:
    """Decodes YOLOv5 / YOLO-Pose raw maps ``[B, na*no, H, W]`` (one per level), step 1.

    The arithmetic is written in the same order as the ONNX decode and the PyTorch model's,
    so results differ only by the runtimes' sigmoid rounding. It runs on the maps' own
    channel-major layout (contiguous) and transposes the results once.
    """
    nc, nk, na = int(head["nc"]), int(head.get("nk") or 0), int(head["na"])
    no = 5 + nc + 3 * nk
    boxes, scores, kpts = [], [], []
    for level, (p, stride, anchors) in enumerate(zip(maps, head["strides"], head["anchors"], strict=True)):
        p = np.asarray(p, dtype=np.float32)
        b, ch, h, w = p.shape
        if ch != na * no:
            raise ConvertError(f"head level {level}: {ch} channels, but the head metadata says "
                               f"na*(5+nc+3*nk) = {na}*{no} = {na * no}.",
                               hint="check the head's nc/nk against the model.")
        x = p.reshape(b, na, no, h * w)  # [B, na, field, cell]
        grid, s = _grid(h, w), np.float32(stride)
        anchor = np.asarray(anchors, dtype=np.float32).reshape(1, na, 2, 1)
        det = _sigmoid(x[:, :, :5 + nc])
        xy = (det[:, :, 0:2] * 2 - 0.5 + grid) * s
        t = det[:, :, 2:4] * 2
        half = t * t * anchor / 2
        boxes.append(np.concatenate([xy - half, xy + half], 2).transpose(0, 1, 3, 2).reshape(b, -1, 4))
        scores.append((det[:, :, 4:5] * det[:, :, 5:]).transpose(0, 1, 3, 2).reshape(b, -1, nc))
        if nk:
            k = x[:, :, 5 + nc:].reshape(b, na, nk, 3, h * w)
            kxy = (k[:, :, :, 0:2] * 2 - 0.5 + grid[:, :, None]) * s
            kpt = np.concatenate([kxy, _sigmoid(k[:, :, :, 2:3])], 3)  # [B, na, nk, 3, cell]
            kpts.append(kpt.transpose(0, 1, 4, 2, 3).reshape(b, -1, nk, 3))
    return Candidates(np.concatenate(boxes, 1), np.concatenate(scores, 1),
                      np.concatenate(kpts, 1) if nk else None)


@dataclass(frozen=True)
class HeadType:
    """A supported head type.

    Attributes:
        decode: Host-side decoder (raw maps, head metadata) -> :class:`Candidates`.
        keypoints: Whether the head predicts keypoints.
    """

    decode: Callable[[Sequence[np.ndarray], dict[str, Any]], Candidates]
    keypoints: bool


HEADS: dict[str, HeadType] = {
    "yolov5": HeadType(decode_yolov5, keypoints=False),
    "yolov5_pose": HeadType(decode_yolov5, keypoints=True),
}
"""Head type (``meta["head"]["type"]``) -> decoder. A new head type (e.g. an anchor-free DFL
head) adds an entry here and one in :data:`convert.graph.decode.DECODERS`; NMS is shared."""


def head_type(head: dict[str, Any] | None) -> HeadType:
    """The :class:`HeadType` of a head metadata dict.

    Raises:
        ConvertError: No head metadata, or an unsupported type.
    """
    if not head or "type" not in head:
        raise ConvertError("the model has no head metadata (meta.head.type).",
                           hint="post-processing needs a model exported by this project (load -> truncate_head "
                           "-> export_onnx), whose metadata describes the head.")
    if head["type"] not in HEADS:
        raise ConvertError(f"head type {head['type']!r} is not supported by post-processing.",
                           hint=f"supported: {', '.join(HEADS)}.")
    return HEADS[head["type"]]


def decode(maps: Sequence[np.ndarray], head: dict[str, Any]) -> Candidates:
    """Step 1 for any supported head type (dispatch on ``head["type"]``)."""
    return head_type(head).decode(maps, head)


# --- steps 2-6 -------------------------------------------------------------------------------


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[..., 4]`` x1y1x2y2 boxes, in float32 as ONNX Runtime computes them."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou_one_to_many(box: np.ndarray, area: np.float32, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU of one box with many, float32, in ONNX Runtime's operation order (0 without overlap)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, np.float32(0))
    with np.errstate(invalid="ignore", divide="ignore"):  # non-overlapping degenerate boxes: 0/0, masked below
        iou = inter / (area + areas - inter)
    return np.where(overlap & (inter > 0), iou, np.float32(0))


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
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        alive[rest[iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest]) > thr]] = False
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


def postprocess(maps: Sequence[np.ndarray], head: dict[str, Any], settings: NMSSettings,
                keypoints: bool | None = None) -> Detections:
    """Host-side post-processing of a truncated model's raw maps (all steps).

    Args:
        maps: Raw per-level maps, in the order of ``head["strides"]``.
        head: The model's head metadata (``meta["head"]``).
        settings: Thresholds and limits.
        keypoints: Whether to return keypoints; default: when the head has them.

    Returns:
        The padded detections in network-input pixels (see :meth:`Detections.image` and
        :meth:`ImageDetections.to_original`).
    """
    cands = decode(maps, head)
    if keypoints is False:
        cands = replace(cands, keypoints=None)
    return select(cands, settings)


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


# --- PyTorch reference -------------------------------------------------------------------------


def torch_reference(decoded, head: dict[str, Any], settings: NMSSettings, keypoints: bool | None = None
                    ) -> Detections:
    """The PyTorch reference: steps 2-6 in torch on a YOLOv5-family model's decoded output.

    An implementation independent of :func:`postprocess` (decode by the model code, NMS in
    torch), used to check the host-side and in-graph post-processing against.

    Args:
        decoded: ``[B, N, 5+nc+3*nk]`` tensor from :class:`convert.models.yolo.YoloModel`'s
            decoded forward or :func:`convert.models.yolo.decode_raw` (cx, cy, w, h, obj, classes,
            keypoints).
        head: The head metadata (``nc``, ``nk``).
        settings: Thresholds and limits.
        keypoints: Whether to return keypoints; default: when the head has them.

    Returns:
        Padded detections (numpy), as :func:`postprocess`.
    """
    import torch

    nc, nk = int(head["nc"]), int(head.get("nk") or 0)
    with_kpts = bool(nk) if keypoints is None else keypoints and bool(nk)
    d = decoded.detach().float().cpu()
    B, N, _ = d.shape
    half = d[..., 2:4] / 2
    boxes_all = torch.cat([d[..., 0:2] - half, d[..., 0:2] + half], -1)
    scores_all = d[..., 4:5] * d[..., 5:5 + nc]
    kpts_all = d[..., 5 + nc:].reshape(B, N, nk, 3) if with_kpts else None
    K = settings.max_detections
    thr = torch.tensor(settings.score_threshold, dtype=torch.float32)
    iou_thr = torch.tensor(settings.iou_threshold, dtype=torch.float32)
    out = Detections(np.zeros((B, 1), np.int32), np.zeros((B, K, 4), np.float32), np.zeros((B, K), np.float32),
                     np.zeros((B, K), np.int32), np.zeros((B, K, nk, 3), np.float32) if with_kpts else None)
    for b in range(B):
        boxes, scores = boxes_all[b], scores_all[b]
        kpts = kpts_all[b] if with_kpts else None
        if settings.pre_top_k is not None:
            order = torch.sort(scores.max(1).values, descending=True, stable=True).indices[:settings.pre_top_k]
            boxes, scores = boxes[order], scores[order]
            kpts = kpts[order] if with_kpts else None
        n_cand = scores.shape[0]
        best = None
        if settings.class_agnostic:
            top_scores, best = scores.max(1, keepdim=True)
            scores = top_scores
        kept = []  # (score, flat index, candidate, class)
        for c in range(scores.shape[1]):
            idx = torch.nonzero(scores[:, c] > thr).flatten()
            if not len(idx):
                continue
            idx = idx[torch.sort(scores[idx, c], descending=True, stable=True).indices]
            iou = _torch_iou(boxes[idx])
            suppressed = torch.zeros(len(idx), dtype=torch.bool)
            n_kept = 0
            for i in range(len(idx)):
                if suppressed[i]:
                    continue
                n = int(idx[i])
                kept.append((float(scores[n, c]), c * n_cand + n, n, c))
                n_kept += 1
                if n_kept == K:
                    break
                suppressed |= iou[i] > iou_thr
        kept.sort(key=lambda t: (-t[0], t[1]))
        kept = kept[:K]
        out.num_dets[b, 0] = len(kept)
        for j, (s, _, n, c) in enumerate(kept):
            out.boxes[b, j] = boxes[n].numpy()
            out.scores[b, j] = s
            out.classes[b, j] = int(best[n, 0]) if best is not None else c
            if with_kpts:
                out.keypoints[b, j] = kpts[n].numpy()
    return out


def _torch_iou(boxes):
    """Pairwise IoU ``[m, m]`` in float32, same operation order as :func:`iou_one_to_many`."""
    import torch

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iw = torch.minimum(boxes[:, None, 2], boxes[None, :, 2]) - torch.maximum(boxes[:, None, 0], boxes[None, :, 0])
    ih = torch.minimum(boxes[:, None, 3], boxes[None, :, 3]) - torch.maximum(boxes[:, None, 1], boxes[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = torch.where(overlap, iw * ih, torch.zeros(()))
    iou = inter / (area[:, None] + area[None, :] - inter)
    return torch.where(overlap & (inter > 0), iou, torch.zeros(()))
