"""User ops' ``infer_shape`` in the engines' memory planners (SPEC section 5).

Aesara's signature ``infer_shape(self, fgraph, node, input_shapes)`` and tapegrad's two-argument form both
work; results may be ints or symbolic (Variables over the node's inputs or of the ``input_shapes`` entries);
an ``infer_shape`` that fails falls back to the shape ``perform`` produces.  Every case: the CPU engine (each
tier) and the python engine agree, with the right values, over several input shapes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile.fused import FusedCPUEngine
from tapegrad.compile.op_shapes import op_infer_shape, takes_fgraph
from tapegrad.tape.build import build_tape


@pytest.fixture(autouse=True)
def _quiet_callbacks():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="user op .* runs in Python")
        yield


# --------------------------------------------------------------------------- ops
class Op2x(tg.Op):
    """Aesara's signature, returning ``input_shapes`` (the brief's example)."""

    def make_node(self, a):
        a = tg.as_tensor(a)
        return tg.Apply(self, [a], [a.type()])

    def perform(self, node, i, o):
        o[0][0] = i[0] * 2

    def infer_shape(self, fgraph, node, input_shapes):
        assert fgraph is None
        return input_shapes


class Op2xTwoArgs(Op2x):
    """tapegrad's documented two-argument form."""

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]


class _Repeat(tg.Op):
    """``concatenate([a, a])`` along axis 0: output length ``2 * len(a)``."""

    def make_node(self, a):
        a = tg.as_tensor(a)
        return tg.Apply(self, [a], [tg.tensor(dtype=a.dtype, shape=(None,) + tuple(a.type.shape[1:]))])

    def perform(self, node, i, o):
        o[0][0] = np.concatenate([i[0], i[0]])


class RepeatIntExpr(_Repeat):
    def infer_shape(self, fgraph, node, input_shapes):
        (n, *rest), = input_shapes
        return [(n * 2, *rest)]


class RepeatSymbolic(_Repeat):
    """Aesara style: a symbolic length from the node's input."""

    def infer_shape(self, fgraph, node, input_shapes):
        a = node.inputs[0]
        return [(a.shape[0] * 2,) + tuple(input_shapes[0][1:])]


class RepeatSymbolicOfShapes(_Repeat):
    """A Variable made from the ``input_shapes`` entries (ints here) and constants."""

    def infer_shape(self, fgraph, node, input_shapes):
        return [(tg.maximum(input_shapes[0][0], 0) * 2,) + tuple(input_shapes[0][1:])]


class RepeatWholeShapeVariable(_Repeat):
    """The whole shape as one symbolic vector."""

    def infer_shape(self, fgraph, node, input_shapes):
        a = node.inputs[0]
        return [tg.concatenate([a.shape[:1] * 2, a.shape[1:]])]


class RepeatNotImplemented(_Repeat):
    def infer_shape(self, fgraph, node, input_shapes):
        raise NotImplementedError("no shape rule")


class RepeatBroken(_Repeat):
    def infer_shape(self, fgraph, node, input_shapes):
        raise RuntimeError("a bug in the shape rule")


class RepeatWrongRank(_Repeat):
    def infer_shape(self, fgraph, node, input_shapes):
        return [(1, 2, 3, 4, 5)]


class Head(tg.Op):
    """``a[:k]`` with ``k`` an int scalar input: the shape depends on a value."""

    def make_node(self, a, k):
        a, k = tg.as_tensor(a), tg.as_tensor(k)
        return tg.Apply(self, [a, k], [tg.tensor(dtype=a.dtype, shape=(None,))])

    def perform(self, node, i, o):
        o[0][0] = np.array(i[0][: int(i[1])])

    def infer_shape(self, fgraph, node, input_shapes):
        return [(tg.minimum(node.inputs[1], input_shapes[0][0]),)]


REPEATS = [RepeatIntExpr, RepeatSymbolic, RepeatSymbolicOfShapes, RepeatWholeShapeVariable,
           RepeatNotImplemented, RepeatBroken, RepeatWrongRank]


