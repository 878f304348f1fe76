"""The sweep route (tapegrad/tape/sweep.py) against the symbolic route, the adjoint identity and differences.

Every spec row (tests/ops/specs.py) is differentiated four ways -- grad of ``<v, f>``, Lop, Rop and the
Hessian-vector product -- compiled once per route on the python engine, and the two routes must agree (float64
to 1e-12 relative, float32 to 1e-5) in value, dtype and shape.  A few functions run on ``device="cpu"``
(interpreter tier) as well.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad.compile.reference import ReferenceEngine
from tapegrad.tape import sweep
from tapegrad.tape.build import build_tape
from tapegrad.tape.sweep import SweepUnsupported
from tests.ops.checks import row_inputs, row_wrt
from tests.ops.specs import ROWS

TOL = {"float64": 1e-12, "float32": 1e-5}
FALLBACK_FAMILIES = {"scan"}  # scan has no sweep rule: the symbolic route computes its derivatives
FALLBACK_CODES = {"MAP_ROWS"}  # nor the mapped reverse sweep of jacobian(vectorize=False)


def _flat(out):
    return [np.asarray(a) for a in (out if isinstance(out, list) else [out])]


def assert_same(a, b, dtype):
    """Both routes: same dtype and shape, values to the route tolerance (relative to max(|a|, 1))."""
    a, b = _flat(a), _flat(b)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.dtype == q.dtype and p.shape == q.shape, (p.dtype, p.shape, q.dtype, q.shape)
        if p.size:
            err = np.max(np.abs(p.astype(np.float64) - q) / np.maximum(np.abs(p.astype(np.float64)), 1.0))
            assert err <= TOL[dtype], f"routes differ by {err:g} (tolerance {TOL[dtype]:g})"


def both(inputs, outputs, *values, device="python", **kw):
    """Values by the symbolic and the auto routes, and the auto function."""
    opts = dict(device=device, on_unused_input="ignore", **kw)
    if device == "cpu":
        opts["tier"] = "interp"
    fs = tg.function(inputs, outputs, route="symbolic", **opts)
    fw = tg.function(inputs, outputs, route="auto", **opts)
    assert fs.route == "symbolic"
    return fs(*values), fw(*values), fw


def _requested(outputs):
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [i for i, o in enumerate(outs) if (o.tag.get("sweep") or {}).get("request") is not None]


def _row_derivatives(row, dtype):
    xs, vals = row_inputs(row, dtype)
    y = row.build(*xs)
    if isinstance(y, (tuple, list)):  # several outputs (slogdet, eigh): differentiate their float parts together
        y = tg.concatenate([o.flatten() for o in y if o.dtype.startswith("float")])
    wrt_i = row_wrt(row)
    wrt = [xs[k] for k in wrt_i]
    y_val = tg.function(xs, y, device="python", on_unused_input="ignore")(*vals)
    rng = np.random.default_rng(1)
    fdt = y.dtype if y.dtype.startswith("float") else "float64"
    v = tg.tensor("v", dtype=fdt, shape=(None,) * y.ndim)
    v_val = rng.normal(size=np.shape(y_val)).astype(fdt)
    us = [tg.tensor(f"u{k}", dtype=w.dtype, shape=(None,) * w.ndim) for k, w in enumerate(wrt)]
    u_vals = [rng.normal(size=np.shape(vals[k])).astype(vals[k].dtype) for k in wrt_i]
    cost = (y * v).sum()
    out = {
        "grad": ([v], [v_val], tg.grad(cost, wrt, disconnected_inputs="ignore")),
        "Lop": ([v], [v_val], tg.Lop(y, wrt, v, disconnected_inputs="ignore")),
        "Rop": (us, u_vals, tg.Rop(y, wrt, us, disconnected_outputs="ignore")),
    }
    try:
        out["hvp"] = ([v] + us, [v_val] + u_vals, tg.hessian_vector_product(cost, wrt, us, disconnected_inputs="ignore"))
    except (NotImplementedError, TypeError):  # no second derivative on the symbolic route either
        pass
    return xs, vals, out


_DIFF_ROWS = [r for r in ROWS if r.differentiable and any(d.startswith("float") for d in r.dtypes)]


@pytest.mark.parametrize("row", _DIFF_ROWS, ids=[r.id for r in _DIFF_ROWS])
def test_spec_row_routes_agree(row):
    """grad, Lop, Rop and HVP of each op: the sweep route equals the symbolic route; it is taken for every
    connected derivative except in the families without sweep rules (scan), which fall back with a reason."""
    swept = 0
    for dtype in [d for d in row.dtypes if d.startswith("float")]:
        xs, vals, derivs = _row_derivatives(row, dtype)
        for kind, (extra, extra_vals, outputs) in derivs.items():
            sym, swp, f = both(xs + extra, outputs, *vals, *extra_vals)
            assert_same(sym, swp, dtype)
            requested = _requested(outputs)
            if row.family in FALLBACK_FAMILIES or row.code in FALLBACK_CODES:
                assert all(i in f.route_notes for i in requested), (kind, f.route_notes)
                assert all(any(k in f.route_notes[i] for k in ("SCAN", "MAP_ROWS", "grad of a grad"))
                           for i in requested)
            else:
                assert not set(requested) & set(f.route_notes), (kind, f.route_notes)
                swept += len(requested)
                if requested:
                    assert f.route in ("sweep", "mixed")
    if row.family not in FALLBACK_FAMILIES and row.code not in FALLBACK_CODES | _CONSTANT_VALUED and row_wrt(row):
        assert swept > 0, "no derivative of this row went by the sweep route"


_CONSTANT_VALUED = {"ARANGE", "EYE", "ONES_LIKE", "ZEROS_LIKE", "SHAPE", "SHAPE_I"}


# --------------------------------------------------------------------------- broadcasting, several ranks
@settings(max_examples=25)
@given(
    rank=st.integers(0, 3),
    bmask=st.integers(0, 7),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(["float64", "float32"]),
)
def test_broadcasting_composites_routes_agree(rank, bmask, seed, dtype):
    """A composite of elementwise ops, reductions and a dot with a broadcasting second input of lower rank."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 4, size=rank))
    bshape = tuple(1 if (bmask >> k) & 1 else n for k, n in enumerate(shape))[1:] if rank else ()
    x = tg.tensor("x", dtype=dtype, shape=(None,) * rank)
    b = tg.tensor("b", dtype=dtype, shape=tuple(1 if n == 1 else None for n in bshape))
    z = tg.tanh(x * b) + tg.sigmoid(x - b) * b ** 2 + tg.exp(-x * x) / (1.5 + tg.sin(b))
    y = z.sum(axis=-1) if rank else z
    cost = (y * y).sum() + tg.log1p(z ** 2).mean()
    xv = rng.uniform(-1, 1, size=shape).astype(dtype)
    bv = rng.uniform(-1, 1, size=bshape).astype(dtype)
    u = [tg.tensor("ux", dtype=dtype, shape=(None,) * rank), tg.tensor("ub", dtype=dtype, shape=b.type.shape)]
    uv = [rng.normal(size=shape).astype(dtype), rng.normal(size=bshape).astype(dtype)]
    w = tg.tensor("w", dtype=dtype, shape=(None,) * y.ndim)
    wv = rng.normal(size=shape[:-1]).astype(dtype)
    cases = [
        ([], [], tg.grad(cost, [x, b])),
        ([w], [wv], tg.Lop(y, [x, b], w)),
        (u, uv, tg.Rop(y, [x, b], u)),
        (u, uv, tg.hessian_vector_product(cost, [x, b], u)),
    ]
    for extra, extra_vals, outputs in cases:
        sym, swp, f = both([x, b] + extra, outputs, xv, bv, *extra_vals)
        assert f.route == "sweep"
        assert_same(sym, swp, dtype)


