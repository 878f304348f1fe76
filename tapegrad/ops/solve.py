"""Linear algebra with both derivative rules: codes 600-649 (public as ``tg.linalg``).

==========  ====  =======  ============================================================
op          code  kind     rules (``A`` the matrix, ``X`` / ``Y`` the outputs)
==========  ====  =======  ============================================================
tri         600   linear   ``tril``/``triu`` mask; self-adjoint (L_op = R_op = the mask)
solve       601   general  ``dX = A^-1 (dB - dA X)``;  ``B_bar = A^-T G``, ``A_bar = -B_bar X^T``
inv         602   general  ``dY = -Y dA Y``;  ``A_bar = -Y^T G Y^T``
det         603   general  ``dd = d tr(A^-1 dA)``;  ``A_bar = g d A^-T``
slogdet     604   general  sign: zero tangent/gradient;  ``dl = tr(A^-1 dA)``, ``A_bar = g A^-T``
cholesky    605   general  ``dL = L Phi(L^-1 dS L^-T)``;  ``S_bar = L^-T Phi(L^T L_bar) L^-1``
eigh        606   general  ``dw = diag(V^T dS V)``, ``dV = V (F o V^T dS V)``
norm        607   general  ``dn = <x, dx> / n``;  ``x_bar = g x / n`` (``0/0 := 0``)
==========  ====  =======  ============================================================

``Phi(X)`` keeps the strict lower triangle of ``X`` and half its diagonal;
``F_ij = 1 / (w_j - w_i)`` off the diagonal, 0 on it.  Every rule is a graph of
existing ops (matmul, einsum, transposes, elementwise, sum) and the ops here,
so derivatives nest to any order.

Triangle reading.  ``cholesky`` and ``eigh`` read one triangle of their input,
as LAPACK does: the matrix they factor is ``S = sym(A)`` made from that
triangle (``tril(A) + tril(A, -1)^T`` for the lower one).  Their rules are the
exact derivatives of that function of the whole input, so the gradient lives on
the triangle read (off-diagonal entries get ``S_bar_ij + S_bar_ji``) and
finite differences in any direction agree.  ``solve(assume_a="sym"|"pos")``
reads the triangle selected by ``lower`` the same way (as SciPy does).

Degenerate points (documented conventions): ``det``/``slogdet``/``inv``/
``solve`` rules raise ``LinAlgError`` at singular matrices (they solve with
``A``); ``eigh``'s ``F`` is infinite for repeated eigenvalues, so eigenvector
derivatives there are inf/NaN (eigenvalue derivatives stay finite);
``norm'(0) = 0`` (safe division).  Every op batches over leading dimensions.
"""

from __future__ import annotations

import numpy as np

from tapegrad.config import config
from tapegrad.graph import as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, make_output, normalize_axis, static_broadcast_shape
from tapegrad.registry import registered

__all__ = [
    "solve", "solve_triangular", "inv", "det", "slogdet", "cholesky", "eigh", "norm", "tril", "triu",
]


# --------------------------------------------------------------------------- helpers
def _fmt(s):
    return "(" + ", ".join("?" if n is None else str(n) for n in s) + ("," if len(s) == 1 else "") + ")"


def _float_input(x):
    """``x`` as a float tensor: float stays, int/bool -> float64."""
    from tapegrad.ops.elemwise import cast

    x = as_tensor(x)
    return x if is_float_dtype(x.dtype) else cast(x, "float64")


def _common_float(*xs):
    from tapegrad.ops.elemwise import cast

    xs = [_float_input(x) for x in xs]
    dt = np.result_type(*[np.dtype(x.dtype) for x in xs]).name
    return [x if x.dtype == dt else cast(x, dt) for x in xs]


def _check_square(opname, a):
    if a.ndim < 2:
        raise ValueError(f"{opname}: {a} has shape {_fmt(a.type.shape)}; it needs a (..., n, n) matrix")
    m, n = a.type.shape[-2:]
    if m is not None and n is not None and m != n:
        raise ValueError(f"{opname}: {a} of shape {_fmt(a.type.shape)} is not square")
    return n if n is not None else m


def _run(opname, node, fn, *arrays):
    """``fn(*arrays)``, re-raising ``LinAlgError`` with the op, the input and its shape."""
    try:
        return fn(*arrays)
    except np.linalg.LinAlgError as e:
        raise np.linalg.LinAlgError(
            f"{opname}: {node.inputs[0]} of shape {np.shape(arrays[0])} ({node.inputs[0].dtype}): {e}"
        ) from None


