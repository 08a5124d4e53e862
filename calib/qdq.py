"""Q/DQ placement and insertion: a float ONNX model and calibrated ranges to an explicitly quantized one.

The library behind the ``quantize`` pass (and the candidates of ``method: auto``).

One Q/DQ ONNX, calibrated once, runs on ONNX Runtime, OpenVINO and TensorRT (which, from
version 10.1, deprecates the implicit quantization of calibration caches). The graph is
written by ONNX Runtime's QDQ quantizer (``quantize_static`` fed the table's ranges, so it never
calibrates itself), with the placement TensorRT recommends and fuses:

* Q/DQ on the inputs of the weighted ops only (``Conv``, ``ConvTranspose``, ``MatMul``,
  ``Gemm``): their activations per tensor, their weights per output channel. A convolution's
  output is not quantized, so convolution, activation (SiLU) and residual ``Add`` fuse into one
  INT8 kernel whose output is quantized by the next layer's Q.
* One Q/DQ pair per tensor, shared by all its consumers: a residual ``Add`` reads the same
  dequantized tensor as the convolution next to it (TensorRT fuses the add into that
  convolution), and a ``Concat`` gets one scale, at its output, which TensorRT propagates to
  every input.
* Biases stay float (TensorRT folds them; an INT32 bias tied to input x weight scales would
  force weight-scale adjustments).
* Activations are symmetric INT8 by default, what TensorRT requires; ``activation_type: uint8``
  gives asymmetric activations for ONNX Runtime CPU and OpenVINO.

``target: onnxruntime`` lays the nodes out as ONNX Runtime's CPU provider fuses them instead:
Q/DQ on the inputs *and outputs* of every op its quantizer has rules for (Conv, Sigmoid, Mul,
Add, Concat, MaxPool, Resize...), uint8 activations (its x86 kernels are u8 x s8; with int8
activations it fuses nothing). ORT then runs QLinearConv, QLinearSigmoid, QLinearMul,
QLinearAdd, QLinearConcat in NHWC, where the TensorRT layout leaves it DequantizeLinear + float
Conv, slower than FP32. A convolution's output is then quantized before its SiLU, so the lower
bound of such a tensor's range is raised to :data:`SILU_INPUT_FLOOR` (measured on yolov5n /
coco128: mAP50-95 drop 1.4 points without it, 0.3 with it). The convolutions reading the network
input stay float (:func:`input_nodes`: faster there than ORT's INT8 kernel). Kept-float nodes, sensitivity and
bias correction work as for TensorRT; name exclusions also keep non-weighted nodes float.

``target: openvino`` is TensorRT's placement with uint8 activations by default. OpenVINO fuses it
alike, and on CPUs without VNNI the IR keeps 8-bit weights behind uint8 activations, where signed
activations force 7-bit ones (:func:`convert.ovutil.seven_bit_weights`; yolo11n-pose on coco128's
person photos, INT8 vs FP32 on OpenVINO: recall 0.895 and keypoint error 1.53 % with int8
activations, 0.961 and 0.90 % with uint8).

Post-processing is never quantized: quantize the truncated network body and attach decoding
and NMS afterwards (the postprocess pass).

Accuracy techniques, each measured on YOLOv5n / coco128 (bench/int8_accuracy.py):

* Nodes kept in float by name, glob pattern or type; ``keep_head_float`` keeps the last
  convolutions before the outputs (the detection or pose head) in float, and a float node
  always reads the float tensor even where a quantized neighbour shares it.
* ``keep_float_sensitive``: a sensitivity analysis quantizes each activation tensor alone and
  keeps in float the consumers of the ones that change the outputs most (in YOLOv5n one tensor,
  the second layer's output with a range of ~115 for mostly tiny values, costs more than the
  next five together; its two 1x1 consumers are ~1% of the compute). Clear losers after a quarter of the
  images are not probed further (:func:`calib.measure.most_sensitive`).
* ``bias_correction``: per-channel mean shifts measured on the calibration images are removed.
  (Both measurements are :mod:`calib.measure`'s.)
* The ranges come from the table (``calibrate``): for SiLU networks MinMax keeps the rare large
  activations that carry detections, which entropy, percentile and MSE clipping lose.

:func:`convert.ovutil.openvino_fold_qdq` rewrites the Q/DQ pairs of such a model, once read by OpenVINO, into
the form OpenVINO's CPU plugin runs correctly (see there).
"""
from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from calib.measure import correct_biases, most_sensitive, qdq_source
from convert.base import PassConfig
from convert.errors import PassError

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


