"""Tests of the shape family (tapegrad/ops/shape.py, tapegrad/ops/alloc.py).

The spec rows of ``specs_shape.py`` run here through the reference engine:
values vs NumPy, output dtype and static shape vs the run-time result,
``Rop`` vs central differences, the exact adjoint identity
``<v, Rop(f, x, u)> == <Lop(f, x, v), u>``, and the same identity for the
(linear) Lop graph itself (so the adjoint ops' own rules are checked).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad.ops as ops
from tapegrad.compile.reference import evaluate
from tapegrad.gradient import Lop, Rop, grad
from tapegrad.graph import TensorType, Variable, constant, matrix, tensor, vector
from tapegrad.op import is_disconnected
import importlib

# (the package attributes `shape` and `alloc` are the functions of the same names)
A = importlib.import_module("tapegrad.ops.alloc")
S = importlib.import_module("tapegrad.ops.shape")
from tapegrad.registry import all_codes
from tests.ops.checks import inner, row_inputs, row_wrt
from tests.ops.specs_shape import ROWS

RTOL = {"float64": 1e-12, "float32": 1e-5}
ADJ_RTOL = {"float64": 1e-12, "float32": 1e-5}


# --------------------------------------------------------------------------- the row runner
def _adjoint_check(f_of, xs, xvals, ys, rng, dtype, what):
    """``<v, Rop(y, x, u)> == <Lop(y, x, v), u>`` for the graph ``ys`` of ``xs`` (others fixed by ``f_of``)."""
    us = [rng.standard_normal(np.shape(v)).astype(x.dtype) for x, v in zip(xs, xvals)]
    outs = evaluate(ys, f_of)
    vs = [rng.standard_normal(np.shape(o)).astype(y.dtype) for o, y in zip(outs, ys)]
    jvp = Rop(ys, xs, [constant(u) for u in us], disconnected_outputs="ignore")
    vjp = Lop(ys, xs, [constant(v) for v in vs], disconnected_inputs="ignore")
    got = evaluate(list(jvp) + list(vjp), f_of)
    ju, jtv = got[: len(ys)], got[len(ys):]
    for t, y in zip(ju, ys):
        assert t.dtype == y.dtype and t.shape == evaluate([y], f_of)[0].shape, what
    for g, x, v in zip(jtv, xs, xvals):
        assert g.dtype == x.dtype and g.shape == np.shape(v), f"{what}: Lop dtype/shape {g.dtype}{g.shape}"
    lhs = sum(inner(v, t) for v, t in zip(vs, ju))
    rhs = sum(inner(g, u) for g, u in zip(jtv, us))
    mag = sum(np.sum(np.abs(np.asarray(v, float) * t)) for v, t in zip(vs, ju)) + 1e-300
    assert abs(lhs - rhs) <= ADJ_RTOL[dtype] * (mag + sum(np.sum(np.abs(g * u)) for g, u in zip(jtv, us))), (
        f"{what}: <v, Ju> = {lhs} but <J^T v, u> = {rhs}"
    )
    return us, ju


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("row", ROWS, ids=[r.id or r.code for r in ROWS])
def test_row(row, dtype):
    if dtype not in row.dtypes:
        pytest.skip("dtype not in row")
    rng = np.random.default_rng(1234)
    xs, vals = row_inputs(row, dtype, rng)
    out = row.build(*xs)
    env = dict(zip(xs, vals))
    (y,) = evaluate([out], env)
    # value, dtype, static shape
    assert y.dtype == out.dtype
    assert out.type.is_compatible_shape(y.shape), f"static {out.type} vs run-time {y.shape}"
    if row.reference is not None:
        want = row.reference(*vals)
        assert y.shape == np.shape(want)
        np.testing.assert_allclose(y, want, rtol=RTOL[dtype], atol=RTOL[dtype])
    if not row.differentiable:
        return
    wrt_idx = row_wrt(row)
    wrt = [xs[i] for i in wrt_idx]
    wvals = [vals[i] for i in wrt_idx]
    us, (ju,) = _adjoint_check(env, wrt, wvals, [out], rng, dtype, f"{row.id} adjoint")
    # tangent vs central differences (the ops are linear, so this is tight)
    eps = 1e-3 if dtype == "float64" else 1e-1
    plus, minus = dict(env), dict(env)
    for x, v, u in zip(wrt, wvals, us):
        plus[x], minus[x] = (v + eps * u).astype(dtype), (v - eps * u).astype(dtype)
    fd = (evaluate([out], plus)[0].astype(float) - evaluate([out], minus)[0].astype(float)) / (2 * eps)
    np.testing.assert_allclose(ju, fd, rtol=1e-6 if dtype == "float64" else 1e-3, atol=1e-6 if dtype == "float64"
                               else 1e-3)
    # second order: the Lop graph is linear in its cotangent; its own R_op/L_op must agree too
    if dtype == "float64":
        v = Variable(TensorType(out.dtype, (None,) * out.ndim), name="v")
        gs = Lop(out, wrt, v, disconnected_inputs="ignore")
        env2 = dict(env)
        env2[v] = rng.standard_normal(y.shape)
        _adjoint_check(env2, [v], [env2[v]], list(gs), rng, dtype, f"{row.id} Lop-of-Lop adjoint")


def test_every_code_has_a_row():
    mine = {name for name, code, _ in all_codes() if 300 <= code < 400}
    covered = {r.code for r in ROWS} | {c for r in ROWS for c in r.also}
    assert mine - covered == set()
    assert len(mine) == 19


# --------------------------------------------------------------------------- static shapes and errors
def test_reshape_static_shapes():
    t = tensor("t", shape=(2, 3, 4))
    assert S.reshape(t, (4, -1)).type.shape == (4, 6)
    assert S.reshape(t, (S.shape_i(t, 2), -1)).type.shape == (4, 6)
    assert S.reshape(t, t.shape).type.shape == (2, 3, 4)
    assert S.reshape(t, ops.stack([2, 12])).type.shape == (2, 12)
    n = tensor("n", dtype="int64", shape=())
    assert S.reshape(t, (n, -1)).type.shape == (None, None)
    assert S.reshape(t, (n, 4)).type.shape == (6, 4)  # the one unknown entry is implied by the size
    assert S.reshape(matrix("m"), (-1,)).type.shape == (None,)
    assert S.reshape(vector("v"), (1, -1, 1)).type.shape == (1, None, 1)
    iv = vector("iv", dtype="int64")
    assert S.reshape(t, iv, ndim=2).type.shape == (None, None)
    with pytest.raises(ValueError, match="ndim="):
        S.reshape(t, iv)
    # a scalar symbolic shape reshapes to a vector
    assert S.reshape(t, n).type.shape == (24,)  # implied by the static size


def test_reshape_static_errors_name_op_and_shapes():
    t = tensor("t", shape=(2, 3))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape t of static shape \(2, 3\).*\(4, 2\)"):
        S.reshape(t, (4, 2))
    with pytest.raises(ValueError, match="reshape.*one unknown"):
        S.reshape(t, (-1, -1))
    with pytest.raises(ValueError, match="reshape"):
        S.reshape(t, (4, -1))
    with pytest.raises(ValueError, match="reshape"):
        S.reshape(t, (-3, 2))
    with pytest.raises(TypeError, match="reshape"):
        S.reshape(t, (2.0, 3))


def test_reshape_runtime_error():
    x = matrix("x")
    y = S.reshape(x, (4, -1))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape x of shape \(2, 3\)"):
        evaluate([y], {x: np.zeros((2, 3))})


def test_shape_ops_values_and_fold():
    t = tensor("t", shape=(2, None))
    s = S.shape(t)
    assert s.type == TensorType("int64", (2,))
    assert S.static_entries(s) == (2, None)
    assert S.static_int(S.shape_i(t, 0)) == 2 and S.static_int(S.shape_i(t, 1)) is None
    assert S.static_int(S.shape_i(t, 0) * 3 + 1) == 7
    tv = np.zeros((2, 5))
    out = evaluate([s, S.shape_i(t, -1)], {t: tv})
    assert out[0].tolist() == [2, 5] and out[0].dtype == np.int64 and out[1] == 5
    # shape(x)[i] through the indexing family folds when x is static
    f = tensor("f", shape=(3, 4))
    assert S.reshape(vector("v"), (f.shape[0] * f.shape[1],)).type.shape == (12,)
    m = matrix("m")
    assert evaluate([m.shape[1]], {m: np.zeros((2, 7))})[0] == 7


def test_shape_is_disconnected():
    x = matrix("x")
    assert is_disconnected(S.Shape().L_op([x], [S.shape(x)], [None])[0])
    assert S.shape(x).owner.op.connection_pattern(S.shape(x).owner) == [[False]]
    # the gradient flows through the reshape, not through the shape argument taken from x
    y = S.reshape(x, (S.shape_i(x, 1), S.shape_i(x, 0)))
    g = grad(ops.sum(ops.mul(y, constant(np.arange(6.0).reshape(3, 2)))), x)
    np.testing.assert_array_equal(evaluate([g], {x: np.ones((2, 3))})[0], np.arange(6.0).reshape(2, 3))


def test_flatten_aesara_semantics():
    x = tensor("x", shape=(2, 3, 4))
    assert S.flatten(x).type.shape == (24,)
    assert S.flatten(x, 2).type.shape == (2, 12)
    assert S.flatten(x, 3).type.shape == (2, 3, 4)
    assert S.flatten(tensor("z", shape=(None, 0, None)), 2).type.shape == (None, 0)
    with pytest.raises(ValueError, match="flatten"):
        S.flatten(x, 4)
    with pytest.raises(ValueError, match="flatten"):
        S.flatten(x, 0)
    xv = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(evaluate([S.flatten(x, 2)], {x: xv})[0], xv.reshape(2, 12))


def test_dimshuffle_aesara_semantics():
    x = tensor("x", shape=(None, 1, 3))
    y = S.dimshuffle(x, (2, "x", 0))
    assert y.type.shape == (3, 1, None)
    assert str(y.owner.op) == "DimShuffle{2, x, 0}"
    assert y.owner.op.new_order == (2, -1, 0)  # 'x' is stored as -1 (stable tape encoding)
    xv = np.arange(6.0).reshape(2, 1, 3)
    np.testing.assert_array_equal(evaluate([y], {x: xv})[0], xv[:, 0].T[:, None])
    with pytest.raises(ValueError, match=r"dimshuffle: cannot drop axis 0 of x"):
        S.dimshuffle(x, (1, 2))
    with pytest.raises(ValueError, match="dimshuffle"):
        S.dimshuffle(x, (0, 0, 1, 2))
    with pytest.raises(ValueError, match="dimshuffle"):
        S.dimshuffle(x, (0, 1, 5))
    # method form
    m = matrix("m")
    assert m.dimshuffle("x", 1, 0).type.shape == (1, None, None)
    assert m.T.owner.op.new_order == (1, 0)


def test_transpose_expand_squeeze():
    x = tensor("x", shape=(2, 1, 3))
    assert S.transpose(x).type.shape == (3, 1, 2)
    assert S.transpose(x, (-1, 0, 1)).type.shape == (3, 2, 1)
    with pytest.raises(ValueError, match="transpose"):
        S.transpose(x, (0, 0, 1))
    assert S.expand_dims(x, -1).type.shape == (2, 1, 3, 1)
    assert S.expand_dims(x, (0, 2)).type.shape == (1, 2, 1, 1, 3)
    assert S.squeeze(x).type.shape == (2, 3)
    assert S.squeeze(matrix("m")).type.shape == (None, None)  # only static 1s are dropped
    with pytest.raises(ValueError, match="squeeze"):
        S.squeeze(x, 0)
    m = matrix("m")
    y = S.squeeze(m, 0)
    assert y.type.shape == (None,)
    np.testing.assert_array_equal(evaluate([y], {m: np.ones((1, 4))})[0], np.ones(4))
    with pytest.raises(ValueError, match="cannot drop axis 0"):
        evaluate([y], {m: np.ones((2, 4))})


def test_join_concatenate_stack():
    x, y = tensor("x", shape=(2, None)), tensor("y", shape=(None, 3))
    assert S.concatenate([x, y], axis=1).type.shape == (2, None)
    assert S.join(0, x, y).type.shape == (None, 3)
    assert S.join(0, [x, y]).type.shape == (None, 3)
    a, b = tensor("a", shape=(2, 3)), tensor("b", shape=(2, 4))
    assert S.join(1, a, b).type.shape == (2, 7)
    with pytest.raises(ValueError, match=r"concatenate: shapes \(2, 3\) and \(2, 4\) differ on axis 1"):
        S.join(0, a, b)
    with pytest.raises(ValueError, match="same number of dimensions"):
        S.join(0, a, vector("v"))
    with pytest.raises(ValueError, match="zero-dimensional"):
        S.concatenate([tensor("s", shape=()), tensor("t", shape=())])
    i = tensor("i", dtype="int32", shape=(2, 2))
    assert S.join(1, a, i).dtype == "float64"
    assert S.stack([a, a], axis=-1).type.shape == (2, 3, 2)
    with pytest.raises(ValueError, match="stack"):
        S.stack([a, b])
    fx = tensor("f", dtype="float32", shape=(2,))
    assert S.stack([fx, fx]).dtype == "float32"
    # scalars: a symbolic int vector (used for shapes)
    n = tensor("n", dtype="int64", shape=())
    v = S.stack([n, 3])
    assert v.type == TensorType("int64", (2,))
    assert S.static_entries(v) == (None, 3)


def test_split_aesara_semantics():
    x = tensor("x", shape=(None, 6))
    parts = A.split(x, [1, 2, 3], 3, axis=1)
    assert isinstance(parts, list) and [p.type.shape for p in parts] == [(None, 1), (None, 2), (None, 3)]
    one = A.split(x, [6], 1, axis=-1)
    assert isinstance(one, list) and len(one) == 1
    with pytest.raises(ValueError, match="n_splits=2 but splits_size has 3"):
        A.split(x, [1, 2, 3], 2, axis=1)
    with pytest.raises(ValueError, match="sums to 5"):
        A.split(x, [1, 4], 2, axis=1)
    xv = np.arange(12.0).reshape(2, 6)
    got = evaluate(parts, {x: xv})
    for g, w in zip(got, np.split(xv, [1, 3], axis=1)):
        np.testing.assert_array_equal(g, w)
        assert g.flags.owndata or g.base is None or not np.shares_memory(g, xv)
    s = vector("s", dtype="int64")
    y = vector("y")
    p = A.split(y, s, 2)
    with pytest.raises(ValueError, match="split"):
        evaluate(p, {y: np.ones(4), s: np.array([1, 2])})


def test_split_gradient_of_unused_piece_is_zero():
    x = matrix("x")
    a, b = A.split(x, [1, 2], 2, axis=1)
    (g,) = Lop(b, [x], [constant(np.ones((2, 2)))])
    np.testing.assert_array_equal(evaluate([g], {x: np.ones((2, 3))})[0], [[0, 1, 1], [0, 1, 1]])


def test_alloc_family():
    x = tensor("x", shape=(None,))
    assert A.broadcast_to(x, (2, 3)).type.shape == (2, 3)
    assert A.alloc(tensor("c", shape=(3,)), 2, S.shape_i(matrix("m"), 0)).type.shape == (2, 3)
    with pytest.raises(ValueError, match=r"alloc: cannot broadcast c of static shape \(3,\) to shape \(2, 4\)"):
        A.broadcast_to(tensor("c", shape=(3,)), (2, 4))
    with pytest.raises(ValueError, match="alloc"):
        A.broadcast_to(matrix("m"), (3,))
    with pytest.raises(ValueError, match="alloc: cannot broadcast x of shape"):
        evaluate([A.broadcast_to(x, (2, 3))], {x: np.ones(4)})
    z = A.zeros((2, 3))
    assert z.dtype == "float64" and z.type.shape == (2, 3)
    assert A.ones((2,), dtype="int32").dtype == "int32"
    assert A.full((2,), 7).dtype == "int64"
    assert A.full((2,), 1.5, dtype="float32").dtype == "float32"
    np.testing.assert_array_equal(evaluate([A.full((2, 2), 3.0)], {})[0], np.full((2, 2), 3.0))
    out = evaluate([A.alloc(x, 2, 3)], {x: np.arange(3.0)})[0]
    np.testing.assert_array_equal(out, np.broadcast_to(np.arange(3.0), (2, 3)))
    assert out.flags.writeable and out.flags.owndata


def test_alloc_gradient_sums_over_broadcast():
    x = vector("x")
    y = A.broadcast_to(x, (4, 3))
    (g,) = Lop(y, [x], [constant(np.ones((4, 3)))])
    np.testing.assert_array_equal(evaluate([g], {x: np.ones(3)})[0], [4, 4, 4])
    assert is_disconnected(y.owner.op.L_op(y.owner.inputs, [y], [y])[1])


@pytest.mark.parametrize("xdtype", ["int64", "int32", "bool", "float32"])
def test_zeros_like_ones_like_dtypes(xdtype):
    x = tensor("x", dtype=xdtype, shape=(None, 2))
    for fn, fill in ((A.zeros_like, 0), (A.ones_like, 1)):
        y = fn(x, dtype="float32")
        assert y.dtype == "float32" and y.type.shape == (None, 2)
        assert fn(x).dtype == xdtype
        v = evaluate([y], {x: np.zeros((3, 2), dtype=xdtype)})[0]
        np.testing.assert_array_equal(v, np.full((3, 2), fill, "float32"))
        assert v.dtype == np.float32
        assert y.owner.op.connection_pattern(y.owner) == [[False]]
        assert is_disconnected(y.owner.op.L_op([x], [y], [y])[0])
        assert y.owner.op.R_op([x], [y]) == [None]
    assert A.zeros_like(x, dtype="float64").owner.op == A.ZerosLike("float64")  # hashable, comparable


def test_arange_and_eye():
    assert A.arange(5).dtype == "int64" and A.arange(5).type.shape == (5,)
    assert A.arange(0.0, 1.0, 0.25).type.shape == (4,)
    assert A.arange(0.0, 1.0, 0.25).dtype == "float64"
    assert A.arange(1, 10, 3, dtype="float32").dtype == "float32"
    n = tensor("n", dtype="int64", shape=())
    a = A.arange(n)
    assert a.type.shape == (None,)
    np.testing.assert_array_equal(evaluate([a], {n: np.array(4)})[0], np.arange(4))
    with pytest.raises(ValueError, match="step"):
        A.arange(0, 5, 0)
    e = A.eye(3)
    assert e.type.shape == (3, 3) and e.dtype == "float64"
    np.testing.assert_array_equal(evaluate([A.eye(2, 3, 1, dtype="int64")], {})[0], np.eye(2, 3, 1, dtype=int))
    assert A.eye(n).type.shape == (None, None)
    with pytest.raises(TypeError, match="eye"):
        A.eye(2.5)


def test_specify_shape():
    x = matrix("x")
    y = A.specify_shape(x, (None, 3))
    assert y.type.shape == (None, 3)
    assert A.specify_shape(x, (2, S.shape_i(tensor("t", shape=(4,)), 0))).type.shape == (2, 4)
    np.testing.assert_array_equal(evaluate([y], {x: np.ones((2, 3))})[0], np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"specify_shape: x has shape \(2, 4\)"):
        evaluate([y], {x: np.ones((2, 4))})
    with pytest.raises(ValueError, match="contradicts"):
        A.specify_shape(tensor("t", shape=(2, 3)), (2, 4))
    with pytest.raises(ValueError, match="specify_shape"):
        A.specify_shape(x, (2,))


def test_roll_repeat_tile_static_and_errors():
    x = tensor("x", shape=(2, 3))
    assert A.roll(x, 5, axis=-1).type.shape == (2, 3)
    assert A.repeat(x, 2, axis=1).type.shape == (2, 6)
    assert A.repeat(x, [1, 2], axis=0).type.shape == (3, 3)
    assert A.repeat(x, 3).type.shape == (18,)
    with pytest.raises(ValueError, match="repeat"):
        A.repeat(x, [1, 2, 3], axis=0)
    with pytest.raises(ValueError, match="repeat"):
        A.repeat(x, -1, axis=0)
    assert A.tile(x, (2, 2)).type.shape == (4, 6)
    assert A.tile(x, 3).type.shape == (2, 9)
    assert A.tile(x, (0, 1, 1)).type.shape == (0, 2, 3)
    with pytest.raises(TypeError, match="tile"):
        A.tile(x, (tensor("r", dtype="int64", shape=()), 1))


def test_integer_input_gradient_flows_as_continuous():
    """Linear shape ops pass the gradient through an int input (cast to floatX), as Aesara's Reshape does."""
    i = tensor("i", dtype="int64", shape=(None, None))
    y = ops.mul(S.reshape(i, (-1,)), constant(np.arange(6.0)))
    (g,) = Lop(y, [i], [constant(np.ones(6))])
    assert g.dtype == "float64"
    np.testing.assert_array_equal(evaluate([g], {i: np.zeros((2, 3), "int64")})[0], np.arange(6.0).reshape(2, 3))


