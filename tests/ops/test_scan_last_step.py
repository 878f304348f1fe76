"""A graph that uses both a scan trajectory ``traj`` and its last step ``traj[-1]`` runs one loop.

``traj[-1]`` is the output of a sibling loop that keeps only the last step (no stored trajectory).  Where the
graph needs ``traj`` too, the tape builder, ``grad`` and ``Rop`` read it as the last row of ``traj`` instead:
one forward loop, one reverse sweep (``scan_grad``), one tangent loop.  Counted on the tapes; values against
the python engine and finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(11)


def _graph(n=6):
    x0, w = tg.dvector("x0"), tg.dvector("w")
    traj, _ = tg.scan(lambda h, w: tg.tanh(w * h) + 0.1, outputs_info=x0, non_sequences=w, n_steps=n)
    return x0, w, traj


def _np_traj(x0, w, n=6):
    h, out = x0, []
    for _ in range(n):
        h = np.tanh(w * h) + 0.1
        out.append(h)
    return np.array(out)


def _count(f, op):
    return sum(1 for line in str(f._engine.tape).splitlines() if f"= {op} " in line)


def test_value_graph_runs_one_loop():
    x0, w, traj = _graph()
    f = tg.function([x0, w], [traj, traj[-1]])
    assert _count(f, "scan") == 1
    xv, wv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3)
    t, last = f(xv, wv)
    np.testing.assert_allclose(t, _np_traj(xv, wv), rtol=1e-14)
    np.testing.assert_array_equal(last, t[-1])
    # alone, traj[-1] keeps its own loop that stores no trajectory
    g = tg.function([x0, w], traj[-1])
    assert _count(g, "scan") == 1 and "[6," not in str(g._engine.tape)


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_gradient_has_one_reverse_sweep(device):
    x0, w, traj = _graph()
    c = RNG.standard_normal((6, 3))
    loss = tg.sum(traj * c) + tg.sum(traj[-1] ** 2)
    f = tg.function([x0, w], [loss, *tg.grad(loss, [x0, w])], device=device)
    if device == "cpu":   # 2 and 2 before: a loop and a reverse sweep for traj and for traj[-1]
        assert _count(f, "scan") == 1 and _count(f, "scan_grad") == 1
    xv, wv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3)

    def F(a, b):
        t = _np_traj(a, b)
        return float((t * c).sum() + (t[-1] ** 2).sum())

    val, gx, gw = f(xv, wv)
    assert float(val) == pytest.approx(F(xv, wv), rel=1e-13)
    h = 1e-6
    for g, k in ((gx, 0), (gw, 1)):
        fd = np.zeros(3)
        for e in range(3):
            args_p, args_m = [xv.copy(), wv.copy()], [xv.copy(), wv.copy()]
            args_p[k][e] += h
            args_m[k][e] -= h
            fd[e] = (F(*args_p) - F(*args_m)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)


def test_rop_has_one_tangent_loop_and_hvp_matches_differences():
    x0, w, traj = _graph()
    loss = tg.sum(tg.sin(traj)) + tg.sum(traj[-1] ** 3)
    u = tg.dvector("u")
    f = tg.function([x0, w, u], tg.Rop(loss, x0, u))
    # the primal loop and one tangent loop (4 before: a primal and a tangent loop for traj and for traj[-1])
    assert _count(f, "scan") == 2
    fp = tg.function([x0, w, u], tg.Rop(loss, x0, u), device="python")
    xv, wv, uv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3), RNG.standard_normal(3)
    g = tg.function([x0, w], tg.grad(loss, x0))
    assert float(f(xv, wv, uv)) == pytest.approx(float(np.dot(g(xv, wv), uv)), rel=1e-12)
    assert float(fp(xv, wv, uv)) == pytest.approx(float(f(xv, wv, uv)), rel=1e-13)
    hv = tg.function([x0, w, u], tg.hessian_vector_product(loss, x0, u))(xv, wv, uv)
    h = 1e-5
    np.testing.assert_allclose(hv, (g(xv + h * uv, wv) - g(xv - h * uv, wv)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_gradient_with_respect_to_something_after_the_last_step_keeps_both_loops():
    """``wrt`` between ``traj[-1]`` and the cost: the cost is not rebuilt (its variables must stay), still right."""
    x0, w, traj = _graph()
    mid = traj[-1] * 2.0
    loss = tg.sum(traj) + tg.sum(mid ** 2)
    gm, gx = tg.grad(loss, [mid, x0])
    xv, wv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3)
    gmv, gxv = tg.function([x0, w], [gm, gx])(xv, wv)
    t = _np_traj(xv, wv)
    np.testing.assert_allclose(gmv, 2 * (2 * t[-1]), rtol=1e-13)

    def F(a):
        tt = _np_traj(a, wv)
        return float(tt.sum() + ((2 * tt[-1]) ** 2).sum())

    h = 1e-6
    fd = np.array([(F(xv + h * e) - F(xv - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(gxv, fd, rtol=1e-7, atol=1e-9)


def test_rop_reuses_the_primal_of_the_tangent_loop():
    """The tangent loop carries the primal: a graph needing both (a JVP of a cost of the loop) runs it alone."""
    x0, w, traj = _graph()
    loss = tg.sum(traj[-1] ** 2)
    u = tg.dvector("u")
    f = tg.function([x0, w, u], tg.Rop(loss, x0, u))
    assert _count(f, "scan") == 1                       # 2 before: the primal loop and the tangent loop
    hv = tg.function([x0, w, u], tg.hessian_vector_product(loss, x0, u))
    assert _count(hv, "scan") == 1 and _count(hv, "scan_grad") == 1
    xv, wv, uv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3), RNG.standard_normal(3)
    g = tg.function([x0, w], tg.grad(loss, x0))
    assert float(f(xv, wv, uv)) == pytest.approx(float(np.dot(g(xv, wv), uv)), rel=1e-12)
    h = 1e-5
    np.testing.assert_allclose(hv(xv, wv, uv), (g(xv + h * uv, wv) - g(xv - h * uv, wv)) / (2 * h),
                               rtol=1e-6, atol=1e-8)


def test_tangent_point_computed_from_the_loop_keeps_both_loops():
    """A tangent point that depends on the loop's own output: the tangent loop cannot run first; still right."""
    x0, w, traj = _graph()
    loss = tg.sum(traj[-1] ** 2)
    point = tg.cos(traj[-1])
    r = tg.Rop(loss, x0, point)
    f = tg.function([x0, w], r)
    assert _count(f, "scan") == 2
    xv, wv = RNG.uniform(-1, 1, 3), RNG.uniform(-2, 2, 3)
    g = tg.function([x0, w], tg.grad(loss, x0))
    want = float(np.dot(g(xv, wv), np.cos(_np_traj(xv, wv)[-1])))
    assert float(f(xv, wv)) == pytest.approx(want, rel=1e-12)
    assert float(tg.function([x0, w], r, device="python")(xv, wv)) == pytest.approx(want, rel=1e-12)
