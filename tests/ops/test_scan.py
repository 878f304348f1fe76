"""Family tests of ``tg.scan`` (``tapegrad/ops/scan.py``): API, values, Lop/Rop/HVP, errors."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import DisconnectedInputError
from tapegrad.ops.scan import Scan, ScanGrad, ScanTrajectory
from tests.ops.checks import central_grad

DT = 0.01
RNG = np.random.default_rng(20260)


def fn(inputs, outputs):
    return tg.function(inputs, outputs, device="python")


def l96(u, F):
    return u + DT * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)


def np_l96(u, F):
    return u + DT * ((np.roll(u, -1) - np.roll(u, 2)) * np.roll(u, 1) - u + F)


# --------------------------------------------------------------------------- the four step functions
def case_scalar():
    x0, xs = tg.dscalar("x0"), tg.dvector("xs")
    out, _ = tg.scan(lambda x, h: tg.sin(h) * x + 0.5 * h, sequences=xs, outputs_info=x0)

    def ref(x0v, xsv):
        h, acc = x0v, []
        for x in xsv:
            h = np.sin(h) * x + 0.5 * h
            acc.append(h)
        return np.array(acc)

    return [x0, xs], out, ref, [np.asarray(0.3), RNG.uniform(-1, 1, 6)]


def case_vector_param():
    x0, a = tg.dvector("x0"), tg.dvector("a")
    out, _ = tg.scan(lambda h, a: tg.tanh(a * h) + 0.2, outputs_info=x0, non_sequences=a, n_steps=5)

    def ref(x0v, av):
        h, acc = x0v, []
        for _ in range(5):
            h = np.tanh(av * h) + 0.2
            acc.append(h)
        return np.array(acc)

    return [x0, a], out, ref, [RNG.uniform(-1, 1, 4), RNG.uniform(-2, 2, 4)]


def case_matrix():
    X0, W, S = tg.dmatrix("X0"), tg.dmatrix("W"), tg.dtensor3("S")
    out, _ = tg.scan(lambda s, X, W: tg.tanh(W @ X + s), sequences=S, outputs_info=X0, non_sequences=W)

    def ref(X0v, Wv, Sv):
        X, acc = X0v, []
        for s in Sv:
            X = np.tanh(Wv @ X + s)
            acc.append(X)
        return np.array(acc)

    return [X0, W, S], out, ref, [RNG.uniform(-1, 1, (3, 2)), RNG.uniform(-1, 1, (3, 3)), RNG.uniform(-1, 1, (4, 3, 2))]


def case_lorenz():
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    out, _ = tg.scan(l96, outputs_info=u0, non_sequences=F, n_steps=20)

    def ref(u0v, Fv):
        u, acc = u0v, []
        for _ in range(20):
            u = np_l96(u, Fv)
            acc.append(u)
        return np.array(acc)

    return [u0, F], out, ref, [RNG.uniform(-2, 2, 8), np.asarray(8.0)]


CASES = {"scalar": case_scalar, "vector_param": case_vector_param, "matrix": case_matrix, "lorenz": case_lorenz}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_match_numpy_loop(case):
    xs, out, ref, vals = CASES[case]()
    np.testing.assert_allclose(fn(xs, out)(*vals), ref(*vals), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_grad_rop_adjoint(case):
    xs, out, ref, vals = CASES[case]()
    v = RNG.standard_normal(np.shape(ref(*vals)))
    cost = (out * v).sum() + (out[-1] ** 2).sum()  # the trajectory and the last state
    grads = fn(xs, tg.grad(cost, xs))(*vals)

    def np_cost(*a):
        r = ref(*a)
        return float((r * v).sum() + (r[-1] ** 2).sum())

    for g, fd in zip(grads, central_grad(np_cost, vals)):
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)
    # Rop vs the finite-difference JVP, and the adjoint identity <v, J u> = <J^T v, u>
    us = [x.type() for x in xs]
    uvals = [RNG.standard_normal(np.shape(a)) for a in vals]
    jvp = fn(xs + us, tg.Rop(out, xs, us))(*vals, *uvals)
    h = 1e-6
    fd = (ref(*[a + h * u for a, u in zip(vals, uvals)]) - ref(*[a - h * u for a, u in zip(vals, uvals)])) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-7)
    vt = tg.dtensor3("v") if out.ndim == 3 else out.type()
    vjp = fn(xs + [vt], tg.Lop(out, xs, vt))(*vals, v)
    lhs = float((v * jvp).sum())
    rhs = sum(float((g * u).sum()) for g, u in zip(vjp, uvals))
    assert abs(lhs - rhs) <= 1e-11 * (abs(lhs) + abs(rhs) + 1)


@pytest.mark.parametrize("case", ["vector_param", "matrix", "lorenz"])
def test_hvp_through_scan(case):
    xs, out, ref, vals = CASES[case]()
    cost = (out[-1] ** 2).sum() + (tg.sin(out)).sum()
    ps = [x.type() for x in xs]
    pvals = [RNG.standard_normal(np.shape(a)) for a in vals]
    hv = fn(xs + ps, tg.hessian_vector_product(cost, xs, ps))(*vals, *pvals)
    g = fn(xs, tg.grad(cost, xs))
    h = 1e-5
    gp = g(*[a + h * p for a, p in zip(vals, pvals)])
    gm = g(*[a - h * p for a, p in zip(vals, pvals)])
    for k in range(len(xs)):
        np.testing.assert_allclose(hv[k], (gp[k] - gm[k]) / (2 * h), rtol=1e-6, atol=1e-7)


def test_hessian_through_scan_uses_reverse_over_reverse():
    xs, out, ref, vals = CASES["vector_param"]()
    cost = (out[-1] ** 3).sum()
    H = fn(xs, tg.hessian(cost, xs[1]))(*vals)
    g = fn(xs, tg.grad(cost, xs[1]))
    h = 1e-5
    fd = np.zeros((4, 4))
    for e in range(4):
        p = [a.copy() for a in vals]
        m = [a.copy() for a in vals]
        p[1][e] += h
        m[1][e] -= h
        fd[:, e] = (g(*p) - g(*m)) / (2 * h)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- API
def test_returns_outputs_and_updates_like_aesara():
    x0 = tg.dvector("x0")
    res = tg.scan(lambda h: 2 * h, outputs_info=x0, n_steps=3)
    assert isinstance(res, tuple) and len(res) == 2
    out, updates = res
    assert isinstance(out, tg.Variable) and isinstance(updates, OrderedDict) and not updates
    assert out.ndim == 2 and out.type.shape[0] == 3
    only = tg.scan(lambda h: 2 * h, outputs_info=x0, n_steps=3, return_updates=False)
    assert isinstance(only, tg.Variable)
    listed, _ = tg.scan(lambda h: 2 * h, outputs_info=x0, n_steps=3, return_list=True)
    assert isinstance(listed, list) and len(listed) == 1
    np.testing.assert_array_equal(fn([x0], out)(np.ones(2)), [[2, 2], [4, 4], [8, 8]])


def test_multiple_outputs_mixed_order_and_fn_returning_updates():
    xs, c = tg.dvector("xs"), tg.dscalar("c")
    # outputs_info: [None, init]: the non-recurrent output comes first
    (y, s), upd = tg.scan(lambda x, s, c: ([x * s, s + x * c], {}), sequences=xs, outputs_info=[None, 1.0],
                          non_sequences=c)
    assert upd == {}
    yv, sv = fn([xs, c], [y, s])(np.array([1.0, 2.0, 3.0]), 2.0)
    np.testing.assert_array_equal(sv, [3.0, 7.0, 13.0])
    np.testing.assert_array_equal(yv, [1.0, 6.0, 21.0])


def test_outputs_info_dict_and_taps():
    x0 = tg.dscalar("x0")
    out, _ = tg.scan(lambda h: h + 1, outputs_info=dict(initial=x0, taps=[-1]), n_steps=2)
    np.testing.assert_array_equal(fn([x0], out)(1.0), [2.0, 3.0])
    # other taps: tests/ops/test_scan_taps.py
    fib, _ = tg.scan(lambda a, b: a + b, outputs_info=dict(initial=tg.constant(np.array([0.0, 1.0])), taps=[-2, -1]),
                     n_steps=6)
    np.testing.assert_array_equal(fn([], fib)(), [1.0, 2.0, 3.0, 5.0, 8.0, 13.0])


def test_closure_variables_become_implicit_non_sequences():
    x0, W = tg.dvector("x0"), tg.dmatrix("W")
    b = tg.shared(np.array([0.5, -0.5]), name="b")
    out, _ = tg.scan(lambda h: tg.tanh(W.T @ h + b), outputs_info=x0, n_steps=3)  # W.T and b from outside
    op = out.owner.op
    assert isinstance(op, Scan) and op.n_nonseq == 2
    assert out.owner.inputs[-1] is b
    g = tg.grad((out ** 2).sum(), [W, b])
    Wv, xv = RNG.standard_normal((2, 2)), RNG.standard_normal(2)

    def ref(Wv, bv):
        h, s = xv, 0.0
        for _ in range(3):
            h = np.tanh(Wv.T @ h + bv)
            s += (h ** 2).sum()
        return s

    gW, gb = fn([x0, W], g)(xv, Wv)
    fdW, fdb = central_grad(ref, [Wv, b.get_value()])
    np.testing.assert_allclose(gW, fdW, rtol=1e-7)
    np.testing.assert_allclose(gb, fdb, rtol=1e-7)
    with pytest.raises(ValueError, match="strict"):
        tg.scan(lambda h: h @ W, outputs_info=x0, n_steps=2, strict=True)


def test_symbolic_n_steps_and_sequences_longer_than_n_steps():
    x0, xs, n = tg.dscalar("x0"), tg.dvector("xs"), tg.iscalar("n")
    out, _ = tg.scan(lambda x, h: h + x, sequences=xs, outputs_info=x0, n_steps=n)
    f = fn([x0, xs, n], out)
    np.testing.assert_array_equal(f(0.0, [1.0, 2.0, 3.0], 2), [1.0, 3.0])
    np.testing.assert_array_equal(f(0.0, [1.0, 2.0, 3.0], 0), np.zeros(0))
    with pytest.raises(ValueError, match="n_steps=4 but sequence 0 has only 3"):
        f(0.0, [1.0, 2.0, 3.0], 4)
    g = fn([x0, xs, n], tg.grad(out.sum(), xs))(0.0, [1.0, 2.0, 3.0], 2)
    np.testing.assert_array_equal(g, [2.0, 1.0, 0.0])  # unused entries get zero gradient


def test_sequences_limit_length_and_go_backwards():
    a, b = tg.dvector("a"), tg.dvector("b")
    out, _ = tg.scan(lambda x, y: x * y, sequences=[a, b])
    np.testing.assert_array_equal(fn([a, b], out)([1.0, 2.0, 3.0], [4.0, 5.0]), [4.0, 10.0])
    back, _ = tg.scan(lambda x, h: h * 10 + x, sequences=a, outputs_info=np.float64(0.0), go_backwards=True)
    np.testing.assert_array_equal(fn([a], back)([1.0, 2.0, 3.0]), [3.0, 32.0, 321.0])


def test_last_state_by_indexing_keeps_only_the_last_step():
    xs, out, ref, vals = CASES["lorenz"]()
    assert isinstance(out, ScanTrajectory)
    last = out[-1]
    assert isinstance(last.owner.op, Scan) and all(last.owner.op.keep_last)
    assert out[-1] is last  # one sibling node per loop
    np.testing.assert_allclose(fn(xs, last)(*vals), ref(*vals)[-1], rtol=1e-14)
    np.testing.assert_allclose(fn(xs, out[-2])(*vals), ref(*vals)[-2], rtol=1e-14)  # plain indexing
    x0 = tg.dvector("x0")
    n = tg.iscalar("n")
    traj, _ = tg.scan(lambda h: h + 1, outputs_info=x0, n_steps=n)
    with pytest.raises(IndexError):
        fn([x0, n], traj[-1])(np.zeros(2), 0)


def test_gradient_ops_in_graph():
    xs, out, ref, vals = CASES["matrix"]()
    g = tg.grad(out.sum(), xs)
    assert any(isinstance(n.op, ScanGrad) for n in tg.graph.toposort(g))
    assert repr(out.owner.op).startswith("Scan{")
    assert out.owner.op.encode()[0][:4] == (1, 1, 1, 0)


# --------------------------------------------------------------------------- disconnected / null
def test_disconnected_sequence_and_non_sequence():
    xs, unused_seq, p, unused_p, x0 = tg.dvector("xs"), tg.dvector("u"), tg.dscalar("p"), tg.dscalar("q"), tg.dscalar("x0")
    out, _ = tg.scan(lambda x, u, h, p, q: h * p + x, sequences=[xs, unused_seq], outputs_info=x0,
                     non_sequences=[p, unused_p])
    cost = out.sum()
    with pytest.raises(DisconnectedInputError):
        tg.grad(cost, unused_seq)
    with pytest.raises(DisconnectedInputError):
        tg.grad(cost, unused_p)
    gz = tg.grad(cost, [unused_seq, unused_p], disconnected_inputs="ignore")
    vals = tg.function([unused_seq, unused_p], gz, device="python")([3.0, 4.0], 1.0)
    np.testing.assert_array_equal(vals[0], [0.0, 0.0])
    assert vals[1] == 0.0
    assert tg.grad(cost, unused_p, disconnected_inputs="ignore", return_disconnected="none") is None
    pattern = out.owner.op.connection_pattern(out.owner)
    assert [row[0] for row in pattern] == [False, True, False, True, True, False]  # n_steps, xs, u, x0, p, q
    # Rop: a tangent only on an unused input gives no tangent
    with pytest.raises(DisconnectedInputError):
        tg.Rop(out, unused_p, tg.dscalar())


def test_connection_through_the_recurrence_only():
    # p reaches y only through the state carried to the next step
    x0, p = tg.dscalar("x0"), tg.dscalar("p")
    (s, y), _ = tg.scan(lambda s, p: [s * p, s + 1.0], outputs_info=[x0, None], non_sequences=p, n_steps=3)
    pattern = s.owner.op.connection_pattern(s.owner)
    assert pattern[2] == [True, True] and pattern[1] == [True, True]
    g = fn([x0, p], tg.grad(y.sum(), p))(1.0, 2.0)
    # y = [1, x0 p, x0 p^2] + 1 -> dy/dp = 0 + 1 + 2 p = 5
    assert g == pytest.approx(5.0)


def test_integer_state_gets_zero_gradient():
    x0, xs = tg.dscalar("x0"), tg.dvector("xs")
    k0 = tg.constant(np.asarray(0, dtype="int64"))
    (h, k), _ = tg.scan(lambda x, h, k: [h * x, k + 1], sequences=xs, outputs_info=[x0, k0])
    vals = fn([x0, xs], [h, k])(2.0, [1.0, 3.0])
    np.testing.assert_array_equal(vals[1], [1, 2])
    assert fn([x0, xs], tg.grad(h.sum() + k.sum(), x0))(2.0, [1.0, 3.0]) == pytest.approx(4.0)


# --------------------------------------------------------------------------- errors
def test_errors():
    x0, xs = tg.dvector("x0"), tg.dvector("xs")
    with pytest.raises(ValueError, match="n_steps"):
        tg.scan(lambda h: h, outputs_info=x0)
    with pytest.raises(TypeError, match="same dtype"):
        tg.scan(lambda h: h.astype("float32"), outputs_info=x0, n_steps=2)
    with pytest.raises(ValueError, match="outputs_info has 2"):
        tg.scan(lambda h, g: h, outputs_info=[x0, x0], n_steps=2)
    with pytest.raises(NotImplementedError, match="updates"):
        s = tg.shared(np.zeros(2))
        tg.scan(lambda h: (h, {s: s + 1}), outputs_info=x0, n_steps=2)
    with pytest.raises(NotImplementedError, match="truncate_gradient"):
        tg.scan(lambda h: h, outputs_info=x0, n_steps=2, truncate_gradient=3)
    with pytest.raises(ValueError, match="checkpoint"):
        tg.scan(lambda h: h, outputs_info=x0, n_steps=2, checkpoint="some")
    with pytest.raises(ValueError, match="snapshots"):
        tg.scan(lambda h: h, outputs_info=x0, n_steps=2, checkpoint="binomial", snapshots=0)
    with pytest.raises(ValueError, match="at least one dimension"):
        tg.scan(lambda x: x, sequences=tg.dscalar())
    grow, _ = tg.scan(lambda h: tg.concatenate([h, h]), outputs_info=x0, n_steps=2)
    with pytest.raises(ValueError, match="must keep its shape"):
        fn([x0], grow)(np.ones(2))
