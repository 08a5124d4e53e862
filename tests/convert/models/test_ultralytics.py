"""Ultralytics YOLOv8 / YOLO11 models: the own builder, its decode, safe checkpoints, and equality with
the ultralytics package itself (where it is installed)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from convert import heads
from convert import postprocess as pp
from convert.errors import ConvertError
from convert.heads.reference import torch_reference
from convert.models import ModelRequest
from convert.models import ultralytics as U

ARCHS = ["yolov8n", "yolov8n-pose", "yolo11n", "yolo11n-pose"]
# parameter counts ultralytics 8.4.190 reports for these YAMLs (nc as bundled: 80 for detection, 1 for pose);
# yolo11n-pose at nc=1 is the released checkpoint's 2,874,462
PARAMS = {"yolov8n": 3157200, "yolov8n-pose": 3295470, "yolo11n": 2624080, "yolo11n-pose": 2874462}


@pytest.fixture(scope="module")
def models():
    return {name: U.build_model(U.load_arch(name), seed=1) for name in ARCHS}


@pytest.mark.parametrize("name", ARCHS)
def test_builds_with_ultralytics_layout(models, name):
    model = models[name]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.stride.tolist() == [8, 16, 32]
    meta = model.head_meta()
    assert meta["type"] == ("yolov8_pose" if "pose" in name else "yolov8") and meta["reg_max"] == 16
    assert meta["nk"] == (17 if "pose" in name else 0) and meta["outputs"] == ["predictions"]
    last = len(model.model) - 1
    assert (f"model.{last}.cv3.0.0.0.conv.weight" in model.state_dict() if name.startswith("yolo11")
            else f"model.{last}.cv3.0.0.conv.weight" in model.state_dict())  # YOLO11's depthwise class branch


@pytest.mark.parametrize("name", ["yolov8n-pose", "yolo11n"])
def test_truncated_maps_decode_to_the_decoded_forward(models, name):
    model = models[name]
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = model(x)
        model.truncated = True
        try:
            maps = model(x)
            meta = model.head_meta()
        finally:
            model.truncated = False
    nc, nk = meta["nc"], meta["nk"]
    parts = 3 if nk else 2
    assert len(maps) == 3 * parts and [m.shape[1] for m in maps[:parts]] == [64, nc] + ([51] if nk else [])
    assert decoded.shape == (2, 4 + nc + 3 * nk, 12 * 20 + 6 * 10 + 3 * 5)
    torch.testing.assert_close(U.decode_raw(maps, meta), decoded, rtol=0, atol=1e-4)
    # the numpy decode of the head family reads the same candidates as the model's decoded output
    typed = heads.parse(meta)
    host = typed.decode([m.numpy() for m in maps])
    from_decoded = typed.decoded_candidates(decoded.numpy())
    np.testing.assert_allclose(host.boxes, from_decoded.boxes, atol=2e-3)
    np.testing.assert_allclose(host.scores, from_decoded.scores, atol=1e-5)
    if nk:
        np.testing.assert_allclose(host.keypoints, from_decoded.keypoints, atol=2e-3)


def test_host_postprocessing_equals_the_torch_reference(models):
    model = models["yolov8n-pose"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for branch in model.model[-1].cv3:  # scores spread over (0, 1), so NMS has work to do
            branch[-1].bias.zero_()
            branch[-1].weight.copy_(torch.randn(branch[-1].weight.shape, generator=g))
        x = torch.rand(1, 3, 128, 128, generator=g)
        decoded = model(x)
        model.truncated = True
        maps, meta = model(x), model.head_meta()
        model.truncated = False
    settings = pp.NMSSettings(0.05, 0.5, 300)
    ref = torch_reference(decoded, meta, settings)
    host = pp.postprocess([m.numpy() for m in maps], meta, settings)
    assert ref.num_dets[0, 0] > 3
    agr = pp.match(ref.image(0), host.image(0), tol=2e-3)
    assert agr.same, agr


def test_fuse_keeps_outputs(models):
    import copy

    model = copy.deepcopy(models["yolo11n"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        got = model.fuse()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_seeded_builds_are_identical():
    a, b = (U.build_model(U.load_arch("yolo11n"), seed=5) for _ in range(2))
    c = U.build_model(U.load_arch("yolo11n"), seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("edit,match", [
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "Segment", ["nc", 32, 256]]), "a segmentation head"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "OBB", ["nc", 1]]), "oriented-box"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "v10Detect", ["nc"]]), "NMS-free"),
    (lambda a: a.__setitem__("end2end", True), "end2end: true"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 2, "Mystery", [1]]), r"row 2 \(Mystery\): unknown module"),
    (lambda a: a["backbone"].__setitem__(2, [9, 2, "C3k2", [256]]), "does not name earlier layers"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 2, "C3k2", ["x", "y"]]), r"row 2 \(C3k2\): bad args"),
])
def test_unsupported_or_broken_architectures_are_refused(edit, match):
    arch = U.load_arch("yolo11n")
    edit(arch)
    with pytest.raises(ConvertError, match=match) as e:
        U.build_model(arch)
    assert "\n" not in str(e.value)


# --- checkpoints, read without ultralytics --------------------------------------------------


def _fake_ultralytics_checkpoint(path, model: nn.Module, cls_name: str, task: str, names: dict, kpt_shape=None):
    """Pickles ``model`` the way ultralytics saves one: its class named by reference under ultralytics.*."""
    import sys
    import types

    mod = types.ModuleType("ultralytics.nn.tasks")
    cls = type(cls_name, (nn.Module,), {"__module__": "ultralytics.nn.tasks"})
    wrapper = cls.__new__(cls)
    nn.Module.__init__(wrapper)
    wrapper.model = model.model
    wrapper.yaml, wrapper.names, wrapper.stride, wrapper.task = model.arch, names, model.stride.clone(), task
    if kpt_shape:
        wrapper.kpt_shape = kpt_shape
    setattr(mod, cls_name, cls)
    saved = {k: sys.modules.get(k) for k in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")}
    for k in saved:
        sys.modules[k] = types.ModuleType(k) if k != "ultralytics.nn.tasks" else mod
    try:
        torch.save({"model": wrapper.half(), "ema": None, "version": "8.2.100", "train_args": {}}, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        wrapper.float()


def test_checkpoint_round_trip_without_ultralytics(models, tmp_path):
    import copy

    model = copy.deepcopy(models["yolov8n-pose"])
    _fake_ultralytics_checkpoint(tmp_path / "p.pt", model, "PoseModel", "pose", {0: "person"}, [17, 3])
    loaded, recipe = U.load(ModelRequest(weights=tmp_path / "p.pt"))
    assert loaded.names == ["person"] and recipe["source"] == "ultralytics" and recipe["nc"] == 1
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.half().float()(x), rtol=0, atol=1e-4)  # fp16 weights saved


def test_segmentation_checkpoint_is_refused(models, tmp_path):
    _fake_ultralytics_checkpoint(tmp_path / "s.pt", models["yolo11n"], "SegmentationModel", "segment",
                                 {i: str(i) for i in range(80)})
    with pytest.raises(ConvertError, match=r"s\.pt is a segmentation model \(SegmentationModel\).*detection and pose"):
        U.load(ModelRequest(weights=tmp_path / "s.pt"))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["reduce", "getattr"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, how):
    marker = tmp_path / "pwned"
    if how == "reduce":
        evil = _Evil()
        evil.marker = marker
        torch.save({"model": evil}, tmp_path / "evil.pt")
    else:  # getattr on a real object (not a stub) could reach any code: refused
        from collections import OrderedDict

        class G:
            def __reduce__(self):
                return (getattr, (OrderedDict, "fromkeys"))
        torch.save({"model": G()}, tmp_path / "evil.pt")
    with pytest.raises(ConvertError, match="refusing to load"):
        U.load(ModelRequest(weights=tmp_path / "evil.pt"))
    assert not marker.exists()


def test_the_real_checkpoint_where_the_fixtures_are():
    path = os.path.join(os.path.dirname(__file__), "../../../../shared/fixtures/weights/yolo11n-pose.pt")
    if not os.path.isfile(path):
        pytest.skip("../shared/fixtures is not beside the checkout (benchmarks use it; the suite does not need it)")
    model, recipe = U.load(ModelRequest(weights=path))
    assert sum(p.numel() for p in model.parameters()) == 2874462 and model.names == ["person"]
    assert model.head_meta()["type"] == "yolov8_pose" and model.nk == 17


# --- equality with the ultralytics package --------------------------------------------------


@pytest.fixture(scope="module")
def ultralytics_models():
    tasks = pytest.importorskip("ultralytics.nn.tasks", reason="the ultralytics extra is not installed")
    out = {}
    for name in ARCHS:
        arch = U.load_arch(name)
        cls = tasks.PoseModel if "pose" in name else tasks.DetectionModel
        torch.manual_seed(0)
        ref = cls(cfg=dict(arch), nc=arch["nc"], verbose=False).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping would show
            for m in ref.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        out[name] = (arch, ref)
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_own_builder_equals_ultralytics(ultralytics_models, name):
    arch, ref = ultralytics_models[name]
    own = U.build_model(arch)
    assert set(own.state_dict()) == set(ref.state_dict())
    own.load_state_dict(ref.state_dict(), strict=True)
    wrapped = U.wrap_ultralytics(arch)
    wrapped.load_state_dict(ref.state_dict(), strict=True)
    for shape in [(1, 3, 640, 640), (1, 3, 384, 640)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = ref(x)[0]
            torch.testing.assert_close(own(x), want, rtol=1e-5, atol=1e-3)
            torch.testing.assert_close(wrapped(x), want, rtol=1e-5, atol=1e-3)
            # raw maps: ultralytics' own head branches on its own features
            raw = ref(x)[1]
            own.truncated = True
            maps = own(x)
            own.truncated = False
        parts = 3 if "pose" in name else 2
        bs = x.shape[0]
        torch.testing.assert_close(torch.cat([maps[i * parts].view(bs, 64, -1) for i in range(3)], -1), raw["boxes"])
        torch.testing.assert_close(torch.cat([maps[i * parts + 1].view(bs, arch["nc"], -1) for i in range(3)], -1),
                                   raw["scores"])
        if parts == 3:
            torch.testing.assert_close(torch.cat([maps[i * 3 + 2].view(bs, 51, -1) for i in range(3)], -1),
                                       raw["kpts"])


@pytest.mark.parametrize("name", ["yolov8n-pose", "yolo11n"])
def test_detections_equal_ultralytics_nms(ultralytics_models, name):
    """Decoded outputs are equal (above); on the same decoded candidates our NMS keeps what ultralytics'
    keeps. Random networks give tied scores, so the scores are redrawn distinct, the same for both."""
    from ultralytics.utils.nms import non_max_suppression

    arch, ref = ultralytics_models[name]
    nc, nk = arch["nc"], (17 if "pose" in name else 0)
    with torch.no_grad():
        out = ref(torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(5)))[0].clone()
    g = torch.Generator().manual_seed(6)
    n = out.shape[2]
    scores = torch.rand(1, nc, n, generator=g) * 0.2  # below the threshold, but for a few candidates:
    lucky = torch.randperm(n, generator=g)[: n // 20]
    scores[0, torch.randint(nc, (len(lucky),), generator=g), lucky] = 0.25 + 0.75 * torch.rand(len(lucky), generator=g)
    out[:, 4:4 + nc] = scores
    out[:, :2] += torch.rand(out[:, :2].shape, generator=g) * 100  # spread the boxes: overlaps vary
    theirs = non_max_suppression(out, conf_thres=0.25, iou_thres=0.7, max_det=300, nc=nc, multi_label=False)[0]
    meta = {"type": "yolov8_pose" if nk else "yolov8", "strides": [8, 16, 32], "nc": nc, "nk": nk}
    # ultralytics keeps each box's best class only (multi_label=False): our class-agnostic NMS does the same
    # on one class; with 80 classes it is class-aware NMS over best classes, compared as such
    cands = heads.parse(meta).decoded_candidates(out.numpy())
    if nc > 1:
        best = cands.scores.argmax(2)
        cands.scores = np.where(np.arange(nc)[None, None] == best[..., None], cands.scores, 0).astype(np.float32)
    mine = pp.select(cands, pp.NMSSettings(0.25, 0.7, 300)).image(0)
    assert 10 < len(theirs) < 300 and len(mine) == len(theirs)
    order = np.argsort(-theirs[:, 4].numpy(), kind="stable")
    np.testing.assert_allclose(mine.boxes, theirs[order, :4].numpy(), atol=1e-3)
    np.testing.assert_array_equal(mine.classes, theirs[order, 5].numpy().astype(np.int32))
    if nk:
        np.testing.assert_allclose(mine.keypoints.reshape(len(mine), -1), theirs[order, 6:].numpy(), atol=1e-3)
