"""Spec rows of the elementwise family (``tapegrad/ops/elemwise.py``, ``ops/broadcast.py``).

Every row of ``ELEMWISE`` gets rows built from its own table entry (its
``domain`` per input), on a plain shape, on size-1 and size-0 broadcasting,
on rank-mismatched broadcasting and on 0-d inputs; plus ``CAST``,
``SUM_LIKE`` and ``BROADCAST_LIKE``.
"""

from __future__ import annotations

import numpy as np

import tapegrad.ops as T
from tapegrad.ops.broadcast import broadcast_like, sum_like, sum_to_shape
from tapegrad.ops.elemwise import ELEMWISE, NUMPY_NAMESPACE

from tests.ops.rows import Row

_NUMPY = {s.name: eval(f"lambda {', '.join(f'x{i}' for i in range(s.nin))}: {s.expr}", dict(NUMPY_NAMESPACE))
          for s in ELEMWISE}  # noqa: S307 - the table's own expressions, evaluated by NumPy


def _ref(name):
    f = _NUMPY[name]

    def ref(*xs):
        with np.errstate(all="ignore"):
            return np.asarray(f(*xs))

    return ref


def _op(name):
    return getattr(T, name)


def _with_zeros(low, high):
    """Floats in ``[low, high)`` with about a third exact zeros (for logical ops)."""

    def draw(rng, shape, dtype):
        v = rng.uniform(low, high, size=shape)
        v[rng.random(shape) < 0.35] = 0.0
        return v.astype(dtype)

    return draw


# Which non-differentiable entries pass no gradient (value only, grad == 0).
_NONDIFF = {s.name for s in ELEMWISE if not s.differentiable}
# Entries whose derivative rule is not implemented (grad is a NullType): value only.
_NO_RULE = {s.name for s in ELEMWISE if "NotImplemented" in s.partials}
_LOGICAL = {"logical_not", "logical_and", "logical_or"}

UNARY_SHAPES = [
    ("", ((2, 3),)),
    ("scalar", ((),)),
    ("size0", ((0, 3),)),
]
BINARY_SHAPES = [
    ("", ((2, 3), (2, 3)), None),
    ("bcast1", ((3, 1), (1, 4)), None),  # unknown lengths that turn out 1 at run time
    ("bcast1_static", ((3, 1), (1, 4)), ((None, 1), (1, None))),
    ("rank", ((2, 3, 2), (2,)), None),
    ("scalar", ((), (2, 3)), None),
    ("size0", ((0, 3), (1, 3)), None),
]
TERNARY_SHAPES = [
    ("", ((2, 3), (2, 3), (2, 3)), None),
    ("bcast", ((2, 1), (1, 3), ()), None),
    ("size0", ((0, 3), (1, 3), (3,)), None),
]


def _rows_for(spec):
    rows = []
    code = spec.name.upper()
    domain = spec.domain
    if spec.name in _LOGICAL:
        domain = tuple(_with_zeros(*d) for d in domain)
    kwargs = {}
    if spec.name in _NONDIFF:
        kwargs["differentiable"] = False
    if spec.name in _NO_RULE:
        kwargs["wrt"] = ()  # no derivative rule: value only (its grad is a NullType)
    if spec.nin == 1:
        table = [(sfx, shapes, None) for sfx, shapes in UNARY_SHAPES]
    elif spec.nin == 2:
        table = BINARY_SHAPES
    else:
        table = TERNARY_SHAPES
    for sfx, shapes, static in table:
        build = _op(spec.name)
        ref = _ref(spec.name)
        row_domain = domain
        also = ()
        if spec.name == "switch":  # a computed bool condition (a float condition is almost never 0)
            def build(c, a, b):
                return T.switch(c > 0, a, b)

            def ref(c, a, b):
                return np.where(c > 0, a, b)

            also = ("GT",)
        rows.append(
            Row(
                code=code,
                build=build,
                shapes=shapes,
                reference=ref,
                domain=row_domain,
                static=static,
                id=f"{spec.name}" + (f"-{sfx}" if sfx else ""),
                also=also,
                **kwargs,
            )
        )
    return rows


def _other(dtype):
    return "float32" if dtype == "float64" else "float64"


ROWS = [row for spec in ELEMWISE for row in _rows_for(spec)]

