"""Safe checkpoint loading: official-like checkpoints, plain state dicts, hostile and broken files."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from convert.errors import ConvertError
from convert.models.checkpoint import Stub, load_checkpoint, load_pickle, load_state_dict_file
from convert.models.yolo import build_model, load_arch, load_yolov5


class Model(nn.Module):
    """Stands for ``models.yolo.Model``: torch.save pickles it by reference, like the real one."""

    def __init__(self, yolo):
        super().__init__()
        self.yaml = yolo.arch
        self.names = yolo.names
        self.stride = yolo.stride.clone()
        self.model = yolo.model


@pytest.fixture(scope="module")
def yolo():
    model = build_model(load_arch("yolov5n"), nc=3, names=["cat", "dog", "bus"], seed=3)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics, so a wrong mapping would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _save_official_like(model, path, half=False):
    wrapper = Model(model)
    torch.save({"epoch": -1, "model": wrapper.half() if half else wrapper, "optimizer": None}, path)


def test_checkpoint_round_trip(yolo, tmp_path):
    path = tmp_path / "ckpt.pt"
    _save_official_like(yolo, path)
    ckpt = load_checkpoint(path)
    assert ckpt.names == ["cat", "dog", "bus"] and ckpt.nc == 3 and ckpt.stride == [8.0, 16.0, 32.0]
    assert ckpt.arch == yolo.arch
    want = yolo.state_dict()
    assert list(ckpt.state_dict) == list(want)
    assert all(torch.equal(ckpt.state_dict[k], want[k]) for k in want)

    loaded = load_yolov5(path)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), yolo(x))
    assert loaded.names == yolo.names


def test_checkpoint_float16(yolo, tmp_path):
    path = tmp_path / "half.pt"
    _save_official_like(build_model(yolo.arch, names=yolo.names, seed=3), path, half=True)
    ckpt = load_checkpoint(path)
    floats = [v for k, v in ckpt.state_dict.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == torch.float32 for v in floats)
    reference = build_model(yolo.arch, names=yolo.names, seed=3)
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    reference.load_state_dict(rounded)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_yolov5(path)(x), reference(x))


def test_plain_state_dict(yolo, tmp_path):
    for i, obj in enumerate([yolo.state_dict(), {"model": yolo.state_dict()}]):
        path = tmp_path / f"sd{i}.pt"
        torch.save(obj, path)
        sd = load_state_dict_file(path)
        assert list(sd) == list(yolo.state_dict())
        assert torch.equal(sd["model.24.m.0.bias"], yolo.state_dict()["model.24.m.0.bias"])


def test_checkpoint_without_model(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ConvertError, match="holds no YOLOv5 model"):
        load_checkpoint(path)


class _SystemCall:
    """Unpickles by calling os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _make_marker(path):
    open(path, "w").close()


class _UnknownCall:
    """Unpickles by calling an arbitrary function from a module that is not on any list."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _make_marker, (str(self.marker),)


def test_malicious_torch_zip_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _SystemCall(marker), "w": torch.ones(3)}, path)
    assert zipfile.is_zipfile(path)
    refusal = r"refusing to load checkpoint .*evil\.pt: it asks to call (os|posix)\.system"
    with pytest.raises(ConvertError, match=refusal):
        load_checkpoint(path)
    assert not marker.exists()


class _Eval(_SystemCall):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


class _Getattr(_SystemCall):
    def __reduce__(self):
        return getattr, (int, "__add__")


@pytest.mark.parametrize("payload", [_SystemCall, _Eval, _Getattr])
def test_malicious_plain_pickle_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": payload(marker)}, protocol=2))
    with pytest.raises(ConvertError, match="refusing to load checkpoint"):
        load_pickle(path)
    assert not marker.exists()


def test_unknown_callable_is_stubbed_not_called(tmp_path):
    marker = tmp_path / "called"
    _make_marker(tmp_path / "sanity")  # the function works when called for real
    path = tmp_path / "odd.pt"
    torch.save({"model": _UnknownCall(marker)}, path)
    obj = load_pickle(path)
    assert isinstance(obj["model"], Stub) and obj["model"].args == (str(marker),)
    assert obj["model"].qualname.endswith("._make_marker")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_truncated_or_garbage(yolo, tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut in half
        _save_official_like(yolo, tmp_path / "full.pt")
        data = (tmp_path / "full.pt").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ConvertError, match=rf"checkpoint {path} is truncated or not a PyTorch checkpoint"):
        load_yolov5(path)


def test_truncated_storage_record(yolo, tmp_path):
    """A well-formed zip whose tensor data is too short names the record."""
    full = tmp_path / "full.pt"
    torch.save({"w": torch.ones(1000)}, full)
    path = tmp_path / "short.pt"
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:100] if "/data/" in info.filename else data)
    with pytest.raises(ConvertError, match="is truncated: storage data/0"):
        load_state_dict_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConvertError, match="does not exist"):
        load_yolov5(tmp_path / "nope.pt")
