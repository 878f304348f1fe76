"""Reductions and scans (``tapegrad/ops/reduce.py``): values, shapes, dtypes, derivative rules.

The spec rows of ``specs_reduce.py`` are also run here (value, Lop/Rop against
central differences, the exact adjoint identity, float32 against float64) on
the reference evaluator, so this file stands on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad
import tapegrad.graph as tg
from tapegrad.compile.reference import evaluate
from tapegrad.gradient import Lop, Rop
from tapegrad.ops import reduce as R
from tapegrad.ops.elemwise import exp, sqr
from tapegrad.registry import all_codes
from tests.ops.checks import inner, row_tests
from tests.ops.specs_reduce import ROWS, with_zeros


def ev(outputs, values):
    return evaluate(outputs, values)


# --------------------------------------------------------------------------- the spec rows
# (no infer_shape check: in composite rows such as std or a flat cumsum the output's op
# does not take the row inputs)
test_row_value_and_static_shape, test_row_derivatives_float64, test_row_derivatives_float32 = row_tests(
    ROWS, owner_infer_shape=False)


def test_every_reduce_code_has_a_row():
    ours = {name for name, code, _ in all_codes() if 200 <= code < 300}
    covered = {r.code for r in ROWS} | {c for r in ROWS for c in r.also}
    assert ours == {"SUM", "MEAN", "PROD", "MAX", "MIN", "ARGMAX", "ARGMIN", "ALL", "ANY", "LOGSUMEXP", "CUMSUM",
                    "CUMPROD", "LINREC", "BROADCAST_REDUCED", "EXTREMUM_MASK", "RAVEL"}
    assert ours <= covered, ours - covered


# --------------------------------------------------------------------------- dtypes and static shapes
@pytest.mark.parametrize(
    "fn, dtype, expected",
    [
        (R.sum, "int32", "int64"), (R.sum, "bool", "int64"), (R.sum, "float32", "float32"),
        (R.prod, "int32", "int64"), (R.prod, "bool", "int64"), (R.prod, "float32", "float32"),
        (R.mean, "int64", "float64"), (R.mean, "float32", "float32"), (R.var, "int32", "float64"),
        (R.std, "float32", "float32"), (R.max, "int32", "int32"), (R.max, "bool", "bool"),
        (R.min, "float32", "float32"), (R.argmax, "float32", "int64"), (R.argmin, "int32", "int64"),
        (R.all, "float64", "bool"), (R.any, "int64", "bool"), (R.logsumexp, "int64", "float64"),
        (R.logsumexp, "float32", "float32"), (R.cumsum, "int32", "int64"), (R.cumsum, "bool", "int64"),
        (R.cumprod, "float32", "float32"), (R.cumprod, "int32", "int64"),
    ],
)
def test_dtype_rules_match_numpy(fn, dtype, expected):
    x = tg.tensor("x", dtype=dtype, shape=(None, None))
    y = fn(x, axis=0) if fn not in (R.cumsum, R.cumprod) else fn(x, axis=1)
    assert y.dtype == expected
    xv = (np.arange(6).reshape(2, 3) % 3).astype(dtype)
    (out,) = ev([y], {x: xv})
    assert out.dtype == np.dtype(expected)
    ref = {R.sum: np.sum, R.prod: np.prod, R.mean: np.mean, R.var: np.var, R.std: np.std, R.max: np.max,
           R.min: np.min, R.argmax: np.argmax, R.argmin: np.argmin, R.all: np.all, R.any: np.any}.get(fn)
    if ref is not None:
        np.testing.assert_allclose(out, ref(xv, axis=0), rtol=1e-6)
        assert np.dtype(expected) == ref(xv, axis=0).dtype


def test_sum_dtype_argument():
    x = tg.fvector("x")
    y = R.sum(x, dtype="float64")
    assert y.dtype == "float64"
    assert R.sum(tg.ivector("i"), dtype="float32").dtype == "float32"
    assert x.sum(dtype="float64").dtype == "float64"


@pytest.mark.parametrize(
    "axis, keepdims, expected",
    [
        (None, False, ()), (None, True, (1, 1, 1)), (0, False, (3, None)), (-1, False, (2, 3)),
        ((0, 2), False, (3,)), ((0, -1), True, (1, 3, 1)), ((), False, (2, 3, None)), (1, True, (2, 1, None)),
    ],
)
def test_static_shapes(axis, keepdims, expected):
    x = tg.tensor("x", shape=(2, 3, None))
    for fn in (R.sum, R.mean, R.prod, R.max, R.min, R.argmax, R.argmin, R.all, R.any, R.logsumexp):
        assert fn(x, axis=axis, keepdims=keepdims).type.shape == expected, fn
    assert R.var(x, axis=axis, keepdims=keepdims).type.shape == expected
    assert R.std(x, axis=axis, keepdims=keepdims, ddof=1).type.shape == expected


def test_scan_static_shapes():
    x = tg.tensor("x", shape=(2, 3))
    assert R.cumsum(x).type.shape == (6,)
    assert R.cumsum(x, axis=-1).type.shape == (2, 3)
    assert R.cumprod(tg.tensor("y", shape=(2, None))).type.shape == (None,)
    assert R.cumsum(tg.scalar("s")).type.shape == (1,)


def test_methods_call_the_family():
    x = tg.matrix("x")
    xv = np.array([[1.0, 2.0, 3.0], [4.0, 0.5, -1.0]])
    outs = ev(
        [x.sum(axis=1), x.prod(axis=0, keepdims=True), x.max(), x.min(1), x.mean(-1), x.var(0, True, 1),
         x.std(), x.argmax(1), x.argmin(), x.cumsum(0), x.cumprod(), (x > 0).all(1), (x > 3).any()],
        {x: xv},
    )
    refs = [xv.sum(1), xv.prod(0, keepdims=True), xv.max(), xv.min(1), xv.mean(-1), xv.var(0, keepdims=True, ddof=1),
            xv.std(), xv.argmax(1), xv.argmin(), xv.cumsum(0), xv.cumprod(), (xv > 0).all(1), (xv > 3).any()]
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref, rtol=1e-13)
        assert out.shape == np.shape(ref)


def test_zero_d_inputs():
    s = tg.scalar("s")
    outs = ev([R.sum(s), R.max(s, axis=0), R.argmax(s), R.prod(s, axis=-1), R.cumsum(s), R.cumprod(s, axis=0),
               R.logsumexp(s)], {s: np.array(2.5)})
    refs = [2.5, 2.5, 0, 2.5, [2.5], [2.5], 2.5]
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref)
        assert out.shape == np.shape(ref)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [R.sum, R.mean, R.prod, R.max, R.min, R.argmax, R.all, R.logsumexp, R.var])
def test_bad_axis_names_op_and_variable(fn):
    x = tg.matrix("weights")
    with pytest.raises(ValueError, match=r"weights.*out of bounds"):
        fn(x, axis=2)
    with pytest.raises(ValueError, match="repeated axis"):
        fn(x, axis=(0, -2))
    with pytest.raises(ValueError, match=fn.__name__):
        fn(x, axis=-3)


def test_bad_scan_axis():
    with pytest.raises(ValueError, match=r"cumsum\(v\).*out of bounds"):
        R.cumsum(tg.vector("v"), axis=1)
    with pytest.raises(ValueError, match=r"cumprod\(m\)"):
        R.cumprod(tg.matrix("m"), axis=-3)


def test_empty_max_and_argmax():
    with pytest.raises(ValueError, match=r"max\(e\).*zero-size"):
        R.max(tg.tensor("e", shape=(0, 3)), axis=0)
    with pytest.raises(ValueError, match=r"argmin\(e\).*empty"):
        R.argmin(tg.tensor("e", shape=(2, 0)), axis=1)
    e = tg.matrix("e")
    with pytest.raises(ValueError, match=r"min\(e\).*zero-size"):
        ev([R.min(e, axis=1)], {e: np.zeros((3, 0))})
    with pytest.raises(ValueError, match=r"argmax\(e\).*empty"):
        ev([R.argmax(e)], {e: np.zeros((0, 2))})
    # an empty non-reduced axis is fine, as in NumPy
    out = ev([R.max(e, axis=1), R.argmax(e, axis=1)], {e: np.zeros((0, 2))})
    assert out[0].shape == (0,) and out[1].shape == (0,)


@pytest.mark.usefixtures("no_background_compiles")
def test_empty_reductions_follow_numpy():
    e = tg.matrix("e")
    ev_ = ev([R.sum(e), R.prod(e, axis=0), R.all(e, axis=1), R.any(e), R.logsumexp(e, axis=0)],
             {e: np.zeros((0, 2))})
    np.testing.assert_array_equal(ev_[0], 0.0)
    np.testing.assert_array_equal(ev_[1], [1.0, 1.0])
    assert ev_[2].shape == (0,)
    assert not ev_[3]
    np.testing.assert_array_equal(ev_[4], [-np.inf, -np.inf])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.mean(np.zeros((0, 2)), axis=0)
    np.testing.assert_array_equal(ev([R.mean(e, axis=0)], {e: np.zeros((0, 2))})[0], ref)


# --------------------------------------------------------------------------- conventions
def test_max_min_ties_go_to_first_occurrence():
    x = tg.matrix("x")
    xv = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, -1.0]])
    g = tg.vector("g")
    for op, expected in ((R.max, [[0, 1, 0], [1, 0, 0]]), (R.min, [[1, 0, 0], [0, 0, 1]])):
        y = op(x, axis=1)
        (gx,) = ev([Lop(y, x, g)], {x: xv, g: np.ones(2)})
        np.testing.assert_array_equal(gx, expected)
        u = np.arange(6.0).reshape(2, 3) + 1
        (t,) = ev([Rop(y, x, tg.constant(u))], {x: xv})
        np.testing.assert_array_equal(t, (np.array(expected) * u).sum(1))
    # over several axes: C order over the reduced axes, as argmax
    y = R.max(x)
    (gx,) = ev([Lop(y, x, tg.constant(1.0))], {x: np.array([[1.0, 5.0], [5.0, 0.0]])})
    np.testing.assert_array_equal(gx, [[0, 1], [0, 0]])
    x3 = tg.tensor3("x3")
    xv3 = np.zeros((2, 2, 2))
    xv3[1, 0, 1] = xv3[0, 1, 1] = 7.0
    (gx,) = ev([Lop(R.max(x3, axis=(0, 2)), x3, tg.constant(np.ones(2)))], {x3: xv3})
    assert gx[1, 0, 1] == 1 and gx[0, 1, 1] == 1 and gx.sum() == 2
    (idx,) = ev([R.argmax(x3, axis=(0, 2))], {x3: xv3})
    np.testing.assert_array_equal(idx, [3, 1])  # flat index into axes (0, 2)


def test_max_nan_counts_as_the_maximum():
    x = tg.vector("x")
    (y, gx, i) = ev([R.max(x), Lop(R.max(x), x, tg.constant(1.0)), R.argmax(x)], {x: np.array([1.0, np.nan, 3.0])})
    assert np.isnan(y) and i == 1
    np.testing.assert_array_equal(gx, [0, 1, 0])


@pytest.mark.parametrize(
    "row, expected",
    [
        ([2.0, 3.0, 4.0], [12.0, 8.0, 6.0]),
        ([2.0, 0.0, 4.0], [0.0, 8.0, 0.0]),
        ([0.0, 3.0, 0.0], [0.0, 0.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([-0.0, 5.0, 2.0], [10.0, 0.0, 0.0]),
    ],
)
def test_prod_gradient_exact_with_zeros(row, expected):
    x = tg.vector("x")
    u = tg.vector("u")
    y = R.prod(x)
    gx, t = ev([Lop(y, x, tg.constant(1.0)), Rop(y, x, u)], {x: np.array(row), u: np.array([1.0, 10.0, 100.0])})
    np.testing.assert_array_equal(gx, expected)
    assert t == np.dot(expected, [1.0, 10.0, 100.0])
    assert np.all(np.isfinite(gx))


def _hvp_check(y, x, xv, tol, seed=0):
    """Rop(Lop(y, x, v), x, u) against central differences of the Lop, and H symmetric."""
    rng = np.random.default_rng(seed)
    (y0,) = ev([y], {x: xv})
    v_val = rng.normal(size=np.shape(y0))
    v = tg.constant(v_val)
    g = Lop(y, x, v)
    u, w = tg.tensor("u", shape=(None,) * x.ndim), tg.tensor("w", shape=(None,) * x.ndim)
    hu, hw = Rop(g, x, u), Rop(g, x, w)
    u_val, w_val = rng.normal(size=xv.shape), rng.normal(size=xv.shape)
    hu_v, hw_v = ev([hu, hw], {x: xv, u: u_val, w: w_val})
    eps = 1e-6
    fd = (ev([g], {x: xv + eps * u_val})[0] - ev([g], {x: xv - eps * u_val})[0]) / (2 * eps)
    np.testing.assert_allclose(hu_v, fd, rtol=tol, atol=tol)
    np.testing.assert_allclose(inner(w_val, hu_v), inner(u_val, hw_v), rtol=1e-12, atol=1e-12)


def test_prod_hessian_exact_with_up_to_two_zeros():
    x = tg.matrix("x")
    xv = np.array([[2.0, -1.5, 0.5, 3.0], [2.0, 0.0, 0.5, 3.0], [0.0, 1.5, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    _hvp_check(R.prod(x, axis=1), x, xv, 1e-7)
    _hvp_check(R.prod(x, axis=0, keepdims=True), x, xv.T.copy(), 1e-7)


def test_cumprod_gradient_exact_with_zeros():
    x = tg.vector("x")
    xv = np.array([2.0, 0.0, 3.0, 0.0, 5.0])
    # dy_k/dx_i = prod_{j<=k, j!=i} x_j; Jacobian by hand
    jac = np.zeros((5, 5))
    for k in range(5):
        for i in range(k + 1):
            jac[k, i] = np.prod([xv[j] for j in range(k + 1) if j != i])
    v_val = np.array([1.0, -2.0, 0.5, 3.0, 1.5])
    u_val = np.array([0.3, 1.0, -1.0, 2.0, 0.7])
    gx, t = ev([Lop(R.cumprod(x), x, tg.constant(v_val)), Rop(R.cumprod(x), x, tg.constant(u_val))], {x: xv})
    np.testing.assert_allclose(gx, jac.T @ v_val, rtol=1e-14)
    np.testing.assert_allclose(t, jac @ u_val, rtol=1e-14)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(t))


def test_cumprod_and_logsumexp_hessians_without_zeros():
    x = tg.matrix("x")
    xv = np.random.default_rng(3).uniform(0.5, 1.5, size=(3, 4))
    _hvp_check(R.cumprod(x, axis=1), x, xv, 1e-7)
    _hvp_check(R.cumprod(x), x, xv, 1e-7)
    _hvp_check(R.logsumexp(x, axis=0), x, xv, 1e-7)
    _hvp_check(R.var(x, axis=1, ddof=1), x, xv, 1e-7)
    _hvp_check(R.max(x, axis=1) * R.sum(sqr(x), axis=1), x, xv, 1e-7)


def _cumprod_sum_hessian(x):
    """The Hessian of ``sum(cumprod(x))`` by hand: ``H_ij = sum_{k >= max(i, j)} prod_{l <= k, l != i, j} x_l``."""
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                h[i, j] = sum(np.prod([x[m] for m in range(k + 1) if m not in (i, j)]) for k in range(max(i, j), n))
    return h


@pytest.mark.parametrize("device", ["python", "cpu"])
@pytest.mark.parametrize("xv", [[0.78, 1.0, 7.7e-85], [2.0, 0.0, 3.0, 0.0, 1.5], [1e-300, 1e-300, 2.0, 0.0],
                                [0.5, -1.25, 3.0, 1e-200]], ids=["tiny", "two-zeros", "tinier", "tiny-last"])
def test_cumprod_hessian_exact_with_zeros_and_tiny_values(device, xv):
    """cumprod's derivatives need no division, so the Hessian is exact next to zeros and tiny values too
    (dividing by x left H[2, 2] = -2.2e68 at x = [0.78, 1, 7.7e-85])."""
    x = tapegrad.dvector("x")
    y = R.sum(R.cumprod(x))
    xv = np.array(xv)
    g, h = tapegrad.function([x], [tapegrad.grad(y, x), tapegrad.hessian(y, x)], device=device)(xv)
    want_g = [sum(np.prod([xv[m] for m in range(k + 1) if m != i]) for k in range(i, len(xv))) for i in range(len(xv))]
    np.testing.assert_allclose(g, want_g, rtol=1e-14, atol=0)
    np.testing.assert_allclose(h, _cumprod_sum_hessian(xv), rtol=1e-14, atol=0)


def test_linrec_reverse_is_the_transpose_and_keeps_a_zero_state_zero():
    """LinRec(reverse) with the same coefficients is the transpose of the forward recurrence; a zero state times
    an infinite coefficient stays zero (the absolute-zero multiply), a nonzero one does not."""
    a, b = tapegrad.dvector("a"), tapegrad.dvector("b")
    av = np.array([9.0, 0.5, -2.0, 1.5])
    mats = {}
    for rev in (False, True):
        f = tapegrad.function([a, b], R.LinRec(0, rev)(a, b))
        mats[rev] = np.stack([f(av, e) for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(mats[True], mats[False].T, rtol=1e-15)
    np.testing.assert_array_equal(mats[False][:, 0], [1.0, 0.5, -1.0, -1.5])
    f = tapegrad.function([a, b], [R.LinRec(0)(a, b), R.LinRec(0, True)(a, b)])
    fw, bw = f(np.array([1.0, np.inf, 2.0]), np.array([0.0, 1.0, 1.0]))
    np.testing.assert_array_equal(fw, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(bw, [np.inf, 3.0, 1.0])


def test_logsumexp_is_stable_and_its_gradient_is_softmax():
    x = tg.matrix("x")
    xv = np.array([[1000.0, 1000.0, 999.0], [-1000.0, -1001.0, -1002.0]])
    y = R.logsumexp(x, axis=1)
    out, gx = ev([y, Lop(y, x, tg.constant(np.ones(2)))], {x: xv})
    sm = np.exp(xv - xv.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    np.testing.assert_allclose(out, xv.max(1) + np.log(np.exp(xv - xv.max(1, keepdims=True)).sum(1)), rtol=1e-15)
    np.testing.assert_allclose(gx, sm, rtol=1e-12)  # exp(x - y): |x| * eps absolute error in the exponent
    out = ev([R.logsumexp(x, axis=1)], {x: np.array([[-np.inf, -np.inf], [np.inf, 0.0]])})[0]
    np.testing.assert_array_equal(out, [-np.inf, np.inf])


def test_integer_valued_reductions_pass_zero_gradient():
    x = tg.matrix("x")
    xv = np.array([[1.0, 2.0], [3.0, -1.0]])
    for op in (R.argmax, R.argmin):
        y = op(x, axis=1)
        node = y.owner
        (gx,) = node.op.L_op([x], [y], [tg.constant(np.ones(2))])
        (t,) = node.op.R_op([x], [tg.constant(np.ones((2, 2)))])
        gx_v, t_v = ev([gx, t], {x: xv})
        assert gx.dtype == "float64" and gx_v.shape == (2, 2) and not gx_v.any()
        assert t.dtype == "float64" and t_v.shape == (2,) and not t_v.any()
    b = tg.tensor("b", dtype="bool", shape=(None, None))
    for op in (R.all, R.any):
        y = op(b, axis=0, keepdims=True)
        (gb,) = y.owner.op.L_op([b], [y], [tg.constant(np.ones((1, 2)))])
        (t,) = y.owner.op.R_op([b], [tg.constant(np.ones((2, 2)))])
        gb_v, t_v = ev([gb, t], {b: np.array([[True, False], [True, True]])})
        assert gb.dtype == "float64" and gb_v.shape == (2, 2) and not gb_v.any()
        assert t_v.shape == (1, 2) and t_v.dtype == np.float64 and not t_v.any()
    # the integer sum / prod of an int input is integer valued too
    i = tg.imatrix("i")
    iv = np.ones((2, 2), dtype="int64")
    for y in (R.sum(i, axis=0), R.prod(i), R.max(i, 1), R.cumsum(i, axis=1)):
        assert y.dtype in ("int64",)
        (gi,) = y.owner.op.L_op([y.owner.inputs[0]], [y], [tg.constant(np.ones(ev([y], {i: iv})[0].shape))])
        gi_v = ev([gi], {i: iv})[0]
        assert gi.dtype == "float64" and gi_v.shape == (2, 2) and not gi_v.any()


def test_mean_of_int_input_is_differentiable():
    i = tg.imatrix("i")
    y = R.mean(i, axis=1)
    (gi,) = y.owner.op.L_op([i], [y], [tg.constant(np.array([1.0, 2.0]))])
    np.testing.assert_allclose(ev([gi], {i: np.ones((2, 4), dtype="int64")})[0], [[0.25] * 4, [0.5] * 4])


def test_float32_gradients_stay_float32():
    x = tg.fmatrix("x")
    v = tg.fvector("v")
    for y in (R.sum(x, 1), R.mean(x, 1), R.prod(x, 1), R.max(x, 1), R.logsumexp(x, 1), R.std(x, 1),
              R.sum(x, 1, dtype="float64")):
        gv = v if y.dtype == "float32" else tg.dvector("dv")
        assert Lop(y, x, gv).dtype == "float32"
        assert Rop(y, x, tg.fmatrix("u")).dtype == y.dtype


def test_zero_cotangent_gives_no_nan():
    x = tg.vector("x")
    xv = np.array([0.0, np.inf, 2.0])
    for y in (R.prod(x), R.cumprod(x), R.logsumexp(x)):
        zero = tg.constant(np.zeros(ev([y], {x: xv})[0].shape))
        (gx,) = ev([Lop(y, x, zero)], {x: xv})
        assert not np.isnan(gx).any(), y


def test_var_std_values_and_ddof():
    x = tg.matrix("x")
    xv = np.random.default_rng(0).normal(size=(3, 5))
    for ddof in (0, 1, 2):
        for axis in (None, 0, (0, 1), -1):
            out = ev([R.var(x, axis, ddof=ddof), R.std(x, axis, keepdims=True, ddof=ddof)], {x: xv})
            np.testing.assert_allclose(out[0], np.var(xv, axis=axis, ddof=ddof), rtol=1e-13)
            np.testing.assert_allclose(out[1], np.std(xv, axis=axis, keepdims=True, ddof=ddof), rtol=1e-13)


def test_sum_and_mean_are_each_others_transposes():
    x = tg.tensor3("x")
    for op in (R.Sum((0, 2), False), R.Mean((1,), True), R.Mean(None, False, None, 1)):
        y = op(x)
        lop = y.owner.op.L_op([x], [y], [tg.tensor("g", shape=(None,) * y.ndim)])[0]
        assert isinstance(lop.owner.op, R.BroadcastReduced)
        assert lop.owner.op.mean == isinstance(op, R.Mean)


def test_ops_are_hashable_and_encode():
    assert R.Sum((0,), False, None) == R.Sum((0,), False, None)
    assert hash(R.Max((1, 2), True)) == hash(R.Max((1, 2), True))
    assert R.Max(1) != R.Min(1)
    for op in (R.Sum((0, 1), True, "float64"), R.Mean(None, False, None, 1), R.CumSum(0, True), R.ExtremumMask(None)):
        ints, floats = op.encode()
        assert all(isinstance(i, int) for i in ints) and floats == ()


def test_exp_of_sum_composes():
    x = tg.vector("x")
    y = exp(R.sum(x))
    (gx,) = ev([Lop(y, x, tg.constant(1.0))], {x: np.array([0.1, 0.2])})
    np.testing.assert_allclose(gx, np.exp(0.3) * np.ones(2))


def test_with_zeros_domain_has_zero_groups():
    x = with_zeros(np.random.default_rng(0), (4, 4), "float64")
    assert (x[0] == 0).sum() >= 2 and (x[-1] != 0).all()
