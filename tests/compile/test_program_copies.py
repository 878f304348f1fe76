"""Same-shape copies in the program tier (the gradient's ``sum_like`` of a value that needs no reduction): the
value is its input's buffer, never a pass that writes a copy, also when the input is the root of an
accumulation tree (the adjoint of a stencil's shifted slices) or is completed by the open loop.  And the
window sums of such a tree assign its buffer instead of adding into a zero-filled one."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(11)


def copy_stores(source):
    """Stores ``b[nn(i)] = v`` in the program's loops whose value ``v`` is a plain load of another buffer (through
    ``t = a`` renames): passes that only copy a buffer."""
    loads, renames, found = {}, {}, []
    for line in source.splitlines():
        line = line.strip()
        m = re.fullmatch(r"(a\d+) = (b\d+)\[nn\(i\)\]", line)
        if m:
            loads[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(r"(t\d+) = ([at]\d+)", line)
        if m:
            renames[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(r"(b\d+)\[nn\(i\)\] = ([at]\d+)", line)
        if m:
            v = m.group(2)
            while v in renames:
                v = renames[v]
            if v in loads and loads[v] != m.group(1):
                found.append(line)
    return found


def program_source(inputs, outs, args, dtype):
    """The program tier's source for ``outs``, after checking its values against the python engine."""
    ref = tg.function(inputs, outs, device="python")(*args)
    f = tg.function(inputs, outs, tier="program")
    got = f(*args)
    (prog,) = f._engine._programs.values()
    assert prog.ready()
    tol = 1e-12 if dtype == "float64" else 1e-5
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b)))))
    return prog.program.source


def heat(u, k, steps):
    for _ in range(steps):
        u = u + 0.1 * k * (tg.concatenate([u[:1], u[:-1]]) - 2 * u + tg.concatenate([u[1:], u[-1:]]))
    return tg.sum(u ** 2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("steps", [1, 3])
def test_stencil_gradient_copies_no_buffer(dtype, steps):
    u, k = tg.tensor(dtype=dtype, shape=(None,)), tg.tensor(dtype=dtype, shape=())
    c = heat(u, k, steps)
    outs = [c, *tg.grad(c, [u, k])]
    args = [RNG.standard_normal(5000).astype(dtype), np.dtype(dtype).type(0.7)]
    src = program_source([u, k], outs, args, dtype)
    assert copy_stores(src) == []
    # the adjoint trees' window sums assign their buffers: no zero-filled array of the state's length
    assert not re.search(r"\[:\] = 0$|np\.zeros\(5000,", src, re.M), src


def test_copy_of_a_tree_root_that_is_a_result_is_a_fresh_array():
    # the gradient is the tree's root, returned twice and read again: results must be distinct arrays
    x = tg.dvector("x")
    c = tg.sum(tg.sin(x[1:]) * x[:-1]) + tg.sum(x[2:] * x[:-2])
    g = tg.grad(c, x)
    outs = [g, g * 1.0, g + x]
    xv = RNG.standard_normal(300)
    ref = tg.function([x], outs, device="python")(xv)
    f = tg.function([x], outs, tier="program")
    got = f(xv)
    assert f._engine._programs and next(iter(f._engine._programs.values())).ready()
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert got[0] is not got[1] and not np.shares_memory(got[0], got[1])
    got[0][:] = 0.0  # a caller writing into one result changes no other
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    again = f(xv)
    np.testing.assert_allclose(again[0], ref[0], rtol=1e-12)


def test_the_copy_finder_sees_a_copy():
    src = "    for i in range(8):\n        a1 = b3[nn(i)]\n        t2 = a1\n        b4[nn(i)] = t2\n"
    assert copy_stores(src) == ["b4[nn(i)] = t2"]
    assert copy_stores(src.replace("t2 = a1", "t2 = np.float64(a1 * 2.0)")) == []


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_broadcast_of_row_values_is_a_view(dtype):
    """``broadcast_reduced`` (the gradient of a row sum or max, broadcast back over the row) is a view with stride
    0, read by the loops that use it: no pass writes the row values out over the whole matrix."""
    W, X = tg.tensor(dtype=dtype, shape=(None, None)), tg.tensor(dtype=dtype, shape=(None, None))
    z = tg.dot(X, W)
    m = tg.max(z, axis=1, keepdims=True)
    lse = tg.log(tg.sum(tg.exp(z - m), axis=1, keepdims=True)) + m
    cost = -tg.sum(z[:, :1] - lse) / 64.0
    outs = [cost, tg.grad(cost, W)]
    args = [(0.3 * RNG.standard_normal((16, 40))).astype(dtype), RNG.standard_normal((64, 16)).astype(dtype)]
    src = program_source([W, X], outs, args, dtype)
    assert not re.search(r"b\d+\[i0 \* 40 \+ i1\] = b\d+\[i0\]\n", src), src
