"""``quantize``: a float ONNX body and its calibration table to an explicitly quantized (Q/DQ) ONNX.

One Q/DQ ONNX, calibrated once, runs on ONNX Runtime, OpenVINO and TensorRT. The placement
(``target``: TensorRT's, Q/DQ on the inputs of the weighted ops; ONNX Runtime's, Q/DQ around
every op it fuses; OpenVINO's, TensorRT's with uint8 activations), the float fallbacks (by name, type, head,
measured sensitivity) and bias correction are :mod:`calib.qdq`'s; the table is read by
:mod:`calib.table`. Post-processing is never quantized: quantize the truncated network body and
attach decoding and NMS afterwards (the postprocess pass).
"""

from __future__ import annotations

from calib.qdq import QuantizeSettings
from convert.base import Input, Pass, PassResult
from convert.errors import PassError


class QuantizeConfig(QuantizeSettings):
    """Parameters of the quantize pass (the Q/DQ settings of :mod:`calib.qdq`)."""


class Quantize(Pass):
    """Write an explicitly quantized (Q/DQ) INT8 ONNX from a float ONNX body and its calibration table."""

    name = "quantize"
    # 2: target onnxruntime gets 7-bit weights where AVX2 could overflow them (calib.qdq.seven_bit_weights);
    # 3: target onnxruntime keeps the convolutions reading the network input float (calib.qdq.input_nodes);
    # 4: bias corrections from tap sums (calib.measure.correct_biases: within 1e-3 of version 3's, and
    # closer to a float64 computation);
    # 5: sensitivity in two rounds (calib.measure.most_sensitive: the same pick on yolov5n, from a quarter of
    # the probes)
    version = 5
    Config = QuantizeConfig
    inputs = {"model": Input(("onnx",), doc="the float32 ONNX network body that was calibrated"),
              "table": Input(("calib_table",), doc="its calibration table (calibrate pass)")}
    output = "onnx"
    tools = ("onnx", "onnxruntime", "numpy", "pillow")
    requires = ("onnx", "onnxruntime")

    def run(self, inputs, out, ctx) -> PassResult:
        import onnx

        from calib.qdq import quantize_model
        from calib.table import calibration_batches, read_table
        from convert import onnxutil

        c: QuantizeConfig = self.config
        art, table_art = inputs["model"], inputs["table"]
        if art.meta.get("precision", "fp32") != "fp32":
            raise PassError(f"the model is {art.meta['precision']}; quantization needs the float32 model.")
        table = read_table(table_art.file)
        model = onnx.load(str(art.file))
        samples = [table_art.path / rel for rel in table["samples"]]
        batches = (lambda: calibration_batches(samples, table["preprocess"])) if samples else None
        q = quantize_model(model, table["ranges"], c, batches, f"stages.{ctx.stage}.with", ctx, table["method"])
        meta = {**art.meta, "precision": "int8",
                "quantization": {"format": "qdq", "activations": c.activation_type,
                                 "symmetric_activations": c.activation_type == "int8",
                                 "weights": "int8 per-channel" if c.per_channel else "int8 per-tensor",
                                 "calibration": table["method"], "calibration_samples": table["num_samples"],
                                 "bias_correction": bool(q.corrected), "float_nodes": q.plan.kept_float,
                                 "sensitive_tensors": q.sensitive}}
        onnxutil.set_metadata(q.model, meta)
        onnxutil.save(q.model, out / "model.onnx")
        counts = {op: sum(1 for n in q.model.graph.node if n.op_type == op)
                  for op in ("QuantizeLinear", "DequantizeLinear")}
        summary = {"quantized_nodes": len(q.plan.quantized), "float_weighted_nodes": len(q.plan.kept_float),
                   "q_nodes": counts["QuantizeLinear"], "dq_nodes": counts["DequantizeLinear"],
                   "calibration": table["method"], "table_matches_model": table["model_digest"] == art.digest}
        if q.corrected:
            summary["bias_shift_mean"] = float(sum(q.corrected.values()) / len(q.corrected))
        return PassResult("onnx", "model.onnx", meta, summary)


