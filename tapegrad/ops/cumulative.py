"""Cumulative scans: cumsum cumprod, and the ravel op their ``axis=None`` forms use.

Split out of :mod:`tapegrad.ops.reduce` (which re-exports every name here);
the op codes are in that family's range::

    CUMSUM 210  CUMPROD 211  LINREC 212 (cumprod's derivatives)  RAVEL 222 (axis=None scans)

See :mod:`tapegrad.ops.reduce` for the derivative conventions (``cumprod``'s
derivatives of every order are exact with zeros).
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

__all__ = ["cumsum", "cumprod", "CumSum", "CumProd", "LinRec", "Ravel"]


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
    """``np.cumprod(x, axis)``; int/bool -> int64.  Derivatives of every order are written with
    :class:`LinRec` and products, without division: exact with zeros (see the module doc)."""

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

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul

        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return [_zeros(x, _grad_dtype(x))]
        # gx_i = P_i S_i: P_i = prod_{j<i} x_j (the cumprod shifted by one), S_i = sum_{k>=i} g_k prod_{i<j<=k} x_j,
        # the reverse recurrence S_i = g_i + x_{i+1} S_{i+1}.  No division, so exact with zeros, and the rule's own
        # derivatives (Hessians) are well conditioned next to them.
        s = LinRec(self.axis, reverse=True)(x, _cast(g, y.dtype))
        return [_cast(azmul(s, _shift(y, self.axis, 1.0)), _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import azmul

        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(x.dtype):
            return [_zeros(self(x), config.floatX)]
        if u is None:
            return [None]
        # dy_k = u_k P_k + x_k dy_{k-1}: the forward recurrence
        y = self(x)
        return [LinRec(self.axis)(x, azmul(_cast(u, y.dtype), _shift(y, self.axis, 1.0)))]


def _shift(y, axis, fill, back=False):
    """``y`` moved one step along ``axis``: ``out_i = y_{i-1}`` and ``out_0 = fill`` (0 or 1), or with ``back``
    ``out_i = y_{i+1}`` and the last ``= fill``; a slice and a join."""
    from tapegrad.ops.alloc import ones_like, zeros_like
    from tapegrad.ops.shape import concatenate

    ax = axis % y.ndim
    head = tuple(slice(None) for _ in range(ax))
    edge = (ones_like if fill else zeros_like)(y[head + (slice(0, 1),)])
    if back:
        return concatenate([y[head + (slice(1, None),)], edge], ax)
    return concatenate([edge, y[head + (slice(None, -1),)]], ax)


_LINREC_KERNEL = []


def _linrec_kernel():
    """The numba loop of :class:`LinRec`'s ``perform`` (compiled once, cached on disk)."""
    if not _LINREC_KERNEL:
        from numba import njit

        @njit(cache=True, error_model="numpy", nogil=True)
        def linrec(a, b, out, reverse):
            # a, b, out: (outer, n, inner) arrays of one float dtype
            n = a.shape[1]
            for o in range(a.shape[0]):
                for t in range(n):
                    i = n - 1 - t if reverse else t
                    if t == 0:
                        for r in range(a.shape[2]):
                            out[o, i, r] = b[o, i, r]
                        continue
                    j = i + 1 if reverse else i - 1  # the neighbour the state comes from
                    c = i + 1 if reverse else i  # the index of its coefficient
                    for r in range(a.shape[2]):
                        s = out[o, j, r]
                        out[o, i, r] = b[o, i, r] + (s - s if s == 0 else s * a[o, c, r])
            return out

        _LINREC_KERNEL.append(linrec)
    return _LINREC_KERNEL[0]


@registered(name="LINREC", code=212)
class LinRec(Op):
    """The first-order linear recurrence along ``axis`` with coefficients ``a`` and inputs ``b`` (one shape):

    * forward: ``s_i = b_i + a_i * s_{i-1}`` (``s_0 = b_0``);
    * ``reverse``: ``s_i = b_i + a_{i+1} * s_{i+1}`` (``s_{n-1} = b_{n-1}``), the transpose of the forward form.

    ``a_0`` is never read.  The state's product is an absolute-zero multiply (a zero state stays zero times an
    infinite coefficient), as in the adjoint sweeps.  ``cumprod``'s derivatives are written with it, so that
    they need no division; its own derivatives are the same recurrence again:

    * forward, ``R_op``: ``ds = rec(a, db + da * s_prev)``; ``L_op``: ``t = rec_reverse(a, g)``, ``gb = t``,
      ``ga = t * s_prev``;
    * reverse, ``R_op``: ``ds = rec_reverse(a, db + (da * s)_next)``; ``L_op``: ``t = rec(a, g)``, ``gb = t``,
      ``ga = t_prev * s``.
    """

    __props__ = ("axis", "reverse")

    def __init__(self, axis=0, reverse=False):
        self.axis, self.reverse = int(axis), bool(reverse)

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        if a.ndim == 0 or a.ndim != b.ndim:
            raise ValueError(f"linrec({_vname(a)}, {_vname(b)}): coefficients and inputs need one rank of at least 1")
        _axes(self.axis, a, "linrec")
        dt = np.result_type(a.dtype, b.dtype).name
        if not is_float_dtype(dt):
            dt = config.floatX
        shape = tuple(p if p is not None else q for p, q in zip(a.type.shape, b.type.shape))
        return Apply(self, [_cast(a, dt), _cast(b, dt)], [make_output(dt, shape)])

    def perform(self, node, inputs, output_storage):
        dt = node.outputs[0].dtype
        a, b = (np.asarray(v, dtype=dt) for v in inputs)
        if a.shape != b.shape:
            raise ValueError(f"linrec: coefficients of shape {a.shape} and inputs of shape {b.shape} differ")
        ax = self.axis % a.ndim
        lead = (int(np.prod(a.shape[:ax], dtype=np.int64)), a.shape[ax], int(np.prod(a.shape[ax + 1:], dtype=np.int64)))
        out = np.empty(a.shape, dt)
        if out.size:
            _linrec_kernel()(np.ascontiguousarray(a).reshape(lead), np.ascontiguousarray(b).reshape(lead),
                             out.reshape(lead), self.reverse)
        output_storage[0][0] = out

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1])]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul

        (a, _), (s,), (g,) = inputs, outputs, output_grads
        t = LinRec(self.axis, not self.reverse)(a, g)
        if self.reverse:
            ga = azmul(_shift(t, self.axis, 0.0), s)
        else:
            ga = azmul(t, _shift(s, self.axis, 0.0))
        return [ga, t]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import azmul

        (a, b), (da, db) = inputs, eval_points
        if da is None and db is None:
            return [None]
        s = self(a, b)
        extra = None
        if da is not None:
            extra = (_shift(azmul(da, s), self.axis, 0.0, back=True) if self.reverse
                     else azmul(da, _shift(s, self.axis, 0.0)))
        rhs = extra if db is None else (db if extra is None else db + extra)
        return [self(a, rhs)]

    def __str__(self):
        return f"LinRec{{axis={self.axis}{', reverse' if self.reverse else ''}}}"


# --------------------------------------------------------------------------- public functions
def cumsum(x, axis=None):
    """Cumulative sum along ``axis`` (None: of ``x`` flattened), as ``np.cumsum``."""
    x, ax = _scan_input(x, axis, "cumsum")
    return CumSum(ax)(x)


def cumprod(x, axis=None):
    """Cumulative product along ``axis`` (None: of ``x`` flattened), as ``np.cumprod``."""
    x, ax = _scan_input(x, axis, "cumprod")
    return CumProd(ax)(x)
