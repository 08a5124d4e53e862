"""INT8 accuracy and latency of a YOLOv5 checkpoint: MinMax, Entropy and Percentile Q/DQ models, NNCF, FP32.

    python bench/int8_accuracy.py --weights ../shared/fixtures/weights/yolov5n.pt \\
        --data ../shared/fixtures/datasets/coco128

Builds, through the pipeline manager (cached in ``--store``):

* the FP32 network body (load -> truncate_head -> export_onnx -> simplify);
* for each calibration method, its table (``calibrate``, on ``--num`` images drawn with ``--seed``) and
  the INT8 Q/DQ body (``quantize``, with the settings of pipelines/yolov5n_int8.yaml);
* OpenVINO's own route for comparison: an INT8 IR from NNCF (mixed preset, as the YOLOv5 repository's
  export) calibrated on the same images;
* the baseline the issue quotes: ONNX Runtime's plain ``quantize_static`` (Conv only, per channel).

Every model is evaluated on all images of ``--data`` with the project's COCO evaluator
(:mod:`convert.evaluation`, pycocotools; YOLOv5 ``val.py`` settings) on ONNX Runtime and on OpenVINO,
and timed on one image. Q/DQ models go to OpenVINO through :func:`convert.ovutil.openvino_fold_qdq`
(see there: OpenVINO 2026.4 mis-runs the unfolded form of signed INT8 Q/DQ next to a Concat).

mAP on a 128-image set is noisy: a model perturbed as little as 1% of every weight moves by several
tenths of a point either way. ``--seeds`` repeats the INT8 builds over other calibration samples to
show the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.base import Artifact
from convert.evaluation import evaluate_model, load_dataset
from convert.manager import Manager
from convert.preprocess import list_images, load_image, preprocess
from convert.runtime import OpenVINORunner, OrtRunner, infer
from convert.spec import load_spec
from convert.store import Store

METHODS = ("minmax", "entropy", "percentile")


def spec_text(args, seeds: list[int]) -> str:
    """The bench's spec: the FP32 body, one calibrate + quantize pair per method and seed, NNCF."""
    lines = [
        "name: int8_accuracy_bench",
        "stages:",
        (f"  load: {{with: {{source: yolov5, weights: {json.dumps(str(args.weights))}, "
         f"input_size: [{args.imgsz}, {args.imgsz}]}}}}"),
        "  truncate_head: {}",
        "  export_onnx: {with: {opset: 17, dynamic_batch: true}}",
        "  simplify: {}",
    ]
    for seed in seeds:
        for method in args.methods:
            tag = f"{method}_s{seed}"
            lines += [
                f"  calibrate_{tag}:",
                "    pass: calibrate",
                "    inputs: {model: simplify}",
                (f"    with: {{data: {json.dumps(str(args.calib))}, num: {args.num}, seed: {seed}, "
                 f"method: {method}, percentile: {args.percentile}}}"),
                f"  quantize_{tag}:",
                "    pass: quantize",
                f"    inputs: {{model: simplify, table: calibrate_{tag}}}",
                (f"    with: {{activation_type: {args.activation_type}, keep_head_float: true, "
                 f"keep_float_sensitive: {args.keep_float_sensitive}, bias_correction: true}}"),
            ]
    if not args.skip_nncf:
        lines += [
            "  nncf:",
            "    pass: openvino",
            "    inputs: {model: simplify}",
            (f"    with: {{quantize: nncf, preset: mixed, calib: {{num: {args.num}, "
             f"data: {json.dumps(str(args.calib))}, seed: {seeds[0]}}}}}"),
        ]
    return "\n".join(lines) + "\n"