ROWS += [
    # pow with a constant integer exponent on a negative base (x1 is not differentiated)
    Row("POW", lambda x: x**3, ((2, 3),), lambda x: x**3, ((-2.0, 2.0),), id="pow-int-exponent"),
    Row("POW", lambda x: T.pow(x, 0.5), ((2, 3),), lambda x: np.power(x, x.dtype.type(0.5)), ((0.2, 3.0),),
        id="pow-float-exponent"),
    # fan-out: the same input twice
    Row("MUL", lambda x: x * x, ((2, 3),), lambda x: x * x, id="mul-fanout"),
    Row("SUB", lambda x: x - T.exp(x), ((2, 3),), lambda x: x - np.exp(x), id="sub-fanout", also=("EXP",)),
    # a Python scalar does not upcast float32 (NumPy 2 weak scalars)
    Row("MUL", lambda x: 2.5 * x, ((4,),), lambda x: x.dtype.type(2.5) * x, id="mul-weak-scalar"),
    Row("TRUE_DIV", lambda x: 1.0 / x, ((4,),), lambda x: x.dtype.type(1.0) / x, ((0.2, 3.0),),
        id="true_div-weak-scalar"),
    # mixed-dtype promotion: float32 (op) float64 -> float64
    Row("ADD", lambda a, b: a + T.cast(b, "float64"), ((2, 3), (3,)),
        lambda a, b: a.astype("float64") + b.astype("float64"), id="add-promote", also=("CAST",)),
    # CAST: between float dtypes (differentiable), to int (no gradient), from int
    Row("CAST", lambda x: T.cast(x, _other(x.dtype)), ((2, 3),), lambda x: x.astype(_other(x.dtype.name)),
        id="cast-float"),
    Row("CAST", lambda x: T.cast(x, _other(x.dtype)), ((0, 2),), lambda x: x.astype(_other(x.dtype.name)),
        id="cast-float-size0"),
    Row("CAST", lambda x: T.cast(x, "int64"), ((2, 3),), lambda x: x.astype("int64"), id="cast-int",
        differentiable=False),
    Row("CAST", lambda x: T.cast(x, "bool"), ((2, 3),), lambda x: x.astype("bool"),
        domain=(_with_zeros(-2.0, 2.0),), id="cast-bool", differentiable=False),
    Row("CAST", lambda i, x: T.cast(i, x.dtype) * x, ((2, 3), (2, 3)),
        lambda i, x: i.astype(x.dtype) * x, domain=((-3, 4), (-2.0, 2.0)), int_inputs=(0,), id="cast-from-int",
        also=("MUL",)),
    # the two broadcasting helpers: the second input is a shape reference (not differentiated)
    Row("SUM_LIKE", sum_like, ((3, 4), (1, 4)), lambda g, x: sum_to_shape(g, x.shape), wrt=(0,), id="sum_like"),
    Row("SUM_LIKE", sum_like, ((2, 3, 4), (3, 1)), lambda g, x: sum_to_shape(g, x.shape), wrt=(0,),
        id="sum_like-rank"),
    Row("SUM_LIKE", sum_like, ((2, 3), ()), lambda g, x: sum_to_shape(g, x.shape), wrt=(0,), id="sum_like-scalar"),
    Row("SUM_LIKE", sum_like, ((3, 0), (1, 0)), lambda g, x: sum_to_shape(g, x.shape), wrt=(0,),
        id="sum_like-size0"),
    Row("SUM_LIKE", sum_like, ((0, 3), (1, 3)), lambda g, x: sum_to_shape(g, x.shape), wrt=(0,),
        id="sum_like-size0-summed"),
    Row("BROADCAST_LIKE", broadcast_like, ((1, 4), (3, 4)), lambda x, r: np.broadcast_to(x, r.shape).copy(),
        wrt=(0,), id="broadcast_like"),
    Row("BROADCAST_LIKE", broadcast_like, ((3, 1), (2, 3, 4)),
        lambda x, r: np.broadcast_to(x, np.broadcast_shapes(x.shape, r.shape)).copy(), wrt=(0,),
        id="broadcast_like-rank"),
    Row("BROADCAST_LIKE", broadcast_like, ((), (2, 3)), lambda x, r: np.broadcast_to(x, r.shape).copy(), wrt=(0,),
        id="broadcast_like-scalar"),
    Row("BROADCAST_LIKE", broadcast_like, ((1, 3), (0, 3)), lambda x, r: np.broadcast_to(x, r.shape).copy(),
        wrt=(0,), id="broadcast_like-size0"),
]
