"""The evaluate pass: end-to-end and host-NMS models, keypoints, accuracy gates (also through the CLI)."""

from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import onnx
import pytest
from coco import coco_file
from onnx import helper, numpy_helper
from PIL import Image
from pydantic import ValidationError

from convert.base import Artifact, RunContext
from convert.errors import ConvertError
from convert.preprocess import DEFAULT_PREPROCESS, letterbox
from passes.evaluate import Evaluate, EvaluateConfig, Gate

NAMES = ["person", "ball"]
NK = 3
SIZE = (64, 64)
# One 96x64 image: a person with 3 keypoints (one absent) and a ball without visible keypoints.
LABEL = ["0 0.5 0.5 0.4 0.8 0.45 0.3 2 0.55 0.3 2 0 0 0", "1 0.15 0.8 0.2 0.3 0 0 0 0 0 0 0 0 0"]


def write_dataset(root, label=LABEL, size=(96, 64)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("\n".join(label))
    return root


def ground_truth_in_network_pixels(label=LABEL, size=(96, 64), shift=0.0):
    """The labels as end-to-end outputs of a SIZE network (letterboxed), optionally shifted right."""
    w, h = size
    _, tf = letterbox(np.zeros((h, w, 3), np.uint8), SIZE)
    rows = [np.array(r.split(), np.float32) for r in label]
    k = len(rows)
    boxes = np.zeros((1, 8, 4), np.float32)
    kpts = np.zeros((1, 8, NK, 3), np.float32)
    for i, r in enumerate(rows):
        cx, cy, bw, bh = r[1] * w, r[2] * h, r[3] * w, r[4] * h
        boxes[0, i] = [cx - bw / 2 + shift, cy - bh / 2, cx + bw / 2 + shift, cy + bh / 2]
        kp = r[5:].reshape(NK, 3)
        kpts[0, i, :, 0], kpts[0, i, :, 1], kpts[0, i, :, 2] = kp[:, 0] * w + shift, kp[:, 1] * h, kp[:, 2] / 2
    boxes[..., [0, 2]] = boxes[..., [0, 2]] * tf.gain[0] + tf.pad[0]
    boxes[..., [1, 3]] = boxes[..., [1, 3]] * tf.gain[1] + tf.pad[1]
    kpts[..., 0] = kpts[..., 0] * tf.gain[0] + tf.pad[0]
    kpts[..., 1] = kpts[..., 1] * tf.gain[1] + tf.pad[1]
    scores = np.zeros((1, 8), np.float32)
    scores[0, :k] = [0.9, 0.8][:k]
    classes = np.zeros((1, 8), np.int32)
    classes[0, :k] = [int(r[0]) for r in rows]
    return {"num_dets": np.array([[k]], np.int32), "boxes": boxes, "scores": scores, "classes": classes,
            "keypoints": kpts}


def meta_e2e(nk=NK):
    return {"end2end": True, "names": NAMES, "precision": "fp32",
            "head": {"type": "yolov5_pose", "nc": len(NAMES), "nk": nk, "strides": [8, 16, 32]},
            "preprocess": {**DEFAULT_PREPROCESS, "size": list(SIZE)}, "input": {"name": "images"}}


def constant_model(path, outputs: dict[str, np.ndarray]):
    """An ONNX model that ignores its image input and returns fixed end-to-end outputs."""
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n)) for n, v in outputs.items()]
    graph = helper.make_graph(nodes, "constant",
                              [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, *SIZE])],
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for n, v in outputs.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def artifact(tmp_path, name, outputs, meta=None):
    d = tmp_path / name
    d.mkdir()
    constant_model(d / "model.onnx", outputs)
    return Artifact("onnx", d, "model.onnx", meta or meta_e2e(), name)


def run(tmp_path, name, config, **inputs):
    out = tmp_path / name
    out.mkdir()
    res = Evaluate(config).run(inputs, out, RunContext(name, progress=False))
    return Artifact("metrics", out, res.main, res.meta, name), res, json.loads((out / res.main).read_text())


def test_ground_truth_through_an_end_to_end_model_scores_one(tmp_path):
    data = write_dataset(tmp_path / "ds")
    model = artifact(tmp_path, "perfect", ground_truth_in_network_pixels())
    _, res, rec = run(tmp_path, "ev", EvaluateConfig(data=data), model=model)
    assert rec["metrics"] == {"mAP50-95": pytest.approx(1.0), "mAP50": pytest.approx(1.0),
                              "kpt_mAP50-95": pytest.approx(1.0), "kpt_mAP50": pytest.approx(1.0)}
    assert res.summary.pop("eval_seconds") > 0  # timings go to the summary (the manifest), not metrics.json
    assert res.summary == {"mAP50-95": 1.0, "mAP50": 1.0, "kpt_mAP50-95": 1.0, "kpt_mAP50": 1.0, "images": 1}
    assert "seconds" not in rec
    assert [c["class"] for c in rec["per_class"]] == NAMES and rec["kpt_per_class"][0]["instances"] == 1
    assert rec["label"] == "onnx/fp32@onnxruntime" and rec["settings"]["end2end"] is True
    assert rec["dataset"]["images"] == 1 and rec["dataset"]["instances"] == 2 and res.gate_failures == []
    assert rec["runner"]["providers"] == ["CPUExecutionProvider"]


