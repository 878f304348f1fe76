"""Run every spec row (``tests/ops/specs_*.py``; format in ``tests/ops/rows.py``).

For each row and each of its dtypes:

* value: ``build(*vars)`` compiled with ``device="python"`` equals
  ``reference(*arrays)``, with the output's declared dtype and rank;
* grad: ``Lop(f, x, v)`` (the gradient of ``<v, f(x)>``) equals central
  differences of ``<v, f(x)>``, element by element, with the input's dtype;
* Rop: ``Rop(f, x, u)`` equals the central-difference JVP, with the output's dtype;
* adjoint: ``<v, Rop(f, x, u)> == <Lop(f, x, v), u>`` (exact up to rounding).

Finite differences are taken in float64 on the NumPy ``reference`` (or, without
one, on the graph rebuilt on float64 inputs), so float32 rows are compared
with a float64 oracle.  Rows with ``differentiable=False`` check the value and
that the gradient is exactly zero.  ``wrt=()`` means value only.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tapegrad.graph import tensor
from tapegrad.testing import compile_function
from tests.ops.specs import IMPORT_ERRORS, ROWS

VALUE_RTOL = {"float64": 1e-9, "float32": 1e-5}
FD_RTOL = {"float64": 1e-5, "float32": 2e-3}
ADJOINT_RTOL = {"float64": 1e-10, "float32": 1e-4}
FD_STEP = {"float64": 1e-6, "float32": 1e-3}  # by the precision of the finite-difference oracle


def _cases():
    for row in ROWS:
        for dtype in row.dtypes:
            yield pytest.param(row, dtype, id=f"{row.id}-{dtype}")


# --------------------------------------------------------------------------- inputs
def _domain(row, i):
    dom = row.domain
    if len(dom) == 1:
        return dom[0]
    if len(dom) != len(row.shapes):
        raise ValueError(f"row {row.id}: {len(dom)} domains for {len(row.shapes)} inputs")
    return dom[i]


def _dtype_of(row, i, dtype):
    return "int64" if i in row.int_inputs else dtype


def _values(row, dtype, rng):
    vals = []
    for i, shape in enumerate(row.shapes):
        dt = _dtype_of(row, i, dtype)
        dom = _domain(row, i)
        if callable(dom):
            v = np.asarray(dom(rng, tuple(shape), dt))
            if v.dtype != dt:
                v = v.astype(dt)
        elif dt == "int64":
            lo, hi = dom
            v = rng.integers(int(lo), int(hi), size=shape, endpoint=False).astype("int64")
        else:
            lo, hi = dom
            v = rng.uniform(lo, hi, size=shape).astype(dt)
        vals.append(v)
    return vals


def _variables(row, dtypes):
    out = []
    for i, (shape, dt) in enumerate(zip(row.shapes, dtypes)):
        static = row.static[i] if row.static is not None else None
        if static is None:  # a None entry: every length unknown
            static = (None,) * len(shape)
        out.append(tensor(f"x{i}", dtype=dt, shape=static))
    return out


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _is_float(dtype):
    return np.dtype(dtype).kind == "f"


def _wrt(row):
    if row.wrt is not None:
        return list(row.wrt)
    return [i for i in range(len(row.shapes)) if i not in row.int_inputs]


# --------------------------------------------------------------------------- comparisons
def _mismatch(what, got, want, rtol, atol=None):
    """None if ``got`` matches ``want`` (shape, NaN positions, values), else a message."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"{what}: shape {got.shape}, expected {want.shape}"
    if got.size == 0:
        return None
    if not _is_float(want.dtype) and not _is_float(got.dtype):
        if np.array_equal(got, want):
            return None
        k = int(np.flatnonzero(got != want)[0])
        return f"{what}: differs at flat index {k}: {got.flat[k]!r} != {want.flat[k]!r}\ngot  {got!r}\nwant {want!r}"
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    finite = np.abs(w[np.isfinite(w)])
    if atol is None:
        atol = rtol * (float(finite.max()) if finite.size else 0.0)
    same = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w))
    bad = ~(same | (np.abs(g - w) <= atol + rtol * np.abs(w)))
    if not bad.any():
        return None
    k = int(np.flatnonzero(bad)[0])
    return (
        f"{what}: {int(bad.sum())}/{bad.size} element(s) beyond rtol={rtol:g} atol={atol:.3g}; "
        f"first at flat index {k}: got {g.flat[k]!r}, expected {w.flat[k]!r}\ngot  {got!r}\nwant {want!r}"
    )


