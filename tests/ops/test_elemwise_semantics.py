"""Elementwise semantics found by the SPEC audit, on every device and CPU tier, and both derivative routes.

* ``switch(c, a, b)`` with a float or int condition: the derivatives w.r.t. the branches are the masks
  ``c != 0`` / ``c == 0`` (they used ``c``'s value);
* ``switch`` never lets a NaN/inf from the branch not taken into the other's derivative: Rop, Hessian-vector
  products and Hessians too (its rules select, and ``azmul(0, b)``'s derivative in ``b`` is an exact zero);
* bool arithmetic as NumPy 2 (``b + c``, ``b * c``, maximum/minimum stay bool; ``-b``, ``b - c`` raise) and
  the same on every device (the CPU engine added bools as integers: ``[T, T] + [T, F]`` was ``[2, 1]``);
* float ``//`` and ``%`` with infinities and signed zeros as NumPy's npy_divmod on the CPU engine;
* integer ``INT64_MIN // -1`` (wraps) and ``INT64_MIN % -1`` (0; it was SIGFPE on the CPU engine);
* ``astype("floatX")`` / ``cast(x, "floatX")`` resolve to ``tg.config.floatX``;
* the CUDA engine's ``//``, ``%``, switch derivatives and bool arithmetic (numba's CUDA simulator, a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg

ROOT = Path(__file__).resolve().parents[2]
DEVICES = [
    pytest.param(dict(device="python"), id="python"),
    pytest.param(dict(device="cpu", tier="interp"), id="interp"),
    pytest.param(dict(device="cpu", tier="fused"), id="fused"),
    pytest.param(dict(device="cpu", tier="program"), id="program"),
]
ROUTES = ["symbolic", "sweep"]


def _same(got, want):
    """Equal values, dtypes and signs of zeros; NaN where NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind == "f":
        same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
    else:
        same = got == want
    bad = np.flatnonzero(~np.asarray(same))
    assert not bad.size, f"{bad.size} differ, at {bad[:8].tolist()}: got {got.ravel()[bad[:8]].tolist()}, " \
                         f"want {want.ravel()[bad[:8]].tolist()}"


def _run(ins, outs, args, route=None, native=False, **dev):
    """``outs`` at ``args``; ``native``: assert that the fused tier fused something / the program tier ran a program."""
    kw = dict(dev)
    if route is not None:
        kw["route"] = route
    f = tg.function(ins, outs, **kw)
    got = f(*args)
    if native and dev.get("tier") == "fused":
        assert f._engine._last_plan.fused, "nothing was fused"
    if native and dev.get("tier") == "program":
        progs = list(f._engine._programs.values())
        assert progs and all(p is not False for p in progs), f._engine.program_error
    return got


# --------------------------------------------------------------------------- switch with a non-bool condition
@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
def test_switch_of_a_float_condition_differentiates_by_the_mask_not_the_value(dev, route):
    c, a, b, u, w = (tg.vector(n) for n in "cabuw")
    cv = np.array([0.0, 0.5, -2.0, np.nan])  # NaN is true, as in np.where
    av, bv = np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0])
    y = tg.switch(c, a, b)
    ga, gb = tg.grad(y.sum(), [a, b])
    ra = tg.Rop(y, [a, b], [u, w])
    got = _run([c, a, b, u, w], [ga, gb, ra], [cv, av, bv, np.full(4, 3.0), np.full(4, 5.0)], route, **dev)
    _same(got[0], [0.0, 1.0, 1.0, 1.0])
    _same(got[1], [1.0, 0.0, 0.0, 0.0])
    _same(got[2], [5.0, 3.0, 3.0, 3.0])


@pytest.mark.parametrize("dev", DEVICES[:2])
def test_switch_of_an_int_condition_differentiates_by_the_mask(dev):
    i, a, b = tg.ivector("i"), tg.vector("a"), tg.vector("b")
    ga, gb = tg.grad((tg.where(i, a, b) * 2.0).sum(), [a, b])
    got = _run([i, a, b], [ga, gb], [np.array([0, 3, -1]), np.ones(3), np.ones(3)], **dev)
    _same(got[0], [0.0, 2.0, 2.0])
    _same(got[1], [2.0, 0.0, 0.0])


