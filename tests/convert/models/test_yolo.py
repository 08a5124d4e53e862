"""YOLOv5-family model code: building, output modes, decode reference, ONNX export."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch

from convert.errors import ConvertError
from convert.models.yolo import build_model, builtin_archs, decode_raw, load_arch, load_weights


@pytest.fixture(scope="module")
def yolov5n():
    return build_model(load_arch("yolov5n"))


@pytest.fixture(scope="module")
def pose():
    return build_model(load_arch("yolov5s-pose"))


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Gives BatchNorms non-trivial statistics, so fusion and weight mapping are really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def test_builtin_archs():
    assert {"yolov5n", "yolov5s", "yolov5s-pose"} <= set(builtin_archs())


def test_yolov5n_matches_official_layout(yolov5n):
    sd = yolov5n.state_dict()
    # Counts of the official YOLOv5n v6.1 COCO checkpoint (349 tensors; 1,867,405 params once fused).
    assert len(sd) == 349
    assert sum(p.numel() for p in yolov5n.parameters()) == 1_872_157
    assert sum(p.numel() for p in copy.deepcopy(yolov5n).fuse().parameters()) == 1_867_405
    for key in ("model.0.conv.weight", "model.0.bn.running_mean", "model.2.cv1.conv.weight",
                "model.2.m.0.cv1.conv.weight", "model.9.cv2.bn.num_batches_tracked", "model.24.m.0.weight",
                "model.24.anchors"):
        assert key in sd
    assert sd["model.0.conv.weight"].shape == (16, 3, 6, 6)
    assert sd["model.24.m.2.weight"].shape == (255, 256, 1, 1)
    assert yolov5n.stride.tolist() == [8.0, 16.0, 32.0]
    # Anchors are stored in grid units, as YOLOv5 v6.1 does.
    assert sd["model.24.anchors"][0, 0].tolist() == [1.25, 1.625]
    assert yolov5n.names[:2] == ["class0", "class1"] and len(yolov5n.names) == 80


def test_yolov5s_and_pose_build(pose):
    s = build_model(load_arch("yolov5s"), nc=3, names=["a", "b", "c"])
    assert s.state_dict()["model.24.m.0.weight"].shape == (24, 128, 1, 1)
    assert s.head_meta()["names"] == ["a", "b", "c"]
    sd = pose.state_dict()
    assert sd["model.24.m.0.weight"].shape == (18, 128, 1, 1)
    assert sd["model.24.m_kpt.0.weight"].shape == (153, 128, 1, 1)
    assert pose.names == ["person"]


def test_head_meta(yolov5n, pose):
    meta = yolov5n.head_meta()
    assert meta["type"] == "yolov5" and meta["nc"] == 80 and meta["nk"] == 0 and meta["na"] == 3
    assert meta["strides"] == [8, 16, 32]
    assert meta["anchors"][2][2] == [373.0, 326.0]
    assert meta["outputs"] == ["predictions"]
    pmeta = copy.deepcopy(pose).truncate_head().head_meta()
    assert pmeta["type"] == "yolov5_pose" and pmeta["nk"] == 17 and pmeta["outputs"] == ["p3", "p4", "p5"]
    assert json.loads(json.dumps(pmeta)) == pmeta


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
def test_output_shapes(yolov5n, pose, hw):
    h, w = hw
    x = torch.rand(2, 3, h, w)
    cells = [(h // s) * (w // s) for s in (8, 16, 32)]
    for model, no in ((yolov5n, 85), (pose, 57)):
        with torch.no_grad():
            assert model(x).shape == (2, 3 * sum(cells), no)
            maps = copy.deepcopy(model).truncate_head()(x)
        assert isinstance(maps, tuple)
        assert [tuple(m.shape) for m in maps] == [(2, 3 * no, h // s, w // s) for s in (8, 16, 32)]


def test_decode_raw_matches_forward(yolov5n, pose):
    x = torch.rand(2, 3, 96, 128)
    for model in (yolov5n, pose):
        truncated = copy.deepcopy(model).truncate_head()
        with torch.no_grad():
            decoded, maps = model(x), truncated(x)
        torch.testing.assert_close(decode_raw(maps, truncated.head_meta()), decoded, rtol=0, atol=1e-5)


def test_decode_layout(pose):
    """Row order level/anchor/y/x and the YOLOv5 formulas, checked on one hand-picked cell."""
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        decoded = pose(x)
        maps = copy.deepcopy(pose).truncate_head()(x)
    meta = pose.head_meta()
    no, na = 57, 3
    lvl, a, gy, gx = 1, 2, 3, 4
    p = maps[lvl][0].view(na, no, 4, 6)[a, :, gy, gx]
    row = decoded[0, 3 * 8 * 12 + a * 4 * 6 + gy * 6 + gx]
    s, (aw, ah) = meta["strides"][lvl], meta["anchors"][lvl][a]
    sig = p.sigmoid()
    expected_box = [(sig[0] * 2 - 0.5 + gx) * s, (sig[1] * 2 - 0.5 + gy) * s, (sig[2] * 2) ** 2 * aw,
                    (sig[3] * 2) ** 2 * ah]
    torch.testing.assert_close(row[:4], torch.stack(expected_box))
    torch.testing.assert_close(row[4:6], sig[4:6])
    k = 6 + 3 * 5  # keypoint 5
    torch.testing.assert_close(row[k:k + 3], torch.stack([(p[k] * 2 - 0.5 + gx) * s, (p[k + 1] * 2 - 0.5 + gy) * s,
                                                          sig[k + 2]]))


def test_deterministic_init():
    arch = load_arch("yolov5n")
    state = torch.get_rng_state()
    a, b, c = (build_model(arch, seed=s).state_dict() for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.0.conv.weight"], c["model.0.conv.weight"])


def test_fuse_keeps_outputs(yolov5n):
    model = copy.deepcopy(yolov5n)
    _randomize_bn(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def _export(model, dynamic_axes) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model, torch.rand(1, 3, 64, 64), buf, opset_version=17, input_names=["images"],
                      output_names=model.head_meta()["outputs"], dynamic_axes=dynamic_axes, dynamo=False)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter: onnxscript is optional
def test_onnx_export_dynamic_batch(pose):
    ort = pytest.importorskip("onnxruntime")
    model = copy.deepcopy(pose)
    _randomize_bn(model)
    sess = ort.InferenceSession(_export(model, {"images": {0: "batch", 2: "height", 3: "width"}}),
                                providers=["CPUExecutionProvider"])
    for shape in ((3, 3, 64, 64), (2, 3, 96, 128)):  # the decode follows the input size too
        x = torch.rand(*shape)
        (got,) = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    sess = ort.InferenceSession(_export(model.truncate_head(), {"images": {0: "batch"}}),
                                providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape[1:]) for o in sess.get_outputs()] == [
        ("p3", [171, 8, 8]), ("p4", [171, 4, 4]), ("p5", [171, 2, 2])]


def test_load_weights_mismatch_names_keys(yolov5n):
    other = build_model(load_arch("yolov5n"), nc=3)
    with pytest.raises(ConvertError, match=r"shape mismatches \(model\.24\.m\.0\.weight"):
        load_weights(other, yolov5n.state_dict(), source="x.pt")
    sd = dict(yolov5n.state_dict())
    del sd["model.0.conv.weight"]
    with pytest.raises(ConvertError, match="1 missing keys"):
        load_weights(copy.deepcopy(yolov5n), sd)


def test_unknown_arch_name():
    with pytest.raises(ConvertError, match="unknown architecture 'yolov9x'") as e:
        load_arch("yolov9x")
    assert "yolov5n" in e.value.hint


def test_arch_from_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("""
nc: 2
depth_multiple: 0.67
width_multiple: 0.125
anchors: 2
backbone:
  [[-1, 1, Focus, [64, 3]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 3, C3, [128]],
   [-1, 1, Conv, [256, 3, 2]],
   [-1, 1, SPP, [256, [5, 9]]],
  ]
