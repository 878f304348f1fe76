"""Tests of the indexing family (``tapegrad/ops/index.py``): values vs NumPy, static shapes, errors,
derivative rules (finite differences and the exact adjoint identity) and the tape encoding."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile.reference import evaluate
from tapegrad.gradient import Lop, Rop, grad
from tapegrad.op import is_disconnected
from tapegrad.ops import index as I
from tapegrad.registry import all_codes
from tests.ops.checks import row_inputs, row_wrt
from tests.ops.specs_index import ROWS


def ev(out, givens=None):
    return evaluate([out], givens or {})[0]


# --------------------------------------------------------------------------- the spec rows
CASES = [pytest.param(row, dt, id=f"{row.id}-{dt}") for row in ROWS for dt in row.dtypes]


@pytest.mark.parametrize("row, dtype", CASES)
def test_row(row, dtype):
    rng = np.random.default_rng(0)
    variables, values = row_inputs(row, dtype, rng)
    out = row.build(*variables)
    givens = dict(zip(variables, values))
    y = ev(out, givens)
    want = row.reference(*values)
    tol = 1e-12 if dtype == "float64" else 1e-6
    assert y.dtype == dtype and y.shape == np.shape(want)
    assert out.type.is_compatible_shape(y.shape)
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)

    wrt = list(row_wrt(row))
    v = rng.standard_normal(y.shape).astype(dtype)
    us = [rng.standard_normal(values[k].shape).astype(dtype) for k in wrt]
    wvars = [variables[k] for k in wrt]
    lop = evaluate(Lop(out, wvars, tg.constant(v)), givens)
    rop = ev(Rop(out, wvars, [tg.constant(u) for u in us]), givens)
    assert rop.dtype == dtype and all(g.dtype == dtype for g in lop)

    # the exact adjoint identity <v, J u> == <J^T v, u>
    lhs = np.vdot(v.astype("float64"), rop)
    rhs = sum(np.vdot(g.astype("float64"), u) for g, u in zip(lop, us))
    assert lhs == pytest.approx(rhs, rel=tol * 10, abs=tol * 10)

    # central differences of the graph itself (the ops are linear: exact up to rounding)
    eps = 1e-3 if dtype == "float64" else 1e-2
    fd_tol = 1e-8 if dtype == "float64" else 1e-3

    def at(k, x):
        return ev(out, {**givens, variables[k]: x}).astype("float64")

    jvp = 0.0
    for k, u, g in zip(wrt, us, lop):
        x = values[k].astype("float64")
        jvp = jvp + (at(k, (x + eps * u).astype(dtype)) - at(k, (x - eps * u).astype(dtype))) / (2 * eps)
        fd = np.zeros(x.shape)
        for j in np.ndindex(x.shape):
            e = np.zeros(x.shape)
            e[j] = eps
            fd[j] = np.vdot(v, at(k, (x + e).astype(dtype)) - at(k, (x - e).astype(dtype))) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=fd_tol, atol=fd_tol)
    np.testing.assert_allclose(rop, jvp, rtol=fd_tol, atol=fd_tol)


def test_every_index_code_has_a_row():
    covered = {r.code for r in ROWS} | {c for r in ROWS for c in r.also}
    codes = {name for name, code, _ in all_codes() if 400 <= code < 450}
    assert codes == covered
    assert len(codes) == 10


# --------------------------------------------------------------------------- values vs NumPy
XV = np.arange(24.0).reshape(2, 3, 4)


@pytest.mark.parametrize(
    "index",
    [1, -1, (0, 2), (slice(None), 1), (Ellipsis, -1), (None,), (1, None, slice(None, None, -2)),
     (slice(-2, None), Ellipsis, None, 0), (slice(5, None),), (slice(None, None, -1), slice(1, 100)), ()],
)
def test_basic_values_and_static_shapes(index):
    x = tg.tensor("x", shape=(2, 3, 4))
    y = x[index]
    assert y.type.shape == XV[index].shape  # every length is static here
    np.testing.assert_array_equal(ev(y, {x: XV}), XV[index])
    u = tg.tensor3("u")
    assert u[index].ndim == XV[index].ndim


def test_symbolic_bounds_and_indices():
    x, i, j = tg.matrix("x"), tg.iscalar("i"), tg.iscalar("j")
    xv = np.arange(20.0).reshape(4, 5)
    y = x[i:j:-1, i]
    assert y.ndim == 1 and y.type.shape == (None,)
    np.testing.assert_array_equal(ev(y, {x: xv, i: 3, j: 0}), xv[3:0:-1, 3])
    # 0-d int constants and NumPy ints are folded into the static index
    z = x[tg.constant(1), np.int32(-1)]
    assert len(z.owner.inputs) == 1
    assert ev(z, {x: xv}) == xv[1, -1]


def test_integer_array_indexing_values():
    x = tg.matrix("x")
    xv = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(ev(x[[2, -1, 0]], {x: xv}), xv[[2, -1, 0]])
    np.testing.assert_array_equal(ev(x[:, np.array([3, 3])], {x: xv}), xv[:, [3, 3]])
    np.testing.assert_array_equal(ev(x[None, :, [1]], {x: xv}), xv[None, :, [1]])
    np.testing.assert_array_equal(ev(x[1:, [0, 2]], {x: xv}), xv[1:, [0, 2]])
    np.testing.assert_array_equal(ev(x[np.array([[0, 1], [2, 2]])], {x: xv}), xv[[[0, 1], [2, 2]]])
    e = x[[]]
    assert e.type.shape == (0, None) and ev(e, {x: xv}).shape == (0, 4)
    assert x[[1, 2]].type.shape == (2, None)
    assert isinstance(x[[1, 2]].owner.op, I.AdvancedSubtensor1)


def test_inc_accumulates_like_add_at_and_set_last_wins():
    x, y = tg.vector("x"), tg.vector("y")
    xv, yv = np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0])
    idx = [1, 3, 1, -3]  # -3 is 1 again
    want = xv.copy()
    np.add.at(want, idx, yv)
    np.testing.assert_array_equal(ev(tg.inc_subtensor(x[idx], y), {x: xv, y: yv}), want)
    np.testing.assert_array_equal(ev(tg.set_subtensor(x[idx], y), {x: xv, y: yv}), [0.0, 4.0, 0.0, 2.0])
    # NumPy's buffered x[idx] += y: repeats add once (the last one)
    got = ev(tg.inc_subtensor(x[idx], y, ignore_duplicates=True), {x: xv, y: yv})
    np.testing.assert_array_equal(got, [0.0, 4.0, 0.0, 2.0])


def test_set_repeats_only_last_writer_gets_gradient():
    x, y = tg.vector("x"), tg.vector("y")
    i = tg.ivector("i")
    out = tg.set_subtensor(x[i], y)
    g = tg.constant(np.array([10.0, 20.0, 30.0]))
    gx, gy = Lop(out, [x, y], g)
    vals = {x: np.zeros(3), y: np.array([1.0, 2.0, 3.0, 4.0]), i: np.array([0, 2, 0, -1])}
    np.testing.assert_array_equal(ev(gx, vals), [0.0, 20.0, 0.0])
    np.testing.assert_array_equal(ev(gy, vals), [0.0, 0.0, 10.0, 30.0])
    t = Rop(out, y, tg.constant(np.array([1.0, 2.0, 3.0, 4.0])))
    np.testing.assert_array_equal(ev(t, vals), [3.0, 0.0, 4.0])


def test_inc_subtensor_basic_forms():
    x, s = tg.matrix("x"), tg.scalar("s")
    xv = np.arange(12.0).reshape(3, 4)
    want = xv.copy()
    want[1:, ::2] += 5.0
    np.testing.assert_array_equal(ev(tg.inc_subtensor(x[1:, ::2], s), {x: xv, s: 5.0}), want)
    want = xv.copy()
    want[:, 1] = 7.0
    np.testing.assert_array_equal(ev(tg.set_subtensor(x[:, 1], 7), {x: xv}), want)  # weak int into float
    want = xv.copy()
    want[1:, [2, 2]] = -1.0
    np.testing.assert_array_equal(ev(tg.set_subtensor(x[1:, [2, 2]], -1.0), {x: xv}), want)
    out = tg.inc_subtensor(x[0], s)
    assert out.type.shape == (None, None) and out.dtype == "float64"


def test_take():
    x, i = tg.tensor3("x"), tg.iscalar("i")
    xv = np.arange(24.0).reshape(2, 3, 4)
    for idx, axis in [([0, 2, 2], 1), ([[1], [0]], -1), (1, 0), (np.int64(-1), 2), ([0, -1], 0)]:
        np.testing.assert_array_equal(ev(tg.take(x, idx, axis=axis), {x: xv}), np.take(xv, idx, axis=axis))
    np.testing.assert_array_equal(ev(tg.take(x, i, axis=1), {x: xv, i: 2}), np.take(xv, 2, axis=1))
    v = tg.vector("v")
    np.testing.assert_array_equal(ev(tg.take(v, [3, 0, 3]), {v: np.arange(4.0)}), [3.0, 0.0, 3.0])
    with pytest.raises(IndexError, match="axis 3"):
        tg.take(x, [0], axis=3)


def test_take_axis_none_flattens():
    x = tg.matrix("x")
    xv = np.arange(6.0).reshape(2, 3)
    try:
        y = tg.take(x, [5, 0])
    except (AttributeError, NotImplementedError):
        pytest.skip("flatten (ops/shape.py) is not available yet")
    np.testing.assert_array_equal(ev(y, {x: xv}), np.take(xv, [5, 0]))


def test_float32_and_int_dtypes():
    x = tg.fvector("x")
    xv = np.arange(4, dtype="float32")
    assert x[1:].dtype == "float32" and x[[0]].dtype == "float32"
    out = tg.inc_subtensor(x[[0, 0]], 1.5)  # a Python float does not upcast float32
    assert out.dtype == "float32"
    np.testing.assert_array_equal(ev(out, {x: xv}), [3.0, 1.0, 2.0, 3.0])
    iv = tg.ivector("iv")
    out = tg.set_subtensor(iv[1:], 7)
    assert out.dtype == "int64"
    np.testing.assert_array_equal(ev(out, {iv: np.arange(3)}), [0, 7, 7])


# --------------------------------------------------------------------------- derivative rules
def test_grad_of_slices_and_array_indexing():
    x = tg.vector("x")
    xv = np.arange(1.0, 6.0)
    cost = (x[1:] * x[:-1]).sum() + (x[[0, 0, 4]] ** 2).sum()
    g = ev(grad(cost, x), {x: xv})
    want = np.zeros(5)
    want[1:] += xv[:-1]
    want[:-1] += xv[1:]
    np.add.at(want, [0, 0, 4], 2 * xv[[0, 0, 4]])
    np.testing.assert_allclose(g, want)


def test_index_inputs_are_disconnected():
    x, i = tg.vector("x"), tg.iscalar("i")
    y = x[i:]
    node = y.owner
    assert node.op.connection_pattern(node) == [[True], [False]]
    gx, gi = node.op.L_op(node.inputs, node.outputs, [tg.vector("g")])
    assert not is_disconnected(gx) and is_disconnected(gi)
    iv = tg.ivector("iv")
    node = tg.inc_subtensor(x[iv], 1.0).owner
    assert node.op.connection_pattern(node) == [[True], [True], [False]]
    for cls in (I.AdvancedScatter1, I.AdvancedScatter1Set):  # x only gives the shape: any dtype
        node = cls(0)(tg.ivector("ref"), tg.vector("y"), iv).owner
        assert node.op.connection_pattern(node) == [[False], [True], [False]]
        assert node.outputs[0].type == tg.vector().type


def test_rop_with_one_tangent_missing():
    x, y = tg.vector("x"), tg.vector("y")
    vals = {x: np.arange(4.0), y: np.array([1.0, 2.0])}
    for fn in (tg.inc_subtensor, tg.set_subtensor):
        for read in (lambda v: v[1:3], lambda v: v[[2, 2]]):
            out = fn(read(x), y)
            ux = tg.constant(np.ones(4))
            uy = tg.constant(np.array([10.0, 20.0]))
            tx, ty = ev(Rop(out, x, ux), vals), ev(Rop(out, y, uy), vals)
            both = ev(Rop(out, [x, y], [ux, uy]), vals)
            np.testing.assert_allclose(tx + ty, both)


def test_second_order_through_scatter():
    x = tg.vector("x")
    cost = (x[[1, 1, 2]] ** 3).sum()
    h = ev(grad(grad(cost, x)[1], x), {x: np.array([0.0, 2.0, 3.0])})
    np.testing.assert_allclose(h, [0.0, 2 * 6 * 2.0, 0.0])


# --------------------------------------------------------------------------- errors
def test_static_out_of_range_raises_at_construction():
    x = tg.tensor("x", shape=(3, None))
    with pytest.raises(IndexError, match=r"index 3 .* axis 0 of x"):
        x[3]
    with pytest.raises(IndexError, match=r"index -4 .* axis 0 of x"):
        x[-4]
    with pytest.raises(IndexError, match=r"index 5 .* axis 0 of x"):
        x[[0, 5]]
    x[:, 100]  # unknown length: checked when run


def test_runtime_out_of_range_names_the_variable():
    x = tg.matrix("x")
    xv = np.zeros((2, 3))
    with pytest.raises(IndexError, match=r"SUBTENSOR: index 3 .* axis 1 of x with length 3"):
        ev(x[:, 3], {x: xv})
    with pytest.raises(IndexError, match=r"ADVANCED_SUBTENSOR1: index -3 .* axis 0 of x"):
        ev(x[[0, -3]], {x: xv})
    i = tg.ivector("i")
    with pytest.raises(IndexError, match=r"ADVANCED_INC_SUBTENSOR1: index 2 .* of x"):
        ev(tg.inc_subtensor(x[i], 1.0), {x: xv, i: np.array([2])})
    s = tg.iscalar("s")
    with pytest.raises(ValueError, match="step cannot be zero"):
        ev(x[::s], {x: xv, s: 0})


def test_bad_indices():
    x = tg.matrix("x")
    with pytest.raises(IndexError, match="too many indices for x"):
        x[0, 0, 0]
    with pytest.raises(IndexError, match="single ellipsis"):
        x[..., 0, ...]
    with pytest.raises(TypeError, match="invalid index 1.5"):
        x[1.5]
    with pytest.raises(TypeError, match="must be an integer"):
        x[tg.scalar("f"):]
    with pytest.raises(TypeError, match="integers"):
        x[tg.vector("fv")]
    with pytest.raises(TypeError, match="boolean"):
        x[tg.bvector("b")]
    with pytest.raises(TypeError, match="boolean"):
        x[True]
    with pytest.raises(ValueError, match="step cannot be zero"):
        x[::0]
    with pytest.raises(NotImplementedError, match="more than one integer array"):
        x[[0], [1]]
    with pytest.raises(NotImplementedError, match="integer and an integer array"):
        x[0, [1]]
    with pytest.raises(IndexError, match="too many indices"):
        tg.scalar("s")[0]


def test_bad_writes():
    x, y = tg.matrix("x"), tg.vector("y")
    with pytest.raises(TypeError, match="result of indexing a variable.*got x"):
        tg.inc_subtensor(x, y)
    with pytest.raises(TypeError, match="result of indexing.*made by"):
        tg.set_subtensor(x + 1, y)
    with pytest.raises(TypeError, match="dtype float64.*dtype int64"):
        tg.set_subtensor(tg.ivector("iv")[0], tg.scalar("s"))
    with pytest.raises(TypeError, match="float64"):
        tg.inc_subtensor(tg.fvector("fv")[1:], tg.dvector("d"))
    with pytest.raises(ValueError, match="dimensions"):
        tg.inc_subtensor(x[0], tg.matrix("m"))
    xs = tg.tensor("xs", shape=(4, 3))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        tg.inc_subtensor(xs[1:3], tg.tensor("ys", shape=(3, 3)))
    with pytest.raises(ValueError, match=r"cannot be broadcast to the indexed shape \(2, 3\)"):
        ev(tg.inc_subtensor(x[1:], y), {x: np.zeros((3, 3)), y: np.zeros(2)})
    with pytest.raises(ValueError, match="cannot be broadcast to the indexed shape"):
        ev(tg.set_subtensor(x[[0, 1]], y), {x: np.zeros((3, 3)), y: np.zeros(2)})


# --------------------------------------------------------------------------- encoding and identity
def test_encoding_is_documented_ints():
    x, i = tg.tensor3("x"), tg.iscalar("i")
    op = x[1, None, i::-2].owner.op
    N = -(2**62)
    assert op.entries == ((0, 1, 0, 0, 0), (1, 0, None, -2, 1), (1, None, None, None, 0))
    assert op.newaxes == (0,)
    ints, floats = op.encode()
    assert floats == ()
    assert ints == (3, 5, 0, 1, 0, 0, 0, 5, 1, 0, N, -2, 1, 5, 1, N, N, N, 0, 1, 0)
    assert I.AdvancedSubtensor1(2).encode() == ((2,), ())
    inc = tg.inc_subtensor(x[1, None, i::-2], 1.0).owner.op
    assert inc.encode() == op.encode()


def test_ops_compare_equal_for_cse_and_infer_shape():
    x = tg.matrix("x")
    a, b = x[1:, 0], x[1:, 0]
    assert a.owner.op == b.owner.op and hash(a.owner.op) == hash(b.owner.op)
    assert x[0:].owner.op == x[:].owner.op and x[::1].owner.op == x[:].owner.op
    assert a.owner.op.infer_shape(a.owner, [(5, 3)]) == [(4,)]
    i = tg.iscalar("i")
    c = x[i:]
    with pytest.raises(NotImplementedError):
        c.owner.op.infer_shape(c.owner, [(5, 3), ()])
    d = x[:, [0, 0, 1]]
    assert d.owner.op.infer_shape(d.owner, [(5, 3), (3,)]) == [(5, 3)]
    e = tg.set_subtensor(x[i:], 0.0)  # a write keeps x's shape whatever the bounds
    assert e.owner.op.infer_shape(e.owner, [(5, 3), (), ()]) == [(5, 3)]


def test_perform_outputs_are_fresh_arrays():
    x = tg.vector("x")
    xv = np.arange(4.0)
    for out in (x[1:], x[::-1], x[[0]], tg.inc_subtensor(x[1:], 1.0)):
        y = ev(out, {x: xv})
        assert not np.shares_memory(y, xv)
    np.testing.assert_array_equal(xv, np.arange(4.0))  # inputs untouched


def test_integer_input_is_differentiated_as_continuous():
    # indexing and writes select and add values exactly, so an int x passes gradient like a float one
    w = tg.vector("w")
    grads = []
    for x in (tg.ivector("x"), tg.vector("x")):
        y1 = tg.set_subtensor(x[[0, 2, 0]], x[1:4]).astype("float64")
        y2 = tg.inc_subtensor(x[::-1][:3], 2).astype("float64")
        cost = (y1 * w).sum() + (y2 * w * w).sum()
        grads.append(ev(grad(cost, x), {x: np.arange(4), w: np.arange(1.0, 5.0)}))
    assert grads[0].dtype == "float64"
    np.testing.assert_array_equal(grads[0], grads[1])