def _out(node, k, y):
    return np.array(y, dtype=node.outputs[k].dtype)  # a fresh array of the declared dtype


def mT(x):
    """``x`` with its last two axes swapped (batched matrix transpose)."""
    from tapegrad.ops.shape import transpose

    nd = x.ndim
    return transpose(x, tuple(range(nd - 2)) + (nd - 1, nd - 2))


def _trace2(x):
    """Trace over the last two axes."""
    from tapegrad.ops.linalg import trace

    return trace(x, 0, x.ndim - 2, x.ndim - 1)


def _expand2(d):
    """``d[..., None, None]``."""
    from tapegrad.ops.shape import expand_dims

    return expand_dims(d, (d.ndim, d.ndim + 1))


def _eye_like(w, dtype):
    """``eye(n)`` with ``n = w.shape[-1]``."""
    from tapegrad.ops.alloc import eye
    from tapegrad.ops.shape import shape_i

    return eye(shape_i(w, w.ndim - 1), dtype=dtype)


def _np_sym(a, lower):
    """The symmetric matrix read from one triangle of ``a`` (NumPy)."""
    t = np.tril(a) if lower else np.triu(a)
    return t + np.swapaxes(np.tril(a, -1) if lower else np.triu(a, 1), -1, -2)


def _sym(x, lower):
    """Symbolic ``sym``: ``tril(x) + tril(x, -1)^T`` (or the upper analogue). Linear."""
    return _tri(x, lower, 0) + mT(_tri(x, lower, -1 if lower else 1))


def _sym_T(g, lower):
    """The transpose of :func:`_sym`: ``tril(g + g^T) - diag(g)`` (the gradient on the triangle read)."""
    return _tri(g + mT(g), lower, 0) - _diagpart(g)


def _diagpart(x):
    return _tri(_tri(x, True, 0), False, 0)


def _phi(x):
    """``Phi(X)``: the strict lower triangle plus half the diagonal."""
    return (_tri(x, True, 0) + _tri(x, True, -1)) * 0.5


def _sum_to(g, x):
    """``g`` summed down to ``x``'s shape where ``x``'s batch dims were broadcast."""
    from tapegrad.ops.broadcast import sum_like

    if g.ndim != x.ndim or None in x.type.shape or g.type.shape != x.type.shape:
        return sum_like(g, x)
    return g


