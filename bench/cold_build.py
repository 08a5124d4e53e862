"""Cold INT8 OpenVINO build: this project's pipeline against the YOLOv5 repository's ``export.py``, interleaved.

    python bench/cold_build.py --yolov5 PATH/TO/yolov5 --weights ../shared/fixtures/weights/yolov5n.pt \\
        --data ../shared/fixtures/datasets/coco128 [--rounds 3]

Each round runs, one after the other, in fresh folders (nothing cached, whole processes timed):

* ``python -m convert run pipelines/yolov5n_openvino_int8.yaml`` (load -> truncate_head -> export_onnx ->
  simplify -> calibrate -> quantize -> openvino: an INT8 IR, no evaluation) in a fresh store;
* ``python export.py --weights W --include openvino --int8 --data coco128.yaml --imgsz 640`` of the YOLOv5
  repository (ONNX export, OpenVINO conversion, NNCF's post-training quantization, mixed preset, on the
  dataset's train images: all 128 of coco128, NNCF's subset_size being 300).

Both read the same images (``--data``, a YOLO dataset with images/train2017). The order alternates
between rounds so that background load and file caches hit both alike. Prints each run's wall time,
the medians and their ratio, the per-stage times of the pipeline's last run, and the machine's load.

``export.py`` needs the YOLOv5 repository (``--yolov5``: a checkout; its requirements pandas, seaborn,
gitpython installed) and a font it would download: a local TrueType font is put in a private config
folder (``YOLOV5_CONFIG_DIR``) so nothing is fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "pipelines" / "yolov5n_openvino_int8.yaml"


def font() -> Path:
    """A TrueType font shipped with matplotlib (export.py's check_font wants one named Arial.ttf)."""
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return wall


def run_convert(work: Path, args, env: dict) -> tuple[float, dict]:
    store, arts = work / "store", work / "artifacts"
    spec = work / SPEC.name
    shutil.copy(SPEC, spec)  # the manager writes its lockfile beside the spec
    cmd = [sys.executable, "-m", "convert", "--store", str(store), "--artifacts", str(arts), "run", str(spec),
           f"model.weights={args.weights}", f"calibration.data={args.data}", "--no-progress", "--json"]
    wall = timed(cmd, REPO, env, work / "convert.log")
    manifest = json.loads((arts / "yolov5n_openvino_int8" / "latest" / "manifest.json").read_text())
    stages = {name: manifest["stages"][name].get("seconds") for name in manifest["stage_order"]}
    return wall, stages


def run_export(work: Path, args, env: dict) -> float:
    weights = work / Path(args.weights).name
    shutil.copy(args.weights, weights)
    data = work / "coco128.yaml"
    names = ", ".join(f"{i}: c{i}" for i in range(80))
    data.write_text(f"path: {args.data}\ntrain: images/train2017\nval: images/train2017\nnc: 80\n"
                    f"names: {{{names}}}\n")
    cfg = work / "yolov5_config"
    cfg.mkdir()
    shutil.copy(font(), cfg / "Arial.ttf")
    cmd = [sys.executable, str(args.yolov5 / "export.py"), "--weights", str(weights), "--include", "openvino",
           "--int8", "--data", str(data), "--imgsz", "640"]
    wall = timed(cmd, work, {**env, "YOLOV5_CONFIG_DIR": str(cfg)}, work / "export.log")
    if not list(work.glob("*_int8_openvino_model/*.xml")):
        sys.exit(f"error: export.py wrote no INT8 IR; see {work / 'export.log'}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--yolov5", type=Path, required=True, help="a checkout of the YOLOv5 repository")
    ap.add_argument("--weights", type=Path, required=True, help="YOLOv5 checkpoint (.pt)")
    ap.add_argument("--data", type=Path, required=True, help="YOLO dataset folder with images/train2017")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    args = ap.parse_args()
    args.weights, args.data, args.yolov5 = args.weights.resolve(), args.data.resolve(), args.yolov5.resolve()
    if not (args.yolov5 / "export.py").is_file():
        sys.exit(f"error: {args.yolov5}/export.py not found. Hint: pass a YOLOv5 repository checkout as --yolov5.")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVERT_")}
    walls: dict[str, list[float]] = {"convert": [], "export.py": []}
    stages = {}
    with tempfile.TemporaryDirectory(prefix="cold-build-") as tmp:
        for r in range(args.rounds):
            order = ["convert", "export.py"] if r % 2 == 0 else ["export.py", "convert"]
            for who in order:
                work = Path(tmp) / f"{who}-{r}"
                work.mkdir()
                if who == "convert":
                    wall, stages = run_convert(work, args, env)
                else:
                    wall = run_export(work, args, env)
                walls[who].append(wall)
                print(f"round {r + 1} {who:10s} {wall:6.1f} s  (load average {os.getloadavg()[0]:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nmedian wall time over {args.rounds} rounds: convert {med['convert']:.1f} s, "
          f"export.py {med['export.py']:.1f} s, ratio {med['convert'] / med['export.py']:.2f}x (target <= 0.8x)")
    print("pipeline stages (last run): " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items() if v is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
