"""TensorRT calibration cache: format, round trip, and refusing a cache of another model."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from calib.trt_cache import (
    check_belongs,
    format_cache,
    parse_cache,
    read_cache,
    version_number,
    write_cache,
)
from convert.errors import ConvertError

RANGES = {"images": (0.0, 1.0), "/model.0/conv/Conv_output_0": (-28.1, 33.0),
          "/model.0/act/Mul_output_0": (-0.28, 33.0), "dead": (0.0, 0.0)}


def test_version_numbers_follow_tensorrt():
    assert version_number("10.3.0") == 100300
    assert version_number("10.13.2.6") == 101302
    assert version_number("8.6.1") == 8601
    assert version_number("8.5") == 8500
    with pytest.raises(ConvertError, match="major.minor.patch"):
        version_number("ten")


def test_format_is_tensorrt_text_with_big_endian_float_scales():
    text = format_cache({"t": (-127.0, 50.0), "u": (0.0, 1.0)}, "10.3.0")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert "t: 3f800000" in lines  # amax 127 -> scale 1.0
    assert f"u: {struct.pack('>f', np.float32(1 / 127)).hex()}" in lines
    assert text.endswith("\n")


def test_round_trip(tmp_path):
    path = tmp_path / "calibration.cache"
    write_cache(RANGES, path, "10.0.1")
    cache = read_cache(path)
    assert (cache.version, cache.algorithm) == (100001, "EntropyCalibration2")
    back = cache.ranges()
    assert set(back) == set(RANGES)
    for name, (lo, hi) in RANGES.items():
        amax = max(abs(lo), abs(hi)) or 1.0  # a tensor that was always zero is written with amax 1
        assert back[name][1] == pytest.approx(amax, rel=1e-6)
        assert back[name][0] == -back[name][1]


def test_parse_keeps_names_with_colons_and_skips_tensorrt_internal_tensors():
    text = "TRT-8601-EntropyCalibration2\ninput:0: 3c010204\n(Unnamed Layer* 3) [Shuffle]_output: 3c010204\n"
    cache = parse_cache(text)
    assert set(cache.scales) == {"input:0", "(Unnamed Layer* 3) [Shuffle]_output"}
    assert set(cache.ranges()) == {"input:0"}
    check_belongs(cache, {"input:0"})  # TensorRT's own tensors do not count against the model


@pytest.mark.parametrize("text, message", [
    ("", "not a TensorRT calibration cache"),
    ("images: 3c010204\n", "not a TensorRT calibration cache"),
    ("TRT-8601-EntropyCalibration2\nimages 3c010204\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\nimages: xyz\n", "line 2"),
])
def test_malformed_caches_are_clear_errors(text, message):
    with pytest.raises(ConvertError, match=message):
        parse_cache(text)


def test_a_cache_for_another_model_is_refused():
    cache = parse_cache(format_cache(RANGES, "10.3.0"))
    check_belongs(cache, set(RANGES) | {"more", "tensors"})
    other_model = {"images", "/backbone/conv1/Conv_output_0", "/backbone/act1/Relu_output_0"}
    with pytest.raises(ConvertError, match=r"does not belong to this model: 3 of its 4 tensors"):
        check_belongs(cache, other_model)
    with pytest.raises(ConvertError, match="names no tensor"):
        check_belongs(parse_cache("TRT-100300-EntropyCalibration2\n"), other_model)


def test_unknown_algorithm_is_refused():
    with pytest.raises(ConvertError, match="unknown TensorRT calibration algorithm"):
        format_cache(RANGES, "10.3.0", algorithm="Magic")