# --------------------------------------------------------------------------- tape-level transformations
def _run(tape, *arrays):
    outs, _ = ReferenceEngine(tape).run([np.asarray(a) for a in arrays], [sv.get_value() for sv in tape.shared])
    return [np.asarray(o) for o in outs]


def _mlp():
    x, W, b = tg.vector("x"), tg.matrix("W"), tg.vector("b")
    h = tg.tanh(W @ x + b)
    y = tg.concatenate([tg.softmax(h), (h[1:] * h[:-1]).cumsum(), (W.T @ h) ** 2])
    return x, W, b, y


@settings(max_examples=15)
@given(n=st.integers(1, 4), m=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_adjoint_identity_between_sweep_tangent_and_adjoint(n, m, seed):
    """<v, J u> (tangent sweep) == <J^T v, u> (adjoint sweep) over the same primal tape, to rounding."""
    x, W, b, y = _mlp()
    ux, uW, ub, v = tg.vector("ux"), tg.matrix("uW"), tg.vector("ub"), tg.vector("v")
    tape = build_tape([x, W, b, ux, uW, ub, v], [y])
    s = [int(t) for t in tape.input_slots]
    rng = np.random.default_rng(seed)
    vals = [rng.normal(size=n), rng.normal(size=(m, n)), rng.normal(size=m),
            rng.normal(size=n), rng.normal(size=(m, n)), rng.normal(size=m)]
    ny = 2 * m - 1 + n  # softmax(h), cumsum of m - 1 products, (W.T @ h) ** 2
    vv = rng.normal(size=ny)
    t = sweep.tangent(tape, {s[0]: s[3], s[1]: s[4], s[2]: s[5]})
    a = sweep.adjoint(tape, seeds={int(tape.output_slots[0]): s[6]}, wrt=s[:3])
    jy = _run(t, *vals, vv)
    ja = _run(a, *vals, vv)
    np.testing.assert_allclose(ja[0], jy[0], rtol=0, atol=0)  # the primal output is unchanged
    lhs = float(np.dot(vv, jy[1]))
    rhs = sum(float(np.sum(g * u)) for g, u in zip(ja[1:], vals[3:]))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_tape_level_adjoint_tangent_is_the_hvp():
    x, W, b, y = _mlp()
    cost = (y ** 2).sum()
    p = tg.vector("p")
    tape = build_tape([x, W, b, p], [cost])
    s = [int(t) for t in tape.input_slots]
    hv = sweep.adjoint_tangent(tape, {s[0]: s[3]}, wrt=[s[0]])
    rng = np.random.default_rng(3)
    vals = [rng.normal(size=3), rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3)]
    out = _run(hv, *vals)
    assert len(out) == 3  # cost, its gradient, the gradient's tangent
    ref = tg.function([x, W, b, p], [tg.grad(cost, x), tg.hessian_vector_product(cost, x, p)], device="python")(*vals)
    np.testing.assert_allclose(out[1], ref[0], rtol=1e-12)
    np.testing.assert_allclose(out[2], ref[1], rtol=1e-12)
    hv.validate()


