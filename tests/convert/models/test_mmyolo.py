"""mmyolo models: built by mmyolo from its bundled configs, exported end to end, checked against
mmyolo's own PyTorch ``predict``; mmyolo checkpoints loaded without mmyolo; errors.

Skipped where the mmyolo extra is not installed (``pip install -e ".[mmyolo]"``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from convert import postprocess as pp
from convert.errors import ConvertError
from convert.models import ModelRequest, architecture
from convert.preprocess import preprocess

from steps import step

HAVE_MMYOLO = all(importlib.util.find_spec(m) is not None for m in ("mmyolo", "mmdet", "mmengine", "mmcv"))
needs_mmyolo = pytest.mark.skipif(not HAVE_MMYOLO, reason='mmyolo is not installed (pip install -e ".[mmyolo]")')

YOLOV5 = "yolov5_n-v61_syncbn_fast_8xb16-300e_coco"
PHOTOS = ("astronaut", "coffee", "motorcycle_left")


def _photos():
    from calib.builtin import load_builtin

    return [load_builtin(n) for n in PHOTOS]


def _mmyolo_model(config: str, seed: int, score_thr: float, size: int, spread: float = 16,
                  calibrate_bn: bool = False):
    """mmyolo's own detector (``init_detector``) from a bundled config, random weights, test thresholds lowered."""
    from convert.models import mmyolo

    cfg = mmyolo.read_config(config)  # imports mmyolo, with the mmcv._ext stand-in where needed
    from mmdet.apis import init_detector

    cfg.model.test_cfg.score_thr = score_thr
    cfg.model.pop("init_cfg", None)
    cfg.model.backbone.pop("init_cfg", None)
    for step_cfg in cfg.test_dataloader.dataset.pipeline:  # a smaller input keeps the test fast
        if "scale" in step_cfg:
            step_cfg["scale"] = (size, size)
    torch.manual_seed(seed)
    model = init_detector(cfg, None, device="cpu")
    if calibrate_bn:  # random convolutions on raw 0-255 pixels (YOLOX) saturate every score: normalise them
        pre = {**mmyolo.preprocess_from_config(cfg), "size": [size, size]}
        x = torch.from_numpy(np.concatenate([preprocess(img, pre)[0] for img in _photos()]))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batch
        model.train()
        with torch.no_grad():
            model.bbox_head.head_module(model.extract_feat(x))
    with torch.no_grad():  # spread the random weights' outputs so scores differ clearly between boxes
        for m in model.bbox_head.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.weight.mul_(spread)
    return model.eval()


def _mmyolo_predict(model, img_rgb):
    from mmdet.apis import inference_detector

    with torch.no_grad():
        res = inference_detector(model, np.ascontiguousarray(img_rgb[..., ::-1])).pred_instances
    order = torch.argsort(res.scores, descending=True, stable=True)
    return pp.ImageDetections(res.bboxes[order].numpy(), res.scores[order].numpy(),
                              res.labels[order].numpy().astype(np.int32))


def _threshold_in_a_gap(model, photos, size: int, n: int = 40) -> float:
    """A score threshold leaving about ``n`` (box, class) pairs per photo before NMS, in the widest gap
    between the pairs' scores nearby, so float32 rounding cannot move a pair across it (computed from
    the head outputs with mmyolo's own coder, without running its NMS on every pair)."""
    from convert.models import mmyolo

    pre = {**mmyolo.preprocess_from_config(model.cfg), "size": [size, size]}
    x = torch.from_numpy(np.concatenate([preprocess(img, pre)[0] for img in photos]))
    with torch.no_grad():
        outs = model.bbox_head.head_module(model.extract_feat(x))
    scores = mmyolo._coder_decode(model.bbox_head, outs[0], outs[1], outs[2] if len(outs) > 2 else None)[..., 4:]
    scores = np.sort(scores.flatten().numpy())[::-1]
    lo, hi = n * len(photos) // 2, n * len(photos) * 2
    i = lo + int(np.argmax(scores[lo:hi] - scores[lo + 1:hi + 1]))
    return float((scores[i] + scores[i + 1]) / 2)