head:
  [[-1, 1, nn.Upsample, [None, 2, 'nearest']],
   [[-1, 2], 1, Concat, [1]],
   [-1, 3, Conv, [384, 1, 1]],
   [[7, 4], 1, Detect, [nc, anchors]],
  ]
""")
    model = build_model(load_arch(str(path)))
    assert model.head_meta()["strides"] == [4, 8]
    sd = model.state_dict()
    assert "model.7.1.conv.weight" in sd and "model.7.2.conv.weight" not in sd  # 3 * 0.67 -> 2 Conv copies
    assert "model.2.m.1.cv1.conv.weight" in sd and "model.2.m.2.cv1.conv.weight" not in sd  # C3 repeats inside
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2 * (64 + 16), 7)
    arch = load_arch(str(path))
    arch["head"][2][3] = [64, 1, 1]  # the copies no longer chain: 48 -> 8, then 8 -> 8 expects 48
    with pytest.raises(ConvertError, match="architecture does not run"):
        build_model(arch)


@pytest.mark.parametrize("row, message", [
    ([-1, 1, "Bogus", [64]], r"row 10 \(Bogus\): unknown module 'Bogus'"),
    ([30, 1, "Conv", [64, 1, 1]], r"row 10 \(Conv\): 'from' 30 does not name earlier layers"),
    ([-1, 1, "Conv", ["x"]], r"row 10 \(Conv\): bad args"),
])
def test_bad_arch_rows(row, message):
    arch = load_arch("yolov5n")
    arch["head"].insert(0, row)
    with pytest.raises(ConvertError, match=message):
        build_model(arch)