TARGETS = ("tensorrt", "onnxruntime", "openvino")
"""Placements (see the module docstring): the back-end whose fusions the Q/DQ nodes are laid out for."""


class QuantizeSettings(PassConfig):
    """How a model is quantized: the quantize pass's parameters, also those of auto's candidates."""

    target: Literal["tensorrt", "onnxruntime", "openvino"] = Field(
        "tensorrt", description="placement: tensorrt: Q/DQ on the inputs of the weighted ops only (TensorRT fuses "
        "convolution, activation and residual add behind them; also runs on OpenVINO); onnxruntime: Q/DQ on the "
        "inputs and outputs of every op ONNX Runtime's CPU provider runs in INT8 (Conv, Sigmoid, Mul, Add, "
        "Concat, MaxPool...), which it fuses into QLinearConv etc.; needs uint8 activations and a table of "
        "every tensor (calibrate's default); openvino: TensorRT's placement with uint8 activations by default "
        "(OpenVINO's CPU plugin fuses it alike, and keeps 8-bit weights behind uint8 activations on CPUs "
        "without VNNI, where signed ones get 7-bit weights: see convert.ovutil.seven_bit_weights)")
    activation_type: Literal["int8", "uint8"] = Field(
        "int8", description="int8: symmetric activations (TensorRT requires it); uint8: asymmetric activations "
        "(ONNX Runtime CPU, OpenVINO), finer steps for one-sided tensors such as SiLU outputs")
    per_channel: bool = Field(True, description="weights scaled per output channel (else per tensor)")
    op_types: list[str] = Field(list(WEIGHTED_OPS), description="node types whose inputs are quantized")
    exclude_nodes: list[str] = Field(default_factory=list, description="node names or glob patterns "
                                     "(e.g. '/model.24/*') kept in float")
    exclude_types: list[str] = Field(default_factory=list, description="node types kept in float")
    keep_head_float: bool = Field(False, description="keep the last weighted nodes before the graph outputs "
                                  "(the head convolutions) in float")
    keep_float_sensitive: int = Field(0, ge=0, description="also keep in float the consumers of the N activation "
                                      "tensors whose quantization alone changes the outputs most (measured on the "
                                      "calibration images kept in the table)")
    sensitivity_samples: int = Field(8, ge=1, description="calibration images used to measure sensitivity (all "
                                     "tensors on the first quarter, the close contenders on the rest too)")
    bias_correction: bool = Field(True, description="correct each quantized convolution's bias for the mean shift "
                                  "quantization causes, measured on the calibration images kept in the table")

    @model_validator(mode="before")
    @classmethod
    def _target_activations(cls, values):
        # ONNX Runtime's x86 kernels are u8 x s8: with int8 activations it fuses nothing and runs every
        # DequantizeLinear and float op (yolov5n: 3x slower than FP32), so uint8 is that target's default.
        if isinstance(values, dict) and values.get("target") == "onnxruntime":
            if values.get("activation_type", "uint8") != "uint8":
                raise ValueError("target onnxruntime needs activation_type uint8: ONNX Runtime's CPU kernels "
                                 "fuse u8 activations x s8 weights only, and int8 activations run unfused, slower "
                                 "than FP32 (set activation_type: uint8, or drop it)")
            values = {**values, "activation_type": "uint8"}
        if isinstance(values, dict) and values.get("target") == "openvino":
            values = {"activation_type": "uint8", **values}
        return values

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # The default target is left out of the dump (the cache key material) so that the keys of
        # every quantize stage and auto candidate made before targets existed stay as they were.
        data = handler(self)
        if isinstance(data, dict) and data.get("target") == "tensorrt":
            data.pop("target")
        return data


