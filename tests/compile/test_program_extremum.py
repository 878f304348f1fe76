"""``max``/``min`` over an innermost axis in the program tier: a row's extremum is a local compare-and-select with a
NaN flag beside it (``_extremum_into``).  It must give what NumPy gives: NaN when a row has one, ``-inf``/``inf``
rows, the earlier of tied signed zeros, integers, and several reduced axes (the row's value combined with the
buffer); softmax and logsumexp shift by the same row max."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(5)


def _special(shape, dtype):
    a = RNG.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1, shape[-1])
    flat[0, 3] = np.nan  # a NaN in the middle of a row
    flat[1, :] = -np.inf  # a row of -inf
    flat[2, :] = np.inf
    flat[3, :] = 0.0
    flat[3, ::2] = -0.0  # tied signed zeros: the first one wins
    flat[4, -1] = np.nan  # a NaN last
    return a


def _same(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("which", ["max", "min"])
@pytest.mark.parametrize("axis", [-1, (0, 2), None])
def test_extremum_over_the_innermost_axis_matches_numpy(dtype, which, axis):
    x = tg.tensor(dtype=dtype, shape=(None, None, None))
    y = getattr(tg, which)(x, axis=axis)
    xv = _special((6, 3, 37), dtype)
    f = tg.function([x], y, tier="program")
    got = f(xv)
    assert f._engine._programs and next(iter(f._engine._programs.values())).ready()
    _same(got, getattr(np, which)(xv, axis=axis))
    _same(got, tg.function([x], y, device="python")(xv))
    if axis == -1:
        src = next(iter(f._engine._programs.values())).program.source
        assert " != v" in src and (" > r" in src if which == "max" else " < r" in src), src


def test_integer_row_max_and_min():
    x = tg.tensor(dtype="int64", shape=(None, None))
    xv = RNG.integers(-50, 50, (9, 23))
    xv[0, :] = np.iinfo(np.int64).min
    xv[1, :] = np.iinfo(np.int64).max
    f = tg.function([x], [tg.max(x, axis=1), tg.min(x, axis=1)], tier="program")
    got = f(xv)
    _same(got[0], xv.max(axis=1))
    _same(got[1], xv.min(axis=1))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_and_logsumexp_rows_with_nan_and_inf_match_python(dtype):
    x = tg.tensor(dtype=dtype, shape=(None, None))
    xv = _special((8, 19), dtype)
    outs = [tg.softmax(x, axis=-1), tg.logsumexp(x, axis=-1)]
    ref = tg.function([x], outs, device="python")(xv)
    with np.errstate(all="ignore"):
        got = tg.function([x], outs, tier="program")(xv)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == "float64" else 1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("which", ["max", "min"])
@pytest.mark.parametrize("axis", [-1, (1, 2), 1, None])
def test_gradient_of_an_extremum_marks_the_first_one(dtype, which, axis):
    """The gradient of ``max`` goes to each group's first extremum in C order (the first NaN of a row with one).
    Over trailing axes the program searches each row for the already computed extremum and stops there
    (``_mask_from_extremum``); over others it keeps a running best (``_first_extremum``): the same mask."""
    x = tg.tensor(dtype=dtype, shape=(None, None, None))
    y = tg.sum(getattr(tg, which)(x, axis=axis) * 3.0)
    xv = _special((6, 3, 37), dtype)
    xv[5, 1, :5] = xv[5, 1, 7]  # ties: the first of them gets the gradient
    outs = [y, tg.grad(y, x)]
    f = tg.function([x], outs, tier="program")
    got = f(xv)
    (prog,) = f._engine._programs.values()
    assert prog.ready()
    want = tg.function([x], outs, device="python")(xv)
    _same(got[1], want[1])
    assert float(np.sum(got[1] != 0)) == float(np.sum(want[1] != 0))
    src = prog.program.source
    assert ("break" in src) == (axis in (-1, (1, 2), None)), src


def test_gradient_of_a_row_max_with_equal_values():
    x = tg.tensor(dtype="float64", shape=(None, None))
    y = tg.sum(tg.max(x, axis=1) ** 2)
    xv = np.ones((4, 9))
    xv[2] = -np.inf
    got = tg.function([x], tg.grad(y, x), tier="program")(xv)
    want = np.zeros_like(xv)
    want[:, 0] = 2 * xv[:, 0]
    np.testing.assert_array_equal(got, want)
