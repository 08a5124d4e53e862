"""The ``mmcv._ext`` stand-in: its torch ``nms`` equals a reference NMS; registration; missing ops raise."""

from __future__ import annotations

import importlib.util
import pkgutil
import sys

import pytest
import torch

from convert.errors import ConvertError
from convert.models import mmcv_shim


def test_nms_equals_torchvision_nms_on_random_boxes():
    torchvision = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 300):
        xy = torch.rand(n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)
        scores = torch.rand(n, generator=g)
        for thr in (0.3, 0.65):
            assert torch.equal(mmcv_shim.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
    assert len(mmcv_shim.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)) == 0


def test_nms_offset_widens_boxes_as_mmcv_does():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert mmcv_shim.nms(boxes, scores, 0.2).tolist() == [0, 1]  # touching: no overlap
    assert mmcv_shim.nms(boxes, scores, 0.2, offset=1).tolist() == [0]  # +1 px each side: IoU 2/6


def test_install_registers_a_findable_stand_in_whose_other_ops_raise(monkeypatch):
    if mmcv_shim.compiled_available():
        pytest.skip("compiled mmcv is installed: the stand-in is not used")
    monkeypatch.setitem(sys.modules, mmcv_shim.NAME, None)  # restored (removed) after the test
    assert mmcv_shim.install() is True and mmcv_shim.install() is True
    ext = sys.modules[mmcv_shim.NAME]
    assert importlib.util.find_spec(mmcv_shim.NAME) is not None
    assert pkgutil.find_loader(mmcv_shim.NAME) is not None  # what mmengine's mmcv_full_available() asks
    assert ext.nms is mmcv_shim.nms and callable(ext.roi_align)
    with pytest.raises(ConvertError, match="'roi_align' needs compiled mmcv"):
        ext.roi_align(torch.zeros(1))
    assert not mmcv_shim.compiled_available()
