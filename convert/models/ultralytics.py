"""Ultralytics YOLOv8 / YOLO11 detection and pose models, built from the ultralytics model-YAML format.

The modules re-implement what those architectures use from ultralytics' ``nn/modules`` (Conv,
DWConv, Bottleneck, C2f, C3, C3k, C3k2, SPP, SPPF, Attention, PSABlock, C2PSA, Concat, DFL, Detect,
Pose) with the same parameter names (``model.23.cv2.0.0.conv.weight``, ``model.23.dfl.conv.weight``...),
so an ultralytics checkpoint's state dict loads with ``strict=True``, without importing
ultralytics (see :mod:`convert.models.checkpoint`). YAML rows are parsed as ultralytics'
``parse_model`` does, including its compound scaling (``scales`` + ``scale``), its ``activation``
key, and its rule that a head is "legacy" (YOLOv8: plain class convolutions) unless a C3k2 block
comes before it (YOLO11: depthwise class branch). Modules are created in ultralytics' order, so a
model built with ``seed=s`` has the very weights ultralytics draws after ``torch.manual_seed(s)``.

An :class:`UltralyticsModel` has two output modes (layouts: :mod:`convert.heads.yolov8`):

* decoded (default): ``[B, 4+nc+3*nk, N]``, exactly ultralytics' inference output;
* truncated (:meth:`UltralyticsModel.truncate_head`): the raw per-level maps, level-major
  ``(box, cls[, kpt])`` per level; :func:`decode_raw` turns them into the decoded tensor.

``builder: ultralytics`` (:func:`wrap_ultralytics`) builds the layers with the installed
ultralytics package instead and runs them through the same forward, truncation and metadata.
"""

from __future__ import annotations

import ast
import contextvars
import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convert.errors import ConvertError
from convert.models.yolo import ARCH_DIR, Concat, _fuse_conv_bn, make_divisible, read_arch_file

__all__ = [
    "ARCH_DIR", "Attention", "Bottleneck", "C2PSA", "C2f", "C3", "C3k", "C3k2", "Concat", "Conv", "DFL", "DWConv",
    "Detect", "PSABlock", "Pose", "SPP", "SPPF", "UltralyticsModel", "build_model", "builtin_archs", "decode_raw",
    "from_recipe", "load", "load_arch", "load_weights", "raw_maps", "wrap_ultralytics",
]

# --- building blocks (ultralytics nn/modules) --------------------------------------------

