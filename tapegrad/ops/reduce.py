"""Reductions and scans: sum mean prod max min argmax argmin all any logsumexp cumsum cumprod.

NumPy semantics throughout: ``axis`` is None (every axis), an int or a tuple,
negative axes count from the end, ``keepdims`` leaves the reduced axes with
length 1.  ``var``/``std`` are built from :class:`Mean` and elementwise ops.

Op codes (range 200-299)::

    SUM 200  MEAN 201  PROD 202  MAX 203  MIN 204  ARGMAX 205  ARGMIN 206
    ALL 207  ANY 208  LOGSUMEXP 209  CUMSUM 210  CUMPROD 211
    BROADCAST_REDUCED 220 (transpose of SUM/MEAN)  EXTREMUM_MASK 221  RAVEL 222 (axis=None scans)

Derivative conventions
----------------------
* ``max``/``min``: the gradient (and the tangent) goes to the *first*
  occurrence of the extremum, in C order over the reduced axes (the element
  ``argmax``/``argmin`` picks; a NaN counts as the extremum, as in NumPy).
* ``prod``: exact where inputs are zero.  Per reduction group, with ``d_i =
  prod_{j != i} x_j``: no zero -> ``d = prod / x``; one zero -> ``d`` is the
  product of the others at the zero and 0 elsewhere; two or more -> 0.  The
  rule is written so that its own derivative (the Hessian) is exact with up
  to two zeros per group.
* ``cumprod``: derivatives of every order without division, so exact with
  zeros and well conditioned next to them: the gradient is ``P_i S_i``, with
  ``P_i = prod_{j<i} x_j`` and ``S_i = g_i + x_{i+1} S_{i+1}``, a reverse
  linear recurrence (the op ``LinRec``, whose own derivatives are the same
  recurrence again).
* ``logsumexp``: stable (the max is subtracted); the gradient is
  ``exp(x - logsumexp(x))`` (softmax).
* ``std``: ``sqrt'(0) = inf``, so its gradient at constant data is NaN/inf.
* ``argmax argmin all any`` (and integer-valued reductions such as the sum
  of an int array) pass a zero gradient; their R_op is zeros of floatX.
"""

from __future__ import annotations

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, constant, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, make_output, normalize_axis
from tapegrad.registry import registered

__all__ = [
    "sum", "mean", "prod", "max", "min", "argmax", "argmin", "all", "any", "var", "std", "logsumexp",
    "cumsum", "cumprod", "Sum", "Mean", "Prod", "Max", "Min", "Argmax", "Argmin", "All", "Any", "LogSumExp",
    "CumSum", "CumProd", "LinRec", "BroadcastReduced", "ExtremumMask", "Ravel",
]

_builtin_max, _builtin_all, _builtin_any = max, all, any  # the public names below shadow these


# --------------------------------------------------------------------------- helpers
def _vname(x):
    return x.name if x.name is not None else str(x)


def _axes(axis, x, opname):
    """Sorted non-negative axes of ``x``; ValueError naming the op and the variable."""
    if x.ndim == 0 and isinstance(axis, (int, np.integer)) and axis in (0, -1):
        return ()  # NumPy accepts an int axis 0 or -1 for 0-d arrays
    try:
        axes = normalize_axis(axis, x.ndim, opname)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{opname}({_vname(x)}): {str(e).split(': ', 1)[-1]} (shape {_fmt(x.type.shape)})") from None
    return axes if x.ndim else ()


def _axis_prop(axis):
    """``axis`` as an op parameter: None, an int, or a tuple of ints."""
    if axis is None or isinstance(axis, (int, np.integer)):
        return None if axis is None else int(axis)
    return tuple(int(a) for a in axis)


def _fmt(shape):
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _grad_dtype(x):
    return x.dtype if is_float_dtype(x.dtype) else config.floatX


def _zeros(like, dtype):
    """Zeros of ``dtype`` with ``like``'s run-time shape."""
    from tapegrad.ops.broadcast import broadcast_like

    return broadcast_like(constant(np.zeros((), dtype)), like)


