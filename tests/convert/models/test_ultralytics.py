"""Ultralytics YOLOv8 / YOLO11 models: the own builder, its decode, safe checkpoints, and equality with
the ultralytics package itself (where it is installed)."""

from __future__ import annotations

import copy
import json
import os
import sys

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
from convert.models import yolo as Y

ARCHS = ["yolov8n", "yolov8n-pose", "yolo11n", "yolo11n-pose"]
# parameter counts (DFL conv included) ultralytics 8.4.190 builds for these YAMLs at the bundled nc
# (80 for detection, 1 for pose); yolo11n-pose at nc=1 is the released checkpoint's 2,874,462
PARAMS = {"yolov8n": 3157200, "yolov8n-pose": 3295470, "yolo11n": 2624080, "yolo11n-pose": 2874462}
# ... and at the other class count, measured the same way
PARAMS_OTHER_NC = {("yolo11n-pose", 80): 2908507, ("yolov8n", 1): 3011043}
FIXTURE = os.path.join(os.path.dirname(__file__), "../../../../shared/fixtures/weights/yolo11n-pose.pt")
NO_ULTRALYTICS = "the ultralytics extra is not installed (pip install 'convert[ultralytics]')"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the models are small, and two OpenMP threads on two cores slow down ~15x as
    soon as another process takes a core (measured); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return {name: U.build_model(U.load_arch(name), seed=1) for name in ARCHS}


def _edited(name, edit):
    arch = U.load_arch(name)
    edit(arch)
    return arch


# --- the own builder -----------------------------------------------------------------------


def test_builtin_archs_are_split_between_the_families():
    assert U.builtin_archs() == sorted(ARCHS)
    assert not set(U.builtin_archs()) & set(Y.builtin_archs()) and "yolov5n" in Y.builtin_archs()
    assert all(U.load_arch(name)["scale"] == "n" for name in ARCHS)


@pytest.mark.parametrize("name", ARCHS)
def test_builds_with_ultralytics_layout(models, name):
    model = models[name]
    pose = "pose" in name
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.stride.tolist() == [8, 16, 32] and not model.truncated and not model.training
    assert [m.i for m in model.model] == list(range(len(model.model)))
    assert model.kpt_shape == ([17, 3] if pose else None) and model.nk == (17 if pose else 0)
    sd = model.state_dict()
    last = len(model.model) - 1
    assert all(k.startswith("model.") for k in sd) and f"model.{last}.dfl.conv.weight" in sd
    assert torch.equal(sd[f"model.{last}.dfl.conv.weight"].flatten(), torch.arange(16.0))
    # YOLO11's depthwise class branch (DWConv + Conv per stage); YOLOv8's plain 3x3 Convs
    assert (f"model.{last}.cv3.0.0.0.conv.weight" in sd) == name.startswith("yolo11")
    assert (f"model.{last}.cv4.2.2.weight" in sd) == pose
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    head = model.head
    for i, s in enumerate((8, 16, 32)):  # Detect.bias_init
        assert torch.all(head.cv2[i][-1].bias == 2.0)
        torch.testing.assert_close(head.cv3[i][-1].bias, torch.full((head.nc,), np.log(5 / head.nc / (640 / s) ** 2),
                                                                    dtype=torch.float32))


@pytest.mark.parametrize("name,nc", list(PARAMS_OTHER_NC))
def test_parameter_count_at_another_class_count(name, nc):
    model = U.build_model(U.load_arch(name), nc=nc)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_OTHER_NC[name, nc] and model.head.nc == nc
    assert model.arch["nc"] == nc and len(model.names) == nc


