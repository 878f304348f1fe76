"""Property tests of ``tg.scan`` with randomly generated loop bodies.

Each example draws a loop: 0-2 sequences (rows of shape ``()``, ``(3,)`` or ``(2, 3)``, length 3-5), 1-3
recurrent states (mostly ``(3,)``, sometimes ``()`` or ``(2, 3)``), 0-2 outputs that are not fed back (in a
random order among the states), 0-2 non-sequences (a scalar or a ``(3,)`` vector), sometimes an outer variable
``fn`` uses without receiving it (an implicit non-sequence), ``n_steps`` implied, an int or symbolic
(``x0.shape[0] - d``), ``go_backwards`` or not; sometimes one variable fills two input slots or a slot is a
constant.  The body builds its outputs in a random order, each from a small expression over the step's arguments
and the outputs built before it in the same step (``h = tanh(a s + x); y = 2 h + h h``), or returns one of them
unchanged (``a, b -> b, a + b``).  The body is an expression description (:class:`Case`) evaluated both with
``tg`` (the scan's ``fn``) and with NumPy (the reference loop), so every check has an independent reference:
values on ``device="python"`` and ``"cpu"``, ``tg.grad`` of a loss over whole trajectories, last steps and single
rows against central differences, ``Rop`` against differences and against ``Lop`` (the adjoint identity),
``hessian_vector_product`` against differences of the gradient, and ``checkpoint="binomial"`` against ``"all"``.

Only smooth ops (``+ - *``, ``tanh``, ``sin``, ``exp(tanh(.))``, ``x * x``); recurrent outputs are a state passed
through, a bounded ``c tanh(e) + c' leaf`` or a linear ``c a + c' b``, so values stay small over <= 5 steps and
differences are accurate.  ``repr(case)`` prints the body as Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import tapegrad as tg  # noqa: E402
from tests.ops.checks import central_grad  # noqa: E402

DEVICES = ("python", "cpu")
H = 1e-6  # central-difference step of the NumPy reference
VEC = (3,)
MAT = (2, 3)
LEAVES = ("seq", "state", "nonseq", "closure", "out")
COEFS = (1.0, 0.5, -0.5, -1.0, 2.0, 0.3)


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the body: an expression description
# leaves: ("seq", i) the row of sequence i, ("state", i) the previous value of recurrent output i (outputs_info
# order among the recurrent ones), ("nonseq", i), ("closure", i) an outer variable fn uses without receiving it,
# ("out", j) output j of this same step (built earlier)
# nodes: ("add"|"sub"|"mul", a, b), ("sq"|"tanh"|"sin"|"expt", a), ("scale", c, a)
def _ev(node, env, M):
    kind = node[0]
    if kind in LEAVES:
        return env[kind][node[1]]
    if kind == "add":
        return _ev(node[1], env, M) + _ev(node[2], env, M)
    if kind == "sub":
        return _ev(node[1], env, M) - _ev(node[2], env, M)
    if kind == "mul":
        return _ev(node[1], env, M) * _ev(node[2], env, M)
    if kind == "sq":
        a = _ev(node[1], env, M)
        return a * a
    if kind == "tanh":
        return M.tanh(_ev(node[1], env, M))
    if kind == "sin":
        return M.sin(_ev(node[1], env, M))
    if kind == "expt":
        return M.exp(M.tanh(_ev(node[1], env, M)))
    if kind == "scale":
        return node[1] * _ev(node[2], env, M)
    raise AssertionError(node)


def _src(node, names):
    kind = node[0]
    if kind in LEAVES:
        return names[kind][node[1]]
    if kind in ("add", "sub", "mul"):
        op = {"add": "+", "sub": "-", "mul": "*"}[kind]
        return f"({_src(node[1], names)} {op} {_src(node[2], names)})"
    if kind == "sq":
        a = _src(node[1], names)
        return f"({a} * {a})"
    if kind == "expt":
        return f"exp(tanh({_src(node[1], names)}))"
    if kind == "scale":
        return f"{node[1]!r} * {_src(node[2], names)}"
    return f"{kind}({_src(node[1], names)})"


def _shape(node, leaf_shapes):
    kind = node[0]
    if kind in LEAVES:
        return leaf_shapes[kind][node[1]]
    if kind in ("add", "sub", "mul"):
        a, b = _shape(node[1], leaf_shapes), _shape(node[2], leaf_shapes)
        return a if len(a) >= len(b) else b
    return _shape(node[-1], leaf_shapes)


def _var(shape, name, lead=0):
    return tg.TensorType("float64", (None,) * (lead + len(shape)))(name)


def _dims(shape):
    return "(L)" if not shape else f"(L, {', '.join(map(str, shape))})"


@dataclass
class Case:
    seq_shapes: list       # the row of each sequence: () for a (L,) vector, (3,) for (L, 3), (2, 3) for (L, 2, 3)
    seq_lens: list
    recurrent: list        # per output (outputs_info order): fed back or not
    state_shapes: list     # per recurrent output
    nonseq_shapes: list
    closure_shapes: list   # outer variables fn uses without receiving them (implicit non-sequences)
    n_steps: object        # None (implied by the sequences), an int, or ("len0-", d): x0.shape[0] - d, symbolic
    go_backwards: bool
    order: list            # the order the body builds its outputs in
    exprs: list            # per output (outputs_info order)
    loss_terms: list       # (kind, output j, weight, row): "traj" w sum(traj_j W_j), "last" w sum(traj_j[-1] ** 2),
                           # "row" w sum(sin(traj_j[row]))
    seed: int
    links: dict = field(default_factory=dict)  # input slot -> ("alias", earlier slot) or ("const",): the same
                                               # variable passed twice, or a constant instead of an input

    @property
    def n_state(self):
        return sum(self.recurrent)

    @property
    def steps(self):
        if self.n_steps is None:
            return min(self.seq_lens)
        if isinstance(self.n_steps, tuple):
            return self.seq_lens[0] - self.n_steps[1]
        return self.n_steps

    def names(self):
        return {"seq": [f"x{i}" for i in range(len(self.seq_shapes))], "state": [f"s{i}" for i in range(self.n_state)],
                "nonseq": [f"p{i}" for i in range(len(self.nonseq_shapes))],
                "closure": [f"c{i}" for i in range(len(self.closure_shapes))],
                "out": [f"o{j}" for j in range(len(self.exprs))]}

    def __repr__(self):
        n = self.names()
        lines = [f"def fn({', '.join(n['seq'] + n['state'] + n['nonseq'])}):  # closure: {n['closure']}"]
        lines += [f"    o{j} = {_src(self.exprs[j], n)}" for j in self.order]
        lines.append(f"    return [{', '.join(n['out'])}]")
        it = iter(self.state_shapes)
        info = [f"init{self.recurrent[:j].count(True)}{next(it)}" if r else "None"
                for j, r in enumerate(self.recurrent)]
        lines.append(f"scan(fn, sequences={[f'{_dims(s)} L={L}' for s, L in zip(self.seq_shapes, self.seq_lens)]}, "
                     f"outputs_info=[{', '.join(info)}], non_sequences={self.nonseq_shapes}, "
                     f"closure={self.closure_shapes}, n_steps={self.n_steps}, go_backwards={self.go_backwards})")
        lines.append(f"loss terms (kind, j, weight, row): {self.loss_terms}; seed={self.seed}; "
                     f"input slots aliased/constant: {self.links}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------- inputs, values
    def slot_shapes(self):
        """The shape of each input slot: sequences, initial states, non-sequences, closure variables."""
        seqs = [(L,) + sh for sh, L in zip(self.seq_shapes, self.seq_lens)]
        return seqs + list(self.state_shapes) + list(self.nonseq_shapes) + list(self.closure_shapes)

    def _all_values(self):
        rng = np.random.default_rng(self.seed)
        return [np.asarray(rng.uniform(-1, 1, sh)) for sh in self.slot_shapes()]

    def variables(self):
        """``(sequences, initial states, non-sequences, closure variables)`` to build the loop from, and the
        function's inputs (the slots that are neither an alias nor a constant)."""
        n = self.names()
        names = n["seq"] + [f"init{i}" for i in range(self.n_state)] + n["nonseq"] + n["closure"]
        const = self._all_values()
        slots, inputs = [], []
        for i, (sh, name) in enumerate(zip(self.slot_shapes(), names)):
            link = self.links.get(i)
            if link is None:
                slots.append(_var(sh, name))
                inputs.append(slots[-1])
            elif link[0] == "alias":
                slots.append(slots[link[1]])
            else:
                slots.append(tg.constant(const[i]))
        return self.split(slots), inputs

    def values(self):
        """Values of the function's inputs."""
        return [v for i, v in enumerate(self._all_values()) if i not in self.links]

    def expand(self, free):
        """Every slot's value from the inputs' values."""
        it, const, full = iter(free), self._all_values(), []
        for i in range(len(const)):
            link = self.links.get(i)
            full.append(next(it) if link is None else full[link[1]] if link[0] == "alias" else const[i])
        return full

    def split(self, flat):
        a = len(self.seq_shapes)
        b = a + self.n_state
        c = b + len(self.nonseq_shapes)
        return flat[:a], flat[a:b], flat[b:c], flat[c:]

    # ----------------------------------------------------------------------- the tg loop and the NumPy loop
    def _step(self, M, seq_rows, states, nonseqs, closures):
        env = {"seq": list(seq_rows), "state": list(states), "nonseq": list(nonseqs), "closure": list(closures),
               "out": {}}
        for j in self.order:
            env["out"][j] = _ev(self.exprs[j], env, M)
        return [env["out"][j] for j in range(len(self.exprs))]

    def scan(self, seqs, inits, nonseqs, closures, **kw):
        ns, nst = len(seqs), len(inits)

        def fn(*args):
            return self._step(tg, args[:ns], args[ns:ns + nst], args[ns + nst:], closures)

        it = iter(inits)
        info = [next(it) if r else None for r in self.recurrent]
        n_steps = self.n_steps
        if isinstance(n_steps, tuple):
            n_steps = seqs[0].shape[0] - n_steps[1]
        outs, _ = tg.scan(fn, sequences=seqs, outputs_info=info, non_sequences=nonseqs, n_steps=n_steps,
                          go_backwards=self.go_backwards, return_list=True, **kw)
        return outs

    def reference(self, *flat):
        seqs, inits, nonseqs, closures = self.split(self.expand([np.asarray(v, dtype=float) for v in flat]))
        n = self.steps
        rows = [(s[::-1] if self.go_backwards else s)[:n] for s in seqs]
        states = list(inits)
        trajs = [[] for _ in self.exprs]
        for t in range(n):
            outs = self._step(np, [r[t] for r in rows], states, nonseqs, closures)
            for j, o in enumerate(outs):
                trajs[j].append(np.array(o, dtype=float))  # a copy: a state passed through is not aliased
            states = [o for o, r in zip(outs, self.recurrent) if r]
        return [np.array(tr) for tr in trajs]

    # ----------------------------------------------------------------------- the loss
    def weights(self):
        rng = np.random.default_rng(self.seed + 1)
        shapes = [np.shape(r) for r in self.reference(*self.values())]
        return {j: rng.uniform(-1, 1, shapes[j]) for kind, j, _, _ in self.loss_terms if kind == "traj"}

    def loss(self, outs, W):
        M = tg if isinstance(outs[0], tg.Variable) else np
        total = 0.0
        for kind, j, w, row in self.loss_terms:
            if kind == "traj":
                total = total + w * (outs[j] * W[j]).sum()
            elif kind == "last":
                total = total + w * (outs[j][-1] ** 2).sum()
            else:
                total = total + w * M.sin(outs[j][row]).sum()
        return total