# --------------------------------------------------------------------------- tri (600)
@registered(name="TRI", code=600)
class Tri(Op):
    """``np.tril(x, k)`` (``lower``) or ``np.triu(x, k)`` over the last two axes.

    Linear and self-adjoint (a mask): ``L_op = tri(g)``, ``R_op = tri(u)``.
    """

    __props__ = ("lower", "k")
    kind = "linear"

    def __init__(self, lower=True, k=0):
        self.lower, self.k = bool(lower), int(k)

    def make_node(self, x):
        x = as_tensor(x)
        if x.ndim < 2:
            raise ValueError(f"{'tril' if self.lower else 'triu'}: {x} has shape {_fmt(x.type.shape)}; "
                             "it needs at least 2 dimensions")
        return Apply(self, [x], [make_output(x.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        fn = np.tril if self.lower else np.triu
        output_storage[0][0] = _out(node, 0, fn(inputs[0], self.k))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        return [self(output_grads[0])]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u)]


def _tri(x, lower, k):
    return Tri(lower, k)(x)


def tril(x, k=0):
    """Lower triangle of the last two axes of ``x`` (``np.tril``); entries above diagonal ``k`` are zero."""
    return Tri(True, k)(x)


def triu(x, k=0):
    """Upper triangle of the last two axes of ``x`` (``np.triu``); entries below diagonal ``k`` are zero."""
    return Tri(False, k)(x)


# --------------------------------------------------------------------------- solve (601)
_ASSUME = ("gen", "sym", "pos", "lower", "upper")
_FLIP = {"lower": "upper", "upper": "lower"}


@registered(name="SOLVE", code=601)
class Solve(Op):
    """``X = A^-1 B`` (``np.linalg.solve``), batch dims of ``A`` and ``B`` broadcast.

    ``vector=False``: ``B`` is ``(..., n, k)``; ``vector=True``: ``B`` is a
    stack of vectors ``(..., n)``.  ``assume_a="pos"`` checks positive
    definiteness (Cholesky) before solving; the op reads the whole of ``A``
    (the public ``solve`` symmetrizes from one triangle first).
    ``assume_a="lower"``/``"upper"``: only that triangle of ``A`` is read, by
    substitution (``n**2 k`` operations instead of LU's ``n**3``); a zero on the
    diagonal raises ``LinAlgError`` as a singular LU does.  Its derivatives
    keep to the triangle.
    """

    __props__ = ("assume_a", "vector")

    def __init__(self, assume_a="gen", vector=False):
        if assume_a not in _ASSUME:
            raise ValueError(f"solve: assume_a must be one of {_ASSUME}, got {assume_a!r}")
        self.assume_a, self.vector = assume_a, bool(vector)

    def make_node(self, a, b):
        a, b = _common_float(a, b)
        n = _check_square("solve", a)
        core = 1 if self.vector else 2
        if b.ndim < core:
            want = "(..., n)" if self.vector else "(..., n, k)"
            raise ValueError(f"solve: {b} of shape {_fmt(b.type.shape)} must be {want}")
        m = b.type.shape[-core]
        if n is not None and m is not None and n != m:
            raise ValueError(f"solve: {a} of shape {_fmt(a.type.shape)} and {b} of shape {_fmt(b.type.shape)} "
                             f"do not match ({n} != {m})")
        n = n if n is not None else m
        batch = static_broadcast_shape([a.type.shape[:-2], b.type.shape[: b.ndim - core]], "solve")
        shape = batch + ((n,) if self.vector else (n, b.type.shape[-1]))
        return Apply(self, [a, b], [make_output(a.dtype, shape)])

    def perform(self, node, inputs, output_storage):
        def fn(a, b):
            if self.assume_a in _FLIP:
                lower, dt = self.assume_a == "lower", node.outputs[0].dtype
                if self.vector:
                    return _substitute(a, b[..., None], lower, dt)[..., 0]
                return _substitute(a, b, lower, dt)
            if self.assume_a == "pos":
                np.linalg.cholesky(a)  # raises LinAlgError unless positive definite
            if self.vector:
                return np.linalg.solve(a, b[..., None])[..., 0]
            return np.linalg.solve(a, b)

        output_storage[0][0] = _out(node, 0, _run("solve", node, fn, *inputs))

    def infer_shape(self, node, input_shapes):
        sa, sb = (tuple(s) for s in input_shapes)
        core = 1 if self.vector else 2
        batch = tuple(np.broadcast_shapes(sa[:-2], sb[: len(sb) - core]))
        return [batch + ((sa[-1],) if self.vector else (sa[-1], sb[-1]))]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.linalg import einsum, matmul

        a, b = inputs
        (x,), (g,) = outputs, output_grads
        tri = self.assume_a in _FLIP
        gb = (Solve(_FLIP[self.assume_a], self.vector) if tri else self)(mT(a), g)  # B_bar = A^-T G
        ga = -(einsum("...i,...j->...ij", gb, x) if self.vector else matmul(gb, mT(x)))  # A_bar = -B_bar X^T
        if tri:  # only the triangle is read
            ga = _tri(ga, self.assume_a == "lower", 0)
        return [_sum_to(ga, a), _sum_to(gb, b)]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.linalg import einsum, matmul

        a, b = inputs
        ua, ub = eval_points
        if ua is None and ub is None:
            return [None]
        rhs = ub
        if ua is not None:
            if self.assume_a in _FLIP:
                ua = _tri(ua, self.assume_a == "lower", 0)
            x = self(a, b)
            t = einsum("...ij,...j->...i", ua, x) if self.vector else matmul(ua, x)
            rhs = -t if rhs is None else rhs - t
        return [self(a, rhs)]  # A^-1 (dB - dA X)


def _substitute(a, b, lower, dtype):
    """``T^-1 B`` by forward (``lower``) or back substitution, ``T`` the triangle of ``a`` (batched over leading
    axes); a zero on the diagonal raises ``LinAlgError`` (as LU does for a singular ``T``)."""
    a, b = np.asarray(a, dtype), np.asarray(b, dtype)
    n = a.shape[-1]
    d = np.diagonal(a, axis1=-2, axis2=-1)
    if np.any(d == 0):
        raise np.linalg.LinAlgError("Singular matrix")
    x = np.array(np.broadcast_to(b, np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + b.shape[-2:]), dtype)
    with np.errstate(all="ignore"):
        for i in range(n) if lower else range(n - 1, -1, -1):
            lo, hi = (0, i) if lower else (i + 1, n)
            if hi > lo:
                x[..., i, :] -= np.einsum("...j,...jk->...k", a[..., i, lo:hi], x[..., lo:hi, :])
            x[..., i, :] /= d[..., i, None]
    return x


def solve(a, b, assume_a="gen", lower=False):
    """Solve ``a @ x = b`` for ``x``, batched over leading dimensions.

    Parameters
    ----------
    a : (..., n, n) tensor
    b : (n,) or (..., n, k) tensor (batch dimensions broadcast with ``a``'s)
    assume_a : {"gen", "sym", "pos", "lower", "upper"}
        ``"gen"``: a general matrix (LU).  ``"sym"``/``"pos"``: symmetric
        (positive definite) -- only the triangle chosen by ``lower`` is read
        (as SciPy); ``"pos"`` raises ``LinAlgError`` when the matrix is not
        positive definite.  ``"lower"``/``"upper"``: triangular, see
        :func:`solve_triangular`.
    lower : bool
        Which triangle ``"sym"``/``"pos"`` read.

    Notes
    -----
    ``dx = a^-1 (db - da x)``; ``b_bar = a^-T g``, ``a_bar = -b_bar x^T``
    (restricted to the triangle read for ``"sym"``/``"pos"``).
    """
    if assume_a in ("lower", "upper"):
        return solve_triangular(a, b, lower=assume_a == "lower")
    if assume_a not in _ASSUME:
        raise ValueError(f"solve: assume_a must be one of 'gen', 'sym', 'pos', 'lower', 'upper'; got {assume_a!r}")
    a, b = _common_float(a, b)
    if assume_a != "gen":
        _check_square("solve", a)
        a = _sym(a, bool(lower))
    return Solve(assume_a, b.ndim == 1)(a, b)


def solve_triangular(a, b, lower=False, unit_diagonal=False):
    """Solve ``t @ x = b`` where ``t`` is the lower (``lower=True``) or upper triangle of ``a``.

    Only that triangle is read (and differentiated); with ``unit_diagonal``
    the diagonal is taken to be ones and not read either.  Batched as :func:`solve`.
    """
    a, b = _common_float(a, b)
    _check_square("solve_triangular", a)
    if unit_diagonal:
        a = _tri(a, lower, -1 if lower else 1) + _eye_like(a, a.dtype)
    return Solve("lower" if lower else "upper", b.ndim == 1)(a, b)


# --------------------------------------------------------------------------- inv (602)
class _SquareOp(Op):
    """One (..., n, n) float input."""

    opname = "?"

    def _input(self, a):
        a = _float_input(a)
        _check_square(self.opname, a)
        return a


@registered(name="INV", code=602)
class Inv(_SquareOp):
    """``Y = A^-1`` (``np.linalg.inv``), batched."""

    opname = "inv"

    def make_node(self, a):
        a = self._input(a)
        return Apply(self, [a], [make_output(a.dtype, a.type.shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _out(node, 0, _run("inv", node, np.linalg.inv, inputs[0]))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.linalg import matmul

        yt = mT(outputs[0])
        return [-matmul(matmul(yt, output_grads[0]), yt)]  # -Y^T G Y^T

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.linalg import matmul

        u = eval_points[0]
        if u is None:
            return [None]
        y = self(inputs[0])
        return [-matmul(matmul(y, u), y)]  # -Y dA Y


def inv(a):
    """Inverse of the square matrix ``a`` (batched).  ``d(inv) = -inv dA inv``; singular -> ``LinAlgError``."""
    return Inv()(a)


# --------------------------------------------------------------------------- det (603), slogdet (604)
@registered(name="DET", code=603)
class Det(_SquareOp):
    """``d = det(A)`` (``np.linalg.det``), batched: output shape ``A.shape[:-2]``."""

    opname = "det"

    def make_node(self, a):
        a = self._input(a)
        return Apply(self, [a], [make_output(a.dtype, a.type.shape[:-2])])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _out(node, 0, _run("det", node, np.linalg.det, inputs[0]))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0][:-2])]

    def L_op(self, inputs, outputs, output_grads):
        (a,), (d,), (g,) = inputs, outputs, output_grads
        return [_expand2(g * d) * mT(inv(a))]  # g d A^-T

    def R_op(self, inputs, eval_points):
        (a,), (u,) = inputs, eval_points
        if u is None:
            return [None]
        return [self(a) * _trace2(Solve()(a, u))]  # d tr(A^-1 dA)


def det(a):
    """Determinant of ``a`` (batched).  ``d(det) = det tr(a^-1 da)``; its rules solve with ``a``,
    so they raise ``LinAlgError`` at a singular ``a`` (the adjugate is not formed)."""
    return Det()(a)


@registered(name="SLOGDET", code=604)
class SlogDet(_SquareOp):
    """``(sign, log|det A|)`` (``np.linalg.slogdet``), batched; ``sign`` is piecewise constant."""

    opname = "slogdet"

    def make_node(self, a):
        a = self._input(a)
        shape = a.type.shape[:-2]
        return Apply(self, [a], [make_output(a.dtype, shape), make_output(a.dtype, shape)])

    def perform(self, node, inputs, output_storage):
        sign, logdet = _run("slogdet", node, np.linalg.slogdet, inputs[0])
        output_storage[0][0] = _out(node, 0, sign)
        output_storage[1][0] = _out(node, 1, logdet)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0][:-2])] * 2

    def L_op(self, inputs, outputs, output_grads):
        (a,), g = inputs, output_grads[1]  # the sign passes no gradient
        return [_expand2(g) * mT(inv(a))]  # g A^-T

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.alloc import zeros_like

        (a,), (u,) = inputs, eval_points
        if u is None:
            return [None, None]
        sign = self(a)[0]
        return [zeros_like(sign), _trace2(Solve()(a, u))]


