"""Exports a real YOLOv5 checkpoint through the pipeline and compares ONNX Runtime with PyTorch on real images.

Prints, per image, the max abs difference of the decoded predictions (pixels, objectness, class scores)
and of the raw head maps, plus the pipeline's cold and cached wall times.

    python bench/export_fidelity.py --weights ../shared/fixtures/weights/yolov5n.pt \
        --images ../shared/fixtures/images/bus.jpg ../shared/fixtures/images/zidane.jpg
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=FIXTURES / "weights" / "yolov5n.pt")
    ap.add_argument("--images", type=Path, nargs="+",
                    default=[FIXTURES / "images" / "bus.jpg", FIXTURES / "images" / "zidane.jpg"])
    args = ap.parse_args()

    import torch

    from convert.manager import Manager
    from convert.models.yolo import load_yolov5
    from convert.onnxutil import ort_session
    from convert.preprocess import load_image, preprocess
    from convert.spec import load_spec
    from convert.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = tmp / "spec.yaml"
        spec.write_text(
            "name: fidelity\n"
            "stages:\n"
            f"  load: {{with: {{source: yolov5, weights: '{args.weights.resolve()}'}}}}\n"
            "  export_onnx: {with: {dynamic_batch: true}}\n"
            "  simplify: {}\n"
            "  truncate_head: {inputs: {model: load}}\n"
            "  export_raw: {pass: export_onnx}\n"
            "  simplify_raw: {pass: simplify}\n")
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            rep = Manager(load_spec(spec), Store(tmp / "store"), tmp / "artifacts", progress=False).run()
            timings.append(time.perf_counter() - t0)
        decoded = ort_session(rep.published / "simplify" / "model.onnx")
        raw = ort_session(rep.published / "simplify_raw" / "model.onnx")
        t0 = time.perf_counter()
        model = load_yolov5(args.weights)
        load_s = time.perf_counter() - t0
        print(f"checkpoint {args.weights.name}: loaded without the YOLOv5 repository in {load_s:.2f}s")
        print(f"pipeline cold run {timings[0]:.2f}s, cached re-run {timings[1]:.3f}s")
        print(f"{'image':<14} {'decoded max|d|':>15} {'decoded max|d|/max|y|':>22} {'raw maps max|d|':>16}")
        worst_raw = 0.0
        for path in args.images:
            x, _ = preprocess(load_image(path), {"size": [640, 640]})
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
                model.truncated = True
                want_raw = [m.numpy() for m in model(torch.from_numpy(x))]
                model.truncated = False
            got = decoded.run(None, {"images": x})[0]
            got_raw = raw.run(None, {"images": x})
            d = float(np.abs(got - want).max())
            d_raw = max(float(np.abs(a - b).max()) for a, b in zip(got_raw, want_raw))
            worst_raw = max(worst_raw, d_raw)
            print(f"{path.name:<14} {d:>15.3g} {d / float(np.abs(want).max()):>22.3g} {d_raw:>16.3g}")
        print(f"raw head maps within 1e-4: {'yes' if worst_raw <= 1e-4 else 'NO'} (worst {worst_raw:.3g})")


if __name__ == "__main__":
    main()
