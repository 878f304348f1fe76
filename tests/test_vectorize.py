"""Block (vectorized) Jacobians and Hessians: ``tapegrad.vectorize``.

Every case compares the batched reverse block, the batched forward block (where it applies), the
default choice, the ``MAP_ROWS`` route (``vectorize=False``) and central finite differences.
"""

import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.gradient import DisconnectedInputError
from tapegrad.graph import toposort
from tapegrad.vectorize import ShapeKeys, forward_block, jacobian_blocks

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _strict(monkeypatch):
    """A bug while building a block must fail here, not hide behind the MAP_ROWS fallback."""
    monkeypatch.setattr("tapegrad.vectorize.STRICT", True)


def _fn(inputs, outputs, device="cpu"):
    return tg.function(inputs, outputs, device=device, on_unused_input="ignore")


def _ops_of(outputs):
    return {type(n.op).__name__ for n in toposort(outputs if isinstance(outputs, list) else [outputs])}


def _numeric_jacobian(f, vals, k, eps):
    """d f(*vals) / d vals[k] by central differences, shape f.shape + vals[k].shape."""
    x = np.array(vals[k], dtype=np.float64)
    y0 = np.asarray(f(*vals))
    J = np.zeros(y0.shape + x.shape)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        args_p = list(vals)
        args_m = list(vals)
        args_p[k] = xp.astype(vals[k].dtype)
        args_m[k] = xm.astype(vals[k].dtype)
        J[(Ellipsis,) + idx] = (np.asarray(f(*args_p), np.float64) - np.asarray(f(*args_m), np.float64)) / (2 * eps)
    return J


def check_jacobian(build, inputs, vals, wrt_idx, rtol=1e-9, atol=1e-11, fd=True, disconnected_inputs="raise"):
    """All routes agree; the default route is vectorized (no MAP_ROWS); both blocks exist."""
    expr = build(*inputs)
    wrt = [inputs[i] for i in wrt_idx]
    assert all(forward_block(expr, w) is not None for w in wrt), "no forward block"
    results = {}
    J_map = tg.jacobian(expr, wrt, vectorize=False, disconnected_inputs=disconnected_inputs)
    results["map"] = _fn(inputs, J_map)(*vals)
    J_auto = tg.jacobian(expr, wrt, disconnected_inputs=disconnected_inputs)
    assert "MapRows" not in _ops_of(J_auto), "the default jacobian fell back to MAP_ROWS"
    results["auto"] = _fn(inputs, J_auto)(*vals)
    results["auto-python"] = _fn(inputs, J_auto, device="python")(*vals)
    for mode in ("reverse", "forward"):
        jacs, _ = jacobian_blocks(expr, wrt, disconnected_inputs=disconnected_inputs, mode=mode)
        assert jacs is not None, f"{mode} block not available"
        results[mode] = _fn(inputs, jacs)(*vals)
    for name, got in results.items():
        for g, w, want in zip(got, wrt, results["map"]):
            assert g.shape == expr_shape(expr, inputs, vals) + np.shape(vals[inputs.index(w)]), name
            assert g.dtype == want.dtype, (name, g.dtype, want.dtype)
            np.testing.assert_allclose(g, want, rtol=rtol, atol=atol, err_msg=name)
    if fd:
        f = _fn(inputs, expr)
        for k, want in zip(wrt_idx, results["map"]):
            if not np.issubdtype(vals[k].dtype, np.floating):
                continue
            eps = 1e-6 if vals[k].dtype == np.float64 else 1e-2
            num = _numeric_jacobian(f, vals, k, eps)
            tol = 1e-5 if vals[k].dtype == np.float64 else 5e-2
            np.testing.assert_allclose(want, num, rtol=tol, atol=tol)
    return results


def expr_shape(expr, inputs, vals):
    return np.shape(_fn(inputs, expr, device="python")(*vals))


def vec(n, dtype="float64"):
    return RNG.normal(size=n).astype(dtype)


# --------------------------------------------------------------------------- expressions
def test_elementwise():
    x = tg.vector("x")
    check_jacobian(lambda x: tg.sin(x) * tg.exp(x) + x ** 2 - 1 / (2 + x * x), [x], [vec(6)], [0])


