"""Dot products and diagonals: codes 450-499.

==============  ====  ========  ===================================================
op              code  kind      transpose (L_op) built from
==============  ====  ========  ===================================================
dot             450   bilinear  einsum (the contraction with one operand swapped)
matmul          451   bilinear  einsum with ``...`` batch dims, then ``sum_like``
outer           452   bilinear  outer_t
tensordot       453   bilinear  einsum
diagonal        454   linear    diag_embed
trace           455   linear    diag_embed (broadcast along the diagonal)
outer_t         456   bilinear  outer, outer_t  (internal: transpose of outer)
diag_embed      457   linear    diagonal, trace (internal: transpose of both)
einsum          458   bilinear  einsum          (internal: transposes of contractions)
==============  ====  ========  ===================================================

Every bilinear op ``C = op(A, B)`` has ``R_op = op(u_A, B) + op(A, u_B)`` and an
``L_op`` made of its two transposes.  ``dot``, ``matmul`` and ``tensordot`` are
each an :class:`Einsum` contraction (``einsum_spec``); the transpose of an
einsum ``"a,b->c"`` with respect to ``a`` is the einsum ``"c,b->a"`` summed down
to ``a``'s shape (``sum_like``) where its ``...`` batch dims were broadcast, so
the set of ops is closed under differentiation to any order.  Result dtypes
follow NumPy promotion of the input dtypes; gradients of integer inputs have
dtype ``config.floatX``.
"""

from __future__ import annotations

import string

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, make_output, static_broadcast_shape
from tapegrad.registry import registered

__all__ = ["dot", "matmul", "outer", "tensordot", "diagonal", "trace", "diag"]

_LETTERS = string.ascii_letters


# --------------------------------------------------------------------------- helpers
def _shape(s):
    return "(" + ", ".join("?" if n is None else str(n) for n in s) + ("," if len(s) == 1 else "") + ")"


def _result_dtype(*xs):
    """NumPy promotion of the input dtypes (as ``np.dot``: Python scalars are not weak)."""
    return np.result_type(*[np.dtype(x.dtype) for x in xs]).name


def _grad_dtype(x):
    return x.dtype if is_float_dtype(x.dtype) else config.floatX


def _as_grad(g, x):
    """``g`` cast to the gradient dtype of ``x``."""
    from tapegrad.ops.elemwise import cast

    return cast(g, _grad_dtype(x))


def _check_contraction(opname, a, b, pairs):
    """Raise when a contracted length is statically known to differ (pairs of axes)."""
    for ia, ib in pairs:
        na, nb = a.type.shape[ia], b.type.shape[ib]
        if na is not None and nb is not None and na != nb:
            raise ValueError(
                f"{opname}: contraction lengths differ: {a} has shape {_shape(a.type.shape)} and {b} has shape "
                f"{_shape(b.type.shape)} (axis {ia} of {a} has length {na}, axis {ib} of {b} has length {nb})"
            )


def _run(opname, node, fn, *arrays):
    """Call ``fn(*arrays)`` re-raising shape errors with the op, variables and shapes."""
    try:
        with np.errstate(all="ignore"):  # inf/NaN entries flow through as IEEE says (SPEC 6), silently
            y = fn(*arrays)
    except ValueError as e:
        names = ", ".join(str(v) for v in node.inputs)
        shapes = " and ".join(str(np.shape(x)) for x in arrays)
        raise ValueError(f"{opname}: shapes {shapes} of ({names}) do not match: {e}") from None
    return np.array(y, dtype=node.outputs[0].dtype)  # a fresh array, never a view


def _add_terms(terms, dtype):
    """Sum of the non-None ``terms`` cast to ``dtype``; None when there are none."""
    from tapegrad.ops.elemwise import add, cast

    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = add(total, t)
    return cast(total, dtype)


def _tangent_dtype(y_dtype):
    return y_dtype if is_float_dtype(y_dtype) else config.floatX


