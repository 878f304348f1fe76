"""The setting of the in-process duels (``duel.py``, ``more_workloads.py``): one thread for every library and the
process pinned to one CPU, set before numba, NumPy's BLAS or JAX are imported; the engine cache defaults to
``compare.py``'s (one per numba version)."""
from __future__ import annotations

import os
from pathlib import Path


def one_core():
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[k] = "1"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if not os.environ.get("NUMBA_CACHE_DIR"):
        from importlib.metadata import version

        os.environ["NUMBA_CACHE_DIR"] = str(Path(__file__).resolve().parents[1] / ".numba_cache"
                                            / f"numba-{version('numba')}")
