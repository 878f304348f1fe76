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

``random_graphs(structural=True)`` also draws every other kind of op
(:data:`STRUCTURAL_OPS`: reductions, shape ops, indexing, the dot family);
``first_op=kind`` makes the first op application use ``kind`` (so a test can
sweep every kind); ``case.kinds`` is the set of kinds the output depends on.

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

__all__ = ["arrays_in_domain", "random_graphs", "GraphCase", "SMOOTH_OPS", "KINKED_OPS", "STRUCTURAL_OPS",
           "KINKED_STRUCTURAL_OPS"]

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

    def __new__(cls, inputs, output, values, expr="", kinds=frozenset()):
        self = super().__new__(cls, (inputs, output, values))
        self.expr = expr
        self.kinds = frozenset(kinds)  # the op kinds the output depends on
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
    __slots__ = ("var", "value", "text", "kinds")

    def __init__(self, var, value, text, kinds=frozenset()):
        self.var, self.value, self.text, self.kinds = var, value, text, kinds


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
    return _Entry(var, _eval(var, env), f"squash[{lo:g},{hi:g}]({entry.text})", entry.kinds)


def _shape_of(e):
    return tuple(e.value.shape)


def _compatible(a, b):
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- structural ops
# Ops other than elementwise ones that ``random_graphs(structural=True)`` draws: reductions, shape ops,
# indexing and the dot family.  Each builder takes ``(draw, a, pool, T)`` (``a`` the operand entry, ``pool``
# every entry so far, ``T`` the ``tapegrad.ops`` module) and returns ``(var, text, used)`` (``used``: the
# entries it read) or None when it does not apply to ``a``.

def _axis(draw, nd):
    return draw(st.integers(-nd, nd - 1))


def _pick(draw, entries):
    return entries[draw(st.integers(0, len(entries) - 1))] if entries else None