@pytest.mark.parametrize("name", ARCHS)
def test_truncated_maps_decode_to_the_decoded_forward(models, name):
    model = models[name]
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = model(x)
        model.truncate_head()
        try:
            maps = model(x)
            meta = model.head_meta()
        finally:
            model.truncated = False
    nc, nk = meta["nc"], meta["nk"]
    parts = 3 if nk else 2
    assert meta["outputs"] == [f"p{p}_{k}" for p in (3, 4, 5) for k in ("box", "cls", "kpt")[:parts]]
    assert [tuple(m.shape) for m in maps] == [(2, c, 96 // s, 160 // s) for s in (8, 16, 32)
                                              for c in [64, nc] + ([51] if nk else [])]
    assert decoded.shape == (2, 4 + nc + 3 * nk, 12 * 20 + 6 * 10 + 3 * 5)
    torch.testing.assert_close(U.decode_raw(maps, meta), decoded, rtol=0, atol=1e-4)
    assert torch.all(decoded[:, 2:4] >= 0) and torch.all((decoded[:, 4:4 + nc] > 0) & (decoded[:, 4:4 + nc] < 1))
    # the numpy decode of the head family reads the same candidates as the model's decoded output
    typed = heads.parse(meta)
    host = typed.decode([m.numpy() for m in maps])
    from_decoded = typed.decoded_candidates(decoded.numpy())
    np.testing.assert_allclose(host.boxes, from_decoded.boxes, atol=2e-3)
    np.testing.assert_allclose(host.scores, from_decoded.scores, atol=1e-5)
    if nk:
        np.testing.assert_allclose(host.keypoints, from_decoded.keypoints, atol=2e-3)


def test_decode_raw_follows_ultralytics_formulas():
    """Hand-made maps: DFL expectation, dist2bbox xywh around cell centres, times stride; keypoints
    (raw * 2 + anchor - 0.5) * stride and sigmoid visibility."""
    meta = {"strides": [8, 16], "nc": 1, "nk": 1, "reg_max": 16}
    maps = []
    for h, w in ((2, 3), (1, 2)):
        box = torch.full((1, 64, h, w), -30.0)
        box[:, [1, 16 + 2, 32 + 3, 48 + 4]] = 30.0  # distances l, t, r, b = 1, 2, 3, 4 bins
        maps += [box, torch.zeros(1, 1, h, w), torch.tensor([0.25, -0.5, 0.0]).view(1, 3, 1, 1).repeat(1, 1, h, w)]
    out = U.decode_raw(maps, meta)
    assert out.shape == (1, 4 + 1 + 3, 2 * 3 + 1 * 2)
    cx = torch.tensor([0.5, 1.5, 2.5] * 2 + [0.5, 1.5])
    cy = torch.tensor([0.5] * 3 + [1.5] * 3 + [0.5] * 2)
    s = torch.tensor([8.0] * 6 + [16.0] * 2)
    want = torch.stack([(cx + 1) * s, (cy + 1) * s, torch.full_like(s, 4) * s, torch.full_like(s, 6) * s,
                        torch.full_like(s, 0.5), (0.5 + cx - 0.5) * s, (-1 + cy - 0.5) * s, torch.full_like(s, 0.5)])
    torch.testing.assert_close(out[0], want, rtol=0, atol=1e-4)


def test_head_meta_is_json_and_complete(models):
    model = models["yolo11n-pose"]
    meta = json.loads(json.dumps(model.head_meta()))
    assert meta == {**meta, "type": "yolov8_pose", "strides": [8, 16, 32], "nc": 1, "nk": 17, "reg_max": 16,
                    "names": ["person"], "outputs": ["predictions"]}
    assert all(type(s) is int for s in meta["strides"]) and "4+nc+3*nk" in meta["layout"]
    det = models["yolov8n"].head_meta()
    assert det["type"] == "yolov8" and det["nk"] == 0 and det["names"][:2] == ["class0", "class1"]
    assert "kpt" not in det["layout"]


def test_host_postprocessing_equals_the_torch_reference():
    model = U.build_model(U.load_arch("yolov8n-pose"), seed=1)
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
    host = heads.postprocess([m.numpy() for m in maps], meta, settings)
    assert ref.num_dets[0, 0] > 3
    agr = pp.match(ref.image(0), host.image(0), tol=2e-3)
    assert agr.same, agr


@pytest.mark.parametrize("name", ["yolo11n", "yolov8n-pose"])
def test_fuse_keeps_outputs(models, name):
    model = copy.deepcopy(models[name])
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # non-trivial BN statistics, so the folding is really tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        want = model(x)
        got = model.fuse()(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_seeded_builds_are_identical_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = (U.build_model(U.load_arch("yolo11n"), seed=5) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), before)
    c = U.build_model(U.load_arch("yolo11n"), seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_scale_from_the_key_the_file_name_or_the_first_scale(tmp_path):
    base = U.load_arch("yolo11n-pose")
    del base["scale"]
    text = json.dumps(base)  # JSON is YAML
    (tmp_path / "yolo11s-pose.yaml").write_text(text)
    (tmp_path / "custom.yaml").write_text(text)
    (tmp_path / "yolo11x-keyed.yaml").write_text(json.dumps({**base, "scale": "s"}))
    assert U.load_arch(tmp_path / "yolo11s-pose.yaml")["scale"] == "s"
    assert "scale" not in U.load_arch(tmp_path / "custom.yaml")
    assert U.load_arch(tmp_path / "yolo11x-keyed.yaml")["scale"] == "s"  # the key wins over the name
    # width 0.25 (n, the first scale) vs 0.50 (s): the stem Conv has 16 vs 32 channels (64 * width)
    layers, _ = U._parse_model(U.load_arch(tmp_path / "custom.yaml"), 1, 3)
    assert layers[0].conv.out_channels == 16
    layers, _ = U._parse_model(U.load_arch(tmp_path / "yolo11s-pose.yaml"), 1, 3)
    assert layers[0].conv.out_channels == 32
    # at scales m, l, x C3k2 uses C3k blocks, as parse_model decides by the letter (n's numbers here: fast)
    layers, _ = U._parse_model({**base, "scales": {"m": base["scales"]["n"]}, "scale": "m"}, 1, 3)
    assert isinstance(layers[2].m[0], U.C3k) and isinstance(layers[2].m[0].m[0], U.Bottleneck)


def test_activation_and_input_channels_keys():
    arch = _edited("yolov8n", lambda a: a.update(activation="nn.ReLU()", channels=1))
    model = U.build_model(arch)
    assert model.model[0].conv.in_channels == 1
    acts = {type(m.act) for m in model.modules() if isinstance(m, U.Conv)}
    assert acts == {nn.ReLU}
    assert isinstance(model.model[9].cv1.act, nn.ReLU)  # SPPF's cv1: activated for [c2, k] rows
    assert isinstance(U.build_model(U.load_arch("yolov8n")).model[9].cv1.act, nn.SiLU)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 84, 64 + 16 + 4)


@pytest.mark.parametrize("edit,match", [
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "Segment", ["nc", 32, 256]]), "a segmentation head"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "OBB", ["nc", 1]]), "oriented-box"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "v10Detect", ["nc"]]), "NMS-free"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "RTDETRDecoder", ["nc"]]), "RT-DETR"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "WorldDetect", ["nc", 512, True]]), "YOLO-World"),
    (lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "YOLOEDetect", ["nc", 512, True]]), "YOLOE"),
    (lambda a: a["head"].__setitem__(-1, [-1, 1, "Classify", ["nc"]]), "classification"),
    (lambda a: a.__setitem__("end2end", True), "end2end: true"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 2, "Mystery", [1]]), r"row 2 \(Mystery\): unknown module"),
    (lambda a: a["backbone"].__setitem__(2, [9, 2, "C3k2", [256]]), "does not name earlier layers"),
    (lambda a: a["head"].__setitem__(2, [[-1, 4.5], 1, "Concat", [1]]), r"row 13 \(Concat\): 'from'"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 0, "C3k2", [256]]), "'number' 0 must be a positive integer"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 2, "C3k2", ["x", "y"]]), r"row 2 \(C3k2\): bad args"),
    (lambda a: a["backbone"].__setitem__(2, [-1, 2, "C3k2"]), r"row 2: .* is not \[from, number, module, args\]"),
    (lambda a: a["backbone"].__setitem__(2, [[-1], 1, "Detect", ["nc"]]), "the last row, and only it"),
    (lambda a: a.__setitem__("scale", "q"), "scale 'q' is not one of its scales"),
    (lambda a: a.__setitem__("activation", "__import__('os').system('true')"), "not a torch.nn activation"),
    (lambda a: a.__setitem__("kpt_shape", [17, 2]), r"\(Pose\): bad args .*only \[nk, 3\]"),
    (lambda a: a.__setitem__("nc", 0), "nc 0 is not a positive integer"),
])
def test_unsupported_or_broken_architectures_are_refused(edit, match):
    arch = _edited("yolo11n-pose", edit)
    with pytest.raises(ConvertError, match=match) as e:
        U.build_model(arch)
    assert "\n" not in str(e.value)
    if "head" in match or "end2end" in match:
        assert "YOLOv8 / YOLO11 detection (Detect) and pose (Pose)" in str(e.value)


