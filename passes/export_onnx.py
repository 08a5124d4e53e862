"""``export_onnx``: a torch model to a checked ONNX file with the metadata consumers need."""

from __future__ import annotations

import io

from pydantic import Field

from convert.base import Input, Pass, PassConfig, PassResult
from convert.errors import PassError


class ExportOnnxConfig(PassConfig):
    opset: int = Field(17, ge=11, le=21, description="ONNX opset version")
    input_name: str = Field("images", min_length=1, description="name of the image input")
    batch: int = Field(1, ge=1, description="batch size of the exported input shape")
    dynamic_batch: bool = Field(False, description="make the batch dimension dynamic")
    dynamic_hw: bool = Field(False, description="make height and width dynamic too")
    fp16: bool = Field(False, description="export in float16 (weights, input and outputs)")
    tolerance: float = Field(1e-4, gt=0, description="max abs difference allowed between torch and ONNX Runtime "
                             "outputs on a random input, relative to the largest output magnitude (at least 1); "
                             "fp16 allows 100x this")


class ExportOnnx(Pass):
    """Export a torch model to ONNX (decoded outputs, or raw maps if truncated), checked under ONNX Runtime."""

    name = "export_onnx"
    version = 1
    Config = ExportOnnxConfig
    inputs = {"model": Input(("torch",), doc="the model to export")}
    output = "onnx"
    tools = ("torch", "onnx")
    requires = ("torch", "onnx")

    def run(self, inputs, out, ctx) -> PassResult:
        import warnings

        import onnx
        import torch

        from convert import onnxutil, refcheck
        from convert.torchmodel import load_module

        c: ExportOnnxConfig = self.config
        art = inputs["model"]
        module = load_module(art)
        h, w = art.meta["input"]["shape"][2:]
        x = torch.rand(c.batch, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = module(x)
        n_out = len(ref) if isinstance(ref, (tuple, list)) else 1
        if art.meta.get("truncated"):
            out_names = list(art.meta["head"]["outputs"])
        else:
            out_names = ["predictions"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
        if c.fp16:
            module, x = module.half(), x.half()
        axes = {}
        if c.dynamic_batch or c.dynamic_hw:
            dims = {0: "batch"} if c.dynamic_batch else {}
            if c.dynamic_hw:
                dims.update({2: "height", 3: "width"})
            axes = {c.input_name: dims}
            for n in out_names:
                axes[n] = {0: "batch"} if c.dynamic_batch else {}
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
            try:
                torch.onnx.export(module, x, buf, opset_version=c.opset, input_names=[c.input_name],
                                  output_names=out_names, dynamic_axes=axes or None, do_constant_folding=True,
                                  dynamo=False)
            except Exception as e:  # the exporter raises many types; all mean "not exportable as is"
                raise PassError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                                hint="try another opset, or fp16: false.") from None
        model = onnx.load_from_string(buf.getvalue())
        model.producer_name, model.producer_version, model.doc_string = "convert", "", ""
        meta = {**art.meta, "precision": "fp16" if c.fp16 else "fp32", "end2end": False,
                "input": {"name": c.input_name,
                          "shape": ["batch" if c.dynamic_batch else c.batch, 3,
                                    "height" if c.dynamic_hw else h, "width" if c.dynamic_hw else w]},
                "outputs": out_names}
        meta.pop("model", None)  # the torch recipe means nothing to ONNX consumers
        onnxutil.set_metadata(model, meta)
        onnxutil.save(model, out / "model.onnx")

        refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
        checked = refcheck.compare(dict(zip(out_names, refs)),
                                   onnxutil.run(onnxutil.ort_session(out / "model.onnx"), {c.input_name: x.numpy()}))
        if checked.mismatch:
            name, why = next(iter(checked.mismatch.items()))
            raise PassError(f"ONNX Runtime disagrees with torch on output {name!r}: {why}.", hint="report the model.")
        diff = checked.max_abs_diff
        tol = c.tolerance * (100 if c.fp16 else 1) * max(1.0, checked.magnitude)
        if not diff <= tol:
            raise PassError(f"ONNX Runtime disagrees with torch: max abs diff {diff:.3g} > tolerance {tol:.3g}.",
                            hint="raise `tolerance` if this is expected, or report the model.")
        return PassResult("onnx", "model.onnx", meta, {"opset": c.opset, "max_abs_diff": diff,
                                                         "bytes": (out / "model.onnx").stat().st_size})
