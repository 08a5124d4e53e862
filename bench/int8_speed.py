"""INT8 speed against FP32 on every back-end, accuracy alongside, and the cost of in-graph NMS: one interleaved run.

    python bench/int8_speed.py --weights ../shared/fixtures/weights/yolov5n.pt \\
        --data ../shared/fixtures/datasets/coco128 [--seeds 1 2 3 4]

Builds, through the pipeline manager (cached in ``--store``), the figures of issue 14's "Done when":

* FP32 network body (load -> truncate_head -> export_onnx -> simplify), a MinMax table on ``--num``
  images (seed ``--seed``) and three INT8 Q/DQ bodies with the settings of pipelines/yolov5n_int8.yaml:
  ``target: tensorrt`` (int8 activations), ``target: onnxruntime`` (the placement ONNX Runtime
  fuses into QLinearConv etc.) and ``target: openvino`` (TensorRT's placement, uint8 activations);
* OpenVINO IRs (the openvino pass) of the FP32 body and of every Q/DQ body, and NNCF's INT8 IR
  (mixed preset, as the YOLOv5 repository's export) calibrated on the same images;
* end-to-end FP32 models (postprocess pass, K = ``--k``, score 0.25) without a pre-NMS top-k and with
  a pre-NMS top-k of 1000.

Latency: every (model, back-end) pair is loaded at once and run in rounds, one inference each per
round (interleaved, so background load hits all alike), batch 1, ``--threads`` threads; the median
wall time and the median process CPU time per inference are printed (CPU time is less sensitive to
other processes on the machine). OpenVINO runs with the f32 inference precision hint
(:class:`convert.runtime.OpenVINORunner`). NMS cost: end-to-end minus raw-head latency, on
``--nms-images`` images. Accuracy: COCO mAP50-95 on every image of ``--data`` with the project's
evaluator (convert.evaluation; YOLOv5 val settings). ``--seeds``: the INT8 drop over more calibration
subsets (steadiness).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench scripts

from int8_accuracy import build  # noqa: E402  (runs a bench spec without publishing)

from convert.evaluation import evaluate_model, load_dataset  # noqa: E402
from convert.preprocess import list_images, load_image, preprocess  # noqa: E402
from convert.runtime import OpenVINORunner, OrtRunner, infer  # noqa: E402

PRE_TOP_K = 1000  # at score 0.25 at most 246 yolov5n candidates pass on coco128: no detection changes
QUANTIZE = "keep_head_float: true, keep_float_sensitive: 1, bias_correction: true"
TARGETS = {"tensorrt": "activation_type: int8", "onnxruntime": "target: onnxruntime", "openvino": "target: openvino"}


def spec_text(args, seeds: list[int]) -> str:
    q = lambda v: json.dumps(str(v))
    lines = ["name: int8_speed_bench", "stages:",
             f"  load: {{with: {{source: yolov5, weights: {q(args.weights)}, input_size: [640, 640]}}}}",
             "  truncate_head: {}", "  export_onnx: {with: {opset: 17, dynamic_batch: true}}", "  simplify: {}",
             "  ov_fp32: {pass: openvino, inputs: {model: simplify}}",
             (f"  nncf: {{pass: openvino, inputs: {{model: simplify}}, with: {{quantize: nncf, preset: mixed, "
              f"calib: {{num: {args.num}, data: {q(args.data)}, seed: {args.seed}}}}}}}")]
    for seed in seeds:
        lines.append(f"  calibrate_s{seed}: {{pass: calibrate, inputs: {{model: simplify}}, "
                     f"with: {{data: {q(args.data)}, num: {args.num}, seed: {seed}, method: minmax}}}}")
        for target, extra in TARGETS.items():
            lines.append(f"  q_{target}_s{seed}: {{pass: quantize, "
                         f"inputs: {{model: simplify, table: calibrate_s{seed}}}, "
                         f"with: {{{extra}, {QUANTIZE}}}}}")
            lines.append(f"  ov_{target}_s{seed}: {{pass: openvino, inputs: {{model: q_{target}_s{seed}}}}}")
    for top in ("null", PRE_TOP_K):
        lines.append(f"  e2e_top{top}: {{pass: postprocess, inputs: {{model: simplify}}, "
                     f"with: {{score_threshold: 0.25, "
                     f"iou_threshold: 0.45, max_detections: {args.k}, pre_top_k: {top}}}}}")
    return "\n".join(lines) + "\n"


def make_runner(backend, art, threads):
    if backend == "onnxruntime":
        return OrtRunner(art.file, threads)
    return OpenVINORunner(art.file, threads, output_names=art.meta.get("outputs"))


def interleaved(pairs: dict, inputs: list, rounds: int, threads: int) -> dict:
    """(label, backend) -> (median wall ms, median CPU ms) per inference over ``rounds`` x ``inputs``."""
    runners = {key: make_runner(key[1], art, threads) for key, art in pairs.items()}
    for r in runners.values():
        r.activate()
    wall = {key: [] for key in runners}
    cpu = {key: [] for key in runners}
    try:
        for x in inputs:
            for r in runners.values():
                infer(r, x)  # warm-up
        for _ in range(rounds):
            for x in inputs:
                for key, r in runners.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    infer(r, x)
                    wall[key].append((time.perf_counter() - t0) * 1e3)
                    cpu[key].append((time.process_time() - c0) * 1e3)
    finally:
        for r in runners.values():
            r.deactivate()
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key])) for key in runners}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="YOLO dataset: calibration source and evaluation set")
    ap.add_argument("--num", type=int, default=64, help="calibration images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="more calibration seeds (steadiness)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="timed inferences per model (latency)")
    ap.add_argument("--k", type=int, default=100, help="K of the end-to-end models")
    ap.add_argument("--nms-images", type=int, default=8, help="images the NMS cost is timed on")
    ap.add_argument("--skip-eval", action="store_true", help="latency only")
    ap.add_argument("--store", type=Path, default=Path(".convert/store"))
    args = ap.parse_args()
    args.weights, args.data = args.weights.resolve(), args.data.resolve()
    seeds = [args.seed] + [s for s in args.seeds if s != args.seed]
    arts = build(spec_text(args, seeds), args.store, "int8_speed_bench")
    s0 = args.seed
    models = {"FP32": {"onnxruntime": arts["simplify"], "openvino": arts["ov_fp32"]},
              **{f"INT8 target {t}": {"onnxruntime": arts[f"q_{t}_s{s0}"], "openvino": arts[f"ov_{t}_s{s0}"]}
                 for t in TARGETS},
              "NNCF INT8 (mixed)": {"openvino": arts["nncf"]}}
    meta = arts["simplify"].meta
    images = list_images(args.data)
    one = [preprocess(load_image(images[0]), meta["preprocess"])[0]]
    load0 = os.getloadavg()
    pairs = {(label, be): art for label, per in models.items() for be, art in per.items()}
    speed = interleaved(pairs, one, args.rounds, args.threads)
    nms_in = [preprocess(load_image(p), meta["preprocess"])[0] for p in images[:args.nms_images]]
    nms_models = {"raw head": arts["simplify"], "e2e no top-k": arts["e2e_topnull"],
                  f"e2e top-k {PRE_TOP_K}": arts[f"e2e_top{PRE_TOP_K}"]}
    nms = interleaved({(m, be): a for m, a in nms_models.items() for be in ("onnxruntime", "openvino")},
                      nms_in, max(3, args.rounds // 4), args.threads)
    load1 = os.getloadavg()
    acc: dict = {}
    if not args.skip_eval:
        dataset = load_dataset(args.data, meta["names"])
        for (label, be), art in pairs.items():
            acc[label, be] = evaluate_model(make_runner(be, art, args.threads), dataset, meta)["mAP50-95"]
            print(f"{label} @ {be}: mAP50-95 {acc[label, be]:.4f}", file=sys.stderr)
        for seed in seeds[1:]:
            for target in TARGETS:
                for be, name in (("onnxruntime", f"q_{target}_s{seed}"), ("openvino", f"ov_{target}_s{seed}")):
                    acc[f"INT8 target {target} seed {seed}", be] = evaluate_model(
                        make_runner(be, arts[name], args.threads), dataset, meta)["mAP50-95"]
        # detections of the end-to-end models against host-side post-processing of the raw head's maps
        from convert import heads
        from convert import postprocess as pp

        agree = {m: 0 for m in nms_models if m != "raw head"}
        head = meta["head"]
        with OrtRunner(arts["simplify"].file, args.threads) as raw, \
                OrtRunner(arts["e2e_topnull"].file, args.threads) as a, \
                OrtRunner(arts[f"e2e_top{PRE_TOP_K}"].file, args.threads) as b:
            for p in images:
                x = preprocess(load_image(p), meta["preprocess"])[0]
                maps = infer(raw, x)
                for m, r, top in ((list(agree)[0], a, None), (list(agree)[1], b, PRE_TOP_K)):
                    host = heads.postprocess([maps[n] for n in head["outputs"]], head,
                                             pp.NMSSettings(0.25, 0.45, args.k, pre_top_k=top))
                    agree[m] += pp.match(host.image(0), pp.Detections.from_outputs(infer(r, x)).image(0)).same

    import openvino as ov

    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    print(f"\nyolov5n 640x640, batch 1, {args.threads} threads, {args.rounds} interleaved rounds; OpenVINO inference "
          f"precision hint f32 (this CPU's OpenVINO default: {default}); load average before "
          f"{load0[0]:.2f} / after {load1[0]:.2f}; calibration MinMax, {args.num} images of {args.data}, seed {s0}")
    print(f"{'model':<26}{'ORT ms':>8}{'cpu':>7}{'x FP32':>8}{'mAP':>8}{'drop':>7}"
          f"{'OV ms':>9}{'cpu':>7}{'x FP32':>8}{'x NNCF':>8}{'mAP':>8}{'drop':>7}")
    for label, per in models.items():
        cells = []
        for be in ("onnxruntime", "openvino"):
            if be not in per:
                cells.append(f"{'-':>8}{'':>7}{'':>8}" + ("" if be == "onnxruntime" else f"{'':>8}") + f"{'':>15}")
                continue
            wall, cpu = speed[label, be]
            ratio = speed["FP32", be][0] / wall
            cell = f"{wall:>8.2f}{cpu:>7.1f}{ratio:>7.2f}x"
            if be == "openvino":
                cell = f" {cell}{wall / speed['NNCF INT8 (mixed)', 'openvino'][0]:>7.2f}x"
            if acc:
                drop = (acc["FP32", be] - acc[label, be]) * 100
                cell += f"{acc[label, be]:>8.4f}{drop:>+7.2f}"
            cells.append(cell)
        print(f"{label:<26}{''.join(cells)}")
    print("x FP32: FP32 latency / this latency (speed-up); x NNCF: this latency / NNCF's; drop: mAP50-95 points "
          "below FP32 on the same back-end")
    if len(seeds) > 1 and acc:
        print(f"\nsteadiness, calibration seeds {seeds}: mAP50-95 drop (points) per seed")
        for target in TARGETS:
            for be in ("onnxruntime", "openvino"):
                labels = [f"INT8 target {target}"] + [f"INT8 target {target} seed {s}" for s in seeds[1:]]
                drops = [(acc["FP32", be] - acc[lab, be]) * 100 for lab in labels]
                print(f"  {target:<12} @ {be:<12} " + " ".join(f"{d:+.2f}" for d in drops)
                      + f"   worst {max(drops):+.2f} mean {np.mean(drops):+.2f}")
    print(f"\nin-graph NMS (score 0.25, IoU 0.45, K={args.k}), {len(nms_in)} images: end-to-end minus raw-head "
          "median latency")
    for m in nms_models:
        row = []
        for be in ("onnxruntime", "openvino"):
            wall, cpu = nms[m, be]
            base, base_cpu = nms["raw head", be]
            row.append(f"{be} {wall:7.2f} ms ({wall - base:+.2f}; cpu {cpu - base_cpu:+.2f})")
        print(f"  {m:<18} " + "   ".join(row))
    if acc:
        for m, n in agree.items():
            print(f"  {m}: detections equal to host-side post-processing of the raw maps (convert.postprocess, "
                  f"boxes within 1e-3 px) on {n} of {len(images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
