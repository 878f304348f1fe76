#!/usr/bin/env python
"""tapegrad (Numba CPU engine) next to the peer autodiff systems, on the anchor workloads.

    python perf/compare.py [--quick] [--workload W]... [--system S]... [--threads 1|default]
                           [--fresh-cache] [--cap SECONDS] [--out results/compare-DATE.json]

What it runs
------------
The workloads, NumPy references, data makers and peer factories (jax, torch,
pytensor in three modes, autograd, hand NumPy) all come from
``../shared/perf/anchors.py`` (found relative to this repository; override with
``TAPEGRAD_ANCHORS=/path/to/anchors.py``).  This script only adds tapegrad
factories to its ``REGISTRY`` (``anchors.register(bench, system)``, as the
anchors docstring explains):

* ``tapegrad``        ``tg.function(..., device="cpu")``
* ``tapegrad-interp`` / ``tapegrad-fused``: the same with ``tier="interp"`` /
  ``tier="fused"``, when ``tg.function`` accepts ``tier=``;
  ``tapegrad-program``: ``tier="program"`` (the whole tape as one Numba
  function), when the library has that tier.

Benches: W1 ``w1_mlp`` (value + 4 grads), W2 ``w2_rosen_grad`` and
``w2_rosen_hvp`` (n=1e6), W3 ``w3_small`` (n=10), W4 ``w4_l96_unrolled``
(200 unrolled Euler steps, value + grad wrt (u0, F)) and ``w4_l96_loop`` (the
same with the loop construct: ``tg.scan`` next to ``lax.scan`` and
``pytensor.scan``; target JAX, and a first call <= 0.3 s), W5 ``w5_jac``
(100x100 Jacobian), W6 ``w6_rosen_hessian`` (the dense 100x100 Hessian of
Rosenbrock n=100: ``tg.hessian`` vs ``jax.jit(jax.hessian)``, ``torch.func.hessian``,
pytensor ``jacobian(grad, vectorize=True)``, ``autograd.hessian``, hand NumPy;
target JAX; defined in this file, not in anchors.py).  The peers' variants of
those workloads (``w3_small_trust``, ``w5_jac_fwd``, ``w5_jac_scan``) run too,
for context.

Method (same as anchors.py)
---------------------------
Every (bench, system) cell runs in its own subprocess, one after the other.
first call = graph build + grad + ``function`` + first evaluation (import
excluded, reported as ``import_s``); steady = median of >= 20 calls and >= 2 s
after warm-up (``--quick``: >= 3 calls and >= 0.1 s).  tapegrad cells first
"settle": 6 calls, wait for the background compiles of the default tier
(fused loops, whole-tape program) to finish, 3 more calls; the note gives that
time (``settled``) and whether the whole-tape program runs; after the timing
the output is checked against the reference again (the tier swapped in after
the first call must be right too: a mismatch is flagged in the note).  Outputs are checked
against the hand-written NumPy reference (max-abs error / max-abs reference).
One thread by default (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS=1, XLA one thread,
torch ``set_num_threads(1)``, and every cell's process pinned to one CPU, since
JAX used 1.5 cores on W1 with the variables alone); ``--threads default``
leaves threading and affinity alone.

tapegrad's engine is compiled once and cached on disk by Numba
(``NUMBA_CACHE_DIR``: the environment's, else ``<repo>/.numba_cache`` like the
tests).  Before the tapegrad cells an *engine probe* subprocess times import +
the first call of a tiny function, and reports whether Numba compiled the
interpreter (cache miss: the cold engine compile) or loaded it (cache hit).
``--fresh-cache`` points ``NUMBA_CACHE_DIR`` at a new empty folder: the first
probe then measures the cold engine compile, a second probe the warm-cache
load, and every tapegrad cell's first call is "fresh process, warm cache".

Peers that are not importable (they belong to the optional ``perf`` extra) are
skipped with a message.  Cells known to run past any reasonable cap (jax and
pytensor on ``w4_l96_unrolled``: > 180 s compile in the anchors) are skipped
unless ``--all-cells``.

Output: a table on stdout, ``perf/results/compare-<date>[-quick].json`` and a
bar chart ``.png`` beside it (if matplotlib is importable).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ANCHORS_PATH = Path(os.environ.get("TAPEGRAD_ANCHORS", REPO.parent / "shared" / "perf" / "anchors.py"))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TG_SYSTEMS = ["tapegrad", "tapegrad-interp", "tapegrad-fused", "tapegrad-program"]
TG_TIER = {"tapegrad": None, "tapegrad-interp": "interp", "tapegrad-fused": "fused", "tapegrad-program": "program"}
PEER_MODULES = {"numpy": "numpy", "jax": "jax", "torch": "torch", "pytensor": "pytensor",
                "pytensor-numba": "pytensor", "pytensor-c": "pytensor", "autograd": "autograd"}
# the goal each bench is judged against (issue "Numba CPU engine")
# (issue 6 "scan": W4 with the loop construct vs lax.scan; issue 5: W6 Hessian vs jax.hessian)
TARGETS = {"w3_small": "pytensor-c", "w2_rosen_grad": "jax", "w2_rosen_hvp": "jax", "w5_jac": "pytensor-numba",
           "w4_l96_loop": "jax", "w6_rosen_hessian": "jax"}
# first call in a fresh process with a warm engine cache (import excluded), seconds
FIRST_CALL_TARGETS = {"w4_l96_loop": 0.3}
TG_BENCHES = ["w1_mlp", "w2_rosen_grad", "w2_rosen_hvp", "w3_small", "w4_l96_unrolled", "w4_l96_loop", "w5_jac",
              "w6_rosen_hessian"]
DEFAULT_WORKLOADS = ["w1", "w2", "w3", "w4", "w5", "w6"]
SLOW_CELLS = {("w4_l96_unrolled", s) for s in ("jax", "pytensor", "pytensor-numba", "pytensor-c")}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


# ---------------------------------------------------------------------------
# anchors.py: imported by path, never copied
# ---------------------------------------------------------------------------
def _numba_version():
    try:
        from importlib.metadata import version

        return version("numba")
    except Exception:  # noqa: BLE001
        return "unknown"


def load_anchors():
    if not ANCHORS_PATH.is_file():
        sys.exit(f"compare.py: the workload definitions are missing: {ANCHORS_PATH} does not exist.\n"
                 "They live in the shared folder beside the repository (shared/perf/anchors.py); "
                 "set TAPEGRAD_ANCHORS=/path/to/anchors.py to point elsewhere.")
    spec = importlib.util.spec_from_file_location("anchors", ANCHORS_PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["anchors"] = mod
    spec.loader.exec_module(mod)
    return mod


A = load_anchors()


# ---------------------------------------------------------------------------
# W6 (issue 5): the dense Hessian of Rosenbrock n=100.  Not in anchors.py (shared, not ours): the bench, its
# NumPy reference and the peers' factories are registered here, at import, so the worker subprocesses have them.
# ---------------------------------------------------------------------------
N_HESS = 100


def data_rosen_hessian():
    return dict(x=A._rng().uniform(-1.5, 1.5, N_HESS))


def np_rosen_hessian(x):
    """Hand-written: tridiagonal, diag 1200 x_i^2 - 400 x_{i+1} + 2 (+200 from i >= 1), off-diag -400 x_i."""
    D = np.zeros_like(x)
    D[:-1] = 1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0
    D[1:] += 200.0
    off = -400.0 * x[:-1]
    H = np.diag(D)
    i = np.arange(x.shape[0] - 1)
    H[i, i + 1] = off
    H[i + 1, i] = off
    return (H,)


A.BENCHES["w6_rosen_hessian"] = A.Bench(
    "W6", f"Rosenbrock n={N_HESS} dense Hessian ({N_HESS}x{N_HESS}, tridiagonal)", data_rosen_hessian,
    np_rosen_hessian, ["x"])
A.register("w6_rosen_hessian", "numpy")(lambda d: ((lambda: np_rosen_hessian), [d["x"]]))


@A.register("w6_rosen_hessian", "jax")
def _jax_hessian(d):
    import jax
    import jax.numpy as jnp
    return (lambda: jax.jit(lambda x: (jax.hessian(lambda x: A.rosenbrock(jnp, x))(x),))), A._jax_inputs(d, ["x"])


@A.register("w6_rosen_hessian", "torch")
def _torch_hessian(d):
    import torch
    from torch.func import hessian       # jacfwd(jacrev(f))
    return (lambda: lambda x: (hessian(lambda x: A.rosenbrock(torch, x))(x),)), A._torch_inputs(d, ["x"])


def _pt_hessian(d, system):
    import pytensor
    import pytensor.tensor as pt
    from pytensor.gradient import jacobian

    def build():
        with A.phase("graph"):
            x = pt.dvector("x")
            g = pytensor.grad(A.rosenbrock(pt, x), x)
            H = jacobian(g, x, vectorize=True)     # pytensor.gradient.hessian has no vectorize= (it scans)
        return A._pt_function([x], [H], system)
    return build, [d["x"]]


for _s in A.PYTENSOR_MODES:
    A.register("w6_rosen_hessian", _s)(lambda d, s=_s: _pt_hessian(d, s))


@A.register("w6_rosen_hessian", "autograd")
def _autograd_hessian(d):
    import autograd.numpy as anp
    from autograd import hessian
    return (lambda: lambda x: (hessian(lambda x: A.rosenbrock(anp, x))(x),)), [d["x"]]


def tg_has_program_tier():
    """tg.function takes tier="program" (the whole-tape Numba program, compile/program.py)."""
    try:
        from tapegrad.compile.function import TIERS
    except Exception:       # noqa: BLE001
        return False
    return "program" in TIERS


def tg_accepts_tier():
    """(tg.function takes tier=, the CPU engine's constructor takes it too)."""
    try:
        import tapegrad as tg
        fn = "tier" in inspect.signature(tg.function).parameters
    except Exception:       # noqa: BLE001  (tapegrad broken: the cells will say why)
        return False, False
    try:
        from tapegrad.compile.cpu import CPUEngine
        ps = inspect.signature(CPUEngine).parameters
        eng = "tier" in ps or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())
    except Exception:       # noqa: BLE001
        eng = False
    return fn, eng


