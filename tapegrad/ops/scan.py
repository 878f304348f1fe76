"""``scan``: loops in the graph (SPEC section 2, "Loops").

``tg.scan(fn, sequences, outputs_info, non_sequences, n_steps)`` follows
Aesara: ``fn`` receives, per step ``t``, the slices ``seq[t]`` of every
sequence, then the previous value of every recurrent output (those with an
initial value in ``outputs_info``), then the non-sequences; it returns one
output or a list.  ``scan`` returns ``(outputs, updates)`` (``updates`` is an
empty dict), each output stacked over the steps: shape ``(n_steps, ...)``.

Two ops hold the loop:

``Scan`` (``SCAN``, 650)
    the forward loop over an inner graph (the step body);
``ScanGrad`` (``SCAN_GRAD``, 651)
    the reverse sweep: the forward loop again, keeping states as ``checkpoint``
    says (``"all"``: every state; ``"binomial"``: ``snapshots`` states, the
    rest recomputed by a revolve-type schedule), then a reverse loop over the
    body's adjoint (the inner graph's ``Lop``).

Derivatives are loops again.  ``Scan.R_op`` is a ``Scan`` over the body and
its tangent (inner ``Rop``), carrying state tangents.  ``Scan.L_op`` is a
``ScanGrad``.  ``ScanGrad.R_op`` (forward-over-reverse, HVP) is the
``ScanGrad`` of that tangent scan with cotangents ``(c_dot, c)``; and
``ScanGrad.L_op`` (reverse-over-reverse) follows from the symmetry of the
Hessian of ``<c, F(z)>``: ``z_bar = d(J^T c)/dz . w`` (a tangent of the
gradient) and ``c_bar = J w`` (a tangent of the loop).  So every order of
derivative keeps the checkpointing of the first.  See ``docs/scan.md``.
"""

from __future__ import annotations

import numbers

import numpy as np

from tapegrad.config import config
from tapegrad.graph import Constant, TensorType, Variable, as_tensor, is_float_dtype, toposort
from tapegrad.op import Apply, Op, disconnected_type
from tapegrad.ops.checkpoint import (  # noqa: F401  (re-exported: the schedules used to live here)
    CHECKPOINTS,
    _beta,
    binomial_schedule,
    default_snapshots,
    repetitions,
    schedule_for,
    schedule_stats,
    store_all_schedule,
)
from tapegrad.registry import registered

__all__ = ["scan"]


# --------------------------------------------------------------------------- inner-graph analysis
def _connected_deps(inner_inputs, inner_outputs):
    """For each inner output, the set of inner-input positions it is *connected* to (op connection patterns)."""
    pos = {id(x): k for k, x in enumerate(inner_inputs)}
    conn = {}

    def of(v):
        if id(v) in pos:
            return {pos[id(v)]}
        return conn.get(id(v), set())

    for node in toposort(inner_outputs, blockers=inner_inputs):
        pattern = node.op.connection_pattern(node)
        for j, o in enumerate(node.outputs):
            acc = set()
            for i, x in enumerate(node.inputs):
                if pattern[i][j]:
                    acc |= of(x)
            conn[id(o)] = acc
    return [of(o) for o in inner_outputs]


