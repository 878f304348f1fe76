"""The two linear ops that gradients of broadcasting need.

``sum_like(g, x)`` sums ``g`` down to the run-time shape of ``x`` (the adjoint
of broadcasting ``x`` up to ``g``'s shape); ``broadcast_like(x, ref)``
broadcasts ``x`` against ``ref``'s run-time shape.  Each is the other's
transpose.  The second input is only a shape reference: not differentiated
(its connection is ``False``).  Because they work on run-time shapes, an
unknown length that turns out to be 1 broadcasts correctly.
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import as_tensor
from tapegrad.op import Apply, Op, disconnected_type, make_output, static_broadcast_shape
from tapegrad.registry import registered


def sum_to_shape(g, shape):
    """Sum the array ``g`` down to ``shape`` (NumPy broadcasting in reverse)."""
    g = np.asarray(g)
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_like: cannot sum shape {g.shape} to the longer shape {shape}")
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if g.shape != shape:
        raise ValueError(f"sum_like: cannot sum shape {g.shape} to shape {shape}")
    return g


@registered(name="SUM_LIKE", code=700)
class SumLike(Op):
    """``sum_like(g, x)``: ``g`` summed to ``x.shape``.  Linear in ``g``; transpose ``broadcast_like``."""

    kind = "linear"

    def make_node(self, g, x):
        g, x = as_tensor(g), as_tensor(x)
        if g.ndim < x.ndim:
            raise ValueError(f"sum_like: {g} has fewer dimensions ({g.ndim}) than {x} ({x.ndim})")
        return Apply(self, [g, x], [make_output(g.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        g, x = inputs
        output_storage[0][0] = np.array(sum_to_shape(g, np.shape(x)), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1])]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        g, _ = inputs
        return [broadcast_like(output_grads[0], g), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else sum_like(u, inputs[1])]


@registered(name="BROADCAST_LIKE", code=701)
class BroadcastLike(Op):
    """``broadcast_like(x, ref)``: ``x`` broadcast against ``ref``'s shape.  Transpose: ``sum_like``."""

    kind = "linear"

    def make_node(self, x, ref):
        x, ref = as_tensor(x), as_tensor(ref)
        shape = static_broadcast_shape([x.type.shape, ref.type.shape], "broadcast_like")
        return Apply(self, [x, ref], [make_output(x.dtype, shape)])

    def perform(self, node, inputs, output_storage):
        x, ref = inputs
        shape = np.broadcast_shapes(np.shape(x), np.shape(ref))
        output_storage[0][0] = np.array(np.broadcast_to(x, shape), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(np.broadcast_shapes(*input_shapes))]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        x, _ = inputs
        return [sum_like(output_grads[0], x), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else broadcast_like(u, inputs[1])]


_sum_like, _broadcast_like = SumLike(), BroadcastLike()


def sum_like(g, x):
    """``g`` summed over the axes along which ``x`` was broadcast to ``g``'s shape."""
    return _sum_like(g, x)


def broadcast_like(x, ref):
    """``x`` broadcast to the common shape of ``x`` and ``ref``."""
    return _broadcast_like(x, ref)
