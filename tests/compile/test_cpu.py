"""The tier-0 CPU engine (numba interpreter) against the reference engine."""

import os
import tempfile

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tapegrad-numba-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tapegrad.ops as O  # noqa: E402
from tapegrad.compile.cpu import CPUEngine  # noqa: E402
from tapegrad.compile.reference import ReferenceEngine  # noqa: E402
from tapegrad.graph import SharedVariable, TensorType  # noqa: E402
from tapegrad.op import Apply, Op, make_output  # noqa: E402
from tapegrad.ops.elemwise import ELEMWISE, SPECS  # noqa: E402
from tapegrad.tape.build import build_tape  # noqa: E402

TOL = {"float64": dict(rtol=1e-12, atol=1e-300), "float32": dict(rtol=1e-5, atol=1e-6)}
RNG = np.random.default_rng(0)


def var(dtype, ndim, name=None):
    return TensorType(dtype, (None,) * ndim)(name)


def rand(shape, dtype, domain=(-2.0, 2.0), rng=RNG):
    lo, hi = domain
    if np.dtype(dtype).kind == "f":
        return rng.uniform(lo, hi, size=shape).astype(dtype)
    if dtype == "bool":
        return rng.uniform(size=shape) > 0.5
    return rng.integers(int(np.floor(lo)) - 2, int(np.ceil(hi)) + 3, size=shape).astype(dtype)


def run_both(inputs, outputs, values, updates=(), shared=(), rewrite=False):
    tape = build_tape(inputs, outputs, updates=updates, rewrite=rewrite)
    cpu = CPUEngine(tape)
    got, _ = cpu.run(values, shared)
    want, _ = ReferenceEngine(tape).run([np.asarray(v) for v in values], shared)
    return cpu, got, want


def assert_same(got, want, dtype=None):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        tol = TOL.get(str(w.dtype))
        if tol is None:
            np.testing.assert_array_equal(g, w)
        else:
            fin = np.isfinite(w)
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            np.testing.assert_array_equal(g[~fin & ~np.isnan(w)], w[~fin & ~np.isnan(w)])
            np.testing.assert_allclose(g[fin], w[fin], **tol)


def _shapes(nin):
    # broadcasting with size-1 dims, a missing leading dim and a 0-d operand
    return {1: [(3, 4)], 2: [(3, 1, 4), (5, 1)], 3: [(2, 3), (3,), ()]}[nin]


FLOAT_SPECS = [s for s in ELEMWISE if s.name not in ("int_div",)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", ELEMWISE, ids=[s.name for s in ELEMWISE])
def test_elementwise_matches_reference(spec, dtype):
    shapes = _shapes(spec.nin)
    domains = spec.domain if len(spec.domain) == spec.nin else spec.domain * spec.nin
    xs = [var(dtype, len(sh)) for sh in shapes]
    vals = [rand(sh, dtype, d) for sh, d in zip(shapes, domains)]
    if spec.name == "switch":
        vals[0] = (vals[0] > 0).astype(dtype)
    op = O.elemwise._BY_NAME[spec.name]
    y = op(*xs)
    cpu, got, want = run_both(xs, [y], vals)
    if spec.name in ("psi", "trigamma"):  # our own series vs scipy; psi has a root in the domain
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12 if dtype == "float64" else 1e-5, atol=1e-12)
    else:
        assert_same(got, want)
    assert cpu.native.all(), f"{spec.name} {dtype} fell back to callback"


@pytest.mark.parametrize("name", ["add", "sub", "mul", "neg", "maximum", "minimum", "int_div", "mod", "lt", "eq",
                                  "ge", "switch", "abs", "sqr", "exp", "true_div", "logical_and"])
def test_int_and_bool_inputs(name):
    spec = SPECS[name]
    shapes = _shapes(spec.nin)
    dts = ["bool"] + ["int64"] * (spec.nin - 1) if name == "switch" else ["int64"] * spec.nin
    if name == "logical_and":
        dts = ["bool", "bool"]
    xs = [var(d, len(sh)) for d, sh in zip(dts, shapes)]
    vals = [rand(sh, d, (1, 4) if name in ("int_div", "mod") and i == 1 else (-3, 3)) for i, (d, sh) in
            enumerate(zip(dts, shapes))]
    if name in ("int_div", "mod"):
        vals[1] = np.where(vals[1] == 0, 1, vals[1])
    y = O.elemwise._BY_NAME[name](*xs)
    cpu, got, want = run_both(xs, [y], vals)
    assert_same(got, want)


