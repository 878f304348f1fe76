"""Hypothesis strategies for property tests of tapegrad graphs.

``arrays_in_domain(dtype, shape, low, high)``
    finite float arrays with every element in ``[low, high]``.
``random_graphs(...)``
    a random DAG of registered ops over a few inputs, with broadcasting and
    fan-out, drawn with its input values: ``(inputs, output, values)``.

Every elementwise entry of :data:`tapegrad.ops.elemwise.ELEMWISE` may appear
(by default only the smooth ones, so finite differences apply), plus
``sum``/``mean`` over an axis and ``dot`` when those ops exist.  Each operand
is mapped into its op's test ``domain`` (e.g. positive for ``log``): when the
operand's values already lie inside the domain it is used as is, otherwise it
is squashed smoothly, ``lo + (hi - lo) * sigmoid(z)``.  So every subexpression
is finite and differentiable at the drawn values.

Example
-------
>>> from hypothesis import given
>>> from tapegrad.testing.strategies import random_graphs
>>> @given(random_graphs())
... def test_grad(case):
...     inputs, output, values = case
...     check_grads(lambda *xs: ..., values)   # or build functions from `output`
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["arrays_in_domain", "random_graphs", "GraphCase", "SMOOTH_OPS", "KINKED_OPS"]

# Elementwise entries with a derivative wherever the squashed operands can land,
# up to second order (HVP): excluded are kinks/jumps and missing second rules.
_NOT_SMOOTH = {
    "abs", "sign", "floor", "ceil", "round", "logical_not", "int_div", "mod", "maximum", "minimum", "clip",
    "switch", "hypot", "eq", "neq", "lt", "le", "gt", "ge", "logical_and", "logical_or",
}
_NO_SECOND_RULE = {"psi", "trigamma"}  # d(psi) needs trigamma, whose derivative is not implemented
_KINKED = {"abs", "maximum", "minimum", "clip", "switch", "mod", "floor", "ceil", "round", "sign", "int_div"}


def _specs():
    from tapegrad.ops.elemwise import ELEMWISE

    return {s.name: s for s in ELEMWISE}


def _smooth_names():
    return sorted(n for n, s in _specs().items() if n not in _NOT_SMOOTH | _NO_SECOND_RULE and s.differentiable)


SMOOTH_OPS = None  # filled lazily: names of smooth elementwise ops
KINKED_OPS = tuple(sorted(_KINKED))


class GraphCase(tuple):
    """A drawn graph ``(inputs, output, values)``: unpacks as a 3-tuple; ``expr`` describes it."""

    def __new__(cls, inputs, output, values, expr=""):
        self = super().__new__(cls, (inputs, output, values))
        self.expr = expr
        return self

    inputs = property(lambda self: self[0])
    output = property(lambda self: self[1])
    values = property(lambda self: self[2])

    def __repr__(self):
        shapes = ", ".join(f"{x.name}{tuple(v.shape)}" for x, v in zip(self.inputs, self.values))
        return f"GraphCase({self.expr}  over  {shapes})"


def arrays_in_domain(dtype="float64", shape=(3,), low=-2.0, high=2.0, **kwargs):
    """Hypothesis strategy of finite ``dtype`` arrays of ``shape`` with elements in ``[low, high]``.

    ``shape`` may be a tuple or a strategy of tuples.  Extra keyword arguments
    go to :func:`hypothesis.strategies.floats` (e.g. ``exclude_min=True``).
    """
    width = 32 if np.dtype(dtype) == np.float32 else 64
    elements = st.floats(
        min_value=float(low), max_value=float(high), allow_nan=False, allow_infinity=False,
        allow_subnormal=False, width=width, **kwargs,
    )
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


# --------------------------------------------------------------------------- the graph builder
class _Entry:
    __slots__ = ("var", "value", "text")

    def __init__(self, var, value, text):
        self.var, self.value, self.text = var, value, text


def _eval(var, env):
    from tapegrad.compile.reference import evaluate

    with np.errstate(all="ignore"):
        return np.asarray(evaluate([var], env)[0])


def _in_domain(value, lo, hi):
    if value.size == 0:
        return True
    return bool(np.all(np.isfinite(value)) and value.min() >= lo and value.max() <= hi)


def _squash(entry, lo, hi, env):
    """``entry`` mapped into ``[lo, hi]``: as is when its values fit, else ``lo + (hi-lo)*sigmoid(z)``."""
    import tapegrad.ops as T

    if _in_domain(entry.value, lo, hi):
        return entry
    var = T.sigmoid(entry.var) * (hi - lo) + lo
    return _Entry(var, _eval(var, env), f"squash[{lo:g},{hi:g}]({entry.text})")


def _shape_of(e):
    return tuple(e.value.shape)


def _compatible(a, b):
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@st.composite
def random_graphs(
    draw,
    n_inputs=(1, 3),
    n_ops=(1, 6),
    dtype="float64",
    max_ndim=2,
    max_len=3,
    ops=None,
    kinks=False,
    reductions=True,
    allow_size_zero=False,
    value_range=(-2.0, 2.0),
):
    """Hypothesis strategy of :class:`GraphCase` ``(inputs, output, values)``.

    Parameters
    ----------
    n_inputs, n_ops : (int, int)
        Inclusive ranges of the number of inputs and of op applications.
    dtype : str
        Float dtype of the inputs (and, by promotion, of the graph).
    max_ndim, max_len : int
        Largest rank and axis length of the common shape; inputs take that
        shape with some axes set to 1 or dropped from the front (broadcasting).
    ops : sequence of str, optional
        Elementwise op names to draw from (default: the smooth ones, plus
        :data:`KINKED_OPS` when ``kinks``).
    kinks : bool
        Also draw piecewise ops (abs, maximum, clip, switch, floor, ...): fine
        for exact identities (adjoint, HVP symmetry), not for finite differences.
    reductions : bool
        Also draw ``sum``/``mean`` over an axis and ``dot`` (when those ops exist).
    allow_size_zero : bool
        Allow axes of length 0.
    value_range : (float, float)
        Range of the input values.
    """
    import tapegrad.ops as T
    from tapegrad.graph import tensor

    specs = _specs()
    names = list(ops) if ops is not None else _smooth_names() + (sorted(_KINKED) if kinks else [])
    names = [n for n in names if n in specs]
    if not names:
        raise ValueError("random_graphs: no elementwise ops to draw from")

    ndim = draw(st.integers(0, max_ndim))
    base = tuple(draw(st.integers(0 if allow_size_zero else 1, max_len)) for _ in range(ndim))
    n_in = draw(st.integers(*n_inputs))
    inputs, values, env, pool = [], [], {}, []
    for i in range(n_in):
        drop = draw(st.integers(0, ndim))
        shape = tuple(1 if draw(st.booleans()) and draw(st.booleans()) else n for n in base[drop:])
        value = draw(arrays_in_domain(dtype, shape, *value_range))
        var = tensor(f"x{i}", dtype=dtype, shape=(None,) * len(shape))
        inputs.append(var)
        values.append(value)
        env[var] = value
        pool.append(_Entry(var, value, var.name))

    extra = []
    if reductions:
        extra += [n for n in ("sum", "mean") if callable(getattr(T, n, None))]
        if callable(getattr(T, "dot", None)):
            extra.append("dot")
    choices = names + extra

    for _ in range(draw(st.integers(*n_ops))):
        name = draw(st.sampled_from(choices))
        a = pool[draw(st.integers(0, len(pool) - 1))]
        if name in ("sum", "mean"):
            nd = a.var.ndim
            if nd == 0:
                continue
            axis = draw(st.integers(0, nd - 1))
            keep = draw(st.booleans())
            var = getattr(T, name)(a.var, axis=axis, keepdims=keep)
            text = f"{name}({a.text}, axis={axis}{', keepdims' if keep else ''})"
        elif name == "dot":
            if a.var.ndim not in (1, 2):
                continue
            n = _shape_of(a)[-1]
            partners = [e for e in pool if e.var.ndim == 1 and _shape_of(e)[0] == n]
            if not partners:
                continue
            b = partners[draw(st.integers(0, len(partners) - 1))]
            var = T.dot(a.var, b.var)
            text = f"dot({a.text}, {b.text})"
        else:
            spec = specs[name]
            operands = [a]
            for _k in range(1, spec.nin):
                fits = [e for e in pool if _compatible(_shape_of(e), _shape_of(operands[0]))]
                operands.append(fits[draw(st.integers(0, len(fits) - 1))])
            if name == "switch":
                cond = operands[0].var > 0
                operands = [_squash(o, *spec.domain[min(k, len(spec.domain) - 1)], env) for k, o in enumerate(operands)]
                var = T.switch(cond, operands[1].var, operands[2].var)
                text = f"switch({operands[0].text} > 0, {operands[1].text}, {operands[2].text})"
            else:
                operands = [_squash(o, *spec.domain[min(k, len(spec.domain) - 1)], env) for k, o in enumerate(operands)]
                var = getattr(T, name)(*[o.var for o in operands])
                text = f"{name}({', '.join(o.text for o in operands)})"
            if var.dtype != dtype:
                var = T.cast(var, dtype)
        value = _eval(var, env)
        if not np.all(np.isfinite(value)):
            continue
        pool.append(_Entry(var, value, text))

    out = pool[-1]
    return GraphCase(inputs, out.var, values, out.text)
