"""``ScanGrad`` (``SCAN_GRAD``, 651): the reverse sweep of a ``Scan`` loop.

Split out of :mod:`tapegrad.ops.scan` (see its docstring for the design);
that module imports this one after ``Scan`` is registered, so the
registration order is unchanged, and re-exports ``ScanGrad``.
"""

from __future__ import annotations

import numpy as np

from tapegrad.config import config
from tapegrad.graph import Constant, TensorType, Variable, as_tensor, is_float_dtype
from tapegrad.op import Apply, NullType, Op, disconnected_type
from tapegrad.ops.checkpoint import schedule_for
from tapegrad.ops.scan import _as_dtype
from tapegrad.registry import registered


# --------------------------------------------------------------------------- ScanGrad
@registered(name="SCAN_GRAD", code=651)
class ScanGrad(Op):
    """The reverse sweep of a ``Scan``: gradients of ``<c, outputs>`` w.r.t. its float inputs.

    Inputs ``[n_steps, x.., s(0).., p.., c_j..]`` (``c_j``: one cotangent per float
    output ``j`` of the loop, in ``cot_outputs`` order, shaped like that output);
    outputs one gradient per float primal input (``wrt``, positions among
    ``x.., s(0).., p..``): ``x_bar`` per step, ``s_bar(0)``, ``p_bar`` summed over steps.

    The adjoint body is the inner graph's ``Lop``: inner inputs
    ``[x[t].., s(t).., p.., (s(t+1)..), lambda(t+1)[float states].., y_bar[t][float nit-sots]..]``,
    outputs ``[x_bar[t].., s_bar(t).., p_bar[t]..]`` for the float inner inputs.
    ``perform`` runs the action list of :func:`schedule_for` (``checkpoint`` of
    the loop): ``advance`` steps the forward (state) body, ``adjoint`` the adjoint
    body with ``lambda(t+1) = s_bar(t+1) + c_state[t]``; a tape engine can run the
    same action list (it depends on ``n`` and ``snapshots`` only) with two
    sub-tapes and ``snapshots + 1`` state buffers.

    ``next_states`` (``s(t+1)``, the states after step ``t``): where the adjoint reads a new state's value
    (``tanh``'s derivative is ``1 - y^2``), it reads it from these inputs instead of recomputing the step
    (``_read_next_states``): the adjoint of step ``t`` comes right after that of step ``t+1``, whose
    ``s(t+1)`` is at hand, and the last step's is one forward step.  Empty when the adjoint reads no new state.
    """

    kind = "general"

    def __init__(self, scan_op):
        from tapegrad.gradient import seeded_grad

        op = self.scan_op = scan_op
        self.checkpoint, self.snapshots = op.checkpoint, op.snapshots
        self.wrt = [i for i, x in enumerate(op.inner_inputs) if is_float_dtype(x.dtype)]
        self.cot_outputs = [j for j, o in enumerate(op.inner_outputs) if is_float_dtype(o.dtype)]
        self.cots = [op.inner_outputs[j].type(f"{'lambda' if j < op.n_state else 'y_bar'}{j}")
                     for j in self.cot_outputs]
        known = {}
        for j, c in zip(self.cot_outputs, self.cots):
            o = op.inner_outputs[j]
            if isinstance(o, Constant):
                continue
            known[o] = c if o not in known else known[o] + c
        self.null = None
        if known and self.wrt:
            g = seeded_grad(known, [op.inner_inputs[i] for i in self.wrt], disconnected_inputs="ignore",
                            return_disconnected="zero", null_gradients="return")
            self.null = next((v for v in g if isinstance(v.type, NullType)), None)
        else:
            from tapegrad.ops import zeros_like

            g = [zeros_like(op.inner_inputs[i]) for i in self.wrt]
        self.next_states = []
        if self.null is None and known and self.wrt and op.n_state:
            g, self.next_states = _read_next_states(op, g)
        self.adjoint_inputs = op.inner_inputs + self.next_states + self.cots
        self.adjoint_outputs = [_as_dtype(v, op.inner_inputs[i].dtype) if self.null is None else v
                                for v, i in zip(g, self.wrt)]
        self.out_wrt = list(self.wrt)   # the primal inputs whose gradients are outputs (``restricted``)
        self.from_stored = False         # ``stored_variant``: states read from the loop's trajectories
        self._stored = None
        self._fn = None
        self._augmented = {}
        self._restricted = {}

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __str__(self):
        snaps = "" if self.snapshots is None else f", snapshots={self.snapshots}"
        return f"ScanGrad{{{self.checkpoint}{snaps} of {self.scan_op}}}"

    __repr__ = __str__

    def encode(self):
        ints, _ = self.scan_op.encode()
        return ints + (len(self.out_wrt), len(self.cot_outputs), int(self.from_stored)), ()

    def make_node(self, n_steps, *inputs):
        op = self.scan_op
        fwd = op.make_node(n_steps, *inputs[: op.n_inner])
        cots = [as_tensor(c) for c in inputs[op.n_inner:]]
        if len(cots) != len(self.cot_outputs):
            raise TypeError(f"{self}: expected {len(self.cot_outputs)} cotangents, got {len(cots)}")
        for c, j in zip(cots, self.cot_outputs):
            o = fwd.outputs[j]
            if c.ndim != o.ndim:
                raise TypeError(f"{self}: cotangent of output {j} has {c.ndim} dimension(s), the output {o.ndim}")
        cots = [_as_dtype(c, fwd.outputs[j].dtype) for c, j in zip(cots, self.cot_outputs)]
        primal = fwd.inputs[1:]
        outs = [Variable(TensorType(primal[i].dtype, primal[i].type.shape)) for i in self.out_wrt]
        return Apply(self, [fwd.inputs[0]] + primal + cots, outs)

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1 + i]) for i in self.out_wrt]

    def restricted(self, keep):
        """This reverse sweep with only the gradients of the primal inputs ``keep`` (positions in ``out_wrt``) as
        outputs, and an adjoint body that computes only those and the states' (which carry the recursion): the
        tape builder's choice when the other outputs are unused (a sequence's gradient nobody asked for)."""
        import copy

        keep = [i for i in self.out_wrt if i in set(keep)]
        if keep == self.out_wrt:
            return self
        key = tuple(keep)
        r = self._restricted.get(key)
        if r is None:
            op = self.scan_op
            ns, nk = op.n_seq, op.n_state
            body = [k for k, i in enumerate(self.wrt) if i in key or ns <= i < ns + nk]
            r = copy.copy(self)
            r.out_wrt = keep
            r.wrt = [self.wrt[k] for k in body]
            r.adjoint_outputs = [self.adjoint_outputs[k] for k in body]
            r._fn, r._restricted, r._stored = None, {}, None
            self._restricted[key] = r
        return r

    def stored_variant(self):
        """This reverse sweep reading the states from the loop's stored trajectories instead of running the loop
        again: extra inputs after the cotangents, the loop's stacked states (as the full loop outputs them);
        the adjoint of step ``t`` reads ``s(t)`` (the initial state, or row ``t - 1``) and ``s(t+1)`` (row ``t``).
        The tape builder's choice where the full loop is on the tape (``tape/build._scan_grads_from_stored``)."""
        import copy

        if self.from_stored:
            return self
        if self._stored is None:
            r = copy.copy(self)
            r.from_stored, r._stored, r._restricted = True, None, {}
            self._stored = r
        return self._stored

    def adjoint_function(self):
        if self._fn is None:
            from tapegrad.compile.function import function

            self._fn = function(self.adjoint_inputs, self.adjoint_outputs, device="python",
                                on_unused_input="ignore", name="scan adjoint body")
        return self._fn

    def perform(self, node, inputs, output_storage):
        op = self.scan_op
        ns, nk = op.n_seq, op.n_state
        seqs, inits, nonseqs = op._split(inputs[1: 1 + op.n_inner])
        ncot = len(self.cot_outputs)
        cots = list(inputs[1 + op.n_inner:1 + op.n_inner + ncot])
        traj = list(inputs[1 + op.n_inner + ncot:])    # from_stored: the loop's stacked states
        n = op.length(inputs[0], seqs)
        if n == 0 and any(op.keep_last):
            raise IndexError("scan: index -1 is out of bounds for a loop of 0 steps")
        primal = seqs + inits + nonseqs
        grads = {i: np.zeros(np.shape(primal[i]), dtype=op.inner_inputs[i].dtype) for i in self.wrt}
        cot_of = dict(zip(self.cot_outputs, cots))
        state_cots = [j for j in self.cot_outputs if j < nk]
        nit_cots = [j for j in self.cot_outputs if j >= nk]
        # lambda: adjoint of the state after the current step
        lam = {k: np.zeros(np.shape(inits[k]), dtype=op.inner_inputs[ns + k].dtype) for k in state_cots}
        step = op.function("states") if nk else None
        adjoint = self.adjoint_function()

        def cot_at(j, t):
            c = cot_of[j]
            if not op.keep_last[j]:
                return c[t]
            return c if t == n - 1 else np.zeros_like(c)

        after = None   # s(t+1): the state of the adjoint step before (the one after step t)
        slots = {0: [np.asarray(v) for v in inits]}
        cur, t_cur = slots[0], 0
        acts = ([("adjoint", t) for t in range(n - 1, -1, -1)] if self.from_stored
                else schedule_for(self.checkpoint, n, self.snapshots))
        for act in acts:
            kind = act[0]
            if kind == "restore":
                cur, t_cur = slots[act[1]], act[2]
            elif kind == "advance":
                for t in range(act[1], act[2]):
                    outs = step(*[s[t] for s in seqs], *cur, *nonseqs) if nk else []
                    cur = [op.check_state(k, outs[k], cur[k], t) for k in range(nk)]
                t_cur = act[2]
            elif kind == "store":
                slots[act[1]] = cur
            elif kind == "free":
                del slots[act[1]]
            else:  # adjoint of step t, cur = state before step t
                t = act[1]
                if self.from_stored:
                    cur = [np.asarray(v) for v in inits] if t == 0 else [tr[t - 1] for tr in traj]
                    after = [tr[t] for tr in traj]
                else:
                    assert t == t_cur, (t, t_cur)
                lam_in = [lam[j] + cot_at(j, t) for j in state_cots]
                y_bar = [cot_at(j, t) for j in nit_cots]
                nxt = []
                if self.next_states:
                    if after is None:   # the last step: one forward step
                        outs = step(*[s[t] for s in seqs], *cur, *nonseqs)
                        after = [op.check_state(k, outs[k], cur[k], t) for k in range(nk)]
                    nxt = after
                res = adjoint(*[s[t] for s in seqs], *cur, *nonseqs, *nxt, *lam_in, *y_bar)
                after = cur
                for i, g in zip(self.wrt, res):
                    if i < ns:
                        grads[i][t] = g
                    elif i < ns + nk:
                        if i - ns in lam:
                            lam[i - ns] = np.asarray(g)
                    else:
                        grads[i] += g
        for k in state_cots:
            if ns + k in grads:
                grads[ns + k] = lam[k] if n else grads[ns + k]
        for st, i in zip(output_storage, self.out_wrt):
            st[0] = np.array(grads[i], dtype=op.inner_inputs[i].dtype, copy=True)

    # -- derivatives of the gradient
    def connection_pattern(self, node):
        n_in = len(node.inputs) if self.from_stored else 1 + self.scan_op.n_inner + len(self.cot_outputs)
        return [[False] * len(self.out_wrt)] + [[True] * len(self.out_wrt) for _ in range(n_in - 1)]

    def R_op(self, inputs, eval_points):
        """Tangent of ``J(z)^T c``: the ``ScanGrad`` of the tangent loop with cotangents ``(c_dot, c)``."""
        from tapegrad.ops import zeros_like

        op = self.scan_op
        z_dot = list(eval_points[1: 1 + op.n_inner])
        c_dot = list(eval_points[1 + op.n_inner:])
        cots = list(inputs[1 + op.n_inner:])
        live = [p is not None for p in z_dot]
        T, info = op.tangent_scan(live) if any(live) else (None, None)
        if T is None:
            if all(c is None for c in c_dot):
                return [None] * len(self.out_wrt)
            c_dot = [zeros_like(c) if d is None else d for c, d in zip(cots, c_dot)]
            res = self(*inputs[: 1 + op.n_inner], *c_dot)
            return res if isinstance(res, list) else [res]
        GT = T.grad_op()
        cot_by_out = dict(zip(self.cot_outputs, zip(cots, c_dot)))
        t_cots = []
        primal_pos = {p: j for j, p in enumerate(info["primal_out"])}
        for jt in GT.cot_outputs:
            if jt in primal_pos:
                c, d = cot_by_out[primal_pos[jt]]
                t_cots.append(zeros_like(c) if d is None else d)
            else:
                t_cots.append(cot_by_out[info["tangent_of"][jt]][0])
        res = GT(*op.tangent_inputs(inputs[: 1 + op.n_inner], z_dot, info), *t_cots)
        res = res if isinstance(res, list) else [res]
        return [res[GT.out_wrt.index(info["primal_in"][i])] for i in self.out_wrt]

    def L_op(self, inputs, outputs, output_grads):
        """Reverse over reverse: ``z_bar = d(J^T c)/dz . w`` (symmetric) and ``c_bar = J w``."""
        from tapegrad.ops import zeros_like

        op = self.scan_op
        w = dict(zip(self.out_wrt, output_grads))
        z_dot = [w.get(i) for i in range(op.n_inner)]
        points = [None] + z_dot + [None] * len(self.cot_outputs)
        z_bar = self.R_op(inputs, points)
        c_bar = op.R_op(inputs[: 1 + op.n_inner], [None] + z_dot)
        result = [disconnected_type()]
        zb = dict(zip(self.out_wrt, z_bar))
        for i, x in enumerate(inputs[1: 1 + op.n_inner]):
            if i in zb:
                result.append(zeros_like(x) if zb[i] is None else zb[i])
            else:
                result.append(zeros_like(x, dtype=config.floatX))
        for j, c in zip(self.cot_outputs, inputs[1 + op.n_inner:]):
            result.append(zeros_like(c) if c_bar[j] is None else _as_dtype(c_bar[j], c.dtype))
        return result


def _read_next_states(op, g):
    """The adjoint ``g`` with each new state the loop body computes read from a placeholder ``s(t+1)`` instead
    (``clone_replace``): ``(g, placeholders)``, or ``(g, [])`` unchanged when no derivative reads a new state
    (then the placeholders would only cost a copy per step)."""
    from tapegrad.graph import ancestors, clone_replace

    nk = op.n_state
    phs = [op.inner_outputs[j].type(f"s_next{j}") for j in range(nk)]
    inner_in = set(map(id, op.inner_inputs))
    repl = {o: ph for o, ph in zip(op.inner_outputs[:nk], phs)
            if o.owner is not None and id(o) not in inner_in and not isinstance(o, Constant)}
    if not repl:
        return g, []
    g2 = clone_replace(list(g), repl)
    used = {id(v) for v in ancestors(g2)}
    if not any(id(ph) in used for ph in phs):
        return g, []
    return g2, phs