# ---------------------------------------------------------------------------
# tapegrad factories (registered into anchors.REGISTRY)
# ---------------------------------------------------------------------------
INFO: dict = {}     # extra facts a tapegrad cell reports (tape length, callbacks)


def _tg_function(inputs, outputs, system):
    import tapegrad as tg
    kw = {"device": "cpu"}
    if TG_TIER[system] is not None:
        kw["tier"] = TG_TIER[system]
    with A.phase("function"):
        f = tg.function(inputs, outputs, **kw)
    INFO["tape_len"] = len(f.tape)
    eng = getattr(f, "_engine", None)
    if eng is not None and hasattr(eng, "native_codes"):
        nat, cb = eng.native_codes()
        INFO["native_ops"] = sum(nat.values())
        INFO["callback_ops"] = cb
    if eng is not None and hasattr(eng, "segments"):
        INFO["segments"] = len(eng.segments)
    return f


def _tg_cell(make_graph, names):
    """make_graph(tg) -> (input variables, outputs); fn returns a list in the reference's order."""
    def factory(d, system):
        def build():
            import tapegrad as tg
            with A.phase("graph"):
                ins, outs = make_graph(tg)
            return _tg_function(ins, outs, system)
        return build, [d[k] for k in names]
    return factory


def _g_mlp(tg):
    X, Y, W1, W2 = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dmatrix("W1"), tg.dmatrix("W2")
    b1, b2 = tg.dvector("b1"), tg.dvector("b2")
    loss = A.mlp_loss(tg, X, Y, W1, b1, W2, b2)
    return [X, Y, W1, b1, W2, b2], [loss, *tg.grad(loss, [W1, b1, W2, b2])]