def build(text: str, store_dir: Path, name: str = "int8_accuracy_bench") -> dict[str, Artifact]:
    """Runs a bench spec (its YAML text) in ``store_dir`` without publishing; returns stage name -> artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / f"{name}.yaml"
        spec_path.write_text(text)
        store = Store(store_dir)
        manager = Manager(load_spec(spec_path), store, Path(tmp) / "artifacts",
                          log=lambda line: print(line, file=sys.stderr), progress=False)
        report = manager.run(until=manager.spec.stages[-1].name)
        return {s.name: store.artifact(s.digest) for s in report.stages}


def quantize_static_baseline(body: Artifact, args, seed: int, out: Path) -> Path:
    """ONNX Runtime's quantize_static as a user would call it: Conv only, per channel, MinMax, QDQ."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    from calib.calibrators import BatchReader
    from calib.data import CalibrationSet, batches, resolve_source

    cset = CalibrationSet(resolve_source(args.calib), args.num, seed)
    reader = BatchReader(body.meta["input"]["name"], batches(cset.samples(), body.meta["preprocess"], 1))
    path = out / "quantize_static.onnx"
    quantize_static(str(body.file), str(path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True)
    return path


def openvino_ir(qdq_onnx: Path, out: Path) -> Path:
    """An OpenVINO IR of a Q/DQ ONNX, its Q/DQ pairs folded (see convert.ovutil.openvino_fold_qdq)."""
    import openvino as ov

    from convert.ovutil import openvino_fold_qdq

    model = ov.Core().read_model(str(qdq_onnx))
    openvino_fold_qdq(model)
    path = out / f"{qdq_onnx.parent.name}_{qdq_onnx.stem}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def runner(backend: str, path: Path, threads: int):
    return OrtRunner(path, threads) if backend == "onnxruntime" else OpenVINORunner(path, threads)


def latency_ms(backend: str, path: Path, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float:
    """Median wall time of one inference."""
    with runner(backend, path, threads) as r:
        for _ in range(warmup):
            infer(r, x)
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            infer(r, x)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="YOLOv5 .pt checkpoint")
    ap.add_argument("--data", type=Path, required=True, help="YOLO dataset (images + labels) evaluated in full")
    ap.add_argument("--calib", type=Path, help="calibration source (default: --data)")
    ap.add_argument("--num", type=int, default=64, help="calibration images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="more calibration seeds, for the spread")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=("minmax", "entropy", "percentile", "mse"))
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--activation-type", default="int8", choices=("int8", "uint8"))
    ap.add_argument("--keep-float-sensitive", type=int, default=1)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2, help="inference threads of every runner")
    ap.add_argument("--iterations", type=int, default=20, help="timed inferences per model and back-end")
    ap.add_argument("--skip-nncf", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true", help="skip ONNX Runtime's plain quantize_static")
    ap.add_argument("--store", type=Path, default=Path(".convert/store"), help="artifact store (cache)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    args.calib = args.calib or args.data
    seeds = [args.seed] + [s for s in args.seeds if s != args.seed]

    arts = build(spec_text(args, seeds), args.store)
    body = arts["simplify"]
    meta = body.meta
    dataset = load_dataset(args.data, meta["names"])
    x, _ = preprocess(load_image(list_images(args.data)[0]), meta["preprocess"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models: list[tuple[str, dict[str, Path]]] = [("FP32 ONNX", {"onnxruntime": body.file, "openvino": body.file})]
        for seed in seeds:
            for method in args.methods:
                q = arts[f"quantize_{method}_s{seed}"].file
                label = f"INT8 Q/DQ {method}" + (f" (seed {seed})" if seed != args.seed else "")
                models.append((label, {"onnxruntime": q, "openvino": openvino_ir(q, tmp)}))
        if not args.skip_nncf:
            models.append(("NNCF mixed (OpenVINO IR)", {"openvino": arts["nncf"].file}))
        if not args.skip_baseline:
            q = quantize_static_baseline(body, args, args.seed, tmp)
            models.append(("ORT quantize_static (plain)", {"onnxruntime": q, "openvino": openvino_ir(q, tmp)}))
        for label, paths in models:
            row = {"model": label}
            for backend, path in paths.items():
                figures = evaluate_model(runner(backend, path, args.threads), dataset, meta)
                row[backend] = {"mAP50-95": figures["mAP50-95"], "mAP50": figures["mAP50"],
                                "ms": latency_ms(backend, path, x, args.threads, 3, args.iterations)}
                print(f"{label} @ {backend}: mAP50-95 {figures['mAP50-95']:.4f}, {row[backend]['ms']:.1f} ms",
                      file=sys.stderr)
            rows.append(row)

    ref = rows[0]
    print(f"\nINT8 accuracy on {args.data} ({len(dataset)} images; COCO mAP by convert.evaluation / pycocotools, "
          f"conf 0.001, IoU 0.6), calibration: {args.num} images of {args.calib}, seed {args.seed}; "
          f"latency: median of {args.iterations} runs, batch 1, {args.imgsz}x{args.imgsz}, {args.threads} threads")
    header = f"{'model':<34}{'ORT mAP50-95':>13}{'drop':>7}{'ms':>8}{'OV mAP50-95':>13}{'drop':>7}{'ms':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for backend in ("onnxruntime", "openvino"):
            if backend in row:
                m = row[backend]["mAP50-95"]
                drop = (ref[backend]["mAP50-95"] - m) * 100 if row is not ref else None
                cells.append(f"{m:>13.4f}{'' if drop is None else f'{drop:+.2f}'.rjust(7)}{row[backend]['ms']:>8.1f}")
            else:
                cells.append(f"{'-':>13}{'':>7}{'':>8}")
        print(f"{row['model']:<34}{''.join(cells)}")
    print("drop: mAP50-95 points below FP32 on the same back-end (negative: above).")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
