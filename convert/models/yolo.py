"""YOLOv5-family detection and pose models, built from the YOLOv5 model-YAML format.

The modules re-implement the YOLOv5 v6.1 repository's ``models/common.py`` and
``models/yolo.py`` with the same parameter names (``model.0.conv.weight``,
``model.24.m.0.weight``, ``model.24.anchors``...), so an official checkpoint's state dict
loads with ``strict=True`` (see :mod:`convert.models.checkpoint`). The YOLO-Pose keypoint
head ``IKeypoint`` follows YOLO-Pose's naming: ``m`` (box/class convs) and ``m_kpt``
(keypoint convs).

A :class:`YoloModel` has two output modes:

* decoded (default): one tensor ``[B, N, no]`` with ``N = sum(na * H * W)`` over levels, rows
  ordered level, anchor, y, x; columns ``cx, cy, w, h, obj, cls_0..cls_{nc-1}`` in input
  pixels (sigmoid applied), then for pose ``nk`` times ``(x, y, conf)``;
* truncated (:meth:`YoloModel.truncate_head`): a tuple of raw per-level maps
  ``[B, na * no, H, W]``, channel ``a * no + c`` being field ``c`` of anchor ``a``
  (``no = 5 + nc + 3 * nk``: tx, ty, tw, th, obj, classes, then nk * (x, y, conf)).
  :func:`decode_raw` turns them into the decoded tensor.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from convert.errors import ConvertError

ARCH_DIR = Path(__file__).parent / "archs"


# --- building blocks (YOLOv5 models/common.py) -------------------------------------------


def autopad(k: int | list[int], p: int | None = None) -> int | list[int]:
    """Padding that keeps the spatial size for stride 1 ('same')."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x``."""
    return math.ceil(x / divisor) * divisor


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual add when ``shortcut`` and shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


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
    """Fast SPP: three chained max-pools, equivalent to SPP(k=(5, 9, 13)) for k=5."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) then Conv (YOLOv5 before v6)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(patches, 1))


class Concat(nn.Module):
    """Concatenates a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """YOLOv5 detection head: a 1x1 conv per level producing ``na * (5 + nc)`` channels.

    Returns the raw per-level maps; decoding is done by :class:`YoloModel` / :func:`decode_raw`.

    Attributes:
        anchors: Buffer ``[nl, na, 2]`` in grid units (pixels / stride), as in YOLOv5 v6.1.
        stride: Non-persistent buffer ``[nl]`` (pixels per cell), set by :class:`YoloModel`.
        nk: Keypoints per object (0: no keypoints).
        no: Outputs per anchor, ``5 + nc + 3 * nk``.
    """

    def __init__(self, nc: int = 80, anchors: list = (), ch: list[int] = (), nk: int = 0):
        super().__init__()
        self.nc, self.nk = nc, nk
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.no = nc + 5 + 3 * nk
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(x, self.na * (nc + 5), 1) for x in ch)

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self.m[i](x[i]) for i in range(self.nl))


class IKeypoint(Detect):
    """YOLO-Pose head: per level, box/class conv ``m`` plus keypoint conv ``m_kpt``.

    As in YOLO-Pose, the two convs' outputs are concatenated along channels
    (``na * (5 + nc)`` then ``na * 3 * nk``) and the result is read as ``[na, no]``, so
    channel ``a * no + c`` is field ``c`` of anchor ``a``.
    """

    def __init__(self, nc: int = 80, anchors: list = (), nkpt: int = 17, ch: list[int] = ()):
        super().__init__(nc, anchors, ch, nk=nkpt)
        self.m_kpt = nn.ModuleList(nn.Conv2d(x, self.na * 3 * nkpt, 1) for x in ch)

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat((self.m[i](x[i]), self.m_kpt[i](x[i])), 1) for i in range(self.nl))


MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPP": SPP, "SPPF": SPPF, "Focus": Focus,
    "Concat": Concat, "nn.Upsample": nn.Upsample, "Detect": Detect, "IKeypoint": IKeypoint,
}
_HEADS = (Detect, IKeypoint)


# --- decoding ----------------------------------------------------------------------------