def slogdet(a):
    """``(sign, logabsdet)`` of ``a`` as ``np.linalg.slogdet`` (batched).

    ``sign`` is not differentiable (zero gradient and tangent, as integer-valued
    ops); ``d logabsdet = tr(a^-1 da)``, ``a_bar = g a^-T``.
    """
    sign, logdet = SlogDet()(a)
    return sign, logdet


# --------------------------------------------------------------------------- cholesky (605)
@registered(name="CHOLESKY", code=605)
class Cholesky(_SquareOp):
    """Lower Cholesky factor ``L`` of ``S = sym(A)`` read from the lower triangle of ``A`` (batched).

    ``dL = L Phi(L^-1 dS L^-T)``;  ``S_bar = L^-T Phi(L^T L_bar) L^-1`` then
    ``A_bar = tril(S_bar + S_bar^T) - diag(S_bar)`` (the triangle read).
    """

    opname = "cholesky"

    def make_node(self, a):
        a = self._input(a)
        return Apply(self, [a], [make_output(a.dtype, a.type.shape)])

    def perform(self, node, inputs, output_storage):
        fn = lambda a: np.linalg.cholesky(_np_sym(a, True))  # noqa: E731
        output_storage[0][0] = _out(node, 0, _run("cholesky", node, fn, inputs[0]))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.linalg import matmul

        (L,), (g,) = outputs, output_grads
        lt = mT(L)
        y = Solve("upper")(lt, _phi(matmul(lt, g)))  # L^-T Phi(L^T L_bar)
        s = mT(Solve("upper")(lt, mT(y)))  # ... L^-1
        return [_sym_T(s, True)]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.linalg import matmul

        (a,), (u,) = inputs, eval_points
        if u is None:
            return [None]
        L = self(a)
        z = Solve("lower")(L, _sym(u, True))  # L^-1 dS
        x = mT(Solve("lower")(L, mT(z)))  # L^-1 dS L^-T
        return [matmul(L, _phi(x))]