def test_finite_differences():
    """The sweep's gradient and HVP against central differences."""
    x, W, b, y = _mlp()
    cost = (y * tg.arange(0, 10, 1).astype("float64")).sum()  # y has 2 * 4 - 1 + 3 entries
    p = tg.vector("p")
    f = tg.function([x, W, b], cost, device="python")
    g = tg.function([x, W, b], tg.grad(cost, [x, W]), device="python", route="sweep")
    h = tg.function([x, W, b, p], tg.hessian_vector_product(cost, x, p), device="python", route="sweep")
    assert g.route == h.route == "sweep"
    rng = np.random.default_rng(4)
    xv, Wv, bv, pv = rng.normal(size=3), rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=3)
    gx, gW = g(xv, Wv, bv)
    eps = 1e-6
    for k in range(3):
        e = np.zeros(3)
        e[k] = eps
        assert abs((f(xv + e, Wv, bv) - f(xv - e, Wv, bv)) / (2 * eps) - gx[k]) < 1e-7
    E = np.zeros((4, 3))
    E[2, 1] = eps
    assert abs((f(xv, Wv + E, bv) - f(xv, Wv - E, bv)) / (2 * eps) - gW[2, 1]) < 1e-7
    fd = (g(xv + eps * pv, Wv, bv)[0] - g(xv - eps * pv, Wv, bv)[0]) / (2 * eps)
    np.testing.assert_allclose(h(xv, Wv, bv, pv), fd, rtol=1e-6, atol=1e-7)