def _decode_level(p: torch.Tensor, stride: float | torch.Tensor, anchors_px: torch.Tensor, nc: int,
                  nk: int) -> torch.Tensor:
    """Decodes one raw level map ``[B, na*no, H, W]`` into ``[B, na*H*W, no]`` (YOLOv5 v6.1)."""
    na = anchors_px.shape[0]
    no = 5 + nc + 3 * nk
    _, _, ny, nx = p.shape
    p = p.float().view(-1, na, no, ny, nx).permute(0, 1, 3, 4, 2)  # [B, na, H, W, no]
    yv, xv = torch.meshgrid(torch.arange(ny, device=p.device, dtype=torch.float32),
                            torch.arange(nx, device=p.device, dtype=torch.float32), indexing="ij")
    grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
    det = p[..., : 5 + nc].sigmoid()
    xy = (det[..., 0:2] * 2 - 0.5 + grid) * stride
    wh = (det[..., 2:4] * 2) ** 2 * anchors_px.view(1, na, 1, 1, 2)
    parts = [xy, wh, det[..., 4:]]
    if nk:
        kpt = p[..., 5 + nc:].reshape(-1, na, ny, nx, nk, 3)
        kxy = (kpt[..., 0:2] * 2 - 0.5 + grid.unsqueeze(-2)) * stride
        parts.append(torch.cat((kxy, kpt[..., 2:3].sigmoid()), -1).flatten(-2))
    return torch.cat(parts, -1).flatten(1, 3)


def decode_raw(maps: list[torch.Tensor] | tuple[torch.Tensor, ...], meta: dict) -> torch.Tensor:
    """Reference decode of truncated outputs into the decoded layout.

    Args:
        maps: The per-level raw maps of a truncated model, ``[B, na*no, H, W]`` each.
        meta: :meth:`YoloModel.head_meta` (``strides``, ``anchors`` in pixels, ``nc``, ``nk``).

    Returns:
        ``[B, N, no]``, numerically identical to the model's decoded forward.
    """
    out = []
    for p, s, a in zip(maps, meta["strides"], meta["anchors"]):
        anchors_px = torch.tensor(a, dtype=torch.float32, device=p.device)
        out.append(_decode_level(p, torch.tensor(float(s), device=p.device), anchors_px, meta["nc"], meta["nk"]))
    return torch.cat(out, 1)


# --- architecture ------------------------------------------------------------------------


def builtin_archs() -> list[str]:
    """Names of the shipped YOLOv5-format architectures (``convert/models/archs/yolov5*.yaml``)."""
    return sorted(p.stem for p in ARCH_DIR.glob("yolov5*.yaml"))


def load_arch(name_or_path: str | Path) -> dict:
    """Reads an architecture: a built-in name (``yolov5n``) or a YOLOv5 model-YAML path.

    Args:
        name_or_path: Built-in name, or path to a ``.yaml`` file.

    Returns:
        The architecture dict.

    Raises:
        ConvertError: Unknown name, unreadable file, or not a YAML mapping.
    """
    return read_arch_file(name_or_path, builtin_archs(), "architecture", "a YOLOv5 model .yaml file",
                          "it needs nc, depth_multiple, width_multiple, anchors, backbone and head.")[0]


def read_arch_file(name_or_path: str | Path, builtins: list[str], what: str, kind: str,
                   needs: str) -> tuple[dict, Path]:
    """Reads a model-YAML architecture by built-in name or path (every architecture module's loader).

    Args:
        name_or_path: One of ``builtins`` (a file in :data:`ARCH_DIR`), or a ``.yaml`` path.
        builtins: The module's built-in names.
        what: Named in the unknown-name error ("architecture", "ultralytics architecture").
        kind: What a path should be, for the hint.
        needs: Hint for a file that is not a mapping.

    Returns:
        The architecture dict and the file it came from.

    Raises:
        ConvertError: Unknown name, unreadable file, or not a YAML mapping.
    """
    path = Path(name_or_path)
    if str(name_or_path) in builtins:
        path = ARCH_DIR / f"{name_or_path}.yaml"
    elif not (path.suffix in (".yaml", ".yml") and path.is_file()):
        raise ConvertError(f"unknown {what} {str(name_or_path)!r}",
                           hint=f"use one of {', '.join(builtins)} or a path to {kind}.")
    try:
        arch = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConvertError(f"cannot read architecture {path}: {e}", hint="fix the YAML syntax.") from None
    if not isinstance(arch, dict):
        raise ConvertError(f"architecture {path} is not a YAML mapping", hint=needs)
    return arch, path


def _resolve_arg(a: Any, arch: dict, nc: int) -> Any:
    """Resolves the names YOLOv5 would ``eval`` in a row's args, without ``eval``."""
    if not isinstance(a, str):
        return a
    if a == "nc":
        return nc
    if a in arch:
        return arch[a]
    return {"None": None, "True": True, "False": False}.get(a, a)


