"""Decode rewrites: op types left, and agreement with the host-side decode under ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from convert import heads
from convert import postprocess as pp
from convert.errors import ConvertError
from convert.onnxutil import ort_session

from synthetic import decode_model, synthetic_head, synthetic_model

DECODE_OPS = {"Reshape", "Transpose", "Slice", "Sigmoid", "Mul", "Add", "Sub", "Div", "Concat", "Shape", "Squeeze",
              "Unsqueeze", "Range", "Cast", "Expand"}


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort_session(model.SerializeToString()).run(None, {"images": x})


def images(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, h, w), dtype=np.float32)


def assert_decoded_equal(got: list[np.ndarray], want: pp.Candidates) -> None:
    # the runtimes' sigmoids differ in the last bits; everything else is the same arithmetic
    np.testing.assert_allclose(got[0], want.boxes, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(got[1], want.scores.transpose(0, 2, 1), rtol=1e-6, atol=1e-6)  # class-major
    if want.keypoints is not None:
        np.testing.assert_allclose(got[2], want.keypoints, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("nk", [0, 5])
def test_decode_matches_host(nk):
    head = synthetic_head(nc=4, nk=nk)
    raw = synthetic_model(head, size=(64, 96), batch=2)
    model = decode_model(raw, head)
    added = {n.op_type for n in model.graph.node} - {"AveragePool", "Conv"}
    assert added <= DECODE_OPS
    x = images(2, 64, 96)
    got, maps = run(model, x), run(raw, x)
    n = 3 * (8 * 12 + 4 * 6 + 2 * 3)
    assert got[0].shape == (2, n, 4) and got[1].shape == (2, 4, n)
    assert nk == 0 or got[2].shape == (2, n, nk, 3)
    assert_decoded_equal(got, heads.decode(maps, head))


def test_decode_with_dynamic_input_size():
    head = synthetic_head(nc=2, nk=3)
    raw = synthetic_model(head, batch=None, dynamic_hw=True)
    model = decode_model(raw, head)
    for b, h, w in [(1, 64, 96), (3, 96, 32)]:
        x = images(b, h, w, seed=h)
        assert_decoded_equal(run(model, x), heads.decode(run(raw, x), head))


def test_float16_maps_are_decoded_in_float32():
    head = synthetic_head(nc=2)
    raw = synthetic_model(head, size=(64, 64))
    graph = gs.import_onnx(raw)
    halves = []
    for out in graph.outputs:
        half = gs.Variable(f"{out.name}_fp16", np.float16, out.shape)
        graph.nodes.append(gs.Node("Cast", inputs=[out], outputs=[half], attrs={"to": onnx.TensorProto.FLOAT16}))
        halves.append(half)
    graph.outputs = halves
    raw16 = gs.export_onnx(graph)
    raw16.ir_version = raw.ir_version
    model = decode_model(raw16, {**head, "outputs": [h.name for h in halves]})
    x = images(1, 64, 64)
    got = run(model, x)
    assert got[0].dtype == np.float32
    assert_decoded_equal(got, heads.decode([m.astype(np.float32) for m in run(raw16, x)], head))


def test_channel_mismatch_is_refused():
    head = synthetic_head(nc=2)
    with pytest.raises(ConvertError, match="channels"):
        decode_model(synthetic_model(head), {**head, "nc": 3})
