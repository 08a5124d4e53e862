"""What does in-graph decode + NMS cost? Milliseconds per image, ONNX Runtime and OpenVINO.

Builds the truncated-head ONNX model of ``pipelines/yolov5n_end2end.yaml`` (stages up to
``simplify``), appends decode + ONNX NMS (:func:`convert.graph.end2end.make_end2end`) with
``K = 100`` and ``K = 300`` detections, and times every model on real images (interleaved,
median of ``--repeats`` runs per image, mean over images). The cost of post-processing is
the end-to-end model's time minus the truncated model's, per image. For comparison, the
host-side numpy post-processing of the truncated model's outputs is timed too.

Two score thresholds are measured: 0.25 (deployment) and 0.001 (mAP evaluation, many more
candidates reach NMS), each without a pre-NMS top-k and with one (``--pre-top-k``, 1000: at score 0.25
at most 246 yolov5n candidates pass on coco128). The detections of every model with a pre-NMS top-k
are compared, image by image, with those of the same thresholds without it
(``changed``: images whose detections differ; ``same`` means every output equal), and the detections
of every end-to-end model with the host-side post-processing of the truncated model's maps under the
same settings (``vs host``: images where they differ, :func:`convert.postprocess.match`). ``post ops``:
the ONNX Runtime profiler's kernel time of the appended decode + NMS nodes per image (free of the
noise of whole-model latency differences).
OpenVINO runs with the f32 inference precision hint (:class:`convert.runtime.OpenVINORunner`).

    python bench/nms_cost.py --weights ../shared/fixtures/weights/yolov5n.pt \\
        --images ../shared/fixtures/datasets/coco128/images/train2017 --max-images 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert import heads  # noqa: E402
from convert import postprocess as pp  # noqa: E402
from convert.base import Artifact  # noqa: E402
from convert.manager import Manager  # noqa: E402
from convert.preprocess import list_images, load_image, preprocess  # noqa: E402
from convert.runtime import cpu_info, infer, load_runner  # noqa: E402
from convert.spec import load_spec  # noqa: E402
from convert.store import Store  # noqa: E402


def truncated_model(args, work: Path) -> Artifact:
    """The simplified truncated-head ONNX artifact of the pipeline."""
    spec_path = work / "yolov5n_end2end.yaml"  # a copy: the manager writes its lockfile beside the spec
    spec_path.write_text((REPO / "pipelines" / "yolov5n_end2end.yaml").read_text())
    weights = "null" if args.weights is None else str(Path(args.weights).resolve())
    overrides = [f"model.weights={weights}", f"model.input_size=[{args.size},{args.size}]"]
    if args.arch:
        overrides.append(f"stages.load.with.arch={args.arch}")
    report = Manager(load_spec(spec_path, overrides), Store(work / "store"), work / "artifacts",
                     progress=False).run(until="simplify")
    digest = {s.name: s.digest for s in report.stages}["simplify"]
    return Store(work / "store").artifact(digest)  # the digest is known: no need to hash the tree again


def end2end(trunc: Artifact, settings: pp.NMSSettings, folder: Path) -> Artifact:
    import onnx

    from convert.graph.end2end import make_end2end

    folder.mkdir(parents=True)
    model = make_end2end(onnx.load(str(trunc.file)), trunc.meta["head"], settings)
    onnx.save(model, str(folder / "model.onnx"))
    meta = {**trunc.meta, "truncated": False, "end2end": True, "outputs": [o.name for o in model.graph.output]}
    return Artifact("onnx", folder, "model.onnx", meta, folder.name)


def post_op_ms(path: Path, inputs: list, threads: int) -> float:
    """Milliseconds per image ONNX Runtime's profiler records in the appended decode + NMS nodes.

    The nodes the postprocess rewrite adds are named ``postprocess/...``; their kernel times,
    summed, are the post-processing cost free of the run-to-run noise of whole-model latencies.
    """
    import json

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.log_severity_level = 3
    so.profile_file_prefix = str(path.parent / "profile")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: inputs[0]})  # warm-up: the first run allocates
    for x in inputs:
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0  # skip the warm-up run's nodes
    events = [e for e in events if e["ts"] >= start]
    total = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["name"].startswith("postprocess"))
    return total / len(inputs) / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="YOLOv5 checkpoint (.pt); without it, --arch with random weights")
    ap.add_argument("--arch", help="built-in architecture when no checkpoint is given")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--size", type=int, default=640, help="network input size (square)")
    ap.add_argument("--max-images", type=int, default=16, help="images timed")
    ap.add_argument("--repeats", type=int, default=5, help="runs per image and model (median)")
    ap.add_argument("--threads", type=int, default=1, help="threads of each runtime")
    ap.add_argument("--iou", type=float, default=0.45, help="IoU threshold")
    ap.add_argument("--pre-top-k", type=int, nargs="*", default=[1000],
                    help="pre-NMS top-k values measured besides none")
    ap.add_argument("--ks", type=int, nargs="+", default=[100, 300], help="values of K (max detections)")
    args = ap.parse_args()
    if args.weights is None and args.arch is None:
        ap.error("give --weights or --arch")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trunc = truncated_model(args, work)
        head = trunc.meta["head"]
        configs = [(score, k, top) for score in (0.25, 0.001) for k in args.ks for top in [None, *args.pre_top_k]]
        models = {"truncated (no NMS)": trunc}
        settings, baseline = {}, {}
        for score, k, top in configs:
            name = f"e2e score>{score} K={k}" + (f" top{top}" if top else "")
            settings[name] = pp.NMSSettings(score, args.iou, k, pre_top_k=top)
            baseline[name] = f"e2e score>{score} K={k}"
            models[name] = end2end(trunc, settings[name], work / f"e2e_{score}_{k}_{top}")
        images = list_images(args.images)[:args.max_images]
        inputs = [preprocess(load_image(p), trunc.meta["preprocess"])[0] for p in images]
        times = {(m, be): [] for m in models for be in ("onnxruntime", "openvino")}
        host = {name: [] for name in settings}
        dets = {name: 0 for name in settings}
        changed = {name: 0 for name in settings}
        vs_host = {name: 0 for name in settings}
        for backend in ("onnxruntime", "openvino"):
            runners = {m: load_runner(art, backend=backend, threads=args.threads) for m, art in models.items()}
            for r in runners.values():
                r.activate()
            try:
                for x in inputs:
                    for r in runners.values():  # warm-up, and the first run's allocations
                        infer(r, x)
                    per = {m: [] for m in models}
                    first = {}
                    for _ in range(args.repeats):
                        for m, r in runners.items():
                            out = infer(r, x)
                            per[m].append(r.last_inference_time() * 1e3)
                            if backend == "onnxruntime" and m in settings and len(per[m]) == 1:
                                dets[m] += int(out["num_dets"][0, 0])
                                first[m] = out
                    for m in first:
                        ref = first[baseline[m]]
                        changed[m] += int(any(not np.array_equal(first[m][o], ref[o]) for o in ref))
                    for m in models:
                        times[m, backend].append(statistics.median(per[m]))
                    if backend == "onnxruntime":
                        maps = infer(runners["truncated (no NMS)"], x)
                        for name, s in settings.items():
                            runs = []
                            for _ in range(args.repeats):
                                t0 = time.perf_counter()
                                want = heads.postprocess([maps[n] for n in head["outputs"]], head, s)
                                runs.append((time.perf_counter() - t0) * 1e3)
                            host[name].append(statistics.median(runs))
                            got = pp.Detections.from_outputs(first[name])
                            vs_host[name] += int(not pp.match(want.image(0), got.image(0)).same)
            finally:
                for r in runners.values():
                    r.deactivate()

        post_ms = {name: post_op_ms(models[name].file, inputs, args.threads) for name in settings}

    cpu = cpu_info()
    print(f"{len(images)} images, {args.size}x{args.size}, {args.threads} thread(s), median of {args.repeats} runs "
          f"per image; CPU: {cpu.get('model', '?')}; IoU {args.iou}; OpenVINO inference precision hint f32; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    base = {be: np.asarray(times["truncated (no NMS)", be]) for be in ("onnxruntime", "openvino")}
    print(f"{'model':<34} {'dets/img':>8} {'ORT ms':>8} {'+NMS':>7} {'post ops':>8} {'OV ms':>8} {'+NMS':>7} "
          f"{'host numpy ms':>14} {'changed':>8} {'vs host':>8}")
    for m in models:
        ort, ov = np.asarray(times[m, "onnxruntime"]), np.asarray(times[m, "openvino"])
        extra = m in settings
        print(f"{m:<34} {dets[m] / len(images) if extra else float('nan'):>8.1f} {ort.mean():>8.2f} "
              f"{(ort - base['onnxruntime']).mean() if extra else 0:>+7.2f} "
              f"{post_ms[m] if extra else float('nan'):>8.2f} {ov.mean():>8.2f} "
              f"{(ov - base['openvino']).mean() if extra else 0:>+7.2f} "
              f"{np.mean(host[m]) if extra else float('nan'):>14.2f} "
              f"{(changed[m] if settings[m].pre_top_k else '-') if extra else '':>8} "
              f"{vs_host[m] if extra else '':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