def test_zero_cotangent_never_makes_nan():
    """azmul: a zero cotangent through an infinite partial (sqrt'(0) = inf) gives 0, not NaN."""
    x, v = tg.vector("x"), tg.vector("v")
    f = tg.function([x, v], tg.Lop(tg.sqrt(x), x, v), device="python", route="sweep")
    np.testing.assert_array_equal(f([0.0, 4.0], [0.0, 1.0]), [0.0, 0.25])
    g = tg.function([x, v], tg.Rop(tg.sqrt(x), x, v), device="python", route="sweep")
    np.testing.assert_array_equal(g([0.0, 4.0], [0.0, 1.0]), [0.0, 0.25])


# --------------------------------------------------------------------------- unsupported ops, strict mode
class _Triple(tg.Op):
    """A user op (no op code): runs by callback; the sweep has no rule for it."""

    def make_node(self, x):
        x = tg.as_tensor(x)
        return tg.Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.asarray(inputs[0] * 3.0)

    def grad(self, inputs, output_grads):
        return [output_grads[0] * 3.0]

    def R_op(self, inputs, eval_points):
        return [eval_points[0] * 3.0]


def test_user_op_falls_back_in_auto_and_raises_in_sweep():
    x = tg.vector("x")
    cost = (_Triple()(x) ** 2).sum()
    g = tg.grad(cost, x)
    f = tg.function([x], g, device="python", route="auto")
    assert f.route == "symbolic"
    assert "_Triple" in f.route_notes[0] and "user op" in f.route_notes[0]
    np.testing.assert_allclose(f([1.0, 2.0]), [18.0, 36.0])
    with pytest.raises(ValueError, match=r"route='sweep': output 0 .*_Triple"):
        tg.function([x], g, device="python", route="sweep")
    # mixed: one output by each route
    y = tg.vector("y")
    g2 = tg.grad((tg.exp(y) * 2.0).sum(), y)
    f2 = tg.function([x, y], [g, g2], device="python", route="auto")
    assert f2.route == "mixed" and set(f2.route_notes) == {0}
    out = f2([1.0, 2.0], [0.0, 1.0])
    np.testing.assert_allclose(out[1], 2 * np.exp([0.0, 1.0]), rtol=1e-15)


def test_tape_level_sweep_unsupported_names_the_op():
    x = tg.vector("x")
    tape = build_tape([x], [(_Triple()(x) ** 2).sum()])
    with pytest.raises(SweepUnsupported, match="_Triple"):
        sweep.adjoint(tape)
    seq = tg.scan(lambda a, s: s + a, sequences=[x], outputs_info=[tg.as_tensor(0.0)], return_updates=False)
    tape = build_tape([x], [seq.sum()])
    with pytest.raises(SweepUnsupported, match="SCAN"):
        sweep.adjoint(tape)
    u = tg.vector("u")
    tape = build_tape([x, u], [seq])
    with pytest.raises(SweepUnsupported, match="SCAN"):
        sweep.tangent(tape, {0: 1})


