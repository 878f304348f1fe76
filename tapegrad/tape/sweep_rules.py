"""Per-instruction rules of the sweep route, chosen by the op's declared kind.

Each rule sees one tape instruction replayed as an Apply node over slot
variables (:class:`tapegrad.tape.sweep.Program`) and emits the derivative
instructions for it, as new Apply nodes over those same slot variables:

``adjoint_rule(node, gouts, active)``
    one cotangent term per input (None = no contribution), from the
    cotangents ``gouts`` of the outputs (None = zero);
``tangent_rule(node, tins)``
    one tangent per output (None = zero) from the input tangents ``tins``.

By kind (ARCHITECTURE.md, "Two routes to every derivative"):

elementwise (:class:`~tapegrad.ops.elemwise.Elemwise`)
    generic code over the table's partial expressions (``x0, x1, .., y``):
    adjoint ``sum_like(azmul(g, df_i), x_i)``, tangent ``sum_i azmul(u_i,
    df_i)`` broadcast to the output, or the rules a row declares instead
    (``switch`` selects: ``where(x0, g, 0)``, ``where(x0, u1, u2)``); both
    from ``ops/elemwise.py``'s ``adjoint_term`` / ``tangent_sum``, which the
    ops' ``L_op``/``R_op`` use too.  Nothing here names an elementwise op, so
    a new table row needs no sweep code.  Second derivatives come for free:
    the partial expressions are elementwise ops again.
``Cast``
    the cotangent/tangent cast back/forward (nothing through integer casts).
linear
    tangent = the op itself applied to the tangents of its linear inputs
    (zeros for the linear inputs without one; index and shape inputs stay
    primal); adjoint = the op's transpose, which a linear op declares as its
    ``L_op`` (a linear op applied to the cotangent, independent of the primal
    values).
bilinear
    tangent = ``op(u_A, B) + op(A, u_B)`` (the op with one argument swapped for
    its tangent); adjoint = the op's two declared transposes (its ``L_op``).
general
    only the ops in :data:`OWN_RULE_CODES`, whose own ``L_op``/``R_op`` are
    local rules over one instruction; any other general op (scan, map_rows,
    user ops run by callback, ``undefined_grad``) raises
    :class:`SweepUnsupported` and the caller uses the symbolic route.

Integer and bool slots carry no derivative (what flows through them is zero,
as on the symbolic route); an input is only differentiated through where the
op's ``connection_pattern`` connects it.
"""

from __future__ import annotations

from tapegrad.config import config
from tapegrad.graph import Apply, Variable, is_float_dtype
from tapegrad.op import DisconnectedType, NullType


class SweepUnsupported(NotImplementedError):
    """An instruction has no sweep rule; the symbolic route must compute this derivative."""

    def __init__(self, op, reason=""):
        self.op = op
        self.code = getattr(op, "code", None)
        what = f"op {op}" + (f" (code {self.code})" if self.code else " (a user op without an op code)")
        super().__init__(f"the sweep route has no rule for {what}" + (f": {reason}" if reason else ""))


OWN_RULE_CODES = frozenset({
    # reductions and normalisations whose own L_op/R_op are local to the instruction
    "PROD", "MAX", "MIN", "LOGSUMEXP", "CUMPROD", "LINREC", "SOFTMAX", "LOG_SOFTMAX",
    # gradient modifiers: their own rules *are* their meaning
    "ZERO_GRAD", "CONSIDER_CONSTANT", "DISCONNECTED_GRAD", "GRAD_CLIP", "GRAD_SCALE",
    # dense linear algebra
    "SOLVE", "INV", "DET", "SLOGDET", "CHOLESKY", "EIGH", "NORM",
})
"""General ops whose own ``L_op``/``R_op`` the sweep uses as its rule."""


# --------------------------------------------------------------------------- helpers
def is_float(v):
    return v is not None and getattr(v.type, "dtype", None) is not None and is_float_dtype(v.dtype)


def cast_to(v, dtype):
    from tapegrad.ops.elemwise import cast

    return v if v.dtype == dtype else cast(v, dtype)