def test_perform_returns_fresh_arrays():
    x = matrix("x")
    xv = np.arange(6.0).reshape(2, 3)
    outs = [S.reshape(x, (3, 2)), S.flatten(x), S.transpose(x), A.specify_shape(x, (2, 3)),
            S.join(0, x), A.tile(x, (1, 1)), A.roll(x, 0)]
    for o, v in zip(outs, evaluate(outs, {x: xv})):
        assert not np.shares_memory(v, xv), o
        assert v.dtype == o.dtype


def test_ops_are_hashable_and_encode():
    a, b = S.Reshape(2), S.Reshape(2)
    assert a == b and hash(a) == hash(b)
    assert S.DimShuffle(2, ("x", 1, 0)).encode() == ((2, 3, -1, 1, 0), ())
    assert A.Tile((2, 3)).encode() == ((2, 2, 3), ())
    assert A.Split(3, 1).encode() == ((3, 1), ())


# --------------------------------------------------------------------------- properties
@st.composite
def _shuffles(draw):
    shp = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=4)))
    perm = draw(st.permutations(range(len(shp))))
    kept = [a for a in perm if shp[a] != 1 or draw(st.booleans())]
    pattern = list(kept)
    for _ in range(draw(st.integers(0, 2))):
        pattern.insert(draw(st.integers(0, len(pattern))), "x")
    return shp, tuple(pattern)


