"""Graph -> tape: toposort, rewrite, assign slots, fill the flat arrays.

Slots are numbered inputs first (call order), then constants, then shared
variables (graph inputs that are :class:`SharedVariable` and not listed in
``inputs``; update targets included), then temporaries in instruction order.
"""

from __future__ import annotations

import numpy as np

from tapegrad import registry
from tapegrad.graph import Constant, SharedVariable, Variable, as_tensor, toposort
from tapegrad.op import DisconnectedType, NullType
from tapegrad.tape.format import SLOT_CONST, SLOT_INPUT, SLOT_SHARED, SLOT_TEMP, Tape
from tapegrad.tape.rewrite import Instr, Rewriter, Value
from tapegrad.ops.scan import full_loops, primal_loops


class MissingInputError(ValueError):
    """The graph needs a variable that is neither an input, a constant nor a shared variable."""


def _label(v):
    return v.name if v.name is not None else repr(v)


def check_computable(v, what):
    """Raise ``TypeError`` when ``v`` (described by ``what``) is a NullType or DisconnectedType variable."""
    if not isinstance(v, Variable):
        raise TypeError(f"{what} must be a symbolic Variable, got {type(v).__name__} {v!r}")
    if isinstance(v.type, NullType):
        raise TypeError(f"{what} {_label(v)} is a NullType variable and cannot be computed: {v.type.why_null}")
    if isinstance(v.type, DisconnectedType):
        raise TypeError(
            f"{what} {_label(v)} is a DisconnectedType variable (a gradient that is zero because the cost does "
            "not depend on it); it has no value to compute. Use grad(..., return_disconnected='zero')"
        )


def normalize_updates(updates):
    """``updates`` (None, dict or pairs) -> list of ``(SharedVariable, Variable)``, checked."""
    if updates is None:
        return []
    pairs = list(updates.items()) if isinstance(updates, dict) else list(updates)
    out, seen = [], set()
    for pair in pairs:
        try:
            target, expr = pair
        except (TypeError, ValueError):
            raise TypeError(f"updates must be (shared_variable, expression) pairs, got {pair!r}") from None
        if not isinstance(target, SharedVariable):
            raise TypeError(f"update target {target!r} is not a shared variable (tg.shared)")
        if id(target) in seen:
            raise ValueError(f"shared variable {_label(target)} is updated more than once")
        seen.add(id(target))
        expr = as_tensor(expr)
        check_computable(expr, f"the update of {_label(target)}")
        if expr.dtype != target.dtype or expr.ndim != target.ndim:
            raise TypeError(
                f"the update of shared variable {_label(target)} ({target.type}) has type {expr.type}; "
                f"cast it (e.g. .astype({target.dtype!r})) so dtype and ndim match"
            )
        out.append((target, expr))
    return out


def _restrict_scan_grads(instrs, roots):
    """A ``scan`` reverse sweep some of whose gradients nothing reads computes only the others
    (``ScanGrad.restricted``): the gradient of a sequence nobody asked for costs a product per step."""
    from tapegrad.ops.scan_grad import ScanGrad

    used = {id(v) for ins in instrs for v in ins.inputs} | {id(v) for v in roots}
    for ins in instrs:
        if isinstance(ins.op, ScanGrad) and any(id(o) not in used for o in ins.outputs):
            keep = [i for i, o in zip(ins.op.out_wrt, ins.outputs) if id(o) in used]
            ins.op = ins.op.restricted(keep)
            ins.outputs = [o for o in ins.outputs if id(o) in used]
            for k, o in enumerate(ins.outputs):
                o.index = k


def _scan_grads_from_stored(instrs):
    """A ``scan`` reverse sweep (``checkpoint="all"``) whose loop is on the tape before it reads the states from
    that loop's trajectories instead of running the loop again (``ScanGrad.stored_variant``).  A loop that keeps
    only its last step (``traj[-1]``) becomes the loop that stores the trajectories, and its results the last
    rows of them: the sweep's own store of every state goes, so memory stays the same."""
    from tapegrad.ops.scan import Scan
    from tapegrad.ops.scan_grad import ScanGrad

    for g in list(instrs):
        op = g.op
        if not isinstance(op, ScanGrad) or op.from_stored or op.checkpoint != "all" or op.scan_op.n_state == 0:
            continue
        S, at = op.scan_op, instrs.index(g)
        n_in, nk = 1 + S.n_inner, S.n_state
        full = getattr(S, "full_op", None)
        loop = next((f for f in instrs[:at] if (f.op is S or (full is not None and f.op is full))
                     and len(f.inputs) == n_in and all(a is b for a, b in zip(f.inputs, g.inputs[:n_in]))), None)
        if loop is None:
            continue
        if any(loop.op.keep_last[:nk]):
            if full is None or any(full.keep_last):
                continue
            loop = _store_trajectories(instrs, loop, full)
        g.op = op.stored_variant()
        g.inputs = list(g.inputs) + list(loop.outputs[:nk])
    return instrs