@dataclass
class Quantized:
    """What :func:`quantize_model` made.

    Attributes:
        model: The Q/DQ model (``onnx.ModelProto``).
        plan: Which weighted nodes were quantized and which kept float.
        sensitive: Tensors found most sensitive (kept float), with their error.
        corrected: Convolution -> mean absolute bias correction.
    """

    model: Any
    plan: NodePlan
    sensitive: dict[str, float]
    corrected: dict[str, float]


def quantize_model(model, ranges: dict[str, tuple[float, float]], c: QuantizeSettings,
                   batches: Callable[[], Iterable] | None,
                   where: str, ctx=None, method: str = "") -> Quantized:
    """Quantizes a float model with given ranges and settings: the work of the pass, reusable.

    Args:
        model: The float model (``onnx.ModelProto``); unnamed nodes get names in place.
        ranges: Calibrated range of (at least) every activation the quantized nodes read.
        c: The settings.
        batches: Returns a fresh iterator over the calibration input batches (for sensitivity and
            bias correction; called once per use, so images stream), or None if there are none
            (an imported table).
        where: Key path of the settings, for messages (``stages.quantize.with``).
        ctx: Run context, for progress bars.
        method: Calibration method of the ranges, for messages.

    Raises:
        PassError: A range is missing, the settings need calibration images that are not
            there, or they leave nothing to quantize.
    """
    plan = plan_nodes(model, c, where)
    if c.target == "onnxruntime":  # before anything reads the plan: the image is then never probed
        plan = plan.keep_float(input_nodes(model, plan.quantized))
        if not plan.quantized:
            raise PassError("target onnxruntime keeps the convolutions reading the network input in float, and "
                            "the model has no other node to quantize.", hint=f"use another {where}.target.")
    needed = activation_inputs(model, plan.quantized)
    missing = [t for t in needed if t not in ranges]
    if missing:
        raise PassError(f"the calibration table has no range for {len(missing)} tensor(s) the quantized nodes "
                        f"read (first: {missing[0]!r}).",
                        hint="calibrate this same model (the table's model digest must match), with op_types "
                        "covering the quantized nodes.")
    if c.target == "onnxruntime":
        missing = [t for t in activation_tensors(model, ort_nodes(model, plan, c)) if t not in ranges]
        if missing:
            raise PassError(f"target onnxruntime quantizes the outputs of the quantized ops too, and the calibration "
                            f"table has no range for {len(missing)} of them (first: {missing[0]!r}).",
                            hint="calibrate every tensor: drop op_types from the calibrate stage.")
    if (c.keep_float_sensitive or c.bias_correction) and batches is None:
        raise PassError("sensitivity analysis and bias correction need the calibration images, and this table "
                        f"has none (method {method}).",
                        hint=f"set {where}.bias_correction: false and keep_float_sensitive: 0 for an imported table.")
    sensitive: dict[str, float] = {}
    if c.keep_float_sensitive:
        probe = list(itertools.islice(batches(), c.sensitivity_samples))
        sensitive = most_sensitive(model, {t: ranges[t] for t in needed}, probe, c.keep_float_sensitive,
                                   c.activation_type, ctx)
        plan = plan.keep_float(consumers_of(model, plan.quantized, set(sensitive)))
        if not plan.quantized:  # ONNX Runtime reads an empty node list as "quantize everything"
            raise PassError(f"keep_float_sensitive: {c.keep_float_sensitive} leaves no node to quantize.",
                            hint=f"lower {where}.keep_float_sensitive.")
        needed = activation_inputs(model, plan.quantized)
    if c.target == "onnxruntime":
        nodes = ort_nodes(model, plan, c)
        needed = activation_tensors(model, nodes)
        ranges = clip_silu_inputs(model, ranges)
        qmodel = quantize_qdq(model, {t: ranges[t] for t in needed}, nodes, c.activation_type, c.per_channel,
                              None, quantize_outputs=True)
    else:
        qmodel = quantize_qdq(model, {t: ranges[t] for t in needed}, plan.quantized, c.activation_type,
                              c.per_channel, c.op_types)
    restore_float_inputs(qmodel, plan.kept_float)
    remove_dead_nodes(qmodel)
    if c.target == "onnxruntime":
        seven_bit_weights(qmodel)
    corrected = correct_biases(model, qmodel, batches(), ctx) if c.bias_correction else {}
    return Quantized(qmodel, plan, sensitive, corrected)