def test_w5_tanh_matvec_plus_cube_is_analytic_and_forward():
    A, x = tg.matrix("A"), tg.vector("x")
    Av, xv = RNG.normal(size=(5, 5)), vec(5)
    check_jacobian(lambda A, x: tg.tanh(A @ x) + x ** 3, [A, x], [Av, xv], [1])
    J = tg.jacobian(tg.tanh(A @ x) + x ** 3, x)
    # identity seeds simplified: no contraction is left but the primal A @ x, and no MAP_ROWS
    ops = [type(n.op).__name__ for n in toposort([J])]
    assert ops.count("Matmul") == 1 and "Einsum" not in ops and "MapRows" not in ops
    t = np.tanh(Av @ xv)
    np.testing.assert_allclose(_fn([A, x], J)(Av, xv), (1 - t ** 2)[:, None] * Av + np.diag(3 * xv ** 2),
                               rtol=1e-13, atol=1e-15)


def test_runtime_broadcasting_is_not_assumed_away():
    """A (5, 1) with x (1,): A @ x has 5 entries, x ** 3 one; the sum broadcasts at run time."""
    A, x = tg.matrix("A"), tg.vector("x")
    check_jacobian(lambda A, x: tg.tanh(A @ x) + x ** 3, [A, x], [RNG.normal(size=(5, 1)), vec(1)], [0, 1])
    check_jacobian(lambda A, x: tg.tanh(A @ x) * x, [A, x], [RNG.normal(size=(1, 4)), vec(4)], [0, 1])


def test_broadcasting_outer_and_wrt_list():
    x, y = tg.vector("x"), tg.vector("y")
    check_jacobian(lambda x, y: tg.sin(x[:, None] * y[None, :]) + y, [x, y], [vec(3), vec(4)], [0, 1])


@pytest.mark.parametrize("which", ["dot_mv", "dot_vm", "matmul_batched", "matmul_mm", "tensordot", "outer"])
def test_contractions(which):
    A, B, x = tg.matrix("A"), tg.tensor3("B"), tg.vector("x")
    Av, Bv, xv = RNG.normal(size=(4, 3)), RNG.normal(size=(2, 3, 3)), vec(3)
    build = {
        "dot_mv": (lambda A, B, x: tg.tanh(tg.dot(A, tg.sin(x))), [0, 2]),
        "dot_vm": (lambda A, B, x: tg.dot(tg.cos(x), A.T) * 2.0, [0, 2]),
        "matmul_batched": (lambda A, B, x: tg.tanh(B @ x), [1, 2]),
        "matmul_mm": (lambda A, B, x: tg.exp(A @ B[0]) @ x, [0, 1, 2]),
        "tensordot": (lambda A, B, x: tg.tensordot(B, x, axes=[[2], [0]]) ** 2, [1, 2]),
        "outer": (lambda A, B, x: tg.outer(x, tg.sin(x)) + tg.outer(A, x)[:3], [0, 2]),
    }[which]
    check_jacobian(build[0], [A, B, x], [Av, Bv, xv], build[1])


def test_dot_with_scalars_and_vector_vector():
    x, s, M = tg.vector("x"), tg.scalar("s"), tg.matrix("M")
    check_jacobian(lambda x, s, M: tg.dot(s * x[0], M).flatten() + tg.dot(x, x) * tg.dot(M, s).sum(),
                   [x, s, M], [vec(2), np.asarray(0.4), RNG.normal(size=(2, 2))], [0, 1, 2])


def test_matrix_expression_and_matrix_wrt():
    A, W = tg.matrix("A"), tg.matrix("W")
    check_jacobian(lambda A, W: tg.tanh(A @ W) * A[:, :1], [A, W], [RNG.normal(size=(2, 3)),
                                                                     RNG.normal(size=(3, 2))], [0, 1])


def test_slicing_as_in_rosenbrock():
    x = tg.vector("x")
    check_jacobian(lambda x: 100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2, [x], [vec(7)], [0])


