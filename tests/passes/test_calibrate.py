"""The calibrate pass on a small generated network body and generated images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from pydantic import ValidationError

from calib.trt_cache import format_cache, read_cache
from convert.base import Artifact, RunContext
from convert.errors import ConvertError, SpecError
from passes.calibrate import Calibrate, CalibrateConfig

META = {"precision": "fp32", "truncated": True, "names": ["a", "b"],
        "preprocess": {"size": [32, 32], "resize": "letterbox", "pad_value": 114},
        "input": {"name": "images", "shape": ["batch", 3, 32, 32]}, "outputs": ["p3"]}


def body_model(path, channels=3, seed=0):
    """A YOLO-like body: conv+SiLU, a residual bottleneck, a concat and a 1x1 head conv."""
    rng = np.random.default_rng(seed)
    w = lambda name, shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    def conv_silu(x, name, cin, cout, k):
        return [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.c"], name=f"{name}/Conv",
                                 pads=[k // 2] * 4),
                helper.make_node("Sigmoid", [f"{name}.c"], [f"{name}.s"], name=f"{name}/Sigmoid"),
                helper.make_node("Mul", [f"{name}.c", f"{name}.s"], [f"{name}.o"], name=f"{name}/Mul")], \
            [w(f"{name}.w", (cout, cin, k, k)), w(f"{name}.b", (cout,))]

    nodes, inits = [], []
    for args in (("images", "stem", channels, 8, 3), ("stem.o", "m.cv1", 8, 8, 1), ("m.cv1.o", "m.cv2", 8, 8, 3)):
        n, i = conv_silu(*args)
        nodes += n
        inits += i
    nodes += [helper.make_node("Add", ["stem.o", "m.cv2.o"], ["res"], name="m/Add"),
              helper.make_node("Concat", ["res", "stem.o"], ["cat"], name="cat/Concat", axis=1),
              helper.make_node("Conv", ["cat", "head.w", "head.b"], ["p3"], name="head/Conv")]
    inits += [w("head.w", (14, 16, 1, 1)), w("head.b", (14,))]
    graph = helper.make_graph(nodes, "body", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["batch", channels, 32, 32])],
                              [helper.make_tensor_value_info("p3", TensorProto.FLOAT, ["batch", 14, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def model_artifact(tmp_path, meta=META, **kw):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    body_model(d / "model.onnx", **kw)
    return Artifact("onnx", d, "model.onnx", dict(meta), digest="model-digest")


def image_folder(path, n=6):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        h, w = rng.integers(20, 60, 2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path / f"img{i}.png")
    return path


def run(tmp_path, art, name="out", **cfg):
    out = tmp_path / name
    out.mkdir()
    res = Calibrate(CalibrateConfig(**cfg)).run({"model": art}, out, RunContext("calibrate", progress=False))
    return res, out


def test_table_records_ranges_method_data_and_a_tensorrt_cache(tmp_path):
    art = model_artifact(tmp_path)
    data = image_folder(tmp_path / "imgs")
    res, out = run(tmp_path, art, data=data, num=4, method="percentile", percentile=99.9)
    table = json.loads((out / "table.json").read_text())
    assert res.kind == "calib_table" and res.main == "table.json"
    assert table["method"] == "percentile" and table["params"]["percentile"] == 99.9
    assert table["num_samples"] == 4 and table["model"]["digest"] == "model-digest"
    assert {"images", "stem.c", "stem.o", "res", "cat", "p3"} <= set(table["tensors"])
    lo, hi = table["tensors"]["images"]["min"], table["tensors"]["images"]["max"]
    assert 0.0 <= lo < hi <= 1.0
    assert table["preprocess"]["size"] == [32, 32]
    rec = table["data"]
    assert rec["source"] == "folder" and rec["num_samples"] == 4 and len(rec["files"]) == 4
    assert len(rec["digest"]) == 64 and all(len(f["sha256"]) == 64 for f in rec["files"])
    cache = read_cache(out / "calibration.cache")
    assert set(cache.scales) == set(table["tensors"])
    assert res.meta["data_digest"] == rec["digest"] and res.summary["num_samples"] == 4
    # The images used are kept byte for byte, in order, for bias correction downstream.
    assert len(rec["samples"]) == 4
    for kept, used in zip(rec["samples"], rec["files"]):
        assert (out / kept).read_bytes() == (data / used["name"]).read_bytes()


def test_same_data_same_table_and_other_seed_other_images(tmp_path):
    art = model_artifact(tmp_path)
    data = image_folder(tmp_path / "imgs", n=8)
    _, a = run(tmp_path, art, "a", data=data, num=3, method="minmax")
    _, b = run(tmp_path, art, "b", data=data, num=3, method="minmax")
    _, c = run(tmp_path, art, "c", data=data, num=3, method="minmax", seed=5)
    assert (a / "table.json").read_bytes() == (b / "table.json").read_bytes()
    files = lambda d: [f["name"] for f in json.loads((d / "table.json").read_text())["data"]["files"]]
    assert files(a) != files(c)


def test_builtin_set_when_no_data(tmp_path):
    pytest.importorskip("skimage")
    res, out = run(tmp_path, model_artifact(tmp_path), num=2, method="minmax")
    rec = json.loads((out / "table.json").read_text())["data"]
    assert rec["source"] == "builtin"
    from calib.builtin import load_builtin
    from convert.preprocess import load_image

    kept = load_image(out / rec["samples"][0])  # built-in images are kept as lossless PNG
    np.testing.assert_array_equal(kept, load_builtin(rec["files"][0]["name"]))
    assert res.summary["num_samples"] == 2


def test_importing_a_tensorrt_cache(tmp_path):
    art = model_artifact(tmp_path)
    cache = tmp_path / "calibration.cache"
    cache.write_text(format_cache({"images": (0.0, 1.0), "stem.o": (-0.3, 6.0)}, "10.3.0"))
    _, out = run(tmp_path, art, trt_cache=cache)
    table = json.loads((out / "table.json").read_text())
    assert table["method"] == "trt_cache" and table["params"]["trt_version"] == 100300
    assert table["tensors"]["stem.o"]["max"] == pytest.approx(6.0) and table["tensors"]["stem.o"]["min"] == -table[
        "tensors"]["stem.o"]["max"]


def test_a_cache_of_another_model_is_refused(tmp_path):
    art = model_artifact(tmp_path)
    cache = tmp_path / "other.cache"
    cache.write_text(format_cache({"input_1": (0.0, 1.0), "resnet/conv1": (-3.0, 6.0)}, "10.3.0"))
    with pytest.raises(ConvertError, match="does not belong to this model"):
        run(tmp_path, art, trt_cache=cache)


def test_model_checks_fail_before_any_image_is_read(tmp_path):
    data = image_folder(tmp_path / "imgs")
    with pytest.raises(ConvertError, match="calibration needs the float32 model"):
        run(tmp_path, model_artifact(tmp_path, meta={**META, "precision": "fp16"}), data=data)
    with pytest.raises(ConvertError, match="has 1 channels"):
        run(tmp_path, model_artifact(tmp_path, channels=1), "o2", data=data)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "holds no image"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "holds no image"),
])
def test_bad_sources_fail_at_validation(tmp_path, make, message):
    target = tmp_path / "data"
    make(target)
    with pytest.raises(ValidationError, match=message):
        CalibrateConfig(data=target)


def test_config_rejects_conflicts_and_unknown_preprocess_keys(tmp_path):
    data = image_folder(tmp_path / "imgs", n=1)
    with pytest.raises(ValidationError, match="not both"):
        CalibrateConfig(data=data, trt_cache=tmp_path / "x.cache")
    with pytest.raises(ValidationError, match="unknown preprocess key"):
        CalibrateConfig(data=data, preprocess={"sise": [32, 32]})
    with pytest.raises(ValidationError, match="major.minor.patch"):
        CalibrateConfig(data=data, trt_version="latest")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    data = image_folder(tmp_path / "imgs", n=3)
    (data / "zz_broken.jpg").write_bytes(b"\xff\xd8 broken")
    res, _ = run(tmp_path, model_artifact(tmp_path), data=data, num=10, method="minmax")
    assert res.summary["skipped"] == 1 and res.summary["num_samples"] == 3
    with pytest.raises(ConvertError, match="zz_broken.jpg"):
        run(tmp_path, model_artifact(tmp_path), "o2", data=data, num=10, on_bad_image="error")


def test_in_a_pipeline_the_data_is_keyed_and_an_empty_folder_fails_validation(tmp_path):
    from convert.manager import Manager
    from convert.spec import load_spec
    from convert.store import Store

    model = body_model(tmp_path / "body.onnx")
    data = image_folder(tmp_path / "imgs", n=4)
    spec = tmp_path / "calib.yaml"
    spec.write_text(f"""
