"""Gradient-API behaviours that must match ``aesara.gradient`` (code ports by changing the import).

Each test pins one difference an audit found between tapegrad and Aesara (its ``tests/test_gradient.py``
and tutorial): the value or the exception Aesara gives.
"""

import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import DisconnectedInputError, NullTypeGradError


def run(outputs, inputs, *values, **kw):
    return tg.function(inputs, outputs, device="python", **kw)(*values)


# --------------------------------------------------------------------------- 1. add_names renames in place
class _ReturnsG0(tg.Op):
    """A 1-in 1-out op whose gradient is a variable it owns (Aesara's TestGrad pattern)."""

    def __init__(self):
        self.g0 = tg.scalar()

    def make_node(self, x):
        return tg.Apply(self, [x], [tg.scalar("c")])

    def grad(self, inputs, output_grads):
        return [self.g0]


def test_add_names_renames_the_term_itself():
    op = _ReturnsG0()
    node = op.make_node(tg.scalar("x"))
    g = tg.grad(node.outputs[0], node.inputs[0])
    assert g is op.g0
    assert g.name == "(dc/dx)"


def test_add_names_on_an_ordinary_graph():
    A, x = tg.matrix("A"), tg.vector("x")
    f = tg.dot(x, tg.dot(A, x))
    f.name = "f"
    assert tg.grad(f, x).name == "(df/dx)"
    assert tg.grad(f, x, add_names=False).name != "(df/dx)"


# --------------------------------------------------------------------------- 2. known_grads of another rank
def test_known_grad_of_another_rank_is_passed_to_the_op():
    gval = tg.vector()

    class T(tg.Op):
        def make_node(self):
            return tg.Apply(self, [tg.vector()], [tg.vector()])

        def grad(self, inputs, output_grads):
            return [gval]

    n = T().make_node()
    g = tg.grad(None, n.inputs, known_grads={n.outputs[0]: tg.as_tensor(1.0)}, consider_constant=n.inputs)
    assert isinstance(g, list) and g[0] is gval


def test_known_grad_scalar_for_a_matrix_output_1in_1out():
    gval = tg.matrix()

    class T(tg.Op):
        def make_node(self):
            return tg.Apply(self, [tg.matrix()], [tg.matrix()])

        def grad(self, inputs, output_grads):
            return (gval,)

    a1 = T().make_node()
    (g,) = tg.grad(None, [a1.inputs[0]], known_grads={a1.outputs[0]: tg.as_tensor(1.0)},
                   consider_constant=[a1.inputs[0]])
    assert g is gval


def test_known_grad_must_still_be_continuous():
    x = tg.vector("x")
    y = x * 2
    with pytest.raises(TypeError, match="continuous"):
        tg.grad(None, x, known_grads={y: tg.ivector("gi")})


# --------------------------------------------------------------------------- 3. op without grad
class _NoGrad(tg.Op):
    def make_node(self, x):
        x = tg.as_tensor(x)
        return tg.Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.array(inputs[0], copy=True)


@pytest.mark.parametrize("catch", [NotImplementedError, NullTypeGradError])
def test_op_without_grad_raises_not_implemented(catch):
    x = tg.vector("x")
    with pytest.raises(catch, match="_NoGrad") as e:
        tg.grad(tg.exp(_NoGrad()(tg.exp(x))).sum(), x)
    assert isinstance(e.value, NotImplementedError) and isinstance(e.value, NullTypeGradError)
    assert "not implemented" in str(e.value)


def test_op_without_grad_still_returns_a_null_gradient_when_asked():
    x = tg.vector("x")
    g = tg.grad(_NoGrad()(x).sum(), x, null_gradients="return")
    assert isinstance(g.type, tg.NullType)


def test_undefined_grad_is_not_a_not_implemented_error():
    x = tg.vector("x")
    with pytest.raises(NullTypeGradError) as e:
        tg.grad(tg.undefined_grad(x).sum(), x)
    assert not isinstance(e.value, NotImplementedError)


# --------------------------------------------------------------------------- 4. user R_op gets zeros
class _Mul(tg.Op):
    seen = []

    def make_node(self, a, b):
        a, b = tg.as_tensor(a), tg.as_tensor(b)
        return tg.Apply(self, [a, b], [a.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0] * inputs[1]

    def R_op(self, inputs, eval_points):
        _Mul.seen.append(list(eval_points))
        return [eval_points[0] * inputs[1] + inputs[0] * eval_points[1]]


def test_user_R_op_gets_zeros_for_inputs_outside_wrt():
    x, b, v = tg.vector("x"), tg.vector("b"), tg.vector("v")
    _Mul.seen.clear()
    r = tg.Rop(_Mul()(x, b), x, v)
    assert all(isinstance(e, tg.Variable) for e in _Mul.seen[-1])
    out = run(r, [x, b, v], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0], on_unused_input="ignore")
    np.testing.assert_allclose(out, [15.0, 24.0])  # b * v


def test_user_R_op_gets_zeros_for_a_computed_input_without_tangent():
    x, b, v = tg.vector("x"), tg.vector("b"), tg.vector("v")
    r = tg.Rop(_Mul()(x, tg.exp(b)), x, v)
    out = run(r, [x, b, v], [1.0, 2.0], [0.0, 1.0], [5.0, 6.0], on_unused_input="ignore")
    np.testing.assert_allclose(out, [5.0, 6.0 * np.e])


