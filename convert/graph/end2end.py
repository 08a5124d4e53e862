"""Truncated-head ONNX model -> end-to-end model: decode and NMS appended to the graph."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from convert.errors import ConvertError
from convert.graph.builder import MIN_OPSET, Builder
from convert.graph.decode import append_decode
from convert.graph.nms import TRT_DOMAIN, append_nms
from convert.postprocess import OUTPUT_NAMES, NMSSettings

PREFIX = "postprocess"
"""Name prefix of every node and tensor the rewrite adds."""


def make_end2end(model: onnx.ModelProto, head: dict[str, Any], settings: NMSSettings, backend: str = "onnx",
                 keypoints: bool | None = None) -> onnx.ModelProto:
    """Appends decode and NMS to a truncated-head model.

    Args:
        model: The truncated model: one raw map ``[B, na*no, H, W]`` output per head level.
        head: Its head metadata (``meta["head"]``); the maps are the outputs named in
            ``head["outputs"]`` if present, else the graph outputs in order.
        settings: Thresholds and limits.
        backend: NMS back-end (:data:`convert.graph.nms.BACKENDS`).
        keypoints: Whether to output keypoints; default: when the head has them.

    Returns:
        A new model whose outputs are :data:`convert.postprocess.OUTPUT_NAMES` (keypoints only
        for keypoint output); metadata properties of ``model`` are kept.

    Raises:
        ConvertError: Opset below 13, head outputs not found, names taken, keypoints requested
            from a head without them, or an unsupported head type or back-end.
    """
    graph = gs.import_onnx(model)
    if int(graph.opset) < MIN_OPSET:
        raise ConvertError(f"the model uses opset {graph.opset}; post-processing needs opset >= {MIN_OPSET}.",
                           hint=f"re-export with opset {MIN_OPSET} or later (export_onnx: opset).")
    tensors = graph.tensors()
    names = list(head.get("outputs") or [o.name for o in graph.outputs])
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ConvertError(f"head outputs {missing} are not in the graph (outputs: {[o.name for o in graph.outputs]}).",
                           hint="the model's head metadata does not describe this graph; re-export it.")
    taken = [n for n in OUTPUT_NAMES if n in tensors]
    if taken:
        raise ConvertError(f"the graph already has tensors named {taken}, the end-to-end output names.",
                           hint="rename them in the source model.")
    b = Builder(graph, PREFIX)
    # The standard NMS takes any number of candidates; TensorRT's plugins are left the fixed count they expect.
    cands = append_decode(b, [tensors[n] for n in names], head,
                          settings.score_threshold if backend == "onnx" else None)
    if keypoints and cands.keypoints is None:
        raise ConvertError(f"keypoints requested, but the {head.get('type')!r} head has none.")
    if keypoints is False:
        cands = replace(cands, keypoints=None)
    dets = append_nms(b, cands, settings, backend)
    for var, name in zip(dets.as_list(), OUTPUT_NAMES):
        var.name = name
    graph.outputs = dets.as_list()
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if any(n.domain == TRT_DOMAIN for n in out.graph.node) and all(o.domain != TRT_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(TRT_DOMAIN, 1))
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out.metadata_props.extend(model.metadata_props)
    return out
