"""Fuzzing: random graphs of every kind of op, on every engine, against finite differences.

Graphs come from :func:`tapegrad.testing.strategies.random_graphs` with
``structural=True``: elementwise ops (all of them, comparisons and piecewise
ones included), reductions (axis None/int/tuple, keepdims), shape ops,
indexing (slices with any step, new axes, integer arrays with repeats and
negative indices, inc/set_subtensor) and the dot family, over inputs whose
shapes broadcast (length-1 axes of unknown static length), with fan-out (a
result used several times), in float32 and float64.  Every graph also gets an
input it does not depend on (a disconnected ``wrt``).

Checked:

* ``device="python"`` (the NumPy reference) and ``device="cpu"`` (the Numba
  engine) agree on the value, on ``Lop(f, x, v)`` and on ``Rop(f, x, u)``
  (float64 to 1e-12, float32 to 1e-5, relative to ``max(1, largest
  magnitude)`` of each output; in float32 plus ten times the spread that
  injected float32 rounding shows, since an ill-conditioned step amplifies
  the engines' different rounding), and the reference engine agrees with
  evaluating the graph itself, before the tape rewrites;
* the Rop/Lop adjoint identity ``<v, J u> == <J^T v, u>`` (exact: no step);
* the disconnected input gets exact zeros and its tangent changes nothing;
* float32 graphs stay float32 (values and derivatives);
* gradients equal finite differences (``check_grads``: forward and reverse
  mode against central differences; ``verify_grad``: Aesara's check of
  ``grad``, float64) on graphs of smooth ops, on the reference engine (the
  engines agree on derivatives above; the CPU engine's tier "auto" would
  start compiling after the repeated calls of finite differences);
* ``device="cuda"`` under the numba CUDA simulator agrees with
  ``device="python"`` (one subprocess, since ``NUMBA_ENABLE_CUDASIM`` must be
  set before numba is imported, evaluating a batch of drawn graphs).

``test_every_op_kind`` forces each kind in turn to be the first op of the
graph, so every run covers every kind; the other tests draw freely.

Example counts follow the hypothesis profile (``tests/conftest.py``): ``ci``
and ``dev`` keep this file to about ten seconds (4 examples per op kind, 25
per random-graph test, 6 graphs on CUDA); the ``fuzz`` profile runs forty
times more (50 per kind, 1000, 250; about 3 minutes on two cores) for a local
hunt::

    HYPOTHESIS_PROFILE=fuzz python -m pytest -q tests/test_fuzz.py
    python -m pytest -q tests/test_fuzz.py --hypothesis-profile=fuzz --hypothesis-show-statistics

``python tests/test_fuzz.py --cuda-worker SEED N`` runs the CUDA batch by hand
(set ``NUMBA_ENABLE_CUDASIM=1`` without a GPU).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, settings, strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (the CUDA worker)
    sys.path.insert(0, str(ROOT))

from tapegrad.gradient import Rop  # noqa: E402
from tapegrad.graph import clone_replace, tensor  # noqa: E402
from tapegrad.ops.elemwise import ELEMWISE  # noqa: E402
from tapegrad.testing import (  # noqa: E402
    check_grads, compile_function, default_tolerance, verify_grad,
)
from tapegrad.testing.strategies import STRUCTURAL_OPS, random_graphs  # noqa: E402

ELEMWISE_OPS = tuple(s.name for s in ELEMWISE)
KINDS = tuple(sorted(ELEMWISE_OPS + STRUCTURAL_OPS))
# trigamma has a value but no derivative rules (its derivative, polygamma(2, x), is not implemented)
NO_DERIVATIVES = {"trigamma"}
DRAWN_OPS = tuple(n for n in ELEMWISE_OPS if n not in NO_DERIVATIVES)
# ops whose derivative is singular somewhere the graphs can reach: std of a constant slice (sqrt'(0)),
# hypot at (0, 0) (x / hypot(x, y)); there the derivatives are NaN/inf on every engine
SINGULAR = {"std", "hypot"}
DTYPES = ("float64", "float32")
# examples per op kind in test_every_op_kind: 4 under the ci/dev profiles (the first is the simplest draw,
# all zeros), 50 under fuzz
PER_KIND = max(4, settings.default.max_examples // 20)
# graphs the CUDA-simulator worker evaluates (about 0.6 s each there)
N_CUDA = max(6, settings.default.max_examples // 4)


def _graphs(kinks=True, **kw):
    """Graphs in float64 or float32 (``random_graphs(structural=True, ...)``).

    float64 graphs draw every elementwise op; float32 graphs only the smooth ones (after a forced
    ``first_op``, which applies to an input): engines may round float32 intermediates differently (the
    reference computes ``float32 * <float64 constant>`` in float64 before rounding to float32, the CPU
    engine in float32), and a kink or jump further on (abs, floor, comparisons, max ties) turns a
    1-ulp difference into an O(1) one.
    """
    def for_dtype(dt):
        if dt == "float32" or not kinks:
            return random_graphs(dtype=dt, structural=True, kinks=False, **kw)
        return random_graphs(dtype=dt, structural=True, kinks=True, ops=DRAWN_OPS, **kw)

    return st.sampled_from(DTYPES).flatmap(for_dtype)


def _vdot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def _abs_vdot(a, b):
    return float(np.sum(np.abs(np.asarray(a, np.float64) * np.asarray(b, np.float64))))


# --------------------------------------------------------------------------- one graph, all derivatives
class Derivs:
    """``case``'s output with its Rop and Lop w.r.t. every input plus a disconnected one, and arguments.

    ``variables`` / ``outputs`` compile to ``[f, J u, J^T v (one per input, the disconnected one last)]``;
    ``args`` are the inputs' values, a value for ``unused``, the tangents ``u`` and the cotangent ``v``.
    """

    def __init__(self, case, rng):
        from tapegrad.gradient import Lop

        inputs, out, values = case
        self.case = case
        self.dtype = out.dtype
        unused = tensor("unused", dtype=out.dtype, shape=(None, None))
        xs = list(inputs) + [unused]
        us = [tensor(f"u{i}", dtype=x.dtype, shape=(None,) * x.ndim) for i, x in enumerate(xs)]
        v = tensor("v", dtype=out.dtype, shape=(None,) * out.ndim)
        jvp = Rop(out, xs, us, disconnected_outputs="ignore")
        vjp = Lop(out, xs, v, disconnected_inputs="ignore")
        self.variables = xs + us + [v]
        self.outputs = [out, jvp] + list(vjp)
        self.x_vals = [np.asarray(a) for a in values] + [rng.standard_normal((2, 1)).astype(out.dtype)]
        self.u_vals = [rng.standard_normal(a.shape).astype(a.dtype) for a in self.x_vals]
        y = _graph_value(case)
        self.y = y
        self.v_val = rng.standard_normal(y.shape).astype(out.dtype)

    def args(self, u_vals=None):
        return self.x_vals + list(self.u_vals if u_vals is None else u_vals) + [self.v_val]


def _graph_value(case):
    """The output evaluated on the graph itself (each node's perform), before any tape rewrite."""
    from tapegrad.compile.reference import evaluate

    inputs, out, values = case
    with np.errstate(all="ignore"):
        return np.asarray(evaluate([out], dict(zip(inputs, values)))[0])


def _close(got, ref, rtol, noise, what):
    """``|got - ref| <= rtol * max(1, max|ref|) + 10 * noise`` elementwise; NaN and inf must match.

    ``max(1, .)``: the inputs are O(1), so a result that cancels to nearly 0 still carries the rounding
    of O(1) terms.  ``noise``: the float32 rounding this output is sensitive to (see
    :func:`_rounding_spread`), 0 in float64."""
    scale = max(1.0, float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale + 10 * noise, err_msg=what)


def _rounding_spread(outputs, variables, args, runs=2):
    """Per output, how far float32 rounding can move it: the largest change when the graph is evaluated node
    by node (each op's ``perform``) with every float result scaled by ``1 + 2^-22 z`` (a few float32 ulps,
    ``z`` standard normal) against the same evaluation without; ``runs`` draws.

    Engines round differently (summation order; the reference computes ``float32 * <float64 constant>`` in
    float64 before rounding), and an ill-conditioned step amplifies it: ``1 - sigmoid(16)`` in float32 has
    one significant bit, so a derivative through a saturated sigmoid may differ by 25% between engines.
    Injected rounding shows that spread; a wrong rule is off by far more."""
    from tapegrad.graph import Constant, SharedVariable, toposort

    rng = np.random.default_rng(1)

    def run(noisy):
        env = {id(v): np.asarray(a) for v, a in zip(variables, args)}

        def value(x):
            if id(x) in env:
                return env[id(x)]
            if isinstance(x, Constant):
                return np.asarray(x.data)
            if isinstance(x, SharedVariable):
                return np.asarray(x.get_value(borrow=True))
            raise KeyError(x)

        with np.errstate(all="ignore"):
            for node in toposort(outputs, blockers=variables):
                storage = [[None] for _ in node.outputs]
                node.op.perform(node, [value(x) for x in node.inputs], storage)
                for o, (val,) in zip(node.outputs, storage):
                    val = np.asarray(val)
                    if noisy and val.dtype.kind == "f":
                        val = (val * (1 + 2.0**-22 * rng.standard_normal(val.shape))).astype(val.dtype)
                    env[id(o)] = val
        return [np.asarray(value(o), np.float64) for o in outputs]

    base = run(False)
    spread = [0.0] * len(outputs)
    for _ in range(runs):
        for k, (p, b) in enumerate(zip(run(True), base)):
            both = np.isfinite(p) & np.isfinite(b)
            spread[k] = max(spread[k], float(np.max(np.abs(p - b)[both], initial=0.0)))
    return spread


def check_all(case, rng, devices=("python", "cpu")):
    """Every exact check on ``case``; returns the results per device."""
    d = Derivs(case, rng)
    what = repr(case)
    res, fns = {}, {}
    for dev in devices:
        fns[dev] = compile_function(d.variables, d.outputs, device=dev)
        res[dev] = [np.asarray(o) for o in fns[dev](*[np.array(a, copy=True) for a in d.args()])]
    ref = res[devices[0]]
    rtol = default_tolerance(d.dtype, "backend")  # float64 1e-12, float32 1e-5 (SPEC section 3)
    noise = [0.0] * len(ref)
    if d.dtype == "float32":
        noise = _rounding_spread(d.outputs, d.variables, d.args())
    for dev in devices[1:]:  # python == cpu (== cuda): value, J u, J^T v
        for k, (g, r) in enumerate(zip(res[dev], ref)):
            _close(g, r, rtol, noise[k], f"output {k} on {dev} vs {devices[0]}: {what}")
    _close(d.y, ref[0], rtol, noise[0], f"graph vs tape: {what}")  # the tape (CSE, folding, ...) == the graph
    for dev, got in res.items():
        # float32 stays float32; every result has its variable's shape
        assert [g.dtype.name for g in got] == [d.dtype] * len(got), (dev, [g.dtype for g in got], what)
        assert got[1].shape == d.y.shape, (dev, got[1].shape, d.y.shape, what)
        assert [g.shape for g in got[2:]] == [x.shape for x in d.x_vals], (dev, what)
        # the disconnected input: exact zeros
        np.testing.assert_array_equal(got[-1], np.zeros((2, 1), d.dtype), err_msg=f"{dev}: unused: {what}")
    got = res[devices[-1]]
    ju, jtv = got[1], got[2:]
    lhs = _vdot(d.v_val, ju)
    rhs = sum(_vdot(g, u) for g, u in zip(jtv, d.u_vals))
    mag = _abs_vdot(d.v_val, ju) + sum(_abs_vdot(g, u) for g, u in zip(jtv, d.u_vals))
    if np.isfinite(mag):
        # relative to the terms; floor: rounding of O(|u| |v|) terms that cancel (softmax of a constant);
        # float32: plus the rounding noise of J u and J^T v carried through the inner products
        floor = 100 * np.finfo(d.dtype).eps * np.sqrt(_vdot(d.v_val, d.v_val) * sum(_vdot(u, u) for u in d.u_vals))
        carried = noise[1] * np.sum(np.abs(d.v_val)) + sum(n * np.sum(np.abs(u)) for n, u in zip(noise[2:], d.u_vals))
        tol = default_tolerance(d.dtype, "adjoint") * mag + floor + 10 * carried + 1e-300
        assert abs(lhs - rhs) <= tol, f"{devices[-1]}: <v, J u> = {lhs!r} but <J^T v, u> = {rhs!r}: {what}"
    else:  # a derivative that is not finite: only where the math says so
        assert SINGULAR & case.kinds, f"{devices[-1]}: non-finite derivative ({lhs!r}, {rhs!r}) in {what}"
    return d, res


# --------------------------------------------------------------------------- python == cpu, adjoint
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=PER_KIND)
@given(data=st.data())
def test_every_op_kind(kind, data):
    case = data.draw(_graphs(first_op=kind, n_ops=(1, 4), max_ndim=3), label="case")
    assert kind in case.kinds
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    if kind in NO_DERIVATIVES:
        inputs, out, values = case
        py, cpu = (compile_function(inputs, out, device=dev)(*values) for dev in ("python", "cpu"))
        noise = _rounding_spread([out], inputs, values)[0] if out.dtype == "float32" else 0.0
        _close(cpu, py, default_tolerance(out.dtype, "backend"), noise, f"cpu vs python: {case!r}")
        _close(_graph_value(case), py, default_tolerance(out.dtype, "backend"), noise, f"graph vs tape: {case!r}")
        with pytest.raises(NotImplementedError, match=f"R_op of {kind}"):
            Rop(out, inputs, [x.type() for x in inputs], disconnected_outputs="ignore")
        return
    d, res = check_all(case, rng)
    # the tangent of the disconnected input changes nothing (cpu, a second call of the same function)
    f = compile_function(d.variables, d.outputs, device="cpu")
    u2 = list(d.u_vals)
    u2[-1] = u2[-1] + 1.0
    again = f(*d.args(u2))
    for k, (a, b) in enumerate(zip(again, res["cpu"])):
        np.testing.assert_array_equal(a, b, err_msg=f"output {k} after changing the unused tangent: {case!r}")