class NodePlan:
    """Which weighted nodes are quantized and which stay float.

    Attributes:
        quantized: Names of the nodes to quantize.
        kept_float: Names of weighted nodes left in float (excluded or head).
    """

    def __init__(self, quantized: list[str], kept_float: list[str]):
        self.quantized = quantized
        self.kept_float = kept_float

    def keep_float(self, names: set[str]) -> NodePlan:
        """The plan with ``names`` moved from quantized to float."""
        return NodePlan([n for n in self.quantized if n not in names],
                        self.kept_float + [n for n in self.quantized if n in names])


def plan_nodes(model, c: QuantizeSettings, where: str) -> NodePlan:
    """Applies ``op_types``, the exclusions and ``keep_head_float`` to the model's nodes.

    Unnamed nodes are named ``<op_type>_<index>`` in place (ONNX Runtime's quantizer selects
    nodes by name).

    Raises:
        PassError: An exclusion matches no node (a typo would silently quantize everything).
    """
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    nodes = list(model.graph.node)
    types_present = {n.op_type for n in nodes}
    for t in c.exclude_types:
        if t not in types_present:
            raise PassError(f"{where}.exclude_types: the model has no {t!r} node.",
                            hint=f"types present: {', '.join(sorted(types_present))}.")
    for pattern in c.exclude_nodes:
        if not any(fnmatch.fnmatchcase(n.name, pattern) for n in nodes):
            raise PassError(f"{where}.exclude_nodes: {pattern!r} matches no node name.",
                            hint="node names are those of the ONNX graph (open it in Netron).")
    weighted = [n for n in nodes if n.op_type in c.op_types]
    head = set(head_nodes(model, c.op_types)) if c.keep_head_float else set()
    quantized, kept = [], []
    for n in weighted:
        excluded = (n.op_type in c.exclude_types or n.name in head
                    or any(fnmatch.fnmatchcase(n.name, p) for p in c.exclude_nodes))
        (kept if excluded else quantized).append(n.name)
    if not quantized:
        raise PassError(f"no node left to quantize ({len(weighted)} of types {', '.join(c.op_types)}, all excluded).",
                        hint=f"check {where}.op_types and the exclusions.")
    return NodePlan(quantized, kept)


def head_nodes(model, op_types) -> list[str]:
    """The last weighted nodes: those of ``op_types`` reached walking back from the graph outputs
    through other nodes only (the convolutions of a detection head)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in op_types:
            found.append(node.name)
        else:
            stack.extend(node.input)
    return sorted(found)


def input_nodes(model, nodes: list[str]) -> set[str]:
    """The nodes among ``nodes`` that read a graph input (the stem convolution, reading the image).

    Target ``onnxruntime`` keeps them float: ONNX Runtime's QLinearConv over a 3-channel input is
    slower than its float convolution (yolov5n's 6x6 stride-2 stem on an AVX2 CPU: 7.0 ms
    against 4.1 ms with 2 threads, 14.0 against 7.3 ms with one), and a u8 image would need
    7-bit weights there (:func:`seven_bit_weights`).
    """
    return consumers_of(model, nodes, {i.name for i in model.graph.input})


def consumers_of(model, nodes: list[str], tensors: set[str]) -> set[str]:
    """The nodes among ``nodes`` that read any of ``tensors``."""
    wanted = set(nodes)
    return {n.name for n in model.graph.node if n.name in wanted and tensors.intersection(n.input)}


def activation_inputs(model, node_names: list[str]) -> list[str]:
    """The non-constant float inputs of the named nodes (what gets an activation Q/DQ)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(node_names)
    out: list[str] = []
    for n in model.graph.node:
        if n.name not in wanted:
            continue
        # Conv/ConvTranspose: X (W and B are constants); MatMul: A, B; Gemm: A, B (C is a bias).
        reads = n.input[:2] if n.op_type in ("MatMul", "Gemm") else n.input[:1]
        out += [t for t in reads if t and t not in constants and t not in out]
    return out


