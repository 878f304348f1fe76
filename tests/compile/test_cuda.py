"""The CUDA engine against the reference engine, under the numba CUDA simulator.

The simulator must be enabled before numba is imported, so the checks run in a
subprocess (``python tests/compile/test_cuda.py --worker``) that sets
``NUMBA_ENABLE_CUDASIM=1``; one subprocess runs every case and prints a JSON
report.  On a machine with a GPU, ``perf/gpu_check.py`` runs the same worker
without the simulator.

Checked: every spec row of ``tests/ops/specs_*.py`` (value, each dtype; and
the gradient ``Lop(f, x, v)`` compiled on cuda for float64 rows), a few
composite graphs (MLP value+grads, Rosenbrock grad and HVP, device-array
inputs and ``return_device``), against ``device="python"`` (float64 to 1e-12,
float32 to 1e-5 relative to the largest magnitude).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RTOL = {"float64": 1e-12, "float32": 1e-5}


def _have_numba_cuda():
    try:
        import importlib.util

        return importlib.util.find_spec("numba_cuda") is not None or importlib.util.find_spec("numba.cuda") is not None
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- the worker
def _cmp(what, got, want, dtype):
    from tests.ops.test_specs import _mismatch

    got, want = np.asarray(got), np.asarray(want)
    if got.dtype != want.dtype:
        return f"{what}: dtype {got.dtype}, expected {want.dtype}"
    rtol = RTOL.get(dtype, 1e-12) if want.dtype.kind == "f" else 0
    return _mismatch(what, got, want, rtol or 1e-12)


def run_rows(grad_every=1, row_filter=None, deadline=None):
    """Every spec row on cuda vs python; returns a list of result dicts."""
    import tapegrad as tg
    from tapegrad.gradient import Lop
    from tapegrad.testing import compile_function
    from tests.ops.specs import ROWS
    from tests.ops.test_specs import _as_list, _values, _variables, _wrt

    results = []
    for ri, row in enumerate(ROWS):
        if row_filter and row_filter not in row.id:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            if results:
                results[-1]["stopped"] = True
            break
        for dtype in row.dtypes:
            case = f"{row.id}-{dtype}"
            t0 = time.perf_counter()
            res = {"case": case, "code": row.code, "ok": True, "msg": "", "fallback": [], "native": []}
            try:
                rng = np.random.default_rng(zlib.crc32(case.encode()))
                vals = _values(row, dtype, rng)
                xs = _variables(row, [v.dtype.name for v in vals])
                outs = _as_list(row.build(*xs))
                fc = compile_function(xs, outs, device="cuda")
                fp = compile_function(xs, outs, device="python")
                want = fp(*vals)
                try:
                    got = fc(*vals)
                except Exception as e:  # noqa: BLE001 - the python engine must raise the same
                    raise AssertionError(f"value: cuda raised {type(e).__name__}: {e}") from None
                msgs = [_cmp(f"value {i}", g, w, dtype) for i, (g, w) in enumerate(zip(got, want))]
                eng = fc._engine
                res["fallback"] = eng.fallback_codes()
                res["native"] = eng.native_codes()
                wrt = [i for i in _wrt(row) if vals[i].dtype.kind == "f"]
                if (row.differentiable and wrt and dtype == "float64" and ri % grad_every == 0
                        and all(np.issubdtype(np.dtype(o.dtype), np.floating) for o in outs)):
                    vs = [tg.tensor(f"v{i}", dtype=o.dtype, shape=(None,) * o.ndim) for i, o in enumerate(outs)]
                    gr = Lop(outs if len(outs) > 1 else outs[0], [xs[i] for i in wrt], vs if len(outs) > 1 else vs[0],
                             disconnected_inputs="ignore")
                    gr = _as_list(gr)
                    vv = [rng.standard_normal(np.shape(w)).astype(w.dtype) for w in want]
                    gc = compile_function(xs + vs, gr, device="cuda")
                    gp = compile_function(xs + vs, gr, device="python")
                    gw = gp(*vals, *vv)
                    gg = gc(*vals, *vv)
                    msgs += [_cmp(f"grad {i}", g, w, dtype) for i, (g, w) in enumerate(zip(gg, gw))]
                    res["fallback"] = sorted(set(res["fallback"]) | set(gc._engine.fallback_codes()))
                    res["native"] = sorted(set(res["native"]) | set(gc._engine.native_codes()))
                    res["grad"] = True
                msgs = [m for m in msgs if m]
                if msgs:
                    res["ok"], res["msg"] = False, "\n".join(msgs)[:2000]
            except Exception:  # noqa: BLE001 - reported per case
                tb = traceback.format_exc()
                if "python raised" in tb:
                    res["ok"] = True
                else:
                    res["ok"], res["msg"] = False, tb[-2000:]
            res["s"] = round(time.perf_counter() - t0, 3)
            results.append(res)
    return results


def _expected_error(row, dtype):
    """Rows where the python engine itself raises are skipped (both must raise)."""
    return False


def run_composites(n_mlp=(8, 5, 4, 3), n_rosen=9):
    """MLP value+grads, Rosenbrock grad + HVP, device inputs, return_device."""
    import tapegrad as tg

    out = []

    def check(name, fn_c, fn_p, args, dtype="float64"):
        t0 = time.perf_counter()
        try:
            got, want = fn_c(*args), fn_p(*args)
            got = got if isinstance(got, list) else [got]
            want = want if isinstance(want, list) else [want]
            msgs = [m for m in (_cmp(f"{name} {i}", g, w, dtype) for i, (g, w) in enumerate(zip(got, want))) if m]
            out.append({"case": name, "ok": not msgs, "msg": "\n".join(msgs), "s": round(time.perf_counter() - t0, 3),
                        "fallback": fn_c._engine.fallback_codes(), "native": fn_c._engine.native_codes()})
        except Exception:  # noqa: BLE001
            out.append({"case": name, "ok": False, "msg": traceback.format_exc()[-2000:], "s": 0,
                        "fallback": [], "native": []})

    rng = np.random.default_rng(0)
    N, D, H, O = n_mlp
    for dtype in ("float64", "float32"):
        X = tg.tensor("X", dtype=dtype, shape=(None, None))
        Y = tg.tensor("Y", dtype=dtype, shape=(None, None))
        W1 = tg.tensor("W1", dtype=dtype, shape=(None, None))
        b1 = tg.tensor("b1", dtype=dtype, shape=(None,))
        W2 = tg.tensor("W2", dtype=dtype, shape=(None, None))
        b2 = tg.tensor("b2", dtype=dtype, shape=(None,))
        Hh = tg.tanh(tg.dot(X, W1) + b1)
        loss = tg.sum((tg.dot(Hh, W2) + b2 - Y) ** 2) / float(N)
        params = [W1, b1, W2, b2]
        outs = [loss] + tg.grad(loss, params)
        ins = [X, Y] + params
        vals = [rng.standard_normal(s).astype(dtype) for s in [(N, D), (N, O), (D, H), (H,), (H, O), (O,)]]
        check(f"mlp-{dtype}", tg.function(ins, outs, device="cuda"), tg.function(ins, outs, device="python"), vals,
              dtype)
    x = tg.tensor("x", dtype="float64", shape=(None,))
    v = tg.tensor("v", dtype="float64", shape=(None,))
    f = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = tg.grad(f, x)
    hv = tg.hessian_vector_product(f, x, v) if hasattr(tg, "hessian_vector_product") else tg.grad(tg.sum(g * v), x)
    xv, vv = rng.uniform(-1, 1, n_rosen), rng.standard_normal(n_rosen)
    check("rosen-grad", tg.function([x], [f, g], device="cuda"), tg.function([x], [f, g], device="python"), [xv])
    check("rosen-hvp", tg.function([x, v], hv, device="cuda"), tg.function([x, v], hv, device="python"), [xv, vv])
    sm = tg.nn.softmax(tg.tensor("s", dtype="float64", shape=(None, None))) if hasattr(tg, "nn") else None
    # device-array inputs and return_device
    t0 = time.perf_counter()
    try:
        from numba import cuda

        fc = tg.function([x], [f, g], device="cuda")
        dx = cuda.to_device(xv)
        got = fc(dx, return_device=True)
        assert all(hasattr(a, "copy_to_host") for a in got), [type(a) for a in got]
        host = [a.copy_to_host() for a in got]
        want = tg.function([x], [f, g], device="python")(xv)
        msgs = [m for m in (_cmp(f"device {i}", h, w, "float64") for i, (h, w) in enumerate(zip(host, want))) if m]
        got2 = fc(dx, return_device=True)  # fresh arrays: the first results are unchanged
        assert got2[1] is not got[1]
        out.append({"case": "device-io", "ok": not msgs, "msg": "\n".join(msgs), "s": round(time.perf_counter() - t0, 3),
                    "fallback": [], "native": []})
    except Exception:  # noqa: BLE001
        out.append({"case": "device-io", "ok": False, "msg": traceback.format_exc()[-2000:], "s": 0,
                    "fallback": [], "native": []})
    return out


def worker(argv):
    grad_every = 1
    row_filter = None
    for a in argv:
        if a.startswith("--grad-every="):
            grad_every = int(a.split("=")[1])
        if a.startswith("--filter="):
            row_filter = a.split("=", 1)[1]
    t0 = time.perf_counter()
    results = run_rows(grad_every, row_filter) + ([] if row_filter else run_composites())
    report = {"results": results, "seconds": round(time.perf_counter() - t0, 1)}
    print("@@REPORT@@" + json.dumps(report))


def summarize(report):
    res = report["results"]
    bad = [r for r in res if not r["ok"]]
    fb = {}
    for r in res:
        for c in r.get("fallback", []):
            fb[c] = fb.get(c, 0) + 1
    nat = sorted({c for r in res for c in r.get("native", [])})
    lines = [f"{len(res)} cases, {len(res) - len(bad)} passed, {len(bad)} failed, "
             f"{sum(1 for r in res if r.get('grad'))} with gradients, {report['seconds']} s",
             f"native codes ({len(nat)}): {' '.join(nat)}",
             f"fallback codes ({len(fb)}): {' '.join(f'{k}x{v}' for k, v in sorted(fb.items()))}"]
    for r in bad:
        lines.append(f"FAIL {r['case']}: {r['msg']}")
    return "\n".join(lines)


def start_worker_subprocess(sim=True, extra=()):
    env = dict(os.environ)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_report(p, timeout=900):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    marker = [ln for ln in out.splitlines() if ln.startswith("@@REPORT@@")]
    if not marker:
        raise AssertionError(f"worker failed (rc {p.returncode}):\n{out[-3000:]}\n{err[-5000:]}")
    return json.loads(marker[-1][len("@@REPORT@@"):])


def run_worker_subprocess(sim=True, extra=(), timeout=900):
    return worker_report(start_worker_subprocess(sim, extra), timeout)


# The simulator run of every spec row is the suite's longest test (about 70 s of one core, in a subprocess).
# When it is collected, tests/conftest.py starts it at the beginning of the session, so it runs on the second
# core beside the other tests; the test then only waits for its report.
SIM_EXTRA = ("--grad-every=2",)
EARLY = {}  # "sim": the worker started at collection


def start_early():
    if _have_numba_cuda() and "sim" not in EARLY:
        EARLY["sim"] = start_worker_subprocess(sim=True, extra=SIM_EXTRA)


def stop_early():
    p = EARLY.pop("sim", None)
    if p is not None and p.poll() is None:
        p.kill()
        p.communicate()


# --------------------------------------------------------------------------- pytest
@pytest.mark.slow
@pytest.mark.skipif(not _have_numba_cuda(), reason="numba-cuda is not installed (pip install numba-cuda)")
def test_cuda_engine_matches_python_under_simulator():
    # every row's value in every dtype; the gradient of every second row (float64): ~70 s of one core
    p = EARLY.pop("sim", None)
    report = worker_report(p) if p is not None else run_worker_subprocess(sim=True, extra=SIM_EXTRA)
    text = summarize(report)
    print(text)
    assert all(r["ok"] for r in report["results"]), text


@pytest.mark.slow
@pytest.mark.skipif(not _have_numba_cuda(), reason="numba-cuda is not installed (pip install numba-cuda)")
def test_gpu_check_tiny_runs():
    p = subprocess.run([sys.executable, str(ROOT / "perf" / "gpu_check.py"), "--tiny"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OUT": ""})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "ERROR" not in p.stdout, p.stdout[-4000:]
    assert "=== c. table" in p.stdout and "W2 rosen hvp" in p.stdout, p.stdout[-4000:]
    assert " 0 failed" in p.stdout, p.stdout[-4000:]


def test_no_gpu_error_message():
    code = ("import os; os.environ.pop('NUMBA_ENABLE_CUDASIM', None)\n"
            "import tapegrad as tg\n"
            "x = tg.tensor('x', dtype='float64', shape=(None,))\n"
            "try:\n    tg.function([x], x * 2, device='cuda')\nexcept RuntimeError as e:\n    print('ERR', e)\n"
            "else:\n    print('OK')\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    if "OK" in p.stdout.split():
        pytest.skip("a CUDA GPU is available here")
    assert "device='cuda' needs an NVIDIA GPU or NUMBA_ENABLE_CUDASIM=1" in out, out


def test_import_does_not_need_numba_cuda():
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numba.cuda' or name.startswith('numba_cuda') or name.startswith('numba.cuda.'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\nimport tapegrad, tapegrad.compile.function\n"
            "assert 'numba.cuda' not in sys.modules\nprint('OK')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "OK" in p.stdout, p.stdout + p.stderr


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.path.insert(0, str(ROOT))
        worker(sys.argv[1:])
    else:
        print(summarize(run_worker_subprocess(sim="--gpu" not in sys.argv)))