@given(case=_graphs(n_ops=(2, 8), n_inputs=(1, 4), max_ndim=3), data=st.data())
def test_random_graphs_python_cpu_adjoint(case, data):
    for k in sorted(case.kinds):
        event(k)
    check_all(case, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")))


# --------------------------------------------------------------------------- finite differences
@given(case=_graphs(kinks=False, n_ops=(1, 6), max_ndim=3), data=st.data())
def test_grad_matches_finite_differences(case, data):
    inputs, out, values = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    def rebuild(*xs):
        return clone_replace([out], dict(zip(inputs, xs)))[0]

    # Rop (fwd) and <Lop v, u> (rev) against central differences in a random direction.  An absolute floor
    # matters where the derivative is ~0 and the difference quotient is all truncation, h^2 f'(3) (prod of
    # eighteen 2.0s and two 0.0s: Rop 0.0, quotient 3e-7; h = 1e-2 in float32) or noise (Lop 1e-225 against
    # 0.0): verify_grad's absolute tolerance (float64 1e-4, float32 1e-2) times max(1, |f|)
    y = _graph_value(case)
    floor = default_tolerance(out.dtype, "grad") * max(1.0, float(np.max(np.abs(y), initial=0.0)))
    check_grads(rebuild, values, order=1, modes=("fwd", "rev"), rng=rng, atol=floor, mode="python")
    if out.dtype == "float64":  # Aesara's tolerances are for float64 steps
        verify_grad(rebuild, list(values), n_tests=1, rng=rng, mode="python")  # grad of sum(r * f)


def test_check_all_fails_on_a_wrong_rule():
    # the checks above can fail: a graph whose R_op disagrees with its L_op is caught by the adjoint test
    import tapegrad as tg
    from tapegrad.testing.strategies import GraphCase

    class BadSin(tg.Op):
        __props__ = ()

        def make_node(self, x):
            return tg.Apply(self, [x], [x.type()])

        def perform(self, node, inputs, out):
            out[0][0] = np.sin(inputs[0])

        def L_op(self, inputs, outputs, grads):
            return [grads[0] * tg.cos(inputs[0])]

        def R_op(self, inputs, eval_points):
            return [eval_points[0] * tg.cos(inputs[0]) * 2.0]  # wrong by a factor 2

    x = tg.vector("x")
    case = GraphCase([x], BadSin()(x), [np.array([0.1, 0.2, 0.3])], "badsin(x)", {"badsin"})
    with pytest.raises(AssertionError, match=r"<v, J u> = .* but <J\^T v, u>"):
        check_all(case, np.random.default_rng(0), devices=("python",))


# --------------------------------------------------------------------------- cuda (simulator)
def _cuda_available_to_worker():
    import importlib.util

    try:
        return importlib.util.find_spec("numba_cuda") is not None or importlib.util.find_spec("numba.cuda") is not None
    except Exception:  # noqa: BLE001
        return False


def cuda_worker(seed, n, shrink=False):
    """Draw ``n`` graphs (hypothesis, seeded) and check each on python and cuda; print a JSON report."""
    from hypothesis import HealthCheck, Phase
    from hypothesis import seed as hseed

    count = {"n": 0, "kinds": set()}
    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if shrink else ())

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=phases, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=_graphs(n_ops=(1, 5), max_ndim=2), data=st.data())
    def run(case, data):
        count["n"] += 1
        count["kinds"] |= case.kinds
        check_all(case, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), devices=("python", "cuda"))

    report = {"seed": seed, "ok": True, "msg": ""}
    try:
        run()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        report["ok"] = False
        report["msg"] = f"{type(e).__name__}: {e}"[-6000:]
    report["examples"] = count["n"]
    report["kinds"] = sorted(count["kinds"])
    print("@@REPORT@@" + json.dumps(report), flush=True)


@pytest.mark.skipif(not _cuda_available_to_worker(), reason="numba-cuda is not installed")
def test_cuda_simulator_matches_python():
    ci = bool(settings.default.derandomize)
    seed = 20240607 if ci else random.getrandbits(32)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cuda-worker", str(seed), str(N_CUDA)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    marker = [ln for ln in p.stdout.splitlines() if ln.startswith("@@REPORT@@")]
    assert marker, f"worker failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    report = json.loads(marker[-1][len("@@REPORT@@"):])
    rerun = f"rerun: NUMBA_ENABLE_CUDASIM=1 python tests/test_fuzz.py --cuda-worker {seed} {N_CUDA} --shrink"
    assert report["ok"], f"{report['msg']}\n{p.stdout[-3000:]}\n{rerun}"
    assert report["examples"] >= N_CUDA, report  # every drawn graph ran on both engines
    assert len(report["kinds"]) >= min(N_CUDA, 30) // 2, report  # and they were not all alike


if __name__ == "__main__":
    if "--cuda-worker" in sys.argv:
        i = sys.argv.index("--cuda-worker")
        cuda_worker(int(sys.argv[i + 1]), int(sys.argv[i + 2]), shrink="--shrink" in sys.argv)