@st.composite
def cases(draw):
    n_seq = draw(st.integers(0, 2))
    seq_shapes = [draw(st.sampled_from([(), VEC, VEC, MAT])) for _ in range(n_seq)]
    seq_lens = [draw(st.integers(3, 5)) for _ in range(n_seq)]
    n_state, n_nit = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    recurrent = draw(st.permutations([True] * n_state + [False] * n_nit))
    state_shapes = [draw(st.sampled_from([VEC, VEC, VEC, (), MAT])) for _ in range(n_state)]
    nonseq_shapes = [draw(st.sampled_from([(), VEC])) for _ in range(draw(st.integers(0, 2)))]
    closure_shapes = [draw(st.sampled_from([(), VEC])) for _ in range(draw(st.sampled_from([0, 0, 0, 1])))]
    if not seq_lens:
        n_steps = draw(st.integers(3, 5))
    else:
        L0, shortest = seq_lens[0], min(seq_lens)
        n_steps = draw(st.one_of(st.none(), st.integers(2, shortest),
                                 st.integers(L0 - shortest, L0 - 2).map(lambda d: ("len0-", d))))
    go_backwards = draw(st.booleans()) if seq_lens else False
    n_out = len(recurrent)
    order = draw(st.permutations(range(n_out)))
    state_of = {}
    for j, r in enumerate(recurrent):
        if r:
            state_of[j] = len(state_of)

    shapes = {"seq": list(seq_shapes), "state": list(state_shapes), "nonseq": list(nonseq_shapes),
              "closure": list(closure_shapes), "out": {}}
    exprs = [None] * n_out
    for j in order:
        leaves = [("seq", i) for i in range(n_seq)] + [("state", i) for i in range(n_state)]
        leaves += [("nonseq", i) for i in range(len(nonseq_shapes))]
        leaves += [("closure", i) for i in range(len(closure_shapes))]
        leaves += [("out", k) for k in shapes["out"]]
        target = state_shapes[state_of[j]] if recurrent[j] else None
        fits = leaves if target is None else [lf for lf in leaves if len(_shape(lf, shapes)) <= len(target)]
        exact = fits if target is None else [lf for lf in leaves if _shape(lf, shapes) == target]  # own state at least

        def tree(depth):
            if depth == 0 or draw(st.integers(0, 3)) == 0:
                return draw(st.sampled_from(fits))
            op = draw(st.sampled_from(["add", "sub", "mul", "sq", "tanh", "sin", "expt", "scale"]))
            if op in ("add", "sub", "mul"):
                return (op, tree(depth - 1), tree(depth - 1))
            if op == "scale":
                return (op, draw(st.sampled_from(COEFS)), tree(depth - 1))
            return (op, tree(depth - 1))

        form = draw(st.sampled_from(["pass", "tanh", "lin", "free"]))
        if form == "pass":
            e = draw(st.sampled_from(exact))
        elif form == "lin":  # c a + c' b: a, b -> b, a + b
            e = ("add", ("scale", draw(st.sampled_from(COEFS[:4])), draw(st.sampled_from(exact))),
                 ("scale", draw(st.sampled_from(COEFS[:4])), draw(st.sampled_from(fits))))
        elif form == "free" and target is None:  # not fed back: any smooth expression of bounded things
            e = tree(3)
        else:  # c tanh(e) [+ c' leaf]: bounded
            e = ("scale", draw(st.sampled_from(COEFS)), ("tanh", tree(3)))
            if draw(st.booleans()) or (target is not None and _shape(e, shapes) != target):
                e = ("add", e, ("scale", draw(st.sampled_from(COEFS[:4])), draw(st.sampled_from(exact))))
        assert target is None or _shape(e, shapes) == target, (e, target)
        exprs[j] = e
        shapes["out"][j] = _shape(e, shapes)

    case = Case(seq_shapes, seq_lens, list(recurrent), state_shapes, nonseq_shapes, closure_shapes, n_steps,
                go_backwards, list(order), exprs, [], 0)
    n = case.steps
    terms = []
    for j in draw(st.lists(st.integers(0, n_out - 1), min_size=1, max_size=n_out, unique=True)):
        for kind in draw(st.lists(st.sampled_from(["traj", "last", "row"]), min_size=1, max_size=2, unique=True)):
            row = draw(st.integers(-n, n - 1)) if kind == "row" else None
            terms.append((kind, j, draw(st.sampled_from([1.0, -1.3, 0.7])), row))
    case.loss_terms, case.seed = terms, draw(st.integers(0, 2 ** 31))
    # sometimes one variable in two slots (a sequence twice, an initial state also a non-sequence ..) or a constant
    slots = case.slot_shapes()
    for i, sh in enumerate(slots):
        same = [k for k in range(i) if slots[k] == sh and k not in case.links]
        link = draw(st.sampled_from([None] * 8 + ["const"] + ["alias"] * bool(same)))
        if link == "alias":
            case.links[i] = ("alias", draw(st.sampled_from(same)))
        elif link == "const":
            case.links[i] = ("const",)
    if len(case.links) == len(slots):  # keep an input
        del case.links[0]
    return case


