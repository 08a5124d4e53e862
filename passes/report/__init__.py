"""``report``: a Markdown and self-contained HTML report of a run's figures.

Two renderings share one renderer (:mod:`passes.report.render`):

* the ``report`` stage (cached like any other) renders what its inputs know — the ``metrics``
  artifacts of evaluate, benchmark and compare stages::

      report: {inputs: {metrics: [eval_fp32, eval_int8, compare, benchmark]}}

* every published version gets ``<version>/report.html`` and ``report.md``, rendered once the
  version is assembled (:func:`render_version`, registered as the engine's ``version`` renderer),
  from its manifest: per-pass timings, cache hits, artifact sizes and every stage's figures.
  ``convert report NAME/VERSION`` renders it again; ``convert report A B`` compares two.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from convert.base import Input, Pass, PassConfig, PassResult


class ReportConfig(PassConfig):
    title: str = Field("run", min_length=1, description="title of the report")


class Report(Pass):
    """Render the run's figures (accuracy x back-end x precision, latency, errors, plots) as MD + HTML."""

    name = "report"
    version = 1
    Config = ReportConfig
    inputs = {"metrics": Input(("metrics",), many=True, doc="figures of evaluate, benchmark and compare stages")}
    output = "report"
    tools = ("matplotlib",)
    requires = ("matplotlib",)

    def run(self, inputs, out, ctx) -> PassResult:
        from passes.report.render import from_records, write_report

        records = [json.loads(a.file.read_text()) for a in inputs["metrics"]]
        data = from_records(records, self.config.title)
        write_report(data, out)
        kinds = sorted({r.get("type", "?") for r in records})
        return PassResult("report", "report.html", {"report_of": kinds},
                          {"figures": len(records), "files": len(list(out.iterdir()))})


def render_version(version_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Renders a published (or being-published) version's report into ``out_dir``.

    Returns:
        (Markdown path, HTML path).
    """
    from passes.report.render import load_version, write_report

    return write_report(load_version(version_dir), out_dir)


def render_comparison(a_dir: Path, b_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Renders two published versions side by side into ``out_dir``."""
    from passes.report.render import load_version, write_comparison

    return write_comparison(load_version(a_dir), load_version(b_dir), out_dir)


def render_matrix(summary: dict, out_dir: Path) -> tuple[Path, Path]:
    """Renders a matrix summary (one row per combination, shared stages) into ``out_dir``."""
    from passes.report.render import write_matrix

    return write_matrix(summary, out_dir)
