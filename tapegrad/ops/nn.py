"""Neural-network style ops: codes 500-549.

=============  ====  ===========  ==================================================
op             code  kind         rules (``S`` = sum_broadcast over the same axes)
=============  ====  ===========  ==================================================
softmax        500   general      L: y * (g - S(g * y))      R: y * (u - S(u * y))
log_softmax    501   general      L: g - exp(y) * S(g)       R: u - S(exp(y) * u)
relu           502   elementwise  maximum(x, 0); relu'(0) = 0 (an elementwise table row)
sum_broadcast  503   linear       S(x) = sum(x, axis, keepdims) broadcast back to x's shape;
                                  self-adjoint: L: S(g), R: S(u)
=============  ====  ===========  ==================================================

The rules are built from elementwise ops and ``sum_broadcast`` only, so they
can be differentiated again (Hessians, HVPs).  ``axis`` may be an int, a tuple
or None (all elements).  Integer inputs give float64 outputs, as NumPy's float
functions do; their gradients have dtype ``config.floatX``.
"""

from __future__ import annotations

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, make_output, normalize_axis
from tapegrad.ops.elemwise import Elemwise, ScalarSpec
from tapegrad.registry import register, registered

__all__ = ["softmax", "log_softmax", "relu"]


def _axes(x, axis, opname):
    """Normalised axes; a 0-d input has none (its only element is the whole set)."""
    if x.ndim == 0:
        if axis not in (None, 0, -1, ()):
            raise ValueError(f"{opname}: axis {axis} is out of bounds for the 0-d {x}")
        return ()
    return normalize_axis(axis, x.ndim, opname)


def _float_out(dtype):
    return dtype if is_float_dtype(dtype) else "float64"


def _grad_dtype(x):
    return x.dtype if is_float_dtype(x.dtype) else config.floatX


def _shift(x, axis):
    """``x - max(x, axis)`` (a max of -inf or inf shifts by 0, so nothing becomes NaN needlessly)."""
    m = np.max(x, axis=axis, keepdims=True)
    return x - np.where(np.isfinite(m), m, 0)