@pytest.mark.parametrize("which", ["sum", "mean_axis", "max", "prod", "softmax", "logsumexp", "cumsum", "var"])
def test_reductions(which):
    x, M = tg.vector("x"), tg.matrix("M")
    build = {
        "sum": lambda x, M: x * tg.sum(x ** 2) + M.sum(axis=0),
        "mean_axis": lambda x, M: tg.mean(M * x, axis=1, keepdims=True) * 3.0,
        "max": lambda x, M: tg.max(M * x, axis=0) + x.max(),
        "prod": lambda x, M: tg.prod(M + 3.0, axis=1) * x[:2].sum(),
        "softmax": lambda x, M: tg.softmax(M * x, axis=-1),
        "logsumexp": lambda x, M: tg.logsumexp(M * x, axis=0),
        "cumsum": lambda x, M: tg.cumsum(x * x) + tg.cumsum(M, axis=1)[0],
        "var": lambda x, M: tg.var(M * x, axis=1) + tg.std(x),
    }[which]
    check_jacobian(build, [x, M], [vec(3), RNG.normal(size=(2, 3))], [0, 1])


def test_indexing_and_writes():
    x, y = tg.vector("x"), tg.vector("y")
    idx = np.array([2, 0, 2, 1])

    def build(x, y):
        a = x[idx] * y  # advanced read (repeats)
        b = tg.inc_subtensor(x[1:3], y[:2] ** 2)  # basic inc
        c = tg.set_subtensor(x[idx[:2]], tg.sin(y[:2]))  # advanced set
        d = tg.inc_subtensor(tg.zeros_like(x)[idx], y)  # advanced inc with repeats
        return tg.concatenate([a, b, c * d, tg.take(x, 1) * y])

    check_jacobian(build, [x, y], [vec(3), vec(4)], [0, 1])


def test_shape_ops():
    x, M = tg.vector("x"), tg.matrix("M")

    def build(x, M):
        a = tg.reshape(M * x, (-1,)) ** 2
        b = tg.stack([x, tg.roll(x, 1), tg.roll(x * x, -2)]).flatten()
        c = tg.repeat(x, 2) * tg.tile(tg.sin(x), (2,))
        s1, s2 = tg.split(tg.exp(x), [1, 2], 2)
        d = tg.broadcast_to(s1, (3,)) * tg.concatenate([s2, s1])
        e = tg.squeeze(tg.expand_dims(x, 0) @ M.T)
        return tg.concatenate([a, b, c, d, e, tg.diagonal(M[:, :2] * x[:2]), tg.trace(M[:, :2]) * x])

    check_jacobian(build, [x, M], [vec(3), RNG.normal(size=(2, 3))], [0, 1])


def test_roll_axis_none_on_matrix_and_lorenz96_step():
    u, M = tg.vector("u"), tg.matrix("M")
    check_jacobian(lambda u, M: u + 0.01 * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + 8.0), [u, M],
                   [vec(6), RNG.normal(size=(2, 3))], [0])
    check_jacobian(lambda u, M: tg.roll(M * u[:3], 2).flatten() * 2.0, [u, M], [vec(6), RNG.normal(size=(2, 3))],
                   [0, 1])


def test_identity_and_linear_maps():
    x, A = tg.vector("x"), tg.matrix("A")
    check_jacobian(lambda x, A: x, [x, A], [vec(3), RNG.normal(size=(2, 3))], [0])
    check_jacobian(lambda x, A: A @ x * 2.0 - x[0] * x[:2], [x, A], [vec(3), RNG.normal(size=(2, 3))], [0, 1])
    check_jacobian(lambda x, A: A, [x, A], [vec(3), RNG.normal(size=(2, 3))], [1])


def test_scalar_wrt_and_one_element():
    x, s = tg.vector("x"), tg.scalar("s")
    check_jacobian(lambda x, s: tg.sin(x * s) + s ** 2, [x, s], [vec(4), np.asarray(0.7)], [0, 1])
    check_jacobian(lambda x, s: tg.exp(x) * s, [x, s], [vec(1), np.asarray(1.3)], [0, 1])


def test_float32():
    x, A = tg.fvector("x"), tg.fmatrix("A")
    res = check_jacobian(lambda x, A: tg.tanh(A @ x) + x ** 3, [x, A],
                         [vec(4, "float32"), RNG.normal(size=(4, 4)).astype("float32")], [0, 1],
                         rtol=2e-5, atol=1e-5)
    assert all(j.dtype == np.float32 for r in res.values() for j in r)


