#!/usr/bin/env python
"""Interleaved A/B timing of compare.py's cells in ONE process: robust ratios on a loaded machine.

    python perf/interleaved.py --bench w6_rosen_hessian --system tapegrad --system jax [--rounds 3000]

``compare.py`` runs every cell in its own process, one after the other, so when another process takes the
core during one cell and not the next, the ratio moves (the ``*`` = bimodal timings in its table).  Here the
cells of one bench are built in one process (same factories as ``compare.py``: ``anchors.py`` peers plus
tapegrad's) and called alternately, one call each per round, for ``--rounds`` rounds; both systems see the
same load.  Printed per system: median, 10th percentile, min; and the median over rounds of the per-round
ratio against the first ``--system``.  One thread everywhere (set before the imports, as ``compare.py``).
tapegrad cells settle first (background compiles of the default tier finish: see ``compare._tg_settle``).
Each system's output is checked against the bench's NumPy reference.

Use it for the ratio, not for first-call times (a shared process: JIT caches and imports interact).
Caveat: JAX timed this way is 2-4x slower than alone on small workloads (W6 Hessian: p10 100 us interleaved,
22 us alone, 2026-11-26; likely its dispatch threads idle between its calls): for JAX prefer compare.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(k, "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
sys.path.insert(0, str(HERE))

import compare as C  # noqa: E402

A = C.A
A.emit = lambda tag, obj: None      # no @@PHASE progress lines (they are for compare.py's driver)


def build_cell(bench, system):
    if system.startswith("tapegrad"):
        C.register_tapegrad([system])
    else:
        C.import_system(system)
    data = A.BENCHES[bench].make_data()
    build, inputs = A.REGISTRY[bench][system](data)
    fn = build()
    sync = A._block if system == "jax" else (lambda out: out)
    out = sync(fn(*inputs))
    spec = A.BENCHES[bench]
    err = A.check(out, spec.reference(*[data[k] for k in spec.ref_args]))[0] if spec.reference else None
    if system.startswith("tapegrad"):
        C._tg_settle(fn, inputs)
        err2 = A.check(fn(*inputs), spec.reference(*[data[k] for k in spec.ref_args]))[0]
        err = max(err, err2) if err is not None else err2
    for _ in range(3):
        sync(fn(*inputs))
    return fn, inputs, sync, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--system", action="append", required=True, help="repeatable; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    if "torch" in args.system:
        import torch
        torch.set_num_threads(1)
    cells = {s: build_cell(args.bench, s) for s in args.system}
    times = {s: [] for s in args.system}
    for _ in range(args.rounds):
        for s, (fn, inputs, sync, _) in cells.items():
            t0 = time.perf_counter()
            sync(fn(*inputs))
            times[s].append(time.perf_counter() - t0)
    base = args.system[0]
    print(f"{args.bench}: {args.rounds} rounds, one call of each system per round, one thread; "
          f"ratio = per-round t(system)/t({base}), median over rounds")
    print(f"{'system':<18}{'median':>12}{'p10':>12}{'min':>12}{'ratio vs ' + base:>20}{'max rel err':>13}")
    for s in args.system:
        ts = sorted(times[s])
        med, p10, mn = statistics.median(ts), ts[len(ts) // 10], ts[0]
        ratio = statistics.median(a / b for a, b in zip(times[s], times[base]))
        err = cells[s][3]
        print(f"{s:<18}{A.fmt_t(med):>12}{A.fmt_t(p10):>12}{A.fmt_t(mn):>12}{ratio:>19.2f}x"
              f"{'-' if err is None else f'{err:.1e}':>13}")


if __name__ == "__main__":
    main()
