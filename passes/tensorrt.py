"""``tensorrt``: an ONNX model to a serialized TensorRT engine (``model.engine``).

An engine's precision comes from one of three routes:

* **Explicit precision (the forward path).** An INT8 ONNX with Q/DQ nodes (the ``quantize``
  pass) or an FP16 ONNX (the ``fp16`` pass) is built *strongly typed*
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): every tensor keeps the type the ONNX
  gives it, so the engine computes what ONNX Runtime and OpenVINO computed.
* **Builder flags (weakly typed).** On an FP32 ONNX, ``fp16: true`` sets ``BuilderFlag.FP16`` and
  TensorRT picks FP16 kernels where it finds them faster.
* **Implicit INT8 calibration (legacy).** ``int8_calibrator: entropy2 | minmax`` calibrates an
  FP32 ONNX with TensorRT's ``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator``, fed by the
  calibration images (:mod:`calib.data`), or by a cache: the ``table`` input (the calibrate pass's
  ranges, written as a cache of the installed TensorRT version) or a ``calib_cache`` file.
  TensorRT 10.1 deprecates implicit quantization and TensorRT 11 removes it: prefer the Q/DQ ONNX.

An engine only runs on the GPU model and TensorRT version it was built with; the TensorRT
version is recorded in the metadata (``tensorrt.version``) and is part of the cache key.
Dynamic input dimensions get one optimisation profile: the batch from ``batch`` (min, opt,
max), height and width from the model's preprocessing size. Extra plugin libraries are loaded
with ``ctypes`` before parsing, after TensorRT's own plugins (``init_libnvinfer_plugins``,
which brings EfficientNMS_TRT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from calib.data import DataSource, moved_into
from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError, PassError

CALIBRATORS = {"entropy2": ("IInt8EntropyCalibrator2", "EntropyCalibration2"),
               "minmax": ("IInt8MinMaxCalibrator", "MinMaxCalibration")}
"""Calibrator option -> (TensorRT base class, algorithm name in the cache header)."""


class CalibImages(DataSource):
    """The calibration images of implicit INT8 (:class:`calib.data.DataSource`), as the calibrate pass reads them."""

    num: int = Field(64, ge=1, description="number of calibration images")


class TensorRTConfig(PassConfig):
    replaced: ClassVar[dict[str, str]] = moved_into(
        "calib", {f"calib_{k}": k for k in ("data", "source", "split", "images", "num", "seed")})

    typing: Literal["auto", "strong", "weak"] = Field(
        "auto", description="strong: types come from the ONNX (FP16 / Q/DQ INT8 models); weak: TensorRT chooses "
        "within the builder flags; auto: strong for an fp16 or int8 input unless fp16 or int8_calibrator asks for "
        "flags, weak for fp32 (strong whenever TensorRT has no weak typing)")
    fp16: bool = Field(False, description="weak typing: allow FP16 kernels (BuilderFlag.FP16); on a Q/DQ model, for "
                       "its float layers (typing auto then builds it weakly typed)")
    int8_calibrator: Literal["none", "entropy2", "minmax"] = Field(
        "none", description="legacy implicit INT8 of an FP32 model (TensorRT 10 only): IInt8EntropyCalibrator2 or "
        "IInt8MinMaxCalibrator, fed by the `table` input, calib_cache, or the calibration images (calib)")
    calib_cache: InputPath | None = Field(None, description="a TensorRT calibration cache to use instead of "
                                          "calibrating (written by this TensorRT version and calibrator)")
    calib: CalibImages = Field(default_factory=CalibImages, description="calibration images of int8_calibrator "
                               "(data: folder, list file, YOLO dataset, COCO JSON; null: the built-in photos), num "
                               "of them drawn with seed")
    calib_batch: int = Field(1, ge=1, description="images per calibration batch")
    batch: tuple[int, int, int] = Field((1, 1, 1), description="min, opt, max batch of the optimisation profile "
                                        "(dynamic batch inputs only)")
    workspace_mib: int | None = Field(None, ge=1, description="workspace memory pool limit in MiB (null: "
                                      "TensorRT's default, the device memory)")
    builder_optimization_level: int | None = Field(None, ge=0, le=5, description="0-5: build time against engine "
                                                   "speed (null: TensorRT's default, 3)")
    timing_cache: Path | None = Field(None, description="timing cache file, read if it exists and written back after "
                                      "the build, to share layer timings between builds (speeds builds up; not keyed)")
    plugins: list[InputPath] = Field(default_factory=list, description="extra plugin libraries (.so) to load")
    max_abs_diff: float | None = Field(None, gt=0, description="gate: fail the run when an engine output differs "
                                       "from the ONNX model's (ONNX Runtime) by more than this on the check input")
    seed: int = Field(0, description="seed of the check input (sample photos, else uniform noise)")

    @model_validator(mode="after")
    def _consistent(self):
        lo, opt, hi = self.batch
        if not lo <= opt <= hi:
            raise ValueError(f"batch: expected min <= opt <= max, found {list(self.batch)}")
        if self.typing == "strong" and (self.fp16 or self.int8_calibrator != "none"):
            raise ValueError("typing: strong takes precisions from the ONNX; fp16 and int8_calibrator are for weak "
                             "typing (for a strongly typed FP16 engine, convert with the fp16 pass first)")
        if self.calib_cache is not None and self.int8_calibrator == "none":
            raise ValueError("calib_cache needs int8_calibrator: entropy2 or minmax (the cache's algorithm)")
        if self.calib_cache is not None and self.calib.data is not None:
            raise ValueError("give either calib.data (to calibrate) or calib_cache (to reuse a cache), not both")
        if self.calib.data is not None:  # the built-in default needs no check; a given source may be wrong
            self.calib.check("calib.data")
        return self


@dataclass(frozen=True)
class Capabilities:
    """What the installed TensorRT offers, by the names its Python API has.

    Attributes:
        version: ``tensorrt.__version__``.
        strongly_typed: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (TensorRT >= 9).
        weak_typing: ``BuilderFlag.FP16`` and ``INT8`` exist (removed with weak typing in TensorRT 11).
        implicit_int8: The INT8 calibrator classes exist (removed in TensorRT 11).
    """

    version: str
    strongly_typed: bool
    weak_typing: bool
    implicit_int8: bool

    @classmethod
    def of(cls, trt) -> Capabilities:
        return cls(version=trt.__version__,
                   strongly_typed=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
                   weak_typing=all(hasattr(trt.BuilderFlag, f) for f in ("FP16", "INT8")),
                   implicit_int8=all(hasattr(trt, base) for base, _ in CALIBRATORS.values()))


Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildPlan:
    """Everything about a build that does not need TensorRT to decide.

    Attributes:
        strongly_typed: Create the network with ``STRONGLY_TYPED``.
        flags: ``BuilderFlag`` names to set.
        precision: The engine's precision for the artifact's metadata.
        profile: Input name -> (min, opt, max) shapes, for inputs with a dynamic dimension.
        calibrator: ``entropy2`` | ``minmax`` | None.
        calib_shape: The calibration batch's input shape (implicit INT8 only).
    """

    strongly_typed: bool
    flags: tuple[str, ...]
    precision: str
    profile: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    calibrator: str | None = None
    calib_shape: Shape | None = None


def plan_build(c: TensorRTConfig, precision: str, inputs: list[tuple[str, tuple[int | None, ...]]],
               pp: dict[str, Any] | None, caps: Capabilities) -> BuildPlan:
    """Decides typing, flags, profile and calibration of a build.

    Args:
        c: The pass configuration.
        precision: The ONNX model's precision (``meta["precision"]``).
        inputs: The model's inputs as (name, shape), None for a dynamic dimension.
        pp: The model's preprocessing (``size`` and ``layout`` give dynamic H and W of 4-D inputs).
        caps: What the installed TensorRT offers.

    Raises:
        PassError: The configuration cannot be built with this model or this TensorRT.
    """
    implicit = c.int8_calibrator != "none"
    if implicit:
        if precision != "fp32":
            raise PassError(f"int8_calibrator calibrates an FP32 model; the input is {precision}.",
                            hint="feed the FP32 ONNX, or drop int8_calibrator to build this model as it is.")
        if not caps.implicit_int8:
            raise PassError(f"TensorRT {caps.version} has no implicit INT8 calibration (removed in TensorRT 11).",
                            hint="build the Q/DQ ONNX of the quantize pass instead (int8_calibrator: none).")
        if len(inputs) != 1:
            raise PassError(f"implicit INT8 calibration feeds one image input; the model has {len(inputs)} "
                            f"({', '.join(n for n, _ in inputs)}).")
    if c.typing == "auto":
        strong = (caps.strongly_typed and not implicit and not c.fp16
                  and (precision != "fp32" or not caps.weak_typing))
    else:
        strong = c.typing == "strong"
    if strong and not caps.strongly_typed:
        raise PassError(f"TensorRT {caps.version} cannot build strongly typed networks.",
                        hint="set typing: weak (and fp16: true for an FP16 engine), or upgrade to TensorRT 10.")
    flags: list[str] = []
    if not strong:
        # Weak typing ignores the ONNX's types: an FP16 or Q/DQ model needs the matching flag.
        if c.fp16 or precision == "fp16":
            flags.append("FP16")
        if implicit or precision == "int8":
            flags.append("INT8")
        if flags and not caps.weak_typing:
            raise PassError(f"TensorRT {caps.version} has no weak typing (BuilderFlag.{flags[0]}).",
                            hint="feed an FP16 (fp16 pass) or Q/DQ INT8 (quantize pass) ONNX; it builds strongly "
                            "typed.")
    if strong:
        engine_precision = precision
    else:
        engine_precision = "int8" if "INT8" in flags else "fp16" if "FP16" in flags else "fp32"

    profile: dict[str, tuple[Shape, Shape, Shape]] = {}
    calib_shape = None
    for name, shape in inputs:
        if implicit and calib_shape is None:
            calib_shape = _fill(name, shape, c.calib_batch, pp)
            if shape[0] is not None and shape[0] != c.calib_batch:
                raise PassError(f"input {name!r} has a fixed batch of {shape[0]}, calib_batch is {c.calib_batch}.",
                                hint=f"set calib_batch: {shape[0]}.")
        if None not in shape:
            if c.batch != (1, 1, 1) and c.batch != (shape[0],) * 3:
                raise PassError(f"input {name!r} has a fixed batch of {shape[0]}; batch {list(c.batch)} needs a "
                                "dynamic batch.", hint="export with dynamic_batch: true, or leave batch at [1, 1, 1].")
            continue
        profile[name] = tuple(_fill(name, shape, b, pp) for b in c.batch)
    return BuildPlan(strong, tuple(flags), engine_precision, profile, c.int8_calibrator if implicit else None,
                     calib_shape)


def _fill(name: str, shape: tuple[int | None, ...], batch: int, pp: dict[str, Any] | None) -> Shape:
    """A concrete shape: the batch for dimension 0, the preprocessing size for dynamic H and W."""
    dims = list(shape)
    if dims and dims[0] is None:
        dims[0] = batch
    if len(dims) == 4 and None in dims[1:]:
        if not (pp or {}).get("size"):
            raise PassError(f"input {name!r} has dynamic dimensions {list(shape)} and the model records no "
                            "preprocessing size to build them for.", hint="export with a static height and width.")
        hw = (1, 2) if pp.get("layout") == "NHWC" else (2, 3)
        for axis, value in zip(hw, pp["size"]):
            if dims[axis] is None:
                dims[axis] = int(value)
    if None in dims:
        raise PassError(f"input {name!r} has dynamic dimensions {list(shape)} that cannot be given a size.")
    return tuple(int(d) for d in dims)


class DeviceBuffers:
    """Device memory for calibration batches, allocated with Polygraphy's CUDA wrapper."""

    def __init__(self):
        self._arrays: dict[str, Any] = {}

    def upload(self, name: str, host: np.ndarray) -> int:
        """Copies ``host`` to the device buffer of ``name`` (allocated on first use) and returns its address."""
        from polygraphy import cuda

        buf = self._arrays.get(name)
        if buf is None:
            buf = self._arrays[name] = cuda.DeviceArray(shape=host.shape, dtype=host.dtype)
        buf.copy_from(host)
        return int(buf.ptr)

    def free(self) -> None:
        for buf in self._arrays.values():
            buf.free()
        self._arrays.clear()


