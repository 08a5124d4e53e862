"""Reports: tables, plots, self-contained HTML, `convert report` on one version and on two."""

from __future__ import annotations

import base64
import json
import re
import textwrap

import numpy as np
from PIL import Image

from convert.base import Artifact, RunContext
from passes.report.render import comparison_blocks, from_records, load_version, model_rows, stage_order, write_report


def info(kind, precision, backend, digest, size=1_000_000):
    return {"kind": kind, "precision": precision, "backend": backend, "digest": digest, "size_bytes": size,
            "end2end": False, "truncated": False, "label": f"{kind}/{precision}@{backend}"}


def evaluation(model, m5095, label):
    return {"type": "evaluation", "label": label, "model": model, "runner": {},
            "dataset": {"source": "YOLO labels", "images": 4, "instances": 9, "fingerprint": "f"},
            "settings": {"conf": 0.001, "iou": 0.6, "max_det": 300, "end2end": False, "kpt_sigmas": None,
                         "preprocess": {"size": [640, 640], "resize": "letterbox", "pad_value": 114}},
            "metrics": {"mAP50-95": m5095, "mAP50": m5095 + 0.2}, "detections": 10,
            "per_class": [{"class": "person", "mAP50-95": m5095, "mAP50": 0.5, "instances": 9}], "seconds": 1.0,
            "gates": [] if label == "fp32" else [
                {"gate": "max_drop", "metric": "mAP50-95", "reference": "fp32", "reference_value": 0.35,
                 "value": m5095, "drop": 0.35 - m5095, "threshold": 0.01, "passed": False, "message": "m"}]}


def benchmark(models_p50):
    results = [{"label": m["label"], "model": m, "threads": 1, "runner": {"intra_op_num_threads": 1}, "batch": 1,
                "iterations": 10, "p50_ms": p, "p90_ms": p * 1.1, "p99_ms": p * 1.3, "mean_ms": p, "min_ms": p * 0.9,
                "std_ms": 1.0, "throughput_ips": 1000 / p, "speedup_vs_first": models_p50[0][1] / p,
                "times_ms": [p * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)]}
               for m, p in models_p50]
    return {"type": "benchmark", "host": {"model": "CPU X", "logical_cpus": 2, "usable_cpus": 2},
            "load_average": {"before": [1.0, 1.0, 1.0], "after": [1.5, 1.0, 1.0]},
            "settings": {"batch": 1, "warmup": 2, "iterations": 10, "rounds": 2, "threads": [1]}, "results": results}


def comparison(ref, model):
    return {"type": "comparison", "reference": ref, "images": ["a.jpg"], "settings": {},
            "models": [{"model": model, "runner": {}, "tolerance": {}, "passed": True, "failures": [],
                        "outputs": {"predictions": {"shape": [1, 5, 7], "max_abs": 2e-5, "mean_abs": 1e-7,
                                                    "max_rel": 0.5, "mean_rel": 1e-6, "min_cosine": 0.9999999,
                                                    "mean_cosine": 1.0, "elementwise_passed": True}},
                        "detections": {"agreement": 1.0, "matched": 3, "reference_count": 3, "model_count": 3,
                                       "count_diff_mean": 0.0, "count_diff_max": 0, "images_with_count_diff": 0,
                                       "mean_iou": 1.0, "max_score_diff": 1e-6}}]}


