"""Bad input (SPEC sections 3, 4 and 6): every error names what is wrong in the user's terms.

Each test checks the exception type *and* that the message names the variable,
the op, the shapes or the dtypes involved.  ``docs/errors.md`` lists the same
cases with example messages.  Tests run on ``device="python"`` (the reference
engine) except the few marked ``cpu`` in their name, which build one tiny
elementwise function on the Numba CPU engine (cheap once the engine is cached).
"""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.config import config


def fn(*args, **kw):
    kw.setdefault("device", "python")
    return tg.function(*args, **kw)


def _names_all(msg, *words):
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} does not mention {missing}"


# --------------------------------------------------------------------------- call-time argument checks
def test_wrong_number_of_arguments_names_every_input():
    alpha, beta = tg.vector("alpha"), tg.vector("beta")
    f = fn([alpha, beta], alpha + beta, name="f")
    for args in [(np.ones(2),), (np.ones(2),) * 3, ()]:
        with pytest.raises(TypeError) as e:
            f(*args)
        _names_all(str(e.value), "'f'", "expects 2 input(s)", "alpha, beta", f"got {len(args)}")
    with pytest.raises(TypeError, match=r"missing a value for input\(s\) beta"):
        f(alpha=np.ones(2))
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'gamma'"):
        f(np.ones(2), gamma=np.ones(2))
    np.testing.assert_array_equal(f(np.ones(2), beta=np.ones(2)), [2.0, 2.0])


def test_wrong_ndim_names_input_expected_and_actual():
    W = tg.matrix("weights")
    f = fn([W], W.sum())
    with pytest.raises(TypeError) as e:
        f(np.ones(3))
    _names_all(str(e.value), "input 0 (weights)", "2 dimension(s)", "got 1 dimension(s)", "(3,)")
    with pytest.raises(TypeError, match=r"weights.*got 0 dimension"):
        f(1.0)


def test_length_contradicting_static_shape():
    t = tg.tensor("frames", dtype="float64", shape=(None, 3))
    f = fn([t], t.sum())
    with pytest.raises(ValueError) as e:
        f(np.ones((2, 4)))
    _names_all(str(e.value), "frames", "(None, 3)", "length 3 on axis 1", "(2, 4)")
    assert f(np.ones((5, 3))) == 15.0  # the unknown length is free


@pytest.mark.parametrize(
    "make, value, words",
    [
        (lambda: tg.ivector("counts"), np.array([1.5, 2.0]), ["counts", "int64", "float64", "astype"]),
        (lambda: tg.ivector("counts"), 1.5 * np.ones(2, dtype="float32"), ["counts", "int64", "float32"]),
        (lambda: tg.iscalar("k"), 2.5, ["k", "int64", "float64"]),
        (lambda: tg.fvector("xf"), np.array([0.5, 1.0]), ["xf", "float32", "float64", "without loss"]),
        (lambda: tg.fvector("xf"), [0.1, 0.2], ["xf", "float32", "float64"]),  # a lossy list
        (lambda: tg.tensor("m", dtype="int32", shape=(None,)), np.array([1, 2], dtype="int64"), ["m", "int32", "int64"]),
        (lambda: tg.vector("x"), np.array(["a", "b"], dtype=object), ["x", "float64", "ndarray"]),
    ],
)
def test_non_castable_dtype_is_a_type_error_naming_the_input(make, value, words):
    v = make()
    f = fn([v], v * 2)
    with pytest.raises(TypeError) as e:
        f(value)
    _names_all(str(e.value), *words)


def test_castable_values_are_accepted():
    xf, iv, x = tg.fvector("xf"), tg.ivector("iv"), tg.vector("x")
    f = fn([xf, iv, x], [xf * 2, iv * 2, x * 2])
    a, b, c = f(np.array([0.5], dtype="float32"), np.array([3], dtype="int32"), np.array([1], dtype="int64"))
    assert (a.dtype, b.dtype, c.dtype) == (np.float32, np.int64, np.float64)
    s = tg.fscalar("s")
    assert fn([s], s * 2)(0.1).dtype == np.float32  # a Python float does not upcast float32
    with pytest.raises(TypeError, match="symbolic variable"):
        f(x, [3], [1.0])  # a Variable is not a value