# --------------------------------------------------------------------------- sum_broadcast
@registered(name="SUM_BROADCAST", code=503)
class SumBroadcast(Op):
    """``S(x)``: ``x.sum(axis, keepdims=True)`` broadcast back to ``x.shape``.

    Linear and symmetric (``S^T = S``), so ``L_op = S(g)`` and ``R_op = S(u)``.
    """
    output_shape_of = 0  # output 0 has the run-time shape of input 0

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis):
        self.axis = tuple(int(a) for a in axis)

    def make_node(self, x):
        x = as_tensor(x)
        if any(a >= x.ndim for a in self.axis):
            raise ValueError(f"sum_broadcast: axes {self.axis} out of range for {x} with {x.ndim} dimensions")
        return Apply(self, [x], [make_output(x.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        s = x.sum(axis=self.axis, keepdims=True, dtype=node.outputs[0].dtype)
        output_storage[0][0] = np.array(np.broadcast_to(s, x.shape))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        return [self(output_grads[0])]

    def R_op(self, inputs, eval_points):
        (u,) = eval_points
        return [None if u is None else self(u)]


# --------------------------------------------------------------------------- softmax, log_softmax
class _Normalized(Op):
    """Shared parts of softmax and log_softmax (one float output shaped like ``x``)."""
    output_shape_of = 0  # output 0 has the run-time shape of input 0

    __props__ = ("axis",)
    kind = "general"

    def __init__(self, axis):
        self.axis = tuple(int(a) for a in axis)

    def make_node(self, x):
        x = as_tensor(x)
        if any(a >= x.ndim for a in self.axis):
            raise ValueError(f"{self.code.lower()}: axes {self.axis} out of range for {x} with {x.ndim} dimensions")
        return Apply(self, [x], [make_output(_float_out(x.dtype), x.type.shape)])

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        x = np.asarray(inputs[0]).astype(dtype)
        if x.size == 0:
            output_storage[0][0] = np.empty(x.shape, dtype=dtype)
            return
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            z = _shift(x, self.axis)
            output_storage[0][0] = np.asarray(self._normalize(z), dtype=dtype)

    def R_op(self, inputs, eval_points):
        (x,), (u,) = inputs, eval_points
        if u is None:
            return [None]
        return [self._tangent(self(x), u.astype(_float_out(x.dtype)))]

    def L_op(self, inputs, outputs, output_grads):
        (x,), (y,), (g,) = inputs, outputs, output_grads
        return [self._cotangent(y, g).astype(_grad_dtype(x))]


@registered(name="SOFTMAX", code=500)
class Softmax(_Normalized):
    """``exp(x - max) / sum(exp(x - max))`` over ``axis``."""

    def _normalize(self, z):
        e = np.exp(z)
        return e / e.sum(axis=self.axis, keepdims=True)

    def _cotangent(self, y, g):  # y * (g - S(g * y))
        return y * (g - SumBroadcast(self.axis)(g * y))

    _tangent = _cotangent  # the Jacobian diag(y) - y y^T is symmetric: same formula, forward in u


@registered(name="LOG_SOFTMAX", code=501)
class LogSoftmax(_Normalized):
    """``(x - max) - log(sum(exp(x - max)))`` over ``axis``."""

    def _normalize(self, z):
        return z - np.log(np.exp(z).sum(axis=self.axis, keepdims=True))

    def _cotangent(self, y, g):  # g - softmax * S(g)
        from tapegrad.ops.elemwise import exp

        return g - exp(y) * SumBroadcast(self.axis)(g)

    def _tangent(self, y, u):  # u - S(softmax * u)
        from tapegrad.ops.elemwise import exp

        return u - SumBroadcast(self.axis)(exp(y) * u)


def softmax(x, axis=-1):
    """Softmax over ``axis`` (int, tuple, or None for all elements), numerically stable.

    ``y = exp(x - m) / sum(exp(x - m), axis)`` with ``m = max(x, axis)``.
    Gradient ``y * (g - sum(g * y, axis))``; tangent ``y * (u - sum(u * y, axis))``.
    """
    x = as_tensor(x)
    return Softmax(_axes(x, axis, "softmax"))(x)


def log_softmax(x, axis=-1):
    """Log of the softmax over ``axis``, numerically stable: ``x - m - log(sum(exp(x - m), axis))``.

    Gradient ``g - softmax(x) * sum(g, axis)``; tangent ``u - sum(softmax(x) * u, axis)``.
    """
    x = as_tensor(x)
    return LogSoftmax(_axes(x, axis, "log_softmax"))(x)


# --------------------------------------------------------------------------- relu
# the derivative rules select (as switch's): an inf or NaN cotangent or tangent where x <= 0 gives 0, not NaN
RELU_SPEC = ScalarSpec("relu", 502, 1, "maximum(x0, 0)", ("x0 > 0",), "same", ((-2.0, 2.0),), "relu'(0) = 0",
                       adjoint=("where(x0 > 0, g, 0)",), tangent=("where(x0 > 0, u, 0)",))


class Relu(Elemwise):
    """``maximum(x, 0)``: an elementwise table row of its own (code RELU) so it shows in tapes.

    ``relu'(x) = 1 if x > 0 else 0`` (so ``relu'(0) = 0``).  The L_op/R_op select the incoming cotangent or
    tangent where ``x > 0`` (the row's ``adjoint``/``tangent``), so an inf or NaN one never leaks where
    ``x <= 0``.
    """

    def __init__(self):
        super().__init__(RELU_SPEC)

    def __reduce__(self):
        return (_relu_op, ())

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.array(np.maximum(inputs[0], 0), dtype=node.outputs[0].dtype)


register("RELU", RELU_SPEC.code, RELU_SPEC)
_RELU = Relu()


def _relu_op():
    return _RELU


def relu(x):
    """Rectified linear unit ``maximum(x, 0)``, elementwise; ``relu'(0) = 0``."""
    return _RELU(x)