def _make_layer(m: type[nn.Module], args: list, n: int, froms: list[int], chs: list[int],
                gw: float) -> tuple[nn.Module, int | None]:
    """One layer (``n`` copies in a Sequential unless the module repeats itself) and its out channels."""
    kwargs = {}
    if m in (Conv, Bottleneck, SPP, SPPF, Focus, C3):
        c2 = make_divisible(args[0] * gw, 8)
        args = [chs[froms[0]], c2, *args[1:]]
        if m is C3:
            args.insert(2, n)
            n = 1
    elif m is Concat:
        c2 = sum(chs[j] for j in froms)
    elif m in _HEADS:
        if isinstance(args[1], int):  # anchor count only: placeholder anchors, as YOLOv5 does
            args[1] = [list(range(args[1] * 2))] * len(froms)
        kwargs["ch"] = [chs[j] for j in froms]
        c2 = None
    else:
        c2 = chs[froms[0]]
    module = nn.Sequential(*(m(*args, **kwargs) for _ in range(n))) if n > 1 else m(*args, **kwargs)
    return module, c2


def _parse_model(arch: dict, nc: int, ch: int) -> tuple[nn.Sequential, list[int]]:
    """Builds the layers from the YAML rows, as YOLOv5's ``parse_model`` does."""
    for key in ("anchors", "backbone", "head"):
        if key not in arch:
            raise ConvertError(f"architecture has no {key!r}", hint="see convert/models/archs/yolov5n.yaml.")
    gd, gw = float(arch.get("depth_multiple", 1.0)), float(arch.get("width_multiple", 1.0))
    if not isinstance(arch["backbone"], list) or not isinstance(arch["head"], list):
        raise ConvertError("architecture: backbone and head must be lists of [from, number, module, args] rows")
    rows = arch["backbone"] + arch["head"]
    chs = [ch]
    layers, save = [], []
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ConvertError(f"architecture row {i}: {row!r} is not [from, number, module, args]")
        f, n, name, args = row
        where = f"architecture row {i} ({name})"
        if not isinstance(name, str) or name not in MODULES:
            raise ConvertError(f"{where}: unknown module {name!r}", hint=f"known modules: {', '.join(MODULES)}.")
        m = MODULES[name]
        froms = [f] if isinstance(f, int) else f
        if (not isinstance(froms, list) or not froms
                or not all(isinstance(j, int) and (j == -1 or -i <= j < i) for j in froms)):
            raise ConvertError(f"{where}: 'from' {f!r} does not name earlier layers",
                               hint="use -1 for the previous layer or indices of earlier rows.")
        if not isinstance(n, int) or n < 1:
            raise ConvertError(f"{where}: 'number' {n!r} must be a positive integer")
        if (m in _HEADS) != (i == len(rows) - 1):
            raise ConvertError(f"{where}: the last row, and only it, must be Detect or IKeypoint")
        n = max(round(n * gd), 1) if n > 1 else n
        try:
            module, c2 = _make_layer(m, [_resolve_arg(a, arch, nc) for a in (args or [])], n, froms, chs, gw)
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            raise ConvertError(f"{where}: bad args {args!r} ({type(e).__name__}: {e})",
                               hint="compare with the row in convert/models/archs/yolov5s.yaml.") from None
        module.i, module.f = i, f
        save.extend(j % i for j in froms if j != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(save)


# --- the model ---------------------------------------------------------------------------


class YoloModel(nn.Module):
    """A YOLOv5-family model; see the module docstring for its two output modes.

    Attributes:
        model: The layers (``nn.Sequential``), named ``model.0`` ... as in YOLOv5.
        names: Class names.
        stride: Stride of each detection level, ``[nl]`` float tensor.
        truncated: Whether forward returns raw per-level maps instead of decoded predictions.
        arch: The architecture dict (with ``nc`` set to the model's class count).
    """

    def __init__(self, arch: dict, nc: int | None = None, names: list[str] | None = None, seed: int = 0):
        super().__init__()
        arch = copy.deepcopy(arch)
        if not isinstance(arch, dict):
            raise ConvertError("architecture is not a mapping", hint="pass load_arch(name_or_path).")
        nc = int(nc if nc is not None else (len(names) if names else arch.get("nc", 80)))
        if names is not None and len(names) != nc:
            raise ConvertError(f"{len(names)} class names given for a model with nc={nc}",
                               hint="give one name per class.")
        arch["nc"] = nc
        self.arch = arch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model, self.save = _parse_model(arch, nc, int(arch.get("ch", 3)))
        head = self.head
        if names is None:
            names = ["person"] if head.nk and nc == 1 else [f"class{i}" for i in range(nc)]
        self.names = list(names)
        self.truncated = False
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        self.eval()
        self._init_strides()
        self._initialize_biases()

    @property
    def head(self) -> Detect:
        """The Detect / IKeypoint head (the last layer)."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        """Stride of each detection level, ``[nl]``."""
        return self.head.stride

    def _init_strides(self) -> None:
        """Strides from a 256x256 forward, anchors to grid units, anchor order as YOLOv5."""
        head, s = self.head, 256
        with torch.no_grad():
            try:
                maps = self._forward_maps(torch.zeros(1, int(self.arch.get("ch", 3)), s, s))
            except RuntimeError as e:  # channel counts that do not chain
                raise ConvertError(f"architecture does not run on a {s}x{s} image: {str(e).splitlines()[0]}",
                                   hint="check each row's from indices and channel counts.") from None
            head.stride.copy_(torch.tensor([s / p.shape[-2] for p in maps]))
            head.anchors /= head.stride.view(-1, 1, 1)
            area = head.anchors.prod(-1).view(-1)
            if (area[-1] - area[0]).sign() != (head.stride[-1] - head.stride[0]).sign():
                head.anchors[:] = head.anchors.flip(0)

    def _initialize_biases(self) -> None:
        """Objectness and class priors (YOLOv5): ~8 objects per 640 image, 0.6 spread over classes.

        Applied through the per-level ``[na, no]`` channel layout, so for a pose head the priors
        land on the channels the decode reads as obj/classes.
        """
        head = self.head
        with torch.no_grad():
            for i, s in enumerate(head.stride.tolist()):
                convs = [head.m[i]] + ([head.m_kpt[i]] if head.nk else [])
                b = torch.cat([c.bias for c in convs]).view(head.na, head.no)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:5 + head.nc] += math.log(0.6 / (head.nc - 0.99))
                for conv, part in zip(convs, b.view(-1).split([c.out_channels for c in convs])):
                    conv.bias.copy_(part)

    def _forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Runs the model on ``[B, ch, H, W]`` (H, W multiples of the largest stride).

        Returns:
            Decoded ``[B, N, no]``, or the raw per-level maps when truncated.
        """
        maps = self._forward_maps(x)
        if self.truncated:
            return maps
        head = self.head
        return torch.cat([_decode_level(p, head.stride[i], head.anchors[i] * head.stride[i], head.nc, head.nk)
                          for i, p in enumerate(maps)], 1)

    def truncate_head(self) -> YoloModel:
        """Makes forward return the raw per-level maps (no sigmoid, reshape or concat)."""
        self.truncated = True
        return self

    def head_meta(self) -> dict:
        """Describes the head's outputs for decoders downstream (JSON-serialisable)."""
        head = self.head
        nk = head.nk
        strides = [int(s) if float(s).is_integer() else float(s) for s in head.stride.tolist()]
        no = f"5+nc+3*nk = {5 + head.nc + 3 * nk}" if nk else f"5+nc = {5 + head.nc}"
        layout = (f"per-level maps [B, na*no, H, W], no = {no}; channel = a*no + c; c: 0-3 box (tx,ty,tw,th), "
                  f"4 obj, 5..{4 + head.nc} classes" + (", then nk*(x,y,conf) keypoints" if nk else "")
                  + "; decoded: [B, N, no], rows level, anchor, y, x; columns cx,cy,w,h (input pixels), obj, "
                  "class scores (sigmoid)" + (", then nk*(x, y, conf)" if nk else ""))
        return {
            "type": "yolov5_pose" if nk else "yolov5",
            "strides": strides,
            "anchors": (head.anchors * head.stride.view(-1, 1, 1)).tolist(),
            "nc": head.nc,
            "nk": nk,
            "na": head.na,
            "names": list(self.names),
            "layout": layout,
            "outputs": [f"p{int(math.log2(s))}" for s in strides] if self.truncated else ["predictions"],
        }

    def fuse(self) -> YoloModel:
        """Folds each Conv's BatchNorm into its convolution (outputs unchanged to ~1e-6)."""
        for m in self.modules():
            if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = _fuse_conv_bn(m.conv, m.bn)
                m.bn = nn.Identity()
        return self


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    with torch.no_grad():  # in float64 so the fused model matches the unfused one closely
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        fused.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    return fused


def build_model(arch: dict, nc: int | None = None, names: list[str] | None = None, seed: int = 0) -> YoloModel:
    """Builds a YOLOv5-family model in eval mode, deterministically initialised.

    Args:
        arch: Architecture dict (:func:`load_arch`).
        nc: Number of classes; defaults to ``len(names)``, else the arch's ``nc``.
        names: Class names; default ``class0``... (``person`` for a 1-class pose model).
        seed: Seed of the initial weights (the global RNG is left untouched).

    Returns:
        The model, decoded mode.

    Raises:
        ConvertError: The architecture is invalid (names the row and module).
    """
    return YoloModel(arch, nc=nc, names=names, seed=seed)


def load_weights(model: YoloModel, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> YoloModel:
    """Loads a state dict strictly, with a readable error on mismatch.

    Args:
        model: The model to fill.
        state_dict: Name to tensor, as ``nn.Module.state_dict``.
        source: Where the weights came from (for messages).

    Returns:
        ``model``.

    Raises:
        ConvertError: Keys are missing, unexpected, or shaped differently.
    """
    own = model.state_dict()
    # Pre-v6 checkpoints also store the derived `anchor_grid` buffer; it is recomputed here.
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.endswith(".anchor_grid")}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    if problems:
        raise ConvertError(f"weights from {source} do not fit the architecture: {'; '.join(problems)}",
                           hint="check that the arch (and nc) match the checkpoint.")
    model.load_state_dict(state_dict, strict=True)
    return model


# --- the architecture-module contract (convert.models) --------------------------------------

def load_yolov5(path: str | Path):
    """Builds a :class:`YoloModel` from an official YOLOv5 checkpoint.

    Args:
        path: The ``.pt`` file.

    Returns:
        The model in eval mode, float32, decoded (not truncated), weights loaded strictly.

    Raises:
        ConvertError: The file is unreadable or its weights do not match its architecture.
    """
    from convert.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    model = build_model(ckpt.arch, nc=ckpt.nc, names=ckpt.names)
    load_weights(model, ckpt.state_dict, source=str(path))
    return model.eval()



def load(request) -> tuple[YoloModel, dict]:
    """A YOLOv5-family model for the ``load`` pass (:class:`convert.models.ModelRequest`).

    Without ``arch`` the checkpoint's own architecture is used; with it, ``weights`` is a state
    dict (or a checkpoint) for that architecture.

    Returns:
        The model (decoded mode) and its recipe (:func:`from_recipe`).
    """
    import warnings

    from convert.models.checkpoint import load_checkpoint, load_state_dict_file

    arch = load_arch(request.arch) if request.arch else None
    names = list(request.names) if request.names else None
    nc = request.nc
    if request.weights is not None and arch is None:
        _refuse_mmyolo_without_arch(request.weights)
        ckpt = load_checkpoint(request.weights)
        if ckpt.model_class.startswith("ultralytics."):
            raise ConvertError(f"{request.weights} is an ultralytics checkpoint ({ckpt.model_class}), not a YOLOv5 "
                               "one.",
                               hint="use source: ultralytics.")
        arch, state, names = ckpt.arch, ckpt.state_dict, names or ckpt.names
        nc = nc or ckpt.nc
    elif request.weights is not None:
        state = load_state_dict_file(request.weights)
    else:
        warnings.warn("load: no weights given; the model is randomly initialised (seed "
                      f"{request.seed}). Its outputs are meaningless.", stacklevel=1)
        state = None
    if names is not None and nc is not None and len(names) != nc:
        raise ConvertError(f"names: {len(names)} class names for nc={nc}.", hint="give one name per class.")
    model = build_model(arch, nc=nc, names=names, seed=request.seed)
    if state is not None:
        from convert.models import mmyolo_keys

        if mmyolo_keys.is_mmyolo_state(state):  # an mmyolo YOLOv5 checkpoint: its converter's renaming, reversed
            state = mmyolo_keys.to_yolov5(state, model.state_dict())
        load_weights(model, state, source=str(request.weights))
    recipe = {"source": "yolov5", "arch": model.arch, "nc": int(model.head.nc), "names": model.names,
              "seed": request.seed}
    return model, recipe


def _refuse_mmyolo_without_arch(path) -> None:
    """An mmyolo state dict names no architecture: say so instead of "no model in the checkpoint"."""
    from convert.models import mmyolo_keys
    from convert.models.checkpoint import load_pickle

    obj = load_pickle(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if isinstance(state, dict) and mmyolo_keys.is_mmyolo_state(state):
        raise ConvertError(f"{path} is an mmyolo checkpoint (a state dict), which does not say its architecture.",
                           hint="give arch (e.g. yolov5n for mmyolo's yolov5_n config), or use source: mmyolo "
                           "with its config.")


def from_recipe(recipe: dict) -> YoloModel:
    """The untrained model a recipe of :func:`load` describes."""
    return build_model(recipe["arch"], nc=recipe["nc"], names=recipe["names"], seed=recipe.get("seed", 0))
