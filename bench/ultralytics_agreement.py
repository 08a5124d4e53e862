"""Does our YOLO11n-pose deployment equal ultralytics itself? FP32 agreement, INT8 fidelity, latency.

Builds our artifacts with ``pipelines/yolo11n_pose_int8.yaml`` through the Python API (in a
temporary store unless ``--store``; the run stops after ``openvino_int8``, so nothing is
published and no lockfile is written beside the spec), runs them with :mod:`convert.runtime` on
images preprocessed by :func:`convert.preprocess.preprocess` with each artifact's recorded
preprocessing, and prints one table per part:

* **Part A, FP32 vs ultralytics.** Reference: ultralytics' own ``YOLO(weights).predict`` (conf 0.25,
  IoU 0.7, imgsz 640) with a *square* 640x640 letterbox. Every ultralytics detection with score
  > 0.5 must be matched by one of ours (same class, IoU > 0.9, one to one, greedy by IoU) for our
  FP32 end-to-end ONNX (``postprocess_fp32``: decode + ONNX NMS + keypoints in the graph) on ONNX
  Runtime and on OpenVINO, and our FP32 IR (``openvino_fp32``) on OpenVINO. Keypoint error: x/y
  Euclidean distance of each of the 17 keypoints of a matched pair, as a percentage of the
  ultralytics box's diagonal (mean and p95 over all keypoints). Extras: our detections with score
  > 0.5 that match no ultralytics detection (any score) at IoU > 0.9. A diagnostic row feeds our
  FP32 ONNX the very tensor ultralytics' letterbox makes (cv2, BGR->RGB), which separates the
  preprocessing (our PIL resize vs ultralytics' cv2 resize) from the model and its post-processing.
* **Part B, INT8 vs FP32.** Our INT8 Q/DQ end-to-end ONNX (``postprocess``) on ONNX Runtime against
  our FP32 ONNX on ONNX Runtime, and our INT8 IR (``openvino_int8``) against our FP32 IR on OpenVINO:
  recall at IoU 0.5 of the FP32 detections (score > 0.25, same class, one to one greedy), mean box
  IoU of the matches, keypoint error as % of the FP32 box diagonal. Beside them, the same figures for
  ultralytics' own OpenVINO INT8 export (``export(format="openvino", quantize=8, data=...)``, NNCF)
  run with ultralytics' predict against ultralytics' FP32 predict, and its FP32 OpenVINO export.
* **Part C, latency.** Median ms per inference, batch 1, ``--threads`` threads, warm-up then
  interleaved rounds (rotating order), on one real image: our FP32 / INT8 IRs on OpenVINO with
  the project's runner settings (INFERENCE_PRECISION_HINT f32), OpenVINO's default precision too
  when it differs from f32 on this CPU, our FP32 / INT8 ONNX on ONNX Runtime, and ultralytics'
  FP32 / INT8 OpenVINO exports compiled with exactly our runner's config (raw network: their graph
  has the decode but no NMS, ours has NMS in the graph).

Keypoints are compared in original-image pixels, ours clipped to the image as ultralytics' own
``scale_coords`` clips its keypoints (our ``Transform.points_to_original`` does not clip); the
count of our keypoints that fell outside the image before clipping is printed.

    python bench/ultralytics_agreement.py                       # fixtures from ../shared/fixtures
    python bench/ultralytics_agreement.py --max-images 8 --iterations 10 --json /tmp/ua.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# ultralytics: never pip-install a missing requirement, never go online (events, downloads),
# and keep its INFO log lines off stdout (the tables are printed there). Set before its import.
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_OFFLINE", "True")
os.environ.setdefault("YOLO_VERBOSE", "False")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures"

from convert.errors import ConvertError  # noqa: E402
from convert.evaluation import image_detections  # noqa: E402
from convert.manager import Manager  # noqa: E402
from convert.postprocess import box_iou  # noqa: E402
from convert.preprocess import Transform, list_images, load_image, preprocess  # noqa: E402
from convert.runtime import OpenVINORunner, cpu_info, infer, load_runner  # noqa: E402
from convert.spec import load_spec  # noqa: E402
from convert.store import Store  # noqa: E402

STAGES = ("postprocess_fp32", "postprocess", "openvino_fp32", "openvino_int8")
FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # COCO keypoints, left <-> right


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- detections ------------------------------------------------------------------------------


def dets(boxes, scores, classes, kpts, nk: int = 17) -> dict[str, np.ndarray]:
    scores = np.asarray(scores, np.float64).ravel()
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": scores,
            "classes": np.asarray(classes).astype(np.int64).ravel(),
            "kpts": np.asarray(kpts, np.float64).reshape(len(scores), nk, 3)}


def select(d: dict[str, np.ndarray], min_score: float) -> dict[str, np.ndarray]:
    keep = d["scores"] > min_score
    return {k: v[keep] for k, v in d.items() if k != "outside"}


def match(ref: dict, other: dict, thr: float, strict: bool) -> list[tuple[int, int, float]]:
    """One-to-one greedy matching by IoU (highest first), same class; IoU > thr (strict) or >= thr."""
    iou = box_iou(ref["boxes"], other["boxes"])
    if not iou.size:
        return []
    iou[ref["classes"][:, None] != other["classes"][None, :]] = -1
    pairs, used_r, used_o = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        v = iou[i, j]
        if v < thr or (strict and v <= thr):
            break
        if i in used_r or j in used_o:
            continue
        used_r.add(i)
        used_o.add(j)
        pairs.append((i, j, float(v)))
    return pairs


def kpt_rel_errors(ref: dict, other: dict, pairs) -> np.ndarray:
    """Per keypoint of every matched pair: x/y distance / reference box diagonal."""
    out = []
    for i, j, _ in pairs:
        b = ref["boxes"][i]
        diag = max(float(np.hypot(b[2] - b[0], b[3] - b[1])), 1e-9)
        out.append(np.linalg.norm(ref["kpts"][i][:, :2] - other["kpts"][j][:, :2], axis=-1) / diag)
    return np.concatenate(out) if out else np.zeros(0)


def pct(a: np.ndarray, q: float | None = None) -> float | None:
    if not len(a):
        return None
    return float((np.mean(a) if q is None else np.percentile(a, q)) * 100)


def part_a(ultra: list[dict], ours: list[dict], ref_score: float, iou_thr: float) -> dict[str, Any]:
    """Ultralytics detections (score > ref_score) matched by ours; our extras above ref_score."""
    ious, rel, score_diffs = [], [], []
    total = matched = extras = 0
    misses = []
    for k, (u, o) in enumerate(zip(ultra, ours)):
        ur = select(u, ref_score)
        pairs = match(ur, o, iou_thr, strict=True)
        total += len(ur["scores"])
        matched += len(pairs)
        if len(pairs) < len(ur["scores"]):
            misses.append(k)
        ious += [p[2] for p in pairs]
        score_diffs += [abs(ur["scores"][i] - o["scores"][j]) for i, j, _ in pairs]
        rel.append(kpt_rel_errors(ur, o, pairs))
        oh = select(o, ref_score)
        extras += len(oh["scores"]) - len(match(oh, u, iou_thr, strict=True))
    rel = np.concatenate(rel) if rel else np.zeros(0)
    return {"matched": matched, "total": total, "mean_iou": float(np.mean(ious)) if ious else None,
            "min_iou": float(np.min(ious)) if ious else None, "kpt_mean_pct": pct(rel), "kpt_p95_pct": pct(rel, 95),
            "kpt_max_pct": float(rel.max() * 100) if len(rel) else None,
            "max_score_diff": float(max(score_diffs)) if score_diffs else None,
            "extras": extras, "images_with_misses": misses,
            "our_kpts_outside_image": int(sum(o.get("outside", 0) for o in ours))}


def part_b(ref: list[dict], other: list[dict], min_score: float, iou_thr: float) -> dict[str, Any]:
    """Recall of the reference's detections (score > min_score) by the other model's, IoU >= iou_thr."""
    ious, rel = [], []
    n_ref = n_other = matched = 0
    for r, o in zip(ref, other):
        r, o = select(r, min_score), select(o, min_score)
        pairs = match(r, o, iou_thr, strict=False)
        n_ref += len(r["scores"])
        n_other += len(o["scores"])
        matched += len(pairs)
        ious += [p[2] for p in pairs]
        rel.append(kpt_rel_errors(r, o, pairs))
    rel = np.concatenate(rel) if rel else np.zeros(0)
    return {"reference_count": n_ref, "model_count": n_other, "matched": matched,
            "recall": matched / n_ref if n_ref else 1.0, "mean_iou": float(np.mean(ious)) if ious else None,
            "kpt_mean_pct": pct(rel), "kpt_p95_pct": pct(rel, 95)}


# --- our side --------------------------------------------------------------------------------


def build_ours(args, tmp: Path):
    """Runs the spec up to openvino_int8; returns (stage -> artifact, seconds, per-stage status)."""
    overrides = [f"model.weights={args.weights.resolve()}", f"calibration.data={args.calib.resolve()}",
                 *args.override]
    spec = load_spec(args.spec, overrides)
    store = Store(args.store or tmp / "store")
    manager = Manager(spec, store, tmp / "artifacts", log=log, progress=False)
    last = max(STAGES, key=lambda s: [st.name for st in spec.stages].index(s))
    t0 = time.perf_counter()
    # `until` stops after our last stage: nothing is published and no lockfile is written beside the spec
    report = manager.run(until=last)
    seconds = time.perf_counter() - t0
    status = {s.name: s.status for s in report.stages}
    digests = {s.name: s.digest for s in report.stages}
    calib = next((s.summary for s in report.stages if s.pass_name == "calibrate"), {})
    return {name: store.artifact(digests[name]) for name in STAGES}, seconds, status, calib


def clip_points(kpts: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Clips keypoint x/y to the image as ultralytics' scale_coords does; returns (clipped, count outside)."""
    h, w = shape
    k = np.array(kpts, np.float64, copy=True)
    outside = int(((k[..., 0] < 0) | (k[..., 0] > w) | (k[..., 1] < 0) | (k[..., 1] > h)).sum())
    k[..., 0] = k[..., 0].clip(0, w)
    k[..., 1] = k[..., 1].clip(0, h)
    return k, outside