def cholesky(a, lower=True):
    """Cholesky factor of the symmetric positive definite ``a`` (batched).

    ``lower=True``: ``L`` with ``a = L L^T``, reading the lower triangle of
    ``a``; ``lower=False``: ``U = L^T`` with ``a = U^T U``, reading the upper
    triangle.  Not positive definite -> ``LinAlgError``.  Derivatives: see
    :class:`Cholesky` (Murray 2016); they are exact for the triangle read.
    """
    a = _float_input(a)
    if lower:
        return Cholesky()(a)
    _check_square("cholesky", a)
    return mT(Cholesky()(mT(a)))


# --------------------------------------------------------------------------- eigh (606)
@registered(name="EIGH", code=606)
class Eigh(_SquareOp):
    """``(w, V) = eigh(S)``, ``S = sym(A)`` read from the ``UPLO`` triangle; ``w`` ascending (batched).

    ``dw = diag(V^T dS V)``, ``dV = V (F o (V^T dS V))`` with
    ``F_ij = 1/(w_j - w_i)`` (``i != j``), ``F_ii = 0``;
    ``S_bar = V (diag(w_bar) + F o (V^T V_bar)) V^T``.  Repeated eigenvalues make
    ``F`` (and the eigenvector derivatives) infinite: the eigenvectors are not
    differentiable there.
    """

    __props__ = ("lower",)
    opname = "eigh"

    def __init__(self, lower=True):
        self.lower = bool(lower)

    def make_node(self, a):
        a = self._input(a)
        n = _check_square("eigh", a)
        return Apply(self, [a], [make_output(a.dtype, a.type.shape[:-2] + (n,)),
                                 make_output(a.dtype, a.type.shape)])

    def perform(self, node, inputs, output_storage):
        fn = lambda a: np.linalg.eigh(_np_sym(a, self.lower))  # noqa: E731
        w, v = _run("eigh", node, fn, inputs[0])
        output_storage[0][0] = _out(node, 0, w)
        output_storage[1][0] = _out(node, 1, v)

    def infer_shape(self, node, input_shapes):
        s = tuple(input_shapes[0])
        return [s[:-1], s]

    def _f(self, w):
        """``F_ij = 1/(w_j - w_i)`` off the diagonal, 0 on it: ``(1 - I) / (D + I)``."""
        from tapegrad.ops.shape import expand_dims

        eye = _eye_like(w, w.dtype)
        d = expand_dims(w, w.ndim - 1) - expand_dims(w, w.ndim)  # D_ij = w_j - w_i
        return (1.0 - eye) / (d + eye)

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import azmul
        from tapegrad.ops.linalg import matmul
        from tapegrad.ops.shape import expand_dims

        (w, v), (gw, gv) = outputs, output_grads
        inner = expand_dims(gw, gw.ndim - 1) * _eye_like(w, w.dtype) + azmul(matmul(mT(v), gv), self._f(w))
        s = matmul(matmul(v, inner), mT(v))
        return [_sym_T(s, self.lower)]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.linalg import diagonal, matmul

        (a,), (u,) = inputs, eval_points
        if u is None:
            return [None, None]
        w, v = self(a)
        p = matmul(matmul(mT(v), _sym(u, self.lower)), v)
        return [diagonal(p, 0, p.ndim - 2, p.ndim - 1), matmul(v, self._f(w) * p)]


