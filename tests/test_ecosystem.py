"""tapegrad next to SciPy and Dask: ``scipy_objective``, pickled Functions and tapes, the Dask ensemble script."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile.reference import ReferenceEngine
from tapegrad.ecosystem import ScipyObjective, scipy_objective

ROOT = Path(__file__).resolve().parent.parent
so = pytest.importorskip("scipy.optimize")


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    return env


# --------------------------------------------------------------------------- scipy_objective
def test_objective_matches_scipy_rosenbrock_derivatives():
    x = tg.vector("x")
    obj = scipy_objective(rosenbrock(x), x, device="python")
    assert isinstance(obj, ScipyObjective)
    rng = np.random.default_rng(0)
    for n in (2, 7):
        xv, p = rng.normal(size=n), rng.normal(size=n)
        assert obj.fun(xv) == pytest.approx(so.rosen(xv), rel=1e-13)
        np.testing.assert_allclose(obj.jac(xv), so.rosen_der(xv), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(obj.hessp(xv, p), so.rosen_hess_prod(xv, p), rtol=1e-12, atol=1e-11)
        c, g = obj.value_and_grad(xv)
        assert c == obj.fun(xv) and isinstance(c, float)
        np.testing.assert_array_equal(g, obj.jac(xv))


def test_fun_and_jac_share_one_evaluation_and_the_cache_is_safe():
    x = tg.vector("x")
    obj = scipy_objective(rosenbrock(x), x, device="python")
    xv = np.array([0.5, -1.0, 2.0])
    c = obj.fun(xv)
    g = obj.jac(xv)
    assert obj.nfev == 1  # jac reused the evaluation fun made
    g[:] = 0.0  # the caller's array is a copy
    np.testing.assert_allclose(obj.jac(xv), so.rosen_der(xv))
    assert obj.nfev == 1
    xv[0] = 0.0  # SciPy may reuse its x array in place: the cache keeps its own copy
    assert obj.fun(xv) == pytest.approx(so.rosen(xv)) and obj.nfev == 2
    assert obj.fun(np.array([0.5, -1.0, 2.0])) == c and obj.nfev == 3
    assert obj.nhev == 0 and obj._f_hvp is None  # the HVP function is compiled on first use
    obj.hessp(xv, np.ones(3))
    assert obj.nhev == 1
    assert "nfev=3" in repr(obj)


def test_newton_cg_converges_with_hessp():
    x = tg.vector("x")
    obj = scipy_objective(rosenbrock(x), x, device="python")
    x0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])
    res = so.minimize(obj.fun, x0, jac=obj.jac, hessp=obj.hessp, method="Newton-CG", options=dict(xtol=1e-10))
    assert res.success
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-7)
    assert obj.nfev <= res.nfev + res.njev  # never more evaluations than SciPy asked for
    ref = so.minimize(so.rosen, x0, jac=so.rosen_der, hessp=so.rosen_hess_prod, method="Newton-CG",
                      options=dict(xtol=1e-10))
    assert res.nit == ref.nit  # same derivatives, same path


def test_value_and_grad_with_jac_true_and_extra_args():
    x, target = tg.vector("x"), tg.vector("target")
    scale = tg.scalar("scale")
    cost = scale * ((x - target) ** 2).sum() + (x**4).sum() * 1e-3
    obj = scipy_objective(cost, x, device="python", args=[target, scale])
    t = np.array([1.0, -2.0, 0.5])
    res = so.minimize(obj.value_and_grad, np.zeros(3), jac=True, args=(t, 2.0), method="L-BFGS-B")
    assert res.success
    np.testing.assert_allclose(res.x, t, atol=0.05)
    res2 = so.minimize(obj.fun, np.zeros(3), jac=obj.jac, hessp=obj.hessp, args=(t, 2.0), method="trust-ncg")
    np.testing.assert_allclose(res2.x, res.x, atol=1e-4)
    # a change in args is a different point
    assert obj.fun(t, t, 2.0) != obj.fun(t, t + 1.0, 2.0)


def test_float32_vector_objective_returns_float64_to_scipy():
    x = tg.fvector("x")
    obj = scipy_objective(rosenbrock(x), x, device="python")
    xv = np.array([0.5, 0.25, 1.0])  # SciPy hands float64: cast to the variable's dtype, not refused
    g = obj.jac(xv)
    assert g.dtype == np.float64 and isinstance(obj.fun(xv), float)
    np.testing.assert_allclose(g, so.rosen_der(xv), rtol=1e-5)
    np.testing.assert_allclose(obj.hessp(xv, np.ones(3)), so.rosen_hess_prod(xv, np.ones(3)), rtol=1e-5)


def test_objective_rejects_bad_arguments():
    x, W = tg.vector("x"), tg.matrix("W")
    with pytest.raises(TypeError, match=r"x \(W\) must be a float vector"):
        scipy_objective((W**2).sum(), W)
    with pytest.raises(TypeError, match=r"cost \(mul\) must be a scalar"):
        scipy_objective(x * 2, x)
    with pytest.raises(ValueError, match="must be an input variable"):
        scipy_objective((x * 2).sum(), x * 2)
    with pytest.raises(TypeError, match="vector Variable"):
        scipy_objective(x.sum(), np.ones(3))
    with pytest.raises(TypeError, match=r"x \(iv\) must be a float vector"):
        iv = tg.ivector("iv")
        scipy_objective(iv.sum(), iv)
    obj = scipy_objective((x**2).sum(), x, device="python")
    with pytest.raises(TypeError, match=r"input 0 \(x\)"):
        obj.fun(np.ones((2, 2)))  # the compiled function names the variable


def test_rosenbrock_example_runs_under_20_seconds():
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rosenbrock_newton_cg.py"), "--n", "1000", "--device", "python"],
        capture_output=True, text=True, env=_env(), timeout=60,
    )
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Optimization terminated successfully" in out.stdout
    assert "iterations" in out.stdout and "final cost" in out.stdout and "time" in out.stdout
    final = float(out.stdout.split("final cost ")[1].split(",")[0])
    assert final < 1e-12
    assert elapsed < 20.0, elapsed


# --------------------------------------------------------------------------- pickling
def _model():
    """A graph over several op families with shared variables and updates."""
    X, y = tg.matrix("X"), tg.vector("y")
    W = tg.shared(np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]]), name="W")
    b = tg.shared(np.array([0.01, -0.02]), name="b")
    step = tg.shared(np.array(0, dtype="int64"), name="step")
    idx = tg.constant(np.array([0, 2, 1]))
    h = tg.tanh(tg.dot(X, W) + b)  # dot, elementwise, broadcasting
    logits = tg.concatenate([h, h[:, :1] ** 2], axis=1)  # basic indexing, shape
    p = tg.softmax(logits, axis=-1)  # nn
    picked = tg.take(p, idx, axis=0)[:, 0]  # advanced indexing
    loss = ((picked - y) ** 2).mean() + 1e-3 * (W**2).sum() + tg.logsumexp(logits).sum() * 1e-2  # reductions
    loss.name = "loss"
    gW, gb = tg.grad(loss, [W, b])
    v = tg.matrix("v")
    hv = tg.hessian_vector_product(loss, W, v)
    cum = tg.cumsum(tg.sigmoid(y), axis=0)
    updates = [(W, W - 0.1 * gW), (b, b - 0.1 * gb), (step, step + 1)]
    return [X, y, v], [loss, gW, hv, cum, tg.linalg.solve(tg.dot(X.T, X) + tg.eye(3), X.T.dot(y))], updates, (W, b, step)


def _values():
    rng = np.random.default_rng(3)
    return [rng.normal(size=(3, 3)), np.array([0.2, 0.5, 0.3]), rng.normal(size=(3, 2))]


def test_function_with_shared_variables_and_updates_pickles_and_runs():
    inputs, outputs, updates, (W, b, step) = _model()
    f = tg.function(inputs, outputs, updates=updates, device="python", name="train")
    W0 = W.get_value().copy()
    blob = pickle.dumps(f)
    g = pickle.loads(blob)
    assert g.name == "train" and len(g.tape) == len(f.tape) and g.device == "python"
    vals = _values()
    for _ in range(2):
        a, b_ = f(*vals), g(*vals)
        for u, w in zip(a, b_):
            np.testing.assert_array_equal(u, w)  # the same tape on the same engine: identical numbers
    assert int(step.get_value()) == 2
    # the copy updated its own shared variables: the originals moved only with f
    assert not np.array_equal(W.get_value(), W0)
    g2 = pickle.loads(blob)  # a fresh copy starts from the pickled state
    out0 = g2(*vals)
    f_fresh_W = tg.function(inputs, outputs, updates=updates, device="python")
    W.set_value(W0)
    b.set_value(np.array([0.01, -0.02]))
    np.testing.assert_array_equal(out0[0], f_fresh_W(*vals)[0])
    # and it pickles again after running
    g3 = pickle.loads(pickle.dumps(g2))
    assert np.isfinite(g3(*vals)[0])


def test_tape_pickles_and_the_reference_engine_runs_it():
    inputs, outputs, updates, _ = _model()
    f = tg.function(inputs, outputs, updates=updates, device="python")
    t = pickle.loads(pickle.dumps(f.tape))
    t.validate()
    assert str(t) == str(f.tape)
    vals = _values()
    shared = [sv.get_value() for sv in f.tape.shared]
    outs, ups = ReferenceEngine(t).run(vals, shared)
    outs2, ups2 = ReferenceEngine(f.tape).run(vals, shared)
    for u, w in zip(outs + ups, outs2 + ups2):
        np.testing.assert_array_equal(u, w)


def test_pickled_scan_function_runs():
    x0, F = tg.vector("x0"), tg.scalar("F")
    traj, _ = tg.scan(lambda u, F: u + 0.01 * (F - u), outputs_info=x0, non_sequences=F, n_steps=5)
    loss = (traj[-1] ** 2).sum()
    f = tg.function([x0, F], [loss, *tg.grad(loss, [x0, F])], device="python")
    g = pickle.loads(pickle.dumps(f))
    args = (np.array([1.0, 2.0]), 3.0)
    for u, w in zip(f(*args), g(*args)):
        np.testing.assert_array_equal(u, w)


def test_cpu_function_pickles_and_runs():
    x = tg.vector("x")
    w = tg.shared(np.array([1.0, 2.0]), name="w")
    f = tg.function([x], (tg.exp(x) * w).sum(), updates=[(w, w * 2.0)], device="cpu")
    g = pickle.loads(pickle.dumps(f))
    assert g.device == "cpu"
    xv = np.array([0.5, -0.5])
    assert g(xv) == pytest.approx(f(xv), rel=1e-12)
    assert g(xv) == pytest.approx((np.exp(xv) * [2.0, 4.0]).sum(), rel=1e-12)


# --------------------------------------------------------------------------- dask
def test_ensemble_dask_script_on_a_two_worker_cluster(tmp_path):
    pytest.importorskip("distributed")
    out_json = tmp_path / "ens.json"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "ensemble_dask.py"), "--n", "20", "--workers", "2",
         "--size", "8", "--steps", "20", "--device", "python", "--json", str(out_json)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "results agree: True" in out.stdout
    data = json.loads(out_json.read_text())
    assert data["n"] == 20 and data["workers"] == 2 and data["agree"] and data["max_rel_diff"] == 0.0
    assert elapsed < 30.0, elapsed


def test_map_function_chunks_in_order():
    # the chunking logic without a cluster: a stand-in client running tasks in process
    from tapegrad.ecosystem.dask import map_function

    class Inline:
        def nthreads(self):
            return {"a": 1, "b": 2}

        def scatter(self, objs, broadcast=False, hash=True):
            return list(objs)

        def map(self, fn, *its, pure=True):
            return [fn(*a) for a in zip(*its)]

        def gather(self, futs):
            return futs

    x = tg.vector("x")
    f = tg.function([x], x.sum(), device="python")
    args = [(np.full(2, i),) for i in range(17)]
    assert [float(r) for r in map_function(Inline(), f, args)] == [2.0 * i for i in range(17)]
    assert map_function(Inline(), f, []) == []
    assert len(map_function(Inline(), f, args[:3], chunks=50)) == 3
