"""Measures a real-model pipeline end to end and prints the figures table.

Takes a pipeline of ``pipelines/`` (default: the YOLOv5n end-to-end one), adds every precision
and back-end whose pass is installed — FP16, INT8 (calibrate + quantize), OpenVINO IR of the
FP32 and INT8 models, TensorRT engines where TensorRT is importable — plus an ``evaluate``
stage per model (gated against the FP32 evaluation when ``--max-drop`` is given), a ``compare``
against the PyTorch model, a side-by-side ``benchmark`` and a ``report``. It runs the result
twice with the CLI on a fresh store — cold, then fully cached — and prints mAP per precision and
back-end, latency, sizes, agreement with PyTorch and both wall times.

    python bench/figures.py --fixtures ../shared/fixtures
    python bench/figures.py --pipeline pipelines/yolov5_pose_int8.yaml --data ../shared/fixtures/datasets/coco8-pose \\
        --weights '' --calib-split train

The generated spec, the store and the published version stay in ``--workdir`` for inspection;
``convert report`` has written the version's report.html beside its manifest.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert.registry import all_passes  # noqa: E402
from convert.spec import load_spec  # noqa: E402


def plan_stages(base: Path, overrides: list[str], args) -> tuple[dict[str, Any], list[str]]:
    """The stages to add to the base pipeline, and notes on what was left out and why.

    Branches from the base's stages by role: the last torch stage is the PyTorch reference,
    the last ``simplify`` (else ``export_onnx``) stage is the float ONNX body, a ``postprocess``
    stage is the end-to-end model.
    """
    spec = load_spec(base, overrides)
    known = all_passes()
    notes = []
    torch_ref = [s.name for s in spec.stages if s.pass_cls.output == "torch"][-1]
    bodies = [s.name for s in spec.stages if s.pass_name == "simplify"] or \
        [s.name for s in spec.stages if s.pass_name == "export_onnx"]
    if not bodies:
        raise SystemExit(f"error: {base} has no export_onnx stage to measure.")
    body = bodies[-1]
    e2e = [s.name for s in spec.stages if s.pass_name == "postprocess"]
    stages: dict[str, Any] = {}
    models = {body: "fp32"} | {n: "fp32 end-to-end" for n in e2e}

    def add(name, pass_name, inputs, params=None, optional=False):
        if pass_name not in known:
            notes.append(f"{name}: pass {pass_name!r} is not available yet")
            return False
        stages[name] = {"pass": pass_name, "inputs": inputs, "with": params or {}}
        if optional:
            stages[name]["optional"] = True
        return True

    if add("fp16", "fp16", {"model": body}):
        models["fp16"] = "fp16"
    if add("calibrate", "calibrate", {"model": body},
           {"data": str(args.calib_data or args.data), "split": args.calib_split, "num": args.calib_num,
            **({"method": args.calib_method} if args.calib_method else {})}) and \
            add("quantize", "quantize", {"model": body, "table": "calibrate"}, {"activation_type": args.activations}):
        models["quantize"] = "int8"
    if add("ov_fp32", "openvino", {"model": body}):
        models["ov_fp32"] = "fp32"
    if "quantize" in models and add("ov_int8", "openvino", {"model": "quantize"}):
        models["ov_int8"] = "int8"
    if importlib.util.find_spec("tensorrt") is None:
        notes.append("tensorrt: not installed here, no engines built (a skipped input would skip the compare, "
                     "benchmark and report stages too)")
    else:
        for src, name in (("fp16", "trt_fp16"), ("quantize", "trt_int8")):
            if src in models and add(name, "tensorrt", {"model": src}, optional=True):
                models[name] = models[src]

    common = {"data": str(args.data), "num": args.max_images}
    def gates():
        if args.max_drop is None:
            return []
        return [{"max_drop": {"metric": "mAP50-95", "reference": "fp32", "value": args.max_drop}}]

    evals = []
    for m in models:
        name = f"eval_{m}"
        params = {**common, **({"label": "fp32"} if m == body else {"gates": gates()})}
        add(name, "evaluate", {"model": m, **({} if m == body else {"reference": f"eval_{body}"})}, params)
        evals.append(name)
    add(f"eval_{body}_openvino", "evaluate", {"model": body, "reference": f"eval_{body}"},
        {**common, "backend": "openvino", "gates": gates()})
    evals.append(f"eval_{body}_openvino")
    add("compare", "compare", {"reference": torch_ref, "models": list(models)},
        {"data": str(args.compare_images or args.data), "num": 8})
    add("benchmark", "benchmark", {"models": list(models) + ([torch_ref] if args.bench_torch else [])},
        {"onnx_backends": ["onnxruntime", "openvino"], "threads": args.threads, "iterations": args.iterations,
         "rounds": 5, "warmup": 5, **({"image": str(args.bench_image)} if args.bench_image else {})})
    add("report", "report", {"metrics": [*evals, "compare", "benchmark"]}, {"title": spec.name})
    return stages, notes


def run_cli(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """Runs ``convert ARGV`` in a fresh interpreter; returns (exit status, wall seconds, its log)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "convert", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True)
    return proc.returncode, time.perf_counter() - t0, (proc.stdout + proc.stderr).strip()


