"""The vectorisable libm replacements of tapegrad/compile/vmath.py: ulp error against libm (NumPy) over wide ranges,
the special values exact, and the program tier that uses them against the python engine."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import tapegrad as tg
from tapegrad.compile import vmath as V
from tapegrad.compile.kernels import scalar as S
from tests.compile.program_checks import run_program

RNG = np.random.default_rng(11)
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, -1e-300,
                    709.782712893384, 709.7827128933841, 709.79, -708.39, -708.4, -745.13, -745.14, -746.0, 710.0,
                    1e308, -1e308, 1.0, -1.0, 0.5, 2.0, 1e-17, -1e-17, 0.34657359027997264, -0.3465735902799726,
                    40.0, -40.0, -38.0, 30.0, 30.5, 1 - 1e-16, -1 + 1e-16, -0.9999999])


def _uniform(lo, hi, n=100_000):
    return RNG.uniform(lo, hi, n)


def _log_uniform(lo, hi, n=100_000, signed=False):
    v = np.exp(RNG.uniform(np.log(lo), np.log(hi), n))
    return v * np.where(RNG.uniform(size=n) < 0.5, -1.0, 1.0) if signed else v


CASES = {  # name: (vectorised, reference, max ulp, argument sets)
    "exp": (V.v_exp, np.exp, 1, [_uniform(-750, 712), _uniform(-1, 1), _log_uniform(1e-20, 1, signed=True)]),
    "expm1": (V.v_expm1, np.expm1, 2, [_uniform(-50, 712), _uniform(-1, 1), _log_uniform(1e-20, 1, signed=True)]),
    "log": (V.v_log, np.log, 1, [_log_uniform(1e-320, 1e308), _uniform(0.5, 2), _log_uniform(1e-310, 1e-300),
                                 _uniform(-1, 1)]),
    "log1p": (V.v_log1p, np.log1p, 2, [_log_uniform(1e-20, 1e308), _uniform(-1, 1), _uniform(-0.9999, 1),
                                       _log_uniform(1e-20, 1, signed=True)]),
    "sin": (V.v_sin, np.sin, 1, [_uniform(-10, 10), _uniform(-1e5, 1e5), _log_uniform(1e-300, 3e8, signed=True),
                                 _log_uniform(1e8, 1e300, n=20_000, signed=True), np.arange(-50_000, 50_000) * (np.pi / 2)]),
    "cos": (V.v_cos, np.cos, 1, [_uniform(-10, 10), _uniform(-1e5, 1e5), _log_uniform(1e-300, 3e8, signed=True),
                                 _log_uniform(1e8, 1e300, n=20_000, signed=True), np.arange(-50_000, 50_000) * (np.pi / 2)]),
    "sigmoid": (V.v_sigmoid, S.s_sigmoid, 2, [_uniform(-800, 800), _uniform(-5, 5)]),
    "softplus": (V.v_softplus, S.s_softplus, 4, [_uniform(-800, 800), _uniform(-5, 5), _uniform(25, 35)]),
}


def _loop(f):
    @njit(error_model="numpy", fastmath={"reassoc"})  # as generated programs are compiled
    def run(a, out):
        for i in range(a.shape[0]):
            out[i] = f(a[i])

    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_within_a_few_ulp_of_libm_and_exact_on_special_values(name):
    vf, ref, max_ulp, sets = CASES[name]
    mine, theirs = _loop(vf), _loop(ref)
    for a in sets + [SPECIAL]:
        got, want = np.empty_like(a), np.empty_like(a)
        with np.errstate(all="ignore"):
            mine(a, got)
            theirs(a, want)
        nan = np.isnan(got) & np.isnan(want)
        same = (got == want) & (np.signbit(got) == np.signbit(want))
        odd = ~(nan | same) & (~np.isfinite(got) | ~np.isfinite(want) | (got == 0) | (want == 0))
        assert not odd.any(), (name, a[odd][:5], got[odd][:5], want[odd][:5])
        with np.errstate(invalid="ignore"):
            ulp = np.where(nan | same, 0.0, np.abs(got - want) / np.spacing(np.abs(want)))
        assert ulp.max() <= max_ulp, (name, a[np.argmax(ulp)], got[np.argmax(ulp)], want[np.argmax(ulp)], ulp.max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_and_integer_arguments(name):
    vf, ref, _, _ = CASES[name]
    a32 = RNG.uniform(0.01 if name == "log" else -20, 20, 1000).astype(np.float32)
    got = np.empty(a32.shape, np.float32)
    _loop(vf)(a32, got)
    want = np.empty(a32.shape)
    _loop(ref)(a32.astype(np.float64), want)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=2 ** -23, atol=0)
    ints = np.arange(1, 40, dtype=np.int64)
    gi, wi = np.empty(ints.shape), np.empty(ints.shape)
    _loop(vf)(ints, gi)
    _loop(ref)(ints, wi)
    np.testing.assert_allclose(gi, wi, rtol=4e-16, atol=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_programs_with_the_vectorised_functions_match_the_python_engine(dtype):
    x, y = tg.vector("x", dtype=dtype), tg.vector("y", dtype=dtype)
    c = tg.sum(tg.exp(-y * y) * tg.log1p(x * x) + tg.log(1 + tg.abs(x)) * tg.expm1(0.1 * y)
               + tg.sigmoid(x * y) + tg.softplus(3 * x - y))
    xv = RNG.uniform(-3, 3, 257).astype(dtype)
    yv = RNG.uniform(-3, 3, 257).astype(dtype)
    xv[:4] = [0.0, -0.0, 1e-30, -1e-30]
    src = run_program([x, y], [c, *tg.grad(c, [x, y])], [xv, yv], dtype=dtype)
    assert "s_exp(" in src and "s_log1p(" in src


@njit(error_model="numpy")
def _substitute(a, b, out, lower):
    """v_tri_solve's substitution alone (the BLAS call is skipped: the path it takes below TRSM_WORK)."""
    n = a.shape[0]
    x = out.reshape((n, -1))
    x[...] = b.reshape((n, -1))
    for t in range(n):
        i = t if lower else n - 1 - t
        lo, hi = (0, i) if lower else (i + 1, n)
        for j in range(lo, hi):
            for q in range(x.shape[1]):
                x[i, q] -= a[i, j] * x[j, q]
        for q in range(x.shape[1]):
            x[i, q] /= a[i, i]