class BatchFeeder:
    """Hands calibration batches to TensorRT one ``get_batch`` call at a time.

    TensorRT calibrates at one fixed shape (the calibration profile); batches of another shape
    (the short last batch of a sample, a different letterbox size) are skipped and counted.

    Args:
        batches: float32 arrays [N, ...] for the model's single input.
        shape: The shape every batch must have.
        upload: ``(input name, array) -> device address``.
    """

    def __init__(self, batches: Iterable[np.ndarray], shape: Shape, upload: Callable[[str, np.ndarray], int]):
        self._it: Iterator[np.ndarray] = iter(batches)
        self.shape = tuple(shape)
        self._upload = upload
        self.fed = 0
        self.skipped = 0

    def next(self, names: list[str]) -> list[int] | None:
        """The device address of the next batch for the single input ``names[0]``, or None when exhausted."""
        for x in self._it:
            if tuple(x.shape) != self.shape:
                self.skipped += len(x)
                continue
            self.fed += len(x)
            return [self._upload(names[0], np.ascontiguousarray(x, dtype=np.float32))]
        return None


def make_calibrator(trt, algorithm: str, feeder: BatchFeeder, cache: bytes | None):
    """A TensorRT INT8 calibrator of ``algorithm`` (``entropy2`` | ``minmax``).

    With ``cache``, TensorRT takes the scales from it and never asks for a batch; without, it
    runs the network on the feeder's batches. The cache TensorRT writes is kept in ``written``.
    """
    base = getattr(trt, CALIBRATORS[algorithm][0])

    class Calibrator(base):
        def __init__(self):
            base.__init__(self)  # the Python bindings need the base initialised explicitly
            self.cache = cache
            self.written: bytes | None = None

        def get_batch_size(self) -> int:
            return feeder.shape[0]

        def get_batch(self, names):
            return feeder.next(list(names))

        def read_calibration_cache(self):
            return self.cache

        def write_calibration_cache(self, data) -> None:
            self.written = bytes(data)

    return Calibrator()


