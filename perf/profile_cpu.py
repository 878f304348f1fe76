#!/usr/bin/env python
"""Where a tapegrad CPU call spends its time (for the engine author).

    python perf/profile_cpu.py [--bench w3_small] [--bench w2_rosen_grad] [--calls N] [--fresh-cache]

For each bench (default: W3 n=10 value+grad, W2 Rosenbrock n=1e6 value+grad;
also available: w2_rosen_hvp, w4_l96_unrolled, w5_jac) it builds the function
with ``device="cpu"`` and reports:

* the tape: length, segments, native instructions and the op codes that fall
  back to Python callbacks (``CPUEngine.native_codes()``);
* the time split of one call (median over N calls, instrumented by wrapping
  methods of ``tapegrad.compile.cpu`` from the outside, nothing edited):
  argument checks (``Function._filter_args``), plan lookup (``CPUEngine.run``
  up to ``Plan.execute``), copy-in, compiled interpreter segments, Python
  callbacks (per op code), copy-out / rest, and ``Function.__call__`` overhead;
  the uninstrumented median is printed beside it;
* a cProfile of N calls (top functions by own time).

Workload graphs come from ``../shared/perf/anchors.py`` via ``compare.py``.
Set ``NUMBA_CACHE_DIR`` as usual (default ``<repo>/.numba_cache``);
``--fresh-cache`` uses a new empty one (the engine is compiled in this process).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _setup_env(argv):
    fresh = "--fresh-cache" in argv
    if fresh:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tapegrad-numba-cache-")
    else:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))


_setup_env(sys.argv)

import numpy as np  # noqa: E402

import compare  # noqa: E402  (loads anchors.py, defines the tapegrad graphs)

A = compare.A


def fmt(s):
    return compare.fmt_t(s)


class Timers:
    def __init__(self):
        self.t = defaultdict(float)
        self.n = defaultdict(int)

    def add(self, key, dt):
        self.t[key] += dt
        self.n[key] += 1


def instrument(timers):
    """Wrap Plan.execute / Plan._callback / engine.interp / Function._filter_args; returns an undo function."""
    from tapegrad.compile import cpu
    from tapegrad.compile import function as fmod
    from tapegrad.registry import name_of

    saved = []
    pc = time.perf_counter

    def wrap(owner, name, make):
        orig = getattr(owner, name)
        saved.append((owner, name, orig))
        setattr(owner, name, make(orig))

    wrap(fmod.Function, "_filter_args", lambda orig: lambda self, *a, **k: _timed(timers, "arg checks", orig, self, *a, **k))
    wrap(cpu.CPUEngine, "run", lambda orig: lambda self, *a, **k: _timed(timers, "engine.run", orig, self, *a, **k))
    wrap(cpu.Plan, "execute", lambda orig: lambda self, *a, **k: _timed(timers, "plan.execute", orig, self, *a, **k))

    def cb_make(orig):
        def cb(self, k, *a, **kw):
            t0 = pc()
            try:
                return orig(self, k, *a, **kw)
            finally:
                timers.add("callback " + name_of(int(self.engine.tape.codes[k])), pc() - t0)
        return cb
    wrap(cpu.Plan, "_callback", cb_make)

    def undo():
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)
    return undo


def _timed(timers, key, fn, *a, **k):
    t0 = time.perf_counter()
    try:
        return fn(*a, **k)
    finally:
        timers.add(key, time.perf_counter() - t0)


def wrap_interp(engine, timers):
    orig = engine.interp
    pc = time.perf_counter

    def interp(*a):
        t0 = pc()
        r = orig(*a)
        timers.add("interp segments", pc() - t0)
        return r
    engine.interp = interp
    return lambda: setattr(engine, "interp", orig)


def median_call(f, args, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def copy_in_out_cost(engine, args):
    """Time of the copies Plan.execute does around the interpreter (copy-in of inputs, .copy() of outputs)."""
    plan = next(iter(engine._plans.values()), None)
    if plan is None:
        return None, None
    vals = [np.asarray(a) for a in args]
    n = 200 if sum(a.size for a in vals) < 10_000 else 20
    t0 = time.perf_counter()
    for _ in range(n):
        for v, a in zip(plan.in_views, vals):
            np.copyto(v, a, casting="unsafe")
    t1 = time.perf_counter()
    for _ in range(n):
        [v.copy() for v in plan.out_views]
    t2 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n


def instruction_times(engine, args, reps):
    """[(seconds, k, op name, native?, out shape)]: every instruction run alone, in tape order (same semantics)."""
    from tapegrad.registry import name_of
    plans = getattr(engine, "_plans", {})
    if len(plans) != 1 or getattr(engine, "_dynamic", None):
        return None
    plan = next(iter(plans.values()))
    tape = engine.tape
    Ar, meta, fp = plan.native_arenas, plan.meta, engine.fparams
    samples = {}
    for _ in range(reps):
        for seg in engine.segments:
            ks = range(seg[1], seg[2]) if seg[0] else [seg[1]]
            for k in ks:
                t0 = time.perf_counter()
                if seg[0]:
                    engine.interp(meta, fp, k, k + 1, Ar[0], Ar[1], Ar[2], Ar[3])
                else:
                    plan._callback(k, None)
                samples.setdefault(k, []).append(time.perf_counter() - t0)
    out = []
    for k, ts in samples.items():
        o = tape.instr_outs(k)
        shape = plan.shapes[int(o[0])] if len(o) else ()
        out.append((statistics.median(ts), k, name_of(int(tape.codes[k])), bool(engine.native[k]), shape))
    return out


def profile_bench(bench, calls, top):
    graph, names = compare.TG_GRAPHS[bench]
    data = A.BENCHES[bench].make_data()
    args = [data[k] for k in names]
    import tapegrad as tg
    t0 = time.perf_counter()
    ins, outs = graph(tg)
    t1 = time.perf_counter()
    f = tg.function(ins, outs, device="cpu")
    t2 = time.perf_counter()
    out = f(*args)
    t3 = time.perf_counter()
    ref = A.BENCHES[bench].reference(*args)
    err, msg = A.check(out if isinstance(out, list) else [out], ref)
    eng = f._engine
    nat, cb = eng.native_codes() if hasattr(eng, "native_codes") else ({}, {})
    segs = getattr(eng, "segments", [])
    n_native_segs = sum(1 for s in segs if s[0])
    print(f"\n=== {bench}: {A.BENCHES[bench].title}")
    print(f"graph+grad {fmt(t1 - t0)}, tg.function {fmt(t2 - t1)}, first call {fmt(t3 - t2)}, "
          f"max rel err {err:.1e} {msg}")
    print(f"tape: {len(f.tape)} instructions, {len(segs)} segments ({n_native_segs} compiled, "
          f"{len(segs) - n_native_segs} Python callbacks)")
    print("native:   " + " ".join(f"{k}x{v}" for k, v in sorted(nat.items(), key=lambda kv: -kv[1])))
    print("callback: " + (" ".join(f"{k}x{v}" for k, v in sorted(cb.items(), key=lambda kv: -kv[1])) or "none"))

    n = calls if calls else (2000 if bench == "w3_small" else 30)
    median_call(f, args, min(n, 50))                       # warm-up
    med, mn = median_call(f, args, n)
    print(f"uninstrumented: median {fmt(med)} (min {fmt(mn)}) over {n} calls")

    timers = Timers()
    undo = instrument(timers)
    undo_i = wrap_interp(eng, timers)
    try:
        calls = []                     # per-call times of each part: the medians resist contention bursts
        for _ in range(n):
            before = dict(timers.t)
            t0 = time.perf_counter()
            f(*args)
            dt = time.perf_counter() - t0
            calls.append(dict({k: v - before.get(k, 0.0) for k, v in timers.t.items()}, total=dt))
    finally:
        undo_i()
        undo()
    keys = set().union(*calls)
    per = {k: statistics.median(c.get(k, 0.0) for c in calls) for k in keys}
    total = per.pop("total")
    cin, cout = copy_in_out_cost(eng, args)
    run = per.get("engine.run", 0.0)
    exe = per.get("plan.execute", 0.0)
    interp = per.get("interp segments", 0.0)
    cbs = {k: v for k, v in per.items() if k.startswith("callback ")}
    cbt = sum(cbs.values())
    rows = [("Function.__call__ overhead (outside checks and engine.run)", total - per.get("arg checks", 0.0) - run),
            ("argument checks (_filter_args)", per.get("arg checks", 0.0)),
            ("plan lookup (engine.run before execute: asarray, key, dict)", run - exe),
            ("copy-in of inputs (measured separately)", cin or 0.0),
            (f"compiled interpreter ({n_native_segs} segment calls)", interp),
            (f"Python callbacks ({len(segs) - n_native_segs} calls)", cbt),
            ("copy-out + loop rest of execute", exe - interp - cbt - (cin or 0.0))]
    print(f"instrumented: median {fmt(total)} per call; split (median of each part):")
    for label, v in rows:
        print(f"  {label:<62} {fmt(v):>10}  {100 * v / total:5.1f}%")
    for k, v in sorted(cbs.items(), key=lambda kv: -kv[1]):
        print(f"    {k:<60} {fmt(v):>10}  {100 * v / total:5.1f}%  ({timers.n[k] // n} per call)")
    if cout is not None:
        print(f"  (output copies alone: {fmt(cout)})")

    per_instr = instruction_times(eng, args, reps=3 if n <= 50 else 50)
    if per_instr:
        tot = sum(t for t, *_ in per_instr)
        print(f"per instruction (the tape re-run one instruction per interp call, median of reps; sum {fmt(tot)}), top 12:")
        for t, k, name, native, shape in sorted(per_instr, reverse=True)[:12]:
            print(f"    #{k:<4} {name:<20} {'native' if native else 'CALLBACK':<8} out {str(shape):<14} {fmt(t):>10}"
                  f"  {100 * t / tot:5.1f}%")

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        f(*args)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    text = s.getvalue()
    keep = text[text.find("   ncalls"):] if "   ncalls" in text else text
    print(f"cProfile, {n} calls, top {top} by own time:")
    print("\n".join("  " + ln for ln in keep.rstrip().splitlines()))
    return {"bench": bench, "median_s": med, "instrumented_s": total, "split": dict(rows),
            "callbacks": cbs, "native": nat, "callback_counts": cb}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="append", choices=sorted(compare.TG_GRAPHS),
                    help="default: w3_small and w2_rosen_grad")
    ap.add_argument("--calls", type=int, default=0, help="calls per measurement (default 2000 for W3, 30 for W2)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--fresh-cache", action="store_true", help="new empty NUMBA_CACHE_DIR (compiles the engine)")
    args = ap.parse_args()
    print(f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}")
    t0 = time.perf_counter()
    import tapegrad  # noqa: F401
    import tapegrad.compile.cpu  # noqa: F401
    print(f"import tapegrad: {fmt(time.perf_counter() - t0)}")
    for b in args.bench or ["w3_small", "w2_rosen_grad"]:
        profile_bench(b, args.calls, args.top)


if __name__ == "__main__":
    main()