def _g_rosen_grad(tg):
    x = tg.dvector("x")
    f = A.rosenbrock(tg, x)
    return [x], [f, tg.grad(f, x)]


def _g_rosen_hvp(tg):
    x, v = tg.dvector("x"), tg.dvector("v")
    return [x, v], [tg.hessian_vector_product(A.rosenbrock(tg, x), x, v)]


def _g_small(tg):
    x = tg.dvector("x")
    f = A.small(tg, x)
    return [x], [f, tg.grad(f, x)]


def _g_l96(tg):
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    loss = A.l96_loss(tg, u0, F)
    return [u0, F], [loss, *tg.grad(loss, [u0, F])]


def _g_l96_loop(tg):
    """Lorenz-96 with ``tg.scan`` (the loop construct, like lax.scan / pytensor.scan); cost of the last state."""
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(lambda u, F: A.l96_step(tg, u, F), outputs_info=u0, non_sequences=F, n_steps=A.STEPS)
    loss = tg.sum(traj[-1] ** 2)
    return [u0, F], [loss, *tg.grad(loss, [u0, F])]


def _g_rosen_hessian(tg):
    x = tg.dvector("x")
    return [x], [tg.hessian(A.rosenbrock(tg, x), x)]


def _g_jac(tg):
    Am, x = tg.dmatrix("A"), tg.dvector("x")
    return [Am, x], [tg.jacobian(A.jac_fn(tg, Am, x), x)]


TG_GRAPHS = {"w1_mlp": (_g_mlp, A.MLP), "w2_rosen_grad": (_g_rosen_grad, ["x"]),
             "w2_rosen_hvp": (_g_rosen_hvp, ["x", "v"]), "w3_small": (_g_small, ["x"]),
             "w4_l96_unrolled": (_g_l96, ["u0", "F"]), "w4_l96_loop": (_g_l96_loop, ["u0", "F"]),
             "w5_jac": (_g_jac, ["A", "x"]), "w6_rosen_hessian": (_g_rosen_hessian, ["x"])}


def register_tapegrad(systems):
    for bench, (g, names) in TG_GRAPHS.items():
        fac = _tg_cell(g, names)
        for s in systems:
            A.register(bench, s)(lambda d, s=s, fac=fac: fac(d, s))


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------
_anchors_import_system = A.import_system


def import_system(system):
    if system.startswith("tapegrad"):
        import tapegrad  # noqa: F401
        import tapegrad.compile.cpu  # noqa: F401
    else:
        _anchors_import_system(system)
        if system == "torch" and os.environ.get("COMPARE_THREADS") == "1":
            import torch
            torch.set_num_threads(1)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass


def _tg_settle(fn, inputs, max_wait=300.0):
    """Before the steady timing of a tapegrad cell: let the default tier move up.

    ``tier=None`` ("auto") runs the interpreter first and, after a few calls of a shape signature, compiles fused
    loops / the whole-tape program on a background thread and swaps them in.  Timing right away would measure
    the interpreter while that compile competes for the core.  So: 6 calls (past the thresholds), then wait for
    the background compile thread to drain (a no-op queued behind it), then 3 more calls (the engine picks up
    what is ready).  ``INFO["settle_s"]`` says how long that took; ``INFO["program"]`` whether the whole-tape
    program runs (else the reason it has none).
    """
    t0 = time.perf_counter()
    for _ in range(6):
        fn(*inputs)
    try:
        from tapegrad.compile.fused import _executor
        _executor().submit(lambda: None).result(timeout=max_wait)
    except Exception:       # noqa: BLE001  (no background tier in this version)
        pass
    for _ in range(3):
        fn(*inputs)
    INFO["settle_s"] = time.perf_counter() - t0
    eng = getattr(fn, "_engine", None)
    if eng is not None and hasattr(eng, "fast"):
        err = getattr(eng, "program_error", None)
        INFO["program"] = ("runs" if eng.fast is not None
                           else "none" + (f" ({type(err).__name__}: {str(err)[:80]})" if err is not None else ""))


