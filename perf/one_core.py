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


BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_kernels():
    """Which kernels NumPy's and SciPy's OpenBLAS run in a fresh process with this environment (SciPy's is the one
    Numba's ``np.dot``, so tapegrad's program tier, calls): ``{"numpy": name, "scipy": name, "OPENBLAS_CORETYPE":
    value or None, "OPENBLAS_L2_SIZE": ...}``; names are ``None`` without ``threadpoolctl`` (the ``perf`` extra).

    Some machines of this project set ``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``) for older OpenBLAS builds;
    with the wheels of 2026 on the AMD Zen 5 machine that pins AVX2 "Haswell" kernels where OpenBLAS itself
    picks "SkylakeX" (AVX-512): a 1024x256 @ 256x256 product takes 2.03 ms instead of 1.30 ms.  The benchmark
    scripts print this so a table says which one it measured; run them under
    ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` to let OpenBLAS choose (tests and CI keep the setting)."""
    import json
    import subprocess
    import sys

    code = ("import json, numpy, scipy.linalg\n"
            "try:\n"
            "    from threadpoolctl import threadpool_info\n"
            "    libs = threadpool_info()\n"
            "except ImportError:\n"
            "    libs = []\n"
            "out = {}\n"
            "for i in libs:\n"
            "    p = i.get('filepath', '')\n"
            "    key = 'numpy' if 'numpy' in p else 'scipy' if 'scipy' in p else p\n"
            "    out[key] = i.get('architecture')\n"
            "print(json.dumps(out))\n")
    rep = {k: os.environ.get(k) for k in BLAS_VARS}
    rep.update(numpy=None, scipy=None)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        rep.update(json.loads(p.stdout.strip().splitlines()[-1]))
    except Exception:  # noqa: BLE001 - reported as unknown
        pass
    return rep


def blas_line(rep):
    """One ``# ...`` line for a table's header from :func:`blas_kernels`."""
    set_ = ", ".join(f"{k}={rep[k]}" for k in BLAS_VARS if rep.get(k) is not None)
    s = f"# OpenBLAS kernels: NumPy {rep.get('numpy')}, SciPy {rep.get('scipy')} (tapegrad's products) "
    if set_:
        return s + (f"pinned by {set_} in this environment; `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` "
                    "lets OpenBLAS choose for this CPU")
    return s + "(OpenBLAS's own choice for this CPU)"


def block_median(call, n):
    """The median time of ``n`` calls of ``call()`` (seconds, ``time.perf_counter``)."""
    import statistics
    import time

    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def rotated_best(calls, reps, rounds):
    """Per call of ``calls``, the best over ``rounds`` of the median of ``reps`` calls (seconds); each round runs
    them all, its order rotated by one from the round before, so each follows each other one in turn (a call
    that runs after a memory-heavy one finds the cache full of that one's arrays)."""
    best = [float("inf")] * len(calls)
    for r in range(rounds):
        for j in [(r + i) % len(calls) for i in range(len(calls))]:
            best[j] = min(best[j], block_median(calls[j], reps))
    return best


def table_row(lines, row):
    """Print the table row ``row`` now (a long run shows progress) and keep it in ``lines``."""
    lines.append(row)
    print(row, flush=True)


def write_table(lines, path):
    """Write the table's ``lines`` to ``path`` (no file when ``path`` is empty)."""
    if path:
        Path(path).write_text("\n".join(lines) + "\n")