def test_verify_grad_of_switch_with_a_float_condition():
    tg.verify_grad(tg.switch, [np.array([0.7, -1.3]), np.array([1.0, 2.0]), np.array([3.0, 4.0])],
                   rng=np.random.default_rng(0))
    tg.verify_grad(lambda c, a, b: tg.where(c, a * b, b / a), [np.array([0.7, -0.4, 1.3]), np.array([1.0, 2.0, -1.5]),
                                                               np.array([3.0, 4.0, 0.5])], rng=np.random.default_rng(1))


# --------------------------------------------------------------------------- switch: no NaN/inf from the other branch
@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
def test_switch_rop_does_not_leak_the_untaken_branch(dev, route):
    x, u = tg.vector("x"), tg.vector("u")
    y = tg.switch(x > 0, tg.log(x), 0.0)
    got = _run([x, u], tg.Rop(y, x, u), [np.array([0.0, 2.0, -1.0]), np.ones(3)], route, **dev)
    _same(got, [0.0, 0.5, 0.0])
    # an infinite tangent in the untaken branch itself
    z = tg.switch(x > 0, x, tg.sqrt(x))
    got = _run([x, u], tg.Rop(z, x, u), [np.array([0.0, 4.0, 1.0]), np.ones(3)], route, **dev)
    _same(got, [np.inf, 1.0, 1.0])  # x = 0 takes sqrt, whose slope there is inf (SPEC)
    got = _run([x, u], tg.Rop(tg.switch(x <= 0, 1.0, tg.sqrt(x)), x, u), [np.array([0.0, 4.0]), np.ones(2)], route,
               **dev)
    _same(got, [0.0, 0.25])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
def test_switch_hessian_vector_product_does_not_leak_the_untaken_branch(dev, route):
    x, u = tg.vector("x"), tg.vector("u")
    hv = tg.hessian_vector_product(tg.switch(x > 0, tg.log(x), 0.0).sum(), x, u)
    _same(_run([x, u], hv, [np.array([0.0, 2.0]), np.ones(2)], route, **dev), [0.0, -0.25])
    hv = tg.hessian_vector_product(tg.where(x > 0, tg.sqrt(x) ** 3, 0.0).sum(), x, u)
    _same(_run([x, u], hv, [np.array([0.0, 4.0]), np.array([1.0, 2.0])], route, **dev), [0.0, 0.75])


@pytest.mark.parametrize("dev", DEVICES)
def test_switch_hessian_does_not_leak_the_untaken_branch(dev):
    x = tg.vector("x")
    H = tg.hessian(tg.where(x > 0, tg.sqrt(x) ** 3, 0.0).sum(), x)
    _same(_run([x], H, [np.array([0.0, 4.0])], **dev), [[0.0, 0.0], [0.0, 0.375]])
    H = tg.hessian(tg.switch(x > 0, tg.log(x), x * x).sum(), x)
    _same(_run([x], H, [np.array([0.0, 2.0])], **dev), [[2.0, 0.0], [0.0, -0.25]])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
def test_switch_adjoint_selects_an_infinite_cotangent(dev, route):
    """A NaN/inf cotangent reaches only the branch that was taken (a vector-Jacobian product feeds it in)."""
    c, a, b, g = tg.vector("c"), tg.vector("a"), tg.vector("b"), tg.vector("g")
    y = tg.switch(c > 0, a, b)
    ga, gb = tg.Lop(y, [a, b], g)
    got = _run([c, a, b, g], [ga, gb], [np.array([1.0, -1.0, 1.0]), np.ones(3), np.ones(3),
                                         np.array([np.inf, np.nan, -np.inf])], route, **dev)
    _same(got[0], [np.inf, 0.0, -np.inf])
    _same(got[1], [0.0, np.nan, 0.0])


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
def test_second_derivative_of_azmul_in_b_is_zero_where_a_is_zero(dev, route):
    """azmul(0, b) is 0 for every b: d/db is an exact zero there, even for an infinite tangent of b."""
    a, x, u = tg.vector("a"), tg.vector("x"), tg.vector("u")
    y = tg.azmul(a, 1.0 / x)
    got = _run([a, x, u], tg.Rop(y, x, u), [np.array([0.0, 2.0]), np.array([0.0, 2.0]), np.ones(2)], route, **dev)
    _same(got, [0.0, -0.5])


# --------------------------------------------------------------------------- bool arithmetic
_B = np.array([True, True, False, False])
_C = np.array([True, False, True, False])


def _bools():
    return tg.tensor("b", dtype="bool", shape=(None,)), tg.tensor("c", dtype="bool", shape=(None,))


