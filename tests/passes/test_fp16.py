"""Tests of the fp16 pass on small hand-built ONNX graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.data import check_feed
from convert import onnxutil
from convert.base import Artifact, RunContext
from convert.errors import PassError
from passes.fp16 import FP16, FP16Config, toposort

META = {"precision": "fp32", "names": ["a", "b"], "preprocess": {"size": [32, 32]},
        "input": {"name": "images", "shape": ["batch", 3, 32, 32]}, "outputs": ["maps"]}


def _init(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def conv_model(path) -> None:
    """Conv (stride 2) + SiLU + Resize x2 (scales), concatenated with a 1x1 conv branch, then a 1x1 conv."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
        helper.make_node("Resize", ["a1", "", "scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Conv", ["images", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Concat", ["up", "c2"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["maps"], name="conv3"),
    ]
    inits = [_init(rng, "w1", (8, 3, 3, 3)), _init(rng, "b1", (8,)), _init(rng, "w2", (8, 3, 1, 1)),
             _init(rng, "b2", (8,)), _init(rng, "w3", (6, 16, 1, 1)), _init(rng, "b3", (6,)),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 6, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def nms_model(path) -> None:
    """Boxes and scores computed from the input, then NonMaxSuppression (float32-only in ONNX)."""
    nodes = [
        helper.make_node("Mul", ["boxes_in", "k"], ["boxes"], name="scale_boxes"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="sig"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["selected"], name="nms"),
    ]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "k"),
             numpy_helper.from_array(np.array([5], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
             numpy_helper.from_array(np.array([0.3], np.float32), "thr")]
    graph = helper.make_graph(
        nodes, "nms",
        [helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def run_fp16(tmp_path, model_path, meta=META, **cfg):
    out = tmp_path / "out"
    out.mkdir()
    art = Artifact("onnx", model_path.parent, model_path.name, dict(meta), digest="x")
    res = FP16(FP16Config(**cfg)).run({"model": art}, out, RunContext("fp16", progress=False))
    return res, out / res.main


def value_types(model) -> dict[str, int]:
    """Element type of every value of a model (after shape inference)."""
    m = onnx.shape_inference.infer_shapes(model)
    vis = [*m.graph.input, *m.graph.output, *m.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in vis}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return types


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    conv_model(path)
    return path


def test_converts_weights_keeps_float_io_and_resize_scales(tmp_path, tiny):
    res, path = run_fp16(tmp_path, tiny)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    types = value_types(model)
    assert {types[w] for w in ("w1", "w2", "w3")} == {TensorProto.FLOAT16}
    assert types["images"] == types["maps"] == TensorProto.FLOAT
    assert types["scales"] == TensorProto.FLOAT  # ONNX wants Resize scales in float32
    assert res.meta["precision"] == "fp16" and res.meta["io_precision"] == "fp32"
    assert res.meta["names"] == ["a", "b"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == '"fp16"'

    # The summary's figure is the real FP32-vs-FP16 difference on the check input.
    x, kind = check_feed(onnxutil.ort_session(tiny), META)
    assert res.summary["check"] == kind
    ref = onnxutil.ort_session(tiny).run(None, x)[0]
    got = onnxutil.ort_session(path).run(None, x)[0]
    diff = float(np.abs(ref - got).max())
    assert res.summary["max_abs_diff"] == pytest.approx(diff)
    assert 0 < diff < 1e-2
    assert res.gate_failures == []


def test_check_feed_uses_photos_else_noise(tiny):
    sess = onnxutil.ort_session(tiny)
    noise, kind = check_feed(sess, {})  # no preprocessing recorded: noise of the declared size
    assert kind == "random" and noise["images"].shape == (1, 3, 32, 32)
    pytest.importorskip("skimage", reason="the built-in photos come with scikit-image")
    feed, kind = check_feed(sess, META, batch=3)
    x = feed["images"]
    assert kind == "photos" and x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and not np.allclose(x[0], x[1])


def test_float16_io(tmp_path, tiny):
    res, path = run_fp16(tmp_path, tiny, keep_io_types=False)
    sess = onnxutil.ort_session(path)
    assert sess.get_inputs()[0].type == "tensor(float16)"
    assert sess.get_outputs()[0].type == "tensor(float16)"
    assert res.meta["io_precision"] == "fp16"
    assert 0 < res.summary["max_abs_diff"] < 1e-2


def test_nms_stays_fp32_and_selects_the_same_boxes(tmp_path):
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    nms_model(src)
    res, path = run_fp16(tmp_path, src, meta={"precision": "fp32"})
    model = onnx.load(str(path))
    types = value_types(model)
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    assert types[nms.input[0]] == types[nms.input[1]] == TensorProto.FLOAT
    assert types["k"] == TensorProto.FLOAT16  # the Mul before it did become FP16
    rng = np.random.default_rng(1)
    xy = rng.random((1, 8, 2), dtype=np.float32) * 50
    feed = {"boxes_in": np.concatenate([xy, xy + 10], axis=2), "logits": rng.standard_normal((1, 1, 8), np.float32)}
    ref = onnxutil.ort_session(src).run(["selected"], feed)[0]
    got = onnxutil.ort_session(path).run(["selected"], feed)[0]
    assert len(ref) > 0
    np.testing.assert_array_equal(ref, got)
    assert res.summary["fp32_nodes"] == 1


def test_tensorrt_nms_plugin_stays_fp32_and_the_check_is_skipped(tmp_path):
    """EfficientNMS_TRT (TensorRT's plugin) cannot run under ONNX Runtime: converted, not checked."""
    nodes = [helper.make_node("Mul", ["boxes_in", "k"], ["boxes"], name="scale_boxes"),
             helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], ["num_dets", "det_boxes", "det_scores",
                                                                          "det_classes"],
                              name="nms", domain="trt.plugins", max_output_boxes=10, score_threshold=0.25,
                              iou_threshold=0.45, background_class=-1, score_activation=0, box_coding=0)]
    graph = helper.make_graph(
        nodes, "plugin",
        [helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 8, 2])],
        [helper.make_tensor_value_info("num_dets", TensorProto.INT32, [1, 1]),
         helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, 10, 4]),
         helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("det_classes", TensorProto.INT32, [1, 10])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "k")])
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(
        "trt.plugins", 1)], ir_version=8), str(src))
    res, path = run_fp16(tmp_path, src, meta={"precision": "fp32"}, max_abs_diff=1.0)
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    nms = next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")
    cast = producers[nms.input[0]]  # the FP16 Mul's output goes back to FP32 before the plugin
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
    assert inits["k"] == TensorProto.FLOAT16
    assert res.summary["check"].startswith("skipped") and "max_abs_diff" not in res.summary
    assert res.gate_failures == ["max_abs_diff cannot be checked: ONNX Runtime cannot run the model"]