@settings(max_examples=40, deadline=None)
@given(_shuffles())
def test_dimshuffle_matches_numpy_and_adjoint(case):
    shp, pattern = case
    x = tensor("x", shape=shp)
    y = S.dimshuffle(x, pattern)
    xv = np.arange(np.prod(shp, dtype=int), dtype=float).reshape(shp)
    kept = [a for a in pattern if a != "x"]
    want = np.transpose(xv.reshape([n for a, n in enumerate(shp) if a in kept]), np.argsort(np.argsort(kept)))
    want = want.reshape([1 if a == "x" else shp[a] for a in pattern])
    got = evaluate([y], {x: xv})[0]
    np.testing.assert_array_equal(got, want)
    assert y.type.shape == got.shape
    rng = np.random.default_rng(0)
    _adjoint_check({x: xv}, [x], [xv], [y], rng, "float64", f"dimshuffle {pattern}")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.data())
def test_reshape_roundtrip_property(shp, data):
    shp = tuple(shp)
    size = int(np.prod(shp))
    target = list(data.draw(st.permutations(shp)))
    if data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    x = tensor("x", shape=tuple(data.draw(st.sampled_from([None, n])) for n in shp))
    y = S.reshape(x, tuple(target))
    xv = np.arange(size, dtype=float).reshape(shp)
    got = evaluate([y], {x: xv})[0]
    np.testing.assert_array_equal(got, xv.reshape(target))
    assert y.type.is_compatible_shape(got.shape)
    _adjoint_check({x: xv}, [x], [xv], [y], np.random.default_rng(1), "float64", f"reshape {target}")
