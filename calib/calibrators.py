"""Calibrators: the range of every activation tensor of an ONNX model over calibration data.

Four methods, all giving a ``(min, max)`` range per tensor:

``minmax``
    The true extremes seen. ONNX Runtime's ``MinMaxCalibrater`` does exactly this (reductions
    inside the graph, so only scalars leave the session) and is used as is.
``entropy``
    TensorRT's entropy calibration (``IInt8EntropyCalibrator2``): on a 2048-bin histogram of
    ``|x|``, the threshold whose 128-level quantized distribution has the least KL divergence
    from the clipped reference distribution (:func:`entropy_amax`).
``percentile``
    The given percentile of ``|x|`` (:func:`percentile_amax`).
``mse``
    The threshold with the least expected squared quantization error, clipping plus rounding,
    for symmetric INT8 (:func:`mse_amax`).

The three histogram methods share one statistics pass (:class:`HistogramCalibrator`, built on
ONNX Runtime's ``CalibraterBase``: same tensor selection, augmented model and session). ONNX
Runtime's own histogram calibrators are not used: they keep every intermediate tensor of
the whole data reader in memory before building histograms, their entropy method is MXNet's
(a signed 128-bin histogram) rather than TensorRT's, and their ``|x|`` histogram starts at
the smallest ``|x|`` seen rather than at zero.

For symmetric quantization only ``amax = max(|min|, |max|)`` matters; the histogram methods
report ``(max(min, -amax), min(max, amax))`` so that asymmetric (uint8) quantization gets the
clipped range on each side that the data actually reaches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization.calibrate import (
    CalibraterBase,
    CalibrationDataReader,
    CalibrationMethod,
    MinMaxCalibrater,
    TensorData,
    TensorsData,
)

METHODS = ("minmax", "entropy", "percentile", "mse")

NUM_BINS = 2048
"""Histogram bins, as TensorRT's entropy calibration uses."""

INT8_LEVELS = 127
"""Positive levels of symmetric INT8 (scale = amax / 127)."""


class BatchReader(CalibrationDataReader):
    """ONNX Runtime data reader over an iterable of input batches.

    Args:
        input_name: The model's input name.
        batches: Arrays [n, ...] fed one per ``get_next``.
    """

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self._it = iter(batches)
        self.samples = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        if x is None:
            return None
        self.samples += len(x)
        return {self.input_name: x}


