"""mmyolo state-dict keys -> the project's own builders, so mmyolo YOLOv5 and YOLOv8 checkpoints
load without mmyolo installed (``source: yolov5, arch: yolov5n`` / ``source: ultralytics, arch:
yolov8n`` with ``weights:`` the mmyolo ``.pth``).

mmyolo's YOLOv5 (P5, v6.1) and YOLOv8 are the original networks under other module names; its
converters (``tools/model_converters/yolov5_to_mmyolo.py``, ``yolov8_to_mmyolo.py``) rename
the layers, and this module applies the reverse renaming. Buffers the mmyolo models do not store
(YOLOv5's ``anchors``, YOLOv8's fixed ``dfl`` weights) are taken from the model being filled,
which derives them from its architecture. Pure key manipulation: no mmyolo import.
"""

from __future__ import annotations

import re

_COMMON = [
    ("backbone.stem", "model.0"), ("backbone.stage1.0", "model.1"), ("backbone.stage1.1", "model.2"),
    ("backbone.stage2.0", "model.3"), ("backbone.stage2.1", "model.4"), ("backbone.stage3.0", "model.5"),
    ("backbone.stage3.1", "model.6"), ("backbone.stage4.0", "model.7"), ("backbone.stage4.1", "model.8"),
    ("backbone.stage4.2", "model.9"),
]

YOLOV5_P5 = _COMMON + [
    ("neck.reduce_layers.2", "model.10"), ("neck.top_down_layers.0.0", "model.13"),
    ("neck.top_down_layers.0.1", "model.14"), ("neck.top_down_layers.1", "model.17"),
    ("neck.downsample_layers.0", "model.18"), ("neck.bottom_up_layers.0", "model.20"),
    ("neck.downsample_layers.1", "model.21"), ("neck.bottom_up_layers.1", "model.23"),
    ("bbox_head.head_module.convs_pred", "model.24.m"),
]
"""mmyolo YOLOv5 (P5) module prefix -> YOLOv5 repository prefix."""

YOLOV8 = _COMMON + [
    ("neck.top_down_layers.0", "model.12"), ("neck.top_down_layers.1", "model.15"),
    ("neck.downsample_layers.0", "model.16"), ("neck.bottom_up_layers.0", "model.18"),
    ("neck.downsample_layers.1", "model.19"), ("neck.bottom_up_layers.1", "model.21"),
    ("bbox_head.head_module.reg_preds", "model.22.cv2"), ("bbox_head.head_module.cls_preds", "model.22.cv3"),
]
"""mmyolo YOLOv8 module prefix -> ultralytics prefix (``cv2``: box branch, ``cv3``: class branch)."""

# Inside blocks: mmyolo's CSP layers name their convolutions main/short/final_conv and their
# bottlenecks blocks.N.conv1/conv2; SPPF uses conv1/conv2 like a bottleneck.
_V5_PARTS = [(r"\.blocks\.(\d+)\.conv(\d)\.", r".m.\1.cv\2."), (r"\.main_conv\.", ".cv1."),
             (r"\.short_conv\.", ".cv2."), (r"\.final_conv\.", ".cv3."), (r"^(model\.9)\.conv(\d)\.", r"\1.cv\2.")]
_V8_PARTS = [(r"\.blocks\.(\d+)\.conv(\d)\.", r".m.\1.cv\2."), (r"\.main_conv\.", ".cv1."),
             (r"\.final_conv\.", ".cv2."), (r"^(model\.9)\.conv(\d)\.", r"\1.cv\2.")]


def is_mmyolo_state(state: dict) -> bool:
    """Whether a state dict has mmyolo's key names (``backbone.``, ``neck.``, ``bbox_head.``)."""
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("bbox_head.") for k in state)


def _rename(state: dict, prefixes, parts) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        for src, dst in sorted(prefixes, key=lambda p: -len(p[0])):  # longest prefix first
            if key == src or key.startswith(src + "."):
                new = dst + key[len(src):]
                break
        for pattern, repl in parts:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def _fill_derived(state: dict, own: dict, suffixes: tuple[str, ...]) -> dict:
    """Adds the buffers mmyolo does not store, from the model being filled."""
    return {**{k: v for k, v in own.items() if k.endswith(suffixes) and k not in state}, **state}


def to_yolov5(state: dict, own: dict) -> dict:
    """mmyolo YOLOv5 (P5) state dict -> YOLOv5-repository keys (``own``: the target's state dict)."""
    return _fill_derived(_rename(state, YOLOV5_P5, _V5_PARTS), own, (".anchors",))


def to_ultralytics(state: dict, own: dict) -> dict:
    """mmyolo YOLOv8 state dict -> ultralytics keys (``own``: the target's state dict)."""
    return _fill_derived(_rename(state, YOLOV8, _V8_PARTS), own, (".dfl.conv.weight",))
