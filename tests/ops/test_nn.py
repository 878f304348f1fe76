"""softmax, log_softmax, relu (``tapegrad/ops/nn.py``): values, stability, dtypes, errors, derivative rules.

The spec rows of ``specs_nn.py`` are run here with the row checkers of
``tests/ops/checks.py`` (reference evaluator, central differences, exact adjoint).
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad.graph as tg
from tapegrad.compile.reference import evaluate as ev
from tapegrad.config import config
from tapegrad.gradient import Lop, Rop, grad
from tapegrad.ops import nn as N
from tapegrad.ops.elemwise import sin
from tapegrad.registry import all_codes, code_of
from tests.ops.checks import check_hvp_adjoint, row_tests
from tests.ops.specs_nn import ROWS, np_log_softmax, np_softmax


# --------------------------------------------------------------------------- the spec rows
test_row_value_and_static_shape, test_row_derivatives_float64, test_row_derivatives_float32 = row_tests(ROWS)


def test_every_nn_code_has_a_row():
    ours = {name for name, code, _ in all_codes() if 500 <= code < 550}
    assert ours == {"SOFTMAX", "LOG_SOFTMAX", "RELU", "SUM_BROADCAST"}
    covered = {r.code for r in ROWS} | {c for r in ROWS for c in r.also}
    assert ours <= covered, ours - covered


def test_relu_has_its_own_code():
    x = tg.vector("x")
    assert code_of(N.relu(x).owner.op) == 502
    assert N.relu(x).owner.op.kind == "elementwise"
    assert code_of(N.softmax(x).owner.op) == 500 and code_of(N.log_softmax(x).owner.op) == 501


# --------------------------------------------------------------------------- values
def test_stable_for_large_inputs():
    x = tg.matrix("x")
    xv = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    s, ls = ev([N.softmax(x), N.log_softmax(x)], {x: xv})
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ls))
    np.testing.assert_allclose(s, np_softmax(xv), rtol=1e-14)
    np.testing.assert_allclose(ls, np_log_softmax(xv), rtol=1e-14)
    np.testing.assert_allclose(ls[0], [-1.4076059644443804, -0.4076059644443804, -2.4076059644443804], rtol=1e-14)


def test_infinite_entries():
    x = tg.vector("x")
    xv = np.array([-np.inf, 0.0, np.log(3.0)])
    s, ls = ev([N.softmax(x), N.log_softmax(x)], {x: xv})
    np.testing.assert_allclose(s, [0.0, 0.25, 0.75], rtol=1e-15)
    np.testing.assert_allclose(ls, [-np.inf, np.log(0.25), np.log(0.75)], rtol=1e-15)
    # zero in, zero out: the gradient at the -inf entry is 0, not NaN
    (g,) = ev([grad((N.softmax(x) * tg.constant([1.0, 2.0, 3.0])).sum(), x)], {x: xv})
    assert np.all(np.isfinite(g)) and g[0] == 0


def test_axis_none_and_0d():
    x = tg.tensor3("x")
    xv = np.random.default_rng(0).normal(size=(2, 3, 2))
    (s,) = ev([N.softmax(x, axis=None)], {x: xv})
    np.testing.assert_allclose(s.sum(), 1.0)
    np.testing.assert_allclose(s, np.exp(xv) / np.exp(xv).sum())
    c = tg.scalar("c")
    s, ls = ev([N.softmax(c), N.log_softmax(c, axis=None)], {c: 3.5})
    assert s == 1.0 and ls == 0.0


def test_relu_values_and_kink():
    x = tg.vector("x")
    xv = np.array([-2.0, -0.0, 0.0, 1.5, np.inf, -np.inf, np.nan])
    (y,) = ev([N.relu(x)], {x: xv})
    np.testing.assert_array_equal(y[:6], [0.0, 0.0, 0.0, 1.5, np.inf, 0.0])
    assert np.isnan(y[6])
    # relu'(0) = 0
    (g,) = ev([grad(N.relu(x).sum(), x)], {x: np.array([-1.0, 0.0, 2.0])})
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])
    u = tg.vector("u")
    (t,) = ev([Rop(N.relu(x), x, u)], {x: np.array([-1.0, 0.0, 2.0]), u: np.array([5.0, 5.0, 5.0])})
    np.testing.assert_array_equal(t, [0.0, 0.0, 5.0])


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("fn", [N.softmax, N.log_softmax])
@pytest.mark.parametrize("dtype, expected", [("float32", "float32"), ("float64", "float64"), ("int64", "float64"),
                                             ("int32", "float64")])
def test_softmax_dtypes(fn, dtype, expected):
    x = tg.tensor("x", dtype=dtype, shape=(None, 3))
    y = fn(x)
    assert y.dtype == expected and y.type.shape == (None, 3)
    xv = np.arange(6).reshape(2, 3).astype(dtype)
    (out,) = ev([y], {x: xv})
    assert out.dtype.name == expected
    ref = (np_softmax if fn is N.softmax else np_log_softmax)(xv.astype("float64"))
    np.testing.assert_allclose(out, ref, rtol=1e-6 if expected == "float32" else 1e-14)
    (g,) = grad((sin(y)).sum(), [x])
    assert g.dtype == (dtype if dtype.startswith("float") else config.floatX)


def test_relu_dtypes():
    for dtype in ("float32", "float64", "int64", "int32"):
        x = tg.tensor("x", dtype=dtype, shape=(2,))
        y = N.relu(x)
        assert y.dtype == dtype
        (out,) = ev([y], {x: np.array([-3, 4], dtype=dtype)})
        assert out.dtype.name == dtype and list(out) == [0, 4]


# --------------------------------------------------------------------------- rules
def test_softmax_rules_are_the_documented_formulas():
    x, g, u = tg.matrix("x"), tg.matrix("g"), tg.matrix("u")
    rng = np.random.default_rng(4)
    xv, gv, uv = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y = np_softmax(xv, 0)
    lop, rop = ev([Lop(N.softmax(x, axis=0), x, g), Rop(N.softmax(x, axis=0), x, u)], {x: xv, g: gv, u: uv})
    np.testing.assert_allclose(lop, y * (gv - (gv * y).sum(0, keepdims=True)), rtol=1e-13)
    np.testing.assert_allclose(rop, y * (uv - (uv * y).sum(0, keepdims=True)), rtol=1e-13)
    lop, rop = ev([Lop(N.log_softmax(x), x, g), Rop(N.log_softmax(x), x, u)], {x: xv, g: gv, u: uv})
    p = np_softmax(xv)
    np.testing.assert_allclose(lop, gv - p * gv.sum(-1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(rop, uv - (p * uv).sum(-1, keepdims=True), rtol=1e-13)


def test_r_op_of_none_is_none():
    x = tg.matrix("x")
    for y in (N.softmax(x), N.log_softmax(x), N.SumBroadcast((0,))(x)):
        assert y.owner.op.R_op(y.owner.inputs, [None]) == [None]


@pytest.mark.parametrize(
    "fn, shape",
    [
        (lambda x: N.softmax(x), (2, 3)),
        (lambda x: N.softmax(x, axis=None), (2, 3)),
        (lambda x: N.log_softmax(x, axis=0), (3, 2)),
        (lambda x: N.relu(x) * x, (4,)),
    ],
)
def test_second_order_rules(fn, shape):
    """The rules are built of elementwise ops and sum_broadcast, so Hessians work."""
    x = tg.tensor("x", shape=(None,) * len(shape))
    rng = np.random.default_rng(5)
    xv = rng.uniform(0.2, 1.0, size=shape) * rng.choice([-1, 1], size=shape)
    check_hvp_adjoint(sin(fn(x)), [x], [xv])


def test_cross_entropy_gradient():
    """d/dx -sum(t * log_softmax(x)) = softmax(x) - t for one-hot t."""
    x = tg.matrix("x")
    t = np.eye(3)[[0, 2]]
    xv = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    (g,) = ev([grad(-(N.log_softmax(x) * tg.constant(t)).sum(), x)], {x: xv})
    np.testing.assert_allclose(g, np_softmax(xv) - t, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- errors and identity
def test_bad_axis_raises_naming_the_op():
    with pytest.raises(ValueError, match="softmax: axis 2 is out of bounds"):
        N.softmax(tg.matrix("m"), axis=2)
    with pytest.raises(ValueError, match="log_softmax: repeated axis"):
        N.log_softmax(tg.matrix("m"), axis=(0, -2))
    with pytest.raises(ValueError, match="softmax: axis 1 is out of bounds for the 0-d c"):
        N.softmax(tg.scalar("c"), axis=1)


def test_ops_are_hashable_and_encode_axes():
    assert N.Softmax((1,)) == N.Softmax((1,)) and N.Softmax((1,)) != N.Softmax((0,))
    assert N.Softmax((0, 2)).encode() == ((2, 0, 2), ())
    assert hash(N.relu(tg.vector()).owner.op) == hash(N.relu(tg.vector()).owner.op)


@pytest.mark.parametrize("device", ["python", "cpu"])
@pytest.mark.parametrize("route", ["symbolic", "auto"])
def test_relu_derivatives_select_so_inf_or_nan_never_leak_where_x_is_not_positive(device, route):
    import tapegrad as tg

    x, u = tg.dvector("x"), tg.dvector("u")
    y = tg.relu(x)
    f = tg.function([x, u], [tg.grad(tg.sum(y * np.inf), x), tg.Rop(y, x, u), tg.grad(tg.sum(y * y), x)],
                    device=device, route=route)
    g_inf, jv, g = f(np.array([-1.0, 0.0, 2.0]), np.array([np.inf, np.nan, 1.0]))
    np.testing.assert_array_equal(g_inf, [0.0, 0.0, np.inf])
    np.testing.assert_array_equal(jv, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 4.0])
