"""Sparse vs dense Jacobian of a 1-D Bratu residual (tridiagonal Jacobian).

Run:  python perf/sparse_jacobian.py [--n 10000] [--dense-n 1000 2000 10000] [--dense-repeat 2]

``tg.sparse_jacobian``: index-set pattern + 3-color compressed forward mode
(3 Jacobian-vector products in one compiled call); its result at ``--n`` is
checked against the hand-written CSR of the Bratu Jacobian (same ``indptr`` and
``indices``, nnz = 3n - 4, values to 1e-12 relative) and the color count.
``tg.jacobian``: one reverse sweep per row (map_rows), so O(n^2) work and a
dense n x n float64 result (800 MB at n = 10,000).  It is timed at every
``--dense-n`` size: the first call (compile + run) then ``--dense-repeat``
further calls (best of them is "steady"); at every size the dense result is
compared with the sparse one.  The speed-up is measured where ``--n`` is among
the ``--dense-n`` sizes (the default), else extrapolated to ``--n`` with the
growth exponent measured between the two largest sizes (clamped to [1, 2]).
The device is "cpu" when ``tg.function(..., device="cpu")`` runs this graph
correctly (checked in a subprocess, since a crash there must not end the
benchmark), else "python".
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tapegrad as tg  # noqa: E402
from tapegrad.gradient import jacobian  # noqa: E402
from tapegrad.sparse import sparse_jacobian  # noqa: E402


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


def bratu_csr(xv, lam=1.0):
    """The hand-written Jacobian of ``bratu`` as a SciPy CSR (sorted indices): rows 0 and n-1 are e_0, e_{n-1}."""
    import scipy.sparse as sp

    n = xv.shape[0]
    h2 = 1.0 / (n + 1.0) ** 2
    i = np.arange(1, n - 1)
    rows = np.concatenate([[0], np.repeat(i, 3), [n - 1]])
    cols = np.concatenate([[0], np.stack([i - 1, i, i + 1], 1).ravel(), [n - 1]])
    vals = np.concatenate([[1.0], np.stack([np.full(n - 2, 1.0 / h2), -2.0 / h2 + lam * np.exp(xv[1:-1]),
                                            np.full(n - 2, 1.0 / h2)], 1).ravel(), [1.0]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def check_exact(J, xv):
    """``(ok, note)``: J has exactly the reference's CSR structure and its values to 1e-12 relative."""
    R = bratu_csr(xv)
    J = J.tocsr().copy()
    J.sort_indices()
    same_structure = (J.shape == R.shape and J.nnz == R.nnz and np.array_equal(J.indptr, R.indptr)
                      and np.array_equal(J.indices, R.indices))
    if not same_structure:
        return False, f"structure differs: nnz {J.nnz} vs {R.nnz} (hand-written)"
    rel = float(np.max(np.abs(J.data - R.data)) / np.max(np.abs(R.data)))
    return rel <= 1e-12, f"CSR structure == hand-written (nnz={R.nnz} = 3n-4), values rel err {rel:.1e}"


def cpu_works(n):
    try:
        out = subprocess.run([sys.executable, "-c", _CPU_CHECK, str(n)], capture_output=True, text=True, timeout=300,
                             env=_env())
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if out.returncode == 0 and "ok" in out.stdout:
        return True, ""
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
    return False, f"exit code {out.returncode}" + (f": {tail[0]}" if tail else "")


def _env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dense-n", type=int, nargs="*", default=None,
                    help="sizes for the dense tg.jacobian (default: 1000 2000 and --n)")
    ap.add_argument("--dense-repeat", type=int, default=2,
                    help="dense calls timed after the first one, per size (default 2: 3 calls in all)")
    ap.add_argument("--sparse-repeat", type=int, default=10, help="sparse calls timed after the first one")
    ap.add_argument("--device", default=None, help="force a device (cpu or python)")
    args = ap.parse_args()
    dense_ns = args.dense_n if args.dense_n is not None else sorted({1000, 2000, args.n})

    device = args.device
    if device is None:
        ok, why = cpu_works(args.n)
        device = "cpu" if ok else "python"
        print(f"device: {device}" + ("" if ok else f"  (device='cpu' unusable here: {why})"), flush=True)
    x = tg.vector("x")
    r = bratu(x)
    rng = np.random.default_rng(0)

    rows = []
    sj = sparse_jacobian(r, x, device=device)
    xv = rng.uniform(0, 1, args.n)
    t0 = time.perf_counter()
    J = sj(xv)
    first = time.perf_counter() - t0
    steady = best_of(lambda: sj(xv), repeat=args.sparse_repeat)
    exact, why = check_exact(J, xv)
    colors_ok = sj.n_colors == 3
    rows.append(("sparse_jacobian", args.n, first, steady,
                 f"{sj.n_colors} colors, nnz={J.nnz}; {why}" + ("" if exact else " NOT EXACT")))
    print(f"sparse n={args.n}: first {first:.4f} s, best of {args.sparse_repeat} {steady:.5f} s; "
          f"{sj.n_colors} colors; {why}", flush=True)

    dense_times = []
    measured_at_n = None
    for n in dense_ns:
        xn = xv if n == args.n else rng.uniform(0, 1, n)
        t0 = time.perf_counter()
        f = tg.function([x], jacobian(r, x), device=device)
        D = f(xn)
        first_d = time.perf_counter() - t0
        times = []
        for _ in range(args.dense_repeat):
            t = time.perf_counter()
            D = f(xn)
            times.append(time.perf_counter() - t)
        steady_d = min(times) if times else first_d
        Sn = J if n == args.n else sparse_jacobian(r, x, device=device)(xn)
        Sd = Sn.toarray()
        err = float(np.max(np.abs(Sd - D)) / np.max(np.abs(D)))
        del Sd, D
        gc.collect()
        dense_times.append((n, steady_d))
        if n == args.n:
            measured_at_n = steady_d
        calls = ", ".join(f"{t:.3f}" for t in times)
        rows.append(("tg.jacobian (dense)", n, first_d, steady_d,
                     f"{len(times)} timed calls [{calls}] s; max|sparse - dense|/max|dense| = {err:.1e}"))
        print(f"dense n={n}: first {first_d:.3f} s, calls [{calls}] s, rel diff vs sparse {err:.1e}", flush=True)
        del f
        gc.collect()
    est = None
    if measured_at_n is None and dense_times:
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
        print(f"{name:<22}{n:>8}{ft:>16}{steady_t:>13.5f}  {note}")
    dense_at_n = measured_at_n if measured_at_n is not None else est
    if dense_at_n is not None:
        speedup = dense_at_n / steady
        how = "measured" if measured_at_n is not None else "dense extrapolated"
        print(f"\nspeed-up at n={args.n} (steady, {how}): {speedup:.0f}x  (target >= 100x: "
              f"{'met' if speedup >= 100 else 'MISSED'}); exact CSR: {'yes' if exact else 'NO'}; "
              f"3 colors: {'yes' if colors_ok else 'NO (%d)' % sj.n_colors}")


if __name__ == "__main__":
    main()
