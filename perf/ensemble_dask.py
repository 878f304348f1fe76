#!/usr/bin/env python
"""Ensemble gradients on a ``dask.distributed`` cluster, by shipping a pickled ``tg.Function``.

    python perf/ensemble_dask.py                          # 1,000 parameter sets, 2 worker processes, device "cpu"
    python perf/ensemble_dask.py --n 20 --device python   # what tests/test_ecosystem.py runs

Problem: Lorenz-96 with ``--size`` variables (default 40), ``--steps`` explicit Euler steps unrolled in
the graph (default 20), ``u_{t+1} = u + DT ((u_{i+1} - u_{i-2}) u_{i-1} - u + F)``,
``loss = sum(u_n ** 2)``; the compiled function returns ``[loss, dloss/du0, dloss/dF]``.
Each parameter set is one ``(u0, F)``.

It compiles the function once, then evaluates it for every parameter set

1. in this process, in a loop, and
2. on a ``LocalCluster(n_workers=--workers, processes=True, threads_per_worker=1)``: the Function is
   pickled and scattered to every worker once, and chunks of parameter sets are mapped over it
   (``tapegrad.ecosystem.dask.map_function``),

checks that both give the same numbers (bit-identical: same tape, same engine), and prints both
times (the cluster's start-up is reported separately and not counted).  ``--json PATH`` writes
the numbers.  Exit status 1 when the results differ.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapegrad as tg  # noqa: E402
from tapegrad.ecosystem.dask import map_function, run_chunk  # noqa: E402

DT = 0.01


def build(size, steps, device):
    """Compiled ``(u0, F) -> [loss, dloss/du0, dloss/dF]`` for Lorenz-96 unrolled ``steps`` times."""
    u0 = tg.tensor("u0", dtype="float64", shape=(size,))
    F = tg.dscalar("F")
    u = u0
    for _ in range(steps):
        u = u + DT * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)
    loss = (u**2).sum()
    loss.name = "loss"
    gu0, gF = tg.grad(loss, [u0, F])
    return tg.function([u0, F], [loss, gu0, gF], device=device, name="l96_grad")


def parameter_sets(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(0.0, 1.0, size), float(rng.uniform(6.0, 10.0))) for _ in range(n)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="parameter sets (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--size", type=int, default=40, help="Lorenz-96 variables (default 40)")
    p.add_argument("--steps", type=int, default=20, help="unrolled Euler steps (default 20)")
    p.add_argument("--device", default="cpu", help="tapegrad device: cpu (default) or python")
    p.add_argument("--chunks", type=int, default=None, help="dask tasks (default 4 per worker)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)

    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    f = build(a.size, a.steps, a.device)
    f(*parameter_sets(1, a.size, seed=1)[0])  # first call (engine load, plan) outside the timings
    t_build = time.perf_counter() - t0
    blob = pickle.dumps(f)
    params = parameter_sets(a.n, a.size)
    print(f"Lorenz-96 n={a.size}, {a.steps} steps unrolled: tape of {len(f.tape)} instructions, "
          f"pickled Function {len(blob) / 1024:.1f} KiB, device={a.device!r}; build + first call {t_build:.2f} s; "
          f"{os.cpu_count()} CPU core(s) here (the scheduler, the client and the workers share them)")

    t0 = time.perf_counter()
    local = [f(*args) for args in params]
    t_local = time.perf_counter() - t0
    print(f"single process loop : {a.n} gradients in {t_local:.3f} s ({1e3 * t_local / a.n:.3f} ms each)")

    t0 = time.perf_counter()
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        t_start = time.perf_counter() - t0
        client.run(run_chunk, f, params[:1])  # every worker: unpickle, load the engine, first call (not timed)
        t0 = time.perf_counter()
        remote = map_function(client, f, params, chunks=a.chunks)
        t_dask = time.perf_counter() - t0
    print(f"dask, {a.workers} workers  : {a.n} gradients in {t_dask:.3f} s ({1e3 * t_dask / a.n:.3f} ms each; "
          f"cluster start {t_start:.2f} s not counted); speed-up x{t_local / t_dask:.2f}")

    worst = 0.0
    same = len(remote) == len(local)
    for lo, re in zip(local, remote):
        for x, y in zip(lo, re):
            x, y = np.asarray(x), np.asarray(y)
            same = same and x.shape == y.shape
            if x.shape == y.shape and x.size:
                worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(x)))))
    same = same and worst <= 1e-12
    print(f"results agree: {same} (max relative difference {worst:.3g})")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(
            n=a.n, workers=a.workers, size=a.size, steps=a.steps, device=a.device, tape_len=len(f.tape),
            pickle_bytes=len(blob), build_s=t_build, local_s=t_local, dask_s=t_dask, cluster_start_s=t_start,
            max_rel_diff=worst, agree=same,
        ), indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