def _store_trajectories(instrs, last, full):
    """Replace the keep-last loop ``last`` in ``instrs`` by ``full`` (the same loop storing its trajectories)
    and a ``[-1]`` row of each trajectory for ``last``'s results; returns the new loop instruction."""
    node = full.make_node(*last.node.inputs)
    loop = Instr(full, list(last.inputs), [], node)
    loop.outputs = [Value("temp", o.type, o.name, instr=loop, index=j) for j, o in enumerate(node.outputs)]
    new = [loop]
    for j, (traj, val) in enumerate(zip(node.outputs, last.outputs)):
        row = Variable.__getitem__(traj, -1).owner
        sub = Instr(row.op, [loop.outputs[j]], [val], row)
        val.instr, val.index = sub, 0
        new.append(sub)
    k = instrs.index(last)
    instrs[k:k + 1] = new
    return loop


def build_tape(inputs, outputs, updates=(), rewrite=True):
    """Flatten the graph from ``inputs`` to ``outputs`` (and ``updates``) into a :class:`Tape`.

    Parameters
    ----------
    inputs : list of Variable
        The function's arguments, in call order.  A variable with an owner
        cuts the graph there (its value is given, not computed).
    outputs : Variable or list of Variable
    updates : list of (SharedVariable, Variable) pairs, or dict
    rewrite : bool
        Apply CSE, constant folding, algebraic simplification (dead code is
        always dropped).

    Raises
    ------
    TypeError
        An output or update is a NullType/DisconnectedType variable, or an
        input is a constant.
    MissingInputError
        The graph needs a variable that is not among ``inputs``.
    """
    inputs = list(inputs)
    outputs = [outputs] if isinstance(outputs, Variable) else list(outputs)
    updates = normalize_updates(updates)
    seen = set()
    for i, x in enumerate(inputs):
        if not isinstance(x, Variable):
            raise TypeError(f"input {i} must be a symbolic Variable, got {type(x).__name__} {x!r}")
        if isinstance(x, Constant):
            raise TypeError(f"input {i} ({_label(x)}) is a constant; constants cannot be function inputs")
        if id(x) in seen:
            raise ValueError(f"input {_label(x)} appears more than once in the inputs list")
        seen.add(id(x))
    outputs = [as_tensor(o) if not isinstance(o, Variable) else o for o in outputs]
    for i, o in enumerate(outputs):
        check_computable(o, f"output {i}")
    roots = outputs + [e for _, e in updates]

    rw = Rewriter(enabled=rewrite)
    values: dict[int, Value] = {id(x): Value("input", x.type, x.name, var=x) for x in inputs}

    def value_of(v, user):
        val = values.get(id(v))
        if val is not None:
            return val
        if isinstance(v, Constant):
            val = rw.constant(v.data, v.type, v.name)
        elif isinstance(v, SharedVariable):
            val = Value("shared", v.type, v.name, var=v)
        elif v.owner is None:
            check_computable(v, "a graph input")
            user = user if isinstance(user, str) else f" as input {user[1]} of {user[0].op}"
            names = ", ".join(_label(x) for x in inputs) or "none"
            raise MissingInputError(
                f"missing input: the graph needs {_label(v)} ({v.type}){user}, but it is not in the "
                f"function's inputs (given: {names}); add it to the inputs or give it a value with givens"
            )
        else:
            raise AssertionError(f"{v} is computed but was not reached in topological order")
        values[id(v)] = val
        return val

    def emit(node):
        ins = [values.get(id(x)) or value_of(x, (node, i)) for i, x in enumerate(node.inputs)]
        outs = rw.apply(node, ins)
        for o, val in zip(node.outputs, outs):
            if val.name is None and o.name is not None and val.kind in ("temp", "const"):
                val.name = o.name
            values[id(o)] = val

    def ready(x):
        return id(x) in values or isinstance(x, (Constant, SharedVariable))

    order = toposort(roots, blockers=inputs)
    full_of = full_loops(order) if rewrite else {}
    tangent_of = primal_loops(order) if rewrite else {}
    done = set()
    for node in order:
        if id(node) in done:
            continue
        full = full_of.get(id(node))
        tan = tangent_of.get(id(node))
        if full is None and tan is not None and all(ready(x) for x in tan[0].inputs):
            # a loop whose tangent loop is needed too: the tangent loop's primal outputs (one loop, not two)
            if id(tan[0]) not in done:
                emit(tan[0])
                done.add(id(tan[0]))
            for o, k in zip(node.outputs, tan[1]):
                values[id(o)] = values[id(tan[0].outputs[k])]
            continue
        if full is None:
            emit(node)
            continue
        # ``traj[-1]`` of a loop whose whole trajectory the graph also needs: the last row of that trajectory
        # (one loop, and one reverse sweep for a gradient, instead of two)
        if id(full) not in done:
            emit(full)
            done.add(id(full))
        for j, o in enumerate(node.outputs):
            stacked = full.outputs[j]
            if full.op.keep_last[j]:
                values[id(o)] = values[id(stacked)]
            else:
                row = Variable.__getitem__(stacked, -1)
                emit(row.owner)
                values[id(o)] = values[id(row)]
    out_vals = [value_of(o, " as an output") for o in outputs]
    upd_vals = [value_of(e, " in an update") for _, e in updates]
    instrs = rw.prune(out_vals + upd_vals)
    if rewrite:
        _restrict_scan_grads(instrs, out_vals + upd_vals)
        instrs = _scan_grads_from_stored(instrs)

    # -- slots
    slot_of: dict[int, int] = {}
    slot_vals: list[Value] = []
    kinds: list[int] = []

    def add(val, kind):
        if id(val) not in slot_of:
            slot_of[id(val)] = len(slot_vals)
            slot_vals.append(val)
            kinds.append(kind)

    for x in inputs:
        add(values[id(x)], SLOT_INPUT)
    leaves = [v for ins in instrs for v in ins.inputs] + out_vals + upd_vals
    for v in leaves:
        if v.kind == "const":
            add(v, SLOT_CONST)
    shared_vals = {}
    for v in leaves:
        if v.kind == "shared":
            shared_vals.setdefault(id(v.var), v)
    for target, _ in updates:
        if id(target) not in shared_vals:
            shared_vals[id(target)] = values.get(id(target)) or Value("shared", target.type, target.name, var=target)
            if shared_vals[id(target)].kind != "shared":  # listed as an input: keep a separate shared slot
                shared_vals[id(target)] = Value("shared", target.type, target.name, var=target)
    for v in shared_vals.values():
        add(v, SLOT_SHARED)
    for ins in instrs:
        for o in ins.outputs:
            add(o, SLOT_TEMP)

    n_slots = len(slot_vals)
    slot_names = [v.name if v.name is not None else f"%{s}" for s, v in enumerate(slot_vals)]
    shapes = [tuple(-1 if n is None else n for n in v.type.shape) for v in slot_vals]
    shape_ptr = np.zeros(n_slots + 1, dtype=np.int64)
    shape_ptr[1:] = np.cumsum([len(s) for s in shapes]) if shapes else []

    # -- instructions
    codes, arg_ptr, args, out_ptr, outs = [], [0], [], [0], []
    ip_ptr, iparams, fp_ptr, fparams = [0], [], [0], []
    encoded = {}  # id(op) -> params (ops are immutable; most instances are shared)
    for ins in instrs:
        codes.append(registry.code_of(ins.op))
        args.extend(slot_of[id(v)] for v in ins.inputs)
        outs.extend(slot_of[id(v)] for v in ins.outputs)
        arg_ptr.append(len(args))
        out_ptr.append(len(outs))
        params = encoded.get(id(ins.op))
        if params is None:
            try:
                params = ins.op.encode()
            except Exception:  # noqa: BLE001 - user ops with unencodable props run by callback anyway
                params = ((), ())
            encoded[id(ins.op)] = params
        ints, floats = params
        iparams.extend(ints)
        fparams.extend(floats)
        ip_ptr.append(len(iparams))
        fp_ptr.append(len(fparams))

    const_slots = [s for s, k in enumerate(kinds) if k == SLOT_CONST]
    shared_slots = [s for s, k in enumerate(kinds) if k == SLOT_SHARED]
    shared_index = {id(slot_vals[s].var): i for i, s in enumerate(shared_slots)}
    tape = Tape(
        codes=np.array(codes, dtype=np.int32),
        arg_ptr=arg_ptr,
        args=np.array(args, dtype=np.int32),
        out_ptr=out_ptr,
        outs=np.array(outs, dtype=np.int32),
        ip_ptr=ip_ptr,
        iparams=np.array(iparams, dtype=np.int64),
        fp_ptr=fp_ptr,
        fparams=np.array(fparams, dtype=np.float64),
        slot_dtype=[registry.DTYPE_CODES[v.type.dtype] for v in slot_vals],
        slot_ndim=[v.type.ndim for v in slot_vals],
        shape_ptr=shape_ptr,
        static_shape=np.array([n for s in shapes for n in s], dtype=np.int64),
        slot_kind=kinds,
        input_slots=np.arange(len(inputs), dtype=np.int32),
        output_slots=np.array([slot_of[id(v)] for v in out_vals], dtype=np.int32),
        const_slots=np.array(const_slots, dtype=np.int32),
        shared_slots=np.array(shared_slots, dtype=np.int32),
        update_slots=np.array([slot_of[id(v)] for v in upd_vals], dtype=np.int32),
        update_targets=np.array([shared_index[id(t)] for t, _ in updates], dtype=np.int32),
        ops=[ins.op for ins in instrs],
        consts=[slot_vals[s].data for s in const_slots],
        shared=[slot_vals[s].var for s in shared_slots],
        slot_names=slot_names,
        nodes=[ins.node for ins in instrs],
    )
    tape.rewrite_stats = dict(rw.stats)
    return tape