def eigh(a, UPLO="L"):  # noqa: N803 - NumPy's name
    """Eigenvalues (ascending) and eigenvectors of the symmetric matrix read from the ``UPLO`` triangle of ``a``.

    Returns ``(w, v)`` as ``np.linalg.eigh`` (batched).  Eigenvector
    derivatives are undefined (infinite) at repeated eigenvalues; see :class:`Eigh`.
    """
    if UPLO not in ("L", "U"):
        raise ValueError(f"eigh: UPLO must be 'L' or 'U', got {UPLO!r}")
    w, v = Eigh(UPLO == "L")(a)
    return w, v


# --------------------------------------------------------------------------- norm (607)
@registered(name="NORM", code=607)
class Norm(Op):
    """``sqrt(sum(x**2, axis, keepdims))``: the vector 2-norm / Frobenius norm over ``axis``.

    ``dn = <x, dx> / n``; ``x_bar = g x / n``; at ``n = 0`` the division is
    safe (``0/0 := 0``), so ``norm'(0) = 0`` (a subgradient).
    """

    __props__ = ("axis", "keepdims")

    def __init__(self, axis, keepdims=False):
        self.axis, self.keepdims = tuple(int(a) for a in axis), bool(keepdims)

    def make_node(self, x):
        x = _float_input(x)
        if self.axis != normalize_axis(self.axis, x.ndim, "norm"):
            raise ValueError(f"norm: op axes must be normalised, got {self.axis}")
        shape = tuple(1 if i in self.axis else n for i, n in enumerate(x.type.shape)
                      if self.keepdims or i not in self.axis)
        return Apply(self, [x], [make_output(x.dtype, shape)])

    def perform(self, node, inputs, output_storage):
        x = inputs[0]
        y = np.sqrt(np.sum(np.square(x), axis=self.axis, keepdims=self.keepdims))
        output_storage[0][0] = _out(node, 0, y)

    def infer_shape(self, node, input_shapes):
        s = tuple(input_shapes[0])
        return [tuple(1 if i in self.axis else n for i, n in enumerate(s) if self.keepdims or i not in self.axis)]

    def _kept(self, y):
        from tapegrad.ops.shape import expand_dims

        return y if self.keepdims or not self.axis else expand_dims(y, self.axis)

    @staticmethod
    def _safe(n):
        from tapegrad.ops.elemwise import eq, switch

        return switch(eq(n, 0.0), 1.0, n)

    def L_op(self, inputs, outputs, output_grads):
        (x,), (y,), (g,) = inputs, outputs, output_grads
        return [x * (self._kept(g) / self._safe(self._kept(y)))]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops.reduce import sum as _sum

        (x,), (u,) = inputs, eval_points
        if u is None:
            return [None]
        return [_sum(x * u, axis=self.axis, keepdims=self.keepdims) / self._safe(self(x))]


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002 - NumPy's name
    """Vector or matrix norm, as ``np.linalg.norm``.

    ``ord=None`` with ``axis=None``: the 2-norm of ``x`` flattened (Frobenius for
    a matrix).  Vector ords (``axis`` an int, or ``x`` 1-d): ``None``/2, 1,
    ``inf``, ``-inf`` and any other nonzero real ``p``.  Matrix ords (``axis``
    a pair, or ``x`` 2-d): ``None``/``"fro"``, 1, -1, ``inf``, ``-inf``, 2
    (largest singular value, via ``eigh(x^T x)``).  The 2-norm and Frobenius
    norm have derivative 0 at ``x = 0`` (safe division); see :class:`Norm`.
    """
    from tapegrad.ops import reduce as R
    from tapegrad.ops.elemwise import abs as _abs

    x = _float_input(x)
    if axis is None:
        if ord is None or (ord == "fro" and x.ndim == 2) or (ord == 2 and x.ndim == 1):
            return Norm(tuple(range(x.ndim)), keepdims)(x)
        if x.ndim not in (1, 2):
            raise ValueError(f"norm: ord={ord!r} needs axis for {x} with {x.ndim} dimensions")
        axis = tuple(range(x.ndim))
    axes = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)
    axes_n = normalize_axis(axes, x.ndim, "norm")
    if len(axes) == 1:
        if ord is None or ord == 2:
            return Norm(axes_n, keepdims)(x)
        a = _abs(x)
        if ord == np.inf:
            return R.max(a, axes_n, keepdims)
        if ord == -np.inf:
            return R.min(a, axes_n, keepdims)
        if ord == 1:
            return R.sum(a, axes_n, keepdims)
        if isinstance(ord, str) or ord == 0:
            raise ValueError(f"norm: ord={ord!r} is not a differentiable vector norm")
        p = np.asarray(ord, dtype=x.dtype)
        return R.sum(a ** p, axes_n, keepdims) ** (np.asarray(1, dtype=x.dtype) / p)
    if len(axes) != 2:
        raise ValueError(f"norm: axis must be None, an int or a pair, got {axis!r}")
    r, c = (a % x.ndim for a in axes)
    if ord is None or ord == "fro":
        return Norm(axes_n, keepdims)(x)
    if ord in (1, -1, np.inf, -np.inf):
        red, over = (r, c) if ord in (1, -1) else (c, r)  # 1: max column sum; inf: max row sum
        s = R.sum(_abs(x), red, keepdims=True)
        out = (R.max if ord > 0 else R.min)(s, over, keepdims=True)
        return out if keepdims else R.sum(out, (r, c))
    if ord == 2:
        from tapegrad.ops.shape import transpose

        rest = [i for i in range(x.ndim) if i not in (r, c)]
        m = transpose(x, rest + [r, c])
        w = eigh(mT(m) @ m)[0]
        out = w[..., -1] ** np.asarray(0.5, dtype=x.dtype)
        if keepdims:
            from tapegrad.ops.shape import expand_dims

            out = expand_dims(out, (r, c) if r < c else (c, r))
        return out
    raise ValueError(f"norm: ord={ord!r} is not supported for matrices (use None, 'fro', 1, -1, inf, -inf, 2)")