# --------------------------------------------------------------------------- 5. Rop through undefined_grad
def test_rop_through_undefined_grad_is_disconnected():
    x, v = tg.vector("x"), tg.vector("v")
    with pytest.raises(DisconnectedInputError):
        tg.Rop(tg.undefined_grad(x), x, v)
    z = tg.Rop(tg.undefined_grad(x), x, v, disconnected_outputs="ignore")
    np.testing.assert_array_equal(run(z, [x], [1.0, 2.0]), [0.0, 0.0])


def test_rop_through_undefined_grad_plus_x_is_v():
    x, v = tg.vector("x"), tg.vector("v")
    r = tg.Rop(tg.undefined_grad(x) + x, x, v)
    np.testing.assert_allclose(run(r, [x, v], [1.0, 2.0], [3.0, 4.0]), [3.0, 4.0])


# --------------------------------------------------------------------------- 6. exception types
def test_grad_without_cost_or_known_grads_is_a_value_error():
    with pytest.raises(ValueError, match="cost and known_grads can't both be None"):
        tg.grad(None, tg.vector("x"))


def test_subgraph_grad_without_cost_or_start_is_a_value_error():
    w, x = tg.vector("w"), tg.vector("x")
    with pytest.raises(ValueError, match="cost.*start"):
        tg.subgraph_grad(wrt=[w], end=[x])


def test_hessian_of_a_vector_cost_is_a_value_error():
    x = tg.vector("x")
    with pytest.raises(ValueError, match="0 dimensional"):
        tg.hessian(x * 2, x)


# --------------------------------------------------------------------------- 7. consider_constant is deprecated
@pytest.mark.usefixtures("no_background_compiles")
def test_consider_constant_warns_deprecation():
    x = tg.scalar("x")
    with pytest.warns(DeprecationWarning, match="zero_grad"):
        y = tg.consider_constant(x * x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g = tg.grad(y * x, x)
    assert float(run(g, [x], 3.0)) == 9.0  # y is a constant: d(y x)/dx = y


# --------------------------------------------------------------------------- 8. Op API
def test_call_with_return_list():
    x = tg.vector("x")
    out = tg.exp(x).owner.op(x, return_list=True)
    assert isinstance(out, list) and len(out) == 1 and out[0].ndim == 1
    op = _NoGrad()
    assert isinstance(op(x, return_list=True), list)
    assert not isinstance(op(x), list)


class _DoubleOp(tg.Op):
    itypes = [tg.TensorType("float64", (None, None))]
    otypes = [tg.TensorType("float64", (None, None))]

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0] * 2


class _DoubleOpCtors(tg.Op):
    itypes = [tg.dmatrix]  # as Aesara code writes `itypes = [aesara.tensor.dmatrix]`
    otypes = [tg.dmatrix]

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0] * 2


@pytest.mark.parametrize("cls", [_DoubleOp, _DoubleOpCtors])
def test_itypes_otypes_give_a_make_node(cls):
    x = tg.dmatrix("x")
    y = cls()(x)
    assert y.owner.op.__class__ is cls and y.type == tg.TensorType("float64", (None, None))
    np.testing.assert_allclose(run(y, [x], [[1.0, 2.0], [3.0, 4.0]]), [[2.0, 4.0], [6.0, 8.0]])
    c = cls()([[1.0, 2.0]])  # a value converts to a constant of the declared type
    np.testing.assert_allclose(run(c, []), [[2.0, 4.0]])


def test_itypes_are_checked():
    with pytest.raises(TypeError, match="_DoubleOp"):
        _DoubleOp()(tg.dvector("v"))
    with pytest.raises(TypeError):
        _DoubleOp()(tg.fmatrix("f"))
    with pytest.raises(ValueError, match="expected 1 input"):
        _DoubleOp()(tg.dmatrix("a"), tg.dmatrix("b"))


def test_op_without_make_node_or_itypes_raises_not_implemented():
    class Bare(tg.Op):
        pass

    with pytest.raises(NotImplementedError, match="Bare.make_node"):
        Bare()(tg.vector("x"))


# --------------------------------------------------------------------------- 9. the R-op tutorial example
@pytest.mark.parametrize("route", [None, "symbolic"])
def test_rop_tutorial_example(route):
    W = tg.dmatrix("W")
    V = tg.dmatrix("V")
    x = tg.dvector("x")
    y = tg.dot(x, W)
    JV = tg.Rop(y, W, V)
    kw = {} if route is None else {"route": route}
    f = tg.function([W, V, x], JV, **kw)
    np.testing.assert_allclose(f([[1, 1], [1, 1]], [[2, 2], [2, 2]], [0, 1]), [2.0, 2.0])
    # the point W is attached without touching values: inf/nan in W do not reach the tangent
    np.testing.assert_allclose(f([[np.inf, 1], [1, np.nan]], [[2, 2], [2, 2]], [0, 1]), [2.0, 2.0])


def test_rop_of_a_wrt_variable_is_its_point():
    W, V = tg.dmatrix("W"), tg.dmatrix("V")
    x = tg.dvector("x")
    r = tg.Rop([tg.dot(x, W), W], W, V)
    assert r[1] is V


def test_hessian_vector_product_of_a_quadratic_keeps_its_point():
    A, w, p = tg.dmatrix("A"), tg.dvector("w"), tg.dvector("p")
    cost = 0.5 * tg.dot(w, tg.dot(A, w))
    hv = tg.hessian_vector_product(cost, w, p)
    f = tg.function([A, w, p], hv)  # w is not reported unused
    np.testing.assert_allclose(f(np.diag([3.0, 5.0]), [1.0, 2.0], [1.0, 1.0]), [3.0, 5.0])
