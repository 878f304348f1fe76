"""The fused tier: tapegrad.tape.fuse (groups) and tapegrad.compile.fused (generated loops, executor).

Every result is checked against the NumPy reference engine: float64 to 1e-12 relative, float32 to 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.ops as O
from tapegrad.compile.reference import ReferenceEngine
from tapegrad.graph import TensorType
from tapegrad.tape.build import build_tape

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tapegrad.testing.strategies import random_graphs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = {"float64": dict(rtol=1e-12, atol=1e-300), "float32": dict(rtol=1e-5, atol=1e-30)}


def _tol(dtype, ref, scale_rtol=1e-5):
    """``TOL[dtype]``; for float32 an absolute floor of ``scale_rtol * max(1, |result|)``.

    A float32 result that cancels to ~0 (e.g. -0.9 + 1.8 * sigmoid(0)) keeps one
    rounding of its operands, which a fused loop may round differently: its
    relative error is then 1, while its error against the result's scale is ~1e-7.
    float64 gets a floor of ``1e-15 * max(1, |result|)`` for the same reason: a
    function near a root (gammaln(0.99999) = 5.8e-6) amplifies one ulp of its
    operand, so two libms differ there by 1.5e-12 relative but 8.5e-18 absolute.
    """
    tol = dict(TOL[dtype])
    finite = np.abs(np.asarray(ref, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    scale = max(1.0, float(finite.max())) if finite.size else 1.0  # operands are O(1) in these graphs
    tol["atol"] = max(tol["atol"], (scale_rtol if dtype == "float32" else 1e-15) * scale)
    return tol


@pytest.fixture(scope="module", autouse=True)
def fused_dir(tmp_path_factory):
    """A fresh cache folder for generated modules (the cold path is what these tests exercise)."""
    d = str(tmp_path_factory.mktemp("fused_cache"))
    old = os.environ.get("TAPEGRAD_FUSED_DIR")
    os.environ["TAPEGRAD_FUSED_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("TAPEGRAD_FUSED_DIR", None)
    else:
        os.environ["TAPEGRAD_FUSED_DIR"] = old


def _engine(tape, **kw):
    from tapegrad.compile.fused import FusedCPUEngine

    kw.setdefault("tier", "fused")
    return FusedCPUEngine(tape, **kw)


def _check(tape, inputs, shared=(), dtype="float64", min_group=1, truth=None):
    """The fused tier against the python engine.  ``truth``: the same outputs computed in float64 (for a float32
    tape): where the two float32 results differ by more than the tolerance, the fused one must then be at least
    as close to it as the python engine's (an ill-conditioned expression, ``1 - sigmoid(6.5)`` in a gradient,
    amplifies the rounding of either)."""
    ref_out, ref_up = ReferenceEngine(tape).run(inputs, shared)
    eng = _engine(tape, min_group=min_group)
    for _ in range(2):  # second call: pooled buffers
        out, up = eng.run(inputs, shared)
        assert len(out) == len(ref_out)
        for j, (a, b) in enumerate(zip(out + up, ref_out + ref_up)):
            assert a.shape == b.shape and a.dtype == b.dtype
            try:
                np.testing.assert_allclose(a, b, equal_nan=True, **_tol(dtype, b))
            except AssertionError:
                if truth is None:
                    raise
                t = np.asarray(truth[j], np.float64)
                err_a = np.abs(np.asarray(a, np.float64) - t)
                err_b = np.abs(np.asarray(b, np.float64) - t)
                ok = (err_a <= 2 * err_b + _tol(dtype, b)["atol"]) | (np.isnan(a) & np.isnan(b))
                assert np.all(ok), (a, b, t)
    return eng


def _rosenbrock(dtype="float64"):
    x = TensorType(dtype, (None,))("x")
    v = TensorType(dtype, (None,))("v")
    cost = O.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    return x, v, cost


# --------------------------------------------------------------------------- random graphs
def _graph_outs(case, with_grad):
    inputs, out, values = case
    outs = [out]
    if with_grad and out.dtype in ("float64", "float32"):
        outs.append(tg.grad(O.sum(out), inputs, disconnected_inputs="ignore"))
    flat = []
    for o in outs:
        flat.extend(o if isinstance(o, list) else [o])
    return flat


def _graph_tape(case, with_grad):
    return build_tape(case[0], _graph_outs(case, with_grad)), case[2]


def _float64_truth(case, with_grad):
    """The outputs of a float32 case recomputed with float64 inputs (python engine)."""
    from tapegrad.graph import clone_replace

    inputs, _, values = case
    wide = [TensorType("float64", x.type.shape)(x.name) for x in inputs]
    outs = clone_replace(_graph_outs(case, with_grad), dict(zip(inputs, wide)))
    return tg.function(wide, outs, device="python", on_unused_input="ignore")(
        *[np.asarray(v, np.float64) for v in values])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=12)
@given(data=st.data())
def test_random_elementwise_graphs(dtype, data):
    case = data.draw(random_graphs(dtype=dtype, n_ops=(1, 8), reductions=False, kinks=True, max_ndim=3))
    with_grad = data.draw(st.booleans())
    tape, values = _graph_tape(case, with_grad)
    _check(tape, values, dtype=dtype, truth=_float64_truth(case, with_grad) if dtype == "float32" else None)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=8)
@given(data=st.data())
def test_random_graphs_with_reductions_and_size_zero(dtype, data):
    case = data.draw(random_graphs(dtype=dtype, n_ops=(2, 8), reductions=True, allow_size_zero=True))
    tape, values = _graph_tape(case, with_grad=True)
    _check(tape, values, dtype=dtype)


# --------------------------------------------------------------------------- broadcasting by hand
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shapes", [
    [(3, 4), (3, 1), (1, 4), (4,), ()],
    [(2, 3, 4), (2, 1, 4), (3, 1), (1,), ()],
    [(5, 1), (1, 6), (6,), (1, 1), ()],  # output (5, 6) only by broadcasting: no contiguous input
    [(0, 4), (1, 4), (4,), (), ()],
    [(3, 0), (3, 1), (1,), (), ()],
    [(1, 1), (1,), (), (1, 1), ()],
])
def test_broadcast_patterns(dtype, shapes):
    rng = np.random.default_rng(0)
    vs = [TensorType(dtype, (None,) * len(s))(f"x{i}") for i, s in enumerate(shapes)]
    a, b, c, d, e = vs
    y = O.exp(a * b - c) / (1 + d * d) + O.tanh(e) * a
    z = O.switch(y > 0.5, O.sqrt(O.abs(y)), -y) + O.maximum(a, c)
    w = O.cast(z, "float32" if dtype == "float64" else "float64") * 2
    tape = build_tape(vs, [y, z, w])
    vals = [rng.uniform(-1, 1, s).astype(dtype) for s in shapes]
    eng = _check(tape, vals, dtype=dtype)
    groups = eng.groups()
    assert groups, "expected at least one fused group"
    for g in groups:
        assert all(tuple(eng._plans[next(iter(eng._plans))].shapes[m.out]) == g.shape for m in g.group.members)


def test_int_and_bool_members():
    i = TensorType("int64", (None,))("i")
    x = TensorType("float64", (None,))("x")
    y = O.switch((i > 2) & (x < 0.5), i * 3 - 1, (i % 3) + O.maximum(i, 1))
    z = O.cast(y, "float64") * x + (x >= 0)
    tape = build_tape([i, x], [y, z])
    _check(tape, [np.arange(-5, 7, dtype=np.int64), np.linspace(-1, 1, 12)])


def test_nonfinite_and_azmul():
    x = TensorType("float64", (None,))("x")
    y = O.azmul(x * 0, O.log(x)) + O.log(x) ** 2 + x ** 0 + O.reciprocal(x)
    tape = build_tape([x], [y, tg.grad(O.sum(O.sqrt(x) * O.log(x)), x)])
    _check(tape, [np.array([0.0, -0.0, -1.0, np.inf, np.nan, 2.0, 1e-300])])


# --------------------------------------------------------------------------- rosenbrock
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_rosenbrock_value_grad_hvp(dtype, n):
    x, v, cost = _rosenbrock(dtype)
    tape = build_tape([x, v], [cost, tg.grad(cost, x), tg.hessian_vector_product(cost, x, v)])
    rng = np.random.default_rng(n)
    vals = [rng.uniform(-1, 1, n).astype(dtype), rng.uniform(-1, 1, n).astype(dtype)]
    eng = _check(tape, vals, dtype=dtype, min_group=2)
    if n > 1:
        assert sum(len(g.group.members) for g in eng.groups()) >= 40


def test_structure_key_ignores_sizes_and_reuses_code():
    from tapegrad.tape.fuse import find_groups

    x, v, cost = _rosenbrock()
    tape = build_tape([x, v], [cost, tg.grad(cost, x)])
    eng = _engine(tape)
    eng.run([np.ones(10), np.ones(10)])
    k10 = [g.group.key() for g in eng.groups()]
    names10 = [g.kernel.name for g in eng.groups()]
    eng.run([np.ones(1000), np.ones(1000)])
    k1000 = [g.group.key() for g in eng.groups()]
    assert k10 == k1000
    assert [g.kernel.name for g in eng.groups()] == names10
    kernels = {id(g.kernel) for p in eng._plans.values() for g in p.fused}
    assert len(kernels) == len(names10)  # the same structure compiled once
    # find_groups on plain shapes agrees with the engine
    shapes = next(iter(eng._plans.values())).shapes
    assert [g.key() for g in find_groups(tape, shapes)] == k10
    for g in eng.groups():  # the module is on disk (in this test's folder, or in the folder of the earlier test
        # of this process that compiled the same structure first: kernels are process-wide)
        assert os.path.exists(g.kernel.path) and os.path.basename(g.kernel.path) == g.kernel.name + ".py"


def test_auto_tier_swaps_in():
    x, v, cost = _rosenbrock()
    tape = build_tape([x, v], [cost, tg.grad(cost, x)])
    eng = _engine(tape, tier="auto")
    xs = [np.linspace(-1, 1, 50), np.ones(50)]
    ref = ReferenceEngine(tape).run(xs, [])[0]
    first = eng.run(xs)[0]
    assert eng.wait_ready(timeout=120)
    second = eng.run(xs)[0]
    assert eng.last_tier == "fused"
    for a, b, r in zip(first, second, ref):
        np.testing.assert_allclose(a, r, rtol=1e-12)
        np.testing.assert_allclose(b, r, rtol=1e-12)


def test_interp_tier_pins_tier0():
    x, v, cost = _rosenbrock()
    tape = build_tape([x, v], [cost])
    eng = _engine(tape, tier="interp")
    eng.run([np.ones(5), np.ones(5)])
    assert eng.last_tier == "interp" and not eng._plans


def test_outputs_are_fresh_and_inputs_untouched():
    x = TensorType("float64", (None,))("x")
    y = O.exp(x) * 2 + 1
    tape = build_tape([x], [y, y])
    eng = _engine(tape)
    xv = np.arange(4.0)
    keep = xv.copy()
    a1, b1 = eng.run([xv])[0]
    a2, _ = eng.run([xv])[0]
    assert a1 is not b1 and not np.shares_memory(a1, b1) and not np.shares_memory(a1, a2)
    np.testing.assert_array_equal(xv, keep)


@pytest.mark.slow
def test_disk_cache_across_processes(tmp_path):
    code = (
        "import numpy as np, tapegrad as tg, tapegrad.ops as O\n"
        "from tapegrad.graph import TensorType\n"
        "from tapegrad.tape.build import build_tape\n"
        "from tapegrad.compile.fused import FusedCPUEngine\n"
        "x = TensorType('float64', (None,))('x')\n"
        "c = O.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)\n"
        "e = FusedCPUEngine(build_tape([x], [c, tg.grad(c, x)]), tier='fused')\n"
        "e.run([np.ones(9)])\n"
        "print(all(g.kernel.from_cache for g in e.groups()), len(e.groups()))\n"
    )
    env = dict(os.environ, TAPEGRAD_FUSED_DIR=str(tmp_path), PYTHONPATH=ROOT)
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            .stdout.split() for _ in range(2)]
    assert runs[0][0] == "False" and runs[1][0] == "True" and int(runs[1][1]) >= 2


# --------------------------------------------------------------------------- the fused tier inside CPUEngine
def _cpu_engines(tape):
    """CPUEngine at each tier; "auto" is driven until its fused plan is swapped in."""
    from tapegrad.compile.cpu import CPUEngine

    return {tier: CPUEngine(tape, tier=tier) for tier in ("fused", "interp", None)}


def _wait_auto(eng):
    for plan in eng._plans.values():
        for st in plan.pending or ():
            if st[0] == "group":
                st[1].kernel._done.wait(120)


def _check_cpu(tape, inputs, shared=(), dtype="float64"):
    from tapegrad.compile import cpu

    ref_out, ref_up = ReferenceEngine(tape).run(inputs, shared)
    engines = _cpu_engines(tape)
    for tier, eng in engines.items():
        for i in range(cpu.FUSE_AFTER_USES + 3):
            if i == cpu.FUSE_AFTER_USES + 1:
                _wait_auto(eng)
            out, up = eng.run(inputs, shared)
            assert len(out) == len(ref_out)
            for a, b in zip(out + up, ref_out + ref_up):
                assert a.shape == b.shape and a.dtype == b.dtype, tier
                # random float32 graphs cancel: a 1-ulp libm difference (pow, exp2) amplified by
                # arccos' slope reached 2e-5 of the result's scale in tier 0 and in fused loops alike
                np.testing.assert_allclose(
                    a, b, equal_nan=True, err_msg=f"tier={tier}", **_tol(dtype, b, scale_rtol=1e-4)
                )
    if engines["fused"]._last_plan is not None and engines["fused"]._last_plan.fused:
        assert engines[None]._last_plan.fused  # auto swapped its fused plan in
    assert not engines["interp"]._last_plan.fused
    return engines


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_cpu_tiers_random_elementwise_graphs(dtype, data):
    case = data.draw(random_graphs(dtype=dtype, n_ops=(1, 8), reductions=False, kinks=True, max_ndim=3))
    tape, values = _graph_tape(case, with_grad=data.draw(st.booleans()))
    _check_cpu(tape, values, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_cpu_tiers_random_graphs_with_reductions_and_size_zero(dtype, data):
    case = data.draw(random_graphs(dtype=dtype, n_ops=(2, 8), reductions=True, allow_size_zero=True))
    tape, values = _graph_tape(case, with_grad=True)
    _check_cpu(tape, values, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_cpu_tiers_rosenbrock_value_grad_hvp(dtype, n):
    x, v, cost = _rosenbrock(dtype)
    tape = build_tape([x, v], [cost, tg.grad(cost, x), tg.hessian_vector_product(cost, x, v)])
    rng = np.random.default_rng(n)
    vals = [rng.uniform(-1, 1, n).astype(dtype), rng.uniform(-1, 1, n).astype(dtype)]
    engines = _check_cpu(tape, vals, dtype=dtype)
    plan = engines["fused"]._last_plan
    assert sum(p1 - p0 for p0, p1, _ in plan.fused) >= 40
    assert list(plan.kinds.values()).count("fused") >= 40


@pytest.mark.parametrize("tier", ["fused", "interp", None])
def test_cpu_tiers_through_function(tier):
    x, v, cost = _rosenbrock()
    f = tg.function([x, v], [cost, tg.grad(cost, x), tg.hessian_vector_product(cost, x, v)], device="cpu",
                    tier=tier)
    ref = tg.function([x, v], [cost, tg.grad(cost, x), tg.hessian_vector_product(cost, x, v)], device="python")
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, 33), rng.uniform(-1, 1, 33)]
    want = ref(*xs)
    for _ in range(5):
        for a, b in zip(f(*xs), want):
            np.testing.assert_allclose(a, b, **TOL["float64"])
    if tier == "fused":
        assert f._engine._last_plan.fused
    if tier == "interp":
        assert not f._engine._last_plan.fused


def test_cpu_fused_strided_and_broadcast_view_inputs():
    """Group inputs that are non-contiguous views (transpose, step slices) and broadcasts, with buffer reuse
    all around (a group's outputs must never share a block with the inputs its loop still reads)."""
    a = TensorType("float64", (None, None))("a")
    b = TensorType("float64", (None,))("b")
    at = a.T
    y = O.exp(at * 2 - b) + O.sqr(at) * b
    z = O.tanh(y) * y + 1
    w = O.sum(z * z - y, axis=0)
    u = (w * 3 + 1) ** 2 - w
    c = O.sum(a[::2] * 2 + 1) + O.sum(u)
    tape = build_tape([a, b], [z, u, c, tg.grad(c, [a, b])[0]])
    rng = np.random.default_rng(0)
    _check_cpu(tape, [rng.uniform(-1, 1, (6, 5)), rng.uniform(-1, 1, 6)])


def test_cpu_fused_int_bool_members():
    i = TensorType("int64", (None,))("i")
    x = TensorType("float64", (None,))("x")
    y = O.switch((i > 2) & (x < 0.5), i * 3 - 1, (i % 3) + O.maximum(i, 1))
    z = O.cast(y, "float64") * x + (x >= 0)
    tape = build_tape([i, x], [y, z])
    _check_cpu(tape, [np.arange(-5, 7, dtype=np.int64), np.linspace(-1, 1, 12)])


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_rolls_of_existing_arrays_join_the_fused_loop(n):
    """``roll`` of a 1-d array by a constant is a shifted read inside the loop (pattern ROLL), so a Lorenz-96
    step is one group; values and gradients equal the reference engine, shifts beyond the length included."""
    from tapegrad.tape.fuse import ROLL, find_groups

    uu, FF = tg.dvector("uu"), tg.dscalar("FF")
    x = uu
    for _ in range(3):
        x = x + 0.01 * ((O.roll(x, -1) - O.roll(x, 2)) * O.roll(x, 1 + 2 * n) - x + FF)
    cost = O.sum(x ** 2)
    tape = build_tape([uu, FF], [cost, *tg.grad(cost, [uu, FF])])
    vals = [np.linspace(-1.0, 2.0, n), np.asarray(8.0)]
    eng = _engine(tape)
    got, _ = eng.run(vals)
    want, _ = ReferenceEngine(tape).run(vals, [])
    cpu = tg.function([uu, FF], [cost, *tg.grad(cost, [uu, FF])], device="cpu", tier="fused")
    for a, b, c in zip(got, want, cpu(*vals)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, b, rtol=1e-12, atol=1e-12)
    shapes = next(iter(eng._plans.values())).shapes
    groups = find_groups(tape, shapes)
    assert any(ROLL in grp.patterns for grp in groups)
    assert any(sum(m.kind == "roll" for m in grp.members) == 3 for grp in groups)  # a forward step: one loop
