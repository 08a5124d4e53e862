"""Inference runners: one interface over ONNX Runtime, OpenVINO, TensorRT and PyTorch.

Every runner is a Polygraphy runner (:class:`polygraphy.backend.base.BaseRunner`), so the
comparison pass can hand them to Polygraphy's comparator as they are. ONNX Runtime and
TensorRT use Polygraphy's own runners; Polygraphy has no OpenVINO runner, and its PyTorch
runner moves inputs to CUDA, so :class:`OpenVINORunner` and :class:`TorchRunner` fill those gaps.

Runners are created inactive; use them as context managers::

    with load_runner(artifact, backend="openvino", threads=1) as runner:
        outputs = infer(runner, x)          # {output name: array}

Besides the Polygraphy interface each runner has ``backend`` (``onnxruntime``, ``openvino``,
``tensorrt``, ``torch``) and ``settings`` (threads and other options, recorded in the figures
so that a latency is never quoted without the settings it was measured with).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.common import BytesFromPath
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.backend.trt import EngineFromBytes, TrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from convert.base import ARTIFACT_JSON, Artifact
from convert.errors import BackendMissing, ConvertError

BACKENDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "openvino"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt",),
    "torch": ("torch",),
}
"""Artifact kind -> back-ends able to run it (each named as its Python module); the first is the default."""


def _quiet_polygraphy() -> None:
    # Polygraphy logs every activation and inference at INFO on stdout; only errors matter here.
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR


def backend_available(backend: str) -> bool:
    """Whether the Python module of ``backend`` is installed."""
    return importlib.util.find_spec(backend) is not None


def resolve_backend(artifact: Artifact, backend: str | None = None) -> str:
    """Checks that ``backend`` can run ``artifact`` and returns it (or the kind's default).

    Raises:
        ConvertError: The artifact is not a model, or the back-end cannot run its kind.
    """
    if artifact.kind not in BACKENDS:
        raise ConvertError(f"a {artifact.kind!r} artifact is not a model that can be run.",
                           hint=f"runnable kinds: {', '.join(BACKENDS)}.")
    choices = BACKENDS[artifact.kind]
    if backend is None:
        return choices[0]
    if backend not in choices:
        raise ConvertError(f"back-end {backend!r} cannot run a {artifact.kind!r} artifact.",
                           hint=f"use one of: {', '.join(choices)}.")
    return backend


def model_info(artifact: Artifact, backend: str | None = None) -> dict[str, Any]:
    """Describes a model artifact for figures and reports (JSON).

    Returns:
        ``kind``, ``backend``, ``precision`` (fp32 when not recorded), ``end2end``, ``truncated``,
        ``digest``, ``size_bytes`` (files of the artifact, metadata excluded) and ``label``
        (``kind/precision@backend``).
    """
    backend = resolve_backend(artifact, backend)
    meta = artifact.meta
    precision = meta.get("precision", "fp32")
    size = sum(p.stat().st_size for p in Path(artifact.path).rglob("*") if p.is_file() and p.name != ARTIFACT_JSON)
    return {"kind": artifact.kind, "backend": backend, "precision": precision,
            "end2end": bool(meta.get("end2end", False)), "truncated": bool(meta.get("truncated", False)),
            "digest": artifact.digest, "size_bytes": size, "label": f"{artifact.kind}/{precision}@{backend}"}


def load_runner(artifact: Artifact, backend: str | None = None, threads: int | None = None):
    """Makes an (inactive) runner for a model artifact.

    Args:
        artifact: An ``onnx``, ``openvino``, ``tensorrt`` or ``torch`` artifact.
        backend: ``onnxruntime`` | ``openvino`` | ``tensorrt`` | ``torch``; default by kind
            (an ``onnx`` artifact runs on ONNX Runtime, or on OpenVINO with ``"openvino"``).
        threads: Intra-op threads (``None``: the back-end's default).

    Returns:
        A Polygraphy runner with ``backend`` and ``settings`` attributes.

    Raises:
        ConvertError: The back-end cannot run this kind.
        BackendMissing: The back-end's Python module is not installed.
    """
    backend = resolve_backend(artifact, backend)
    if not backend_available(backend):
        raise BackendMissing(f"running a {artifact.kind!r} artifact needs {backend!r}, "
                             "which is not installed.",
                             hint=f"install it, or leave the {backend} back-end out of this stage.")
    _quiet_polygraphy()
    label = model_info(artifact, backend)["label"]
    if backend == "onnxruntime":
        return OrtRunner(artifact.file, threads, name=label)
    if backend == "openvino":
        return OpenVINORunner(artifact.file, threads, name=label, output_names=artifact.meta.get("outputs"))
    if backend == "tensorrt":
        return TensorRTRunner(artifact.file, name=label)
    return TorchRunner(artifact, threads, name=label)


def _metadata(items: list[tuple[str, Any, Any]]) -> TensorMetadata:
    """Builds Polygraphy ``TensorMetadata`` from (name, dtype, shape) triples."""
    meta = TensorMetadata()
    for name, dtype, shape in items:
        meta.add(name, dtype=dtype, shape=shape)
    return meta


class OrtRunner(OnnxrtRunner):
    """ONNX Runtime on CPU with recorded thread settings (Polygraphy's runner).

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (``None``: ONNX Runtime's default, one per physical core).
        name: Runner name (shown in comparisons).
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, name: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        # One operator at a time: YOLO graphs are a chain, and parallel operators would
        # compete with intra-op threads and make latency noisier.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op threads would otherwise spin for a while after each run and steal the
        # CPU from whichever runner is timed next (the benchmark keeps several sessions alive).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        super().__init__(lambda: ort.InferenceSession(str(path), opts, providers=providers), name=name)
        self.settings = {"intra_op_num_threads": threads or "default", "inter_op_num_threads": 1,
                         "execution_mode": "sequential", "graph_optimization_level": "all",
                         "allow_spinning": False, "providers": providers, "onnxruntime": ort.__version__}


class OpenVINORunner(BaseRunner):
    """OpenVINO on CPU, for IR (``.xml``) and ONNX files alike.

    The inference precision is pinned to f32: on CPUs with bf16 support OpenVINO would
    otherwise run FP32 models in bf16, and FP32 comparisons would fail for no fault of the
    model. Quantized (Q/DQ) models still run their INT8 kernels.

    Args:
        path: The ``.xml`` (with its ``.bin`` beside it) or ``.onnx`` file.
        threads: ``INFERENCE_NUM_THREADS`` (``None``: OpenVINO's default).
        name: Runner name.
        output_names: The model's output names (``meta["outputs"]``). An OpenVINO output tensor
            may carry several names (an FP16 model's output is also its final Cast's output);
            the one listed here is used, so outputs are named as on the other back-ends.
    """

    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None, name: str | None = None,
                 output_names: list[str] | None = None):
        super().__init__(name=name, prefix="openvino-runner")
        import openvino as ov

        self._path = Path(path)
        self._preferred = list(output_names or [])
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                        "NUM_STREAMS": 1}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.settings = {"inference_num_threads": threads or "default", "inference_precision_hint": "f32",
                         "performance_hint": "LATENCY", "num_streams": 1, "device": "CPU",
                         "openvino": ov.__version__.split("-")[0]}

    def activate_impl(self):
        import openvino as ov

        # an ONNX file is read with its Q/DQ pairs folded, as the openvino pass does (see convert.ovutil)
        if self._path.suffix == ".onnx":
            from convert.ovutil import read_onnx

            source = read_onnx(self._path)
        else:
            source = str(self._path)
        self.compiled = ov.Core().compile_model(source, "CPU", self._config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [_ov_name(o, f"output{i}", self._preferred) for i, o in enumerate(self.compiled.outputs)]

    def get_input_metadata_impl(self):
        items = []
        for i, port in enumerate(self.compiled.inputs):
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            items.append((_ov_name(port, f"input{i}"), port.get_element_type().to_dtype(), shape))
        return _metadata(items)

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feed_dict.items()})
        self.inference_time = time.perf_counter() - start
        # The request owns its output buffers and reuses them on the next call.
        return OrderedDict((name, self.request.get_output_tensor(i).data.copy())
                           for i, name in enumerate(self.output_names))

    def deactivate_impl(self):
        del self.request, self.compiled, self.output_names


def _ov_name(port, default: str, preferred: list[str] = ()) -> str:
    names = port.get_names()
    for n in preferred:
        if n in names:
            return n
    return sorted(names)[0] if names else default


class TorchRunner(BaseRunner):
    """A ``torch`` artifact rebuilt with :func:`convert.torchmodel.load_module`, on CPU.

    Outputs are named as the exported ONNX model's are (``meta["outputs"]``, else
    ``meta["head"]["outputs"]``), so the reference and the artifacts compare output by output.

    Args:
        artifact: The ``torch`` artifact.
        threads: ``torch.set_num_threads`` for its inferences (``None``: torch's default).
        name: Runner name.
    """

    backend = "torch"

    def __init__(self, artifact: Artifact, threads: int | None = None, name: str | None = None):
        super().__init__(name=name, prefix="torch-runner")
        import torch

        self._artifact = artifact
        self._threads = threads
        _torch_default_threads()
        meta = artifact.meta
        size = (meta.get("preprocess") or {}).get("size", [640, 640])
        inp = meta.get("input") or {}
        shape = list(inp.get("shape") or [1, 3, *size])
        self._input = (inp.get("name", "images"), np.float32, [None, *shape[1:]])  # torch takes any batch
        self.output_names = list(meta.get("outputs") or (meta.get("head") or {}).get("outputs") or ["output0"])
        self.settings = {"num_threads": threads or "default", "device": "cpu", "torch": torch.__version__}

    def activate_impl(self):
        from convert.torchmodel import load_module

        self.model = load_module(self._artifact).float().eval()

    def get_input_metadata_impl(self):
        return _metadata([self._input])

    def infer_impl(self, feed_dict):
        import torch

        # torch's thread count is process-wide, and several runners may be alive at once (the
        # benchmark interleaves them): each call sets its own.
        want = self._threads or _torch_default_threads()
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        x = torch.from_numpy(np.ascontiguousarray(feed_dict[self._input[0]]))
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(x)
        self.inference_time = time.perf_counter() - start
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.output_names):
            raise ConvertError(f"the torch model returned {len(outs)} outputs but its metadata names "
                               f"{len(self.output_names)} ({', '.join(self.output_names)}).")
        return OrderedDict((n, o.detach().float().numpy()) for n, o in zip(self.output_names, outs))

    def deactivate_impl(self):
        import torch

        torch.set_num_threads(_torch_default_threads())
        del self.model


