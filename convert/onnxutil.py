"""Small ONNX helpers shared by passes: metadata, saving, running under ONNX Runtime."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

META_KEYS = ("names", "head", "preprocess", "truncated", "end2end", "precision", "postprocess")


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Writes what a consumer needs into ``metadata_props`` (JSON values), replacing old entries."""
    props = {p.key: p.value for p in model.metadata_props}
    for k in META_KEYS:
        if meta.get(k) is not None:
            props[k] = json.dumps(meta[k], sort_keys=True)
    head = meta.get("head") or {}
    if head.get("strides"):
        props["stride"] = json.dumps(head["strides"])
    if head.get("nk"):
        props["kpt_shape"] = json.dumps([head["nk"], 3])
    del model.metadata_props[:]
    for k in sorted(props):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, props[k]


def read_metadata(model) -> dict[str, Any]:
    """Reads back what :func:`set_metadata` wrote (other entries, and non-JSON values, are ignored)."""
    out = {}
    for p in model.metadata_props:
        if p.key in META_KEYS:
            try:
                out[p.key] = json.loads(p.value)
            except json.JSONDecodeError:
                continue
    return out


def save(model, path: Path) -> None:
    """Saves an ONNX model after a full checker pass (raises on an invalid graph)."""
    import onnx

    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def ort_session(path_or_bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with deterministic, quiet settings."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Idle intra-op threads would spin after each run and take the cores from the next session's
    # threads: with the sensitivity analysis' dozen sessions run in turn on 2 cores, each probe ran
    # at half speed (calib.measure).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def random_feed(session, seed: int = 0, batch: int = 1, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Inputs for a session: uniform [0,1) images of the declared (or given) shape."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        if shape[0] is None:
            shape[0] = batch
        if size is not None and len(shape) == 4:
            shape[2], shape[3] = size
        shape = [d if d is not None else 64 for d in shape]
        dtype = np.float16 if "float16" in inp.type else np.float32
        feed[inp.name] = rng.random(shape, dtype=np.float32).astype(dtype)
    return feed


def run(session, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs an ONNX Runtime session: output name -> array."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


@contextmanager
def quiet_fds():
    """Silences stdout and stderr at the file-descriptor level (native libraries' prints)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