def ultralytics_letterbox(path: Path, size: int) -> tuple[np.ndarray, Transform]:
    """The network input ultralytics' predictor makes (square LetterBox, cv2 INTER_LINEAR, BGR->RGB, /255)."""
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.patches import imread

    bgr = imread(str(path))
    h0, w0 = bgr.shape[:2]
    net = LetterBox((size, size), auto=False, stride=32)(image=bgr)
    r = min(size / h0, size / w0)
    nw, nh = max(round(w0 * r), 1), max(round(h0 * r), 1)
    left, top = round((size - nw) / 2 - 0.1), round((size - nh) / 2 - 0.1)
    x = np.ascontiguousarray(net[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    return x, Transform((nw / w0, nh / h0), (float(left), float(top)), (h0, w0))


def run_ours(artifact, backend: str, threads: int, images: list[Path], inputs=None) -> list[dict]:
    """Our model on every image, in original pixels (keypoints clipped like ultralytics')."""
    out = []
    with load_runner(artifact, backend, threads) as runner:
        for k, path in enumerate(images):
            x, tf = inputs[k] if inputs is not None else preprocess(load_image(path), artifact.meta["preprocess"])
            det = image_detections(infer(runner, x), 0, tf, 0.0)
            kpts, outside = clip_points(det.keypoints, tf.orig_size)
            d = dets(det.boxes, det.scores, det.classes, kpts)
            d["outside"] = outside
            out.append(d)
    return out


# --- ultralytics -----------------------------------------------------------------------------


def ultra_predict(model_path, images: list[Path], imgsz: int, rect: bool = False) -> tuple[list[dict], Any]:
    """ultralytics' own predict, one image at a time.

    Square letterbox: in 8.4.190 ``BasePredictor.pre_transform`` builds ``LetterBox(auto=same_shapes
    and self.args.rect and ...)`` and ``Model.predict`` defaults ``rect=True`` (the minimal
    rectangle for .pt models); passing ``rect=False`` makes ``auto`` False, i.e. the square
    ``imgsz`` x ``imgsz`` letterbox our artifacts use. (Exported static-shape models get the
    square one either way.)

    Returns:
        (detections per image in original pixels, the YOLO object)
    """
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="pose")
    out = []
    for path in images:
        r = model.predict(str(path), conf=0.25, iou=0.7, imgsz=imgsz, rect=rect, max_det=300, device="cpu",
                          verbose=False)[0]
        b = r.boxes
        out.append(dets(b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy(), r.keypoints.data.numpy()))
    return out, model


def ov_type(v) -> str:
    """An OpenVINO element type as its short name (f32, bf16, f16)."""
    return v.to_string() if hasattr(v, "to_string") else str(v)


def ov_precision_of(ultra_model) -> str:
    """The inference precision ultralytics' OpenVINO backend compiled with (best effort)."""
    try:
        return ov_type(ultra_model.predictor.model.backend.ov_compiled_model.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - only a label
        return "?"


def dataset_yaml(coco8_pose: Path, tmp: Path) -> Path:
    """A dataset YAML for ultralytics' INT8 calibration, over a copy of coco8-pose in ``tmp``
    (ultralytics writes label caches beside the labels: never into the fixtures)."""
    import yaml

    root = tmp / "coco8-pose"
    for sub in ("images", "labels"):
        shutil.copytree(coco8_pose / sub, root / sub, copy_function=shutil.copyfile)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    text = {"path": str(root), "train": "images/train", "val": "images/val", "kpt_shape": [17, 3],
            "flip_idx": FLIP_IDX, "names": {0: "person"}}
    path = tmp / "coco8-pose.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def ultra_exports(args, tmp: Path) -> dict[str, Any]:
    """ultralytics' OpenVINO FP32 and (unless skipped) INT8 exports, made in ``tmp``."""
    import logging

    import nncf  # noqa: F401 - imported here so its log handler exists and can be moved to stderr
    from ultralytics import YOLO

    for h in logging.getLogger("nncf").handlers:  # NNCF logs INFO lines on stdout, where the tables go
        if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout:
            h.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # and its progress bars
        return _ultra_exports(args, tmp, YOLO)


def _ultra_exports(args, tmp: Path, YOLO) -> dict[str, Any]:
    weights = tmp / "ultralytics" / args.weights.name  # exports land beside the weights: a copy in tmp
    weights.parent.mkdir()
    shutil.copyfile(args.weights, weights)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    out["fp32"] = Path(YOLO(str(weights)).export(format="openvino", imgsz=args.imgsz, device="cpu"))
    out["fp32_s"] = time.perf_counter() - t0
    if not args.skip_ultralytics_int8:
        data = dataset_yaml(args.coco8_pose, tmp)
        calib = args.calib.resolve()
        # calibrate on the same coco8-pose split as ours when --calib is one of its splits, else its val split
        split = calib.name if calib.parent == (args.coco8_pose / "images").resolve() else "val"
        t0 = time.perf_counter()
        # `quantize=8` is 8.4.190's spelling of the deprecated `int8=True` (cfg maps int8 onto quantize=8)
        out["int8"] = Path(YOLO(str(weights)).export(format="openvino", quantize=8, data=str(data), split=split,
                                                     imgsz=args.imgsz, device="cpu"))
        out["int8_s"] = time.perf_counter() - t0
        out["int8_split"] = split
    return out


# --- latency ---------------------------------------------------------------------------------


def ov_default_precision(xml: Path, threads: int) -> str:
    """What OpenVINO picks on this CPU without INFERENCE_PRECISION_HINT (bf16 where the CPU has it)."""
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
    return ov_type(ov.Core().compile_model(str(xml), "CPU", cfg).get_property("INFERENCE_PRECISION_HINT"))


class DefaultPrecisionRunner(OpenVINORunner):
    """The project's OpenVINO runner with its f32 pin removed (OpenVINO's default precision)."""

    def __init__(self, path, threads=None, name=None, output_names=None):
        super().__init__(path, threads, name=name, output_names=output_names)
        self._config.pop("INFERENCE_PRECISION_HINT", None)
        self.settings = {**self.settings, "inference_precision_hint": "default"}


def compiled_precision(runner) -> str:
    if getattr(runner, "backend", "") != "openvino":
        return "fp32 (CPU EP)"
    return ov_type(runner.compiled.get_property("INFERENCE_PRECISION_HINT"))


def latency(rows: list[dict], x: np.ndarray, warmup: int, iterations: int, rounds: int) -> None:
    """Times every row's runner on ``x``, interleaved round by round; fills ``ms`` and ``precision``."""
    active = []
    try:
        for row in rows:
            r = row.pop("runner")
            r.activate()
            active.append(r)
            row["precision_compiled"] = compiled_precision(r)
            row["settings"] = r.settings
            for _ in range(warmup):
                infer(r, x)
            row["times"] = []
        per_round = [iterations // rounds + (i < iterations % rounds) for i in range(rounds)]
        for rnd, n in enumerate(per_round):
            for idx in [(rnd + j) % len(rows) for j in range(len(rows))]:
                for _ in range(n):
                    t0 = time.perf_counter()
                    infer(active[idx], x)
                    rows[idx]["times"].append((time.perf_counter() - t0) * 1000)
    finally:
        for r in active:
            r.deactivate()
    for row in rows:
        t = row.pop("times")
        row.update(median_ms=statistics.median(t), p90_ms=float(np.percentile(t, 90)), min_ms=min(t), n=len(t))


# --- printing --------------------------------------------------------------------------------


def f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def table(header: list[tuple[str, int]], rows: list[list[str]], left: int = 1) -> None:
    """Prints rows under a header; the first ``left`` columns left-aligned, the others right-aligned."""
    def line(cells):
        return "".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, header)))
    head = line([h for h, _ in header])
    print(head)
    print("-" * len(head))
    for r in rows:
        print(line(r))