def test_load_weights_names_the_mismatch(models):
    sd = dict(models["yolov8n"].state_dict())
    sd.pop("model.0.conv.weight")
    sd["model.99.bogus"] = torch.zeros(1)
    with pytest.raises(ConvertError, match=r"weights from x\.pt do not fit.*1 missing keys \(model\.0\.conv\.weight\)"
                       r".*1 unexpected keys \(model\.99\.bogus\)"):
        U.load_weights(copy.deepcopy(models["yolov8n"]), sd, "x.pt")


def test_wrap_ultralytics_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics.nn.tasks", None)  # import fails, installed or not
    with pytest.raises(ConvertError, match="needs the ultralytics package") as e:
        U.wrap_ultralytics(U.load_arch("yolo11n"))
    assert e.value.hint.startswith("pip install 'convert[ultralytics]'")


# --- checkpoints, read without ultralytics --------------------------------------------------


def _fake_ultralytics_checkpoint(path, model: nn.Module, cls_name: str, task: str, names: dict, kpt_shape=None):
    """Pickles ``model`` the way ultralytics saves one: its class named by reference under ultralytics.*."""
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
    model = copy.deepcopy(models["yolov8n-pose"])
    _fake_ultralytics_checkpoint(tmp_path / "p.pt", model, "PoseModel", "pose", {0: "person"}, [17, 3])
    loaded, recipe = U.load(ModelRequest(weights=tmp_path / "p.pt"))
    assert loaded.names == ["person"] and recipe["source"] == "ultralytics" and recipe["nc"] == 1
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.half().float()(x), rtol=0, atol=1e-4)  # fp16 weights saved
    again = U.from_recipe(json.loads(json.dumps(recipe)))
    assert set(again.state_dict()) == set(loaded.state_dict())
    # a spec's `arch` (its default for random-weight runs) does not override a full checkpoint's own
    other, _ = U.load(ModelRequest(arch="yolo11n", weights=tmp_path / "p.pt"))
    assert other.head_meta()["type"] == "yolov8_pose" and set(other.state_dict()) == set(loaded.state_dict())


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
    if not os.path.isfile(FIXTURE):
        pytest.skip("../shared/fixtures is not beside the checkout (benchmarks use it; the suite does not need it)")
    model, recipe = U.load(ModelRequest(weights=FIXTURE))
    assert sum(p.numel() for p in model.parameters()) == 2874462 and model.names == ["person"]
    assert model.head_meta()["type"] == "yolov8_pose" and model.nk == 17


