"""``load``: the first artifact of a pipeline: a YOLOv5 or ultralytics (YOLOv8 / YOLO11) checkpoint or
architecture, a Python factory or an ONNX file."""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import Field, model_validator

from convert.base import InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError, PassError
from convert.preprocess import DEFAULT_PREPROCESS


class PreprocessConfig(PassConfig):
    """How images become network inputs; recorded in the artifact for every later consumer."""

    resize: Literal["letterbox", "stretch"] = Field(
        "letterbox", description="letterbox keeps the aspect ratio and pads; stretch resizes to the input size")
    pad_value: int = Field(114, ge=0, le=255, description="letterbox fill value")
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="channel order the network expects")
    scale: float = Field(1 / 255, gt=0, description="multiplier applied to 0-255 pixel values")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="subtracted after scaling")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="divided by after subtracting the mean")
    align: Literal["center", "top_left"] | None = Field(
        None, description="letterbox placement: center (default) or top_left (pads bottom/right, mmdet's Pad)")
    interpolation: Literal["bilinear", "cv2_bilinear", "cv2_area"] | None = Field(
        None, description="resize filter: bilinear (PIL, default), cv2_bilinear, cv2_area (OpenCV area when "
        "shrinking, as mmyolo's YOLOv5KeepRatioResize)")


class LoadConfig(PassConfig):
    source: Literal["yolov5", "ultralytics", "mmyolo", "python", "onnx"] = Field(
        "yolov5", description="yolov5: YOLOv5-repository model (YOLOv5, YOLO-Pose); ultralytics: YOLOv8 / YOLO11 "
        "detection or pose; both built by this project from `arch` or the checkpoint. mmyolo: built by mmyolo "
        "(the mmyolo extra) from a config (`arch`: bundled config name, or `arch_file`) and `weights`; python: an "
        "nn.Module from `factory`; onnx: an existing ONNX file given as `weights`")
    arch: str | None = Field(
        None, description="yolov5: built-in architecture (yolov5n, yolov5s, yolov5s-pose); ultralytics: yolov8n, "
        "yolov8n-pose, yolo11n, yolo11n-pose; default: the checkpoint's own (an ultralytics checkpoint always "
        "uses its own); mmyolo: a bundled config name (e.g. yolov5_n-v61_syncbn_fast_8xb16-300e_coco)")
    arch_file: InputPath | None = Field(None, description="yolov5 / ultralytics: a model-YAML file instead of `arch`; "
                                        "mmyolo: a config file (Python: runs only with --trust-code)")
    builder: Literal["own", "ultralytics"] = Field(
        "own", description="ultralytics: own: this project's modules (no ultralytics import); ultralytics: the "
        "installed ultralytics package builds the layers (for architectures the own builder does not know)")
    weights: InputPath | None = Field(
        None, description="yolov5 / ultralytics: official checkpoint (.pt) or a state dict for `arch`; python: a "
        "state dict; onnx: the .onnx file. Checkpoints are read without executing pickled code")
    nc: int | None = Field(None, ge=1, description="number of classes (default: the checkpoint's or the arch's)")
    names: list[str] | None = Field(None, description="class names (default: the checkpoint's, else class0...)")
    seed: int = Field(0, description="seed of the initial weights when no weights are given")
    factory: str | None = Field(None, description="python: 'package.module:function' returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="python: keyword arguments of the factory")
    input_size: tuple[int, int] = Field((640, 640), description="network input [height, width]")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig, description="image preprocessing")

    @model_validator(mode="after")
    def _check_source(self):
        if self.input_size[0] < 32 or self.input_size[1] < 32 or self.input_size[0] % 32 or self.input_size[1] % 32:
            raise ValueError(f"input_size must be multiples of 32 (the largest stride), got {list(self.input_size)}")
        if self.weights is not None and self.weights.is_dir():  # before the manager would hash the whole tree
            raise ValueError(f"weights {str(self.weights)!r} is a folder, not a checkpoint or model file")
        if self.builder != "own" and self.source != "ultralytics":
            raise ValueError(f"builder {self.builder} is for source ultralytics only")
        if self.source in ("yolov5", "ultralytics"):
            if self.arch and self.arch_file:
                raise ValueError("give arch or arch_file, not both")
            if not (self.arch or self.arch_file or self.weights):
                example = "yolov5s" if self.source == "yolov5" else "yolo11n-pose"
                raise ValueError(f"source {self.source} needs arch (e.g. {example}), arch_file or a checkpoint in "
                                 "weights")
        elif self.source == "mmyolo":
            if bool(self.arch) == bool(self.arch_file):
                raise ValueError("source mmyolo needs one config: arch (a bundled config name, e.g. "
                                 "yolov5_n-v61_syncbn_fast_8xb16-300e_coco) or arch_file (a config file)")
        elif self.source == "python" and not self.factory:
            raise ValueError("source python needs factory: 'package.module:function'")
        elif self.source == "onnx" and not self.weights:
            raise ValueError("source onnx needs weights: the .onnx file")
        return self


