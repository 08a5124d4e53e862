"""OpenVINO helpers shared by the openvino pass and the runners."""

from __future__ import annotations


def read_onnx(path):
    """Reads an ONNX file into an ``openvino.Model``, Q/DQ pairs folded (see :func:`openvino_fold_qdq`)."""
    import openvino as ov

    model = ov.convert_model(str(path))
    openvino_fold_qdq(model)
    seven_bit_weights(model)
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


def seven_bit_weights(model) -> int:
    """Requantizes to 7 bits (``[-64, 63]``, scale doubled) the INT8 convolution weights that could overflow.

    On CPUs without VNNI (AVX2 only) OpenVINO's INT8 convolutions read activations as u8 and add
    pairs of u8 x s8 products in saturating int16 (``vpmaddubsw``): ``2 * 255 * 127`` overflows,
    ``2 * 255 * 63`` does not. Whether it happens depends on the activations' u8 values:

    * signed (symmetric int8) activations are shifted by 128 to u8, so every value sits around 128
      and pairs overflow all the time (yolo11n-pose, int8 activations: output SQNR against FP32
      8.9 dB with 8-bit weights, 17.8 dB with 7-bit ones);
    * asymmetric uint8 activations of SiLU outputs sit near their small zero point and rarely
      reach the top of the range: 8-bit weights run as on ONNX Runtime (yolo11n-pose, uint8
      activations, INT8 vs FP32 on coco128's person photos: recall 0.961 and keypoint error 0.90 %
      with 8-bit weights, as ONNX Runtime's 0.961 / 0.87 %; 7-bit weights cost precision for
      nothing there);
    * a convolution reading the network input (an image, values spread over the whole range) is
      treated as signed (NNCF's ``overflow_fix`` "first layer" rule is the same remedy).

    So weights become 7-bit where the convolution's input has a zero point of 64 or more in u8
    terms, reads a graph input, or cannot be read; the rule does not depend on the machine, which
    keeps the IR portable. The Q/DQ ONNX itself keeps 8-bit weights for ONNX Runtime and TensorRT.

    Args:
        model: An ``openvino.Model`` read from a Q/DQ ONNX with its pairs folded
            (:func:`openvino_fold_qdq`), modified in place.

    Returns:
        The number of weight tensors requantized.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    def consumer(node, op_type):
        targets = list(node.output(0).get_target_inputs())
        nxt = targets[0].get_node() if len(targets) == 1 else None
        return nxt if nxt is not None and nxt.get_type_name() == op_type else None

    done = 0
    for const in model.get_ordered_ops():
        if (const.get_type_name() != "Constant" or const.get_element_type() != ov.Type.i8
                or len(const.get_output_partial_shape(0)) != 4):
            continue
        convert = consumer(const, "Convert")
        tail = convert
        sub = convert and consumer(convert, "Subtract")
        if sub is not None:
            zp = sub.input_value(1).get_node()
            while zp.get_type_name() in ("Convert", "Reshape", "Unsqueeze"):
                zp = zp.input_value(0).get_node()
            if zp.get_type_name() != "Constant" or np.any(zp.get_data() != 0):
                continue  # asymmetric weights: leave them
            tail = sub
        mul = tail and consumer(tail, "Multiply")
        holder, port = mul, 1  # per-channel scales may arrive through a Reshape / Unsqueeze of the constant
        scale = mul and mul.input_value(1).get_node()
        while scale is not None and scale.get_type_name() in ("Reshape", "Unsqueeze"):
            holder, port = scale, 0
            scale = scale.input_value(0).get_node()
        if scale is None or scale.get_type_name() != "Constant":
            continue
        if not _may_overflow(mul):
            continue
        w = const.get_data().astype(np.int16)
        if w.min() >= -64 and w.max() <= 63:
            continue  # already fits
        w7 = np.clip(np.round(w / 2), -64, 63).astype(np.int8)
        new_const = ops.constant(w7, dtype=np.int8)
        new_const.set_friendly_name(const.get_friendly_name())
        const.output(0).replace(new_const.output(0))
        new_scale = ops.constant(np.asarray(scale.get_data() * 2, dtype=scale.get_data().dtype))
        new_scale.set_friendly_name(scale.get_friendly_name())
        holder.input(port).replace_source_output(new_scale.output(0))
        done += 1
    model.validate_nodes_and_infer_types()
    return done


CENTRED_ZERO_POINT = 64
"""u8 zero point from which a convolution's activations count as centred (see :func:`seven_bit_weights`).

The same rule writes 7-bit weights into the onnxruntime target's ONNX (``calib.qdq.seven_bit_weights``)."""


def _may_overflow(weights_tail) -> bool:
    """Whether the convolution fed by this weight chain reads activations that can overflow 8-bit weights."""
    import numpy as np

    node = weights_tail
    while node.get_type_name() in ("Multiply", "Reshape", "Unsqueeze"):
        targets = list(node.output(0).get_target_inputs())
        if len(targets) != 1:
            return True
        node = targets[0].get_node()
    if node.get_type_name() not in ("Convolution", "GroupConvolution"):
        return True
    fq = node.input_value(0).get_node()
    if fq.get_type_name() != "FakeQuantize" or fq.get_levels() != 256:
        return True
    source = fq.input_value(0).get_node()
    while source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    if source.get_type_name() == "Parameter":
        return True
    levels = [fq.input_value(i).get_node() for i in (3, 4)]
    if any(n.get_type_name() != "Constant" for n in levels):
        return True
    low, high = float(np.min(levels[0].get_data())), float(np.max(levels[1].get_data()))
    if not high > low:
        return True
    return -low / (high - low) * 255 >= CENTRED_ZERO_POINT
