"""The reverse sweep of ``scan`` reads the new state instead of recomputing the step (``ScanGrad.next_states``),
and the program tier skips instructions whose values nothing reads (``_Gen.dead``: the forward product a
``sum_like`` kept only for its shape).  Values against the python engine and finite differences on every
checkpoint schedule."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ops.scan_grad import ScanGrad
from tapegrad.graph import toposort

RNG = np.random.default_rng(17)


def _rnn(checkpoint, n=7):
    W, U, h0, X = tg.dmatrix("W"), tg.dmatrix("U"), tg.dmatrix("h0"), tg.dtensor3("X")
    traj, _ = tg.scan(lambda x, h, W, U: tg.tanh(h @ W + x @ U), sequences=X, outputs_info=h0,
                      non_sequences=[W, U], checkpoint=checkpoint, snapshots=2 if checkpoint == "binomial" else None)
    loss = 0.1 * tg.sum(traj) + tg.sum(traj[-1] ** 2)
    vals = [0.4 * RNG.standard_normal((4, 4)), 0.4 * RNG.standard_normal((3, 4)), 0.2 * RNG.standard_normal((5, 4)),
            RNG.standard_normal((n, 5, 3))]
    return [W, U, h0, X], loss, vals


def _np_loss(W, U, h0, X):
    h, acc = h0, 0.0
    for x in X:
        h = np.tanh(h @ W + x @ U)
        acc += 0.1 * h.sum()
    return acc + (h ** 2).sum()


def _scan_grads(outs):
    return [n.op for n in toposort(outs) if isinstance(n.op, ScanGrad)]


def test_the_adjoint_reads_the_new_state_only_where_a_derivative_needs_it():
    xs, loss, _ = _rnn("all")
    (sg,) = _scan_grads(tg.grad(loss, xs[:3]))
    assert len(sg.next_states) == 1                       # tanh's derivative is 1 - y**2: y is the new state
    from tapegrad.graph import ancestors

    assert any(v is sg.next_states[0] for v in ancestors(sg.adjoint_outputs))
    # a step whose derivative does not read the new state (u + F) gets no extra input
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(lambda u, F: u * u * 0.5 + F, outputs_info=u0, non_sequences=F, n_steps=3)
    (sg2,) = _scan_grads(tg.grad(tg.sum(traj), [u0, F]))
    assert sg2.next_states == []


@pytest.mark.parametrize("checkpoint", ["all", "binomial"])
@pytest.mark.parametrize("tier", ["interp", "program"])
def test_rnn_gradient_every_tier_and_schedule(tier, checkpoint):
    xs, loss, vals = _rnn(checkpoint)
    outs = [loss, *tg.grad(loss, xs[:3])]
    want = tg.function(xs, outs, device="python")(*vals)
    f = tg.function(xs, outs, tier=tier)
    got = f(*vals)
    assert (f._engine.fast is not None) == (tier == "program")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert float(got[0]) == pytest.approx(_np_loss(*vals), rel=1e-13)
    h = 1e-6
    W = vals[0]
    fd = np.zeros_like(W)
    for e in range(W.size):
        p, m = W.copy(), W.copy()
        p.flat[e] += h
        m.flat[e] -= h
        fd.flat[e] = (_np_loss(p, *vals[1:]) - _np_loss(m, *vals[1:])) / (2 * h)
    np.testing.assert_allclose(got[1], fd, rtol=1e-7, atol=1e-9)
    if tier == "program":
        src = f._engine.fast.program.source
        adjoint = src[src.index("elif kind == 4:"):]
        first = adjoint.find(f"if t == {vals[3].shape[0] - 1}:")   # the last step's forward (binomial only)
        extra = 0 if first < 0 else adjoint[first:adjoint.index("for i in range", first)].count("np.dot(")
        # the adjoint's own products: lambda, W_bar, U_bar (no recomputed forward product, no x_bar)
        assert adjoint.count("np.dot(") - extra == 3
        # checkpoint="all": the states come from the stored trajectory (kind 5), no second forward loop
        assert ("elif kind == 5:" in src) == (checkpoint == "all")


def test_program_skips_values_read_only_for_their_shapes():
    x, w = tg.dvector("x"), tg.dmatrix("w")
    y = w @ x                            # only its shape is read below (sum_like's reference)
    z = tg.sum_like(tg.exp(x[:3]), y)
    f = tg.function([x, w], z, tier="program")
    xv, wv = RNG.standard_normal(3), RNG.standard_normal((3, 3))
    np.testing.assert_allclose(f(xv, wv), np.exp(xv), rtol=1e-15)
    src = f._engine.fast.program.source
    assert "np.dot" not in src and "x1[" not in src          # w (x1) is never read


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_reverse_sweep_computes_only_the_gradients_read(device):
    """Gradients with respect to W, U and h0 only: the sweep drops the sequence's (a product per step)."""
    xs, loss, vals = _rnn("all")
    f = tg.function(xs, tg.grad(loss, xs[:3]), device=device)
    (line,) = [ln for ln in str(f._engine.tape).splitlines() if "= scan_grad " in ln]
    assert line.split(" = ")[0].count("%") == 3                 # 4 before: W, U, h0 and X
    (ins,) = [op for op in f._engine.tape.ops if isinstance(op, ScanGrad)]
    assert ins.out_wrt == ins.wrt and len(ins.adjoint_outputs) == 3
    full = tg.function(xs, tg.grad(loss, xs), device=device)(*vals)
    for a, b in zip(f(*vals), full[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", ["python", "cpu"])
@pytest.mark.parametrize("uses", ["last", "trajectory"])
def test_sweep_reads_the_stored_trajectory(uses, device):
    """checkpoint="all": the reverse sweep reads the states from the loop's trajectory (no second forward loop);
    a loop kept for its last step only (traj[-1]) stores the trajectory instead, and the sweep its own copy."""
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(lambda u, F: u + 0.1 * (tg.roll(u, 1) * u - u + F), outputs_info=u0, non_sequences=F,
                      n_steps=9)
    loss = tg.sum(traj[-1] ** 2) if uses == "last" else tg.sum(tg.sin(traj))
    f = tg.function([u0, F], [loss, *tg.grad(loss, [u0, F])], device=device)
    (sg,) = [op for op in f._engine.tape.ops if isinstance(op, ScanGrad)]
    assert sg.from_stored
    loops = [ln for ln in str(f._engine.tape).splitlines() if "= scan " in ln]
    assert len(loops) == 1 and "f64[9," in loops[0]
    uv = RNG.standard_normal(6)

    def F_np(u, Fv):
        out = []
        for _ in range(9):
            u = u + 0.1 * (np.roll(u, 1) * u - u + Fv)
            out.append(u)
        out = np.array(out)
        return float((out[-1] ** 2).sum() if uses == "last" else np.sin(out).sum())

    val, gu, gF = f(uv, 0.7)
    assert float(val) == pytest.approx(F_np(uv, 0.7), rel=1e-13)
    h = 1e-6
    fd = np.array([(F_np(uv + h * e, 0.7) - F_np(uv - h * e, 0.7)) / (2 * h) for e in np.eye(6)])
    np.testing.assert_allclose(gu, fd, rtol=1e-7, atol=1e-9)
    assert float(gF) == pytest.approx((F_np(uv, 0.7 + h) - F_np(uv, 0.7 - h)) / (2 * h), rel=1e-7)
    # binomial checkpoints keep their own (recomputing) sweep
    tb, _ = tg.scan(lambda u, F: u * 0.9 + F, outputs_info=u0, non_sequences=F, n_steps=9, checkpoint="binomial")
    lb = tg.sum(tb[-1] ** 2)
    fb = tg.function([u0, F], tg.grad(lb, [u0, F]), device=device)
    assert not [op for op in fb._engine.tape.ops if isinstance(op, ScanGrad)][0].from_stored


def test_hessian_of_a_restricted_stored_sweep():
    """Reverse over reverse through a sweep that is both restricted and stored (a cached variant once returned
    the unrestricted one: a wrong Hessian)."""
    x0, a = tg.dvector("x0"), tg.dvector("a")
    out, _ = tg.scan(lambda h, a: tg.tanh(a * h) + 0.2, outputs_info=x0, non_sequences=a, n_steps=5)
    cost = tg.sum(out[-1] ** 3)
    xv, av = RNG.uniform(-1, 1, 4), RNG.uniform(-2, 2, 4)
    H = tg.function([x0, a], tg.hessian(cost, a), device="python")(xv, av)
    g = tg.function([x0, a], tg.grad(cost, a), device="python")
    h = 1e-5
    fd = np.array([(g(xv, av + h * e) - g(xv, av - h * e)) / (2 * h) for e in np.eye(4)]).T
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-7)


def test_two_sweeps_of_one_loop_both_read_the_stored_trajectory():
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(lambda u, F: u * 0.9 + tg.sin(u) * F, outputs_info=u0, non_sequences=F, n_steps=6)
    c1, c2 = tg.sum(traj[-1] ** 2), tg.sum(tg.exp(traj[-1]))
    f = tg.function([u0, F], [tg.grad(c1, u0), tg.grad(c2, F)])
    sweeps = [op for op in f._engine.tape.ops if isinstance(op, ScanGrad)]
    assert len(sweeps) == 2 and all(op.from_stored for op in sweeps)
    uv = RNG.standard_normal(3)
    want = tg.function([u0, F], [tg.grad(c1, u0), tg.grad(c2, F)], device="python")(uv, 0.3)
    for a, b in zip(f(uv, 0.3), want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_hvp_of_a_last_step_cost_reads_the_stored_tangent_trajectory(device):
    """HVP = the reverse sweep of the tangent loop; for a cost of traj[-1] that loop keeps its last step only,
    and becomes its storing twin (Scan.tangent_scan's full_op) so the sweep reads the states."""
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(lambda u, F: u + 0.1 * (tg.roll(u, 1) * u - u + F), outputs_info=u0, non_sequences=F,
                      n_steps=8)
    cost = tg.sum(traj[-1] ** 2)
    p = tg.dvector("p")
    f = tg.function([u0, F, p], tg.hessian_vector_product(cost, u0, p), device=device)
    (sg,) = [op for op in f._engine.tape.ops if isinstance(op, ScanGrad)]
    assert sg.from_stored
    uv, pv = RNG.standard_normal(5), RNG.standard_normal(5)
    g = tg.function([u0, F], tg.grad(cost, u0), device=device)
    h = 1e-5
    np.testing.assert_allclose(f(uv, 0.4, pv), (g(uv + h * pv, 0.4) - g(uv - h * pv, 0.4)) / (2 * h),
                               rtol=1e-6, atol=1e-8)


def test_skipped_instructions_do_not_make_their_inputs_stored():
    """The HVP of Rosenbrock does not need the cost's value: its sum is skipped, and the values it read stay
    in the one fused pass (they were stored to three workspace arrays when the skipped sum still counted as
    a reader: W2's HVP ran 3x slower)."""
    x, v = tg.dvector("x"), tg.dvector("v")
    c = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    f = tg.function([x, v], tg.hessian_vector_product(c, x, v), tier="program")
    xv, vv = RNG.standard_normal(5000), RNG.standard_normal(5000)
    want = tg.function([x, v], tg.hessian_vector_product(c, x, v), device="python")(xv, vv)
    np.testing.assert_allclose(f(xv, vv), want, rtol=1e-12, atol=1e-12)
    src = f._engine.fast.program.source
    assert "w_float64" not in src and src.count("= huge_empty(") + src.count("= np.empty(") <= 1