class _Bilinear(Op):
    """A bilinear op ``C = op(A, B)``: ``R_op = op(u_A, B) + op(A, u_B)``."""

    kind = "bilinear"

    def R_op(self, inputs, eval_points):
        a, b = inputs
        ua, ub = eval_points[0], eval_points[1]
        if ua is None and ub is None:
            return [None]
        y_dtype = self.make_node(a, b).outputs[0].dtype
        terms = [None if ua is None else self(ua, b), None if ub is None else self(a, ub)]
        return [_add_terms(terms, _tangent_dtype(y_dtype))]


class _Contraction(_Bilinear):
    """A bilinear op equal to an einsum (``einsum_spec``): its transposes are einsums."""

    def einsum_spec(self, a_ndim, b_ndim):
        raise NotImplementedError

    def L_op(self, inputs, outputs, output_grads):
        a, b = inputs
        return _einsum_transposes(self.einsum_spec(a.ndim, b.ndim), a, b, output_grads[0])


# --------------------------------------------------------------------------- einsum (internal)
def _parse(spec):
    """``"...ij,...jk->...ik"`` -> ``[(ellipsis, labels)] * 3`` for a, b, out."""
    ins, out = spec.split("->")
    terms = ins.split(",") + [out]
    if len(terms) != 3:
        raise ValueError(f"einsum: {spec!r} must have two operands")
    parsed = []
    for t in terms:
        ell = t.startswith("...")
        labels = t[3:] if ell else t
        if not all(c in _LETTERS for c in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"einsum: bad term {t!r} in {spec!r} (letters, each once, '...' only first)")
        parsed.append((ell, labels))
    (ea, la), (eb, lb), (eo, lo) = parsed
    if (ea or eb) != eo:
        raise ValueError(f"einsum: {spec!r}: the output has '...' exactly when an operand has")
    for c in set(la) | set(lb) | set(lo):
        if (c in la) + (c in lb) + (c in lo) < 2:
            raise ValueError(f"einsum: label {c!r} of {spec!r} must appear in two terms")
    return parsed


def _einsum_shape(spec, shapes, opname="einsum", names=None):
    """Output shape of ``spec`` for operand shapes (None = unknown length)."""
    (ea, la), (eb, lb), (eo, lo) = _parse(spec)
    names = names or ("a", "b")
    lengths, batches = {}, []
    for (ell, labels), shape, name in zip(((ea, la), (eb, lb)), shapes, names):
        nb = len(shape) - len(labels)
        if nb < 0 or (nb and not ell):
            raise ValueError(f"{opname}: {name} has {len(shape)} dimension(s); {spec!r} needs "
                             f"{'at least ' if ell else ''}{len(labels)}")
        batches.append(tuple(shape[:nb]))
        for c, n in zip(labels, shape[nb:]):
            m = lengths.get(c)
            if m is not None and n is not None and m != n:
                raise ValueError(f"{opname}: {spec!r}: label {c!r} has length {m} in one operand and {n} in the "
                                 f"other (shapes {_shape(shapes[0])} and {_shape(shapes[1])})")
            if m is None:
                lengths[c] = n
    batch = static_broadcast_shape(batches, opname) if eo else ()
    return batch + tuple(lengths[c] for c in lo)


