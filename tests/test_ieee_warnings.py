"""inf and NaN flow through products as IEEE says, without NumPy RuntimeWarnings (SPEC 6), on every engine."""

import warnings

import numpy as np
import pytest

import tapegrad as tg


@pytest.mark.parametrize("device,tier", [("python", None), ("cpu", None), ("cpu", "interp"), ("cpu", "fused")])
def test_products_of_inf_raise_no_warning(device, tier):
    x, W = tg.dvector("x"), tg.dmatrix("W")
    outs = [tg.dot(W, x), tg.outer(x, x), W @ W, tg.tensordot(W, W, 1), tg.grad(tg.dot(W, x).sum(), x)]
    f = tg.function([x, W], outs, device=device, tier=tier)
    xv, Wv = np.array([np.inf, 1e308]), np.array([[1e308, 1e308], [0.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = f(xv, Wv)
    np.testing.assert_array_equal(got[0], [np.inf, np.nan])
    np.testing.assert_array_equal(got[1], np.full((2, 2), np.inf))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got[2], Wv @ Wv)
    np.testing.assert_array_equal(got[4], [1e308, 1e308])  # column sums of W
