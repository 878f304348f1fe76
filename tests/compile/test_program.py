"""The program tier (tapegrad/compile/program.py): one generated Numba function per tape and shape signature.

Every case runs ``tier="program"`` against ``device="python"`` and checks that
the program really ran (``engine._programs`` holds it, no fallback) — or, for
tapes with an instruction that has no template, that the engine fell back to
the interpreter with the same results.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile import program as P

RNG = np.random.default_rng(7)


def _close(a, b, dtype="float64"):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if a.dtype.kind == "f":
        tol = 1e-12 if a.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b), initial=0))))
    else:
        np.testing.assert_array_equal(a, b)


def _run(inputs, outputs, *args, expect_program=True):
    ref = tg.function(inputs, outputs, device="python")(*args)
    f = tg.function(inputs, outputs, device="cpu", tier="program")
    got = f(*args)
    progs = list(f._engine._programs.values())
    if expect_program:
        assert progs and progs[0] is not False, f"no program: {f._engine.program_error!r}"
        assert progs[0].ready()
    else:
        assert progs == [False]
        assert isinstance(f._engine.program_error, P.Unsupported)
    ref_l = ref if isinstance(ref, list) else [ref]
    got_l = got if isinstance(got, list) else [got]
    assert len(ref_l) == len(got_l)
    for a, b in zip(got_l, ref_l):
        _close(a, b)
    again = f(*args)  # the fast path (second call) gives the same
    for a, b in zip(again if isinstance(again, list) else [again], ref_l):
        _close(a, b)
    return f


def rosen(x):
    return tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("n", [2, 3, 50])
def test_rosenbrock_grad_and_hvp(n):
    x, v = tg.dvector("x"), tg.dvector("v")
    c = rosen(x)
    xv, vv = RNG.uniform(-1.5, 1.5, n), RNG.standard_normal(n)
    f = _run([x], [c, tg.grad(c, x)], xv)
    src = next(iter(f._engine._programs.values())).program.source
    # one pass over the gradient's positions (segments at the window edges), no temporary, no second loop
    assert not re.search(r"\] (\+= |= radd\(.*, )w\d+\[", src) and src.count("for p in range(") == (2 if n == 2 else 3)
    _run([x, v], [tg.hessian_vector_product(c, x, v)], xv, vv)


def test_small_value_and_grad_is_one_loop_and_fast_path_returns_fresh_arrays():
    x = tg.dvector("x")
    c = tg.sum(tg.sin(x) * tg.exp(-(x ** 2)))
    xv = RNG.standard_normal(10)
    f = _run([x], [c, tg.grad(c, x)], xv)
    src = next(iter(f._engine._programs.values())).program.source
    assert src.count("for i in range(10)") == 1
    assert f._fast is not None
    a = f(xv)
    b = f(xv)
    assert a[1] is not b[1] and not np.shares_memory(a[1], b[1]) and not np.shares_memory(a[1], xv)
    assert a[0].shape == () and isinstance(a[0], np.ndarray)
    # a different shape or a non-contiguous argument leaves the fast path and is still right
    big = RNG.standard_normal(20)
    ref = tg.function([x], [c, tg.grad(c, x)], device="python")
    for arg in (big, big[::2], list(xv)):
        for u, w in zip(f(arg), ref(arg)):
            _close(u, w)


def test_reductions_over_axes_and_broadcasting():
    X = tg.dmatrix("X")
    r = tg.dvector("r")
    y = tg.tanh(X * r + 1.0)
    outs = [tg.sum(y, axis=0), tg.sum(y, axis=1, keepdims=True), tg.mean(y), tg.mean(y, axis=1),
            tg.grad(tg.sum(tg.sum(y, axis=0) ** 2), [X, r])[1]]
    _run([X, r], outs, RNG.standard_normal((4, 3)), RNG.standard_normal(3))


def test_dot_matmul_transposes_and_grads():
    A, B, x = tg.dmatrix("A"), tg.dmatrix("B"), tg.dvector("x")
    y = tg.dot(A, x)
    z = tg.matmul(A.T, B)
    cost = tg.sum(tg.tanh(y) ** 2) + tg.sum(z * z) + tg.dot(x, x)
    _run([A, B, x], [y, z, cost, *tg.grad(cost, [A, B, x])],
         RNG.standard_normal((5, 4)), RNG.standard_normal((5, 3)), RNG.standard_normal(4))


def test_dot_of_a_literal_cotangent_runs_in_the_program():
    A, B = tg.dmatrix("A"), tg.dmatrix("B")
    c = tg.sum(tg.dot(A, B.T))  # the cotangent of the product is a literal (ones): BLAS gets a filled array
    f = _run([A, B], [c, *tg.grad(c, [A, B])], RNG.standard_normal((6, 4)), RNG.standard_normal((5, 4)))
    (prog,) = f._engine._programs.values()
    assert "[:] = (np.float64(1.0))" in prog.program.source


def test_gradient_modifiers_are_identities_in_the_program():
    x = tg.dvector("x")
    outs = [tg.zero_grad(x) * 2.0, tg.disconnected_grad(x) + 1.0, tg.grad_clip(x, -0.5, 0.5),
            tg.grad_scale(x, 3.0)]
    c = tg.sum(tg.grad_clip(x, -0.5, 0.5) ** 2) + tg.sum(tg.grad_scale(x, 3.0) ** 2) + tg.sum(tg.zero_grad(x) * x)
    _run([x], [*outs, c, tg.grad(c, x)], RNG.standard_normal(7))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_integer_array_indexing_and_its_gradients_run_in_the_program(dtype):
    X, Y = tg.matrix("X", dtype=dtype), tg.matrix("Y", dtype=dtype)
    idx = tg.lvector("idx")
    rows = X[idx]  # take along axis 0, repeats and negative indices
    cols = tg.take(X, idx, axis=1)
    inc = tg.inc_subtensor(X[idx], Y)  # repeats accumulate
    put = tg.set_subtensor(X[idx], Y)  # the last repeat wins
    c = tg.sum(tg.tanh(rows) * Y) + tg.sum(cols ** 2) + tg.sum(put * inc)
    ins, outs = [X, Y, idx], [rows, cols, inc, put, c, *tg.grad(c, [X, Y])]
    args = [RNG.standard_normal((5, 5)).astype(dtype), RNG.standard_normal((6, 5)).astype(dtype),
            np.array([0, 3, -1, 3, 2, 3])]
    ref = tg.function(ins, outs, device="python")(*args)
    f = tg.function(ins, outs, device="cpu", tier="program")
    got = f(*args)
    assert f._engine._programs and list(f._engine._programs.values())[0] is not False, f._engine.program_error
    for a, b in zip(got, ref):
        _close(a, b)
    np.testing.assert_array_equal(got[3][3], args[1][5])  # index 3 repeats at positions 1, 3, 5: the last wins


def test_integer_array_index_out_of_range_raises_index_error_in_the_program():
    x, idx = tg.dvector("x"), tg.lvector("idx")
    f = tg.function([x, idx], [x[idx] * 2.0], device="cpu", tier="program")
    np.testing.assert_array_equal(f(np.arange(4.0), np.array([3, -4]))[0], [6.0, 0.0])
    assert list(f._engine._programs.values())[0] is not False
    # the generated code detects it; the interpreter then raises it with the reference engine's message
    with pytest.raises(IndexError, match="index 4 is out of bounds for axis 0 of .* with length 4"):
        f(np.arange(4.0), np.array([1, 4]))
    with pytest.raises(IndexError, match="index -5 is out of bounds"):
        f(np.arange(4.0), np.array([-5, 0]))
    np.testing.assert_array_equal(f(np.arange(4.0), np.array([2]))[0], [4.0])  # still on the program
    assert list(f._engine._programs.values())[0] is not False


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cumulative_ops_and_prod_run_in_the_program(dtype):
    X = tg.tensor3("X", dtype=dtype)
    k = tg.lmatrix("k")
    cs0, cs2, cp = tg.cumsum(X, axis=0), tg.cumsum(X, axis=2), tg.cumprod(X, axis=1)
    pr, pr_all = tg.prod(X, axis=(0, 2), keepdims=True), tg.prod(X)
    c = tg.sum(cs0 * cs2) + tg.sum(cp ** 2) + tg.sum(pr) + pr_all
    x = (1.0 + 0.3 * RNG.standard_normal((3, 4, 5))).astype(dtype)
    x[1, 2, 3] = 0.0  # cumprod and prod through a zero
    _run([X, k], [cs0, cs2, cp, pr, pr_all, c, tg.grad(c, X), tg.cumsum(k, axis=1), tg.prod(k, axis=0)],
         x, RNG.integers(-3, 4, size=(4, 6)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cumprod_second_derivatives_run_in_the_program(dtype):
    """cumprod's Rop and HVP: linear recurrences forward and reversed (LINREC) and their own derivatives, through
    a zero and a tiny value, on the program tier."""
    X, V = tg.matrix("X", dtype=dtype), tg.matrix("V", dtype=dtype)
    c = tg.sum(tg.cumprod(X, axis=1) ** 2)
    x = (1.0 + 0.3 * RNG.standard_normal((3, 5))).astype(dtype)
    x[0, 2], x[2, 1] = 0.0, 1e-30
    _run([X, V], [tg.hessian_vector_product(c, X, V), tg.Rop(tg.cumprod(X, axis=0), X, V)], x,
         RNG.standard_normal((3, 5)).astype(dtype))


def test_batched_matmul_with_broadcast_batch_and_its_gradients():
    A, B, C = tg.dtensor3("A"), tg.dtensor3("B"), tg.dmatrix("C")
    P = tg.matmul(A, B)  # batch 4 against a broadcast batch of 1
    Q = tg.matmul(P, C)  # a matrix against the batch
    c = tg.sum(tg.tanh(Q) ** 2)
    _run([A, B, C], [P, Q, c, *tg.grad(c, [A, B, C])],
         RNG.standard_normal((4, 3, 5)), RNG.standard_normal((1, 5, 2)), RNG.standard_normal((2, 6)))


def test_tensordot_outer_and_their_gradients_run_in_the_program():
    A, B, C = tg.dtensor3("A"), tg.dtensor3("B"), tg.dmatrix("C")
    x, y = tg.dmatrix("x"), tg.dvector("y")
    T1 = tg.tensordot(A, B, axes=2)  # (3, 4, 5) . (4, 5, 6) -> (3, 6): 2-d views, one BLAS product
    T2 = tg.tensordot(A, C, axes=([0], [0]))  # leading blocks: (4, 5, 2)
    O = tg.outer(x, y)  # of the flattened operands: (6, 4)
    c = tg.sum(tg.tanh(T1) ** 2) + tg.sum(T2 ** 3) + tg.sum(O ** 2)
    _run([A, B, C, x, y], [T1, T2, O, c, *tg.grad(c, [A, B, C, x, y])], RNG.standard_normal((3, 4, 5)),
         RNG.standard_normal((4, 5, 6)), RNG.standard_normal((3, 2)), RNG.standard_normal((2, 3)),
         RNG.standard_normal(4))


def test_tensordot_over_a_middle_axis_falls_back():
    A, B = tg.dtensor3("A"), tg.dmatrix("B")
    _run([A, B], [tg.tensordot(A, B, axes=([1], [0]))], RNG.standard_normal((2, 3, 4)),
         RNG.standard_normal((3, 5)), expect_program=False)


def test_tile_its_sum_and_logical_reductions_run_in_the_program():
    X = tg.dmatrix("X")
    T = tg.tile(X, (2, 3))
    c = tg.sum(tg.tanh(T) * T[::-1])
    outs = [T, c, tg.grad(c, X), tg.all(X > 0, axis=1), tg.any(X > 1.0), tg.all(X, axis=0, keepdims=True)]
    x = RNG.standard_normal((3, 4))
    x[1, 2] = 0.0
    _run([X], outs, x)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_algebra_of_one_matrix_and_its_gradients_run_in_the_program(dtype):
    A, B, y = tg.matrix("A", dtype=dtype), tg.matrix("B", dtype=dtype), tg.vector("y", dtype=dtype)
    S = tg.dot(A, A.T) + 4.0 * tg.eye(4, dtype=dtype)  # a Gaussian-process-like likelihood
    L = tg.linalg.cholesky(S)
    alpha = tg.linalg.solve(S, y)
    sign, logdet = tg.linalg.slogdet(S)
    nll = 0.5 * tg.dot(y, alpha) + 0.5 * logdet + tg.sum(tg.linalg.tril(L, -1) ** 2)
    extra = tg.sum(tg.linalg.inv(S) * B) + tg.linalg.det(B) + tg.sum(tg.linalg.triu(B, 1))
    outs = [L, alpha, sign, logdet, nll, extra, *tg.grad(nll + extra, [A, B, y])]
    args = [RNG.standard_normal((4, 4)).astype(dtype), RNG.standard_normal((4, 4)).astype(dtype),
            RNG.standard_normal(4).astype(dtype)]
    ref = tg.function([A, B, y], outs, device="python")(*args)
    f = tg.function([A, B, y], outs, device="cpu", tier="program")
    got = f(*args)
    assert list(f._engine._programs.values())[0] is not False, f._engine.program_error
    for a, b in zip(got, ref):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def test_stacks_of_matrices_in_linear_algebra_run_in_the_program():
    A, b = tg.dtensor3("A"), tg.dmatrix("b")
    S = tg.matmul(A, tg.linalg.tril(A).dimshuffle(0, 2, 1)) + 3.0 * tg.eye(3)  # a stack of 2 (broadcast eye)
    sign, logdet = tg.linalg.slogdet(S)
    x = tg.linalg.solve(S, b[:, :, None])[:, :, 0]
    c = tg.sum(logdet) + tg.sum(tg.linalg.det(S)) + tg.sum(tg.linalg.inv(S) ** 2) + tg.sum(x ** 2) \
        + tg.sum(tg.linalg.cholesky(S + tg.transpose(S, (0, 2, 1))))
    _run([A, b], [sign, logdet, x, c, *tg.grad(c, [A, b])], RNG.standard_normal((2, 3, 3)),
         RNG.standard_normal((2, 3)))


def test_singular_and_indefinite_matrices_raise_linalg_error_in_the_program():
    A, b = tg.dmatrix("A"), tg.dvector("b")
    f = tg.function([A, b], [tg.linalg.solve(A, b), tg.linalg.cholesky(A)], device="cpu", tier="program")
    f(np.eye(3) * 2.0, np.ones(3))
    assert list(f._engine._programs.values())[0] is not False
    with pytest.raises(np.linalg.LinAlgError, match="solve: A of shape"):  # the reference engine's message
        f(np.ones((3, 3)), np.ones(3))  # singular
    with pytest.raises(np.linalg.LinAlgError, match="cholesky"):
        f(-np.eye(3), np.ones(3))  # solvable, not positive definite


def test_argmax_argmin_with_ties_nan_and_several_axes_run_in_the_program():
    X, K = tg.dtensor3("X"), tg.lmatrix("K")
    outs = [tg.argmax(X), tg.argmax(X, axis=1), tg.argmin(X, axis=(0, 2)), tg.argmax(X, axis=(1, 2), keepdims=True),
            tg.argmin(K, axis=0), tg.sum(X ** 2)]
    x = np.round(RNG.standard_normal((3, 4, 5)), 1)  # ties
    x[1, 2, 3] = np.nan
    x[2, :, :] = 7.0
    f = _run([X, K], outs, x, RNG.integers(0, 3, size=(4, 6)))
    assert int(f(x, np.zeros((4, 6), np.int64))[0]) == int(np.argmax(x))  # the NaN's flat index


def test_diagonal_trace_and_their_gradients_run_in_the_program():
    X = tg.dtensor3("X")
    d1 = tg.diagonal(X, offset=1, axis1=1, axis2=2)  # a view: (3, 3)
    d2 = tg.diagonal(X, offset=-1, axis1=0, axis2=2)
    t = tg.trace(X, offset=0, axis1=0, axis2=1)
    c = tg.sum(tg.tanh(d1) ** 2) + tg.sum(d2 * 3.0) + tg.sum(t ** 2) + tg.trace(X[0])
    _run([X], [d1, d2, t, c, tg.grad(c, X)], RNG.standard_normal((3, 4, 5)))


def test_norm_over_axes_and_its_gradient_run_in_the_program():
    X = tg.dtensor3("X")
    n0, n12, nall = tg.linalg.norm(X, axis=0), tg.linalg.norm(X, axis=(1, 2), keepdims=True), tg.linalg.norm(X)
    c = tg.sum(n0 ** 3) + tg.sum(n12) + nall
    x = RNG.standard_normal((3, 4, 5))
    x[:, 1, 2] = 0.0  # a zero column: norm 0, gradient 0 (safe division)
    _run([X], [n0, n12, nall, c, tg.grad(c, X)], x)


def test_float32_and_integer_inputs():
    x = tg.fvector("x")
    k = tg.lvector("k")
    c = tg.sum(tg.exp(x) * tg.cast(k, "float32"))
    _run([x, k], [c, tg.grad(c, x), k * 2 + 1], RNG.standard_normal(6).astype("float32"), np.arange(6))


def test_roll_join_and_basic_index_writes():
    u = tg.dvector("u")
    F = tg.dscalar("F")
    step = u + 0.01 * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)
    j = tg.concatenate([step, u[:2] * 2.0])
    w = tg.set_subtensor(u[1:3], F)
    v = tg.inc_subtensor(u[::2], 1.5)
    loss = tg.sum(step ** 2) + tg.sum(w * v)  # (the gradient of a join splits at run-time sizes: no program)
    _run([u, F], [step, j, w, v, loss, *tg.grad(loss, [u, F])], 8.0 + RNG.standard_normal(7), np.asarray(8.0))


def test_matrix_roll_axis_and_dimshuffle():
    X = tg.dmatrix("X")
    y = tg.roll(X, 1, axis=1) * X.T.T + X.dimshuffle(1, 0).sum(axis=0)[:, None]
    c = tg.sum(y ** 2)
    _run([X], [y, tg.grad(c, X)], RNG.standard_normal((3, 4)))


def test_unsupported_instruction_falls_back_with_the_same_results():
    x = tg.dvector("x")
    A = tg.dmatrix("A")
    c = tg.sum(tg.linalg.eigh(A)[0] ** 2)  # (no eigh template: eigenvector signs are LAPACK's choice)
    _run([A], [c, tg.grad(c, A)], RNG.standard_normal((3, 3)), expect_program=False)


def test_zero_size_and_zero_d_inputs():
    x, s = tg.dvector("x"), tg.dscalar("s")
    c = tg.sum(x * s) + s ** 2
    _run([x, s], [c, *tg.grad(c, [x, s])], np.zeros(0), np.asarray(1.5))
    _run([x, s], [c, *tg.grad(c, [x, s])], RNG.standard_normal(3), np.asarray(-2.0))


def test_ieee_semantics_survive_the_program():
    x = tg.dvector("x")
    outs = [x * 0.0, x - x, x / x, tg.grad(tg.sum(tg.sqrt(x) * 0.0), x)]
    vals = np.array([np.inf, -np.inf, np.nan, 0.0, 2.0])
    _run([x], outs, vals)


def test_shared_updates_run_through_the_program():
    w = tg.shared(np.arange(3.0), name="w")
    x = tg.dvector("x")
    c = tg.sum((w * x) ** 2)
    f = tg.function([x], c, updates=[(w, w - 0.1 * tg.grad(c, w))], device="cpu", tier="program")
    g = tg.function([x], c, updates=[(w, w - 0.1 * tg.grad(c, w))], device="python")
    w0 = w.get_value().copy()
    a = f(np.ones(3))
    w1 = w.get_value().copy()
    w.set_value(w0)
    b = g(np.ones(3))
    _close(a, b)
    _close(w1, w.get_value())
    assert next(iter(f._engine._programs.values())).ready()


def test_auto_tier_moves_to_the_program_and_pickles(monkeypatch):
    monkeypatch.setattr(P, "PROGRAM_AFTER_USES", 3)  # the library default (the suite sets "never")
    x = tg.dvector("x")
    c = tg.sum(tg.sin(x) ** 2)
    f = tg.function([x], [c, tg.grad(c, x)], device="cpu")
    xv = RNG.standard_normal(4)
    ref = tg.function([x], [c, tg.grad(c, x)], device="python")(xv)
    for _ in range(4):
        f(xv)
    prog = next(iter(f._engine._programs.values()))
    prog.program.wait()
    for _ in range(2):
        out = f(xv)
    assert f._fast is not None
    for a, b in zip(out, ref):
        _close(a, b)
    g = pickle.loads(pickle.dumps(f))
    for a, b in zip(g(xv), ref):
        _close(a, b)


def test_program_after_environment_knob(monkeypatch):
    for value, want in [("", 3), ("never", None), ("7", 7), ("-1", None), ("junk", 3)]:
        monkeypatch.setenv("TAPEGRAD_PROGRAM_AFTER", value)
        assert P._program_after() == want


def test_generated_source_is_cached_by_content():
    x = tg.dvector("x")
    c = tg.sum(tg.cos(x) * 3.0)
    f1 = _run([x], [c], RNG.standard_normal(5))
    f2 = _run([x], [c], RNG.standard_normal(5))
    p1 = next(iter(f1._engine._programs.values())).program
    p2 = next(iter(f2._engine._programs.values())).program
    assert p1 is p2 and p1.name.startswith("tg_program_")


# --------------------------------------------------------------------------- loops
def _l96(checkpoint, steps=30, snapshots=None):
    u0, F = tg.dvector("u0"), tg.dscalar("F")

    def step(u, F):
        return u + 0.01 * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)

    us, _ = tg.scan(step, outputs_info=[u0], non_sequences=[F], n_steps=steps, checkpoint=checkpoint,
                    snapshots=snapshots)
    loss = tg.sum(us[-1] ** 2) + 0.1 * tg.sum(us ** 2)
    return [u0, F], [loss, us, *tg.grad(loss, [u0, F])]


@pytest.mark.parametrize("checkpoint, snapshots", [("all", None), ("binomial", 3)])
def test_scan_value_and_gradient_run_as_loops_in_the_program(checkpoint, snapshots):
    ins, outs = _l96(checkpoint, snapshots=snapshots)
    args = (8.0 + RNG.standard_normal(12), np.asarray(8.0))
    f = _run(ins, outs, *args)
    src = next(iter(f._engine._programs.values())).program.source
    assert "for t in range(30):" in src and "for a in range(" in src  # the forward loop, the action list


def test_scan_with_sequences_matrix_state_and_per_step_outputs():
    X = tg.dmatrix("X")  # a sequence of rows
    W = tg.dmatrix("W")
    H0 = tg.dmatrix("H0")

    def step(x, H, W):
        Hn = tg.tanh(tg.dot(H, W) + x)
        return Hn, tg.sum(Hn ** 2)

    (Hs, e), _ = tg.scan(step, sequences=[X], outputs_info=[H0, None], non_sequences=[W])
    loss = tg.sum(e) + tg.sum(Hs[-1])
    args = (RNG.standard_normal((5, 3)), 0.3 * RNG.standard_normal((3, 3)), RNG.standard_normal((2, 3)))
    _run([X, W, H0], [Hs, e, loss, *tg.grad(loss, [X, W, H0])], *args)


def test_scan_hvp_and_last_step_of_a_per_step_output():
    x = tg.dvector("x")
    a = tg.dscalar("a")

    def step(s, a):
        n = tg.sin(s) * a + 0.5 * s
        return n, tg.sum(n * n)

    (ss, e), _ = tg.scan(step, outputs_info=[x, None], non_sequences=[a], n_steps=6, checkpoint="binomial",
                         snapshots=2)
    cost = tg.sum(ss[-1] ** 2) + e[-1]
    v = tg.dvector("v")
    hv = tg.hessian_vector_product(cost, x, v)
    _run([x, a, v], [cost, hv, tg.grad(cost, a)], RNG.standard_normal(4), np.asarray(0.7), RNG.standard_normal(4))


@pytest.mark.parametrize("n", [3, 4, 11])
def test_stencil_adjoint_with_three_windows(n):
    x = tg.dvector("x")
    r = x[2:] - 2.0 * x[1:-1] + x[:-2]
    c = tg.sum(r ** 2) + tg.sum(tg.exp(x[1:]) * x[:-1])
    v = tg.dvector("v")
    xv, vv = RNG.standard_normal(n), RNG.standard_normal(n)
    f = _run([x], [c, tg.grad(c, x)], xv)
    assert "] += w" not in next(iter(f._engine._programs.values())).program.source
    _run([x, v], [tg.hessian_vector_product(c, x, v)], xv, vv)


def test_max_min_reductions_with_nan():
    X = tg.dmatrix("X")
    outs = [tg.max(X), tg.min(X, axis=0), tg.max(X, axis=1, keepdims=True)]
    Xv = RNG.standard_normal((3, 4))
    _run([X], outs, Xv)
    Xn = Xv.copy()
    Xn[1, 2] = np.nan
    _run([X], outs, Xn)


def test_azmul_with_a_literal_operand_is_a_product_and_keeps_zero_times_inf():
    """azmul by a finite literal becomes a plain product in the program; azmul of two run-time values keeps
    0 * inf = 0 (the adjoint of x * y at y = inf with a zero cotangent)."""
    x, y = tg.dvector("x"), tg.dvector("y")
    c = tg.sum(x * y)
    g = tg.grad(c, x)  # azmul(1.0, y): a product
    gy = tg.Lop(x * y, y, tg.zeros_like(x))  # azmul(0, x) at x = inf: 0, not NaN
    f = _run([x, y], [g, gy, 2.0 * x], np.array([np.inf, 1.0, 0.0]), np.array([2.0, np.inf, 3.0]))
    assert np.all(np.isfinite(f(np.array([np.inf, 1.0, 0.0]), np.array([2.0, np.inf, 3.0]))[1]))


def test_vectorised_azmul_has_the_bits_of_the_interpreters():
    """vmath's azmul (a select of +0 for two floats of one type, a generic inlined copy otherwise) gives the
    bits of kernels/scalar.py's: NaN where a != 0 and the product is NaN, +0 where a is +-0, whatever b is."""
    import itertools

    from numba import njit

    from tapegrad.compile.kernels.scalar import s_azmul
    from tapegrad.compile.vmath import v_azmul

    f = njit(error_model="numpy")(lambda a, b: v_azmul(a, b))
    vals = [0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan, 5e-324, 1e300]
    for dt in (np.float64, np.float32):
        with np.errstate(over="ignore"):
            cases = [(dt(a), dt(b)) for a, b in itertools.product(vals, vals)]
        for a, b in cases:
            got, want = f(a, b), s_azmul(a, b)
            assert np.asarray(got).dtype == np.asarray(want).dtype
            assert np.array_equal(got, want, equal_nan=True) and np.signbit(got) == np.signbit(want), (a, b, got, want)
    assert f(-0.0, -np.inf) == 0.0 and not np.signbit(f(-0.0, -np.inf))
    assert f(np.float32(2), 3.0) == 6.0 and f(3, 4) == 12 and f(True, 2.5) == 2.5


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_row_sums_in_a_loop_nest_add_up_in_a_local_scalar(dtype):
    """A partial sum that stays put along the innermost axis (softmax's row sums; a sum over axes 0 and 2)
    accumulates in a local scalar per row and is added to memory once a row, so the inner loop vectorises."""

    X, T3 = tg.matrix("X", dtype=dtype), tg.tensor3("T", dtype=dtype)
    e = tg.exp(X - tg.max(X, axis=1, keepdims=True))
    sm = e / tg.sum(e, axis=1, keepdims=True)
    c = tg.sum(sm * X) + tg.sum(tg.sum(tg.exp(T3), axis=(0, 2)) ** 2)
    xv = RNG.standard_normal((7, 9)).astype(dtype)
    tv = RNG.standard_normal((3, 4, 5)).astype(dtype)
    f = _run([X, T3], [sm, c, *tg.grad(c, [X, T3])], xv, tv)
    src = list(f._engine._programs.values())[0].program.source
    assert re.search(r"\n( +)r\d+ = np\.float(64|32)\(0\)\n\1for i\d+ in", src), src
    assert re.search(r"\n +(r\d+) = radd\(\1, ", src)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_triangular_solves_and_cholesky_gradients_substitute_in_the_program(dtype):
    """solve_triangular (matrix and vector right-hand sides, both triangles) and the derivatives of cholesky
    run as substitution over the triangle (vmath.v_tri_solve), not LU."""
    A, B, b, S = tg.matrix("A", dtype=dtype), tg.matrix("B", dtype=dtype), tg.vector("b", dtype=dtype), \
        tg.matrix("S", dtype=dtype)
    av = (RNG.standard_normal((6, 6)) + 4 * np.eye(6)).astype(dtype)
    k = RNG.standard_normal((5, 5))
    outs = []
    for lower in (True, False):
        X, x = tg.linalg.solve_triangular(A, B, lower=lower), tg.linalg.solve_triangular(A, b, lower=lower)
        outs += [X, x, *tg.grad(tg.sum(X ** 2) + tg.sum(x * x), [A, B, b])]
    L = tg.linalg.cholesky(S)
    outs += [L, tg.grad(tg.sum(tg.log(tg.diagonal(L))) + tg.sum(L ** 2), S)]
    f = _run([A, B, b, S], outs, av, RNG.standard_normal((6, 3)).astype(dtype), RNG.standard_normal(6).astype(dtype),
             (k @ k.T + 5 * np.eye(5)).astype(dtype))
    src = list(f._engine._programs.values())[0].program.source
    assert "v_tri_solve(" in src and "np.linalg.solve(" not in src


