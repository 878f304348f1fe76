#!/usr/bin/env python
"""W2's gradient and HVP programs by size, with the program tier's long-loop handling off and on.

    python perf/stream_loops.py [--sizes 1e4,1e5,1e6,4e6] [--rounds 3] [--out perf/results/stream-loops-DATE.txt]

For each size the Rosenbrock value+grad and its Hessian-vector product are built twice on ``tier="program"``,
one thread, pinned to one CPU: with the aligned split and the prefetching blocks of
:func:`tapegrad.compile.program_ir.loop_range` turned off (``ALIGN_MIN`` set past every size while generating)
and on (the defaults).  The four are timed in interleaved rounds, their order rotated from round to round (a cell
that runs after the HVP finds the cache full of the HVP's arrays); median per round, then the best round; printed in ns per element with the HVP/grad ratio: the
"W2 HVP <= 1.5x grad" line of issue 3 at every size, and what the split and the prefetches give.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import one_core, rotated_best, table_row, write_table  # noqa: E402

one_core()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

import numpy as np  # noqa: E402


def rosen(tg, x):
    return tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def build(xv, vv, long_loops):
    """(grad call, HVP call) on the program tier for the arrays ``xv``, ``vv`` (the same for both variants: where an
    array's pages sit changed a loop's speed by up to 30 %), generated with the long-loop handling on or off."""
    import tapegrad as tg
    from tapegrad.compile import program_ir

    saved = program_ir.ALIGN_MIN
    program_ir.ALIGN_MIN = saved if long_loops else 1 << 62
    try:
        x, v = tg.dvector("x"), tg.dvector("v")
        c = rosen(tg, x)
        fg = tg.function([x], [c, tg.grad(c, x)], tier="program")
        fh = tg.function([x, v], [tg.hessian_vector_product(c, x, v)], tier="program")
        fg(xv)
        fh(xv, vv)  # generated and compiled now, with the setting above
    finally:
        program_ir.ALIGN_MIN = saved
    return (lambda: fg(xv)), (lambda: fh(xv, vv))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6,4e6", help="comma-separated element counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="also write the table here")
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",") if s.strip()]
    lines = ["# Rosenbrock value+grad and HVP, program tier, one thread on one CPU; ns per element (best round of "
             f"{a.rounds}); 'off': no aligned split or prefetch",
             f"{'n':>9s} {'grad off':>9s} {'HVP off':>9s} {'ratio':>6s} {'grad on':>9s} {'HVP on':>9s} {'ratio':>6s}"]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    for n in sizes:
        xv, vv = np.random.default_rng(0).uniform(-1.5, 1.5, n), np.random.default_rng(1).standard_normal(n)
        calls = [*build(xv, vv, False), *build(xv, vv, True)]
        reps = max(5, int(2e7 // max(n, 1)))
        g0, h0, g1, h1 = (t / n * 1e9 for t in rotated_best(calls, reps, a.rounds))
        table_row(lines, f"{n:9d} {g0:9.3f} {h0:9.3f} {h0 / g0:6.2f} {g1:9.3f} {h1:9.3f} {h1 / g1:6.2f}")
    write_table(lines, a.out)


if __name__ == "__main__":
    main()
