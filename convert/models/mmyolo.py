"""mmyolo models (``source: mmyolo``), built by mmyolo's own code from its config and checkpoint.

mmyolo (0.6.0, with mmdet 3.0.0, mmengine 0.10.7 and ``mmcv-lite`` 2.0.1: the ``mmyolo`` extra)
builds the detector from a config: a bundled config name (a file under the installed package's
``mmyolo/.mim/configs``, e.g. ``yolov5_n-v61_syncbn_fast_8xb16-300e_coco``) or a config file.
Where compiled mmcv is absent the project's stand-in for ``mmcv._ext``
(:mod:`convert.models.mmcv_shim`) is installed first. Checkpoints are read with the project's
safe unpickler (:mod:`convert.models.checkpoint`), never with ``torch.load`` of pickled code;
re-parameterizable blocks (RepVGG) are switched to their deploy form.

:class:`MMYOLOModel` wraps the detector: ``forward`` runs the backbone, neck and head module
and returns either the raw per-level maps (truncated) or the decoded candidates, in the
layout of the head family each mmyolo head maps to (:data:`FAMILIES`):

=============================  ==========================================  =====================
mmyolo head                    head family (``convert.heads``)             raw maps per level
=============================  ==========================================  =====================
YOLOv5Head, YOLOv7Head         ``yolov5`` (anchors, objectness)            ``convs_pred`` output
YOLOv8Head, YOLOv6Head,        ``distance`` (distance to box, DFL where    box (DFL bins), cls
PPYOLOEHead, RTMDetHead        the family has it)
YOLOXHead                      ``yolox`` (objectness, exp sizes)           box, cls, obj
=============================  ==========================================  =====================

The recipe stores the config's ``model`` section as JSON, so rebuilding the module runs no
config file. :func:`preprocess_from_config` records the test pipeline's resize and the data
preprocessor's mean/std and channel order.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convert.errors import ConvertError

EXTRA_HINT = 'install the mmyolo extra: pip install -e ".[mmyolo]" (mmcv-lite 2.0.1, mmengine 0.10.7, mmdet 3.0.0, ' \
             'mmyolo 0.6.0).'


def import_mmyolo():
    """Imports mmyolo (with the ``mmcv._ext`` stand-in where needed) and registers its modules.

    Raises:
        ConvertError: mmyolo or its stack is not installed or does not import.
    """
    missing = [m for m in ("mmyolo", "mmdet", "mmengine", "mmcv") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConvertError(f"source: mmyolo needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           "not installed.", hint=EXTRA_HINT)
    from convert.models import mmcv_shim

    mmcv_shim.install()
    try:
        import mmyolo.models  # noqa: F401  (registers the models)
        from mmyolo.utils import register_all_modules
    except Exception as e:  # version checks raise AssertionError, a broken mmcv ImportError...
        raise ConvertError(f"mmyolo cannot be imported: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           hint=EXTRA_HINT) from None
    register_all_modules(init_default_scope=True)
    import mmyolo

    return mmyolo


def config_dir() -> Path:
    """The bundled configs of the installed mmyolo."""
    spec = importlib.util.find_spec("mmyolo")
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError("mmyolo is not installed.", hint=EXTRA_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"


def bundled_configs() -> dict[str, Path]:
    """Bundled config name (file stem) -> path."""
    return {p.stem: p for p in sorted(config_dir().rglob("*.py")) if not p.name.startswith("_")
            and "_base_" not in p.parts}


def resolve_config(name_or_path: str | Path) -> Path:
    """A bundled config name (``yolov5_n-v61_syncbn_fast_8xb16-300e_coco``, optionally with its folder
    and ``.py``) or a config file path -> the file.

    Raises:
        ConvertError: Neither a file nor a bundled name (the closest names are suggested).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    root = config_dir()
    if (root / p).is_file():
        return root / p
    known = bundled_configs()
    stem = p.name[:-3] if p.name.endswith(".py") else p.name
    if stem in known:
        return known[stem]
    close = difflib.get_close_matches(stem, list(known), n=3, cutoff=0.5)
    raise ConvertError(f"{name_or_path!r} is neither a config file nor one of mmyolo's bundled configs.",
                       hint=f"closest bundled names: {', '.join(close)}." if close else
                       f"bundled configs are under {root}.")


