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
        adjoint = src[src.index("kind == 4"):]
        last_step = adjoint[adjoint.index(f"if t == {vals[3].shape[0] - 1}:"):]
        # the adjoint's own products: x_bar, lambda, W_bar, U_bar; the forward product only in the last step
        assert adjoint.count("np.dot(") - last_step[:last_step.index("for i in range")].count("np.dot(") <= 4


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
