"""mmyolo YOLOv5-n: our end-to-end ONNX against mmyolo's own predict, mAP, and INT8 drop (issue 10's figures).

Runs, on coco128 with mmyolo's test settings (score 0.001, NMS IoU 0.65, 300 detections, square letterbox):

1. mmyolo's own PyTorch ``inference_detector`` (its pipeline, its post-processing) on every image;
2. this project's ``load (source: mmyolo) -> truncate_head -> export_onnx -> postprocess`` on ONNX Runtime
   and OpenVINO: the share of mmyolo detections with score > 0.5 matched (same class, IoU > 0.9) and the
   largest box difference of matched pairs;
3. ``evaluate`` of the FP32 truncated model (host-side post-processing) against mmyolo's 0.348;
4. ``calibrate`` (minmax, 64 images) + ``quantize`` (INT8 Q/DQ) + ``evaluate``: the drop against FP32.

Needs the mmyolo extra. Usage (from the repository root):

    python bench/mmyolo_agreement.py [--weights PATH] [--data DIR] [--max-images N] [--keep-float-sensitive 1 2]

Measured here (2 cores, CPU; 776 s): ONNX Runtime and OpenVINO f32 280/280 matched at score > 0.5 (0.000 px),
2951/2951 at > 0.05, 29671/29676 overall; OpenVINO's default bf16 278/280; PIL resize 279/280; mAP50-95
0.3481 (mmyolo 0.348); INT8 0.3451 (drop 0.30 points; keep_float_sensitive 2: 0.3433).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIX = ROOT.parent / "shared" / "fixtures"
if not FIX.exists():
    FIX = Path("/work/shared/fixtures")
CONFIG = "yolov5_n-v61_syncbn_fast_8xb16-300e_coco"


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box with many (x1y1x2y2)."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=FIX / "weights" / "yolov5n_mmyolo.pth")
    ap.add_argument("--data", type=Path, default=FIX / "datasets" / "coco128")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--keep-float-sensitive", type=int, nargs="+", default=[1],
                    help="quantize.keep_float_sensitive values to measure (the pipeline uses 1)")
    args = ap.parse_args()

    import torch

    from convert import postprocess as pp
    from convert.base import Artifact, RunContext
    from convert.models import mmyolo
    from convert.models.checkpoint import load_state_dict_file
    from convert.preprocess import list_images, load_image, preprocess
    from passes.export_onnx import ExportOnnx, ExportOnnxConfig
    from passes.load import Load, LoadConfig
    from passes.postprocess import Postprocess, PostprocessConfig
    from passes.truncate_head import TruncateHead, TruncateHeadConfig

    tmp = Path(tempfile.mkdtemp(prefix="mmyolo_bench_"))

    def step(p, name, **inputs):
        out = tmp / name
        out.mkdir()
        res = p.run(inputs, out, RunContext(name, progress=False))
        return Artifact(res.kind, out, res.main, res.meta, name), res

    images = list_images(args.data / "images") if (args.data / "images").exists() else list_images(args.data)
    images = images[:args.max_images] if args.max_images else images
    t0 = time.time()
    # 1. mmyolo itself
    cfg = mmyolo.read_config(CONFIG)
    from mmdet.apis import inference_detector, init_detector

    ref = init_detector(cfg, None, device="cpu")
    ref.load_state_dict(load_state_dict_file(args.weights), strict=True)  # safe unpickler, not torch.load
    ref.eval()
    settings = mmyolo.test_settings(cfg.model.to_dict())
    want = []
    with torch.no_grad():
        for path in images:
            r = inference_detector(ref, str(path)).pred_instances
            want.append((r.bboxes.numpy(), r.scores.numpy(), r.labels.numpy()))
    t_ref = time.time() - t0

    # 2. ours, end to end
    loaded, _ = step(Load(LoadConfig(source="mmyolo", arch=CONFIG, weights=args.weights)), "load")
    cut, _ = step(TruncateHead(TruncateHeadConfig()), "cut", model=loaded)
    body, _ = step(ExportOnnx(ExportOnnxConfig(opset=17)), "onnx", model=cut)
    e2e, _ = step(Postprocess(PostprocessConfig(**settings)), "e2e", model=body)
    import openvino as ov

    from convert.runtime import infer, load_runner

    runners = {"onnxruntime": load_runner(e2e, "onnxruntime"), "openvino": load_runner(e2e, "openvino")}
    for r in runners.values():
        r.activate()
    core = ov.Core()
    ov_default = core.compile_model(str(e2e.file), "CPU")  # no INFERENCE_PRECISION_HINT: the CPU's default
    default_precision = ov_default.get_property("INFERENCE_PRECISION_HINT")
    label_default = f"openvino, CPU default precision ({default_precision})"
    label_pil = "onnxruntime, PIL bilinear resize instead of the config's cv2 area"
    pre_pil = {**e2e.meta["preprocess"], "interpolation": "bilinear"}
    levels = (0.5, 0.05, 0.001)
    # per back-end: detections, and per score level [matched, wanted]; largest box difference (> 0.5)
    stats = {k: {"count": 0, "diff": 0.0, **{t: [0, 0] for t in levels}}
             for k in [*runners, label_default, label_pil]}
    for path, (wb, ws, wl) in zip(images, want):
        img = load_image(path)
        x, tf = preprocess(img, e2e.meta["preprocess"])
        outs = {k: (infer(r, x), tf) for k, r in runners.items()}
        res = ov_default(x)
        outs[label_default] = ({o.get_any_name(): res[o] for o in ov_default.outputs}, tf)
        x_pil, tf_pil = preprocess(img, pre_pil)
        outs[label_pil] = (infer(runners["onnxruntime"], x_pil), tf_pil)
        for backend, (o, t) in outs.items():
            got = pp.Detections.from_outputs(o).image(0).to_original(t)
            s = stats[backend]
            s["count"] += len(got)
            for level in levels:
                used = np.zeros(len(got), bool)
                for box, score, label in zip(wb, ws, wl):
                    if score <= level:
                        continue
                    s[level][1] += 1
                    ok = (~used) & (got.classes == label)
                    if not ok.any():
                        continue
                    ious = np.where(ok, iou(box, got.boxes), 0)
                    j = int(ious.argmax())
                    if ious[j] > 0.9:
                        used[j] = True
                        s[level][0] += 1
                        if level == 0.5:
                            s["diff"] = max(s["diff"], float(np.abs(got.boxes[j] - box).max()))
    for r in runners.values():
        r.deactivate()
    n_ref = sum(len(w[1]) for w in want)
    print(f"mmyolo {CONFIG} + {args.weights.name} on {len(images)} images of {args.data.name} "
          f"(score {settings['score_threshold']}, NMS IoU {settings['iou_threshold']}, "
          f"{settings['max_detections']} detections; mmyolo predict {t_ref:.0f} s)")
    print(f"  mmyolo detections: {n_ref}")
    for backend, s in stats.items():
        m, w = s[0.5]
        print(f"  end-to-end ONNX on {backend}: {s['count']} detections; mmyolo detections with score > 0.5 matched "
              f"(same class, IoU > 0.9): {m}/{w} = {m / max(w, 1):.4f} (done when > 0.5); largest box difference "
              f"{s['diff']:.3f} px; score > 0.05: {s[0.05][0]}/{s[0.05][1]}, all: {s[0.001][0]}/{s[0.001][1]}")

    # 3. mAP of the FP32 truncated model (host-side post-processing at mmyolo's settings)
    from passes.evaluate import Evaluate, EvaluateConfig

    ev = dict(data=args.data, conf=settings["score_threshold"], iou=settings["iou_threshold"],
              max_det=settings["max_detections"], max_images=args.max_images)
    _, r32 = step(Evaluate(EvaluateConfig(**ev, label="fp32")), "eval_fp32", model=body)
    m32 = r32.summary["mAP50-95"]
    print(f"  our evaluate, FP32 truncated ONNX: mAP50-95 {m32:.4f}, mAP50 {r32.summary.get('mAP50', float('nan')):.4f}"
          f" (mmyolo's own: 0.348; difference {abs(m32 - 0.348) * 100:.2f} points, done when <= 20)")
    if args.skip_int8:
        return
    # 4. INT8 drop
    from passes.calibrate import Calibrate, CalibrateConfig
    from passes.quantize import Quantize, QuantizeConfig

    table, _ = step(Calibrate(CalibrateConfig(data=args.data, num=64, method="minmax")), "calib", model=body)
    for keep in args.keep_float_sensitive:
        q, _ = step(Quantize(QuantizeConfig(activation_type="int8", keep_head_float=True, keep_float_sensitive=keep,
                                            bias_correction=True)), f"quant{keep}", model=body, table=table)
        _, r8 = step(Evaluate(EvaluateConfig(**ev, label="int8")), f"eval_int8_{keep}", model=q)
        m8 = r8.summary["mAP50-95"]
        print(f"  truncated-head INT8 (Q/DQ, minmax, 64 images, keep_float_sensitive {keep}): mAP50-95 {m8:.4f}, "
              f"drop {(m32 - m8) * 100:.2f} points against FP32 (done when <= 0.3)")
    print(f"  total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