def test_exact_list_of_python_floats_into_float32_input():
    xf = tg.fvector("xf")
    out = fn([xf], xf * 2)([0.5, 1.0, 2.0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, 4.0])


# --------------------------------------------------------------------------- broadcasting
@pytest.mark.parametrize(
    "build, words",
    [
        (lambda a, b: a + b, ["add", "(3,)", "(4,)"]),
        (lambda a, b: a * b, ["mul", "(3,)", "(4,)"]),
        (lambda a, b: tg.maximum(a, b), ["maximum", "(3,)", "(4,)"]),
        (lambda a, b: tg.switch(a > 0, a, b), ["switch", "(3,)", "(4,)"]),
    ],
)
def test_static_shapes_that_cannot_broadcast_fail_at_construction(build, words):
    a, b = tg.tensor("a", shape=(3,)), tg.tensor("b", shape=(4,))
    with pytest.raises(ValueError) as e:
        build(a, b)
    _names_all(str(e.value), *words, "broadcast")


def test_static_contraction_and_concatenation_mismatch_at_construction():
    A, B = tg.tensor("A", shape=(2, 3)), tg.tensor("B", shape=(4, 5))
    with pytest.raises(ValueError) as e:
        tg.dot(A, B)
    _names_all(str(e.value), "dot", "A", "B", "(2, 3)", "(4, 5)")
    with pytest.raises(ValueError) as e:
        tg.matmul(A, B)
    _names_all(str(e.value), "matmul", "(2, 3)", "(4, 5)")
    with pytest.raises(ValueError) as e:
        tg.concatenate([A, B], axis=0)
    _names_all(str(e.value), "concatenate", "(2, 3)", "(4, 5)")


