"""The program tier's workspace, BLAS into preallocated buffers, and the vectorisable tanh of generated loops.

Large intermediates (``WS_MIN`` elements or more) of a program live in a per-thread workspace passed to the
generated function, at offsets that reuse memory between buffers whose lifetimes do not overlap.  These tests
check that results never alias the workspace, that concurrent calls from several threads stay independent,
and that the numbers match the python engine.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.compile import program_gen, program_ir
from tapegrad.compile.vmath import v_tanh

RNG = np.random.default_rng(11)


def _mlp():
    X, Y, W1, W2 = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dmatrix("W1"), tg.dmatrix("W2")
    b1, b2 = tg.dvector("b1"), tg.dvector("b2")
    H = tg.tanh(tg.dot(X, W1) + b1)
    loss = tg.sum((tg.dot(H, W2) + b2 - Y) ** 2) / 128.0
    return [X, Y, W1, b1, W2, b2], [loss, *tg.grad(loss, [W1, b1, W2, b2])]


def _mlp_args(rng, n=128, d=64, h=64, o=3):
    return [rng.standard_normal((n, d)), rng.standard_normal((n, o)), rng.standard_normal((d, h)) / 8,
            0.1 * rng.standard_normal(h), rng.standard_normal((h, o)) / 8, 0.1 * rng.standard_normal(o)]


def _close(got, ref):
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12 * max(1, np.abs(b).max()))


def _close_as(got, ref, dtype):
    """Same dtypes and shapes; values to 1e-12 (float64) or 1e-5 (float32), NaN where the reference has NaN."""
    tol = 1e-12 if dtype == "float64" else 1e-5
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol, equal_nan=True)


def _program(f):
    (prog,) = [p for p in f._engine._programs.values()]
    assert prog is not False, f._engine.program_error
    return prog


def test_mlp_gradients_use_the_workspace_and_results_are_fresh_arrays():
    ins, outs = _mlp()
    args = _mlp_args(RNG)
    ref = tg.function(ins, outs, device="python")(*args)
    f = tg.function(ins, outs, device="cpu", tier="program")
    got = f(*args)
    _close(got, ref)
    prog = _program(f)
    src = prog.program.source
    assert "w_float64" in src and "np.dot(" in src and ", b" in src  # BLAS writes straight into buffers
    (dt, size), = prog.program.workspace_spec
    assert dt == np.float64 and size >= program_ir.WS_MIN
    (w,) = prog.workspace()
    assert w.size == size and w.ctypes.data % 4096 == 0 and prog.workspace()[0] is w  # page-aligned, kept
    kept = [np.array(g, copy=True) for g in got]
    for g in got[1:]:
        g[...] = 12345.0  # results belong to the caller: scribbling on them changes nothing inside
    again = f(*[a * 1.5 for a in args])
    for g, k in zip(got[1:], kept[1:]):
        assert np.all(g == 12345.0)
    ref2 = tg.function(ins, outs, device="python")(*[a * 1.5 for a in args])
    _close(again, ref2)
    _close(f(*args), ref)


def test_workspace_windows_are_reused_between_buffers_that_do_not_overlap_in_time():
    x = tg.dmatrix("x")
    y = x
    for _ in range(6):  # six 64x64 intermediates in a chain: at most three are alive at once
        y = tg.tanh(tg.dot(y, x))
    f = tg.function([x], [tg.sum(y)], device="cpu", tier="program")
    a = RNG.standard_normal((64, 64)) / 8
    np.testing.assert_allclose(f(a), tg.function([x], [tg.sum(y)], device="python")(a), rtol=1e-12)
    (_, size), = _program(f).program.workspace_spec
    assert size < 6 * 64 * 64


def test_concurrent_calls_from_threads_have_their_own_workspace():
    ins, outs = _mlp()
    f = tg.function(ins, outs, device="cpu", tier="program")
    py = tg.function(ins, outs, device="python")
    rngs = [np.random.default_rng(100 + t) for t in range(4)]
    cases = [_mlp_args(r) for r in rngs]
    refs = [py(*c) for c in cases]
    f(*cases[0])  # compile once
    errors = []

    def work(t):
        try:
            for _ in range(20):
                _close(f(*cases[t]), refs[t])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def test_njit_entry_allocates_its_own_workspace():
    numba = pytest.importorskip("numba")
    ins, outs = _mlp()
    f = tg.function(ins, outs, device="cpu", tier="program")
    args = _mlp_args(RNG)
    entry = f.as_njit(*args)

    @numba.njit
    def twice(e, a0, a1, a2, a3, a4, a5):
        r = e(a0, a1, a2, a3, a4, a5)
        s = e(a0, a1, a2 * 2.0, a3, a4, a5)
        return r[0], s[0]

    l1, l2 = twice(entry, *args)
    py = tg.function(ins, outs, device="python")
    assert l1 == pytest.approx(float(py(*args)[0]), rel=1e-12)
    args2 = list(args)
    args2[2] = args[2] * 2.0
    assert l2 == pytest.approx(float(py(*args2)[0]), rel=1e-12)


# ---------------------------------------------------------------------------------------------- tanh
def _ulps(got, ref):
    return np.abs(got - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(np.float64).tiny))


@pytest.mark.parametrize("scale", [1e-300, 1e-8, 0.01, 0.3, 1.0, 3.0, 10.0, 30.0])
def test_vectorisable_tanh_is_within_3_ulp_of_libm(scale):
    x = np.random.default_rng(3).standard_normal(20000) * scale
    got = np.array([v_tanh(v) for v in x[:2000]])
    assert _ulps(got, np.tanh(x[:2000])).max() <= 3.0


def test_vectorisable_tanh_special_values():
    for v, want in [(0.0, 0.0), (np.inf, 1.0), (-np.inf, -1.0), (19.5, 1.0), (-700.0, -1.0), (5e-324, 5e-324)]:
        assert v_tanh(v) == want
    assert np.signbit(v_tanh(-0.0)) and v_tanh(-0.0) == 0.0
    assert np.isnan(v_tanh(np.nan))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tanh_in_a_program_loop_matches_the_python_engine(dtype):
    x = tg.vector("x", dtype=dtype)
    y = tg.tanh(x) * 2.0
    f = tg.function([x], [y, tg.grad(tg.sum(y), x)], device="cpu", tier="program")
    a = (np.random.default_rng(5).standard_normal(5000) * 4).astype(dtype)
    a[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 25.0]
    ref = tg.function([x], [y, tg.grad(tg.sum(y), x)], device="python")(a)
    got = f(a)
    assert "s_tanh" in _program(f).program.source
    _close_as(got, ref, dtype)
    assert np.signbit(got[0][1])


# ------------------------------------------------------------------------------- literal folding
def test_power_zero_and_ops_of_literals_fold_to_literals_with_numpy_semantics():
    x, y = tg.dvector("x"), tg.dvector("y")
    out = (x ** 0) * y + tg.constant(2.0) * tg.constant(3.0)
    f = tg.function([x, y], [out], device="cpu", tier="program")
    a = np.array([np.nan, np.inf, -np.inf, 0.0, 2.0])
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(f(a, b)[0], b + 6.0)
    src = _program(f).program.source
    assert "s_power" not in src and "pow" not in src.split("def program")[1]


def test_hvp_azmul_by_folded_literals_is_a_product_and_stays_exact():
    x, v = tg.dvector("x"), tg.dvector("v")
    c = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    hv = tg.hessian_vector_product(c, x, v)
    f = tg.function([x, v], [hv], device="cpu", tier="program")
    a, b = RNG.standard_normal(6000), RNG.standard_normal(6000)
    np.testing.assert_allclose(f(a, b)[0], tg.function([x, v], [hv], device="python")(a, b)[0], rtol=1e-12, atol=1e-9)
    segments = _program(f).program.source.split("for p in range(")
    middle = max(segments, key=len)  # the interior positions, where all three windows are active
    # v times x-terms only (the seed's ones and x ** 0 became literals, and azmul by a literal is a product)
    assert middle.count("s_azmul(") <= 5


@pytest.mark.parametrize("n_out", [1, 2, 5, 16, 17])
def test_thin_matrix_products_computed_transposed_match_python(n_out, monkeypatch):
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)  # (threaded: every product on the own kernel)
    A, B, C = tg.dmatrix("A"), tg.dmatrix("B"), tg.dmatrix("C")
    P = tg.dot(A, B)  # 200 x n_out: thin when 1 < n_out <= 16
    Q = tg.dot(A.T, C)  # 30 x n_out
    cost = tg.sum(tg.tanh(P) ** 2) + tg.sum(Q * Q)
    outs = [P, Q, *tg.grad(cost, [A, B, C])]
    a, b, c = RNG.standard_normal((200, 30)), RNG.standard_normal((30, n_out)), RNG.standard_normal((200, n_out))
    f = tg.function([A, B, C], outs, device="cpu", tier="program")
    _close(f(a, b, c), tg.function([A, B, C], outs, device="python")(a, b, c))
    src = _program(f).program.source
    assert ("np.ascontiguousarray((" in src) == (1 < n_out <= 16)


# ------------------------------------------------------- random programs big enough for the workspace
_STEPS = ["tanh", "mul_y", "add_v", "dot_w", "sq_neg_exp", "center", "roll", "sub_prev"]


def _chain(steps):
    X, Y, W, v = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dmatrix("W"), tg.dvector("v")
    h, prev = X, X
    for s in steps:
        h, prev = {
            "tanh": lambda: tg.tanh(h),
            "mul_y": lambda: h * Y,
            "add_v": lambda: h + v,
            "dot_w": lambda: tg.dot(h, W) / 8.0,
            "sq_neg_exp": lambda: tg.exp(-(h ** 2)),
            "center": lambda: h - tg.mean(h, axis=0),
            "roll": lambda: tg.concatenate([h[1:], h[:1]], axis=0),
            "sub_prev": lambda: h - 0.5 * prev,
        }[s](), h
    cost = tg.sum(h * h) + tg.sum(tg.dot(h.T, Y) ** 2) / 64.0
    return [X, Y, W, v], [cost, h, *tg.grad(cost, [X, W, v], disconnected_inputs="ignore")]


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_STEPS), min_size=2, max_size=6), st.integers(0, 2**16))
def test_random_programs_with_workspace_windows_match_python(steps, seed):
    ins, outs = _chain(steps)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((64, 80)), rng.standard_normal((64, 80)), rng.standard_normal((80, 80)),
            rng.standard_normal(80)]
    f = tg.function(ins, outs, device="cpu", tier="program")
    ref = tg.function(ins, outs, device="python")(*args)
    got = f(*args)
    assert "w_float64" in _program(f).program.source
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-10, atol=1e-10 * max(1.0, np.abs(r).max()))
    _close(f(*args), ref)  # again, through the fast path, with the workspace reused


@pytest.mark.parametrize("tier", ["interp", "fused", "program"])
def test_join_gradient_splits_by_plan_time_sizes_on_every_tier(tier):
    a, b = tg.dmatrix("a"), tg.dmatrix("b")
    j = tg.concatenate([tg.tanh(a), b * 2.0], axis=1)
    cost = tg.sum(j ** 3)
    outs = [j, *tg.grad(cost, [a, b])]
    x, y = RNG.standard_normal((70, 3)), RNG.standard_normal((70, 5))
    f = tg.function([a, b], outs, device="cpu", tier=tier)
    _close(f(x, y), tg.function([a, b], outs, device="python")(x, y))
    assert not f._engine._dynamic  # the split sizes are stack(shape_i(a), shape_i(b)): known at plan time
    if tier == "program":
        _program(f)
    _close(f(x[:7], y[:7]), tg.function([a, b], outs, device="python")(x[:7], y[:7]))


@pytest.mark.parametrize("axis", [-1, 0, (0, 2), None])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_family_runs_in_the_program_with_numpy_semantics(axis, dtype):
    x = tg.tensor("x", dtype=dtype, shape=(None, None, None))
    y = tg.softmax(x, axis=axis)
    ly = tg.log_softmax(x, axis=axis)
    w = tg.constant(np.linspace(-1.0, 1.0, 5).astype(dtype))
    cost = tg.sum(y * w) + tg.sum(ly * w * w)
    outs = [y, ly, tg.grad(cost, x)]
    a = np.random.default_rng(9).standard_normal((3, 4, 5)).astype(dtype) * 3
    a[0, 0, :] = [np.inf, 1.0, 2.0, -np.inf, 0.0]  # a slice with +inf and -inf
    a[1, 2, 1] = np.nan
    f = tg.function([x], outs, device="cpu", tier="program")
    got, ref = f(a), tg.function([x], outs, device="python")(a)
    _program(f)
    _close_as(got, ref, dtype)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_max_min_gradients_go_to_the_first_extremum_in_the_program(axis):
    x = tg.dtensor3("x")
    cost = tg.sum(tg.max(x, axis=axis) * 2.0) + tg.sum(tg.min(x, axis=axis))
    outs = [tg.grad(cost, x)]
    a = np.round(np.random.default_rng(4).standard_normal((3, 4, 5)))  # many ties
    a[2, 1, 3] = np.nan
    a[0, 0, 0] = np.inf
    f = tg.function([x], outs, device="cpu", tier="program")
    got, ref = f(a), tg.function([x], outs, device="python")(a)
    assert "extremum_mask" not in str(f._engine.program_error or "")
    _program(f)
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logsumexp_runs_in_the_program_with_numpy_semantics(axis, keepdims, dtype):
    x = tg.tensor("x", dtype=dtype, shape=(None, None, None))
    y = tg.logsumexp(x, axis=axis, keepdims=keepdims)
    outs = [y, tg.grad(tg.sum(y * 1.5), x)]
    a = (np.random.default_rng(2).standard_normal((4, 3, 6)) * 5).astype(dtype)
    a[1, 1, :] = -np.inf
    a[2, 0, 2] = np.inf
    f = tg.function([x], outs, device="cpu", tier="program")
    got, ref = f(a), tg.function([x], outs, device="python")(a)
    _program(f)
    _close_as(got, ref, dtype)


def test_float32_softmax_over_long_slices_sums_in_float64():
    x = tg.fmatrix("x")
    outs = [tg.softmax(x, axis=1), tg.logsumexp(x, axis=1)]
    a = np.random.default_rng(5).standard_normal((3, 50000)).astype("float32")
    f = tg.function([x], outs, device="cpu", tier="program")
    got = f(a)
    _program(f)
    a64 = a.astype(np.float64)
    s = np.exp(a64 - a64.max(1, keepdims=True))
    np.testing.assert_allclose(got[0], s / s.sum(1, keepdims=True), rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(got[1], np.log(np.exp(a64).sum(1)), rtol=2e-6)
