"""``scan`` gives ``fn`` the non-sequences themselves (Aesara's convention), so gradients taken inside ``fn``
see how the outer variables depend on each other: Aesara's Jacobian-by-scan and Hessian-by-scan recipes."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import DisconnectedInputError

DEVICES = ["python", "cpu"]


def _jacobian_by_scan(y, x, **kw):
    J, updates = tg.scan(lambda i, y, x: tg.grad(y[i], x), sequences=tg.arange(y.shape[0]), non_sequences=[y, x],
                         **kw)
    assert not updates
    return J


@pytest.mark.parametrize("device", DEVICES)
def test_jacobian_recipe(device):
    x = tg.dvector("x")
    J = _jacobian_by_scan(x ** 2, x)
    f = tg.function([x], J, device=device)
    np.testing.assert_array_equal(f([4.0, 4.0]), [[8.0, 0.0], [0.0, 8.0]])
    a = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(f(a), np.diag(2 * a), rtol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_jacobian_recipe_dense(device):
    x, A = tg.dvector("x"), tg.dmatrix("A")
    y = tg.tanh(tg.dot(A, x)) * x[0]  # y_i = tanh((Ax)_i) x_0
    f = tg.function([x, A], _jacobian_by_scan(y, x), device=device)
    rng = np.random.default_rng(0)
    a, M = rng.normal(size=3), rng.normal(size=(4, 3))
    t = np.tanh(M @ a)
    want = (1 - t ** 2)[:, None] * M * a[0]
    want[:, 0] += t
    np.testing.assert_allclose(f(a, M), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_recipe(device):
    x = tg.dvector("x")
    cost = (x ** 2).sum()
    gy = tg.grad(cost, x)
    H, _ = tg.scan(lambda i, gy, x: tg.grad(gy[i], x), sequences=tg.arange(gy.shape[0]), non_sequences=[gy, x])
    f = tg.function([x], H, device=device)
    np.testing.assert_array_equal(f([1.0, 2.0, 3.0]), 2 * np.eye(3))

    cost = (x ** 3).sum() + x[0] * x[1] + tg.exp(x[2])
    gy = tg.grad(cost, x)
    H, _ = tg.scan(lambda i, gy, x: tg.grad(gy[i], x), sequences=tg.arange(gy.shape[0]), non_sequences=[gy, x])
    a = np.array([1.0, -2.0, 0.5])
    want = np.diag(6 * a)
    want[0, 1] = want[1, 0] = 1.0
    want[2, 2] += np.exp(a[2])
    np.testing.assert_allclose(tg.function([x], H, device=device)(a), want, rtol=1e-14)
    np.testing.assert_allclose(tg.function([x], tg.hessian(cost, x), device=device)(a), want, rtol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_non_sequence_used_directly_and_through_grad(device):
    x = tg.dvector("x")
    y = x ** 2
    # row i: y_i * x + d y_i / d x = x_i^2 x + 2 x_i e_i
    R, _ = tg.scan(lambda i, y, x: y[i] * x + tg.grad(y[i], x), sequences=tg.arange(x.shape[0]),
                   non_sequences=[y, x])
    a = np.array([1.5, -0.5, 2.0])
    want = (a ** 2)[:, None] * a[None, :] + np.diag(2 * a)
    f = tg.function([x], R, device=device)
    np.testing.assert_allclose(f(a), want, rtol=1e-15)
    # and a gradient of the loop: d/dx_k sum_ij R_ij = 2 x_k sum(x) + sum(x^2) + 2
    g = tg.function([x], tg.grad(R.sum(), x), device=device)
    np.testing.assert_allclose(g(a), 2 * a * a.sum() + (a ** 2).sum() + 2, rtol=1e-14)


@pytest.mark.parametrize("checkpoint", ["all", "binomial"])
def test_gradient_lop_and_rop_through_the_jacobian_loop(checkpoint):
    x = tg.dvector("x")
    J = _jacobian_by_scan(tg.sin(x) * x, x, checkpoint=checkpoint)  # J = diag(cos(x) x + sin(x))
    a = np.array([0.3, -1.2, 2.0])
    v = np.array([1.0, 2.0, -1.0])
    d = np.cos(a) * a + np.sin(a)
    dd = -np.sin(a) * a + 2 * np.cos(a)  # d/dx of the diagonal
    vv = tg.dvector("v")
    W = tg.dmatrix("W")
    outs = [J, tg.grad((J * J).sum(), x), tg.Rop(J, x, vv), tg.Lop(J, x, W)]
    Wv = np.arange(9.0).reshape(3, 3)
    for device in DEVICES:
        got = tg.function([x, vv, W], outs, device=device)(a, v, Wv)
        np.testing.assert_allclose(got[0], np.diag(d), rtol=1e-14)
        np.testing.assert_allclose(got[1], 2 * d * dd, rtol=1e-13)
        np.testing.assert_allclose(got[2], np.diag(dd * v), rtol=1e-13)
        np.testing.assert_allclose(got[3], np.diag(Wv) * dd, rtol=1e-13)


def test_fn_receives_the_outer_non_sequences():
    x0, W = tg.dvector("x0"), tg.dmatrix("W")
    seen = []

    def step(h, W_, two, arr):
        seen.append((W_, two, arr))
        return tg.tanh(tg.dot(W_, h)) * two + arr

    traj, _ = tg.scan(step, outputs_info=x0, non_sequences=[W, 2.0, np.array([0.5, -0.5])], n_steps=3)
    (W_, two, arr), = seen
    assert W_ is W
    assert isinstance(two, tg.Variable) and isinstance(arr, tg.Variable)  # numbers and arrays: as_tensor first
    assert float(two.data) == 2.0
    f = tg.function([x0, W], traj)
    a, M = np.array([0.1, 0.2]), np.array([[0.5, -0.3], [0.2, 0.9]])
    h, want = a, []
    for _ in range(3):
        h = np.tanh(M @ h) * 2 + np.array([0.5, -0.5])
        want.append(h)
    np.testing.assert_allclose(f(a, M), want, rtol=1e-14)
    np.testing.assert_allclose(tg.function([x0, W], traj, device="python")(a, M), want, rtol=1e-14)


def test_strict_with_the_recipe_and_with_a_closure():
    x = tg.dvector("x")
    J = _jacobian_by_scan(x ** 2, x, strict=True)
    np.testing.assert_array_equal(tg.function([x], J)([1.0, 3.0]), [[2.0, 0.0], [0.0, 6.0]])
    z = tg.dvector("z")
    with pytest.raises(ValueError, match="strict=True"):
        tg.scan(lambda i, x: x[i] * z, sequences=tg.arange(3), non_sequences=[x], strict=True)


def test_non_sequence_derived_from_another_and_repeated():
    x0, p = tg.dvector("x0"), tg.dscalar("p")
    q = p * 3
    traj, _ = tg.scan(lambda h, p, q, p2: h * p + q + p2, outputs_info=x0, non_sequences=[p, q, p], n_steps=2)
    f = tg.function([x0, p], [traj, tg.grad(traj.sum(), p)])
    a, pv = np.array([1.0, 2.0]), 0.5
    h1 = a * pv + 4 * pv
    h2 = h1 * pv + 4 * pv
    got = f(a, pv)
    np.testing.assert_allclose(got[0], [h1, h2], rtol=1e-15)
    # d h1/dp = a + 4; d h2/dp = h1 + p (a + 4) + 4
    np.testing.assert_allclose(got[1], ((a + 4) + h1 + pv * (a + 4) + 4).sum(), rtol=1e-14)
    with pytest.raises(DisconnectedInputError):  # a non-sequence fn never uses stays disconnected
        u = tg.dscalar("u")
        out, _ = tg.scan(lambda h, p, u: h * p, outputs_info=x0, non_sequences=[p, u], n_steps=2)
        tg.grad(out.sum(), u)


def test_nested_scan_passes_non_sequences_through():
    x0, W = tg.dvector("x0"), tg.dmatrix("W")

    def outer(h, W):
        inner, _ = tg.scan(lambda g, W: tg.tanh(tg.dot(W, g)), outputs_info=h, non_sequences=W, n_steps=2)
        return inner[-1] + tg.grad((inner[-1] ** 2).sum(), h) * 0.1

    traj, _ = tg.scan(outer, outputs_info=x0, non_sequences=W, n_steps=2)
    cost = (traj ** 2).sum()
    outs = [traj, tg.grad(cost, W)]
    a, M = np.array([0.3, -0.2]), np.array([[0.4, 0.1], [-0.2, 0.7]])
    got = tg.function([x0, W], outs)(a, M)
    ref = tg.function([x0, W], outs, device="python")(a, M)
    for g, e in zip(got, ref):
        np.testing.assert_allclose(g, e, rtol=1e-13)

    def step(h):  # g2 + 0.1 * d sum(g2^2)/dh, g1 = tanh(W h), g2 = tanh(W g1): J^T = W^T D1 W^T D2
        g1 = np.tanh(M @ h)
        g2 = np.tanh(M @ g1)
        jt = (M.T * (1 - g1 ** 2)[None, :]) @ (M.T * (1 - g2 ** 2)[None, :])
        return g2 + 0.1 * jt @ (2 * g2)

    h1 = step(a)
    np.testing.assert_allclose(got[0], [h1, step(h1)], rtol=1e-13)


# --------------------------------------------------------------------------- audit: traj[-1]
def test_the_gradient_with_respect_to_a_trajectory_sees_its_last_step():
    """``traj[-1]`` is a sibling loop's output (it keeps only the last step), but derivatives with respect to
    ``traj`` treat it as the slice it stands for: the last row gets its gradient, and holding ``traj``
    constant holds it too (Aesara's values)."""
    x0, W = tg.dvector("x0"), tg.dmatrix("W")
    traj, _ = tg.scan(lambda h, W: tg.tanh(tg.dot(W, h)), outputs_info=x0, non_sequences=W, n_steps=4)
    c = (traj[-1] ** 2).sum()
    a, M = np.array([0.5, -0.3]), np.array([[0.9, 0.2], [-0.1, 0.8]])
    t = tg.function([x0, W], traj)(a, M)
    g = tg.function([x0, W], tg.grad(c, traj))(a, M)
    want = np.zeros_like(t)
    want[-1] = 2 * t[-1]
    np.testing.assert_allclose(g, want, rtol=1e-14)
    blocked = tg.grad(c, x0, consider_constant=[traj], disconnected_inputs="ignore")
    np.testing.assert_array_equal(tg.function([x0, W], blocked, on_unused_input="ignore")(a, M), 0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_cost_of_the_trajectory_and_its_last_step(dtype):
    x0, W = tg.vector("x0", dtype=dtype), tg.matrix("W", dtype=dtype)
    traj, _ = tg.scan(lambda h, W: tg.tanh(tg.dot(W, h)), outputs_info=x0, non_sequences=W, n_steps=3)
    c = (traj[-1] ** 2).sum() + (3 * traj).sum()
    a, M = np.array([0.5, -0.3], dtype), np.array([[0.9, 0.2], [-0.1, 0.8]], dtype)
    t = tg.function([x0, W], traj)(a, M)
    g = tg.function([x0, W], tg.grad(c, traj))(a, M)
    want = np.full_like(t, 3)
    want[-1] += 2 * t[-1]
    assert g.dtype == np.dtype(dtype)
    np.testing.assert_allclose(g, want, rtol=1e-6 if dtype == "float32" else 1e-14)
    # the gradient with respect to the loop's inputs is unchanged by it
    gx = tg.function([x0, W], tg.grad(c, x0))(a, M)
    if dtype == "float64":
        eps = 1e-6
        f = tg.function([x0, W], c)
        num = [(f(a + eps * e, M) - f(a - eps * e, M)) / (2 * eps) for e in np.eye(2)]
        np.testing.assert_allclose(gx, num, rtol=1e-7)
    with pytest.raises(tg.DisconnectedInputError):
        tg.grad((x0 ** 2).sum(), traj)