# --------------------------------------------------------------------------- finite differences
class _Oracle:
    """``F(wrt values) -> list of float arrays``: the row evaluated for finite differences."""

    def __init__(self, row, vals, wrt, keep):
        self.row, self.vals, self.wrt, self.keep = row, vals, wrt, keep
        self.fn = None
        if row.reference is None:
            dts = [("float64" if i in wrt else v.dtype.name) for i, v in enumerate(vals)]
            xs = _variables(row, dts)
            self.fn = compile_function(xs, _as_list(row.build(*xs)), device="python")
        out = self([vals[i].astype(np.float64) for i in wrt], raw=True)
        self.precision = "float32" if any(o.dtype == np.float32 for o in out) else "float64"

    def __call__(self, wrt_vals, raw=False):
        args = list(self.vals)
        for i, v in zip(self.wrt, wrt_vals):
            args[i] = v
        if self.fn is not None:
            out = self.fn(*args)
        else:
            with np.errstate(all="ignore"):
                out = self.row.reference(*args)
        out = [np.asarray(o) for o in _as_list(out)] if isinstance(out, (list, tuple)) else [np.asarray(out)]
        out = [o for o, k in zip(out, self.keep) if k]
        return out if raw else [o.astype(np.float64) for o in out]


def _fd_grad(oracle, x0, cot, h):
    """Central differences of ``sum_j <cot_j, F_j(x)>`` w.r.t. every element of every wrt input."""
    grads = []
    for k, x in enumerate(x0):
        g = np.zeros(x.shape)
        for e in range(x.size):
            xp = [a.copy() for a in x0]
            xm = [a.copy() for a in x0]
            xp[k].flat[e] += h
            xm[k].flat[e] -= h
            fp, fm = oracle(xp), oracle(xm)
            g.flat[e] = sum(float(np.sum(c * (p - m))) for c, p, m in zip(cot, fp, fm)) / (2 * h)
        grads.append(g)
    return grads


def _fd_jvp(oracle, x0, tangents, h):
    fp = oracle([x + h * t for x, t in zip(x0, tangents)])
    fm = oracle([x - h * t for x, t in zip(x0, tangents)])
    return [(p - m) / (2 * h) for p, m in zip(fp, fm)]


