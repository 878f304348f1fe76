"""``tg.linalg`` beyond the spec rows: errors, dtypes, second order, degenerate points, namespace."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.linalg as la
from tapegrad.gradient import Rop, grad, hessian

RNG = np.random.default_rng(7)


def _f(inputs, outputs):
    return tg.function(inputs, outputs, device="python")


def _spd(n, rng=RNG):
    m = rng.standard_normal((n, n))
    return m @ m.T / n + np.eye(n)


def _fd_grad(fn, a, h=1e-6):
    g = np.zeros_like(a)
    for k in range(a.size):
        ap, am = a.copy(), a.copy()
        ap.flat[k] += h
        am.flat[k] -= h
        g.flat[k] = (fn(ap) - fn(am)) / (2 * h)
    return g


# --------------------------------------------------------------------------- namespace
def test_public_names_live_in_tg_linalg_only():
    for name in ("solve", "solve_triangular", "inv", "det", "slogdet", "cholesky", "eigh", "norm",
                 "dot", "matmul", "outer", "tensordot", "diagonal", "trace"):
        assert callable(getattr(la, name)), name
    for name in ("inv", "det", "slogdet", "cholesky", "eigh", "solve_triangular"):
        assert not callable(getattr(tg, name, None)), f"tg.{name} must not be star-exported"


# --------------------------------------------------------------------------- errors
def test_shape_errors_at_construction():
    a3 = tg.tensor("a", shape=(3, 4))
    with pytest.raises(ValueError, match=r"inv: a of shape \(3, 4\) is not square"):
        la.inv(a3)
    with pytest.raises(ValueError, match="det: v .*needs a"):
        la.det(tg.vector("v"))
    with pytest.raises(ValueError, match=r"solve: A of shape \(3, 3\) and b of shape \(4,\) do not match"):
        la.solve(tg.tensor("A", shape=(3, 3)), tg.tensor("b", shape=(4,)))
    with pytest.raises(ValueError, match="assume_a"):
        la.solve(tg.matrix("A"), tg.vector("b"), assume_a="banded")
    with pytest.raises(ValueError, match="UPLO"):
        la.eigh(tg.matrix("A"), UPLO="X")


def test_singular_and_not_positive_definite_raise_linalgerror_naming_the_op():
    A = tg.matrix("A")
    with pytest.raises(np.linalg.LinAlgError, match=r"inv: A of shape \(2, 2\)"):
        _f([A], la.inv(A))(np.ones((2, 2)))
    with pytest.raises(np.linalg.LinAlgError, match="cholesky"):
        _f([A], la.cholesky(A))(-np.eye(2))
    b = tg.vector("b")
    with pytest.raises(np.linalg.LinAlgError, match="solve"):
        _f([A, b], la.solve(A, b, assume_a="pos"))(np.diag([1.0, -1.0]), np.ones(2))
    # a general solve of the same indefinite matrix is fine
    np.testing.assert_allclose(_f([A, b], la.solve(A, b))(np.diag([1.0, -1.0]), np.ones(2)), [1.0, -1.0])


# --------------------------------------------------------------------------- dtypes
def test_int_inputs_become_float64_and_float32_stays():
    ia = tg.imatrix("ia")
    d = la.det(ia)
    assert d.dtype == "float64"
    assert _f([ia], d)(np.array([[2, 1], [1, 3]])) == pytest.approx(5.0)
    g = grad(d, ia)
    assert g.dtype == "float64"
    np.testing.assert_allclose(_f([ia], g)(np.array([[2, 1], [1, 3]])), [[3.0, -1.0], [-1.0, 2.0]])
    fa = tg.fmatrix("fa")
    for out in (la.inv(fa), la.det(fa), la.cholesky(fa), la.eigh(fa)[0], la.slogdet(fa)[1], la.norm(fa)):
        assert out.dtype == "float32"
        assert grad(out.sum(), fa).dtype == "float32"


def test_static_shapes():
    a = tg.tensor("a", shape=(5, 3, 3))
    assert la.det(a).type.shape == (5,)
    assert la.eigh(a)[0].type.shape == (5, 3)
    assert la.solve(a, tg.tensor("b", shape=(3,))).type.shape == (5, 3)
    assert la.solve(a, tg.tensor("B", shape=(2, 1, 3, 4))).type.shape == (2, 5, 3, 4)
    assert la.norm(tg.tensor("x", shape=(4, 6)), axis=0, keepdims=True).type.shape == (1, 6)


# --------------------------------------------------------------------------- second order
def test_hessian_of_logdet_matches_finite_differences_of_its_gradient():
    A = tg.matrix("A")
    logdet = la.slogdet(A)[1]
    a = _spd(3) + 0.3 * RNG.standard_normal((3, 3))
    H = _f([A], hessian(logdet, A))(a)  # (3, 3, 3, 3)
    g = _f([A], grad(logdet, A))
    inv = np.linalg.inv(a)
    np.testing.assert_allclose(g(a), inv.T, rtol=1e-10)
    # d/dA_kl (A^-T)_ij = -(A^-1)_jk (A^-1)_li
    want = -np.einsum("jk,li->ijkl", inv, inv)
    np.testing.assert_allclose(H, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("which", ["cholesky", "eigh", "solve-sym", "inv", "det"])
def test_hessian_vector_products_match_finite_differences(which):
    A = tg.matrix("A")
    if which == "cholesky":
        cost = tg.sum(tg.sin(la.cholesky(A)))
    elif which == "eigh":
        w, v = la.eigh(A)
        cost = tg.sum(w ** 3) + tg.sum(tg.sin(v) * v)
    elif which == "solve-sym":
        cost = tg.sum(la.solve(A, tg.constant(np.arange(1.0, 4.0)), assume_a="sym") ** 2)
    elif which == "inv":
        cost = tg.sum(la.inv(A) ** 2)
    else:
        cost = la.det(A) ** 2
    n = 3
    q, _ = np.linalg.qr(RNG.standard_normal((n, n)))
    a = q @ np.diag([1.0, 2.5, 4.0]) @ q.T
    p = RNG.standard_normal((n, n))
    P = tg.matrix("P")
    g = grad(cost, A)
    hvp = _f([A, P], Rop(g, A, P))(a, p)
    gf = _f([A], g)
    h = 1e-6
    fd = (gf(a + h * p) - gf(a - h * p)) / (2 * h)
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-6)
    # reverse-over-reverse agrees with forward-over-reverse
    gp = grad(tg.sum(g * P), A)
    np.testing.assert_allclose(_f([A, P], gp)(a, p), hvp, rtol=1e-8, atol=1e-8)


def test_triangle_reading_gradient_lives_on_the_triangle():
    A = tg.matrix("A")
    a = _spd(4)
    g = _f([A], grad(tg.sum(la.cholesky(A)), A))(a)
    assert np.all(np.triu(g, 1) == 0)
    gu = _f([A], grad(tg.sum(la.eigh(A, UPLO="U")[0] ** 2), A))(a)
    assert np.all(np.tril(gu, -1) == 0)
    # d sum(w^2) = d tr(S^2): 2 S on the diagonal, 4 S_ij off it (both halves land on the triangle read)
    np.testing.assert_allclose(gu, np.triu(4 * a, 1) + np.diag(2 * np.diag(a)), rtol=1e-10)


# --------------------------------------------------------------------------- degenerate points
def test_norm_derivative_at_zero_is_zero():
    x = tg.vector("x")
    u = tg.vector("u")
    n = la.norm(x)
    out = _f([x, u], [grad(n, x), Rop(n, x, u)])(np.zeros(3), np.ones(3))
    np.testing.assert_array_equal(out[0], np.zeros(3))
    assert out[1] == 0.0
    np.testing.assert_allclose(_f([x], grad(n, x))(np.array([3.0, 4.0, 0.0])), [0.6, 0.8, 0.0])


def test_slogdet_sign_passes_zero_gradient_and_tangent():
    A, U = tg.matrix("A"), tg.matrix("U")
    sign, _ = la.slogdet(A)
    a = np.diag([-2.0, 3.0])
    assert _f([A], sign)(a) == -1.0
    np.testing.assert_array_equal(_f([A], grad(sign, A))(a), np.zeros((2, 2)))
    rop = tg.function([A, U], Rop(sign, A, U), device="python", on_unused_input="ignore")
    assert rop(a, np.ones((2, 2))) == 0.0


def test_eigh_repeated_eigenvalues():
    """At a repeated eigenvalue the eigenvalue gradient is finite; eigenvector derivatives are not."""
    A = tg.matrix("A")
    w, v = la.eigh(A)
    a = np.eye(3)
    gw = _f([A], grad(tg.sum(w * np.array([1.0, 2.0, 3.0])), A))(a)
    assert np.all(np.isfinite(gw))
    gv = _f([A], grad(tg.sum(v * np.arange(9.0).reshape(3, 3)), A))(a)
    assert not np.all(np.isfinite(gv))


def test_det_gradient_is_cofactor_matrix():
    A = tg.matrix("A")
    a = RNG.standard_normal((4, 4)) + 4 * np.eye(4)
    g = _f([A], grad(la.det(A), A))(a)
    np.testing.assert_allclose(g, _fd_grad(np.linalg.det, a), rtol=1e-6)
    np.testing.assert_allclose(g, np.linalg.det(a) * np.linalg.inv(a).T, rtol=1e-10)
