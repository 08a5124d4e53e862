"""``fp16``: an FP32 ONNX model to FP16, checked against the FP32 model under ONNX Runtime.

The conversion is ONNX Runtime's ``convert_float_to_float16``: float initializers and
activations become float16, except

* inputs that ONNX defines as float32-only, which the converter keeps float32 by itself
  (``Resize`` scales, for one);
* nodes of the blocked op types, which compute in FP32 behind inserted casts: NMS
  (:data:`NMS_OPS`, including TensorRT's EfficientNMS plugins), the converter's own list (``TopK``,
  ``RoiAlign``, index arithmetic such as ``Range`` and ``CumSum``...), and
  :attr:`FP16Config.block_ops`; :attr:`FP16Config.block_nodes` blocks single nodes by name.

The FP16 model is run against the FP32 one under ONNX Runtime on sample photos (or noise, see
:func:`calib.data.check_feed`) and compared output by output (:mod:`convert.refcheck`: the
figures, and the ``max_abs_diff`` gate); a model holding TensorRT plugin ops cannot run there and
is converted unchecked.

Graph inputs and outputs stay float32 by default (``keep_io_types``): the end-to-end output
contract (docs/DESIGN.md) has float32 boxes and scores, and every consumer can feed float32.
"""

from __future__ import annotations

import heapq

from pydantic import Field

from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import PassError

NMS_OPS = ("NonMaxSuppression", "EfficientNMS_TRT", "EfficientNMS_ONNX_TRT")
"""NMS ops (ONNX's and TensorRT's plugins) always kept in FP32: box coordinates in pixels and
near-tied scores lose too much in float16, and ONNX's NonMaxSuppression takes float32 only."""


class FP16Config(PassConfig):
    keep_io_types: bool = Field(True, description="keep float graph inputs and outputs in float32 (casts at the "
                                "edges); false makes them float16")
    block_ops: list[str] = Field(default_factory=list, description="op types kept in FP32, added to the NMS ops "
                                 "and the converter's list (TopK, RoiAlign, Range, CumSum, Min, Max, Upsample...)")
    block_nodes: list[str] = Field(default_factory=list, description="node names kept in FP32")
    max_abs_diff: float | None = Field(None, gt=0, description="gate: fail the run when an output of the FP16 model "
                                       "differs from the FP32 model's by more than this on the check input")
    seed: int = Field(0, description="seed of the check input (sample photos, else uniform noise)")


class FP16(Pass):
    """Convert an FP32 ONNX model to FP16 (op block list, float32 I/O by default), checked under ONNX Runtime."""

    name = "fp16"
    version = 2
    Config = FP16Config
    inputs = {"model": Input(("onnx",), doc="the FP32 ONNX model")}
    output = "onnx"
    tools = ("onnx", "onnxruntime")
    requires = ("onnx", "onnxruntime")

    def run(self, inputs, out, ctx) -> PassResult:
        import logging

        import onnx
        from onnxruntime.transformers import float16

        from convert import onnxutil

        c: FP16Config = self.config
        art = inputs["model"]
        precision = art.meta.get("precision", "fp32")
        if precision != "fp32":
            raise PassError(f"the input model is {precision}, the fp16 pass converts FP32 models.",
                            hint="feed it the FP32 model (e.g. the export_onnx or simplify stage).")
        model = onnx.load(str(art.file))
        blocked_ops = set(float16.DEFAULT_OP_BLOCK_LIST) | set(NMS_OPS) | set(c.block_ops)
        names = {n.name for n in model.graph.node}
        unknown = [n for n in c.block_nodes if n not in names]
        if unknown:
            raise PassError(f"stages.{ctx.stage}.with.block_nodes: no node named {unknown[0]!r} in the model.",
                            hint="node names are those of the input ONNX graph (see it in Netron).")
        kept_fp32 = sum(1 for n in model.graph.node if n.op_type in blocked_ops or n.name in c.block_nodes)

        # The converter logs a warning per clamped weight; those are expected for tiny weights.
        converter_log = logging.getLogger("onnxruntime.transformers.float16")
        level = converter_log.level
        converter_log.setLevel(logging.ERROR)
        try:
            half = float16.convert_float_to_float16(model, keep_io_types=c.keep_io_types,
                                                    op_block_list=sorted(blocked_ops),
                                                    node_block_list=list(c.block_nodes))
        finally:
            converter_log.setLevel(level)
        # The converter inserts one identical Cast per consumer of a value that must go back to
        # FP32 (two Resize nodes sharing their scales, two blocked nodes sharing an input), all
        # writing the same name, and appends its casts at the end of the node list; ONNX wants
        # single assignment and topological order (the checker and TensorRT enforce both).
        drop_duplicate_nodes(half.graph)
        toposort(half.graph)
        meta = {**art.meta, "precision": "fp16", "io_precision": "fp32" if c.keep_io_types else "fp16"}
        onnxutil.set_metadata(half, meta)
        onnxutil.save(half, out / "model.onnx")

        summary: dict = {"fp32_nodes": kept_fp32, "bytes": (out / "model.onnx").stat().st_size,
                         "bytes_fp32": art.file.stat().st_size}
        checked = check(art.file, out / "model.onnx", art.meta, c.seed)
        summary.update(checked.summary())
        gates = checked.failures(c.max_abs_diff, "FP16 model", "FP32 model")
        return PassResult("onnx", "model.onnx", meta, summary, gate_failures=gates)


def check(fp32_path, fp16_path, meta: dict, seed: int):
    """The FP16 model against the FP32 one, both under ONNX Runtime, on the check input
    (:func:`calib.data.check_feed`); a :class:`convert.refcheck.Check`, skipped when ONNX Runtime
    cannot run the FP32 model (TensorRT plugin ops)."""
    from calib.data import check_feed
    from convert import refcheck
    from convert.runtime import OrtRunner

    return refcheck.check(fp32_path, lambda _names: OrtRunner(fp16_path), lambda sess: check_feed(sess, meta, seed))


def drop_duplicate_nodes(graph) -> None:
    """Removes nodes that repeat an earlier node byte for byte, and repeated value_info entries."""
    seen: set[bytes] = set()
    nodes = []
    for n in graph.node:
        key = n.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            nodes.append(n)
    infos, names = [], set()
    for v in graph.value_info:
        if v.name not in names:
            names.add(v.name)
            infos.append(v)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    graph.value_info.extend(infos)


def toposort(graph) -> None:
    """Reorders ``graph.node`` in place into a topological order, keeping the original order where it can.

    Nodes holding subgraphs (If, Loop, Scan) depend on every outer value their subgraphs read.

    Raises:
        PassError: The graph has a cycle.
    """
    nodes = list(graph.node)
    producer = {name: i for i, n in enumerate(nodes) for name in n.output if name}
    consumers: list[list[int]] = [[] for _ in nodes]
    missing = [0] * len(nodes)
    for i, n in enumerate(nodes):
        deps = {producer[name] for name in _reads(n) if name in producer and producer[name] != i}
        missing[i] = len(deps)
        for d in deps:
            consumers[d].append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers[i]:
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise PassError("the converted graph has a cycle.", hint="report the model; the FP16 converter broke it.")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _reads(node) -> set[str]:
    """Names a node reads: its inputs and, recursively, those of its subgraphs' nodes."""
    names = {x for x in node.input if x}
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for sub in g.node:
                names |= _reads(sub)
    return names
