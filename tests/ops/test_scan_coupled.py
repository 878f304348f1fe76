"""Loop bodies whose outputs feed one another or are the body's inputs themselves.

The adjoint of a loop body seeds every output with its cotangent.  Aesara's ``known_grads`` rule (a seeded
variable's gradient is its seed, whatever else reads it) would drop a path there: an RNN's new state ``h`` that
is also read by its per-step output ``2 h``, or a state returned unchanged (``a, b -> b, a + b``).  The bodies'
adjoints use ``tapegrad.gradient.seeded_grad``, which adds every path; these tests fail with ``grad(None,
known_grads=...)`` in its place.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import seeded_grad
from tests.ops.checks import central_grad

E = 1e-6


def _pair_loss(a, b, which):
    A, B = [], []
    for _ in range(5):
        a, b = b, a + 0.5 * b * b
        A.append(a)
        B.append(b)
    return {"sumA": sum(A), "Blast": B[-1], "sumB": sum(B), "Alast": A[-1]}[which]


@pytest.mark.parametrize("device", ["python", "cpu"])
@pytest.mark.parametrize("which", ["sumA", "Blast", "sumB", "Alast"])
def test_state_returned_unchanged(which, device):
    a0, b0 = tg.dscalar("a0"), tg.dscalar("b0")
    (A, B), _ = tg.scan(lambda a, b: (b, a + 0.5 * b * b), outputs_info=[a0, b0], n_steps=5)
    loss = {"sumA": tg.sum(A), "Blast": B[-1], "sumB": tg.sum(B), "Alast": A[-1]}[which]
    f = tg.function([a0, b0], [loss, *tg.grad(loss, [a0, b0])], device=device)
    val, ga, gb = (float(r) for r in f(0.3, 0.7))
    assert val == pytest.approx(_pair_loss(0.3, 0.7, which), rel=1e-13)
    want = central_grad(lambda a, b: _pair_loss(a, b, which), [0.3, 0.7], E)
    np.testing.assert_allclose([ga, gb], want, rtol=1e-7)


def _rnn_loss(s, w):
    H, Y = [], []
    for _ in range(4):
        s = np.tanh(w * s)
        H.append(s)
        Y.append(2.0 * s + s * s)
    return sum(Y) + sum(H) ** 2


@pytest.mark.parametrize("checkpoint", ["all", "binomial"])
@pytest.mark.parametrize("device", ["python", "cpu"])
def test_output_read_by_another_output(device, checkpoint):
    s0, w = tg.dscalar("s0"), tg.dscalar("w")

    def step(s, w):
        h = tg.tanh(w * s)
        return h, 2.0 * h + h * h

    (H, Y), _ = tg.scan(step, outputs_info=[s0, None], non_sequences=w, n_steps=4, checkpoint=checkpoint)
    loss = tg.sum(Y) + tg.sum(H) ** 2
    g = tg.grad(loss, [s0, w])
    f = tg.function([s0, w], [loss, *g], device=device)
    val, gs, gw = (float(r) for r in f(0.3, 1.3))
    assert val == pytest.approx(_rnn_loss(0.3, 1.3), rel=1e-13)
    np.testing.assert_allclose([gs, gw], central_grad(_rnn_loss, [0.3, 1.3], E), rtol=1e-7)
    # forward-over-reverse through the same body: the HVP against differences of the gradient
    ps, pw = tg.dscalar("ps"), tg.dscalar("pw")
    hv = tg.function([s0, w, ps, pw], tg.hessian_vector_product(loss, [s0, w], [ps, pw]), device=device)
    gf = tg.function([s0, w], g, device=device)
    u = (0.4, -0.9)
    h = 1e-5
    plus = gf(0.3 + h * u[0], 1.3 + h * u[1])
    minus = gf(0.3 - h * u[0], 1.3 - h * u[1])
    np.testing.assert_allclose(hv(0.3, 1.3, *u), [(p - m) / (2 * h) for p, m in zip(plus, minus)], rtol=1e-6)


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_row_map_output_read_by_another_output(device):
    """``map_rows`` (jacobians' vectorised map): row outputs ``s = sin(r)`` and ``3 s^2 + r``, the second reading
    the first, and one returning the row itself."""
    from tapegrad.ops.map import map_rows

    X, c = tg.dmatrix("X"), tg.dscalar("c")
    r = tg.dvector("r")
    s = tg.sin(r * c)
    S, T, R = map_rows([r], [s, 3.0 * s ** 2 + r, r], [X])
    loss = tg.sum(S * S) + tg.sum(T) + tg.sum(R ** 3)
    g = tg.grad(loss, [X, c])
    f = tg.function([X, c], [loss, *g], device=device)
    Xv = np.array([[0.2, -0.7, 1.1], [0.5, 0.3, -0.4]])

    def F(Xa, ca):
        sa = np.sin(Xa * ca)
        return float((sa * sa).sum() + (3.0 * sa ** 2 + Xa).sum() + (Xa ** 3).sum())

    val, gX, gc = f(Xv, 0.9)
    assert float(val) == pytest.approx(F(Xv, 0.9), rel=1e-13)
    fdX = np.zeros_like(Xv)
    for e in range(Xv.size):
        p, m = Xv.copy(), Xv.copy()
        p.flat[e] += E
        m.flat[e] -= E
        fdX.flat[e] = (F(p, 0.9) - F(m, 0.9)) / (2 * E)
    np.testing.assert_allclose(gX, fdX, rtol=1e-7)
    assert float(gc) == pytest.approx((F(Xv, 0.9 + E) - F(Xv, 0.9 - E)) / (2 * E), rel=1e-7)


def test_seeded_grad_adds_every_path():
    x, v, u = tg.dvector("x"), tg.dvector("v"), tg.dvector("u")
    y = x * x
    # seeds on y and on x itself: d/dx <v, y> + <u, x> = 2 x v + u
    g = seeded_grad({y: v, x: u}, x)
    xv, vv, uv = np.array([1.0, -2.0]), np.array([0.5, 3.0]), np.array([10.0, 20.0])
    np.testing.assert_allclose(tg.function([x, v, u], g, device="python")(xv, vv, uv), 2 * xv * vv + uv)
    # Aesara's known_grads keeps a seed as given: Lop of [x, y] with respect to x is the seed of x alone
    lop = tg.Lop([x, y], x, [u, v])
    lop_f = tg.function([x, v, u], lop, device="python", on_unused_input="ignore")
    np.testing.assert_allclose(lop_f(xv, vv, uv), uv)
