"""calib.measure: the sub-graph sensitivity analysis and the tap-sum bias correction give what the
direct computations give (one whole probe model per tensor; each convolution run again in float64)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib import measure
from calib.qdq import QuantizeSettings, activation_inputs, plan_nodes, quantize_model
from convert.onnxutil import ort_session

SIZE = 16


def graph_model():
    """A small network with what the probes must get right: a strided, padded stem reading the
    input; a tensor read by two nodes (a convolution and a residual Add); a dilated depthwise
    convolution; asymmetric padding; a tensor that is both read and a graph output; two outputs
    of which one does not depend on most tensors; a 1x1 head."""
    rng = np.random.default_rng(0)
    w = lambda name, shape, s=0.4: numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)
    silu = lambda x, name: [helper.make_node("Sigmoid", [x], [f"{name}.s"], name=f"{name}/Sigmoid"),
                            helper.make_node("Mul", [x, f"{name}.s"], [name], name=f"{name}/Mul")]
    nodes = [helper.make_node("Conv", ["images", "w0", "b0"], ["c0"], name="stem/Conv", strides=[2, 2],
                              pads=[1, 1, 1, 1]), *silu("c0", "a"),
             helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], name="cv1/Conv"), *silu("c1", "b"),
             helper.make_node("Conv", ["b", "w2", "b2"], ["c2"], name="dw/Conv", group=8, dilations=[2, 2],
                              pads=[2, 2, 2, 2]), *silu("c2", "c"),
             helper.make_node("Add", ["a", "c"], ["d"], name="res/Add"),
             helper.make_node("Conv", ["d", "w3", "b3"], ["c3"], name="pad/Conv", pads=[1, 0, 1, 2]), *silu("c3", "e"),
             helper.make_node("Conv", ["e", "w4", "b4"], ["p3"], name="head/Conv"),
             helper.make_node("Conv", ["b", "w5", "b5"], ["p4"], name="side/Conv", strides=[2, 2])]
    inits = [w("w0", (8, 3, 3, 3)), w("b0", (8,), 0.1), w("w1", (8, 8, 1, 1)), w("b1", (8,), 0.1),
             w("w2", (8, 1, 3, 3)), w("b2", (8,), 0.1), w("w3", (6, 8, 3, 2)), w("b3", (6,), 0.1),
             w("w4", (5, 6, 1, 1)), w("b4", (5,), 0.1), w("w5", (4, 8, 1, 1)), w("b5", (4,), 0.1)]
    graph = helper.make_graph(nodes, "probe_test",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("p3", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("p4", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def setup():
    model = graph_model()
    rng = np.random.default_rng(1)
    images = [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(5)]
    # ranges of every tensor, a little narrower than what the images reach, so clipping counts too
    names = ["images", *(t for n in model.graph.node for t in n.output)]
    sess = ort_session(_with_outputs(model, names).SerializeToString())
    seen = [dict(zip(names, sess.run(names, {"images": x}))) for x in images]
    ranges = {t: (0.9 * min(float(s[t].min()) for s in seen), 0.9 * max(float(s[t].max()) for s in seen))
              for t in names}
    return model, images, ranges


def _with_outputs(model, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names if t not in present)
    return m


def direct_sensitivity(model, ranges, batches, activation_type):
    """The direct computation: a whole probe model per tensor, a Q/DQ pair in front of every reader."""
    reference = ort_session(model.SerializeToString())
    expected = [reference.run(None, {"images": x}) for x in batches]
    energy = sum(float(np.sum(np.square(o, dtype=np.float64))) for outs in expected for o in outs)
    errors = {}
    for tensor, (lo, hi) in ranges.items():
        scale, zero_point = measure.qparams(lo, hi, activation_type)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for node in probe.graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = f"{tensor}_dq"
        probe.graph.initializer.extend([numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")])
        probe.graph.node.extend([helper.make_node("QuantizeLinear", [tensor, "s", "z"], [f"{tensor}_q"]),
                                 helper.make_node("DequantizeLinear", [f"{tensor}_q", "s", "z"], [f"{tensor}_dq"])])
        session = ort_session(probe.SerializeToString())
        diff = sum(float(np.sum(np.square(got.astype(np.float64) - ref)))
                   for x, outs in zip(batches, expected) for got, ref in zip(session.run(None, {"images": x}), outs))
        errors[tensor] = diff / energy
    return errors


@pytest.mark.parametrize("activation_type", ["int8", "uint8"])
@pytest.mark.parametrize("session_cost", [0.0, measure.SESSION_COST, 1e9])
def test_sensitivity_equals_the_direct_computation(setup, monkeypatch, activation_type, session_cost):
    """Whatever the grouping: one session per tensor (every probed tensor fed at its cut), the
    default, or one session for all (tensors downstream of others gated inside the graph)."""
    model, images, ranges = setup
    monkeypatch.setattr(measure, "SESSION_COST", session_cost)
    probed = {t: ranges[t] for t in ("images", "a", "b", "d", "e")}
    fast = measure.activation_sensitivity(model, probed, images, activation_type)
    slow = direct_sensitivity(model, probed, images, activation_type)
    assert fast.keys() == slow.keys()
    for t in slow:
        assert slow[t] > 0
        assert fast[t] == pytest.approx(slow[t], rel=1e-5), t
    assert sorted(fast, key=fast.get) == sorted(slow, key=slow.get)


@pytest.mark.parametrize("factor", [1.0, 1e9])
def test_most_sensitive_screens_on_a_quarter_of_the_images_and_ranks_the_contenders_on_all(setup, monkeypatch, factor):
    """factor 1: only the top tensor survives the first round, so the rest of the images are never
    probed; factor 1e9: every tensor stays a contender, and the choice is the full measurement's."""
    model, images, ranges = setup
    monkeypatch.setattr(measure, "SCREEN_FACTOR", factor)
    probed = {t: ranges[t] for t in ("images", "a", "b", "d", "e")}
    calls = []
    real = measure._sensitivity_sums
    monkeypatch.setattr(measure, "_sensitivity_sums",
                        lambda m, r, b, *a: calls.append((sorted(r), len(b))) or real(m, r, b, *a))
    chosen = measure.most_sensitive(model, probed, images, 2, "uint8")
    probes = list(calls)  # what most_sensitive probed (the references below go through the spy too)
    first = measure.activation_sensitivity(model, probed, images[:2], "uint8")  # 5 images: 2 screen
    full = measure.activation_sensitivity(model, probed, images, "uint8")
    if factor == 1.0:
        top = sorted(first, key=lambda t: -first[t])
        assert probes == [(sorted(probed), 2)]
        assert list(chosen) == top[:2] and chosen[top[0]] == pytest.approx(first[top[0]], rel=1e-9)
    else:
        assert probes == [(sorted(probed), 2), (sorted(probed), 3)]
        assert list(chosen) == sorted(full, key=lambda t: -full[t])[:2]
        assert all(chosen[t] == pytest.approx(full[t], rel=1e-6) for t in chosen)