def run_worker(bench, system):
    INFO.clear()
    A.import_system = import_system
    _emit = A.emit
    if system.startswith("tapegrad"):
        _time_calls = A.time_calls

        def time_calls(fn, inputs, *a, **kw):
            _tg_settle(fn, inputs)
            res = _time_calls(fn, inputs, *a, **kw)
            spec = A.BENCHES[bench]
            if spec.reference is not None:   # the tier swapped in after the first call must be right too
                INFO["steady_rel_err"] = A.check(fn(*inputs), spec.reference(*inputs))[0]
            return res
        A.time_calls = time_calls

    def emit(tag, obj):          # attach tapegrad's extra facts to the records it emits
        if tag == "FIRST" and system.startswith("tapegrad"):
            d = interp_dispatcher()
            if d is not None and hasattr(d, "stats"):      # did this process compile the engine?
                INFO["engine_cache_misses"] = sum(d.stats.cache_misses.values())
        if tag in ("FIRST", "RESULT") and INFO:
            obj = dict(obj, tapegrad=dict(INFO))
        _emit(tag, obj)
    A.emit = emit
    A.run_worker(bench, system)


def run_worker_multi(benches, system):
    """Several benches of one system in ONE process (used when the engine's disk cache cannot be loaded)."""
    for b in benches:
        run_worker(b, system)


def interp_dispatcher():
    try:
        from tapegrad.compile import _generated_dispatch as g
        return g.interp
    except Exception:  # noqa: BLE001
        return None


def run_probe():
    """Import tapegrad, build and call a tiny value+grad function: the engine's first-use cost."""
    t0 = time.perf_counter()
    import numpy as np
    import tapegrad as tg
    import tapegrad.compile.cpu  # noqa: F401
    t1 = time.perf_counter()
    x = tg.dvector("x")
    c = tg.sum(x * x)
    f = tg.function([x], [c, tg.grad(c, x)], device="cpu")
    t2 = time.perf_counter()
    out = f(np.arange(3.0))
    t3 = time.perf_counter()
    ok = bool(np.allclose(out[1], 2 * np.arange(3.0)))
    from tapegrad.compile.threads import parallel_info

    rec = {"import_s": t1 - t0, "function_s": t2 - t1, "first_call_s": t3 - t2, "ok": ok,
           "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR"), "parallel": list(parallel_info())}
    d = interp_dispatcher()
    if d is not None and hasattr(d, "stats"):
        rec["cache_hits"] = sum(d.stats.cache_hits.values())
        rec["cache_misses"] = sum(d.stats.cache_misses.values())
    print("@@PROBE " + json.dumps(rec), flush=True)


# ---------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------
def cell_env(args, cache_root, bench, system):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["NUMBA_CACHE_DIR"] = args.numba_cache_dir
    if args.threads == "1":
        for k in THREAD_VARS:
            env[k] = "1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
        env["COMPARE_THREADS"] = "1"
    if args.quick:
        env["ANCHORS_QUICK"] = "1"
    if bench is not None:
        cache = os.path.join(cache_root, f"{bench}__{system}")
        os.makedirs(cache, exist_ok=True)
        env["PYTENSOR_FLAGS"] = f"base_compiledir={cache}"
    return env


def _signal_note(rc):
    if rc is not None and rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return None


