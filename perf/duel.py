#!/usr/bin/env python
"""Interleaved timing: tapegrad and a peer in ONE process on ONE core, in alternating blocks.

    python perf/duel.py [--bench w1_mlp]... [--peer jax] [--rounds 15] [--block 30]

Why: ``perf/compare.py`` runs every cell in its own process, one after another.  On this shared machine the
speed of the core drifts by 10-30 % over minutes (other tenants), so two cells timed five minutes apart can
disagree by more than the difference being measured (JAX's W1 gave 6.5, 8.9 and 7.6 ms in three runs of one
afternoon).  Here both systems run in the same process, pinned to one CPU with one thread each, and alternate
blocks of ``--block`` calls for ``--rounds`` rounds; each round gives a ratio of block medians measured
seconds apart, and the table reports the median ratio and its spread over rounds.  With ``w2_rosen_grad`` and
``w2_rosen_hvp`` both selected it also prints tapegrad's HVP/grad ratio from the same rounds.

The workloads, data and peer factories come from ``../shared/perf/anchors.py`` and the tapegrad factories
from ``perf/compare.py`` (default tier, settled as there).  Outputs are checked against the NumPy reference.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_core import blas_kernels, blas_line, one_core  # noqa: E402

one_core()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as C  # noqa: E402  (loads anchors.py and registers the tapegrad factories)

A = C.A


def _sync(out):
    for o in out if isinstance(out, (list, tuple)) else [out]:
        if hasattr(o, "block_until_ready"):
            o.block_until_ready()


def build(bench, system):
    data = A.BENCHES[bench].make_data()
    make, inputs = A.REGISTRY[bench][system](data)
    fn = make()
    _sync(fn(*inputs))
    if system.startswith("tapegrad"):
        C._tg_settle(fn, inputs)
    ref = A.BENCHES[bench].reference
    if ref is not None:
        err = A.check(fn(*inputs), ref(*[data[k] for k in A.BENCHES[bench].ref_args]))[0]
        if not err < 1e-8:
            sys.exit(f"duel: {bench}/{system} disagrees with the NumPy reference (rel err {err:.1e})")
    return fn, inputs


def block(fn, inputs, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        _sync(fn(*inputs))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _fmt(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", action="append", help="w1_mlp, w2_rosen_grad, w2_rosen_hvp, ... (repeatable)")
    ap.add_argument("--peer", default="jax")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=30)
    args = ap.parse_args(argv)
    benches = args.bench or ["w1_mlp", "w2_rosen_grad", "w2_rosen_hvp"]
    C.register_tapegrad(["tapegrad"])
    C.import_system("tapegrad")
    C.import_system(args.peer)
    cells = {}
    for b in benches:
        for s in ("tapegrad", args.peer):
            if s not in A.REGISTRY.get(b, {}):
                sys.exit(f"duel: no {s} factory for {b}")
            cells[b, s] = build(b, s)
    times = {k: [] for k in cells}
    for r in range(args.rounds):
        for k, (fn, inputs) in cells.items():
            times[k].append(block(fn, inputs, args.block))
        print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"# one core, one thread; {args.rounds} rounds of {args.block} calls per system, interleaved")
    print(blas_line(blas_kernels()))
    print(f"{'bench':16s} {'tapegrad':>12s} {args.peer:>12s}  ratio tapegrad/{args.peer}: median [min, max] over rounds")
    for b in benches:
        t, p = times[b, "tapegrad"], times[b, args.peer]
        ratios = [x / y for x, y in zip(t, p)]
        print(f"{b:16s} {_fmt(statistics.median(t)):>12s} {_fmt(statistics.median(p)):>12s}  "
              f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]")
    if "w2_rosen_grad" in benches and "w2_rosen_hvp" in benches:
        hr = [h / g for h, g in zip(times["w2_rosen_hvp", "tapegrad"], times["w2_rosen_grad", "tapegrad"])]
        print(f"tapegrad HVP / grad (W2, same rounds): {statistics.median(hr):.2f}x [{min(hr):.2f}, {max(hr):.2f}]")


if __name__ == "__main__":
    main()
