"""One reference check: a converted model against the model it came from, output by output.

The conversions (``fp16``, ``openvino``, ``tensorrt``) check their result on ONNX Runtime's
outputs of the model they converted (:func:`check`), and the graph rewrites (``simplify``,
``export_onnx``) compare outputs they computed themselves (:func:`compare`). Both go through
Polygraphy's comparator, with one policy:

* Outputs are paired by name, never by position or by a similar name. An output present on one
  side only is a mismatch (``only in the reference`` / ``only in the candidate``).
* Outputs whose shapes differ are a mismatch and are not compared further.
* Float outputs: Polygraphy's max absolute difference. The relative figure is that difference
  over the reference output's largest magnitude: element-wise relative errors explode near zero,
  which sigmoid scores and padded end-to-end outputs are full of.
* Values that are not finite (NaN, +-inf) compare equal where both sides hold the same one;
  anywhere else they are a mismatch (``3 non-finite values differ``) and are left out of the
  figures, which stay finite (and JSON).
* Integer and boolean outputs (indices, counts, classes) are compared exactly: any difference is
  a mismatch (``4 of 300 values differ``). Their max abs difference is listed with the others but
  is not part of ``max_abs_diff``, which is a float tolerance.

Gate (:meth:`Comparison.failures`): with ``max_abs_diff`` set, the run fails when the worst float
output differs by more, or on any mismatch. An output missing on one side fails the run even
without a tolerance: the candidate does not have the reference's interface.

A reference that ONNX Runtime cannot load (a TensorRT plugin op such as ``EfficientNMS_TRT``)
is not an error: the check is skipped, said so in the summary, and a ``max_abs_diff`` gate fails
because it cannot be checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Outputs = Mapping[str, Any]
"""Output name -> array, of one inference."""

SKIPPED = "skipped: ONNX Runtime cannot run the model (an op it does not know, e.g. a TensorRT plugin)"
UNCHECKABLE = "max_abs_diff cannot be checked: ONNX Runtime cannot run the model"
ONLY_REFERENCE, ONLY_CANDIDATE = "only in the reference", "only in the candidate"


@dataclass
class Comparison:
    """Per-output differences of a candidate against a reference (see the module docstring).

    Attributes:
        max_abs: Output -> max absolute difference over all iterations (outputs compared).
        max_rel: Float output -> ``max_abs`` over the reference output's largest magnitude.
        mismatch: Output -> why it does not match (missing, shape, integer values, non-finite).
        floats: The float outputs compared, in the reference's order.
        magnitude: Largest absolute reference value over the float outputs compared.
    """

    max_abs: dict[str, float] = field(default_factory=dict)
    max_rel: dict[str, float] = field(default_factory=dict)
    mismatch: dict[str, str] = field(default_factory=dict)
    floats: list[str] = field(default_factory=list)
    magnitude: float = 0.0

    @property
    def worst(self) -> str | None:
        """The float output with the largest absolute difference (None when there is none)."""
        return max(self.floats, key=self.max_abs.get, default=None)

    @property
    def max_abs_diff(self) -> float:
        """The worst float output's max absolute difference (0 without float outputs)."""
        return self.max_abs[self.worst] if self.worst is not None else 0.0

    @property
    def max_rel_diff(self) -> float:
        """The largest relative figure over the float outputs (0 without float outputs)."""
        return max((self.max_rel[n] for n in self.floats), default=0.0)

    def summary(self) -> dict[str, Any]:
        """The figures passes put in their summary: ``max_abs_diff``, ``max_rel_diff``, ``worst``,
        ``diff`` (output -> max abs difference) and, when any, ``mismatch``."""
        out: dict[str, Any] = {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                               "diff": dict(self.max_abs)}
        if self.worst is not None:
            out["worst"] = self.worst
        if self.mismatch:
            out["mismatch"] = dict(self.mismatch)
        return out

    def failures(self, max_abs_diff: float | None, candidate: str = "candidate",
                 reference: str = "reference") -> list[str]:
        """Gate messages, one per failing output (empty: passed).

        Args:
            max_abs_diff: The tolerance, or None for no gate (a missing output still fails).
            candidate: What the candidate is called in messages (``IR``, ``engine``...).
            reference: What the reference is called (``ONNX model``...).
        """
        out = []
        for name, why in self.mismatch.items():
            if max_abs_diff is not None or why in (ONLY_REFERENCE, ONLY_CANDIDATE):
                out.append(f"{candidate} output {name!r} does not match the {reference}'s: {why}")
        if max_abs_diff is not None and self.max_abs_diff > max_abs_diff:
            out.append(f"{candidate} output {self.worst!r} differs from the {reference}'s by "
                       f"{self.max_abs_diff:.4g} > max_abs_diff {max_abs_diff:g}")
        return out