def scores_text(d: dict) -> str:
    return f"{len(d['scores'])} persons  " + "/".join(f"{s:.3f}" for s in d["scores"])


def person_images(coco128: Path) -> list[Path]:
    """coco128 images whose YOLO label file has a class-0 (person) row."""
    out = []
    for p in list_images(coco128 / "images"):
        label = (coco128 / "labels" / p.relative_to(coco128 / "images")).with_suffix(".txt")
        if label.is_file() and any(line.split()[:1] == ["0"] for line in label.read_text().splitlines()):
            out.append(p)
    return out


def standard_letterbox(pp: dict, size: int) -> bool:
    """Whether a recorded preprocessing is ultralytics' (square letterbox, RGB, /255, pad 114, NCHW)."""
    return (pp.get("resize") == "letterbox" and pp.get("channel_order", "RGB") == "RGB"
            and abs(pp.get("scale", 1 / 255) - 1 / 255) < 1e-9 and pp.get("pad_value", 114) == 114
            and not pp.get("minimal_pad") and list(pp.get("size")) == [size, size]
            and pp.get("layout", "NCHW") == "NCHW" and not any(pp.get("mean", [0, 0, 0]))
            and all(v == 1 for v in pp.get("std", [1, 1, 1])))


DIAG_A = "FP32 e2e ONNX @onnxruntime, ultralytics' letterbox (diagnostic)"