@pytest.mark.parametrize("case, match", [
    ("consider_constant", "consider_constant"),
    ("known_grads", "known_grads"),
    ("further_expression", "further expression"),
    ("grad_of_grad", "grad of a grad"),
    ("update", "update of w"),
    ("intermediate_wrt", "intermediate"),
])
def test_sweep_route_refuses_what_it_cannot_reproduce(case, match):
    x, y = tg.vector("x"), tg.vector("y")
    c = (tg.exp(x) * y).sum()
    updates = None
    ins = [x, y]
    if case == "consider_constant":
        out = tg.grad(c, x, consider_constant=[y])
    elif case == "known_grads":
        out = tg.grad(c, x, known_grads={c: tg.as_tensor(2.0)})
    elif case == "further_expression":
        out = tg.grad(c, x) * 2.0
    elif case == "grad_of_grad":
        out = tg.grad((tg.grad(c, x) ** 2).sum(), x)
    elif case == "update":
        w = tg.shared(np.ones(2), name="w")
        c = (tg.exp(x) * w).sum()
        out, updates, ins = c, [(w, w - 0.1 * tg.grad(c, w))], [x]
    else:
        h = tg.exp(x)
        out = tg.grad((h * y).sum(), h)
    vals = [np.array([0.5, -1.0])] * len(ins)
    fa = tg.function(ins, out, updates=updates, device="python", route="auto", on_unused_input="ignore")
    fs = tg.function(ins, out, updates=updates, device="python", route="symbolic", on_unused_input="ignore")
    assert fa.route == "symbolic"
    assert fa.route_notes and all(match in why for why in fa.route_notes.values()) or case in ("further_expression",
                                                                                             "update")
    ra = _flat(fa(*vals))
    if updates:
        w_after = w.get_value()
        w.set_value(np.ones(2))
    rs = _flat(fs(*vals))
    if updates:
        np.testing.assert_array_equal(w_after, w.get_value())
    for a, b in zip(ra, rs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=match):
        tg.function(ins, out, updates=updates, device="python", route="sweep", on_unused_input="ignore")


def test_disconnected_zeros_beside_swept_gradients():
    """A disconnected gradient's zeros are not a derivative to sweep: route="sweep" tapes them as they are."""
    x, y, z = tg.vector("x"), tg.vector("y"), tg.vector("z")
    out = tg.grad((tg.exp(x) * y).sum(), [x, z], disconnected_inputs="ignore")
    f = tg.function([x, y, z], out, device="python", route="sweep")
    assert f.route == "sweep" and f.route_notes == {}
    gx, gz = f([0.0, 1.0], [2.0, 3.0], [5.0, 6.0, 7.0])
    np.testing.assert_allclose(gx, [2.0, 3.0 * np.e], rtol=1e-15)
    np.testing.assert_array_equal(gz, np.zeros(3))


def test_route_option_and_environment(monkeypatch):
    x = tg.vector("x")
    g = tg.grad((x ** 3).sum(), x)
    with pytest.raises(ValueError, match="route must be one of"):
        tg.function([x], g, route="fast")
    assert tg.function([x], g, device="python").route == "sweep"  # the default ("auto") sweeps where it can
    assert tg.function([x], g, device="python", route="symbolic").route == "symbolic"
    monkeypatch.setenv("TAPEGRAD_ROUTE", "symbolic")
    assert tg.function([x], g, device="python").route == "symbolic"
    monkeypatch.setenv("TAPEGRAD_ROUTE", "sweep")
    f = tg.function([x], g, device="python")
    assert f.route == "sweep"
    np.testing.assert_allclose(f([1.0, 2.0]), [3.0, 12.0])
    assert tg.function([x], (x ** 2).sum(), device="python").route == "symbolic"  # nothing to sweep
    f2 = pickle.loads(pickle.dumps(f))
    assert f2.route == "sweep"
    np.testing.assert_allclose(f2([1.0, 2.0]), [3.0, 12.0])


