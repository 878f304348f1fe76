"""Dot products and diagonals (``tapegrad/ops/linalg.py``): values, shapes, dtypes, errors, derivative rules.

The spec rows of ``specs_linalg.py`` are run here too (value and static shape,
Lop/Rop against central differences, the exact adjoint identity, float32
against float64) on the reference evaluator, so this file stands on its own.
The row checkers are those of ``tests/ops/checks.py``.
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
from tests.ops.checks import check_hvp_adjoint, row_tests
from tests.ops.specs_linalg import ROWS


# --------------------------------------------------------------------------- the spec rows
test_row_value_and_static_shape, test_row_derivatives_float64, test_row_derivatives_float32 = row_tests(ROWS)


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


def test_diag_rejects_other_ranks_and_non_integer_offsets():
    with pytest.raises(ValueError, match="diag: the input must be a vector or a matrix"):
        L.diag(tg.tensor("x", dtype="float64", shape=(None, None, None)))
    with pytest.raises(TypeError, match="diag: k must be an int"):
        L.diag(tg.tensor("v", dtype="float64", shape=(None,)), 1.5)
    v = tg.tensor("v", dtype="float64", shape=(3,))
    assert L.diag(v, 2).type.shape == (5, 5)  # static where the vector's length is


@pytest.mark.parametrize("k", [0, 2, -1])
@pytest.mark.parametrize("device, tier", [("python", None), ("cpu", None), ("cpu", "program")])
def test_diag_of_a_vector_matches_numpy_with_both_derivatives(device, tier, k):
    import tapegrad as T

    v, M = T.dvector("v"), T.dmatrix("M")
    D = T.diag(v, k)
    cost = T.sum(T.dot(D, M) * T.dot(M.T, D).T) + T.sum(D ** 2)
    vv = np.array([0.5, -1.25, 2.0])
    mv = np.random.default_rng(3).standard_normal((3 + abs(k), 3 + abs(k)))
    u = np.array([0.3, 0.7, -1.1])
    kw = {"tier": tier} if tier else {}
    f = T.function([v, M], [D, cost, T.grad(cost, v), T.Rop(D, v, T.constant(u))], device=device, **kw)
    d, c, g, r = f(vv, mv)
    np.testing.assert_array_equal(d, np.diag(vv, k))
    dn = np.diag(vv, k)
    np.testing.assert_allclose(c, np.sum((dn @ mv) * (mv.T @ dn).T) + np.sum(dn ** 2), rtol=1e-13)
    np.testing.assert_array_equal(r, np.diag(u, k))  # linear: the tangent is diag(u)
    eps = 1e-6  # the gradient against central differences
    fd = [(f(vv + eps * e, mv)[1] - f(vv - eps * e, mv)[1]) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    if tier == "program" and k == 0:  # products with D scale rows/columns there (BLAS for the gradient's others)
        (prog,) = f._engine._programs.values()
        assert prog is not False, f._engine.program_error
        assert "np.isfinite" in prog.program.source
