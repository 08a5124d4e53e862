"""``method: auto`` of the calibrate pass, on a generated detector whose accuracy depends on the ranges.

The detector finds bright 8x8 squares on a dark background: its only quantized tensor is the
per-cell mean brightness (an AveragePool), and its objectness is a steep function of it. A
method that clips that tensor below the squares' brightness (percentile at 90: squares are
about 2% of the values) makes every square look like background, so the detector finds
nothing; MinMax keeps the squares and scores like the float model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pydantic import ValidationError

from calib.auto import holdout_dataset, pick
from calib.data import LabelledSource
from convert.base import Artifact, RunContext
from convert.errors import ConvertError
from passes.calibrate import Calibrate, CalibrateConfig

pytest.importorskip("pycocotools")

SIZE = 32
CELL = 8
META = {"precision": "fp32", "truncated": True, "names": ["square"],
        "preprocess": {"size": [SIZE, SIZE], "resize": "letterbox", "pad_value": 114},
        "head": {"type": "yolov5", "nc": 1, "nk": 0, "na": 1, "strides": [CELL], "anchors": [[[CELL, CELL]]],
                 "outputs": ["p3"]}}


def square_detector(path):
    """Raw YOLOv5 head map [b, 6, 4, 4]: boxes fixed to the cell (zero logits give an 8x8 box at the cell
    centre), objectness logit 40 * (cell brightness - 0.6), class logit 10."""
    w = np.zeros((6, 3, 1, 1), np.float32)
    w[4] = 40 / 3
    b = np.array([0, 0, 0, 0, -24, 10], np.float32)
    nodes = [helper.make_node("AveragePool", ["images"], ["pooled"], name="pool", kernel_shape=[CELL, CELL],
                              strides=[CELL, CELL]),
             helper.make_node("Conv", ["pooled", "w", "b"], ["p3"], name="head/Conv")]
    n = SIZE // CELL
    graph = helper.make_graph(nodes, "squares",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("p3", TensorProto.FLOAT, ["batch", 6, n, n])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def square_dataset(root, n=12, seed=0):
    """A YOLO dataset: dark noise images with one bright square on a random cell each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cells = SIZE // CELL
    for i in range(n):
        img = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
        gx, gy = rng.integers(0, cells, 2)
        img[gy * CELL:(gy + 1) * CELL, gx * CELL:(gx + 1) * CELL] = 255
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        c = CELL / SIZE
        (root / "labels" / f"{i:02d}.txt").write_text(f"0 {(gx + 0.5) * c} {(gy + 0.5) * c} {c} {c}\n")
    return root