@dataclass
class Check:
    """The outcome of :func:`check`.

    Attributes:
        kind: The check input (``photos`` or ``random``), or why the check was skipped.
        comparison: The differences, None when skipped.
    """

    kind: str
    comparison: Comparison | None = None

    def summary(self) -> dict[str, Any]:
        """``check`` (the kind) and the comparison's figures (:meth:`Comparison.summary`)."""
        return {"check": self.kind, **(self.comparison.summary() if self.comparison else {})}

    def failures(self, max_abs_diff: float | None, candidate: str = "candidate",
                 reference: str = "reference") -> list[str]:
        """:meth:`Comparison.failures`; a skipped check fails a set gate."""
        if self.comparison is None:
            return [UNCHECKABLE] if max_abs_diff is not None else []
        return self.comparison.failures(max_abs_diff, candidate, reference)


def compare(reference: Outputs | Sequence[Outputs], candidate: Outputs | Sequence[Outputs]) -> Comparison:
    """Compares outputs by name with Polygraphy's comparator (the policy of the module docstring).

    Args:
        reference: The reference's outputs, of one inference or of several (same inputs in the
            same order on both sides).
        candidate: The candidate's outputs.
    """
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.comparator import util as comp_util
    from polygraphy.logger import G_LOGGER

    refs = [reference] if isinstance(reference, Mapping) else list(reference)
    cands = [candidate] if isinstance(candidate, Mapping) else list(candidate)
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} reference iterations against {len(cands)} candidate ones")
    result = Comparison()
    names = list(refs[0]) if refs else []
    for n in names:
        if any(n not in c for c in cands):
            result.mismatch[n] = ONLY_REFERENCE
    for n in (cands[0] if cands else {}):
        if n not in refs[0]:
            result.mismatch[n] = ONLY_CANDIDATE
    pairs: list[tuple[dict, dict]] = [({}, {}) for _ in refs]
    for n in names:
        if n in result.mismatch:
            continue
        rs = [np.asarray(r[n]) for r in refs]
        cs = [np.asarray(c[n]) for c in cands]
        shapes = [(r.shape, c.shape) for r, c in zip(rs, cs) if r.shape != c.shape]
        if shapes:
            result.mismatch[n] = f"shape {list(shapes[0][1])} against the reference's {list(shapes[0][0])}"
            continue
        why = _values(rs, cs)
        if why:
            result.mismatch[n] = why
        floating = np.issubdtype(rs[0].dtype, np.floating)
        if floating:
            result.floats.append(n)
            rs, cs = zip(*(_finite_pair(r, c) for r, c in zip(rs, cs)))
        for (ref_it, cand_it), r, c in zip(pairs, rs, cs):
            ref_it[n], cand_it[n] = r, c
    compared = [n for n in names if n in pairs[0][0]] if pairs else []
    if not compared:
        return result
    run = RunResults()
    # candidate first: Polygraphy's relative figures are relative to the second runner
    run.append(("candidate", [IterationResult({n: c[n] for n in compared}, runner_name="candidate")
                              for _, c in pairs]))
    run.append(("reference", [IterationResult({n: r[n] for n in compared}, runner_name="reference")
                              for r, _ in pairs]))
    # The figures are the report, not Polygraphy's log; an empty output (no detection) makes
    # Polygraphy's mean statistics warn, and its max is ignored below.
    # Polygraphy formats the mean, deviation, median and quantiles of every output and difference
    # for its INFO log even when the logger is silenced, as here: 1.2 s of yolov5n's OpenVINO check
    # (three comparisons of the 3 head maps). Nothing of it is shown, so it is skipped for the call.
    real_stats = comp_util.log_output_stats
    comp_util.log_output_stats = lambda *args, **kwargs: None
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            (accuracy,) = Comparator.compare_accuracy(run, comparisons=[(0, 1)],
                                                      compare_func=SimpleCompareFunc(check_error_stat="max"))
    finally:
        comp_util.log_output_stats = real_stats
    iterations = next(iter(accuracy.values()))
    for n in compared:
        result.max_abs[n] = max(float(it[n].max_absdiff) if r[n].size else 0.0
                                for it, (r, _) in zip(iterations, pairs))
    for n in result.floats:
        if n in result.max_abs:
            mag = max((float(np.abs(r[n]).max()) for r, _ in pairs if np.asarray(r[n]).size), default=0.0)
            result.magnitude = max(result.magnitude, mag)
            result.max_rel[n] = result.max_abs[n] / mag if mag else 0.0
    result.floats = [n for n in result.floats if n in result.max_abs]
    return result


