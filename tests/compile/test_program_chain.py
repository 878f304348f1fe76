"""Tapes longer than one program takes run as a chain of programs (tapegrad/compile/program_chain.py).

The limits are lowered here (one program: 40 instructions, pieces of 24) so that small graphs make chains
and each piece compiles in about a second.  Every case is checked against ``device="python"``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.compile import program as P
from tapegrad.compile import program_chain as C

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setattr(P, "MAX_INSTRUCTIONS", 40)
    monkeypatch.setattr(C, "CHUNK", 24)
    monkeypatch.setattr(C, "SLACK", 8)


def _close(got, ref):
    got = got if isinstance(got, list) else [got]
    ref = ref if isinstance(ref, list) else [ref]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        tol = 1e-12 if a.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b), initial=0))))


def _chain(f):
    (prog,) = f._engine._programs.values()
    assert isinstance(prog, C.ChainProgram), f._engine.program_error
    assert prog.ready()
    return prog


def heat(u, k, steps):
    for _ in range(steps):
        u = u + 0.1 * k * (tg.concatenate([u[:1], u[:-1]]) - 2 * u + tg.concatenate([u[1:], u[-1:]]))
    return tg.sum(u ** 2)


def test_an_unrolled_stencil_runs_as_a_chain_of_shared_programs():
    u, k = tg.dvector("u"), tg.dscalar("k")
    loss = heat(u, k, 12)
    outs = [loss, *tg.grad(loss, [u, k])]
    args = (RNG.standard_normal(37), np.float64(0.7))
    ref = tg.function([u, k], outs, device="python")(*args)
    f = tg.function([u, k], outs, device="cpu", tier="program")
    _close(f(*args), ref)
    prog = _chain(f)
    assert len(f._engine.tape) > P.MAX_INSTRUCTIONS
    assert len(prog.pieces) >= 4
    # the steps are alike: pieces that do the same thing share one source and one compile
    assert len({p.ep.program.name for p in prog.pieces}) < len(prog.pieces)
    # a forward piece reads the state and k, never a value that only lends a gradient its shape
    assert all(len(p.inputs) <= 3 for p in prog.pieces[:2]), [p.inputs for p in prog.pieces]
    _close(f(*args), ref)  # the fast path, with the chain's arrays reused
    out1 = f(*args)
    out2 = f(*args)
    assert out1[1] is not out2[1] and not np.shares_memory(out1[1], out2[1])  # results are fresh arrays
    with pytest.raises(NotImplementedError, match="chain of programs, which has no single njit entry"):
        f.as_njit()


def test_chain_results_that_are_inputs_constants_or_repeated_are_fresh_arrays():
    x = tg.dvector("x")
    y = x
    for j in range(15):
        y = tg.tanh(y * 1.01 + 0.1 * j) + x[::-1]
    outs = [y, x, tg.constant(np.arange(3.0)), y, tg.grad(tg.sum(y * y), x)]
    xv = RNG.standard_normal(9)
    ref = tg.function([x], outs, device="python")(xv)
    f = tg.function([x], outs, device="cpu", tier="program")
    got = f(xv)
    _close(got, ref)
    _chain(f)
    assert got[1] is not xv and not np.shares_memory(got[1], xv)
    assert not np.shares_memory(got[0], got[3])
    got[2][:] = -1  # a returned constant is the caller's to change
    _close(f(xv), ref)


def test_chain_with_shared_variables_and_updates():
    w = tg.shared(np.linspace(0.1, 0.9, 6), name="w")
    x = tg.dvector("x")
    y = x * w
    for _ in range(12):
        y = tg.sin(y) * w + x
    cost = tg.sum(y ** 2)
    gw = tg.grad(cost, w)
    f = tg.function([x], cost, updates=[(w, w - 0.01 * gw)], device="cpu", tier="program")
    fp = tg.function([x], cost, updates=[(w, w - 0.01 * gw)], device="python")
    xv = RNG.standard_normal(6)
    for _ in range(3):
        start = w.get_value().copy()
        c = f(xv)
        w.set_value(start)
        c_ref = fp(xv)  # the python engine updates the same shared w
        _close(c, c_ref)
        after_ref = w.get_value().copy()
        w.set_value(start)
        f(xv)
        _close(w.get_value(), after_ref)
    _chain(f)


@settings(max_examples=2, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["tanh", "exp", "shift", "sum", "dot", "roll", "max", "mean0", "sq"]),
                min_size=6, max_size=14), st.integers(0, 2**16), st.sampled_from(["float64", "float32"]))
def test_random_long_tapes_as_chains_match_python(steps, seed, dtype):
    P.MAX_INSTRUCTIONS, C.CHUNK, C.SLACK = 16, 10, 4  # (the fixture puts the limits back afterwards)
    X = tg.matrix("X", dtype=dtype)
    W = tg.matrix("W", dtype=dtype)
    h = X
    for s in steps:
        h = {
            "tanh": lambda: tg.tanh(h),
            "exp": lambda: tg.exp(-(h ** 2)),
            "shift": lambda: tg.concatenate([h[1:], h[:1]], axis=0) - h,
            "sum": lambda: h - tg.sum(h, axis=1, keepdims=True) / 7.0,
            "dot": lambda: tg.dot(h, W) * 0.3,
            "roll": lambda: tg.roll(h, 1, axis=1) * h,
            "max": lambda: h - tg.max(h, axis=0, keepdims=True),
            "mean0": lambda: h + tg.mean(h, axis=0),
            "sq": lambda: h * h * 0.5 + h,
        }[s]()
    cost = tg.sum(h * h)
    outs = [cost, h, *tg.grad(cost, [X, W], disconnected_inputs="ignore")]
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((6, 7)).astype(dtype), (0.3 * rng.standard_normal((7, 7))).astype(dtype)]
    ref = tg.function([X, W], outs, device="python", on_unused_input="ignore")(*args)
    f = tg.function([X, W], outs, device="cpu", tier="program", on_unused_input="ignore")
    got = f(*args)
    prog = next(iter(f._engine._programs.values()))
    assert len(f._engine.tape) > P.MAX_INSTRUCTIONS  # six steps and their gradient: a chain
    assert isinstance(prog, C.ChainProgram), f._engine.program_error
    _close(got, ref)
    _close(f(*args), ref)


def test_cut_points_respect_the_piece_size_and_prefer_narrow_cuts():
    u, k = tg.dvector("u"), tg.dscalar("k")
    loss = heat(u, k, 6)
    f = tg.function([u, k], [loss, *tg.grad(loss, [u, k])], device="cpu", tier="interp")
    tape = f._engine.tape
    cuts = C.cut_points(tape, chunk=24, slack=8)
    assert cuts[0] == 0 and cuts[-1] == len(tape)
    assert all(0 < b - a <= 24 for a, b in zip(cuts[:-1], cuts[1:]))
    assert C.cut_points(tape, chunk=len(tape)) == [0, len(tape)]


def test_a_scalar_input_is_passed_as_a_0d_array_one_numba_signature():
    # np.ascontiguousarray makes 0-d arrays 1-d: the program was compiled a second time, on the calling thread
    x, k = tg.dvector("x"), tg.dscalar("k")
    cost = tg.sum(tg.tanh(x * k) ** 2)
    f = tg.function([x, k], [cost, tg.grad(cost, x)], device="cpu", tier="program")
    ep = next(iter(f._engine._programs.values())) if f._engine._programs else None
    xv = RNG.standard_normal(20)
    for _ in range(3):
        f(xv, 0.5)
    ep = next(iter(f._engine._programs.values()))
    outs, _ = ep.run([xv, np.float64(0.5)], [])
    _close(list(outs), tg.function([x, k], [cost, tg.grad(cost, x)], device="python")(xv, 0.5))
    assert len(ep.program.fn.signatures) == 1, ep.program.fn.signatures


def test_a_tape_beyond_the_chain_limit_stays_on_tiers_0_and_1(monkeypatch):
    monkeypatch.setattr(C, "MAX_CHAIN", 50)
    u, k = tg.dvector("u"), tg.dscalar("k")
    loss = heat(u, k, 6)
    outs = [loss, *tg.grad(loss, [u, k])]
    args = (RNG.standard_normal(11), np.float64(0.3))
    f = tg.function([u, k], outs, device="cpu", tier="program")
    _close(f(*args), tg.function([u, k], outs, device="python")(*args))
    assert list(f._engine._programs.values()) == [False]
    assert "a chain of programs takes at most 50" in str(f._engine.program_error)
