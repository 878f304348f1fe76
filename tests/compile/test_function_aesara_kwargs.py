"""Aesara's keywords of ``function`` and ``shared``, and input conversion of Python lists (ported code)."""

import numpy as np
import pytest

import tapegrad as tg


def test_a_function_of_updates_only_returns_an_empty_list():
    n = tg.shared(np.int64(0), name="n")
    f = tg.function([], updates=[(n, n + 1)])
    assert f() == [] and f() == []
    assert int(n.get_value()) == 2


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_allow_input_downcast_casts_like_astype(device):
    x = tg.fvector("x")
    f = tg.function([x], x * 2, device=device, allow_input_downcast=True)
    got = f(np.array([1.1, 2.0]))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([1.1, 2.0]).astype(np.float32) * np.float32(2))
    i = tg.ivector("i")
    np.testing.assert_array_equal(tg.function([i], i + 1, device=device, allow_input_downcast=True)([1.7, -2.2]),
                                  [2, -1])
    with pytest.raises(TypeError, match=r"input 0 \(x\).*float64"):
        tg.function([x], x * 2, device=device)(np.array([1.1, 2.0]))


def test_a_list_of_ints_into_an_int32_input_when_no_value_changes():
    i = tg.tensor("i", dtype="int32", shape=(None,))
    f = tg.function([i], i + 1)
    got = f([1, 2])
    assert got.dtype == np.int32 and got.tolist() == [2, 3]
    with pytest.raises(TypeError, match="int32"):
        f([1, 2**40])
    with pytest.raises(TypeError, match="int32"):
        f([1.0, 2.0])  # float to int raises even when exact (SPEC)


def test_mode_names_a_device_or_an_aesara_mode():
    x = tg.dvector("x")
    assert tg.function([x], x * 2, mode="python").device == "python"
    assert tg.function([x], x * 2, mode="FAST_RUN").device == tg.config.device
    assert tg.function([x], tg.log(x), mode="NanGuardMode").nan_guard is True
    with pytest.raises(ValueError, match="mode must be"):
        tg.function([x], x * 2, mode="FAST")
    f = tg.function([x], x * 2, no_default_updates=True, accept_inplace=False, rebuild_strict=True, profile=False)
    np.testing.assert_array_equal(f([1.0]), [2.0])


def test_shared_borrow_strict_and_allow_downcast():
    a = np.zeros(3)
    w = tg.shared(a, name="w", borrow=True)
    assert w.get_value(borrow=True) is a
    assert tg.shared(a, name="w2").get_value(borrow=True) is not a
    s = tg.shared(np.zeros(2), name="s", strict=True)
    with pytest.raises(TypeError, match="strict"):
        s.set_value([1.0, 2.0])
    s.set_value(np.ones(2))
    np.testing.assert_array_equal(s.get_value(), [1.0, 1.0])
    d = tg.shared(np.zeros(2, np.float32), name="d", allow_downcast=True)
    d.set_value(np.array([0.1, 0.2]))
    assert d.get_value().dtype == np.float32


def test_aesara_tensor_methods_round_take_repeat_diagonal_trace():
    x, i = tg.dmatrix("x"), tg.lvector("i")
    outs = [x.round(), x.take(i, axis=1), x.repeat(2, axis=0), x.diagonal(), x.trace(), x.diagonal(1)]
    xv = np.arange(9.0).reshape(3, 3) + 0.5
    want = [np.round(xv), xv.take([2, 0], axis=1), xv.repeat(2, axis=0), xv.diagonal(), xv.trace(), xv.diagonal(1)]
    for device in ("python", "cpu"):
        for a, b in zip(tg.function([x, i], outs, device=device)(xv, np.array([2, 0])), want):
            np.testing.assert_array_equal(a, b)
    g = tg.function([x], tg.grad(x.trace() + x.diagonal(1).sum(), x))(xv)
    np.testing.assert_array_equal(g, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_aesara_reduction_keywords():
    x = tg.fmatrix("x")
    xv = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    outs = [x.sum(acc_dtype="float64"), tg.sum(x, axis=0, acc_dtype="float64"), x.prod(no_zeros_in_input=True),
            x.var(axis=1, corrected=True), tg.std(x, ddof=1, corrected=True), x.mean(axis=0, dtype="float64")]
    got = tg.function([x], outs)(xv)
    want = [xv.sum(), xv.sum(axis=0), xv.prod(), xv.var(axis=1), xv.std(ddof=1), xv.mean(axis=0, dtype=np.float64)]
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(TypeError, match="acc_dtype"):
        x.sum(acc_dtype="complex128")


def test_stack_as_separate_arguments_and_roll_by_tuples():
    a, b = tg.dvector("a"), tg.dvector("b")
    x = tg.dmatrix("x")
    av, bv, xv = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.arange(12.0).reshape(3, 4)
    outs = [tg.stack(a, b), tg.stack([a, b], 1), tg.stack(a, b, axis=1), tg.roll(x, (1, -2), axis=(0, 1)),
            tg.roll(x, 1, axis=(0, 1)), tg.roll(x, (2, 1), axis=1)]
    got = tg.function([a, b, x], outs)(av, bv, xv)
    want = [np.stack([av, bv]), np.stack([av, bv], 1), np.stack([av, bv], axis=1),
            np.roll(xv, (1, -2), axis=(0, 1)), np.roll(xv, 1, axis=(0, 1)), np.roll(xv, (2, 1), axis=1)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="do not broadcast"):
        tg.roll(x, (1, 2, 3), axis=(0, 1))
