"""Matrix products with a short contraction in the program tier.

A product of matrices M x K and K x N with K <= ``THIN_K`` (``dP @ W2.T`` in the gradient of a small output
layer) is a member of a fused group: its value at ``(i, j)`` is a sum of K products read from the operands, so
the M x N product is never stored and read back.  These tests check which products take that path and that
the values match the python engine (BLAS) for plain, transposed and einsum operands, both float dtypes, and
non-finite values.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile import program_gen, program_ir
from tests.compile.program_checks import run_program

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k", [1, 3, program_ir.THIN_K])
def test_short_contraction_is_a_group_member(dtype, k):
    A, B, C = tg.matrix("A", dtype=dtype), tg.matrix("B", dtype=dtype), tg.matrix("C", dtype=dtype)
    out = tg.tanh(tg.dot(A, B)) * C
    args = [RNG.standard_normal(s).astype(dtype) for s in [(40, k), (k, 64), (40, 64)]]
    src = run_program([A, B, C], [out], args, dtype)
    assert "np.dot(" not in src
    assert src.count(" * ") >= k  # the k products, summed in the loop


def test_longer_contraction_or_small_output_stays_on_blas():
    A, B = tg.dmatrix("A"), tg.dmatrix("B")
    k = program_ir.THIN_K + 1
    src = run_program([A, B], [tg.exp(tg.dot(A, B))], [RNG.standard_normal((40, k)), RNG.standard_normal((k, 64))])
    # a product call, not a member: BLAS, or the own kernel in a threaded program where BLAS runs narrow kernels
    # (tapegrad.compile.gemm.use_own)
    assert "np.dot(" in src or "v_gemm(" in src
    src = run_program([A, B], [tg.exp(tg.dot(A, B))], [RNG.standard_normal((10, 2)), RNG.standard_normal((2, 50))])
    assert "np.dot(" in src  # 500 elements: below THIN_MIN


def test_transposed_right_operand_is_copied_once_to_unit_stride():
    A, W = tg.dmatrix("A"), tg.dmatrix("W")
    out = tg.dot(A, W.T) + 1.0
    src = run_program([A, W], [out], [RNG.standard_normal((64, 5)), RNG.standard_normal((32, 5))])
    assert "np.dot(" not in src and "for q0 in range(5):" in src


def test_the_product_itself_as_a_result_and_with_non_finite_values():
    A, B = tg.dmatrix("A"), tg.dmatrix("B")
    a, b = RNG.standard_normal((50, 4)), RNG.standard_normal((4, 30))
    a[3, 1], a[7, 2], b[0, 5], b[2, 9] = np.inf, np.nan, -np.inf, 0.0
    src = run_program([A, B], [tg.dot(A, B), tg.sum(tg.dot(A, B), axis=0)], [a, b])
    assert "np.dot(" not in src


def test_mlp_gradient_through_einsum_matches_python_engine(monkeypatch):
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)  # (threaded: every product on the own kernel)
    X, Y, W1, W2 = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dmatrix("W1"), tg.dmatrix("W2")
    H = tg.tanh(tg.dot(X, W1))
    loss = tg.sum((tg.dot(H, W2) - Y) ** 2)
    args = [RNG.standard_normal((96, 16)), RNG.standard_normal((96, 3)), RNG.standard_normal((16, 32)) / 4,
            RNG.standard_normal((32, 3)) / 4]
    src = run_program([X, Y, W1, W2], [loss, *tg.grad(loss, [W1, W2])], args)
    # dP @ W2.T (3 terms, 96 x 32) is a member; the products with long contractions are calls (BLAS, or the own
    # kernel for X @ W1, 96 x 16 by 16 x 32: gemm.use_own)
    assert src.count("np.dot(") + src.count("v_gemm(") == 3 and "for q0 in range(3):" in src