def float_zeros_like(x):
    from tapegrad.ops import zeros_like

    return zeros_like(x, dtype=x.dtype if is_float_dtype(x.dtype) else config.floatX)


def add_all(terms):
    """Sum of the non-None ``terms`` (in order), or None."""
    from tapegrad.ops.elemwise import add

    total = None
    for t in terms:
        if t is None:
            continue
        total = t if total is None else add(total, t)
    return total


def connected(node):
    """``pattern[i][j]`` of the node's op (the default: everything connected)."""
    pattern = node.op.connection_pattern(node)
    if len(pattern) != len(node.inputs) or any(len(row) != len(node.outputs) for row in pattern):
        raise ValueError(f"{node.op}.connection_pattern has the wrong shape")
    return pattern


def apply_like(node, inputs):
    """``node.op`` applied to ``inputs``, outputs typed like ``node``'s (the run-time shapes are the same)."""
    outs = [Variable(o.type) for o in node.outputs]
    Apply(node.op, inputs, outs)
    return outs


def kind_of(op):
    from tapegrad.ops.elemwise import Cast, Elemwise

    if isinstance(op, Elemwise):
        return "elementwise"
    if isinstance(op, Cast):
        return "cast"
    kind = getattr(op, "kind", "general")
    if getattr(op, "code", None) is None:
        return "unsupported"
    if kind in ("linear", "bilinear"):
        return kind
    return "own" if op.code in OWN_RULE_CODES else "unsupported"


# --------------------------------------------------------------------------- elementwise (from the table)
def _elementwise_adjoint(node, g, active):
    from tapegrad.ops.broadcast import sum_like
    from tapegrad.ops.elemwise import _same_static_shape, adjoint_term

    spec, (y,) = node.op.spec, node.outputs
    terms = [None] * len(node.inputs)
    if not is_float(y):
        return terms
    for i, x in enumerate(node.inputs):
        p = spec.partials[i]
        if not active[i] or p is None:
            continue
        if p == "NotImplemented":
            raise SweepUnsupported(node.op, f"the partial for input {i} is not in the table")
        t = adjoint_term(spec, i, node.inputs, y, g)
        if not _same_static_shape(x, y):
            t = sum_like(t, x)
        terms[i] = cast_to(t, x.dtype)
    return terms


def _elementwise_tangent(node, tins):
    from tapegrad.ops.broadcast import broadcast_like
    from tapegrad.ops.elemwise import _same_static_shape, tangent_sum

    spec, (y,) = node.op.spec, node.outputs
    if not is_float(y):
        return [None]
    for i, u in enumerate(tins):
        if u is not None and spec.partials[i] == "NotImplemented":
            raise SweepUnsupported(node.op, f"the partial for input {i} is not in the table")
    total = tangent_sum(spec, node.inputs, y, tins)
    if total is None:
        return [None]
    if not _same_static_shape(total, y):
        total = broadcast_like(total, y)
    return [cast_to(total, y.dtype)]


# --------------------------------------------------------------------------- linear / bilinear / own rules
def _own_adjoint(node, gouts, active):
    """The op's declared transpose(s) / own rule: its ``L_op`` on the cotangents."""
    pattern = connected(node)
    gs = [g if g is not None else float_zeros_like(o) for o, g in zip(node.outputs, gouts)]
    gs = [cast_to(g, o.dtype) if is_float(o) else g for o, g in zip(node.outputs, gs)]
    res = node.op.L_op(list(node.inputs), list(node.outputs), gs)
    if res is None or len(res) != len(node.inputs):
        raise SweepUnsupported(node.op, "its L_op returned the wrong number of terms")
    terms = [None] * len(node.inputs)
    for i, (x, t) in enumerate(zip(node.inputs, res)):
        if not active[i] or not any(pattern[i]) or t is None:
            continue
        if not isinstance(t, Variable):
            raise SweepUnsupported(node.op, f"its L_op returned {t!r} for input {i}")
        if isinstance(t.type, DisconnectedType):
            continue
        if isinstance(t.type, NullType):
            raise SweepUnsupported(node.op, t.type.why_null)
        terms[i] = cast_to(t, x.dtype)
    return terms