def ort_nodes(model, plan: NodePlan, c: QuantizeSettings) -> list[str]:
    """The nodes quantized for target ``onnxruntime``: every node but the weighted ones kept float
    and those ``exclude_nodes`` / ``exclude_types`` name.

    Only op types ONNX Runtime's QDQ quantizer has rules for are listed (shape arithmetic and
    the like stays float).
    """
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    known = set(QDQRegistry) | set(QLinearOpsRegistry)  # what quantize_static quantizes by default
    float_nodes, weighted = set(plan.kept_float), set(plan.quantized)
    return [n.name for n in model.graph.node
            if n.name not in float_nodes and (n.name in weighted or (
                n.op_type in known and n.op_type not in WEIGHTED_OPS and n.op_type not in c.exclude_types
                and not any(fnmatch.fnmatchcase(n.name, p) for p in c.exclude_nodes)))]


SILU_INPUT_FLOOR = -8.0
"""Lower bound of the quantized range of a tensor only SiLU reads (target onnxruntime).

ONNX Runtime's QLinearConv quantizes a convolution's output, which in SiLU networks is the
activation's input. Its MinMax range is mostly negative (yolov5n: ``[-131.6, 34.6]`` where the
SiLU output spans ``[-0.28, 34.6]``), yet SiLU maps everything below -8 to within 0.003 of zero:
clipping there halves to quarters the quantization step of the values that matter.
"""