# --- equality with the ultralytics package --------------------------------------------------


def _ultralytics_tasks():
    """``ultralytics.nn.tasks``, or a skip saying why (any ImportError: missing or broken install)."""
    try:
        from ultralytics.nn import tasks
    except ImportError:
        pytest.skip(NO_ULTRALYTICS)
    return tasks


@pytest.fixture(scope="module")
def ultralytics_models():
    """ultralytics' own model for each bundled YAML, built under torch.manual_seed(0), with the
    state dict it had right after building (for the seeded-initialisation check)."""
    tasks = _ultralytics_tasks()
    out = {}
    for name in ARCHS:
        arch = U.load_arch(name)
        cls = tasks.PoseModel if "pose" in name else tasks.DetectionModel
        torch.manual_seed(0)
        ref = cls(cfg=copy.deepcopy(arch), nc=arch["nc"], verbose=False).eval()
        initial = {k: v.clone() for k, v in ref.state_dict().items()}
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping would show
            for m in ref.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        out[name] = (arch, ref, initial)
    return out


def _assert_decoded_equal(got, want, nc):
    """Boxes and keypoints in input pixels (up to ~640): atol 1e-3; sigmoid scores: atol 1e-5."""
    torch.testing.assert_close(got[:, :4], want[:, :4], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got[:, 4:4 + nc], want[:, 4:4 + nc], rtol=0, atol=1e-5)
    if got.shape[1] > 4 + nc:
        torch.testing.assert_close(got[:, 4 + nc::3], want[:, 4 + nc::3], rtol=1e-5, atol=1e-3)  # x
        torch.testing.assert_close(got[:, 5 + nc::3], want[:, 5 + nc::3], rtol=1e-5, atol=1e-3)  # y
        torch.testing.assert_close(got[:, 6 + nc::3], want[:, 6 + nc::3], rtol=0, atol=1e-5)  # visibility


