"""tapegrad's own matrix product (tapegrad/compile/gemm.py): v_gemm against NumPy on shapes that exercise every edge
(partial blocks, K beyond one packed panel, strided and transposed operands, float32), the policy that picks it,
and programs that call it against the python engine."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import tapegrad as tg
from tapegrad.compile import gemm as G
from tapegrad.compile import program_gen
from tests.compile.program_checks import run_program
from tests.compile.test_program_parallel import _need_tbb

RNG = np.random.default_rng(5)


@njit
def _gemm(a, b, c):
    G.v_gemm(a, b, c)


@njit
def _gemm_t(a, b, c):  # a transposed view as numba sees it in programs (an F-order array)
    G.v_gemm(a.T, b, c)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m,k,n", [(1024, 256, 256), (37, 401, 53), (8, 1, 24), (9, 193, 25), (300, 70, 49),
                                   (3, 5, 2), (16, 4100, 30)])
def test_v_gemm_matches_numpy(dtype, m, k, n):
    a = RNG.standard_normal((m, k)).astype(dtype)
    b = RNG.standard_normal((k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype)  # every element is written, none is read first
    _gemm(a, b, c)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.abs(want).max() * np.sqrt(k))
    at = np.ascontiguousarray(a.T)  # the same product through the transposed (strided) operand
    c2 = np.empty_like(c)
    _gemm_t(at, b, c2)
    np.testing.assert_array_equal(c2, c)  # packing reads the same numbers in the same order


def test_v_gemm_wide_output_crosses_the_column_block():
    a = RNG.standard_normal((9, 3))
    b = RNG.standard_normal((3, G.NC + 37))
    c = np.empty((9, G.NC + 37))
    _gemm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-13, atol=1e-13)


def test_v_gemm_spreads_inf_and_nan_as_blas_does():
    m, k, n = 32, 20, 48
    a = RNG.standard_normal((m, k))
    b = RNG.standard_normal((k, n))
    a[3, 7] = np.inf
    b[7, 5] = 0.0  # inf * 0: NaN, no zero term is skipped
    b[11, 9] = np.nan
    c = np.empty((m, n))
    _gemm(a, b, c)
    with np.errstate(invalid="ignore"):
        want = a @ b
    np.testing.assert_array_equal(np.isnan(c), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(c), np.isinf(want))
    assert np.isnan(c[3, 5]) and np.isnan(c[:, 9]).all()


def test_v_gemm_with_nothing_to_sum_is_zero():
    c = np.full((8, 24), np.nan)
    _gemm(np.empty((8, 0)), np.empty((0, 24)), c)
    assert (c == 0).all()


def test_the_policy(monkeypatch):
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setenv("TAPEGRAD_GEMM", "blas")
    assert G.decide() == (False, "TAPEGRAD_GEMM=blas")
    assert not G.use_own(1024, 256, 256, "float64")
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setenv("TAPEGRAD_GEMM", "own")
    assert G.decide()[0]
    assert G.use_own(1024, 256, 256, "float64") and G.use_own(128, 128, 128, "float32")
    assert G.use_own(48, 48, 16, "float64") and not G.use_own(48, 48, 8, "float64")  # too little work
    assert not G.use_own(1024, 10, 256, "float64")  # thin: BLAS
    assert not G.use_own(8, 256, 256, "float64") and not G.use_own(256, 32, 256, "float32")   # thin
    assert G.use_own(64, 32, 32, "float64") and G.use_own(32, 256, 256, "float64")   # a loop body's small squares
    assert not G.use_own(64, 64, 64, "int64")
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setenv("TAPEGRAD_GEMM", "auto")
    monkeypatch.setattr(G, "_avx512", lambda: True)
    monkeypatch.setattr(G, "_openblas_corename", lambda: "haswell")
    import tapegrad.compile.threads as T
    monkeypatch.setattr(T, "program_threads", lambda: 1)
    assert G.decide() == (True, "BLAS runs haswell kernels on an AVX-512 CPU")
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setattr(G, "_openblas_corename", lambda: "skylakex")
    assert G.decide() == (False, "BLAS runs skylakex kernels")
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setattr(G, "_openblas_corename", lambda: "zen")
    monkeypatch.setattr(T, "program_threads", lambda: 2)
    assert G.decide() == (True, "BLAS runs zen kernels on an AVX-512 CPU (own product on 2 threads)")
    # a threaded program takes thin products too (OpenBLAS's threads must not wake), not tiny ones
    assert G.use_own(1024, 10, 256, "float64", threads=2) and G.use_own(10, 256, 1024, "float64", threads=2)
    assert not G.use_own(1024, 10, 256, "float64", threads=1)
    assert not G.use_own(16, 16, 16, "float64", threads=2) and not G.use_own(64, 64, 64, "int64", threads=2)
    monkeypatch.setattr(G, "_DECIDED", None)
    monkeypatch.setattr(G, "_avx512", lambda: False)
    assert G.decide() == (False, "no AVX-512: BLAS")


def _mlp_source(dtype, n, d, hidden, scale):
    """The program source of an MLP's value and gradients (``n x d`` inputs, ``hidden`` units, a 10-wide output
    layer), after checking it against the python engine."""
    X, Y = tg.matrix("X", dtype=dtype), tg.matrix("Y", dtype=dtype)
    W1, W2 = tg.matrix("W1", dtype=dtype), tg.matrix("W2", dtype=dtype)
    H = tg.tanh(tg.dot(X, W1))
    loss = tg.sum((tg.dot(H, W2) - Y) ** 2)
    args = [RNG.standard_normal((n, d)).astype(dtype), RNG.standard_normal((n, 10)).astype(dtype),
            (RNG.standard_normal((d, hidden)) / scale).astype(dtype),
            (RNG.standard_normal((hidden, 10)) / 8).astype(dtype)]
    return run_program([X, Y, W1, W2], [loss, *tg.grad(loss, [W1, W2])], args, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_programs_with_the_own_product_match_the_python_engine(dtype, monkeypatch):
    """An MLP's value and gradients (W1's shape, smaller) and a batched product, with the own product forced: the
    program calls v_gemm for the wide products and BLAS for the 10-wide layer."""
    monkeypatch.setattr(G, "_DECIDED", (True, "test"))
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)
    src = _mlp_source(dtype, 96, 64, 96, 8)
    assert src.count("v_gemm(") == 2 and "np.dot(" in src  # X @ W1 and X.T @ dZ; the thin ones on BLAS
    A, B = tg.tensor3("A", dtype=dtype), tg.tensor3("B", dtype=dtype)
    c = tg.sum(tg.matmul(A, B) ** 2)
    src = run_program([A, B], [c, *tg.grad(c, [A, B])],
                      [RNG.standard_normal((2, 64, 30)).astype(dtype), RNG.standard_normal((2, 30, 100)).astype(dtype)],
                      dtype=dtype)
    assert "v_gemm(" in src


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_threaded_programs_split_big_products_and_keep_thin_ones_off_blas(dtype, monkeypatch):
    """On two threads every product goes to the own kernel: the big ones split by rows across the threads
    (v_gemm_par), the 10-wide ones too when they have the work, else serial v_gemm; none calls BLAS."""
    _need_tbb()
    monkeypatch.setattr(G, "_DECIDED", (True, "test"))
    monkeypatch.setattr(program_gen, "program_threads", lambda: 2)
    src = _mlp_source(dtype, 1030, 160, 160, 16)  # 1030 rows: row blocks are multiples of MR, with a ragged end
    assert "np.dot(" not in src
    assert src.count("v_gemm_par(") >= 2 and ", 2)" in src  # X @ W1 and X.T @ dZ: 1030 x 160 x 160 > 2^21
    assert "from tapegrad.compile.gemm import v_gemm" in src


def test_v_gemm_par_matches_numpy_on_ragged_row_blocks():
    for m, parts in ((1030, 2), (17, 2), (8, 3), (200, 7)):
        a, b = RNG.standard_normal((m, 70)), RNG.standard_normal((70, 50))
        c = np.full((m, 50), np.nan)
        G.v_gemm_par(a, b, c, parts)
        np.testing.assert_allclose(c, a @ b, rtol=1e-12, atol=1e-12)
    a = RNG.standard_normal((300, 64))
    c = np.empty((64, 64))
    G.v_gemm_par(a.T, a, c, 2)  # a transposed left operand
    np.testing.assert_allclose(c, a.T @ a, rtol=1e-12, atol=1e-11)
