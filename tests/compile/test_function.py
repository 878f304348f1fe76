"""tg.function, Function and the reference engine."""

import pickle
import sys
import types
import warnings

import numpy as np
import pytest

from tapegrad.config import config
from tapegrad.compile import function as fmod
from tapegrad.compile.function import Function, eval_variable, function
from tapegrad.compile.reference import ReferenceEngine
from tapegrad.graph import Apply, constant, fvector, ivector, matrix, scalar, shared, tensor, vector
from tapegrad.op import Op, make_output
from tapegrad.ops import exp, log, mul, neg, sin
from tapegrad.tape.build import build_tape


def fn(*args, **kw):
    kw.setdefault("device", "python")
    return function(*args, **kw)


# --------------------------------------------------------------------------- results
def test_single_and_list_outputs():
    x = vector("x")
    f = fn([x], exp(x))
    out = f([0.0, 1.0])
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, np.exp([0.0, 1.0]))
    g = fn([x], [exp(x), x * 2.0])
    assert isinstance(g([1.0]), list) and len(g([1.0])) == 2
    h = fn([x], (exp(x),))
    assert isinstance(h([1.0]), list)


def test_scalar_output_is_0d_array():
    s = scalar("s")
    out = fn([s], s * 3.0)(2.0)
    assert isinstance(out, np.ndarray) and out.shape == () and out == 6.0


def test_outputs_are_fresh_and_arguments_untouched():
    x = vector("x")
    c = constant(np.array([1.0, 2.0]))
    f = fn([x], [x, x, c, x * 1.0])
    arg = np.array([1.0, 2.0])
    outs = f(arg)
    assert all(not np.shares_memory(o, arg) for o in outs)
    assert not np.shares_memory(outs[0], outs[1])
    outs[0][0] = 99.0
    outs[2][0] = 99.0
    assert arg[0] == 1.0
    np.testing.assert_array_equal(f(arg)[2], [1.0, 2.0])


def test_default_device_from_config(monkeypatch):
    monkeypatch.setattr(config, "device", "python")
    x = vector("x")
    f = function([x], x)
    assert f.device == "python"


def test_unknown_device():
    x = vector("x")
    with pytest.raises(ValueError, match="'python', 'cpu', 'cuda'"):
        function([x], x, device="tpu")


def test_missing_engine_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(fmod._ENGINES, "cpu", ("tapegrad.compile.no_such_engine", "CPUEngine"))
    x = vector("x")
    with pytest.raises(RuntimeError, match="device='cpu'.*device='python'"):
        function([x], x, device="cpu")


def test_cpu_engine_interface_is_used(monkeypatch):
    calls = []

    class FakeEngine:
        def __init__(self, tape):
            self.inner = ReferenceEngine(tape)

        def run(self, inputs, shared):
            calls.append(len(inputs))
            return self.inner.run(inputs, shared)

    mod = types.ModuleType("fake_cpu")
    mod.CPUEngine = FakeEngine
    monkeypatch.setitem(sys.modules, "fake_cpu", mod)
    monkeypatch.setitem(fmod._ENGINES, "cpu", ("fake_cpu", "CPUEngine"))
    x = vector("x")
    f = function([x], exp(x), device="cpu", nan_guard=True)  # options the engine lacks are not passed
    np.testing.assert_allclose(f([0.0]), [1.0])
    assert calls == [1] and f.device == "cpu"


# --------------------------------------------------------------------------- call-time validation
def test_wrong_number_of_arguments_names_inputs():
    x, W = vector("x"), matrix("W")
    f = fn([x, W], x + W)
    with pytest.raises(TypeError, match=r"expects 2 input\(s\) \(x, W\), got 1"):
        f([1.0])


def test_wrong_ndim_length_dtype_name_the_input():
    x = vector("x")
    t = tensor("t", shape=(None, 3))
    fx = fvector("fx")
    i = ivector("i")
    f = fn([x, t, fx, i], [x, t, fx, i])
    good = ([1.0], np.zeros((2, 3)), np.zeros(1, "float32"), [1])
    f(*good)
    with pytest.raises(TypeError, match=r"input 0 \(x\).*dimension"):
        f(np.zeros((2, 2)), *good[1:])
    with pytest.raises(ValueError, match=r"input 1 \(t\).*length 3"):
        f(good[0], np.zeros((2, 4)), *good[2:])
    with pytest.raises(TypeError, match=r"input 2 \(fx\).*float32"):
        f(good[0], good[1], np.zeros(1), good[3])
    with pytest.raises(TypeError, match=r"input 3 \(i\).*int64"):
        f(*good[:3], [1.5])