def cache_for(c: TensorRTConfig, table_file: Path | None, tensors: set[str], caps: Capabilities,
              stage: str) -> bytes | None:
    """The calibration cache to hand TensorRT, from the ``table`` input or ``calib_cache``; None to calibrate.

    A table's ranges are written as a cache for the installed TensorRT version and the chosen
    calibrator (TensorRT ignores a cache whose header names another version or algorithm).
    A ``calib_cache`` file must already be such a cache.

    Raises:
        ConvertError: The cache or table names tensors the model does not have, or the cache was
            written by another TensorRT version or calibrator.
    """
    from calib import trt_cache

    algorithm = CALIBRATORS[c.int8_calibrator][1]
    if table_file is not None:
        from calib.table import read_table

        text = trt_cache.format_cache(read_table(table_file)["ranges"], caps.version, algorithm)
        where = f"stage {stage!r}: the calibration table {table_file}"
    elif c.calib_cache is not None:
        text = Path(c.calib_cache).read_text()
        where = f"stages.{stage}.with.calib_cache ({c.calib_cache})"
    else:
        return None
    cache = trt_cache.parse_cache(text, where)
    trt_cache.check_belongs(cache, tensors, where)
    want = trt_cache.version_number(caps.version)
    if (cache.version, cache.algorithm) != (want, algorithm):
        raise ConvertError(f"{where} was written by TensorRT version {cache.version} with {cache.algorithm}; this "
                           f"build uses {want} with {algorithm}, and TensorRT would silently recalibrate.",
                           hint="give the calibrate stage's table as the `table` input instead (it is rewritten for "
                           "this TensorRT), or set int8_calibrator to the cache's algorithm.")
    return text.encode()


