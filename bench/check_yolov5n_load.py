"""Checks that an official YOLOv5 checkpoint loads into our model with its weights mapped right.

Loads the checkpoint with the safe loader (no YOLOv5 repository, no pickled code run), runs
the decoded model on one letterboxed image and prints the detections after a confidence
threshold and per-class NMS. On bus.jpg, yolov5n.pt should find ~4 persons and a bus.

    python bench/check_yolov5n_load.py --weights yolov5n.pt --image bus.jpg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.models.yolo import load_yolov5  # noqa: E402


def letterbox(path: Path, size: int, rect: bool) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resizes keeping aspect ratio and pads with grey 114, as YOLOv5's ``letterbox``.

    Pads to ``size`` x ``size``, or with ``rect`` only up to multiples of 32 (``detect.py``).
    """
    img = Image.open(path).convert("RGB")
    w, h = img.size
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    cw, ch = (-(-nw // 32) * 32, -(-nh // 32) * 32) if rect else (size, size)
    canvas = Image.new("RGB", (cw, ch), (114, 114, 114))
    left, top = (cw - nw) // 2, (ch - nh) // 2
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), (left, top))
    x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return x.contiguous(), r, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS on xyxy boxes; returns kept indices, best first."""
    order = scores.argsort()[::-1]
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        order = order[1:][inter / (areas[i] + areas[order[1:]] - inter) <= iou]
    return keep


def postprocess(pred: np.ndarray, conf: float, iou: float) -> np.ndarray:
    """YOLOv5-style: score = obj * cls, best class per box, per-class NMS. Rows x1,y1,x2,y2,score,cls."""
    pred = pred[pred[:, 4] > conf]
    scores = pred[:, 5:] * pred[:, 4:5]
    cls = scores.argmax(1)
    score = scores[np.arange(len(cls)), cls]
    keep = score > conf
    pred, cls, score = pred[keep], cls[keep], score[keep]
    xy, wh = pred[:, :2], pred[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    kept = nms(boxes + cls[:, None] * 4096.0, score, iou)  # class offset: NMS never mixes classes
    return np.concatenate([boxes[kept], score[kept, None], cls[kept, None]], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="official YOLOv5 .pt checkpoint")
    ap.add_argument("--image", type=Path, required=True, help="image to detect on")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--square", action="store_true", help="pad to imgsz x imgsz (default: minimal, as detect.py)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = load_yolov5(args.weights)
    t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {args.weights} in {t_load * 1000:.0f} ms: {len(model.state_dict())} tensors, "
          f"{n_params:,} parameters, nc={len(model.names)}, strides={model.head_meta()['strides']}")

    x, r, (left, top) = letterbox(args.image, args.imgsz, rect=not args.square)
    with torch.no_grad():
        model(x)  # warm-up
        t0 = time.perf_counter()
        pred = model(x)[0].numpy()
        t_inf = time.perf_counter() - t0
    print(f"inference {tuple(x.shape)} -> {tuple(pred.shape)} in {t_inf * 1000:.0f} ms")

    dets = postprocess(pred, args.conf, args.iou)
    print(f"{len(dets)} detections (conf > {args.conf}, IoU {args.iou}), boxes in original image pixels:")
    for x1, y1, x2, y2, score, c in dets:
        box = [(x1 - left) / r, (y1 - top) / r, (x2 - left) / r, (y2 - top) / r]
        print(f"  {model.names[int(c)]:<12} {score:.2f}  [{', '.join(f'{v:.0f}' for v in box)}]")
    counts = {model.names[int(c)]: int((dets[:, 5] == c).sum()) for c in np.unique(dets[:, 5])}
    print("counts:", counts)


if __name__ == "__main__":
    main()