def clip_silu_inputs(model, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` with the lower bound of every SiLU-only input raised to :data:`SILU_INPUT_FLOOR`.

    A SiLU-only input is a tensor whose readers are exactly one ``Sigmoid`` of it and one ``Mul``
    of it by that sigmoid (how exporters write SiLU), and that is not a graph output.
    """
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for t in set(n.input):
            readers.setdefault(t, []).append(n)
    outputs = {o.name for o in model.graph.output}
    out = dict(ranges)
    for t, (lo, hi) in ranges.items():
        nodes = readers.get(t, [])
        sig = [n for n in nodes if n.op_type == "Sigmoid"]
        if t in outputs or len(nodes) != 2 or len(sig) != 1:
            continue
        mul = next((n for n in nodes if n.op_type == "Mul"), None)
        if mul is not None and sorted(mul.input) == sorted([t, sig[0].output[0]]) and lo < SILU_INPUT_FLOOR:
            out[t] = (SILU_INPUT_FLOOR, max(hi, 0.0))
    return out


def activation_tensors(model, node_names: list[str]) -> list[str]:
    """The non-constant inputs and outputs of the named nodes (what target onnxruntime may quantize)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(node_names)
    out: dict[str, None] = {}
    for n in model.graph.node:
        if n.name in wanted and n.op_type != "Constant":
            reads = n.input[:2] if n.op_type in ("MatMul", "Gemm") else n.input[:1] if n.op_type in WEIGHTED_OPS \
                else n.input
            out.update((t, None) for t in [*reads, *n.output] if t and t not in constants)
    return list(out)


def remove_dead_nodes(model) -> None:
    """Removes, in place, nodes none of whose outputs is read or is a graph output (Q/DQ pairs left
    behind when :func:`restore_float_inputs` moved their only consumers to the float tensor)."""
    while True:
        read = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = [i for i, n in enumerate(model.graph.node) if not read.intersection(n.output)]
        if not dead:
            return
        for i in reversed(dead):
            del model.graph.node[i]


def restore_float_inputs(qmodel, nodes: list[str]) -> None:
    """Makes the named (float) nodes read their inputs before quantization, in place.

    ONNX Runtime's quantizer puts one Q/DQ pair on a tensor and points every consumer at the
    dequantized copy; a node kept in float that shares its input with a quantized one (a head
    convolution reading the same features as the next downsampling convolution) would still
    see quantized values. This points such inputs back at the float tensor; the Q/DQ pair
    stays for the quantized consumers.
    """
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    wanted = set(nodes)
    for node in qmodel.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            q = qdq_source(producer, name)
            if q is not None:
                node.input[i] = q.input[0]


def quantize_qdq(model, ranges: dict[str, tuple[float, float]], nodes: list[str], activation_type: str,
                 per_channel: bool, op_types: list[str] | None, quantize_outputs: bool = False):
    """Runs ONNX Runtime's QDQ quantizer with the given ranges (no calibration of its own).

    Args:
        model: The float model (``onnx.ModelProto``).
        ranges: Range of every activation tensor to quantize.
        nodes: Names of the nodes to quantize.
        activation_type: ``int8`` (symmetric) or ``uint8`` (asymmetric).
        per_channel: Per-output-channel weight scales.
        op_types: Op types quantized (None: every type ONNX Runtime has QDQ rules for).
        quantize_outputs: Also quantize the outputs of ``op_types`` (ONNX Runtime's own placement);
            else they are left float (TensorRT's).

    Returns:
        The Q/DQ model (``onnx.ModelProto``).
    """
    import logging
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import save_tensors_data

    from calib.calibrators import to_tensors_data

    symmetric = activation_type == "int8"
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)  # quantize_static warns that the model was not "pre-processed"; it need not be
    try:
        with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
            src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
            onnx.save(model, str(src))
            save_tensors_data(to_tensors_data(ranges), cache)
            quantize_static(
                str(src), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=None if op_types is None else list(op_types), per_channel=per_channel,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=list(nodes), calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": [] if quantize_outputs else list(op_types),
                               "QuantizeBias": False})
            return onnx.load(str(dst))
    finally:
        log.setLevel(level)


def seven_bit_weights(qmodel) -> list[str]:
    """Requantizes to 7 bits (``[-64, 63]``, scale doubled) the convolution weights ONNX Runtime could overflow.

    ONNX Runtime's fused u8 x s8 convolutions (target ``onnxruntime``) add pairs of products in
    saturating int16 on x86 CPUs without VNNI (AVX2's ``vpmaddubsw``), as OpenVINO's do (see
    :func:`convert.ovutil.seven_bit_weights`, the same rule on an IR): ``2 * 255 * 127`` overflows,
    ``2 * 255 * 63`` does not. It bites where activations often sit high in u8: the network input
    (an image) and inputs whose zero point is ``convert.ovutil.CENTRED_ZERO_POINT`` or more. Those
    convolutions get 7-bit weights (ONNX Runtime's ``reduce_range``, for the few layers that need
    it); behind SiLU outputs, whose zero point is small, weights keep 8 bits. Measured on yolov5n /
    coco128 on an AVX2 CPU: mAP50-95 drop 3.7 points with 8-bit weights everywhere.

    Args:
        qmodel: A Q/DQ model (``onnx.ModelProto``), weights as int8 initializers, modified in place.

    Returns:
        The convolutions whose weights were requantized.
    """
    import numpy as np
    from onnx import numpy_helper

    from convert.ovutil import CENTRED_ZERO_POINT  # one threshold for both runtimes

    inits = {i.name: i for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    inputs = {i.name for i in qmodel.graph.input}
    array = lambda name: numpy_helper.to_array(inits[name]) if name in inits else None
    done = []
    for node in qmodel.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        x, w = producer.get(node.input[0]), producer.get(node.input[1])
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        zp = array(x.input[2]) if len(x.input) > 2 else None
        q = producer.get(x.input[0])
        centred = (zp is None or zp.dtype != np.uint8 or int(zp.max()) >= CENTRED_ZERO_POINT
                   or (q is not None and q.input[0] in inputs))
        wq, scale = array(w.input[0]), array(w.input[1])
        wzp = array(w.input[2]) if len(w.input) > 2 else None
        if (not centred or wq is None or wq.dtype != np.int8 or scale is None
                or (wzp is not None and np.any(wzp != 0))):
            continue
        if wq.min() >= -64 and wq.max() <= 63:
            continue
        w7 = np.clip(np.round(wq.astype(np.int16) / 2), -64, 63).astype(np.int8)
        inits[w.input[0]].CopyFrom(numpy_helper.from_array(w7, w.input[0]))
        inits[w.input[1]].CopyFrom(numpy_helper.from_array((scale * 2).astype(scale.dtype), w.input[1]))
        done.append(node.name)
    return done
