"""Datasets from YOLO labels and COCO files, pycocotools mAP, host-side post-processing glue."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convert.errors import ConvertError
from convert.evaluation import (
    coco_results,
    end2end_outputs,
    evaluate_detections,
    evaluate_model,
    load_coco,
    load_dataset,
    load_yolo,
)
from convert.postprocess import ImageDetections

NK = 4
SIZES = {"a.jpg": (96, 64), "b.jpg": (80, 120), "c.jpg": (64, 64)}  # file -> (width, height)
LABELS = {
    "a.jpg": ["0 0.5 0.5 0.5 0.6 0.4 0.4 2 0.6 0.4 2 0.5 0.6 1 0 0 0",
              "1 0.2 0.3 0.2 0.2 0.15 0.25 2 0.25 0.25 2 0.2 0.35 2 0.2 0.3 2"],
    "b.jpg": ["1 0.6 0.4 0.3 0.5 0.55 0.3 2 0.65 0.3 2 0.6 0.5 2 0.6 0.6 1"],
    # c.jpg: no label file, an image without objects
}


def write_dataset(root, labels=LABELS, sizes=SIZES):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
    for name, rows in labels.items():
        (root / "labels" / name).with_suffix(".txt").write_text("\n".join(rows) + "\n")
    return root


def gt_detections(ds, shift: float = 0.0):
    """The ground truth as per-image detections (score 1), optionally shifted right by `shift` px."""
    out = []
    for im in ds.images:
        anns = ds.annotations(im.id)
        boxes = np.array([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32).reshape(-1, 4)
        kpts = None
        if ds.nk:
            kpts = np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), ds.nk, 3)
            kpts[..., 0] += shift
        out.append(ImageDetections(boxes, np.ones(len(anns), np.float32),
                                   np.array([ds.category_ids.index(a["category_id"]) for a in anns], np.int32), kpts))
    return out


def test_yolo_labels_to_coco_ground_truth(tmp_path):
    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK)
    assert [im.path.name for im in ds.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [(im["width"], im["height"]) for im in ds.gt["images"]] == [(96, 64), (80, 120), (64, 64)]
    first = ds.annotations(ds.images[0].id)[0]
    assert first["category_id"] == 0 and first["bbox"] == pytest.approx([24, 12.8, 48, 38.4])
    # absent keypoints are (0, 0, 0), as in COCO; num_keypoints counts the labelled ones
    assert first["keypoints"][-3:] == [0, 0, 0] and first["num_keypoints"] == 3
    assert first["area"] == pytest.approx(48 * 38.4 * 0.53)
    assert ds.annotations(ds.images[2].id) == []
    assert [c["id"] for c in ds.gt["categories"]] == [0, 1]  # contiguous ids, no 91-id mapping


def test_ground_truth_fed_back_scores_one_for_boxes_and_keypoints(tmp_path):
    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK)
    res = evaluate_detections(ds, gt_detections(ds))
    assert res["mAP50-95"] == pytest.approx(1.0) and res["mAP50"] == pytest.approx(1.0)
    assert res["kpt_mAP50-95"] == pytest.approx(1.0) and res["kpt_mAP50"] == pytest.approx(1.0)
    assert res["per_class"] == {"cat": {"mAP50-95": pytest.approx(1.0), "mAP50": pytest.approx(1.0), "instances": 1},
                                "dog": {"mAP50-95": pytest.approx(1.0), "mAP50": pytest.approx(1.0), "instances": 2}}
    assert res["detections"] == 3


def test_shifted_predictions_score_lower_and_nothing_scores_zero(tmp_path):
    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK)
    shifted = evaluate_detections(ds, gt_detections(ds, shift=3.0))
    assert 0 < shifted["mAP50-95"] < 0.9 and shifted["mAP50"] == pytest.approx(1.0)
    assert 0 < shifted["kpt_mAP50-95"] < 1.0
    empty = [ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
                             np.zeros((0, NK, 3), np.float32)) for _ in ds.images]
    none = evaluate_detections(ds, empty)
    assert none["mAP50-95"] == 0 and none["kpt_mAP50-95"] == 0 and none["per_class"]["dog"]["instances"] == 2


def test_boxes_only_reading_ignores_keypoint_columns(tmp_path):
    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"])
    assert ds.nk == 0 and "keypoints" not in ds.gt["annotations"][0]
    res = evaluate_detections(ds, gt_detections(ds))
    assert res["mAP50-95"] == pytest.approx(1.0) and "kpt_mAP50-95" not in res


def test_label_errors_name_file_and_line(tmp_path):
    root = write_dataset(tmp_path, labels={"a.jpg": ["0 0.5 0.5 0.2 0.2", "5 0.5 0.5 0.2 0.2"]})
    with pytest.raises(ConvertError, match=r"a\.txt:2: class 5 is not one of the model's 2 classes"):
        load_yolo(root, ["cat", "dog"])
    with pytest.raises(ConvertError, match=r"a\.txt:1: expected 4 keypoints"):
        load_yolo(root, ["cat", "dog"], nk=NK)
    with pytest.raises(ConvertError, match="no images"):
        load_yolo(tmp_path / "labels", ["cat"])


def test_exif_rotation_swaps_image_size(tmp_path):
    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: load_image returns a 40 x 100 (w x h) image
    Image.new("RGB", (100, 40)).save(tmp_path / "images" / "r.jpg", exif=exif)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "r.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = load_yolo(tmp_path, ["cat"])
    assert (ds.gt["images"][0]["width"], ds.gt["images"][0]["height"]) == (40, 100)


def test_coco_file_keeps_its_ids_and_maps_classes(tmp_path):
    yolo = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK)
    gt = json.loads(json.dumps(yolo.gt))
    for c in gt["categories"]:
        c["id"] = {0: 17, 1: 18}[c["id"]]  # COCO's 91-id style: not contiguous, not 0-based
    for a in gt["annotations"]:
        a["category_id"] = {0: 17, 1: 18}[a["category_id"]]
        a["image_id"] += 100
    for im in gt["images"]:
        im["id"] += 100
    gt["categories"].append({"id": 90, "name": "bird", "keypoints": gt["categories"][0]["keypoints"]})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    ds = load_coco(path, tmp_path / "images", names=["cat", "dog"])
    assert ds.category_ids == [17, 18] and ds.nk == NK  # 3 categories, 2 classes: mapped by name
    assert [im.id for im in ds.images] == [101, 102, 103]
    results = coco_results(ds, gt_detections(yolo))
    assert {r["category_id"] for r in results} == {17, 18}
    res = evaluate_detections(ds, gt_detections(yolo))
    assert res["mAP50-95"] == pytest.approx(1.0) and res["kpt_mAP50-95"] == pytest.approx(1.0)
    assert load_dataset(tmp_path / "images", ["cat", "dog"], annotations=path, max_images=1).images[0].id == 101
    with pytest.raises(ConvertError, match="not among the category names"):
        load_coco(path, tmp_path / "images", names=["cat", "zebra"])


def test_subset_without_and_fingerprint(tmp_path):
    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK)
    held_out = ds.without([tmp_path / "images" / "a.jpg"])
    assert [im.path.name for im in held_out.images] == ["b.jpg", "c.jpg"]
    assert len(held_out.gt["annotations"]) == 1 and len(held_out.gt["images"]) == 2
    assert held_out.fingerprint() != ds.fingerprint()
    assert load_yolo(tmp_path, ["cat", "dog"], nk=NK).fingerprint() == ds.fingerprint()
    assert evaluate_detections(held_out, gt_detections(held_out))["mAP50-95"] == pytest.approx(1.0)


def test_host_side_postprocessing_agrees_for_raw_and_decoded_outputs():
    import torch

    from convert.models.yolo import build_model, decode_raw, load_arch

    model = build_model(load_arch("yolov5s-pose"), seed=3).eval()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = model(x).numpy()
        head = {**model.truncate_head().head_meta(), "outputs": ["p3", "p4", "p5"]}
        maps = model(x)
    assert np.allclose(decode_raw(maps, head).numpy(), decoded, atol=1e-4)
    raw = end2end_outputs({n: m.numpy() for n, m in zip(head["outputs"], maps)},
                          {"truncated": True, "head": head}, conf=0.001, iou=0.6, max_det=50)
    dec = end2end_outputs({"predictions": decoded}, {"head": head}, conf=0.001, iou=0.6, max_det=50)
    n = int(raw["num_dets"][0, 0])
    assert n > 0 and n == int(dec["num_dets"][0, 0])
    assert np.allclose(raw["boxes"], dec["boxes"], atol=1e-3) and np.array_equal(raw["classes"], dec["classes"])
    assert raw["keypoints"].shape == (1, 50, 17, 3) and np.allclose(raw["keypoints"], dec["keypoints"], atol=1e-3)
    with pytest.raises(ConvertError, match="columns"):
        end2end_outputs({"predictions": decoded[..., :-1]}, {"head": head}, 0.001, 0.6, 10)
    with pytest.raises(ConvertError, match="no head metadata"):
        end2end_outputs({"predictions": decoded}, {}, 0.001, 0.6, 10)


def test_evaluate_model_on_a_bare_onnx_file(tmp_path):
    """The interface calibration uses: OrtRunner on a candidate .onnx, a held-out subset, the model's meta."""
    import onnx
    from onnx import helper, numpy_helper

    from convert.preprocess import DEFAULT_PREPROCESS, letterbox
    from convert.runtime import OrtRunner

    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog"], nk=NK).subset([0])
    _, tf = letterbox(np.zeros((64, 96, 3), np.uint8), (64, 64))
    gt = gt_detections(ds)[0]
    boxes = gt.boxes * np.float32(tf.gain[0]) + np.float32([tf.pad[0], tf.pad[1]] * 2)
    kpts = gt.keypoints.copy()
    kpts[..., :2] = kpts[..., :2] * np.float32(tf.gain[0]) + np.float32(tf.pad)
    outputs = {"num_dets": np.array([[len(boxes)]], np.int32), "boxes": boxes[None], "scores": gt.scores[None],
               "classes": gt.classes[None].astype(np.int32), "keypoints": kpts[None]}
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n)) for n, v in outputs.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT,
                                                                         [1, 3, 64, 64])],
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for n, v in outputs.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    meta = {"end2end": True, "preprocess": {**DEFAULT_PREPROCESS, "size": [64, 64]}}
    res = evaluate_model(OrtRunner(tmp_path / "m.onnx", threads=1), ds, meta)
    assert res["mAP50-95"] == pytest.approx(1.0) and res["kpt_mAP50-95"] == pytest.approx(1.0)
    assert res["images"] == 1 and res["detections"] == 2 and res["seconds"] > 0


