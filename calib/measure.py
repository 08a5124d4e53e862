"""Measurements on the calibration images that quantization acts on: how sensitive each activation
tensor is (:func:`activation_sensitivity`), and how far each quantized convolution shifts its
output's mean (:func:`correct_biases`).

Both are exact restatements of the direct computations (the same values up to float rounding),
laid out so that ONNX Runtime does little more work than the answer needs (see
``bench/quantize_cost.py``; yolov5n, 49 probed tensors, 8 images: the probes cost 18 to 24 runs of
the whole model per image instead of 49, and bias correction one run of the quantized model per
image instead of that plus every convolution again in float):

* Sensitivity: quantizing one tensor changes only what lies downstream of it. The float model is
  run once per image, keeping the tensors at a few cuts; each probe then runs only the sub-graph
  downstream of its cut, from those tensors, and reduces its outputs' squared change in the graph.
  Probed tensors are grouped (in graph order) so that one ONNX Runtime session serves a group: a
  tensor at the group's cut is fed quantized, one the sub-graph computes gets its Q/DQ pair behind
  a gate (``Where``) that a scalar input opens. The grouping minimises an estimate of the work: the
  compute of each probe's sub-graph, plus one session per group.
* Bias correction: a convolution is linear, so the mean of its output over all positions is its
  weights applied to the sums of its input over the positions each kernel tap reads, plus the
  bias. Those tap sums (tiny: channels x kernel taps) are reduced inside the quantized model for
  the input each convolution really receives, before and after its Q/DQ pair, and the shift is
  computed from them with the quantized and the float weights, instead of running every
  convolution a second time in float.

``tests/calib/test_measure.py`` checks both against the direct computations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

SESSION_COST = 0.5
"""Estimated cost of creating one ONNX Runtime session, in runs of the whole model (measured on
yolov5n: about 30 ms to create, 40 to 80 ms to run); only the grouping of probes depends on it."""

SCREEN_FACTOR = 4.0
""":func:`most_sensitive`: a tensor whose first-round error is below the k-th largest by more than
this factor is not probed again (on yolov5n, the ratio of two tensors' errors varies by about 25 %
between pairs of images, and the errors themselves by up to 4x)."""


def qparams(lo: float, hi: float, activation_type: str):
    """Scale and zero point of a range, as ONNX Runtime's quantizer computes them."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if activation_type == "int8":
        amax = max(-lo, hi)
        return np.array(amax / 127 if amax else 1.0, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return np.array(scale, np.float32), np.array(int(np.clip(round(-lo / scale), 0, 255)), np.uint8)


def tensor_shapes(model, input_shape: tuple[int, ...] | None = None) -> dict[str, tuple[list[int | None], int]]:
    """Tensor name -> (shape, ONNX element type) by ONNX shape inference; unknown dimensions are None.

    Args:
        model: The model (``onnx.ModelProto``; not modified).
        input_shape: Shape of the first graph input to infer with (symbolic dimensions such as a
            dynamic batch are otherwise unknown downstream).
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if input_shape is not None:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for d, v in zip(dims, input_shape):
            d.Clear()
            d.dim_value = int(v)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # an op shape inference does not know: fall back to what the model declares
        pass
    out = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        out[vi.name] = (dims, t.elem_type)
    for init in m.graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _node_costs(model, shapes) -> np.ndarray:
    """Estimated cost of each node: multiply-adds of convolutions and matrix products, plus the
    elements it writes (1 per node where shapes are unknown)."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    size = lambda t: int(np.prod(shapes[t][0])) if t in shapes and shapes[t][0] and None not in shapes[t][0] else None
    costs = []
    for n in model.graph.node:
        out = size(n.output[0]) if n.output else None
        if out is None:
            costs.append(1.0)
            continue
        macs = 0
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in inits:
            macs = out * int(np.prod(inits[n.input[1]][1:]))
        elif n.op_type in ("MatMul", "Gemm") and n.input[0] in shapes and shapes[n.input[0]][0]:
            macs = out * (shapes[n.input[0]][0][-1] or 1)
        costs.append(float(macs + out))
    return np.array(costs)


def _downstream(model, tensor: str, readers: dict[str, list[int]]) -> np.ndarray:
    """Mask of the nodes whose value depends on ``tensor``."""
    mask = np.zeros(len(model.graph.node), bool)
    stack = [tensor]
    while stack:
        for i in readers.get(stack.pop(), []):
            if not mask[i]:
                mask[i] = True
                stack.extend(o for o in model.graph.node[i].output if o)
    return mask


def _groups(masks: list[np.ndarray], costs: np.ndarray, samples: int) -> list[list[int]]:
    """Splits the probes (in graph order) into runs of consecutive ones sharing a session.

    A group of ``k`` probes costs ``samples * k`` runs of the union of their sub-graphs plus one
    session; dynamic programming over the split points minimises the sum.
    """
    n, total = len(masks), float(costs.sum())
    best, cut = [0.0] * (n + 1), [0] * (n + 1)
    for j in range(1, n + 1):
        union = np.zeros_like(masks[0])
        best[j] = np.inf
        for i in range(j, 0, -1):  # group = probes i-1 .. j-1
            union |= masks[i - 1]
            c = best[i - 1] + samples * (j - i + 1) * float(costs[union].sum()) + SESSION_COST * total
            if c < best[j]:
                best[j], cut[j] = c, i - 1
    groups, j = [], n
    while j:
        groups.append(list(range(cut[j], j)))
        j = cut[j]
    return groups[::-1]


class _Probe:
    """One group's sub-graph: the nodes downstream of its tensors, from the float tensors at its cut.

    A probed tensor at the cut is an input: its probe feeds it quantized (by ``qdq``, ONNX
    Runtime's own kernels). One the sub-graph computes itself (it lies downstream of another of
    the group) gets a Q/DQ pair behind a gate, ``Where``, that the input ``probe_which`` opens.
    """

    def __init__(self, model, tensors: list[str], mask: np.ndarray, shapes: dict, activation_type: str, qdq):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from convert.onnxutil import ort_session

        graph = model.graph
        nodes = [n for n, keep in zip(graph.node, mask) if keep]
        inits = {i.name for i in graph.initializer}
        made = {o for n in nodes for o in n.output}
        constant_nodes = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
        needed = list(dict.fromkeys(t for n in nodes for t in n.input if t and t not in made))
        extra = [constant_nodes[t] for t in needed if t in constant_nodes]
        self.cut = [t for t in needed if t not in inits and t not in constant_nodes]
        self.outputs = [o.name for o in graph.output if o.name in made]
        self.tensors, self.qdq = tensors, qdq
        self.inner = [t for t in tensors if t in made]
        zp_type = TensorProto.INT8 if activation_type == "int8" else TensorProto.UINT8
        gated = {t: f"{t}__probe" for t in self.inner}
        body = []
        for n in nodes:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            for k, name in enumerate(c.input):
                if name in gated:
                    c.input[k] = gated[name]
            body.append(c)
        inputs = [helper.make_tensor_value_info(t, shapes.get(t, (None, TensorProto.FLOAT))[1] or TensorProto.FLOAT,
                                                None) for t in self.cut]
        gates, new_inits = [], []
        if self.inner:
            inputs.append(helper.make_tensor_value_info("probe_which", TensorProto.INT64, []))
        for i, t in enumerate(self.inner):
            s, z = f"{t}__probe_scale", f"{t}__probe_zp"
            new_inits.append(numpy_helper.from_array(np.array(i, np.int64), f"probe_gate_{i}"))
            inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, []),
                       helper.make_tensor_value_info(z, zp_type, [])]
            gates += [helper.make_node("Equal", ["probe_which", f"probe_gate_{i}"], [f"{t}__probe_open"]),
                      helper.make_node("QuantizeLinear", [t, s, z], [f"{t}__probe_q"]),
                      helper.make_node("DequantizeLinear", [f"{t}__probe_q", s, z], [f"{t}__probe_dq"]),
                      helper.make_node("Where", [f"{t}__probe_open", f"{t}__probe_dq", t], [gated[t]])]
        # The squared change of the outputs against the float outputs (fed in) is reduced in the
        # graph: over rows in float32 (sums of a few dozen terms), then in float64.
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axes = {"keepdims": 0} if opset >= 18 else {"keepdims": 0, "axes": [-1]}
        if opset >= 18:
            new_inits.append(numpy_helper.from_array(np.array([-1], np.int64), "probe_last_axis"))
        errors = []
        for o in self.outputs:
            inputs.append(helper.make_tensor_value_info(f"{o}__probe_ref", TensorProto.FLOAT, None))
            errors += [helper.make_node("Sub", [o, f"{o}__probe_ref"], [f"{o}__probe_diff"]),
                       helper.make_node("ReduceSumSquare", [f"{o}__probe_diff"] + (["probe_last_axis"] if opset >= 18
                                                                                   else []), [f"{o}__probe_rows"],
                                        **axes),
                       helper.make_node("Cast", [f"{o}__probe_rows"], [f"{o}__probe_64"], to=TensorProto.DOUBLE),
                       helper.make_node("ReduceSum", [f"{o}__probe_64"], [f"{o}__probe_err"], keepdims=0)]
        errors.append(helper.make_node("Sum", [f"{o}__probe_err" for o in self.outputs], ["probe_error"]))
        sub = helper.make_graph(
            [*extra, *gates, *body, *errors], "probe", inputs,
            [helper.make_tensor_value_info("probe_error", TensorProto.DOUBLE, [])],
            [i for i in graph.initializer if i.name in set(needed)] + new_inits)
        probe = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        self.session = ort_session(probe.SerializeToString())

    def errors(self, cut_values: dict[str, np.ndarray], params: dict[str, tuple[np.ndarray, np.ndarray]]
               ) -> list[float]:
        """Summed squared output change of each tensor's probe on one batch.

        Args:
            cut_values: The float model's tensors on this batch: at least its outputs and those of the cut.
            params: Tensor -> (scale, zero point).
        """
        feed = {t: cut_values[t] for t in self.cut}
        feed.update({f"{o}__probe_ref": cut_values[o] for o in self.outputs})
        for t in self.inner:
            feed[f"{t}__probe_scale"], feed[f"{t}__probe_zp"] = params[t]
        out = []
        for t in self.tensors:
            if t in self.inner:
                feed["probe_which"] = np.array(self.inner.index(t), np.int64)
            else:
                feed[t] = self.qdq(cut_values[t], *params[t])
                if self.inner:
                    feed["probe_which"] = np.array(-1, np.int64)  # every gate closed
            out.append(float(self.session.run(["probe_error"], feed)[0]))
            if t not in self.inner:
                feed[t] = cut_values[t]
        return out