def read_config(name_or_path: str | Path):
    """The mmengine ``Config`` of a config name or file (executes the config file: it is Python)."""
    import_mmyolo()
    from mmengine.config import Config

    path = resolve_config(name_or_path)
    try:
        return Config.fromfile(str(path))
    except Exception as e:
        raise ConvertError(f"mmyolo config {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}).",
                           hint="check the file, and that its _base_ files exist.") from None


def _plain(o: Any) -> Any:
    if hasattr(o, "to_dict"):  # a nested ConfigDict
        return o.to_dict()
    raise TypeError(type(o).__name__)


def _jsonable(obj: Any) -> Any:
    """A config section as plain JSON (tuples to lists); ``ConvertError`` for anything else."""
    try:
        return json.loads(json.dumps(obj, default=_plain))
    except TypeError as e:
        raise ConvertError(f"the config's model section holds a {e} object, which cannot be recorded.",
                           hint="write the config with plain values (type names as strings).") from None


# --- head families ------------------------------------------------------------------------------


class _Family:
    """How one mmyolo head maps to a head family of :mod:`convert.heads`."""

    head_type = ""

    def meta(self, head: nn.Module) -> dict:
        """The family-specific head metadata fields."""
        return {}

    def output_names(self, strides: list) -> list[str]:
        raise NotImplementedError

    def raw(self, head: nn.Module, feats) -> list[torch.Tensor]:
        """Raw per-level maps, in the head family's order."""
        raise NotImplementedError

    def decoded(self, head: nn.Module, feats, meta: dict) -> torch.Tensor:
        """The decoded candidates, in the head family's decoded layout."""
        raise NotImplementedError


def _level_names(strides: list) -> list[str]:
    return [f"p{int(math.log2(s))}" if float(math.log2(s)).is_integer() else f"l{i}" for i, s in enumerate(strides)]


class _Anchors(_Family):
    """YOLOv5Head / YOLOv7Head -> ``yolov5``: the ``convs_pred`` outputs ``[B, na*(5+nc), H, W]``."""

    head_type = "yolov5"

    def meta(self, head):
        base = head.prior_generator.base_sizes
        return {"anchors": [[[float(w), float(h)] for w, h in level] for level in base], "na": len(base[0])}

    def output_names(self, strides):
        return _level_names(strides)

    def raw(self, head, feats):
        return [conv(x) for conv, x in zip(head.head_module.convs_pred, feats)]

    def decoded(self, head, feats, meta):
        from convert.models.yolo import decode_raw

        return decode_raw(self.raw(head, feats), meta)


class _Distance(_Family):
    """YOLOv8Head, YOLOv6Head, PPYOLOEHead, RTMDetHead -> ``distance``: box (pre-DFL) and cls maps."""

    head_type = "distance"

    def meta(self, head):
        module = head.head_module
        proj = getattr(module, "proj", None)
        bins = int(proj.numel()) if getattr(module, "reg_max", 0) > 1 and proj is not None else 0
        if bins and not torch.equal(proj.float().cpu(), torch.arange(bins, dtype=torch.float32)):
            raise ConvertError(f"{type(head).__name__}: DFL projection {proj.tolist()} is not 0..{bins - 1}.",
                               hint="only integer-spaced DFL bins are supported.")
        family = type(head).__name__.removesuffix("Head").lower()
        return {"bins": bins, "offset": float(head.prior_generator.offset), "family_name": family}

    def output_names(self, strides):
        return [f"{n}_{part}" for n in _level_names(strides) for part in ("box", "cls")]

    def raw(self, head, feats):
        module = head.head_module
        reg_max = getattr(module, "reg_max", 0)
        try:  # reg_max 0 makes the module return its regression conv's output: the maps before DFL
            if reg_max:
                module.reg_max = 0
            cls, box = module(feats)[:2]
        finally:
            if reg_max:
                module.reg_max = reg_max
        return [t for pair in zip(box, cls) for t in pair]

    def decoded(self, head, feats, meta):
        cls, box = head.head_module(feats)[:2]
        return _coder_decode(head, cls, box, None)


