"""The head-family registry: discovery, typed metadata, errors."""

from __future__ import annotations

import pytest

from convert import heads
from convert.errors import ConvertError
from convert.heads.distance import DistanceHead
from convert.heads.yolov5 import YOLOv5Head
from convert.heads.yolov8 import YOLOv8Head
from convert.heads.yolox import YOLOXHead

from synthetic import synthetic_head, synthetic_yolov8_head


def test_every_family_module_registers_its_types():
    assert heads.registry() == {"distance": DistanceHead, "yolov5": YOLOv5Head, "yolov5_pose": YOLOv5Head,
                                "yolov8": YOLOv8Head, "yolov8_pose": YOLOv8Head, "yolox": YOLOXHead}
    for t in heads.types():
        assert heads.has_keypoints(t) == t.endswith("_pose")


@pytest.mark.parametrize("make,cls", [(synthetic_head, YOLOv5Head), (synthetic_yolov8_head, YOLOv8Head)])
def test_parse_gives_the_family_type_with_its_fields(make, cls):
    head = heads.parse(make(nc=2, nk=3))
    assert type(head) is cls and head.keypoints and head.nc == 2 and head.nk == 3
    assert len(head.map_channels()) == len(head.outputs)
    assert heads.parse(head) is head
    assert not heads.parse(make(nc=2)).keypoints


@pytest.mark.parametrize("head,match", [
    (None, "no head metadata"),
    ({"nc": 1}, "no head metadata"),
    ({"type": "yolov10", "nc": 1},
     r"'yolov10' is not supported.*distance, yolov5, yolov5_pose, yolov8, yolov8_pose, yolox"),
    ({**synthetic_yolov8_head(), "anchors": []}, r"head metadata \(yolov8\): anchors: Extra inputs"),
    ({k: v for k, v in synthetic_head().items() if k != "na"}, r"head metadata \(yolov5\): na: Field required"),
    ({**synthetic_yolov8_head(), "nc": "many"}, r"nc: Input should be a valid integer"),
])
def test_bad_metadata_is_a_one_line_error(head, match):
    with pytest.raises(ConvertError, match=match) as e:
        heads.parse(head)
    assert "\n" not in str(e.value)


def test_map_count_and_channels_are_checked():
    head = heads.parse(synthetic_yolov8_head(nc=2, nk=1))
    with pytest.raises(ConvertError, match="5 head outputs for a 'yolov8_pose' head of 3 levels"):
        head.check_maps([(1, 64, 8, 8)] * 5)
    shapes = [(1, c, 8, 8) for c in head.map_channels()]
    head.check_maps(shapes)
    shapes[4] = (1, 3, 4, 4)  # p4_cls
    with pytest.raises(ConvertError, match="'p4_cls' has 3 channels, but the 'yolov8_pose' head metadata says 2"):
        head.check_maps(shapes)
