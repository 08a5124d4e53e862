"""``benchmark``: latency and throughput of every artifact, measured side by side in one run.

All runners are loaded and warmed up first; then the timed iterations are split into rounds and
the runners take turns round by round (in a rotating order), so that a slow spell of a shared
machine hits every runner alike and the ratios between them hold even when absolute figures
drift. Each configuration records its thread settings; the host's CPU and load are recorded too.

    benchmark:
      inputs: {models: [simplify, fp16, quantize, openvino]}
      with: {threads: [1, 2], iterations: 200}
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from convert.base import Input, InputPath, Pass, PassConfig, PassResult
from convert.errors import ConvertError


class BenchmarkConfig(PassConfig):
    onnx_backends: list[Literal["onnxruntime", "openvino"]] = Field(
        ["onnxruntime"], min_length=1, description="back-ends each onnx artifact is timed on")
    threads: list[int | None] = Field(
        [None], min_length=1, description="thread counts to time each model with (null: the back-end's default)")
    batch: int = Field(1, ge=1, description="images per inference (the model's batch must allow it)")
    warmup: int = Field(10, ge=0, description="untimed inferences per configuration before timing")
    iterations: int = Field(100, ge=1, description="timed inferences per configuration")
    rounds: int = Field(5, ge=1, description="the timed inferences are split into this many interleaved rounds")
    image: InputPath | None = Field(
        None, description="a real image as input (end-to-end models' NMS time depends on the content); "
        "default: a fixed grey image with noise")


class Benchmark(Pass):
    """Latency p50/p90/p99 and throughput per back-end, precision and thread count, side by side."""

    name = "benchmark"
    version = 2
    Config = BenchmarkConfig
    inputs = {"models": Input(("onnx", "openvino", "tensorrt", "torch"), many=True, doc="artifacts to time")}
    output = "metrics"
    tools = ("onnxruntime", "openvino", "tensorrt", "torch")
    requires = ()
    machine_dependent = True

    def run(self, inputs, out, ctx) -> PassResult:
        from convert.runtime import BACKENDS, cpu_info, load_runner, model_info

        c: BenchmarkConfig = self.config
        configs = [(m, b, t) for m in inputs["models"]
                   for b in (c.onnx_backends if m.kind == "onnx" else BACKENDS[m.kind]) for t in c.threads]
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        entries: list[dict[str, Any]] = []
        runners = []
        try:
            for model, backend, threads in configs:
                runner = load_runner(model, backend, threads)
                runner.activate()
                runners.append(runner)
                feed = self._feed(runner, model.meta)
                for _ in range(c.warmup):
                    runner.infer(feed, check_inputs=False)
                entries.append({"model": model_info(model, backend), "threads": threads,
                                "runner": runner.settings, "feed": feed, "times": []})
            per_round = [c.iterations // c.rounds + (i < c.iterations % c.rounds) for i in range(c.rounds)]
            bar = ctx.bar(total=c.iterations * len(entries), desc="timing")
            for rnd, n in enumerate(per_round):
                k = len(entries)
                for idx in [(rnd + j) % k for j in range(k)]:  # rotate who goes first
                    e, runner = entries[idx], runners[idx]
                    for _ in range(n):
                        t0 = time.perf_counter()
                        runner.infer(e["feed"], check_inputs=False)
                        e["times"].append(time.perf_counter() - t0)
                    bar.update(n)
            bar.close()
        finally:
            for r in runners:
                r.deactivate()
        load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

        base = None
        results = []
        for e in entries:
            ms = np.asarray(e["times"]) * 1000
            fig = {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                   "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                   "std_ms": float(ms.std()), "throughput_ips": float(c.batch * 1000 / ms.mean())}
            base = base or fig["p50_ms"]
            fig["speedup_vs_first"] = base / fig["p50_ms"]
            label = e["model"]["label"] + (f" t{e['threads']}" if e["threads"] else "")
            results.append({"label": label, "model": e["model"], "threads": e["threads"] or "default",
                            "runner": e["runner"], "batch": c.batch, "iterations": len(ms), **fig,
                            "times_ms": [round(float(t), 4) for t in ms]})  # the report's distributions
        record = {"type": "benchmark", "host": cpu_info(), "load_average": {"before": load_before, "after": load_after},
                  "settings": {**c.model_dump(mode="json", exclude={"image"}),
                               "image": c.image.name if c.image else None},
                  "results": results}
        (out / "metrics.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        summary = {f"{r['label']} p50_ms": round(r["p50_ms"], 3) for r in results}
        return PassResult("metrics", "metrics.json", {"metrics_type": "benchmark"}, summary)

    def _feed(self, runner, meta: dict[str, Any]) -> dict[str, np.ndarray]:
        """The input batch of a runner: the image (or a fixed noisy grey one), in the model's dtype."""
        from convert.preprocess import load_image, preprocess
        from convert.runtime import input_meta

        c: BenchmarkConfig = self.config
        name, dtype, shape = input_meta(runner)
        pp = meta.get("preprocess") or {}
        if isinstance(shape[0], int) and shape[0] != c.batch:
            raise ConvertError(f"{runner.name}: the model's batch is fixed at {shape[0]}, but batch is {c.batch}.",
                               hint="export with dynamic_batch: true, or set batch to the model's.")
        if c.image is not None:
            img = load_image(c.image)
        else:
            h, w = pp.get("size", shape[2:] if all(isinstance(d, int) for d in shape[2:]) else [640, 640])
            rng = np.random.default_rng(0)
            img = np.clip(rng.normal(114, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        x, _ = preprocess(img, pp)
        return {name: np.ascontiguousarray(np.repeat(x, c.batch, axis=0).astype(dtype))}
