"""Calibrators: ranges against known data, TensorRT's entropy definition, histogram bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.calibrators import (
    AbsHistogram,
    BatchReader,
    HistogramCalibrator,
    calibrate,
    entropy_amax,
    mse_amax,
    percentile_amax,
)


def small_model(path):
    """x -> Mul(3) -> a -> Relu -> b -> Conv 1x1 (4->2) -> y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="mul"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w", "bias"], ["y"], name="conv")]
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "k"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "bias")]
    graph = helper.make_graph(nodes, "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def heavy_tailed_batches(seed=0, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
        if i == 2:
            x[0, 1, 2, 3] = 40.0  # one rare outlier
        out.append(x)
    return out


def true_extremes(model_path, batches):
    """Min and max of every tensor, from a session that outputs them all."""
    model = onnx.load(str(model_path))
    for t in ("a", "b"):
        model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = {n: [] for n in names}
    for x in batches:
        for n, v in zip(names, sess.run(None, {"x": x})):
            got[n].append(v)
    got["x"] = batches
    return {n: (float(min(v.min() for v in vs)), float(max(v.max() for v in vs))) for n, vs in got.items()}


def test_minmax_ranges_are_the_true_extremes(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    data = heavy_tailed_batches()
    res = calibrate(model, "x", data, "minmax", tmp_path)
    expected = true_extremes(model, data)
    assert set(res.ranges) == {"x", "a", "b", "y"}
    for name, (lo, hi) in expected.items():
        assert res.ranges[name] == pytest.approx((lo, hi), rel=0, abs=0), name
    assert res.samples == len(data)


def test_minmax_over_more_batches_than_one_chunk(tmp_path):
    # ONNX Runtime's MinMaxCalibrater is fed in chunks of 16 batches; the extremes of every chunk count.
    model = small_model(tmp_path / "m.onnx")
    data = [np.full((1, 4, 6, 6), float(i), np.float32) for i in range(40)]
    data[3] = -data[3] * 10
    res = calibrate(model, "x", data, "minmax", tmp_path)
    assert res.ranges["x"] == (-30.0, 39.0)
    assert res.samples == 40


def test_histogram_statistics_agree_with_minmax(tmp_path):
    model = small_model(tmp_path / "m.onnx")
    data = heavy_tailed_batches(1)
    cal = HistogramCalibrator(model, [], tmp_path / "aug.onnx")
    cal.augment_graph()
    cal.create_inference_session()
    cal.collect_data(BatchReader("x", data))
    assert cal.ranges("minmax") == calibrate(model, "x", data, "minmax", tmp_path).ranges
    total = sum(x.size for x in data)
    assert cal.stats["x"].counts.sum() == total  # every value lands in a bin


@pytest.mark.parametrize("method, upper", [("entropy", 10.0), ("percentile", 10.0), ("mse", 25.0)])
def test_clipping_methods_stay_inside_minmax_and_ignore_a_rare_outlier(tmp_path, method, upper):
    model = small_model(tmp_path / "m.onnx")
    # Enough values that clipping one outlier costs less squared error than the coarser steps keeping it.
    rng = np.random.default_rng(3)
    data = [rng.standard_normal((1, 4, 64, 64)).astype(np.float32) for _ in range(30)]
    data[7][0, 0, 0, 0] = 50.0
    mm = calibrate(model, "x", data, "minmax", tmp_path).ranges
    got = calibrate(model, "x", data, method, tmp_path, percentile=99.9).ranges
    for name in mm:
        lo, hi = got[name]
        assert mm[name][0] <= lo <= hi <= mm[name][1], name
    # The bulk is N(0, 1); the outlier at 50 is one value in half a million. MSE weighs its
    # clipping error (squared) against finer steps for everything else, so it clips less.
    amax = max(-got["x"][0], got["x"][1])
    assert 3.0 < amax < upper, f"{method} kept the outlier or clipped the bulk: {amax}"
    assert got["b"][0] == 0.0  # a one-sided tensor keeps its true lower end


def reference_entropy(counts, width, levels=128, start=128):
    """The definition of TensorRT's entropy threshold, computed candidate by candidate."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    best, best_kl = len(bins), math.inf
    for i in range(start, len(bins) + 1):
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        q = np.zeros(i)
        for k in range(levels):
            lo, hi = -(-k * i // levels), -(-(k + 1) * i // levels)
            seg = bins[lo:hi]
            nz = seg != 0
            if nz.any():
                q[lo:hi][nz] = seg.sum() / nz.sum()
        p = ref / ref.sum()
        q = q / q.sum()
        m = p > 0
        if np.any(q[m] == 0):
            continue
        kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl <= best_kl:
            best, best_kl = i, kl
    return best * width


@pytest.mark.parametrize("seed, n_bins", [(0, 300), (1, 512), (2, 700)])
def test_entropy_matches_the_definition(seed, n_bins):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_t(3, 50_000))
    counts, _ = np.histogram(x, bins=n_bins, range=(0, x.max()))
    if seed == 2:
        counts[200:260] = 0  # a gap: candidates ending in it have infinite divergence
    assert entropy_amax(counts, 0.01) == pytest.approx(reference_entropy(counts, 0.01))


def test_percentile_and_mse_on_simple_histograms():
    counts = np.zeros(1000, np.int64)
    counts[:990] = 1
    counts[999] = 10  # 1% of the mass far out
    assert percentile_amax(counts, 1.0, 98.0) == pytest.approx(980, abs=1)
    assert percentile_amax(counts, 1.0, 100.0) == 1000
    uniform = np.ones(1000, np.int64)
    assert mse_amax(uniform, 1.0) == pytest.approx(1000, rel=0.02)  # nothing to gain from clipping
    rng = np.random.default_rng(0)
    g, _ = np.histogram(np.abs(rng.standard_normal(200_000)), bins=2048, range=(0, 8))
    a = mse_amax(g, 8 / 2048)
    assert 2.5 < a < 5.0  # between the bulk and the largest sample, as for a Gaussian at 8 bits


def test_abs_histogram_grows_and_merges_without_losing_counts():
    h = AbsHistogram(num_bins=256)
    h.update(np.zeros(10, np.float32))  # zeros before any range is known
    h.update(np.linspace(-1, 1, 101, dtype=np.float32))
    width = h.width
    h.update(np.array([3.0], np.float32))  # grows with the same width
    assert h.width == width and len(h.counts) > 256
    h.update(np.array([1000.0, np.nan, np.inf], np.float32))  # far beyond: bins merged, non-finite ignored
    assert len(h.counts) <= 4 * 256 and h.width > width
    assert h.counts.sum() == 10 + 101 + 1 + 1
    assert (h.lo, h.hi) == (-1.0, 1000.0)
    assert h.clip(5.0) == (-1.0, 5.0)
