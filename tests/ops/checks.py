"""Row checkers shared by the family test files (``tests/ops/test_<family>.py``).

``tests/ops/test_specs.py`` runs every spec row with its own tolerances; the
family files re-run their rows on the reference evaluator with these helpers
and tighter tolerances (value to 1e-12 in float64, Lop/Rop against central
differences, the adjoint identity to 1e-13, float32 rules against float64).
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad.graph as tg
from tapegrad.compile.reference import evaluate as ev
from tapegrad.gradient import Lop, Rop


def central_grad(F, vals, h=1e-6):
    """Central differences of the scalar NumPy function ``F`` at ``vals``: one array per argument."""
    out = []
    for k, v in enumerate(vals):
        g = np.zeros(np.shape(v))
        for e in range(g.size):
            p = [np.array(a, dtype=float, copy=True) for a in vals]
            m = [np.array(a, dtype=float, copy=True) for a in vals]
            p[k].flat[e] += h
            m[k].flat[e] -= h
            g.flat[e] = (F(*p) - F(*m)) / (2 * h)
        out.append(g)
    return out


def row_inputs(row, dtype, rng=0):
    """Symbolic inputs ``x0, x1, ...`` and values of ``row`` in ``dtype`` (int64 for ``row.int_inputs``).

    ``rng`` is a seed or a ``numpy.random.Generator`` (drawn from, one input after another).
    """
    rng = np.random.default_rng(rng)
    domains = row.domain if len(row.domain) == len(row.shapes) else row.domain * len(row.shapes)
    variables, values = [], []
    for k, (shape, dom) in enumerate(zip(row.shapes, domains)):
        dt = "int64" if k in row.int_inputs else dtype
        static = row.static[k] if row.static and row.static[k] is not None else (None,) * len(shape)
        variables.append(tg.tensor(f"x{k}", dtype=dt, shape=static))
        if callable(dom):
            values.append(np.asarray(dom(rng, shape, dt), dtype=dt))
        elif k in row.int_inputs:
            values.append(rng.integers(int(dom[0]), int(dom[1]), size=shape))
        else:
            values.append(rng.uniform(dom[0], dom[1], size=shape).astype(dt))
    return variables, values


def row_wrt(row):
    """Indices of the inputs to differentiate: ``row.wrt``, else every input not in ``row.int_inputs``."""
    if row.wrt is not None:
        return tuple(row.wrt)
    return tuple(k for k in range(len(row.shapes)) if k not in row.int_inputs)


def inner(a, b):
    """``<a, b>`` in float64."""
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def check_row_value(row, *, owner_infer_shape=True):
    """Value against ``row.reference`` (1e-12 in float64), rank, dtype and static shape of the output.

    ``owner_infer_shape``: the output's op infers the run-time shape from the input shapes
    (only for rows whose output op takes the row inputs directly).
    """
    for dtype in row.dtypes:
        xs, vals = row_inputs(row, dtype)
        y = row.build(*xs)
        (out,) = ev([y], dict(zip(xs, vals)))
        expected = np.asarray(row.reference(*vals))
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
        assert out.shape == expected.shape and out.ndim == y.ndim
        assert str(out.dtype) == y.dtype == expected.dtype.name, (out.dtype, y.dtype, expected.dtype)
        assert y.type.is_compatible_shape(out.shape), (y.type, out.shape)
        if owner_infer_shape:
            (shape,) = y.owner.op.infer_shape(y.owner, [np.shape(v) for v in vals])
            assert tuple(shape) == out.shape


def check_row_derivatives_float64(row):
    """Lop and Rop against central differences, and <v, Rop u> == <Lop v, u> to rounding."""
    xs, vals = row_inputs(row, "float64")
    y = row.build(*xs)
    rng = np.random.default_rng(1)
    (y0,) = ev([y], dict(zip(xs, vals)))
    v_val = rng.normal(size=y0.shape)
    v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
    for k in row_wrt(row):
        x = xs[k]
        u_val = rng.normal(size=vals[k].shape)
        u = tg.tensor("u", dtype=x.dtype, shape=(None,) * x.ndim)
        lop, rop = Lop(y, x, v), Rop(y, x, u)
        assert lop.dtype == "float64" and rop.dtype == "float64"
        lop_v, rop_v = ev([lop, rop], {**dict(zip(xs, vals)), v: v_val, u: u_val})
        assert lop_v.shape == vals[k].shape and rop_v.shape == y0.shape
        eps = 1e-6

        def f(t):
            shifted = list(vals)
            shifted[k] = vals[k] + t * u_val
            return ev([y], dict(zip(xs, shifted)))[0]

        jvp = (f(eps) - f(-eps)) / (2 * eps)
        rtol = row.rtol or 1e-6
        np.testing.assert_allclose(rop_v, jvp, rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(inner(lop_v, u_val), inner(v_val, jvp), rtol=rtol, atol=1e-7)
        lhs, rhs = inner(v_val, rop_v), inner(lop_v, u_val)
        scale = float(np.sum(np.abs(v_val * rop_v))) + float(np.sum(np.abs(lop_v * u_val))) + 1e-300
        assert abs(lhs - rhs) <= 1e-13 * scale, (lhs, rhs)


def check_row_derivatives_float32(row):
    """float32 rows: Lop/Rop stay float32 and match the float64 rules to float32 rounding."""
    xs32, vals32 = row_inputs(row, "float32")
    xs64 = [tg.tensor(f"x{k}", dtype=x.dtype.replace("32", "64"), shape=x.type.shape) for k, x in enumerate(xs32)]
    vals64 = [v.astype(x.dtype) for v, x in zip(vals32, xs64)]
    rng = np.random.default_rng(2)
    y32, y64 = row.build(*xs32), row.build(*xs64)
    (y0,) = ev([y64], dict(zip(xs64, vals64)))
    v_val = rng.normal(size=y0.shape)
    for k in row_wrt(row):
        u_val = rng.normal(size=vals64[k].shape)
        res = {}
        for name, y, xs, vals in (("32", y32, xs32, vals32), ("64", y64, xs64, vals64)):
            dt = xs[k].dtype
            v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
            u = tg.tensor("u", dtype=dt, shape=(None,) * xs[k].ndim)
            lop, rop = Lop(y, xs[k], v), Rop(y, xs[k], u)
            assert lop.dtype == dt and rop.dtype == y.dtype
            res[name] = ev([lop, rop], {**dict(zip(xs, vals)), v: v_val.astype(y.dtype), u: u_val.astype(dt)})
        assert res["32"][0].dtype == np.float32
        for a, b in zip(res["32"], res["64"]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def row_tests(rows, **value_checks):
    """The three row tests of a family file, parametrized over ``rows``; assign them to module names::

        test_row_value_and_static_shape, test_row_derivatives_float64, test_row_derivatives_float32 = row_tests(ROWS)

    ``value_checks`` go to :func:`check_row_value`.
    """
    diff_rows = [r for r in rows if r.differentiable]
    f32_rows = [r for r in diff_rows if "float32" in r.dtypes]

    @pytest.mark.parametrize("row", rows, ids=[r.id for r in rows])
    def test_row_value_and_static_shape(row):
        check_row_value(row, **value_checks)

    @pytest.mark.parametrize("row", diff_rows, ids=[r.id for r in diff_rows])
    def test_row_derivatives_float64(row):
        check_row_derivatives_float64(row)

    @pytest.mark.parametrize("row", f32_rows, ids=[r.id for r in f32_rows])
    def test_row_derivatives_float32(row):
        check_row_derivatives_float32(row)

    return test_row_value_and_static_shape, test_row_derivatives_float64, test_row_derivatives_float32


def check_hvp_adjoint(y, xs, vals, seed=0):
    """Second order: the Lop graph is differentiated again (Rop of Lop) and checked against
    central differences of the Lop and the symmetric identity <w, d(Lop v)[u]> for the
    bilinear form ``u -> d/dt <v, y(x + t u)>``."""
    rng = np.random.default_rng(seed)
    (y0,) = ev([y], dict(zip(xs, vals)))
    v = tg.tensor("v", dtype=y.dtype, shape=(None,) * y.ndim)
    v_val = rng.normal(size=y0.shape)
    us = [tg.tensor(f"u{k}", dtype=x.dtype, shape=(None,) * x.ndim) for k, x in enumerate(xs)]
    u_vals = [rng.normal(size=np.shape(a)) for a in vals]
    gs = Lop(y, xs, v)
    hs = Rop(gs, xs, us)
    givens = {**dict(zip(xs, vals)), v: v_val, **dict(zip(us, u_vals))}
    h_vals = ev(hs, givens)
    eps = 1e-6

    def g_at(t):
        return ev(gs, {**dict(zip(xs, [a + t * b for a, b in zip(vals, u_vals)])), v: v_val})

    for h, gp, gm in zip(h_vals, g_at(eps), g_at(-eps)):
        np.testing.assert_allclose(h, (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-7)
    # the Hessian of <v, y> is symmetric: <u, H u'> == <u', H u>
    u2_vals = [rng.normal(size=np.shape(a)) for a in vals]
    h2_vals = ev(hs, {**givens, **dict(zip(us, u2_vals))})
    a = sum(inner(p, q) for p, q in zip(u2_vals, h_vals))
    b = sum(inner(p, q) for p, q in zip(u_vals, h2_vals))
    assert abs(a - b) <= 1e-12 * (abs(a) + abs(b) + 1.0), (a, b)
