#!/usr/bin/env python
"""Peak memory of the gradient through ``tg.scan``: ``checkpoint="all"`` vs ``"binomial"``.

    python perf/scan_memory.py                       # default table (n = 1e3, 3e3, 1e4 steps; 1,000-element state)
    python perf/scan_memory.py --steps 100000 --size 1000 --modes binomial

Problem: Lorenz-96 (``/work/shared/perf/anchors.py``), ``u_{t+1} = u + DT ((u_{i+1} - u_{i-2}) u_{i-1} - u + F)``,
``loss = sum(u_n ** 2)``, gradient w.r.t. ``u_0`` and ``F`` (``device="python"``, the reference engine).
Memory: ``tracemalloc`` peak during one call of the compiled gradient (after a warm-up call on 2 steps,
so compiling the loop bodies is not counted); NumPy's buffers are traced.  Also printed: the schedule's
forward steps (recomputation factor) and states held, from ``schedule_stats``.
Not a test (``tests/test_scan_checkpoint.py`` runs it on tiny sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapegrad as tg  # noqa: E402
from tapegrad.ops.scan import default_snapshots, schedule_stats  # noqa: E402

DT = 0.01


def l96_step(u, F):
    return u + DT * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)


def build(checkpoint, snapshots=None):
    """Compiled ``(u0, F, n) -> [loss, dloss/du0, dloss/dF]``."""
    u0, F, n = tg.dvector("u0"), tg.dscalar("F"), tg.iscalar("n")
    traj, _ = tg.scan(l96_step, outputs_info=u0, non_sequences=F, n_steps=n, checkpoint=checkpoint,
                      snapshots=snapshots)
    loss = (traj[-1] ** 2).sum()
    return tg.function([u0, F, n], [loss] + tg.grad(loss, [u0, F]), device="python")


def measure(checkpoint, steps, size, snapshots=None, seed=0):
    """``{"peak": bytes, "seconds": s, "result": [loss, gu, gF]}`` of one gradient call."""
    f = build(checkpoint, snapshots)
    u0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size)
    f(u0, 8.0, 2)  # warm-up: compiles the loop bodies
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    result = f(u0, 8.0, steps)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"peak": peak, "seconds": seconds, "result": result}


def run(steps_list, size, modes=("all", "binomial"), snapshots=None, out=print):
    """Measure every (steps, mode); print a markdown table; return the rows."""
    rows = []
    out(f"state: {size} float64 ({size * 8 / 1e3:.1f} kB); Lorenz-96 gradient, device='python'")
    out("| steps | mode | snapshots | forward steps (x n) | states held | peak MiB | time s | peak / all |")
    out("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in steps_list:
        base = None
        for mode in modes:
            s = None if mode == "all" else (snapshots or default_snapshots(n))
            st = schedule_stats(mode, n, s)
            m = measure(mode, n, size, s)
            if mode == "all":
                base = m
            ratio = m["peak"] / base["peak"] if base else float("nan")
            if base is not None and base is not m:
                same = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(m["result"], base["result"]))
                assert same <= 1e-12 * (1 + max(float(np.max(np.abs(b))) for b in base["result"])), same
            rows.append({"steps": n, "mode": mode, "snapshots": s, "peak": m["peak"], "seconds": m["seconds"],
                         "ratio": ratio, "advances": st["advances"], "states": st["peak_states"]})
            out(f"| {n} | {mode} | {'-' if s is None else s} | {(st['advances'] + n) / n:.2f} | {st['peak_states']} "
                f"| {m['peak'] / 2**20:.2f} | {m['seconds']:.1f} | {ratio:.4f} |")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--snapshots", type=int, default=None)
    p.add_argument("--modes", nargs="+", default=["all", "binomial"], choices=["all", "binomial"])
    a = p.parse_args(argv)
    return run(a.steps, a.size, tuple(a.modes), a.snapshots)


if __name__ == "__main__":
    main()