class _YOLOX(_Family):
    """YOLOXHead -> ``yolox``: box, cls and objectness maps."""

    head_type = "yolox"

    def output_names(self, strides):
        return [f"{n}_{part}" for n in _level_names(strides) for part in ("box", "cls", "obj")]

    def raw(self, head, feats):
        cls, box, obj = head.head_module(feats)
        return [t for triple in zip(box, cls, obj) for t in triple]

    def decoded(self, head, feats, meta):
        cls, box, obj = head.head_module(feats)
        return _coder_decode(head, cls, box, obj)


def _coder_decode(head, cls_scores, bbox_preds, objectnesses) -> torch.Tensor:
    """``[B, N, 4 + nc]`` boxes and scores by mmyolo's own priors and bbox coder (as ``predict_by_feat``)."""
    B = cls_scores[0].shape[0]
    sizes = [c.shape[2:] for c in cls_scores]
    priors = torch.cat(head.prior_generator.grid_priors(sizes, dtype=cls_scores[0].dtype,
                                                        device=cls_scores[0].device))
    stride = torch.cat([priors.new_full((s.numel(),), st) for s, st in zip(sizes, head.featmap_strides)])
    flat = lambda maps, c: torch.cat([m.permute(0, 2, 3, 1).reshape(B, -1, c) for m in maps], 1)
    boxes = head.bbox_coder.decode(priors[None], flat(bbox_preds, 4), stride)
    scores = flat(cls_scores, head.num_classes).sigmoid()
    if objectnesses is not None:
        scores = scores * flat(objectnesses, 1).sigmoid()
    return torch.cat([boxes, scores], -1)


FAMILIES: dict[str, _Family] = {
    "YOLOv5Head": _Anchors(), "YOLOv7Head": _Anchors(),
    "YOLOv8Head": _Distance(), "YOLOv6Head": _Distance(), "PPYOLOEHead": _Distance(), "RTMDetHead": _Distance(),
    "YOLOXHead": _YOLOX(),
}
"""mmyolo head class name -> its head family adapter (exact class: subclasses such as RTMDet's
instance-segmentation or rotated heads decode differently and are refused)."""


class MMYOLOModel(nn.Module):
    """An mmyolo detector exposing the project's model interface (``truncate_head``, ``head_meta``).

    Attributes:
        detector: The mmyolo detector (``YOLODetector``).
        names: Class names.
        truncated: Whether forward returns the raw per-level maps.
    """

    def __init__(self, detector: nn.Module, names: list[str]):
        super().__init__()
        self.detector = detector
        head = detector.bbox_head
        self.family = FAMILIES[type(head).__name__]
        self.names = list(names)
        self.truncated = False

    def _feats(self, x: torch.Tensor):
        return self.detector.extract_feat(x)

    def forward(self, x: torch.Tensor):
        """Raw maps (truncated) or decoded candidates of ``[B, 3, H, W]`` (preprocessed as recorded)."""
        feats = self._feats(x)
        head = self.detector.bbox_head
        if self.truncated:
            return tuple(self.family.raw(head, feats))
        return self.family.decoded(head, feats, self.head_meta())

    def truncate_head(self) -> MMYOLOModel:
        self.truncated = True
        return self

    def head_meta(self) -> dict:
        head = self.detector.bbox_head
        strides = [int(s) if float(s).is_integer() else float(s) for s in
                   (s[0] if isinstance(s, (list, tuple)) else s for s in head.featmap_strides)]
        nc = int(head.num_classes)
        fam = self.family
        return {"type": fam.head_type, "strides": strides, "nc": nc, "nk": 0, "names": self.names,
                "layout": f"mmyolo {type(head).__name__} as the {fam.head_type!r} head family "
                          f"(convert/heads/{fam.head_type}.py)",
                "outputs": fam.output_names(strides) if self.truncated else ["predictions"],
                **fam.meta(head)}