@needs_mmyolo
@pytest.mark.parametrize("config,head_type,spread,calibrate_bn", [
    ("yolov8_n_syncbn_fast_8xb16-500e_coco", "distance", 16, False),
    ("rtmdet_tiny_syncbn_fast_8xb32-300e_coco", "distance", 16, False),
    ("yolox_tiny_fast_8xb8-300e_coco", "yolox", 0.5, True),
])
def test_end2end_onnx_on_ort_and_openvino_equals_mmyolo_predict(tmp_path, config, head_type, spread, calibrate_bn):
    from passes.export_onnx import ExportOnnx, ExportOnnxConfig
    from passes.load import Load, LoadConfig
    from passes.postprocess import Postprocess, PostprocessConfig
    from passes.truncate_head import TruncateHead, TruncateHeadConfig

    size = 320
    score_thr = 0.5  # replaced below by one in a gap of the model's scores
    ref = _mmyolo_model(config, seed=0, score_thr=score_thr, size=size, spread=spread, calibrate_bn=calibrate_bn)
    score_thr = _threshold_in_a_gap(ref, _photos(), size)
    ref.bbox_head.test_cfg.score_thr = score_thr
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": ref.state_dict()}, weights)
    loaded, _ = step(Load(LoadConfig(source="mmyolo", arch=config, weights=weights, input_size=(size, size))),
                     tmp_path, "load")
    assert loaded.meta["head"]["type"] == head_type
    cut, _ = step(TruncateHead(TruncateHeadConfig()), tmp_path, "cut", model=loaded)
    onnx_art, _ = step(ExportOnnx(ExportOnnxConfig()), tmp_path, "onnx", model=cut)
    t = ref.cfg.model.test_cfg
    # YOLOX's test config (yolox_style) keeps every pair NMS keeps; 300 is far more than these images produce
    e2e, _ = step(Postprocess(PostprocessConfig(score_threshold=score_thr, iou_threshold=t.nms.iou_threshold,
                                                max_detections=300)), tmp_path, "e2e", model=onnx_art)
    from convert.runtime import infer, load_runner

    # the project's runners: OpenVINO with INFERENCE_PRECISION_HINT f32 (its CPU default may be bf16,
    # whose ~5e-4 score errors move pairs across the thresholds)
    runners = [load_runner(e2e, backend) for backend in ("onnxruntime", "openvino")]
    total = 0
    for runner in runners:
        runner.activate()
    try:
        for img in _photos():
            want = _mmyolo_predict(ref, img)
            assert len(want) < 300, "thresholds should leave some, not all, boxes of a random model"
            x, tf = preprocess(img, e2e.meta["preprocess"])
            for runner in runners:
                got = pp.Detections.from_outputs(infer(runner, x)).image(0).to_original(tf)
                agreement = pp.match(want, got, tol=0.05)
                assert agreement.same, (config, runner.backend, agreement)
                np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=1e-4)
            total += len(want)
    finally:
        for runner in runners:
            runner.deactivate()
    assert total >= 5


def perturbed_checkpoint(arch: str, seed: int, path):
    """An mmyolo model built by mmyolo with weights moved off their init (so a wrong mapping shows), saved
    as an mmyolo checkpoint at path; returns (model, path)."""
    m, _ = architecture("mmyolo").load(ModelRequest(arch=arch, seed=seed))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"state_dict": m.detector.state_dict()}, path)
    return m, path


@needs_mmyolo
def test_mmyolo_yolov5_checkpoint_gives_the_same_raw_maps_with_and_without_mmyolo(tmp_path):
    m, weights = perturbed_checkpoint(YOLOV5, 1, tmp_path / "yolov5n_mmyolo.pth")
    with_mmyolo, _ = architecture("mmyolo").load(ModelRequest(arch=YOLOV5, weights=weights))
    without, _ = architecture("yolov5").load(ModelRequest(arch="yolov5n", weights=weights))
    x = torch.rand(1, 3, 256, 320)
    with torch.no_grad():
        a, b = with_mmyolo.truncate_head()(x), without.truncate_head()(x)
    assert len(a) == len(b) == 3
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert with_mmyolo.head_meta()["anchors"] == without.head_meta()["anchors"]


@needs_mmyolo
def test_mmyolo_yolov8_checkpoint_loads_into_the_own_ultralytics_builder(tmp_path):
    cfg = "yolov8_n_syncbn_fast_8xb16-500e_coco"
    m, weights = perturbed_checkpoint(cfg, 2, tmp_path / "yolov8n_mmyolo.pth")
    without, _ = architecture("ultralytics").load(ModelRequest(arch="yolov8n", weights=weights))
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        a, b = m.truncate_head()(x), without.truncate_head()(x)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


