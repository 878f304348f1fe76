"""Stencils in the program tier: 1-d joins and rolls read in place by the loop that uses them (no copy), the
window sums of an adjoint tree added by the loop that adds its dense leaf, reductions moved up to where their
operands are made (``program_order``), and a chain piece's values written straight into the chain's arrays."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile import program_chain as C
from tapegrad.compile import program as PP
from tapegrad.compile.program_order import eager_order

RNG = np.random.default_rng(5)
TOL = {"float64": 1e-12, "float32": 1e-5}


def _close(got, ref, dtype):
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=TOL[dtype],
                                   atol=TOL[dtype] * max(1.0, float(np.max(np.abs(b)))))


def _program(inputs, outputs, args):
    """The value of ``outputs`` on the program tier and the python engine, and the program's source."""
    ref = tg.function(inputs, outputs, device="python")(*args)
    f = tg.function(inputs, outputs, tier="program")
    got = f(*args)
    (prog,) = f._engine._programs.values()
    assert prog.ready(), f._engine.program_error
    return got, ref, prog.program.source


def heat(u, k, steps, periodic=False):
    for _ in range(steps):
        if periodic:
            left, right = tg.roll(u, 1), tg.roll(u, -1)
        else:
            left, right = tg.concatenate([u[:1], u[:-1]]), tg.concatenate([u[1:], u[-1:]])
        u = u + 0.1 * k * (left - 2 * u + right)
    return tg.sum(u ** 2)


def copy_loops(source):
    """Loops ``for i in range(n): b[... + i] = x[... i ...]``: a join's or roll's copy."""
    return re.findall(r"for i in range\(\d+\):\n\s+b\d+\[\d+ \+ i\] = \w+\[[^\]]*\]\n", source)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("periodic", [False, True])
def test_stencil_value_and_gradient_read_shifted_windows_in_place(dtype, steps, periodic):
    u, k = tg.tensor(dtype=dtype, shape=(None,)), tg.tensor(dtype=dtype, shape=())
    c = heat(u, k, steps, periodic)
    args = [RNG.standard_normal(5000).astype(dtype), np.dtype(dtype).type(0.7)]
    got, ref, src = _program([u, k], [c, *tg.grad(c, [u, k])], args)
    _close(got, ref, dtype)
    assert copy_loops(src) == [], src  # no copy of the shifted arrays
    assert "if j < 0" not in src  # (a roll by a literal shift: no wraparound per element)
    assert "[:] = 0" not in src and "np.zeros(5000" not in src, src  # adjoint trees assigned, never zero-filled
    # every tree's window sums are added by the loop that adds its dense leaf: no loop of their own over `p`
    assert "for p in range(" not in src, src


@pytest.mark.parametrize("shift", [0, 1, -1, 3, 7, -9, 12])
def test_roll_by_literal_shifts(shift):
    x = tg.tensor(dtype="float64", shape=(None,))
    y = tg.sum(tg.sin(tg.roll(x, shift)) * tg.arange(7.0))
    args = [RNG.standard_normal(7)]
    got, ref, src = _program([x], [y, tg.grad(y, x), tg.roll(x, shift) * 2.0], args)
    _close(got, ref, "float64")
    np.testing.assert_array_equal(got[2], np.roll(args[0], shift) * 2.0)


def test_join_with_a_literal_piece_and_a_join_read_twice():
    x = tg.tensor(dtype="float64", shape=(None,))
    z = tg.concatenate([tg.constant(np.full(2, 3.0)), x[1:], x[:3]])  # a constant piece, and overlapping views
    w = tg.exp(z) * 2.0
    args = [RNG.standard_normal(9)]
    # z read by the loop of w only: read in place
    got, ref, src = _program([x], [w, tg.grad(tg.sum(w), x)], args)
    _close(got, ref, "float64")
    assert copy_loops(src) == []
    # z also returned: the copy stays (the loop reads it there too), and the result is its own array
    got, ref, src = _program([x], [w, z], args)
    _close(got, ref, "float64")
    np.testing.assert_array_equal(got[1], np.concatenate([np.full(2, 3.0), args[0][1:], args[0][:3]]))
    assert len(copy_loops(src)) == 3
    got[1][:] = 0  # a result never shares memory with another
    assert np.all(got[0] != 0)


