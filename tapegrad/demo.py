"""A two-second tour of tapegrad: ``python -m tapegrad.demo``.

1. the gradient of the Rosenbrock function,
2. a Hessian-vector product (forward-over-reverse),
3. the gradient of a small simulation: a damped oscillator stepped 50 times
   with explicit Euler, differentiated w.r.t. its initial state and damping.

Each derivative is checked against finite differences.  Runs on the Numba CPU
engine when it is importable, else on the reference (NumPy) engine.
"""

from __future__ import annotations

import time

import numpy as np

import tapegrad as tg


def _device():
    try:
        import tapegrad.compile.cpu  # noqa: F401
    except ImportError:
        return "python"
    return "cpu"


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def oscillator(state, damping, n_steps=50, dt=0.05, omega=2.0):
    """Final energy of ``q'' = -omega^2 q - damping q'`` after ``n_steps`` explicit-Euler steps."""
    q, p = state[0], state[1]
    for _ in range(n_steps):
        q, p = q + dt * p, p + dt * (-(omega**2) * q - damping * p)
    return 0.5 * p**2 + 0.5 * omega**2 * q**2


def _fd(f, x, h=1e-6):
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def main():
    t0 = time.perf_counter()
    device = _device()
    np.set_printoptions(precision=6, suppress=True)
    print(f"tapegrad demo (device={device!r})\n")

    # 1. gradient
    x = tg.vector("x")
    cost = rosenbrock(x)
    g = tg.grad(cost, x)
    f = tg.function([x], [cost, g], device=device)
    x0 = np.array([-1.2, 1.0, 0.5, 2.0])
    c, gx = f(x0)
    print("1. Rosenbrock at", x0)
    print("   value    =", c)
    print("   gradient =", gx)
    f_cost = tg.function([x], cost, device=device)
    print("   finite-difference check: max error", np.max(np.abs(gx - _fd(f_cost, x0))))

    # 2. Hessian-vector product
    v = tg.vector("v")
    hv = tg.hessian_vector_product(cost, x, v)
    f_hv = tg.function([x, v], hv, device=device)
    v0 = np.array([1.0, 0.0, -1.0, 0.5])
    hv0 = f_hv(x0, v0)
    f_g = tg.function([x], g, device=device)
    fd_hv = (f_g(x0 + 1e-6 * v0) - f_g(x0 - 1e-6 * v0)) / 2e-6
    print("\n2. Hessian-vector product H v, v =", v0)
    print("   H v      =", hv0)
    print("   finite-difference check: max error", np.max(np.abs(hv0 - fd_hv)))

    # 3. gradient of a simulation
    s = tg.vector("state")
    k = tg.scalar("damping")
    energy = oscillator(s, k)
    gs, gk = tg.grad(energy, [s, k])
    f_sim = tg.function([s, k], [energy, gs, gk], device=device)
    s0, k0 = np.array([1.0, 0.0]), np.array(0.3)
    e, ds, dk = f_sim(s0, k0)
    f_e = tg.function([s, k], energy, device=device)
    print("\n3. Damped oscillator, 50 explicit-Euler steps: energy =", e)
    print("   d energy / d initial state =", ds)
    print("   d energy / d damping       =", dk)
    err = max(np.max(np.abs(ds - _fd(lambda z: f_e(z, k0), s0))), abs(dk - _fd(lambda z: f_e(s0, z), k0)))
    print("   finite-difference check: max error", err)
    print(f"   the compiled tape has {len(f_sim.tape)} instructions; the first lines of print(f.tape):")
    for line in str(f_sim.tape).splitlines()[:6]:
        print("     ", line)
    print(f"\ndone in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