def test_the_groups_cover_every_probe_once_in_order():
    masks = [np.array(m, bool) for m in ([1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1])]
    costs = np.array([10.0, 1, 1, 1])
    for groups in (measure._groups(masks, costs, 8), measure._groups(masks, costs, 1)):
        assert [i for g in groups for i in g] == [0, 1, 2, 3]
    # a costly first node is worth a session of its own; cheap sessions give one each
    assert measure._groups(masks, costs, 8)[0] == [0]


def direct_shifts(float_model, qmodel, batches):
    """The direct computation of each convolution's mean output shift, in float64: the convolution
    with its quantized weights on the input it receives after its Q/DQ pair, minus the one with
    float weights on the input before it."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    float_inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    float_w = {n.name: float_inits[n.input[1]] for n in float_model.graph.node if n.op_type == "Conv"}
    convs = [n for n in qmodel.graph.node
             if n.op_type == "Conv" and measure.qdq_source(producer, n.input[0]) is not None]
    reads = {n.name: (measure.qdq_source(producer, n.input[0]).input[0], n.input[0]) for n in convs}
    names = sorted({t for pair in reads.values() for t in pair})
    sess = ort_session(_with_outputs(qmodel, names).SerializeToString())
    sums, count = {}, 0
    for x in batches:
        values = dict(zip(names, sess.run(names, {"images": x})))
        for n in convs:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            wq = measure._weights(n.input[1], producer, inits)
            before, after = reads[n.name]
            d = _conv64(values[after], wq, attrs) - _conv64(values[before], float_w[n.name], attrs)
            sums[n.name] = sums.get(n.name, 0.0) + d.sum(axis=(0, 2, 3)) / (d.shape[2] * d.shape[3])
        count += len(x)
    return {k: v / count for k, v in sums.items()}


def _conv64(x, w, attrs):
    """Convolution in float64, by kernel taps (bias left out: it cancels)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    (sh, sw), (dh, dw), g = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("group", 1)
    t, left, b, r = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
    cout, cin_g, kh, kw = w.shape
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], cout, oh, ow))
    per = cout // g
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            for grp in range(g):
                out[:, grp * per:(grp + 1) * per] += np.einsum(
                    "oc,nchw->nohw", w[grp * per:(grp + 1) * per, :, i, j], patch[:, grp * cin_g:(grp + 1) * cin_g])
    return out


@pytest.mark.parametrize("target", ["tensorrt", "openvino", "onnxruntime"])
def test_bias_correction_equals_the_direct_computation(setup, target):
    model, images, ranges = setup
    qmodel = quantize_model(model, ranges, QuantizeSettings(target=target, bias_correction=False),
                            lambda: iter(images), "q").model
    before = {i.name: numpy_helper.to_array(i).copy() for i in qmodel.graph.initializer}
    expected = direct_shifts(model, qmodel, images)
    corrected = measure.correct_biases(model, qmodel, iter(images))
    assert set(corrected) == set(expected) and len(expected) >= 4
    bias_of = {n.name: n.input[2] for n in qmodel.graph.node if n.name in corrected}
    after = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    for conv, shift in expected.items():
        applied = before[bias_of[conv]].astype(np.float64) - after[bias_of[conv]]
        assert np.abs(shift).max() > 1e-5, conv  # something to correct
        np.testing.assert_allclose(applied, shift, rtol=1e-4, atol=1e-6, err_msg=conv)
        assert corrected[conv] == pytest.approx(float(np.abs(shift).mean()), rel=1e-4)


def test_tap_matrix_marks_what_each_tap_reads():
    # 5 inputs, kernel 3, stride 2, pad 1: outputs at 0, 2, 4 read inputs (-1, 0, 1), (1, 2, 3), (3, 4, 5)
    m = measure._tap_matrix(5, 3, 3, 2, 1, 1)
    assert m.tolist() == [[0, 1, 0, 1, 0], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]]


def test_every_probed_tensor_of_the_plan_is_measured(setup):
    model, images, ranges = setup
    c = QuantizeSettings()
    needed = activation_inputs(model, plan_nodes(model, c, "q").quantized)
    errors = measure.activation_sensitivity(model, {t: ranges[t] for t in needed}, images[:2], "int8")
    assert set(errors) == set(needed) and all(e > 0 for e in errors.values())
