"""``tg.scan`` taps (Aesara's ``dict(input=x, taps=[...])`` and ``dict(initial=y0, taps=[...])``).

A sequence with taps ``[d_1, ..]`` gives ``fn`` the rows ``x[t + d_i - min(d, 0)]`` (Aesara's cut: the loop
runs ``len(x) - (max(d, 0) - min(d, 0))`` steps); an output with taps ``[-k_1, ..]`` gives ``fn`` the values
``k_i`` steps back, the first ``max k`` of them taken from the rows of ``initial``.  Values against NumPy loops,
gradients against finite differences, Rop against Lop, HVPs against differences of the gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tests.ops.checks import central_grad

RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------- cases: graph, NumPy reference, values
def case_second_order():
    """A damped oscillator, y[t] = a y[t-1] - b y[t-2] + c (taps [-2, -1] on vectors)."""
    y0, a, b = tg.dmatrix("y0"), tg.dscalar("a"), tg.dvector("b")
    out, _ = tg.scan(lambda y2, y1, a, b: a * y1 - b * y2 + tg.sin(y1) * 0.1,
                     outputs_info=dict(initial=y0, taps=[-2, -1]), non_sequences=[a, b], n_steps=7)

    def ref(y0v, av, bv):
        hist = [y0v[0], y0v[1]]
        for _ in range(7):
            hist.append(av * hist[-1] - bv * hist[-2] + np.sin(hist[-1]) * 0.1)
        return np.array(hist[2:])

    return [y0, a, b], out, ref, [RNG.uniform(-1, 1, (2, 3)), np.asarray(1.3), RNG.uniform(0.2, 0.6, 3)]


def case_sparse_taps_in_given_order():
    """Taps [-1, -3] in that order: fn gets y[t-1] then y[t-3]; initial has 4 rows, the first 3 are used."""
    y0, w = tg.dmatrix("y0"), tg.dvector("w")
    out, _ = tg.scan(lambda y1, y3, w: tg.tanh(w * y1 + y3), outputs_info=dict(initial=y0, taps=[-1, -3]),
                     non_sequences=w, n_steps=5)

    def ref(y0v, wv):
        hist = list(y0v[:3])
        for _ in range(5):
            hist.append(np.tanh(wv * hist[-1] + hist[-3]))
        return np.array(hist[3:])

    return [y0, w], out, ref, [RNG.uniform(-1, 1, (4, 2)), RNG.uniform(-1, 1, 2)]


def case_sequence_taps():
    """A 3-point stencil along a sequence (taps [-1, 1, 0], in that order) feeding a running state."""
    x, s0 = tg.dvector("x"), tg.dscalar("s0")
    out, _ = tg.scan(lambda xm, xp, xc, s: s * 0.5 + xm * xp - tg.sin(xc),
                     sequences=dict(input=x, taps=[-1, 1, 0]), outputs_info=s0)

    def ref(xv, s0v):
        s, acc = s0v, []
        for t in range(1, len(xv) - 1):
            s = s * 0.5 + xv[t - 1] * xv[t + 1] - np.sin(xv[t])
            acc.append(s)
        return np.array(acc)

    return [x, s0], out, ref, [RNG.uniform(-1, 1, 7), np.asarray(0.2)]


def case_backwards_mixed():
    """go_backwards, a sequence with taps [-2, 0], a plain sequence, a two-step output, a one-step output."""
    x, z, y0, h0 = tg.dmatrix("x"), tg.dvector("z"), tg.dvector("y0"), tg.dscalar("h0")

    def step(x2, x0, zt, y2, y1, h):
        yn = 0.3 * y1 + 0.2 * y2 * x0[0] + x2[1] * zt
        return yn, h * 0.9 + tg.cos(yn)

    (ys, hs), _ = tg.scan(step, sequences=[dict(input=x, taps=[-2, 0]), z],
                          outputs_info=[dict(initial=y0, taps=[-2, -1]), h0], go_backwards=True)

    def ref(xv, zv, y0v, h0v):
        a, b = xv[:-2][::-1], xv[2:][::-1]     # taps -2 and 0, each cut reversed
        zr = zv[::-1]
        n = min(len(a), len(zr))
        hist, h, Y, H = [y0v[0], y0v[1]], h0v, [], []
        for t in range(n):
            yn = 0.3 * hist[-1] + 0.2 * hist[-2] * b[t][0] + a[t][1] * zr[t]
            h = h * 0.9 + np.cos(yn)
            hist.append(yn)
            Y.append(yn)
            H.append(h)
        return np.concatenate([np.array(Y), np.array(H)])

    out = tg.concatenate([ys, hs])
    return [x, z, y0, h0], out, ref, [RNG.uniform(-1, 1, (6, 2)), RNG.uniform(-1, 1, 5),
                                      RNG.uniform(-1, 1, 2), np.asarray(0.4)]


CASES = {f.__name__[5:]: f for f in [case_second_order, case_sparse_taps_in_given_order, case_sequence_taps,
                                     case_backwards_mixed]}


@pytest.mark.parametrize("device", ["python", "cpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradient(case, device):
    xs, out, ref, vals = CASES[case]()
    np.testing.assert_allclose(tg.function(xs, out, device=device)(*vals), ref(*vals), rtol=1e-13, atol=1e-14)
    w = RNG.standard_normal(np.shape(ref(*vals)))
    cost = tg.sum(out * w) + tg.sum(out[-1] ** 2)
    grads = tg.function(xs, tg.grad(cost, xs), device=device)(*vals)

    def np_cost(*a):
        r = ref(*a)
        return float((r * w).sum() + (r[-1] ** 2).sum())

    for g, want in zip(grads, central_grad(np_cost, vals)):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rop_matches_lop_and_differences(case):
    xs, out, ref, vals = CASES[case]()
    us = [x.type() for x in xs]
    uvals = [RNG.standard_normal(np.shape(a)) for a in vals]
    jvp = tg.function(xs + us, tg.Rop(out, xs, us), device="cpu")(*vals, *uvals)
    h = 1e-6
    fd = (ref(*[a + h * u for a, u in zip(vals, uvals)]) - ref(*[a - h * u for a, u in zip(vals, uvals)])) / (2 * h)
    np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-8)
    v = out.type()
    vv = RNG.standard_normal(np.shape(jvp))
    vjp = tg.function(xs + [v], tg.Lop(out, xs, v), device="cpu")(*vals, vv)
    lhs = float((vv * jvp).sum())
    rhs = sum(float((g * u).sum()) for g, u in zip(vjp, uvals))
    assert abs(lhs - rhs) <= 1e-11 * (abs(lhs) + abs(rhs) + 1)


@pytest.mark.parametrize("checkpoint", ["all", "binomial"])
@pytest.mark.parametrize("case", ["second_order", "backwards_mixed"])
def test_hvp(case, checkpoint):
    xs, out, ref, vals = CASES[case]()
    if checkpoint == "binomial":   # the same graph with a checkpointed reverse sweep
        xs, out, ref, vals = _with_checkpoint(case, checkpoint)
    cost = tg.sum(tg.sin(out)) + tg.sum(out[-1] ** 2)
    ps = [x.type() for x in xs]
    pvals = [RNG.standard_normal(np.shape(a)) for a in vals]
    hv = tg.function(xs + ps, tg.hessian_vector_product(cost, xs, ps), device="cpu")(*vals, *pvals)
    g = tg.function(xs, tg.grad(cost, xs), device="cpu")
    h = 1e-5
    gp = g(*[a + h * p for a, p in zip(vals, pvals)])
    gm = g(*[a - h * p for a, p in zip(vals, pvals)])
    for k in range(len(xs)):
        np.testing.assert_allclose(hv[k], (gp[k] - gm[k]) / (2 * h), rtol=1e-6, atol=1e-7)


def _with_checkpoint(case, checkpoint):
    real = tg.scan

    def scan(*a, **kw):
        return real(*a, checkpoint=checkpoint, snapshots=2, **kw)

    tg.scan = scan
    try:
        return CASES[case]()
    finally:
        tg.scan = real


def test_binomial_checkpoint_gives_the_same_gradient():
    xs, out, ref, vals = CASES["second_order"]()
    xb, outb, _, _ = _with_checkpoint("second_order", "binomial")
    ga = tg.function(xs, tg.grad(tg.sum(out ** 2), xs), device="cpu")(*vals)
    gb = tg.function(xb, tg.grad(tg.sum(outb ** 2), xb), device="cpu")(*vals)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- API details
def test_tap_arguments_names_and_shapes():
    seen = []
    x, y0 = tg.dmatrix("x"), tg.dmatrix("y0")

    def step(*args):
        seen.extend(args)
        return args[2] + args[0] + args[1]

    out, _ = tg.scan(step, sequences=dict(input=x, taps=[1, -1]), outputs_info=dict(initial=y0, taps=[-2]))
    assert [a.name for a in seen] == ["x[t+1]", "x[t-1]", "y0[t-2]"]
    assert [a.ndim for a in seen] == [1, 1, 1]
    xv, yv = RNG.uniform(-1, 1, (5, 2)), RNG.uniform(-1, 1, (2, 2))
    got = tg.function([x, y0], out)(xv, yv)
    hist = [yv[0], yv[1]]
    for t in range(1, 4):
        hist.append(hist[-2] + xv[t + 1] + xv[t - 1])
    np.testing.assert_allclose(got, np.array(hist[2:]), rtol=1e-15)
    assert got.shape == (3, 2)


def test_sequence_taps_with_n_steps_and_int_tap():
    x = tg.dvector("x")
    out, _ = tg.scan(lambda a, b: a - b, sequences=[dict(input=x, taps=2), x], n_steps=3)   # one int tap
    xv = np.arange(10.0) ** 2
    np.testing.assert_array_equal(tg.function([x], out)(xv), [xv[2] - xv[0], xv[3] - xv[1], xv[4] - xv[2]])
    with pytest.raises(ValueError, match="n_steps=9"):
        tg.function([x], tg.scan(lambda a, b: a - b, sequences=[dict(input=x, taps=[2]), x], n_steps=9)[0])(xv)


def test_last_step_and_gradient_of_initial_rows_not_read():
    y0 = tg.dvector("y0")
    out, _ = tg.scan(lambda y2: 2.0 * y2, outputs_info=dict(initial=y0, taps=[-2]), n_steps=4)
    f = tg.function([y0], [out, out[-1], tg.grad(out[-1], y0)])
    traj, last, g = f(np.array([1.0, 3.0, 100.0]))          # the third row is never read
    np.testing.assert_array_equal(traj, [2.0, 6.0, 4.0, 12.0])
    assert float(last) == 12.0
    np.testing.assert_array_equal(g, [0.0, 4.0, 0.0])


@pytest.mark.parametrize("entry, match", [
    (dict(initial=tg.dvector("y"), taps=[-1, 0]), "must be < 0"),
    (dict(initial=tg.dvector("y"), taps=[-2, -2]), "must be different"),
    (dict(taps=[-2, -1]), "no initial state"),
    (dict(initial=tg.dscalar("y"), taps=[-2, -1]), "leading axis"),
    (dict(initial=tg.constant(np.zeros(2)), taps=[-3]), "needs 3 past steps"),
])
def test_output_tap_errors(entry, match):
    with pytest.raises(ValueError, match=match):
        tg.scan(lambda *a: a[0], outputs_info=entry, n_steps=3)


def test_sequence_tap_errors():
    with pytest.raises(TypeError, match="taps must be ints"):
        tg.scan(lambda a: a, sequences=dict(input=tg.dvector("x"), taps=[0.5]))
    with pytest.raises(ValueError, match="without 'input'"):
        tg.scan(lambda a: a, sequences=dict(taps=[0]))


@pytest.mark.parametrize("tier", ["interp", "program"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_tiers_match_python(case, tier):
    xs, out, ref, vals = CASES[case]()
    cost = tg.sum(out ** 2)
    outs = [cost] + tg.grad(cost, xs)
    want = tg.function(xs, outs, device="python")(*vals)
    f = tg.function(xs, outs, tier=tier)
    got = f(*vals)
    assert (f._engine.fast is not None) == (tier == "program")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