stages:
  load: {{with: {{source: onnx, weights: {model}, input_size: [32, 32]}}}}
  calibrate: {{with: {{data: {data}, num: 2, method: minmax}}}}
""")
    store, arts = Store(tmp_path / "store"), tmp_path / "artifacts"
    first = Manager(load_spec(spec), store, arts).run()
    assert [s.status for s in first.stages] == ["ran", "ran"]
    assert [s.status for s in Manager(load_spec(spec), store, arts).run().stages] == ["cached", "cached"]
    image_folder(tmp_path / "imgs", n=5)  # one more image: the data digest changes
    assert Manager(load_spec(spec), store, arts).run().stages[1].status == "ran"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"stages\.calibrate\.with.*holds no image"):
        load_spec(spec, [f"stages.calibrate.with.data={tmp_path / 'empty'}"])


def test_editing_an_image_named_by_a_list_file_re_runs_calibration(tmp_path, monkeypatch):
    from convert.manager import Manager
    from convert.spec import load_spec
    from convert.store import Store

    monkeypatch.chdir(tmp_path)
    body_model(tmp_path / "body.onnx")
    image_folder(tmp_path / "elsewhere", n=3)
    (tmp_path / "list.txt").write_text("elsewhere/img0.png\nelsewhere/img1.png\n")
    (tmp_path / "s.yaml").write_text("stages:\n  load: {with: {source: onnx, weights: body.onnx, input_size: [32, 32]}}"
                                     "\n  calibrate: {with: {data: list.txt, num: 2}}\n")

    def run():
        report = Manager(load_spec("s.yaml"), Store(tmp_path / "store"), tmp_path / "a", progress=False).run()
        return {s.name: s.status for s in report.stages}

    assert run() == {"load": "ran", "calibrate": "ran"}
    assert run() == {"load": "cached", "calibrate": "cached"}
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "elsewhere" / "img1.png")  # same name, new pixels
    assert run() == {"load": "cached", "calibrate": "ran"}


def test_renamed_auto_key_fails_validation_naming_num(tmp_path):
    data = tmp_path / "imgs"
    image_folder(data, n=3)
    with pytest.raises(ValidationError, match="max_images was replaced: num"):
        CalibrateConfig(data=data, method="auto", auto={"max_images": 3})
    with pytest.raises(ValidationError, match="auto.max_images was replaced: num"):
        CalibrateConfig(data=data, method="minmax", auto={"max_images": 3})


def test_metric_names_are_one_list():
    import typing

    from convert.evaluation import METRICS
    from passes.calibrate import AutoConfig
    from passes.evaluate import DropGate, MinGate

    for field in (AutoConfig.model_fields["metric"], DropGate.model_fields["metric"], MinGate.model_fields["metric"]):
        args = [a for a in typing.get_args(field.annotation) if a is not type(None)]
        assert set(typing.get_args(args[0]) or args) == set(METRICS)