def print_part_a(rows: dict[str, dict], names: list[str], diag_skipped: str | None, failed: list[str]) -> None:
    print("\nPart A: FP32 vs ultralytics predict (.pt, square letterbox). Reference: ultralytics detections with "
          "score > 0.5;\na match: same class, IoU > 0.9, one to one, greedy by IoU. Keypoint error: 17 keypoints "
          "x/y, % of the ultralytics\nbox diagonal. Extras: ours with score > 0.5 matching no ultralytics detection.")
    header = [("model", 66), ("matched", 10), ("mean IoU", 10), ("min IoU", 9), ("kpt mean%", 10), ("kpt p95%", 9),
              ("kpt max%", 9), ("max dScore", 11), ("extras", 7), ("outside", 8)]
    table(header, [[label, f"{r['matched']}/{r['total']}", f(r["mean_iou"], ".4f"), f(r["min_iou"], ".4f"),
                    f(r["kpt_mean_pct"], ".3f"), f(r["kpt_p95_pct"], ".3f"), f(r["kpt_max_pct"], ".2f"),
                    f(r["max_score_diff"], ".4f"), str(r["extras"]), str(r["our_kpts_outside_image"])]
                   for label, r in rows.items()])
    for label, r in rows.items():
        if r["images_with_misses"]:
            print(f"  {label}: unmatched in {', '.join(names[k] for k in r['images_with_misses'][:8])}")
    print("outside: our keypoints outside the image before clipping (ultralytics clips its keypoints to the image; "
          "ours are\nclipped the same way before comparing). The diagnostic row feeds our model the tensor "
          "ultralytics' own\nLetterBox (cv2) makes, instead of our preprocess (PIL resize).")
    if diag_skipped:
        print(f"(diagnostic row skipped: {diag_skipped})")
    for label, r in rows.items():
        if label == DIAG_A:
            continue
        ok = r["matched"] == r["total"] and r["kpt_mean_pct"] is not None and r["kpt_mean_pct"] < 0.5
        print(f"  target (all matched, kpt mean < 0.5 %) {label}: {'met' if ok else 'NOT MET'}")
        if not ok:
            failed.append(f"Part A {label}")


