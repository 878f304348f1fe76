#!/usr/bin/env python
"""The memory floor under W2's grad and HVP: one-input vs two-input streaming loops, by size.

    python perf/memory_floor.py

W2's gradient reads ``x`` and writes one array; its HVP reads ``x`` and ``v`` and writes one array.  Both of
tapegrad's programs are single vectorised passes, so their speed is set by how fast one core streams those
arrays.  This script times the cheapest loops with the same traffic (Numba, one thread, pinned to one CPU):
``one`` reads x[i], x[i+1] and writes o[i]; ``two`` also reads v[i], v[i+1].  Their ratio is the lowest
HVP/grad ratio a memory-bound implementation can reach at each size.  On the shared 2-core machine of this
project it jumps at n = 1e6 (16 MB of working set fits the cache the core gets, 24 MB does not).  The last
three columns time the same loops on copies of the arrays that start on a 64-byte cache line (a large NumPy
array starts 16 bytes past one, so each AVX-512 load of it spans two lines): what the program tier's aligned
loop split (docs/program.md) recovers.
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402


@njit(fastmath={"reassoc"})
def one(x):
    n = x.size
    o = np.empty(n)
    s = 0.0
    for i in range(n - 1):
        o[i] = x[i] * 2.0 + x[i + 1]
        s += x[i]
    o[n - 1] = 0.0
    return s, o


@njit(fastmath={"reassoc"})
def two(x, v):
    n = x.size
    o = np.empty(n)
    for i in range(n - 1):
        o[i] = x[i] * v[i] + x[i + 1] * v[i + 1]
    o[n - 1] = 0.0
    return o


def aligned(a):
    """A copy of ``a`` that starts on a 64-byte line (NumPy's large arrays start 16 bytes past one)."""
    raw = np.empty(a.size + 8)
    k = (-raw.ctypes.data % 64) // 8
    out = raw[k:k + a.size]
    out[:] = a
    return out


def main():
    print(f"{'n':>9s} {'one (ns/el)':>12s} {'two (ns/el)':>12s} {'two/one':>8s} {'one, aligned':>13s} "
          f"{'two, aligned':>13s} {'two/one':>8s}")
    for n in (10**4, 10**5, 10**6, 4 * 10**6):
        rng = np.random.default_rng(0)
        x, v = rng.random(n), rng.random(n)
        xa, va = aligned(x), aligned(v)
        one(x)
        two(x, v)
        cells = (("one", one, (x,)), ("two", two, (x, v)), ("one_a", one, (xa,)), ("two_a", two, (xa, va)))
        res = {k: [] for k, _, _ in cells}
        for _ in range(9):  # interleaved rounds: drift of the shared core hits all alike
            for k, f, a in cells:
                ts = []
                for _ in range(max(10, 10**7 // n)):
                    t = time.perf_counter()
                    f(*a)
                    ts.append(time.perf_counter() - t)
                res[k].append(statistics.median(ts))
        m = {k: statistics.median(t) / n * 1e9 for k, t in res.items()}
        print(f"{n:9d} {m['one']:12.3f} {m['two']:12.3f} {m['two'] / m['one']:8.2f} {m['one_a']:13.3f} "
              f"{m['two_a']:13.3f} {m['two_a'] / m['one_a']:8.2f}")
    print(f"(arrays from NumPy start {x.ctypes.data % 64} bytes past a 64-byte line; 'aligned': copies that start on one)")


if __name__ == "__main__":
    main()