# --- building --------------------------------------------------------------------------------------


def _check_detector(model_cfg: dict, where: str) -> None:
    head = (model_cfg.get("bbox_head") or {}).get("type", "")
    head = head.split(".")[-1] if isinstance(head, str) else getattr(head, "__name__", str(head))
    if model_cfg.get("type", "").split(".")[-1] != "YOLODetector" or head not in FAMILIES:
        raise ConvertError(f"{where}: model {model_cfg.get('type')!r} with head {head or None!r} is not a detector "
                           "of a supported mmyolo family.",
                           hint=f"supported: YOLODetector with {', '.join(FAMILIES)} (detection, not "
                           "instance segmentation, rotated boxes or pose).")


def build_detector(model_cfg: dict, seed: int = 0, deploy: bool = True) -> nn.Module:
    """The mmyolo detector of a config's ``model`` section, eval mode, random weights (seeded).

    Args:
        model_cfg: The config's ``model`` dict (JSON form).
        seed: Seed of the initial weights (the global RNG is left untouched).
        deploy: Switch re-parameterizable blocks to their deploy form.
    """
    import_mmyolo()
    from mmengine.config import ConfigDict
    from mmyolo.registry import MODELS

    _check_detector(model_cfg, "mmyolo config")
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("init_cfg", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            detector = MODELS.build(ConfigDict(cfg))  # heads read their cfg by attribute
        except Exception as e:
            raise ConvertError(f"mmyolo cannot build the config's model: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}",
                               hint="check the config's model section.") from None
    if deploy:
        for m in detector.modules():
            if type(m).__name__ == "RepVGGBlock":
                m.switch_to_deploy()
    return detector.float().eval()


def _class_names(cfg, nc: int, ckpt_meta: dict | None) -> list[str]:
    classes = ((ckpt_meta or {}).get("dataset_meta") or {}).get("classes")
    if not classes:
        classes = (cfg.get("metainfo") or {}).get("classes") if hasattr(cfg, "get") else None
    if not classes and nc == 80:
        from mmdet.datasets import CocoDataset

        classes = CocoDataset.METAINFO["classes"]
    classes = list(classes or [])
    return classes if len(classes) == nc else [f"class{i}" for i in range(nc)]


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from convert.models.checkpoint import load_pickle, load_state_dict_file

    obj = load_pickle(path)
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else None
    state = load_state_dict_file(path)
    if all(k.startswith("module.") for k in state):  # saved from a (Distributed)DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def _load_state(detector: nn.Module, state: dict, source: str) -> None:
    own = detector.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = ([f"{len(missing)} missing keys ({', '.join(missing[:3])})"] if missing else []) + \
        ([f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})"] if unexpected else []) + \
        ([f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})"] if shapes else [])
    if problems:
        raise ConvertError(f"weights from {source} do not fit the mmyolo config's model: {'; '.join(problems)}",
                           hint="give the config the checkpoint was trained with (and its num_classes).")
    detector.load_state_dict(state, strict=True)


