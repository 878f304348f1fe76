"""Gradient modifiers: identity in the forward pass, special in derivatives.

===================  ======  ===============================  =====================
op                   code    L_op (cotangent g)               R_op (tangent u)
===================  ======  ===============================  =====================
zero_grad            550     zeros                            zeros
disconnected_grad    551     disconnected                     disconnected (None)
consider_constant    552     zeros (deprecated alias)         zeros
grad_clip            553     clip(g, lower, upper)            u
grad_scale           554     g * multiplier                   u * multiplier
undefined_grad       555     NullType (undefined)             disconnected (None)
===================  ======  ===============================  =====================

The tape rewrites drop these ops from forward code (they are copies there).
"""

from __future__ import annotations

import warnings

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, grad_undefined, make_output
from tapegrad.registry import registered

__all__ = ["zero_grad", "disconnected_grad", "consider_constant", "grad_clip", "grad_scale", "undefined_grad"]


class _ViewOp(Op):
    """Identity in the forward pass."""

    kind = "general"

    def make_node(self, x):
        x = as_tensor(x)
        return Apply(self, [x], [make_output(x.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.array(inputs[0], copy=True)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]


def _zeros(x):
    from tapegrad.ops import zeros_like

    return zeros_like(x, dtype=x.dtype if is_float_dtype(x.dtype) else config.floatX)


@registered(name="ZERO_GRAD", code=550)
class ZeroGrad(_ViewOp):
    def L_op(self, inputs, outputs, output_grads):
        return [_zeros(inputs[0])]

    def R_op(self, inputs, eval_points):
        return [None if eval_points[0] is None else _zeros(eval_points[0])]


@registered(name="DISCONNECTED_GRAD", code=551)
class DisconnectedGrad(_ViewOp):
    def connection_pattern(self, node):
        return [[False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type()]

    def R_op(self, inputs, eval_points):
        return [None]


@registered(name="CONSIDER_CONSTANT", code=552)
class ConsiderConstant(ZeroGrad):
    pass


@registered(name="GRAD_CLIP", code=553)
class GradClip(_ViewOp):
    __props__ = ("lower", "upper")

    def __init__(self, lower, upper):
        if not float(lower) <= float(upper):
            raise ValueError(f"grad_clip: lower bound {lower} is above upper bound {upper}")
        self.lower, self.upper = float(lower), float(upper)

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops import clip

        return [clip(output_grads[0], self.lower, self.upper)]

    def R_op(self, inputs, eval_points):
        return [eval_points[0]]


@registered(name="GRAD_SCALE", code=554)
class GradScale(_ViewOp):
    __props__ = ("multiplier",)

    def __init__(self, multiplier):
        self.multiplier = float(multiplier)

    def L_op(self, inputs, outputs, output_grads):
        return [output_grads[0] * self.multiplier]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else u * self.multiplier]


@registered(name="UNDEFINED_GRAD", code=555)
class UndefinedGrad(_ViewOp):
    def L_op(self, inputs, outputs, output_grads):
        return [grad_undefined(self, 0, inputs[0], "(undefined_grad was applied to it)")]

    def R_op(self, inputs, eval_points):
        # As Aesara's UndefinedGrad.R_op: no tangent flows through (Rop reports the output as disconnected)
        return [None]


def zero_grad(x):
    """``x`` unchanged; its gradient is truncated to 0 (zeros are propagated)."""
    return ZeroGrad()(x)


def disconnected_grad(x):
    """``x`` unchanged; gradients do not flow through it (disconnected, cheaper than zero_grad)."""
    return DisconnectedGrad()(x)


def consider_constant(x):
    """Deprecated alias acting like :func:`zero_grad` (emits a ``DeprecationWarning``, as Aesara)."""
    warnings.warn(
        "`consider_constant` is deprecated; use `zero_grad` or `disconnected_grad` instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return ConsiderConstant()(x)


def grad_clip(x, lower_bound, upper_bound):
    """``x`` unchanged; the gradient flowing through it is clipped to ``[lower_bound, upper_bound]``."""
    return GradClip(lower_bound, upper_bound)(x)


def grad_scale(x, multiplier):
    """``x`` unchanged; the gradient flowing through it is multiplied by ``multiplier``."""
    return GradScale(multiplier)(x)


def undefined_grad(x):
    """``x`` unchanged; taking a gradient through it gives a NullType (undefined) gradient."""
    return UndefinedGrad()(x)
