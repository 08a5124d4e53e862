"""The load pass: YOLOv5 architectures, Python factories with weights, ONNX files."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch

from convert.base import Artifact, RunContext
from convert.errors import ConvertError
from convert.manager import Manager
from convert.spec import load_spec
from convert.store import Store
from convert.torchmodel import load_module
from passes.load import Load, LoadConfig


def run_load(tmp_path, **cfg):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    res = Load(LoadConfig(**cfg)).run({}, out, RunContext("load", progress=False))
    return Artifact(res.kind, out, res.main, res.meta, "x"), res


def test_yolov5_arch_without_weights_is_seeded_and_records_head(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        art, res = run_load(tmp_path, arch="yolov5s-pose", input_size=(64, 96))
    assert res.kind == "torch" and res.summary["pretrained"] is False
    assert art.meta["head"]["type"] == "yolov5_pose" and art.meta["head"]["nk"] == 17
    assert art.meta["preprocess"]["size"] == [64, 96] and art.meta["input"]["shape"] == [1, 3, 64, 96]
    module = load_module(art)
    (tmp_path / "b").mkdir()
    with pytest.warns(UserWarning):
        again, _ = run_load(tmp_path / "b", arch="yolov5s-pose", input_size=(64, 96))
    for (k, a), b in zip(module.state_dict().items(), load_module(again).state_dict().values()):
        assert torch.equal(a, b), k


def test_python_factory_with_weights(tmp_path):
    sd = {k: torch.full_like(v, 0.5) for k, v in __import__("tiny_factory").make().state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    art, _ = run_load(tmp_path, source="python", factory="tiny_factory:make", weights=tmp_path / "w.pt",
                      input_size=(32, 32))
    module = load_module(art)
    assert all(torch.all(v == 0.5) for v in module.state_dict().values())
    with pytest.raises(ConvertError, match="do not fit the factory's model"):
        run_load(tmp_path, source="python", factory="tiny_factory:make", kwargs={"channels": 8},
                 weights=tmp_path / "w.pt")
    with pytest.raises(ConvertError, match="cannot import 'no_such_module'"):
        run_load(tmp_path, source="python", factory="no_such_module:make")


def test_onnx_source_reads_recorded_metadata(tmp_path):
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["images"], ["y"])],
                                                          "g", [x], [y]))
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", json.dumps(["a", "b"])
    onnx.save(model, tmp_path / "m.onnx")
    art, res = run_load(tmp_path, source="onnx", weights=tmp_path / "m.onnx", input_size=(32, 32))
    assert res.kind == "onnx" and art.meta["names"] == ["a", "b"] and art.meta["outputs"] == ["y"]
    assert (art.path / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


@pytest.mark.parametrize("cfg, message", [
    ({"source": "yolov5"}, "needs arch"),
    ({"source": "python"}, "needs factory"),
    ({"source": "onnx"}, "needs weights"),
    ({"arch": "yolov5n", "input_size": (100, 64)}, "multiples of 32"),
])
def test_invalid_configs_rejected_at_validation(cfg, message):
    with pytest.raises(ValueError, match=message):
        LoadConfig(**cfg)


def test_changing_weights_content_at_same_path_reruns_load_and_after(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make = __import__("tiny_factory").make
    torch.save(make().state_dict(), tmp_path / "w.pt")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        stages:
          load: {with: {source: python, factory: "tiny_factory:make", weights: w.pt, input_size: [32, 32]}}
          export_onnx: {}
    """))

    def run():
        rep = Manager(load_spec("s.yaml"), Store(tmp_path / "st"), tmp_path / "a", progress=False,
                      trust_code=True).run()
        return [s.status for s in rep.stages], rep

    assert run()[0] == ["ran", "ran"]
    assert run()[0] == ["cached", "cached"]
    torch.save({k: v * 2 for k, v in make().state_dict().items()}, tmp_path / "w.pt")
    statuses, rep = run()
    assert statuses == ["ran", "ran"]
    sess_out = __import__("onnxruntime").InferenceSession(str(rep.published / "export_onnx" / "model.onnx")).run(
        None, {"images": np.ones((1, 3, 32, 32), np.float32)})[0]
    m = make()
    m.load_state_dict({k: v * 2 for k, v in make().state_dict().items()})
    np.testing.assert_allclose(sess_out, m(torch.ones(1, 3, 32, 32)).detach().numpy(), atol=1e-4)


