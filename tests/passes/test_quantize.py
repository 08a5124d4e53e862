"""The quantize pass: Q/DQ placement, options, and the INT8 model on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from calib.data import CalibrationSet, batches, resolve_source
from calib.measure import activation_sensitivity
from calib.qdq import head_nodes
from convert.base import Artifact, RunContext
from convert.errors import PassError
from convert.ovutil import CENTRED_ZERO_POINT, openvino_fold_qdq, seven_bit_weights
from passes.calibrate import Calibrate, CalibrateConfig
from passes.quantize import Quantize, QuantizeConfig

PP = {"size": [32, 32], "resize": "letterbox", "pad_value": 114}
META = {"precision": "fp32", "truncated": True, "names": ["a"], "preprocess": PP,
        "input": {"name": "images", "shape": ["batch", 3, 32, 32]}, "outputs": ["p3"]}
CONVS = ["stem/Conv", "m.cv1/Conv", "m.cv2/Conv", "side/Conv", "head/Conv"]


def body_model(path):
    """conv+SiLU stem, a residual bottleneck (1x1, 3x3) beside a 1x1 side conv, a concat, a 1x1 head conv."""
    rng = np.random.default_rng(0)
    w = lambda name, shape, s=0.3: numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)
    nodes, inits = [], []
    for x, name, cin, k in (("images", "stem", 3, 3), ("stem.o", "m.cv1", 8, 1), ("m.cv1.o", "m.cv2", 8, 3)):
        nodes += [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.c"], name=f"{name}/Conv",
                                   pads=[k // 2] * 4),
                  helper.make_node("Sigmoid", [f"{name}.c"], [f"{name}.s"], name=f"{name}/Sigmoid"),
                  helper.make_node("Mul", [f"{name}.c", f"{name}.s"], [f"{name}.o"], name=f"{name}/Mul")]
        inits += [w(f"{name}.w", (8, cin, k, k)), w(f"{name}.b", (8,), 0.1)]
    nodes += [helper.make_node("Add", ["stem.o", "m.cv2.o"], ["res"], name="m/Add"),
              helper.make_node("Conv", ["stem.o", "side.w", "side.b"], ["side"], name="side/Conv"),
              helper.make_node("Concat", ["res", "side"], ["cat"], name="cat/Concat", axis=1),
              helper.make_node("Conv", ["cat", "head.w", "head.b"], ["p3"], name="head/Conv")]
    inits += [w("side.w", (8, 8, 1, 1)), w("side.b", (8,), 0.1), w("head.w", (14, 16, 1, 1)), w("head.b", (14,), 0.1)]
    graph = helper.make_graph(nodes, "body", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("p3", TensorProto.FLOAT, ["batch", 14, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The float body, a folder of smooth random images and a minmax table of the body on them."""
    tmp = tmp_path_factory.mktemp("quantize")
    (tmp / "model").mkdir()
    body_model(tmp / "model" / "model.onnx")
    art = Artifact("onnx", tmp / "model", "model.onnx", dict(META), digest="body")
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(2)
    for i in range(8):  # low-frequency images, closer to photos than white noise
        small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 40), Image.BILINEAR).save(imgs / f"{i}.png")
    (tmp / "table").mkdir()
    Calibrate(CalibrateConfig(data=imgs, num=8, method="minmax")).run({"model": art}, tmp / "table",
                                                                       RunContext("calibrate", progress=False))
    table = Artifact("calib_table", tmp / "table", "table.json", {}, digest="table")
    xs = np.concatenate(list(batches(CalibrationSet(resolve_source(imgs), 8).samples(), PP, 1)))
    return tmp, art, table, xs


def quantize(setup, name, **cfg):
    tmp, art, table, _ = setup
    out = tmp / name
    out.mkdir()
    res = Quantize(QuantizeConfig(**cfg)).run({"model": art, "table": table}, out, RunContext("quantize", False))
    return res, onnx.load(str(out / res.main)), out / res.main


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def conv_inputs(model, conv):
    node = next(n for n in model.graph.node if n.name == conv)
    prod = producers(model)
    graph_inputs = {i.name for i in model.graph.input}
    return [prod[t].op_type if t in prod else "graph input" if t in graph_inputs else "initializer"
            for t in node.input]


def sqnr_db(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))


