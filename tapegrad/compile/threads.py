"""Whether generated programs run their big loops on several threads, and on which Numba threading layer.

A program's fused loops with enough work (:data:`PAR_WORK`) become ``prange`` loops over one chunk per
thread (:mod:`tapegrad.compile.program_gen`) when :func:`program_threads` is above 1.  That needs a
threading layer that is safe both for concurrent calls (a function called from several Python threads,
dask's threaded workers) and for ``fork`` (``multiprocessing``'s default start method on Linux):

* ``tbb`` is both.  ``pip install 'tapegrad[parallel]'`` installs it; the wheel puts ``libtbb.so.12``
  under ``sys.prefix/lib``, where the loader does not look, so it is loaded here by path before Numba
  looks for it.
* GNU ``omp`` (the one Numba's wheels find on Linux) is thread-safe but not fork-safe: a forked child that
  runs a parallel region after its parent did is terminated.  It is used only when the user names it
  (``NUMBA_THREADING_LAYER=omp``) or already launched it.
* ``workqueue`` aborts the process when two threads launch parallel regions at once: never used.

``TAPEGRAD_PARALLEL=0`` turns parallel loops off; ``TAPEGRAD_PARALLEL=1`` turns them on whatever the layer.
The thread count is ``numba.config.NUMBA_NUM_THREADS`` (all cores unless ``NUMBA_NUM_THREADS`` says
otherwise): with one thread the programs are the serial ones.  Programs made while parallel loops are on
differ in their source from the serial ones, so both kinds share the disk cache.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

# A loop runs in parallel when its elements times its cost per element (1 per operation, load and store, 10
# more per libm-class function) reaches PAR_WORK.  Launching a region on tbb costs about 8 us, and on two
# cores a value+grad of sum(x * x) (cost 6 per element) was 1.10x slower in parallel at 65,536 elements and
# 0.65x at 262,144; one of sum(tanh(x) * exp(-x * x)) (cost about 40) was 0.80x at 4,096 and 0.53x at
# 16,384 (perf/parallel_crossover.py; perf/results/parallel-crossover-2026-11-27.txt).  TAPEGRAD_PAR_WORK=1
# sends every loop of at least PAR_MIN elements through prange, for tests.
PAR_WORK = int(os.environ.get("TAPEGRAD_PAR_WORK", 1 << 19))
PAR_MIN = 2  # elements: a loop shorter than this has nothing to split
EXPENSIVE = frozenset({
    "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh", "cos", "cosh", "erf", "erfc", "exp",
    "exp2", "expm1", "gammaln", "hypot", "log", "log10", "log1p", "log2", "pow", "psi", "sigmoid", "sin", "sinh",
    "softplus", "tan", "tanh", "trigamma"})
_SAFE_NAMED = ("tbb", "omp", "threadsafe", "safe", "forksafe")
_LOCK = threading.Lock()
_DECIDED = None  # (threads, layer or reason), once decided


def _env_mode():
    v = os.environ.get("TAPEGRAD_PARALLEL", "auto").strip().lower()
    if v in ("0", "off", "false", "no"):
        return "off"
    if v in ("1", "on", "true", "yes"):
        return "on"
    return "auto"


def _load_tbb():
    """Make Numba's ``tbb`` layer importable (the pip wheel's ``libtbb.so.12`` loaded by path); True if it is."""
    for d in {os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")}:
        lib = os.path.join(d, "libtbb.so.12")
        if os.path.exists(lib):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            break
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means: no tbb layer
        return False
    return True


def _decide():
    import numba
    from numba.np.ufunc import parallel as _par

    mode = _env_mode()
    n = int(numba.config.NUMBA_NUM_THREADS)
    if mode == "off":
        return 1, "off (TAPEGRAD_PARALLEL=0)"
    if n < 2:
        return 1, "one thread (NUMBA_NUM_THREADS)"
    if getattr(_par, "_is_initialized", False):  # someone launched a layer already: it is the one we get
        layer = numba.threading_layer()
        if layer == "workqueue" and mode != "on":
            return 1, "workqueue layer already launched (not safe for concurrent calls)"
        return n, layer
    named = str(numba.config.THREADING_LAYER).lower()
    if named in _SAFE_NAMED:
        if named in ("tbb", "safe", "forksafe", "threadsafe"):
            _load_tbb()
        return n, named
    if named == "workqueue" and mode != "on":
        return 1, "workqueue layer named (not safe for concurrent calls)"
    if _load_tbb():
        return n, "tbb"
    if mode == "on":
        return n, named
    return 1, "no tbb (install tapegrad[parallel], or set NUMBA_THREADING_LAYER=omp)"


def program_threads():
    """Threads a generated program's parallel loops are written for (1: serial programs)."""
    global _DECIDED
    if _DECIDED is None:
        with _LOCK:
            if _DECIDED is None:
                _DECIDED = _decide()
    return _DECIDED[0]


def parallel_info():
    """``(threads, layer or the reason for one thread)``, for diagnostics and the benchmark tables."""
    program_threads()
    return _DECIDED


def _reset():
    """Forget the decision (tests that change the environment)."""
    global _DECIDED
    with _LOCK:
        _DECIDED = None
