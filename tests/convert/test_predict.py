"""`convert predict`: a published model on images, annotated images and detections, one-line errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def _predict(cli, root, *argv):
    return cli("--store", root / "store", "--artifacts", root / "artifacts", "predict", *argv)


def test_predict_json_boxes_equal_the_evaluate_pass_detections(cli, tiny_e2e_run, tmp_path):
    root, vdir = tiny_e2e_run
    image = root / "ds" / "images" / "1.jpg"  # 80x56: letterboxed left and right
    code, out, err = _predict(cli, root, "r/postprocess", image, "--coco", "--json", "--out", "p")
    assert code == 0, err
    predicted = json.loads(out)
    evaluated = [r for r in json.loads((vdir / "evaluate" / "detections.json").read_text())
                 if r["file_name"] == "1.jpg"]
    assert evaluated and len(predicted) == len(evaluated)
    drop = lambda r: {k: v for k, v in r.items() if k != "image_id"}  # noqa: E731 (ids are per file set)
    assert [drop(r) for r in predicted] == [drop(r) for r in evaluated]
    # the plain JSON holds the same boxes as x1 y1 x2 y2 in the photo's pixels
    record = json.loads((tmp_path / "p" / "predictions.json").read_text())
    first = record["images"][0]
    assert (first["width"], first["height"]) == (56, 80) and record["model"]["name"].endswith("/postprocess")
    x, y, w, h = evaluated[0]["bbox"]
    assert np.allclose(first["detections"][0]["box"], [x, y, x + w, y + h], atol=2e-3)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 56 and 0 <= d["box"][1] <= d["box"][3] <= 80
               for d in first["detections"])
    drawn = np.asarray(Image.open(tmp_path / "p" / "1.jpg")).astype(int)
    assert drawn.shape == (80, 56, 3) and np.abs(drawn - np.asarray(Image.open(image)).astype(int)).max() > 100


def test_predict_folder_raw_head_and_version_forms(cli, tiny_e2e_run, tmp_path):
    root, vdir = tiny_e2e_run
    code, out, _ = _predict(cli, root, f"r/{vdir.name}/export_onnx", root / "ds", "--conf", "0.004", "--out", "raw")
    assert code == 0 and out.count("detections ->") == 2 and (tmp_path / "raw" / "0.jpg").is_file()
    raw = json.loads((tmp_path / "raw" / "predictions.json").read_text())
    code, _, _ = _predict(cli, root, "r", root / "ds", "--out", "e2e")  # the version's only end-to-end model
    e2e = json.loads((tmp_path / "e2e" / "predictions.json").read_text())
    assert code == 0 and e2e["model"]["end2end"] and not raw["model"]["end2end"]
    # host-side NMS of the raw head finds what the graph's NMS found (same thresholds, both <= 12 boxes)
    for a, b in zip(raw["images"], e2e["images"]):
        assert [d["box"] for d in a["detections"][:12]] == [d["box"] for d in b["detections"]]
    code, _, _ = _predict(cli, root, vdir / "postprocess", root / "ds" / "images" / "0.jpg", "--backend", "openvino",
                          "--out", "ov")
    assert code == 0 and (tmp_path / "ov" / "0.jpg").is_file()


def test_predict_errors_are_one_line(cli, tiny_e2e_run, tmp_path):
    root, vdir = tiny_e2e_run
    img = root / "ds" / "images" / "0.jpg"
    (tmp_path / "empty").mkdir()
    for argv, needle in [(("nope", img), "unknown artifact 'nope'"),
                         (("r/evaluate", img), "'metrics' artifact, not a model"),
                         (("r/nosuch", img), "no stage 'nosuch'"),
                         (("r/postprocess", root / "missing.jpg"), "does not exist"),
                         (("r/postprocess", tmp_path / "empty"), "no images under"),
                         ((vdir / "postprocess", img, "--backend", "tensorrt"), "cannot run a 'onnx'"),
                         ((root, img), "neither an artifact folder")]:
        code, out, err = _predict(cli, root, *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Hint:" in err, (argv, err)


def test_predict_pose_keypoints_are_in_original_pixels(cli, tmp_path):
    import onnxruntime as ort

    from convert.preprocess import load_image, preprocess

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "wide.jpg")
    # a random yolov8n-pose scores about 0.01: a low threshold keeps a few detections
    (tmp_path / "p.yaml").write_text("""
stages:
  load: {with: {source: ultralytics, arch: yolov8n-pose, input_size: [64, 64]}}
  truncate_head: {}
  export_onnx: {}
  postprocess: {with: {score_threshold: 0.005, max_detections: 5}}
""")
    assert cli("run", "p.yaml", "--no-progress")[0] == 0
    code, out, err = cli("predict", "p/postprocess", "wide.jpg", "--json")
    assert code == 0, err
    dets = json.loads(out)["images"][0]["detections"]
    assert dets and all(len(d["keypoints"]) == 17 and all(len(k) == 3 for k in d["keypoints"]) for d in dets)
    # independently: the graph's keypoints in network pixels, 64x48 letterboxed into 64x64 -> 8 px on top
    model = next((tmp_path / "artifacts" / "p" / "latest" / "postprocess").glob("*.onnx"))
    x, _ = preprocess(load_image(tmp_path / "wide.jpg"), {"size": [64, 64]})
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    net = outs["keypoints"][0, :len(dets)]
    assert np.allclose([d["keypoints"] for d in dets], net - [0, 8, 0], atol=2e-3)
    assert (tmp_path / "predictions" / "wide.jpg").is_file()