def test_mixed_dtypes_and_weak_constants():
    x = var("float32", 1, "x")
    i = var("int64", 1, "i")
    b = var("bool", 1, "b")
    outs = [x * 2.0 + 1, x + i, O.lt(x, 0.5), O.switch(b, x, -x), i * 3 + 1, O.cast(x, "int64"),
            O.cast(i, "float32"), O.cast(x, "bool"), (x > 0) * 1.5]
    vals = [rand((6,), "float32"), rand((6,), "int64"), rand((6,), "bool")]
    cpu, got, want = run_both([x, i, b], outs, vals)
    assert_same(got, want)
    assert cpu.native.all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shapes", [((0, 3), (3,)), ((4, 0), (1, 0)), ((2, 0, 3), (1, 1)), ((0,), ()),
                                    ((1, 1), (3, 1, 5)), ((7, 1, 2), (1, 6, 1))])
def test_broadcasting_size_0_and_1(shapes, dtype):
    a, b = var(dtype, len(shapes[0])), var(dtype, len(shapes[1]))
    y = O.exp(a) * b - a / (b * b + 1)
    vals = [rand(s, dtype) for s in shapes]
    cpu, got, want = run_both([a, b], [y], vals)
    assert_same(got, want)


def test_large_blocks_and_strided_broadcast():
    # larger than a gather block, broadcast along the middle axis, 5 dims
    a, b = var("float64", 5), var("float64", 3)
    y = O.sin(a) + b * a
    vals = [rand((2, 3, 1, 50, 70), "float64"), rand((40, 1, 70), "float64")]
    cpu, got, want = run_both([a, b], [y], vals)
    assert_same(got, want)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_sum_like_and_broadcast_like(dtype):
    g, x = var(dtype, 3), var(dtype, 2)
    s = O.sum_like(g, x)
    bl = O.broadcast_like(x, g)
    vals = [rand((4, 3, 5), dtype), rand((1, 5), dtype)]
    cpu, got, want = run_both([g, x], [s, bl], vals)
    assert_same(got, want)
    assert cpu.native.all()
    x0 = var(dtype, 0)
    cpu, got, want = run_both([g, x0], [O.sum_like(g, x0)], [rand((30, 20, 7), dtype), rand((), dtype)])
    assert_same(got, want)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_same_shape_sum_like_copies_contiguous_and_strided_inputs(dtype):
    # nothing to sum: a contiguous input is copied without an accumulator, a strided view (a transpose) goes
    # through the summing path; both give the input (a leading 1 of the input dropped as the target says)
    g, x, h = var(dtype, 2), var(dtype, 2), var(dtype, 3)
    vals = [rand((6, 7), dtype), rand((6, 7), dtype), rand((1, 7, 6), dtype)]
    outs = [O.sum_like(g * 2, x), O.sum_like(g.T, x.T), O.sum_like(h, g.T)]
    cpu, got, want = run_both([g, x, h], outs, vals)
    assert_same(got, want)
    assert got[0].dtype == np.dtype(dtype) and got[2].shape == (7, 6)
    np.testing.assert_array_equal(got[0], vals[0] * 2)
    np.testing.assert_array_equal(got[1], vals[0].T)
    np.testing.assert_array_equal(got[2], vals[2][0])


# ----------------------------------------------------------------------------- callbacks
class CumSum(Op):
    """A user op: no code, no infer_shape -> runs by callback, shape found by a pre-pass."""

    def make_node(self, x):
        from tapegrad.graph import as_tensor

        x = as_tensor(x)
        return Apply(self, [x], [make_output(x.dtype, (None,))])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.cumsum(inputs[0].ravel())