def publish(root, version, records, seconds):
    """A published version directory as the manager writes it: stages, artifact.json, manifest."""
    vdir = root / "spec" / version
    stages = {"export": {"pass": "export_onnx", "inputs": {}, "output": "d_fp32", "status": "ran",
                         "seconds": seconds, "summary": {"opset": 17}},
              "quantize": {"pass": "quantize", "inputs": {"model": ["export"]}, "output": "d_int8", "status": "cached",
                           "seconds": 0.01, "summary": {}},
              "tensorrt": {"pass": "tensorrt", "inputs": {"model": ["export"]}, "skipped": "no tensorrt",
                           "status": "skipped", "seconds": 0.0, "summary": {}}}
    for name, kind, prec in (("export", "onnx", "fp32"), ("quantize", "onnx", "int8")):
        (vdir / name).mkdir(parents=True)
        (vdir / name / "model.onnx").write_bytes(b"x" * (4000 if prec == "fp32" else 1000))
        (vdir / name / "artifact.json").write_text(json.dumps({"kind": kind, "main": "model.onnx",
                                                               "meta": {"precision": prec}}))
    for i, rec in enumerate(records):
        name = f"figures{i}"
        (vdir / name).mkdir()
        (vdir / name / "metrics.json").write_text(json.dumps(rec))
        (vdir / name / "artifact.json").write_text(json.dumps({"kind": "metrics", "main": "metrics.json", "meta": {}}))
        stages[name] = {"pass": rec["type"], "inputs": {"model": ["quantize"]}, "output": f"m{i}", "status": "ran",
                        "seconds": 1.5, "summary": {}}
    manifest = {"spec": "spec", "version": version, "created": "2026-01-01T00:00:00", "stages": stages,
                "host": {"hostname": "h", "platform": "linux", "python": "3.11", "cpus": 2}, "files": {}}
    (vdir / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return vdir


def records(int8_map=0.33, int8_ms=10.0):
    fp32, int8 = info("onnx", "fp32", "onnxruntime", "d_fp32"), info("onnx", "int8", "onnxruntime", "d_int8")
    torch_ref = info("torch", "fp32", "torch", "d_torch")
    return [evaluation(fp32, 0.35, "fp32"), evaluation(int8, int8_map, "int8"),
            benchmark([(fp32, 20.0), (int8, int8_ms)]), comparison(torch_ref, fp32)]


def test_rows_join_accuracy_latency_and_agreement_by_model_and_backend(tmp_path):
    data = load_version(publish(tmp_path, "v1", records(), 3.0))
    rows = model_rows(data)
    assert [(r["name"], r["precision"]) for r in rows] == [("export", "fp32"), ("quantize", "int8")]
    assert rows[0]["metrics"]["mAP50-95"] == 0.35 and rows[0]["latency"]["1"]["p50_ms"] == 20.0
    assert rows[0]["agreement"]["min_cosine"] == 0.9999999 and rows[0]["agreement"]["reference"] == "torch/fp32"
    assert rows[1]["size_bytes"] == 1_000_000 and rows[1]["agreement"] is None
    assert [a["size_bytes"] for a in data.artifacts] == [4000, 1000]
    assert stage_order(data.manifest) == ["export", "quantize", *(f"figures{i}" for i in range(4)), "tensorrt"]


def test_report_is_self_contained_with_tables_and_plots(tmp_path):
    vdir = publish(tmp_path, "v1", records(), 3.0)
    md, page = write_report(load_version(vdir), vdir)
    text = page.read_text()
    assert "<script" not in text and "<link" not in text and not re.search(r"(src|href)=\"(?!data:)", text)
    assert "http://" not in text and "https://" not in text
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(pngs) == 4 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    alts = re.findall(r'<img alt="([^"]+)"', text)
    assert alts == ["Accuracy vs latency", "Latency distribution per configuration", "Per-pass time", "Pipeline"]
    for needle in ("Accuracy × back-end × precision", "<td>quantize</td>", "<td>0.3300</td>", "<td>20.00</td>",
                   "Accuracy gates", 'class="fail"', "Cross-back-end comparison against torch/fp32",
                   "7 stages, 1 cache hit,", "no tensorrt", "Per-class box AP", "rectangular batches",
                   "pycocotools", "CPU X"):
        assert needle in text, needle
    markdown = md.read_text()
    assert "| export | onnx | fp32 | onnxruntime | 1.00 | 0.3500 | 0.5500 | 20.00 | 0.000020 | 1.000000 | 1.000 |" \
        in markdown
    assert "![Accuracy vs latency](report-accuracy-latency.png)" in markdown
    assert (vdir / "report-accuracy-latency.png").read_bytes().startswith(b"\x89PNG")


def test_two_versions_side_by_side(tmp_path):
    a = load_version(publish(tmp_path, "v1", records(), 3.0))
    b = load_version(publish(tmp_path, "v2", records(int8_map=0.345, int8_ms=8.0), 1.0))
    table = next(c for k, c in comparison_blocks(a, b) if k == "table")
    int8 = next(r for r in table.rows if r[0] == "quantize")
    assert int8[3:6] == ["0.3300", "0.3450", "+0.0150"] and int8[9:12] == ["10.00", "8.00", "0.80x"]


def test_report_pass_renders_from_metrics_artifacts(tmp_path):
    from passes.report import Report, ReportConfig

    arts = []
    for i, rec in enumerate(records()):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(rec))
        arts.append(Artifact("metrics", d, "metrics.json", {}, f"m{i}"))
    out = tmp_path / "out"
    out.mkdir()
    res = Report(ReportConfig(title="yolo")).run({"metrics": arts}, out, RunContext("report", progress=False))
    page = (out / res.main).read_text()
    assert res.main == "report.html" and "Report: yolo" in page and "report.html (beside its manifest.json)" in page
    assert "<td>onnx/int8</td>" in page  # no manifest: models are named by kind/precision
    assert from_records(records()).artifacts[0]["label"] == "onnx/fp32@onnxruntime"