def print_part_b(rows: dict[str, dict], n_images: int, calib_line: str, failed: list[str]) -> None:
    print(f"\nPart B: INT8 vs FP32 on the same {n_images} images. Reference: the FP32 model's detections "
          "(score > 0.25) on the\nsame back-end; a match: same class, IoU >= 0.5, one to one, greedy by IoU. "
          "Keypoint error: % of the reference\nbox diagonal. ref, model: detection counts.")
    print(calib_line)
    header = [("model vs reference", 86), ("ref", 6), ("model", 6), ("matched", 8), ("recall", 8), ("mean IoU", 9),
              ("kpt mean%", 10), ("kpt p95%", 9)]
    table(header, [[label, str(r["reference_count"]), str(r["model_count"]), str(r["matched"]), f"{r['recall']:.4f}",
                    f(r["mean_iou"], ".4f"), f(r["kpt_mean_pct"], ".3f"), f(r["kpt_p95_pct"], ".3f")]
                   for label, r in rows.items()])
    print("(ultralytics' INT8 row is the comparison for ours; its FP32 export row is context, export vs its own .pt; "
          "the\ndiagnostic row compares the two runtimes on our one Q/DQ model)")
    for label, r in rows.items():
        if label.startswith("ours"):
            ok = r["recall"] >= 0.98 and r["kpt_mean_pct"] is not None and r["kpt_mean_pct"] <= 0.6
            print(f"  target (recall >= 0.98, kpt mean <= 0.6 %) {label}: {'met' if ok else 'NOT MET'}")
            if not ok:
                failed.append(f"Part B {label}")