class Halve(Op):
    """A user op with infer_shape (planned statically)."""

    def make_node(self, x):
        from tapegrad.graph import as_tensor

        x = as_tensor(x)
        return Apply(self, [x], [make_output(x.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = inputs[0] / 2

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mixed_native_and_callback_segments(dtype):
    x, w = var(dtype, 2, "x"), var(dtype, 1, "w")
    h = O.tanh(x * w + 1)
    c = CumSum()(Halve()(h))
    y = O.exp(-c) * 3 + O.sqr(c)
    cpu, got, want = run_both([x, w], [y, h], [rand((3, 4), dtype), rand((4,), dtype)])
    assert_same(got, want)
    nat, cb = cpu.native_codes()
    assert cb == {"CALLBACK": 2}
    assert [s[0] for s in cpu.segments] == [True, False, False, True]
    # another shape signature re-plans; same shape reuses the plan
    for shape in [(5, 4), (3, 4), (0, 4)]:
        vals = [rand(shape, dtype), rand((4,), dtype)]
        got, _ = cpu.run(vals, [])
        want, _ = ReferenceEngine(cpu.tape).run(vals, [])
        assert_same(got, want)
    assert len(cpu._plans) == 3


def test_outputs_are_fresh_and_inputs_untouched():
    x = var("float64", 1, "x")
    y = x + 1
    tape = build_tape([x], [y, x, y])
    cpu = CPUEngine(tape)
    xv = np.arange(5.0)
    keep = xv.copy()
    (a, b, c), _ = cpu.run([xv], [])
    np.testing.assert_array_equal(xv, keep)
    assert not np.shares_memory(b, xv)
    assert not np.shares_memory(a, c)
    for arena in cpu._plans[((5,),)].arenas.values():
        for out in (a, b, c):
            assert not np.shares_memory(out, arena)
    a[:] = -7
    (a2, _, _), _ = cpu.run([xv], [])
    np.testing.assert_array_equal(a2, xv + 1)


def test_shared_and_updates():
    w = SharedVariable(TensorType("float64", (None,)), np.ones(3), name="w")
    x = var("float64", 1, "x")
    y = O.exp(w) * x
    tape = build_tape([x], [y], updates=[(w, w - 0.1 * y)])
    cpu, ref = CPUEngine(tape), ReferenceEngine(tape)
    xv = np.array([1.0, 2.0, 3.0])
    sh = [np.ones(3)]
    got, want = cpu.run([xv], sh), ref.run([xv], sh)
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])


def test_rosenbrock_value_matches_numpy():
    x = var("float64", 1, "x")
    y = 100 * (x - x**2) ** 2 + (1 - x) ** 2
    tape = build_tape([x], [y], rewrite=True)
    xv = rand((10_000,), "float64")
    (got,), _ = CPUEngine(tape).run([xv], [])
    np.testing.assert_allclose(got, 100 * (xv - xv**2) ** 2 + (1 - xv) ** 2, rtol=1e-12)


# ----------------------------------------------------------------------------- native steps and views
import tapegrad as tg  # noqa: E402
from tapegrad.ops.linalg import Einsum  # noqa: E402
from tapegrad.ops.reduce import BroadcastReduced  # noqa: E402


def _all_native(cpu):
    nat, cb = cpu.native_codes()
    assert cb == {}, cb
    return nat


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(3, 4, 5), (0, 4, 2), (1, 1, 1)])
def test_reductions_native(dtype, shape):
    x = var(dtype, 3, "x")
    outs = [O.sum(x), O.sum(x, axis=1), O.sum(x, axis=(0, 2), keepdims=True), O.mean(x, axis=-1),
            O.mean(x), tg.sum(x, axis=(0, 1)), BroadcastReduced(1, False, True, 0)(O.sum(x, axis=1), x),
            BroadcastReduced(None, False)(O.sum(x), x), BroadcastReduced((0, 2), True)(O.sum(x, (0, 2), True), x)]
    if 0 not in shape:
        outs += [O.max(x, axis=1), O.min(x), O.max(x, axis=(0, 2), keepdims=True)]
    cpu, got, want = run_both([x], outs, [rand(shape, dtype)])
    assert_same(got, want)
    nat = _all_native(cpu)
    assert {"SUM", "MEAN", "BROADCAST_REDUCED"} <= set(nat)


