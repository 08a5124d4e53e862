"""Small, named ONNX graph rewrites (onnx-graphsurgeon) used by the post-processing pass.

* :mod:`convert.graph.builder`: a node factory with unique names and opset-aware helpers;
* :mod:`convert.graph.decode`: raw head maps -> decoded candidates, one function per head type;
* :mod:`convert.graph.nms`: candidates -> padded detections, per NMS back-end;
* :mod:`convert.graph.end2end`: the whole rewrite, truncated-head model -> end-to-end model;
* :mod:`convert.graph.reference`: numpy references of TensorRT's NMS plugins, and a runner that
  evaluates a graph containing them (ONNX Runtime for the rest).

The semantics they implement are defined once, in :mod:`convert.postprocess`.
"""