def test_lists_and_ints_convert():
    x = vector("x")
    f = fn([x], x * 2.0)
    np.testing.assert_array_equal(f([1, 2]), [2.0, 4.0])


def test_keyword_arguments():
    x, y = vector("x"), vector("y")
    f = fn([x, y], x - y)
    np.testing.assert_array_equal(f([3.0], y=[1.0]), [2.0])
    np.testing.assert_array_equal(f(y=[1.0], x=[3.0]), [2.0])
    with pytest.raises(TypeError, match="multiple values"):
        f([3.0], x=[1.0])
    with pytest.raises(TypeError, match="missing a value for input.*y"):
        f(x=[1.0])
    with pytest.raises(TypeError, match="unexpected keyword"):
        f([1.0], z=[1.0])


@pytest.mark.usefixtures("no_background_compiles")
def test_on_unused_input():
    x, y = vector("x"), vector("y")
    with pytest.raises(ValueError, match=r"input 1 \(y\) is not used"):
        fn([x, y], exp(x))
    with pytest.warns(UserWarning, match="y"):
        f = fn([x, y], exp(x), on_unused_input="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = fn([x, y], exp(x), on_unused_input="ignore")
    np.testing.assert_allclose(g([0.0], [5.0, 6.0]), [1.0])
    np.testing.assert_allclose(f([0.0], [5.0]), [1.0])
    with pytest.raises(ValueError, match="on_unused_input"):
        fn([x], x, on_unused_input="maybe")


def test_missing_input_and_null_output():
    from tapegrad.op import grad_not_implemented

    x, y = vector("x"), vector("y")
    with pytest.raises(ValueError, match="missing input.*y"):
        fn([x], x + y)
    g = grad_not_implemented(exp(x).owner.op, 0, x, "no rule here")
    with pytest.raises(TypeError, match="no rule here"):
        fn([x], g)


# --------------------------------------------------------------------------- updates
def test_updates_applied_after_outputs_all_read_before_written():
    a = shared(np.array([1.0]), name="a")
    b = shared(np.array([2.0]), name="b")
    f = fn([], a + b, updates=[(a, b), (b, a)])
    np.testing.assert_array_equal(f(), [3.0])
    assert a.get_value()[0] == 2.0 and b.get_value()[0] == 1.0
    counter = shared(np.int64(0), name="n")
    g = fn([], counter, updates={counter: counter + 1})
    assert [int(g()) for _ in range(3)] == [0, 1, 2]
    assert int(counter.get_value()) == 3


def test_failed_call_leaves_shared_untouched_and_function_usable():
    x = vector("x")
    w = shared(np.zeros(3), name="w")
    v = shared(np.zeros(3), name="v")
    f = fn([x], w + x, updates=[(v, v + 1.0), (w, w + x)])
    with pytest.raises(ValueError, match=r"add.*\(w, x\)"):
        f([1.0, 2.0])
    np.testing.assert_array_equal(w.get_value(), np.zeros(3))
    np.testing.assert_array_equal(v.get_value(), np.zeros(3))
    np.testing.assert_array_equal(f([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(v.get_value(), np.ones(3))


def test_update_value_not_aliased():
    w = shared(np.zeros(2), name="w")
    x = vector("x")
    f = fn([x], x, updates=[(w, x)])
    arg = np.array([1.0, 2.0])
    out = f(arg)
    arg[0] = 7.0
    out[1] = 7.0
    np.testing.assert_array_equal(w.get_value(), [1.0, 2.0])


def test_givens():
    x, y = vector("x"), vector("y")
    f = fn([y], exp(x), givens={x: y * 2.0})
    np.testing.assert_allclose(f([1.0]), np.exp([2.0]))
    g = fn([], exp(x), givens=[(x, np.array([0.0]))])
    np.testing.assert_allclose(g(), [1.0])
    with pytest.raises(TypeError, match="dtype and ndim"):
        fn([y], x, givens={x: matrix("M")})


# --------------------------------------------------------------------------- engine errors
def test_runtime_errors_keep_type_and_name_variables():
    x, y = vector("x"), vector("y")
    z = x * y
    z.name = "prod"
    f = fn([x, y], z)
    with pytest.raises(ValueError) as e:
        f([1.0, 2.0], [1.0, 2.0, 3.0])
    msg = str(e.value)
    assert "mul" in msg and "x, y" in msg and "prod" in msg and "(2,)" in msg


class BadDtypeOp(Op):
    def make_node(self, x):
        return Apply(self, [x], [make_output("float32", x.type.shape)])

    def perform(self, node, inputs, out):
        out[0][0] = np.asarray(inputs[0], dtype="float64")


class Twice(Op):
    def make_node(self, x):
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        out[0][0] = inputs[0] * 2


def test_user_op_runs_and_wrong_perform_dtype_is_reported():
    x = vector("x")
    f = fn([x], Twice()(x) + Twice()(x))
    assert len(f.tape) == 3  # user ops are never merged
    np.testing.assert_array_equal(f([1.0]), [4.0])
    g = fn([x], BadDtypeOp()(x))
    with pytest.raises(TypeError, match="BadDtypeOp.*float64.*float32"):
        g([1.0])


def test_nan_guard():
    x = vector("x")
    f = fn([x], exp(log(x)), nan_guard=True)
    with pytest.raises(FloatingPointError, match="log"):
        f([-1.0])
    np.testing.assert_array_equal(fn([x], log(x))([-1.0]), [np.nan])
    np.testing.assert_array_equal(f([np.nan]), [np.nan])  # NaN already in the input: not blamed on log


# --------------------------------------------------------------------------- inspection, pickling
def test_attributes_and_repr():
    x = vector("x")
    y = exp(x)
    y.name = "y"
    f = fn([x], y, name="f")
    assert f.inputs == [x] and f.outputs == [y] and f.name == "f" and f.device == "python"
    assert repr(f) == "<Function 'f' (x) -> (y) on 'python': 1 instructions>"
    assert "exp %0" in str(f.tape)


def test_pickle_function_and_tape():
    x = vector("x")
    w = shared(np.array([1.0, 2.0]), name="w")
    y = sin(x) * w + neg(x)
    f = fn([x], y, updates=[(w, w * 2.0)], name="f")
    g = pickle.loads(pickle.dumps(f))
    assert isinstance(g, Function) and g.name == "f" and len(g.tape) == len(f.tape)
    xv = np.array([0.5, 1.0])
    np.testing.assert_allclose(g(xv), np.sin(xv) * [1.0, 2.0] - xv)
    np.testing.assert_allclose(g(xv), np.sin(xv) * [2.0, 4.0] - xv)  # its own copy of w was updated
    np.testing.assert_array_equal(w.get_value(), [1.0, 2.0])
    t = pickle.loads(pickle.dumps(f.tape))
    assert t.nodes == [None] * len(t)
    t.validate()
    outs, ups = ReferenceEngine(t).run([xv], [np.array([1.0, 1.0])])
    np.testing.assert_allclose(outs[0], np.sin(xv) - xv)
    np.testing.assert_allclose(ups[0], [2.0, 2.0])


def test_reference_engine_direct():
    x = vector("x")
    t = build_tape([x], [mul(x, x), x])
    arg = np.array([3.0])
    outs, ups = ReferenceEngine(t).run([arg], [])
    assert outs[0][0] == 9.0 and ups == [] and not np.shares_memory(outs[1], arg)


def test_eval_and_cache():
    x = vector("x")
    y = exp(x) * 2.0
    np.testing.assert_allclose(eval_variable(y, {x: [0.0]}), [2.0])
    np.testing.assert_allclose(y.eval({x: [0.0, 1.0]}), 2 * np.exp([0.0, 1.0]))
    assert len(y.tag["eval_cache"]) == 1
    (fn_cached,) = [v[1] for v in y.tag["eval_cache"].values()]
    y.eval({x: [1.0]})
    assert [v[1] for v in y.tag["eval_cache"].values()] == [fn_cached]
    assert float(constant(2.0).eval()) == 2.0
    w = shared(np.ones(2), name="w")
    np.testing.assert_array_equal((w + 1.0).eval(), [2.0, 2.0])
    with pytest.raises(ValueError, match="missing input"):
        y.eval()


def test_shared_variable_given_as_input_and_updated():
    w = shared(np.zeros(2), name="w")
    f = fn([w], w * 2.0, updates=[(w, w + 1.0)])
    np.testing.assert_array_equal(f([1.0, 1.0]), [2.0, 2.0])
    np.testing.assert_array_equal(w.get_value(), [2.0, 2.0])  # the update read the value passed in