def test_fills_native():
    x = var("float64", 2, "x")
    outs = [O.zeros_like(x) + x, O.ones_like(x, dtype="float32"), tg.alloc(tg.sum(x), 2, 3), tg.alloc(x[0], 4, 3)]
    cpu, got, want = run_both([x], outs, [rand((5, 3), "float64")])
    assert_same(got, want)
    assert {"ZEROS_LIKE", "ONES_LIKE", "ALLOC"} <= set(_all_native(cpu))


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_views_feed_elementwise_and_reductions(dtype):
    x = var(dtype, 2, "x")
    a = x[1:, ::2] * 2 + x[:-1, ::-2]          # strided and negative-step slices
    b = tg.transpose(x) + 1                      # dimshuffle view, non-contiguous gather
    c = tg.sum(x[::2, 1:], axis=0)                # reduction over a strided view
    d = tg.reshape(x, (5, 6)) + 0                # reshape of a contiguous input
    e = tg.flatten(x[1:]) + x[0, 0]              # flatten of a contiguous slice, int-indexed 0-d view
    f = tg.dimshuffle(x[:, 1], ("x", 0)) * x[None, :, 1]
    g = x[::-1]                                   # a view that is an output: copied, not aliased
    cpu, got, want = run_both([x], [a, b, c, d, e, f, g], [rand((6, 5), dtype)])
    assert_same(got, want)
    plan = cpu._last_plan
    assert "view" in plan.kinds.values()
    assert not any(s in plan.layout for s in cpu.tape.output_slots)
    _all_native(cpu)


def test_view_base_stays_alive():
    """A view of a temporary keeps the temporary's block from reuse until the view's last use."""
    x = var("float64", 1, "x")
    t = O.exp(x)
    v = t[::2]
    z = x
    for i in range(6):  # temporaries that would reuse t's block if it were freed early
        z = O.sin(z) * (i + 1) + O.cos(z)
    y = O.sum(z[::2]) + v * 3
    cpu, got, want = run_both([x], [y], [rand((101,), "float64")])
    assert_same(got, want)
    # run twice on the same plan: the arenas are reused
    got2, _ = cpu.run([rand((101,), "float64")], [])
    assert got2[0].shape == (51,)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_writes_native(dtype):
    x, y = var(dtype, 2, "x"), var(dtype, 1, "y")
    outs = [O.inc_subtensor(x[1:, 2], y[:3]), O.set_subtensor(x[::2], y), tg.grad(tg.sum(x[1:, ::2] ** 2), x)]
    cpu, got, want = run_both([x, y], outs, [rand((4, 5), dtype), rand((5,), dtype)])
    assert_same(got, want)
    assert {"SUBTENSOR_SCATTER"} <= set(_all_native(cpu))


EINSUMS = [("ij,jk->ik", (3, 4), (4, 5)), ("ij,kj->ik", (3, 4), (5, 4)), ("ji,jk->ik", (4, 3), (4, 5)),
           ("i,j->ij", (3,), (4,)), ("ik,ij->jk", (4, 3), (4, 5)), ("ij,j->i", (3, 4), (4,)), ("j,j->", (4,), (4,)),
           ("...ij,...jk->...ik", (2, 3, 4), (2, 4, 5)), ("...ij,...kj->...ik", (2, 3, 4), (1, 5, 4)),
           ("...ji,...jk->...ik", (2, 4, 3), (4, 5)), ("...ik,...jk->...ij", (2, 3, 5), (2, 4, 5)),
           ("ij,jk->ki", (3, 4), (4, 5)), ("ijk,jk->i", (3, 4, 2), (4, 2)), ("ij,jk->ik", (0, 4), (4, 5)),
           ("ij,jk->ik", (3, 0), (0, 5))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec,sa,sb", EINSUMS)
def test_einsum_as_matmul(spec, sa, sb, dtype):
    a, b = var(dtype, len(sa), "a"), var(dtype, len(sb), "b")
    y = Einsum(spec)(a, b)
    cpu, got, want = run_both([a, b], [y, Einsum(spec)(a[::-1], b) if sa[0] else y], [rand(sa, dtype), rand(sb, dtype)])
    assert_same(got, want)
    assert "EINSUM" in _all_native(cpu)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((), (3, 2))])
def test_dot_and_matmul_native(sa, sb):
    a, b = var("float64", len(sa), "a"), var("float64", len(sb), "b")
    outs = [O.dot(a, b)] + ([O.matmul(a, b)] if sa and sb else [])
    cpu, got, want = run_both([a, b], outs, [rand(sa, "float64"), rand(sb, "float64")])
    assert_same(got, want)
    _all_native(cpu)


def test_batched_matmul_and_mlp_grads_native():
    a, b = var("float64", 3, "a"), var("float64", 2, "b")
    y = O.matmul(a, b)
    ga, gb = tg.grad(tg.sum(O.tanh(y) ** 2), [a, b])
    cpu, got, want = run_both([a, b], [y, ga, gb], [rand((2, 3, 4), "float64"), rand((4, 5), "float64")])
    assert_same(got, want)
    _all_native(cpu)