def _pin_one_cpu():
    """Child side of ``--threads 1``: run on one CPU.  The thread variables do not stop every runtime from
    using a second core (JAX's XLA CPU runtime ran W1 at 1.5 cores with them set), so the cell is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})


def run_sub(cmd, env, cap_s):
    t0 = time.perf_counter()
    pin = _pin_one_cpu if env.get("COMPARE_THREADS") == "1" and hasattr(os, "sched_setaffinity") else None
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cap_s, cwd=str(REPO),
                           preexec_fn=pin)
        out, err, rc, timed_out = p.stdout, p.stderr, p.returncode, False
    except subprocess.TimeoutExpired as e:
        def _s(x):
            return x.decode() if isinstance(x, bytes) else (x or "")
        out, err, rc, timed_out = _s(e.stdout), _s(e.stderr), None, True
    return out, err, rc, timed_out, time.perf_counter() - t0


def run_probe_cell(args, label):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe"]
    out, err, rc, timed_out, wall = run_sub(cmd, cell_env(args, None, None, None), args.probe_cap)
    rec = {"label": label, "wall_s": wall}
    for line in out.splitlines():
        if line.startswith("@@PROBE"):
            rec.update(json.loads(line.split(" ", 1)[1]))
    if "first_call_s" not in rec:
        rec["status"] = "timeout" if timed_out else "error"
        rec["note"] = (f"killed after {args.probe_cap:.0f} s" if timed_out else
                       _signal_note(rc) or (err.strip().splitlines() or ["?"])[-1][:300])
    else:
        rec["status"] = "ok"
    return rec


def run_cell(args, cache_root, bench, system):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", bench, system]
    if system.startswith("tapegrad"):
        cmd += ["--tg-systems", ",".join(args.tg_systems)]
    out, err, rc, timed_out, wall = run_sub(cmd, cell_env(args, cache_root, bench, system), args.cap)
    rec, phases = {"bench": bench, "system": system}, {}
    for line in out.splitlines():
        if line.startswith("@@PHASE"):
            ph = json.loads(line.split(" ", 1)[1])
            phases[ph["name"]] = ph.get("seconds", "unfinished")
        elif line.startswith("@@"):
            rec = json.loads(line.split(" ", 1)[1])
    if phases and not rec.get("phases"):
        rec["phases"] = phases
    rec["wall_s"] = wall
    if rec.get("status") != "ok":
        if timed_out:
            rec["status"] = "timeout"
            if "first_call_s" not in rec:
                rec["first_call_s_lower_bound"] = wall - rec.get("import_s", 0.0)
            rec["note"] = f"killed after {args.cap:.0f} s wall"
        else:
            rec["status"] = "error"
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            rec["note"] = _signal_note(rc) or (lines or ["?"])[-1][:300]
            if rec.get("first_call_s") is not None:
                rec["note"] += " (after the first call)"
    return rec


def run_tg_shared(args, cache_root, benches, system):
    """tapegrad cells of one system in one process each time (re-started after a crash)."""
    recs = {}
    todo = list(benches)
    while todo:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-multi", ",".join(todo), system,
               "--tg-systems", ",".join(args.tg_systems)]
        cap = args.cap * len(todo)
        env = cell_env(args, cache_root, todo[0], system)
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tapegrad-numba-cache-")   # compile, never load
        out, err, rc, timed_out, wall = run_sub(cmd, env, cap)
        current = None
        first_in_proc = True
        for line in out.splitlines():
            if not line.startswith("@@") or line.startswith("@@PHASE"):
                continue
            tag, obj = line[2:].split(" ", 1)
            r = json.loads(obj)
            current = r["bench"]
            if tag == "RESULT":
                r["note"] = ("shared process: " + ("engine compiled in this first call" if first_in_proc
                                                   else "engine already in memory"))
                first_in_proc = False
                recs[current] = r
                current = None
            elif tag == "FIRST":
                recs[current] = dict(r, status="error")
        done = [b for b in todo if recs.get(b, {}).get("status") == "ok"]
        failed = current or next((b for b in todo if b not in done), None)
        if failed is not None and recs.get(failed, {}).get("status") != "ok":
            r = recs.setdefault(failed, {"bench": failed, "system": system})
            r["status"] = "timeout" if timed_out else "error"
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            r["note"] = ("shared process: " + (f"killed after {cap:.0f} s" if timed_out
                                               else _signal_note(rc) or (lines or ["?"])[-1][:300]))
            done.append(failed)
        todo = [b for b in todo if b not in done]
    return recs


def installed(system):
    mod = PEER_MODULES.get(system)
    if mod is None:
        return True
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def select_benches(args):
    wl = args.workload or DEFAULT_WORKLOADS
    return [b for b, spec in A.BENCHES.items() if spec.workload.lower() in wl or b in wl]


# ---------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------
fmt_t = A.fmt_t


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _fmt_ratio(r, who=None):
    if r is None:
        return "-"
    s = f"{r:.2f}x" if r < 100 else f"{r:.0f}x"
    return f"{s} {who}" if who else s


def annotate(records):
    """Add ratio_best_peer / best_peer / ratio_target to the tapegrad records."""
    by_bench = {}
    for r in records:
        by_bench.setdefault(r["bench"], []).append(r)
    for bench, rows in by_bench.items():
        peers = [r for r in rows if not r["system"].startswith("tapegrad") and r.get("median_s")
                 and r.get("ok", True)]
        best = min(peers, key=lambda r: r["median_s"]) if peers else None
        target = TARGETS.get(bench)
        trow = next((r for r in peers if r["system"] == target), None)
        for r in rows:
            if not r["system"].startswith("tapegrad") or not r.get("median_s"):
                continue
            if best is not None:
                r["best_peer"] = best["system"]
                r["ratio_best_peer"] = r["median_s"] / best["median_s"]
            if target is not None:
                r["target"] = target
                if trow is not None:
                    r["ratio_target"] = r["median_s"] / trow["median_s"]
            if bench in FIRST_CALL_TARGETS and r.get("first_call_s") is not None:
                r["first_call_target_s"] = FIRST_CALL_TARGETS[bench]


def table_lines(records):
    head = (f"{'bench':<16} {'system':<16} {'first call':>11} {'steady median':>14} "
            f"{'vs best peer':>20} {'vs target':>22} {'max rel err':>12}  note")
    lines = [head, "-" * len(head)]
    last = None
    for r in records:
        if last is not None and r["bench"] != last:
            lines.append("")
        last = r["bench"]
        first = fmt_t(r.get("first_call_s"))
        if "first_call_s_lower_bound" in r:
            first = "> " + fmt_t(r["first_call_s_lower_bound"])
        med = fmt_t(r.get("median_s"))
        if r.get("min_s") is not None and r.get("median_s") and r["min_s"] < 0.5 * r["median_s"]:
            med += "*"
        vb = _fmt_ratio(r.get("ratio_best_peer"), r.get("best_peer")) if "best_peer" in r else ""
        if r["system"].startswith("tapegrad") and r.get("target"):
            vt = _fmt_ratio(r.get("ratio_target"), r["target"]) if "ratio_target" in r else f"({r['target']} n/a)"
        else:
            vt = ""
        err = r.get("rel_err")
        err_s = "-" if err is None else f"{err:.1e}" + ("" if r.get("ok") else " BAD")
        notes = []
        if r.get("status") not in (None, "ok"):
            notes.append(f"{r['status']}: {r.get('note', '')}")
        elif r.get("note"):
            notes.append(r["note"])
        if "gflops" in r:
            notes.append(f"{r['gflops']:.3g} GFLOP/s")
        elif "gbps" in r:
            notes.append(f"{r['gbps']:.2g} GB/s")
        if r.get("first_call_target_s"):
            ft = r["first_call_target_s"]
            notes.append(f"first call {r['first_call_s'] / ft:.2f}x the {ft:g} s target "
                         + ("(met)" if r["first_call_s"] <= ft else "(MISSED)"))
        tgi = r.get("tapegrad")
        if tgi:
            cb = tgi.get("callback_ops") or {}
            if tgi.get("engine_cache_misses"):
                notes.append("ENGINE COMPILED in this first call (cache miss)")
            if tgi.get("steady_rel_err") is not None and not tgi["steady_rel_err"] < A.RTOL:
                notes.append(f"STEADY OUTPUT WRONG: rel err {tgi['steady_rel_err']:.1e} after the timing")
            if tgi.get("program"):
                notes.append(f"program: {tgi['program']}")
            if tgi.get("settle_s") is not None:
                notes.append(f"settled {tgi['settle_s']:.2f}s")
            notes.append(f"tape {tgi.get('tape_len')}, {tgi.get('segments', '?')} segs"
                         + (", interp callbacks " + " ".join(f"{k}x{v}" for k, v in cb.items()) if cb
                            else ", no callbacks"))
        ph = r.get("phases")
        if ph and r["system"].startswith("tapegrad"):
            notes.append("phases " + " ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in ph.items())
                         + (f" run1={r['first_run_s']:.2f}s" if r.get("first_run_s") is not None else ""))
        lines.append(f"{r['bench']:<16} {r['system']:<16} {first:>11} {med:>14} {vb:>20} {vt:>22} {err_s:>12}  "
                     + "; ".join(notes))
    lines.append("(* = min < median/2: bimodal, contention; vs = steady-median ratio tapegrad/peer, < 1 is faster)")
    return lines


def _rec(records, bench, system, key):
    """The record of ``system`` on ``bench`` that has ``key`` (and correct outputs), or None."""
    return next((r for r in records if r["bench"] == bench and r["system"] == system
                 and r.get(key) and r.get("ok", True)), None)


def _med(records, bench, system):
    r = _rec(records, bench, system, "median_s")
    return None if r is None else r["median_s"]


def done_when_lines(result):
    """The "Done when" list of issue 3 (the CPU engine), each line judged from this run's records: the
    tapegrad row (the default tier policy) against the named peer, or against a limit in seconds."""
    recs = result["records"]
    tg = "tapegrad"
    out = ["issue 3 'Done when', from this run (tapegrad = the default tier policy):"]

    def ratio_line(label, bench, other_bench, other_system, limit, strict=False):
        a, b = _med(recs, bench, tg), _med(recs, other_bench, other_system)
        if a is None or b is None:
            out.append(f"  [n/a ] {label}: not measured in this run")
            return
        r = a / b
        ok = r < limit if strict else r <= limit
        out.append(f"  [{'met ' if ok else 'MISS'}] {label}: {fmt_t(a)} / {fmt_t(b)} = {r:.2f}x "
                   f"({'<' if strict else '<='} {limit:g}x)")

    ratio_line("W3 per call vs PyTensor-C", "w3_small", "w3_small", "pytensor-c", 1.0)
    ratio_line("W3 per call vs JAX jit", "w3_small", "w3_small", "jax", 1.0, strict=True)
    ratio_line("W2 value+grad vs JAX", "w2_rosen_grad", "w2_rosen_grad", "jax", 0.5)
    ratio_line("W2 HVP vs JAX", "w2_rosen_hvp", "w2_rosen_hvp", "jax", 1.0)
    ratio_line("W2 HVP vs tapegrad's own W2 grad", "w2_rosen_hvp", "w2_rosen_grad", tg, 1.5)
    ratio_line("W1 vs JAX", "w1_mlp", "w1_mlp", "jax", 1.0)
    w4 = _rec(recs, "w4_l96_unrolled", tg, "first_call_s")
    if w4 is not None:
        t = w4["first_call_s"]
        out.append(f"  [{'met ' if t <= 2.0 else 'MISS'}] W4 unrolled graph + grad + function + first call: "
                   f"{fmt_t(t)} (<= 2 s)")
    else:
        out.append("  [n/a ] W4 unrolled graph + grad + function + first call: not measured in this run")
    ratio_line("W4 unrolled steady vs the NumPy adjoint", "w4_l96_unrolled", "w4_l96_unrolled", "numpy", 0.1)
    ratio_line("W5 vs PyTensor-Numba", "w5_jac", "w5_jac", "pytensor-numba", 1.0)
    firsts = [(r["bench"], r["first_run_s"]) for r in recs
              if r["system"] == tg and r.get("first_run_s") is not None]
    if firsts:
        worst = max(firsts, key=lambda bt: bt[1])
        out.append(f"  [{'met ' if worst[1] <= 0.3 else 'MISS'}] first call, warm engine cache (call only): "
                   f"slowest {worst[0]} {fmt_t(worst[1])} of {len(firsts)} workloads (<= 0.3 s)")
    cold = next((p for p in result.get("probes", []) if p.get("label") == "cold cache" and p.get("status") == "ok"),
                None)
    if cold is not None:
        t = cold["first_call_s"]
        out.append(f"  [{'met ' if t <= 60 else 'MISS'}] cold engine compile (first call, empty cache): "
                   f"{fmt_t(t)} (goal <= 60 s)")
    else:
        out.append("  [n/a ] cold engine compile: not in this run (--fresh-cache measures it)")
    return out


def probe_lines(probes):
    out = []
    for p in probes:
        if p.get("status") == "ok":
            hit = ""
            if "cache_misses" in p:
                hit = "compiled the engine (cache miss)" if p["cache_misses"] else "loaded the engine from cache"
            out.append(f"engine probe [{p['label']}]: import {fmt_t(p['import_s'])}, function {fmt_t(p['function_s'])}, "
                       f"first call {fmt_t(p['first_call_s'])} -> {hit}"
                       + (f"; program loops on {p['parallel'][0]} thread(s) ({p['parallel'][1]})" if "parallel" in p else ""))
        else:
            out.append(f"engine probe [{p['label']}]: {p['status']}: {p.get('note')}")
    return out


def plot(result, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("(matplotlib is not installed: no bar chart; install the perf extra for one)")
        return None
    recs = [r for r in result["records"] if r.get("median_s")]
    if not recs:
        return None
    benches = list(dict.fromkeys(r["bench"] for r in recs))
    systems = list(dict.fromkeys(r["system"] for r in recs))
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.6 * len(benches)), 9))
    w = 0.8 / len(systems)
    cmap = plt.get_cmap("tab10")
    for ax, key, title in ((axes[0], "median_s", "steady median per call"),
                           (axes[1], "first_call_s", "first call (graph + compile + first run)")):
        for j, s in enumerate(systems):
            xs, ys = [], []
            for i, b in enumerate(benches):
                r = next((r for r in recs if r["bench"] == b and r["system"] == s), None)
                if r is not None and r.get(key):
                    xs.append(i + (j - (len(systems) - 1) / 2) * w)
                    ys.append(r[key])
            hatch = "//" if s.startswith("tapegrad") else None
            ax.bar(xs, ys, w, label=s, color=cmap(j % 10), hatch=hatch, edgecolor="black", linewidth=0.3)
        ax.set_yscale("log")
        ax.set_ylabel("seconds (log)")
        ax.set_title(title)
        ax.set_xticks(np.arange(len(benches)))
        ax.set_xticklabels(benches, rotation=15)
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0].legend(ncol=min(5, len(systems)), fontsize=8)
    fig.suptitle(f"tapegrad vs peers ({result['threads']} thread(s), {result['started']})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------
def engine_fingerprint():
    """sha1[:12] and mtime of the CPU engine's files: which engine a saved run measured (it is being worked on)."""
    import hashlib
    out = {}
    for rel in ("tapegrad/compile/cpu.py", "tapegrad/compile/_generated_dispatch.py",
                "tapegrad/compile/_generated_kernels.py",
                "tapegrad/compile/kernels/core.py", "tapegrad/compile/kernels/scalar.py"):
        p = REPO / rel
        if p.is_file():
            out[rel] = {"sha1": hashlib.sha1(p.read_bytes()).hexdigest()[:12],
                        "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.stat().st_mtime))}
    return out


def drive(args):
    from one_core import blas_kernels, blas_line  # perf/ is sys.path[0] when run as a script

    benches = select_benches(args)
    tg_ok = True
    try:
        import tapegrad  # noqa: F401
    except Exception as e:  # noqa: BLE001
        tg_ok = False
        print(f"# tapegrad does not import here ({e}); its cells will fail")
    fn_tier, eng_tier = tg_accepts_tier() if tg_ok else (False, False)
    args.tg_systems = ["tapegrad"]
    if fn_tier and (eng_tier or args.tiers):
        args.tg_systems += ["tapegrad-interp", "tapegrad-fused"]
        if tg_has_program_tier():
            args.tg_systems.append("tapegrad-program")
    elif fn_tier:
        print("# tg.function accepts tier= but CPUEngine does not take it (the variants would run the same code): "
              "tapegrad-interp / tapegrad-fused left out; --tiers runs them anyway")
    register_tapegrad(args.tg_systems)
    all_systems = A.SYSTEMS + args.tg_systems
    systems = args.system or all_systems
    missing = [s for s in systems if not installed(s)]
    if missing:
        print(f"# not installed, skipped: {', '.join(missing)} "
              f"(peers come with the optional extra: pip install -e '.[perf]')")
    systems = [s for s in systems if s not in missing]
    fresh_dir = None
    if args.fresh_cache:
        fresh_dir = tempfile.mkdtemp(prefix="tapegrad-numba-cache-")
        args.numba_cache_dir = fresh_dir
    else:
        # per numba version: the peers' venv and the test suite may run different numba releases, and two
        # releases sharing one cache folder overwrite each other's index (every switch recompiles the engine)
        args.numba_cache_dir = os.environ.get("NUMBA_CACHE_DIR") or str(
            REPO / ".numba_cache" / f"numba-{_numba_version()}")
    cache_root = args.cache_root or tempfile.mkdtemp(prefix="compare-pytensor-cache-")
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else RESULTS / f"compare-{date}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = A.env_info()
    env["threads"] = args.threads
    env["tapegrad_engine_files"] = engine_fingerprint()
    env["numba_cache_dir"] = args.numba_cache_dir
    env["blas"] = blas_kernels()
    result = {"env": env, "threads": args.threads, "quick": args.quick, "fresh_cache": args.fresh_cache,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "anchors": str(ANCHORS_PATH),
              "tapegrad_systems": args.tg_systems, "targets": TARGETS, "probes": [], "records": []}

    def save():
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)

    print(f"# threads={args.threads} quick={args.quick} NUMBA_CACHE_DIR={args.numba_cache_dir} "
          f"pytensor cache root {cache_root}", flush=True)
    print(blas_line(env["blas"]), flush=True)
    tg_shared = {}
    tg_here = [s for s in systems if s.startswith("tapegrad")]
    if tg_here:
        labels = ["cold cache", "warm cache"] if args.fresh_cache else ["existing cache", "warm cache"]
        for lab in labels:
            p = run_probe_cell(args, lab)
            result["probes"].append(p)
            print(probe_lines([p])[0], flush=True)
        save()
        warm = result["probes"][-1]
        if warm.get("status") != "ok":
            # the interpreter cannot be loaded from NUMBA_CACHE_DIR: run the tapegrad cells in one process
            # per system with a new empty cache dir (Numba compiles, nothing is loaded)
            cold_ok = any(p.get("status") == "ok" for p in result["probes"])
            print(f"# !! the warm-cache engine probe failed ({warm.get('note')})"
                  + (" while a freshly compiled engine worked: loading the interpreter from NUMBA_CACHE_DIR is broken."
                     if cold_ok else ".")
                  + "\n# !! tapegrad cells fall back to one process per system, new empty cache dir "
                  "(the first bench's first call pays the engine compile).", flush=True)
            result["engine_cache_broken"] = cold_ok or "unknown"
            for s in tg_here:
                tb = [b for b in benches if s in A.REGISTRY.get(b, {})]
                tg_shared[s] = run_tg_shared(args, cache_root, tb, s)
    t_all = time.perf_counter()
    for bench in benches:
        for system in systems:
            if system not in A.REGISTRY.get(bench, {}):
                continue
            if f"{bench}:{system}" in (args.skip or []):
                continue
            if (bench, system) in SLOW_CELLS and not args.all_cells:
                result["records"].append({"bench": bench, "system": system, "status": "skipped",
                                          "note": "known > 180 s compile (anchors); --all-cells runs it"})
                print(f"{bench:<16} {system:<16} skipped (known > 180 s compile; --all-cells runs it)", flush=True)
                continue
            if system in tg_shared:
                rec = tg_shared[system].get(bench, {"bench": bench, "system": system, "status": "error",
                                                    "note": "not run"})
            else:
                rec = run_cell(args, cache_root, bench, system)
            result["records"].append(rec)
            print(A.fmt_row(rec), flush=True)
            save()
    result["total_wall_s"] = time.perf_counter() - t_all
    annotate(result["records"])
    save()
    lines = (probe_lines(result["probes"]) + [""] + table_lines(result["records"]) + ["", blas_line(env["blas"])]
             + [""] + done_when_lines(result))
    print("\n" + "\n".join(lines))
    png = plot(result, out.with_suffix(".png"))
    print(f"\n# wrote {out}" + (f" and {png}" if png else ""))