# --------------------------------------------------------------------------- helpers
def _fn(inputs, outputs, device):
    return tg.function(inputs, outputs, device=device, on_unused_input="ignore")


def _np_loss(case, W):
    return lambda *flat: float(case.loss(case.reference(*flat), W))


def _close(got, want, rtol, atol, what):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(np.asarray(g, dtype=float), w, rtol=rtol, atol=atol, err_msg=f"{what}, item {k}")


def _setup(case, **kw):
    (seqs, inits, nonseqs, closures), inputs = case.variables()
    outs = case.scan(seqs, inits, nonseqs, closures, **kw)
    W = case.weights()
    return inputs, outs, W, case.loss(outs, W)


def _scale(arrays):
    return max([1.0] + [float(np.abs(np.asarray(a)).max(initial=0.0)) for a in arrays])


# --------------------------------------------------------------------------- the properties
@_settings(150)
@given(case=cases())
def test_values_and_gradient_match_numpy_loop(case):
    xs, outs, W, loss = _setup(case)
    vals = case.values()
    want = case.reference(*vals)
    F = _np_loss(case, W)
    want_loss = F(*vals)
    want_grad = central_grad(F, vals)
    grads = tg.grad(loss, xs, disconnected_inputs="ignore")
    for device in DEVICES:
        got = _fn(xs, [*outs, loss, *grads], device)(*vals)
        _close(got[:len(outs)], want, 1e-12, 1e-13, f"values on {device}\n{case!r}")
        assert float(got[len(outs)]) == pytest.approx(want_loss, rel=1e-12, abs=1e-13), (device, case)
        _close(got[len(outs) + 1:], want_grad, 1e-6, 1e-8 * max(1.0, abs(want_loss)), f"grad on {device}\n{case!r}")