@registered(name="EINSUM", code=458)
class Einsum(_Bilinear):
    """Two-operand ``np.einsum(subscripts, a, b)``; ``...`` (leading only) broadcasts as NumPy.

    The transposes of ``dot``, ``matmul`` and ``tensordot``.  Every label
    appears in two of the three terms, so its own transposes are einsums too.
    """

    __props__ = ("batched", "a_labels", "b_labels", "out_labels")  # ints, so encode() is stable

    def __init__(self, subscripts):
        (ea, la), (eb, lb), (eo, lo) = _parse(subscripts)
        self.subscripts = subscripts
        self.batched = (ea, eb)
        self.a_labels, self.b_labels, self.out_labels = (tuple(_LETTERS.index(c) for c in t) for t in (la, lb, lo))

    def __str__(self):
        return f"einsum{{{self.subscripts}}}"

    def einsum_spec(self, a_ndim, b_ndim):
        return self.subscripts

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        shape = _einsum_shape(self.subscripts, [a.type.shape, b.type.shape], f"einsum{{{self.subscripts}}}",
                              (str(a), str(b)))
        return Apply(self, [a, b], [make_output(_result_dtype(a, b), shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _run(str(self), node, lambda a, b: np.einsum(self.subscripts, a, b), *inputs)

    def infer_shape(self, node, input_shapes):
        return [_einsum_shape(self.subscripts, input_shapes)]

    L_op = _Contraction.L_op


def einsum(subscripts, a, b):
    """``np.einsum(subscripts, a, b)`` for two operands (internal; see :class:`Einsum`)."""
    return Einsum(subscripts)(a, b)


def _einsum_transposes(spec, a, b, g):
    """Gradients of ``einsum(spec, a, b)`` with cotangent ``g``: ``[einsum("c,b->a"), einsum("a,c->b")]``."""
    from tapegrad.ops.broadcast import sum_like

    (ea, la), (eb, lb), (eo, lo) = _parse(spec)
    ell = "..." if eo else ""
    out = ell + lo
    ga = Einsum(f"{out},{'...' if eb else ''}{lb}->{ell}{la}")(g, b)
    gb = Einsum(f"{'...' if ea else ''}{la},{out}->{ell}{lb}")(a, g)
    grads = []
    for gx, x in ((ga, a), (gb, b)):
        if eo and (None in x.type.shape or gx.type.shape != x.type.shape):
            gx = sum_like(gx, x)  # undo the broadcasting of x's batch dims
        grads.append(_as_grad(gx, x))
    return grads


# --------------------------------------------------------------------------- dot
@registered(name="DOT", code=450)
class Dot(_Contraction):
    """``np.dot(a, b)`` for 0-2 dimensional operands."""

    def einsum_spec(self, a_ndim, b_ndim):
        if not a_ndim:  # a scalar times an array
            return f",{'ij'[:b_ndim]}->{'ij'[:b_ndim]}"
        if not b_ndim:
            return f"{'ij'[:a_ndim]},->{'ij'[:a_ndim]}"
        la, lb = "ij"[2 - a_ndim:], "jk"[:b_ndim]
        return f"{la},{lb}->{la[:-1]}{lb[1:]}"

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        for x in (a, b):
            if x.ndim > 2:
                raise ValueError(f"dot: {x} has {x.ndim} dimensions (shape {_shape(x.type.shape)}); dot takes 0-2 "
                                 "dimensional operands, use matmul or tensordot")
        if a.ndim and b.ndim:
            _check_contraction("dot", a, b, [(a.ndim - 1, 0)])
        shape = _einsum_shape(self.einsum_spec(a.ndim, b.ndim), [a.type.shape, b.type.shape], "dot")
        return Apply(self, [a, b], [make_output(_result_dtype(a, b), shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _run("dot", node, np.dot, *inputs)

    def infer_shape(self, node, input_shapes):
        sa, sb = input_shapes
        return [_einsum_shape(self.einsum_spec(len(sa), len(sb)), input_shapes)]


_dot = Dot()


def dot(a, b):
    """Dot product with NumPy ``dot`` semantics for 0-2 dimensional operands.

    A 0-d operand scales the other; vector . vector is 0-d; matrix . vector is
    a vector; matrix . matrix the matrix product:
    ``C[i, k] = sum_j A[i, j] B[j, k]``.  Gradients: ``dA = G B^T``, ``dB = A^T G``.
    """
    return _dot(a, b)


# --------------------------------------------------------------------------- matmul
@registered(name="MATMUL", code=451)
class Matmul(_Contraction):
    """``np.matmul(a, b)``: batched over leading dims (broadcast), 1-d operands promoted."""

    def einsum_spec(self, a_ndim, b_ndim):
        la = "...ij" if a_ndim >= 2 else "j"
        lb = "...jk" if b_ndim >= 2 else "j"
        lo = ("..." if max(a_ndim, b_ndim) >= 2 else "") + ("i" if a_ndim >= 2 else "") + ("k" if b_ndim >= 2 else "")
        return f"{la},{lb}->{lo}"

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        for x in (a, b):
            if x.ndim == 0:
                raise ValueError(f"matmul: {x} is 0-dimensional; matmul takes arrays of 1 or more dimensions "
                                 "(use * to scale)")
        _check_contraction("matmul", a, b, [(a.ndim - 1, max(b.ndim - 2, 0))])
        shape = _einsum_shape(self.einsum_spec(a.ndim, b.ndim), [a.type.shape, b.type.shape], "matmul",
                              (str(a), str(b)))
        return Apply(self, [a, b], [make_output(_result_dtype(a, b), shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _run("matmul", node, np.matmul, *inputs)

    def infer_shape(self, node, input_shapes):
        sa, sb = input_shapes
        return [_einsum_shape(self.einsum_spec(len(sa), len(sb)), input_shapes)]


_matmul = Matmul()


def matmul(a, b):
    """Matrix product with NumPy ``matmul`` semantics (``a @ b``).

    Leading (batch) dimensions broadcast; a 1-d ``a`` is a row vector and a 1-d
    ``b`` a column vector, the promoted axis removed from the result.
    ``C[..., i, k] = sum_j A[..., i, j] B[..., j, k]``; gradients are summed over
    the batch dims along which an operand was broadcast.
    """
    return _matmul(a, b)


# --------------------------------------------------------------------------- tensordot
@registered(name="TENSORDOT", code=453)
class TensorDot(_Contraction):
    """``np.tensordot(a, b, axes=(axes_a, axes_b))`` with normalised (non-negative) axes."""

    __props__ = ("axes_a", "axes_b")

    def __init__(self, axes_a, axes_b):
        self.axes_a = tuple(int(i) for i in axes_a)
        self.axes_b = tuple(int(i) for i in axes_b)

    def einsum_spec(self, a_ndim, b_ndim):
        la = _LETTERS[:a_ndim]
        lb, fresh = [], iter(_LETTERS[a_ndim:])
        for j in range(b_ndim):
            lb.append(la[self.axes_a[self.axes_b.index(j)]] if j in self.axes_b else next(fresh))
        lo = "".join(c for i, c in enumerate(la) if i not in self.axes_a)
        lo += "".join(c for j, c in enumerate(lb) if j not in self.axes_b)
        return f"{la},{''.join(lb)}->{lo}"

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        for axes, x in ((self.axes_a, a), (self.axes_b, b)):
            if any(i >= x.ndim for i in axes):
                raise ValueError(f"tensordot: axes {axes} out of range for {x} with shape {_shape(x.type.shape)}")
        _check_contraction("tensordot", a, b, list(zip(self.axes_a, self.axes_b)))
        shape = _einsum_shape(self.einsum_spec(a.ndim, b.ndim), [a.type.shape, b.type.shape], "tensordot")
        return Apply(self, [a, b], [make_output(_result_dtype(a, b), shape)])

    def perform(self, node, inputs, output_storage):
        fn = lambda a, b: np.tensordot(a, b, axes=(list(self.axes_a), list(self.axes_b)))  # noqa: E731
        output_storage[0][0] = _run("tensordot", node, fn, *inputs)

    def infer_shape(self, node, input_shapes):
        sa, sb = input_shapes
        return [_einsum_shape(self.einsum_spec(len(sa), len(sb)), input_shapes)]


def _norm_axes(axes, ndim, x):
    out = []
    for i in axes:
        i = int(i)
        if not -ndim <= i < ndim:
            raise ValueError(f"tensordot: axis {i} is out of bounds for {x} with {ndim} dimension(s)")
        out.append(i % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"tensordot: repeated axis in {tuple(axes)} for {x}")
    return tuple(out)


def tensordot(a, b, axes=2):
    """Sum of products over the given axes, as ``np.tensordot``.

    ``axes`` is an int ``n`` (the last ``n`` axes of ``a`` with the first ``n``
    of ``b``) or a pair ``(axes_a, axes_b)`` of ints or equal-length sequences.
    The result's axes are ``a``'s free axes then ``b``'s, in order.
    """
    a, b = as_tensor(a), as_tensor(b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        if n < 0 or n > a.ndim or n > b.ndim:
            raise ValueError(f"tensordot: axes={n} needs {n} dimensions in both {a} ({a.ndim}) and {b} ({b.ndim})")
        axes_a, axes_b = tuple(range(a.ndim - n, a.ndim)), tuple(range(n))
    else:
        try:
            axes_a, axes_b = axes
        except (TypeError, ValueError):
            raise ValueError(f"tensordot: axes must be an int or a pair of sequences, got {axes!r}") from None
        axes_a = (axes_a,) if isinstance(axes_a, (int, np.integer)) else tuple(axes_a)
        axes_b = (axes_b,) if isinstance(axes_b, (int, np.integer)) else tuple(axes_b)
        if len(axes_a) != len(axes_b):
            raise ValueError(f"tensordot: axes {axes_a} of {a} and {axes_b} of {b} differ in length")
    return TensorDot(_norm_axes(axes_a, a.ndim, a), _norm_axes(axes_b, b.ndim, b))(a, b)


# --------------------------------------------------------------------------- outer
def _size(shape):
    return None if None in shape else int(np.prod(shape, dtype=np.int64))


@registered(name="OUTER", code=452)
class Outer(_Bilinear):
    """``np.outer(a, b)``: ``C[i, j] = a.flat[i] * b.flat[j]`` (operands of any rank are flattened)."""

    def make_node(self, a, b):
        a, b = as_tensor(a), as_tensor(b)
        shape = (_size(a.type.shape), _size(b.type.shape))
        return Apply(self, [a, b], [make_output(_result_dtype(a, b), shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _run("outer", node, np.outer, *inputs)

    def infer_shape(self, node, input_shapes):
        return [(_size(input_shapes[0]), _size(input_shapes[1]))]

    def L_op(self, inputs, outputs, output_grads):
        a, b = inputs
        (g,) = output_grads
        return [_as_grad(OuterT(0)(g, b, a), a), _as_grad(OuterT(1)(g, a, b), b)]


_outer = Outer()


def outer(a, b):
    """Outer product of ``a`` and ``b`` flattened, as ``np.outer``: shape ``(a.size, b.size)``."""
    return _outer(a, b)


@registered(name="OUTER_T", code=456)
class OuterT(Op):
    """Transposes of outer, shaped like ``ref`` (internal).

    ``side=0``: ``(g @ other.ravel()).reshape(ref.shape)``;
    ``side=1``: ``(other.ravel() @ g).reshape(ref.shape)``.  Bilinear in
    ``(g, other)``; ``ref`` only gives the shape (not connected).
    """

    __props__ = ("side",)
    kind = "bilinear"

    def __init__(self, side):
        self.side = int(side)

    def make_node(self, g, other, ref):
        g, other, ref = as_tensor(g), as_tensor(other), as_tensor(ref)
        if g.ndim != 2:
            raise ValueError(f"outer_t: {g} must be 2-d, got shape {_shape(g.type.shape)}")
        lengths = [(g.type.shape[1 - self.side], _size(other.type.shape)),
                   (g.type.shape[self.side], _size(ref.type.shape))]
        for n, m in lengths:
            if n is not None and m is not None and n != m:
                raise ValueError(f"outer_t: {g} of shape {_shape(g.type.shape)} does not match {other} of shape "
                                 f"{_shape(other.type.shape)} and {ref} of shape {_shape(ref.type.shape)}")
        return Apply(self, [g, other, ref], [make_output(_result_dtype(g, other), ref.type.shape)])

    def perform(self, node, inputs, output_storage):
        g, other, ref = inputs
        fn = (lambda g, o: g @ o.ravel()) if self.side == 0 else (lambda g, o: o.ravel() @ g)
        y = _run("outer_t", node, fn, g, other)
        output_storage[0][0] = y.reshape(np.shape(ref))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[2])]

    def connection_pattern(self, node):
        return [[True], [True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        g, other, _ = inputs
        (h,) = output_grads
        if self.side == 0:  # r = g @ o: dg = outer(h, o), do = h @ g
            dg, do = Outer()(h, other), OuterT(1)(g, h, other)
        else:  # r = o @ g: dg = outer(o, h), do = g @ h
            dg, do = Outer()(other, h), OuterT(0)(g, h, other)
        return [_as_grad(dg, g), _as_grad(do, other), disconnected_type()]

    def R_op(self, inputs, eval_points):
        g, other, ref = inputs
        ug, uo = eval_points[0], eval_points[1]
        if ug is None and uo is None:
            return [None]
        terms = [None if ug is None else self(ug, other, ref), None if uo is None else self(g, uo, ref)]
        return [_add_terms(terms, _tangent_dtype(_result_dtype(g, other)))]


# --------------------------------------------------------------------------- diagonal, trace
def _diag_len(n1, n2, offset):
    if n1 is None or n2 is None:
        return None
    return max(0, min(n1, n2 - offset) if offset >= 0 else min(n1 + offset, n2))


def _diag_axes(x, axis1, axis2, opname):
    if x.ndim < 2:
        raise ValueError(f"{opname}: {x} has shape {_shape(x.type.shape)}; it needs at least 2 dimensions")
    out = []
    for a in (axis1, axis2):
        a = int(a)
        if not -x.ndim <= a < x.ndim:
            raise ValueError(f"{opname}: axis {a} is out of bounds for {x} with {x.ndim} dimensions")
        out.append(a % x.ndim)
    if out[0] == out[1]:
        raise ValueError(f"{opname}: axis1 and axis2 cannot be the same axis ({axis1}, {axis2})")
    return out


def _diagonal_shape(shape, offset, axis1, axis2, trace):
    rest = tuple(n for i, n in enumerate(shape) if i not in (axis1, axis2))
    return rest if trace else rest + (_diag_len(shape[axis1], shape[axis2], offset),)


def _trace_dtype(dtype):
    dt = np.trace(np.zeros((1, 1), dtype=dtype)).dtype.name
    return dt if dt in ("float64", "float32", "int64", "int32") else "int64"


class _DiagonalBase(Op):
    __props__ = ("offset", "axis1", "axis2")
    kind = "linear"
    trace = False

    def __init__(self, offset=0, axis1=0, axis2=1):
        self.offset, self.axis1, self.axis2 = int(offset), int(axis1), int(axis2)

    def make_node(self, x):
        x = as_tensor(x)
        name = "trace" if self.trace else "diagonal"
        a1, a2 = _diag_axes(x, self.axis1, self.axis2, name)
        if (a1, a2) != (self.axis1, self.axis2):
            raise ValueError(f"{name}: op axes must be normalised, got {(self.axis1, self.axis2)}")
        dtype = _trace_dtype(x.dtype) if self.trace else x.dtype
        shape = _diagonal_shape(x.type.shape, self.offset, a1, a2, self.trace)
        return Apply(self, [x], [make_output(dtype, shape)])

    def perform(self, node, inputs, output_storage):
        fn = np.trace if self.trace else np.diagonal
        y = fn(inputs[0], self.offset, self.axis1, self.axis2)
        output_storage[0][0] = np.array(y, dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [_diagonal_shape(tuple(input_shapes[0]), self.offset, self.axis1, self.axis2, self.trace)]

    def L_op(self, inputs, outputs, output_grads):
        (x,) = inputs
        g = DiagEmbed(self.offset, self.axis1, self.axis2, self.trace)(output_grads[0], x)
        return [_as_grad(g, x)]

    def R_op(self, inputs, eval_points):
        (u,) = eval_points
        return [None if u is None else self(u)]


@registered(name="DIAGONAL", code=454)
class Diagonal(_DiagonalBase):
    """``np.diagonal(x, offset, axis1, axis2)`` (a copy): the diagonal becomes the last axis."""


@registered(name="TRACE", code=455)
class Trace(_DiagonalBase):
    """``np.trace(x, offset, axis1, axis2)``: the sum of the diagonal."""

    trace = True


@registered(name="DIAG_EMBED", code=457)
class DiagEmbed(Op):
    """Transpose of diagonal (``trace=False``) and trace (``trace=True``) (internal).

    ``diag_embed(g, ref)``: zeros shaped like ``ref`` with ``g`` written on the
    diagonal (for trace, ``g`` broadcast along it).  ``ref`` gives only the shape.
    """

    __props__ = ("offset", "axis1", "axis2", "trace")
    kind = "linear"

    def __init__(self, offset, axis1, axis2, trace):
        self.offset, self.axis1, self.axis2, self.trace = int(offset), int(axis1), int(axis2), bool(trace)

    def make_node(self, g, ref):
        g, ref = as_tensor(g), as_tensor(ref)
        want = _diagonal_shape(ref.type.shape, self.offset, self.axis1, self.axis2, self.trace)
        if g.ndim != len(want) or any(n is not None and m is not None and n != m for n, m in zip(g.type.shape, want)):
            raise ValueError(f"diag_embed: {g} of shape {_shape(g.type.shape)} does not fit the diagonal "
                             f"{_shape(want)} of {ref} with shape {_shape(ref.type.shape)}")
        return Apply(self, [g, ref], [make_output(g.dtype, ref.type.shape)])

    def perform(self, node, inputs, output_storage):
        g, ref = inputs
        out = np.zeros(np.shape(ref), dtype=node.outputs[0].dtype)
        view = np.moveaxis(out, (self.axis1, self.axis2), (-2, -1))
        k = _diag_len(view.shape[-2], view.shape[-1], self.offset)
        i = np.arange(k)
        view[..., i + max(-self.offset, 0), i + max(self.offset, 0)] = g[..., None] if self.trace else g
        output_storage[0][0] = out

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1])]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        cls = Trace if self.trace else Diagonal
        return [cls(self.offset, self.axis1, self.axis2)(output_grads[0]), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


def diagonal(x, offset=0, axis1=0, axis2=1):
    """The diagonal of ``x`` over ``(axis1, axis2)`` as ``np.diagonal`` (a copy, not a view).

    The two axes are removed and the diagonal, ``x[..., i, i + offset]``, is
    appended as the last axis.  Linear; its transpose writes the cotangent back
    onto the diagonal of zeros.
    """
    x = as_tensor(x)
    a1, a2 = _diag_axes(x, axis1, axis2, "diagonal")
    return Diagonal(offset, a1, a2)(x)


def diag(v, k=0):
    """Aesara's (and NumPy's) ``diag``: of a vector, the square matrix with ``v`` on its ``k``-th diagonal and zeros
    elsewhere; of a matrix, its ``k``-th diagonal (a copy, as :func:`diagonal`).

    Both are linear and each is the other's transpose; a product with the matrix of a vector scales rows or
    columns on the program tier instead of calling BLAS.
    """
    v = as_tensor(v)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"diag: k must be an int, got {k!r}")
    k = int(k)
    if v.ndim == 2:
        return diagonal(v, k)
    if v.ndim != 1:
        raise ValueError(f"diag: the input must be a vector or a matrix, got {v} with {v.ndim} dimensions")
    from tapegrad.ops.alloc import zeros

    n = v.shape[0] + abs(k)
    return DiagEmbed(k, 0, 1, False)(v, zeros((n, n), v.dtype))


def trace(x, offset=0, axis1=0, axis2=1):
    """Sum along the diagonal of ``x``, as ``np.trace``: ``sum_i x[..., i, i + offset]``.

    Integer inputs sum in int64 as NumPy does.  The gradient is the cotangent
    broadcast onto the diagonal (zero elsewhere).
    """
    x = as_tensor(x)
    a1, a2 = _diag_axes(x, axis1, axis2, "trace")
    return Trace(offset, a1, a2)(x)