def load_plugins(trt, logger, paths: list[Path]) -> None:
    """Registers TensorRT's own plugins, then loads extra plugin libraries (which register themselves).

    Raises:
        PassError: A library cannot be loaded.
    """
    import ctypes

    trt.init_libnvinfer_plugins(logger, "")
    for p in paths:
        try:
            # RTLD_GLOBAL: a plugin library may resolve symbols of another one loaded before it.
            # ctypes never unloads a library, so the plugins stay registered for the build.
            ctypes.CDLL(str(Path(p).resolve()), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise PassError(f"plugin library {p} cannot be loaded: {e}.",
                            hint="check that it was built for this TensorRT and CUDA, and that its "
                            "dependencies are on LD_LIBRARY_PATH.") from None


def onnx_inputs(path: Path) -> tuple[list[tuple[str, tuple[int | None, ...]]], set[str]]:
    """The graph inputs of an ONNX file as (name, shape with None for dynamic dims), and every tensor name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = []
    for i in graph.input:
        if i.name in inits:
            continue
        dims = i.type.tensor_type.shape.dim
        inputs.append((i.name, tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                     for d in dims)))
    tensors = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    return inputs, tensors


class TensorRT(Pass):
    """Build a TensorRT engine: strongly typed FP16 / Q/DQ INT8, FP16 flag, or legacy implicit INT8 calibration."""

    name = "tensorrt"
    version = 1
    Config = TensorRTConfig
    inputs = {"model": Input(("onnx",), doc="the ONNX model (FP32, FP16, or INT8 with Q/DQ nodes)"),
              "table": Input(("calib_table",), required=False,
                             doc="calibration ranges for int8_calibrator (calibrate pass), used as a cache")}
    output = "tensorrt"
    tools = ("tensorrt",)
    requires = ("tensorrt",)
    machine_dependent = True

    @classmethod
    def runs_code(cls, config) -> str | None:
        return f"loads plugin libraries {[str(p) for p in config.plugins]}" if config.plugins else None

    @classmethod
    def key_files(cls, config: TensorRTConfig) -> list:
        """The calibration images a list file, dataset YAML or COCO file names (when calibrating from images)."""
        if config.int8_calibrator == "none" or config.calib_cache is not None:
            return []
        return config.calib.named_files(list(config.calib.resolve().candidates))

    def run(self, inputs, out, ctx) -> PassResult:
        import tensorrt as trt

        from convert.store import atomic_write

        c: TensorRTConfig = self.config
        art = inputs["model"]
        table = inputs.get("table")
        if table is not None and c.int8_calibrator == "none":
            raise PassError("a calibration table is bound to the `table` input but int8_calibrator is none.",
                            hint="set int8_calibrator: entropy2 or minmax, or remove the table input.")
        caps = Capabilities.of(trt)
        precision = art.meta.get("precision", "fp32")
        model_inputs, tensors = onnx_inputs(art.file)
        plan = plan_build(c, precision, model_inputs, art.meta.get("preprocess"), caps)

        logger = trt.Logger(trt.Logger.WARNING)
        load_plugins(trt, logger, list(c.plugins))
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(art.file)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise PassError(f"TensorRT's ONNX parser rejected the model: {errors[0] if errors else 'no detail'}"
                            f"{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}.",
                            hint="an unsupported op may need a plugin library (plugins), or simplify the model first.")
        config = builder.create_builder_config()
        if c.workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, c.workspace_mib << 20)
        if c.builder_optimization_level is not None:
            config.builder_optimization_level = c.builder_optimization_level
        for f in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, f))
        if plan.profile:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in plan.profile.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        timing = None
        if c.timing_cache is not None:
            blob = c.timing_cache.read_bytes() if c.timing_cache.is_file() else b""
            timing = config.create_timing_cache(blob)
            config.set_timing_cache(timing, ignore_mismatch=False)

        calibrator = feeder = buffers = None
        if plan.calibrator is not None:
            cache = cache_for(c, table.file if table is not None else None, tensors, caps, ctx.stage)
            buffers = DeviceBuffers()
            feeder = BatchFeeder(self._calibration_batches(art) if cache is None else (), plan.calib_shape,
                                 buffers.upload)
            calibrator = make_calibrator(trt, plan.calibrator, feeder, cache)
            config.int8_calibrator = calibrator
            if plan.profile:
                name = next(iter(plan.profile))
                calib_profile = builder.create_optimization_profile()
                calib_profile.set_shape(name, plan.calib_shape, plan.calib_shape, plan.calib_shape)
                config.set_calibration_profile(calib_profile)
        monitor = None  # kept referenced for the whole build: the builder holds only a pointer to it
        if ctx.progress and hasattr(trt, "IProgressMonitor"):  # TensorRT >= 10: the builder reports its phases
            monitor = config.progress_monitor = _progress_monitor(trt, ctx)
        try:
            engine = builder.build_serialized_network(network, config)
        finally:
            del monitor  # only now may the monitor go
            if buffers is not None:
                buffers.free()
        if engine is None:
            raise PassError("TensorRT could not build the engine (see the TensorRT messages above).",
                            hint="a larger workspace_mib, or another precision, may help.")
        (out / "model.engine").write_bytes(memoryview(engine))
        if timing is not None:
            atomic_write(c.timing_cache, memoryview(timing.serialize()).tobytes())  # shared between builds
        if calibrator is not None and calibrator.written:
            (out / "calibration.cache").write_bytes(calibrator.written)

        record = {"version": caps.version, "strongly_typed": plan.strongly_typed, "flags": list(plan.flags),
                  "profile": {k: [list(s) for s in v] for k, v in plan.profile.items()},
                  "calibrator": plan.calibrator}
        meta = {**art.meta, "precision": plan.precision, "tensorrt": record}
        checked = check_against_onnx(out / "model.engine", art, plan, c.seed)
        summary = {"precision": plan.precision, "strongly_typed": plan.strongly_typed, "flags": ",".join(plan.flags),
                   "tensorrt": caps.version, "bytes": (out / "model.engine").stat().st_size}
        summary.update(checked.summary())
        gates = checked.failures(c.max_abs_diff, "engine", "ONNX model")
        if feeder is not None:
            summary.update(calib_images=feeder.fed, calib_skipped=feeder.skipped)
        return PassResult("tensorrt", "model.engine", meta, summary, gate_failures=gates)

    def _calibration_batches(self, art) -> Iterator[np.ndarray]:
        from calib import data

        c: TensorRTConfig = self.config
        pp = data.resolve_preprocess(art.meta.get("preprocess"), None, data.model_input(art.file), c.calib_batch)
        cset = data.CalibrationSet(c.calib.resolve(), c.calib.num, c.calib.seed)
        return data.batches(cset.samples(), pp, c.calib_batch)


def check_against_onnx(engine: Path, art, plan: BuildPlan, seed: int):
    """The engine (TensorRT) against the ONNX model (ONNX Runtime), a :class:`convert.refcheck.Check`.

    Both run on the check input of :func:`calib.data.check_feed` (sample photos, else noise),
    at the profile's opt batch when the batch is dynamic. Skipped when ONNX Runtime cannot run
    the model (TensorRT plugin ops such as EfficientNMS_TRT).
    """
    from calib.data import check_feed
    from convert import refcheck
    from convert.runtime import TensorRTRunner

    opt = next(iter(plan.profile.values()))[1] if plan.profile else None
    return refcheck.check(art.file, lambda _names: TensorRTRunner(engine),
                          lambda sess: check_feed(sess, art.meta, seed, batch=opt[0] if opt else None))


def _progress_monitor(trt, ctx):
    """A TensorRT progress monitor drawing one bar per top-level build phase (``ctx.bar``)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:  # nested phases would stack a bar per sub-step
                self.bars[phase_name] = ctx.bar(total=num_steps, desc=f"engine: {phase_name}")

        def step_complete(self, phase_name, step):
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True  # keep building

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()
