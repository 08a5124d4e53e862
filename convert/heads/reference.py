"""The PyTorch reference of post-processing, the oracle tests and benchmarks check against.

An implementation independent of :func:`convert.heads.postprocess`: the model code's own
decode (its decoded forward), read by the head family's :meth:`convert.heads.Head.torch_candidates`,
then steps 2-6 of :mod:`convert.postprocess` written in torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convert import heads
from convert.postprocess import Detections, NMSSettings


def torch_reference(decoded, head: dict[str, Any] | heads.Head, settings: NMSSettings,
                    keypoints: bool | None = None) -> Detections:
    """Steps 2-6 in torch on a model's decoded output.

    Args:
        decoded: The decoded forward of the model (layout of its head family), a torch tensor.
        head: The head metadata (``meta["head"]`` or the typed head).
        settings: Thresholds and limits.
        keypoints: Whether to return keypoints; default: when the head has them.

    Returns:
        Padded detections (numpy), as :func:`convert.heads.postprocess`.
    """
    import torch

    typed = heads.parse(head)
    nk = typed.nk
    with_kpts = bool(nk) if keypoints is None else keypoints and bool(nk)
    boxes_all, scores_all, kpts_all = typed.torch_candidates(decoded)
    B = boxes_all.shape[0]
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
