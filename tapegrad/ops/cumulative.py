"""Cumulative scans: cumsum cumprod, and the ravel op their ``axis=None`` forms use.

Split out of :mod:`tapegrad.ops.reduce` (which re-exports every name here);
the op codes are in that family's range::

    CUMSUM 210  CUMPROD 211  RAVEL 222 (axis=None scans)

See :mod:`tapegrad.ops.reduce` for the derivative conventions (``cumprod`` is
exact with zeros for first derivatives).
"""

from __future__ import annotations

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, make_output
from tapegrad.ops.reduce import (
    _axes,
    _builtin_all,
    _cast,
    _count,
    _grad_dtype,
    _int64_or_float,
    _vname,
    _zeros,
)
from tapegrad.registry import registered

__all__ = ["cumsum", "cumprod", "CumSum", "CumProd", "Ravel"]


# --------------------------------------------------------------------------- cumsum / cumprod
@registered(name="RAVEL", code=222)
class Ravel(Op):
    """``ravel(x)``: ``x`` flattened in C order; ``ravel(g, like)``: the vector ``g`` reshaped to
    ``like``'s run-time shape (the transpose; ``like`` is not connected).  Used by the
    ``axis=None`` scans."""

    kind = "linear"

    def make_node(self, x, like=None):
        x = as_tensor(x)
        if like is None:
            known = _builtin_all(s is not None for s in x.type.shape)
            return Apply(self, [x], [make_output(x.dtype, (_count(x.type.shape, range(x.ndim)) if known else None,))])
        like = as_tensor(like)
        if x.ndim != 1:
            raise ValueError(f"ravel: {_vname(x)} must be a vector to take the shape of {_vname(like)}")
        return Apply(self, [x, like], [make_output(x.dtype, like.type.shape)])

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        shape = (x.size,) if len(inputs) == 1 else np.shape(inputs[1])
        output_storage[0][0] = np.array(x.reshape(shape), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        if len(input_shapes) == 2:
            return [tuple(input_shapes[1])]
        return [(_count(input_shapes[0], range(len(input_shapes[0]))),)]

    def connection_pattern(self, node):
        return [[True], [False]][: len(node.inputs)]

    def L_op(self, inputs, outputs, output_grads):
        (g,) = output_grads
        if len(inputs) == 1:
            return [self(g, inputs[0])]
        return [self(g), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, *inputs[1:])]


_ravel = Ravel()


def _scan_input(x, axis, opname):
    """``(x, axis)`` for a scan: axis None (or a 0-d ``x``) scans ``ravel(x)`` along 0."""
    x = as_tensor(x)
    if axis is None or x.ndim == 0:
        if axis is not None:
            _axes(axis, x, opname)
        return _ravel(x), 0
    return x, _axes(int(axis), x, opname)[0]


@registered(name="CUMSUM", code=210)
class CumSum(Op):
    """``np.cumsum(x, axis)``; ``reverse``: the sums from the end, ``flip(cumsum(flip(x)))``,
    which is the transpose.  Int/bool -> int64."""

    __props__ = ("axis", "reverse")
    kind = "linear"

    def __init__(self, axis=0, reverse=False):
        self.axis, self.reverse = int(axis), bool(reverse)

    def make_node(self, x):
        x = as_tensor(x)
        if x.ndim == 0:
            raise ValueError(f"cumsum({_vname(x)}): the scan op needs at least one dimension (use tg.cumsum)")
        _axes(self.axis, x, "cumsum")
        return Apply(self, [x], [make_output(_int64_or_float(x.dtype), x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x, dtype, axis = np.asarray(inputs[0]), node.outputs[0].dtype, self.axis % inputs[0].ndim
        if self.reverse:
            out = np.flip(np.cumsum(np.flip(x, axis), axis=axis, dtype=dtype), axis)
        else:
            out = np.cumsum(x, axis=axis, dtype=dtype)
        output_storage[0][0] = np.array(out, dtype=dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return [_zeros(x, _grad_dtype(x))]
        return [_cast(CumSum(self.axis, not self.reverse)(g), _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(_int64_or_float(x.dtype)):
            return [_zeros(self(x), config.floatX)]
        return [None if u is None else self(u)]

    def __str__(self):
        return f"CumSum{{axis={self.axis}{', reverse' if self.reverse else ''}}}"


@registered(name="CUMPROD", code=211)
class CumProd(Op):
    """``np.cumprod(x, axis)``; int/bool -> int64.  First derivatives exact with zeros
    (see the module doc); second derivatives exact where ``x`` has no zero."""

    __props__ = ("axis",)

    def __init__(self, axis=0):
        self.axis = int(axis)

    def make_node(self, x):
        x = as_tensor(x)
        if x.ndim == 0:
            raise ValueError(f"cumprod({_vname(x)}): the scan op needs at least one dimension (use tg.cumprod)")
        _axes(self.axis, x, "cumprod")
        return Apply(self, [x], [make_output(_int64_or_float(x.dtype), x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x, dtype = np.asarray(inputs[0]), node.outputs[0].dtype
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.cumprod(x, axis=self.axis % x.ndim, dtype=dtype)
        output_storage[0][0] = np.array(out, dtype=dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def _parts(self, x):
        """``before``: no zero at or before i along the axis; ``first``: i is the first zero;
        ``xp``: x with its zeros replaced by 1; ``yt``: the cumprod with the first zero replaced by 1."""
        from tapegrad.ops.elemwise import eq, logical_and, switch

        z = eq(x, 0)
        c = CumSum(self.axis)(z)
        before, first = eq(c, 0), logical_and(z, eq(c, 1))
        return before, first, switch(z, 1, x), CumProd(self.axis)(switch(first, 1, x))

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul, switch, true_div

        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return [_zeros(x, _grad_dtype(x))]
        before, first, xp, yt = self._parts(x)
        rev = CumSum(self.axis, True)
        # i < f: sum_{k>=i} g_k y_k / x_i;  i == f: sum_{k>=f} g_k yt_k;  i > f: 0
        gx = switch(before, true_div(rev(azmul(g, y)), xp), switch(first, rev(azmul(g, yt)), 0))
        return [_cast(gx, _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import azmul, switch, true_div

        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(x.dtype):
            return [_zeros(self(x), config.floatX)]
        if u is None:
            return [None]
        before, first, xp, yt = self._parts(x)
        fwd = CumSum(self.axis)
        # y_k * sum_{i<=k, i<f} u_i / x_i  +  yt_k * u_f [f <= k]
        return [azmul(fwd(switch(before, true_div(u, xp), 0)), self(x)) + azmul(fwd(switch(first, u, 0)), yt)]


# --------------------------------------------------------------------------- public functions
def cumsum(x, axis=None):
    """Cumulative sum along ``axis`` (None: of ``x`` flattened), as ``np.cumsum``."""
    x, ax = _scan_input(x, axis, "cumsum")
    return CumSum(ax)(x)


def cumprod(x, axis=None):
    """Cumulative product along ``axis`` (None: of ``x`` flattened), as ``np.cumprod``."""
    x, ax = _scan_input(x, axis, "cumprod")
    return CumProd(ax)(x)