@dataclass
class AbsHistogram:
    """Running statistics of one tensor: exact min and max, and a histogram of ``|x|``.

    The histogram covers ``[0, width * len(counts))``; its width is set by the first batch
    (``max|x| / num_bins``) and kept when later batches reach further, so earlier counts stay
    exact. If the range grows past four times ``num_bins`` bins, neighbouring bins are merged
    by an integer factor to keep the histogram small. Non-finite values are ignored.
    """

    num_bins: int = NUM_BINS
    lo: float = math.inf
    hi: float = -math.inf
    width: float = 0.0
    counts: np.ndarray | None = None
    pending_zeros: int = 0  # zeros seen before the first non-zero value fixed the width
    size: int = 0

    def update(self, x: np.ndarray) -> None:
        # As few passes over the tensor as the histogram needs (calibration reads every tensor of
        # every image): min and max (a NaN or infinity among the values shows in them), |x| scaled
        # to bin indices in place, one bincount.
        a = np.asarray(x, dtype=np.float32).ravel()
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
            lo, hi = float(a.min()), float(a.max())
        self.size += a.size
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        amax = max(-lo, hi)
        if amax == 0.0:
            if self.counts is None:
                self.pending_zeros += a.size
            else:
                self.counts[0] += a.size
            return
        if self.counts is None:
            self.width = amax / self.num_bins
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
            self.counts[0] = self.pending_zeros
        elif amax >= self.width * len(self.counts):
            needed = int(amax / self.width) + 1
            if needed > 4 * self.num_bins:
                factor = -(-needed // self.num_bins)
                pad = (-len(self.counts)) % factor
                self.counts = np.pad(self.counts, (0, pad)).reshape(-1, factor).sum(axis=1)
                self.width *= factor
                needed = int(amax / self.width) + 1
            if needed > len(self.counts):
                self.counts = np.pad(self.counts, (0, needed - len(self.counts)))
        scaled = np.abs(a)
        scaled *= np.float32(1.0 / self.width)
        idx = scaled.astype(np.intp)
        if int(np.float32(amax) * np.float32(1.0 / self.width)) >= len(self.counts):  # the largest, rounded up
            np.minimum(idx, len(self.counts) - 1, out=idx)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def amax(self) -> float:
        """Largest ``|x|`` seen."""
        return max(abs(self.lo), abs(self.hi)) if self.size else 0.0

    def clip(self, amax: float) -> tuple[float, float]:
        """The seen range clipped to ``[-amax, amax]``."""
        amax = min(amax, self.amax)
        return max(self.lo, -amax), min(self.hi, amax)


def entropy_amax(counts: np.ndarray, width: float, num_levels: int = 128, start_bin: int = 128,
                 stride: int = 1) -> float:
    """TensorRT's entropy-calibration threshold of a ``|x|`` histogram.

    For each candidate threshold of ``i`` bins (from ``start_bin``), the reference
    distribution P is the first ``i`` bins with everything beyond added to the last one; the
    candidate Q merges those ``i`` bins into ``num_levels`` levels (bin ``j`` goes to level
    ``floor(j * num_levels / i)``) and spreads each level's count evenly over its non-empty
    bins. The threshold with the least KL(P || Q) wins, the largest one on ties. As in
    NVIDIA's reference implementation, bin 0 (which holds the exact zeros of ReLU-like
    activations) is replaced by its neighbour so that a spike at zero does not dominate.

    Every candidate is evaluated at once: with prefix sums over the bins, the divergence of a
    candidate is a sum over its ``num_levels`` levels instead of over its ``i`` bins.

    Args:
        counts: Histogram counts of ``|x|`` starting at 0.
        width: Bin width.
        num_levels: Quantized levels on one side (128 for INT8).
        start_bin: Smallest candidate threshold, in bins.
        stride: Step between candidate thresholds, in bins.

    Returns:
        The threshold (amax).
    """
    b = counts.astype(np.float64)
    n = len(b)
    if n <= start_bin or b.sum() == 0:
        return n * width
    b[0] = b[1]
    prefix = lambda v: np.concatenate([[0.0], np.cumsum(v)])
    P, NZ, L = prefix(b), prefix(b != 0), prefix(_xlogx(b))
    total = P[n]
    i = np.arange(start_bin, n + 1, stride)
    starts = (np.outer(i, np.arange(num_levels + 1)) + num_levels - 1) // num_levels  # level k: bins [s_k, s_k+1)
    level_sum = P[starts[:, 1:]] - P[starts[:, :-1]]
    level_nonzero = NZ[starts[:, 1:]] - NZ[starts[:, :-1]]
    beyond = total - P[i]
    last = b[i - 1]
    # P's mass per level: Q's level sums, plus the clipped tail added to the last bin.
    p_mass = level_sum.copy()
    p_mass[:, -1] += beyond
    level_avg = level_sum / np.maximum(level_nonzero, 1)
    cross = np.where(p_mass > 0, p_mass * np.log(np.where(level_avg > 0, level_avg, 1.0)), 0.0).sum(axis=1)
    with np.errstate(divide="ignore"):
        kl = (L[i - 1] + _xlogx(last + beyond)) / total - np.log(total) - cross / total + np.log(P[i])
    # Q is zero where P is not: the last bin is empty but receives the clipped tail.
    kl[((last == 0) & (beyond > 0)) | (P[i] == 0)] = np.inf
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(i[best] * width)


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


def percentile_amax(counts: np.ndarray, width: float, percentile: float) -> float:
    """The smallest bin edge below which ``percentile`` % of ``|x|`` lies."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return min(idx + 1, len(counts)) * width


def mse_amax(counts: np.ndarray, width: float, levels: int = INT8_LEVELS) -> float:
    """The threshold minimising the expected squared error of symmetric quantization.

    For a threshold ``a`` (any bin edge) and step ``s = a / levels``, a value ``x`` (its bin
    centre) costs ``(x - a)^2`` beyond ``a`` (clipping), ``x^2`` below ``s / 2`` (it rounds to
    zero) and ``s^2 / 12`` in between (uniform rounding noise). Computed for every edge at
    once with prefix sums.
    """
    h = counts.astype(np.float64)
    n = len(h)
    if h.sum() == 0:
        return 0.0
    c = (np.arange(n) + 0.5) * width
    cum = lambda v: np.concatenate([[0.0], np.cumsum(v)])
    H, HC, HC2 = cum(h), cum(h * c), cum(h * c * c)
    edges = np.arange(1, n + 1)
    a = edges * width
    s = a / levels
    k = np.minimum(np.ceil(s / 2 / width - 0.5).astype(np.int64), edges)  # bins with centre < s/2
    rounding_to_zero = HC2[k]
    noise = (H[edges] - H[k]) * s * s / 12
    clip = (HC2[n] - HC2[edges]) - 2 * a * (HC[n] - HC[edges]) + a * a * (H[n] - H[edges])
    return float(a[int(np.argmin(rounding_to_zero + noise + clip))])


class _OptimizedSession:
    """Runs the augmented model with ONNX Runtime's graph optimizations, which its calibrators turn off.

    Every calibrated tensor is a graph output of the augmented model, and no optimization removes
    or changes a graph output, so the statistics are the same (up to float rounding in the
    kernels); but the convolutions run in the blocked layout with pre-packed weights (yolov5n, all
    201 tensors: 94 -> 76 ms per image, 2 threads). The session does not spin
    (:func:`convert.onnxutil.ort_session`).
    """

    def create_inference_session(self):
        from convert.onnxutil import ort_session

        self.infer_session = ort_session(Path(self.augmented_model_path))


class _MinMax(_OptimizedSession, MinMaxCalibrater):
    """ONNX Runtime's MinMax calibrator on an optimized session."""


class HistogramCalibrator(_OptimizedSession, CalibraterBase):
    """Streams tensors out of an augmented model into one :class:`AbsHistogram` per tensor.

    Each batch is reduced to histograms as soon as it is run, so memory stays that of one
    batch's activations. One pass serves every method (:meth:`ranges`).

    Args:
        model_path: The float ONNX model.
        op_types_to_calibrate: Only calibrate inputs and outputs of these node types (all if empty).
        augmented_model_path: Where to write the model with every calibrated tensor as an output.
        num_bins: Initial histogram bins.
    """

    def __init__(self, model_path: str | Path, op_types_to_calibrate: Sequence[str] | None = None,
                 augmented_model_path: str | Path = "augmented_model.onnx", num_bins: int = NUM_BINS):
        super().__init__(Path(model_path), op_types_to_calibrate=op_types_to_calibrate,
                         augmented_model_path=str(augmented_model_path))
        self.num_bins = num_bins
        self.stats: dict[str, AbsHistogram] = {}
        self.tensors: list[str] = []

    def augment_graph(self) -> None:
        """Adds every calibrated tensor to the graph outputs and saves the augmented model."""
        import onnx

        tensors, value_infos = self.select_tensors_to_calibrate(self.model)
        self.tensors = sorted(tensors)
        outputs = {o.name for o in self.model.graph.output}
        for name in self.tensors:
            if name not in outputs:
                self.model.graph.output.append(value_infos[name])
        onnx.save(self.model, self.augmented_model_path)

    def collect_data(self, data_reader: CalibrationDataReader) -> None:
        """Runs every batch of the reader and folds its tensors into the histograms."""
        from concurrent.futures import ThreadPoolExecutor

        names = [o.name for o in self.infer_session.get_outputs()]
        wanted = set(self.tensors)

        def fold(values) -> None:
            for name, value in zip(names, values):
                if name in wanted:
                    self.stats.setdefault(name, AbsHistogram(self.num_bins)).update(value)

        # A batch's tensors are folded into the histograms in a thread while ONNX Runtime runs the
        # next batch (NumPy releases the GIL): one worker, so every histogram sees its batches in
        # order and the counts are those of folding them one after the other; at most one batch waits.
        with ThreadPoolExecutor(1, thread_name_prefix="histograms") as worker:
            pending = None
            while (inputs := data_reader.get_next()) is not None:
                values = self.infer_session.run(None, inputs)
                if pending is not None:
                    pending.result()
                pending = worker.submit(fold, values)
            if pending is not None:
                pending.result()

    def compute_data(self) -> TensorsData:
        """Entropy ranges, as ONNX Runtime's calibrator interface expects."""
        return to_tensors_data(self.ranges("entropy"))

    def ranges(self, method: str, percentile: float = 99.99, stride: int = 1) -> dict[str, tuple[float, float]]:
        """Per-tensor ranges by ``method`` (any of :data:`METHODS`) from the collected statistics."""
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        out = {}
        for name, st in self.stats.items():
            if method == "minmax" or st.counts is None:
                out[name] = (st.lo, st.hi) if st.size else (0.0, 0.0)
            elif method == "entropy":
                out[name] = st.clip(entropy_amax(st.counts, st.width, stride=stride))
            elif method == "percentile":
                out[name] = st.clip(percentile_amax(st.counts, st.width, percentile))
            else:
                out[name] = st.clip(mse_amax(st.counts, st.width))
        return out


def to_tensors_data(ranges: dict[str, tuple[float, float]],
                    method: CalibrationMethod = CalibrationMethod.MinMax) -> TensorsData:
    """Ranges as ONNX Runtime's ``TensorsData`` (what its quantizer consumes)."""
    return TensorsData(method, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                for k, (lo, hi) in ranges.items()})