def _is_int_scalar(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


class ScanTrajectory(Variable):
    """A stacked ``scan`` output; ``traj[-1]`` is the final value from a loop that keeps only the last step.

    Indexing with ``-1`` returns the output of a sibling ``Scan`` node (same
    inputs, every output ``keep_last``), so a graph using only ``traj[-1]``
    does not store the trajectory (what Aesara's save-memory rewrite does) --
    unless a ``checkpoint="all"`` gradient of the loop is on the same tape,
    which stores every state anyway and then reads them from the trajectory.
    """

    def __getitem__(self, index):
        node = self.owner
        if _is_int_scalar(index) and int(index) == -1 and node is not None and isinstance(node.op, Scan):
            return node.op.last_of(node, self.index)
        return super().__getitem__(index)


def full_loops(order):
    """``{id(node): full}`` for each keep-last ``scan`` loop in ``order`` (the node ``traj[-1]`` made) whose
    full loop (the one that stores the trajectories) is in ``order`` too.

    Where a graph uses both ``traj`` and ``traj[-1]``, the tape builder, ``grad`` and ``Rop`` read ``traj[-1]``
    as the last row of ``traj`` (the same values): one loop, one reverse sweep, one tangent loop."""
    in_order = {id(n) for n in order}
    pairs = {}
    for n in order:
        last = n.__dict__.get("_scan_last")
        if last and last[0].owner is not None and id(last[0].owner) in in_order:
            pairs[id(last[0].owner)] = n
    return pairs


def primal_loops(order):
    """``{id(node): (tangent node, positions)}`` for each ``scan`` loop in ``order`` whose tangent loop (made by
    ``Scan.R_op`` on the same inputs) is in ``order`` too: output ``j`` of the loop is output ``positions[j]``
    of the tangent loop, which carries the primal alongside the tangents."""
    by_key = {}
    for n in order:
        of = n.__dict__.get("_tangent_of")
        if of is not None:
            by_key.setdefault((id(of[0]),) + tuple(map(id, of[1])), (n, of[2]))
    pairs = {}
    for n in order:
        if isinstance(n.op, Scan):
            hit = by_key.get((id(n.op),) + tuple(map(id, n.inputs)))
            if hit is not None and hit[0] is not n:
                pairs[id(n)] = hit
    return pairs


# --------------------------------------------------------------------------- Scan
@registered(name="SCAN", code=650)
class Scan(Op):
    """The forward loop: ``n_steps`` applications of an inner graph (the step body).

    Inner graph
        ``inner_inputs = [x_1[t] .. x_S[t], s_1 .. s_K, p_1 .. p_P]``: one slice
        of each sequence, the previous value of each recurrent state, each
        non-sequence (explicit ones first, then the closure variables ``fn``
        used without passing them); ``inner_outputs = [s_1' .. s_K', y_1 .. y_M]``:
        the new states (same dtype/shape as ``s_k``), then the per-step outputs.
    Outer node
        inputs ``[n_steps, x_1 .. x_S, s_1(0) .. s_K(0), p_1 .. p_P]``
        (``n_steps``: int64 scalar, ignored when ``n_steps_given`` is False:
        the loop length is then the shortest sequence's); outputs one per
        inner output, stacked ``(n, ...)``, or (``keep_last[j]``) only the value
        of the last step.
    What a tape engine needs to run it as a loop block (body + jump)
        the body = a sub-tape of ``inner_inputs -> inner_outputs`` (build it
        with ``tapegrad.tape.build.build_tape(op.inner_inputs, op.inner_outputs)``);
        slot bindings per step: sequence slices are views ``x[t]`` (stride of
        axis 0), state slots double-buffered (outputs ``0..K-1`` feed inputs
        ``S..S+K-1`` of the next step), non-sequence slots bound once; after
        each step write output ``j`` into row ``t`` of its stacked buffer (or
        keep it, ``keep_last``); jump back while ``t < n``.  Integer
        parameters in ``encode()``: ``(n_seq, n_state, n_nonseq, n_nitsot,
        n_steps_given, checkpoint, snapshots, keep_last...)``; the inner graph
        itself is ``tape.ops[k]`` (this object).

    ``perform`` (the reference engine) loops in Python, calling the inner
    graph compiled once with ``tg.function(..., device="python")``.
    """

    kind = "general"

    def __init__(self, inner_inputs, inner_outputs, n_seq, n_state, keep_last=None, checkpoint="all",
                 snapshots=None, n_steps_given=True, name=None):
        self.inner_inputs = list(inner_inputs)
        self.inner_outputs = list(inner_outputs)
        self.n_seq, self.n_state = int(n_seq), int(n_state)
        self.n_nonseq = len(self.inner_inputs) - self.n_seq - self.n_state
        self.n_nitsot = len(self.inner_outputs) - self.n_state
        if self.n_nonseq < 0 or self.n_nitsot < 0:
            raise ValueError("Scan: inconsistent counts of inner inputs/outputs")
        self.keep_last = tuple(bool(b) for b in keep_last) if keep_last is not None else (False,) * len(inner_outputs)
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"scan: checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
        self.checkpoint, self.snapshots = checkpoint, snapshots
        self.n_steps_given = bool(n_steps_given)
        self.name = name
        for k in range(self.n_state):
            si, so = self.inner_inputs[self.n_seq + k], self.inner_outputs[k]
            if si.dtype != so.dtype or si.ndim != so.ndim:
                raise TypeError(f"Scan: state {k}: the step returns {so.type} for a state of type {si.type}")
        self._deps = _connected_deps(self.inner_inputs, self.inner_outputs)
        self._reach = self._reach_over_steps()
        self._fns = {}
        self._grad_op = None
        self._last_op = None
        self._tangents = {}

    # -- identity: the inner graph is the op
    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __str__(self):
        label = f"{self.name}: " if self.name else ""
        return (f"Scan{{{label}{self.n_seq} seq, {self.n_state} state, {self.n_nonseq} nonseq, "
                f"{self.n_nitsot} out, {len(toposort(self.inner_outputs))} inner nodes, {self.checkpoint}}}")

    __repr__ = __str__

    def encode(self):
        snaps = -1 if self.snapshots is None else int(self.snapshots)
        ints = (self.n_seq, self.n_state, self.n_nonseq, self.n_nitsot, int(self.n_steps_given),
                CHECKPOINTS.index(self.checkpoint), snaps) + tuple(int(b) for b in self.keep_last)
        return ints, ()

    # -- structure helpers
    @property
    def n_inner(self):
        return len(self.inner_inputs)

    @property
    def n_out(self):
        return len(self.inner_outputs)

    def _split(self, values):
        """``[seqs, inits, nonseqs]`` of the primal inputs (after ``n_steps``)."""
        a, b = self.n_seq, self.n_seq + self.n_state
        return list(values[:a]), list(values[a:b]), list(values[b:])

    def _reach_over_steps(self):
        """For each output, the inner inputs it is connected to through any number of steps."""
        reach = [set(d) for d in self._deps]
        changed = True
        while changed:
            changed = False
            for j in range(self.n_out):
                for k in range(self.n_state):
                    if self.n_seq + k in reach[j] and not reach[k] <= reach[j]:
                        reach[j] |= reach[k]
                        changed = True
        return reach

    # -- building
    def make_node(self, n_steps, *inputs):
        from tapegrad.ops.shape import as_int_scalar

        n_steps = as_int_scalar(n_steps, "scan", "n_steps")
        inputs = [as_tensor(x) for x in inputs]
        if len(inputs) != self.n_inner:
            raise TypeError(f"{self}: expected {self.n_inner} inputs after n_steps, got {len(inputs)}")
        for k, (outer, inner) in enumerate(zip(inputs, self.inner_inputs)):
            want_ndim = inner.ndim + 1 if k < self.n_seq else inner.ndim
            what = "sequence" if k < self.n_seq else "initial state" if k < self.n_seq + self.n_state else "non-sequence"
            if outer.ndim != want_ndim or outer.dtype != inner.dtype:
                raise TypeError(
                    f"scan: {what} {outer} has type {outer.type}; the loop body expects "
                    f"{inner.dtype} with {want_ndim} dimension(s)"
                )
        n = self._static_length(n_steps, inputs[: self.n_seq])
        outs = []
        for j, o in enumerate(self.inner_outputs):
            shape = o.type.shape
            if j < self.n_state:
                init = inputs[self.n_seq + j].type.shape
                shape = tuple(a if a is not None else b for a, b in zip(shape, init))
            if self.keep_last[j]:
                outs.append(Variable(TensorType(o.dtype, shape)))
            else:
                outs.append(ScanTrajectory(TensorType(o.dtype, (n,) + shape)))
        return Apply(self, [n_steps] + inputs, outs)

    def _static_length(self, n_steps, seqs):
        if self.n_steps_given:
            if isinstance(n_steps, Constant):
                return int(n_steps.data)
            return None
        lengths = [s.type.shape[0] for s in seqs]
        return None if not lengths or any(n is None for n in lengths) else min(lengths)

    # -- running
    def length(self, n_steps, seqs):
        """The number of steps from the ``n_steps`` value and the sequences (validated)."""
        lengths = [len(s) for s in seqs]
        if self.n_steps_given:
            n = int(n_steps)
            if n < 0:
                raise ValueError(f"scan: n_steps must be >= 0, got {n}")
            short = [k for k, m in enumerate(lengths) if m < n]
            if short:
                raise ValueError(
                    f"scan: n_steps={n} but sequence {short[0]} has only {lengths[short[0]]} entries "
                    f"(sequence lengths {lengths})"
                )
            return n
        if not lengths:
            raise ValueError("scan: no sequences and no n_steps")
        return min(lengths)

    def function(self, which="forward"):
        """The inner graph compiled with ``device="python"`` (cached): ``"forward"`` (all outputs) or ``"states"``."""
        fn = self._fns.get(which)
        if fn is None:
            from tapegrad.compile.function import function

            outs = self.inner_outputs if which == "forward" else self.inner_outputs[: self.n_state]
            fn = function(self.inner_inputs, list(outs), device="python", on_unused_input="ignore",
                          name=f"scan {which} body")
            self._fns[which] = fn
        return fn

    def check_state(self, k, new, old, t):
        new = np.asarray(new)
        if new.shape != np.shape(old):
            raise ValueError(
                f"scan: step {t} returned state {k} ({self.inner_outputs[k]}) with shape {new.shape}, "
                f"but the state has shape {np.shape(old)} (a recurrent output must keep its shape)"
            )
        return new

    def perform(self, node, inputs, output_storage):
        seqs, inits, nonseqs = self._split(inputs[1:])
        n = self.length(inputs[0], seqs)
        if n == 0 and any(self.keep_last):
            raise IndexError("scan: index -1 is out of bounds for a loop of 0 steps")
        fn = self.function("forward")
        state = [np.asarray(v) for v in inits]
        stacks = [None] * self.n_out
        last = [None] * self.n_out
        for t in range(n):
            outs = fn(*[s[t] for s in seqs], *state, *nonseqs)
            state = [self.check_state(k, outs[k], state[k], t) for k in range(self.n_state)]
            for j, o in enumerate(outs):
                o = np.asarray(o)
                if self.keep_last[j]:
                    last[j] = o
                    continue
                if stacks[j] is None:
                    stacks[j] = np.empty((n,) + o.shape, dtype=self.inner_outputs[j].dtype)
                elif o.shape != stacks[j].shape[1:]:
                    raise ValueError(f"scan: output {j} has shape {o.shape} at step {t}, "
                                     f"but {stacks[j].shape[1:]} at step 0")
                stacks[j][t] = o
        for j, st in enumerate(output_storage):
            dtype = self.inner_outputs[j].dtype
            if self.keep_last[j]:
                st[0] = np.array(last[j], dtype=dtype, copy=True)
            elif stacks[j] is not None:
                st[0] = stacks[j]
            else:
                st[0] = np.zeros((0,) + self._empty_shape(j, seqs, inits, nonseqs), dtype=dtype)

    def _empty_shape(self, j, seqs, inits, nonseqs):
        if j < self.n_state:
            return np.shape(inits[j])
        inner = self.inner_outputs[j].type.shape
        if all(s is not None for s in inner):
            return inner
        try:
            fake = [np.zeros(np.shape(s)[1:], np.asarray(s).dtype) for s in seqs]
            return np.shape(self.function("forward")(*fake, *inits, *nonseqs)[j])
        except Exception:  # noqa: BLE001 - best effort for an empty loop
            return tuple(0 if s is None else s for s in inner)

    def infer_shape(self, node, input_shapes):
        seq_shapes = input_shapes[1: 1 + self.n_seq]
        n = None
        if not self.n_steps_given:
            n = min(int(s[0]) for s in seq_shapes)
        elif isinstance(node.inputs[0], Constant):
            n = int(node.inputs[0].data)
        elif not all(self.keep_last):
            raise NotImplementedError("scan: the loop length depends on the value of n_steps")
        inner_in = [tuple(s[1:]) for s in seq_shapes] + [tuple(s) for s in input_shapes[1 + self.n_seq:]]
        shapes = _inner_shapes(self.inner_inputs, self.inner_outputs, inner_in)
        out = []
        for j, sh in enumerate(shapes):
            if j < self.n_state:
                sh = tuple(input_shapes[1 + self.n_seq + j])
            out.append(tuple(sh) if self.keep_last[j] else (n,) + tuple(sh))
        return out

    # -- the keep-last sibling (``traj[-1]``)
    def last_of(self, node, j):
        """Output ``j`` of a sibling node on ``node``'s inputs that keeps only the last step."""
        cached = node.__dict__.get("_scan_last")
        if cached is None:
            if self._last_op is None:
                self._last_op = Scan(self.inner_inputs, self.inner_outputs, self.n_seq, self.n_state,
                                     keep_last=(True,) * self.n_out, checkpoint=self.checkpoint,
                                     snapshots=self.snapshots, n_steps_given=self.n_steps_given, name=self.name)
                self._last_op.full_op = self   # (the tape builder may store the trajectory after all)
            cached = self._last_op.make_node(*node.inputs).outputs
            node._scan_last = cached
        return cached[j]

    # -- derivatives
    def connection_pattern(self, node):
        rows = [[False] * self.n_out]
        for i in range(self.n_inner):
            rows.append([i in self._reach[j] for j in range(self.n_out)])
        return rows

    def grad_op(self):
        """The ``ScanGrad`` of this loop (cached)."""
        if self._grad_op is None:
            self._grad_op = ScanGrad(self)
        return self._grad_op

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops import zeros_like

        pattern = self.connection_pattern(None)
        g_op = self.grad_op()
        result = [disconnected_type()]
        if g_op.null is not None:
            for i, x in enumerate(inputs[1:]):
                result.append(g_op.null if any(pattern[i + 1]) else disconnected_type())
            return result
        grads = g_op(*inputs, *[output_grads[j] for j in g_op.cot_outputs]) if g_op.out_wrt else []
        grads = grads if isinstance(grads, list) else [grads]
        for i, x in enumerate(inputs[1:]):
            if not any(pattern[i + 1]):
                result.append(disconnected_type())
            elif i in g_op.out_wrt:
                result.append(grads[g_op.out_wrt.index(i)])
            else:  # integer input: zero gradient
                result.append(zeros_like(x, dtype=config.floatX))
        return result

    def tangent_scan(self, live_in):
        """The loop over (primal, tangent) for tangents on the inner inputs flagged in ``live_in``.

        Returns ``(T, info)`` or ``(None, None)`` when no output gets a tangent.
        ``T``'s inner inputs: ``[x.., x_dot(live seqs).., s.., s_dot(K).., p.., p_dot(live)..]``,
        its outputs ``[s'.., s_dot'(K).., y.., y_dot(live)..]``, ``K`` = the states
        carrying a tangent.  ``info``: ``seqs``/``states``/``nonseqs`` (positions carrying
        tangents), ``out_tangent`` (primal output -> T output position or None),
        ``primal_in`` (primal inner input -> T inner input position), ``tangent_of``
        (T output position -> primal output whose tangent it is, for tangent outputs).
        """
        key = tuple(bool(b) for b in live_in)
        if key in self._tangents:
            return self._tangents[key]
        from tapegrad.gradient import Rop

        ns, nk = self.n_seq, self.n_state
        live = [b and is_float_dtype(x.dtype) for b, x in zip(key, self.inner_inputs)]
        live_out = [False] * self.n_out
        changed = True
        while changed:
            changed = False
            for j, o in enumerate(self.inner_outputs):
                if not live_out[j] and is_float_dtype(o.dtype) and any(live[i] for i in self._deps[j]):
                    live_out[j] = True
                    changed = True
                    if j < nk:
                        live[ns + j] = True
        if not any(live_out):
            self._tangents[key] = (None, None)
            return None, None
        seq_l = [i for i in range(ns) if live[i]]
        state_l = [k for k in range(nk) if live[ns + k]]
        non_l = [i for i in range(ns + nk, self.n_inner) if live[i]]
        nit_l = [j for j in range(nk, self.n_out) if live_out[j]]
        dot = {i: self.inner_inputs[i].type(_dot_name(self.inner_inputs[i])) for i in seq_l + [ns + k for k in state_l] + non_l}
        wrt = sorted(dot)
        t_outs = Rop([self.inner_outputs[j] for j in state_l + nit_l], [self.inner_inputs[i] for i in wrt],
                     [dot[i] for i in wrt], disconnected_outputs="ignore", return_disconnected="zero")
        t_state, t_nit = t_outs[: len(state_l)], t_outs[len(state_l):]
        t_state = [_as_dtype(t, self.inner_outputs[k].dtype) for t, k in zip(t_state, state_l)]
        X, S, P = self._split(self.inner_inputs)
        ins = X + [dot[i] for i in seq_l] + S + [dot[ns + k] for k in state_l] + P + [dot[i] for i in non_l]
        outs = (self.inner_outputs[:nk] + t_state + self.inner_outputs[nk:] + list(t_nit))
        keep = (self.keep_last[:nk] + tuple(self.keep_last[k] for k in state_l) + self.keep_last[nk:]
                + tuple(self.keep_last[j] for j in nit_l))
        T = Scan(ins, outs, ns + len(seq_l), nk + len(state_l), keep_last=keep, checkpoint=self.checkpoint,
                 snapshots=self.snapshots, n_steps_given=self.n_steps_given,
                 name=f"{self.name or 'scan'} tangent")
        nkT = nk + len(state_l)
        out_tangent = [None] * self.n_out
        tangent_of = {}
        for a, k in enumerate(state_l):
            if live_out[k]:
                out_tangent[k] = nk + a
            tangent_of[nk + a] = k
        for a, j in enumerate(nit_l):
            pos = nkT + self.n_nitsot + a
            out_tangent[j] = pos
            tangent_of[pos] = j
        primal_out = list(range(nk)) + [nkT + (j - nk) for j in range(nk, self.n_out)]
        nsT = ns + len(seq_l)
        primal_in = (list(range(ns)) + [nsT + k for k in range(nk)]
                     + [nsT + nkT + (i - ns - nk) for i in range(ns + nk, self.n_inner)])
        info = {"seqs": seq_l, "states": state_l, "nonseqs": non_l, "out_tangent": out_tangent,
                "tangent_of": tangent_of, "primal_out": primal_out, "primal_in": primal_in}
        full = getattr(self, "full_op", None)   # the tangent loop of traj[-1]'s loop: its storing twin
        if full is not None:
            Tf = full.tangent_scan(key)[0]
            if Tf is not None and not any(Tf.keep_last):
                T.full_op = Tf
        self._tangents[key] = (T, info)
        return T, info

    def tangent_inputs(self, inputs, points, info):
        """Outer inputs of the tangent scan: ``inputs`` = this node's, ``points`` = tangents of the primal ones."""
        from tapegrad.ops import zeros_like

        X, S, P = self._split(inputs[1:])
        ns, nk = self.n_seq, self.n_state
        x_dot = [points[i] for i in info["seqs"]]
        s_dot = [points[ns + k] if points[ns + k] is not None else zeros_like(S[k]) for k in info["states"]]
        p_dot = [points[i] for i in info["nonseqs"]]
        return [inputs[0]] + X + x_dot + S + s_dot + P + p_dot

    def R_op(self, inputs, eval_points):
        points = list(eval_points[1:])
        live = [p is not None for p in points]
        T, info = self.tangent_scan(live)
        if T is None:
            return [None] * self.n_out
        outs = T(*self.tangent_inputs(inputs, points, info))
        outs = outs if isinstance(outs, list) else [outs]
        # the tangent loop computes this loop's outputs too: the tape builder reuses them (``primal_loops``)
        outs[0].owner._tangent_of = (self, list(inputs), info["primal_out"])
        return [None if p is None else outs[p] for p in info["out_tangent"]]


def _dot_name(x):
    return None if x.name is None else f"{x.name}_dot"


def _as_dtype(v, dtype):
    return v if v.dtype == dtype else v.astype(dtype)


def _inner_shapes(inner_inputs, inner_outputs, in_shapes):
    """Concrete shapes of the inner outputs from the inner inputs' shapes (``NotImplementedError`` if unknown)."""
    shapes = {id(x): tuple(int(n) for n in s) for x, s in zip(inner_inputs, in_shapes)}

    def shape_of(v):
        if id(v) in shapes:
            return shapes[id(v)]
        if isinstance(v, Constant):
            return v.data.shape
        raise NotImplementedError(f"scan: no shape for inner variable {v}")

    from tapegrad.compile.op_shapes import op_infer_shape

    for node in toposort(inner_outputs, blockers=inner_inputs):
        try:
            res = op_infer_shape(node.op, node, [shape_of(x) for x in node.inputs])
        except NotImplementedError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NotImplementedError(f"scan: inner shape inference failed at {node.op}: {e}") from None
        for o, s in zip(node.outputs, res):
            shapes[id(o)] = tuple(int(n) for n in s)
    return [shape_of(o) for o in inner_outputs]


# scan() (the builder users call) lives in tapegrad/ops/scan_build.py; imported after Scan, re-exported here
from tapegrad.ops.scan_build import scan  # noqa: E402,F401


# ScanGrad lives in tapegrad/ops/scan_grad.py; imported after Scan so the registration order is unchanged
from tapegrad.ops.scan_grad import ScanGrad  # noqa: E402,F401
