"""``report``: a Markdown and self-contained HTML report of the run's figures.

Takes the ``metrics`` artifacts of the evaluate, benchmark and compare stages, so every
published version carries its report (``<version>/<stage>/report.html``)::

    report: {inputs: {metrics: [eval_fp32, eval_int8, compare, benchmark]}}

Per-pass timings and cache hits are only known once the run is over; ``convert report
NAME/VERSION`` regenerates the report from the published version with them.
"""

from __future__ import annotations

import json

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
        from convert.report import from_records, write_report

        records = [json.loads(a.file.read_text()) for a in inputs["metrics"]]
        data = from_records(records, self.config.title)
        write_report(data, out)
        kinds = sorted({r.get("type", "?") for r in records})
        return PassResult("report", "report.html", {"report_of": kinds},
                          {"figures": len(records), "files": len(list(out.iterdir()))})