def test_mixed_dtypes_give_the_gradient_dtype_of_wrt():
    x, A = tg.fvector("x"), tg.matrix("A")
    res = check_jacobian(lambda x, A: tg.tanh(A @ x) + x ** 3, [x, A],
                         [vec(3, "float32"), RNG.normal(size=(3, 3))], [0, 1], rtol=2e-6, atol=1e-6)
    for r in res.values():
        assert r[0].dtype == np.float32 and r[1].dtype == np.float64


def test_empty_expression():
    x = tg.vector("x")
    J = tg.jacobian(x[:0] * 2.0, x)
    Jm = tg.jacobian(x[:0] * 2.0, x, vectorize=False)
    got, want = _fn([x], [J, Jm])(vec(3))
    assert got.shape == want.shape == (0, 3)


# --------------------------------------------------------------------------- semantics
def test_scalar_expression_is_the_gradient():
    x = tg.vector("x")
    J = tg.jacobian((x ** 2).sum(), x)
    np.testing.assert_allclose(_fn([x], J)(np.array([1.0, 2.0])), [2.0, 4.0])


def test_result_mirrors_wrt():
    x, y = tg.vector("x"), tg.vector("y")
    e = x * y
    assert isinstance(tg.jacobian(e, x), tg.Variable)
    assert type(tg.jacobian(e, [x, y])) is list and type(tg.jacobian(e, (x, y))) is tuple
    assert type(tg.hessian((e ** 2).sum(), (x, y))) is tuple


@pytest.mark.usefixtures("no_background_compiles")
def test_disconnected_inputs():
    x, y = tg.vector("x"), tg.vector("y")
    with pytest.raises(DisconnectedInputError):
        tg.jacobian(x ** 2, [x, y])
    with pytest.warns(UserWarning, match="not part of the computational graph"):
        Jx, Jy = tg.jacobian(x ** 2, [x, y], disconnected_inputs="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Jx2, Jy2 = tg.jacobian(x ** 2, [x, y], disconnected_inputs="ignore")
    out = _fn([x, y], [Jx, Jy, Jx2, Jy2])(vec(3), vec(2))
    assert out[1].shape == (3, 2) and not out[1].any()
    assert out[3].shape == (3, 2) and not out[3].any()
    np.testing.assert_allclose(out[0], out[2])


def test_consider_constant_uses_reverse_and_matches_map_rows():
    x, y = tg.vector("x"), tg.vector("y")
    z = tg.sin(x) * y
    e = z * x
    J = tg.jacobian(e, x, consider_constant=[z])
    Jm = tg.jacobian(e, x, consider_constant=[z], vectorize=False)
    xv, yv = vec(3), vec(3)
    got, want = _fn([x, y], [J, Jm])(xv, yv)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got, np.diag(np.sin(xv) * yv), rtol=1e-12)


def test_gradient_modifiers_keep_reverse_semantics():
    x = tg.vector("x")
    e = tg.grad_clip(x ** 3, -0.5, 0.5) + tg.grad_scale(tg.sin(x), 3.0) + tg.zero_grad(x) * x
    J = tg.jacobian(e, x)
    Jm = tg.jacobian(e, x, vectorize=False)
    xv = vec(4)
    got, want = _fn([x], [J, Jm])(xv)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_integer_wrt_is_differentiated_as_continuous():
    X, W = tg.imatrix("X"), tg.matrix("W")
    e = tg.sigmoid(tg.dot(X, W)).flatten()
    J = tg.jacobian(e, X)
    Jm = tg.jacobian(e, X, vectorize=False)
    Xv, Wv = RNG.integers(-2, 3, size=(2, 3)), RNG.normal(size=(3, 2))
    got, want = _fn([X, W], [J, Jm])(Xv, Wv)
    assert got.dtype == want.dtype == np.dtype(tg.config.floatX)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fallback_to_map_rows_for_ops_without_a_batched_form():
    A, x = tg.matrix("A"), tg.vector("x")
    e = tg.linalg.solve(A, tg.sin(x))
    jacs, _ = jacobian_blocks(e, [x, A], mode="reverse")
    assert jacs is None
    J = tg.jacobian(e, [x, A])
    assert "MapRows" in _ops_of(J)
    Jm = tg.jacobian(e, [x, A], vectorize=False)
    Av = RNG.normal(size=(3, 3)) + 3 * np.eye(3)
    xv = vec(3)
    got = _fn([A, x], J)(Av, xv)
    want = _fn([A, x], Jm)(Av, xv)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10)


