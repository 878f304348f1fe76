"""Sparse Jacobians and Hessians (``tapegrad/sparse.py``): patterns, colorings and exact values."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import hessian, jacobian
from tapegrad.sparse import color_columns, propagate, sparse_hessian, sparse_jacobian

sp = pytest.importorskip("scipy.sparse")


def _dense_jacobian(expr, x, inputs, values):
    return tg.function(inputs, jacobian(expr, x), device="python")(*values)


def _tridiagonal(n):
    return (np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1)


def _bratu_concat(x, lam=1.0):
    """Bratu residual on the interior, Dirichlet rows at both ends (concatenate)."""
    n = x.shape[0]
    h2 = 1.0 / (n + 1.0) ** 2
    interior = (x[:-2] - 2 * x[1:-1] + x[2:]) / h2 + lam * tg.exp(x[1:-1])
    return tg.concatenate([x[:1], interior, x[-1:]])


def _bratu_inc(x, lam=1.0):
    """The same residual assembled with inc_subtensor into zeros."""
    h2 = 1.0 / (x.shape[0] + 1.0) ** 2
    r = tg.zeros_like(x)
    r = tg.inc_subtensor(r[1:-1], (x[:-2] - 2 * x[1:-1] + x[2:]) / h2 + lam * tg.exp(x[1:-1]))
    r = tg.inc_subtensor(r[0], x[0])
    return tg.inc_subtensor(r[-1], x[-1])


@pytest.mark.parametrize("build", [_bratu_concat, _bratu_inc], ids=["concatenate", "inc_subtensor"])
def test_bratu_jacobian_is_exact_tridiagonal_csr_with_3_colors(build):
    x = tg.vector("x")
    r = build(x)
    sj = sparse_jacobian(r, x)
    n = 40
    xv = np.random.default_rng(0).uniform(0, 1, n)
    J = sj(xv)
    assert isinstance(J, sp.csr_matrix)
    assert J.shape == (n, n)
    assert sj.n_colors == 3
    assert sorted(set(sj.colors.tolist())) == [0, 1, 2]
    expected = _tridiagonal(n)
    expected[0, 1] = expected[-1, -2] = False  # Dirichlet rows: the diagonal only
    want = _dense_jacobian(r, x, [x], [xv])
    np.testing.assert_array_equal(sj.pattern.toarray(), expected)
    np.testing.assert_allclose(J.toarray(), want, rtol=1e-12, atol=1e-9)
    # interior rows of the Bratu operator, checked against the formula
    h2 = 1.0 / (n + 1.0) ** 2
    assert J[5, 4] == pytest.approx(1 / h2)
    assert J[5, 5] == pytest.approx(-2 / h2 + np.exp(xv[5]))
    assert J.nnz == 3 * n - 4


def test_pattern_is_computed_per_length():
    x = tg.vector("x")
    sj = sparse_jacobian(_bratu_concat(x), x)
    for n in (5, 17, 9):
        xv = np.linspace(0, 1, n)
        J = sj(xv)
        assert J.shape == (n, n) and sj.pattern.shape == (n, n)
        np.testing.assert_allclose(J.toarray(), _dense_jacobian(_bratu_concat(x), x, [x], [xv]), atol=1e-9)


def test_periodic_burgers_with_roll():
    x = tg.vector("x")
    nu = 0.1
    r = x * (tg.roll(x, -1) - tg.roll(x, 1)) * 0.5 - nu * (tg.roll(x, -1) - 2 * x + tg.roll(x, 1))
    sj = sparse_jacobian(r, x)
    n = 12
    xv = np.random.default_rng(1).standard_normal(n)
    J = sj(xv)
    cyclic = _tridiagonal(n)
    cyclic[0, -1] = cyclic[-1, 0] = True
    np.testing.assert_array_equal(sj.pattern.toarray(), cyclic)
    assert sj.n_colors == 3
    np.testing.assert_allclose(J.toarray(), _dense_jacobian(r, x, [x], [xv]), rtol=1e-12, atol=1e-12)


def test_rosenbrock_hessian_tridiagonal():
    x = tg.vector("x")
    cost = tg.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    sh = sparse_hessian(cost, x)
    n = 30
    xv = np.random.default_rng(2).uniform(-1, 1, n)
    H = sh(xv)
    np.testing.assert_array_equal(sh.pattern.toarray(), _tridiagonal(n))
    assert sh.n_colors == 3
    dense = tg.function([x], hessian(cost, x), device="python")(xv)
    np.testing.assert_allclose(H.toarray(), dense, rtol=1e-12, atol=1e-10)
    # analytic entries: d2/dx_i dx_{i+1} = -400 x_i; d2/dx_0^2 = 1200 x_0^2 - 400 x_1 + 2
    assert H[3, 4] == pytest.approx(-400 * xv[3])
    assert H[0, 0] == pytest.approx(1200 * xv[0] ** 2 - 400 * xv[1] + 2)
    assert H[n - 1, n - 1] == pytest.approx(200)


def test_separable_hessian_is_diagonal_with_one_color():
    x = tg.vector("x")
    cost = tg.sum(tg.exp(x) + x ** 3)
    sh = sparse_hessian(cost, x)
    xv = np.linspace(-1, 1, 7)
    H = sh(xv)
    assert sh.n_colors == 1
    np.testing.assert_allclose(H.toarray(), np.diag(np.exp(xv) + 6 * xv), rtol=1e-12)


def test_dense_fallback_through_an_op_without_a_rule():
    x = tg.vector("x")
    r = tg.softmax(x[1:] * 2.0)  # softmax couples everything: no specific rule, so dense
    sj = sparse_jacobian(r, x)
    n = 6
    xv = np.random.default_rng(3).standard_normal(n)
    J = sj(xv)
    want = np.zeros((n - 1, n), dtype=bool)
    want[:, 1:] = True
    np.testing.assert_array_equal(sj.pattern.toarray(), want)
    assert sj.n_colors == n - 1
    np.testing.assert_allclose(J.toarray(), _dense_jacobian(r, x, [x], [xv]), rtol=1e-12, atol=1e-14)


def test_matmul_and_reduction_rules_and_extra_inputs():
    x, A = tg.vector("x"), tg.matrix("A")
    r = tg.concatenate([tg.tanh(tg.matmul(A, x[:3])), x[3:] * tg.sum(x[3:5]), tg.mean(x[:2], keepdims=True)])
    sj = sparse_jacobian(r, x, inputs=[x, A])
    xv = np.random.default_rng(4).standard_normal(7)
    Av = np.random.default_rng(5).standard_normal((2, 3))
    J = sj(xv, Av)
    P = sj.pattern.toarray()
    assert P.shape == (2 + 4 + 1, 7)
    np.testing.assert_array_equal(P[:2], np.tile([1, 1, 1, 0, 0, 0, 0], (2, 1)).astype(bool))
    np.testing.assert_array_equal(P[2:6, 3:], np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]],
                                                       dtype=bool))
    np.testing.assert_array_equal(P[6], [1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(J.toarray(), _dense_jacobian(r, x, [x, A], [xv, Av]), rtol=1e-12, atol=1e-14)


def test_propagate_and_coloring_helpers():
    x = tg.vector("x")
    (p,) = propagate([x[::2] + x[1::2]], x, {x: np.zeros(6)})
    np.testing.assert_array_equal(p.toarray(), [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    assert color_columns(p).tolist() == [0, 1, 0, 1, 0, 1]


def test_errors():
    x, m = tg.vector("x"), tg.matrix("m")
    with pytest.raises(ValueError, match="must be a vector"):
        sparse_jacobian(m.sum(axis=0), m)
    with pytest.raises(TypeError, match="scalar"):
        sparse_hessian(x * 2, x)
    sj = sparse_jacobian(x * 2, x)
    with pytest.raises(TypeError, match="expected 1 input"):
        sj(np.zeros(3), np.zeros(3))