@functools.lru_cache(maxsize=1)
def _torch_default_threads() -> int:
    """torch's thread count before any runner changed it (first called at runner creation)."""
    import torch

    return torch.get_num_threads()


class TensorRTRunner(TrtRunner):
    """A serialized TensorRT engine on the GPU (Polygraphy's runner; needs ``tensorrt``).

    Args:
        path: The ``.engine`` file.
        name: Runner name.
    """

    backend = "tensorrt"

    def __init__(self, path: Path, name: str | None = None):
        import tensorrt as trt

        super().__init__(EngineFromBytes(BytesFromPath(str(path))), name=name)
        self.settings = {"device": "cuda", "tensorrt": trt.__version__}


def input_meta(runner) -> tuple[str, np.dtype, list[int | None]]:
    """The single image input of an active runner: (name, numpy dtype, shape)."""
    meta = runner.get_input_metadata(use_numpy_dtypes=False)
    if len(meta) != 1:
        raise ConvertError(f"{runner.name}: expected one image input, found {len(meta)} ({', '.join(meta)}).")
    name, (dtype, shape) = next(iter(meta.items()))
    return name, np.dtype(DataType.to_dtype(dtype, "numpy")), list(shape)


def infer(runner, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runs an active runner on one input batch.

    The input is cast to the model's input type (an FP16 model may take float16), and the
    outputs are copied, so they survive the next call (runners may reuse their buffers).

    Args:
        runner: An active runner from :func:`load_runner`.
        x: The preprocessed batch (float32).

    Returns:
        Output name -> array (floating outputs as float32).
    """
    name, dtype, _ = input_meta(runner)
    outs = runner.infer({name: x.astype(dtype, copy=False)}, check_inputs=False)
    return {k: np.array(v, dtype=np.float32 if np.issubdtype(np.asarray(v).dtype, np.floating) else None)
            for k, v in outs.items()}


def cpu_info() -> dict[str, Any]:
    """The host's CPU as recorded beside latencies (model name, logical CPUs, usable CPUs)."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable}