def show(path):
    from one_core import blas_line

    result = json.load(open(path))
    annotate(result["records"])
    blas = result.get("env", {}).get("blas")
    print("\n".join(probe_lines(result.get("probes", [])) + [""] + table_lines(result["records"])
                    + (["", blas_line(blas)] if blas else []) + [""] + done_when_lines(result)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", type=str.lower,
                    help="W1..W5 (or M, machine limits), or a bench name; repeatable; default W1..W5")
    ap.add_argument("--system", action="append",
                    help=f"repeatable; default every installed one of {A.SYSTEMS + TG_SYSTEMS}")
    ap.add_argument("--threads", choices=["1", "default"], default="1",
                    help="1 (default): one thread everywhere; default: each library's own threading")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (>= 3 calls / 0.1 s per cell)")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="new empty NUMBA_CACHE_DIR: measure tapegrad's cold engine compile, then warm first calls")
    ap.add_argument("--cap", type=float, default=300.0, help="wall seconds per cell before it is killed")
    ap.add_argument("--probe-cap", type=float, default=600.0, help="wall seconds for an engine probe")
    ap.add_argument("--skip", action="append", metavar="BENCH:SYSTEM", help="leave out one cell; repeatable")
    ap.add_argument("--tiers", action="store_true",
                    help="run tapegrad-interp / tapegrad-fused even if the engine ignores tier=")
    ap.add_argument("--all-cells", action="store_true", help="also run cells known to take > 180 s to compile")
    ap.add_argument("--cache-root", help="PyTensor compile-cache root (reuse one for warm-cache first calls)")
    ap.add_argument("--out", help="JSON path (default perf/results/compare-<date>[-quick].json; PNG beside it)")
    ap.add_argument("--show", metavar="JSON", help="print the table of a saved run")
    ap.add_argument("--worker", nargs=2, metavar=("BENCH", "SYSTEM"), help=argparse.SUPPRESS)
    ap.add_argument("--tg-systems", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-multi", nargs=2, metavar=("BENCHES", "SYSTEM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        register_tapegrad((args.tg_systems or "tapegrad").split(","))
        run_worker(*args.worker)
    elif args.worker_multi:
        register_tapegrad((args.tg_systems or "tapegrad").split(","))
        run_worker_multi(args.worker_multi[0].split(","), args.worker_multi[1])
    elif args.probe:
        run_probe()
    elif args.show:
        show(args.show)
    else:
        drive(args)


if __name__ == "__main__":
    main()
