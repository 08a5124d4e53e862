"""Calibration tables: the ``table.json`` the calibrate pass writes and quantize / tensorrt read."""

from __future__ import annotations

import json
from collections.abc import Iterator

from convert.errors import PassError

TABLE_FORMAT = 1


def calibration_batches(paths, pp: dict) -> Iterator:
    """Calibration images (files kept in a table artifact) preprocessed as they were for calibration."""
    from calib.data import prefetch
    from convert.preprocess import load_image, preprocess

    return prefetch(preprocess(load_image(path), pp)[0] for path in paths)


def read_table(path) -> dict:
    """Reads a ``table.json`` of the calibrate pass.

    Returns:
        ``ranges`` (tensor -> (min, max)), ``method``, ``num_samples``, ``model_digest``,
        ``preprocess`` and ``samples`` (paths of the kept calibration images, relative to the table).

    Raises:
        PassError: Not a calibration table of a known format.
    """
    try:
        t = json.loads(path.read_text())
        if t.get("format") != TABLE_FORMAT:
            raise ValueError(f"format {t.get('format')!r}, expected {TABLE_FORMAT}")
        ranges = {k: (float(v["min"]), float(v["max"])) for k, v in t["tensors"].items()}
        return {"ranges": ranges, "method": t["method"], "num_samples": t["num_samples"],
                "model_digest": t["model"]["digest"], "preprocess": t.get("preprocess") or {},
                "samples": list(t.get("data", {}).get("samples") or [])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PassError(f"calibration table {path} is not readable ({e}).",
                        hint="produce it with the calibrate pass of this version.") from None