@njit(error_model="numpy")
def _tri(a, b, out, lower):
    V.v_tri_solve(a, b, out, lower)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("n,k", [(200, 200), (128, 1), (90, 7), (5, 3)])
def test_triangular_solve_by_blas_matches_substitution(dtype, lower, n, k):
    """From TRSM_WORK multiply-adds on, v_tri_solve calls BLAS's trsm (tapegrad/compile/trsm.py) on the C-order
    operands: the other triangle is never read, and the solution is substitution's to rounding."""
    a = RNG.standard_normal((n, n)).astype(dtype) + np.eye(n, dtype=dtype) * n
    a[np.triu_indices(n, 1) if lower else np.tril_indices(n, -1)] = np.nan  # the triangle not used
    b = RNG.standard_normal((n, k)).astype(dtype)
    got, want = np.empty_like(b), np.empty_like(b)
    _tri(a, b, got, lower)
    _substitute(a, b, want, lower)
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    vec = np.empty(n, dtype)
    _tri(a, b[:, 0].copy(), vec, lower)  # a vector right-hand side
    np.testing.assert_allclose(vec, want[:, 0], rtol=tol, atol=tol * np.abs(want).max())
    assert (n * n * k >= V.TRSM_WORK) == (n >= 90)


def test_triangular_solve_zero_pivot_raises_and_inf_in_the_triangle_is_substituted():
    n, k = 64, 64  # BLAS-sized
    a = np.eye(n) * 2.0
    a[40, 40] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        _tri(a, np.ones((n, k)), np.empty((n, k)), True)
    a[40, 40] = 2.0
    a[50, 3] = np.inf  # inf * 0 = nan where substitution multiplies a zero: BLAS is not asked
    b = np.ones((n, k))
    b[3] = 0.0
    got, want = np.empty((n, k)), np.empty((n, k))
    _tri(a, b, got, True)
    _substitute(a, b, want, True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[50]).all()
    np.testing.assert_array_equal(got[:50], want[:50])
