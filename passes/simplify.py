"""``simplify``: onnxsim (or onnxslim), with the outputs checked unchanged (:func:`convert.refcheck.compare`)."""

from __future__ import annotations

import shutil
from typing import Literal

from pydantic import Field

from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import PassError


class SimplifyConfig(PassConfig):
    tool: Literal["onnxsim", "onnxslim"] = Field("onnxsim", description="the simplifier to use")
    tolerance: float = Field(1e-4, gt=0, description="max abs difference allowed between the outputs before and "
                             "after, under ONNX Runtime on random inputs (relative to the largest magnitude, >= 1)")
    keep_on_failure: bool = Field(False, description="if simplification fails or changes the outputs, keep the "
                                  "unsimplified model (with a warning in the summary) instead of failing")


class Simplify(Pass):
    """Simplify an ONNX graph (constant folding, dead-node removal) and check it still computes the same."""

    name = "simplify"
    version = 1
    Config = SimplifyConfig
    inputs = {"model": Input(("onnx",), doc="the ONNX model")}
    output = "onnx"
    tools = ("onnx", "onnxsim", "onnxslim", "onnxruntime")
    requires = ("onnx", "onnxruntime")

    def run(self, inputs, out, ctx) -> PassResult:
        import onnx

        from convert import onnxutil, refcheck

        c: SimplifyConfig = self.config
        art = inputs["model"]
        model = onnx.load(str(art.file))
        nodes_before = len(model.graph.node)
        try:
            simplified = self._simplify(model)
            onnxutil.set_metadata(simplified, art.meta)
            onnxutil.save(simplified, out / "model.onnx")
            before, after = onnxutil.ort_session(art.file), onnxutil.ort_session(out / "model.onnx")
            feeds = [onnxutil.random_feed(before, seed) for seed in (0, 1)]
            checked = refcheck.compare([onnxutil.run(before, f) for f in feeds],
                                       [onnxutil.run(after, f) for f in feeds])
            if checked.mismatch:
                name, why = next(iter(checked.mismatch.items()))
                raise PassError(f"simplified model's output {name!r} does not match the original's: {why}.")
            diff, magnitude = checked.max_abs_diff, max(1.0, checked.magnitude)
            if not diff <= c.tolerance * magnitude:
                raise PassError(f"simplified model's outputs differ by {diff:.3g} (> {c.tolerance * magnitude:.3g}).")
        except PassError as e:
            return self._fallback(art, out, e.message)
        except Exception as e:  # simplifiers raise anything from protobuf to onnxruntime errors
            return self._fallback(art, out, f"{c.tool} failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        return PassResult("onnx", "model.onnx", dict(art.meta),
                          {"nodes_before": nodes_before, "nodes_after": len(simplified.graph.node),
                           "max_abs_diff": diff})

    def _simplify(self, model):
        if self.config.tool == "onnxslim":
            import onnxslim

            return onnxslim.slim(model)
        import onnxsim

        from convert.onnxutil import quiet_fds

        with quiet_fds():  # onnxsim's C++ core prints per-op warnings for dynamic shapes
            simplified, ok = onnxsim.simplify(model, check_n=0)
        if not ok:
            raise PassError("onnxsim could not validate the simplified model.")
        return simplified

    def _fallback(self, art, out, reason: str) -> PassResult:
        if not self.config.keep_on_failure:
            raise PassError(f"simplification failed: {reason}",
                            hint="set keep_on_failure: true to keep the unsimplified model, or try tool: onnxslim.")
        (out / "model.onnx").unlink(missing_ok=True)
        shutil.copyfile(art.file, out / "model.onnx")
        return PassResult("onnx", "model.onnx", dict(art.meta), {"warning": f"kept unsimplified: {reason}"})
