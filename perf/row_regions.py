#!/usr/bin/env python
"""Generalised linear models' value and gradient with the program tier's row regions off and on.

    python perf/row_regions.py [--shapes 100000x50,1000000x10,30000x300] [--threads 1] [--rounds 5]
                               [--out perf/results/row-regions-DATE.txt]

For each ``m x k`` shape, logistic regression (``sum(log1p(exp(-y * (X @ w))))``) is built twice on
``tier="program"`` for the same arrays: with no row regions (``ROW_MIN_BYTES`` past every matrix while
generating) and with every region the generator finds at any size and width (the thresholds of
:func:`tapegrad.compile.program_rows.worth_a_region` lifted), so the table shows what a region does at each
shape, also where the defaults would not make one (the last column says whether they would).  With one thread
everything is pinned to one CPU (BLAS too); ``--threads 2`` leaves BLAS its default threads.  The two
are timed in interleaved rounds, their order rotated (``one_core.rotated_best``); median per round, then the
best round, in milliseconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import one_core, rotated_best, table_row, write_table  # noqa: E402

if "--threads" not in sys.argv or sys.argv[sys.argv.index("--threads") + 1] == "1":
    one_core()
else:
    import os

    os.environ["NUMBA_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

import numpy as np  # noqa: E402


def build(w0, X0, y0, regions):
    """The value-and-gradient call of logistic regression on these arrays, generated with regions or without."""
    import tapegrad as tg
    from tapegrad.compile import program_rows

    names = ("ROW_MIN_BYTES", "ROW_MIN_COLS", "ROW_MIN_BYTES_PAR", "ROW_MAX_COLS_PAR")
    saved = [getattr(program_rows, n) for n in names]
    for n, v in zip(names, (0, 1, 0, 1 << 30) if regions else (1 << 62, 1 << 30, 1 << 62, 0)):
        setattr(program_rows, n, v)
    try:
        w, X, y = tg.dvector("w"), tg.dmatrix("X"), tg.dvector("y")
        c = tg.sum(tg.log1p(tg.exp(-y * (X @ w)))) / X.shape[0] + 0.01 * tg.sum(w * w)
        f = tg.function([w, X, y], [c, tg.grad(c, w)], tier="program")
        f(w0, X0, y0)  # generated and compiled now, with the setting above
        (prog,) = f._engine._programs.values()
        assert ("opaque(" in prog.program.source) == regions, "a region where none was asked for, or none made"
    finally:
        for n, v in zip(names, saved):
            setattr(program_rows, n, v)
    return lambda: f(w0, X0, y0)


def default_makes_one(m, k):
    from tapegrad.compile.program_rows import worth_a_region
    from tapegrad.compile.threads import program_threads

    return worth_a_region(m, k, 8, program_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="100000x50,1000000x10,40000x100,30000x300,20000x100,1600x5000",
                    help="comma-separated m x k")
    ap.add_argument("--threads", default="1", help="NUMBA_NUM_THREADS (1: pinned to one CPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="also write the table here")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",") if s.strip()]
    lines = [f"# logistic regression value+grad, program tier, {a.threads} thread(s); ms (best round of {a.rounds})",
             f"{'m':>9s} {'k':>5s} {'MB':>6s} {'off':>8s} {'on':>8s} {'on/off':>7s} {'default':>8s}"]
    for line in lines:
        print(line, flush=True)
    for m, k in shapes:
        r = np.random.default_rng(0)
        w0, X0, y0 = 0.1 * r.standard_normal(k), r.standard_normal((m, k)), np.sign(r.standard_normal(m))
        calls = [build(w0, X0, y0, False), build(w0, X0, y0, True)]
        reps = max(10, int(2e8 // max(m * k, 1)))
        off, on = (t * 1e3 for t in rotated_best(calls, reps, a.rounds))
        table_row(lines, f"{m:9d} {k:5d} {m * k * 8 / 2 ** 20:6.1f} {off:8.4f} {on:8.4f} {on / off:7.2f} "
                         f"{'region' if default_makes_one(m, k) else 'none':>8s}")
    write_table(lines, a.out)


if __name__ == "__main__":
    main()