def _cast(x, dtype):
    from tapegrad.ops.elemwise import cast

    return cast(x, dtype)


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _group_last(x, axes):
    """View ``x`` as ``(kept..., n)`` with the reduced ``axes`` flattened last (C order)."""
    keep = [i for i in range(x.ndim) if i not in axes]
    xt = np.transpose(x, keep + list(axes))
    return xt.reshape(xt.shape[: len(keep)] + (_count(x.shape, axes),)), keep


class _Reduction(Op):
    """Common parts: props ``axis`` (None, int or tuple, as given) and ``keepdims``; one input."""

    __props__ = ("axis", "keepdims")
    opname = "reduce"

    def __init__(self, axis=None, keepdims=False):
        self.axis = _axis_prop(axis)
        self.keepdims = bool(keepdims)

    def _norm(self, x):
        return _axes(self.axis, x, self.opname)

    def _out_dtype(self, x):
        return x.dtype

    def make_node(self, x):
        x = as_tensor(x)
        axes = self._norm(x)
        self._check_static(x, axes)
        return Apply(self, [x], [make_output(self._out_dtype(x), _reduced_shape(x.type.shape, axes, self.keepdims))])

    def _check_static(self, x, axes):
        pass

    def infer_shape(self, node, input_shapes):
        axes = self._norm(node.inputs[0])
        return [_reduced_shape(tuple(input_shapes[0]), axes, self.keepdims)]

    def _zero_rules(self, inputs):
        """L_op and R_op results for an integer/bool-valued output."""
        (x,) = inputs
        return [_zeros(x, _grad_dtype(x))]

    def _zero_tangent(self, inputs):
        return [_zeros(self(*inputs), config.floatX)]

    def __str__(self):
        return f"{type(self).__name__}{{axis={self.axis}{', keepdims' if self.keepdims else ''}}}"


def _int64_or_float(dtype):
    return dtype if is_float_dtype(dtype) else "int64"


