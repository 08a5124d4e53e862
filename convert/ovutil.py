"""OpenVINO helpers shared by the openvino pass and the runners."""

from __future__ import annotations


def read_onnx(path):
    """Reads an ONNX file into an ``openvino.Model``, Q/DQ pairs folded (see :func:`openvino_fold_qdq`)."""
    import openvino as ov

    model = ov.convert_model(str(path))
    openvino_fold_qdq(model)
    return model


def openvino_fold_qdq(model) -> int:
    """Folds each decomposed Q/DQ pair of an OpenVINO model into one float FakeQuantize.

    OpenVINO's ONNX reader turns ``QuantizeLinear -> DequantizeLinear`` into ``FakeQuantize``
    (integer output levels) ``-> Convert(i8) -> Convert(f32) [-> Subtract(zero point)] ->
    Multiply(scale)``. With signed INT8 activations next to a ``Concat``, OpenVINO 2026.4's CPU
    plugin runs that chain wrong (it casts the concatenated tensor to u8 without its scale:
    outputs off by tens of quantization steps), while the same quantization written as one
    FakeQuantize with float output levels runs right, in INT8. The fold gives that form and
    changes no value: output levels become ``(level - zero_point) * scale``.

    Args:
        model: An ``openvino.Model`` read from a Q/DQ ONNX, modified in place.

    Returns:
        The number of Q/DQ pairs folded.
    """
    import numpy as np
    import openvino.opset13 as ops

    def const(output):
        node = output.get_node()
        if node.get_type_name() == "Convert":  # zero points arrive as Convert(i8/u8 constant)
            node = node.input_value(0).get_node()
        return node.get_data() if node.get_type_name() == "Constant" else None

    def only_consumer(output, op_type):
        targets = list(output.get_target_inputs())
        node = targets[0].get_node() if len(targets) == 1 else None
        return node if node is not None and node.get_type_name() == op_type else None

    folded = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        to_int = only_consumer(fq.output(0), "Convert")
        to_float = to_int and only_consumer(to_int.output(0), "Convert")
        if to_float is None:
            continue
        zero_point, tail = 0.0, to_float
        sub = only_consumer(tail.output(0), "Subtract")
        if sub is not None:
            zero_point, tail = const(sub.input_value(1)), sub
        mul = only_consumer(tail.output(0), "Multiply")
        scale = const(mul.input_value(1)) if mul is not None else None
        low, high = const(fq.input_value(3)), const(fq.input_value(4))
        if scale is None or zero_point is None or low is None or high is None:
            continue
        levels = [ops.constant(np.asarray((v - zero_point) * scale, dtype=np.float32)) for v in (low, high)]
        fused = ops.fake_quantize(fq.input_value(0), fq.input_value(1), fq.input_value(2), *levels, fq.get_levels())
        fused.set_friendly_name(mul.get_friendly_name())
        mul.output(0).replace(fused.output(0))
        folded += 1
    model.validate_nodes_and_infer_types()
    return folded
