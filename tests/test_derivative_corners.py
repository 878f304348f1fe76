"""Derivative corners: Lop/Rop with several f and wrt, jacobian/hessian variants, a two-output user op,
reductions/indexing/broadcasting gradients, the Rop/Lop adjoint identity over every op family, and functions
called with changing shapes.

Each check compiles on ``device="python"`` and on the CPU engine (``tier="interp"``; ``tier="program"`` where
noted) and compares with NumPy values and central finite differences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.special as sp

import tapegrad as tg
import tapegrad.linalg as la

PY = dict(device="python")
INTERP = dict(device="cpu", tier="interp")
PROGRAM = dict(device="cpu", tier="program")
CONFIGS = [PY, INTERP, PROGRAM]
FAST = [PY, INTERP]


def _ids(configs):
    return ["/".join(c.values()) for c in configs]


def run(ins, outs, args, config, calls=2, **kw):
    """Compile ``outs`` and call twice (the second call takes the program tier's fast path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = tg.function(ins, outs, on_unused_input="ignore", **config, **kw)
        for _ in range(calls):
            res = f(*args)
    return res if isinstance(res, list) else [res]


def check_all(ins, outs, args, expected, configs=CONFIGS, rtol=1e-7, atol=1e-9, **kw):
    for c in configs:
        got = run(ins, outs, args, c, **kw)
        assert len(got) == len(expected)
        for k, (a, b) in enumerate(zip(got, expected)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape, (c, k, a.shape, b.shape)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{c} output {k}")


def fd(fun, args, i, eps=1e-6):
    """Central differences of ``fun`` w.r.t. ``args[i]``: shape ``out.shape + args[i].shape``."""
    args = [np.array(a, dtype=float) for a in args]
    out0 = np.asarray(fun(*args))
    J = np.zeros(out0.shape + args[i].shape)
    for idx in np.ndindex(args[i].shape):
        ap = [a.copy() for a in args]
        am = [a.copy() for a in args]
        ap[i][idx] += eps
        am[i][idx] -= eps
        J[(...,) + idx] = (np.asarray(fun(*ap)) - np.asarray(fun(*am))) / (2 * eps)
    return J


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- 1. Lop / Rop, several f and wrt
def test_lop_several_f_sharing_a_subgraph():
    r = rng(1)
    x, W = tg.vector("x"), tg.matrix("W")
    h = tg.tanh(tg.dot(W, x))
    f1, f2, f3 = h * 2.0, (h**2).sum(), tg.exp(x)
    v1, v2, v3 = tg.vector("v1"), tg.scalar("v2"), tg.vector("v3")
    xv, Wv = r.normal(size=3), r.normal(size=(3, 3))
    vv1, vv2, vv3 = r.normal(size=3), np.array(0.7), r.normal(size=3)
    L = tg.Lop([f1, f2, f3], [x, W], [v1, v2, v3])
    hv = np.tanh(Wv @ xv)
    gh = 2 * vv1 + 2 * hv * vv2  # cotangent of h
    gpre = gh * (1 - hv**2)
    ex = [Wv.T @ gpre + np.exp(xv) * vv3, np.outer(gpre, xv)]
    check_all([x, W, v1, v2, v3], L, [xv, Wv, vv1, vv2, vv3], ex, rtol=1e-12)


def test_lop_same_f_twice_adds_its_points():
    x, v1, v2 = tg.vector("x"), tg.vector("v1"), tg.vector("v2")
    xv = np.array([0.1, -0.4, 1.2])
    L = tg.Lop([tg.exp(x), tg.exp(x)], x, [v1, v2])  # two Variables
    e = tg.exp(x)
    L2 = tg.Lop([e, e], x, [v1, v2])  # one Variable twice
    ex = np.exp(xv) * np.array([1.0, 2.0, 3.0])
    check_all([x, v1, v2], [L, L2], [xv, [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], [ex, ex])


def test_lop_f_ancestor_of_f_keeps_the_known_gradient_symbolic_route():
    # Aesara's Lop is grad(None, wrt, known_grads=...): a point given for a variable replaces what the
    # other f's would send it (tests/ops/test_scan_coupled.py::test_seeded_grad_adds_every_path)
    x, v1, v2 = tg.vector("x"), tg.vector("v1"), tg.vector("v2")
    a = x * 2.0
    b = a * 3.0
    L = tg.Lop([a, b], x, [v1, v2])
    check_all([x, v1, v2], [L], [[1.0, 2.0], [1.0, -1.0], [5.0, 7.0]], [[2.0, -2.0]], route="symbolic")
    # a point on an input that is also wrt is that input's gradient, on every route
    L = tg.Lop([x, tg.exp(x)], x, [v1, v2])
    check_all([x, v1, v2], [L], [[1.0, 2.0], [1.0, -1.0], [5.0, 7.0]], [[1.0, -1.0]])


def test_lop_disconnected_and_integer_wrt():
    x, y, v = tg.vector("x"), tg.vector("y"), tg.vector("v")
    i = tg.ivector("i")
    xv, vv, iv = np.array([0.3, -1.0, 2.0]), np.array([1.0, -2.0, 0.5]), np.array([1, 2, 3])
    L = tg.Lop(tg.exp(x), [x, y], v, disconnected_inputs="ignore")
    check_all([x, y, v], L, [xv, xv, vv], [np.exp(xv) * vv, np.zeros(3)])
    with pytest.raises(tg.DisconnectedInputError):
        tg.Lop(tg.exp(x), [x, y], v)
    fi = tg.sin(i * 1.5) + x
    L = tg.Lop(fi, [i, x], v)
    assert L[0].dtype == "float64"
    check_all([i, x, v], L, [iv, xv, vv], [1.5 * np.cos(1.5 * iv) * vv, vv])


def test_lop_none_and_numpy_points():
    x, y, w = tg.vector("x"), tg.vector("y"), tg.vector("w")
    xv, yv, wv = np.array([0.2, -0.7, 1.1]), np.array([1.5, 0.5, -2.0]), np.array([0.3, 1.0, -1.0])
    f1, f2 = tg.sin(x) * y, tg.exp(x) + y
    L = tg.Lop([f1, f2], [x, y], [w, None])
    check_all([x, y, w], L, [xv, yv, wv], [np.cos(xv) * yv * wv, np.sin(xv) * wv])
    pts = [np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0])]
    L = tg.Lop([f1, f2], [x, y], pts)
    check_all([x, y], L, [xv, yv], [np.cos(xv) * yv * pts[0] + np.exp(xv) * pts[1], np.sin(xv) * pts[0] + pts[1]])
    R = tg.Rop([f1, f2], [x, y], pts)
    check_all([x, y], R, [xv, yv], [np.cos(xv) * yv * pts[0] + np.sin(xv) * pts[1], np.exp(xv) * pts[0] + pts[1]])


def test_rop_several_f_and_wrt():
    r = rng(2)
    x, W = tg.vector("x"), tg.matrix("W")
    h = tg.tanh(tg.dot(W, x))
    f1, f2, f3 = h * 2.0, (h**2).sum(), tg.exp(x)
    u, U = tg.vector("u"), tg.matrix("U")
    xv, Wv, uv, Uv = r.normal(size=3), r.normal(size=(3, 3)), r.normal(size=3), r.normal(size=(3, 3))
    hv = np.tanh(Wv @ xv)
    dh = (1 - hv**2) * (Wv @ uv + Uv @ xv)
    ex = [2 * dh, np.sum(2 * hv * dh), np.exp(xv) * uv]
    check_all([x, W, u, U], tg.Rop([f1, f2, f3], [x, W], [u, U]), [xv, Wv, uv, Uv], ex, rtol=1e-12)
    # a None point, a disconnected output, an output that is a wrt, a wrt that is an intermediate
    check_all([x, W, u], [tg.Rop(f1, [x, W], [u, None])], [xv, Wv, uv], [2 * (1 - hv**2) * (Wv @ uv)], rtol=1e-12)
    R = tg.Rop([f3, W.sum()], [x], [u], disconnected_outputs="ignore")
    check_all([x, W, u], R, [xv, Wv, uv], [np.exp(xv) * uv, np.array(0.0)])
    R = tg.Rop([x, f3], x, u)
    check_all([x, u], R, [xv, uv], [uv, np.exp(xv) * uv])
    check_all([x, W, u], [tg.Rop(f2, h, u)], [xv, Wv, uv], [np.sum(2 * hv * uv)])
    check_all([x, W, u], [tg.Lop(f2, h, tg.as_tensor(0.5))], [xv, Wv, uv], [hv])


def test_rop_integer_input():
    i, x, u = tg.ivector("i"), tg.vector("x"), tg.vector("u")
    iv, xv, uv = np.array([1, 2, 3]), np.array([0.3, -1.0, 2.0]), np.array([1.0, -2.0, 0.5])
    R = tg.Rop(tg.sin(i * 1.5) + x, [i, x], [u, u])
    check_all([i, x, u], [R], [iv, xv, uv], [1.5 * np.cos(1.5 * iv) * uv + uv])
    X, W, UX = tg.imatrix("X"), tg.matrix("W"), tg.imatrix("UX")
    c = tg.sigmoid(tg.dot(X, W)).sum()
    Xv, Wv, UXv = np.array([[1, -2], [0, 3]]), np.array([[0.5], [-0.25]]), np.array([[1, 0], [-1, 2]])
    s = sp.expit(Xv @ Wv)
    gX = (s * (1 - s)) @ Wv.T
    check_all([X, W], tg.grad(c, [X, W]), [Xv, Wv], [gX, Xv.T @ (s * (1 - s))], rtol=1e-12)
    R = tg.Rop(c, [X, W], [UX, tg.zeros_like(W)])
    check_all([X, W, UX], [R], [Xv, Wv, UXv], [np.sum(gX * UXv)], rtol=1e-12)


# --------------------------------------------------------------------------- 2. jacobian / hessian
def _jac_cases():
    x, W, s = tg.vector("x"), tg.matrix("W"), tg.scalar("s")
    return (x, W, s), {
        0: (tg.sin(tg.dot(x, W)).sum() * s, lambda x, W, s: np.sin(x @ W).sum() * s),
        1: (tg.tanh(tg.dot(x, W)) * s, lambda x, W, s: np.tanh(x @ W) * s),
        2: (tg.outer(x, tg.exp(W[0])) * s + W, lambda x, W, s: np.outer(x, np.exp(W[0])) * s + W),
    }


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("rank", [0, 1, 2])
def test_jacobian_list_wrt_ranks(rank, vectorize):
    (x, W, s), cases = _jac_cases()
    e, F = cases[rank]
    r = rng(3)
    vals = [r.normal(size=3), r.normal(size=(3, 2)), np.array(0.8)]
    J = tg.jacobian(e, [x, W, s], vectorize=vectorize)
    ex = [fd(F, vals, i) for i in range(3)]
    check_all([x, W, s], J, vals, ex, configs=FAST, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_consider_constant_disconnected_integer(vectorize):
    x, y, i = tg.vector("x"), tg.vector("y"), tg.ivector("i")
    xv, iv = np.array([0.3, -0.8, 1.4]), np.array([1, 2, 3])
    h = tg.exp(x)
    e = h * tg.sin(x)
    J = tg.jacobian(e, x, consider_constant=[h], vectorize=vectorize)
    check_all([x], [J], [xv], [np.diag(np.exp(xv) * np.cos(xv))], configs=FAST)
    J = tg.jacobian(e, [x, y], disconnected_inputs="ignore", vectorize=vectorize)
    check_all([x, y], J, [xv, xv[:2]], [np.diag(np.exp(xv) * (np.cos(xv) + np.sin(xv))), np.zeros((3, 2))],
              configs=FAST)
    J = tg.jacobian(tg.sin(i * x), [i, x], vectorize=vectorize)
    check_all([i, x], J, [iv, xv], [np.diag(xv * np.cos(iv * xv)), np.diag(iv * np.cos(iv * xv))], configs=FAST)
    # a wide expression (a forward block is cheaper) keeps consider_constant
    e2 = tg.outer(h, tg.arange(10.0)).flatten() * x.sum()
    J = tg.jacobian(e2, x, consider_constant=[h], vectorize=vectorize)
    xv2 = np.array([0.3, -0.2])
    ex = np.tile(np.outer(np.exp(xv2), np.arange(10.0)).flatten()[:, None], (1, 2))
    check_all([x], [J], [xv2], [ex], configs=FAST)


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_matrix_wrt_and_outputs(vectorize):
    M, x, s = tg.matrix("M"), tg.vector("x"), tg.scalar("s")
    r = rng(4)
    Mv, xv = r.normal(size=(2, 3)), r.normal(size=3)
    check_all([M], [tg.jacobian(tg.dot(M, M.T), M, vectorize=vectorize)], [Mv], [fd(lambda M: M @ M.T, [Mv], 0)],
              configs=FAST, rtol=1e-6, atol=1e-7)
    check_all([M], [tg.jacobian(tg.softmax(M, axis=0), M, vectorize=vectorize)], [Mv],
              [fd(lambda M: sp.softmax(M, axis=0), [Mv], 0)], configs=FAST, rtol=1e-6, atol=1e-7)
    check_all([x, s], [tg.jacobian(tg.outer(x, x) * s**2, s, vectorize=vectorize)], [xv, np.array(1.5)],
              [np.outer(xv, xv) * 3.0], configs=FAST)
    hh = tg.exp(x)
    ev = np.exp(xv)
    check_all([x], [tg.jacobian(hh * hh.sum(), hh, vectorize=vectorize)], [xv],
              [np.diag(np.full(3, ev.sum())) + ev[:, None]], configs=FAST)
    check_all([x], tg.jacobian(tg.sin(x), [x, x], vectorize=vectorize), [xv], [np.diag(np.cos(xv))] * 2,
              configs=FAST)
    y = tg.vector("y")
    J = tg.jacobian(tg.concatenate([x, y]) * 2.0, [x, y], vectorize=vectorize)
    check_all([x, y], J, [xv, np.zeros(0)], [2 * np.eye(3), np.zeros((3, 0))], configs=FAST)


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_list_wrt_and_consider_constant(vectorize):
    x, W, s = tg.vector("x"), tg.matrix("W"), tg.scalar("s")
    r = rng(5)
    vals = [r.normal(size=3), r.normal(size=(3, 2)), np.array(0.8)]
    cost = (tg.sin(tg.dot(x, W)) ** 2).sum() * s + (x**3).sum()

    def C(x, W, s):
        return (np.sin(x @ W) ** 2).sum() * s + (x**3).sum()

    H = tg.hessian(cost, [x, W, s], vectorize=vectorize)
    ex = [fd(lambda *a, k=k: fd(C, list(a), k, 1e-5), vals, k, 1e-5) for k in range(3)]
    check_all([x, W, s], H, vals, ex, configs=FAST, rtol=1e-4, atol=1e-5)
    h = tg.exp(x)
    H = tg.hessian((h * x * x).sum(), x, consider_constant=[h], vectorize=vectorize)
    check_all([x], [H], [vals[0]], [np.diag(2 * np.exp(vals[0]))], configs=FAST)
    H = tg.hessian(tg.sin(s) * (x**2).sum(), [s, x], vectorize=vectorize)
    sv, xv = 0.8, vals[0]
    check_all([s, x], H, [sv, xv], [np.array(-np.sin(sv) * (xv**2).sum()), np.eye(3) * 2 * np.sin(sv)], configs=FAST)
    H = tg.hessian((x * s).sum(), [x, s], vectorize=vectorize)
    check_all([x, s], H, [xv, sv], [np.zeros((3, 3)), np.array(0.0)], configs=FAST)


def test_hessian_vector_product_list_wrt():
    x, W, s = tg.vector("x"), tg.matrix("W"), tg.scalar("s")
    p = [tg.vector("p1"), tg.matrix("pW"), tg.scalar("ps")]
    r = rng(6)
    vals = [r.normal(size=3), r.normal(size=(3, 2)), np.array(0.8)]
    pv = [r.normal(size=3), r.normal(size=(3, 2)), np.array(0.3)]
    cost = (tg.sin(tg.dot(x, W)) ** 2).sum() * s + (x**3).sum()

    def C(x, W, s):
        return (np.sin(x @ W) ** 2).sum() * s + (x**3).sum()

    ex = []
    for k in range(3):
        Gk = lambda *a, k=k: fd(C, list(a), k, 1e-5)  # noqa: E731
        ex.append(sum(np.tensordot(fd(Gk, vals, j, 1e-4), pv[j], axes=pv[j].ndim) for j in range(3)))
    HV = tg.hessian_vector_product(cost, [x, W, s], p)
    check_all([x, W, s] + p, HV, vals + pv, ex, rtol=1e-4, atol=1e-5)
    # p computed from x, and an integer path
    HV = tg.hessian_vector_product((x**3).sum(), x, tg.sin(x))
    check_all([x], [HV], [vals[0]], [6 * vals[0] * np.sin(vals[0])])
    i, u = tg.ivector("i"), tg.vector("u")
    y, v = tg.vector("y"), tg.vector("v")
    HV = tg.hessian_vector_product((tg.cast(i, "float64") * x**2).sum() + (y**2).sum(), [x, y], [u, v])
    check_all([i, x, y, u, v], HV, [[1, 2, 3], vals[0], vals[0], pv[0], pv[0]],
              [2 * np.array([1, 2, 3]) * pv[0], 2 * pv[0]])


# --------------------------------------------------------------------------- 3. a user op with two outputs
class TwoOut(tg.Op):
    """``y1 = sin(x) * a``, ``y2 = cumsum(x**2)`` (``a`` does not reach ``y2``)."""

    __props__ = ()

    def make_node(self, x, a):
        x, a = tg.as_tensor(x), tg.as_tensor(a)
        return tg.Apply(self, [x, a], [x.type(), x.type()])

    def perform(self, node, inputs, outputs):
        x, a = inputs
        outputs[0][0] = np.sin(x) * a
        outputs[1][0] = np.cumsum(x**2)

    def connection_pattern(self, node):
        return [[True, True], [True, False]]

    def L_op(self, inputs, outputs, output_grads):
        x, a = inputs
        g1, g2 = output_grads
        gx = tg.cos(x) * a * g1 + 2 * x * tg.cumsum(g2[::-1])[::-1]
        return [gx, (tg.sin(x) * g1).sum()]

    def R_op(self, inputs, eval_points):
        x, a = inputs
        u, ua = eval_points
        return [tg.cos(x) * a * u + tg.sin(x) * ua, tg.cumsum(2 * x * u)]


def _two(x, a):
    return np.sin(x) * a, np.cumsum(x**2)


_TWO_COSTS = {
    "y1": (lambda y1, y2: (y1**2).sum(), lambda x, a: (_two(x, a)[0] ** 2).sum()),
    "y2": (lambda y1, y2: tg.exp(y2 * 0.1).sum(), lambda x, a: np.exp(_two(x, a)[1] * 0.1).sum()),
    "both": (lambda y1, y2: (y1 * y2).sum() + y2[-1], lambda x, a: (_two(x, a)[0] * _two(x, a)[1]).sum() + _two(x, a)[1][-1]),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("which", list(_TWO_COSTS))
def test_user_op_two_outputs(which):
    tgc, C = _TWO_COSTS[which]
    x, a, u, ua = tg.vector("x"), tg.scalar("a"), tg.vector("u"), tg.scalar("ua")
    r = rng(7)
    xv, av, uv, uav = r.normal(size=4), np.array(1.3), r.normal(size=4), np.array(-0.4)
    y1, y2 = TwoOut()(x, a)
    cost = tgc(y1, y2)
    g = tg.grad(cost, [x, a], disconnected_inputs="ignore")
    R = tg.Rop(cost, [x, a], [u, ua])
    HV = tg.hessian_vector_product(cost, [x, a], [u, ua], disconnected_inputs="ignore")
    G = [fd(C, [xv, av], 0), fd(C, [xv, av], 1)]
    Gk = [lambda x, a, k=k: fd(C, [x, a], k, 1e-5) for k in range(2)]
    hv = [fd(Gk[k], [xv, av], 0, 1e-4) @ uv + fd(Gk[k], [xv, av], 1, 1e-4) * uav for k in range(2)]
    ex = [C(xv, av)] + G + [G[0] @ uv + G[1] * uav] + hv
    check_all([x, a, u, ua], [cost] + g + [R] + HV, [xv, av, uv, uav], ex, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_user_op_two_outputs_lop_rop_both():
    x, a, u, ua, v1, v2 = tg.vector("x"), tg.scalar("a"), tg.vector("u"), tg.scalar("ua"), tg.vector("v1"), tg.vector("v2")
    r = rng(8)
    xv, av, uv, uav, vv1, vv2 = r.normal(size=4), np.array(1.3), r.normal(size=4), np.array(-0.4), r.normal(size=4), r.normal(size=4)
    y1, y2 = TwoOut()(x, a)
    L = tg.Lop([y1, y2], [x, a], [v1, v2])
    R = tg.Rop([y1, y2], [x, a], [u, ua])
    ex = [np.cos(xv) * av * vv1 + 2 * xv * np.cumsum(vv2[::-1])[::-1], np.sum(np.sin(xv) * vv1),
          np.cos(xv) * av * uv + np.sin(xv) * uav, np.cumsum(2 * xv * uv)]
    check_all([x, a, u, ua, v1, v2], L + R, [xv, av, uv, uav, vv1, vv2], ex, rtol=1e-12)
    with pytest.raises(tg.DisconnectedInputError):
        tg.grad(y2.sum(), a)


# --------------------------------------------------------------------------- 4. reductions, indexing, broadcasting
def _check_grad(ins, out, npf, vals, configs=FAST, rtol=1e-6, atol=1e-7, seed=0):
    """Value of ``out``, grad of ``<w, out>``, Rop and Lop, against NumPy and differences."""
    r = rng(seed)
    y0 = np.asarray(npf(*vals))
    W = r.normal(size=y0.shape)
    wv = tg.constant(W.astype(out.dtype))
    wrt_i = [k for k, v in enumerate(ins) if "float" in v.dtype]
    wrt = [ins[k] for k in wrt_i]

    def fix(a):
        return [np.asarray(ai, dtype=np.asarray(v).dtype) if np.asarray(v).dtype.kind == "i" else ai
                for ai, v in zip(a, vals)]

    fv = [np.array(v, dtype=float) for v in vals]
    J = [fd(lambda *a: np.asarray(npf(*fix(a)), dtype=float), fv, k) for k in wrt_i]
    us = [tg.tensor(f"u{k}", dtype=ins[k].dtype, shape=(None,) * ins[k].ndim) for k in wrt_i]
    uv = [r.normal(size=np.shape(vals[k])).astype(ins[k].dtype) for k in wrt_i]
    grads = tg.grad((out * wv).sum(), wrt)
    R = tg.Rop(out, wrt, us)
    L = tg.Lop(out, wrt, wv)
    gex = [np.tensordot(W, Jk, axes=W.ndim) for Jk in J]
    rex = sum(np.tensordot(Jk, u, axes=u.ndim) for Jk, u in zip(J, uv))
    check_all(list(ins) + us, [out] + list(grads) + [R] + list(L), list(vals) + uv, [y0] + gex + [rex] + gex,
              configs=configs, rtol=rtol, atol=atol)


_REDUCTIONS = {
    "sum": (lambda t, ax, kd: t.sum(axis=ax, keepdims=kd), lambda t, ax, kd: t.sum(axis=ax, keepdims=kd)),
    "prod": (lambda t, ax, kd: t.prod(axis=ax, keepdims=kd), lambda t, ax, kd: t.prod(axis=ax, keepdims=kd)),
    "max": (lambda t, ax, kd: t.max(axis=ax, keepdims=kd), lambda t, ax, kd: t.max(axis=ax, keepdims=kd)),
    "min": (lambda t, ax, kd: t.min(axis=ax, keepdims=kd), lambda t, ax, kd: t.min(axis=ax, keepdims=kd)),
    "mean": (lambda t, ax, kd: t.mean(axis=ax, keepdims=kd), lambda t, ax, kd: t.mean(axis=ax, keepdims=kd)),
    "var": (lambda t, ax, kd: t.var(axis=ax, keepdims=kd), lambda t, ax, kd: t.var(axis=ax, keepdims=kd)),
    "std": (lambda t, ax, kd: t.std(axis=ax, keepdims=kd), lambda t, ax, kd: t.std(axis=ax, keepdims=kd)),
    "logsumexp": (lambda t, ax, kd: tg.logsumexp(t, axis=ax, keepdims=kd),
                  lambda t, ax, kd: sp.logsumexp(t, axis=ax, keepdims=kd)),
}


@pytest.mark.parametrize("axis,keepdims", [((0, 2), False), ((2, 0), True), ((-1, 0), False), (None, True), (1, True)])
@pytest.mark.parametrize("red", list(_REDUCTIONS))
def test_reductions_axis_tuples_keepdims(red, axis, keepdims):
    tgf, npf = _REDUCTIONS[red]
    T = tg.tensor3("T")
    Tv = rng(9).normal(size=(2, 3, 4))
    _check_grad([T], tgf(T, axis, keepdims), lambda t: npf(t, axis, keepdims), [Tv])


@pytest.mark.parametrize("axis", [0, 2, None])
def test_cumsum_cumprod_with_zeros(axis):
    T = tg.tensor3("T")
    Tv = rng(10).normal(size=(2, 3, 4))
    Tv[0, 1, 1] = Tv[1, 0, 2] = Tv[1, 0, 3] = 0.0
    _check_grad([T], tg.cumsum(T, axis=axis) * T.sum(), lambda t: np.cumsum(t, axis=axis) * t.sum(), [Tv])
    _check_grad([T], tg.cumprod(T, axis=axis), lambda t: np.cumprod(t, axis=axis), [Tv])
    x = tg.vector("x")
    check_all([x], [tg.grad(tg.cumprod(x).sum(), x), tg.grad(x.prod(), x)], [[2.0, 0.0, 3.0, 0.0, 5.0]],
              [[1.0, 8.0, 0.0, 0.0, 0.0], [0.0] * 5])
    check_all([x], [tg.grad(x.prod(), x)], [[0.0, 3.0, 2.0]], [[6.0, 0.0, 0.0]])


def test_sort_built_from_ranks():
    x = tg.vector("x")
    xv = rng(11).normal(size=6)
    rank = tg.cast((x.dimshuffle("x", 0) < x.dimshuffle(0, "x")).sum(axis=1), "int64")
    srt = tg.set_subtensor(tg.zeros_like(x)[rank], x)
    perm = tg.set_subtensor(tg.zeros_like(rank)[rank], tg.arange(x.shape[0]))
    _check_grad([x], srt * tg.arange(6.0), lambda x: np.sort(x) * np.arange(6.0), [xv], configs=CONFIGS)
    _check_grad([x], tg.sin(x[perm]) * tg.arange(6.0), lambda x: np.sin(x[np.argsort(x)]) * np.arange(6.0), [xv])
    _check_grad([x], srt[-2:].sum(), lambda x: np.sort(x)[-2:].sum(), [xv])


def _np_inc(z, i, y):
    z = z.copy()
    np.add.at(z, i, y)
    return z


def _np_set(z, i, y):
    z = z.copy()
    z[i] = y
    return z


def test_advanced_indexing_repeated_and_set_subtensor():
    x, y, y3, idx, s = tg.vector("x"), tg.vector("y"), tg.vector("y3"), tg.lvector("idx"), tg.scalar("s")
    r = rng(12)
    xv, yv, y3v, sv = r.normal(size=5), r.normal(size=6), r.normal(size=3), np.array(0.7)
    iv = np.array([0, 2, 2, -1, 0, 4])
    _check_grad([x, idx], x[idx] ** 2, lambda x, i: x[i] ** 2, [xv, iv])
    _check_grad([x, y, idx], tg.inc_subtensor(x[idx], y * y) * x, lambda x, y, i: _np_inc(x, i, y * y) * x,
                [xv, yv, iv], configs=CONFIGS)
    _check_grad([x, s, idx], tg.inc_subtensor(x[idx], s * s) ** 2, lambda x, s, i: _np_inc(x, i, s * s) ** 2,
                [xv, sv, iv])
    for iv3 in (np.array([0, 2, 3]), np.array([1, 1, 3])):  # repeated: the last write wins, the others get 0
        _check_grad([x, y3, idx], tg.set_subtensor(x[idx], tg.sin(y3)) * x,
                    lambda x, y, i: _np_set(x, i, np.sin(y)) * x, [xv, y3v, iv3])
    _check_grad([x, y3], tg.set_subtensor(x[1:4], y3**2) * x, lambda x, y: _np_set(x, slice(1, 4), y**2) * x,
                [xv, y3v])
    _check_grad([x, y3], tg.inc_subtensor(x[::-2], y3**2) * x,
                lambda x, y: _np_set(x, slice(None, None, -2), x[::-2] + y**2) * x, [xv, y3v])
    M, Y = tg.matrix("M"), tg.matrix("Y")
    r1 = tg.tensor("r1", shape=(1, None))
    Mv, Yv, r1v = r.normal(size=(3, 4)), r.normal(size=(4, 4)), r.normal(size=(1, 4))
    mi = np.array([2, 0, 2, -1])
    _check_grad([M, Y, idx], tg.inc_subtensor(M[idx], Y) ** 2, lambda m, y, i: _np_inc(m, i, y) ** 2, [Mv, Yv, mi])
    _check_grad([M, r1, idx], tg.inc_subtensor(M[idx], r1) ** 2, lambda m, y, i: _np_inc(m, i, y) ** 2,
                [Mv, r1v, mi[:3]])
    _check_grad([M, s], tg.set_subtensor(M[1:, 2], s) * M, lambda m, s: _np_set(m, (slice(1, None), 2), s) * m,
                [Mv, sv])


@pytest.mark.parametrize("axis", [0, 1, -1, None])
def test_take_negative_indices(axis):
    M, idx = tg.matrix("M"), tg.lvector("idx")
    Mv = rng(13).normal(size=(3, 4))
    iv = np.array([-1, 0, -12, 11, 5]) if axis is None else np.array([-1, 0, -Mv.shape[axis], 1, -1])
    _check_grad([M, idx], tg.take(M, idx, axis=axis) ** 2, lambda m, i: np.take(m, i, axis=axis) ** 2, [Mv, iv],
                configs=CONFIGS if axis == 1 else FAST)
    _check_grad([M], tg.take(M, -1 - tg.argmin(M, axis=1), axis=1),
                lambda m: np.take(m, -1 - np.argmin(m, axis=1), axis=1), [Mv])


_BINARY = {
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
    "pow": (lambda a, b: (a * a + 1) ** b, lambda a, b: (a * a + 1) ** b),
    "maximum": (tg.maximum, np.maximum),
    "arctan2": (tg.arctan2, np.arctan2),
    "hypot": (tg.hypot, np.hypot),
    "switch": (lambda a, b: tg.switch(a > 0, a * b, b), lambda a, b: np.where(a > 0, a * b, b)),
}


@pytest.mark.parametrize("op", list(_BINARY))
def test_broadcasting_gradients(op):
    tgf, npf = _BINARY[op]
    r = rng(14)
    r1, c1, M, N = tg.tensor("r1", shape=(1, None)), tg.tensor("c1", shape=(None, 1)), tg.matrix("M"), tg.matrix("N")
    r1v, c1v, Mv = r.normal(size=(1, 4)), r.normal(size=(3, 1)), r.normal(size=(3, 4))
    _check_grad([r1, M], tgf(r1, M), npf, [r1v, Mv])
    _check_grad([c1, r1], tgf(c1, r1), npf, [c1v, r1v])
    # unknown static lengths that are 1 at run time
    _check_grad([M, N], tgf(M, N), npf, [r.normal(size=(1, 4)), r.normal(size=(3, 1))])


_F32 = {
    "sum_keepdims": (lambda M: M.sum(axis=(0, 1), keepdims=True) * M, lambda M: M.sum(axis=(0, 1), keepdims=True) * M),
    "prod": (lambda M: M.prod(axis=0), lambda M: M.prod(axis=0)),
    "cumprod": (lambda M: tg.cumprod(M, axis=0), lambda M: np.cumprod(M, axis=0)),
    "softmax": (lambda M: tg.softmax(M), lambda M: sp.softmax(M, axis=-1)),
    "logsumexp": (lambda M: tg.logsumexp(M, axis=1), lambda M: sp.logsumexp(M, axis=1)),
    "var_std": (lambda M: M.var(axis=0) + M.std(axis=0), lambda M: M.var(axis=0) + M.std(axis=0)),
    "max_min": (lambda M: M.max(axis=1) - M.min(axis=0).sum(), lambda M: M.max(axis=1) - M.min(axis=0).sum()),
    "python_floats": (lambda M: M * 2.5 + M**2.0 - 1.5 / (M * M + 1.0), lambda M: M * 2.5 + M**2.0 - 1.5 / (M * M + 1.0)),
    "solve": (lambda M: tg.linalg.solve(tg.dot(M, M.T) + tg.eye(3, dtype="float32"), M[:, 0]),
              lambda M: np.linalg.solve(M @ M.T + np.eye(3), M[:, 0])),
    "set_subtensor": (lambda M: tg.set_subtensor(M[1, :], M[0] ** 2) * M, lambda M: _np_set(M, 1, M[0] ** 2) * M),
}


@pytest.mark.parametrize("case", list(_F32))
def test_float32_gradients(case):
    tgf, npf = _F32[case]
    M = tg.fmatrix("M")
    Mv = rng(15).normal(size=(3, 4)).astype("float32")
    out = tgf(M)
    assert out.dtype == "float32"
    for g in tg.grad((out**2).sum(), [M]) + [tg.Rop(out, M, M), tg.Lop(out, M, out)]:
        assert g.dtype == "float32"
    _check_grad([M], out, lambda m: npf(np.asarray(m, dtype=float)), [Mv], rtol=2e-4, atol=2e-4)


def test_float32_take_and_inc_subtensor():
    x, M, idx = tg.fvector("x"), tg.fmatrix("M"), tg.lvector("idx")
    r = rng(16)
    xv, Mv = r.normal(size=5).astype("float32"), r.normal(size=(3, 4)).astype("float32")
    iv = np.array([0, 0, -1, 2])
    _check_grad([x, idx], tg.inc_subtensor(x[idx], x[idx] * 2.0) * x,
                lambda x, i: _np_inc(np.asarray(x, float), i, np.asarray(x, float)[i] * 2.0) * x, [xv, iv],
                rtol=2e-4, atol=2e-4)
    _check_grad([M, idx], tg.take(M, idx, axis=1) ** 2, lambda m, i: np.take(np.asarray(m, float), i, axis=1) ** 2,
                [Mv, np.array([-1, -4, 0, -1])], rtol=2e-4, atol=2e-4)


# --------------------------------------------------------------------------- 5. the adjoint identity, every op family
N = 4


def _pos(a):
    return tg.softplus(a) + 0.5


def _unit(a):
    return tg.tanh(a) * 0.9


_UNARY = {
    "neg": tg.neg, "abs": lambda a: tg.abs(a + 0.3), "sign": lambda a: tg.sign(a) * a,
    "exp": lambda a: tg.exp(tg.tanh(a)), "exp2": lambda a: tg.exp2(tg.tanh(a)), "expm1": lambda a: tg.expm1(tg.tanh(a)),
    "log": lambda a: tg.log(_pos(a)), "log2": lambda a: tg.log2(_pos(a)), "log10": lambda a: tg.log10(_pos(a)),
    "log1p": lambda a: tg.log1p(_pos(a)), "sqrt": lambda a: tg.sqrt(_pos(a)), "sqr": tg.sqr,
    "reciprocal": lambda a: tg.reciprocal(_pos(a)), "sin": tg.sin, "cos": tg.cos, "tan": lambda a: tg.tan(_unit(a)),
    "arcsin": lambda a: tg.arcsin(_unit(a)), "arccos": lambda a: tg.arccos(_unit(a)), "arctan": tg.arctan,
    "sinh": lambda a: tg.sinh(tg.tanh(a)), "cosh": lambda a: tg.cosh(tg.tanh(a)), "tanh": tg.tanh,
    "arcsinh": tg.arcsinh, "arccosh": lambda a: tg.arccosh(_pos(a) + 1.0), "arctanh": lambda a: tg.arctanh(_unit(a)),
    "sigmoid": tg.sigmoid, "softplus": tg.softplus, "erf": tg.erf, "erfc": tg.erfc,
    "gammaln": lambda a: tg.gammaln(_pos(a)), "floor": lambda a: tg.floor(a) + a, "ceil": lambda a: tg.ceil(a) * a,
    "round": lambda a: tg.round(a * 3) + a, "relu": lambda a: tg.relu(a + 0.1),
    "softmax": lambda a: tg.softmax(a, axis=-1), "log_softmax": lambda a: tg.log_softmax(a, axis=0),
    "cumsum": lambda a: tg.cumsum(a, axis=0), "cumprod": lambda a: tg.cumprod(tg.tanh(a) + 1.0, axis=-1),
    "roll": lambda a: tg.roll(a, 1, axis=0), "cast": lambda a: tg.cast(tg.cast(a * 4, "int64"), "float64") + a,
    "clip": lambda a: tg.clip(a, -0.5, 0.7), "specify_shape": lambda a: tg.specify_shape(a, (N,) * a.ndim),
    "copy": lambda a: a.copy(), "int_div": lambda a: tg.int_div(a, 0.7) + a, "mod": lambda a: tg.mod(a, 0.7),
}
_BIN = {
    "add": tg.add, "sub": tg.sub, "mul": tg.mul, "true_div": lambda a, b: tg.true_div(a, _pos(b)),
    "int_div": lambda a, b: tg.int_div(a, _pos(b)) * b + a, "mod": lambda a, b: tg.mod(a, _pos(b)),
    "pow": lambda a, b: tg.pow(_pos(a), tg.tanh(b)), "maximum": tg.maximum, "minimum": tg.minimum,
    "arctan2": tg.arctan2, "hypot": tg.hypot, "switch": lambda a, b: tg.switch(tg.lt(a, b), a * b, tg.sin(b)),
    "where_logic": lambda a, b: (tg.where(tg.logical_and(tg.ge(a, -0.5), tg.logical_not(tg.eq(a, b))), a, b)
                                 + tg.where(tg.logical_or(tg.gt(a, 0), tg.le(b, 0)), b, 0.0)
                                 + tg.where(tg.neq(a, 0.0), a, 1.0)),
    "clip": lambda a, b: tg.clip(a, b - 0.5, b + 0.5),
}
_V2M = {
    "outer": lambda a, b: tg.outer(a, b), "diag": lambda a, b: tg.diag(a) + b[None, :],
    "alloc": lambda a, b: tg.alloc(a.sum(), N, N) * b, "broadcast_to": lambda a, b: tg.broadcast_to(a, (N, N)) * b[:, None],
    "stack": lambda a, b: tg.concatenate([tg.stack([a, b]), tg.stack([b * a, a - b], axis=0)], axis=0),
    "repeat_tile": lambda a, b: tg.reshape(tg.repeat(a, 4) * tg.tile(b, 4), (N, N)),
    "expand_dims": lambda a, b: tg.expand_dims(a, 1) * tg.expand_dims(b, 0),
    "dimshuffle": lambda a, b: a.dimshuffle(0, "x") + b.dimshuffle("x", 0),
    "join": lambda a, b: tg.join(0, a, b).reshape((2, N)).T.dot(tg.ones((2, N))),
}
_M2V = {
    "sum": lambda A: A.sum(axis=0), "prod": lambda A: (tg.tanh(A) + 1.5).prod(axis=1), "max": lambda A: A.max(axis=0),
    "min": lambda A: A.min(axis=1), "mean": lambda A: A.mean(axis=1), "var": lambda A: A.var(axis=0),
    "std": lambda A: A.std(axis=1), "logsumexp": lambda A: tg.logsumexp(A, axis=0), "diagonal": lambda A: tg.diagonal(A),
    "flatten": lambda A: A.flatten()[::4], "trace": lambda A: tg.trace(A) * tg.ones((N,)),
    "dot": lambda A: tg.dot(A, A[0]), "matmul": lambda A: tg.matmul(A, A)[:, 1],
    "tensordot": lambda A: tg.tensordot(A, A, axes=[[0], [1]])[2],
    "det": lambda A: la.det(A + 3 * tg.eye(N)) * tg.ones((N,)), "slogdet": lambda A: la.slogdet(A + 3 * tg.eye(N))[1] * A[1],
    "inv": lambda A: la.inv(A + 3 * tg.eye(N))[0], "solve": lambda A: la.solve(A + 3 * tg.eye(N), A[:, 2]),
    "cholesky": lambda A: la.cholesky(tg.dot(A, A.T) + tg.eye(N))[:, 1],
    "split": lambda A: tg.split(A.flatten(), [4, 12], 2)[0], "reshape": lambda A: A.reshape((2, 8)).sum(axis=0)[:4],
    "transpose": lambda A: A.T[1], "squeeze": lambda A: tg.squeeze(A[:, 1:2], axis=1),
    "advidx": lambda A: A.flatten()[tg.constant(np.array([0, 5, 5, -1]))],
    "take": lambda A: tg.take(A, tg.constant(np.array([-1, 2, 2, 0])), axis=1)[1],
    "inc_adv": lambda A: tg.inc_subtensor(A[tg.constant(np.array([1, 1, 3]))], A[0:3] * 2.0)[:, 0],
    "set_basic": lambda A: tg.set_subtensor(A[1:3, 0], A[0, 0:2] ** 2)[:, 0],
    "set_adv": lambda A: tg.set_subtensor(A[tg.constant(np.array([2, 0]))], A[1:3])[:, 3],
    "argmax": lambda A: A[tg.argmax(A, axis=0)].sum(axis=0) + tg.cast(tg.argmin(A, axis=1), "float64"),
    "any_all": lambda A: tg.switch(tg.any(A > 0, axis=0), A[0], A[1]) + tg.cast(tg.all(A > -5, axis=1), "float64") * A[2],
    "shape_ctors": lambda A: (A[0] * tg.cast(tg.shape(A)[0], "float64") + tg.arange(4) * A[1] + tg.zeros_like(A[0])
                              + tg.ones_like(A[1]) * A[3] + tg.full((N,), 2.0) * tg.zeros((N,))),
    "eye": lambda A: (tg.eye(N) * A).sum(axis=0),
}


def _family_outputs(family, x, A, y):
    if family == "unary":
        return [f(v).flatten() for f in _UNARY.values() for v in (x, A)]
    if family == "binary":
        return [f(a, b).flatten() for f in _BIN.values() for a, b in ((x, y), (A, A.T * 0.5))]
    if family == "vec_to_mat":
        return [f(x, y).flatten() for f in _V2M.values()]
    return [f(A) for f in _M2V.values()]


@pytest.mark.parametrize("family", ["unary", "binary", "vec_to_mat", "mat_to_vec"])
def test_adjoint_identity_every_op(family):
    x, A, y = tg.vector("x"), tg.matrix("A"), tg.vector("y")
    ins = [x, A, y]
    out = tg.concatenate(_family_outputs(family, x, A, y))
    u = [tg.tensor("u" + v.name, shape=(None,) * v.ndim) for v in ins]
    w = tg.vector("w")
    R = tg.Rop(out, ins, u, disconnected_outputs="ignore")
    L = tg.Lop(out, ins, w, disconnected_inputs="ignore")
    r = rng(17)
    vals = [r.normal(size=N), r.normal(size=(N, N)), r.normal(size=N)]
    uv = [r.normal(size=np.shape(v)) for v in vals]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fpy = tg.function(ins, out, device="python", on_unused_input="ignore")
    wv = r.normal(size=fpy(*vals).shape)
    eps = 1e-6
    fdv = (np.sum(fpy(*[v + eps * d for v, d in zip(vals, uv)]) * wv)
           - np.sum(fpy(*[v - eps * d for v, d in zip(vals, uv)]) * wv)) / (2 * eps)
    for c in FAST:
        got = run(ins + u + [w], [out, R] + list(L), vals + uv + [wv], c)
        np.testing.assert_allclose(got[0], fpy(*vals), rtol=1e-12, atol=1e-14)
        lhs = np.sum(wv * got[1])
        rhs = sum(np.sum(g * d) for g, d in zip(got[2:], uv))
        assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-10), c
        assert lhs == pytest.approx(fdv, rel=1e-6, abs=1e-7), c


def test_modifiers_rop_and_hvp():
    x, u, w = tg.vector("x"), tg.vector("u"), tg.vector("w")
    xv, uv, wv = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 3.0]), np.ones(3)
    for mod in (tg.zero_grad, tg.disconnected_grad):
        y = tg.sin(mod(x * x)) + x
        outs = [tg.grad((y * w).sum(), x), tg.Rop(y, x, u), tg.hessian_vector_product((y * w).sum(), x, u)]
        check_all([x, u, w], outs, [xv, uv, wv], [np.ones(3), uv, np.zeros(3)])
    y = tg.sin(tg.grad_scale(x * x, -2.0)) + x
    d = np.cos(xv**2) * 2 * xv
    check_all([x, u, w], [tg.grad(y.sum(), x), tg.Rop(y, x, u)], [xv, uv, wv], [1 - 2 * d, (1 - 2 * d) * uv])


# --------------------------------------------------------------------------- 6. one function, several shapes
_SHAPE_CASES = {
    "softmax": ([(3, 4), (5, 2), (1, 7), (2, 1)],
                lambda M: (tg.softmax(M) * tg.arange(M.shape[1])).sum(),
                lambda M: (sp.softmax(M, axis=-1) * np.arange(M.shape[1])).sum()),
    "reductions": ([(3, 4), (6, 2), (1, 1)],
                   lambda M: (tg.cumprod(M, axis=0) * M.mean(axis=1, keepdims=True)).sum() + M.var(axis=0).sum()
                   + tg.logsumexp(M, axis=1).sum() + M.max(axis=0).sum(),
                   lambda M: (np.cumprod(M, axis=0) * M.mean(axis=1, keepdims=True)).sum() + M.var(axis=0).sum()
                   + sp.logsumexp(M, axis=1).sum() + M.max(axis=0).sum()),
    "reshape": ([(3, 4), (5, 2), (2, 6)],
                lambda M: (M.flatten()[1:] * M.T.flatten()[:-1]).sum() + (M.reshape((M.shape[0] * M.shape[1],)) ** 3).sum(),
                lambda M: (M.flatten()[1:] * M.T.flatten()[:-1]).sum() + (M.reshape(-1) ** 3).sum()),
    "linalg": ([(3, 4), (5, 2), (2, 6)],
               lambda M: tg.linalg.det(tg.dot(M, M.T) + tg.eye(M.shape[0]))
               + tg.linalg.solve(tg.dot(M, M.T) + tg.eye(M.shape[0]), M[:, 0]).sum(),
               lambda M: np.linalg.det(M @ M.T + np.eye(len(M))) + np.linalg.solve(M @ M.T + np.eye(len(M)), M[:, 0]).sum()),
}


_SHAPE_CONFIGS = [(case, c) for case in _SHAPE_CASES for c in [PY, INTERP, dict(device="cpu")]]
_SHAPE_CONFIGS += [("softmax", PROGRAM), ("reshape", PROGRAM)]  # the program tier: one signature per shape


@pytest.mark.parametrize("case,config", _SHAPE_CONFIGS, ids=[f"{a}-{'/'.join(c.values())}" for a, c in _SHAPE_CONFIGS])
def test_one_function_several_shapes(case, config):
    shapes, tgf, npf = _SHAPE_CASES[case]
    M, U = tg.matrix("M"), tg.matrix("U")
    cost = tgf(M)
    g = tg.grad(cost, M)
    outs = [cost, g, tg.Rop(cost, M, U), tg.hessian_vector_product(cost, M, U)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = tg.function([M, U], outs, **config)
    r = rng(18)
    for _ in range(2):
        for shp in shapes:
            Mv, Uv = r.normal(size=shp), r.normal(size=shp)
            G = fd(npf, [Mv], 0)
            hv = np.tensordot(fd(lambda m: fd(npf, [m], 0, 1e-5), [Mv], 0, 1e-4), Uv, axes=2)
            got = f(Mv, Uv)
            np.testing.assert_allclose(got[0], npf(Mv), rtol=1e-10)
            np.testing.assert_allclose(got[1], G, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got[2], np.sum(G * Uv), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got[3], hv, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_runtime_broadcasting_changes_between_calls(config):
    A, B, UA, UB = tg.matrix("A"), tg.matrix("B"), tg.matrix("UA"), tg.matrix("UB")
    cost = (tg.sin(A * B) + A / (1 + B * B)).sum() + (tg.maximum(A, B) * tg.exp(A)).sum()

    def C(a, b):
        return (np.sin(a * b) + a / (1 + b * b)).sum() + (np.maximum(a, b) * np.exp(a)).sum()

    f = tg.function([A, B, UA, UB], [cost] + tg.grad(cost, [A, B]) + [tg.Rop(cost, [A, B], [UA, UB])], **config)
    r = rng(19)
    for sa, sb in [((3, 4), (3, 4)), ((1, 4), (3, 4)), ((3, 1), (1, 4)), ((3, 4), (1, 1)), ((2, 5), (2, 5))]:
        av, bv, ua, ub = r.normal(size=sa), r.normal(size=sb), r.normal(size=sa), r.normal(size=sb)
        G = [fd(C, [av, bv], 0), fd(C, [av, bv], 1)]
        got = f(av, bv, ua, ub)
        np.testing.assert_allclose(got[0], C(av, bv), rtol=1e-12)
        np.testing.assert_allclose(got[1], G[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[2], G[1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[3], np.sum(G[0] * ua) + np.sum(G[1] * ub), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_hessian_follow_the_shapes(vectorize):
    x, M = tg.vector("x"), tg.matrix("M")
    J = tg.jacobian(tg.tanh(tg.dot(M, x)) * x.sum(), [x, M], vectorize=vectorize)
    H = tg.hessian((tg.tanh(tg.dot(M, x)) ** 2).sum(), [x, M], vectorize=vectorize)

    def F(x, M):
        return np.tanh(M @ x) * x.sum()

    def C(x, M):
        return (np.tanh(M @ x) ** 2).sum()

    r = rng(20)
    for c in FAST:
        f = tg.function([x, M], J + H, **c)
        for n, m in [(3, 2), (2, 5), (1, 1), (3, 2)]:
            xv, Mv = r.normal(size=n), r.normal(size=(m, n))
            got = f(xv, Mv)
            G = [lambda x, M, k=k: fd(C, [x, M], k, 1e-5) for k in range(2)]
            ex = [fd(F, [xv, Mv], 0), fd(F, [xv, Mv], 1), fd(G[0], [xv, Mv], 0, 1e-4), fd(G[1], [xv, Mv], 1, 1e-4)]
            for a, b in zip(got, ex):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("checkpoint", ["all", "binomial"])
def test_scan_gradients_follow_the_shapes(checkpoint):
    x0, W, seq = tg.vector("x0"), tg.matrix("W"), tg.matrix("seq")
    traj, _ = tg.scan(lambda s, h, W: tg.tanh(tg.dot(W, h) + s), sequences=[seq], outputs_info=[x0],
                      non_sequences=[W], checkpoint=checkpoint)
    cost = (traj**2).sum() + traj[-1].sum() * 3.0 + traj[2, 1]
    g = tg.grad(cost, [x0, W, seq])

    def F(x0, W, seq):
        h, hs = x0, []
        for s in seq:
            h = np.tanh(W @ h + s)
            hs.append(h)
        hs = np.array(hs)
        return (hs**2).sum() + hs[-1].sum() * 3.0 + hs[2, 1]

    r = rng(21)
    for c in FAST:
        f = tg.function([x0, W, seq], [cost] + g, **c)
        for n, T in [(3, 5), (2, 7), (4, 3)]:
            vals = [r.normal(size=n), r.normal(size=(n, n)) * 0.5, r.normal(size=(T, n))]
            got = f(*vals)
            np.testing.assert_allclose(got[0], F(*vals), rtol=1e-12)
            for k in range(3):
                np.testing.assert_allclose(got[1 + k], fd(F, vals, k), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- kinks and conventions
def test_kink_conventions_agree_between_lop_and_rop():
    x, y, u, v, M, UM, w = (tg.vector("x"), tg.vector("y"), tg.vector("u"), tg.vector("v"), tg.matrix("M"),
                            tg.matrix("UM"), tg.vector("w"))
    xv, uv = np.array([1.0, 3.0, 3.0, 0.0]), np.array([1.0, 10.0, 100.0, 1000.0])
    # max with ties: one element (the first maximum) gets the gradient and gives the tangent
    check_all([x, u], [tg.grad(x.max(), x), tg.Rop(x.max(), x, u)], [xv, uv], [[0.0, 1.0, 0.0, 0.0], 10.0])
    Mv = np.array([[2.0, 2.0, 1.0], [0.0, 5.0, 5.0]])
    UMv = np.arange(6.0).reshape(2, 3) + 1
    check_all([M, UM, w], [tg.Lop(M.max(axis=1), M, w), tg.Rop(M.max(axis=1), M, UM)], [Mv, UMv, [1.0, 1.0]],
              [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [1.0, 5.0]])
    # maximum/minimum ties: gradient and tangent of the first argument
    for op in (tg.maximum, tg.minimum):
        z = op(x, y)
        check_all([x, y, u, v], tg.grad(z.sum(), [x, y]) + [tg.Rop(z, [x, y], [u, v])], [xv, xv, uv, -uv],
                  [np.ones(4), np.zeros(4), uv])
    cv = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    c = tg.clip(x, 0.0, 1.0)
    check_all([x, u], [tg.grad(c.sum(), x), tg.Rop(c, x, u)], [cv, np.ones(5)], [[0.0, 1.0, 1.0, 1.0, 0.0]] * 2)
    z = np.array([0.0, 1.0, -1.0])
    check_all([x, u], [tg.grad((tg.abs(x) + tg.relu(x)).sum(), x), tg.Rop(tg.abs(x) + tg.relu(x), x, u)],
              [z, np.ones(3)], [[0.0, 2.0, -1.0], [0.0, 2.0, -1.0]])
    sw = tg.switch(x > 0, tg.log(x), 1.0)
    check_all([x, u], [tg.grad(sw.sum(), x), tg.Rop(sw, x, u)], [[-1.0, 0.0, 4.0], np.ones(3)], [[0.0, 0.0, 0.25]] * 2)
    check_all([x, y], tg.grad((tg.int_div(x, y) + tg.mod(x, y)).sum(), [x, y]), [[5.0, -5.0, 7.5], [2.0, 2.0, -2.0]],
              [[1.0, 1.0, 1.0], [-2.0, 3.0, 4.0]])


# --------------------------------------------------------------------------- bugs this file's probes found (fixed)
@pytest.mark.parametrize("route", ["auto", "symbolic"])
def test_lop_of_an_f_that_another_f_reads_keeps_its_seed_on_every_route(route):
    x, v1, v2 = tg.dvector("x"), tg.dvector("v1"), tg.dvector("v2")
    a = x * 2.0
    b = a * 3.0
    f = tg.function([x, v1, v2], tg.Lop([a, b], x, [v1, v2]), on_unused_input="ignore", route=route)
    np.testing.assert_array_equal(f([1.0, 1.0], [1.0, 1.0], [1.0, 1.0]), [2.0, 2.0])   # Aesara: a keeps its seed


@pytest.mark.parametrize("route", ["auto", "symbolic"])
def test_rop_with_a_wrt_listed_twice_takes_its_first_point(route):
    x, u, w = tg.dvector("x"), tg.dvector("u"), tg.dvector("w")
    f = tg.function([x, u, w], tg.Rop(x * 3.0, [x, x], [u, w]), on_unused_input="ignore", route=route)
    np.testing.assert_array_equal(f([1.0], [1.0], [10.0]), [3.0])


def test_hvp_holds_consider_constant_in_both_passes():
    x, p = tg.dvector("x"), tg.dvector("p")
    h = tg.exp(x)
    c = (h * x * x).sum()
    H = tg.function([x, p], tg.dot(tg.hessian(c, x, consider_constant=[h]), p))
    HV = tg.function([x, p], tg.hessian_vector_product(c, x, p, consider_constant=[h]))
    xv, pv = np.array([0.5, 1.0]), np.array([1.0, 0.0])
    np.testing.assert_allclose(HV(xv, pv), [2 * np.exp(0.5), 0.0], rtol=1e-14)     # d2/dx2 (h x^2) with h frozen
    np.testing.assert_allclose(HV(xv, pv), H(xv, pv), rtol=1e-14)


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_of_an_integer_expression_is_zeros(vectorize):
    x = tg.dvector("x")
    J = tg.jacobian(tg.cast(x * 2, "int64"), x, disconnected_inputs="ignore", vectorize=vectorize)
    got = tg.function([x], J)(np.array([1.0, 2.0, 3.0]))
    assert got.shape == (3, 3) and got.dtype == np.float64 and not got.any()
