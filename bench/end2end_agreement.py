"""Do the end-to-end ONNX model (decode + NMS in the graph) and the PyTorch reference find the same objects?

Builds ``pipelines/yolov5n_end2end.yaml`` (load -> truncate_head -> export_onnx -> simplify ->
postprocess) in a work directory, then compares, on every image:

* against the PyTorch reference (the torch model's decoded forward +
  :func:`convert.heads.reference.torch_reference`): the end-to-end ONNX model (ONNX
  NonMaxSuppression in the graph) in ONNX Runtime (``e2e@onnxruntime``) and OpenVINO
  (``e2e@openvino``), and the truncated ONNX model in ONNX Runtime + host-side numpy
  post-processing (``host@onnxruntime``). These include the runtimes' own float differences
  in the network;
* post-processing alone: each runtime's end-to-end model against host-side post-processing of
  the same runtime's truncated model (``e2e vs host@...``), i.e. on the same raw maps.

An image agrees when both sides have the same number of detections and these pair one to one
with the same class and every box coordinate (and keypoint x, y) within ``--tol`` pixels, in
original-image coordinates. Prints, per comparison, the images that agree, the detections
matched, and the largest difference seen.

    python bench/end2end_agreement.py --weights ../shared/fixtures/weights/yolov5n.pt \\
        --images ../shared/fixtures/datasets/coco128/images/train2017

A pose model, built-in architecture with random weights (low score threshold: untrained
scores are small), letterbox or plain resize:

    python bench/end2end_agreement.py --arch yolov5s-pose --images ../shared/fixtures/images \\
        --score 0.002 --size 320 --resize stretch
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert import heads  # noqa: E402
from convert import postprocess as pp  # noqa: E402
from convert.heads.reference import torch_reference  # noqa: E402
from convert.manager import Manager  # noqa: E402
from convert.preprocess import list_images, load_image, preprocess  # noqa: E402
from convert.runtime import infer, load_runner  # noqa: E402
from convert.spec import load_spec  # noqa: E402
from convert.store import Store  # noqa: E402


def build(args, work: Path):
    """Runs the pipeline; returns the load (torch), simplify (truncated ONNX) and postprocess artifacts."""
    weights = "null" if args.weights is None else str(Path(args.weights).resolve())
    overrides = [f"model.weights={weights}", f"model.input_size=[{args.size},{args.size}]",
                 f"stages.load.with.preprocess.resize={args.resize}", f"nms.score_threshold={args.score}",
                 f"nms.iou_threshold={args.iou}", f"nms.max_detections={args.max_det}",
                 f"stages.postprocess.with.class_agnostic={str(args.agnostic).lower()}"]
    if args.arch:
        overrides.append(f"stages.load.with.arch={args.arch}")
    if args.pre_top_k:
        overrides.append(f"stages.postprocess.with.pre_top_k={args.pre_top_k}")
    spec_path = work / Path(args.spec).name  # a copy: the manager writes its lockfile beside the spec
    spec_path.write_text(Path(args.spec).read_text())
    store = Store(work / "store")
    report = Manager(load_spec(spec_path, overrides), store, work / "artifacts", progress=False).run()
    digest = {s.name: s.digest for s in report.stages}
    return store.artifact(digest["load"]), store.artifact(digest["simplify"]), store.artifact(digest["postprocess"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="YOLOv5 checkpoint (.pt); without it, --arch with random weights")
    ap.add_argument("--arch", help="built-in architecture (yolov5n, yolov5s, yolov5s-pose)")
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--spec", default=str(REPO / "pipelines" / "yolov5n_end2end.yaml"))
    ap.add_argument("--work", help="work directory (store, artifacts); default: a temporary one")
    ap.add_argument("--size", type=int, default=640, help="network input size (square)")
    ap.add_argument("--resize", choices=["letterbox", "stretch"], default="letterbox")
    ap.add_argument("--score", type=float, default=0.25, help="score threshold")
    ap.add_argument("--iou", type=float, default=0.45, help="IoU threshold")
    ap.add_argument("--max-det", type=int, default=100, help="detections per image")
    ap.add_argument("--pre-top-k", type=int, help="candidates kept before NMS")
    ap.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    ap.add_argument("--tol", type=float, default=1e-3, help="box/keypoint tolerance in original pixels")
    ap.add_argument("--threads", type=int, default=1, help="threads of each runtime")
    ap.add_argument("--max-images", type=int, help="use only the first N images")
    args = ap.parse_args()
    if args.weights is None and args.arch is None:
        ap.error("give --weights or --arch")

    import torch

    from convert.torchmodel import load_module

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        load_art, trunc_art, e2e_art = build(args, work)
        print(f"pipeline built in {time.perf_counter() - t0:.1f}s: {e2e_art.path}")
        head, prep = e2e_art.meta["head"], e2e_art.meta["preprocess"]
        settings = pp.NMSSettings(**{k: v for k, v in e2e_art.meta["postprocess"].items() if k != "backend"})
        model = load_module(load_art)
        images = list_images(args.images)[:args.max_images]
        runs = {"e2e@onnxruntime": (e2e_art, "onnxruntime"), "e2e@openvino": (e2e_art, "openvino"),
                "trunc@onnxruntime": (trunc_art, "onnxruntime"), "trunc@openvino": (trunc_art, "openvino")}
        pairs = {"e2e@onnxruntime": ("torch", "e2e@onnxruntime"), "e2e@openvino": ("torch", "e2e@openvino"),
                 "host@onnxruntime": ("torch", "trunc@onnxruntime"),
                 "e2e vs host@onnxruntime": ("trunc@onnxruntime", "e2e@onnxruntime"),
                 "e2e vs host@openvino": ("trunc@openvino", "e2e@openvino")}
        runners = {name: load_runner(art, backend=be, threads=args.threads) for name, (art, be) in runs.items()}
        for r in runners.values():
            r.activate()
        stats = {name: {"images": 0, "matched": 0, "total": 0, "max_box": 0.0, "max_kpt": 0.0, "worst": []}
                 for name in pairs}
        try:
            for path in images:
                x, tf = preprocess(load_image(path), prep)
                with torch.inference_mode():
                    dets = {"torch": torch_reference(model(torch.from_numpy(x)), head, settings)}
                for name, runner in runners.items():
                    out = infer(runner, x)
                    dets[name] = (heads.postprocess([out[n] for n in head["outputs"]], head, settings)
                                  if name.startswith("trunc") else pp.Detections.from_outputs(out))
                for name, (ref, other) in pairs.items():
                    agr = pp.match(dets[ref].image(0).to_original(tf), dets[other].image(0).to_original(tf), args.tol)
                    s = stats[name]
                    s["images"] += agr.same
                    s["matched"] += agr.matched
                    s["total"] += agr.count_a
                    s["max_box"] = max(s["max_box"], agr.max_box_diff)
                    s["max_kpt"] = max(s["max_kpt"], agr.max_kpt_diff)
                    if not agr.same:
                        s["worst"].append(f"{path.name}: {agr.count_a} vs {agr.count_b}, matched {agr.matched}")
        finally:
            for r in runners.values():
                r.deactivate()

    print(f"{len(images)} images; score > {settings.score_threshold}, IoU {settings.iou_threshold}, "
          f"K {settings.max_detections}, pre_top_k {settings.pre_top_k}, "
          f"{'class-agnostic' if settings.class_agnostic else 'class-aware'}, {prep['resize']} {prep['size']}, "
          f"tolerance {args.tol} px (original pixels)")
    kpts = bool(head.get("nk"))
    print(f"{'comparison':<26} {'images agreeing':>16} {'detections matched':>20} {'max box diff':>13}"
          + (f" {'max kpt diff':>13}" if kpts else ""))
    ok = True
    for name, s in stats.items():
        ok &= s["images"] == len(images)
        label = name if name.startswith("e2e vs") else f"{name} vs torch"
        print(f"{label:<26} {s['images']:>7}/{len(images):<8} {s['matched']:>10}/{s['total']:<9} "
              f"{s['max_box']:>10.2e} px" + (f" {s['max_kpt']:>10.2e} px" if kpts else ""))
        for w in s["worst"][:3]:
            print(f"    disagrees: {w}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