def test_placement_is_tensorrt_style(setup):
    res, model, _ = quantize(setup, "default")
    assert res.kind == "onnx" and res.meta["precision"] == "int8"
    for conv in CONVS:  # activation and weight through DQ, bias float
        assert conv_inputs(model, conv) == ["DequantizeLinear", "DequantizeLinear", "initializer"], conv
    prod = producers(model)
    # Conv outputs are not quantized: the SiLU reads the convolution directly.
    assert prod["stem.s"].input[0] == "stem.c" and prod["stem.c"].op_type == "Conv"
    # One Q/DQ per tensor, shared: the residual Add reads the same dequantized tensor as m.cv1.
    add = next(n for n in model.graph.node if n.name == "m/Add")
    cv1 = next(n for n in model.graph.node if n.name == "m.cv1/Conv")
    assert cv1.input[0] in add.input
    # The concat gets one scale, at its output, feeding the head conv.
    assert prod[conv_inputs_name(model, "head/Conv")].op_type == "DequantizeLinear"
    q_inputs = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_inputs) == len(set(q_inputs)) == 4  # images, stem.o (shared by 2 convs and the add), m.cv1.o, cat
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":  # symmetric INT8: zero point 0
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and zp == 0
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4:
            assert inits[n.input[1]].shape == (inits[n.input[0]].shape[0],)  # per output channel
    assert json.loads(next(p.value for p in model.metadata_props if p.key == "precision")) == "int8"


def conv_inputs_name(model, conv):
    return next(n for n in model.graph.node if n.name == conv).input[0]


# SQNR floors (dB) of OpenVINO INT8 (7-bit weights, see convert.ovutil.seven_bit_weights) against the
# reference, and against the same Q/DQ model on ONNX Runtime (8-bit weights)
OV_SQNR = (25, 25)


def test_int8_model_runs_in_onnxruntime_and_openvino_close_to_fp32(setup):
    ov = pytest.importorskip("openvino")
    _, art, _, xs = setup
    _, _, path = quantize(setup, "run")
    ref = ort.InferenceSession(str(art.file), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    assert sqnr_db(ref, got) > 25
    ov_model = ov.Core().read_model(str(path))
    assert openvino_fold_qdq(ov_model) == 4
    assert seven_bit_weights(ov_model) == 5  # every conv's weights
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got_ov = compiled({"images": xs})[compiled.outputs[0]]
    assert sqnr_db(ref, got_ov) > OV_SQNR[0]
    assert sqnr_db(got, got_ov) > OV_SQNR[1]  # the same quantized model on both runtimes


def overflow_prone_convs(path) -> list[str]:
    """The quantized convolutions whose input can overflow AVX2's int16 pair sums with 8-bit weights.

    Read off the Q/DQ ONNX: the input is the network's, or its u8 zero point is 64 or more.
    """
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = producers(model)
    dq = {n.name: prod.get(n.input[0]) for n in model.graph.node if n.op_type == "Conv"}
    return [c for c, d in dq.items() if d is not None and d.op_type == "DequantizeLinear" and (
        int(inits[d.input[2]]) >= CENTRED_ZERO_POINT or prod[d.input[0]].input[0] == model.graph.input[0].name)]


def test_openvino_fold_keeps_values_of_asymmetric_pairs(setup):
    ov = pytest.importorskip("openvino")
    _, _, _, xs = setup
    _, _, path = quantize(setup, "u8", activation_type="uint8")
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    m = ov.Core().read_model(str(path))
    assert openvino_fold_qdq(m) == 4
    centred = overflow_prone_convs(path)
    assert "stem/Conv" in centred and len(centred) < 5
    assert seven_bit_weights(m) == len(centred)
    compiled = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert sqnr_db(ref, compiled({"images": xs})[compiled.outputs[0]]) > OV_SQNR[1]


def test_uint8_activations_are_asymmetric(setup):
    res, model, _ = quantize(setup, "u8b", activation_type="uint8")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.uint8 for z in zps) and any(z != 0 for z in zps)
    assert res.meta["quantization"]["symmetric_activations"] is False


def test_head_and_excluded_nodes_stay_float(setup):
    _, art, _, _ = setup
    assert head_nodes(onnx.load(str(art.file)), ["Conv"]) == ["head/Conv"]
    res, model, _ = quantize(setup, "head", keep_head_float=True, exclude_nodes=["m.cv*"])
    assert conv_inputs(model, "head/Conv") == ["Concat", "initializer", "initializer"]
    assert conv_inputs(model, "m.cv2/Conv")[:2] == ["Mul", "initializer"]
    assert conv_inputs(model, "stem/Conv")[:2] == ["DequantizeLinear", "DequantizeLinear"]
    assert sorted(res.meta["quantization"]["float_nodes"]) == ["head/Conv", "m.cv1/Conv", "m.cv2/Conv"]
    assert res.summary["quantized_nodes"] == 2
    # A float node sharing its input with a quantized one reads the float tensor, not the Q/DQ copy.
    node = lambda name: next(n for n in model.graph.node if n.name == name)
    assert node("m.cv1/Conv").input[0] == "stem.o"
    assert producers(model)[node("side/Conv").input[0]].op_type == "DequantizeLinear"
    _, model, _ = quantize(setup, "side", exclude_nodes=["side/Conv"])  # `node` now looks in this model
    assert node("side/Conv").input[0] == "stem.o"
    assert producers(model)[node("m.cv1/Conv").input[0]].op_type == "DequantizeLinear"


