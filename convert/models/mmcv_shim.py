"""A stand-in for mmcv's compiled extension ``mmcv._ext``, so mmyolo runs on ``mmcv-lite``.

mmyolo 0.6.0 refuses mmcv >= 2.1, and mmcv 2.0.1 has no compiled wheel for current torch;
``mmcv-lite`` 2.0.1 installs in seconds but lacks ``mmcv._ext``, which ``mmcv.ops`` loads at
import (reached by mmdet's ``bbox_nms`` and mask structures, so ``import mmyolo.models`` fails).
Detection inference needs one op of it, ``nms``; this module provides it in plain torch and
makes every other op name resolve to a function that raises (so ``mmcv.ops`` imports, and a
model that really needs a compiled op fails clearly when it calls it).

:func:`install` registers the stand-in only where the compiled extension is absent; compiled
mmcv, when installed, is used as is.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

from convert.errors import ConvertError

NAME = "mmcv._ext"


def nms(boxes, scores, iou_threshold: float, offset: int = 0):
    """mmcv's CPU ``nms`` kernel in torch: indices kept, by descending score.

    Greedy: visit boxes by descending score; drop a later box whose IoU with a kept one is
    ``> iou_threshold``; areas and intersections use ``+ offset`` on widths and heights, as
    ``mmcv/ops/csrc/pytorch/cpu/nms.cpp``.
    """
    import torch

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.detach().float().cpu()
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1) + offset).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1) + offset).clamp(min=0)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


class _Ext(types.ModuleType):
    """``mmcv._ext``: ``nms`` implemented, any other attribute an op that raises when called."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise ConvertError(f"mmcv op {name!r} needs compiled mmcv (mmcv-lite is installed; the project's "
                               "stand-in for mmcv._ext implements only nms).",
                               hint="install compiled mmcv 2.0.1 (see README, mmyolo), or use a model without "
                               "this op.")

        missing.__name__ = name
        return missing


class _Loader:
    """Loader of the stand-in (already in ``sys.modules``): ``pkgutil.find_loader`` must find one."""

    def create_module(self, spec):
        return sys.modules[NAME]

    def exec_module(self, module):
        pass


def compiled_available() -> bool:
    """Whether a compiled ``mmcv._ext`` is installed (the stand-in does not count)."""
    if isinstance(sys.modules.get(NAME), _Ext):
        return False
    try:
        return importlib.util.find_spec(NAME) is not None
    except (ImportError, ValueError):  # no mmcv at all
        return False


def install() -> bool:
    """Registers the stand-in as ``mmcv._ext`` unless compiled mmcv is present.

    Returns:
        True if the stand-in is (now) in use.
    """
    if isinstance(sys.modules.get(NAME), _Ext):
        return True
    if compiled_available():
        return False
    ext = _Ext(NAME, __doc__)
    ext.nms = nms
    # mmengine's mmcv_full_available() looks the module up through its spec (pkgutil.find_loader).
    ext.__spec__ = importlib.machinery.ModuleSpec(NAME, loader=_Loader(), origin=__name__)
    sys.modules[NAME] = ext
    return True
