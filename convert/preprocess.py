"""Image loading and preprocessing, shared by calibration, evaluation, comparison and inference.

The preprocessing of a model is recorded once, in its artifact's ``meta["preprocess"]``, and
every consumer calls :func:`preprocess` with it, so calibration sees exactly what inference sees
and boxes and keypoints map back through exactly the transform that was applied.

``meta["preprocess"]`` keys (all JSON):
    size: [H, W] network input size.
    resize: "letterbox" (keep aspect ratio, pad) or "stretch" (plain resize to [H, W]).
    minimal_pad: letterbox pads only to a multiple of ``stride`` (YOLOv5 ``auto=True``); the
        output is then smaller than ``size``, so only for dynamic-shape models.
    stride: the model's largest stride (for ``minimal_pad``).
    pad_value: letterbox fill value (0-255).
    align: letterbox placement: "center" (YOLOv5, mmyolo's LetterResize; the default) or
        "top_left" (padding at the bottom and right only: mmdet's ``Pad``, YOLOX).
    interpolation: "bilinear" (PIL, antialiased; the default), "cv2_bilinear" (OpenCV, as mmdet's
        ``Resize``) or "cv2_area" (OpenCV area when shrinking, bilinear when enlarging, sizes
        truncated: mmyolo's ``YOLOv5KeepRatioResize``); cv2_bilinear rounds sizes half up, as
        ``mmcv.rescale_size``. The cv2 modes need OpenCV.
    channel_order: "RGB" or "BGR".
    scale: multiplier applied after resizing (1/255).
    mean, std: per-channel, applied after ``scale``: (x*scale - mean) / std.
    layout: "NCHW" or "NHWC".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import ConvertError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

DEFAULT_PREPROCESS: dict[str, Any] = {
    "size": [640, 640], "resize": "letterbox", "minimal_pad": False, "stride": 32, "pad_value": 114,
    "channel_order": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW",
}


@dataclass(frozen=True)
class Transform:
    """How an original image was mapped to the network input: ``net = orig * gain + pad``.

    Attributes:
        gain: (gx, gy) scale factors (equal for letterbox).
        pad: (px, py) offsets in network pixels.
        orig_size: (h, w) of the original image.
    """

    gain: tuple[float, float]
    pad: tuple[float, float]
    orig_size: tuple[int, int]

    def boxes_to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """Maps [..., 4] x1y1x2y2 boxes from network to original pixels, clipped to the image."""
        out = np.array(xyxy, dtype=np.float32, copy=True)
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad[0]) / self.gain[0]
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad[1]) / self.gain[1]
        h, w = self.orig_size
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, w)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, h)
        return out

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        """Maps [..., 2] points (keypoints) from network to original pixels (not clipped)."""
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.pad[0]) / self.gain[0]
        out[..., 1] = (out[..., 1] - self.pad[1]) / self.gain[1]
        return out


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image as HxWx3 uint8 RGB, whatever its mode.

    EXIF orientation is applied; grayscale, palette, CMYK, RGBA and 16-bit images are converted.

    Raises:
        ConvertError: The file cannot be read as an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray((arr / peak * 255).round().clip(0, 255).astype(np.uint8))
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ImportError) as e:
        # ImportError: a decoder plugin that is missing (ultralytics, once imported, routes unknown
        # formats to pi_heif)
        raise ConvertError(f"image {path}: cannot be read ({type(e).__name__}: {e}).",
                           hint="remove or replace the file.") from None


def letterbox(img: np.ndarray, size: tuple[int, int], pad_value: int = 114, minimal_pad: bool = False,
              stride: int = 32, align: str = "center", interpolation: str = "bilinear"
              ) -> tuple[np.ndarray, Transform]:
    """Resizes keeping the aspect ratio and pads to ``size`` (or to a stride multiple)."""
    h0, w0 = img.shape[:2]
    H, W = size
    r = min(H / h0, W / w0)
    if interpolation == "bilinear":
        nw, nh = int(round(w0 * r)), int(round(h0 * r))
    elif interpolation == "cv2_area":  # mmyolo's YOLOv5KeepRatioResize truncates
        nw, nh = int(w0 * r), int(h0 * r)
    else:  # mmdet's Resize (mmcv.rescale_size) rounds half up
        nw, nh = int(w0 * r + 0.5), int(h0 * r + 0.5)
    if minimal_pad:
        H = int(np.ceil(nh / stride) * stride)
        W = int(np.ceil(nw / stride) * stride)
    dw, dh = (W - nw) / 2, (H - nh) / 2
    resized = _resize(img, nw, nh, interpolation, r) if (nw, nh) != (w0, h0) else img
    if align == "top_left":
        top = left = 0
    elif align == "center":
        top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    else:
        raise ConvertError(f"preprocess.align: unknown value {align!r}.", hint="use center or top_left.")
    out = np.full((H, W, 3), pad_value, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out, Transform((nw / w0, nh / h0), (float(left), float(top)), (h0, w0))


def _resize(img: np.ndarray, w: int, h: int, interpolation: str = "bilinear", ratio: float = 1.0) -> np.ndarray:
    if interpolation == "bilinear":
        from PIL import Image

        return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    if interpolation not in ("cv2_bilinear", "cv2_area"):
        raise ConvertError(f"preprocess.interpolation: unknown value {interpolation!r}.",
                           hint="use bilinear, cv2_bilinear or cv2_area.")
    try:
        import cv2
    except ImportError:
        raise ConvertError(f"preprocess.interpolation {interpolation} needs OpenCV (cv2), which is not installed.",
                           hint="pip install opencv-python-headless, or use interpolation: bilinear.") from None
    mode = cv2.INTER_AREA if interpolation == "cv2_area" and ratio < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=mode)


def preprocess(img: np.ndarray, pp: dict[str, Any] | None = None) -> tuple[np.ndarray, Transform]:
    """Turns an RGB uint8 image into a network input batch of one.

    Args:
        img: HxWx3 uint8 RGB (from :func:`load_image`).
        pp: The model's ``meta["preprocess"]`` (defaults filled in from ``DEFAULT_PREPROCESS``).

    Returns:
        (float32 array [1,3,H,W] or [1,H,W,3], the transform to map results back).
    """
    pp = {**DEFAULT_PREPROCESS, **(pp or {})}
    H, W = pp["size"]
    if pp["resize"] == "letterbox":
        net, tf = letterbox(img, (H, W), int(pp["pad_value"]), bool(pp["minimal_pad"]), int(pp["stride"]),
                            pp.get("align") or "center", pp.get("interpolation") or "bilinear")
    elif pp["resize"] == "stretch":
        h0, w0 = img.shape[:2]
        net = _resize(img, W, H, pp.get("interpolation") or "bilinear", min(H / h0, W / w0)) \
            if (h0, w0) != (H, W) else img
        tf = Transform((W / w0, H / h0), (0.0, 0.0), (h0, w0))
    else:
        raise ConvertError(f"preprocess.resize: unknown mode {pp['resize']!r}.", hint="use letterbox or stretch.")
    x = net.astype(np.float32)
    if pp["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = x * np.float32(pp["scale"])
    mean, std = np.asarray(pp["mean"], np.float32), np.asarray(pp["std"], np.float32)
    if np.any(mean != 0) or np.any(std != 1):
        x = (x - mean) / std
    if pp["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32), tf


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