def latency_rows(arts, exports: dict, threads: int, default_prec: str | None) -> list[dict]:
    """The runners Part C times, each with its label, back-end and precision hint."""
    rows: list[dict] = []
    irs = (("openvino_fp32", "ours FP32 IR (e2e, NMS)"), ("openvino_int8", "ours INT8 IR (e2e, NMS)"))
    if arts is not None:
        for stage, label in irs:
            rows.append({"model": label, "backend": "openvino", "hint": "f32",
                         "runner": load_runner(arts[stage], "openvino", threads)})
        if default_prec not in (None, "f32"):
            for stage, label in irs:
                a = arts[stage]
                rows.append({"model": label, "backend": "openvino", "hint": "default",
                             "runner": DefaultPrecisionRunner(a.file, threads, output_names=a.meta.get("outputs"))})
        for stage, label in (("postprocess_fp32", "ours FP32 e2e ONNX (NMS)"),
                             ("postprocess", "ours INT8 Q/DQ e2e ONNX (NMS)")):
            rows.append({"model": label, "backend": "onnxruntime", "hint": "-",
                         "runner": load_runner(arts[stage], "onnxruntime", threads)})
    for prec in ("fp32", "int8"):
        if prec in exports:
            xml = next(Path(exports[prec]).glob("*.xml"))
            rows.append({"model": f"ultralytics OpenVINO {prec.upper()} export (raw net, no NMS)",
                         "backend": "openvino", "hint": "f32", "runner": OpenVINORunner(xml, threads)})
    return rows


