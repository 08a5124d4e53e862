"""``postprocess``: decode and NMS appended to a truncated-head ONNX model (end-to-end model).

The semantics (decode, thresholds, NMS order and tie-breaking, output layout) are those of
:mod:`convert.postprocess`, which also post-processes truncated models on the host; the graph
rewrites are in :mod:`convert.graph`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from convert import heads
from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import ConvertError, PassError
from convert.postprocess import NMSSettings


class PostprocessConfig(PassConfig):
    backend: Literal["onnx", "efficient_nms_trt", "efficient_nms_onnx_trt"] = Field(
        "onnx", description="onnx: standard NonMaxSuppression (ONNX Runtime, OpenVINO, TensorRT); "
        "efficient_nms_trt: TensorRT's EfficientNMS_TRT plugin (no keypoints); efficient_nms_onnx_trt: "
        "TensorRT's index-returning EfficientNMS_ONNX_TRT plugin")
    score_threshold: float = Field(0.25, ge=0, le=1, description="a (box, class) pair is kept only if its score "
                                   "(objectness x class) is above this")
    iou_threshold: float = Field(0.45, ge=0, le=1, description="NMS drops a pair whose IoU with a kept pair of the "
                                 "same class is above this")
    max_detections: int = Field(100, ge=1, description="detections per image (K of the padded outputs)")
    pre_top_k: int | None = Field(None, ge=1, description="keep only this many candidates, by best class score, "
                                  "before NMS (null: all)")
    class_agnostic: bool = Field(False, description="NMS across classes, each box taking its best class")
    head_type: str | None = Field(None, description=f"the head type the input must have ({', '.join(heads.types())}); "
                                  "null: whatever the input's metadata says")
    keypoints: bool | None = Field(None, description="output keypoints [B,K,nk,3]; null: when the head has them")

    @model_validator(mode="after")
    def _check(self):
        has_kpts = None
        if self.head_type is not None:
            if self.head_type not in heads.types():
                raise ValueError(f"head_type {self.head_type!r} is not supported "
                                 f"(supported: {', '.join(heads.types())})")
            has_kpts = heads.has_keypoints(self.head_type)
        if self.keypoints and has_kpts is False:
            raise ValueError(f"keypoints: true needs a keypoint head; head_type {self.head_type!r} has none")
        if self.backend == "efficient_nms_trt" and (self.keypoints or (has_kpts and self.keypoints is None)):
            raise ValueError("backend efficient_nms_trt returns no indices, so it cannot output keypoints; use "
                             "efficient_nms_onnx_trt or onnx, or set keypoints: false")
        return self

    def settings(self) -> NMSSettings:
        return NMSSettings(score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                           max_detections=self.max_detections, pre_top_k=self.pre_top_k,
                           class_agnostic=self.class_agnostic)


class Postprocess(Pass):
    """Append decode + NMS to a truncated-head ONNX model: padded num_dets/boxes/scores/classes[/keypoints]."""

    name = "postprocess"
    # 2: YOLOv5 candidates that cannot pass the score threshold are dropped before decode;
    # 3: ... and gathered from each level map as it is, never transposing or concatenating whole maps
    version = 3
    Config = PostprocessConfig
    inputs = {"model": Input(("onnx",), doc="a truncated-head ONNX model (meta truncated: true, with head metadata)")}
    output = "onnx"
    tools = ("onnx", "onnx-graphsurgeon", "numpy")
    requires = ("onnx", "onnx_graphsurgeon")

    def run(self, inputs, out, ctx) -> PassResult:

        import onnx

        from convert import onnxutil
        from convert.graph.end2end import make_end2end

        c: PostprocessConfig = self.config
        art = inputs["model"]
        meta = art.meta

        def key(name: str) -> str:
            return f"stages.{ctx.stage}.with.{name}"

        if not meta.get("truncated"):
            raise PassError("the input model is not truncated (meta.truncated is not true): its head already "
                            "decodes, or its layout is unknown.", hint="put a truncate_head stage before export_onnx.")
        head = meta.get("head")
        try:
            kind = heads.parse(head)
        except ConvertError as e:
            raise PassError(e.message, hint=e.hint) from None
        if c.head_type is not None and c.head_type != kind.type:
            raise PassError(f"{key('head_type')}: {c.head_type!r}, but the input's head is {kind.type!r}.",
                            hint="fix head_type, or drop it to take the input's.")
        want_kpts = kind.keypoints if c.keypoints is None else c.keypoints
        if want_kpts and not kind.keypoints:
            raise PassError(f"{key('keypoints')}: true, but the input's {kind.type!r} head has no keypoints.",
                            hint="set keypoints: false (or drop it), or post-process a pose model.")
        if want_kpts and c.backend == "efficient_nms_trt":
            raise PassError(f"{key('backend')}: efficient_nms_trt cannot carry the keypoints of the input's "
                            f"{kind.type!r} head (the plugin returns no indices).",
                            hint="use backend efficient_nms_onnx_trt or onnx, or set keypoints: false.")
        model = onnx.load(str(art.file))
        nms = c.settings()
        try:
            e2e = make_end2end(model, head, nms, c.backend, keypoints=want_kpts)
        except ConvertError as e:
            raise PassError(e.message, hint=e.hint) from None
        outputs = [o.name for o in e2e.graph.output]
        settings = {"backend": c.backend, **dataclasses.asdict(nms)}
        meta_out = {**meta, "truncated": False, "end2end": True, "outputs": outputs, "postprocess": settings}
        onnxutil.set_metadata(e2e, meta_out)
        onnxutil.save(e2e, out / "model.onnx")
        return PassResult("onnx", "model.onnx", meta_out,
                          {"backend": c.backend, "outputs": len(outputs),
                           "nodes_added": len(e2e.graph.node) - len(model.graph.node)})