def test_truncated_pose_torch_model_with_host_side_nms(tmp_path):
    from passes.load import Load, LoadConfig
    from passes.truncate_head import TruncateHead, TruncateHeadConfig

    label = ["0 0.5 0.5 0.4 0.8 " + " ".join(["0.5 0.5 2"] * 17)]
    data = write_dataset(tmp_path / "ds", label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tmp_path / "load"
        out.mkdir()
        r = Load(LoadConfig(arch="yolov5s-pose", input_size=SIZE)).run({}, out, RunContext("l", progress=False))
        loaded = Artifact(r.kind, out, r.main, r.meta, "l")
    out = tmp_path / "trunc"
    out.mkdir()
    r = TruncateHead(TruncateHeadConfig()).run({"model": loaded}, out, RunContext("t", progress=False))
    truncated = Artifact(r.kind, out, r.main, r.meta, "t")
    _, _, rec = run(tmp_path, "ev", EvaluateConfig(data=data, max_det=20), model=truncated)
    assert set(rec["metrics"]) == {"mAP50-95", "mAP50", "kpt_mAP50-95", "kpt_mAP50"}
    assert all(0 <= v <= 1 for v in rec["metrics"].values())
    assert rec["detections"] == 20 and rec["model"]["backend"] == "torch"  # host NMS kept max_det boxes


def test_max_drop_gate_names_metric_reference_and_figures(tmp_path):
    data = write_dataset(tmp_path / "ds")
    ref_art, _, _ = run(tmp_path, "ref", EvaluateConfig(data=data, label="fp32"),
                        model=artifact(tmp_path, "perfect", ground_truth_in_network_pixels()))
    worse = artifact(tmp_path, "worse", ground_truth_in_network_pixels(shift=4.0), {**meta_e2e(), "precision": "int8"})
    tight = EvaluateConfig(data=data, gates=[{"max_drop": {"metric": "mAP50-95", "reference": "fp32", "value": 0.01}},
                                             {"min": {"metric": "kpt_mAP50", "value": 0.5}}])
    _, res, rec = run(tmp_path, "int8", tight, model=worse, reference=[ref_art])
    drop = 1.0 - rec["metrics"]["mAP50-95"]
    assert drop > 0.01
    assert len(res.gate_failures) == 1
    msg = res.gate_failures[0]
    assert "mAP50-95 of onnx/int8@onnxruntime" in msg and "reference 'fp32'" in msg
    assert f"dropped {drop:.4f} (1.0000 -> {rec['metrics']['mAP50-95']:.4f})" in msg and "allowed drop 0.0100" in msg
    assert [g["passed"] for g in rec["gates"]] == [False, True]
    loose = EvaluateConfig(data=data, gates=[{"max_drop": {"metric": "mAP50-95", "value": 0.99}}])
    assert run(tmp_path, "loose", loose, model=worse, reference=[ref_art])[1].gate_failures == []
    floor = EvaluateConfig(data=data, gates=[{"min": {"metric": "mAP50-95", "value": 0.99}}])
    assert "below the minimum 0.9900" in run(tmp_path, "floor", floor, model=worse)[1].gate_failures[0]


def test_gate_errors(tmp_path):
    data = write_dataset(tmp_path / "ds")
    model = artifact(tmp_path, "perfect", ground_truth_in_network_pixels())
    ref_art, _, _ = run(tmp_path, "ref", EvaluateConfig(data=data, label="fp32"), model=model)
    gate = [{"max_drop": {"metric": "mAP50", "reference": "fp16", "value": 0.01}}]
    with pytest.raises(ConvertError, match="no reference matches 'fp16'"):
        run(tmp_path, "a", EvaluateConfig(data=data, gates=gate), model=model, reference=[ref_art])
    with pytest.raises(ConvertError, match="needs a reference evaluation"):
        run(tmp_path, "b", EvaluateConfig(data=data, gates=gate), model=model)
    other = write_dataset(tmp_path / "other", LABEL[:1])
    with pytest.raises(ConvertError, match="different dataset"):
        run(tmp_path, "c", EvaluateConfig(data=other, gates=[{"max_drop": {"metric": "mAP50", "value": 0.1}}]),
            model=model, reference=[ref_art])
    with pytest.raises(ConvertError, match="different settings"):
        run(tmp_path, "d", EvaluateConfig(data=data, iou=0.7, gates=[{"max_drop": {"metric": "mAP50", "value": 0.1}}]),
            model=model, reference=[ref_art])
    with pytest.raises(ValidationError, match="exactly one of max_drop or min"):
        Gate()
    with pytest.raises(ValidationError):
        Gate(min={"metric": "accuracy", "value": 0.5})
    boxes_only = {k: v for k, v in ground_truth_in_network_pixels().items() if k != "keypoints"}
    no_kpts = artifact(tmp_path, "boxes", boxes_only, {**meta_e2e(nk=0), "head": {"type": "yolov5", "nc": 2, "nk": 0}})
    with pytest.raises(ConvertError, match="has no such figure"):
        run(tmp_path, "e", EvaluateConfig(data=data, gates=[{"min": {"metric": "kpt_mAP50", "value": 0.1}}]),
            model=no_kpts)


def test_tight_gate_fails_the_run_with_exit_status_1(cli, tmp_path):
    from convert.onnxutil import set_metadata

    write_dataset(tmp_path / "ds")
    for name, shift in (("perfect", 0.0), ("worse", 4.0)):
        m = onnx.load(constant_model(tmp_path / f"{name}.onnx", ground_truth_in_network_pixels(shift=shift)))
        set_metadata(m, {k: v for k, v in meta_e2e().items() if k != "precision"})
        onnx.save(m, tmp_path / f"{name}.onnx")
    (tmp_path / "gate.yaml").write_text(textwrap.dedent("""
        stages:
          fp32: {pass: load, with: {source: onnx, weights: perfect.onnx}}
          other: {pass: load, with: {source: onnx, weights: worse.onnx}}
          eval_fp32: {pass: evaluate, inputs: {model: fp32}, with: {data: ds, label: fp32}}
          eval_other:
            pass: evaluate
            inputs: {model: other, reference: eval_fp32}
            with:
              data: ds
              label: candidate
              gates: [{max_drop: {metric: mAP50-95, reference: fp32, value: 0.01}}]
    """))
    code, out, err = cli("run", "gate.yaml", "--no-progress")
    assert code == 1
    assert "accuracy gate failed: eval_other: mAP50-95 of candidate dropped" in err
    assert "(1.0000 -> 0." in err and "against reference 'fp32'; allowed drop 0.0100" in err
    published = sorted((tmp_path / "artifacts" / "gate").iterdir())
    record = json.loads((published[0] / "eval_other" / "metrics.json").read_text())
    assert record["gates"][0]["passed"] is False  # the figures are published for inspection


def test_labels_found_by_convention_join_the_cache_key(tmp_path):
    data = write_dataset(tmp_path / "ds")
    # Evaluating ds/images reads ds/labels, outside the keyed `data` folder: the pass names it.
    assert Evaluate.key_files(EvaluateConfig(data=data / "images")) == [data / "labels" / "a.txt"]
    assert Evaluate.key_files(EvaluateConfig(data=data / "images", labels=data / "labels")) == []


@pytest.mark.parametrize("labels,match", [
    (None, "none of the .* images has a YOLO label file"),
    ("", "hold no labelled object"),
    ("0 nan 0.5 0.2 0.2", "non-finite value"),
    ("0 0.5 0.5 1.7 0.2", "is not normalised"),
    ("0 0.5 0.5 0 0.2", "is not normalised"),
    ("dir", "is not a regular file"),
])
def test_evaluation_without_usable_labels_fails_instead_of_scoring_zero(tmp_path, labels, match):
    """An unlabelled folder used to score mAP 0 with exit 0, so a max_drop gate between two of them passed."""
    data = write_dataset(tmp_path / "ds")
    for f in sorted((data / "labels").rglob("*.txt")):
        if labels is None:
            f.unlink()
        elif labels == "dir":
            f.unlink()
            f.mkdir()
            break
        else:
            f.write_text(labels + "\n" if labels else "")
    model = artifact(tmp_path, "perfect", ground_truth_in_network_pixels())
    with pytest.raises(ConvertError, match=match) as e:
        run(tmp_path, "ev", EvaluateConfig(data=data), model=model)
    assert "\n" not in str(e.value)


def test_a_described_source_is_resolved_and_parsed_once_per_process(tmp_path, monkeypatch):
    """A COCO file behind a stage is parsed once: by the validator, key_files and run alike (memoised)."""
    import calib.data as data

    ann = coco_file(tmp_path)
    parsed = []
    real = json.loads
    monkeypatch.setattr(data.json, "loads", lambda text, *a, **k: parsed.append(1) or real(text, *a, **k))
    config = EvaluateConfig(data=ann, images=tmp_path / "imgs")  # the validator resolves the source
    assert Evaluate.key_files(config) == [tmp_path / "imgs" / f"{i}.jpg" for i in range(3)]  # named by the file
    ds = config.dataset([c.path for c in config.drawn()], ["square"], 0)
    assert len(ds) == 3 and len(ds.gt["annotations"]) == 3
    assert config.resolve() is config.resolve() and len(parsed) == 1
    # an edited file is read again
    ann.write_text(ann.read_text().replace('"0.jpg"', '"2.jpg"', 1))
    assert len(config.resolve().candidates) == 2 and len(parsed) == 2