class Load(Pass):
    """Load a model: YOLOv5 or ultralytics checkpoint or architecture, Python factory, or ONNX file."""

    name = "load"
    version = 1
    Config = LoadConfig
    inputs = {}
    output = "torch"
    tools = ("torch",)
    requires = ()

    @classmethod
    def key_files(cls, config: LoadConfig) -> list:
        """An ONNX file's external data files (they hold its weights)."""
        if config.source != "onnx" or config.weights is None or not config.weights.is_file():
            return []
        return [config.weights.parent / loc for loc in _external_locations(config.weights)]

    @classmethod
    def runs_code(cls, config: LoadConfig) -> str | None:
        if config.source == "mmyolo" and config.arch_file is not None:
            return f"source: mmyolo executes the config file {str(config.arch_file)!r} (mmengine configs are Python)"
        return f"source: python imports the factory {config.factory!r}" if config.source == "python" else None

    @classmethod
    def output_kind(cls, config: LoadConfig) -> str:
        return "onnx" if config.source == "onnx" else "torch"

    def run(self, inputs, out, ctx) -> PassResult:
        c: LoadConfig = self.config
        if c.source == "onnx":
            return self._load_onnx(out)
        from convert.torchmodel import save_state

        if c.source == "python":
            module, recipe = self._load_python()
        else:
            from convert.models import ModelRequest, architecture

            module, recipe = architecture(c.source).load(ModelRequest(
                arch=c.arch_file or c.arch, weights=c.weights, nc=c.nc, names=tuple(c.names) if c.names else None,
                seed=c.seed, builder=c.builder))
        save_state(module, out / "model.pt")
        head = module.head_meta() if hasattr(module, "head_meta") else None
        names = list(getattr(module, "names", None) or (head or {}).get("names") or [])
        stride = max(head["strides"]) if head else 32
        # the model's own preprocessing (mmyolo: from its config), then what the spec sets explicitly
        own = dict(getattr(module, "preprocess", None) or {})
        size = list(c.input_size) if "input_size" in c.model_fields_set or "size" not in own else own["size"]
        meta = {"model": recipe, "truncated": False, "head": head, "names": names,
                "preprocess": {**DEFAULT_PREPROCESS, **own, **c.preprocess.model_dump(mode="json", exclude_unset=True),
                               "size": size, "stride": int(stride)},
                "input": {"name": "images", "shape": [1, 3, *size]}}
        n_params = sum(p.numel() for p in module.parameters())
        return PassResult("torch", "model.pt", meta, {"params": n_params, "pretrained": c.weights is not None})

    def _load_python(self):
        from convert.models.checkpoint import load_state_dict_file
        from convert.torchmodel import build_module

        c: LoadConfig = self.config
        recipe = {"source": "python", "factory": c.factory, "kwargs": c.kwargs}
        module = build_module(recipe)
        if c.weights is not None:
            state = load_state_dict_file(c.weights)
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise PassError(f"weights {c.weights} do not fit the factory's model: "
                                f"{str(e).splitlines()[0]}") from None
        return module, recipe

    def _load_onnx(self, out) -> PassResult:
        import onnx

        from convert.onnxutil import read_metadata

        c: LoadConfig = self.config
        try:
            model = onnx.load(str(c.weights))
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # onnx raises DecodeError, ValidationError, ...: all mean unusable input
            raise ConvertError(f"ONNX file {c.weights} is corrupt or invalid: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}",
                               hint="re-export it, or check it with `python -m onnx.checker`.") from None
        if _external_locations(c.weights):
            onnx.save(model, str(out / "model.onnx"))  # external data, loaded beside it above, stored inline
        else:
            shutil.copyfile(c.weights, out / "model.onnx")
        recorded = read_metadata(model)
        inp = model.graph.input[0]
        shape = [d.dim_value or d.dim_param or -1 for d in inp.type.tensor_type.shape.dim]
        meta = {"truncated": bool(recorded.get("truncated")), "end2end": bool(recorded.get("end2end")),
                "precision": recorded.get("precision", "fp32"),
                "head": recorded.get("head"), "names": recorded.get("names", c.names or []),
                "preprocess": recorded.get("preprocess") or {**DEFAULT_PREPROCESS,
                                                             **c.preprocess.model_dump(mode="json"),
                                                             "size": list(c.input_size)},
                "input": {"name": inp.name, "shape": shape},
                "outputs": [o.name for o in model.graph.output]}
        return PassResult("onnx", "model.onnx", meta, {"opset": model.opset_import[0].version})


def _external_locations(path) -> list[str]:
    """The external data files an ONNX model names (relative to it), without reading them."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: the pass reports it
        return []
    locations = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in locations:
                locations.append(loc)
    return locations