@pytest.fixture
def detector(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    square_detector(d / "model.onnx")
    return Artifact("onnx", d, "model.onnx", dict(META), digest="model-digest")


def calibrate(tmp_path, art, name, **cfg):
    out = tmp_path / name
    out.mkdir()
    res = Calibrate(CalibrateConfig(**cfg)).run({"model": art}, out, RunContext(name, progress=False))
    return res, json.loads((out / "table.json").read_text())


def test_auto_keeps_the_method_that_scores_best_not_the_first(tmp_path, detector):
    data = square_dataset(tmp_path / "ds")
    auto = {"candidates": ["percentile", "minmax"], "quantize": {"bias_correction": False}}
    res, table = calibrate(tmp_path, detector, "auto", data=data, num=6, method="auto", percentile=90, auto=auto)
    sel = table["selection"]
    scores = {m: r["metrics"]["mAP50-95"] for m, r in sel["candidates"].items()}
    assert list(scores) == ["percentile", "minmax"]
    assert sel["fp32"]["metrics"]["mAP50-95"] == pytest.approx(1.0)  # the float detector is perfect
    assert scores["minmax"] == pytest.approx(1.0) and scores["percentile"] < 0.5
    assert sel["chosen"] == sel["best"] == table["method"] == "minmax" and sel["metric"] == "mAP50-95"
    assert sel["margin"] == 0.01
    assert sel["candidates"]["percentile"]["params"] == {"num_bins": 2048, "percentile": 90.0}
    assert sel["candidates"]["percentile"]["drop"] == pytest.approx(1.0 - scores["percentile"])
    assert sel["quantize"]["bias_correction"] is False and sel["backend"] == "onnxruntime"
    # Scored on held-out images only: the six images calibration did not use.
    used = {f["name"].split("/")[-1] for f in table["data"]["files"]}
    assert len(used) == 6 and sel["holdout"]["images"] == 6 and not used & set(sel["holdout"]["files"])
    assert res.meta["selection"]["chosen"] == "minmax" and res.summary["method"] == "minmax (auto, mAP50-95)"
    assert list(res.summary)[:4] == ["method", "percentile", "minmax", "fp32"]
    assert res.summary["percentile"] == scores["percentile"] and res.summary["fp32"] == pytest.approx(1.0)
    # The table holds the chosen method's ranges: those a plain minmax calibration measures.
    _, plain = calibrate(tmp_path, detector, "plain", data=data, num=6, method="minmax")
    assert table["tensors"].keys() == plain["tensors"].keys()
    for name, r in plain["tensors"].items():
        assert table["tensors"][name]["min"] == pytest.approx(r["min"], rel=1e-6, abs=1e-7), name
        assert table["tensors"][name]["max"] == pytest.approx(r["max"], rel=1e-6, abs=1e-7), name
    assert table["data"]["digest"] == plain["data"]["digest"]


def test_a_first_round_on_few_images_drops_the_clear_losers(tmp_path, detector, monkeypatch):
    from convert import evaluation

    evaluated, real = [], evaluation.predict

    def counting(runner, dataset, meta, **kw):
        evaluated.append(len(dataset))
        return real(runner, dataset, meta, **kw)

    monkeypatch.setattr(evaluation, "predict", counting)  # select imports it at call time
    data = square_dataset(tmp_path / "ds", n=14)
    auto = {"candidates": ["percentile", "minmax", "entropy"], "quantize": {"bias_correction": False},
            "screen_images": 3, "screen_margin": 0.2}
    res, table = calibrate(tmp_path, detector, "auto", data=data, num=6, method="auto", percentile=90, auto=auto)
    sel = table["selection"]
    # first round: fp32 and the three candidates on 3 images; then fp32 and the one contender on the
    # other 5, their figures on all 8 (entropy, like percentile at 90, clips the squares' brightness)
    assert sel["screen"]["images"] == 3 and sel["screen"]["kept"] == ["minmax"]
    assert evaluated == [3, 3, 3, 3, 5, 5]
    for m in ("percentile", "entropy"):
        assert sel["candidates"][m]["screened_out"] is True
        assert sel["candidates"][m]["metrics"] == sel["candidates"][m]["screen"]["metrics"]
        assert sel["candidates"][m]["metrics"]["mAP50-95"] < 0.5
    assert sel["candidates"]["minmax"]["metrics"]["mAP50-95"] == pytest.approx(1.0)
    assert "screened_out" not in sel["candidates"]["minmax"] and sel["holdout"]["images"] == 8
    assert sel["chosen"] == table["method"] == "minmax"
    assert res.meta["selection"]["scores"] == {"minmax": pytest.approx(1.0)}  # first-round figures stay out
    assert res.meta["selection"]["screened_out"] == ["percentile", "entropy"]
    assert res.summary["screened_out"] == "percentile, entropy"
    # one round (the default's 16 images are more than the 8 held out): the same choice, every candidate in full
    _, one = calibrate(tmp_path, detector, "one", data=data, num=6, method="auto", percentile=90,
                       auto={**auto, "screen_images": 0})
    assert "screen" not in one["selection"] and one["selection"]["chosen"] == "minmax"
    assert evaluated[6:] == [8, 8, 8, 8]
    # the second round's figures are those of a run on all 8 images
    assert one["selection"]["fp32"] == sel["fp32"]
    assert one["selection"]["candidates"]["minmax"]["metrics"] == sel["candidates"]["minmax"]["metrics"]


def test_auto_with_separate_labelled_images(tmp_path, detector):
    calib_images = square_dataset(tmp_path / "calib", n=4, seed=1) / "images"
    val = square_dataset(tmp_path / "val", n=5, seed=2)
    _, table = calibrate(tmp_path, detector, "auto", data=calib_images, method="auto",
                         auto={"data": val, "candidates": ["minmax"], "num": 3, "metric": "mAP50",
                               "quantize": {"bias_correction": False}})
    sel = table["selection"]
    assert sel["holdout"]["images"] == 3 and sel["metric"] == "mAP50" and sel["chosen"] == "minmax"
    assert sel["candidates"]["minmax"]["metrics"]["mAP50"] == pytest.approx(1.0)


def test_auto_errors(tmp_path, detector):
    data = square_dataset(tmp_path / "ds", n=4)
    with pytest.raises(ValidationError, match="built-in calibration set has no labels"):
        CalibrateConfig(method="auto")
    # Auto settings do not count with another method: not an error, and not part of the cache key.
    assert CalibrateConfig(data=data, method="minmax", auto={"num": 3}).auto is None
    with pytest.raises(ValidationError, match="auto.max_imges: Extra inputs are not permitted"):
        CalibrateConfig(data=data, method="minmax", auto={"max_imges": 3})  # a typo is caught all the same
    with pytest.raises(ValidationError, match="lists a method twice"):
        CalibrateConfig(data=data, method="auto", auto={"candidates": ["minmax", "minmax"]})
    with pytest.raises(ValidationError, match="auto.quantize.keep_head"):
        CalibrateConfig(data=data, method="auto", auto={"quantize": {"keep_head": True}})
    with pytest.raises(ValidationError, match="auto.data"):
        CalibrateConfig(data=data, method="auto", auto={"data": tmp_path / "missing"})
    with pytest.raises(ConvertError, match="no image is left"):
        calibrate(tmp_path, detector, "all", data=data, num=4, method="auto")
    with pytest.raises(ConvertError, match="needs a pose model"):
        calibrate(tmp_path, detector, "kpt", data=data, num=2, method="auto",
                  auto={"metric": "kpt_mAP50-95", "candidates": ["minmax"]})


def test_holdout_without_labels_is_refused(tmp_path):
    square_dataset(tmp_path / "ds", n=3)
    for f in (tmp_path / "ds" / "labels").iterdir():
        f.unlink()
    source = LabelledSource(data=tmp_path / "ds")
    with pytest.raises(ConvertError, match="none of the 3 images has a YOLO label file"):
        holdout_dataset(source, set(), ["square"], 0, 10, 0)


def test_holdout_from_a_coco_file_keeps_its_annotations(tmp_path):
    root = square_dataset(tmp_path / "ds", n=4)
    images = sorted((root / "images").iterdir())
    coco = {"images": [{"id": i + 1, "file_name": p.name, "width": SIZE, "height": SIZE} for i, p in enumerate(images)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64,
                             "iscrowd": 0} for i in range(4)],
            "categories": [{"id": 1, "name": "square"}]}
    ann = root / "annotations.json"
    ann.write_text(json.dumps(coco))
    source = LabelledSource(data=ann, images=root / "images")
    ds = holdout_dataset(source, {images[0], images[2]}, ["square"], 0, 10, 0)
    assert [im.path.name for im in ds.images] == [images[1].name, images[3].name]
    assert len(ds.gt["annotations"]) == 2