# --------------------------------------------------------------------------- sum / mean (linear)
@registered(name="SUM", code=200)
class Sum(_Reduction):
    """``np.sum(x, axis, dtype, keepdims)``.  Linear; transpose :class:`BroadcastReduced`.

    Output dtype: ``dtype`` when given, else float stays, int/bool -> int64.
    """

    __props__ = ("axis", "keepdims", "dtype")
    kind = "linear"
    opname = "sum"
    mean, ddof = False, 0

    def __init__(self, axis=None, keepdims=False, dtype=None):
        super().__init__(axis, keepdims)
        self.dtype = None if dtype is None else np.dtype(dtype).name

    def _out_dtype(self, x):
        return self.dtype or _int64_or_float(x.dtype)

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        axes = self._norm(node.inputs[0])
        dtype = node.outputs[0].dtype
        out = np.sum(x, axis=axes, dtype=dtype, keepdims=self.keepdims)
        if self.mean:
            n = _builtin_max(_count(np.shape(x), axes) - self.ddof, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.true_divide(out, np.asarray(n, dtype=dtype), dtype=dtype)
        output_storage[0][0] = np.array(out, dtype=dtype)

    def L_op(self, inputs, outputs, output_grads):
        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return self._zero_rules(inputs)
        gx = BroadcastReduced(self.axis, self.keepdims, self.mean, self.ddof)(g, x)
        return [_cast(gx, _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(self._out_dtype(x)):
            return self._zero_tangent(inputs)
        if u is None:
            return [None]
        return [self._same(self._out_dtype(x))(u)]

    def _same(self, dtype):
        return Sum(self.axis, self.keepdims, dtype)


@registered(name="MEAN", code=201)
class Mean(Sum):
    """``sum(x, axis) / max(n - ddof, 0)`` with ``n`` the number of reduced elements.

    ``np.mean`` for ``ddof=0``; ints give float64.  Linear; transpose
    :class:`BroadcastReduced` with the same divisor.
    """

    __props__ = ("axis", "keepdims", "dtype", "ddof")
    opname = "mean"
    mean = True

    def __init__(self, axis=None, keepdims=False, dtype=None, ddof=0):
        super().__init__(axis, keepdims, dtype)
        self.ddof = int(ddof)

    def _out_dtype(self, x):
        return self.dtype or (x.dtype if is_float_dtype(x.dtype) else "float64")

    def _same(self, dtype):
        return Mean(self.axis, self.keepdims, dtype, self.ddof)


@registered(name="BROADCAST_REDUCED", code=220)
class BroadcastReduced(Op):
    """``broadcast_reduced(g, x)``: ``g`` (a reduction's output) with its reduced axes
    re-inserted and broadcast to ``x``'s run-time shape, divided by ``max(n - ddof, 0)``
    when ``mean``.  The transpose of :class:`Sum`/:class:`Mean`; ``x`` is only a shape
    reference (not connected).
    """
    output_shape_of = 1  # output 0 has the run-time shape of input 1

    __props__ = ("axis", "keepdims", "mean", "ddof")
    kind = "linear"

    def __init__(self, axis=None, keepdims=False, mean=False, ddof=0):
        self.axis = _axis_prop(axis)
        self.keepdims, self.mean, self.ddof = bool(keepdims), bool(mean), int(ddof)

    def make_node(self, g, x):
        g, x = as_tensor(g), as_tensor(x)
        axes = _axes(self.axis, x, "broadcast_reduced")
        want = _reduced_shape(x.type.shape, axes, self.keepdims)
        if g.ndim != len(want) or _builtin_any(
            a is not None and b is not None and a != b and a != 1 for a, b in zip(g.type.shape, want)
        ):
            raise ValueError(
                f"broadcast_reduced: {_vname(g)} of shape {_fmt(g.type.shape)} is not the reduction of "
                f"{_vname(x)} of shape {_fmt(x.type.shape)} over axes {axes}"
            )
        return Apply(self, [g, x], [make_output(g.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        g, x = inputs
        axes = _axes(self.axis, node.inputs[1], "broadcast_reduced")
        g = np.asarray(g)
        dtype = node.outputs[0].dtype
        if self.mean:
            n = _builtin_max(_count(np.shape(x), axes) - self.ddof, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                g = np.true_divide(g, np.asarray(n, dtype=dtype), dtype=dtype)
        if not self.keepdims and axes:
            g = np.expand_dims(g, axes)
        output_storage[0][0] = np.array(np.broadcast_to(g, np.shape(x)), dtype=dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1])]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        g, _ = inputs
        (gg,) = output_grads
        t = Mean(self.axis, self.keepdims, g.dtype, self.ddof) if self.mean else Sum(self.axis, self.keepdims, g.dtype)
        return [t(gg), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]

    def __str__(self):
        extra = (", keepdims" if self.keepdims else "") + (f", mean, ddof={self.ddof}" if self.mean else "")
        return f"BroadcastReduced{{axis={self.axis}{extra}}}"


def _expand(g, x, axis, keepdims):
    """The reduction output ``g`` broadcast back to ``x``'s shape."""
    return BroadcastReduced(axis, keepdims)(g, x)


# --------------------------------------------------------------------------- prod
@registered(name="PROD", code=202)
class Prod(_Reduction):
    """``np.prod(x, axis, keepdims)``; int/bool -> int64.  Gradient exact with zeros."""

    opname = "prod"

    def _out_dtype(self, x):
        return _int64_or_float(x.dtype)

    def perform(self, node, inputs, output_storage):
        axes = self._norm(node.inputs[0])
        dtype = node.outputs[0].dtype
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.prod(inputs[0], axis=axes, dtype=dtype, keepdims=self.keepdims)
        output_storage[0][0] = np.array(out, dtype=dtype)

    def _others(self, x):
        """``d_i = prod_{j != i} x_j`` over each reduction group, exact with zeros (see module doc)."""
        from tapegrad.ops.elemwise import azmul, eq, switch, true_div

        z = eq(x, 0)
        nz = Sum(self.axis, True, "int64")(z)
        xp = switch(z, 1, x)  # x with zeros replaced by 1
        q = Prod(self.axis, True)(xp)  # product of the non-zeros
        zs = Sum(self.axis, True)(switch(z, x, 0))  # value 0; derivative 1 at the zeros
        none, one, two = eq(nz, 0), eq(nz, 1), eq(nz, 2)
        at_zero = switch(one, q, switch(two, azmul(zs - x, q), 0))
        q_over = true_div(q, xp)
        elsewhere = switch(none, q_over, switch(one, azmul(zs, q_over), 0))
        return switch(z, at_zero, elsewhere)

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul

        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return self._zero_rules(inputs)
        return [_cast(azmul(_expand(g, x, self.axis, self.keepdims), self._others(x)), _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import azmul

        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(x.dtype):
            return self._zero_tangent(inputs)
        if u is None:
            return [None]
        return [Sum(self.axis, self.keepdims, x.dtype)(azmul(u, self._others(x)))]


# --------------------------------------------------------------------------- max / min
class _Extremum(_Reduction):
    """``np.max``/``np.min``; gradient and tangent at the first occurrence of the extremum."""

    which = "max"

    def _check_static(self, x, axes):
        if _builtin_any(x.type.shape[a] == 0 for a in axes):
            raise ValueError(
                f"{self.opname}({_vname(x)}): zero-size reduction over axes {axes} of shape "
                f"{_fmt(x.type.shape)} has no identity"
            )

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        axes = self._norm(node.inputs[0])
        if _builtin_any(np.shape(x)[a] == 0 for a in axes):
            raise ValueError(
                f"{self.opname}({_vname(node.inputs[0])}): zero-size reduction over axes {axes} of an array of "
                f"shape {np.shape(x)} has no identity"
            )
        f = np.max if self.which == "max" else np.min
        output_storage[0][0] = np.array(f(x, axis=axes, keepdims=self.keepdims), dtype=node.outputs[0].dtype)

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import switch

        (x,), (y,), (g,) = inputs, outputs, output_grads
        if not is_float_dtype(y.dtype):
            return self._zero_rules(inputs)
        mask = ExtremumMask(self.axis, self.which)(x)
        return [_cast(switch(mask, _expand(g, x, self.axis, self.keepdims), 0), _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import switch

        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(x.dtype):
            return self._zero_tangent(inputs)
        if u is None:
            return [None]
        mask = ExtremumMask(self.axis, self.which)(x)
        return [Sum(self.axis, self.keepdims, x.dtype)(switch(mask, u, 0))]


@registered(name="MAX", code=203)
class Max(_Extremum):
    opname, which = "max", "max"


@registered(name="MIN", code=204)
class Min(_Extremum):
    opname, which = "min", "min"


def _first_index(x, axes, which, opname):
    """Index of the first max/min of each group, as ``(kept..., 1)`` over ``_group_last``."""
    xg, keep = _group_last(np.asarray(x), axes)
    if xg.shape[-1] == 0:
        if xg.size == 0 and _builtin_any(n == 0 for n in xg.shape[:-1]):
            return xg, keep, np.zeros(xg.shape[:-1] + (1,), dtype=np.int64)
        raise ValueError(f"{opname}: attempt to get {opname} of an empty sequence (axes {axes})")
    idx = (np.argmax if which == "max" else np.argmin)(xg, axis=-1)
    return xg, keep, idx[..., None]


@registered(name="EXTREMUM_MASK", code=221)
class ExtremumMask(Op):
    """Bool mask of ``x``'s shape: True at the first max (``which="max"``) or min of each
    reduction group, C order over the reduced axes.  Integer-valued: zero gradient.
    """

    __props__ = ("axis", "which")

    def __init__(self, axis=None, which="max"):
        self.axis = _axis_prop(axis)
        self.which = which

    def make_node(self, x):
        x = as_tensor(x)
        _axes(self.axis, x, "extremum_mask")
        return Apply(self, [x], [make_output("bool", x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        axes = _axes(self.axis, node.inputs[0], "extremum_mask")
        if x.ndim == 0:
            output_storage[0][0] = np.ones((), dtype=bool)
            return
        xg, keep, idx = _first_index(x, axes, self.which, f"arg{self.which}")
        m = np.zeros(xg.shape, dtype=bool)
        if m.size:
            np.put_along_axis(m, idx, True, axis=-1)
        order = keep + list(axes)
        m = m.reshape([x.shape[i] for i in order]).transpose(np.argsort(order))
        output_storage[0][0] = np.ascontiguousarray(m)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        return [_zeros(inputs[0], _grad_dtype(inputs[0]))]

    def R_op(self, inputs, eval_points):
        return [_zeros(self(inputs[0]), config.floatX)]


# --------------------------------------------------------------------------- argmax / argmin / all / any
class _IntegerReduction(_Reduction):
    """A reduction with an integer or bool output: zero gradient, zero (floatX) tangent."""

    def L_op(self, inputs, outputs, output_grads):
        return self._zero_rules(inputs)

    def R_op(self, inputs, eval_points):
        return self._zero_tangent(inputs)


class _Arg(_IntegerReduction):
    """Index of the first max/min; with several axes, the index into those axes
    flattened in C order (axis None: into ``x.ravel()``, as NumPy).  int64.
    """

    which = "max"

    def _out_dtype(self, x):
        return "int64"

    def _check_static(self, x, axes):
        if _builtin_any(x.type.shape[a] == 0 for a in axes):
            raise ValueError(
                f"{self.opname}({_vname(x)}): attempt to get {self.opname} of an empty sequence "
                f"(axes {axes} of shape {_fmt(x.type.shape)})"
            )

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        axes = self._norm(node.inputs[0])
        out_shape = _reduced_shape(x.shape, axes, self.keepdims)
        if x.ndim == 0:
            output_storage[0][0] = np.zeros(out_shape, dtype=np.int64)
            return
        try:
            _, _, idx = _first_index(x, axes, self.which, self.opname)
        except ValueError:
            raise ValueError(
                f"{self.opname}({_vname(node.inputs[0])}): attempt to get {self.opname} of an empty sequence "
                f"(axes {axes} of an array of shape {x.shape})"
            ) from None
        output_storage[0][0] = np.array(idx.reshape(out_shape), dtype=np.int64)


@registered(name="ARGMAX", code=205)
class Argmax(_Arg):
    opname, which = "argmax", "max"


@registered(name="ARGMIN", code=206)
class Argmin(_Arg):
    opname, which = "argmin", "min"


class _Logical(_IntegerReduction):
    def _out_dtype(self, x):
        return "bool"

    def perform(self, node, inputs, output_storage):
        axes = self._norm(node.inputs[0])
        f = np.all if self.opname == "all" else np.any
        output_storage[0][0] = np.array(f(inputs[0], axis=axes, keepdims=self.keepdims), dtype=bool)


@registered(name="ALL", code=207)
class All(_Logical):
    opname = "all"


@registered(name="ANY", code=208)
class Any(_Logical):
    opname = "any"


# --------------------------------------------------------------------------- logsumexp
@registered(name="LOGSUMEXP", code=209)
class LogSumExp(_Reduction):
    """``log(sum(exp(x), axis))``, computed as ``m + log(sum(exp(x - m)))`` with ``m`` the
    (finite) max.  Ints give float64.  Gradient ``exp(x - y)`` (softmax).
    """

    opname = "logsumexp"

    def _out_dtype(self, x):
        return x.dtype if is_float_dtype(x.dtype) else "float64"

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        x = np.asarray(inputs[0], dtype=dtype)
        axes = self._norm(node.inputs[0])
        with np.errstate(all="ignore"):
            m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
            m = np.where(np.isfinite(m), m, np.zeros((), dtype))
            s = np.sum(np.exp(x - m), axis=axes, keepdims=True)
            out = np.log(s) + m
        if not self.keepdims:
            out = np.squeeze(out, axis=axes)
        output_storage[0][0] = np.array(out, dtype=dtype)

    def _softmax(self, x, y):
        from tapegrad.ops.elemwise import exp

        return exp(_cast(x, y.dtype) - _expand(y, x, self.axis, self.keepdims))

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul

        (x,), (y,), (g,) = inputs, outputs, output_grads
        return [_cast(azmul(_expand(g, x, self.axis, self.keepdims), self._softmax(x, y)), _grad_dtype(x))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.elemwise import azmul

        (x,), (u,) = inputs, eval_points
        if u is None:
            return [None]
        y = self(x)
        return [Sum(self.axis, self.keepdims, y.dtype)(azmul(u, self._softmax(x, y)))]


# --------------------------------------------------------------------------- public functions
def _aesara_dtype(name, value):
    """Check an Aesara accumulator-dtype keyword (``acc_dtype``): a dtype tapegrad has, or None."""
    if value is not None and np.dtype(value).name not in ("float64", "float32", "int64", "int32", "bool"):
        raise TypeError(f"{name}: unsupported dtype {value!r}")


def sum(x, axis=None, keepdims=False, dtype=None, *, acc_dtype=None):  # noqa: A001
    """Sum over ``axis`` (None, int or tuple): ``np.sum(x, axis, dtype, keepdims)``.

    Int/bool inputs give int64 unless ``dtype`` is given.  Gradient: ``g``
    broadcast back over the reduced axes.  ``acc_dtype`` (Aesara's keyword) is accepted: the compiled
    programs already accumulate float32 sums in float64.
    """
    _aesara_dtype("sum: acc_dtype", acc_dtype)
    return Sum(axis, keepdims, dtype)(as_tensor(x))


def mean(x, axis=None, keepdims=False, dtype=None):
    """Arithmetic mean ``sum(x, axis) / n``; ints give float64 (``np.mean``)."""
    return Mean(axis, keepdims, dtype)(as_tensor(x))


def prod(x, axis=None, keepdims=False, *, no_zeros_in_input=False, acc_dtype=None):
    """Product over ``axis``: ``np.prod``.  Gradient exact where ``x`` has zeros (Aesara's
    ``no_zeros_in_input`` hint is accepted and not needed; ``acc_dtype`` as for :func:`sum`)."""
    _aesara_dtype("prod: acc_dtype", acc_dtype)
    return Prod(axis, keepdims)(as_tensor(x))


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``.  The gradient goes to the first maximum (C order over the axes)."""
    return Max(axis, keepdims)(as_tensor(x))


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over ``axis``.  The gradient goes to the first minimum (C order over the axes)."""
    return Min(axis, keepdims)(as_tensor(x))


def argmax(x, axis=None, keepdims=False):
    """Index of the first maximum (int64).  A tuple ``axis`` indexes those axes flattened in C order."""
    return Argmax(axis, keepdims)(as_tensor(x))


def argmin(x, axis=None, keepdims=False):
    """Index of the first minimum (int64).  A tuple ``axis`` indexes those axes flattened in C order."""
    return Argmin(axis, keepdims)(as_tensor(x))


def all(x, axis=None, keepdims=False):  # noqa: A001
    """Logical AND over ``axis`` (bool)."""
    return All(axis, keepdims)(as_tensor(x))


def any(x, axis=None, keepdims=False):  # noqa: A001
    """Logical OR over ``axis`` (bool)."""
    return Any(axis, keepdims)(as_tensor(x))


def var(x, axis=None, keepdims=False, ddof=0, *, corrected=False):
    """Variance ``sum((x - mean(x))**2) / (n - ddof)`` over ``axis`` (``np.var``); ints give float64.
    Always the two-pass form (mean first), so Aesara's ``corrected=True`` gives the same value."""
    from tapegrad.ops.elemwise import sqr

    x = as_tensor(x)
    _axes(axis, x, "var")
    dtype = x.dtype if is_float_dtype(x.dtype) else "float64"
    xf = _cast(x, dtype)
    centred = xf - Mean(axis, True)(xf)
    return Mean(axis, keepdims, dtype, ddof)(sqr(centred))


def std(x, axis=None, keepdims=False, ddof=0, *, corrected=False):
    """Standard deviation ``sqrt(var(x, axis, ddof))`` (``np.std``; ``corrected`` as for :func:`var`)."""
    from tapegrad.ops.elemwise import sqrt

    return sqrt(var(x, axis=axis, keepdims=keepdims, ddof=ddof, corrected=corrected))


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x), axis))`` computed stably; gradient ``softmax(x)`` over the axes."""
    return LogSumExp(axis, keepdims)(as_tensor(x))


# the cumulative scans live in tapegrad/ops/cumulative.py; imported last so the registration order is unchanged
from tapegrad.ops.cumulative import (  # noqa: E402,F401
    CumProd, CumSum, LinRec, Ravel, _ravel, _scan_input, cumprod, cumsum)
