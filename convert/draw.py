"""Drawing detections on photos: boxes, class names, scores, pose skeletons, panels and differences.

Used by ``convert predict`` (annotated images) and the report (one panel per photo with every
artifact side by side, plus what differs from the first). Pillow only; boxes and keypoints are
in original-image pixels (:meth:`convert.postprocess.ImageDetections.to_original`), so what is
drawn is what a user of the artifact gets, letterbox mapping included.

The output is deterministic (same detections, same bytes), so pictures can live in
content-addressed artifacts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from convert.postprocess import box_iou

COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
"""Limbs of COCO's 17 person keypoints (0-based indices: nose, eyes, ears, shoulders, elbows, wrists,
hips, knees, ankles), as COCO's ``person_keypoints`` category lists them."""

_PALETTE = ((255, 56, 56), (72, 149, 255), (80, 200, 80), (255, 157, 40), (190, 90, 255), (0, 200, 200),
            (255, 80, 180), (150, 150, 30), (120, 70, 40), (0, 120, 120))
_LIMB_COLOURS = {"head": (255, 200, 40), "arm": (60, 170, 255), "torso": (255, 90, 200), "leg": (60, 220, 120)}
_ONLY_REF, _ONLY_MODEL, _SAME = (230, 30, 30), (30, 90, 255), (150, 150, 150)


def _limb_colour(a: int, b: int) -> tuple[int, int, int]:
    if max(a, b) <= 6 and not {a, b} == {5, 6}:
        return _LIMB_COLOURS["head"]
    if {a, b} & {7, 8, 9, 10}:
        return _LIMB_COLOURS["arm"]
    if {a, b} & {13, 14, 15, 16}:
        return _LIMB_COLOURS["leg"]
    return _LIMB_COLOURS["torso"]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def _image(img):
    from PIL import Image

    return img.copy().convert("RGB") if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))


def _label(draw, xy: tuple[float, float], text: str, colour, font, width: int) -> None:
    """A filled tag above (or inside, at the top edge) the point ``xy``."""
    left, t, r, b = draw.textbbox((0, 0), text, font=font)
    w, h = r - left + 4, b - t + 4
    x = min(max(0, xy[0]), max(0, width - w))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + 2 - left, y + 2 - t), text, fill=(255, 255, 255), font=font)


def draw_detections(img, det, names: Sequence[str] = (), kpt_conf: float = 0.5, colour=None,
                    labels: bool = True):
    """Draws one image's detections.

    Args:
        img: HxWx3 uint8 RGB array or a PIL image (not modified).
        det: :class:`convert.postprocess.ImageDetections` in original-image pixels.
        names: Class names (index = class); missing ones are drawn as the number.
        kpt_conf: Keypoints with a visibility score below this are not drawn (nor their limbs).
        colour: One colour for everything (difference views); default: by class.
        labels: Draw ``name score`` tags.

    Returns:
        A new RGB PIL image.
    """
    from PIL import ImageDraw

    out = _image(img)
    draw = ImageDraw.Draw(out)
    W, H = out.size
    line = max(1, round(max(W, H) / 400))
    font = _font(max(10, round(max(W, H) / 60)))
    n = len(det.scores)
    for j in range(n - 1, -1, -1):  # best last, so it is on top
        cls = int(det.classes[j])
        c = colour or _PALETTE[cls % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in det.boxes[j])
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=c, width=line)
        if det.keypoints is not None:
            _draw_pose(draw, np.asarray(det.keypoints[j], np.float32), kpt_conf, line, colour)
        if labels:
            name = names[cls] if 0 <= cls < len(names) else str(cls)
            _label(draw, (x1, y1), f"{name} {float(det.scores[j]):.2f}", c, font, W)
    return out


def _draw_pose(draw, kpts: np.ndarray, kpt_conf: float, line: int, colour=None) -> None:
    nk = len(kpts)
    visible = kpts[:, 2] >= kpt_conf if kpts.shape[1] > 2 else np.ones(nk, bool)
    if nk == 17:
        for a, b in COCO_SKELETON:
            if visible[a] and visible[b]:
                draw.line([tuple(kpts[a, :2]), tuple(kpts[b, :2])], fill=colour or _limb_colour(a, b),
                          width=line + 1)
    r = line + 2
    for k in np.flatnonzero(visible):
        x, y = float(kpts[k, 0]), float(kpts[k, 1])
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour or (255, 255, 255), outline=(0, 0, 0))


