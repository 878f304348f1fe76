"""Tests of the public checkers in ``tapegrad.testing`` and of the spec-row runner."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad.ops as T
from tapegrad.graph import Apply, Variable, as_tensor, tensor, vector
from tapegrad.op import Op
from tapegrad.testing import (
    GradientError,
    check_adjoint,
    check_grads,
    compare_backends,
    numeric_grad,
    verify_grad,
)

DEV = "python"


# --------------------------------------------------------------------------- a deliberately broken op
class _Scaled(Op):
    """``y = 2 x`` with configurable (possibly wrong) derivative rules."""

    __props__ = ("grad_factor", "rop_factor")

    def __init__(self, grad_factor=2.0, rop_factor=2.0):
        self.grad_factor = grad_factor
        self.rop_factor = rop_factor

    def make_node(self, x):
        x = as_tensor(x)
        return Apply(self, [x], [Variable(x.type)])

    def perform(self, node, inputs, out):
        out[0][0] = np.asarray(2.0 * inputs[0], dtype=node.outputs[0].dtype)

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        return [output_grads[0] * self.grad_factor]

    def R_op(self, inputs, eval_points):
        return [None if eval_points[0] is None else eval_points[0] * self.rop_factor]


# --------------------------------------------------------------------------- GradientError
def test_gradient_error_is_the_gradient_module_class():
    import tapegrad
    import tapegrad.gradient

    assert tapegrad.gradient.GradientError is GradientError
    assert tapegrad.GradientError is GradientError
    assert tapegrad.verify_grad is verify_grad


def test_gradient_error_attributes_and_message():
    e = GradientError(1, 3, (2, 2), 1.5, 1.0, 0.5, 0.2, 1e-4, 1e-4)
    assert (e.arg, e.err_pos, e.shape, e.val1, e.val2) == (1, 3, (2, 2), 1.5, 1.0)
    assert (e.abs_err, e.rel_err, e.abs_tol, e.rel_tol) == (0.5, 0.2, 1e-4, 1e-4)
    text = str(e)
    assert "At position 3 of argument 1 with shape (2, 2)" in text
    assert "val1 = 1.500000" in text and "val2 = 1.000000" in text


# --------------------------------------------------------------------------- numeric_grad
def test_numeric_grad_one_sided_default_eps():
    ng = numeric_grad(lambda x: float(np.sum(x**2)), np.array([1.0, -2.0]))
    assert isinstance(ng.gf, np.ndarray)  # a single point gives a single array
    np.testing.assert_allclose(ng.gf, [2.0 + 1e-7, -4.0 + 1e-7], atol=1e-6)
    assert ng.eps == 1e-7


def test_numeric_grad_list_and_dtype_eps():
    f = lambda a, b: float(np.sum(a * b))  # noqa: E731
    a, b = np.array([1.0, 2.0], dtype="float32"), np.array([3.0], dtype="float32")
    ng = numeric_grad(f, [a, b])
    assert ng.eps == 3e-4
    assert isinstance(ng.gf, list) and [g.dtype for g in ng.gf] == [np.float32, np.float32]
    np.testing.assert_allclose(ng.gf[0], [3.0, 3.0], rtol=1e-2)
    # mixed dtypes: the most precise dtype is the working dtype, the largest step is used
    ng = numeric_grad(f, [a, np.array([3.0])])
    assert ng.gf[0].dtype == np.float64 and ng.eps == 3e-4


def test_abs_rel_err_formula():
    a, r = numeric_grad.abs_rel_err(np.array([1.0, 0.0]), np.array([3.0, 0.0]))
    np.testing.assert_allclose(a, [2.0, 0.0])
    np.testing.assert_allclose(r, [0.5, 0.0])


def test_abs_rel_errors_and_max_err():
    ng = numeric_grad(lambda x, y: float(np.sum(x) + 3 * np.sum(y)), [np.zeros(3), np.zeros(2)])
    with pytest.raises(ValueError):
        ng.abs_rel_errors([np.ones(3)])
    with pytest.raises(ValueError):
        ng.abs_rel_errors([np.ones(2), np.ones(2)])
    arg, pos, abs_err, rel_err = ng.max_err([np.ones(3), np.array([3.0, 2.0])], 1e-4, 1e-4)
    assert (arg, pos) == (1, 1)
    assert abs_err == pytest.approx(1.0, rel=1e-6)
    assert rel_err == pytest.approx(1.0 / 5.0, rel=1e-6)


def test_max_err_rejects_non_finite():
    ng = numeric_grad(lambda x: float(np.sum(x)), [np.zeros(2)])
    with pytest.raises(ValueError, match="not finite"):
        ng.max_err([np.array([np.nan, 1.0])], 1e-4, 1e-4)


def test_numeric_grad_rejects_integer_points():
    with pytest.raises(TypeError):
        numeric_grad(lambda x: 0.0, [np.arange(3)])


# --------------------------------------------------------------------------- verify_grad
def test_verify_grad_passes_for_correct_ops():
    rng = np.random.default_rng(23098)
    verify_grad(T.tanh, (np.asarray([[2.0, 3, 4], [-1, 3.3, 9.9]]),), rng=rng, mode=DEV)
    verify_grad(lambda a, b: a * T.exp(b), [rng.normal(size=(2, 3)), rng.normal(size=(3,))], rng=rng, mode=DEV)
    verify_grad(lambda a: T.sin(a), [rng.normal(size=(3,)).astype("float32")], rng=rng, mode=DEV)
    verify_grad(lambda a: T.sin(a), [rng.normal(size=(3,)).astype("float32")], rng=rng, mode=DEV,
                cast_to_output_type=True)
    # size-0 and 0-d points
    verify_grad(T.exp, [np.zeros((0, 3))], rng=rng, mode=DEV)
    verify_grad(T.exp, [np.array(0.3)], rng=rng, mode=DEV)


def test_verify_grad_raises_gradient_error_with_values():
    rng = np.random.default_rng(0)
    pt = [rng.normal(size=(4,))]
    with pytest.raises(GradientError) as info:
        verify_grad(_Scaled(grad_factor=3.0), pt, rng=rng, mode=DEV)
    e = info.value
    assert e.arg == 0 and e.shape == (4,)
    assert 0 <= e.err_pos < 4
    assert e.val1 == pytest.approx(1.5 * e.val2, rel=1e-4)  # val1 analytic (3r), val2 numeric (2r)
    assert e.abs_tol == 1e-4 and e.rel_tol == 1e-4
    assert e.abs_err > e.abs_tol and e.rel_err > e.rel_tol


def test_verify_grad_tolerances_by_dtype_and_override():
    rng = np.random.default_rng(1)
    with pytest.raises(GradientError) as info:
        verify_grad(_Scaled(grad_factor=2.5), [rng.normal(size=(3,)).astype("float32")], rng=rng, mode=DEV)
    assert info.value.abs_tol == 1e-2 and info.value.rel_tol == 1e-2
    # a 1% error passes with loose tolerances
    verify_grad(_Scaled(grad_factor=2.02), [rng.normal(size=(3,))], rng=rng, mode=DEV, abs_tol=0.1, rel_tol=0.1)


def test_verify_grad_argument_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="list or tuple"):
        verify_grad(T.exp, np.zeros(3), rng=rng, mode=DEV)
    with pytest.raises(TypeError, match="floating point"):
        verify_grad(T.exp, [np.arange(3)], rng=rng, mode=DEV)
    with pytest.raises(NotImplementedError):
        verify_grad(lambda x: [T.exp(x), T.sin(x)], [np.zeros(3)], rng=rng, mode=DEV)


def test_verify_grad_default_rng_and_random_state():
    verify_grad(T.cos, [np.array([0.1, 0.2])], mode=DEV)
    verify_grad(T.cos, [np.array([0.1, 0.2])], rng=np.random.RandomState(3), mode=DEV)


# --------------------------------------------------------------------------- check_grads
def test_check_grads_first_and_second_order():
    rng = np.random.default_rng(2)
    args = [rng.normal(size=(2, 3)), rng.normal(size=(3,))]
    check_grads(lambda a, b: T.sin(a) * T.exp(b), args, order=2, mode=DEV)
    check_grads(lambda a, b: [T.tanh(a), a * b], args, order=1, modes=("rev",), mode=DEV)
    check_grads(lambda a: T.log(a), [rng.uniform(0.5, 2, size=(3,)).astype("float32")], order=2, mode=DEV)


@pytest.mark.parametrize("mode_name, op", [("fwd", _Scaled(rop_factor=2.5)), ("rev", _Scaled(grad_factor=2.5))])
def test_check_grads_catches_wrong_rules(mode_name, op):
    with pytest.raises(AssertionError, match=mode_name):
        check_grads(op, [np.array([1.0, -0.5, 2.0])], modes=(mode_name,), mode=DEV)


def test_check_grads_second_order_catches_wrong_second_derivative():
    # exp with a first derivative that is right at x but whose derivative is wrong:
    # y' = exp(x) computed as exp(zero_grad(x)) has zero second derivative.
    from tapegrad.gradient import zero_grad

    class _BadExp(Op):
        __props__ = ()

        def make_node(self, x):
            x = as_tensor(x)
            return Apply(self, [x], [Variable(x.type)])

        def perform(self, node, inputs, out):
            out[0][0] = np.exp(inputs[0])

        def L_op(self, inputs, outputs, g):
            return [g[0] * T.exp(zero_grad(inputs[0]))]

        def R_op(self, inputs, u):
            return [u[0] * T.exp(zero_grad(inputs[0]))]

    check_grads(_BadExp(), [np.array([0.3, -0.2])], order=1, mode=DEV)
    with pytest.raises(AssertionError):
        check_grads(_BadExp(), [np.array([0.3, -0.2])], order=2, mode=DEV)


# --------------------------------------------------------------------------- check_adjoint
def test_check_adjoint_builder_and_outputs_forms():
    rng = np.random.default_rng(3)
    res = check_adjoint(lambda a, b: T.sin(a) * b, [rng.normal(size=(2, 3)), rng.normal(size=(3,))], mode=DEV)
    assert len(res) == 2 and all(abs(l - r) < 1e-12 for l, r in res)
    x = vector("x")
    y = tensor("y", shape=(None, None))
    out = T.tanh(x) + y * x
    check_adjoint(out, [x, y], [rng.normal(size=3), rng.normal(size=(2, 3))], mode=DEV)
    check_adjoint(out, [x, y], {x: rng.normal(size=3), y: rng.normal(size=(2, 3))}, mode=DEV)


@pytest.mark.parametrize("xv", [0.3, 0.7, -1.7, 2.9, 5e-3])
def test_check_adjoint_passes_an_exactly_zero_derivative_computed_as_rounding_noise(xv):
    # x * (1 / x): one side exactly 0 or both rounding noise (1e-18 to 1e-15): no derivative to speak of
    x = vector("x")
    res = check_adjoint(x * T.reciprocal(x), [x], [np.array([xv])], rng=0, n_tests=8, mode=DEV)
    assert all(abs(l) < 1e-12 and abs(r) < 1e-12 for l, r in res)
    assert any(l != r for l, r in res)  # the case the floor is for: they do differ


def test_check_adjoint_catches_inconsistent_rules():
    with pytest.raises(AssertionError, match="disagree"):
        check_adjoint(_Scaled(grad_factor=2.0, rop_factor=-2.0), [np.array([1.0, 2.0])], mode=DEV)


# --------------------------------------------------------------------------- compare_backends
def test_compare_backends_python_only_and_builder():
    x = vector("x")
    res = compare_backends(lambda v: [T.exp(v), v > 0], [x], [np.array([0.0, -1.0])], devices=("python",))
    assert list(res) == ["python"]
    np.testing.assert_allclose(res["python"][0], [1.0, np.exp(-1.0)])


def test_compare_backends_skips_unavailable_devices(monkeypatch):
    import tapegrad.testing as tt

    monkeypatch.setattr(tt, "_device_available", lambda d: d == "python")
    x = vector("x")
    res = compare_backends(T.exp(x), [x], [np.ones(2)], devices=("python", "cuda"), skip_unavailable=True)
    assert list(res) == ["python"]


def test_compare_backends_detects_difference(monkeypatch):
    import tapegrad.testing as tt

    x = vector("x")
    real = tt.compile_function

    def fake(inputs, outputs, device=None):
        fn = real(inputs, outputs, device="python")
        if device == "other":
            return lambda *a: [np.asarray(o) * (1 + 1e-9) for o in fn(*a)]
        return fn

    monkeypatch.setattr(tt, "compile_function", fake)
    with pytest.raises(AssertionError, match="'other' vs 'python'"):
        compare_backends(T.exp(x), [x], [np.ones(3)], devices=("python", "other"))
    compare_backends(T.exp(x), [x], [np.ones(3)], devices=("python", "other"), rtol=1e-6)


@pytest.mark.skipif("not __import__('importlib').util.find_spec('tapegrad.compile.cpu')")
def test_compare_backends_cpu():
    x = vector("x")
    compare_backends(T.sin(x) * 2.0 + T.exp(x), [x], [np.linspace(-1, 1, 7)])


# --------------------------------------------------------------------------- the spec-row runner
def _runner():
    from tests.ops import test_specs
    from tests.ops.rows import Row

    return test_specs, Row


def test_spec_runner_passes_a_good_row():
    ts, Row = _runner()
    row = Row("EXP", T.exp, ((2, 3),), np.exp, id="probe-exp")
    for dtype in row.dtypes:
        assert ts._check_row(row, dtype) == []


@pytest.mark.parametrize(
    "op, expect",
    [
        (_Scaled(grad_factor=2.5), ["grad of input 0", "adjoint"]),
        (_Scaled(rop_factor=2.5), ["Rop of output 0", "adjoint"]),
        (_Scaled(grad_factor=2.5, rop_factor=2.5), ["grad of input 0", "Rop of output 0"]),
    ],
)
def test_spec_runner_catches_wrong_rules(op, expect):
    ts, Row = _runner()
    row = Row("PROBE", op, ((3,),), lambda x: 2 * x, id="probe")
    failures = ts._check_row(row, "float64")
    for e in expect:
        assert any(e in f for f in failures), failures


def test_spec_runner_catches_wrong_value_and_nonzero_grad():
    ts, Row = _runner()
    row = Row("EXP", T.exp, ((3,),), lambda x: np.exp(x) + 1e-6, id="probe-value")
    assert any("value" in f for f in ts._check_row(row, "float64"))
    row = Row("PROBE", _Scaled(), ((3,),), lambda x: 2 * x, differentiable=False, id="probe-nondiff")
    assert any("nonzero gradient" in f for f in ts._check_row(row, "float64"))
