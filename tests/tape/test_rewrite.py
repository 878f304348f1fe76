"""Rewrites: CSE, constant folding, IEEE-safe simplification, dead code."""

import numpy as np
import pytest

from tapegrad.graph import constant, ivector, matrix, scalar, shared, vector
from tapegrad.compile.function import function
from tapegrad.ops import cast, exp, neg, sin, sqr
from tapegrad.registry import OpCode
from tapegrad.tape import rewrite
from tapegrad.tape.build import build_tape
from tapegrad.compile.reference import ReferenceEngine


def codes(*args, **kw):
    return list(build_tape(*args, **kw).codes)


def test_cse_merges_equal_ops_on_same_inputs():
    x = vector("x")
    y = exp(x) + exp(x)
    t = build_tape([x], [y])
    assert list(t.codes) == [OpCode.EXP, OpCode.ADD]
    assert list(t.instr_args(1)) == [1, 1] or t.instr_args(1)[0] == t.instr_args(1)[1]
    f = function([x], y, device="python")
    np.testing.assert_allclose(f([0.0, 1.0]), 2 * np.exp([0.0, 1.0]))


def test_cse_respects_op_params():
    x = vector("x", dtype="float64")
    t = build_tape([x], [cast(x, "float32"), cast(x, "int64"), cast(x, "float32")])
    assert len(t) == 2
    assert t.output_slots[0] == t.output_slots[2]


def test_equal_constants_merged_by_value_and_dtype():
    x = vector("x")
    y = x * constant(np.array([1.5, 2.5])) + x * constant(np.array([1.5, 2.5]))
    t = build_tape([x], [y])
    assert len(t.consts) == 1 and len(t) == 2  # mul CSE'd once the constants merge
    z = x * constant(np.float64(2.0)) + x * constant(np.float32(2.0))
    assert len(build_tape([x], [z]).consts) == 2


def test_negative_zero_constant_not_merged_with_zero():
    x = vector("x")
    t = build_tape([x], [x * constant(0.0), x * constant(-0.0)])
    assert len(t.consts) == 2 and len(t) == 2


def test_constant_folding():
    x = vector("x")
    c = constant(np.array([0.0, 1.0]))
    y = x + exp(c) * 2.0
    t = build_tape([x], [y])
    assert list(t.codes) == [OpCode.ADD]
    np.testing.assert_allclose(t.consts[0], np.exp([0.0, 1.0]) * 2.0)
    assert not t.consts[0].flags.writeable


def test_constant_only_output_folds_to_a_constant():
    f = function([], exp(constant(1.0)), device="python")
    assert len(f.tape) == 0
    out = f()
    assert out == np.exp(1.0)
    out[...] = 5.0  # a fresh array: the tape's constant is untouched
    assert f() == np.exp(1.0)


def test_no_folding_of_huge_results(monkeypatch):
    monkeypatch.setattr(rewrite, "FOLD_LIMIT", 10)
    x = vector("x")
    big = constant(np.arange(20.0))
    assert codes([x], [x + exp(big)]) == [OpCode.EXP, OpCode.ADD]
    small = constant(np.arange(5.0))
    assert codes([x], [x + exp(small)]) == [OpCode.ADD]


def test_no_folding_when_perform_fails():
    # the failing node stays; the error happens at run time with context
    a, b = constant(np.ones(2)), constant(np.ones(3))
    from tapegrad.ops.broadcast import sum_like

    x = vector("x")
    t = build_tape([x], [x + sum_like(a, b)])
    assert list(t.codes) == [OpCode.SUM_LIKE, OpCode.ADD]


def test_mul_one_div_one_sub_zero_dropped():
    x = vector("x")
    for y in (x * 1.0, 1.0 * x, x / 1.0, x - 0.0, x * constant(np.ones(1))):
        t = build_tape([x], [y])
        assert len(t) == 0 and list(t.output_slots) == [0], y


