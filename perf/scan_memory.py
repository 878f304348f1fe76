#!/usr/bin/env python
"""Peak memory of the gradient through ``tg.scan``: ``checkpoint="all"`` vs ``"binomial"``.

    python perf/scan_memory.py                       # default table (n = 1e3, 3e3, 1e4 steps; 1,000-element state)
    python perf/scan_memory.py --steps 100000 --size 1000 --modes binomial
    python perf/scan_memory.py --steps 100000 --measure rss     # fast: RSS high-water mark, one subprocess per cell

Problem: Lorenz-96 (``/work/shared/perf/anchors.py``), ``u_{t+1} = u + DT ((u_{i+1} - u_{i-2}) u_{i-1} - u + F)``,
``loss = sum(u_n ** 2)``, gradient w.r.t. ``u_0`` and ``F`` (``device="python"``, the reference engine).
Memory (``--measure``):

* ``tracemalloc`` (default): peak of traced allocations during one call of the compiled gradient (after a
  warm-up call on 2 steps, so compiling the loop bodies is not counted); NumPy's buffers are traced.
  Exact, but tracing slows the Python loop 4-7x (2.7-4.5 ms a step at 1,000 elements on the 2-core machine):
  100,000 steps took 447 s ("all") + 1186 s ("binomial") on 2026-11-26.
* ``rss``: each (steps, mode) cell runs in its own fresh subprocess (so memory freed by an earlier cell and kept
  by malloc cannot hide growth); after the warm-up call the kernel's RSS high-water mark is reset
  (``/proc/self/clear_refs`` = 5, Linux) and the peak is ``VmHWM`` after the call minus ``VmRSS`` before it.
  Full speed (~0.5 ms a step); includes allocator/page granularity, so it reads slightly above tracemalloc.
  The results of each cell come back through an ``.npz`` file and are compared with ``"all"`` (must agree to 1e-12).

``--device``: the outer function's engine.  The loop bodies always run on the reference engine
(``Scan.perform`` / ``ScanGrad.perform`` compile them with ``device="python"``; the CPU and CUDA engines call
``perform`` back for ``SCAN``/``SCAN_GRAD``), so ``"python"`` (default) is the fastest: ~0.52 ms a step
("all") vs ~0.60 ms with ``device="cpu"`` (2-core machine, 1,000 steps).
Also printed: the schedule's forward steps (recomputation factor) and states held, from ``schedule_stats``.
Not a test (``tests/test_scan_checkpoint.py`` runs it on tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def build(checkpoint, snapshots=None, device="python"):
    """Compiled ``(u0, F, n) -> [loss, dloss/du0, dloss/dF]``."""
    u0, F, n = tg.dvector("u0"), tg.dscalar("F"), tg.iscalar("n")
    traj, _ = tg.scan(l96_step, outputs_info=u0, non_sequences=F, n_steps=n, checkpoint=checkpoint,
                      snapshots=snapshots)
    loss = (traj[-1] ** 2).sum()
    return tg.function([u0, F, n], [loss] + tg.grad(loss, [u0, F]), device=device)


def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_rss_here(checkpoint, steps, size, snapshots=None, seed=0, device="python"):
    """In this process: ``{"peak": bytes, "seconds": s, "result": ...}``, peak = VmHWM after - VmRSS before."""
    f = build(checkpoint, snapshots, device)
    u0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size)
    f(u0, 8.0, 2)  # warm-up: compiles the loop bodies
    with open("/proc/self/clear_refs", "w") as fh:   # reset the RSS high-water mark (VmHWM) to the current RSS
        fh.write("5")
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    result = f(u0, 8.0, steps)
    seconds = time.perf_counter() - t
    peak = (_status_kb("VmHWM") - before) * 1024
    return {"peak": peak, "seconds": seconds, "result": result, "rss_before": before * 1024}


def measure_rss(checkpoint, steps, size, snapshots=None, seed=0, device="python"):
    """``measure_rss_here`` in a fresh subprocess (results through an .npz file)."""
    with tempfile.TemporaryDirectory(prefix="scan-memory-") as tmp:
        res = os.path.join(tmp, "result.npz")
        cmd = [sys.executable, os.path.abspath(__file__), "--cell", checkpoint, str(steps), str(size),
               "-1" if snapshots is None else str(snapshots), str(seed), device, res]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"cell {checkpoint} {steps} failed:\n{p.stderr[-2000:]}")
        rec = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("@@CELL "))[7:])
        arrs = np.load(res, allow_pickle=False)
        rec["result"] = [arrs["loss"], arrs["gu"], arrs["gF"]]
        return rec


def _cell_main(argv):
    checkpoint, steps, size, snapshots, seed, device, res = argv
    snapshots = None if int(snapshots) < 0 else int(snapshots)
    m = measure_rss_here(checkpoint, int(steps), int(size), snapshots, int(seed), device)
    loss, gu, gF = (np.asarray(a) for a in m["result"])
    with open(res, "wb") as fh:
        np.savez(fh, loss=loss, gu=gu, gF=gF)
    print("@@CELL " + json.dumps({"peak": m["peak"], "seconds": m["seconds"], "rss_before": m["rss_before"]}),
          flush=True)


def _drain_background_compiles(timeout=600.0):
    """Wait for tapegrad's background compile thread (fused loops, programs queued by earlier work in this
    process) to go idle."""
    try:
        from tapegrad.compile.fused import _executor
    except ImportError:
        return
    _executor().submit(lambda: None).result(timeout=timeout)


def measure(checkpoint, steps, size, snapshots=None, seed=0, device="python"):
    """``{"peak": bytes, "seconds": s, "result": [loss, gu, gF]}`` of one gradient call (tracemalloc)."""
    f = build(checkpoint, snapshots, device)
    u0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size)
    f(u0, 8.0, 2)  # warm-up: compiles the loop bodies
    _drain_background_compiles()  # tracemalloc sees every thread: a compile still running would count
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    result = f(u0, 8.0, steps)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"peak": peak, "seconds": seconds, "result": result}


def run(steps_list, size, modes=("all", "binomial"), snapshots=None, out=print, measure_with="tracemalloc",
        device="python"):
    """Measure every (steps, mode); print a markdown table; return the rows.

    ``measure_with``: ``"tracemalloc"`` (in this process) or ``"rss"`` (one subprocess per cell).
    Gradients of every mode are compared with ``"all"`` (when it ran): ``max |diff|`` over (loss, du0, dF),
    and that divided by ``max |value|``; more than 1e-12 relative raises ``AssertionError``.
    """
    meas = {"tracemalloc": measure, "rss": measure_rss}[measure_with]
    rows = []
    how = ("tracemalloc peak during the call" if measure_with == "tracemalloc"
           else "RSS high-water mark during the call minus RSS before it, fresh process per cell")
    out(f"state: {size} float64 ({size * 8 / 1e3:.1f} kB); Lorenz-96 gradient, device={device!r}; memory: {how}")
    out("| steps | mode | snapshots | forward steps (x n) | states held | peak MiB | time s | peak / all "
        "| max abs diff vs all | rel diff vs all |")
    out("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in steps_list:
        base = None
        for mode in modes:
            s = None if mode == "all" else (snapshots or default_snapshots(n))
            st = schedule_stats(mode, n, s)
            m = meas(mode, n, size, s, device=device)
            if mode == "all":
                base = m
            ratio = m["peak"] / base["peak"] if base and base["peak"] > 0 else float("nan")  # rss: 0 at tiny sizes
            diff = rel = None
            if base is not None and base is not m:
                diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(m["result"], base["result"]))
                scale = max(float(np.max(np.abs(b))) for b in base["result"])
                rel = diff / max(scale, 1e-300)
                assert diff <= 1e-12 * (1 + scale), (diff, scale)
            rows.append({"steps": n, "mode": mode, "snapshots": s, "peak": m["peak"], "seconds": m["seconds"],
                         "ratio": ratio, "advances": st["advances"], "states": st["peak_states"],
                         "max_abs_diff": diff, "rel_diff": rel})
            out(f"| {n} | {mode} | {'-' if s is None else s} | {(st['advances'] + n) / n:.2f} | {st['peak_states']} "
                f"| {m['peak'] / 2**20:.2f} | {m['seconds']:.1f} | {ratio:.4f} "
                f"| {'-' if diff is None else f'{diff:.1e}'} | {'-' if rel is None else f'{rel:.1e}'} |")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:          # internal: one measurement in this (fresh) process
        return _cell_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--snapshots", type=int, default=None)
    p.add_argument("--modes", nargs="+", default=["all", "binomial"], choices=["all", "binomial"])
    p.add_argument("--measure", choices=["tracemalloc", "rss"], default="tracemalloc",
                   help="tracemalloc (exact, 4-7x slower loop) or rss (full speed, Linux, one subprocess per cell)")
    p.add_argument("--device", default="python", help="the outer function's engine (python, cpu; loop bodies "
                   "run on the reference engine either way)")
    a = p.parse_args(argv)
    return run(a.steps, a.size, tuple(a.modes), a.snapshots, measure_with=a.measure, device=a.device)


if __name__ == "__main__":
    main()
