"""Smoke timings of the tier-0 CPU engine (interpreter) against NumPy by hand.

    python perf/cpu_smoke.py

(a) W3-like per-call overhead: Rosenbrock value, n = 10.
(b) Rosenbrock value, n = 1e6.
Each in two forms: "full" = sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2) (slices and the sum run by
callback until those families get native kernels), "ew" = the elementwise part on a (x, z) pair
(100 (z - x^2)^2 + (1 - x)^2, all native).  Median of repeated calls, one thread.
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


if __name__ == "__main__":
    main()