def preprocess_from_config(cfg) -> dict:
    """``meta["preprocess"]`` keys from the config's data preprocessor and test pipeline.

    mmyolo loads images as BGR; ``bgr_to_rgb`` makes the network see RGB. The test pipeline's
    ``YOLOv5KeepRatioResize`` + ``LetterResize`` is a centred letterbox (cv2 area interpolation
    when shrinking); mmdet's ``Resize(keep_ratio)`` + ``Pad(pad_to_square)`` (YOLOX) pads at the
    bottom and right.
    """
    dp = cfg.model.get("data_preprocessor") or {}
    mean = [float(v) for v in (dp.get("mean") or [0.0, 0.0, 0.0])]
    std = [float(v) for v in (dp.get("std") or [1.0, 1.0, 1.0])]
    out: dict[str, Any] = {"channel_order": "RGB" if dp.get("bgr_to_rgb") else "BGR", "scale": 1.0,
                           "mean": mean, "std": std, "resize": "letterbox"}
    try:
        pipeline = cfg.test_dataloader.dataset.pipeline
    except AttributeError:
        pipeline = []
    for step in pipeline:
        kind = str(step.get("type", "")).split(".")[-1]
        if kind == "YOLOv5KeepRatioResize":
            out.update(interpolation="cv2_area", align="center")
        elif kind == "Resize" and step.get("keep_ratio"):
            out.update(interpolation="cv2_bilinear", align="top_left")
        elif kind in ("LetterResize", "Pad"):
            pad = step.get("pad_val", {})
            pad = pad.get("img", 114) if isinstance(pad, dict) else pad
            pad = pad[0] if isinstance(pad, (list, tuple)) else pad
            out["pad_value"] = int(pad)
        if kind in ("YOLOv5KeepRatioResize", "Resize", "LetterResize") and step.get("scale") is not None:
            s = step["scale"]
            s = (s, s) if isinstance(s, int) else tuple(s)
            out["size"] = [int(s[1]), int(s[0])]  # mmcv scales are (w, h)
    return out


def test_settings(model_cfg: dict) -> dict:
    """The config's test-time post-processing (``model.test_cfg``) as NMS settings keyword arguments."""
    t = model_cfg.get("test_cfg") or {}
    return {"score_threshold": float(t.get("score_thr", 0.001)),
            "iou_threshold": float((t.get("nms") or {}).get("iou_threshold", 0.65)),
            "max_detections": int(t.get("max_per_img", 300))}


# --- the architecture-module contract (convert.models) --------------------------------------------


def load(request) -> tuple[MMYOLOModel, dict]:
    """An mmyolo model for the ``load`` pass: ``request.arch`` is the config name or file."""
    import warnings

    if not request.arch:
        raise ConvertError("source: mmyolo needs a config: arch (a bundled config name) or arch_file.",
                           hint="e.g. arch: yolov5_n-v61_syncbn_fast_8xb16-300e_coco.")
    cfg = read_config(request.arch)
    model_cfg = _jsonable(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model))
    _check_detector(model_cfg, f"mmyolo config {request.arch}")
    if request.nc is not None:
        model_cfg["bbox_head"]["head_module"]["num_classes"] = int(request.nc)
    state, ckpt_meta = (None, None)
    if request.weights is not None:
        state, ckpt_meta = _read_weights(Path(request.weights))
    else:
        warnings.warn(f"load: no weights given; the mmyolo model is randomly initialised (seed {request.seed}). "
                      "Its outputs are meaningless.", stacklevel=1)
    # weights are loaded before the deploy switch, which re-parameterizes them
    detector = build_detector(model_cfg, request.seed, deploy=False)
    if state is not None:
        _load_state(detector, state, str(request.weights))
    for m in detector.modules():
        if type(m).__name__ == "RepVGGBlock":
            m.switch_to_deploy()
    detector = detector.float().eval()
    nc = int(detector.bbox_head.num_classes)
    names = list(request.names) if request.names else _class_names(cfg, nc, ckpt_meta)
    if len(names) != nc:
        raise ConvertError(f"names: {len(names)} class names for nc={nc}.", hint="give one name per class.")
    model = MMYOLOModel(detector, names)
    recipe = {"source": "mmyolo", "config": str(request.arch), "model": model_cfg, "names": names,
              "seed": request.seed}
    model.preprocess = {**preprocess_from_config(cfg), "stride": int(max(model.head_meta()["strides"]))}
    return model, recipe


def from_recipe(recipe: dict) -> MMYOLOModel:
    """The untrained (deploy-form) model a recipe of :func:`load` describes."""
    return MMYOLOModel(build_detector(recipe["model"], recipe.get("seed", 0), deploy=True), recipe["names"])