@needs_mmyolo
@pytest.mark.parametrize("cfg,head_type,fields", [
    ("rtmdet_tiny_syncbn_fast_8xb32-300e_coco", "distance", {"bins": 0, "offset": 0.0}),
    ("yolov8_n_syncbn_fast_8xb16-500e_coco", "distance", {"bins": 16, "offset": 0.5}),
    ("ppyoloe_plus_s_fast_8xb8-80e_coco", "distance", {"bins": 17, "offset": 0.5}),
    ("yolov6_n_syncbn_fast_8xb32-400e_coco", "distance", {"bins": 0, "offset": 0.5}),  # RepVGG: deploy form
    ("yolox_tiny_fast_8xb8-300e_coco", "yolox", {}),
    ("yolov7_tiny_syncbn_fast_8x16b-300e_coco", "yolov5", {"na": 3}),
    (YOLOV5, "yolov5", {"na": 3}),
])
def test_truncated_maps_decode_on_the_host_as_mmyolo_decodes(cfg, head_type, fields):
    """Host-side numpy decode of the raw maps equals mmyolo's priors + bbox coder on its own head
    outputs (YOLOv5/v7: the family's torch decode), and the recipe rebuilds the same module."""
    from convert import heads

    m, recipe = architecture("mmyolo").load(ModelRequest(arch=cfg, seed=0))
    meta = m.head_meta()
    assert meta["type"] == head_type and {k: meta[k] for k in fields} == fields
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        decoded = m(x)
        maps = [t.numpy() for t in m.truncate_head()(x)]
    head = heads.parse(m.head_meta())
    head.check_maps([p.shape for p in maps])
    got = head.decode(maps)
    want = head.decoded_candidates(decoded.numpy())
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    rebuilt = architecture("mmyolo").from_recipe(recipe)
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.truncate_head()(x), m(x)))


@needs_mmyolo
def test_preprocessing_is_recorded_from_the_config():
    m, _ = architecture("mmyolo").load(ModelRequest(arch="rtmdet_tiny_syncbn_fast_8xb32-300e_coco"))
    assert m.preprocess["channel_order"] == "BGR" and m.preprocess["mean"] == [103.53, 116.28, 123.675]
    assert m.preprocess["interpolation"] == "cv2_area" and m.preprocess["align"] == "center"
    m, _ = architecture("mmyolo").load(ModelRequest(arch="yolox_tiny_fast_8xb8-300e_coco"))
    assert m.preprocess["align"] == "top_left" and m.preprocess["size"] == [416, 416]
    m, _ = architecture("mmyolo").load(ModelRequest(arch=YOLOV5))
    assert m.preprocess["channel_order"] == "RGB" and m.preprocess["std"] == [255.0] * 3
    assert m.preprocess["pad_value"] == 114


@needs_mmyolo
def test_a_config_that_is_not_a_supported_detector_is_refused(tmp_path):
    with pytest.raises(ConvertError, match="not a detector of a supported mmyolo family"):
        architecture("mmyolo").load(ModelRequest(arch="rtmdet-ins_s_syncbn_fast_8xb32-300e_coco"))
    with pytest.raises(ConvertError, match="neither a config file nor one of mmyolo's bundled configs.*yolov5_n"):
        architecture("mmyolo").load(ModelRequest(arch="yolov5_n-v61_syncbn_fast_8xb16-300e_cocoo"))


def test_without_mmyolo_the_error_names_the_extra(monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name.split(".")[0] == "mmyolo" else real(name, *a))
    with pytest.raises(ConvertError, match=r"needs mmyolo.*") as e:
        architecture("mmyolo").load(ModelRequest(arch=YOLOV5))
    assert "[mmyolo]" in str(e.value) and "\n" not in str(e.value)


def test_an_mmyolo_checkpoint_without_arch_says_to_give_one(tmp_path):
    weights = tmp_path / "m.pth"
    torch.save({"state_dict": {"backbone.stem.conv.weight": torch.zeros(1), "bbox_head.x": torch.zeros(1)}}, weights)
    with pytest.raises(ConvertError, match="mmyolo checkpoint.*does not say its architecture"):
        architecture("yolov5").load(ModelRequest(weights=weights))


def test_load_config_needs_one_mmyolo_config_and_a_config_file_is_code(tmp_path):
    from pydantic import ValidationError

    from passes.load import Load, LoadConfig

    with pytest.raises(ValidationError, match="source mmyolo needs one config"):
        LoadConfig(source="mmyolo")
    cfg_file = tmp_path / "my_config.py"
    cfg_file.write_text("_base_ = []\n")
    assert "executes the config file" in Load.runs_code(LoadConfig(source="mmyolo", arch_file=cfg_file))
    assert Load.runs_code(LoadConfig(source="mmyolo", arch=YOLOV5)) is None
