"""The sweep route: derivatives computed over a primal tape (ARCHITECTURE.md, "Two routes").

The symbolic route (:mod:`tapegrad.gradient`) differentiates the *graph* with
each op's ``L_op``/``R_op`` and then tapes the result.  The sweep route starts
from the primal *tape* -- already rewritten: common subexpressions merged,
constants folded -- and appends derivative instructions to it:

* :func:`adjoint` walks the tape's instructions in reverse, carrying a
  cotangent per slot (terms accumulate with ``add``; products use the
  absolute-zero multiply ``azmul``, so a zero cotangent never makes NaN), and
  emits each instruction's adjoint from its op's declaration by kind
  (:mod:`tapegrad.tape.sweep_rules`);
* :func:`tangent` walks them forward carrying a tangent per slot (JVP / Rop);
* :func:`adjoint_tangent` is forward-over-reverse: :func:`tangent` applied to
  the tape :func:`adjoint` returned (Hessian-vector products).  The adjoint
  only emits ops that have tangent rules, so no separate table is needed.

Each transformation takes a :class:`~tapegrad.tape.format.Tape` and returns a
new one made of the same op codes, lowered by :func:`~tapegrad.tape.build.build_tape`
so it gets the same rewrites as any other tape, and the engines then fuse
and plan it as they do every tape: no engine knows which route made it.
Internally the tape is *replayed* (:class:`Program`): one variable per slot,
one Apply per instruction, typed exactly as the tape says; the rules add
Apply nodes over those slot variables.

An instruction whose op has no rule raises :class:`SweepUnsupported` naming
the op; :func:`compile_outputs` (``tg.function(..., route=...)``) then uses
the symbolic route for that derivative (``route="auto"``) or raises
(``route="sweep"``).
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Apply, Constant, SharedVariable, TensorType, Variable, ancestors, clone_replace
from tapegrad.tape.build import build_tape
from tapegrad.tape.format import SLOT_CONST
from tapegrad.tape.sweep_rules import (  # noqa: F401  (SweepUnsupported re-exported)
    SweepUnsupported,
    add_all,
    adjoint_rule,
    cast_to,
    connected,
    float_zeros_like,
    is_float,
    tangent_rule,
)
from tapegrad.registry import CODE_DTYPES

__all__ = ["Program", "SweepUnsupported", "adjoint", "tangent", "adjoint_tangent", "compile_outputs", "ROUTES"]

ROUTES = ("symbolic", "sweep", "auto")


# --------------------------------------------------------------------------- a tape replayed as a graph
class Program:
    """A tape replayed as a graph: ``var[s]`` is slot ``s``'s variable, ``nodes[k]`` instruction ``k``'s Apply.

    ``inputs`` (optional) are the variables to use for the input slots (the
    function's own inputs); otherwise fresh variables of the slots' types.
    """

    def __init__(self, tape, inputs=None):
        self.tape = tape
        n = tape.n_slots
        var = [None] * n
        if inputs is None:
            inputs = [Variable(self.slot_type(s), name=tape.slot_names[s]) for s in tape.input_slots]
        self.inputs = list(inputs)
        if len(self.inputs) != len(tape.input_slots):
            raise ValueError(f"Program: {len(self.inputs)} input variables for {len(tape.input_slots)} input slots")
        for s, x in zip(tape.input_slots, self.inputs):
            var[s] = x
        weak = self._weak_constants()
        for s, data in zip(tape.const_slots, tape.consts):
            var[s] = Constant(TensorType(np.asarray(data).dtype.name, np.shape(data)), data, weak=weak.get(int(s)))
        for s, sv in zip(tape.shared_slots, tape.shared):
            var[s] = sv
        self.nodes = []
        for k in range(len(tape)):
            ins = [var[s] for s in tape.instr_args(k)]
            outs_slots = tape.instr_outs(k)
            old = tape.nodes[k] if k < len(tape.nodes) else None
            if old is not None and len(old.outputs) == len(outs_slots):
                outs = [Variable(o.type, name=o.name) for o in old.outputs]
            else:
                outs = [Variable(self.slot_type(s)) for s in outs_slots]
            node = Apply(tape.ops[k], ins, outs)
            for s, o in zip(outs_slots, outs):
                var[s] = o
            self.nodes.append(node)
        self.var = var

    def slot_type(self, s):
        t = self.tape
        return TensorType(CODE_DTYPES[int(t.slot_dtype[s])], t.slot_shape(s))

    def _weak_constants(self):
        """Slot -> the ``weak`` Python scalar of the graph constant it came from (NEP 50 promotion)."""
        t, out = self.tape, {}
        for k, node in enumerate(t.nodes or []):
            if node is None:
                continue
            for s, x in zip(t.instr_args(k), node.inputs):
                if t.slot_kind[s] == SLOT_CONST and isinstance(x, Constant) and x.weak is not None:
                    out.setdefault(int(s), x.weak)
        return out

    def outputs(self):
        return [self.var[s] for s in self.tape.output_slots]

    def updates(self):
        t = self.tape
        return [(t.shared[i], self.var[s]) for i, s in zip(t.update_targets, t.update_slots)]

    def slot_of_leaf(self, v):
        """The input or shared slot holding leaf variable ``v`` (None when the tape does not use it)."""
        for s, x in zip(self.tape.input_slots, self.inputs):
            if x is v:
                return int(s)
        if isinstance(v, SharedVariable):
            for s, sv in zip(self.tape.shared_slots, self.tape.shared):
                if sv is v:
                    return int(s)
        return None

    def build(self, outputs, updates=None, rewrite=True):
        """The tape computing ``outputs`` (variables over this program) and ``updates`` (default: the tape's)."""
        return build_tape(self.inputs, outputs, self.updates() if updates is None else updates, rewrite=rewrite)

    # -- activity
    def active_slots(self, wrt):
        """Float slots that depend on the float slots ``wrt`` through connected inputs."""
        act = {int(s) for s in wrt if is_float(self.var[s])}
        for k, node in enumerate(self.nodes):
            ins = self.tape.instr_args(k)
            if not any(int(s) in act for s in ins):
                continue
            pattern = connected(node)
            for j, (s, o) in enumerate(zip(self.tape.instr_outs(k), node.outputs)):
                if is_float(o) and any(int(a) in act and pattern[i][j] for i, a in enumerate(ins)):
                    act.add(int(s))
        return act


# --------------------------------------------------------------------------- the two sweeps (graph level)
def adjoint_vars(prog, seeds, wrt):
    """Cotangents of the slots ``wrt`` (None = zero) given ``seeds``: list of ``(slot, cotangent variable)``."""
    tape = prog.tape
    active = prog.active_slots(wrt)
    terms = {}
    for s, g in seeds:
        s = int(s)
        if s in active and g is not None:
            terms.setdefault(s, []).append(cast_to(g, prog.var[s].dtype))

    def total(s):
        ts = terms.pop(s, None)
        if not ts:
            return None
        g = add_all(ts)
        terms[s] = [g]
        return g

    for k in range(len(tape) - 1, -1, -1):
        node = prog.nodes[k]
        outs = [int(s) for s in tape.instr_outs(k)]
        if not any(s in terms for s in outs):
            continue
        ins = [int(s) for s in tape.instr_args(k)]
        act = [s in active and is_float(x) for s, x in zip(ins, node.inputs)]
        if not any(act):
            continue
        gouts = [total(s) for s in outs]
        for s, t in zip(ins, adjoint_rule(node, gouts, act)):
            if t is not None:
                terms.setdefault(s, []).append(t)
    return [total(int(s)) for s in wrt]


def tangent_vars(prog, points, outs):
    """Tangents of the slots ``outs`` (None = zero) given ``points``: list of ``(slot, tangent variable)``."""
    tape = prog.tape
    tan = {}
    for s, u in points:
        s = int(s)
        if u is not None and is_float(prog.var[s]):
            u = cast_to(u, prog.var[s].dtype)
            tan[s] = u if s not in tan else add_all([tan[s], u])
    for k in range(len(tape)):
        ins = [int(s) for s in tape.instr_args(k)]
        tins = [tan.get(s) if is_float(prog.var[s]) else None for s in ins]
        if all(u is None for u in tins):
            continue
        node = prog.nodes[k]
        pattern = connected(node)
        tins = [u if any(pattern[i]) else None for i, u in enumerate(tins)]
        if all(u is None for u in tins):
            continue
        for s, t in zip(tape.instr_outs(k), tangent_rule(node, tins)):
            if t is not None:
                tan[int(s)] = t
    return [tan.get(int(s)) for s in outs]


def _zeros_for(prog, s, dtype=None):
    z = float_zeros_like(prog.var[s])
    return z if dtype is None else cast_to(z, dtype)


# --------------------------------------------------------------------------- the tape-level transformations
def _slot_list(tape, slots, default):
    return [int(s) for s in (default if slots is None else slots)]


def adjoint(tape, seeds=None, wrt=None, rewrite=True):
    """A tape computing ``tape``'s outputs followed by the adjoints of the slots ``wrt``.

    Parameters
    ----------
    tape : Tape
    seeds : dict slot -> slot or None
        Cotangent seeds: ``{s: c}`` seeds slot ``s`` with the value of slot
        ``c`` (None: ones, i.e. a gradient).  Default ``{output 0: None}``.
    wrt : list of slots
        Default: every float input slot.
    """
    prog = Program(tape)
    seeds = {int(tape.output_slots[0]): None} if seeds is None else seeds
    wrt = _slot_list(tape, wrt, [s for s in tape.input_slots if is_float(prog.var[s])])
    from tapegrad.ops import ones_like

    pairs = [(s, ones_like(prog.var[s]) if c is None else prog.var[c]) for s, c in seeds.items()]
    adj = adjoint_vars(prog, pairs, wrt)
    adj = [g if g is not None else _zeros_for(prog, s) for g, s in zip(adj, wrt)]
    return prog.build(prog.outputs() + adj, rewrite=rewrite)


def tangent(tape, points, outs=None, rewrite=True):
    """A tape computing ``tape``'s outputs followed by the tangents of the slots ``outs`` (default: the outputs).

    ``points`` is a dict slot -> slot: the tangent of slot ``s`` is the value of slot ``points[s]``.
    """
    prog = Program(tape)
    outs = _slot_list(tape, outs, tape.output_slots)
    tan = tangent_vars(prog, [(s, prog.var[u]) for s, u in points.items()], outs)
    tan = [t if t is not None else _zeros_for(prog, s) for t, s in zip(tan, outs)]
    return prog.build(prog.outputs() + tan, rewrite=rewrite)


def adjoint_tangent(tape, points, seeds=None, wrt=None, rewrite=True):
    """Forward-over-reverse: the tangent (along ``points``, slot -> slot) of the adjoints of ``wrt``.

    The result's outputs are ``tape``'s outputs, the adjoints, then their tangents.
    """
    n_out = len(tape.output_slots)
    prog = Program(tape)
    wrt = _slot_list(tape, wrt, [s for s in tape.input_slots if is_float(prog.var[s])])
    adj = adjoint(tape, seeds=seeds, wrt=wrt, rewrite=rewrite)
    # slot numbers of the input/const/shared slots survive build_tape only for inputs: map through them
    remap = {int(a): int(b) for a, b in zip(tape.input_slots, adj.input_slots)}
    pts = {}
    for s, u in points.items():
        if int(s) not in remap or int(u) not in remap:
            raise ValueError("adjoint_tangent: points must map input slots to input slots")
        pts[remap[int(s)]] = remap[int(u)]
    return tangent(adj, pts, outs=list(adj.output_slots[n_out:]), rewrite=rewrite)


# --------------------------------------------------------------------------- tg.function(..., route=...)
def _tag(v):
    return v.tag.get("sweep") if isinstance(v, Variable) else None


def _label(v):
    return v.name if getattr(v, "name", None) is not None else repr(v)


def _derivative_inside(root, inputs):
    """A gradient-made variable among ``root``'s strict ancestors (None when there is none)."""
    for v in ancestors([root], blockers=inputs):
        if v is not root and _tag(v) is not None:
            return v
    return None


def _request_problem(req, index, inputs, given):
    """Why the sweep cannot reproduce output ``index`` of ``req`` exactly in this function (None: it can)."""
    from tapegrad.op import DisconnectedType, NullType

    for x in inputs:
        if isinstance(x, Variable) and x.owner is not None:
            return f"function input {_label(x)} is computed from other variables (the graph is cut there)"
    for v in list(req["f"]) + [p for p in req["points"] if p is not None]:
        if not isinstance(v, Variable) or isinstance(v.type, (NullType, DisconnectedType)):
            return f"{_label(v)} is not a tensor variable"
    input_ids = {id(x) for x in inputs}
    for w in req["wrt"]:
        if isinstance(w, Constant) or (w.owner is not None and id(w) not in input_ids):
            return f"wrt {_label(w)} is not a function input or shared variable (an intermediate or a constant)"
        if not is_float(w):
            return f"wrt {_label(w)} has integer dtype {w.dtype}"
    for f in req["f"]:
        d = _derivative_inside(f, inputs)
        if d is not None:
            return f"it differentiates {_label(f)}, which contains a gradient ({_label(d)}): a grad of a grad"
    if len({id(w) for w in req["wrt"]}) != len(req["wrt"]):
        return "a wrt variable is listed twice (the symbolic route's rule for that differs from adding the seeds)"
    if req["kind"] == "Lop" and len(req["f"]) > 1:
        # Aesara's Lop seeds each f with its point as given (known_grads): an f that another f reads gets its seed,
        # not the sum of its paths; the sweep would add them
        fids = {id(f) for f in req["f"]}
        for f in req["f"]:
            if any(id(a) in fids for a in ancestors([f]) if a is not f):
                return f"{_label(f)} reads another f of the Lop (Aesara's known_grads rule: that f keeps its seed)"
    if given:
        used = req["wrt"] if req["kind"] == "Rop" else [req["wrt"][index]]  # a Rop output depends on every wrt
        wrt_ids = {id(w) for w in used}
        for old, new in given.items():
            if id(old) in wrt_ids:
                return f"givens replace wrt {_label(old)}"
            if old.owner is not None:
                return f"givens replace the intermediate variable {_label(old)}"
            if any(id(a) in wrt_ids for a in ancestors([new])):
                return f"the givens replacement of {_label(old)} depends on a wrt variable"
    return None


class _Failed(Exception):
    def __init__(self, key, error):
        super().__init__(str(error))
        self.key, self.error = key, error


def _sweep_tape(inputs, outs, upd, reqs, plan):
    """The tape of ``outs``: ``plan[i] = (request key, index)`` by the sweep route, None by the graph."""
    from tapegrad.ops import ones_like

    sym = [i for i, p in enumerate(plan) if p is None]
    roots = [outs[i] for i in sym]
    where = {}
    for key, r in reqs.items():
        fpos = list(range(len(roots), len(roots) + len(r["f"])))
        roots.extend(r["f"])
        ppos = []
        for p in r["points"]:
            ppos.append(None if p is None else len(roots))
            if p is not None:
                roots.append(p)
        where[key] = (fpos, ppos)
    tape0 = build_tape(inputs, roots, upd)
    p0 = Program(tape0, inputs)
    out0 = p0.outputs()
    final = [None] * len(outs)
    for j, i in enumerate(sym):
        final[i] = out0[j]

    results, later = {}, []
    for key, r in reqs.items():
        fpos, ppos = where[key]
        fslots = [int(tape0.output_slots[k]) for k in fpos]
        pvars = [None if k is None else out0[k] for k in ppos]
        wslots = [p0.slot_of_leaf(w) for w in r["wrt"]]
        try:
            if r["kind"] == "Rop":
                pts = [(s, p) for s, p in zip(wslots, pvars) if s is not None and p is not None]
                tan = tangent_vars(p0, pts, fslots)
                results[key] = [t if t is not None else float_zeros_like(out0[k]) for t, k in zip(tan, fpos)]
                continue
            if r["kind"] == "Lop":
                seeds = [(s, p) for s, p in zip(fslots, pvars) if p is not None]
            else:
                f = out0[fpos[0]]
                seeds = [(fslots[0], ones_like(f, dtype=f.dtype if is_float(f) else "float64"))]
            live = [s for s in wslots if s is not None]
            adj = dict(zip(live, adjoint_vars(p0, seeds, live)))
            grads = [None if s is None else adj.get(s) for s in wslots]  # None: zero
            grads = [None if g is None else cast_to(g, w.dtype) for g, w in zip(grads, r["wrt"])]
        except SweepUnsupported as e:
            raise _Failed(key, e) from e
        if r["kind"] == "hvp":
            later.append((key, len(roots), grads))
        results[key] = grads
    hvp_keys = {key for key, _, _ in later}
    for i, p in enumerate(plan):
        if p is not None and p[0] not in hvp_keys:
            final[i] = _result(results[p[0]][p[1]], reqs[p[0]], p[1], outs[i])
    if not later:
        return p0.build(final)

    # forward over reverse: the tangent sweep over the tape the adjoint sweep made
    keep = [i for i, v in enumerate(final) if v is not None]
    roots1 = [final[i] for i in keep]
    spots = {}
    for key, _, grads in later:
        fpos, ppos = where[key]
        gpos = []
        for g in grads:  # the gradients that are not zero: their tangents
            gpos.append(None if g is None else len(roots1))
            if g is not None:
                roots1.append(g)
        pp = []
        for k in ppos:
            pp.append(None if k is None else len(roots1))
            if k is not None:
                roots1.append(out0[k])
        spots[key] = (gpos, pp)
    tape1 = p0.build(roots1)
    p1 = Program(tape1, inputs)
    out1 = p1.outputs()
    final = [None] * len(outs)
    for j, i in enumerate(keep):
        final[i] = out1[j]
    for key, _, _ in later:
        r = reqs[key]
        gpos, pp = spots[key]
        gslots = [int(tape1.output_slots[k]) for k in gpos if k is not None]
        wslots = [p1.slot_of_leaf(w) for w in r["wrt"]]
        pts = [(s, out1[k]) for s, k in zip(wslots, pp) if s is not None and k is not None]
        try:
            tan = iter(tangent_vars(p1, pts, gslots))
        except SweepUnsupported as e:
            raise _Failed(key, e) from e
        results[key] = [None if k is None else next(tan) for k in gpos]
    for i, p in enumerate(plan):
        if p is not None and p[0] in hvp_keys:
            final[i] = _result(results[p[0]][p[1]], reqs[p[0]], p[1], outs[i])
    return p1.build(final)


def _result(value, req, index, out):
    """Output ``out``'s sweep value ``value`` (None: zeros shaped like the wrt of a grad/Lop/hvp) in its dtype."""
    if value is None:
        value = float_zeros_like(req["wrt"][index])
    return cast_to(value, out.dtype)


def compile_outputs(inputs, outputs, updates, givens, strict):
    """The tape of ``tg.function(inputs, outputs, updates, givens)`` with derivatives by the sweep route.

    ``outputs``/``updates`` are as given (before ``givens``); ``givens`` is the normalised dict.  Returns
    ``(tape, route, notes)`` -- ``route`` is "sweep" (every derivative output by the sweep), "mixed" or
    "symbolic"; ``notes`` maps the derivative outputs that took the symbolic route to the reason; ``tape``
    is None when no output can take the sweep route (the caller tapes the graph as usual).  With ``strict`` (``route="sweep"``) any derivative output the
    sweep cannot compute raises ``ValueError`` naming the output and why.
    """
    from tapegrad.tape.build import MissingInputError

    def refuse(i, why):
        raise ValueError(f"route='sweep': output {i} ({_label(outputs[i])}) cannot be computed by the sweep route: "
                         f"{why}; use route='auto' or route='symbolic'")

    plan, reqs, notes = [None] * len(outputs), {}, {}
    for i, o in enumerate(outputs):
        tag = _tag(o)
        if tag is not None and tag.get("why") == "disconnected":
            continue  # zeros of a disconnected gradient: nothing to differentiate, taped as they are
        if tag is None:
            if strict:
                d = _derivative_inside(o, inputs)
                if d is not None:
                    refuse(i, f"it uses the gradient {_label(d)} inside a further expression")
            continue
        req = tag.get("request")
        why = tag.get("why") if req is None else _request_problem(req, tag["index"], inputs, givens)
        if why is not None:
            if strict:
                refuse(i, why)
            notes[i] = why
            continue
        reqs[id(req)] = req
        plan[i] = (id(req), tag["index"])
    if strict:
        for target, e in updates:
            d = _derivative_inside(e, inputs)
            if d is not None or _tag(e) is not None:
                raise ValueError(f"route='sweep': the update of {_label(target)} uses a gradient "
                                 f"({_label(d if d is not None else e)}); the sweep route computes only gradients "
                                 "that are outputs; use route='auto' or route='symbolic'")
    while True:
        used = {p[0] for p in plan if p is not None}
        reqs = {k: r for k, r in reqs.items() if k in used}
        if not reqs:
            return None, "symbolic", notes
        # givens apply to the outputs, the updates and what the requests start from, in one clone
        extra = [v for r in reqs.values() for v in list(r["f"]) + [p for p in r["points"] if p is not None]]
        outs, upd, rq = list(outputs), list(updates), reqs
        if givens:
            cloned = clone_replace(outs + [e for _, e in upd] + extra, givens)
            outs, rest = cloned[: len(outs)], cloned[len(outs):]
            upd = [(t, e) for (t, _), e in zip(upd, rest[: len(upd)])]
            it = iter(rest[len(updates):])
            rq = {k: dict(r, f=[next(it) for _ in r["f"]], points=[None if p is None else next(it) for p in r["points"]])
                  for k, r in reqs.items()}
        try:
            tape = _sweep_tape(inputs, outs, upd, rq, plan)
        except _Failed as e:
            bad = [i for i, p in enumerate(plan) if p is not None and p[0] == e.key]
            if strict:
                refuse(bad[0], str(e.error))
            for i in bad:
                plan[i] = None
                notes[i] = str(e.error)
            continue
        except MissingInputError as e:
            if strict:
                raise
            return None, "symbolic", {i: str(e) for i, p in enumerate(plan) if p is not None}
        derivs = [i for i, o in enumerate(outputs) if _tag(o) is not None and _tag(o).get("why") != "disconnected"]
        swept = [i for i in derivs if plan[i] is not None]
        route = "sweep" if len(swept) == len(derivs) else ("mixed" if swept else "symbolic")
        return tape, route, notes