def print_table(version: Path) -> None:
    from passes.report.render import load_version, model_rows

    data = load_version(version)
    rows = model_rows(data)
    threads = sorted({t for r in rows for t in r["latency"]})
    pose = any("kpt_mAP50-95" in r["metrics"] for r in rows)
    head = ["model", "precision", "back-end", "mAP50-95", "mAP50"] + (["kpt mAP50-95"] if pose else []) + \
        [f"p50 ms t{t}" for t in threads] + ["size MB", "max abs vs torch", "cos", "agree"]
    lines = [head]
    for r in rows:
        a = r["agreement"] or {}
        m = r["metrics"]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append([r["name"], r["precision"], r["backend"], fmt(m.get("mAP50-95"), ".4f"),
                      fmt(m.get("mAP50"), ".4f")]
                     + ([fmt(m.get("kpt_mAP50-95"), ".4f")] if pose else [])
                     + [fmt(r["latency"][t]["p50_ms"], ".1f") if t in r["latency"] else "-" for t in threads]
                     + [f"{r['size_bytes'] / 1e6:.2f}", fmt(a.get("max_abs"), ".2e"), fmt(a.get("min_cosine"), ".6f"),
                        fmt(a.get("detections"), ".3f")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    for e in data.of_type("evaluation"):
        for g in e.get("gates", []):
            print(f"gate {'passed' if g['passed'] else 'FAILED'}: {g['message']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures",
                   help="the fixtures folder (weights/, datasets/, images/)")
    p.add_argument("--pipeline", type=Path, default=REPO / "pipelines" / "yolov5n_end2end.yaml")
    p.add_argument("--weights", help="model.weights override (default: <fixtures>/weights/yolov5n.pt; '' for none)")
    p.add_argument("--data", type=Path, help="evaluation dataset (default: <fixtures>/datasets/coco128)")
    p.add_argument("--max-images", type=int, help="evaluate on the first N images only")
    p.add_argument("--calib-data", type=Path, help="calibration images (default: --data)")
    p.add_argument("--calib-split", default="train2017", help="split of a YOLO calibration dataset")
    p.add_argument("--calib-num", type=int, default=32)
    p.add_argument("--calib-method", help="calibration method (default: the calibrate pass's)")
    p.add_argument("--activations", default="uint8", choices=["int8", "uint8"], help="quantize activation type")
    p.add_argument("--compare-images", type=Path, help="images of the compare stage (default: --data)")
    p.add_argument("--bench-image", type=Path, help="input of the benchmark (default: <fixtures>/images/bus.jpg)")
    p.add_argument("--bench-torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch model")
    p.add_argument("--threads", type=lambda s: [int(t) if t != "default" else None for t in s.split(",")],
                   default=[1], help="comma-separated thread counts to time (e.g. 1,2 or default)")
    p.add_argument("--iterations", type=int, default=50, help="timed inferences per configuration")
    p.add_argument("--max-drop", type=float, help="gate every evaluation at this mAP50-95 drop against FP32")
    p.add_argument("--workdir", type=Path, help="where the spec, store and artifacts go (default: a new temp dir)")
    p.add_argument("overrides", nargs="*", help="extra key.path=value overrides of the pipeline")
    args = p.parse_args(argv)
    args.data = args.data or args.fixtures / "datasets" / "coco128"
    weights = str(args.fixtures / "weights" / "yolov5n.pt") if args.weights is None else args.weights
    args.bench_image = args.bench_image or (args.fixtures / "images" / "bus.jpg")
    if not args.bench_image.is_file():
        args.bench_image = None

    base_cfg = yaml.safe_load(args.pipeline.read_text()) or {}
    overrides = list(args.overrides)
    if "weights" in (base_cfg.get("model") or {}):
        overrides.append(f"model.weights={weights or 'null'}")
    if "nms" in base_cfg:  # end-to-end models evaluated with validation thresholds, as the host-side ones
        overrides += ["nms.score_threshold=0.001", "nms.iou_threshold=0.6", "nms.max_detections=300"]
    stages, notes = plan_stages(args.pipeline, overrides, args)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="figures-"))
    work.mkdir(parents=True, exist_ok=True)
    name = f"figures_{base_cfg.get('name', args.pipeline.stem)}"
    spec_path = work / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({"_base_": [str(args.pipeline.resolve())], "name": name, "stages": stages},
                                        sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--store", str(work / "store"), "--artifacts", str(work / "artifacts")]
    print(f"spec: {spec_path}")
    for n in notes:
        print(f"note: {n}")

    run = [*common, "run", str(spec_path), *overrides, "--no-progress"]
    code, cold, log = run_cli(run, env)
    print(log)
    if code not in (0, 1):  # 1: a gate failed, the figures are published all the same
        print(f"cold run failed (exit {code})")
        return code
    code2, cached, log2 = run_cli(run, env)
    stage_lines = [line for line in log2.splitlines() if line.startswith("[")]
    hits = sum("): cached in" in line for line in stage_lines)
    versions = [m.parent for m in (work / "artifacts" / name).glob("*/manifest.json") if m.parent.name != "latest"]
    version = max(versions, key=lambda v: v.stat().st_mtime)
    run_cli([*common, "report", str(version)], env)
    print()
    print_table(version)
    print()
    print(f"wall time: cold run {cold:.1f} s, cached re-run {cached:.1f} s ({hits}/{len(stage_lines)} stages "
          f"cached; exit status {code}/{code2})")
    print(f"report: {version / 'report.html'}")
    return code2


if __name__ == "__main__":
    sys.exit(main())