def _values(rs: list[np.ndarray], cs: list[np.ndarray]) -> str | None:
    """Why same-shaped outputs do not match whatever the tolerance: integer values, non-finite values."""
    if not np.issubdtype(rs[0].dtype, np.floating):
        differ = sum(int(np.count_nonzero(r != c)) for r, c in zip(rs, cs))
        if differ:
            return f"{differ} of {sum(r.size for r in rs)} values differ ({rs[0].dtype} output, compared exactly)"
        return None
    odd = sum(int(np.count_nonzero(~_same_nonfinite(r, c) & ~(np.isfinite(r) & np.isfinite(c))))
              for r, c in zip(rs, cs))
    return f"{odd} non-finite values (NaN, inf) differ" if odd else None


def _same_nonfinite(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    return (np.isnan(r64) & np.isnan(c64)) | (np.isinf(r64) & (r64 == c64))


def _finite_pair(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays with every position where either is not finite set to 0 (see :func:`_values`)."""
    bad = ~(np.isfinite(r) & np.isfinite(c))
    if not bad.any():
        return r, c
    return np.where(bad, 0, r).astype(r.dtype), np.where(bad, 0, c).astype(c.dtype)


def check(reference: Path, candidate: Callable[[list[str]], Any],
          feed: Callable[[Any], tuple[dict[str, np.ndarray], str]]) -> Check:
    """Runs an ONNX reference on ONNX Runtime and a candidate on its runner, on the same inputs, and compares.

    Args:
        reference: The ONNX model the candidate was converted from.
        candidate: Called with the reference's output names (a runner may need them to name its
            outputs alike), returns an inactive Polygraphy runner of the candidate
            (:mod:`convert.runtime`). Not called when the check is skipped.
        feed: Called with the reference's ONNX Runtime session, returns (input name -> array,
            kind of input); passes give :func:`calib.data.check_feed` (sample photos, else noise).
            Inputs are cast to the candidate's input types (an FP16 model may take float16).

    Returns:
        The check; skipped (``comparison`` None) when ONNX Runtime cannot load the reference.
    """
    from polygraphy.datatype import DataType

    from convert import onnxutil

    try:
        session = onnxutil.ort_session(reference)
    except Exception:  # onnxruntime's own exception types: an op it does not know
        return Check(SKIPPED)
    inputs, kind = feed(session)
    ref = onnxutil.run(session, inputs)
    with candidate(list(ref)) as runner:
        types = runner.get_input_metadata(use_numpy_dtypes=False)
        cast = {k: v.astype(DataType.to_dtype(types[k].dtype, "numpy"), copy=False) if k in types else v
                for k, v in inputs.items()}
        got = {k: np.array(v) for k, v in runner.infer(cast, check_inputs=False).items()}
    return Check(kind, compare(ref, got))