def _linear_tangent(node, tins):
    from tapegrad.ops import zeros_like

    pattern = connected(node)
    lin = [any(row) for row in pattern]  # index and shape inputs are not connected: they stay primal
    if not any(u is not None and lin[i] and is_float(x) for i, (x, u) in enumerate(zip(node.inputs, tins))):
        return [None] * len(node.outputs)
    args = []
    for i, x in enumerate(node.inputs):
        u = tins[i]
        if not lin[i]:
            args.append(x)
        elif u is None or not is_float(x):
            args.append(zeros_like(x))  # a linear input without a tangent (integer data included)
        else:
            args.append(cast_to(u, x.dtype))
    outs = apply_like(node, args)
    return [o if is_float(p) else None for o, p in zip(outs, node.outputs)]


def _bilinear_tangent(node, tins):
    """``op(u_A, B) + op(A, u_B)``: the op with one connected input at a time swapped for its tangent."""
    pattern = connected(node)
    terms = []
    for i, (x, u) in enumerate(zip(node.inputs, tins)):
        if u is None or not any(pattern[i]) or not is_float(x):
            continue
        args = list(node.inputs)
        args[i] = cast_to(u, x.dtype)
        terms.append(apply_like(node, args))
    out = []
    for j, y in enumerate(node.outputs):
        total = add_all([t[j] for t in terms])
        out.append(None if total is None or not is_float(y) else cast_to(total, y.dtype))
    return out


def _own_tangent(node, tins):
    try:
        res = node.op.R_op(list(node.inputs), list(tins))
    except NotImplementedError as e:
        raise SweepUnsupported(node.op, f"its R_op is not implemented ({e})") from None
    if res is None or len(res) != len(node.outputs):
        raise SweepUnsupported(node.op, "its R_op returned the wrong number of tangents")
    out = []
    for o, t in zip(node.outputs, res):
        if t is None or not is_float(o) or isinstance(t.type, DisconnectedType):
            out.append(None)
        elif isinstance(t.type, NullType):
            raise SweepUnsupported(node.op, t.type.why_null)
        else:
            out.append(cast_to(t, o.dtype))
    return out


def _cast_adjoint(node, g, active):
    (x,), (y,) = node.inputs, node.outputs
    if not active[0] or not is_float(y):
        return [None]
    return [cast_to(g, x.dtype)]


def _cast_tangent(node, tins):
    (y,) = node.outputs
    if tins[0] is None or not is_float(y):
        return [None]
    return [cast_to(tins[0], y.dtype)]


# --------------------------------------------------------------------------- dispatch
def adjoint_rule(node, gouts, active):
    """Cotangent terms for ``node``'s inputs (None = none) from its outputs' cotangents ``gouts``.

    ``active[i]``: input ``i`` is a float slot that depends on a differentiated variable.
    """
    kind = kind_of(node.op)
    if kind == "elementwise":
        return _elementwise_adjoint(node, gouts[0], active)
    if kind == "cast":
        return _cast_adjoint(node, gouts[0], active)
    if kind in ("linear", "bilinear", "own"):
        return _own_adjoint(node, gouts, active)
    raise SweepUnsupported(node.op, f"it is a {getattr(node.op, 'kind', 'general')} op without a sweep rule")


def tangent_rule(node, tins):
    """Tangents of ``node``'s outputs (None = zero) from its inputs' tangents ``tins`` (None = zero)."""
    if not any(is_float(o) for o in node.outputs):
        return [None] * len(node.outputs)  # integer/bool results carry no tangent, whatever the op
    kind = kind_of(node.op)
    if kind == "elementwise":
        return _elementwise_tangent(node, tins)
    if kind == "cast":
        return _cast_tangent(node, tins)
    if kind == "linear":
        return _linear_tangent(node, tins)
    if kind == "bilinear":
        return _bilinear_tangent(node, tins)
    if kind == "own":
        return _own_tangent(node, tins)
    raise SweepUnsupported(node.op, f"it is a {getattr(node.op, 'kind', 'general')} op without a sweep rule")
