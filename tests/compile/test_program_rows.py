"""Row regions of the program tier (:mod:`tapegrad.compile.program_rows`): the products ``X @ w`` and
``X.T @ r`` of a gradient, and the row-wise instructions between them, run over blocks of rows so that ``X``
is read once.

The thresholds are lowered here (:data:`ROW_MIN_BYTES` 0, blocks of 16 rows) so small matrices make regions;
every program is compared with the python engine, and the source says whether a region was made.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.compile import program_gen, program_rows
from tests.compile.program_checks import run_program
from tests.compile.test_program_parallel import _need_tbb

RNG = np.random.default_rng(41)
REGION = "opaque("  # the region's column count: in every region's source, nowhere else


@pytest.fixture
def small_regions(monkeypatch):
    monkeypatch.setattr(program_rows, "ROW_MIN_BYTES", 0)
    monkeypatch.setattr(program_rows, "ROW_MIN_COLS", 1)
    monkeypatch.setattr(program_rows, "ROW_BLOCK_BYTES", 16 * 8 * 3)  # 16 rows of 3 float64 columns or fewer
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)  # serial, unless a test says otherwise


def _logreg(w, X, y):
    return tg.sum(tg.log1p(tg.exp(-y * (X @ w)))) / X.shape[0] + 0.01 * tg.sum(w * w)


def _data(m, k, dtype="float64"):
    return ((0.3 * RNG.standard_normal(k)).astype(dtype), RNG.standard_normal((m, k)).astype(dtype),
            np.sign(RNG.standard_normal(m)).astype(dtype))


def test_block_rows():
    assert program_rows.block_rows(50, 8) == 80  # 32 KB of a 100,000 x 50 matrix
    assert program_rows.block_rows(1, 8) == 4096  # at most 4096
    assert program_rows.block_rows(10_000, 8) == 16  # at least 16
    assert program_rows.block_rows(50, 4) == 160


@pytest.mark.parametrize("m", [16 * 7, 16 * 7 + 5])  # whole blocks only; and a ragged last block
def test_logistic_regression_gradient_is_one_region(small_regions, m):
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    src = run_program([w, X, y], [c, tg.grad(c, w)], list(_data(m, 3)))
    assert src.count(REGION) == 1
    assert "np.dot" not in src  # both products are the region's
    assert re.search(rf"for R\d+b in range\({m // 16}\):", src)  # the blocks of 16 rows
    if m % 16:
        assert f"range({m % 16})" in src  # the tail block's own body


def test_hessian_vector_product_has_two_forward_products(small_regions):
    w, X, y, v = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y"), tg.dvector("v")
    c = _logreg(w, X, y)
    wv, Xv, yv = _data(100, 3)
    src = run_program([w, X, y, v], [tg.hessian_vector_product(c, w, v), c],
                      [wv, Xv, yv, RNG.standard_normal(3)])
    assert src.count(REGION) == 1 and "np.dot" not in src


def test_least_squares_with_the_residual_returned(small_regions):
    """``r = X @ w - y`` is also an output: written block by block into a full-length result."""
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    r = X @ w - y
    c = 0.5 * tg.sum(r ** 2)
    src = run_program([w, X, y], [c, tg.grad(c, w), r, X @ w], list(_data(100, 2)))
    assert src.count(REGION) == 1


def test_float32(small_regions):
    w, X, y = tg.vector("w", dtype="float32"), tg.matrix("X", dtype="float32"), tg.vector("y", dtype="float32")
    c = _logreg(w, X, y)
    src = run_program([w, X, y], [c, tg.grad(c, w)], list(_data(150, 3, "float32")), dtype="float32")
    assert src.count(REGION) == 1


def test_a_transposed_matrix(small_regions):
    """``X`` a transposed view (column stride m): the region indexes it with its strides."""
    w, Xt, y = tg.dvector("w"), tg.dmatrix("Xt"), tg.dvector("y")
    c = _logreg(w, Xt.T, y)
    wv, Xv, yv = _data(70, 3)
    src = run_program([w, Xt, y], [c, tg.grad(c, w)], [wv, np.ascontiguousarray(Xv.T), yv])
    assert src.count(REGION) == 1


def test_a_normalisation_between_the_products_is_no_region(small_regions):
    """``r`` divided by a sum over all rows: a block cannot know it, so the products stay whole."""
    w, X = tg.dvector("w"), tg.dmatrix("X")
    z = X @ w
    c = tg.sum(tg.exp(z) / tg.sum(tg.exp(z)) * z)
    src = run_program([w, X], [c, tg.grad(c, w)], list(_data(64, 3))[:2])
    assert REGION not in src


def test_cost_and_gradient_read_together_after_the_region(small_regions):
    """Instructions that read the region's sum and its product (the cost and the gradient in one expression)
    are placed after it."""
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    g = tg.grad(c, w)
    src = run_program([w, X, y], [c * g + tg.sum(g), g ** 2], list(_data(70, 3)))
    assert src.count(REGION) == 1


def test_narrow_matrices_make_no_region(small_regions, monkeypatch):
    monkeypatch.setattr(program_rows, "ROW_MIN_COLS", 4)
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    assert REGION not in run_program([w, X, y], [c, tg.grad(c, w)], list(_data(100, 3)))


def test_threaded_programs_take_only_large_narrow_matrices(monkeypatch):
    """With several threads a matrix needs ROW_MIN_BYTES_PAR bytes and at most ROW_MAX_COLS_PAR columns."""
    wr = program_rows.worth_a_region
    assert wr(100_000, 50, 8, 1) and wr(100_000, 50, 8, 2)  # logistic regression, 38 MB
    assert wr(3000, 100, 8, 1) and not wr(3000, 100, 8, 2)  # 2.3 MB: one thread only
    assert wr(1600, 5000, 8, 1) and not wr(1600, 5000, 8, 2)  # 61 MB but 5000 wide
    assert not wr(1_000_000, 3, 8, 1)  # three columns
    assert not wr(200, 8, 8, 1)  # 12.8 KB
    assert not wr(40, 100_000, 8, 1)  # 31 MB, but fewer than ROW_MIN_BLOCKS blocks of 16 rows


def test_small_matrices_make_no_region():
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    src = run_program([w, X, y], [c, tg.grad(c, w)], list(_data(200, 8)))
    assert REGION not in src and "np.dot" in src


def test_two_threads_split_the_blocks(small_regions, monkeypatch):
    _need_tbb()
    monkeypatch.setattr(program_gen, "program_threads", lambda: 2)
    monkeypatch.setattr(program_rows, "ROW_MIN_BYTES_PAR", 0)
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    src = run_program([w, X, y], [c, tg.grad(c, w)], list(_data(16 * 9 + 3, 3)))
    assert src.count(REGION) == 1 and " in prange(2)" in src


@settings(max_examples=4, deadline=None)
@given(m=st.integers(1, 90), k=st.integers(1, 3), seed=st.integers(0, 2 ** 31))
def test_least_squares_at_random_sizes(m, k, seed):
    """Any size, a region or not (fewer than ROW_MIN_BLOCKS blocks make none), against the python engine."""
    saved = program_rows.ROW_MIN_BYTES, program_rows.ROW_MIN_COLS, program_rows.ROW_BLOCK_BYTES, program_gen.program_threads
    program_rows.ROW_MIN_BYTES, program_rows.ROW_MIN_COLS, program_rows.ROW_BLOCK_BYTES = 0, 1, 16 * 8 * 3
    program_gen.program_threads = lambda: 1
    try:
        r = np.random.default_rng(seed)
        w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
        c = tg.sum(tg.tanh(X @ w - y) ** 2)
        src = run_program([w, X, y], [c, tg.grad(c, w)],
                          [r.standard_normal(k), r.standard_normal((m, k)), r.standard_normal(m)])
        assert (REGION in src) == (m >= program_rows.ROW_MIN_BLOCKS * program_rows.block_rows(k, 8))
    finally:
        (program_rows.ROW_MIN_BYTES, program_rows.ROW_MIN_COLS, program_rows.ROW_BLOCK_BYTES,
         program_gen.program_threads) = saved


def _huber(w, X, y):
    r = X @ w - y
    a = tg.abs(r)
    return tg.sum(tg.switch(a < 1.0, 0.5 * r ** 2, a - 0.5))


def _probit(w, X, y):
    return -tg.sum(tg.log(0.5 * (1.0 + tg.erf(y * (X @ w) / np.sqrt(2.0))) + 1e-12))


def _two_products(w, X, y):
    """``X @ w`` and ``X @ (w * w)``: two forward products, a clip and a softplus between them."""
    z1, z2 = X @ w, X @ (w * w)
    return tg.sum(tg.softplus(tg.clip(z1, -2.0, 2.0) * z2 - y)) + tg.sum(tg.sigmoid(z1))


@pytest.mark.parametrize("loss", [_huber, _probit, _two_products])
def test_other_losses(small_regions, loss):
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = loss(w, X, y)
    g = tg.grad(c, w)
    src = run_program([w, X, y], [c, g, g * c], list(_data(16 * 6 + 7, 3)))
    assert src.count(REGION) == 1 and "np.dot" not in src


def test_a_row_vector_made_after_the_forward_product(small_regions):
    """``u`` (made from ``y`` alone) comes after ``X @ w`` in the tape and is read inside the region: it is made
    before the region, which is placed at its last instruction."""
    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    z = X @ w
    u = tg.exp(-y * y)
    c = tg.sum(u * tg.tanh(z)) + tg.sum(u)
    src = run_program([w, X, y], [c, tg.grad(c, w), u], list(_data(80, 3)))
    assert src.count(REGION) == 1


def test_njit_entry_of_a_region(small_regions):
    """A region's program is the ``as_njit`` entry too: called from user ``@njit`` code, same values."""
    from numba import njit

    w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
    c = _logreg(w, X, y)
    f = tg.function([w, X, y], [c, tg.grad(c, w)], device="cpu", tier="program")
    args = list(_data(100, 3))
    entry = f.as_njit(*args)

    @njit
    def twice(w, X, y):
        c1, g1 = entry(w, X, y)
        c2, g2 = entry(w - 0.1 * g1, X, y)
        return c1, c2, g2

    c1, c2, g2 = twice(*args)
    ref = tg.function([w, X, y], [c, tg.grad(c, w)], device="python")
    r1 = ref(*args)
    r2 = ref(args[0] - 0.1 * np.asarray(r1[1]), args[1], args[2])
    np.testing.assert_allclose([c1, c2], [float(r1[0]), float(r2[0])], rtol=1e-12)
    np.testing.assert_allclose(g2, r2[1], rtol=1e-12, atol=1e-14)
    assert REGION in f._engine._programs[next(iter(f._engine._programs))].program.source
