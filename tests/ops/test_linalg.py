"""Dot products and diagonals (``tapegrad/ops/linalg.py``): values, shapes, dtypes, errors, derivative rules.

The spec rows of ``specs_linalg.py`` are run here too (value and static shape,
Lop/Rop against central differences, the exact adjoint identity, float32
against float64) on the reference evaluator, so this file stands on its own.
The row checkers are shared with ``test_nn.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad.graph as tg
from tapegrad.compile.reference import evaluate as ev
from tapegrad.config import config
from tapegrad.gradient import Lop, Rop, grad
from tapegrad.ops import linalg as L
from tapegrad.ops.elemwise import sin
from tapegrad.registry import all_codes
from tests.ops.specs_linalg import ROWS


# --------------------------------------------------------------------------- shared row checkers
def row_inputs(row, dtype, seed=0):
    """Symbolic inputs and values of ``row`` in ``dtype`` (int64 for ``row.int_inputs``)."""
    rng = np.random.default_rng(seed)
    domains = row.domain if len(row.domain) == len(row.shapes) else row.domain * len(row.shapes)
    variables, values = [], []
    for k, (shape, dom) in enumerate(zip(row.shapes, domains)):
        dt = "int64" if k in row.int_inputs else dtype
        static = row.static[k] if row.static else (None,) * len(shape)
        variables.append(tg.tensor(f"x{k}", dtype=dt, shape=static))
        if callable(dom):
            values.append(np.asarray(dom(rng, shape, dt), dtype=dt))
        else:
            values.append(rng.uniform(dom[0], dom[1], size=shape).astype(dt))
    return variables, values


def row_wrt(row):
    if row.wrt is not None:
        return tuple(row.wrt)
    return tuple(k for k in range(len(row.shapes)) if k not in row.int_inputs)


def _inner(a, b):
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def check_row_value(row):
    for dtype in row.dtypes:
        xs, vals = row_inputs(row, dtype)
        y = row.build(*xs)
        (out,) = ev([y], dict(zip(xs, vals)))
        expected = np.asarray(row.reference(*vals))
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
        assert out.shape == expected.shape and out.ndim == y.ndim
        assert str(out.dtype) == y.dtype == expected.dtype.name, (out.dtype, y.dtype, expected.dtype)
        assert y.type.is_compatible_shape(out.shape), (y.type, out.shape)
        (shape,) = y.owner.op.infer_shape(y.owner, [np.shape(v) for v in vals])
        assert tuple(shape) == out.shape


def check_row_derivatives_float64(row):
    """Lop and Rop against central differences, and <v, Rop u> == <Lop v, u> to rounding."""
    xs, vals = row_inputs(row, "float64")
    y = row.build(*xs)
    rng = np.random.default_rng(1)
    (y0,) = ev([y], dict(zip(xs, vals)))
    v_val = rng.normal(size=y0.shape)
    v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
    for k in row_wrt(row):
        x = xs[k]
        u_val = rng.normal(size=vals[k].shape)
        u = tg.tensor("u", dtype=x.dtype, shape=(None,) * x.ndim)
        lop, rop = Lop(y, x, v), Rop(y, x, u)
        assert lop.dtype == "float64" and rop.dtype == "float64"
        lop_v, rop_v = ev([lop, rop], {**dict(zip(xs, vals)), v: v_val, u: u_val})
        assert lop_v.shape == vals[k].shape and rop_v.shape == y0.shape
        eps = 1e-6

        def f(t):
            shifted = list(vals)
            shifted[k] = vals[k] + t * u_val
            return ev([y], dict(zip(xs, shifted)))[0]

        jvp = (f(eps) - f(-eps)) / (2 * eps)
        rtol = row.rtol or 1e-6
        np.testing.assert_allclose(rop_v, jvp, rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(_inner(lop_v, u_val), _inner(v_val, jvp), rtol=rtol, atol=1e-7)
        lhs, rhs = _inner(v_val, rop_v), _inner(lop_v, u_val)
        scale = float(np.sum(np.abs(v_val * rop_v))) + float(np.sum(np.abs(lop_v * u_val))) + 1e-300
        assert abs(lhs - rhs) <= 1e-13 * scale, (lhs, rhs)


def check_row_derivatives_float32(row):
    """float32 rows: Lop/Rop stay float32 and match the float64 rules to float32 rounding."""
    xs32, vals32 = row_inputs(row, "float32")
    xs64 = [tg.tensor(f"x{k}", dtype=x.dtype.replace("32", "64"), shape=x.type.shape) for k, x in enumerate(xs32)]
    vals64 = [v.astype(x.dtype) for v, x in zip(vals32, xs64)]
    rng = np.random.default_rng(2)
    y32, y64 = row.build(*xs32), row.build(*xs64)
    (y0,) = ev([y64], dict(zip(xs64, vals64)))
    v_val = rng.normal(size=y0.shape)
    for k in row_wrt(row):
        u_val = rng.normal(size=vals64[k].shape)
        res = {}
        for name, y, xs, vals in (("32", y32, xs32, vals32), ("64", y64, xs64, vals64)):
            dt = xs[k].dtype
            v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
            u = tg.tensor("u", dtype=dt, shape=(None,) * xs[k].ndim)
            lop, rop = Lop(y, xs[k], v), Rop(y, xs[k], u)
            assert lop.dtype == dt and rop.dtype == y.dtype
            res[name] = ev([lop, rop], {**dict(zip(xs, vals)), v: v_val.astype(y.dtype), u: u_val.astype(dt)})
        assert res["32"][0].dtype == np.float32
        for a, b in zip(res["32"], res["64"]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def check_hvp_adjoint(y, xs, vals, seed=0):
    """Second order: the Lop graph is differentiated again (Rop of Lop) and checked against
    central differences of the Lop and the symmetric identity <w, d(Lop v)[u]> for the
    bilinear form ``u -> d/dt <v, y(x + t u)>``."""
    rng = np.random.default_rng(seed)
    (y0,) = ev([y], dict(zip(xs, vals)))
    v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
    v_val = rng.normal(size=y0.shape)
    us = [tg.tensor(f"u{k}", dtype=x.dtype, shape=(None,) * x.ndim) for k, x in enumerate(xs)]
    u_vals = [rng.normal(size=np.shape(a)) for a in vals]
    gs = Lop(y, xs, v)
    hs = Rop(gs, xs, us)
    givens = {**dict(zip(xs, vals)), v: v_val, **dict(zip(us, u_vals))}
    h_vals = ev(hs, givens)
    eps = 1e-6

    def g_at(t):
        return ev(gs, {**dict(zip(xs, [a + t * b for a, b in zip(vals, u_vals)])), v: v_val})

    for h, gp, gm in zip(h_vals, g_at(eps), g_at(-eps)):
        np.testing.assert_allclose(h, (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-7)
    # the Hessian of <v, y> is symmetric: <u, H u'> == <u', H u>
    u2_vals = [rng.normal(size=np.shape(a)) for a in vals]
    h2_vals = ev(hs, {**givens, **dict(zip(us, u2_vals))})
    a = sum(_inner(p, q) for p, q in zip(u2_vals, h_vals))
    b = sum(_inner(p, q) for p, q in zip(u_vals, h2_vals))
    assert abs(a - b) <= 1e-12 * (abs(a) + abs(b) + 1.0), (a, b)


# --------------------------------------------------------------------------- the spec rows
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row_value_and_static_shape(row):
    check_row_value(row)


DIFF_ROWS = [r for r in ROWS if r.differentiable]


@pytest.mark.parametrize("row", DIFF_ROWS, ids=[r.id for r in DIFF_ROWS])
def test_row_derivatives_float64(row):
    check_row_derivatives_float64(row)


F32_ROWS = [r for r in DIFF_ROWS if "float32" in r.dtypes]


@pytest.mark.parametrize("row", F32_ROWS, ids=[r.id for r in F32_ROWS])
def test_row_derivatives_float32(row):
    check_row_derivatives_float32(row)


def test_every_linalg_code_has_a_row():
    ours = {name for name, code, _ in all_codes() if 450 <= code < 500}
    assert ours == {"DOT", "MATMUL", "OUTER", "TENSORDOT", "DIAGONAL", "TRACE", "OUTER_T", "DIAG_EMBED", "EINSUM"}
    covered = {r.code for r in ROWS} | {c for r in ROWS for c in r.also}
    assert ours <= covered, ours - covered


def test_kinds():
    assert {L.Dot.kind, L.Matmul.kind, L.Outer.kind, L.TensorDot.kind, L.OuterT.kind, L.Einsum.kind} == {"bilinear"}
    assert {L.Diagonal.kind, L.Trace.kind, L.DiagEmbed.kind} == {"linear"}


# --------------------------------------------------------------------------- second order
@pytest.mark.parametrize(
    "fn, shapes",
    [
        (L.dot, [(2, 3), (3, 2)]),
        (L.dot, [(), (3,)]),
        (L.matmul, [(2, 1, 2, 3), (2, 3, 2)]),
        (L.matmul, [(3,), (2, 3, 2)]),
        (L.outer, [(2, 2), (3,)]),
        (lambda a, b: L.tensordot(a, b, axes=([0, 2], [1, 0])), [(2, 3, 2), (2, 2, 3)]),
        (lambda a, b: L.trace(L.dot(a, b)), [(2, 3), (3, 2)]),
        (lambda a, b: L.diagonal(L.matmul(a, b), 1, 1, 2), [(2, 2, 3), (3, 3)]),
    ],
)
def test_second_order_rules(fn, shapes):
    """Bilinear ops: the Lop graph (einsum / outer_t / diag_embed) differentiates again.
    ``sin`` makes the Hessian non-trivial in both operands."""
    xs = [tg.tensor(f"x{k}", shape=(None,) * len(s)) for k, s in enumerate(shapes)]
    rng = np.random.default_rng(3)
    vals = [rng.normal(size=s) for s in shapes]
    check_hvp_adjoint(sin(fn(*xs)), xs, vals)


# --------------------------------------------------------------------------- static shapes
@pytest.mark.parametrize(
    "fn, a, b, expected",
    [
        (L.dot, (), (3, None), (3, None)),
        (L.dot, (2,), (), (2,)),
        (L.dot, (None,), (None,), ()),
        (L.dot, (4,), (None, 5), (5,)),
        (L.dot, (3, None), (4,), (3,)),
        (L.dot, (3, 4), (4, 5), (3, 5)),
        (L.matmul, (2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)),
        (L.matmul, (None, 3, 4), (1, 4, 6), (None, 3, 6)),
        (L.matmul, (1, 3, 4), (None, 4, 6), (None, 3, 6)),
        (L.matmul, (4,), (7, 4, 2), (7, 2)),
        (L.matmul, (7, 3, 4), (4,), (7, 3)),
        (L.matmul, (4,), (4,), ()),
        (L.outer, (2, 3), (None,), (6, None)),
        (L.outer, (), (0,), (1, 0)),
        (L.tensordot, (2, 3, 4), (3, 4, 5), (2, 5)),
        (lambda a, b: L.tensordot(a, b, 0), (2,), (3, None), (2, 3, None)),
        (lambda a, b: L.tensordot(a, b, ([1], [-1])), (2, 3), (5, 3), (2, 5)),
    ],
)
def test_static_shapes(fn, a, b, expected):
    y = fn(tg.tensor("a", shape=a), tg.tensor("b", shape=b))
    assert y.type.shape == expected


@pytest.mark.parametrize(
    "args, shape, expected",
    [
        ((0, 0, 1), (3, 4), (3,)),
        ((1, 0, 1), (3, 4), (3,)),
        ((2, 0, 1), (3, 4), (2,)),
        ((-1, 0, 1), (3, 4), (2,)),
        ((9, 0, 1), (3, 4), (0,)),
        ((0, 2, 0), (3, None, 4), (None, 3)),
        ((0, -1, -2), (5, 3, 4), (5, 3)),
    ],
)
def test_diagonal_static_shapes(args, shape, expected):
    x = tg.tensor("x", shape=shape)
    assert L.diagonal(x, *args).type.shape == expected
    assert L.trace(x, *args).type.shape == expected[:-1]


def test_operator_and_method_route_here():
    a, b = tg.matrix("a"), tg.matrix("b")
    assert isinstance((a @ b).owner.op, L.Matmul)
    assert isinstance(a.dot(b).owner.op, L.Dot)
    av, bv = np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(3, 2)
    (out,) = ev([np.eye(2) @ a], {a: av[:, :2]})  # __rmatmul__ with an ndarray
    np.testing.assert_array_equal(out, av[:, :2])
    (out,) = ev([a @ b], {a: av, b: bv})
    np.testing.assert_array_equal(out, av @ bv)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize(
    "da, db",
    [("float32", "float32"), ("float32", "float64"), ("int64", "float32"), ("int32", "int32"), ("int64", "int64"),
     ("bool", "bool"), ("int32", "float64")],
)
def test_result_dtype_follows_numpy(da, db):
    a, b = tg.tensor("a", dtype=da, shape=(2, 3)), tg.tensor("b", dtype=db, shape=(3, 2))
    av, bv = np.ones((2, 3), dtype=da), np.ones((3, 2), dtype=db)
    for fn, npfn in ((L.dot, np.dot), (L.matmul, np.matmul), (L.outer, np.outer), (L.tensordot, None)):
        y = fn(a, b) if npfn is not None else L.tensordot(a, b, 1)
        expected = (npfn or (lambda p, q: np.tensordot(p, q, 1)))(av, bv)
        assert y.dtype == expected.dtype.name
        (out,) = ev([y], {a: av, b: bv})
        assert out.dtype == expected.dtype
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype, expected", [("int32", "int64"), ("bool", "int64"), ("float32", "float32"),
                                             ("int64", "int64")])
def test_trace_dtype_follows_numpy(dtype, expected):
    x = tg.tensor("x", dtype=dtype, shape=(3, 3))
    assert L.trace(x).dtype == expected
    assert L.diagonal(x).dtype == dtype
    xv = (np.arange(9) % 2).reshape(3, 3).astype(dtype)
    (out,) = ev([L.trace(x)], {x: xv})
    assert out.dtype.name == expected and out == np.trace(xv)


def test_gradient_of_int_inputs_is_floatX_and_continuous():
    """An int operand is differentiated as if it were continuous; its gradient has dtype floatX."""
    X, W = tg.imatrix("X"), tg.matrix("W")
    Xv, Wv = np.array([[1, -2, 0], [3, 1, 2]]), np.arange(6.0).reshape(3, 2) / 5
    for fn in (L.dot, L.matmul, lambda a, b: L.tensordot(a, b, 1), lambda a, b: L.outer(a, b)):
        cost = sin(fn(X, W)).sum()
        gX, gW = grad(cost, [X, W])
        assert gX.dtype == config.floatX and gW.dtype == "float64"
        Xf = tg.matrix("Xf")
        gXf, gWf = grad(sin(fn(Xf, W)).sum(), [Xf, W])
        a = ev([gX, gW], {X: Xv, W: Wv})
        b = ev([gXf, gWf], {Xf: Xv.astype(float), W: Wv})
        for p, q in zip(a, b):
            np.testing.assert_allclose(p, q, rtol=1e-13)
    x = tg.imatrix("x")
    g = Lop(L.trace(x), x, tg.constant(2.0))
    assert g.dtype == config.floatX
    np.testing.assert_array_equal(ev([g], {x: np.zeros((2, 3), dtype="int64")})[0], [[2, 0, 0], [0, 2, 0]])


def test_float32_stays_float32():
    a, b = tg.fmatrix("a"), tg.fmatrix("b")
    y = L.matmul(a, b)
    assert y.dtype == "float32"
    ga, gb = Lop(y, [a, b], tg.fmatrix("g"))
    assert ga.dtype == gb.dtype == "float32"
    assert Rop(y, a, tg.fmatrix("u")).dtype == "float32"


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "fn, a, b, names",
    [
        (L.dot, (3, 4), (5, 2), ("dot", "A", "B", "(3, 4)", "(5, 2)")),
        (L.dot, (4,), (3,), ("dot", "A", "B", "(4,)", "(3,)")),
        (L.dot, (2, 4), (3,), ("dot", "(2, 4)", "(3,)")),
        (L.matmul, (2, 3, 4), (5, 2), ("matmul", "A", "B", "(2, 3, 4)", "(5, 2)")),
        (L.matmul, (4,), (3, 2), ("matmul", "(4,)", "(3, 2)")),
        (L.tensordot, (2, 3), (4, 5), ("tensordot", "A", "B", "(2, 3)", "(4, 5)")),
    ],
)
def test_static_contraction_mismatch_raises(fn, a, b, names):
    A, B = tg.tensor("A", shape=a), tg.tensor("B", shape=b)
    with pytest.raises(ValueError) as e:
        fn(A, B)
    for n in names:
        assert n in str(e.value), (n, str(e.value))


def test_matmul_batch_mismatch_raises():
    with pytest.raises(ValueError, match=r"matmul.*\(2,\).*\(3,\)"):
        L.matmul(tg.tensor("A", shape=(2, 3, 4)), tg.tensor("B", shape=(3, 4, 5)))


def test_runtime_mismatch_names_op_and_shapes():
    A, B = tg.matrix("A"), tg.matrix("B")
    for fn, name in ((L.dot, "dot"), (L.matmul, "matmul")):
        with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4, 2\) of \(A, B\)"):
            ev([fn(A, B)], {A: np.ones((2, 3)), B: np.ones((4, 2))})


def test_rank_errors():
    with pytest.raises(ValueError, match="dot: T has 3 dimensions.*matmul or tensordot"):
        L.dot(tg.tensor3("T"), tg.matrix("M"))
    with pytest.raises(ValueError, match="matmul: s is 0-dimensional"):
        L.matmul(tg.scalar("s"), tg.matrix("M"))
    with pytest.raises(ValueError, match="diagonal: v has shape .* at least 2 dimensions"):
        L.diagonal(tg.vector("v"))
    with pytest.raises(ValueError, match="trace: axis1 and axis2 cannot be the same"):
        L.trace(tg.matrix("M"), 0, 1, -1)
    with pytest.raises(ValueError, match="diagonal: axis 2 is out of bounds"):
        L.diagonal(tg.matrix("M"), 0, 0, 2)


def test_tensordot_axes_forms_and_errors():
    a, b = tg.tensor("a", shape=(2, 3, 4)), tg.tensor("b", shape=(4, 3, 2))
    av = np.arange(24.0).reshape(2, 3, 4)
    bv = np.arange(24.0).reshape(4, 3, 2)
    for axes in (0, 1, ([1, 2], [1, 0]), (2, 0), ([-1], [-3]), ((0, 1, 2), (2, 1, 0))):
        (out,) = ev([L.tensordot(a, b, axes)], {a: av, b: bv})
        np.testing.assert_allclose(out, np.tensordot(av, bv, axes))
    with pytest.raises(ValueError, match="differ in length"):
        L.tensordot(a, b, ([0, 1], [2]))
    with pytest.raises(ValueError, match="repeated axis"):
        L.tensordot(a, b, ([0, 0], [2, 2]))
    with pytest.raises(ValueError, match="out of bounds"):
        L.tensordot(a, b, ([3], [0]))
    with pytest.raises(ValueError, match="axes=4 needs 4 dimensions"):
        L.tensordot(a, b, 4)
    with pytest.raises(ValueError, match="contraction lengths differ"):
        L.tensordot(a, b, 2)  # (3, 4) against (4, 3)


# --------------------------------------------------------------------------- rules in detail
def test_r_op_skips_none_eval_points():
    a, b, u = tg.matrix("a"), tg.matrix("b"), tg.matrix("u")
    node = L.dot(a, b).owner
    assert node.op.R_op(node.inputs, [None, None]) == [None]
    (t,) = node.op.R_op(node.inputs, [u, None])
    assert isinstance(t.owner.op, L.Dot) and t.owner.inputs == [u, b]
    d = L.diagonal(a).owner
    assert d.op.R_op(d.inputs, [None]) == [None]


def test_transposes_are_internal_ops_with_disconnected_refs():
    a, b, g = tg.matrix("a"), tg.tensor3("b"), tg.matrix("g")
    node = L.outer(a, b).owner
    ga, gb = node.op.L_op(node.inputs, node.outputs, [g])
    assert isinstance(ga.owner.op, L.OuterT) and ga.type.shape == a.type.shape
    assert gb.ndim == 3
    assert ga.owner.op.connection_pattern(ga.owner) == [[True], [True], [False]]
    d = L.diagonal(b, 0, 0, 2).owner
    (gd,) = d.op.L_op(d.inputs, d.outputs, [g])
    assert isinstance(gd.owner.op, L.DiagEmbed) and gd.owner.op.connection_pattern(gd.owner) == [[True], [False]]
    e = L.matmul(a, b).owner
    ga, gb = e.op.L_op(e.inputs, e.outputs, [tg.tensor3("g3")])
    assert type(ga.owner.op).__name__ == "SumLike"  # a's batch is broadcast: summed back
    assert ga.type.shape == a.type.shape and gb.type.shape == b.type.shape


def test_batched_matmul_gradient_sums_over_broadcast_batch_dims():
    a, b = tg.tensor3("a"), tg.tensor3("b")
    av, bv = np.ones((1, 2, 3)), np.ones((4, 3, 2))
    ga, gb = grad(L.matmul(a, b).sum(), [a, b])
    gav, gbv = ev([ga, gb], {a: av, b: bv})
    np.testing.assert_array_equal(gav, np.full((1, 2, 3), 8.0))  # 4 batches * 2 columns
    np.testing.assert_array_equal(gbv, np.full((4, 3, 2), 2.0))


def test_ops_are_hashable_and_encode_their_props():
    assert L.TensorDot((1,), (0,)) == L.TensorDot((1,), (0,)) and hash(L.Dot()) == hash(L.Dot())
    assert L.TensorDot((1,), (0,)) != L.TensorDot((0,), (1,))
    assert L.Diagonal(1, 0, 1).encode() == ((1, 0, 1), ())
    # einsum's labels are letter indices: stable ints in the tape's pool
    assert L.Einsum("...ij,...jk->...ik").encode() == ((2, 1, 1, 2, 8, 9, 2, 9, 10, 2, 8, 10), ())
    assert str(L.Einsum("j,...k->...jk")) == "einsum{j,...k->...jk}"
    with pytest.raises(ValueError, match="must appear in two terms"):
        L.Einsum("ij,j->")


def test_size_zero_gradients():
    a, b = tg.matrix("a"), tg.matrix("b")
    ga, gb = grad(L.dot(a, b).sum(), [a, b])
    gav, gbv = ev([ga, gb], {a: np.ones((3, 0)), b: np.ones((0, 2))})
    assert gav.shape == (3, 0) and gbv.shape == (0, 2)
