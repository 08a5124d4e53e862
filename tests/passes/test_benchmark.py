"""The benchmark pass: interleaved timing of several back-ends, percentiles, recorded settings."""

from __future__ import annotations

import json
import warnings

import pytest
from PIL import Image

from convert.errors import ConvertError
from passes.benchmark import Benchmark, BenchmarkConfig
from passes.export_onnx import ExportOnnx, ExportOnnxConfig
from passes.load import Load, LoadConfig

from steps import step


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_art, _ = step(Load(LoadConfig(arch="yolov5n", nc=2, input_size=(64, 64))), tmp, "load")
    static, _ = step(ExportOnnx(ExportOnnxConfig()), tmp, "static", model=torch_art)
    dynamic, _ = step(ExportOnnx(ExportOnnxConfig(dynamic_batch=True)), tmp, "dynamic", model=torch_art)
    return {"torch": torch_art, "static": static, "dynamic": dynamic, "tmp": tmp}


def test_side_by_side_figures_per_backend_and_threads(models, tmp_path):
    Image.new("RGB", (90, 50), (200, 10, 10)).save(tmp_path / "img.png")
    cfg = BenchmarkConfig(onnx_backends=["onnxruntime", "openvino"], threads=[1, None], warmup=1, iterations=7,
                          rounds=3, image=tmp_path / "img.png")
    art, res = step(Benchmark(cfg), tmp_path, "bench", models=[models["static"], models["torch"]])
    rec = json.loads(art.file.read_text())
    labels = [r["label"] for r in rec["results"]]
    assert labels == ["onnx/fp32@onnxruntime t1", "onnx/fp32@onnxruntime", "onnx/fp32@openvino t1",
                      "onnx/fp32@openvino", "torch/fp32@torch t1", "torch/fp32@torch"]
    for r in rec["results"]:
        assert r["iterations"] == 7 and r["batch"] == 1
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] == pytest.approx(1000 / r["mean_ms"])
    first = rec["results"][0]
    assert first["speedup_vs_first"] == 1.0 and first["threads"] == 1 and rec["results"][1]["threads"] == "default"
    assert first["runner"]["intra_op_num_threads"] == 1
    assert rec["results"][3]["runner"]["inference_num_threads"] == "default"
    assert rec["host"]["logical_cpus"] >= 1 and rec["settings"]["image"] == "img.png"
    assert set(res.summary) == {f"{lab} p50_ms" for lab in labels}


def test_batch_needs_a_model_that_takes_it(models, tmp_path):
    cfg = BenchmarkConfig(batch=2, warmup=0, iterations=2, rounds=1)
    art, _ = step(Benchmark(cfg), tmp_path, "ok", models=[models["dynamic"]])
    r = json.loads(art.file.read_text())["results"][0]
    assert r["batch"] == 2 and r["throughput_ips"] == pytest.approx(2000 / r["mean_ms"])
    with pytest.raises(ConvertError, match="batch is fixed at 1"):
        step(Benchmark(cfg), tmp_path, "bad", models=[models["static"]])


def test_runners_are_released_after_a_failure(models, tmp_path, monkeypatch):
    import convert.runtime as rt

    released = []
    original = rt.OrtRunner.deactivate
    monkeypatch.setattr(rt.OrtRunner, "deactivate", lambda self: (released.append(self.name), original(self)))
    cfg = BenchmarkConfig(batch=2, warmup=0, iterations=2, rounds=1)
    with pytest.raises(ConvertError):
        step(Benchmark(cfg), tmp_path, "bad", models=[models["dynamic"], models["static"]])
    assert len(released) == 2  # the static model failed after both sessions were created
