"""SPEC section 4: the gradient API, with Aesara's semantics (one test per behaviour)."""

import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import DisconnectedInputError, NullTypeGradError

RNG = np.random.default_rng(0)


def run(outputs, inputs, *values):
    return tg.function(inputs, outputs, device="python", on_unused_input="ignore")(*values)


# --------------------------------------------------------------------------- cost checks
def test_cost_must_be_scalar():
    x = tg.vector("x")
    with pytest.raises(TypeError, match="cost must be a scalar"):
        tg.grad(x * 2, x)


def test_cost_and_known_grads_cannot_both_be_none():
    x = tg.vector("x")
    with pytest.raises(AssertionError):
        tg.grad(None, x)


@pytest.mark.parametrize("container", [list, tuple])
def test_result_mirrors_wrt(container):
    x, y = tg.scalar("x"), tg.scalar("y")
    g = tg.grad(x * y, container([x, y]))
    assert type(g) is container and len(g) == 2
    single = tg.grad(x * y, x)
    assert isinstance(single, tg.Variable)
    assert run(list(g), [x, y], 2.0, 3.0) == [3.0, 2.0]


# --------------------------------------------------------------------------- disconnected
def test_disconnected_raise():
    x, y = tg.vector("x"), tg.vector("y")
    with pytest.raises(DisconnectedInputError, match="y"):
        tg.grad(x.sum(), [x, y])
    assert issubclass(DisconnectedInputError, ValueError)


@pytest.mark.usefixtures("no_background_compiles")
def test_disconnected_warn_gives_zero_and_warns():
    x, y = tg.vector("x"), tg.vector("y")
    with pytest.warns(UserWarning, match="not part of the computational graph"):
        gx, gy = tg.grad(x.sum(), [x, y], disconnected_inputs="warn")
    out = run(gy, [x, y], np.ones(2), np.ones(3))
    np.testing.assert_array_equal(out, np.zeros(3))