def test_triangular_solve_with_a_zero_on_the_diagonal_raises_like_lu():
    A, b = tg.dmatrix("A"), tg.dvector("b")
    x = tg.linalg.solve_triangular(A, b, lower=True)
    a = np.tril(RNG.standard_normal((4, 4))) + 3 * np.eye(4)
    a[2, 2] = 0.0
    for kw in ({"device": "python"}, {"device": "cpu", "tier": "program"}, {"device": "cpu", "tier": "interp"}):
        with pytest.raises(np.linalg.LinAlgError, match="[Ss]ingular"):
            tg.function([A, b], x, **kw)(a, np.ones(4))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradient_of_a_value_also_read_through_slices_adds_into_one_buffer(dtype):
    """The gradient of ``u`` in a stencil is ``u``'s own term plus the scatters of ``u[:1]``, ``u[:-1]``, ...: the
    full-shape term is one more ``+=`` into the scatters' buffer (a dense leaf of the accumulation tree), so no
    zero-filled temporary per scatter; values read only for their shape (``2 * u`` in the gradient's
    ``sum_like``) are not stored."""
    u, k = tg.vector("u", dtype=dtype), tg.scalar("k", dtype=dtype)
    nxt = u + 0.1 * k * (tg.concatenate([u[:1], u[:-1]]) - 2 * u + tg.concatenate([u[1:], u[-1:]]))
    cost = tg.sum(nxt ** 2)
    f = _run([u, k], [cost, *tg.grad(cost, [u, k])], RNG.standard_normal(50).astype(dtype), np.asarray(0.7, dtype))
    src = list(f._engine._programs.values())[0].program.source
    assert src.count("[:] = 0") == 0, src
    # the stencil (for k's gradient), two gradient terms and the tree's buffer, which the loop adding its dense
    # leaf also assigns its window sums to (not zero-filled); not 2 * u, not a temporary per scatter (before dense
    # leaves and shape-only reads: 7, and 4 zero-filled ones), not the two shifted copies (read in place)
    assert src.count("np.empty(50,") == 4 and src.count("np.zeros(50,") == 0, src