def _check(inputs, outputs, cases, tiers=(None, "interp", "fused")):
    """cpu (each tier) and python give the same values, equal to ``want(*args)``, for every case."""
    fns = [tg.function(inputs, outputs, device="cpu", tier=t) for t in tiers]
    ref = tg.function(inputs, outputs, device="python")
    for args, want in cases:
        expect = ref(*args)
        for w, e in zip(want, expect):
            np.testing.assert_allclose(e, w, rtol=1e-15)
        for f in fns:
            for _ in range(2):  # the second call reuses the plan
                got = f(*args)
                for g, e in zip(got, expect):
                    assert g.shape == e.shape
                    np.testing.assert_allclose(g, e, rtol=1e-15)


# --------------------------------------------------------------------------- tests
def test_aesara_signature_on_the_default_device():
    x = tg.dvector("x")
    f = tg.function([x], Op2x()(x))
    np.testing.assert_array_equal(f(np.ones(3)), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("cls", [Op2x, Op2xTwoArgs])
def test_both_signatures_agree(cls):
    x = tg.dmatrix("x")
    y = cls()(tg.exp(x)) + 1
    cases = []
    for shape in [(2, 3), (4, 1), (0, 2)]:
        a = np.arange(np.prod(shape), dtype=float).reshape(shape) / 7
        cases.append(((a,), [2 * np.exp(a) + 1]))
    _check([x], [y], cases)


def test_signature_detection():
    assert takes_fgraph(Op2x()) and not takes_fgraph(Op2xTwoArgs())

    class Star(Op2x):
        def infer_shape(self, *args):
            return [args[-1][0]]

    class Renamed(Op2x):
        def infer_shape(self, fg, nd, shapes):
            return shapes

    class WithDefault(Op2x):  # a third parameter with a default: still the two-argument form
        def infer_shape(self, node, input_shapes, extra=None):
            assert extra is None
            return input_shapes

    assert takes_fgraph(Star()) and takes_fgraph(Renamed()) and not takes_fgraph(WithDefault())
    x = tg.dvector("x")
    for cls in (Star, Renamed, WithDefault):
        op = cls()
        node = op(x).owner
        assert op_infer_shape(op, node, [(5,)]) == [(5,)]


@pytest.mark.parametrize("cls", REPEATS, ids=lambda c: c.__name__)
def test_int_symbolic_and_failing_shape_rules(cls):
    x = tg.dmatrix("x")
    r = cls()(tg.sin(x))
    y = tg.tanh(r) * 2 + r.sum()
    cases = []
    for shape in [(3, 2), (1, 4), (5, 2), (0, 3)]:
        a = np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
        rr = np.concatenate([np.sin(a), np.sin(a)])
        cases.append(((a,), [np.tanh(rr) * 2 + rr.sum()]))
    _check([x], [y], cases)


@pytest.mark.parametrize("cls", REPEATS, ids=lambda c: c.__name__)
def test_gradient_through_the_op_plan(cls):
    """The planned shape of the op's output also sizes its gradient's slots (grad of a user op's consumer)."""
    x = tg.dvector("x")
    r = cls()(x * 3)
    cost = (r ** 2).sum()
    g = tg.grad(cost, r)
    cases = [((a,), [2 * np.concatenate([3 * a, 3 * a])]) for a in (np.arange(3.0), np.arange(6.0) - 2)]
    _check([x], [g], cases)


def test_value_dependent_symbolic_shape_falls_back_to_perform():
    x, k = tg.dvector("x"), tg.lscalar("k")
    h = Head()(x * 2, k)
    y = h + h.sum()
    cases = []
    for a, n in [(np.arange(5.0), 3), (np.arange(5.0), 5), (np.arange(4.0), 0), (np.arange(5.0), 2)]:
        hh = (2 * a)[:n]
        cases.append(((a, n), [hh + hh.sum()]))
    _check([x, k], [y], cases)


def test_value_dependent_shape_from_a_plan_time_value():
    """``k`` derived from shapes only: the plan knows its value, the symbolic rule evaluates statically."""
    x = tg.dvector("x")
    h = Head()(x, x.shape[0] - 1)
    cases = [((a,), [a[:-1]]) for a in (np.arange(4.0), np.arange(7.0))]
    _check([x], [h], cases)


def test_op_infer_shape_results():
    x = tg.dmatrix("x")
    for cls, want in [(RepeatIntExpr, [(6, 2)]), (RepeatSymbolic, [(6, 2)]), (RepeatSymbolicOfShapes, [(6, 2)]),
                      (RepeatWholeShapeVariable, [(6, 2)])]:
        op = cls()
        assert op_infer_shape(op, op(x).owner, [(3, 2)]) == want
    for cls in (RepeatNotImplemented, RepeatBroken, RepeatWrongRank):
        op = cls()
        with pytest.raises(NotImplementedError):
            op_infer_shape(op, op(x).owner, [(3, 2)])
    k = tg.lscalar("k")
    op = Head()
    node = op(tg.dvector("v"), k).owner
    with pytest.raises(NotImplementedError):  # needs k's value
        op_infer_shape(op, node, [(5,), ()])
    assert op_infer_shape(op, node, [(5,), ()], [None, np.asarray(3)]) == [(3,)]


def test_builtin_shape_errors_are_unchanged():
    a, b = tg.dvector("a"), tg.dvector("b")
    f = tg.function([a, b], a + b)
    with pytest.raises(ValueError):
        f(np.ones(2), np.ones(3))


@pytest.mark.parametrize("cls", [Op2x, RepeatSymbolic, RepeatBroken], ids=lambda c: c.__name__)
def test_fused_engine(cls):
    x = tg.dvector("x")
    y = tg.exp(cls()(x * 2)) + 1
    tape = build_tape([x], [y])
    ref = tg.function([x], y, device="python")
    for n in (3, 5):
        a = np.linspace(0.0, 1.0, n)
        got, _ = FusedCPUEngine(tape).run([a], [])
        np.testing.assert_allclose(got[0], ref(a), rtol=1e-15)


@pytest.mark.parametrize("cls", [Op2x, RepeatSymbolic, RepeatBroken], ids=lambda c: c.__name__)
def test_user_op_inside_a_scan_body(cls):
    x0 = tg.dvector("x0")
    traj, _ = tg.scan(lambda h: cls()(h).sum() + h[:2], outputs_info=x0, n_steps=3)
    outs = [traj, traj[-1] * 2]
    f_cpu, f_py = tg.function([x0], outs), tg.function([x0], outs, device="python")
    a = np.array([0.1, 0.2])
    for g, e in zip(f_cpu(a), f_py(a)):
        np.testing.assert_allclose(g, e, rtol=1e-14)


@pytest.mark.parametrize("cls", REPEATS, ids=lambda c: c.__name__)
def test_which_rules_plan_statically(cls):
    """Int and symbolic results plan once per shape signature; failing rules take the perform pre-pass."""
    x = tg.dmatrix("x")
    f = tg.function([x], cls()(x) * 2, tier="interp")
    np.testing.assert_array_equal(f(np.ones((2, 3))), np.full((4, 3), 2.0))
    static = cls in (RepeatIntExpr, RepeatSymbolic, RepeatSymbolicOfShapes, RepeatWholeShapeVariable)
    assert (not f._engine._dynamic) == static


def test_plan_time_value_makes_a_value_dependent_rule_static():
    x = tg.dvector("x")
    f = tg.function([x], Head()(x, x.shape[0] - 1), tier="interp")
    np.testing.assert_array_equal(f(np.arange(4.0)), [0.0, 1.0, 2.0])
    assert not f._engine._dynamic
    k = tg.lscalar("k")
    f = tg.function([x, k], Head()(x, k), tier="interp")
    np.testing.assert_array_equal(f(np.arange(4.0), 2), [0.0, 1.0])
    assert f._engine._dynamic


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_a_perform_of_the_wrong_dtype_raises_the_same_type_error_on_every_device(device):
    class Bad(tg.Op):
        def make_node(self, a):
            a = tg.as_tensor(a)
            return tg.Apply(self, [a], [a.type()])

        def perform(self, node, inputs, outputs):
            outputs[0][0] = (inputs[0] * 2).astype(np.float32)

    x = tg.dvector("x")
    f = tg.function([x], Bad()(x) + 1, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the cpu engine's note that a user op runs in Python)
        with pytest.raises(TypeError, match=r"Bad\.perform produced float32 with shape \(2,\) for .*whose type is "
                                            r"float64 with 1 dimension\(s\)"):
            f(np.ones(2))