def test_grad_of_a_vectorized_jacobian():
    A, x = tg.matrix("A"), tg.vector("x")
    J = tg.jacobian(tg.tanh(A @ x) + x ** 3, x)
    cost = (J ** 2).sum()
    g = tg.grad(cost, [A, x])
    Av, xv = RNG.normal(size=(3, 3)), vec(3)
    got = _fn([A, x], g)(Av, xv)
    f = _fn([A, x], cost)
    for k in range(2):
        np.testing.assert_allclose(got[k], _numeric_jacobian(f, [Av, xv], k, 1e-6), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- Hessians
def _rosen(x):
    return tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _rosen_hess(x):
    D = np.zeros_like(x)
    D[:-1] = 1200 * x[:-1] ** 2 - 400 * x[1:] + 2
    D[1:] += 200
    return np.diag(D) + np.diag(-400 * x[:-1], 1) + np.diag(-400 * x[:-1], -1)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_rosenbrock_hessian(n):
    x = tg.vector("x")
    H = tg.hessian(_rosen(x), x)
    assert "MapRows" not in _ops_of(H)
    Hm = tg.hessian(_rosen(x), x, vectorize=False)
    xv = vec(n)
    got, want = _fn([x], [H, Hm])(xv)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got, _rosen_hess(xv), rtol=1e-12, atol=1e-9)


def test_hessian_of_matrix_wrt_and_list():
    W, x = tg.matrix("W"), tg.vector("x")
    cost = tg.sum(tg.tanh(W @ x) ** 2) + tg.sum(x ** 4) * tg.sum(W)
    H = tg.hessian(cost, [W, x])
    Hm = tg.hessian(cost, [W, x], vectorize=False)
    assert "MapRows" not in _ops_of(H)
    Wv, xv = RNG.normal(size=(2, 3)), vec(3)
    got = _fn([W, x], H)(Wv, xv)
    want = _fn([W, x], Hm)(Wv, xv)
    assert got[0].shape == (2, 3, 2, 3) and got[1].shape == (3, 3)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


def test_hessian_reductions_and_softmax():
    x = tg.vector("x")
    cost = tg.logsumexp(x) + tg.sum(tg.softmax(x * 2.0) * x) + tg.max(x) * tg.prod(x) + tg.mean(tg.cumsum(x) ** 2)
    check_jacobian(lambda x: tg.grad(cost, x), [x], [vec(4)], [0], rtol=1e-9, atol=1e-10, fd=False)


# --------------------------------------------------------------------------- shape keys
def test_shape_keys_prove_only_what_holds():
    A, x = tg.matrix("A"), tg.vector("x")
    u = x.type()
    keys = ShapeKeys([(u, x)])
    assert keys.same(tg.sin(x) * 2.0, x)
    assert keys.same(u * x, x ** 3)
    assert keys.same(A @ u, tg.tanh(A @ x))
    assert not keys.same(A @ x, x)  # A may be (m, n) with m != n
    assert not keys.same(tg.tanh(A @ x) + x, x)  # broadcasting at run time
    assert keys.same(tg.reshape(u, tg.shape(x * 2)), x)


# --------------------------------------------------------------------------- random graphs
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402

from tapegrad.testing.strategies import STRUCTURAL_OPS, random_graphs  # noqa: E402


def _agree_with_map_rows(inputs, out, values, hessian=False, rtol=1e-9, device="python"):
    from tapegrad.gradient import grad

    if out.ndim == 0 and not hessian:
        out = tg.stack([out, out * 2.0])
    if hessian:
        out = grad(tg.sum(out) if out.ndim else out, inputs, disconnected_inputs="ignore")[0]
        wrt = inputs[:1]
    else:
        wrt = inputs
    want = tg.jacobian(out, wrt, vectorize=False, disconnected_inputs="ignore")
    routes = {"map": want}
    for mode in ("reverse", "forward", "auto"):
        jacs, _ = jacobian_blocks(out, wrt, disconnected_inputs="ignore", mode=mode)
        if jacs is not None:
            routes[mode] = jacs
    assert "reverse" in routes or "forward" in routes, "no block for a graph of built-in ops"
    names = list(routes)
    k = len(wrt)
    ref = _fn(inputs, routes["map"], device="python")(*values)  # the MAP_ROWS reference, run by perform
    got = list(ref) + list(_fn(inputs, [j for n in names[1:] for j in routes[n]], device=device)(*values))
    for i, name in enumerate(names[1:], start=1):
        for g, w in zip(got[i * k:(i + 1) * k], ref):
            assert g.shape == w.shape and g.dtype == w.dtype, name
            # where the row-by-row reverse sweep meets 0 * inf (a kink: sqrt at 0, ...) it gives NaN; a block
            # may give the zero-in-zero-out value there instead.  Everywhere else they agree.
            ok = np.isfinite(w)
            scale = np.max(np.abs(w[ok]), initial=0.0) + 1e-3
            np.testing.assert_allclose(g[ok], w[ok], rtol=rtol, atol=rtol * scale, err_msg=name)