# --------------------------------------------------------------------------- roll, shapes, map_rows as plan steps
def _callbacks(cpu):
    return cpu.native_codes()[1]


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("shift", [0, 1, -1, 2, 7, -13])
def test_roll_is_a_step_with_constant_and_runtime_shift(axis, shift):
    import tapegrad as tg

    x, s = var("float64", 2, "x"), TensorType("int64", ())("s")
    xv = rand((3, 4), "float64")
    for rewrite in (False, True):
        cpu, got, want = run_both([x], [tg.roll(x, shift, axis=axis), tg.roll(x.T, shift, axis=axis) * 2.0], [xv],
                                  rewrite=rewrite)
        assert_same(got, want)
        assert "ROLL" not in _callbacks(cpu)
        np.testing.assert_array_equal(got[0], np.roll(xv, shift, axis=axis))
    tape = build_tape([x, s], [tg.roll(x, s, axis=axis), tg.roll(x[:, ::2], s, axis=axis)])
    cpu = CPUEngine(tape)
    for sv in (shift, shift + 5, -shift - 1):  # one plan, the shift read at run time
        got, _ = cpu.run([xv, np.asarray(sv)])
        want, _ = ReferenceEngine(tape).run([xv, np.asarray(sv)], [])
        assert_same(got, want)
    assert len(cpu._plans) == 1 and "ROLL" not in _callbacks(cpu)
    got, _ = cpu.run([np.zeros((0, 4)), np.asarray(shift)])
    assert got[0].shape == (0, 4)


def test_roll_grad_matches_reference():
    import tapegrad as tg

    u, F = var("float64", 1, "u"), TensorType("float64", ())("F")
    y = u
    for _ in range(5):
        y = y + 0.01 * ((tg.roll(y, -1) - tg.roll(y, 2)) * tg.roll(y, 1) - y + F)
    loss = tg.sum(y * y)
    outs = [loss, *tg.grad(loss, [u, F])]
    cpu, got, want = run_both([u, F], outs, [rand((9,), "float64"), np.asarray(8.0)], rewrite=True)
    assert_same(got, want)
    assert _callbacks(cpu) == {}


def test_shape_eye_join_reshape_are_plan_time_and_map_rows_needs_no_prepass():
    import tapegrad as tg

    A, x = var("float64", 2, "A"), var("float64", 1, "x")
    y = tg.tanh(tg.dot(A, x)) + x ** 3
    J = tg.jacobian(y, x)
    tape = build_tape([A, x], [J, tg.eye(x.shape[0]) * 2.0, tg.concatenate([x, tg.roll(x, 1)])])
    cpu = CPUEngine(tape)
    ref = ReferenceEngine(tape)
    for n in (5, 5, 3):
        vals = [rand((n, n), "float64"), rand((n,), "float64")]
        got, _ = cpu.run(vals)
        want, _ = ref.run(vals, [])
        for g, w in zip(got, want):  # sums in another order (BLAS vs the reference's NumPy calls)
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert cpu._dynamic == set()
    assert _callbacks(cpu) == {}
    assert len(cpu._plans) == 2


def test_plan_time_values_survive_buffer_reuse():
    import tapegrad as tg

    x = var("float64", 1, "x")
    n = x.shape[0]
    y = tg.reshape(tg.exp(x) * tg.sum(x), (n, 1))
    z = tg.sum(y) + tg.eye(n)[0] * tg.cast(n, "float64")
    tape = build_tape([x], [y, z])
    cpu = CPUEngine(tape)
    for _ in range(3):
        xv = rand((4,), "float64")
        got, _ = cpu.run([xv])
        want, _ = ReferenceEngine(tape).run([xv], [])
        assert_same(got, want)


def test_map_rows_runs_its_inner_graph_on_the_cpu_engine():
    import tapegrad as tg

    A, x = var("float64", 2, "A"), var("float64", 1, "x")
    J = tg.jacobian(tg.sin(tg.dot(A, x)) * x, x, vectorize=False)  # the MAP_ROWS route
    tape = build_tape([A, x], [J])
    (k,) = [k for k in range(len(tape)) if tape.ops[k].code == "MAP_ROWS"]
    cpu = CPUEngine(tape)
    vals = [rand((4, 4), "float64"), rand((4,), "float64")]
    got, _ = cpu.run(vals)
    want, _ = ReferenceEngine(tape).run(vals, [])
    assert_same(got, want)
    op = tape.ops[k]
    assert isinstance(op._inner_fn("cpu")._engine, CPUEngine)
    assert cpu._last_plan.kinds[k] == "step"


