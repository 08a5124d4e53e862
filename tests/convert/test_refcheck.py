"""Tests of the one reference check (convert.refcheck): the comparison policy and the ONNX Runtime check."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convert import onnxutil, refcheck
from convert.runtime import OrtRunner


def test_equal_outputs_pass_with_zero_difference():
    rng = np.random.default_rng(0)
    outs = {"boxes": rng.standard_normal((2, 5, 4)).astype(np.float32), "num": np.array([3, 1], np.int64)}
    got = refcheck.compare(outs, {k: v.copy() for k, v in outs.items()})
    assert got.max_abs == {"boxes": 0.0, "num": 0.0} and got.mismatch == {}
    assert got.max_abs_diff == 0.0 and got.worst == "boxes"
    assert got.failures(1e-9) == []


def test_a_perturbed_output_fails_the_gate_naming_it():
    ref = {"a": np.ones((3, 3), np.float32), "b": np.full((4,), 10.0, np.float32)}
    cand = {"a": ref["a"] + 1e-3, "b": ref["b"].copy()}
    cand["b"][2] += 0.5
    got = refcheck.compare(ref, cand)
    assert got.max_abs["a"] == pytest.approx(1e-3, rel=1e-3) and got.max_abs["b"] == pytest.approx(0.5)
    assert got.worst == "b" and got.max_abs_diff == pytest.approx(0.5)
    assert got.max_rel["b"] == pytest.approx(0.05) and got.max_rel_diff == pytest.approx(0.05)
    assert got.failures(None) == []  # figures only, without a tolerance
    assert got.failures(1.0) == []
    assert got.failures(0.1, "IR", "ONNX model") == [
        "IR output 'b' differs from the ONNX model's by 0.5 > max_abs_diff 0.1"]


def test_polygraphy_output_statistics_are_skipped_during_a_comparison_only(monkeypatch):
    from polygraphy.comparator import util as comp_util

    real, calls = comp_util.log_output_stats, []
    monkeypatch.setattr(comp_util, "log_output_stats", lambda *a, **k: calls.append(a))
    spy = comp_util.log_output_stats
    ref = {"a": np.ones((3, 3), np.float32)}
    got = refcheck.compare(ref, {"a": ref["a"] + 0.25})
    assert got.max_abs["a"] == pytest.approx(0.25)  # the comparison itself is intact
    assert calls == [] and comp_util.log_output_stats is spy and spy is not real  # skipped, then restored


def test_a_missing_output_is_reported_and_fails_even_without_a_gate():
    ref = {"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float32)}
    got = refcheck.compare(ref, {"a": np.zeros(3, np.float32), "c": np.zeros(3, np.float32)})
    assert got.mismatch == {"b": refcheck.ONLY_REFERENCE, "c": refcheck.ONLY_CANDIDATE}
    assert list(got.max_abs) == ["a"]  # compared by name: c is not compared with b
    assert got.failures(None, "engine", "ONNX model") == [
        "engine output 'b' does not match the ONNX model's: only in the reference",
        "engine output 'c' does not match the ONNX model's: only in the candidate"]
    assert got.summary()["mismatch"] == got.mismatch


def test_integer_outputs_are_compared_exactly_and_stay_out_of_max_abs_diff():
    ref = {"scores": np.full(4, 0.5, np.float32), "classes": np.array([1, 2, 3, 4], np.int32)}
    cand = {"scores": np.full(4, 0.5, np.float32), "classes": np.array([1, 2, 9, 4], np.int32)}
    got = refcheck.compare(ref, cand)
    assert got.mismatch == {"classes": "1 of 4 values differ (int32 output, compared exactly)"}
    assert got.max_abs["classes"] == 6.0 and got.max_abs_diff == 0.0 and got.floats == ["scores"]
    assert got.failures(None) == []  # reported; a mismatch of values fails a set gate only
    assert got.failures(100.0) == ["candidate output 'classes' does not match the reference's: "
                                   "1 of 4 values differ (int32 output, compared exactly)"]


def test_nan_and_inf_equal_where_both_sides_have_them_else_a_mismatch():
    ref = {"x": np.array([np.nan, np.inf, 1.0, 2.0], np.float32)}
    same = refcheck.compare(ref, {"x": np.array([np.nan, np.inf, 1.0, 2.25], np.float32)})
    assert same.mismatch == {} and same.max_abs["x"] == pytest.approx(0.25)
    odd = refcheck.compare(ref, {"x": np.array([0.0, -np.inf, np.nan, 2.25], np.float32)})
    assert odd.mismatch == {"x": "3 non-finite values (NaN, inf) differ"}
    assert odd.max_abs["x"] == pytest.approx(0.25)  # the finite positions only: the figures stay JSON
    json.dumps(odd.summary(), allow_nan=False)
    assert len(odd.failures(1.0)) == 1 and "non-finite" in odd.failures(1.0)[0]


def test_shapes_that_differ_are_a_mismatch_not_compared():
    got = refcheck.compare({"sel": np.zeros((5, 3), np.float32)}, {"sel": np.zeros((4, 3), np.float32)})
    assert got.mismatch == {"sel": "shape [4, 3] against the reference's [5, 3]"} and got.max_abs == {}
    assert got.failures(None) == [] and len(got.failures(1.0)) == 1


def test_several_iterations_take_the_worst():
    refs = [{"y": np.zeros(2, np.float32)}, {"y": np.ones(2, np.float32)}]
    cands = [{"y": np.array([0.0, 0.1], np.float32)}, {"y": np.array([1.0, 1.3], np.float32)}]
    got = refcheck.compare(refs, cands)
    assert got.max_abs["y"] == pytest.approx(0.3, rel=1e-5) and got.magnitude == 1.0


def _model(path, scale: float, extra_op: str | None = None) -> None:
    """y = x * scale, z = relu(x); with extra_op, a node of an op ONNX Runtime does not know."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    opsets = [helper.make_opsetid("", 17)]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["z"], ["w"], domain="com.example"))
        opsets.append(helper.make_opsetid("com.example", 1))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("y", "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outputs, [numpy_helper.from_array(np.array(scale, np.float32), "k")])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))


def _feed(sess):
    return onnxutil.random_feed(sess, seed=3), "random"


def test_check_runs_both_models_on_the_same_input(tmp_path):
    _model(tmp_path / "ref.onnx", 2.0)
    _model(tmp_path / "same.onnx", 2.0)
    _model(tmp_path / "off.onnx", 2.5)
    names = []
    same = refcheck.check(tmp_path / "ref.onnx", lambda n: names.append(n) or OrtRunner(tmp_path / "same.onnx"), _feed)
    assert names == [["y", "z"]]  # the candidate's runner is told the reference's output names
    assert same.kind == "random" and same.failures(1e-6) == []
    assert same.summary()["check"] == "random" and same.summary()["max_abs_diff"] == 0.0
    off = refcheck.check(tmp_path / "ref.onnx", lambda _: OrtRunner(tmp_path / "off.onnx"), _feed)
    x = _feed(onnxutil.ort_session(tmp_path / "ref.onnx"))[0]["x"]
    assert off.comparison.max_abs["y"] == pytest.approx(0.5 * np.abs(x).max(), rel=1e-5)
    assert off.comparison.max_abs["z"] == 0.0 and off.comparison.worst == "y"
    assert off.failures(1e-3, "FP16 model", "FP32 model")[0].startswith("FP16 model output 'y' differs from the "
                                                                        "FP32 model's by")


def test_check_is_skipped_when_onnx_runtime_cannot_run_the_reference(tmp_path):
    _model(tmp_path / "plugin.onnx", 2.0, extra_op="NotAnOrtOp")
    called = []
    got = refcheck.check(tmp_path / "plugin.onnx", lambda n: called.append(n), _feed)
    assert called == [] and got.comparison is None
    assert got.summary() == {"check": refcheck.SKIPPED}
    assert got.failures(None) == [] and got.failures(0.1) == [refcheck.UNCHECKABLE]