def print_part_c(rows: list[dict], args, image: str, host: dict, load: dict, default_prec: str | None,
                 caps) -> None:
    print(f"\nPart C: latency, median of {args.iterations} inferences ({args.rounds} interleaved rounds, "
          f"{args.warmup} warm-up per model), batch 1,\n{args.imgsz}x{args.imgsz}, {args.threads} threads, input "
          f"{image}; CPU {host['model']} ({host['usable_cpus']} usable CPUs); 1-min load average "
          f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} after (other processes share the CPU when > 0)")
    ov_rows = [r for r in rows if r["backend"] == "openvino" and r["hint"] == "f32"]
    if ov_rows:
        print(f"OpenVINO runner (convert.runtime.OpenVINORunner) settings: {ov_rows[0]['settings']}; compile config "
              "INFERENCE_PRECISION_HINT f32,\nPERFORMANCE_HINT LATENCY, NUM_STREAMS 1, INFERENCE_NUM_THREADS "
              f"{args.threads}; ultralytics' IRs are compiled by the same runner")
    ort_rows = [r for r in rows if r["backend"] == "onnxruntime"]
    if ort_rows:
        print(f"ONNX Runtime runner (convert.runtime.OrtRunner) settings: {ort_rows[0]['settings']}")
    if default_prec is not None:
        print(f"OpenVINO's default inference precision here (no hint): {default_prec}; CPU capabilities {caps}"
              + ("; default-precision rows would repeat the f32 ones and are left out" if default_prec == "f32"
                 else "; rows with hint 'default' use it"))
    out = []
    for r in rows:
        prec = r["precision_compiled"]
        if r["backend"] == "onnxruntime":
            prec = "fp32 + int8 Q/DQ kernels" if "INT8" in r["model"] else "fp32"
        elif "INT8" in r["model"]:
            prec = f"{prec} + int8 kernels"
        out.append([r["model"], r["backend"], r["hint"], prec, f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}"])
    print("precision: the compiled model's INFERENCE_PRECISION_HINT (OpenVINO) for the float parts; INT8 models run "
          "int8 kernels where quantized")
    table([("model", 52), ("back-end", 13), ("hint", 8), ("inference precision", 28), ("median ms", 11),
           ("p90 ms", 9)], out, left=4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=FIXTURES / "weights" / "yolo11n-pose.pt")
    ap.add_argument("--photos", type=Path, nargs="*",
                    default=[FIXTURES / "images" / "bus.jpg", FIXTURES / "images" / "zidane.jpg"],
                    help="photos compared first and listed with ultralytics' scores")
    ap.add_argument("--images", type=Path, nargs="*", default=[], help="extra image paths")
    ap.add_argument("--coco128", type=Path, default=FIXTURES / "datasets" / "coco128",
                    help="its images whose label file has class 0 (person) are used")
    ap.add_argument("--coco8-pose", type=Path, default=FIXTURES / "datasets" / "coco8-pose",
                    help="ultralytics' INT8 calibration dataset (a copy is made in a temp dir)")
    ap.add_argument("--calib", type=Path, help="our calibration data (default: coco8-pose/images/train; "
                    "e.g. coco128/images/train2017)")
    ap.add_argument("--spec", type=Path, default=REPO / "pipelines" / "yolo11n_pose_int8.yaml")
    ap.add_argument("--max-images", type=int, help="use only the first N coco128 person images")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2, help="threads of every runner (and torch)")
    ap.add_argument("--iterations", type=int, default=50, help="timed inferences per latency row")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds the iterations are split into")
    ap.add_argument("--store", type=Path, help="artifact store (cache); default: a temporary one")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--skip-ultralytics-int8", action="store_true", help="no ultralytics INT8 export")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more spec overrides, e.g. calibration.method=percentile calibration.num=64")
    args = ap.parse_args()
    args.calib = args.calib or args.coco8_pose / "images" / "train"
    args.coco8_pose = args.coco8_pose.resolve()

    import torch

    torch.set_num_threads(args.threads)
    person = person_images(args.coco128)[:args.max_images]
    images = list(dict.fromkeys([*args.photos, *args.images, *person]))
    names = [p.name for p in images]
    calib_images = {p.name for p in list_images(args.calib)}
    record: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "host": cpu_info(), "images": names}
    record["args"].update(photos=[str(p) for p in args.photos], images=[str(p) for p in args.images])
    failed: list[str] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # -- our artifacts
        arts = None
        try:
            log(f"building our artifacts ({args.spec.name}, calibration {args.calib}) ...")
            arts, build_s, status, calib_summary = build_ours(args, tmp)
            record["pipeline"] = {"seconds": build_s, "status": status, "calibrate": calib_summary,
                                  "digests": {k: a.digest for k, a in arts.items()},
                                  "preprocess": arts["postprocess_fp32"].meta.get("preprocess")}
        except ConvertError as e:
            record["pipeline"] = {"error": str(e)}  # message and Hint
            failed.append(f"pipeline: {e}")
            log(f"PIPELINE FAILED: {e}")
        except Exception as e:  # noqa: BLE001 - reported; the ultralytics side still runs
            record["pipeline"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failed.append(f"pipeline: {type(e).__name__}: {e}")
            log(f"PIPELINE FAILED:\n{traceback.format_exc()}")

        # -- ultralytics
        log(f"ultralytics predict (.pt, square letterbox) on {len(images)} images ...")
        ultra, _ = ultra_predict(args.weights, images, args.imgsz, rect=False)
        ultra_rect, _ = ultra_predict(args.weights, args.photos, args.imgsz, rect=True)
        log("ultralytics OpenVINO exports ...")
        exports = ultra_exports(args, tmp)
        ultra_ov = {}
        for prec in ("fp32", "int8"):
            if prec in exports:
                d, m = ultra_predict(exports[prec], images, args.imgsz)
                ultra_ov[prec] = (d, ov_precision_of(m))

        # -- our models on every image
        ours: dict[str, list[dict]] = {}
        diag_skipped = None
        if arts is not None:
            log("our models ...")
            e2e, ir = arts["postprocess_fp32"], arts["openvino_fp32"]
            ours["FP32 e2e ONNX @onnxruntime"] = run_ours(e2e, "onnxruntime", args.threads, images)
            ours["FP32 e2e ONNX @openvino"] = run_ours(e2e, "openvino", args.threads, images)
            ours["FP32 IR @openvino"] = run_ours(ir, "openvino", args.threads, images)
            pp = e2e.meta["preprocess"]
            if standard_letterbox(pp, args.imgsz):
                inputs = [ultralytics_letterbox(p, args.imgsz) for p in images]
                ours[DIAG_A] = run_ours(e2e, "onnxruntime", args.threads, images, inputs)
            else:
                diag_skipped = f"our preprocessing {pp} is not ultralytics' square letterbox"
            int8_ort = run_ours(arts["postprocess"], "onnxruntime", args.threads, images)
            int8_ov = run_ours(arts["openvino_int8"], "openvino", args.threads, images)

        # -- the photos
        print(f"\n{len(images)} images: {len(args.photos)} photos, {len(args.images)} extra, {len(person)} coco128 "
              f"images with a person label; ultralytics {__import__('ultralytics').__version__}, "
              f"torch {torch.__version__}, {args.threads} threads")
        if arts is not None:
            print(f"our pipeline {args.spec.name}: {record['pipeline']['seconds']:.1f}s "
                  f"({', '.join(f'{k} {v}' for k, v in record['pipeline']['status'].items())});\n"
                  f"  preprocess {arts['postprocess_fp32'].meta['preprocess']}")
        print("\nThe photos (conf 0.25, iou 0.7, imgsz 640); fixtures README (ultralytics' default rect letterbox): "
              "bus 4 persons\n0.887/0.884/0.878/0.415, zidane 2 persons 0.890/0.817")
        record["photos"] = {}
        for k, p in enumerate(args.photos):
            rows = {"ultralytics rect=True (default)": ultra_rect[k], "ultralytics rect=False (square)": ultra[k]}
            if arts is not None:
                rows["ours FP32 e2e ONNX @onnxruntime"] = ours["FP32 e2e ONNX @onnxruntime"][k]
                rows["ours INT8 IR @openvino"] = int8_ov[k]
            for label, d in rows.items():
                print(f"  {p.name:<12} {label:<34} {scores_text(d)}")
            record["photos"][p.name] = {label: d["scores"].tolist() for label, d in rows.items()}

        # -- Part A
        if arts is not None:
            rows_a = {label: part_a(ultra, d, 0.5, 0.9) for label, d in ours.items()}
            record["part_a"] = rows_a
            print_part_a(rows_a, names, diag_skipped, failed)

        # -- Part B
        rows_b: dict[str, dict] = {}
        if arts is not None:
            rows_b["ours: INT8 Q/DQ e2e ONNX @onnxruntime vs FP32 e2e ONNX @onnxruntime"] = part_b(
                ours["FP32 e2e ONNX @onnxruntime"], int8_ort, 0.25, 0.5)
            rows_b["ours: INT8 IR @openvino vs FP32 IR @openvino (f32 hint)"] = part_b(
                ours["FP32 IR @openvino"], int8_ov, 0.25, 0.5)
            rows_b["diagnostic: INT8 IR @openvino vs INT8 Q/DQ ONNX @onnxruntime (same Q/DQ model)"] = part_b(
                int8_ort, int8_ov, 0.25, 0.5)
        for prec, (d, ovp) in ultra_ov.items():
            rows_b[f"ultralytics: OpenVINO {prec.upper()} export @openvino ({ovp}) vs .pt FP32"] = part_b(
                ultra, d, 0.25, 0.5)
        record["part_b"] = rows_b
        cs = (record.get("pipeline") or {}).get("calibrate") or {}
        calib_line = (f"calibration: ours {cs.get('method', '?')} on {cs.get('num_samples', '?')} images drawn from "
                      f"{args.calib} ({len(calib_images)} images, {len(calib_images & set(names))} of them among the "
                      "evaluated);\n  ultralytics: " + (f"NNCF through its exporter on coco8-pose split "
                                                         f"{exports['int8_split']}" if "int8" in exports
                                                         else "INT8 export skipped"))
        print_part_b(rows_b, len(images), calib_line, failed)

        # -- Part C
        log("Part C: latency ...")
        x, _ = preprocess(load_image(images[0]), arts["postprocess_fp32"].meta["preprocess"] if arts else None)
        default_prec = caps = None
        if arts is not None:
            import openvino as ov

            default_prec = ov_default_precision(arts["openvino_fp32"].file, args.threads)
            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        rows_c = latency_rows(arts, exports, args.threads, default_prec)
        load_before = os.getloadavg()
        latency(rows_c, x, args.warmup, args.iterations, args.rounds)
        record.update(part_c=rows_c, openvino_default_precision=default_prec,
                      load_average={"before": load_before, "after": os.getloadavg()})
        print_part_c(rows_c, args, images[0].name, record["host"], record["load_average"], default_prec, caps)

    record["seconds"] = time.perf_counter() - t_start
    record["failed"] = failed
    verdict = "all targets met" if not failed else "NOT MET: " + "; ".join(failed)
    print(f"\ntotal {record['seconds']:.0f}s; {verdict}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                        else str(o)))
    return 0 if not failed else 1

if __name__ == "__main__":
    sys.exit(main())
