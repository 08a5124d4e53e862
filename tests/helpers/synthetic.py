"""Synthetic truncated-head ONNX models, for exercising post-processing without a trained network.

The model average-pools the image to each level's grid and applies a random 1x1 convolution,
so its raw maps have exactly the layout of a truncated head of any family (YOLOv5 / YOLO-Pose:
``[B, na*(5+nc+3*nk), H/s, W/s]``; YOLOv8: box, cls and kpt maps per level) and vary smoothly
across cells: neighbouring candidates overlap with similar scores, which is what NMS has to
sort out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

YOLOV5_ANCHORS = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                  [[116, 90], [156, 198], [373, 326]]]
"""YOLOv5's default P3-P5 anchors in input pixels, as ``head_meta()`` reports them."""


def synthetic_head(nc: int = 3, nk: int = 0, strides: tuple[int, ...] = (8, 16, 32)) -> dict[str, Any]:
    """Head metadata shaped like :meth:`convert.models.yolo.YoloModel.head_meta` of a truncated model."""
    return {"type": "yolov5_pose" if nk else "yolov5", "strides": list(strides),
            "anchors": YOLOV5_ANCHORS[:len(strides)], "nc": nc, "nk": nk, "na": 3,
            "names": [f"class{i}" for i in range(nc)],
            "outputs": [f"p{int(math.log2(s))}" for s in strides]}


def synthetic_yolov8_head(nc: int = 3, nk: int = 0, strides: tuple[int, ...] = (8, 16, 32),
                          reg_max: int = 16) -> dict[str, Any]:
    """Head metadata shaped like a truncated ultralytics YOLOv8 / YOLO11 model's."""
    parts = ("box", "cls", "kpt") if nk else ("box", "cls")
    return {"type": "yolov8_pose" if nk else "yolov8", "strides": list(strides), "nc": nc, "nk": nk,
            "reg_max": reg_max, "names": [f"class{i}" for i in range(nc)],
            "outputs": [f"p{int(math.log2(s))}_{p}" for s in strides for p in parts]}


def synthetic_model(head: dict[str, Any], size: tuple[int, int] = (64, 96), batch: int | None = 1,
                    dynamic_hw: bool = False, seed: int = 0, logit_scale: float = 2.0,
                    opset: int = 17) -> onnx.ModelProto:
    """A truncated-head model whose outputs are named ``head["outputs"]``.

    Args:
        head: Head metadata (:func:`synthetic_head`).
        size: Input [H, W] (multiples of the largest stride).
        batch: Static batch size, or ``None`` for a dynamic one.
        dynamic_hw: Make the input height and width dynamic.
        seed: Seed of the random weights.
        logit_scale: Spread of the raw logits (weights and biases are N(0, scale)).
        opset: ONNX opset of the model.
    """
    from convert import heads

    rng = np.random.default_rng(seed)
    channels = heads.parse(head).map_channels()
    per_level = len(channels) // len(head["strides"])
    b = "batch" if batch is None else batch
    h, w = ("height", "width") if dynamic_hw else size
    nodes, inits, outputs = [], [], []
    for i, (ch, name) in enumerate(zip(channels, head["outputs"], strict=True)):
        s = head["strides"][i // per_level]
        weight = (rng.standard_normal((ch, 3, 1, 1)) * logit_scale).astype(np.float32)
        bias = (rng.standard_normal(ch) * logit_scale).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"{name}.weight"), numpy_helper.from_array(bias, f"{name}.bias")]
        nodes += [helper.make_node("AveragePool", ["images"], [f"{name}.pooled"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Conv", [f"{name}.pooled", f"{name}.weight", f"{name}.bias"], [name])]
        dims = [b, ch, f"{name}_h", f"{name}_w"] if dynamic_hw else [b, ch, size[0] // s, size[1] // s]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(nodes, "synthetic_head", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [b, 3, h, w])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="convert")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def decode_model(model: onnx.ModelProto, head: dict[str, Any]) -> onnx.ModelProto:
    """``model`` with its head family's decode appended; outputs boxes, scores (and keypoints)."""
    import onnx_graphsurgeon as gs

    from convert.graph.builder import Builder
    from convert.graph.decode import append_decode

    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    cands = append_decode(Builder(graph, "postprocess"), [tensors[n] for n in head["outputs"]], head)
    outs = [cands.boxes, cands.scores] + ([cands.keypoints] if cands.keypoints is not None else [])
    for var, name, rank in zip(outs, ("boxes", "scores", "keypoints"), (3, 3, 4)):
        var.name, var.dtype, var.shape = name, np.float32, [None] * rank
    graph.outputs = outs
    out = gs.export_onnx(graph.cleanup().toposort())
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out
