#!/usr/bin/env python
"""One prepared check of the CUDA engine on a real GPU (or, with ``--tiny``, the simulator).

    python perf/gpu_check.py            # on a machine with an NVIDIA GPU (< 5 min on an H100)
    python perf/gpu_check.py --tiny     # tiny sizes under NUMBA_ENABLE_CUDASIM=1 (what CI runs)

Sections (each in try/except; an error is printed and the next section runs):

a. every spec row of ``tests/ops/specs_*.py`` through device="cuda" vs device="python"
   (value; gradient by Lop for float64 rows), plus composite graphs, via the
   worker of ``tests/compile/test_cuda.py`` run in-process (no simulator);
b. timings of W1 (MLP 1024x256x256x10 value + 4 grads), W2 (Rosenbrock n=1e6
   value+grad, and HVP), W3 (n=10 value + grad), from /work/shared/perf/anchors.py's
   definitions, on device="cuda" (host arrays in/out, and device-resident
   in/out) vs device="cpu", and JAX / PyTorch on the GPU when importable;
c. the table, printed LAST, with achieved GB/s against the device's bandwidth
   (memory clock x bus width, else a measured device-to-device copy).

Results go to stdout and to ``$OUT/gpu_check.txt`` when $OUT is set.
Needs: numpy, numba, numba-cuda (and a CUDA driver); scipy optional; jax/torch optional.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

TINY = "--tiny" in sys.argv
if TINY:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

LINES = []
T_START = time.perf_counter()
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET_S", "270"))  # whole script; section a gets what b and c leave


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LINES.append(s)


def save():
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.txt").write_text("\n".join(LINES) + "\n")


def section(name):
    def deco(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            say(f"\n=== {name}")
            try:
                return fn(*a, **k)
            except Exception:  # noqa: BLE001 - keep going
                say(f"ERROR in {name}:\n{traceback.format_exc()}")
            finally:
                say(f"--- {name}: {time.perf_counter() - t0:.1f} s")
                save()
        return run
    return deco


# --------------------------------------------------------------------------- device info
@section("device")
def device_info():
    from numba import cuda

    info = {"sim": TINY}
    if TINY:
        say("simulator (NUMBA_ENABLE_CUDASIM=1)")
        info["bw"] = None
        return info
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    say(f"GPU: {name}, compute capability {dev.compute_capability}")
    bw = None
    try:
        clock_khz = dev.MEMORY_CLOCK_RATE
        bus_bits = dev.GLOBAL_MEMORY_BUS_WIDTH
        bw = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
        say(f"memory clock {clock_khz / 1e3:.0f} MHz x bus {bus_bits} bit: theoretical {bw:.0f} GB/s")
    except Exception as e:  # noqa: BLE001
        say(f"(no memory clock/bus width attributes: {e})")
    try:
        n = 100_000_000
        a = cuda.device_array(n, np.float64)
        b = cuda.device_array(n, np.float64)
        b.copy_to_device(a)
        cuda.synchronize()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            b.copy_to_device(a)
            cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        meas = 2 * 8 * n / min(ts) / 1e9
        say(f"measured device-to-device copy: {meas:.0f} GB/s (read + write)")
        info["copy_bw"] = meas
        del a, b
    except Exception as e:  # noqa: BLE001
        say(f"(copy measurement failed: {e})")
    info["bw"] = bw or info.get("copy_bw")
    return info


# --------------------------------------------------------------------------- a. correctness
@section("a. spec rows and composites: cuda vs python")
def correctness(deadline):
    from tests.compile import test_cuda as T

    t0 = time.perf_counter()
    if TINY:  # a few rows through the simulator (tests/compile/test_cuda.py runs them all)
        res = T.run_rows(grad_every=1, row_filter="exp", deadline=deadline)
        comp = []
    else:
        res = T.run_rows(grad_every=1, deadline=deadline)
        comp = T.run_composites() if time.perf_counter() < deadline else []
    report = {"results": res + comp, "seconds": round(time.perf_counter() - t0, 1)}
    say(T.summarize(report))
    if res and res[-1].get("stopped"):
        say(f"(stopped at the time budget after {len(res)} cases)")


# --------------------------------------------------------------------------- b. timings
def _graphs():
    import tapegrad as tg

    g = {}
    # W1: MLP (anchors.mlp_loss)
    X = tg.tensor("X", dtype="float64", shape=(None, None))
    Y = tg.tensor("Y", dtype="float64", shape=(None, None))
    W1 = tg.tensor("W1", dtype="float64", shape=(None, None))
    b1 = tg.tensor("b1", dtype="float64", shape=(None,))
    W2 = tg.tensor("W2", dtype="float64", shape=(None, None))
    b2 = tg.tensor("b2", dtype="float64", shape=(None,))
    H = tg.tanh(tg.dot(X, W1) + b1)
    g["n_mlp"] = None
    g["mlp"] = (lambda n: ([X, Y, W1, b1, W2, b2],
                           [tg.sum((tg.dot(H, W2) + b2 - Y) ** 2) / float(n)]))
    # W2: Rosenbrock
    x = tg.tensor("x", dtype="float64", shape=(None,))
    v = tg.tensor("v", dtype="float64", shape=(None,))
    f = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g["rosen_grad"] = ([x], [f, tg.grad(f, x)])
    hvp = tg.hessian_vector_product(f, x, v) if hasattr(tg, "hessian_vector_product") else \
        tg.grad(tg.sum(tg.grad(f, x) * v), x)
    g["rosen_hvp"] = ([x, v], hvp if isinstance(hvp, list) else [hvp])
    # W3: small
    s = tg.sum(tg.sin(x) * tg.exp(-(x ** 2)))
    g["small"] = ([x], [s, tg.grad(s, x)])
    return g


def _time(fn, args, min_reps=10, min_s=0.5, sync=None):
    fn(*args)
    if sync:
        sync()
    ts = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(*args)
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
        if len(ts) > 2000:
            break
    return statistics.median(ts)


@section("b. timings")
def timings(rows):
    import tapegrad as tg

    sim = TINY
    n_mlp, d_in, d_hid, d_out = (4, 3, 3, 2) if sim else (1024, 256, 256, 10)
    n_rosen = 12 if sim else 1_000_000
    n_small = 4 if sim else 10
    G = _graphs()
    rng = np.random.default_rng(0)
    ins, outs = G["mlp"](n_mlp)
    W1i = [ins[2], ins[3], ins[4], ins[5]]
    mlp_outs = outs + tg.grad(outs[0], W1i)
    mlp_data = [rng.standard_normal((n_mlp, d_in)), rng.standard_normal((n_mlp, d_out)),
                rng.standard_normal((d_in, d_hid)) * 0.1, np.zeros(d_hid), rng.standard_normal((d_hid, d_out)) * 0.1,
                np.zeros(d_out)]
    xr = rng.uniform(-1, 1, n_rosen)
    vr = rng.standard_normal(n_rosen)
    xs = rng.standard_normal(n_small)
    benches = [
        ("W1 mlp value+grad", ins, mlp_outs, mlp_data, None, 2 * n_mlp * d_hid * (2 * d_in + 3 * d_out)),
        ("W2 rosen value+grad", G["rosen_grad"][0], G["rosen_grad"][1], [xr], 16 * n_rosen, None),
        ("W2 rosen hvp", G["rosen_hvp"][0], G["rosen_hvp"][1], [xr, vr], 24 * n_rosen, None),
        ("W3 small value+grad", G["small"][0], G["small"][1], [xs], None, None),
    ]
    from numba import cuda

    sync = None if sim else cuda.synchronize
    only = os.environ.get("GPU_CHECK_ONLY")  # "bench|device": run one cell (the cpu cells run in a subprocess)
    for name, i, o, data, nbytes, flops in benches:
        ref = None
        for dev in ("cpu", "cuda", "cuda-resident"):
            if only and only != f"{name}|{dev}":
                continue
            if dev == "cpu" and sim:
                continue  # --tiny checks the CUDA path only
            if dev == "cpu" and not only:
                _cpu_cell(name, rows)  # the CPU engine runs in a child process: a crash there stays there
                continue
            try:
                t0 = time.perf_counter()
                f = tg.function(i, o, device="cpu" if dev == "cpu" else "cuda")
                if dev == "cuda-resident":
                    dd = [cuda.to_device(a) for a in data]
                    call = lambda *a, f=f: f(*a, return_device=True)  # noqa: E731
                    args = dd
                else:
                    call, args = f, data
                first = call(*args)
                if sync and dev != "cpu":
                    sync()
                t_first = time.perf_counter() - t0
                got = [np.asarray(r.copy_to_host() if hasattr(r, "copy_to_host") else r) for r in
                       (first if isinstance(first, list) else [first])]
                if ref is None:
                    ref = tg.function(i, o, device="python")(*data)
                    ref = ref if isinstance(ref, list) else [ref]
                err = max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300)) if b.size else 0.0
                          for a, b in zip(got, ref))
                t = _time(call, args, min_reps=1 if sim else 20, min_s=0.0 if sim else 1.0,
                          sync=sync if dev != "cpu" else None)
                eng = getattr(f, "_engine", None)
                fb = eng.fallback_codes() if hasattr(eng, "fallback_codes") else []
                rows.append((name, dev, t, t_first, err, nbytes, flops, fb))
                say(f"{name:24s} {dev:14s} steady {t * 1e3:9.3f} ms  first {t_first:7.2f} s  rel.err {err:.1e}"
                    + (f"  fallback {fb}" if fb else ""))
                if only:
                    print("@@ROW@@" + json.dumps(rows[-1]), flush=True)
            except Exception:  # noqa: BLE001
                say(f"{name} on {dev}: ERROR\n{traceback.format_exc()[-1500:]}")
        if not sim and not only:
            _others(name, data, rows, n_mlp)
        save()


def _cpu_cell(name, rows):
    import subprocess

    env = dict(os.environ, GPU_CHECK_ONLY=f"{name}|cpu", OUT="")
    try:
        p = subprocess.run([sys.executable, __file__] + (["--tiny"] if TINY else []) + ["--cell"], env=env,
                           capture_output=True, text=True, timeout=120)
        got = [ln for ln in p.stdout.splitlines() if ln.startswith("@@ROW@@")]
        if got:
            row = tuple(json.loads(got[-1][7:]))
            rows.append(row)
            say(f"{name:24s} {'cpu':14s} steady {row[2] * 1e3:9.3f} ms  first {row[3]:7.2f} s  rel.err {row[4]:.1e}")
        else:
            say(f"{name} on cpu: no result (rc {p.returncode}){' (crashed)' if p.returncode < 0 else ''}: "
                f"{(p.stdout + p.stderr)[-800:]}")
    except Exception as e:  # noqa: BLE001
        say(f"{name} on cpu: {type(e).__name__}: {e}")


def _others(name, data, rows, n_mlp):
    """JAX and PyTorch on the GPU, when importable."""
    try:
        import torch

        if torch.cuda.is_available():
            dev = "cuda"
            T = [torch.tensor(a, device=dev) for a in data]

            def run():
                xs = [t.clone().requires_grad_(True) for t in T]
                if name.startswith("W1"):
                    X, Y, W1, b1, W2, b2 = xs
                    loss = torch.sum((torch.tanh(X @ W1 + b1) @ W2 + b2 - Y) ** 2) / float(n_mlp)
                    gs = torch.autograd.grad(loss, [W1, b1, W2, b2])
                    return [loss, *gs]
                x = xs[0]
                if name.startswith("W2 rosen hvp"):
                    f = torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
                    (g,) = torch.autograd.grad(f, x, create_graph=True)
                    (h,) = torch.autograd.grad(g, x, grad_outputs=T[1])
                    return [h]
                if name.startswith("W2"):
                    f = torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
                else:
                    f = torch.sum(torch.sin(x) * torch.exp(-(x ** 2)))
                (g,) = torch.autograd.grad(f, x)
                return [f, g]

            t = _time(run, [], min_reps=20, min_s=1.0, sync=torch.cuda.synchronize)
            rows.append((name, "torch-gpu", t, None, None, None, None, []))
            say(f"{name:24s} {'torch-gpu':14s} steady {t * 1e3:9.3f} ms")
    except Exception as e:  # noqa: BLE001
        say(f"{name} torch: {type(e).__name__}: {e}")
    try:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        if any(d.platform == "gpu" for d in jax.devices()):
            J = [jnp.asarray(a) for a in data]
            if name.startswith("W1"):
                def loss(p, X, Y):
                    W1, b1, W2, b2 = p
                    return jnp.sum((jnp.tanh(X @ W1 + b1) @ W2 + b2 - Y) ** 2) / float(n_mlp)
                vg = jax.jit(jax.value_and_grad(loss))
                fn = lambda: vg(J[2:], J[0], J[1])  # noqa: E731
            else:
                if name.startswith("W2"):
                    f = lambda x: jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)  # noqa: E731
                else:
                    f = lambda x: jnp.sum(jnp.sin(x) * jnp.exp(-(x ** 2)))  # noqa: E731
                if "hvp" in name:
                    h = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])
                    fn = lambda: h(J[0], J[1])  # noqa: E731
                else:
                    vg = jax.jit(jax.value_and_grad(f))
                    fn = lambda: vg(J[0])  # noqa: E731

            def run():
                jax.block_until_ready(fn())

            t = _time(run, [], min_reps=20, min_s=1.0)
            rows.append((name, "jax-gpu", t, None, None, None, None, []))
            say(f"{name:24s} {'jax-gpu':14s} steady {t * 1e3:9.3f} ms")
    except Exception as e:  # noqa: BLE001
        say(f"{name} jax: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- c. table
@section("c. table")
def table(rows, info):
    bw = (info or {}).get("bw")
    say(f"device bandwidth: {bw:.0f} GB/s" if bw else "device bandwidth: unknown")
    say(f"{'bench':24s} {'system':14s} {'steady ms':>10s} {'first s':>8s} {'rel.err':>8s} {'GB/s':>8s} {'%bw':>6s} "
        f"{'GFLOP/s':>8s}")
    for name, dev, t, first, err, nbytes, flops, fb in rows:
        gbs = nbytes / t / 1e9 if nbytes else None
        pct = 100 * gbs / bw if (gbs and bw) else None
        gfl = flops / t / 1e9 if flops else None
        say(f"{name:24s} {dev:14s} {t * 1e3:10.3f} {'' if first is None else f'{first:8.2f}':>8s} "
            f"{'' if err is None else f'{err:8.1e}':>8s} {'' if gbs is None else f'{gbs:8.1f}':>8s} "
            f"{'' if pct is None else f'{pct:5.1f}%':>6s} {'' if gfl is None else f'{gfl:8.1f}':>8s}")


def main():
    say(f"tapegrad gpu_check {'(--tiny, simulator)' if TINY else ''} python {sys.version.split()[0]}")
    try:
        import numba
        import numba_cuda  # noqa: F401

        say(f"numpy {np.__version__}, numba {numba.__version__}, numba-cuda "
            f"{getattr(sys.modules.get('numba_cuda'), '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        say(f"versions: {e}")
    if "--cell" in sys.argv:
        timings([])
        return
    info = device_info()
    rows = []
    timings(rows)
    left = BUDGET - (time.perf_counter() - T_START) - 10
    correctness(time.perf_counter() + (left if not TINY else 60))
    table(rows, info)
    say(f"total {time.perf_counter() - T_START:.1f} s")
    save()


if __name__ == "__main__":
    main()