def _assert_raw_equal(maps, raw, nc, nk):
    """Our level-major maps against ultralytics' per-level raw outputs, concatenated over levels."""
    parts, bs = (3 if nk else 2), maps[0].shape[0]
    cat = [torch.cat([maps[i * parts + p].flatten(2) for i in range(3)], -1) for p in range(parts)]
    keys = ["boxes", "scores", "kpts"][:parts]
    assert [c.shape for c in cat] == [raw[k].shape for k in keys] and cat[1].shape == (bs, nc, cat[1].shape[2])
    for c, k in zip(cat, keys):
        torch.testing.assert_close(c, raw[k], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_own_builder_equals_ultralytics(ultralytics_models, name):
    arch, ref, initial = ultralytics_models[name]
    nc, nk = arch["nc"], (17 if "pose" in name else 0)
    own = U.build_model(arch, seed=0)
    assert set(own.state_dict()) == set(ref.state_dict())
    # same modules built in the same order: the seeded initialisation is ultralytics' own, to the bit
    assert all(torch.equal(v, initial[k]) for k, v in own.state_dict().items())
    U.load_weights(own, ref.state_dict(), "ultralytics")
    assert torch.equal(own.stride, ref.stride) and own.kpt_shape == (list(ref.kpt_shape) if nk else None)

    captured = {}  # the head branches' outputs during the decoded forward: the truncated maps
    hooks = [branch[i].register_forward_hook(lambda m, inp, out, key=(i, p): captured.__setitem__(key, out))
             for p, branch in enumerate([own.head.cv2, own.head.cv3] + ([own.head.cv4] if nk else []))
             for i in range(3)]
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            want, raw = ref(x)  # eval: (decoded, raw per-level predictions)
            got = own(x)
    finally:
        for h in hooks:
            h.remove()
    _assert_decoded_equal(got, want, nc)
    _assert_raw_equal([captured[i, p] for i in range(3) for p in range(3 if nk else 2)], raw, nc, nk)

    x = torch.rand(1, 3, 384, 640, generator=torch.Generator().manual_seed(3))  # non-square
    with torch.no_grad():
        want, raw = ref(x)
        own.truncate_head()
        try:
            maps = own(x)
        finally:
            own.truncated = False
    assert [m.shape[2:] for m in maps[:: 3 if nk else 2]] == [(48, 80), (24, 40), (12, 20)]
    _assert_raw_equal(maps, raw, nc, nk)
    _assert_decoded_equal(U.decode_raw(maps, own.head_meta()), want, nc)


@pytest.mark.parametrize("name", ARCHS)
def test_wrap_ultralytics_equals_the_own_builder(ultralytics_models, name):
    arch, ref, initial = ultralytics_models[name]
    from ultralytics.nn.modules.head import Detect as TheirDetect

    wrapped = U.wrap_ultralytics(arch, seed=0)
    assert isinstance(wrapped.head, TheirDetect) and wrapped.arch == {**arch, "nc": arch["nc"]}
    assert all(torch.equal(v, initial[k]) for k, v in wrapped.state_dict().items())
    own = U.build_model(arch)
    assert own.head_meta() == wrapped.head_meta() and torch.equal(own.stride, wrapped.stride)
    U.load_weights(wrapped, ref.state_dict(), "ultralytics")
    U.load_weights(own, ref.state_dict(), "ultralytics")
    x = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), own(x), rtol=0, atol=1e-5)
        for m in (wrapped, own):
            m.truncate_head()
        for a, b in zip(wrapped(x), own(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert wrapped.head_meta() == own.head_meta()


def test_wrap_ultralytics_refuses_other_tasks():
    _ultralytics_tasks()
    with pytest.raises(ConvertError, match="segmentation.*not supported"):
        U.wrap_ultralytics(_edited("yolo11n", lambda a: a["head"].__setitem__(-1, [[16, 19, 22], 1, "Segment",
                                                                                   ["nc", 32, 256]])))
    with pytest.raises(ConvertError, match="end2end"):
        U.wrap_ultralytics(_edited("yolo11n", lambda a: a.__setitem__("end2end", True)))


def test_the_real_checkpoint_equals_ultralytics():
    if not os.path.isfile(FIXTURE):
        pytest.skip("../shared/fixtures is not beside the checkout (benchmarks use it; the suite does not need it)")
    tasks = _ultralytics_tasks()
    ref = tasks.load_checkpoint(FIXTURE, device="cpu", fuse=False)[0].float().eval()
    own, _ = U.load(ModelRequest(weights=FIXTURE))
    x = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ref(x)[0]
        _assert_decoded_equal(own(x), want, 1)
    assert own.names == list(ref.names.values()) == ["person"] and own.kpt_shape == list(ref.kpt_shape)


@pytest.mark.parametrize("name", ["yolov8n-pose", "yolo11n"])
def test_detections_equal_ultralytics_nms(ultralytics_models, name):
    """Decoded outputs are equal (above); on the same decoded candidates our NMS keeps what ultralytics'
    keeps. Random networks give tied scores, so the scores are redrawn distinct, the same for both."""
    from ultralytics.utils.nms import non_max_suppression

    arch, ref, _ = ultralytics_models[name]
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
