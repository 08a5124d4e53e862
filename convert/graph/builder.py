"""A thin node factory over an onnx-graphsurgeon graph.

Rewrites call ``b.op("Add", x, y)`` instead of building ``gs.Node`` objects by hand: every
node and tensor gets a unique name under the rewrite's prefix (so a rewritten graph reads well
in Netron and never clashes with the original names), constants are typed explicitly, and the
few operators whose signature changed across opsets (``axes`` as attribute or input) are
emitted for the graph's opset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

MIN_OPSET = 13
"""Squeeze/Unsqueeze/ReduceSum take ``axes`` as an input from opset 13; older graphs are refused."""


class Builder:
    """Adds nodes to ``graph`` under ``prefix``.

    Args:
        graph: The graph to extend (its ``opset`` decides operator signatures).
        prefix: Name prefix of every node and tensor created, e.g. ``postprocess``.
    """

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.opset = int(graph.opset)
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{self.prefix}/{base}_{self._count}"

    def variable(self, base: str, dtype, shape: list) -> gs.Variable:
        """A new variable with a declared dtype and shape (outputs of plugin nodes)."""
        return gs.Variable(self._name(base), dtype=dtype, shape=shape)

    def const(self, values, dtype) -> gs.Constant:
        """A constant tensor of ``values`` cast to ``dtype``."""
        return gs.Constant(self._name("const"), np.asarray(values, dtype=dtype))

    def op(self, op_type: str, *inputs, attrs: dict | None = None, n_out: int = 1, domain: str | None = None,
           outputs: Sequence[gs.Variable] | None = None):
        """Adds one node.

        Args:
            op_type: ONNX operator (or plugin) name.
            *inputs: Tensors; ``None`` leaves an optional input empty.
            attrs: Node attributes.
            n_out: Number of outputs to create (ignored if ``outputs`` is given).
            domain: Operator domain (plugins); default the ONNX domain.
            outputs: Existing variables to use as outputs (e.g. named graph outputs).

        Returns:
            The output variable, or a list when the node has several.
        """
        name = self._name(op_type)
        ins = [x if x is not None else gs.Variable.empty() for x in inputs]
        outs = list(outputs) if outputs is not None else [gs.Variable(f"{name}:{i}") for i in range(n_out)]
        node = gs.Node(op_type, name=name, attrs=attrs or {}, inputs=ins, outputs=outs, domain=domain)
        self.graph.nodes.append(node)
        return outs[0] if len(outs) == 1 else outs

    # --- opset-aware helpers -----------------------------------------------------------

    def unsqueeze(self, x, axes: Sequence[int]):
        return self.op("Unsqueeze", x, self.const(list(axes), np.int64))

    def reduce(self, op_type: str, x, axes: Sequence[int], keepdims: bool):
        """``ReduceMax``/``ReduceSum``... over ``axes`` (attribute before opset 18, except ReduceSum: 13)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.const(list(axes), np.int64), attrs={"keepdims": int(keepdims)})
        return self.op(op_type, x, attrs={"axes": list(axes), "keepdims": int(keepdims)})

    def slice(self, x, start: int, end: int, axis: int):
        """``x[start:end]`` along ``axis`` (static bounds)."""
        return self.op("Slice", x, self.const([start], np.int64), self.const([end], np.int64),
                       self.const([axis], np.int64))

    def dim(self, x, axis: int):
        """``x.shape[axis]`` (``axis >= 0``) as an int64 tensor of shape [1]."""
        return self.slice(self.op("Shape", x), axis, axis + 1, 0)

    def scalar(self, x):
        """A [1] tensor as a scalar (for Range)."""
        return self.op("Squeeze", x, self.const([0], np.int64))