def _qdq_function(activation_type: str):
    """``(x, scale, zero_point) -> DequantizeLinear(QuantizeLinear(x))``, run by ONNX Runtime."""
    from onnx import TensorProto, helper

    from convert.onnxutil import ort_session

    zp_type = TensorProto.INT8 if activation_type == "int8" else TensorProto.UINT8
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("z", zp_type, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    session = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return lambda x, scale, zero_point: session.run(["y"], {"x": x, "s": scale, "z": zero_point})[0]


def activation_sensitivity(model, ranges: dict[str, tuple[float, float]], batches: list, activation_type: str,
                           ctx=None) -> dict[str, float]:
    """How much quantizing each activation tensor alone changes the model's outputs.

    For each tensor, a Q/DQ pair with its calibrated range is put between it and every node
    reading it, in the float model, and the outputs are compared with the float model's over the
    batches: the error is the summed squared difference of every output relative to the outputs'
    summed square. Weights stay float: at 8 bits per channel their error is small next to that of
    per-tensor activations. (Computed on sub-graphs, see the module docstring; the result is that
    of running each probe model whole.)

    Args:
        model: The float model (``onnx.ModelProto``).
        ranges: Tensor -> calibrated (min, max), for the tensors to probe.
        batches: Input batches.
        activation_type: ``int8`` (symmetric) or ``uint8`` (asymmetric), as the pass quantizes.
        ctx: Run context, for a progress bar.

    Returns:
        Tensor -> relative squared error of the outputs.
    """
    diff, energy = _sensitivity_sums(model, ranges, batches, activation_type, ctx)
    return {t: d / max(energy, 1e-30) for t, d in diff.items()}


def most_sensitive(model, ranges: dict[str, tuple[float, float]], batches: list, k: int, activation_type: str,
                   ctx=None) -> dict[str, float]:
    """The ``k`` tensors of :func:`activation_sensitivity`'s measure that change the outputs most.

    Measured in two rounds, to spend probes only where the choice is close: every tensor is probed
    on the first quarter of the batches (at least one); a tensor whose error there is below the
    ``k``-th largest by more than :data:`SCREEN_FACTOR` is out. If more than ``k`` tensors are left,
    those alone are probed on the other batches too and ranked by their error over all of them; if
    only ``k`` are left, the choice is made (yolov5n, k = 1: the second layer's output scores 16 to 25
    times the next tensor on each pair of the 8 images, 20 times on all 8, and the second round is
    skipped: a quarter of the probes).

    Args:
        model, ranges, batches, activation_type, ctx: As for :func:`activation_sensitivity`.
        k: How many tensors to choose (at least 1).

    Returns:
        The chosen tensors (most sensitive first) -> relative squared error over the batches
        they were measured on.
    """
    screen = -(-len(batches) // 4)  # a quarter, rounded up
    diff, energy = _sensitivity_sums(model, ranges, batches[:screen], activation_type, ctx)
    ranked = sorted(diff, key=lambda t: -diff[t])
    if len(ranked) > k and batches[screen:]:
        contenders = [t for t in ranked if diff[t] >= diff[ranked[k - 1]] / SCREEN_FACTOR]
        if len(contenders) > k:
            more, more_energy = _sensitivity_sums(model, {t: ranges[t] for t in contenders}, batches[screen:],
                                                  activation_type, ctx)
            diff, energy = {t: diff[t] + more[t] for t in contenders}, energy + more_energy
            ranked = sorted(diff, key=lambda t: -diff[t])
    return {t: diff[t] / max(energy, 1e-30) for t in ranked[:k]}


def _sensitivity_sums(model, ranges: dict[str, tuple[float, float]], batches: list, activation_type: str,
                      ctx=None) -> tuple[dict[str, float], float]:
    """Each tensor's summed squared output change over the batches, and the outputs' summed square."""
    import onnx
    from onnx import helper

    from convert.onnxutil import ort_session

    graph = model.graph
    position = {o: i for i, n in enumerate(graph.node) for o in n.output}
    tensors = sorted(ranges, key=lambda t: position.get(t, -1))
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in dict.fromkeys(n.input):
            readers.setdefault(t, []).append(i)
    tensors = [t for t in tensors if readers.get(t)]  # a tensor nothing reads changes nothing
    if not tensors or not batches:
        return dict.fromkeys(ranges, 0.0), 0.0
    shapes = tensor_shapes(model, batches[0].shape)
    masks = [_downstream(model, t, readers) for t in tensors]
    groups = _groups(masks, _node_costs(model, shapes), len(batches))
    probes, qdq = [], _qdq_function(activation_type)
    for g in (ctx.bar(groups, desc="sensitivity: sessions") if ctx else groups):
        union = np.logical_or.reduce([masks[i] for i in g])
        probes.append(_Probe(model, [tensors[i] for i in g], union, shapes, activation_type, qdq))
    outputs = [o.name for o in graph.output]
    cuts = list(dict.fromkeys(t for p in probes for t in p.cut if t not in {i.name for i in graph.input}))
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(model)
    ref_model.graph.output.extend(helper.make_tensor_value_info(t, shapes.get(t, (None, 1))[1] or 1, None)
                                  for t in cuts if t not in outputs)
    reference = ort_session(ref_model.SerializeToString())
    input_name = graph.input[0].name
    fetch = outputs + [t for t in cuts if t not in outputs]
    params = {t: qparams(*ranges[t], activation_type) for t in tensors}
    energy, diff = 0.0, dict.fromkeys(tensors, 0.0)
    for x in (ctx.bar(batches, desc="sensitivity") if ctx else batches):
        values = dict(zip(fetch, reference.run(fetch, {input_name: x})))
        values[input_name] = x
        energy += sum(float(np.sum(np.square(values[o], dtype=np.float64))) for o in outputs)
        for p in probes:
            for t, e in zip(p.tensors, p.errors(values, params)):
                diff[t] += e
    return {t: diff.get(t, 0.0) for t in ranges}, energy


def _tap_matrix(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    """[kernel, size]: entry (k, i) is 1 where kernel tap k reads input position i for some output position."""
    m = np.zeros((kernel, size), np.float32)
    for k in range(kernel):
        pos = np.arange(out_size) * stride - pad + k * dilation
        m[k, pos[(pos >= 0) & (pos < size)]] = 1.0
    return m


def qdq_source(producer: dict, tensor: str):
    """The QuantizeLinear node of a Q -> DQ pair whose DQ output is ``tensor``, else None."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q if q is not None and q.op_type == "QuantizeLinear" else None


def _weights(name: str, producer: dict, inits: dict) -> np.ndarray | None:
    """A convolution's weights as it computes with them (float64): an initializer, or the
    dequantized initializer behind a DequantizeLinear; None if neither."""
    from onnx import helper, numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float64)
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or any(i and i not in inits for i in dq.input):
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if np.ndim(scale):
        shape[axis] = -1
    # DequantizeLinear computes (q - zero_point) * scale in float32
    return ((q - np.reshape(zp, shape)).astype(np.float32) * np.reshape(scale, shape)).astype(np.float64)


def correct_biases(float_model, qmodel, batches: Iterable, ctx=None) -> dict[str, float]:
    """Empirical bias correction of the quantized convolutions of a Q/DQ model, in place.

    Quantizing a convolution's weights and input shifts the mean of its output per channel
    (rounding and clipping are not zero-mean on real data), and the shift travels down the
    network. For every quantized convolution this measures, on the calibration images and
    inside the quantized model, the mean output per channel against the same convolution in
    float (float weights, the input before its Q/DQ) and subtracts the difference from the
    bias. Each convolution is corrected for the shift it adds itself, given the inputs it
    really receives, so corrections do not count an upstream shift twice (correcting every
    layer against the float model's means instead overshoots and diverges). Convolutions
    without a bias are left as they are. (The means come from tap sums, see the module
    docstring.)

    Args:
        float_model: The float model the Q/DQ model was made from (``onnx.ModelProto``).
        qmodel: The Q/DQ model with float biases; its bias initializers are updated.
        batches: Input batches (float32 arrays) of the calibration images.
        ctx: Run context, for a progress bar.

    Returns:
        Convolution name -> mean absolute correction applied.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convert.errors import PassError
    from convert.onnxutil import ort_session

    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_weights = {n.name: n.input[1] for n in float_model.graph.node if n.op_type == "Conv"}
    inits = {i.name: i for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    candidates = []
    for node in qmodel.graph.node:
        q = qdq_source(producer, node.input[0]) if node.op_type == "Conv" else None
        if q is None or len(node.input) < 3 or node.input[2] not in inits or node.name not in float_weights:
            continue
        wq = _weights(node.input[1], producer, inits)
        if wq is not None and wq.ndim == 4:
            candidates.append((node, q.input[0], wq))
    if not candidates:
        return {}
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return {}
    shapes = tensor_shapes(qmodel, first.shape)

    probe = onnx.ModelProto()
    probe.CopyFrom(qmodel)
    del probe.graph.output[:]
    sums: dict[tuple, str] = {}  # (tensor, geometry) -> output with its tap sums

    def tap_sums(tensor: str, geometry: tuple) -> str:
        if (tensor, geometry) in sums:
            return sums[tensor, geometry]
        i = len(sums)
        (h, w), (oh, ow), (kh, kw), strides, pads, dilations = geometry
        rows, cols = f"bias_correction_rows_{i}", f"bias_correction_cols_{i}"
        probe.graph.initializer.extend([
            numpy_helper.from_array(_tap_matrix(h, oh, kh, strides[0], pads[0], dilations[0]), rows),
            numpy_helper.from_array(_tap_matrix(w, ow, kw, strides[1], pads[1], dilations[1]).T.copy(), cols)])
        out = f"bias_correction_taps_{i}"
        # [kh, H] @ [N, C, H, W] -> [N, C, kh, W] (a few rows: ONNX Runtime's matrix kernels run wide
        # rows far faster than a product with a few columns); that @ [W, kw] -> [N, C, kh, kw]; summed over N
        probe.graph.node.extend([
            helper.make_node("MatMul", [rows, tensor], [f"{out}_rows"]),
            helper.make_node("MatMul", [f"{out}_rows", cols], [f"{out}_taps"]),
            helper.make_node("ReduceSum", [f"{out}_taps", "bias_correction_axis"], [out], keepdims=0)])
        probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        sums[tensor, geometry] = out
        return out

    probe.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "bias_correction_axis"))
    targets = []
    for node, source, wq in candidates:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        (x_shape, _), (y_shape, _) = shapes.get(node.input[0], (None, 0)), shapes.get(node.output[0], (None, 0))
        if (not x_shape or not y_shape or len(x_shape) != 4 or None in x_shape[2:] or None in y_shape[2:]
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")):
            raise PassError(f"bias correction needs the spatial shapes and explicit pads of {node.name!r}, and ONNX "
                            "shape inference does not give them.", hint="set bias_correction: false for this model.")
        kh, kw = wq.shape[2:]
        pads = attrs.get("pads", [0, 0, 0, 0])
        geometry = (tuple(x_shape[2:]), tuple(y_shape[2:]), (kh, kw), tuple(attrs.get("strides", [1, 1])),
                    (pads[0], pads[1]), tuple(attrs.get("dilations", [1, 1])))
        wf = numpy_helper.to_array(float_inits[float_weights[node.name]]).astype(np.float64)
        targets.append((node, wq, wf, attrs.get("group", 1), tap_sums(source, geometry),
                        tap_sums(node.input[0], geometry), int(np.prod(y_shape[2:]))))
    session = ort_session(probe.SerializeToString())
    input_name = session.get_inputs()[0].name
    names = list(sums.values())
    totals: dict[str, np.ndarray] = {}
    count = 0
    rest = itertools.chain([first], batches)
    for x in (ctx.bar(rest, desc="bias correction") if ctx else rest):
        for name, v in zip(names, session.run(names, {input_name: x})):
            totals[name] = totals.get(name, 0.0) + v.astype(np.float64)
        count += len(x)
    corrected = {}
    for node, wq, wf, group, float_taps, quant_taps, positions in targets:
        shift = (_conv_of_taps(wq, totals[quant_taps], group) - _conv_of_taps(wf, totals[float_taps], group)) \
            / (count * positions)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), node.input[2]))
        corrected[node.name] = float(np.abs(shift).mean())
    return corrected


def _conv_of_taps(weights: np.ndarray, taps: np.ndarray, group: int) -> np.ndarray:
    """Per output channel, the weights [out, in/group, kh, kw] applied to input tap sums [in, kh, kw]."""
    out = weights.shape[0]
    w = weights.reshape(group, out // group, -1)
    t = taps.reshape(group, weights.shape[1], *taps.shape[1:]).reshape(group, -1)
    return np.einsum("goi,gi->go", w, t).reshape(out)