def _fmt_key(key):
    parts = []
    for k in key:
        if isinstance(k, slice):
            parts.append(":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step)).rstrip(":") or ":")
        elif k is None:
            parts.append("None")
        elif k is Ellipsis:
            parts.append("...")
        else:
            parts.append(str(k))
    return ", ".join(parts)


def _reduction(name):
    def build(draw, a, pool, T):
        nd = a.var.ndim
        choice = draw(st.integers(0, 2)) if nd else 0
        if choice == 0:
            axis = None
        elif choice == 1 or nd < 2:
            axis = _axis(draw, nd)
        else:
            axis = tuple(sorted(draw(st.lists(st.integers(0, nd - 1), min_size=2, max_size=nd, unique=True))))
        keep = draw(st.booleans())
        var = getattr(T, name)(a.var, axis=axis, keepdims=keep)
        return var, f"{name}({a.text}, axis={axis}{', keepdims' if keep else ''})", [a]

    return build


def _cumulative(name):
    def build(draw, a, pool, T):
        nd = a.var.ndim
        axis = None if nd == 0 or draw(st.booleans()) and draw(st.booleans()) else _axis(draw, nd)
        return getattr(T, name)(a.var, axis=axis), f"{name}({a.text}, axis={axis})", [a]

    return build


def _softmax(name):
    def build(draw, a, pool, T):
        if a.var.ndim == 0:
            return None
        axis = _axis(draw, a.var.ndim)
        return getattr(T, name)(a.var, axis=axis), f"{name}({a.text}, axis={axis})", [a]

    return build


def _b_relu(draw, a, pool, T):
    return T.relu(a.var), f"relu({a.text})", [a]


def _b_argmax(draw, a, pool, T):
    nd = a.var.ndim
    axis = None if nd == 0 or draw(st.booleans()) else _axis(draw, nd)
    return T.argmax(a.var, axis=axis), f"argmax({a.text}, axis={axis})", [a]


def _b_reshape(draw, a, pool, T):
    size = a.value.size
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    d = _pick(draw, divisors)
    shape = _pick(draw, [(size,), (d, size // d), (1, size), (size // d, 1, d)])
    if draw(st.booleans()):  # let reshape infer one length
        shape = tuple(-1 if i == 0 else n for i, n in enumerate(shape))
    return T.reshape(a.var, shape), f"reshape({a.text}, {shape})", [a]


def _b_flatten(draw, a, pool, T):
    if a.var.ndim == 0:
        return None
    return T.flatten(a.var), f"flatten({a.text})", [a]


def _b_dimshuffle(draw, a, pool, T):
    nd = a.var.ndim
    pattern = list(draw(st.permutations(list(range(nd))))) if nd else []
    if not nd or draw(st.booleans()):
        pattern.insert(draw(st.integers(0, len(pattern))), "x")
    return a.var.dimshuffle(*pattern), f"dimshuffle({a.text}, {tuple(pattern)})", [a]


def _b_transpose(draw, a, pool, T):
    if a.var.ndim < 2:
        return None
    return T.transpose(a.var), f"transpose({a.text})", [a]


def _b_expand_dims(draw, a, pool, T):
    axis = draw(st.integers(0, a.var.ndim))
    return T.expand_dims(a.var, axis), f"expand_dims({a.text}, {axis})", [a]


def _b_squeeze(draw, a, pool, T):
    ones = [i for i, n in enumerate(a.value.shape) if n == 1]
    if ones:  # an axis of unknown static length that is 1 at run time
        axis = _pick(draw, ones)
        return T.squeeze(a.var, axis), f"squeeze({a.text}, {axis})", [a]
    axis = draw(st.integers(0, a.var.ndim))
    return T.squeeze(T.expand_dims(a.var, axis), axis), f"squeeze(expand_dims({a.text}, {axis}), {axis})", [a]


def _b_concatenate(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    axis = draw(st.integers(0, nd - 1))
    sh = _shape_of(a)
    fits = [e for e in pool if e.var.ndim == nd and all(n == m for i, (n, m) in enumerate(zip(_shape_of(e), sh))
                                                         if i != axis)]
    b = _pick(draw, fits)  # may be a itself: fan-out
    return T.concatenate([a.var, b.var], axis=axis), f"concatenate([{a.text}, {b.text}], axis={axis})", [a, b]


def _b_stack(draw, a, pool, T):
    b = _pick(draw, [e for e in pool if _shape_of(e) == _shape_of(a)])
    axis = draw(st.integers(0, a.var.ndim))
    return T.stack([a.var, b.var], axis=axis), f"stack([{a.text}, {b.text}], axis={axis})", [a, b]


def _b_broadcast_to(draw, a, pool, T):
    # length-1 axes (of unknown static length: they broadcast because they are 1 at run time) grow
    shape = tuple(draw(st.integers(1, 3)) if n == 1 else n for n in _shape_of(a))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 2)),) + shape
    return T.broadcast_to(a.var, shape), f"broadcast_to({a.text}, {shape})", [a]


def _b_roll(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    shift = draw(st.integers(-3, 3))
    axis = None if draw(st.booleans()) else _axis(draw, nd)
    return T.roll(a.var, shift, axis=axis), f"roll({a.text}, {shift}, axis={axis})", [a]


def _b_repeat(draw, a, pool, T):
    nd = a.var.ndim
    reps = draw(st.integers(1, 3))
    axis = None if nd == 0 or draw(st.booleans()) else _axis(draw, nd)
    return T.repeat(a.var, reps, axis=axis), f"repeat({a.text}, {reps}, axis={axis})", [a]


def _b_tile(draw, a, pool, T):
    reps = tuple(draw(st.lists(st.integers(1, 2), min_size=max(1, a.var.ndim), max_size=a.var.ndim + 1)))
    return T.tile(a.var, reps), f"tile({a.text}, {reps})", [a]


def _b_split(draw, a, pool, T):
    nd = a.var.ndim
    axes = [i for i in range(nd) if a.value.shape[i] >= 2]
    if not axes:
        return None
    axis = _pick(draw, axes)
    n = a.value.shape[axis]
    k = draw(st.integers(1, n - 1))
    part = draw(st.integers(0, 1))
    var = T.split(a.var, [k, n - k], 2, axis=axis)[part]
    return var, f"split({a.text}, [{k}, {n - k}], axis={axis})[{part}]", [a]


def _b_diagonal(draw, a, pool, T):
    if a.var.ndim != 2:
        return None
    n, m = _shape_of(a)
    offset = draw(st.integers(-(n - 1), m - 1))
    return T.diagonal(a.var, offset), f"diagonal({a.text}, {offset})", [a]


def _b_trace(draw, a, pool, T):
    if a.var.ndim != 2:
        return None
    return T.trace(a.var), f"trace({a.text})", [a]


def _basic_key(draw, shape):
    """A basic-indexing key for ``shape``: ints, slices (any step sign), None (new axes), or ``(..., i)``."""
    if draw(st.integers(0, 4)) == 0:
        n = shape[-1]
        return (Ellipsis, draw(st.integers(-n, n - 1)))
    key = []
    for n in shape[: draw(st.integers(1, len(shape)))]:
        kind = draw(st.integers(0, 3))
        if kind == 0:
            key.append(draw(st.integers(-n, n - 1)))
        elif kind == 1:
            key += [None, slice(None)]
        else:
            step = draw(st.sampled_from([None, 1, 2, -1, -2]))
            start = draw(st.one_of(st.none(), st.integers(-n, n)))
            stop = draw(st.one_of(st.none(), st.integers(-n - 1, n)))
            key.append(slice(start, stop, step))
    return tuple(key)


def _b_subtensor(draw, a, pool, T):
    if a.var.ndim == 0:
        return None
    key = _basic_key(draw, _shape_of(a))
    try:
        a.value[key]
    except IndexError:
        return None
    return a.var[key], f"{a.text}[{_fmt_key(key)}]", [a]


def _int_index(draw, n):
    return np.array(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4)), dtype=np.int64)


def _b_advanced(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    if nd >= 2 and draw(st.booleans()):
        idx = _int_index(draw, a.value.shape[1])
        return a.var[:, idx], f"{a.text}[:, {idx.tolist()}]", [a]
    idx = _int_index(draw, a.value.shape[0])
    return a.var[idx], f"{a.text}[{idx.tolist()}]", [a]


def _b_take(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    axis = None if draw(st.booleans()) else draw(st.integers(0, nd - 1))
    idx = _int_index(draw, a.value.size if axis is None else a.value.shape[axis])
    return T.take(a.var, idx, axis=axis), f"take({a.text}, {idx.tolist()}, axis={axis})", [a]


def _set_inc(name):
    def build(draw, a, pool, T):
        nd = a.var.ndim
        if nd == 0:
            return None
        if draw(st.booleans()):  # integer array (repeated indices accumulate in inc_subtensor)
            idx = _int_index(draw, a.value.shape[0])
            key, view, text = idx, a.var[idx], f"{a.text}[{idx.tolist()}]"
        else:
            key = _basic_key(draw, _shape_of(a))
            if None in key:
                return None
            try:
                a.value[key]
            except IndexError:
                return None
            view, text = a.var[key], f"{a.text}[{_fmt_key(key)}]"
        vshape = np.shape(a.value[key])
        fits = [e for e in pool if e.var.ndim <= len(vshape) and _compatible(_shape_of(e), vshape)
                and np.broadcast_shapes(_shape_of(e), vshape) == vshape]
        b = _pick(draw, fits)
        if b is None:  # the indexed values themselves, transformed: fan-out of a
            var = getattr(T, name)(view, T.sin(view))
            return var, f"{name}({text}, sin({text}))", [a]
        return getattr(T, name)(view, b.var), f"{name}({text}, {b.text})", [a, b]

    return build


def _b_dot(draw, a, pool, T):
    nd = a.var.ndim
    if nd > 2:
        return None
    if nd == 0:
        b = _pick(draw, [e for e in pool if e.var.ndim <= 2])
    else:
        n = _shape_of(a)[-1]
        b = _pick(draw, [e for e in pool if e.var.ndim in (1, 2) and _shape_of(e)[0] == n])
    if b is None:
        bt = a.var.T if nd == 2 else a.var
        return T.dot(a.var, bt), f"dot({a.text}, {a.text}{'.T' if nd == 2 else ''})", [a]
    return T.dot(a.var, b.var), f"dot({a.text}, {b.text})", [a, b]


def _b_matmul(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    sa = _shape_of(a)
    fits = []
    for e in pool:
        se = _shape_of(e)
        if not se or (se[-2] if len(se) >= 2 else se[0]) != sa[-1]:
            continue
        if nd == 1 or len(se) == 1 or _compatible(sa[:-2], se[:-2]):
            fits.append(e)
    b = _pick(draw, fits)
    if b is None:
        bt = a.var if nd == 1 else a.var.dimshuffle(*range(nd - 2), nd - 1, nd - 2)
        return T.matmul(a.var, bt), f"matmul({a.text}, swapaxes({a.text}))", [a]
    return T.matmul(a.var, b.var), f"matmul({a.text}, {b.text})", [a, b]


def _b_outer(draw, a, pool, T):
    b = _pick(draw, [e for e in pool if e.value.size <= 6]) or a
    return T.outer(a.var, b.var), f"outer({a.text}, {b.text})", [a, b]


def _b_tensordot(draw, a, pool, T):
    nd = a.var.ndim
    if nd == 0:
        return None
    k = 2 if nd >= 2 and draw(st.booleans()) else 1
    want = _shape_of(a)[nd - k:]
    b = _pick(draw, [e for e in pool if _shape_of(e)[:k] == want])
    if b is None:  # a with its last k axes moved to the front
        bvar = a.var.dimshuffle(*range(nd - k, nd), *range(nd - k))
        return T.tensordot(a.var, bvar, axes=k), f"tensordot({a.text}, moveaxes({a.text}), axes={k})", [a]
    return T.tensordot(a.var, b.var, axes=k), f"tensordot({a.text}, {b.text}, axes={k})", [a, b]


_BUILDERS = {
    # reductions and friends
    **{n: _reduction(n) for n in ("sum", "mean", "prod", "var", "logsumexp", "max", "min", "std")},
    "cumsum": _cumulative("cumsum"), "cumprod": _cumulative("cumprod"),
    "softmax": _softmax("softmax"), "log_softmax": _softmax("log_softmax"),
    "relu": _b_relu, "argmax": _b_argmax,
    # shape
    "reshape": _b_reshape, "flatten": _b_flatten, "dimshuffle": _b_dimshuffle, "transpose": _b_transpose,
    "expand_dims": _b_expand_dims, "squeeze": _b_squeeze, "concatenate": _b_concatenate, "stack": _b_stack,
    "broadcast_to": _b_broadcast_to, "roll": _b_roll, "repeat": _b_repeat, "tile": _b_tile, "split": _b_split,
    "diagonal": _b_diagonal, "trace": _b_trace,
    # indexing
    "subtensor": _b_subtensor, "advanced_subtensor": _b_advanced, "take": _b_take,
    "inc_subtensor": _set_inc("inc_subtensor"), "set_subtensor": _set_inc("set_subtensor"),
    # the dot family
    "dot": _b_dot, "matmul": _b_matmul, "outer": _b_outer, "tensordot": _b_tensordot,
}
# piecewise: ties (max/min/argmax), the kink of relu, and std's sqrt at zero variance (hypothesis likes
# constant arrays) rule out finite differences; exact identities (adjoint, engines agree) still hold.
_KINKED_STRUCTURAL = {"max", "min", "std", "relu", "argmax"}
KINKED_STRUCTURAL_OPS = tuple(sorted(_KINKED_STRUCTURAL))
# the least rank of the operand each kind needs when it is the forced first op (``first_op``)
_MIN_NDIM = {"diagonal": 2, "trace": 2, "transpose": 2, "flatten": 1, "concatenate": 1, "roll": 1, "split": 1,
             "softmax": 1, "log_softmax": 1, "subtensor": 1, "advanced_subtensor": 1, "take": 1,
             "inc_subtensor": 1, "set_subtensor": 1, "matmul": 1, "tensordot": 1}
STRUCTURAL_OPS = tuple(_BUILDERS)


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
    structural=False,
    first_op=None,
    max_size=64,
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
        Also draw piecewise ops (abs, maximum, clip, switch, floor, ...; with
        ``structural``, also max/min/argmax/std/relu): fine for exact
        identities (adjoint, HVP symmetry), not for finite differences.
    reductions : bool
        Also draw ``sum``/``mean`` over an axis and ``dot`` (when those ops exist).
    allow_size_zero : bool
        Allow axes of length 0.
    value_range : (float, float)
        Range of the input values.
    structural : bool
        Also draw every kind of :data:`STRUCTURAL_OPS`: reductions (sum, mean,
        prod, var, logsumexp, cumsum, cumprod, softmax, ...; axis None, int or
        tuple; keepdims), shape ops (reshape, dimshuffle, concatenate, stack,
        broadcast_to, roll, repeat, tile, split, squeeze, diagonal, ...),
        indexing (basic slices with any step, ``x[..., i]``, new axes,
        integer arrays with repeats and negative indices, take,
        inc_subtensor/set_subtensor) and the dot family (dot, matmul, outer,
        tensordot).  Partners of binary ops are drawn from the earlier
        results (often the operand itself: fan-out).
    first_op : str, optional
        An elementwise or structural op kind that the first op application
        uses; the output then always depends on it (the draw is rejected when
        it cannot apply).
    max_size : int
        Results with more elements (or more than 3 dimensions) are dropped.
    """
    import tapegrad.ops as T
    from hypothesis import reject

    from tapegrad.graph import tensor

    specs = _specs()
    names = list(ops) if ops is not None else _smooth_names() + (sorted(_KINKED) if kinks else [])
    names = [n for n in names if n in specs]
    if not names:
        raise ValueError("random_graphs: no elementwise ops to draw from")
    if first_op is not None and first_op not in specs and first_op not in _BUILDERS:
        raise ValueError(f"random_graphs: unknown op kind {first_op!r}; use an elementwise name or one of "
                         f"{', '.join(STRUCTURAL_OPS)}")

    need = _MIN_NDIM.get(first_op, 0)
    ndim = draw(st.integers(min(need, max(max_ndim, need)), max(max_ndim, need)))
    base = tuple(draw(st.integers(0 if allow_size_zero else 1, max_len)) for _ in range(ndim))
    n_in = draw(st.integers(*n_inputs))
    inputs, values, env, pool = [], [], {}, []
    for i in range(n_in):
        drop = 0 if i == 0 and first_op is not None else draw(st.integers(0, ndim))
        shape = tuple(1 if draw(st.booleans()) and draw(st.booleans()) else n for n in base[drop:])
        value = draw(arrays_in_domain(dtype, shape, *value_range))
        var = tensor(f"x{i}", dtype=dtype, shape=(None,) * len(shape))
        inputs.append(var)
        values.append(value)
        env[var] = value
        pool.append(_Entry(var, value, var.name))

    extra = []
    if structural:
        extra += [n for n in STRUCTURAL_OPS if kinks or n not in _KINKED_STRUCTURAL]
    elif reductions:
        extra += [n for n in ("sum", "mean") if callable(getattr(T, n, None))]
        if callable(getattr(T, "dot", None)):
            extra.append("dot")
    choices = names + extra

    for step in range(draw(st.integers(*n_ops))):
        forced = step == 0 and first_op is not None
        name = first_op if forced else draw(st.sampled_from(choices))
        if forced:
            a = pool[0]
        elif structural and len(pool) > n_in and draw(st.booleans()):
            a = pool[-1]  # grow a chain: deeper graphs
        else:
            a = pool[draw(st.integers(0, len(pool) - 1))]
        if name in _BUILDERS and (structural or forced):
            built = _BUILDERS[name](draw, a, pool, T)
            if built is None:
                if forced:
                    reject()
                continue
            var, text, used = built
        elif name in ("sum", "mean"):
            nd = a.var.ndim
            if nd == 0:
                continue
            axis = draw(st.integers(0, nd - 1))
            keep = draw(st.booleans())
            var = getattr(T, name)(a.var, axis=axis, keepdims=keep)
            text = f"{name}({a.text}, axis={axis}{', keepdims' if keep else ''})"
            used = [a]
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
            used = [a, b]
        else:
            spec = specs[name]
            operands = [a]
            joint = _shape_of(a)  # every operand broadcasts with all the earlier ones (switch, clip)
            for _k in range(1, spec.nin):
                fits = [e for e in pool if _compatible(_shape_of(e), joint)]
                operands.append(fits[draw(st.integers(0, len(fits) - 1))])
                joint = np.broadcast_shapes(joint, _shape_of(operands[-1]))
            used = list(operands)
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
        bad = (not np.all(np.isfinite(value)) or value.ndim > 3 or value.size > max_size
               or (value.size == 0 and not allow_size_zero))
        if bad:
            if forced:
                reject()
            continue
        kinds = frozenset().union(*(e.kinds for e in used)) | {name}
        pool.append(_Entry(var, value, text, kinds))

    # the output: the last result, or with ``first_op`` the last one that depends on it
    outs = [e for e in pool if first_op is None or first_op in e.kinds]
    if not outs:
        reject()
    out = outs[-1]
    return GraphCase(inputs, out.var, values, out.text, out.kinds)
