"""Sparse vs dense Jacobian of a 1-D Bratu residual (tridiagonal Jacobian).

Run:  python perf/sparse_jacobian.py [--n 10000] [--dense-n 500 1000 2000]

``tg.sparse_jacobian``: index-set pattern + 3-color compressed forward mode
(3 Jacobian-vector products in one compiled call).  ``tg.jacobian``: one
reverse sweep per row (map_rows), so O(n^2) work; it is timed at the smaller
``--dense-n`` sizes and extrapolated to ``--n`` with the growth exponent
measured between the two largest of them (clamped to [1, 2]).  The device is
"cpu" when ``tg.function(..., device="cpu")`` runs this graph correctly (checked
in a subprocess, since a crash there must not end the benchmark) and is faster,
else "python".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

import tapegrad as tg
from tapegrad.gradient import jacobian
from tapegrad.sparse import sparse_jacobian


def bratu(x, lam=1.0):
    h2 = 1.0 / (x.shape[0] + 1.0) ** 2
    interior = (x[:-2] - 2 * x[1:-1] + x[2:]) / h2 + lam * tg.exp(x[1:-1])
    return tg.concatenate([x[:1], interior, x[-1:]])


_CPU_CHECK = """
import sys, numpy as np, tapegrad as tg
from tapegrad.sparse import sparse_jacobian
x = tg.vector('x')
h2 = 1.0 / (x.shape[0] + 1.0) ** 2
r = tg.concatenate([x[:1], (x[:-2] - 2 * x[1:-1] + x[2:]) / h2 + tg.exp(x[1:-1]), x[-1:]])
xv = np.linspace(0, 1, int(sys.argv[1]))
a = sparse_jacobian(r, x, device='cpu')(xv).toarray()
b = sparse_jacobian(r, x, device='python')(xv).toarray()
assert np.allclose(a, b)
print('ok')
"""


def cpu_works(n):
    try:
        out = subprocess.run([sys.executable, "-c", _CPU_CHECK, str(n)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if out.returncode == 0 and "ok" in out.stdout:
        return True, ""
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
    return False, f"exit code {out.returncode}" + (f": {tail[0]}" if tail else "")


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dense-n", type=int, nargs="*", default=[500, 1000, 2000])
    ap.add_argument("--device", default=None, help="force a device (cpu or python)")
    args = ap.parse_args()

    device = args.device
    if device is None:
        ok, why = cpu_works(args.n)
        device = "cpu" if ok else "python"
        print(f"device: {device}" + ("" if ok else f"  (device='cpu' unusable here: {why})"))
    x = tg.vector("x")
    r = bratu(x)
    rng = np.random.default_rng(0)

    rows = []
    sj = sparse_jacobian(r, x, device=device)
    xv = rng.uniform(0, 1, args.n)
    t0 = time.perf_counter()
    J = sj(xv)
    first = time.perf_counter() - t0
    steady = best_of(lambda: sj(xv))
    rows.append(("sparse_jacobian", args.n, first, steady, f"{sj.n_colors} colors, nnz={J.nnz}"))

    dense_times = []
    for n in args.dense_n:
        xn = rng.uniform(0, 1, n)
        t0 = time.perf_counter()
        f = tg.function([x], jacobian(r, x), device=device)
        D = f(xn)
        first_d = time.perf_counter() - t0
        steady_d = best_of(lambda: f(xn), repeat=2)
        sjn = sparse_jacobian(r, x, device=device)
        err = float(np.abs(sjn(xn).toarray() - D).max())
        dense_times.append((n, steady_d))
        rows.append(("tg.jacobian (dense)", n, first_d, steady_d, f"max |sparse - dense| = {err:.1e}"))
    if dense_times:
        n0, t0 = dense_times[-1]
        if len(dense_times) > 1:  # the measured growth exponent, between 1 (per-row overhead) and 2 (O(n^2) work)
            n1, t1 = dense_times[-2]
            p = min(max(np.log(t0 / t1) / np.log(n0 / n1), 1.0), 2.0)
        else:
            p = 2.0
        est = t0 * (args.n / n0) ** p
        rows.append(("tg.jacobian (dense)", args.n, float("nan"), est,
                     f"extrapolated ~n^{p:.2f} from n={n0} (n^2 bound: {t0 * (args.n / n0) ** 2:.1f} s)"))

    print(f"\n1-D Bratu residual, tridiagonal Jacobian, device={device!r}, numpy {np.__version__}")
    print(f"{'method':<22}{'n':>8}{'first call [s]':>16}{'steady [s]':>13}  note")
    for name, n, first_t, steady_t, note in rows:
        ft = "-" if first_t != first_t else f"{first_t:.4f}"
        print(f"{name:<22}{n:>8}{ft:>16}{steady_t:>13.4f}  {note}")
    if dense_times:
        print(f"\nspeed-up at n={args.n} (steady, dense extrapolated): {est / steady:.0f}x")


if __name__ == "__main__":
    main()