@dataclass
class CalibrationResult:
    """Ranges of one calibration run.

    Attributes:
        ranges: Tensor name -> (min, max).
        samples: Number of samples (images) seen.
        params: The method's parameters, for the record.
    """

    ranges: dict[str, tuple[float, float]]
    samples: int
    params: dict = field(default_factory=dict)


def calibrate(model_path: str | Path, input_name: str, batches: Iterable[np.ndarray], method: str,
              workdir: str | Path, op_types: Sequence[str] | None = None, percentile: float = 99.99,
              num_bins: int = NUM_BINS, stride: int = 1) -> CalibrationResult:
    """Runs calibration of one method over the batches.

    Args:
        model_path: The float ONNX model.
        input_name: Its image input.
        batches: Preprocessed input batches.
        method: One of :data:`METHODS`.
        workdir: Scratch directory for the augmented model.
        op_types: Only calibrate inputs and outputs of these node types (all tensors if None).
        percentile: For ``percentile``.
        num_bins: Histogram bins for the histogram methods.
        stride: Candidate step of ``entropy``, in bins.

    Returns:
        The ranges of every calibrated float tensor.
    """
    augmented = Path(workdir) / "augmented.onnx"
    if method == "minmax":
        calibrator = _MinMax(Path(model_path), list(op_types or []), augmented_model_path=str(augmented))
        calibrator.augment_graph()
        calibrator.create_inference_session()
        # Each collect_data call reduces what it ran to ranges and merges them, so feeding the
        # data in chunks bounds memory. (ONNX Runtime's own bound, max_intermediate_outputs,
        # drops the chunk instead of merging it as of onnxruntime 1.31.)
        it, samples = iter(batches), 0
        while chunk := list(itertools.islice(it, 16)):
            calibrator.collect_data(BatchReader(input_name, chunk))
            samples += sum(len(b) for b in chunk)
        ranges = {k: (_scalar(v.range_value[0]), _scalar(v.range_value[1]))
                  for k, v in calibrator.compute_data().items()}
        return CalibrationResult(ranges=ranges, samples=samples)
    calibrator, samples = collect_histograms(model_path, input_name, batches, workdir, op_types, num_bins)
    return CalibrationResult(ranges=calibrator.ranges(method, percentile=percentile, stride=stride), samples=samples,
                             params=method_params(method, num_bins, percentile, stride))


def collect_histograms(model_path: str | Path, input_name: str, batches: Iterable[np.ndarray],
                       workdir: str | Path, op_types: Sequence[str] | None = None,
                       num_bins: int = NUM_BINS) -> tuple[HistogramCalibrator, int]:
    """One statistics pass over the batches, from which every method's ranges can be read.

    Returns:
        The calibrator (its :meth:`HistogramCalibrator.ranges` gives any method's ranges; its
        ``minmax`` ranges equal ONNX Runtime's MinMax calibration) and the number of samples.
    """
    reader = BatchReader(input_name, batches)
    calibrator = HistogramCalibrator(model_path, list(op_types or []), Path(workdir) / "augmented.onnx",
                                     num_bins=num_bins)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(reader)
    return calibrator, reader.samples


def method_params(method: str, num_bins: int = NUM_BINS, percentile: float = 99.99, stride: int = 1) -> dict:
    """The parameters of ``method`` that shaped its ranges, for the record."""
    if method == "minmax":
        return {}
    return {"num_bins": num_bins, **({"percentile": percentile} if method == "percentile" else {}),
            **({"stride": stride} if method == "entropy" else {})}


def _scalar(v) -> float:
    return float(np.asarray(v).reshape(-1)[0])
