#!/usr/bin/env python
"""Workloads beyond ``../shared/perf``: tapegrad against JAX (jit, float64) in ONE process on ONE core.

    python perf/more_workloads.py [--only NAME]... [--dtype float32] [--out perf/results/more-workloads-DATE.txt]

Each workload is one function ``f(xp, *args)`` written once for both systems (``xp`` is ``tapegrad`` or
``jax.numpy``); the measure is value and gradient (``tg.function([...], [f, *grad])`` on the default tier, settled as
in ``compare.py``; ``jax.jit(jax.value_and_grad)``).  Both are timed in alternating blocks (the median of each
block, then the median over rounds), so drift of the shared machine hits both alike.  Results are checked against
each other (largest difference relative to the largest value).  It prints a table, writes it to ``--out`` and
saves a bar chart of the ratios beside it (if matplotlib is importable).  ``--dtype float32`` runs every
workload in single precision on both sides (the arrays cast, the variables ``float32``).

* logistic regression, 100,000 x 50 (a GEMV, ``log1p(exp(.))``);
* least squares, 1,000,000 x 10, and a Poisson GLM, 20,000 x 300 (``X @ w`` and ``X.T @ r``: with the
  logistic regression, the program tier's row regions, which read ``X`` once);
* 1-D heat equation, 10^5 points, 50 explicit steps unrolled (shifted windows, 2,000 instructions: beyond one
  program's size limit, so a chain of programs);
* the same heat equation with periodic boundaries (``roll``);
* softmax cross-entropy, 2048 x 256 x 100 (two GEMMs, row max/sum);
* Gaussian-process negative log-likelihood, n = 200, d = 3 (pairwise distances, ``cholesky``, ``solve``);
* a tiny two-layer tanh network, 8 x 16 x 16 (call overhead);
* an elementwise mix over 2 x 10^6 (``sin``, ``exp``, ``sqrt``, ``log1p``);
* W2's Rosenbrock at n = 10^7 (80 MB arrays: results past glibc's mmap threshold, fresh pages every call);
* W1's MLP with a 4096-row batch;
* loops (``tg.scan`` against ``jax.lax.scan``): a tanh RNN, 100 steps of a 64 x 32 state fed a 64 x 16 input,
  loss over the trajectory and the last state; a second-order recurrence over 1,000 points, 200 steps
  (``taps=[-2, -1]``; JAX carries the two states).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import blas_kernels, blas_line, block_median, one_core, table_row, write_table  # noqa: E402

one_core()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


# --------------------------------------------------------------------------- workloads (xp: tapegrad or jax.numpy)
def logreg(xp, w, X, y):
    z = X @ w
    return xp.sum(xp.log1p(xp.exp(-y * z))) / X.shape[0] + 0.01 * xp.sum(w * w)


def least_squares(xp, w, X, y):
    r = X @ w - y
    return 0.5 * xp.sum(r * r) / X.shape[0]


def poisson(xp, w, X, y):
    z = X @ w
    return xp.sum(xp.exp(z) - y * z) / X.shape[0]


def heat(xp, u, k):
    for _ in range(50):
        u = u + 0.1 * k * (xp.concatenate([u[:1], u[:-1]]) - 2 * u + xp.concatenate([u[1:], u[-1:]]))
    return xp.sum(u ** 2)


def heat_periodic(xp, u, k):
    for _ in range(50):
        u = u + 0.1 * k * (xp.roll(u, 1) - 2 * u + xp.roll(u, -1))
    return xp.sum(u ** 2)


def xent(xp, W, X, Y):
    z = X @ W
    m = xp.max(z, axis=1, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(z - m), axis=1, keepdims=True)) + m
    return -xp.sum(Y * (z - lse)) / X.shape[0]


def gp(xp, ls, X, y):
    d = xp.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
    K = xp.exp(-0.5 * d / ls ** 2) + 1e-3 * xp.eye(X.shape[0])
    L = xp.linalg.cholesky(K)
    a = xp.linalg.solve(K, y)
    return 0.5 * xp.sum(y * a) + xp.sum(xp.log(xp.diagonal(L)))


def tiny_mlp(xp, W1, W2, x):
    return xp.sum(xp.tanh(xp.tanh(x @ W1) @ W2) ** 2)


def elementwise(xp, x, y):
    return xp.sum(xp.sin(x) * xp.exp(-y * y) + xp.sqrt(1 + x * x) * xp.log1p(y * y))


def rosenbrock(xp, x):
    return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def mlp(xp, W1, b1, W2, b2, X, Y):
    return xp.sum((xp.tanh(X @ W1 + b1) @ W2 + b2 - Y) ** 2) / X.shape[0]


def _jax(xp):
    return xp.__name__.startswith("jax")


def rnn(xp, W, U, h0, X):
    """A tanh RNN over a sequence; loss over the whole trajectory plus the last state (both, one loop)."""
    if _jax(xp):
        import jax

        def body(h, x):
            h = xp.tanh(h @ W + x @ U)
            return h, h

        last, traj = jax.lax.scan(body, h0, X)
    else:
        traj, _ = xp.scan(lambda x, h, W, U: xp.tanh(h @ W + x @ U), sequences=X, outputs_info=h0,
                          non_sequences=[W, U])
        last = traj[-1]
    return 0.01 * xp.sum(traj) + xp.sum(last ** 2)


def oscillator(xp, y0, a, b):
    """A second-order recurrence y[t] = a y[t-1] - b y[t-2] + 0.1 sin(y[t-1]) (scan taps [-2, -1]), 200 steps."""
    if _jax(xp):
        import jax

        def body(carry, _):
            y2, y1 = carry
            yn = a * y1 - b * y2 + 0.1 * xp.sin(y1)
            return (y1, yn), yn

        _, traj = jax.lax.scan(body, (y0[0], y0[1]), None, length=200)
    else:
        traj, _ = xp.scan(lambda y2, y1, a, b: a * y1 - b * y2 + 0.1 * xp.sin(y1),
                          outputs_info=dict(initial=y0, taps=[-2, -1]), non_sequences=[a, b], n_steps=200)
    return xp.sum(traj ** 2)


def workloads():
    r = np.random.default_rng(0)
    return {  # name: (function, arguments, indices of the arguments differentiated)
        "logreg 100k x 50": (logreg, [0.1 * r.standard_normal(50), r.standard_normal((100_000, 50)),
                                      np.sign(r.standard_normal(100_000))], [0]),
        "least squares 1e6 x 10": (least_squares, [r.standard_normal(10), r.standard_normal((1_000_000, 10)),
                                                    r.standard_normal(1_000_000)], [0]),
        "poisson glm 20k x 300": (poisson, [0.01 * r.standard_normal(300), r.standard_normal((20_000, 300)),
                                            r.poisson(1.0, 20_000).astype(np.float64)], [0]),
        "heat 1e5, 50 steps": (heat, [r.standard_normal(100_000), np.float64(0.5)], [0, 1]),
        "heat periodic (roll) 1e5": (heat_periodic, [r.standard_normal(100_000), np.float64(0.5)], [0, 1]),
        "softmax xent 2048x256x100": (xent, [0.05 * r.standard_normal((256, 100)), r.standard_normal((2048, 256)),
                                             np.eye(100)[r.integers(0, 100, 2048)]], [0]),
        "GP nll n=200": (gp, [np.float64(1.3), r.standard_normal((200, 3)), r.standard_normal(200)], [0]),
        "tiny mlp 8x16x16": (tiny_mlp, [r.standard_normal((16, 16)), r.standard_normal((16, 16)),
                                        r.standard_normal((8, 16))], [0, 1]),
        "elementwise 2 x 1e6": (elementwise, [r.standard_normal(1_000_000), r.standard_normal(1_000_000)], [0, 1]),
        "rosenbrock n=1e7": (rosenbrock, [r.uniform(-1.5, 1.5, 10_000_000)], [0]),
        "mlp 4096x256x256x10": (mlp, [0.05 * r.standard_normal((256, 256)), np.zeros(256),
                                      0.05 * r.standard_normal((256, 10)), np.zeros(10),
                                      r.standard_normal((4096, 256)), r.standard_normal((4096, 10))], [0, 1, 2, 3]),
        "rnn scan 100 x (64x32)": (rnn, [0.3 * r.standard_normal((32, 32)), 0.3 * r.standard_normal((16, 32)),
                                         0.1 * r.standard_normal((64, 32)), r.standard_normal((100, 64, 16))],
                                   [0, 1, 2]),
        "oscillator taps 200 x 1000": (oscillator, [0.1 * r.standard_normal((2, 1000)), np.float64(1.2),
                                                    r.uniform(0.3, 0.5, 1000)], [0, 1, 2]),
    }


# --------------------------------------------------------------------------- the two systems
def build_tapegrad(fn, args, wrt):
    import tapegrad as tg
    from tapegrad.compile.fused import _executor

    vs = [tg.tensor(dtype=np.asarray(a).dtype.name, shape=(None,) * np.ndim(a)) for a in args]
    out = fn(tg, *vs)
    f = tg.function(vs, [out, *tg.grad(out, [vs[i] for i in wrt])], device="cpu")
    t0 = time.perf_counter()
    first = f(*args)
    first_s = time.perf_counter() - t0
    for _ in range(6):  # past the tier thresholds; then let the background compile finish (as compare.py)
        f(*args)
    _executor().submit(lambda: None).result()
    for _ in range(3):
        f(*args)
    fast = getattr(f._engine, "fast", None)
    tier = "interp/fused" if fast is None else f"chain of {len(fast.pieces)}" if hasattr(fast, "pieces") else "program"
    return (lambda: f(*args)), [np.asarray(v) for v in first], first_s, tier


def build_jax(fn, args, wrt):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    jf = jax.jit(jax.value_and_grad(lambda *a: fn(jnp, *a), argnums=tuple(wrt)))
    ja = [jnp.asarray(a) for a in args]
    t0 = time.perf_counter()
    v, g = jax.block_until_ready(jf(*ja))
    first_s = time.perf_counter() - t0
    return (lambda: jax.block_until_ready(jf(*ja))), [np.asarray(v)] + [np.asarray(x) for x in g], first_s, "jit"


def duel(calls, rounds=9, budget=0.25):
    """Median over rounds of each system's block median; blocks sized to about ``budget`` seconds."""
    sizes = []
    for c in calls:
        t0 = time.perf_counter()
        c()
        sizes.append(max(3, min(2000, int(budget / max(time.perf_counter() - t0, 1e-7)))))
    per = [[] for _ in calls]
    for _ in range(rounds):
        for i, c in enumerate(calls):
            per[i].append(block_median(c, sizes[i]))
    return [statistics.median(p) for p in per]


