"""Smoke timings of the fused tier (tapegrad.compile.fused) against tier 0 and NumPy by hand.

    python perf/fused_smoke.py [n]          # n defaults to 1e6

Rosenbrock cost = sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2), two tapes:
"vg" = [cost, grad] and "vgh" = [cost, grad, hessian_vector_product(cost, x, v)].
Columns: CPUEngine(tier="fused") (fused groups by generated loops inside the tier-0 plan: arenas, views,
interpreter for the rest), FusedCPUEngine(tier="fused") (standalone: fused groups, the rest by NumPy perform),
CPUEngine(tier="interp") (tier 0: the compiled interpreter only), NumPy by hand.  Compile time is measured in child processes
with a fresh cache folder (cold: generate + numba compile) and then the same folder (warm: machine code from
numba's disk cache).  Medians of repeated calls, one thread.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def median_time(f, min_calls=15, min_s=1.0):
    ts = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def fmt(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def tapes():
    import tapegrad as tg
    import tapegrad.ops as O
    from tapegrad.graph import TensorType
    from tapegrad.tape.build import build_tape

    x = TensorType("float64", (None,))("x")
    v = TensorType("float64", (None,))("v")
    cost = O.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    g = tg.grad(cost, x)
    return {"vg": build_tape([x, v], [cost, g]),
            "vgh": build_tape([x, v], [cost, g, tg.hessian_vector_product(cost, x, v)])}


def numpy_vg(x):
    a, b = x[:-1], x[1:]
    d = b - a * a
    c = 1 - a
    f = np.sum(100 * d * d + c * c)
    g = np.zeros_like(x)
    g[:-1] = -400 * a * d - 2 * c
    g[1:] += 200 * d
    return f, g


def numpy_vgh(x, v):
    f, g = numpy_vg(x)
    a, b = x[:-1], x[1:]
    va, vb = v[:-1], v[1:]
    h = np.zeros_like(x)
    h[:-1] = (1200 * a * a - 400 * b + 2) * va - 400 * a * vb
    h[1:] += 200 * vb - 400 * a * va
    return f, g, h


def child_compile(n):
    """Time build + first call of the fused engine (compile or disk-cache load) in this fresh process."""
    t0 = time.perf_counter()
    ts = tapes()
    from tapegrad.compile.fused import FusedCPUEngine

    t_build = time.perf_counter() - t0
    x = np.random.default_rng(0).uniform(-1, 1, n)
    v = np.random.default_rng(1).uniform(-1, 1, n)
    res = {"build_s": t_build}
    from tapegrad.compile.cpu import CPUEngine

    for name, tape in ts.items():
        e = FusedCPUEngine(tape, tier="fused")
        t0 = time.perf_counter()
        e.run([x, v], [])
        t_fe = time.perf_counter() - t0
        c = CPUEngine(tape, tier="fused")
        t0 = time.perf_counter()
        c.run([x, v], [])
        res[name + "_cpu"] = time.perf_counter() - t0
        res[name] = {"first_call_s": t_fe,
                     "groups": [len(g.group.members) for g in e.groups()],
                     "kernel_s": [round(g.kernel.compile_s, 4) for g in e.groups()],
                     "from_disk": [g.kernel.from_cache for g in e.groups()]}
    print(json.dumps(res))


def main():
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    env = dict(os.environ)
    env["TAPEGRAD_FUSED_DIR"] = tempfile.mkdtemp(prefix="tg_fused_smoke_")
    runs = {}
    for label in ("cold", "warm"):
        r = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env, capture_output=True, text=True,
                           check=True)
        runs[label] = json.loads(r.stdout.strip().splitlines()[-1])
    for label, r in runs.items():
        for name in ("vg", "vgh"):
            d = r[name]
            print(f"{label:5s} {name:4s}: build+first call {d['first_call_s']:.3f} s; groups (sizes) {d['groups']}, "
                  f"per-kernel compile/load s {d['kernel_s']}, from numba disk cache {d['from_disk']}; "
                  f"then CPUEngine(tier='fused') build+first call {r[name + '_cpu']:.3f} s")

    os.environ["TAPEGRAD_FUSED_DIR"] = env["TAPEGRAD_FUSED_DIR"]
    from tapegrad.compile.cpu import CPUEngine
    from tapegrad.compile.fused import FusedCPUEngine
    from tapegrad.compile.reference import ReferenceEngine

    ts = tapes()
    x = np.random.default_rng(0).uniform(-1, 1, n)
    v = np.random.default_rng(1).uniform(-1, 1, n)
    print(f"\nsteady medians, n = {n:g}, one thread")
    print(f"{'tape':5s} {'CPUEngine fused':>16s} {'FusedCPUEngine':>15s} {'CPUEngine interp':>17s} "
          f"{'NumPy by hand':>14s}  max rel err vs ref")
    for name, tape in ts.items():
        cf = CPUEngine(tape, tier="fused")
        fe = FusedCPUEngine(tape, tier="fused")
        ce = CPUEngine(tape, tier="interp")
        cfo = cf.run([x, v], [])[0]
        fo = fe.run([x, v], [])[0]
        co = ce.run([x, v], [])[0]
        ro = ReferenceEngine(tape).run([x, v], [])[0]
        err = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(fo, ro))
        errcf = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(cfo, ro))
        errc = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(co, ro))
        hand = (lambda: numpy_vg(x)) if name == "vg" else (lambda: numpy_vgh(x, v))
        hv = hand()
        errh = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(hv, ro))
        tcf = median_time(lambda: cf.run([x, v], []))
        tf = median_time(lambda: fe.run([x, v], []))
        tc = median_time(lambda: ce.run([x, v], []))
        th = median_time(hand)
        print(f"{name:5s} {fmt(tcf):>16s} {fmt(tf):>15s} {fmt(tc):>17s} {fmt(th):>14s}  cpu-fused {errcf:.1e}, "
              f"fused {err:.1e}, tier0 {errc:.1e}, hand {errh:.1e}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_compile(int(sys.argv[2]))
    else:
        main()