def test_block_ops_and_nodes(tmp_path, tiny):
    _, path = run_fp16(tmp_path, tiny, block_ops=["Sigmoid"], block_nodes=["conv3"])
    model = onnx.load(str(path))
    types = value_types(model)
    by_name = {n.name: n for n in model.graph.node}
    assert types[by_name["sig1"].input[0]] == TensorProto.FLOAT
    assert types[by_name["conv1"].input[1]] == TensorProto.FLOAT16
    assert types[by_name["conv3"].input[1]] == TensorProto.FLOAT


def test_shared_fp32_inputs_give_one_cast(tmp_path):
    """Two Resize nodes share their scales and two blocked nodes share an input (as in a simplified YOLOv5)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Resize", ["r", "", "scales"], ["u1"], name="up1", mode="nearest"),
             helper.make_node("Resize", ["r", "", "scales"], ["u2"], name="up2", mode="nearest"),
             helper.make_node("Sigmoid", ["r"], ["s1"], name="sig1"),
             helper.make_node("Sigmoid", ["r"], ["s2"], name="sig2"),
             helper.make_node("Add", ["u1", "u2"], ["y"], name="add"),
             helper.make_node("Add", ["s1", "s2"], ["z"], name="add2")]
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    res, path = run_fp16(tmp_path, src, meta={"precision": "fp32"}, block_ops=["Sigmoid"])
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len({o for n in casts for o in n.output}) == len(casts)
    assert res.summary["max_abs_diff"] < 1e-2


def test_unknown_block_node_is_a_user_error(tmp_path, tiny):
    with pytest.raises(PassError, match="block_nodes: no node named 'nope'"):
        run_fp16(tmp_path, tiny, block_nodes=["nope"])


def test_refuses_a_model_that_is_not_fp32(tmp_path, tiny):
    with pytest.raises(PassError, match="input model is int8"):
        run_fp16(tmp_path, tiny, meta={**META, "precision": "int8"})


def test_gate_fails_on_a_tolerance_below_the_difference(tmp_path, tiny):
    res, _ = run_fp16(tmp_path, tiny, max_abs_diff=1e-9)
    assert len(res.gate_failures) == 1 and "'maps'" in res.gate_failures[0]


def test_toposort_orders_and_detects_cycles(tiny):
    model = onnx.load(str(tiny))
    shuffled = list(reversed(model.graph.node))
    del model.graph.node[:]
    model.graph.node.extend(shuffled)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    toposort(model.graph)
    onnx.checker.check_model(model)
    # Independent nodes keep their relative order: conv2 precedes conv1 in the reversed list.
    names = [n.name for n in model.graph.node]
    assert names.index("conv2") < names.index("conv1")

    cyclic = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], "cyc", [],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])])
    with pytest.raises(PassError, match="cycle"):
        toposort(cyclic)
