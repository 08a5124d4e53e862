"""Tests of the postprocess pass: end-to-end graphs against host-side post-processing, errors, validation."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from convert import heads
from convert import postprocess as pp
from convert.base import Artifact, RunContext
from convert.errors import PassError, SpecError
from convert.graph.reference import run_with_references
from convert.manager import Manager
from convert.onnxutil import ort_session
from convert.preprocess import DEFAULT_PREPROCESS, preprocess
from convert.spec import load_spec
from convert.store import Store
from convert.versions import open_artifact
from passes.postprocess import Postprocess, PostprocessConfig

from synthetic import synthetic_head, synthetic_model

REPO = Path(__file__).resolve().parents[2]


def truncated_artifact(tmp_path: Path, nk: int = 0, opset: int = 17, **meta_changes) -> Artifact:
    head = synthetic_head(nc=3, nk=nk)
    folder = tmp_path / f"in_{nk}_{opset}"
    folder.mkdir()
    onnx.save(synthetic_model(head, size=(64, 96), batch=None, seed=4, opset=opset), folder / "model.onnx")
    meta = {"truncated": True, "end2end": False, "precision": "fp32", "head": head, "names": head["names"],
            "preprocess": {**DEFAULT_PREPROCESS, "size": [64, 96]}, "outputs": head["outputs"],
            "input": {"name": "images", "shape": ["batch", 3, 64, 96]}, **meta_changes}
    return Artifact("onnx", folder, "model.onnx", meta, "x")


def run_pass(art: Artifact, tmp_path: Path, name: str = "out", **config) -> tuple[Artifact, dict]:
    out = tmp_path / name
    out.mkdir()
    res = Postprocess(PostprocessConfig(**config)).run({"model": art}, out, RunContext("pp", progress=False))
    return Artifact(res.kind, out, res.main, res.meta, "y"), res.summary


def ort_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort_session(path)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))


X = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)


@pytest.mark.parametrize("nk", [0, 4])
def test_end2end_model_equals_host_postprocessing(tmp_path, nk):
    art = truncated_artifact(tmp_path, nk)
    e2e, summary = run_pass(art, tmp_path, score_threshold=0.3, iou_threshold=0.5, max_detections=30)
    names = list(pp.OUTPUT_NAMES[:4]) + (["keypoints"] if nk else [])
    assert e2e.meta["end2end"] is True and e2e.meta["truncated"] is False and e2e.meta["outputs"] == names
    assert e2e.meta["postprocess"]["backend"] == "onnx" and e2e.meta["head"] == art.meta["head"]
    assert summary["backend"] == "onnx" and summary["nodes_added"] > 0
    model = onnx.load(str(e2e.file))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["end2end"] == "true" and json.loads(props["postprocess"])["max_detections"] == 30
    got = pp.Detections.from_outputs(ort_outputs(e2e.file, X))
    maps = ort_outputs(art.file, X)
    want = heads.postprocess([maps[n] for n in art.meta["head"]["outputs"]], art.meta["head"],
                          pp.NMSSettings(0.3, 0.5, 30))
    assert want.num_dets.min() > 0
    # same detections; coordinates differ by the runtimes' sigmoid rounding only
    np.testing.assert_array_equal(got.num_dets, want.num_dets)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    if nk:
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3)


def test_keypoints_can_be_dropped_and_trt_backends_agree(tmp_path):
    art = truncated_artifact(tmp_path, nk=4)
    ref, _ = run_pass(art, tmp_path, "onnx", keypoints=False, class_agnostic=True, score_threshold=0.3)
    assert ref.meta["outputs"] == list(pp.OUTPUT_NAMES[:4])
    want = ort_outputs(ref.file, X)
    for backend in ("efficient_nms_trt", "efficient_nms_onnx_trt"):
        e2e, _ = run_pass(art, tmp_path, backend, backend=backend, keypoints=False, class_agnostic=True,
                          score_threshold=0.3)
        model = onnx.load(str(e2e.file))
        assert [n.domain for n in model.graph.node].count("TRT") == 1
        got = run_with_references(model, {"images": X})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{backend} {name}")


@pytest.mark.parametrize("case,config,match", [
    ({"truncated": False}, {}, "not truncated"),
    ({"head": None}, {}, "no head metadata"),
    ({"head": {**synthetic_head(), "type": "yolov10"}}, {}, "not supported"),
    ({"head": {**synthetic_head(), "type": "yolov8"}}, {}, r"head metadata \(yolov8\): anchors"),
    ({}, {"head_type": "yolov5_pose"}, r"stages\.pp\.with\.head_type"),
    ({}, {"keypoints": True}, r"stages\.pp\.with\.keypoints"),
    ({"nk": 4}, {"backend": "efficient_nms_trt"}, r"stages\.pp\.with\.backend"),
    ({"opset": 12}, {}, "opset 12"),
    ({"head": {**synthetic_head(), "outputs": ["p3", "nope"]}}, {}, "not in the graph"),
])
def test_input_problems_are_pass_errors(tmp_path, case, config, match):
    nk, opset = case.pop("nk", 0), case.pop("opset", 17)
    art = truncated_artifact(tmp_path, nk=nk, opset=opset, **case)
    with pytest.raises(PassError, match=match):
        run_pass(art, tmp_path, **config)


@pytest.mark.parametrize("override,match", [
    ("iou_threshold=1.5", "iou_threshold"),
    ("iou_threshold=-0.1", "iou_threshold"),
    ("score_threshold=2", "score_threshold"),
    ("max_detections=0", "max_detections"),
    ("pre_top_k=0", "pre_top_k"),
    ("backend=batched_nms", "backend"),
    ("head_type=yolov10", "not supported"),
    ("head_type=yolov5 keypoints=true", "needs a keypoint head"),
    ("head_type=yolov5_pose backend=efficient_nms_trt", "cannot output keypoints"),
])
def test_invalid_settings_fail_validation(tmp_path, override, match):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not read at validation")
    overrides = [f"model.weights={weights}"] + [f"stages.postprocess.with.{o}" for o in override.split()]
    with pytest.raises(SpecError, match=match):
        load_spec(REPO / "pipelines" / "yolov5n_end2end.yaml", overrides)


def test_pipeline_spec_is_valid(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    spec = load_spec(REPO / "pipelines" / "yolov5n_end2end.yaml", [f"model.weights={weights}"])
    assert [s.pass_name for s in spec.stages] == ["load", "truncate_head", "export_onnx", "simplify", "postprocess"]
    assert spec.stage("postprocess").config.backend == "onnx"


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """A generated RGB image with gradients and blobs (structure for the network to respond to)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 60 + 120
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
        img[(yy * max(h, w) - cy) ** 2 + (xx * max(h, w) - cx) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


POSE_SPEC = """
stages:
  load: {with: {source: yolov5, arch: yolov5s-pose, weights: WEIGHTS, input_size: [128, 160]}}
  truncate_head: {}
  export_onnx: {with: {opset: 17, dynamic_batch: true}}
  simplify: {}
  postprocess: {with: {score_threshold: 0.3, iou_threshold: 0.5, max_detections: 300}}
"""


def image_dependent_pose_weights(path: Path) -> Path:
    """yolov5s-pose weights whose outputs depend on the image.

    At the default initialisation the features vanish with depth and the head outputs are its
    biases whatever the image; He-initialised convolutions, and head convolutions scaled to
    logits of spread ~1.5 on a sample image, give image-dependent boxes, scores and keypoints.
    """
    import torch
    from torch import nn

    from convert.models.yolo import build_model, load_arch

    model = build_model(load_arch("yolov5s-pose"), seed=0)
    gen = torch.Generator().manual_seed(0)
    feats = []
    hook = model.head.register_forward_pre_hook(lambda _, inp: feats.extend(f.std().item() for f in inp[0]))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5, generator=gen)
        model(torch.from_numpy(preprocess(photo_like(128, 160, 9), {"size": [128, 160]})[0]))
        hook.remove()
        for i, std in enumerate(feats):
            for conv in (model.head.m[i], model.head.m_kpt[i]):
                conv.weight.normal_(0, 1.5 / (std * conv.weight[0].numel() ** 0.5), generator=gen)
                conv.bias.zero_()
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pose_pipeline(tmp_path_factory):
    """yolov5s-pose with image-dependent weights through the pipeline: (end-to-end, truncated) artifacts."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("pose")
    spec = POSE_SPEC.replace("WEIGHTS", str(image_dependent_pose_weights(tmp / "pose.pt")))
    (tmp / "spec.yaml").write_text(textwrap.dedent(spec))
    report = Manager(load_spec(tmp / "spec.yaml"), Store(tmp / "store"), tmp / "artifacts", progress=False).run()
    return open_artifact(report.published / "postprocess"), open_artifact(report.published / "simplify")


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_pose_model_end_to_end_keypoints_match_host(pose_pipeline, resize):
    """In-graph keypoints equal host-side ones on non-square photos, mapped back through either resize.

    The graph does not depend on the resize mode (preprocessing happens before it), so one
    pipeline run serves both; only the recorded preprocessing differs.
    """
    e2e, trunc = pose_pipeline
    head, settings = e2e.meta["head"], pp.NMSSettings(0.3, 0.5, 300)
    prep = {**e2e.meta["preprocess"], "resize": resize}
    assert head["nk"] == 17 and e2e.meta["postprocess"]["score_threshold"] == 0.3
    ov = pytest.importorskip("openvino")
    core = ov.Core()

    def ov_run(path: Path):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(x):
            res = compiled(x)
            return {o.get_any_name(): res[o] for o in compiled.outputs}
        return run

    # each runtime's end-to-end model against host-side post-processing of its own raw maps (the
    # runtimes' convolutions differ slightly; keypoints amplify logits by 2 * stride)
    runtimes = {"onnxruntime": (lambda x: ort_outputs(e2e.file, x), lambda x: ort_outputs(trunc.file, x)),
                "openvino": (ov_run(e2e.file), ov_run(trunc.file))}
    found = []
    for i, (h, w) in enumerate([(240, 400), (420, 250), (128, 160)]):
        x, tf = preprocess(photo_like(h, w, i), prep)
        for runtime, (end2end, truncated) in runtimes.items():
            maps = truncated(x)
            host = heads.postprocess([maps[n] for n in head["outputs"]], head, settings).image(0).to_original(tf)
            dets = pp.Detections.from_outputs(end2end(x))
            assert dets.keypoints.shape == (1, 300, 17, 3)
            agr = pp.match(host, dets.image(0).to_original(tf), tol=1e-3)
            assert agr.same, (runtime, (h, w), agr)
        assert 5 <= len(host) < 300
        found.append(host)
    # the weights make the detections depend on the image
    assert len({len(d) for d in found}) > 1 or not np.allclose(found[0].scores, found[1].scores)


@pytest.mark.parametrize("nk", [0, 4])
def test_objectness_prefilter_leaves_the_detections_unchanged(tmp_path, monkeypatch, nk):
    """YOLOv5 candidates whose objectness cannot reach the score threshold are dropped before decode
    (NonZero + Gather); every output equals that of the graph decoding all candidates, on ONNX Runtime
    and OpenVINO, including thresholds no candidate passes."""
    from convert.graph import decode, end2end

    art = truncated_artifact(tmp_path, nk)
    model = onnx.load(str(art.file))
    for thr in (0.3, 0.05, 1.0):
        s = pp.NMSSettings(thr, 0.5, 30)
        filtered = end2end.make_end2end(model, art.meta["head"], s)
        ops = [n.op_type for n in filtered.graph.node]
        levels = len(art.meta["head"]["strides"])
        assert ops.count("NonZero") == levels  # one test per level map
        with monkeypatch.context() as m:  # the same rewrite decoding every candidate
            m.setattr(end2end, "append_decode", lambda b, maps, head, thr=None: decode.append_decode(b, maps, head))
            full = end2end.make_end2end(model, art.meta["head"], s)
        full_ops = [n.op_type for n in full.graph.node]
        assert "NonZero" not in full_ops
        # the passing candidates are gathered from the maps as they are: no whole-map transpose is left
        assert full_ops.count("Transpose") - ops.count("Transpose") == levels
        runs = {}
        for name, mdl in (("filtered", filtered), ("full", full)):
            onnx.save(mdl, str(tmp_path / f"{name}.onnx"))
            runs[name] = ort_outputs(tmp_path / f"{name}.onnx", X)
        assert (runs["full"]["num_dets"] > 0).all() == (thr < 1)
        for o, v in runs["full"].items():
            np.testing.assert_array_equal(runs["filtered"][o], v, err_msg=f"{o} at threshold {thr}")
        ov = pytest.importorskip("openvino")
        compiled = ov.Core().compile_model(str(tmp_path / "filtered.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        res = compiled(X)
        got = {o.get_any_name(): res[o] for o in compiled.outputs}
        np.testing.assert_array_equal(got["num_dets"], runs["full"]["num_dets"])
        np.testing.assert_array_equal(got["classes"], runs["full"]["classes"])
        np.testing.assert_allclose(got["boxes"], runs["full"]["boxes"], atol=1e-3)
    # TensorRT's plugins keep the full candidate set
    trt = end2end.make_end2end(model, art.meta["head"], pp.NMSSettings(0.3, 0.5, 30), "efficient_nms_onnx_trt")
    assert "NonZero" not in [n.op_type for n in trt.graph.node]