def test_a_python_factory_runs_only_with_trust_code(tmp_path, cli):
    """A shared spec must not run code: `os:system` is refused before anything is imported or called."""
    marker = tmp_path / "pwned"
    (tmp_path / "s.yaml").write_text(textwrap.dedent(f"""
        stages:
          load: {{with: {{source: python, factory: "os:system", kwargs: {{command: "touch {marker}"}}}}}}
    """))
    code, out, err = cli("validate", "s.yaml")
    assert code == 0 and "load: needs --trust-code (source: python imports the factory 'os:system')" in out
    code, out, err = cli("plan", "s.yaml")
    assert code == 0 and "needs --trust-code" in out
    code, out, err = cli("run", "s.yaml", "--no-progress")
    assert code == 2 and not marker.exists()
    assert "stage 'load' runs code named by the spec" in err and "--trust-code" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "artifacts").exists()


def test_ultralytics_pose_end_to_end_onnx_equals_the_torch_model(tmp_path, monkeypatch):
    """load (own builder) -> truncate -> ONNX -> decode + NMS in the graph, on ONNX Runtime, against the
    PyTorch model's own decoded output through the PyTorch reference NMS."""
    from convert.heads.reference import torch_reference
    from convert.postprocess import NMSSettings, match
    from convert.runtime import infer, load_runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        stages:
          load: {with: {source: ultralytics, arch: yolov8n-pose, input_size: [128, 160], seed: 3}}
          truncate_head: {}
          export_onnx: {with: {opset: 17}}
          postprocess: {with: {score_threshold: 0.002, iou_threshold: 0.7, max_detections: 50}}
    """))
    with pytest.warns(UserWarning, match="randomly initialised"):
        rep = Manager(load_spec("s.yaml"), Store(tmp_path / "st"), tmp_path / "a", progress=False).run()
    from convert.versions import open_artifact

    e2e, torch_art = open_artifact(rep.published / "postprocess"), open_artifact(rep.published / "load")
    meta = e2e.meta
    assert meta["head"]["type"] == "yolov8_pose" and meta["end2end"] and meta["preprocess"]["size"] == [128, 160]
    x = np.random.default_rng(0).random((1, 3, 128, 160), dtype=np.float32)
    with load_runner(e2e, "onnxruntime") as runner:
        got = infer(runner, x)
    model = load_module(torch_art)
    with torch.no_grad():
        want = torch_reference(model(torch.from_numpy(x)), model.head_meta(), NMSSettings(0.002, 0.7, 50))
    from convert.postprocess import Detections

    got = Detections.from_outputs(got)
    assert got.keypoints.shape == (1, 50, 17, 3) and int(want.num_dets[0, 0]) > 0
    agr = match(want.image(0), got.image(0), tol=5e-3)
    assert agr.same, agr


def test_ultralytics_source_errors(tmp_path, monkeypatch, cli):
    (tmp_path / "sd.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    for cfg, match in [
        ("{source: ultralytics}", "source ultralytics needs arch"),
        ("{source: ultralytics, arch: yolov9t}", "unknown ultralytics architecture 'yolov9t'"),
        ("{source: yolov5, builder: ultralytics, arch: yolov5n}", "builder ultralytics is for source ultralytics"),
        ("{source: ultralytics, weights: plain.pt}", "plain state dict, which does not say its architecture"),
        ("{source: yolov5, weights: .}", "is a folder, not a checkpoint"),
    ]:
        (tmp_path / "s.yaml").write_text(f"stages: {{load: {{with: {cfg}}}}}\n")
        code, out, err = cli("run", "s.yaml", "--no-progress")
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, (cfg, err)


def test_onnx_with_external_data_is_stored_whole_and_keyed_by_its_data(tmp_path, monkeypatch):
    from onnx import numpy_helper

    monkeypatch.chdir(tmp_path)
    w = numpy_helper.from_array(np.arange(3 * 3 * 3 * 3, dtype=np.float32).reshape(3, 3, 3, 3), "w")
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 30, 30])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Conv", ["images", "w"], ["y"])],
                                                          "g", [x], [y], [w]))
    onnx.save(model, "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    (tmp_path / "s.yaml").write_text("stages: {load: {with: {source: onnx, weights: m.onnx, input_size: [32, 32]}}}")
    run = lambda: Manager(load_spec("s.yaml"), Store(tmp_path / "st"), tmp_path / "a", progress=False).run()
    rep = run()
    stored = onnx.load(str(rep.published / "load" / "model.onnx"))
    assert numpy_helper.to_array(stored.graph.initializer[0]).sum() == np.arange(81).sum()  # inline, whole
    assert [s.status for s in run().stages] == ["cached"]
    data = bytearray((tmp_path / "m.data").read_bytes())
    data[:4] = np.float32(7).tobytes()
    (tmp_path / "m.data").write_bytes(bytes(data))  # same .onnx, other weights: the stage re-runs
    assert [s.status for s in run().stages] == ["ran"]