def test_disconnected_ignore_is_silent():
    x, y = tg.vector("x"), tg.vector("y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gy = tg.grad(x.sum(), y, disconnected_inputs="ignore")
    np.testing.assert_array_equal(run(gy, [x, y], np.ones(2), np.ones(4)), np.zeros(4))


def test_return_disconnected_modes():
    x, y = tg.vector("x"), tg.vector("y")
    cost = x.sum()
    assert tg.grad(cost, y, disconnected_inputs="ignore", return_disconnected="none") is None
    d = tg.grad(cost, y, disconnected_inputs="ignore", return_disconnected="disconnected")
    assert isinstance(d.type, tg.DisconnectedType)
    z = tg.grad(cost, y, disconnected_inputs="ignore", return_disconnected="zero")
    assert z.dtype == "float64" and z.ndim == 1


def test_disconnected_through_connection_pattern():
    # shape(x) does not depend on x's values: the gradient is disconnected, not zero
    x = tg.vector("x")
    cost = tg.cast(x.shape[0], "float64") * 2.0
    with pytest.raises(DisconnectedInputError):
        tg.grad(cost, x)


def test_disconnected_grad_is_disconnected():
    x = tg.scalar("x")
    with pytest.raises(DisconnectedInputError):
        tg.grad(tg.disconnected_grad(x) * 3.0, x)


# --------------------------------------------------------------------------- null gradients
def test_undefined_grad_raises_null_type_error_with_reason():
    x = tg.scalar("x")
    cost = tg.undefined_grad(x) * 2.0
    with pytest.raises(NullTypeGradError, match="undefined"):
        tg.grad(cost, x)
    assert issubclass(NullTypeGradError, TypeError)


def test_null_gradients_return_and_compiling_it_raises():
    x = tg.scalar("x")
    g = tg.grad(tg.undefined_grad(x) * 2.0, x, null_gradients="return")
    assert isinstance(g.type, tg.NullType)
    with pytest.raises(TypeError, match="undefined"):
        tg.function([x], g, device="python")


class _NoGradOp(tg.Op):
    def make_node(self, x):
        x = tg.as_tensor(x)
        return tg.Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.array(inputs[0] * 2)

    def grad(self, inputs, output_grads):
        return [tg.grad_not_implemented(self, 0, inputs[0], "custom op")]


def test_grad_not_implemented():
    x = tg.scalar("x")
    with pytest.raises(NullTypeGradError, match="not implemented"):
        tg.grad(_NoGradOp()(x), x)


def test_grad_undefined_helper():
    x = tg.scalar("x")
    v = tg.grad_undefined(_NoGradOp(), 0, x, "why not")
    assert isinstance(v.type, tg.NullType) and "mathematically undefined" in v.type.why_null


# --------------------------------------------------------------------------- integers
def test_integer_input_differentiated_as_continuous():
    X = tg.imatrix("X")
    Xf = tg.matrix("Xf")
    W = tg.matrix("W")
    gi = tg.grad(tg.sigmoid(tg.dot(X, W)).sum(), X)
    gf = tg.grad(tg.sigmoid(tg.dot(Xf, W)).sum(), Xf)
    assert gi.dtype == tg.config.floatX
    Xv = RNG.integers(-3, 3, size=(3, 4))
    Wv = RNG.normal(size=(4, 2))
    np.testing.assert_allclose(run(gi, [X, W], Xv, Wv), run(gf, [Xf, W], Xv.astype(float), Wv), rtol=1e-12)


@pytest.mark.parametrize("build", [tg.floor, tg.ceil, tg.round, tg.sign, lambda x: x > 0.5,
                                   lambda x: tg.cast(x, "int64"), lambda x: x // 2.0])
def test_integer_valued_ops_pass_zero(build):
    x = tg.vector("x")
    g = tg.grad(tg.cast(build(x), "float64").sum() + 0.0 * x.sum(), x)
    np.testing.assert_array_equal(run(g, [x], np.array([0.3, 1.7, -2.2])), np.zeros(3))


def test_argmax_passes_zero():
    x = tg.vector("x")
    g = tg.grad(tg.cast(tg.argmax(x), "float64") + x.sum() * 0.0, x)
    np.testing.assert_array_equal(run(g, [x], np.array([0.3, 1.7, -2.2])), np.zeros(3))


# --------------------------------------------------------------------------- names, dtypes
def test_add_names():
    x = tg.vector("x")
    cost = (x * 2.0).sum()
    cost.name = "cost"
    assert tg.grad(cost, x).name == "(dcost/dx)"
    assert tg.grad(cost, x, add_names=False).name != "(dcost/dx)"
    unnamed = (x * 3.0).sum()
    assert tg.grad(unnamed, x).name is None


def test_float32_preserved():
    x = tg.fvector("x")
    g = tg.grad((tg.exp(x) * 2.0).sum(), x)
    assert g.dtype == "float32"
    out = run(g, [x], np.ones(3, np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * np.e, rtol=1e-6)


# --------------------------------------------------------------------------- known_grads, consider_constant
def test_known_grads_without_cost():
    x = tg.vector("x")
    y = tg.exp(x)
    gy = tg.vector("gy")
    gx = tg.grad(None, x, known_grads={y: gy})
    xv, gv = np.array([0.0, 1.0]), np.array([2.0, 3.0])
    np.testing.assert_allclose(run(gx, [x, gy], xv, gv), gv * np.exp(xv))


def test_known_grads_with_cost_overrides_intermediate():
    x = tg.vector("x")
    y = x * 2.0
    cost = (y * y).sum()
    gx = tg.grad(cost, x, known_grads={y: tg.ones_like(y)})
    # as in Aesara, a known gradient replaces what the cost would give y: d/dx = 2 * 1
    xv = np.array([1.0, 2.0])
    np.testing.assert_allclose(run(gx, [x], xv), [2.0, 2.0])


def test_consider_constant():
    x = tg.vector("x")
    y = x * x
    cost = (y * x).sum()
    g = tg.grad(cost, x, consider_constant=[y])
    xv = np.array([1.0, 3.0])
    np.testing.assert_allclose(run(g, [x], xv), xv**2)


def test_consider_constant_must_be_variables():
    x = tg.vector("x")
    with pytest.raises(TypeError, match="consider_constant"):
        tg.grad(x.sum(), x, consider_constant=[1.0])


# --------------------------------------------------------------------------- modifiers
def test_zero_grad_and_consider_constant_op():
    x = tg.scalar("x")
    for mod in (tg.zero_grad, tg.consider_constant):
        g = tg.grad(mod(x * x) * x, x)
        assert run(g, [x], 3.0) == 9.0  # only the outer x is differentiated


def test_grad_clip_aesara_example():
    x = tg.scalar("x")
    z = tg.grad(tg.grad_clip(x, 1, 1) ** 2, x)
    z2 = tg.grad(x**2, x)
    assert run([z, z2], [x], 2.0) == [1.0, 4.0]


def test_grad_scale():
    x = tg.fscalar("x")
    fx = tg.sin(x)
    g1 = tg.grad(fx, x)
    g2 = tg.grad(tg.grad_scale(fx, -1.0), x)
    a, b = run([g1, g2], [x], 2.0)
    np.testing.assert_allclose(a, np.cos(2.0), rtol=1e-6)
    np.testing.assert_allclose(b, -np.cos(2.0), rtol=1e-6)


# --------------------------------------------------------------------------- Lop / Rop
def test_lop_rop_adjoint_identity():
    x = tg.vector("x")
    y = tg.tanh(x) * tg.exp(x) + x**3
    u, v = tg.vector("u"), tg.vector("v")
    jv = tg.Rop(y, x, u)
    vj = tg.Lop(y, x, v)
    xv, uv, vv = RNG.normal(size=(3, 5))
    a, b = run([jv, vj], [x, u, v], xv, uv, vv)
    np.testing.assert_allclose(np.dot(vv, a), np.dot(b, uv), rtol=1e-12)


def test_rop_mirrors_f():
    x = tg.vector("x")
    u = tg.vector("u")
    assert isinstance(tg.Rop(x * 2.0, x, u), tg.Variable)
    assert isinstance(tg.Rop([x * 2.0], x, u), list)
    assert isinstance(tg.Rop((x * 2.0, x + 1.0), x, u), tuple)


def test_rop_is_a_forward_pass():
    # Rop never builds an L_op: an op with R_op but no grad still works
    class RopOnly(tg.Op):
        def make_node(self, x):
            x = tg.as_tensor(x)
            return tg.Apply(self, [x], [x.type()])

        def perform(self, node, inputs, outputs):
            outputs[0][0] = inputs[0] * 3.0

        def R_op(self, inputs, eval_points):
            return [eval_points[0] * 3.0]

    x, u = tg.vector("x"), tg.vector("u")
    out = run(tg.Rop(RopOnly()(x), x, u), [x, u], np.ones(2), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(out, [3.0, 6.0])


def test_rop_disconnected_outputs():
    x, y, u = tg.vector("x"), tg.vector("y"), tg.vector("u")
    with pytest.raises(DisconnectedInputError):
        tg.Rop(y * 2.0, x, u)
    assert tg.Rop(y * 2.0, x, u, disconnected_outputs="ignore", return_disconnected="none") is None


def test_lop_rop_mismatched_eval_points():
    x = tg.vector("x")
    with pytest.raises(ValueError, match="eval_point"):
        tg.Lop([x * 2.0, x * 3.0], x, [tg.vector()])
    with pytest.raises(ValueError, match="same length"):
        tg.Rop(x * 2.0, [x], [tg.vector(), tg.vector()])
    with pytest.raises(ValueError, match="dimensionalities"):
        tg.Rop(x * 2.0, x, tg.matrix())


# --------------------------------------------------------------------------- second order
def _rosen(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def _rosen_hess(x):
    n = len(x)
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i, i + 1] += -400 * x[i]
        H[i + 1, i] += -400 * x[i]
        H[i + 1, i + 1] += 200
    return H


def test_hessian_and_hvp():
    x = tg.vector("x")
    p = tg.vector("p")
    cost = _rosen(x)
    H = tg.hessian(cost, x)
    hv = tg.hessian_vector_product(cost, x, p)
    xv, pv = RNG.normal(size=(2, 5))
    Hv, hvv = run([H, hv], [x, p], xv, pv)
    np.testing.assert_allclose(Hv, _rosen_hess(xv), rtol=1e-10)
    np.testing.assert_allclose(hvv, _rosen_hess(xv) @ pv, rtol=1e-10)


def test_jacobian_shape_and_values():
    x = tg.vector("x")
    A = tg.matrix("A")
    y = tg.tanh(tg.dot(A, x))
    J = tg.jacobian(y, x)
    JA = tg.jacobian(y, A)
    Av, xv = RNG.normal(size=(3, 4)), RNG.normal(size=4)
    Jv, JAv = run([J, JA], [x, A], xv, Av)
    d = 1 - np.tanh(Av @ xv) ** 2
    np.testing.assert_allclose(Jv, d[:, None] * Av, rtol=1e-12)
    expected = np.zeros((3, 3, 4))
    for i in range(3):
        expected[i, i, :] = d[i] * xv
    np.testing.assert_allclose(JAv, expected, rtol=1e-12, atol=1e-15)


def test_jacobian_of_scalar_is_grad():
    x = tg.vector("x")
    J = tg.jacobian((x**2).sum(), x)
    np.testing.assert_allclose(run(J, [x], np.array([1.0, 2.0])), [2.0, 4.0])


# --------------------------------------------------------------------------- subgraph_grad
def test_subgraph_grad_matches_full_grad():
    rng = np.random.default_rng(1)
    x, t = tg.vector("x"), tg.vector("t")
    w1 = tg.shared(rng.standard_normal((3, 4)), name="w1")
    w2 = tg.shared(rng.standard_normal((4, 2)), name="w2")
    a1 = tg.tanh(tg.dot(x, w1))
    a2 = tg.tanh(tg.dot(a1, w2))
    cost2 = tg.sqr(a2 - t).sum() + tg.sqr(w2.sum())
    cost1 = tg.sqr(w1.sum())
    params, costs, ends = [[w2], [w1]], [cost2, cost1], [[a1], [x]]
    next_grad, param_grads = None, []
    for i in range(2):
        pg, next_grad = tg.subgraph_grad(wrt=params[i], end=ends[i], start=next_grad, cost=costs[i])
        next_grad = dict(zip(ends[i], next_grad))
        param_grads.extend(pg)
    full = tg.grad(cost1 + cost2, [w2, w1])
    xv, tv = rng.standard_normal(3), rng.standard_normal(2)
    got = run(param_grads + full, [x, t], xv, tv)
    np.testing.assert_allclose(got[0], got[2], rtol=1e-12)
    np.testing.assert_allclose(got[1], got[3], rtol=1e-12)


# --------------------------------------------------------------------------- switch and kinks
def test_switch_does_not_leak_nan():
    x = tg.vector("x")
    cost = tg.switch(x > 0, tg.sqrt(x), 0.0).sum()
    g = tg.grad(cost, x)
    out = run(g, [x], np.array([-1.0, 4.0]))
    np.testing.assert_allclose(out, [0.0, 0.25])


def test_kink_conventions():
    x, y = tg.scalar("x"), tg.scalar("y")
    assert run(tg.grad(abs(x), x), [x], 0.0) == 0.0
    gx, gy = tg.grad(tg.maximum(x, y), [x, y])
    assert run([gx, gy], [x, y], 1.0, 1.0) == [1.0, 0.0]
    assert run(tg.grad(tg.sqrt(x), x), [x], 0.0) == np.inf


# --------------------------------------------------------------------------- custom ops (SPEC section 5)
class Square(tg.Op):
    __props__ = ()

    def make_node(self, x):
        x = tg.as_tensor(x)
        return tg.Apply(self, [x], [tg.tensor(dtype=x.dtype, shape=x.type.shape)])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.asarray(inputs[0] ** 2)

    def grad(self, inputs, output_grads):
        return [2.0 * inputs[0] * output_grads[0]]

    def R_op(self, inputs, eval_points):
        return [2.0 * inputs[0] * eval_points[0]]


def test_custom_op_grad_and_rop():
    x, u = tg.vector("x"), tg.vector("u")
    y = Square()(x)
    g = tg.grad(y.sum(), x)
    r = tg.Rop(y, x, u)
    xv = np.array([1.0, -2.0])
    a, b, c = run([y, g, r], [x, u], xv, np.array([1.0, 1.0]))
    np.testing.assert_allclose(a, xv**2)
    np.testing.assert_allclose(b, 2 * xv)
    np.testing.assert_allclose(c, 2 * xv)
