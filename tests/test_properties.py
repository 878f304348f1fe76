"""Properties of random graphs (``tapegrad.testing.strategies.random_graphs``).

* grad of a random projection equals central finite differences;
* Rop and Lop are adjoint: ``<v, Rop(f, x, u)> == <Lop(f, x, v), u>``;
* Hessian-vector products are symmetric: ``<u, H w> == <w, H u>``;
* the compiled CPU engine agrees with the reference one (when it exists).
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from tapegrad.graph import tensor  # noqa: E402
from tapegrad.testing import check_adjoint, compare_backends, compile_function  # noqa: E402
from tapegrad.testing.strategies import random_graphs  # noqa: E402

DEVICE = "python"


def _seeded(data):
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def _vdot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def _abs_vdot(a, b):
    return float(np.sum(np.abs(np.asarray(a, np.float64) * np.asarray(b, np.float64))))


@given(case=random_graphs(), data=st.data())
def test_grad_matches_finite_differences(case, data):
    from tapegrad.gradient import grad
    from tapegrad.ops import sum as tsum

    inputs, out, values = case
    rng = _seeded(data)
    fn = compile_function(inputs, out, device=DEVICE)
    y = np.asarray(fn(*values))
    r = rng.uniform(0.5, 1.5, size=y.shape)
    rv = tensor("r", dtype=out.dtype, shape=(None,) * out.ndim)
    cost = tsum(rv * out) if out.ndim else rv * out
    grads = grad(cost, inputs, disconnected_inputs="ignore")
    gfn = compile_function(inputs + [rv], list(grads), device=DEVICE)
    got = gfn(*values, r)
    h = 1e-6
    for k, (x, g) in enumerate(zip(values, got)):
        assert g.dtype == x.dtype and g.shape == x.shape
        fd = np.zeros(x.shape)
        for e in range(x.size):
            xp, xm = [v.copy() for v in values], [v.copy() for v in values]
            xp[k].flat[e] += h
            xm[k].flat[e] -= h
            fd.flat[e] = (np.sum(r * fn(*xp)) - np.sum(r * fn(*xm))) / (2 * h)
        scale = np.max(np.abs(fd), initial=0.0) + 1e-3
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{case!r}: input {k}")


@given(case=random_graphs(kinks=True, n_ops=(1, 8)), data=st.data())
def test_rop_lop_adjoint(case, data):
    inputs, out, values = case
    check_adjoint(out, inputs, values, rng=_seeded(data), n_tests=2, mode=DEVICE)


@given(case=random_graphs(kinks=True, n_ops=(1, 6)), data=st.data())
def test_hvp_symmetry(case, data):
    from tapegrad.gradient import hessian_vector_product
    from tapegrad.ops import sum as tsum

    inputs, out, values = case
    rng = _seeded(data)
    w = rng.standard_normal(np.shape(compile_function(inputs, out, device=DEVICE)(*values)))
    wv = tensor("w", dtype=out.dtype, shape=(None,) * out.ndim)
    cost = tsum(wv * out) if out.ndim else wv * out
    us = [tensor(f"u{i}", dtype=x.dtype, shape=(None,) * x.ndim) for i, x in enumerate(inputs)]
    ps = [tensor(f"p{i}", dtype=x.dtype, shape=(None,) * x.ndim) for i, x in enumerate(inputs)]
    hu = hessian_vector_product(cost, inputs, us, disconnected_inputs="ignore")
    hp = hessian_vector_product(cost, inputs, ps, disconnected_inputs="ignore")
    fn = compile_function(inputs + [wv] + us + ps, list(hu) + list(hp), device=DEVICE)
    u = [rng.standard_normal(v.shape) for v in values]
    p = [rng.standard_normal(v.shape) for v in values]
    got = fn(*values, w, *u, *p)
    hu_v, hp_v = got[: len(inputs)], got[len(inputs):]
    lhs = sum(_vdot(a, b) for a, b in zip(p, hu_v))  # <p, H u>
    rhs = sum(_vdot(a, b) for a, b in zip(u, hp_v))  # <u, H p>
    mag = sum(_abs_vdot(a, b) for a, b in zip(p, hu_v)) + sum(_abs_vdot(a, b) for a, b in zip(u, hp_v))
    # rounding floor: Hessian entries come from sums of O(1) terms that may cancel
    floor = 1e-12 * np.sqrt(sum(_vdot(a, a) for a in p) * sum(_vdot(a, a) for a in u))
    assert abs(lhs - rhs) <= 1e-9 * mag + floor, f"{case!r}: <p, H u> = {lhs!r} but <u, H p> = {rhs!r}"


@given(case=random_graphs(kinks=True, n_ops=(1, 8)))
def test_backends_agree(case):
    pytest.importorskip("tapegrad.compile.cpu")
    inputs, out, values = case
    compare_backends(out, inputs, values, devices=("python", "cpu"))


@given(case=random_graphs(dtype="float32", n_ops=(1, 5)), data=st.data())
def test_float32_graphs_stay_float32(case, data):
    from tapegrad.gradient import grad
    from tapegrad.ops import sum as tsum

    inputs, out, values = case
    assert out.dtype == "float32"
    cost = tsum(out) if out.ndim else out
    grads = grad(cost, inputs, disconnected_inputs="ignore")
    assert all(g.dtype == "float32" for g in grads)
    check_adjoint(out, inputs, values, rng=_seeded(data), mode=DEVICE)