def test_add_zero_integer_dropped_float_kept_for_signed_zero():
    i = ivector("i")
    assert codes([i], [i + 0]) == []
    x = vector("x")
    assert codes([x], [x + 0.0]) == [OpCode.ADD]  # -0.0 + 0.0 == +0.0
    assert codes([x], [x + constant(-0.0)]) == []
    f = function([x], x + 0.0, device="python")
    assert not np.signbit(f([-0.0]))[0]
    g = function([x], x - 0.0, device="python")
    assert np.signbit(g([-0.0]))[0]


def test_simplification_keeps_dtype_and_shape():
    i = ivector("i")
    assert codes([i], [i * 1.0]) == [OpCode.MUL]  # int * float -> float64
    x = vector("x")
    assert codes([x], [x * constant(np.ones(3))]) == [OpCode.MUL]  # may broadcast x from length 1
    assert codes([x], [x * constant(np.ones((1, 1)))]) == [OpCode.MUL]  # adds a dimension
    s = scalar("s")
    assert codes([s], [s * constant(np.ones(()))]) == []
    f32 = vector("f", dtype="float32")
    assert codes([f32], [f32 * 1.0]) == []  # weak Python scalar keeps float32


def test_double_neg_and_cast_to_own_dtype():
    x = vector("x")
    assert codes([x], [neg(neg(x))]) == []
    assert codes([x], [neg(neg(neg(x)))]) == [OpCode.NEG]
    from tapegrad.ops.elemwise import Cast

    assert codes([x], [Cast("float64")(x)]) == []
    i = ivector("i")
    assert codes([i], [neg(neg(i))]) == []
    with pytest.raises(TypeError, match="boolean negative"):  # -bool is refused, as NumPy (was bool -> int64)
        neg(neg(i > 0))


@pytest.mark.parametrize("build", [lambda x: x * 0.0, lambda x: x - x, lambda x: x / x, lambda x: 0.0 * x])
def test_ieee_unsafe_folds_never_happen(build):
    x = vector("x")
    f = function([x], build(x), device="python")
    assert len(f.tape) == 1
    v = np.array([np.nan, np.inf, 1.0])
    with np.errstate(all="ignore"):
        expect = build(v) if not isinstance(build(v), type(x)) else None
    out = f(v)
    assert np.isnan(out[0]) and np.isnan(out[1])
    np.testing.assert_array_equal(out, expect)


def test_dead_code_removed():
    x = vector("x")
    w = shared(np.zeros(2), name="w")
    y = exp(x)
    unused = sin(y) * w  # noqa: F841
    t = build_tape([x], [y])
    assert list(t.codes) == [OpCode.EXP]
    assert len(t.shared) == 0
    # a node made dead by simplification disappears too
    assert codes([x], [neg(neg(x))]) == []  # the inner neg is dropped with the outer one
    assert codes([x], [sqr(x) * 1.0 + neg(neg(x)) * 0.0]) == [OpCode.SQR, OpCode.MUL, OpCode.ADD]


def test_function_tape_shrinks_and_agrees_with_unrewritten():
    x, W = vector("x"), matrix("W")
    e = exp(x)
    y = (e * 1.0 + neg(neg(e))) * (constant(2.0) * constant(3.0)) + W - 0.0
    f = function([x, W], y, device="python")
    t0 = build_tape([x, W], [y], rewrite=False)
    assert len(t0) == 9 and len(f.tape) == 4
    from tapegrad.compile.reference import ReferenceEngine

    xv, Wv = np.array([0.5, -1.0]), np.arange(4.0).reshape(2, 2)
    np.testing.assert_allclose(f(xv, Wv), ReferenceEngine(t0).run([xv, Wv], [])[0][0])
    np.testing.assert_allclose(f(xv, Wv), 12 * np.exp(xv) + Wv)


def _bits(a):
    a = np.asarray(a)
    return a.view(f"u{a.itemsize}")


SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-310, -5e-324, 1e200, -1e200, 3.0, -2.5, 1.7976931348623157e308]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pow_one_is_dropped_and_pow_two_is_sqr_bit_for_bit(dtype):
    from tapegrad.ops import power

    x = vector("x", dtype=dtype)
    c = lambda v: constant(np.asarray(v, dtype=dtype))  # noqa: E731
    assert codes([x], [power(x, c(1.0))]) == []
    assert codes([x], [power(x, c(2.0))]) == [OpCode.SQR]
    assert codes([x], [power(x, constant(np.ones((1,), dtype)))]) == []
    assert codes([x], [power(x, constant(np.full((1,), 2.0, dtype)))]) == [OpCode.SQR]
    rng = np.random.default_rng(3)
    with np.errstate(all="ignore"):
        v = np.concatenate([SPECIALS, rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)]).astype(dtype)
    for e in (1.0, 2.0):
        y = power(x, c(e))
        want, _ = ReferenceEngine(build_tape([x], [y], rewrite=False)).run([v], [])
        for device in ("python", "cpu"):
            got = function([x], y, device=device)(v)
            np.testing.assert_array_equal(_bits(got), _bits(want[0]), err_msg=f"{dtype} {e} {device}")


def test_pow_rewrites_keep_dtype_shape_and_ieee_unsafe_cases():
    from tapegrad.ops import power

    x = vector("x")
    i = ivector("i")
    assert codes([i], [power(i, constant(np.asarray(2, "int64")))]) == [OpCode.SQR]
    assert codes([i], [power(i, constant(np.asarray(1, "int64")))]) == []
    assert codes([i], [power(i, 2.0)]) == [OpCode.POW]  # int ** float -> float64: not sqr(i)
    assert codes([x], [power(x, constant(np.full(3, 2.0)))]) == [OpCode.POW]  # may broadcast x
    assert codes([x], [power(x, constant(np.full((1, 1), 2.0)))]) == [OpCode.POW]  # adds a dimension
    assert codes([x], [power(x, 0.5)]) == [OpCode.POW]  # not sqrt: -0.0 and -inf differ
    assert codes([x], [power(x, 3.0)]) == [OpCode.POW]
    assert codes([x], [power(x, 2.0)], rewrite=False) == [OpCode.POW]
    f = function([x], power(x, 0.5), device="python")
    v = np.array([-0.0, -np.inf, 4.0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(_bits(f(v)), _bits(np.power(v, 0.5)))


def test_rosenbrock_grad_tape_shrinks():
    import tapegrad as tg

    x = vector("x")
    f = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = tg.grad(f, x)
    t0, t1 = build_tape([x], [f, g], rewrite=False), build_tape([x], [f, g])
    assert OpCode.POW in list(t0.codes) and OpCode.POW not in list(t1.codes)
    assert list(t1.codes).count(OpCode.SQR) == 3
    v = np.linspace(-1.5, 2.0, 7)
    want, _ = ReferenceEngine(t0).run([v], [])
    got, _ = ReferenceEngine(t1).run([v], [])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_switch_with_a_constant_condition_and_a_size_one_constant_branch_is_the_taken_branch():
    import tapegrad as tg

    x, m = tg.dvector("x"), tg.dmatrix("m")
    f = tg.function([x], [tg.switch(1.0, x, 0.0), tg.switch(0, x, 2.0), tg.switch(1, 2.0, x)])
    assert len(f.tape) == 2  # the two that broadcast a constant; the first is x itself
    got = f(np.array([1.0, np.nan]))
    np.testing.assert_array_equal(got[0], [1.0, np.nan])
    np.testing.assert_array_equal(got[1], [2.0, 2.0])
    assert tg.function([x, m], tg.switch(1, x, m))(np.ones(2), np.zeros((3, 2))).shape == (3, 2)
    # the gradient of a switch of a constant condition has no switch left
    g = tg.function([x], tg.grad(tg.sum(tg.switch(1.0, x * x, 0.0)), x))
    assert "switch" not in str(g.tape)
    np.testing.assert_array_equal(g(np.array([3.0])), [6.0])