def test_a_join_read_by_two_loops_is_copied_once():
    x = tg.tensor(dtype="float64", shape=(None,))
    z = tg.concatenate([x[:1], x[:-1]])
    a = tg.sum(tg.exp(z))
    b = tg.dot(z, x) + a  # a product reads z too: z is copied
    args = [RNG.standard_normal(4096)]
    got, ref, src = _program([x], [b, tg.grad(b, x)], args)
    _close(got, ref, "float64")


def test_reductions_move_up_to_their_operands():
    """The gradient of ``k`` (read by every step) is one reduction per step, which the tape lists at its end;
    the program tier's order moves each to its step, where the step's loop accumulates it."""
    u, k = tg.tensor(dtype="float64", shape=(None,)), tg.tensor(dtype="float64", shape=())
    c = heat(u, k, 3)
    outs = [c, *tg.grad(c, [u, k])]
    f = tg.function([u, k], outs, tier="program")
    args = [RNG.standard_normal(5000), np.float64(0.7)]
    got = f(*args)
    _close(got, tg.function([u, k], outs, device="python")(*args), "float64")
    eng = f._engine
    plan = eng._last_plan
    order = eager_order(eng.tape, plan.shapes, eng.slot_dtypes, set(int(j) for j in plan.const_instrs))
    assert order is not None and sorted(order) == list(range(len(eng.tape)))
    moved = [j for j, k_ in enumerate(order) if k_ != j]
    assert moved, order
    pos = {k_: j for j, k_ in enumerate(order)}
    for k_ in range(len(eng.tape)):  # still a topological order
        for s in eng.tape.instr_args(k_):
            for p in range(len(eng.tape)):
                if int(s) in [int(o) for o in eng.tape.instr_outs(p)]:
                    assert pos[p] < pos[k_]
    # each step's term of k's gradient is summed where the step's adjoint is made, before the next step's
    # stencil loop: the sums are not all left at the end
    (prog,) = eng._programs.values()
    src = prog.program.source
    events = [("R" if re.match(r"\s+b\d+\[0\] = s\d+$", line) else "S")
              for line in src.splitlines() if re.match(r"\s+b\d+\[0\] = s\d+$", line)
              or re.match(r"\s+b\d+\[[^\]]*\] = t\d+ \+ ", line)]
    runs = [e for j, e in enumerate(events) if j == 0 or events[j - 1] != e]
    assert runs.count("R") >= 3, events


def test_small_reductions_keep_the_tape_order():
    x = tg.tensor(dtype="float64", shape=(None,))
    y = tg.sum(tg.exp(x)) * tg.sum(x)
    f = tg.function([x], [y, tg.grad(y, x)], tier="program")
    f(RNG.standard_normal(100))
    eng = f._engine
    plan = eng._last_plan
    assert eager_order(eng.tape, plan.shapes, eng.slot_dtypes, set(int(j) for j in plan.const_instrs)) is None


@pytest.fixture
def short_pieces(monkeypatch):
    monkeypatch.setattr(PP, "MAX_INSTRUCTIONS", 40)
    monkeypatch.setattr(C, "CHUNK", 30)
    monkeypatch.setattr(C, "SLACK", 10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stencil_gradient_as_a_chain_writes_values_into_the_chain_arrays(short_pieces, dtype):
    u, k = tg.tensor(dtype=dtype, shape=(None,)), tg.tensor(dtype=dtype, shape=())
    c = heat(u, k, 4)
    outs = [c, *tg.grad(c, [u, k])]
    args = [RNG.standard_normal(5000).astype(dtype), np.dtype(dtype).type(0.7)]
    ref = tg.function([u, k], outs, device="python")(*args)
    f = tg.function([u, k], outs, tier="program")
    for _ in range(2):
        _close(f(*args), ref, dtype)
    (chain,) = f._engine._programs.values()
    assert isinstance(chain, C.ChainProgram), f._engine.program_error
    srcs = chain.sources
    assert len(srcs) > 1
    # a piece's value for later pieces is its buffer (b = y), never a copy into the array at the end
    for src in srcs:
        assert not re.search(r"\n\s+y\d+\[i\] = b\d+\[i\]\n", src), src
    # the loop adding a tree's dense leaf adds its windows too (a scatter's shape-only base, no input of the
    # piece, used to close that loop first): no window sums in a loop of their own
    assert not any("for p in range(" in src for src in srcs), srcs
