"""TensorRT's INT8 calibration cache: the text file a TensorRT calibrator writes and reads back.

Format (what ``IInt8EntropyCalibrator2::writeCalibrationCache`` produces)::

    TRT-100300-EntropyCalibration2
    images: 3c010a14
    /model.0/conv/Conv_output_0: 3d6b5b2a
    ...

The header carries TensorRT's version number (``major*10000 + minor*100 + patch`` since
TensorRT 10, ``major*1000 + minor*100 + patch`` before) and the algorithm; each line is a
tensor name and its scale ``amax / 127`` as the big-endian bytes of a float32 in hex.
TensorRT ignores a cache whose header names another version or algorithm, so the version
written must be the one that will build the engine.

With such a cache a TensorRT 10 user builds an implicitly quantized INT8 engine from the
float ONNX without calibrating again (implicit quantization is deprecated since TensorRT 10.1
and removed in 11; the Q/DQ ONNX of the ``quantize`` pass is the portable artifact).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
INT8_LEVELS = 127
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_INTERNAL = "(Unnamed Layer*"  # tensors TensorRT creates itself; they have no ONNX counterpart


def version_number(version: str) -> int:
    """TensorRT's version integer for a version string (``"10.3.0"`` -> 100300, ``"8.6.1"`` -> 8601).

    Raises:
        ConvertError: Not a ``major.minor[.patch]`` version.
    """
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*", version.strip())
    if not m:
        raise ConvertError(f"TensorRT version {version!r} is not of the form major.minor.patch.", hint="e.g. 10.3.0")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


@dataclass(frozen=True)
class TrtCache:
    """A parsed calibration cache.

    Attributes:
        version: TensorRT's version integer from the header.
        algorithm: Calibration algorithm from the header.
        scales: Tensor name -> scale (amax / 127).
    """

    version: int
    algorithm: str
    scales: dict[str, float]

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Symmetric ranges ``(-amax, amax)`` of the tensors with an ONNX counterpart."""
        return {k: (-s * INT8_LEVELS, s * INT8_LEVELS) for k, s in self.scales.items() if not k.startswith(_INTERNAL)}


def format_cache(ranges: dict[str, tuple[float, float]], trt_version: str,
                 algorithm: str = "EntropyCalibration2") -> str:
    """The cache text for per-tensor ranges.

    Args:
        ranges: Tensor name -> (min, max); the scale is ``max(|min|, |max|) / 127``. A tensor
            that was zero on all the data gets amax 1 (any positive scale represents zero exactly).
        trt_version: Version of the TensorRT that will read the cache.
        algorithm: Algorithm named in the header (TensorRT checks it against the calibrator's).
    """
    if algorithm not in ALGORITHMS:
        raise ConvertError(f"unknown TensorRT calibration algorithm {algorithm!r}.", hint=f"use one of {ALGORITHMS}.")
    lines = [f"TRT-{version_number(trt_version)}-{algorithm}"]
    for name in sorted(ranges):
        lo, hi = ranges[name]
        amax = max(abs(lo), abs(hi)) or 1.0
        lines.append(f"{name}: {struct.pack('>f', amax / INT8_LEVELS).hex()}")
    return "\n".join(lines) + "\n"


def write_cache(ranges: dict[str, tuple[float, float]], path: str | Path, trt_version: str,
                algorithm: str = "EntropyCalibration2") -> None:
    """Writes :func:`format_cache` to ``path``."""
    Path(path).write_text(format_cache(ranges, trt_version, algorithm))


def parse_cache(text: str, where: str = "calibration cache") -> TrtCache:
    """Parses cache text.

    Raises:
        ConvertError: Not a TensorRT calibration cache.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    m = _HEADER.match(lines[0]) if lines else None
    if not m:
        raise ConvertError(f"{where}: not a TensorRT calibration cache (the first line should look like "
                           "'TRT-100300-EntropyCalibration2').")
    scales = {}
    for i, line in enumerate(lines[1:], 2):
        name, sep, value = line.rpartition(":")
        try:
            if not sep or not name.strip():
                raise ValueError(line)
            scale = struct.unpack(">f", int(value.strip(), 16).to_bytes(4, "big"))[0]
        except (ValueError, OverflowError):
            raise ConvertError(f"{where}: line {i} is not 'tensor: <hex float32>': {line[:80]!r}.") from None
        scales[name.strip()] = scale
    return TrtCache(int(m[1]), m[2], scales)


def read_cache(path: str | Path) -> TrtCache:
    """Reads and parses a cache file (see :func:`parse_cache`)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"calibration cache {path}: cannot be read ({e}).") from None
    return parse_cache(text, f"calibration cache {path}")


def check_belongs(cache: TrtCache, model_tensors: set[str], where: str = "calibration cache") -> None:
    """Refuses a cache written for another model.

    Every tensor the cache names (apart from TensorRT's own unnamed layers) must be a tensor
    of the model; a cache for another network names tensors this one does not have.

    Raises:
        ConvertError: Some cache tensors are not in the model, or none is.
    """
    named = [k for k in cache.scales if not k.startswith(_INTERNAL)]
    foreign = [k for k in named if k not in model_tensors]
    if foreign or not named:
        shown = ", ".join(repr(k) for k in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConvertError(f"{where} does not belong to this model: "
                           + (f"{len(foreign)} of its {len(named)} tensors are not in the model ({shown})."
                              if named else "it names no tensor."),
                           hint="use the cache written for this exact ONNX model, or calibrate again.")