def match_boxes(a, b, iou: float = 0.5) -> list[tuple[int, int]]:
    """Pairs detections of two sets one to one: same class, IoU >= ``iou``, greedy by IoU.

    Returns:
        ``(index in a, index in b)`` pairs.
    """
    m = box_iou(a.boxes, b.boxes)
    m[np.asarray(a.classes)[:, None] != np.asarray(b.classes)[None, :]] = 0
    pairs = []
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        pairs.append((int(i), int(j)))
        m[i, :], m[:, j] = 0, 0
    return sorted(pairs)


def _subset(det, idx: Sequence[int]):
    from dataclasses import replace

    idx = np.asarray(list(idx), dtype=np.int64)
    return replace(det, boxes=np.asarray(det.boxes)[idx].reshape(-1, 4), scores=np.asarray(det.scores)[idx],
                   classes=np.asarray(det.classes)[idx],
                   keypoints=None if det.keypoints is None else np.asarray(det.keypoints)[idx])


def draw_difference(img, ref, other, names: Sequence[str] = (), iou: float = 0.5) -> tuple[Any, dict[str, int]]:
    """What differs between two detection sets of one image.

    Boxes matched (same class, IoU >= ``iou``) are drawn thin and grey; those only in ``ref`` red,
    those only in ``other`` blue, with their tags.

    Returns:
        (the picture, counts ``matched``, ``only_ref``, ``only_other``).
    """
    pairs = match_boxes(ref, other, iou)
    mi, mj = {i for i, _ in pairs}, {j for _, j in pairs}
    only_ref = [i for i in range(len(ref.scores)) if i not in mi]
    only_other = [j for j in range(len(other.scores)) if j not in mj]
    out = draw_detections(img, _subset(other, sorted(mj)), names, colour=_SAME, labels=False)
    out = draw_detections(out, _subset(ref, only_ref), names, colour=_ONLY_REF)
    out = draw_detections(out, _subset(other, only_other), names, colour=_ONLY_MODEL)
    return out, {"matched": len(pairs), "only_ref": len(only_ref), "only_other": len(only_other)}


def panel(tiles: Sequence[tuple[str, Any]], columns: int | None = None, tile_width: int = 480):
    """Tiles side by side, each scaled to ``tile_width`` and titled, ``columns`` per row.

    Args:
        tiles: (title, PIL image) pairs.
        columns: Tiles per row (default: all in one row).
        tile_width: Width each tile is scaled to (keeps the aspect ratio).

    Returns:
        One RGB PIL image.
    """
    from PIL import Image, ImageDraw

    columns = columns or max(1, len(tiles))
    font = _font(14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = 18
    scaled = []
    for title, im in tiles:
        h = max(1, round(im.height * tile_width / im.width))
        lines = _wrap(measure, title, font, tile_width - 6)  # a long title would run into the next tile's
        scaled.append((lines, im.resize((tile_width, h), Image.BILINEAR)))
    rows = [scaled[i:i + columns] for i in range(0, len(scaled), columns)]
    title_h = [4 + line_h * max(len(lines) for lines, _ in r) for r in rows]
    row_h = [t + max(im.height for _, im in r) for t, r in zip(title_h, rows)]
    gap = 6
    out = Image.new("RGB", (columns * tile_width + (columns - 1) * gap, sum(row_h) + gap * (len(rows) - 1)),
                    (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 0
    for r, h, th in zip(rows, row_h, title_h):
        for k, (lines, im) in enumerate(r):
            x = k * (tile_width + gap)
            for j, line in enumerate(lines):
                draw.text((x + 3, y + 3 + j * line_h), line, fill=(20, 20, 20), font=font)
            out.paste(im, (x, y + th))
        y += h + gap
    return out


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def encode(img, fmt: str = "JPEG") -> bytes:
    """Image bytes (JPEG quality 88 for photos, or PNG), without metadata, deterministic."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buf, format="JPEG", quality=88, optimize=True)
    else:
        img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