def fmt(s):
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="run the workloads whose name contains this (repeatable)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", help="write the table here (and a .png of the ratios beside it)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    rows = []
    title = f"# value + gradient, {a.dtype}, one thread on one core, alternating blocks; ratio = tapegrad / JAX"
    head = (f"{'workload':28s} {'tapegrad':>11s} {'tier':>12s} {'JAX jit':>11s} {'ratio':>6s} "
            f"{'first tg':>9s} {'first JAX':>9s} {'rel diff':>8s}")
    lines = [title, head]  # (the file has no BLAS line)
    print(title, flush=True)
    print(blas_line(blas_kernels()), flush=True)
    print(head, flush=True)
    for name, (fn, args, wrt) in workloads().items():
        if a.only and not any(o in name for o in a.only):
            continue
        args = [np.asarray(x, a.dtype) if np.ndim(x) else np.dtype(a.dtype).type(x) for x in args]
        tc, tv, tfirst, tier = build_tapegrad(fn, args, wrt)
        jc, jv, jfirst, _ = build_jax(fn, args, wrt)
        diff = max(float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), 1e-300) for x, y in zip(tv, jv))
        tt, tj = duel([tc, jc], rounds=a.rounds)
        rows.append((name, tt / tj))
        table_row(lines, f"{name:28s} {fmt(tt):>11s} {tier:>12s} {fmt(tj):>11s} {tt / tj:6.2f} {tfirst:8.2f}s "
                         f"{jfirst:8.2f}s {diff:8.1e}")
    write_table(lines, a.out)
    if a.out:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(8, 3.5))
            ax.barh([r[0] for r in rows], [r[1] for r in rows], color=["tab:green" if r[1] <= 1 else "tab:red"
                                                                       for r in rows])
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xlabel("tapegrad time / JAX time (value + gradient, one thread)")
            fig.tight_layout()
            fig.savefig(str(Path(a.out).with_suffix(".png")), dpi=110)
        except ImportError:
            pass


if __name__ == "__main__":
    main()
