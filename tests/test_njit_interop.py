"""``Function.njit`` / ``Function.as_njit``: the compiled function called from user ``@njit`` code."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import tapegrad as tg


def _rosen():
    x = tg.dvector("x")
    c = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return x, c


def test_gradient_descent_loop_in_numba_matches_the_python_loop():
    x, c = _rosen()
    f = tg.function([x], [c, tg.grad(c, x)])
    x0 = np.full(6, 0.5)
    entry = f.as_njit(x0)

    @njit
    def descend(x, steps, lr):
        val = 0.0
        for _ in range(steps):
            val, g = entry(x)
            x = x - lr * g
        return val, x

    val, xs = descend(x0, 300, 1e-3)
    xp = x0.copy()
    for _ in range(300):
        v, g = f(xp)
        xp = xp - 1e-3 * g
    assert val == pytest.approx(float(v), rel=1e-12)
    np.testing.assert_allclose(xs, xp, rtol=1e-12)
    assert np.array_equal(x0, np.full(6, 0.5))  # arguments are never written


def test_njit_property_uses_the_last_call_and_checks_shapes():
    x, c = _rosen()
    f = tg.function([x], tg.grad(c, x))
    with pytest.raises(ValueError, match="call the function once first"):
        f.njit
    xv = np.linspace(-1, 1, 4)
    want = f(xv)
    entry = f.njit
    (got,) = entry(xv)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert f.njit is entry  # cached per signature
    with pytest.raises(ValueError, match=r"input 0 \(x\) must have shape \(4,\)"):
        entry(np.ones(5))


def test_rk4_integrator_written_in_numba_calls_the_vector_field():
    u = tg.dvector("u")
    p = tg.dscalar("p")
    rhs = tg.stack([u[1], -p * tg.sin(u[0])])  # a pendulum
    f = tg.function([u, p], rhs)
    entry = f.as_njit(np.zeros(2), np.asarray(1.0))

    @njit
    def rk4(u, p, dt, n):
        for _ in range(n):
            (k1,) = entry(u, p)
            (k2,) = entry(u + 0.5 * dt * k1, p)
            (k3,) = entry(u + 0.5 * dt * k2, p)
            (k4,) = entry(u + dt * k3, p)
            u = u + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return u

    u1 = rk4(np.array([0.3, 0.0]), np.asarray(9.81), 1e-3, 1000)
    energy = lambda u: 0.5 * u[1] ** 2 - 9.81 * np.cos(u[0])  # noqa: E731
    assert energy(u1) == pytest.approx(energy(np.array([0.3, 0.0])), abs=1e-9)


def test_njit_errors_name_the_reason():
    w = tg.shared(np.ones(2), name="w")
    x = tg.dvector("x")
    f = tg.function([x], tg.sum(w * x))
    with pytest.raises(NotImplementedError, match="shared variables"):
        f.as_njit(np.ones(2))
    X = tg.dmatrix("X")
    g = tg.function([X], tg.linalg.eigh(X)[0])
    with pytest.raises(NotImplementedError, match="EIGH"):
        g.as_njit(np.eye(3))
    h = tg.function([x], x * 2, device="python")
    with pytest.raises(ValueError, match="device='cpu'"):
        h.as_njit(np.ones(3))
