"""``tapegrad.ifelse.ifelse`` (Aesara's scalar conditional): values, derivatives, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ifelse import IfElse, ifelse

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_branches_of_different_shapes_and_their_gradients(device):
    x = tg.dvector("x")
    y = ifelse(tg.sum(x) > 0, tg.sqrt(x), -3.0 * x[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no "user op runs in Python" warning for tapegrad's own op
        f = tg.function([x], [y, tg.grad(tg.sum(y ** 2), x)], device=device)
        pos = f(np.array([1.0, 4.0, 9.0]))
    np.testing.assert_allclose(pos[0], [1.0, 2.0, 3.0], rtol=1e-15)
    np.testing.assert_allclose(pos[1], [1.0, 1.0, 1.0], rtol=1e-15)          # d(x)/dx
    val, g = f(np.array([-1.0, -4.0, 2.0]))
    np.testing.assert_array_equal(val, [3.0, 12.0])
    np.testing.assert_allclose(g, [18.0 * -1.0, 18.0 * -4.0, 0.0], rtol=1e-15)   # d(9 x^2)/dx on the slice


def test_branch_not_taken_never_reaches_the_gradient():
    x = tg.dvector("x")
    y = ifelse(tg.all(x > 0), tg.log(x), x * 2.0)          # log(-1) = nan in the branch not taken
    g = tg.function([x], tg.grad(tg.sum(y), x))(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [2.0, 2.0, 2.0])
    assert not np.isnan(g).any()


def test_lists_rop_lop_and_hvp():
    x, w = tg.dvector("x"), tg.dscalar("w")
    a, b = ifelse(w > 0.5, [tg.sin(x) * w, w ** 2], [tg.cos(x), w * 3.0])
    cost = tg.sum(a * a) + b
    xv = RNG.standard_normal(4)
    for wv in (0.9, 0.1):
        u, uw = RNG.standard_normal(4), 0.7
        gx, gw = tg.function([x, w], tg.grad(cost, [x, w]))(xv, wv)

        def F(xx, ww):
            aa, bb = (np.sin(xx) * ww, ww ** 2) if ww > 0.5 else (np.cos(xx), ww * 3.0)
            return float((aa * aa).sum() + bb)

        h = 1e-6
        fdx = np.array([(F(xv + h * e, wv) - F(xv - h * e, wv)) / (2 * h) for e in np.eye(4)])
        np.testing.assert_allclose(gx, fdx, rtol=1e-7, atol=1e-9)
        assert float(gw) == pytest.approx((F(xv, wv + h) - F(xv, wv - h)) / (2 * h), rel=1e-7)
        xd, wd = tg.dvector("xd"), tg.dscalar("wd")
        jvp = tg.function([x, w, xd, wd], tg.Rop(cost, [x, w], [xd, wd]))(xv, wv, u, uw)
        assert float(jvp) == pytest.approx(float(gx @ u + gw * uw), rel=1e-12)
        hv = tg.function([x, w, xd, wd], tg.hessian_vector_product(cost, [x, w], [xd, wd]))(xv, wv, u, uw)
        g = tg.function([x, w], tg.grad(cost, [x, w]))
        gp, gm = g(xv + 1e-5 * u, wv + 1e-5 * uw), g(xv - 1e-5 * u, wv - 1e-5 * uw)
        for k in range(2):
            np.testing.assert_allclose(hv[k], (gp[k] - gm[k]) / 2e-5, rtol=1e-6, atol=1e-8)


def test_condition_types_and_constant_branches():
    x = tg.dvector("x")
    y = ifelse(tg.constant(np.int8(0)), x, np.array([1, 2]))   # an int condition; the int constant takes x's dtype
    assert y.dtype == "float64"
    np.testing.assert_array_equal(tg.function([x], y)(np.array([5.0])), [1.0, 2.0])
    assert isinstance(y.owner.op, IfElse)


def test_errors():
    x, m, i = tg.dvector("x"), tg.dmatrix("m"), tg.ivector("i")
    with pytest.raises(TypeError, match="scalar"):
        ifelse(x > 0, x, x)
    with pytest.raises(TypeError, match="numbers of dimensions"):
        ifelse(tg.sum(x) > 0, x, m)
    with pytest.raises(TypeError, match="different dtypes"):
        ifelse(tg.sum(x) > 0, x, i)
    with pytest.raises(ValueError, match="must match"):
        ifelse(tg.sum(x) > 0, [x, x], [x])