@settings(max_examples=60)
@given(case=random_graphs(structural=True, n_ops=(1, 6)))
def test_random_graph_jacobians_agree_with_map_rows(case):
    inputs, out, values = case
    _agree_with_map_rows(inputs, out, values)


@settings(max_examples=25)
@given(case=random_graphs(structural=True, kinks=True, n_ops=(1, 6), max_ndim=3))
def test_random_graph_jacobians_on_the_cpu_engine(case):
    inputs, out, values = case
    _agree_with_map_rows(inputs, out, values, device="cpu")


@settings(max_examples=40)
@given(case=random_graphs(structural=True, kinks=True, n_ops=(1, 5)))
def test_random_graph_hessians_agree_with_map_rows(case):
    inputs, out, values = case
    _agree_with_map_rows(inputs, out, values, hessian=True)


@pytest.mark.parametrize("kind", sorted(STRUCTURAL_OPS))
def test_every_structural_op_vectorizes(kind):
    """Each structural op kind, first in a random graph: a block exists and agrees with MAP_ROWS."""

    @settings(max_examples=4, deadline=None)
    @given(case=random_graphs(structural=True, first_op=kind, n_ops=(1, 3)))
    def inner(case):
        inputs, out, values = case
        _agree_with_map_rows(inputs, out, values)

    inner()


# --------------------------------------------------------------------------- choice of the block
def _seed_sizes(J):
    from tapegrad.ops.alloc import Eye
    from tapegrad.ops.shape import static_int

    return {static_int(n.inputs[0]) for n in toposort([J]) if isinstance(n.op, Eye) and n.op.dtype != "bool"}


def test_static_sizes_choose_the_block_with_fewer_directions():
    x = tg.tensor("x", shape=(2,))
    tall = tg.concatenate([tg.sin(x), x ** 2, tg.exp(x), x * 3.0, tg.cos(x)])  # 10 outputs, 2 inputs
    assert _seed_sizes(tg.jacobian(tall, x)) == {2}  # forward: 2 tangent directions
    y = tg.tensor("y", shape=(10,))
    wide = y[:3] * tg.sum(y ** 2)  # 3 outputs, 10 inputs
    assert _seed_sizes(tg.jacobian(wide, y)) == {3}  # reverse: 3 cotangent rows
    xv, yv = vec(2), vec(10)
    check_jacobian(lambda x, y: tg.concatenate([tg.sin(x), x ** 2, tg.exp(x), x * 3.0, tg.cos(x)]), [x, y],
                   [xv, yv], [0])
    check_jacobian(lambda x, y: y[:3] * tg.sum(y ** 2), [x, y], [xv, yv], [1])


def test_grad_through_a_map_rows_jacobian_with_integer_closure_inputs():
    """MapRows.L_op gives integer closure inputs (shapes) a float zero gradient, so grad of a MAP_ROWS
    Jacobian works and equals grad of the vectorized one."""
    import tapegrad as tg

    A, x = tg.dmatrix("A"), tg.dvector("x")
    fs = []
    for vec in (False, True):
        J = tg.jacobian(tg.tanh(tg.dot(A, x)) + x ** 3, x, vectorize=vec)
        fs.append(tg.function([A, x], tg.grad((J ** 2).sum(), x), device="python"))
    r = np.random.default_rng(3)
    a, xv = r.standard_normal((4, 4)), r.standard_normal(4)
    np.testing.assert_allclose(fs[0](a, xv), fs[1](a, xv), rtol=1e-12, atol=1e-12)
