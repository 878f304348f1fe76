"""Where parallel program loops start to pay: the same value+grad programs compiled serial and with every loop
split over the threads (``TAPEGRAD_PAR_WORK=1``), timed interleaved at growing sizes, for a cheap loop
(``sum(x * x)``) and one with libm-class functions (``sum(tanh(x) * exp(-x * x))``).

    NUMBA_NUM_THREADS=2 python perf/parallel_crossover.py      # needs the `parallel` extra (tbb); ~1 min

Prints serial and parallel medians and their ratio; ``tapegrad/compile/threads.py`` picks ``PAR_WORK`` from it.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".numba_cache"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import tapegrad as tg  # noqa: E402
from tapegrad.compile import program_gen, program_ir, threads  # noqa: E402

SIZES = (4096, 16384, 65536, 262144, 1048576)


def build(n_threads, n, kind):
    program_gen.program_threads = lambda: n_threads
    program_ir.PAR_WORK = 1
    x = tg.dvector("x")
    c = tg.sum(x * x) if kind == "cheap" else tg.sum(tg.tanh(x) * tg.exp(-x * x))
    f = tg.function([x], [c, tg.grad(c, x)], tier="program")
    f(np.ones(n))
    (prog,) = f._engine._programs.values()
    assert ("prange(" in prog.program.source) == (n_threads > 1)
    return f


def main():
    n_threads, layer = threads.parallel_info()
    if n_threads < 2:
        sys.exit(f"parallel loops are off here: {layer}")
    print(f"# {n_threads} threads, layer {layer}")
    print(f"{'loop':6} {'n':>8} {'serial':>10} {'parallel':>10} {'ratio':>6}")
    for kind in ("cheap", "tanh"):
        for n in SIZES:
            fs, fp = build(1, n, kind), build(n_threads, n, kind)
            v = np.random.default_rng(0).random(n)
            ts, tp = [], []
            for _ in range(max(100, 2_000_000 // n)):
                t = time.perf_counter()
                fs(v)
                ts.append(time.perf_counter() - t)
                t = time.perf_counter()
                fp(v)
                tp.append(time.perf_counter() - t)
            s, p = np.median(ts) * 1e6, np.median(tp) * 1e6
            print(f"{kind:6} {n:>8} {s:>8.1f}us {p:>8.1f}us {p / s:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