# --------------------------------------------------------------------------- the checks
def _check_row(row, dtype):
    from tapegrad.gradient import Lop, Rop

    rng = np.random.default_rng(zlib.crc32(f"{row.id}-{dtype}".encode()))
    vals = _values(row, dtype, rng)
    xs = _variables(row, [v.dtype.name for v in vals])
    out = row.build(*xs)
    outs = _as_list(out)
    failures = []

    # value
    fn = compile_function(xs, outs, device="python")
    got = [np.asarray(g) for g in fn(*vals)]
    for k, (g, o) in enumerate(zip(got, outs)):
        if g.dtype.name != o.dtype:
            failures.append(f"value: output {k} has dtype {g.dtype}, its Variable says {o.dtype}")
        if g.ndim != o.ndim:
            failures.append(f"value: output {k} has {g.ndim} dims, its Variable says {o.ndim}")
    if row.reference is not None:
        with np.errstate(all="ignore"):
            ref = row.reference(*[v.copy() for v in vals])
        refs = list(ref) if isinstance(out, (list, tuple)) else [ref]
        rtol = VALUE_RTOL.get(dtype, 1e-9)
        for k, (g, r) in enumerate(zip(got, refs)):
            msg = _mismatch(f"value of output {k}", g, r, rtol)
            if msg:
                failures.append(msg)

    wrt = [i for i in _wrt(row) if _is_float(vals[i].dtype)]
    fouts = [o for o in outs if _is_float(o.dtype)]
    fgot = [g for g, o in zip(got, outs) if _is_float(o.dtype)]
    if not wrt:
        return failures
    wvars = [xs[i] for i in wrt]

    if not row.differentiable:
        cots = [rng.standard_normal(g.shape) for g in got]
        try:
            lop = _as_list(Lop(outs, wvars, [c.astype(o.dtype) if _is_float(o.dtype) else c for c, o in zip(cots, outs)],
                               disconnected_inputs="ignore"))
            zs = compile_function(xs, lop, device="python")(*vals)
            for k, z in zip(wrt, zs):
                if np.any(np.asarray(z) != 0):
                    failures.append(f"grad: non-differentiable op passed a nonzero gradient to input {k}: {z!r}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"grad: {type(e).__name__}: {e}")
        return failures
    if not fouts:
        failures.append("row says differentiable but has no float output")
        return failures

    rtol = FD_RTOL.get(dtype, 1e-5)
    if row.rtol is not None:
        rtol = max(rtol, row.rtol)
    oracle = _Oracle(row, vals, wrt, [_is_float(o.dtype) for o in outs])
    if oracle.precision == "float32":
        rtol = max(rtol, 2e-2)
    h = FD_STEP[oracle.precision]
    x0 = [vals[i].astype(np.float64) for i in wrt]
    cots = [rng.standard_normal(g.shape) for g in fgot]
    tangents = [rng.standard_normal(x.shape) for x in x0]
    vs = [tensor(f"v{k}", dtype=o.dtype, shape=(None,) * o.ndim) for k, o in enumerate(fouts)]
    us = [tensor(f"u{k}", dtype=x.dtype, shape=(None,) * x.ndim) for k, x in enumerate(wvars)]
    cot_vals = [c.astype(o.dtype) for c, o in zip(cots, fouts)]
    tan_vals = [t.astype(x.dtype) for t, x in zip(tangents, wvars)]
    lop_vals = rop_vals = None

    # grad (reverse) vs finite differences of <v, f>
    try:
        lop = _as_list(Lop(fouts, wvars, vs, disconnected_inputs="ignore"))
        lop_vals = [np.asarray(a) for a in compile_function(xs + vs, lop, device="python")(*vals, *cot_vals)]
        fd = _fd_grad(oracle, x0, [c.astype(np.float64) for c in cot_vals], h)
        for k, (g, w, x) in enumerate(zip(lop_vals, fd, wvars)):
            if g.dtype.name != x.dtype:
                failures.append(f"grad: gradient of input {wrt[k]} has dtype {g.dtype}, the input is {x.dtype}")
            msg = _mismatch(f"grad of input {wrt[k]} vs finite differences", g, w, rtol, rtol * (_amax(w) + 1e-3))
            if msg:
                failures.append(msg)
    except Exception as e:  # noqa: BLE001
        failures.append(f"grad: {type(e).__name__}: {e}")

    # Rop (forward) vs finite-difference JVP
    try:
        rop = _as_list(Rop(fouts, wvars, us, disconnected_outputs="ignore"))
        rop_vals = [np.asarray(a) for a in compile_function(xs + us, rop, device="python")(*vals, *tan_vals)]
        fd = _fd_jvp(oracle, x0, [t.astype(np.float64) for t in tan_vals], h)
        for k, (g, w, o) in enumerate(zip(rop_vals, fd, fouts)):
            if g.dtype.name != o.dtype:
                failures.append(f"Rop: tangent of output {k} has dtype {g.dtype}, the output is {o.dtype}")
            msg = _mismatch(f"Rop of output {k} vs finite differences", g, w, rtol, rtol * (_amax(w) + 1e-3))
            if msg:
                failures.append(msg)
    except Exception as e:  # noqa: BLE001
        failures.append(f"Rop: {type(e).__name__}: {e}")

    # adjoint identity <v, J u> == <J^T v, u>
    if lop_vals is not None and rop_vals is not None:
        lhs = sum(_dot(c, r) for c, r in zip(cot_vals, rop_vals))
        rhs = sum(_dot(g, t) for g, t in zip(lop_vals, tan_vals))
        mag = sum(_dot(c, r, absolute=True) for c, r in zip(cot_vals, rop_vals))
        mag += sum(_dot(g, t, absolute=True) for g, t in zip(lop_vals, tan_vals))
        low = "float32" if any(a.dtype == np.float32 for a in cot_vals + tan_vals) else dtype
        tol = ADJOINT_RTOL.get(low, 1e-10) * mag + 1e-300
        if not abs(lhs - rhs) <= tol:
            failures.append(
                f"adjoint: <v, Rop(f, x, u)> = {lhs!r} but <Lop(f, x, v), u> = {rhs!r} "
                f"(difference {abs(lhs - rhs):.3g} > {tol:.3g})"
            )
    return failures


def _amax(a):
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _dot(a, b, absolute=False):
    p = np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    return float(np.sum(np.abs(p) if absolute else p))


@pytest.mark.parametrize("row, dtype", list(_cases()))
def test_row(row, dtype):
    failures = _check_row(row, dtype)
    if failures:
        pytest.fail(f"spec row {row.id} ({row.code}) in {dtype}:\n" + "\n".join(f"- {f}" for f in failures),
                    pytrace=False)


@pytest.mark.parametrize("module", sorted(IMPORT_ERRORS) or [pytest.param(None, id="all")])
def test_spec_modules_import(module):
    if module is not None:
        pytest.fail(f"tests/ops/{module}.py does not import:\n{IMPORT_ERRORS[module]}", pytrace=False)


def test_every_op_has_a_row():
    from tapegrad.registry import all_codes

    covered = set()
    for row in ROWS:
        covered.add(row.code)
        covered.update(row.also)
    missing = [name for name, code, _ in all_codes() if name not in covered]
    assert not missing, f"op codes without a spec row (add a Row to tests/ops/specs_<family>.py): {missing}"


def test_rows_are_well_formed():
    problems = []
    for row in ROWS:
        n = len(row.shapes)
        if len(row.domain) not in (1, n):
            problems.append(f"{row.id}: {len(row.domain)} domains for {n} inputs")
        if row.static is not None and len(row.static) != n:
            problems.append(f"{row.id}: {len(row.static)} static shapes for {n} inputs")
        if row.static is not None:
            for s, t in zip(row.static, row.shapes):
                if s is None:
                    continue
                if len(s) != len(t) or any(a is not None and a != b for a, b in zip(s, t)):
                    problems.append(f"{row.id}: static shape {s} contradicts run-time shape {t}")
        if row.wrt is not None and any(not 0 <= i < n for i in row.wrt):
            problems.append(f"{row.id}: wrt {row.wrt} out of range")
    assert not problems, "\n".join(problems)