def test_map_evaluates_only_classes_with_ground_truth_and_gives_pycocotools_figures(tmp_path):
    """Detections of a class without ground truth (and a crowd-only class) change nothing: the
    figures equal a plain pycocotools run over every category."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from convert.evaluation import coco_map

    ds = load_yolo(write_dataset(tmp_path), ["cat", "dog", "bird", "fish"], nk=0)
    ds.gt["annotations"].append({**ds.gt["annotations"][0], "id": 99, "category_id": 3, "iscrowd": 1})
    dets = gt_detections(ds, shift=2.0)
    rng = np.random.default_rng(0)
    for d in dets:  # false positives in every class, the ones without (non-crowd) ground truth included
        extra = np.concatenate([rng.random((6, 2)) * 40, rng.random((6, 2)) * 40 + 45], 1).astype(np.float32)
        d.boxes, d.scores = np.concatenate([d.boxes, extra]), np.concatenate([d.scores, rng.random(6, np.float32)])
        d.classes = np.concatenate([d.classes, np.arange(6, dtype=np.int32) % 4])
    results = coco_results(ds, dets)
    got = coco_map(ds, results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ds.gt)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.params.imgIds = [im.id for im in ds.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0 < got["mAP50-95"] < 1
    assert got["mAP50-95"] == pytest.approx(ev.stats[0], abs=1e-12) and got["mAP50"] == pytest.approx(ev.stats[1],
                                                                                                      abs=1e-12)
    assert set(got["per_class"]) == {"cat", "dog"}