def test_exclusions_that_match_nothing_are_errors(setup):
    with pytest.raises(PassError, match=r"exclude_nodes: 'stem/conv' matches no node"):
        quantize(setup, "bad1", exclude_nodes=["stem/conv"])
    with pytest.raises(PassError, match="exclude_types: the model has no 'Gemm' node"):
        quantize(setup, "bad2", exclude_types=["Gemm"])
    with pytest.raises(PassError, match="no node left to quantize"):
        quantize(setup, "bad3", exclude_types=["Conv"])


def test_a_table_of_another_model_is_refused(setup, tmp_path):
    _, art, _, _ = setup
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table.json").write_text(json.dumps({
        "format": 1, "method": "minmax", "num_samples": 1, "model": {"digest": "other"},
        "tensors": {"input_1": {"min": 0.0, "max": 1.0}}}))
    table = Artifact("calib_table", tmp_path / "t", "table.json", {}, digest="t")
    (tmp_path / "o").mkdir()
    with pytest.raises(PassError, match="no range for 4 tensor"):
        Quantize(QuantizeConfig()).run({"model": art, "table": table}, tmp_path / "o", RunContext("q", False))
    (tmp_path / "t" / "table.json").write_text("{}")
    with pytest.raises(PassError, match="not readable"):
        Quantize(QuantizeConfig()).run({"model": art, "table": table}, tmp_path / "o", RunContext("q", False))