# --------------------------------------------------------------------------- Function behaviour across routes
def test_function_behaviour_identical_across_routes():
    """Single vs list outputs, primal outputs beside gradients, shared wrt with updates, givens, dtypes, errors."""
    x = tg.fvector("x")
    w = tg.shared(np.array([0.5, -0.25, 2.0], dtype="float32"), name="w")
    s = tg.scalar("s")
    cost = (tg.softplus(x * w) + 0.5 * w ** 2).sum()
    gx, gw = tg.grad(cost, [x, w])
    for route in ("symbolic", "sweep"):
        w.set_value(np.array([0.5, -0.25, 2.0], dtype="float32"))
        f1 = tg.function([x], gx, device="python", route=route)
        r1 = f1(np.array([1.0, 2.0, 3.0], dtype="float32"))
        assert isinstance(r1, np.ndarray) and r1.dtype == np.float32 and r1.shape == (3,)
        f2 = tg.function([x], [cost, gw], updates=[(w, w * 0.5)], device="python", route=route)
        c, g = f2(np.array([1.0, 2.0, 3.0], dtype="float32"))
        assert c.dtype == g.dtype == np.float32
        np.testing.assert_allclose(w.get_value(), [0.25, -0.125, 1.0])
        f3 = tg.function([s], gw, givens={x: tg.stack([s, s, s]).astype("float32")}, device="python", route=route)
        r3 = f3(2.0)
        with pytest.raises(TypeError, match="expects 1 input"):
            f1()
        if route == "symbolic":
            ref = (r1, c, g, r3)
        else:
            assert f1.route == f2.route == f3.route == "sweep"
            for a, b in zip(ref, (r1, c, g, r3)):
                np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sweep_tape_is_rewritten_and_valid():
    """The sweep's tape goes through the same lowering: CSE merges the primal the adjoint re-reads."""
    x = tg.vector("x")
    cost = (tg.exp(x) * tg.exp(x) + tg.sin(x)).sum()
    f = tg.function([x], tg.grad(cost, x), device="python", route="sweep")
    f.tape.validate()
    names = [type(op).__name__ + getattr(op, "name", "") for op in f.tape.ops]
    assert names.count("Elemwiseexp") == 1
    assert f.tape.rewrite_stats["cse"] >= 1


# --------------------------------------------------------------------------- the CPU engine
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_engine_routes_agree(dtype):
    x = tg.tensor("x", dtype=dtype, shape=(None,))
    W = tg.tensor("W", dtype=dtype, shape=(None, None))
    b = tg.tensor("b", dtype=dtype, shape=(1,))
    u, v = tg.tensor("u", dtype=dtype, shape=(None,)), tg.tensor("v", dtype=dtype, shape=(None,))
    h = tg.tanh(W @ x + b)
    cost = (tg.log_softmax(h) * h).sum() + (x[1:] - x[:-1] ** 2).sum() ** 2
    rng = np.random.default_rng(5)
    vals = [rng.normal(size=3).astype(dtype), rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=1).astype(dtype)]
    uv, vv = rng.normal(size=3).astype(dtype), rng.normal(size=4).astype(dtype)
    cases = [
        ([], [], tg.grad(cost, [x, W, b])),
        ([v], [vv], tg.Lop(h, [x, W], v)),
        ([u], [uv], tg.Rop(h, x, u)),
        ([u], [uv], tg.hessian_vector_product(cost, x, u)),
    ]
    for extra, extra_vals, outputs in cases:
        sym, swp, f = both([x, W, b] + extra, outputs, *vals, *extra_vals, device="cpu")
        assert f.route == "sweep"
        assert_same(sym, swp, dtype)
        py = tg.function([x, W, b] + extra, outputs, device="python", route="sweep")(*vals, *extra_vals)
        assert_same(py, swp, dtype)