_BOOL_CASES = {
    "add": (lambda b, c: b + c, lambda b, c: b + c),
    "mul": (lambda b, c: b * c, lambda b, c: b * c),
    "maximum": (tg.maximum, np.maximum),
    "minimum": (tg.minimum, np.minimum),
    "add_true": (lambda b, c: b + True, lambda b, c: b + True),
    "mul_false": (lambda b, c: b * False, lambda b, c: b * False),
    "add_sum": (lambda b, c: (b + c).sum(), lambda b, c: (b + c).sum()),
    "mul_add": (lambda b, c: b * c + b, lambda b, c: b * c + b),
    "floor": (lambda b, c: tg.floor(b), lambda b, c: np.floor(b)),
    "ceil": (lambda b, c: tg.ceil(b), lambda b, c: np.ceil(b)),
    "abs": (lambda b, c: abs(b), lambda b, c: abs(b)),
    "clip": (lambda b, c: tg.clip(b, False, c), lambda b, c: np.clip(b, False, c)),
    "add_int": (lambda b, c: b + 1, lambda b, c: b + 1),
    "add_then_int": (lambda b, c: (b + c) * 3, lambda b, c: (b + c) * 3),
    "mul_float": (lambda b, c: (b * c) * 2.5, lambda b, c: (b * c) * 2.5),
    "sum": (lambda b, c: b.sum(), lambda b, c: b.sum()),
    # NumPy gives int8 (tapegrad has no int8): int64, the same values on every device
    "floor_divide": (lambda b, c: b // c, lambda b, c: (b // c).astype("int64")),
    "mod": (lambda b, c: b % c, lambda b, c: (b % c).astype("int64")),
    "pow": (lambda b, c: b ** c, lambda b, c: (b ** c).astype("int64")),
    "sqr": (lambda b, c: tg.sqr(b), lambda b, c: np.square(b).astype("int64")),
}


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("case", sorted(_BOOL_CASES))
def test_bool_arithmetic_is_numpys_on_every_device(dev, case):
    build, ref = _BOOL_CASES[case]
    b, c = _bools()
    y = build(b, c)
    with np.errstate(divide="ignore"):
        want = np.asarray(ref(_B, _C))
    assert y.dtype == want.dtype.name
    _same(_run([b, c], y, [_B, _C], on_unused_input="ignore", **dev), want)


def test_bool_negative_and_subtract_raise_type_error_like_numpy():
    b, c = _bools()
    with pytest.raises(TypeError, match="boolean negative"):
        -b
    with pytest.raises(TypeError, match="boolean subtract"):
        b - c
    with pytest.raises(TypeError, match="boolean subtract"):
        tg.sub(b, True)
    with pytest.raises(TypeError, match="sign"):
        tg.sign(b)
    with pytest.raises(TypeError):
        np.negative(_B)
    # a bool mixed with a number is arithmetic on numbers
    assert (b - 1).dtype == "int64" and (-(b * 1.5)).dtype == "float64"


# --------------------------------------------------------------------------- float // and %
def _divmod_points(dtype):
    inf, nan = np.inf, np.nan  # 1e308 is inf in float32
    x = [inf, -inf, 1.0, -1.0, 1.0, -1.0, 1.0, 0.0, -0.0, 0.0, 1.0, -1.0, 1.0, 7.0, -7.0, 7.0, -7.0, inf, nan, 1.0,
         0.0, -0.0, 5e-324, -5e-324, 1e308, 1.0, 3.0, -3.0, 0.0]
    y = [2.0, 1.0, -inf, inf, inf, -inf, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.1, 2.0, 2.0, -2.0, -2.0, inf, 1.0, nan,
         -inf, -inf, 3.0, 3.0, 1e-10, -0.5, 0.75, 0.75, 3.0]
    with np.errstate(over="ignore"):
        return np.array(x, dtype), np.array(y, dtype)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_float_floor_divide_and_mod_follow_numpy_with_infinities_and_signed_zeros(dev, dtype):
    xv, yv = _divmod_points(dtype)
    x, y = tg.tensor("x", dtype=dtype, shape=(None,)), tg.tensor("y", dtype=dtype, shape=(None,))
    got = _run([x, y], [x // y, x % y, (x // y) * 2 + (x % y) * 3], [xv, yv], native=True, **dev)
    with np.errstate(all="ignore"):
        fd, md = np.floor_divide(xv, yv), np.mod(xv, yv)
        both = fd * xv.dtype.type(2) + md * xv.dtype.type(3)
    _same(got[0], fd)
    _same(got[1], md)
    _same(got[2], both)
    # the audit's cases, spelled out: [inf, -inf, 1, -1] // [2, 1, -inf, inf] and 1. % -1.
    _same(got[0][:4], np.array([np.nan, np.nan, -1.0, -1.0], dtype))
    _same(got[1][6], np.array(-0.0, dtype))


@pytest.mark.parametrize("dev", DEVICES[1:])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_float_floor_divide_and_mod_equal_numpy_on_random_operands(dev, dtype):
    """Equal bit for bit where NumPy's own quotient is exact (|x / y| < 2**51, float32 2**22)."""
    rng = np.random.default_rng(7)
    n = 20000
    xv = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    yv = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    xv[: n // 4] = rng.integers(-40, 40, n // 4)  # integer quotients: where floor(x / y) alone goes wrong
    yv[: n // 4] = rng.choice([1.0, -1.0, 0.5, 0.1, 3.0, -0.25, 0.2], n // 4)
    xv, yv = xv.astype(dtype), yv.astype(dtype)
    with np.errstate(all="ignore"):
        keep = np.abs(xv / yv) < 2.0 ** (51 if dtype == "float64" else 22)
    xv, yv = xv[keep], yv[keep]
    assert xv.size > n * 0.9
    x, y = tg.tensor("x", dtype=dtype, shape=(None,)), tg.tensor("y", dtype=dtype, shape=(None,))
    got = _run([x, y], [x // y, x % y, (x // y) * 1.5], [xv, yv], native=True, **dev)
    _same(got[0], np.floor_divide(xv, yv))
    _same(got[1], np.mod(xv, yv))


def test_floor_divide_of_huge_quotients_is_within_an_ulp_of_numpy():
    """Above 2**51 NumPy's (x - fmod(x, y)) / y may miss the floor by one; the CPU engine returns the exact floor."""
    rng = np.random.default_rng(3)
    xv = rng.standard_normal(5000) * 1e20
    yv = rng.standard_normal(5000)
    x, y = tg.dvector("x"), tg.dvector("y")
    got = tg.function([x, y], x // y, device="cpu", tier="interp")(xv, yv)
    np.testing.assert_allclose(got, np.floor_divide(xv, yv), rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- integer // and % by -1
_INT_MIN = np.iinfo(np.int64).min
_INT_X = [_INT_MIN, _INT_MIN, _INT_MIN + 1, 7, -7, 7, 0, _INT_MIN, 5, _INT_MIN]
_INT_Y = [-1, 1, -1, -1, 2, 0, 0, 0, -2, 2]
# INT64_MIN % -1 killed the process (SIGFPE in the hardware division): the compiled tiers run in a subprocess
_INT_SCRIPT = r"""
import json, sys, numpy as np, tapegrad as tg
from tests.ops.test_elemwise_semantics import _INT_X, _INT_Y, _run
i, j = tg.ivector("i"), tg.ivector("j")
res = {}
for tier in sys.argv[1:]:
    got = _run([i, j], [i // j, i % j, (i // j) + (i % j)], [np.array(_INT_X), np.array(_INT_Y)], native=True,
               device="cpu", tier=tier)
    res[tier] = [g.tolist() for g in got]
print("RESULT" + json.dumps(res))
"""


def _int_want():
    iv, jv = np.array(_INT_X, dtype=np.int64), np.array(_INT_Y, dtype=np.int64)
    with np.errstate(all="ignore"):
        fd, md = np.floor_divide(iv, jv), np.mod(iv, jv)
        return [fd, md, fd + md]


def test_integer_floor_divide_and_mod_of_int64_min_by_minus_one_python():
    i, j = tg.ivector("i"), tg.ivector("j")
    got = _run([i, j], [i // j, i % j, (i // j) + (i % j)], [np.array(_INT_X), np.array(_INT_Y)], device="python")
    for g, w in zip(got, _int_want()):
        _same(g, w)


def test_integer_floor_divide_and_mod_of_int64_min_by_minus_one_cpu():
    tiers = ["interp", "fused", "program"]
    proc = subprocess.run([sys.executable, "-c", _INT_SCRIPT, *tiers], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    res = json.loads(line[0][len("RESULT"):])
    want = _int_want()
    assert want[0][0] == _INT_MIN and want[1][0] == 0  # NumPy: wraps, and 0
    for tier in tiers:
        for g, w in zip(res[tier], want):
            _same(np.array(g, dtype=np.int64), w)


# --------------------------------------------------------------------------- floatX
@pytest.mark.parametrize("floatx", ["float32", "float64"])
def test_astype_and_cast_to_floatx_follow_the_config(floatx):
    old = tg.config.floatX
    tg.config.floatX = floatx
    try:
        i = tg.ivector("i")
        a, b = i.astype("floatX"), tg.cast(i, "floatX")
        assert a.dtype == floatx and b.dtype == floatx
        got = tg.function([i], [a, b], device="cpu")(np.array([1, 2, 3]))
        for g in got:
            _same(g, np.array([1, 2, 3], floatx))
        f = tg.tensor("f", dtype="float64" if floatx == "float32" else "float32", shape=(None,))
        assert f.astype("floatX").dtype == floatx
    finally:
        tg.config.floatX = old


# --------------------------------------------------------------------------- the CUDA engine (simulator)
_CUDA_SCRIPT = r"""
import json, sys, numpy as np, tapegrad as tg
XS, YS = json.loads(sys.argv[1])  # NaN and Infinity included
out = []
def rec(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    same = got.dtype == want.dtype and got.shape == want.shape
    if same and want.dtype.kind == "f":
        same = bool((((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) & np.isnan(want))).all())
    elif same:
        same = bool(np.array_equal(got, want))
    out.append([name, same, got.tolist(), want.tolist()])
for dt in ("float64", "float32"):
    x, y = tg.tensor("x", dtype=dt, shape=(None,)), tg.tensor("y", dtype=dt, shape=(None,))
    xv = np.array(XS, dt); yv = np.array(YS, dt)
    with np.errstate(all="ignore"):
        g = tg.function([x, y], [x // y, x % y], device="cuda")(xv, yv)
        rec("floor_divide " + dt, g[0], np.floor_divide(xv, yv)); rec("mod " + dt, g[1], np.mod(xv, yv))
m = np.iinfo(np.int64).min
i, j = tg.ivector("i"), tg.ivector("j")
iv, jv = np.array([m, m, 7, -7, 7]), np.array([-1, 1, 0, 2, -1])
with np.errstate(all="ignore"):
    g = tg.function([i, j], [i // j, i % j], device="cuda")(iv, jv)
    rec("int floor_divide", g[0], np.floor_divide(iv, jv)); rec("int mod", g[1], np.mod(iv, jv))
c, a, b, u = tg.vector("c"), tg.vector("a"), tg.vector("b"), tg.vector("u")
f = tg.function([c, a, b], tg.grad(tg.switch(c, a, b).sum(), a), device="cuda")
g = f(np.array([0., .5, -2.]), np.ones(3), np.ones(3))
rec("switch grad", g, np.array([0., 1., 1.]))
xx = tg.vector("xx")
f = tg.function([xx, u], tg.Rop(tg.switch(xx > 0, tg.log(xx), 0.0), xx, u), device="cuda")
g = f(np.array([0., 2.]), np.ones(2))
rec("switch rop", g, np.array([0., .5]))
bb, cc = tg.tensor("bb", dtype="bool", shape=(None,)), tg.tensor("cc", dtype="bool", shape=(None,))
B, C = np.array([True, True, False]), np.array([True, False, False])
g = tg.function([bb, cc], [bb + cc, (bb + cc).sum(), bb * cc], device="cuda")(B, C)
rec("bool add", g[0], B + C); rec("bool add sum", g[1], (B + C).sum()); rec("bool mul", g[2], B * C)
print("RESULT" + json.dumps(out))
"""


def test_cuda_engine_under_the_simulator_agrees():
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None and importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba-cuda is not installed")
    xs, ys = _divmod_points("float64")
    points = json.dumps([xs.tolist(), ys.tolist()])
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _CUDA_SCRIPT, points], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    bad = [r for r in json.loads(line[0][len("RESULT"):]) if not r[1]]
    assert not bad, bad


def test_a_python_int_out_of_range_of_the_int_dtype_raises_as_numpy():
    import tapegrad as tg

    i = tg.tensor("i", dtype="int32", shape=(None,))
    with pytest.raises(OverflowError, match="Python integer 1099511627776 out of bounds for int32"):
        i + 2**40
    with pytest.raises(OverflowError, match="out of bounds for int32"):
        tg.maximum(i, -2**31 - 1)
    got = tg.function([i], [i + (2**31 - 1), i * -2**31])(np.array([0, 1], np.int32))
    assert got[0].dtype == np.int32 and got[0].tolist() == [2**31 - 1, -2**31]
    assert (tg.lvector("l") + 2**40).dtype == "int64"
    assert (i + 2.5).dtype == "float64"