def test_bias_correction_removes_the_mean_shift(setup):
    _, art, _, xs = setup
    ref = ort.InferenceSession(str(art.file), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    shift = {}
    for bc in (False, True):
        res, _, path = quantize(setup, f"bc{bc}", bias_correction=bc)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
        shift[bc] = np.abs((got - ref).mean(axis=(0, 2, 3))).mean()  # per-channel mean error of the output
        assert res.meta["quantization"]["bias_correction"] is bc
    assert shift[True] < 0.5 * shift[False]
    assert res.summary["bias_shift_mean"] > 0


def test_bias_correction_needs_the_calibration_images(setup, tmp_path):
    _, art, table, _ = setup
    t = json.loads((table.path / "table.json").read_text())
    t["method"], t["data"] = "trt_cache", {"source": "trt_cache"}  # what an imported TensorRT cache gives
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table.json").write_text(json.dumps(t))
    imported = Artifact("calib_table", tmp_path / "t", "table.json", {}, digest="t")
    (tmp_path / "o").mkdir()
    with pytest.raises(PassError, match="bias correction need the calibration images"):
        Quantize(QuantizeConfig()).run({"model": art, "table": imported}, tmp_path / "o", RunContext("q", False))
    (tmp_path / "o2").mkdir()
    res = Quantize(QuantizeConfig(bias_correction=False)).run({"model": art, "table": imported}, tmp_path / "o2",
                                                             RunContext("q", False))
    assert res.meta["quantization"]["bias_correction"] is False


def test_the_most_sensitive_tensor_is_found_and_its_consumers_kept_float(setup, tmp_path):
    _, art, table, xs = setup
    t = json.loads((table.path / "table.json").read_text())
    lo, hi = t["tensors"]["m.cv1.o"]["min"], t["tensors"]["m.cv1.o"]["max"]
    t["tensors"]["m.cv1.o"] = {"min": lo * 60, "max": hi * 60}  # steps 60x too coarse: clearly the worst
    ranges = {k: (v["min"], v["max"]) for k, v in t["tensors"].items() if k in ("images", "stem.o", "m.cv1.o", "cat")}
    errors = activation_sensitivity(onnx.load(str(art.file)), ranges, [xs[:4]], "int8")
    assert max(errors, key=errors.get) == "m.cv1.o"
    assert all(e > 0 for e in errors.values())
    table_dir = tmp_path / "t"
    table_dir.mkdir()
    (table_dir / "table.json").write_text(json.dumps(t))
    (table_dir / "samples").symlink_to(table.path / "samples")
    doctored = Artifact("calib_table", table_dir, "table.json", {}, digest="t")
    (tmp_path / "o").mkdir()
    res = Quantize(QuantizeConfig(keep_float_sensitive=1, sensitivity_samples=4)).run(
        {"model": art, "table": doctored}, tmp_path / "o", RunContext("q", False))
    assert list(res.meta["quantization"]["sensitive_tensors"]) == ["m.cv1.o"]
    assert res.meta["quantization"]["float_nodes"] == ["m.cv2/Conv"]
    model = onnx.load(str(tmp_path / "o" / "model.onnx"))
    assert next(n for n in model.graph.node if n.name == "m.cv2/Conv").input[0] == "m.cv1.o"


def test_keeping_every_tensor_float_is_an_error_not_a_full_quantization(setup):
    with pytest.raises(PassError, match="leaves no node to quantize"):
        quantize(setup, "all_sensitive", keep_float_sensitive=10)


def ort_fused_ops(path, tmp_path):
    """Op types of the model as ONNX Runtime's CPU provider runs it (after its QDQ fusions)."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_onnxruntime_target_quantizes_op_outputs_and_fuses_into_qlinear_ops(setup, tmp_path):
    res, model, path = quantize(setup, "ort", target="onnxruntime", keep_head_float=True)
    readers = lambda t: [n for n in model.graph.node if t in n.input]
    # A convolution's output is quantized (QLinearConv needs it), and so are Sigmoid's and Mul's.
    for t in ("stem.c", "stem.s", "stem.o", "m.cv2.o", "res"):
        assert [n.op_type for n in readers(t)] == ["QuantizeLinear"], t
    assert conv_inputs(model, "m.cv1/Conv")[:2] == ["DequantizeLinear", "DequantizeLinear"]
    # The float head reads the float concat; the concat's Q/DQ pair, read by nothing else, is gone.
    assert conv_inputs(model, "head/Conv") == ["Concat", "initializer", "initializer"]
    assert [n.op_type for n in readers("cat")] == ["Conv"]
    # The stem reads the float image (ORT's float convolution beats QLinearConv on 3 channels).
    assert conv_inputs(model, "stem/Conv") == ["graph input", "initializer", "initializer"]
    q = res.meta["quantization"]
    assert q["activations"] == "uint8" and q["float_nodes"] == ["head/Conv", "stem/Conv"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert all(inits[n.input[2]].dtype == np.uint8 for n in model.graph.node if n.op_type == "QuantizeLinear")
    ops = ort_fused_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 3 and "QLinearSigmoid" in ops and "QLinearMul" in ops and "QLinearAdd" in ops
    assert "Sigmoid" not in ops  # every SiLU runs in INT8
    # the TensorRT placement leaves ONNX Runtime nothing to fuse
    _, _, trt_path = quantize(setup, "trt_fuse")
    (tmp_path / "trt").mkdir()
    assert "QLinearConv" not in ort_fused_ops(trt_path, tmp_path / "trt")


def test_onnxruntime_target_runs_close_to_fp32_with_bias_correction(setup):
    _, art, _, xs = setup
    ref = ort.InferenceSession(str(art.file), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    runs, exact = {}, {}
    # unfused: the Q/DQ arithmetic as written (fused u8 x s8 kernels of CPUs without VNNI add int16
    # saturation noise of their own, which no bias correction can know of)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for bc in (False, True):
        res, _, path = quantize(setup, f"ort_run_{bc}", target="onnxruntime", bias_correction=bc)
        runs[bc] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
        exact[bc] = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"]).run(
            None, {"images": xs})[0]
    assert res.summary["bias_shift_mean"] > 0
    assert sqnr_db(ref, runs[True]) > 20
    # bias correction removes the per-channel mean shift of the output
    shift = lambda got: np.abs((got - ref).mean(axis=(0, 2, 3))).mean()
    assert shift(exact[True]) < shift(exact[False])


def test_silu_inputs_are_floored_only_where_silu_alone_reads_them(setup):
    from calib.qdq import SILU_INPUT_FLOOR, clip_silu_inputs

    _, art, _, _ = setup
    model = onnx.load(str(art.file))
    ranges = {"stem.c": (-50.0, 3.0), "m.cv2.c": (-2.0, 4.0), "stem.o": (-30.0, 5.0), "side": (-40.0, 1.0)}
    out = clip_silu_inputs(model, ranges)
    assert out["stem.c"] == (SILU_INPUT_FLOOR, 3.0)  # read by its Sigmoid and the Mul by it only
    assert out["m.cv2.c"] == (-2.0, 4.0)  # already above the floor
    assert out["stem.o"] == ranges["stem.o"] and out["side"] == ranges["side"]  # read by other ops


def test_target_settings_are_validated_and_the_default_keeps_old_keys(setup, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="target onnxruntime needs activation_type uint8"):
        QuantizeConfig(target="onnxruntime", activation_type="int8")
    with pytest.raises(ValidationError):
        QuantizeConfig(target="tflite")
    assert QuantizeConfig(target="onnxruntime").activation_type == "uint8"
    # the default target is not in the key material: stages made before targets existed keep their keys
    assert "target" not in QuantizeConfig().model_dump()
    assert "target" not in QuantizeConfig(target="tensorrt").model_dump()
    assert QuantizeConfig(target="onnxruntime").model_dump(mode="json")["target"] == "onnxruntime"
    # a table of the convolutions' inputs and outputs only has no range for the Sigmoid outputs
    tmp, art, _, _ = setup
    (tmp_path / "table").mkdir()
    Calibrate(CalibrateConfig(data=tmp / "imgs", num=8, method="minmax", op_types=["Conv"])).run(
        {"model": art}, tmp_path / "table", RunContext("calibrate", progress=False))
    table = Artifact("calib_table", tmp_path / "table", "table.json", {}, digest="table")
    (tmp_path / "o").mkdir()
    with pytest.raises(PassError, match="target onnxruntime quantizes the outputs.*drop op_types"):
        Quantize(QuantizeConfig(target="onnxruntime")).run({"model": art, "table": table}, tmp_path / "o",
                                                           RunContext("quantize", False))


def test_openvino_target_is_tensorrt_placement_with_uint8_activations_and_8_bit_weights(setup):
    ov = pytest.importorskip("openvino")
    assert QuantizeConfig(target="openvino").activation_type == "uint8"
    assert QuantizeConfig(target="openvino", activation_type="int8").activation_type == "int8"
    _, art, _, xs = setup
    _, model, path = quantize(setup, "ov_target", target="openvino")
    _, trt_model, _ = quantize(setup, "ov_target_trt", activation_type="uint8")
    ops = lambda m: [(n.op_type, n.name) for n in m.graph.node]
    assert ops(model) == ops(trt_model)  # the placement TensorRT's is
    ref = ort.InferenceSession(str(art.file), providers=["CPUExecutionProvider"]).run(None, {"images": xs})[0]
    m = ov.Core().read_model(str(path))
    openvino_fold_qdq(m)
    # 7-bit weights only behind activations that can overflow AVX2's int16 pair sums (the image, centred
    # u8): the others keep their 8 bits
    assert seven_bit_weights(m) == len(overflow_prone_convs(path)) < 5
    compiled = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert sqnr_db(ref, compiled({"images": xs})[compiled.outputs[0]]) > OV_SQNR[0]


def test_onnxruntime_target_gives_7_bit_weights_only_where_int16_pair_sums_can_overflow(setup):
    from calib.qdq import seven_bit_weights as onnx_seven_bit

    _, model, path = quantize(setup, "ort_7bit", target="onnxruntime")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = producers(model)
    weights = {n.name: inits[prod[n.input[1]].input[0]] for n in model.graph.node
               if n.op_type == "Conv" and prod.get(n.input[1]) is not None
               and prod[n.input[1]].op_type == "DequantizeLinear"}
    seven = {c for c, w in weights.items() if w.min() >= -64 and w.max() <= 63}
    assert seven == set(overflow_prone_convs(path)) and "stem/Conv" not in weights  # the stem stays float
    assert any(np.abs(w).max() == 127 for c, w in weights.items() if c not in seven)  # the others keep 8 bits
    assert onnx_seven_bit(model) == []  # done once: nothing left to requantize
    # On a quantized stem (TensorRT's placement, uint8), the rule picks exactly the overflow-prone convolutions.
    _, trt_model, trt_path = quantize(setup, "trt_7bit", activation_type="uint8")
    assert set(onnx_seven_bit(trt_model)) == set(overflow_prone_convs(trt_path)) and "stem/Conv" in set(
        overflow_prone_convs(trt_path))


def test_onnxruntime_target_never_probes_the_float_stem_input(setup, monkeypatch):
    import calib.qdq as qdq

    probed = []
    real = qdq.most_sensitive
    monkeypatch.setattr(qdq, "most_sensitive",
                        lambda model, ranges, *a, **k: probed.extend(ranges) or real(model, ranges, *a, **k))
    res, _, _ = quantize(setup, "ort_probe", target="onnxruntime", keep_float_sensitive=1)
    # the image feeds only the stem, which this target keeps float: quantizing it changes nothing
    assert probed and "images" not in probed and "stem.o" in probed
    assert "images" not in res.meta["quantization"]["sensitive_tensors"]