@pytest.mark.usefixtures("no_background_compiles")
def test_user_op_warns_once_per_class():
    import warnings

    class Triple(Op):
        def make_node(self, x):
            from tapegrad.graph import as_tensor

            x = as_tensor(x)
            return Apply(self, [x], [make_output(x.dtype, x.type.shape)])

        def perform(self, node, inputs, output_storage):
            output_storage[0][0] = inputs[0] * 3

        def infer_shape(self, node, input_shapes):
            return [input_shapes[0]]

    x = var("float64", 1, "x")
    y = Triple()(Triple()(O.exp(x)) + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (3, 4, 3):  # two plans, two instructions of the class: one warning
            cpu = CPUEngine(build_tape([x], [y]))
            got, _ = cpu.run([np.arange(float(n))], [])
            np.testing.assert_allclose(got[0], 3 * (3 * np.exp(np.arange(float(n))) + 1))
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1, msgs
    assert "Triple" in msgs[0] and "runs in Python inside a compiled function" in msgs[0]


@pytest.mark.parametrize("tier", ["fused", "interp", None])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiers_with_callbacks_dynamic_shapes_and_updates(tier, dtype):
    """Fused groups around user ops (one with a value-dependent shape), views and shared-variable updates."""
    from tapegrad.compile import cpu as cpu_mod

    x, w = var(dtype, 2, "x"), var(dtype, 1, "w")
    h = O.tanh(x * w + 1) * O.exp(-x) - w
    c = CumSum()(Halve()(h * 2 + 1))
    y = O.exp(-c) * 3 + O.sqr(c) - c * c * c
    s = SharedVariable(TensorType(dtype, (None,)), np.ones(4, dtype), name="s")
    z = O.sum(h[:, ::2] * 2 + h[:, ::2] ** 2) + O.sum(s * s + 1)
    tape = build_tape([x, w], [y, h, z], updates=[(s, s - O.sum(h * h - 1, axis=0) * 0.1)])
    cpu = CPUEngine(tape, tier=tier)
    for shape in [(3, 4), (3, 4), (0, 4), (5, 4)] + [(3, 4)] * (cpu_mod.FUSE_AFTER_USES + 2):
        vals = [rand(shape, dtype), rand((4,), dtype)]
        sh = [rand((4,), dtype)]
        got, up = cpu.run(vals, sh)
        want, wup = ReferenceEngine(tape).run(vals, sh)
        assert_same(got + up, want + wup)
        for plan in cpu._plans.values():
            for st in plan.pending or ():
                if st[0] == "group":
                    st[1].kernel._done.wait(120)
    if tier == "interp":
        assert not cpu._last_plan.fused
    else:
        assert cpu._last_plan.fused
        assert "fused" in cpu._last_plan.kinds.values() and "callback" in cpu._last_plan.kinds.values()


def test_prepass_values_are_not_pinned_into_the_plan():
    """Values the dynamic-shape pre-pass computes (ancestors of a user op without infer_shape) belong to one
    call: a second call of the same signature must not reuse them (they once became plan-time constants)."""
    x = var("float64", 2, "x")
    h = O.tanh(x) * 2
    c = CumSum()(h)
    z = O.sum(h[:, ::2] * 2) + O.sum(c)
    tape = build_tape([x], [z])
    cpu, ref = CPUEngine(tape, tier="interp"), ReferenceEngine(tape)
    for seed in range(3):
        xv = np.random.default_rng(seed).uniform(-1, 1, (3, 4))
        assert_same(cpu.run([xv], [])[0], ref.run([xv], [])[0])


def test_map_rows_with_zero_d_rows_on_the_cpu_engine():
    """Rows of a MAP_ROWS output may be 0-d (the Jacobian of a vector w.r.t. a scalar)."""
    import tapegrad as tg

    s = tg.dscalar("s")
    J = tg.jacobian(tg.stack([2 * s, 4 * s ** 2]), s, vectorize=False)
    got = tg.function([s], J, tier="interp")(np.asarray(1.5))
    np.testing.assert_array_equal(got, [2.0, 12.0])