def test_unknown_lengths_that_cannot_broadcast_fail_at_call_naming_op_shapes_and_variables():
    pos, vel = tg.vector("pos"), tg.vector("vel")
    f = fn([pos, vel], pos + vel)
    with pytest.raises(ValueError) as e:
        f(np.ones(3), np.ones(4))
    _names_all(str(e.value), "add", "(3,)", "(4,)", "pos", "vel")
    W = tg.matrix("W")
    g = fn([W, pos], tg.dot(W, pos))
    with pytest.raises(ValueError) as e:
        g(np.ones((2, 3)), np.ones(4))
    _names_all(str(e.value), "dot", "(2, 3)", "(4,)", "W", "pos")
    # an unknown length that turns out to be 1 broadcasts (SPEC section 1)
    np.testing.assert_array_equal(f(np.ones(3), np.ones(1)), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("tier", ["interp", "fused"])
def test_cpu_runtime_broadcast_error_names_op_and_variables(tier):
    # unknown lengths: the CPU engine finds the mismatch while planning the call (infer_shape) and words it
    # as the reference engine's perform does: the op, both shapes, the user's variables
    pos, vel = tg.vector("pos"), tg.vector("vel")
    f = tg.function([pos, vel], pos + vel, device="cpu", tier=tier)
    with pytest.raises(ValueError) as e:
        f(np.ones(3), np.ones(4))
    assert type(e.value) is ValueError
    first = str(e.value).splitlines()[0]
    assert first == "add: shapes (3,) and (4,) of (pos, vel) cannot be broadcast together", str(e.value)
    with pytest.raises(ValueError) as ref:
        fn([pos, vel], pos + vel)(np.ones(3), np.ones(4))
    assert str(ref.value).splitlines()[0] == first  # the same first line as device="python"
    _names_all(str(e.value), "CPU engine", "tape instruction 0")
    W = tg.matrix("W")
    g = tg.function([W, pos], tg.dot(W, pos), device="cpu", tier=tier)
    with pytest.raises(ValueError) as e:
        g(np.ones((2, 3)), np.ones(4))
    _names_all(str(e.value), "dot", "(2, 3)", "(4,)", "(W, pos)")
    np.testing.assert_array_equal(f(np.ones(3), np.ones(1)), [2.0, 2.0, 2.0])  # length 1 broadcasts
    np.testing.assert_array_equal(g(np.ones((2, 3)), np.arange(3.0)), [3.0, 3.0])  # callable again


# --------------------------------------------------------------------------- grad
def test_grad_of_non_scalar_cost_is_a_type_error_naming_it():
    x = tg.vector("x")
    y = x * 2
    y.name = "residuals"
    with pytest.raises(TypeError) as e:
        tg.grad(y, x)
    _names_all(str(e.value), "cost", "scalar", "residuals", "1 dimension(s)")


@pytest.mark.parametrize("wrt", [3.0, np.ones(3), "x", [tg.vector("ok"), 2]])
def test_grad_wrt_a_non_variable_is_a_type_error(wrt):
    x = tg.vector("x")
    with pytest.raises(TypeError) as e:
        tg.grad(x.sum(), wrt)
    assert "wrt" in str(e.value) and "Variable" in str(e.value)


@pytest.mark.usefixtures("no_background_compiles")
def test_grad_wrt_a_constant_follows_aesara():
    # Aesara's grad treats a Constant like any other variable: used in the cost it is connected
    # and gets its gradient; not used it is disconnected (DisconnectedInputError, or zeros).
    x = tg.vector("x")
    c = tg.constant(np.array([1.0, 2.0, 3.0]))
    gc = tg.grad((x * c).sum(), c)
    np.testing.assert_array_equal(fn([x], gc)([4.0, 5.0, 6.0]), [4.0, 5.0, 6.0])
    k = tg.constant(2.0, name="two")
    with pytest.raises(tg.DisconnectedInputError) as e:
        tg.grad(x.sum(), k)
    assert isinstance(e.value, ValueError)
    _names_all(str(e.value), "not part of the computational graph", "two")
    assert fn([], tg.grad(x.sum(), k, disconnected_inputs="ignore"))() == 0.0
    with pytest.warns(UserWarning, match="not part of the computational graph"):
        tg.grad(x.sum(), k, disconnected_inputs="warn")
    assert tg.grad(x.sum(), k, disconnected_inputs="ignore", return_disconnected="none") is None


def test_grad_wrt_disconnected_variable_names_it():
    x, unused = tg.vector("x"), tg.vector("unused")
    with pytest.raises(tg.DisconnectedInputError, match="unused"):
        tg.grad(x.sum(), unused)


@pytest.mark.parametrize("floatX", ["float64", "float32"])
def test_integer_wrt_works_and_has_floatX_gradient(monkeypatch, floatX):
    monkeypatch.setattr(config, "_floatX", floatX)
    X = tg.imatrix("X")
    Xf = tg.tensor("Xf", dtype=floatX, shape=(None, None))
    W = np.array([[0.5], [-0.25]], dtype=floatX)
    gi = tg.grad(tg.sigmoid(tg.dot(X, W)).sum(), X)
    gf = tg.grad(tg.sigmoid(tg.dot(Xf, W)).sum(), Xf)
    assert gi.dtype == floatX
    Xv = np.array([[1, 2], [3, -1]])
    out_i = fn([X], gi)(Xv)
    out_f = fn([Xf], gf)(Xv.astype(floatX))
    assert out_i.dtype == np.dtype(floatX)
    np.testing.assert_allclose(out_i, out_f, rtol=1e-6)
    # integer-valued ops pass zero gradient
    x = tg.vector("x")
    np.testing.assert_array_equal(fn([x], tg.grad(tg.floor(x).sum() + x.sum(), x))(np.array([0.5, 1.5], dtype=floatX)), [1.0, 1.0])


# --------------------------------------------------------------------------- Rop / Lop
def test_rop_lop_eval_point_count_mismatch():
    x, y, u = tg.vector("x"), tg.vector("y"), tg.vector("u")
    with pytest.raises(ValueError, match=r"Rop.*\(2 != 1\)"):
        tg.Rop(x * y, [x, y], [u])
    with pytest.raises(ValueError, match=r"Lop: 2 variable\(s\) .* but 1 eval_point\(s\)"):
        tg.Lop([x * 2, y * 2], x, [u])


def test_rop_lop_eval_point_count_mismatch_names_the_variables():
    alpha, beta, u_alpha = tg.vector("alpha"), tg.vector("beta"), tg.vector("u_alpha")
    with pytest.raises(ValueError) as e:
        tg.Rop(alpha * beta, [alpha, beta], [u_alpha])
    _names_all(str(e.value), "alpha", "beta", "u_alpha")
    with pytest.raises(ValueError) as e:
        tg.Lop([alpha * 2, beta * 2], alpha, [u_alpha])
    _names_all(str(e.value), "u_alpha")


def test_rop_lop_eval_point_shape_mismatch_names_both():
    x, W = tg.vector("x"), tg.matrix("W")
    with pytest.raises(ValueError) as e:
        tg.Rop(x * 2, x, W)
    _names_all(str(e.value), "Rop", "x", "W", "dimensionalities", "1 and 2")
    with pytest.raises(ValueError) as e:
        tg.Lop(x * 2, x, W)
    _names_all(str(e.value), "Lop", "W", "1 and 2")
    a, ua = tg.tensor("a", shape=(3,)), tg.tensor("ua", shape=(4,))
    with pytest.raises(ValueError) as e:
        tg.Rop(a * 2, a, ua)
    _names_all(str(e.value), "a", "ua", "axis 0", "3 and 4")


def test_rop_eval_point_of_another_float_dtype_is_cast_as_aesara_checks_ndim_only():
    x, u = tg.vector("x"), tg.fvector("u")
    r = tg.Rop(x * 2, x, u)
    assert r.dtype == "float64"
    out = fn([x, u], r, on_unused_input="ignore")([7.0], np.array([1.0], dtype="float32"))
    np.testing.assert_array_equal(out, [2.0])


# --------------------------------------------------------------------------- compiling
def test_nulltype_reaching_function_raises_with_the_reason():
    x = tg.vector("x")
    g = tg.grad(tg.undefined_grad(x).sum(), x, null_gradients="return")
    assert isinstance(g.type, tg.NullType)
    with pytest.raises(TypeError) as e:
        fn([x], g)
    _names_all(str(e.value), "NullType", "undefined_grad")
    with pytest.raises(tg.NullTypeGradError, match="undefined_grad"):
        tg.grad(tg.undefined_grad(x).sum(), x)


def test_disconnected_type_reaching_function_raises():
    x, y = tg.vector("x"), tg.vector("y")
    d = tg.grad(x.sum(), y, disconnected_inputs="ignore", return_disconnected="disconnected")
    with pytest.raises(TypeError, match="DisconnectedType.*return_disconnected='zero'"):
        fn([x], d, on_unused_input="ignore")


@pytest.mark.usefixtures("no_background_compiles")
def test_on_unused_input_raise_warn_ignore():
    x, spare = tg.vector("x"), tg.vector("spare")
    with pytest.raises(ValueError) as e:
        fn([x, spare], x * 2)
    _names_all(str(e.value), "input 1 (spare)", "on_unused_input")
    with pytest.warns(UserWarning, match=r"input 1 \(spare\)"):
        f = fn([x, spare], x * 2, on_unused_input="warn")
    np.testing.assert_array_equal(f([1.0], [5.0, 6.0]), [2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = fn([x, spare], x * 2, on_unused_input="ignore")
    np.testing.assert_array_equal(g([1.0], [0.0]), [2.0])
    with pytest.raises(ValueError, match="on_unused_input must be"):
        fn([x], x, on_unused_input="maybe")


def test_missing_input_names_the_variable_and_the_given_inputs():
    from tapegrad.tape.build import MissingInputError

    pos, vel = tg.vector("pos"), tg.vector("vel")
    with pytest.raises(MissingInputError) as e:
        fn([pos], pos + vel)
    assert isinstance(e.value, ValueError)
    _names_all(str(e.value), "vel", "add", "given: pos", "givens")


def test_bad_function_arguments():
    x = tg.vector("x")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        tg.function([x], x, device="gpu")
    with pytest.raises(TypeError, match="list of Variables"):
        tg.function(x, x * 2, device="python")


# --------------------------------------------------------------------------- no state left behind
def _stateful(device):
    x = tg.vector("x")
    w = tg.shared(np.zeros(3), name="w")
    n = tg.shared(np.array(0, dtype="int64"), name="n")
    f = tg.function([x], (w * x).sum() + tg.exp(x).sum(), updates=[(w, w + x), (n, n + 1)], device=device)
    return x, w, n, f


def _check_failed_call_leaves_state(device):
    x, w, n, f = _stateful(device)
    ok = np.array([1.0, 2.0, 3.0])
    first = f(ok)
    np.testing.assert_array_equal(w.get_value(), ok)
    bad_calls = [
        (np.ones(4),),  # (w * x) cannot broadcast: fails while running
        (np.ones((3, 1)),),  # wrong ndim: fails in the argument checks
        (np.array([1, 2, 3], dtype=object),),
        (),
    ]
    for args in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            f(*args)
        np.testing.assert_array_equal(w.get_value(), ok)  # no update half-applied
        assert int(n.get_value()) == 1
    second = f(ok)  # callable again, same plan, same numbers
    np.testing.assert_allclose(second, (ok * ok).sum() + np.exp(ok).sum(), rtol=1e-12)
    np.testing.assert_array_equal(w.get_value(), 2 * ok)
    assert int(n.get_value()) == 2
    assert first == pytest.approx(np.exp(ok).sum(), rel=1e-12)
    return f


def test_failed_call_leaves_shared_variables_intact_and_function_callable():
    f = _check_failed_call_leaves_state("python")
    g = pickle.loads(pickle.dumps(f))  # the failed calls left nothing in the pickled state either
    assert np.isfinite(g(np.zeros(3)))


def test_cpu_failed_call_leaves_shared_variables_and_cached_plans_intact():
    f = _check_failed_call_leaves_state("cpu")
    plans = getattr(f._engine, "_plans", None)
    if plans is not None:  # one plan for the one good input shape; the failures cached nothing
        assert all(all(s == (3,) for s in key[:1]) for key in plans)


def test_nan_and_inf_inputs_flow_through():
    x = tg.vector("x")
    f = fn([x], [x * 0, x - x, x / x])
    out = f([np.nan, np.inf, 1.0])
    for o in out:
        assert np.isnan(o[0]) and o[2] in (0.0, 1.0)
    assert np.isnan(out[0][1]) and np.isnan(out[1][1]) and np.isnan(out[2][1])


def test_messages_use_variable_names_not_ids():
    # the names the user gave appear verbatim; nothing like <Variable at 0x...>
    speed = tg.vector("speed")
    f = fn([speed], speed * 2)
    with pytest.raises(TypeError) as e:
        f(np.ones((2, 2)))
    assert "speed" in str(e.value) and not re.search(r"0x[0-9a-f]{6,}", str(e.value))


def test_cuda_call_time_broadcast_error_names_op_shapes_and_variables():
    """The CUDA engine words the call-time broadcast error as the other engines (simulator, subprocess)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, tapegrad as tg\n"
        "pos, vel = tg.dvector('pos'), tg.dvector('vel')\n"
        "f = tg.function([pos, vel], pos + vel, device='cuda')\n"
        "try:\n"
        "    f(np.ones(3), np.ones(4))\n"
        "except ValueError as e:\n"
        "    print('MSG', str(e).splitlines()[0])\n"
        "    print('ENGINE', 'CUDA engine: while planning' in str(e))\n"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "MSG add: shapes (3,) and (4,) of (pos, vel) cannot be broadcast together" in out.stdout, out.stderr
    assert "ENGINE True" in out.stdout