def test_a_tree_whose_root_adds_a_dense_value():
    # the gradient of x in inc_subtensor(x[1:, [1, 1]], y): set_subtensor(v, 0) + a scatter, at the tree's root
    x, y = tg.dmatrix("x"), tg.dmatrix("y")
    out = tg.inc_subtensor(x[1:, [1, 1]], y)
    v = tg.dmatrix("v")
    g = tg.Lop(out, [x, y], v)
    _run([x, y, v], [out, *g], RNG.standard_normal((3, 4)), RNG.standard_normal((2, 2)), RNG.standard_normal((3, 4)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_products_with_a_diagonal_matrix_scale_instead_of_multiplying_by_zeros(dtype):
    """``A @ diag(v)`` and ``diag(v) @ B`` (the gradient of cholesky through ``log(diag(L))``; ``dot(diag(v), A)``
    written by hand) scale columns or rows; a non-finite value elsewhere in the row (column) still makes NaN, as
    its products with the zeros do in BLAS."""
    from tapegrad.ops.linalg import DiagEmbed

    A, B, v = tg.matrix("A", dtype=dtype), tg.matrix("B", dtype=dtype), tg.vector("v", dtype=dtype)
    Z = tg.matrix("Z", dtype=dtype)  # gives diag_embed its shape only
    D = DiagEmbed(0, 0, 1, False)(v, Z)
    outs = [tg.dot(A, D), tg.dot(D, B), tg.dot(A.T, D)]
    av = RNG.standard_normal((4, 4)).astype(dtype)
    bv = RNG.standard_normal((4, 3)).astype(dtype)
    vv = RNG.standard_normal(4).astype(dtype)
    zv = np.zeros((4, 4), dtype)
    f = _run([A, B, v, Z], outs, av, bv, vv, zv)
    src = list(f._engine._programs.values())[0].program.source
    assert "np.dot" not in src and "np.isfinite" in src, src
    av[1, 2], bv[3, 0], vv[0] = np.inf, np.nan, np.inf
    with np.errstate(invalid="ignore"):
        want = [av @ np.diag(vv), np.diag(vv) @ bv, av.T @ np.diag(vv)]
    for g, w in zip(f(av, bv, vv, zv), want):  # NaN and inf exactly where NumPy's products have them
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        ok = np.isfinite(w)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_products_and_quotients_are_not_reassociated(dtype):
    """Programs compile without fast-math flags; only the additions of sums may be reassociated (``radd``).
    With ``reassoc`` on every operation LLVM computed ``x / x * y`` as ``x * y / x`` (0 for 1e-200) and
    ``x * 2 / 2`` as ``x`` (no overflow to inf)."""
    x, y = tg.vector("x", dtype=dtype), tg.vector("y", dtype=dtype)
    big = np.finfo(dtype).max
    tiny = np.finfo(dtype).tiny
    xv = np.array([tiny, big, np.sqrt(tiny), 2.0, big, 3.0, -0.0], dtype=dtype)
    yv = np.array([tiny, big, np.sqrt(tiny), 3.0, 0.5, tiny / 4, 1.0], dtype=dtype)
    outs = [x / x * y, x * 2.0 / 2.0, x / y * y, (x * y).sum()]
    with np.errstate(all="ignore"):
        want = [xv / xv * yv, xv * np.asarray(2.0, dtype) / np.asarray(2.0, dtype), xv / yv * yv]
    f = _run([x, y], outs, xv, yv)
    got = f(xv, yv)
    for a, b in zip(got[:3], want):
        np.testing.assert_array_equal(a, b)
    src = next(iter(f._engine._programs.values())).program.source
    assert "fastmath=False" in src and re.search(r"\n +(s\d+) = radd\(\1, ", src), src