def test_pick_prefers_the_first_listed_within_the_margin_of_the_best():
    assert pick({"minmax": 0.30, "entropy": 0.31}) == "entropy"
    assert pick({"percentile": 0.3, "minmax": 0.3}) == "percentile"
    assert pick({"minmax": 0.30, "entropy": 0.305}, margin=0.01) == "minmax"
    assert pick({"minmax": 0.30, "entropy": 0.305, "percentile": 0.312}, margin=0.01) == "entropy"
    assert pick({"minmax": 0.30, "percentile": 0.3101}, margin=0.01) == "percentile"


def test_report_shows_the_choice_and_every_candidate(tmp_path, detector):
    from passes.report.render import RunData, _blocks, render_markdown

    data = square_dataset(tmp_path / "ds")
    _, table = calibrate(tmp_path, detector, "auto", data=data, num=6, method="auto", percentile=90,
                         auto={"candidates": ["percentile", "minmax"]})
    md = render_markdown("t", _blocks(RunData("t", selections=[{**table["selection"], "_stage": "cal"}]), False))
    assert "## Calibration method chosen by cal (method auto)" in md
    score = table["selection"]["candidates"]["percentile"]["metrics"]["mAP50-95"]
    assert f"| percentile | {score:.4f} |" in md and "| minmax | 1.0000 | 1.0000 | 0.0000 | yes |" in md
    assert "6 held-out labelled images (6 objects" in md