def test_cli_report_on_a_real_run_and_two_versions(cli, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "ds" / "images" / f"{i}.jpg")
        (tmp_path / "ds" / "labels" / f"{i}.txt").write_text("1 0.5 0.5 0.3 0.4\n")
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""
        iters: 4
        stages:
          load: {with: {arch: yolov5n, nc: 2, input_size: [64, 64]}}
          export_onnx: {}
          evaluate: {inputs: {model: export_onnx}, with: {data: ds}}
          compare: {inputs: {reference: load, models: [export_onnx]}, with: {data: ds/images}}
          benchmark: {inputs: {models: [export_onnx]}, with: {iterations: "${iters}", rounds: 2, warmup: 1}}
          report: {inputs: {metrics: [evaluate, compare, benchmark]}}
    """))
    assert cli("run", "r.yaml", "--no-progress")[0] == 0
    assert cli("run", "r.yaml", "iters=6", "--no-progress")[0] == 0
    versions = [p for p in (tmp_path / "artifacts" / "r").glob("*/manifest.json") if p.parent.name != "latest"]
    first, second = sorted(versions, key=lambda p: p.stat().st_mtime)
    assert (first.parent / "report" / "report.html").is_file()  # every version carries the pass's report
    # ... and its own, rendered at publishing from the manifest: timings and cache hits included
    published = (second.parent / "report.html").read_text()
    assert "6 stages, 4 cache hits" in published and 'alt="Per-pass time"' in published
    (second.parent / "report.html").unlink()
    code, out, _ = cli("report", "r")
    assert code == 0 and "report.html" in out
    page = (second.parent / "report.html").read_text()
    assert "6 stages, 4 cache hits" in page and "<td>export_onnx</td>" in page and "<td>benchmark</td>" in page
    assert cli("verify", "r")[0] == 0  # the report beside the manifest does not disturb verification
    code, out, _ = cli("report", f"r/{first.parent.name}", f"r/{second.parent.name}", "-o", "cmp")
    assert code == 0 and "Figures side by side" in out and "| export_onnx | onnxruntime | fp32 |" in out
    assert list((tmp_path / "cmp").glob("compare-*.html"))
    code, _, err = cli("report", "r", "r", "r")
    assert code == 2 and "one version, or two" in err
    code, _, err = cli("report", "nope")
    assert code == 2 and "no published version" in err


def test_published_report_shows_pipeline_latency_and_drawn_detections(tiny_e2e_run):
    root, vdir = tiny_e2e_run
    page = (vdir / "report.html").read_text()
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert alts == ["Accuracy vs latency", "Latency distribution per configuration", "Per-pass time",
                    "Detections on 0.jpg", "Detections on 1.jpg", "Pipeline"]
    jpegs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(jpegs) == 2 and all(base64.b64decode(j)[:2] == b"\xff\xd8" for j in jpegs)
    # the legend names each picture column's stage; raw and end-to-end find the same boxes here
    assert "<td>onnx/fp32@onnxruntime e2e</td><td>postprocess</td>" in page
    assert "<td>onnx/fp32@onnxruntime raw</td><td>export_onnx</td>" in page
    index = json.loads((vdir / "report" / "pictures.json").read_text())
    for pic in index["pictures"]:
        e2e, raw = pic["models"]
        assert e2e["detections"] > 0 and raw["difference"] == {"matched": e2e["detections"], "only_ref": 0,
                                                               "only_other": raw["detections"] - e2e["detections"]}
    assert re.search(r"<td>postprocess</td><td>postprocess</td><td>export_onnx</td><td>ran</td><td>[0-9.]+</td>"
                     r"<td>[1-9][0-9.]*</td>", page)  # pipeline table: inputs, status, seconds, size
    md = (vdir / "report.md").read_text()
    assert "![Detections on 0.jpg](report/pictures/00-0.jpg)" in md and (vdir / "report/pictures/00-0.jpg").is_file()
    stage_page = (vdir / "report" / "report.html").read_text()  # the stage's own report has them too
    assert len(re.findall(r"data:image/jpeg;base64,", stage_page)) == 2


def test_report_pass_needs_something_to_report_and_detector_models(tmp_path):
    import pytest

    from convert.errors import ConvertError
    from passes.report import Report, ReportConfig

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match="nothing to report"):
        Report(ReportConfig()).run({}, out, RunContext("report", progress=False))
    (tmp_path / "m").mkdir()
    plain = Artifact("onnx", tmp_path / "m", "model.onnx", {}, "d")
    with pytest.raises(ConvertError, match="neither NMS in its graph nor head metadata"):
        Report(ReportConfig()).run({"models": [plain]}, out, RunContext("report", progress=False))
