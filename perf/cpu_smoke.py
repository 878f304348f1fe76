"""Smoke timings of the tier-0 CPU engine (interpreter) against NumPy by hand.

    python perf/cpu_smoke.py

(a) W3-like per-call overhead: Rosenbrock value, n = 10.
(b) Rosenbrock value, n = 1e6.
Each in two forms: "full" = sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2) (slices are views, the sum a
native step), "ew" = the elementwise part on a (x, z) pair (100 (z - x^2)^2 + (1 - x)^2).
(c) Gradients through ``tg.function(..., device="cpu")``: W2-like Rosenbrock value + grad (n = 1e6),
W3-like (the same, n = 10), W1-like MLP (X 1024x256 @ W1 256x256, tanh, @ W2 256x10, squared error sum,
value + grads of W1, b1, W2, b2), and W2-like value + grad + HVP (n = 1e6), each at tier="interp" (the
interpreter only) and tier="fused" (fused elementwise groups compiled before the first call; the plan runs
them as generated loops) against the same computation written by hand in NumPy.
Median of repeated calls, one thread.
"""

import os
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def median_time(f, min_calls=20, min_s=0.5):
    ts = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def fmt(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def main():
    t0 = time.perf_counter()
    import tapegrad.ops as O
    from tapegrad.compile.cpu import CPUEngine
    from tapegrad.graph import TensorType
    from tapegrad.tape.build import build_tape

    t_import = time.perf_counter() - t0
    x = TensorType("float64", (None,))("x")
    z = TensorType("float64", (None,))("z")
    full = O.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    ew = 100 * (z - x**2) ** 2 + (1 - x) ** 2

    t0 = time.perf_counter()
    from tapegrad.compile._generated_dispatch import interp  # noqa: F401
    eng_full = CPUEngine(build_tape([x], [full]))
    first = eng_full.run([np.arange(10.0)], [])
    t_first = time.perf_counter() - t0
    cache = "hit" if interp.stats.cache_hits else "miss (compiled now)"
    eng_ew = CPUEngine(build_tape([x, z], [ew]))
    nat, cb = eng_full.native_codes()
    print(f"import {t_import:.2f} s; build + first call {t_first:.3f} s (interpreter cache {cache})")
    print(f"full tape: native {nat}, callback {cb}")
    rows = []
    for n in (10, 1_000_000):
        rng = np.random.default_rng(0)
        xv = rng.uniform(-2, 2, n)
        zv = rng.uniform(-2, 2, n)

        def np_full():
            return np.sum(100 * (xv[1:] - xv[:-1] ** 2) ** 2 + (1 - xv[:-1]) ** 2)

        def np_ew():
            return 100 * (zv - xv**2) ** 2 + (1 - xv) ** 2

        got = eng_full.run([xv], [])[0][0]
        assert np.allclose(got, np_full(), rtol=1e-12), (got, np_full())
        assert np.allclose(eng_ew.run([xv, zv], [])[0][0], np_ew(), rtol=1e-12)
        rows.append((n, "full (sum of sliced terms)", median_time(lambda: eng_full.run([xv], [])), median_time(np_full)))
        rows.append((n, "ew (elementwise only)", median_time(lambda: eng_ew.run([xv, zv], [])), median_time(np_ew)))
    print()
    print("| n | program | tapegrad cpu (interp) | numpy by hand | ratio |")
    print("|---|---|---|---|---|")
    for n, what, t_tg, t_np in rows:
        print(f"| {n:g} | {what} | {fmt(t_tg)} | {fmt(t_np)} | {t_tg / t_np:.2f} |")
    print()
    print("| case | tier=\"interp\" | tier=\"fused\" | numpy by hand | interp/np | fused/np | fused groups (sizes) | "
          "callbacks left |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in [("W2 Rosenbrock value+grad n=1e6", lambda t: rosen_grad(1_000_000, t)),
                       ("W2 Rosenbrock value+grad+HVP n=1e6", lambda t: rosen_hvp(1_000_000, t)),
                       ("W3 Rosenbrock value+grad n=10", lambda t: rosen_grad(10, t)),
                       ("W1 MLP value + 4 grads", mlp_grad)]:
        fi, call_i, by_hand = make("interp")
        ff, call_f, _ = make("fused")
        t_i, t_f, t_np = median_time(call_i), median_time(call_f), median_time(by_hand)
        _, cb = ff._engine.native_codes()
        plan = ff._engine._last_plan
        sizes = [p1 - p0 for p0, p1, _ in plan.fused]
        print(f"| {name} | {fmt(t_i)} | {fmt(t_f)} | {fmt(t_np)} | {t_i / t_np:.2f} | {t_f / t_np:.2f} | "
              f"{sizes or 'none'} | {cb or 'none'} |")


def rosen_hvp(n, tier=None):
    import tapegrad as tg

    x, v = tg.dvector("x"), tg.dvector("v")
    f = tg.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    fn = tg.function([x, v], [f, tg.grad(f, x), tg.hessian_vector_product(f, x, v)], device="cpu", tier=tier)
    r = np.random.default_rng(0)
    xv, vv = r.uniform(-2, 2, n), r.uniform(-1, 1, n)

    def by_hand():
        a, b = xv[:-1], xv[1:]
        va, vb = vv[:-1], vv[1:]
        d = b - a * a
        f = np.sum(100 * d * d + (1 - a) ** 2)
        g = np.zeros_like(xv)
        g[:-1] = -400 * d * a - 2 * (1 - a)
        g[1:] += 200 * d
        h = np.zeros_like(xv)
        h[:-1] = (1200 * a * a - 400 * b + 2) * va - 400 * a * vb
        h[1:] += 200 * vb - 400 * a * va
        return f, g, h

    for got, want in zip(fn(xv, vv), by_hand()):
        assert np.allclose(got, want, rtol=1e-9, atol=1e-9)
    return fn, lambda: fn(xv, vv), by_hand


def rosen_grad(n, tier=None):
    import tapegrad as tg

    x = tg.dvector("x")
    f = tg.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    fn = tg.function([x], [f, tg.grad(f, x)], device="cpu", tier=tier)
    xv = np.random.default_rng(0).uniform(-2, 2, n)

    def by_hand():
        a, b = xv[:-1], xv[1:]
        d = b - a * a
        f = np.sum(100 * d * d + (1 - a) ** 2)
        g = np.zeros_like(xv)
        g[:-1] = -400 * d * a - 2 * (1 - a)
        g[1:] += 200 * d
        return f, g

    for got, want in zip(fn(xv), by_hand()):
        assert np.allclose(got, want, rtol=1e-10)
    return fn, lambda: fn(xv), by_hand


def mlp_grad(tier=None):
    import tapegrad as tg

    X, Y, W1, W2 = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dmatrix("W1"), tg.dmatrix("W2")
    b1, b2 = tg.dvector("b1"), tg.dvector("b2")
    h = tg.tanh(tg.dot(X, W1) + b1)
    loss = tg.sum((tg.dot(h, W2) + b2 - Y) ** 2)
    fn = tg.function([X, Y, W1, b1, W2, b2], [loss] + tg.grad(loss, [W1, b1, W2, b2]), device="cpu",
                     tier=tier)
    r = np.random.default_rng(0)
    args = (r.standard_normal((1024, 256)), r.standard_normal((1024, 10)), r.standard_normal((256, 256)) * 0.05,
            r.standard_normal(256) * 0.1, r.standard_normal((256, 10)) * 0.05, r.standard_normal(10) * 0.1)
    Xv, Yv, W1v, b1v, W2v, b2v = args

    def by_hand():
        h = np.tanh(Xv @ W1v + b1v)
        d = h @ W2v + b2v - Yv
        go = 2 * d
        gz = (go @ W2v.T) * (1 - h * h)
        return np.sum(d * d), Xv.T @ gz, gz.sum(0), h.T @ go, go.sum(0)

    for got, want in zip(fn(*args), by_hand()):
        assert np.allclose(got, want, rtol=1e-9, atol=1e-9)
    return fn, lambda: fn(*args), by_hand


if __name__ == "__main__":
    main()