# The activation of ``Conv(act=True)``. Ultralytics keeps it in the class attribute
# ``Conv.default_act`` (one instance shared by every Conv) and parse_model swaps it for a YAML's
# ``activation``; a context variable gives the same sharing without process-wide state.
_DEFAULT_ACT: contextvars.ContextVar[nn.Module] = contextvars.ContextVar("default_act", default=nn.SiLU())


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size for stride 1 ('same'), dilation ``d`` included."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation, with ultralytics' arguments (dilation ``d``;
    ``act``: True for the default SiLU, a module, or anything else for none).

    BatchNorm uses eps 1e-3 and momentum 0.03, the values ultralytics' ``initialize_weights``
    sets on every BatchNorm2d after building.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = _DEFAULT_ACT.get() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depthwise convolution: a Conv with ``groups = gcd(c1, c2)``."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """Two convolutions (kernels ``k``) with a residual add when ``shortcut`` and shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple = (3, 3), e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP bottleneck with two convolutions, every bottleneck's output kept (YOLOv8)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    """CSP bottleneck with three convolutions (1x1-then-3x3 bottlenecks, as ultralytics' C3)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(1, 3), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    """C3 with ``k x k`` bottlenecks (inside YOLO11's C3k2 at scales m, l, x).

    The C3 bottlenecks built first and then replaced are built anyway, as in ultralytics, so the
    random initialisation consumes the same numbers.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5, k: int = 3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))


class C3k2(C2f):
    """YOLO11's C2f whose blocks are bottlenecks, C3k blocks when ``c3k``, or bottleneck + PSABlock
    when ``attn`` (C2f's own blocks are built and replaced, as in ultralytics)."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, attn: bool = False,
                 g: int = 1, shortcut: bool = True):
        super().__init__(c1, c2, n, shortcut, g, e)
        if attn:
            blocks = (nn.Sequential(Bottleneck(self.c, self.c, shortcut, g),
                                    PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1))) for _ in range(n))
        elif c3k:
            blocks = (C3k(self.c, self.c, 2, shortcut, g) for _ in range(n))
        else:
            blocks = (Bottleneck(self.c, self.c, shortcut, g) for _ in range(n))
        self.m = nn.ModuleList(blocks)


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (YOLOv3-SPP)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: ``n`` chained max-pools (equals SPP(5, 9, 13) for k=5, n=3).

    As in ultralytics 8.4, ``cv1`` is unactivated by default (YOLO26); :func:`_parse_model`
    activates it for the YOLOv8 / YOLO11 rows ``[c2, k]``, as ultralytics' parse_model does.
    """

    def __init__(self, c1: int, c2: int, k: int = 5, n: int = 3, shortcut: bool = False):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=False)
        self.cv2 = Conv(c_ * (n + 1), c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n = n
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(self.n))
        y = self.cv2(torch.cat(y, 1))
        return y + x if self.add else y


class Attention(nn.Module):
    """Multi-head self-attention over the cells, plus a depthwise positional convolution (YOLO11)."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + self.key_dim * num_heads * 2, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.key_dim * 2 + self.head_dim, H * W).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSABlock(nn.Module):
    """Attention then a feed-forward pair of convolutions, each with a residual add."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """Half the channels through PSA blocks, concatenated with the other half (YOLO11)."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        if c1 != c2:
            raise ValueError(f"C2PSA needs equal in and out channels, got {c1} and {c2}")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DFL(nn.Module):
    """Distribution focal loss integral: the expectation of each side's distance distribution.

    The 1x1 conv's weight is ``arange(c1)`` and frozen; it is still a parameter (and a state-dict
    entry, ``...dfl.conv.weight``), as in ultralytics.
    """

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Anchor-free head: per level a box-distribution branch ``cv2`` and a class branch ``cv3``.

    Its forward returns the raw per-level maps; :class:`UltralyticsModel` decodes them.

    Args:
        nc: Number of classes.
        reg_max: Distance bins per box side (DFL).
        ch: Input channels of each level.
        legacy: YOLOv8's plain class branch (two 3x3 Convs); otherwise YOLO11's depthwise one
            (DWConv 3x3 + Conv 1x1, twice). Ultralytics sets it as a class attribute from
            parse_model; here it is an argument :func:`_parse_model` passes.

    Attributes:
        no: Raw channels per anchor, ``nc + 4 * reg_max`` (as ultralytics).
        stride: ``[nl]`` pixels per cell (non-persistent buffer), set when the model is built.
    """

    def __init__(self, nc: int = 80, reg_max: int = 16, ch: tuple[int, ...] = (), legacy: bool = False):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        self.no = nc + 4 * reg_max
        self.legacy = legacy
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        c2, c3 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        else:
            self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                                                   nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                                                   nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return raw_maps(self, x)

    def bias_init(self) -> None:
        """Box and class bias priors (ultralytics' ``Detect.bias_init``; needs ``stride``): box
        logits 2.0, class logits for ~5 objects per 640 image spread over the classes."""
        with torch.no_grad():
            for i, (a, b) in enumerate(zip(self.cv2, self.cv3)):
                a[-1].bias[:] = 2.0
                # computed as ultralytics does (float32 tensor arithmetic, then math.log), to the bit
                b[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / self.stride[i]) ** 2)


class Pose(Detect):
    """Detect plus a keypoint branch ``cv4`` of ``nk * 3`` channels per level.

    Attributes:
        kpt_shape: ``[keypoints, 3]`` (x, y, visibility).
        nk: Keypoint values per anchor, ``keypoints * 3`` (ultralytics' meaning of ``Pose.nk``).
    """

    def __init__(self, nc: int = 80, kpt_shape: tuple = (17, 3), reg_max: int = 16, ch: tuple[int, ...] = (),
                 legacy: bool = False):
        if not (isinstance(kpt_shape, (list, tuple)) and len(kpt_shape) == 2 and list(kpt_shape)[1] == 3
                and isinstance(kpt_shape[0], int) and kpt_shape[0] > 0):
            raise ValueError(f"kpt_shape {kpt_shape!r}: only [nk, 3] keypoints (x, y, visibility) are supported")
        super().__init__(nc, reg_max, ch, legacy)
        self.kpt_shape = list(kpt_shape)
        self.nk = kpt_shape[0] * kpt_shape[1]
        c4 = max(ch[0] // 4, self.nk)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3), nn.Conv2d(c4, self.nk, 1))
                                 for x in ch)


def raw_maps(head: nn.Module, x: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The head's raw per-level maps, level-major ``(box, cls[, kpt])``, from its branches (works for
    this module's heads and for ultralytics' own, which have the same ``cv2``/``cv3``/``cv4``)."""
    branches = [head.cv2, head.cv3] + ([head.cv4] if hasattr(head, "cv4") else [])
    return tuple(b[i](x[i]) for i in range(head.nl) for b in branches)


MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv, "DWConv": DWConv, "Bottleneck": Bottleneck, "C2f": C2f, "C3": C3, "C3k2": C3k2, "SPP": SPP,
    "SPPF": SPPF, "C2PSA": C2PSA, "Concat": Concat, "nn.Upsample": nn.Upsample, "Detect": Detect, "Pose": Pose,
}
"""YAML module name -> class, for the rows the own builder knows."""
# parse_model's groups: channel-scaled modules (args[0] is c2) and those taking the repeat count
_CHANNEL_MODULES = (Conv, DWConv, Bottleneck, C2f, C3, C3k2, SPP, SPPF, C2PSA)
_REPEAT_MODULES = (C2f, C3, C3k2, C2PSA)
_HEADS = (Detect, Pose)
# blocks after which ultralytics builds the head non-legacy (parse_model sets legacy = False)
_NON_LEGACY = ("C3k2", "A2C2f", "C2fCIB")
UNSUPPORTED_HEADS = {
    "Segment": "segmentation", "Segment26": "segmentation", "OBB": "oriented-box (OBB)", "OBB26": "oriented-box (OBB)",
    "Classify": "classification", "RTDETRDecoder": "RT-DETR", "v10Detect": "YOLOv10 (NMS-free)",
    "WorldDetect": "YOLO-World", "YOLOEDetect": "YOLOE", "YOLOESegment": "YOLOE segmentation",
    "YOLOESegment26": "YOLOE segmentation", "Pose26": "YOLO26 pose", "SemanticSegment": "semantic segmentation",
    "Depth": "depth",
}
"""Head modules of other tasks -> the task, for the refusal message."""
_SUPPORTED = "ultralytics YOLOv8 / YOLO11 detection (Detect) and pose (Pose) models"


# --- decoding (ultralytics Detect._inference / Pose.kpts_decode) ---------------------------


def _anchors(maps_hw: list[tuple[int, int]], strides: list[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres ``[2, N]`` (grid units, x; y) and strides ``[1, N]``, ordered level, y, x."""
    points, stride_t = [], []
    for (h, w), s in zip(maps_hw, strides):
        sy, sx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) + 0.5,
                                torch.arange(w, device=device, dtype=torch.float32) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), float(s), device=device))
    return torch.cat(points).T, torch.cat(stride_t).T


def decode_raw(maps, meta: dict[str, Any], dfl: nn.Module | None = None) -> torch.Tensor:
    """Reference decode of truncated outputs into ultralytics' inference layout.

    Args:
        maps: The raw maps of a truncated model, level-major ``(box, cls[, kpt])``.
        meta: :meth:`UltralyticsModel.head_meta` (``strides``, ``nc``, ``nk``, ``reg_max``).
        dfl: The model's DFL module (default: a fresh one, identical: its weights are fixed).

    Returns:
        ``[B, 4+nc+3*nk, N]``: cx, cy, w, h (input pixels), sigmoid class scores, keypoints
        ``(x, y, sigmoid(v))``.
    """
    nc, nk, reg_max = int(meta["nc"]), int(meta.get("nk") or 0), int(meta.get("reg_max", 16))
    parts = 3 if nk else 2
    nl = len(meta["strides"])
    if len(maps) != nl * parts:
        raise ConvertError(f"{len(maps)} raw maps for {nl} levels of {parts} maps each.")
    b = maps[0].shape[0]
    box = torch.cat([maps[i * parts].float().view(b, 4 * reg_max, -1) for i in range(nl)], -1)
    cls = torch.cat([maps[i * parts + 1].float().view(b, nc, -1) for i in range(nl)], -1)
    anchors, strides = _anchors([tuple(maps[i * parts].shape[2:]) for i in range(nl)], meta["strides"], box.device)
    dfl = dfl if dfl is not None else (DFL(reg_max) if reg_max > 1 else nn.Identity()).to(box.device)
    lt, rb = dfl(box).chunk(2, 1)
    x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
    out = [torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides, cls.sigmoid()]
    if nk:
        y = torch.cat([maps[i * parts + 2].float().view(b, nk * 3, -1) for i in range(nl)], -1).clone()
        y[:, 2::3] = y[:, 2::3].sigmoid()
        y[:, 0::3] = (y[:, 0::3] * 2.0 + (anchors[0] - 0.5)) * strides
        y[:, 1::3] = (y[:, 1::3] * 2.0 + (anchors[1] - 0.5)) * strides
        out.append(y)
    return torch.cat(out, 1)



# --- architecture ------------------------------------------------------------------------


def builtin_archs() -> list[str]:
    """Names of the shipped ultralytics architectures (``convert/models/archs/yolov8*.yaml``, ``yolo11*.yaml``)."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.yaml") if p.stem.startswith(("yolov8", "yolo11")))


def guess_scale(path: str | Path) -> str:
    """The scale letter in a model-YAML file name (``yolo11n-pose.yaml`` -> ``n``), as ultralytics'
    ``guess_model_scale`` reads it; empty when there is none."""
    m = re.search(r"yolo(e-)?v?\d+([nslmx])", Path(path).stem)
    return m.group(2) if m else ""


def load_arch(name_or_path: str | Path) -> dict:
    """Reads an architecture: a built-in name (``yolo11n-pose``) or an ultralytics model-YAML path.

    The scale letter comes from the file's ``scale`` key, else from its name (``yolo11n`` -> n)
    as ultralytics guesses it, else :func:`_parse_model` takes the first of ``scales``.
    (Ultralytics itself, reading a path, lets the name override a ``scale`` key; the bundled files
    set both the same.)

    Args:
        name_or_path: Built-in name (:func:`builtin_archs`), or path to a ``.yaml`` file.

    Returns:
        The architecture dict.

    Raises:
        ConvertError: Unknown name, unreadable file, or not a YAML mapping.
    """
    arch, path = read_arch_file(name_or_path, builtin_archs(), "ultralytics architecture",
                                "an ultralytics model .yaml", "it needs backbone and head lists.")
    if not arch.get("scale") and guess_scale(path):
        arch["scale"] = guess_scale(path)
    return arch


def _resolve_arg(a: Any, names: dict[str, Any]) -> Any:
    """What ultralytics' parse_model makes of a string arg (its local names, else a Python
    literal, else the string itself), without ``eval``."""
    if not isinstance(a, str):
        return a
    if a in names:
        return copy.deepcopy(names[a])
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a


def _activation(spec: Any) -> nn.Module:
    """The module of a YAML ``activation`` (``nn.SiLU()``, ``torch.nn.LeakyReLU(0.1)``): a torch.nn
    class called with literal arguments, read without ``eval`` as ultralytics' restricted loader does."""
    try:
        call = ast.parse(str(spec).strip(), mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError("not a call")
        parts, node = [], call.func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or [*parts[1:], node.id] not in (["nn"], ["nn", "torch"]):
            raise ValueError("not a torch.nn class")
        klass = getattr(nn, parts[0])
        if not (isinstance(klass, type) and issubclass(klass, nn.Module)):
            raise ValueError("not a module class")
        return klass(*(ast.literal_eval(a) for a in call.args),
                     **{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
    except Exception as e:  # any failure reads the same: the spec is not one we can build
        raise ConvertError(f"architecture activation {str(spec)[:60]!r} is not a torch.nn activation call "
                           f"({type(e).__name__}: {e})", hint="write it like nn.SiLU() or nn.LeakyReLU(0.1).") from None


def _input_channels(arch: dict) -> int:
    """Input channels: ``channels`` (what ultralytics stores in a checkpoint's yaml), else ``ch``, else 3."""
    ch = arch.get("channels", arch.get("ch", 3))
    if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
        raise ConvertError(f"architecture channels {ch!r} is not a positive integer")
    return ch


def _scaling(arch: dict) -> tuple[float, float, float, str | None]:
    """``(depth, width, max_channels, scale)`` as parse_model derives them."""
    scales, scale = arch.get("scales"), arch.get("scale") or None
    if not scales:
        return float(arch.get("depth_multiple", 1.0)), float(arch.get("width_multiple", 1.0)), float("inf"), scale
    if not isinstance(scales, dict):
        raise ConvertError("architecture scales is not a mapping of scale letter -> [depth, width, max_channels]")
    scale = scale or next(iter(scales))  # ultralytics' default (it warns): the first scale
    if scale not in scales:
        raise ConvertError(f"architecture scale {scale!r} is not one of its scales ({', '.join(map(str, scales))}).",
                           hint="set scale: to one of them.")
    values = scales[scale]
    if not (isinstance(values, (list, tuple)) and len(values) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)):
        raise ConvertError(f"architecture scale {scale!r}: {values!r} is not [depth, width, max_channels]")
    depth, width, max_channels = values
    return float(depth), float(width), max_channels, scale


def _parse_model(arch: dict, nc: int, ch: int) -> tuple[nn.Sequential, list[int]]:
    """Builds the layers from the YAML rows, as ultralytics' ``parse_model`` does.

    Rows are ``[from, number, module, args]``. ``number`` is scaled by ``depth`` (when > 1) and
    becomes the repeat argument of C2f / C3 / C3k2 / C2PSA; channel arguments are scaled by
    ``width``, capped at ``max_channels`` and rounded up to a multiple of 8; C3k2 uses C3k blocks
    at scales m, l and x; the head is legacy (YOLOv8's) unless a C3k2 came before it.

    Raises:
        ConvertError: Unsupported kind (other tasks' heads, ``end2end``), unknown module, or a row
            whose ``from``, ``number`` or args do not fit (names the row).
    """
    for key in ("backbone", "head"):
        if not isinstance(arch.get(key), list):
            raise ConvertError(f"architecture has no {key!r} list", hint="see convert/models/archs/yolo11n.yaml.")
    if arch.get("end2end"):
        raise ConvertError("architecture has end2end: true (an NMS-free head), which convert does not support.",
                           hint=f"supported: {_SUPPORTED}.")
    depth, width, max_channels, scale = _scaling(arch)
    reg_max = arch.get("reg_max", 16)
    if not isinstance(reg_max, int) or isinstance(reg_max, bool) or reg_max < 1:
        raise ConvertError(f"architecture reg_max {reg_max!r} is not a positive integer")
    act = _activation(arch["activation"]) if arch.get("activation") else _DEFAULT_ACT.get()
    # the names parse_model's args may use (its locals); kpt_shape defaults to COCO's 17 keypoints
    names = {"nc": nc, "kpt_shape": arch.get("kpt_shape", [17, 3]), "reg_max": reg_max, "depth": depth,
             "width": width, "max_channels": max_channels, "scale": scale}
    rows = arch["backbone"] + arch["head"]
    legacy = True
    chs = [ch]
    layers, save = [], []
    token = _DEFAULT_ACT.set(act)
    try:
        for i, row in enumerate(rows):
            if not (isinstance(row, (list, tuple)) and len(row) == 4):
                raise ConvertError(f"architecture row {i}: {str(row)[:80]!r} is not [from, number, module, args]")
            f, n, name, args = row
            where = f"architecture row {i} ({str(name)[:40]})"
            if isinstance(name, str) and name in UNSUPPORTED_HEADS:
                raise ConvertError(f"{where}: a {UNSUPPORTED_HEADS[name]} head, which convert does not support.",
                                   hint=f"supported: {_SUPPORTED}.")
            if not isinstance(name, str) or name not in MODULES:
                raise ConvertError(f"{where}: unknown module {str(name)[:40]!r}, which convert does not support.",
                                   hint=f"supported: {_SUPPORTED}, built from {', '.join(MODULES)}; builder: "
                                   "ultralytics builds other layers with the ultralytics package.")
            m = MODULES[name]
            many = m is Concat or m in _HEADS  # the layers that read a list of inputs (parse_model sums ch[f])
            froms = f if many else [f]
            if (not isinstance(froms, list) or not froms
                    or not all(isinstance(j, int) and not isinstance(j, bool) and (j == -1 or -i <= j < i)
                               for j in froms)):
                raise ConvertError(f"{where}: 'from' {f!r} does not name earlier layers",
                                   hint="use -1 for the previous layer or the index of an earlier row; a list of "
                                   "them for Concat and the head.")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConvertError(f"{where}: 'number' {n!r} must be a positive integer")
            if (m in _HEADS) != (i == len(rows) - 1):
                raise ConvertError(f"{where}: the last row, and only it, must be Detect or Pose")
            if not isinstance(args, list):
                raise ConvertError(f"{where}: args {str(args)[:80]} is not a list")
            args = [_resolve_arg(a, names) for a in args]
            n = max(round(n * depth), 1) if n > 1 else n
            try:
                if m in _CHANNEL_MODULES:
                    c2 = make_divisible(min(args[0], max_channels) * width, 8)
                    args = [chs[froms[0]], c2, *args[1:]]
                    if m in _REPEAT_MODULES:
                        args.insert(2, n)
                        n = 1
                    if m is C3k2 and scale in ("m", "l", "x"):
                        args[3:4] = [True]  # C3k blocks (slice assignment: also when the row omits c3k)
                elif m is Concat:
                    c2 = sum(chs[j] for j in froms)
                elif m in _HEADS:
                    args = [*args, reg_max, [chs[j] for j in froms], legacy]
                    c2 = None
                else:
                    c2 = chs[froms[0]]
                module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
                if m is SPPF and len(args) <= 3:  # rows [c2, k] predate YOLO26's unactivated cv1
                    for block in (module if n > 1 else [module]):
                        block.cv1.act = act
            except (TypeError, ValueError, IndexError, RuntimeError, ZeroDivisionError, OverflowError) as e:
                raise ConvertError(f"{where}: bad args {str(row[3])[:80]} ({type(e).__name__}: {e})",
                                   hint="compare with the row in convert/models/archs/yolo11n.yaml.") from None
            if name in _NON_LEGACY:
                legacy = False
            module.i, module.f = i, f
            save.extend(j % i for j in froms if j != -1)
            layers.append(module)
            if i == 0:
                chs = []
            chs.append(c2)
    finally:
        _DEFAULT_ACT.reset(token)
    return nn.Sequential(*layers), sorted(save)


# --- the model ---------------------------------------------------------------------------


class UltralyticsModel(nn.Module):
    """An ultralytics YOLOv8 / YOLO11 model; see the module docstring for its two output modes.

    Args:
        arch: Architecture dict (:func:`load_arch`).
        nc: Number of classes; defaults to ``len(names)``, else the arch's ``nc`` (80 without one).
        names: Class names; default ``class0``... (``person`` for a 1-class pose model).
        seed: Seed of the initial weights (the global RNG is left untouched).
        layers: Already built ``(layers, save)`` (:func:`wrap_ultralytics`); None: built here.

    Attributes:
        model: The layers (``nn.Sequential``), named ``model.0`` ... as in ultralytics, so state
            dict keys are ultralytics' own.
        save: Indices of layers whose outputs later layers read.
        names: Class names.
        arch: The architecture dict (``nc`` set to the model's class count).
        truncated: Whether forward returns the raw per-level maps.

    Raises:
        ConvertError: The architecture is invalid or of an unsupported kind, or names and nc disagree.
    """

    def __init__(self, arch: dict, nc: int | None = None, names: list[str] | None = None, seed: int = 0,
                 layers: tuple[nn.Sequential, list[int]] | None = None):
        super().__init__()
        if not isinstance(arch, dict):
            raise ConvertError("architecture is not a mapping", hint="pass load_arch(name_or_path).")
        arch = copy.deepcopy(arch)
        nc = _class_count(arch, nc, names)
        arch["nc"] = nc
        self.arch = arch
        if layers is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                layers = _parse_model(arch, nc, _input_channels(arch))
        self.model, self.save = layers
        if names is None:
            names = ["person"] if self.nk and nc == 1 else [f"class{i}" for i in range(nc)]
        self.names = list(names)
        self.truncated = False
        for m in self.modules():  # ultralytics' initialize_weights (also for wrapped layers: harmless)
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        self.eval()
        self._init_strides()

    @property
    def head(self) -> nn.Module:
        """The Detect / Pose head (the last layer)."""
        return self.model[-1]

    @property
    def nk(self) -> int:
        """Keypoints per object (0 for detection)."""
        kpt = getattr(self.head, "kpt_shape", None)
        return int(kpt[0]) if kpt else 0

    @property
    def kpt_shape(self) -> list[int] | None:
        """``[nk, 3]`` for a pose model, None for detection."""
        kpt = getattr(self.head, "kpt_shape", None)
        return [int(k) for k in kpt] if kpt else None

    @property
    def stride(self) -> torch.Tensor:
        """Pixels per cell of each detection level, ``[nl]`` float tensor (the head's)."""
        return self.head.stride

    def _init_strides(self) -> None:
        """Strides from a 256x256 forward, as ultralytics' DetectionModel computes them; then, for
        this module's own heads, ultralytics' bias priors (a wrapped head got them from ultralytics)."""
        s = 256
        with torch.no_grad():
            try:
                maps = self._forward_maps(torch.zeros(1, _input_channels(self.arch), s, s))
            except RuntimeError as e:  # channel counts that do not chain
                raise ConvertError(f"architecture does not run on a {s}x{s} image: {str(e).splitlines()[0]}",
                                   hint="check each row's from indices and channel counts.") from None
            parts = 3 if self.nk else 2
            stride = torch.tensor([s / p.shape[-2] for p in maps[::parts]])
            head = self.head
            if isinstance(head.stride, torch.Tensor) and head.stride.shape == stride.shape:
                head.stride.copy_(stride)
            else:
                head.stride = stride
            if isinstance(head, _HEADS):
                head.bias_init()

    def _forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs the layers; the head as its branches only (:func:`raw_maps`), whichever builder made it."""
        y: list[torch.Tensor | None] = []
        last = len(self.model) - 1
        for i, m in enumerate(self.model):
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if i == last:
                return raw_maps(m, x)
            x = m(x)
            y.append(x if m.i in self.save else None)
        raise AssertionError("unreachable: the model has a head")

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs the model on ``[B, ch, H, W]`` (H, W multiples of the largest stride).

        Returns:
            Decoded ``[B, 4+nc+3*nk, N]`` (ultralytics' inference output), or, truncated, the raw
            per-level maps ``(box, cls[, kpt])`` for each level.
        """
        maps = self._forward_maps(x)
        if self.truncated:
            return maps
        return decode_raw(maps, self.head_meta(), self.head.dfl)

    def truncate_head(self) -> UltralyticsModel:
        """Makes forward return the raw per-level maps (no DFL, sigmoid, decode or concat)."""
        self.truncated = True
        return self

    def head_meta(self) -> dict:
        """Describes the head's outputs for decoders downstream (JSON-serialisable, :mod:`convert.heads.yolov8`)."""
        head, nk = self.head, self.nk
        strides = [int(s) if float(s).is_integer() else float(s) for s in head.stride.tolist()]
        parts = ["box", "cls"] + (["kpt"] if nk else [])
        layout = (f"per level: box [B, 4*reg_max={4 * head.reg_max}, H, W] (DFL logits per side l,t,r,b), cls [B, "
                  f"nc={head.nc}, H, W] (logits)" + (f", kpt [B, 3*nk={3 * nk}, H, W] (x, y, v raw)" if nk else "")
                  + f"; decoded: [B, 4+nc+3*nk = {4 + head.nc + 3 * nk}, N], rows cx,cy,w,h (input pixels), class "
                  "scores (sigmoid)" + (", then nk*(x, y, v)" if nk else "") + "; N ordered level, y, x")
        return {
            "type": "yolov8_pose" if nk else "yolov8",
            "strides": strides,
            "nc": int(head.nc),
            "nk": nk,
            "reg_max": int(head.reg_max),
            "names": list(self.names),
            "layout": layout,
            "outputs": ([f"p{int(math.log2(s))}_{p}" for s in strides for p in parts] if self.truncated
                        else ["predictions"]),
        }

    def fuse(self) -> UltralyticsModel:
        """Folds each Conv's BatchNorm into its convolution (outputs unchanged to ~1e-6)."""
        for m in self.modules():
            if isinstance(getattr(m, "bn", None), nn.BatchNorm2d) and isinstance(getattr(m, "conv", None), nn.Conv2d):
                m.conv = _fuse_conv_bn(m.conv, m.bn)
                m.bn = nn.Identity()
        return self




def _class_count(arch: dict, nc: int | None, names: list[str] | None) -> int:
    """The model's class count: ``nc``, else ``len(names)``, else the arch's ``nc`` (ultralytics' 80 without one)."""
    nc = nc if nc is not None else (len(names) if names else arch.get("nc", 80))
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ConvertError(f"nc {nc!r} is not a positive integer", hint="give the number of classes.")
    if names is not None and len(names) != nc:
        raise ConvertError(f"{len(names)} class names given for a model with nc={nc}", hint="give one name per class.")
    return nc


def build_model(arch: dict, nc: int | None = None, names: list[str] | None = None, seed: int = 0
                ) -> UltralyticsModel:
    """Builds an ultralytics-architecture model with this project's modules, eval mode, seeded.

    Args:
        arch: Architecture dict (:func:`load_arch`).
        nc: Number of classes; defaults to ``len(names)``, else the arch's ``nc``.
        names: Class names; default ``class0``... (``person`` for a 1-class pose model).
        seed: Seed of the initial weights (the global RNG is left untouched). The weights equal
            those ultralytics' DetectionModel / PoseModel draws after ``torch.manual_seed(seed)``.

    Returns:
        The model, decoded mode.

    Raises:
        ConvertError: The architecture is invalid or of an unsupported kind (names the row).
    """
    return UltralyticsModel(arch, nc=nc, names=names, seed=seed)


def wrap_ultralytics(arch: dict, nc: int | None = None, names: list[str] | None = None, seed: int = 0
                     ) -> UltralyticsModel:
    """Builds the layers with the installed ultralytics package (``builder: ultralytics``).

    For architectures whose blocks the own builder does not know; ultralytics' ``DetectionModel``
    / ``PoseModel`` makes the layers (its ``model`` and ``save``), and this module's forward,
    truncation and metadata run them (they read the head's ``cv2``/``cv3``/``cv4``/``dfl``).

    Args:
        arch, nc, names, seed: As :func:`build_model`.

    Returns:
        The model, decoded mode.

    Raises:
        ConvertError: ultralytics is not installed, or the architecture is not a detection or
            pose model.
    """
    try:
        from ultralytics.nn.tasks import DetectionModel, PoseModel
    except ImportError:
        raise ConvertError("builder: ultralytics needs the ultralytics package, which is not installed.",
                           hint="pip install 'convert[ultralytics]', or use builder: own.") from None
    if not isinstance(arch, dict):
        raise ConvertError("architecture is not a mapping", hint="pass load_arch(name_or_path).")
    rows = arch.get("head") if isinstance(arch.get("head"), list) else []
    last = rows[-1] if rows and isinstance(rows[-1], (list, tuple)) and len(rows[-1]) == 4 else [None] * 4
    head = last[2]
    if head not in ("Detect", "Pose") or arch.get("end2end"):
        kind = "end2end (NMS-free)" if arch.get("end2end") else UNSUPPORTED_HEADS.get(head, str(head))
        raise ConvertError(f"architecture head {kind!r} is not supported.", hint=f"supported: {_SUPPORTED}.")
    nc = _class_count(arch, nc, names)
    cls = PoseModel if head == "Pose" else DetectionModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            inner = cls(cfg=copy.deepcopy(arch), ch=_input_channels(arch), nc=nc, verbose=False)
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError, AssertionError) as e:
            raise ConvertError(f"ultralytics cannot build the architecture ({type(e).__name__}: {e})",
                               hint="compare it with ultralytics' own model YAMLs.") from None
    return UltralyticsModel(arch, nc=nc, names=names, layers=(inner.model, inner.save))


def load_weights(model: UltralyticsModel, state_dict: dict[str, torch.Tensor], source: str = "state dict"
                 ) -> UltralyticsModel:
    """Loads a state dict strictly, with a readable error on mismatch.

    An ultralytics checkpoint's ``model.state_dict()`` holds exactly this module's keys (the DFL
    weight included; ``stride`` and the anchors are not stored), so nothing is dropped.

    Args:
        model: The model to fill.
        state_dict: Name to tensor, as ``nn.Module.state_dict``.
        source: Where the weights came from (for messages).

    Returns:
        ``model``.

    Raises:
        ConvertError: Keys are missing, unexpected, or shaped differently (counts and examples).
    """
    from convert.models.yolo import load_weights as strict_load

    return strict_load(model, state_dict, source)


# --- the architecture-module contract (convert.models) --------------------------------------

_UNSUPPORTED_MODELS = {
    "SegmentationModel": "segmentation", "OBBModel": "oriented-box (OBB)", "ClassificationModel": "classification",
    "RTDETRDetectionModel": "RT-DETR", "WorldModel": "YOLO-World", "YOLOEModel": "YOLOE",
    "YOLOESegModel": "YOLOE segmentation",
}
_SUPPORTED_MODELS = ("DetectionModel", "PoseModel")


def _check_checkpoint(ckpt, path) -> None:
    """Refuses checkpoints that are not ultralytics detection or pose models, before building anything."""
    cls = ckpt.model_class.rsplit(".", 1)[-1]
    if not ckpt.model_class.startswith("ultralytics."):
        hint = "use source: yolov5." if ckpt.model_class.startswith("models.") else \
            "give an ultralytics YOLOv8 / YOLO11 .pt file."
        raise ConvertError(f"{path} is not an ultralytics checkpoint (its model is {ckpt.model_class or 'unknown'}).",
                           hint=hint)
    if cls not in _SUPPORTED_MODELS:
        kind = _UNSUPPORTED_MODELS.get(cls, ckpt.attrs.get("task") or cls)
        raise ConvertError(f"{path} is a {kind} model ({cls}), which convert does not support.",
                           hint="convert supports ultralytics detection and pose models (YOLOv8, YOLO11); "
                           "export this one with ultralytics itself.")


def load(request) -> tuple[UltralyticsModel, dict]:
    """An ultralytics YOLOv8 / YOLO11 model for the ``load`` pass (:class:`convert.models.ModelRequest`).

    ``weights`` may be a full ultralytics checkpoint (read without ultralytics and without running
    pickled code; it brings its architecture, class names and keypoint shape) or, with ``arch``, a
    state dict. ``builder: ultralytics`` builds the layers with the installed package instead.

    Returns:
        The model (decoded mode) and its recipe (:func:`from_recipe`).
    """
    import warnings

    from convert.models.checkpoint import load_checkpoint, load_pickle, load_state_dict_file

    arch = load_arch(request.arch) if request.arch else None
    names = list(request.names) if request.names else None
    nc, state = request.nc, None
    if request.weights is not None:
        obj = load_pickle(request.weights)
        if isinstance(obj, dict) and obj.get("model") is not None and not isinstance(obj.get("model"), dict):
            ckpt = load_checkpoint(request.weights, obj)  # unpickled once
            _check_checkpoint(ckpt, request.weights)
            state, names, nc = ckpt.state_dict, names or ckpt.names, nc or ckpt.nc
            # A full checkpoint brings its architecture; `arch` (a spec's default for random-weight runs)
            # would only mis-build it.
            arch = {**ckpt.arch, "nc": nc}
            if ckpt.attrs.get("kpt_shape"):
                arch["kpt_shape"] = list(ckpt.attrs["kpt_shape"])
        else:
            if arch is None:
                raise ConvertError(f"{request.weights} is a plain state dict, which does not say its architecture.",
                                   hint="give arch (e.g. yolo11n-pose) or arch_file with it.")
            state = load_state_dict_file(request.weights)
    else:
        warnings.warn("load: no weights given; the model is randomly initialised (seed "
                      f"{request.seed}). Its outputs are meaningless.", stacklevel=1)
    if names is not None and nc is not None and len(names) != nc:
        raise ConvertError(f"names: {len(names)} class names for nc={nc}.", hint="give one name per class.")
    build = wrap_ultralytics if request.builder == "ultralytics" else build_model
    model = build(arch, nc=nc, names=names, seed=request.seed)
    if state is not None:
        from convert.models import mmyolo_keys

        if mmyolo_keys.is_mmyolo_state(state):  # an mmyolo YOLOv8 checkpoint: its converter's renaming, reversed
            state = mmyolo_keys.to_ultralytics(state, model.state_dict())
        load_weights(model, state, source=str(request.weights))
    recipe = {"source": "ultralytics", "builder": request.builder, "arch": model.arch, "nc": int(model.head.nc),
              "names": list(model.names), "seed": request.seed}
    return model, recipe


def from_recipe(recipe: dict) -> UltralyticsModel:
    """The untrained model a recipe of :func:`load` describes."""
    build = wrap_ultralytics if recipe.get("builder") == "ultralytics" else build_model
    return build(recipe["arch"], nc=recipe["nc"], names=recipe["names"], seed=recipe.get("seed", 0))