@_settings(100)
@given(case=cases(), pick=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_rop_matches_differences_and_lop(case, pick):
    """Tangents of a trajectory and of another output's last step; the primal computed in the same function."""
    xs, outs, _, _ = _setup(case)
    j, k = pick[0] % len(outs), pick[1] % len(outs)
    ys = [outs[j], outs[k][-1]]
    vals = case.values()
    rng = np.random.default_rng(case.seed + 2)
    us = [rng.standard_normal(np.shape(v)) for v in vals]

    def ref(*a):
        r = case.reference(*a)
        return [r[j], r[k][-1]]

    want = ref(*vals)
    fd = [(p - m) / (2 * H) for p, m in zip(ref(*[a + H * u for a, u in zip(vals, us)]),
                                            ref(*[a - H * u for a, u in zip(vals, us)]))]
    vs = [rng.standard_normal(np.shape(w)) for w in want]
    u_vars = [x.type() for x in xs]
    v_vars = [_var(np.shape(w), f"v{i}") for i, w in enumerate(want)]
    jvp = tg.Rop(ys, xs, u_vars, disconnected_outputs="ignore")
    vjp = tg.Lop(ys, xs, v_vars, disconnected_inputs="ignore")
    for device in DEVICES:
        got = _fn(xs + u_vars + v_vars, [*ys, *jvp, *vjp], device)(*vals, *us, *vs)
        _close(got[:2], want, 1e-12, 1e-13, f"values on {device}\n{case!r}")
        _close(got[2:4], fd, 1e-6, 1e-8 * _scale(want), f"Rop on {device}\n{case!r}")
        lhs = sum(float((v * np.asarray(t)).sum()) for v, t in zip(vs, got[2:4]))
        rhs = sum(float((np.asarray(g) * u).sum()) for g, u in zip(got[4:], us))
        assert abs(lhs - rhs) <= 1e-11 * (abs(lhs) + abs(rhs) + 1), (device, lhs, rhs, case)


@_settings(40)
@given(case=cases())
def test_hessian_vector_product_matches_differences_of_gradient(case):
    xs, outs, W, loss = _setup(case)
    vals = case.values()
    rng = np.random.default_rng(case.seed + 3)
    ps = [rng.standard_normal(np.shape(v)) for v in vals]
    p_vars = [x.type() for x in xs]
    grads = tg.grad(loss, xs, disconnected_inputs="ignore")
    hvp = tg.hessian_vector_product(loss, xs, p_vars, disconnected_inputs="ignore")
    g_py = _fn(xs, grads, "python")
    h = 1e-5
    gp = g_py(*[a + h * p for a, p in zip(vals, ps)])
    gm = g_py(*[a - h * p for a, p in zip(vals, ps)])
    want = [(np.asarray(a) - np.asarray(b)) / (2 * h) for a, b in zip(gp, gm)]
    want_loss = _np_loss(case, W)(*vals)
    for device in DEVICES:
        got = _fn(xs + p_vars, [loss, *hvp], device)(*vals, *ps)
        assert float(got[0]) == pytest.approx(want_loss, rel=1e-12, abs=1e-13), (device, case)
        _close(got[1:], want, 1e-6, 1e-8 * _scale(want), f"HVP on {device}\n{case!r}")


@_settings(40)
@given(case=cases(), snapshots=st.sampled_from([None, 1, 2]))
def test_binomial_checkpoint_gives_the_gradient_of_all(case, snapshots):
    vals = case.values()
    xs, outs, W, loss = _setup(case)
    want = _fn(xs, tg.grad(loss, xs, disconnected_inputs="ignore"), "python")(*vals)
    _close(want, central_grad(_np_loss(case, W), vals), 1e-6, 1e-8 * max(1.0, abs(_np_loss(case, W)(*vals))),
           f"grad\n{case!r}")
    xs, outs, W, loss = _setup(case, checkpoint="binomial", snapshots=snapshots)
    grads = tg.grad(loss, xs, disconnected_inputs="ignore")
    for device in DEVICES:
        got = _fn(xs, grads, device)(*vals)
        _close(got, want, 1e-12, 1e-14 * _scale(want), f"binomial on {device}\n{case!r}")


# --------------------------------------------------------------------------- fixed examples of the two patterns
def _fixed(**kw):
    base = dict(seq_shapes=[], seq_lens=[], state_shapes=[VEC], nonseq_shapes=[], closure_shapes=[],
                n_steps=None, go_backwards=False)
    return Case(**{**base, **kw})


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_rnn_with_intermediate_output(device):
    """``h = tanh(a s + x); y = 2 h + h h``: the second output reads the first, built in the same step."""
    case = _fixed(seq_shapes=[VEC], seq_lens=[4], recurrent=[True, False], nonseq_shapes=[()], order=[0, 1],
                  exprs=[("tanh", ("add", ("mul", ("nonseq", 0), ("state", 0)), ("seq", 0))),
                         ("add", ("scale", 2.0, ("out", 0)), ("sq", ("out", 0)))],
                  loss_terms=[("last", 0, 1.0, None), ("traj", 1, 1.0, None)], seed=7)
    xs, outs, W, loss = _setup(case)
    vals = case.values()
    got = _fn(xs, [loss, *tg.grad(loss, xs)], device)(*vals)
    F = _np_loss(case, W)
    assert float(got[0]) == pytest.approx(F(*vals), rel=1e-13)
    _close(got[1:], central_grad(F, vals), 1e-7, 1e-10, "grad")


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_state_passed_through(device):
    """``(a, b) -> (b, a + b x / 2)`` over a sequence backwards, and an output reading both new states."""
    case = _fixed(seq_shapes=[()], seq_lens=[5], recurrent=[True, False, True], state_shapes=[VEC, VEC], n_steps=4,
                  go_backwards=True, order=[0, 2, 1],
                  exprs=[("state", 1), ("mul", ("out", 0), ("out", 2)),
                         ("add", ("state", 0), ("scale", 0.5, ("mul", ("seq", 0), ("state", 1))))],
                  loss_terms=[("traj", 0, 1.0, None), ("traj", 1, 0.7, None), ("last", 1, -0.4, None),
                              ("last", 2, 1.0, None)], seed=11)
    xs, outs, W, loss = _setup(case)
    vals = case.values()
    got = _fn(xs, [*outs, loss, *tg.grad(loss, xs)], device)(*vals)
    want = case.reference(*vals)
    _close(got[:3], want, 1e-13, 1e-14, "values")
    F = _np_loss(case, W)
    assert float(got[3]) == pytest.approx(F(*vals), rel=1e-13)
    _close(got[4:], central_grad(F, vals), 1e-7, 1e-10, "grad")
