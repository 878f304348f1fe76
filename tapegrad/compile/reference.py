"""The reference engine: run graphs or tapes with each op's NumPy ``perform``."""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Constant, SharedVariable, toposort


def evaluate(outputs, values):
    """Evaluate ``outputs`` (Variables) directly from the graph, ``values``: {Variable: array}.

    The slow, obviously-correct path: every node's ``perform`` in topological
    order.  Used by tests and by ``eval_variable`` before tapes exist.
    """
    env = {id(k): np.asarray(v) for k, v in values.items()}

    def value_of(v):
        if id(v) in env:
            return env[id(v)]
        if isinstance(v, Constant):
            return v.data
        if isinstance(v, SharedVariable):
            return v.get_value(borrow=True)
        raise ValueError(f"no value given for input {v}")

    for node in toposort(outputs, blockers=[k for k in values]):
        ins = [value_of(x) for x in node.inputs]
        storage = [[None] for _ in node.outputs]
        node.op.perform(node, ins, storage)
        for out, st in zip(node.outputs, storage):
            env[id(out)] = st[0]
    return [value_of(o) for o in outputs]


# --------------------------------------------------------------------------- tapes
class _Node:
    """A stand-in Apply (``op``, ``inputs``, ``outputs`` with types) for tapes that lost their graph."""

    def __init__(self, op, inputs, outputs):
        self.op, self.inputs, self.outputs = op, inputs, outputs

    @property
    def nin(self):
        return len(self.inputs)

    @property
    def nout(self):
        return len(self.outputs)

    @property
    def out(self):
        return self.outputs[0]


def instr_node(tape, k):
    """The Apply of instruction ``k``, or a stand-in with typed variables when the tape lost its graph
    (after unpickling)."""
    node = tape.nodes[k] if k < len(tape.nodes) else None
    if node is None:
        node = _Node(tape.ops[k], [_slot_variable(tape, int(s)) for s in tape.instr_args(k)],
                     [_slot_variable(tape, int(s)) for s in tape.instr_outs(k)])
    return node


def slot_label(tape, s):
    """A slot's name for messages (``slot 3`` when it has none)."""
    names = tape.slot_names
    return names[s] if names and s < len(names) and names[s] else f"slot {s}"


def _slot_variable(tape, s):
    from tapegrad.graph import TensorType, Variable
    from tapegrad.registry import CODE_DTYPES

    name = tape.slot_names[s] if s < len(tape.slot_names) else None
    return Variable(TensorType(CODE_DTYPES[int(tape.slot_dtype[s])], tape.slot_shape(s)), name=name)


def _add_context(exc, text):
    """Append ``text`` to ``exc``'s message in place (type and traceback kept)."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{text}",) + exc.args[1:]
    elif not exc.args:
        exc.args = (text,)
    elif hasattr(exc, "add_note"):
        exc.add_note(text)


class ReferenceEngine:
    """Run a :class:`~tapegrad.tape.format.Tape` with each op's NumPy ``perform``.

    The slow, obviously-correct engine (``device="python"``): the oracle the
    compiled engines are tested against.

    Parameters
    ----------
    tape : Tape
    nan_guard : bool
        Raise ``FloatingPointError`` naming the instruction whose output holds
        NaN or inf while none of its inputs did.
    """

    def __init__(self, tape, nan_guard=False):
        from tapegrad.registry import CODE_DTYPES

        self.tape = tape
        self.nan_guard = bool(nan_guard)
        self._dtypes = [CODE_DTYPES[int(d)] for d in tape.slot_dtype]
        self._plan = []
        for k in range(len(tape)):
            args, outs = tape.instr_args(k).tolist(), tape.instr_outs(k).tolist()
            self._plan.append((tape.ops[k], instr_node(tape, k), args, outs))

    def _where(self, k):
        from tapegrad.tape.show import format_instr

        t = self.tape
        op, _, args, outs = self._plan[k]
        ins = ", ".join(t.slot_names[s] for s in args)
        res = ", ".join(t.slot_names[s] for s in outs)
        return f"  while running {op} on ({ins}) giving {res}; tape instruction {k}: {format_instr(t, k)}"

    def run(self, input_arrays, shared_arrays):
        """Execute the tape.

        Parameters
        ----------
        input_arrays : sequence of ndarray
            One per ``tape.input_slots`` (already validated).
        shared_arrays : sequence of ndarray
            One per ``tape.shared_slots``.

        Returns
        -------
        (outputs, update_values) : (list of ndarray, list of ndarray)
            Fresh arrays (never views of arguments, constants or buffers).
        """
        t = self.tape
        store = [None] * t.n_slots
        for s, a in zip(t.input_slots, input_arrays):
            store[s] = a
        for s, c in zip(t.const_slots, t.consts):
            store[s] = c
        for s, a in zip(t.shared_slots, shared_arrays):
            store[s] = a
        for k, (op, node, args, outs) in enumerate(self._plan):
            storage = [[None] for _ in outs]
            ins = [store[s] for s in args]
            try:
                op.perform(node, ins, storage)
            except Exception as e:
                _add_context(e, self._where(k))
                raise
            for s, (value,) in zip(outs, storage):
                store[s] = self._check(k, s, value)
            if self.nan_guard:
                self._guard(k, ins, [store[s] for s in outs])
        outputs = [np.array(store[s], copy=True) for s in t.output_slots]
        updates = [np.array(store[s], copy=True) for s in t.update_slots]
        return outputs, updates

    def _check(self, k, s, value):
        t = self.tape
        if value is None:
            raise RuntimeError(f"{t.ops[k]} wrote no value for output %{s}\n{self._where(k)}")
        value = np.asarray(value)
        dtype = self._dtypes[s]
        if value.dtype.name != dtype or value.ndim != t.slot_ndim[s]:
            raise TypeError(
                f"{t.ops[k]}.perform produced {value.dtype.name} with shape {value.shape} for "
                f"{t.slot_names[s]}, whose type is {dtype} with {t.slot_ndim[s]} dimension(s)\n{self._where(k)}"
            )
        for axis, n in enumerate(t.slot_shape(s)):
            if n is not None and value.shape[axis] != n:
                raise ValueError(
                    f"{t.ops[k]}.perform produced shape {value.shape} for {t.slot_names[s]}, whose static "
                    f"shape says length {n} on axis {axis}\n{self._where(k)}"
                )
        return value

    def _guard(self, k, ins, outs):
        def bad(a):
            return a.dtype.kind == "f" and not np.all(np.isfinite(a))

        if any(bad(o) for o in outs) and not any(bad(np.asarray(i)) for i in ins):
            op, node, args, _ = self._plan[k]
            shapes = ", ".join(f"{self.tape.slot_names[s]}: {np.shape(i)}" for s, i in zip(args, ins))
            made = next(v for v in outs if bad(v))
            what = "NaN" if np.isnan(made).any() else "inf"
            user = [o.name for o in getattr(node, "outputs", []) if getattr(o, "name", None)]
            named = f" (variable {', '.join(user)})" if user else ""
            raise FloatingPointError(
                f"nan_guard: {op}{named} produced {what} from finite inputs of shapes {shapes}\n{self._where(k)}"
            )


def _op_label(op):
    """The op as users call it: an elementwise op's name (``add``), else its class name, lower-cased for
    tapegrad's own ops (``dot``, ``matmul``, ``join``) and as written for user ops."""
    name = getattr(op, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = type(op)
    return cls.__name__.lower() if cls.__module__.startswith("tapegrad.") else cls.__name__


def shape_error(tape, k, node, in_shapes, exc, engine):
    """The ``ValueError`` for instruction ``k`` whose ``infer_shape`` rejected the input shapes ``in_shapes``
    (raising ``exc``), worded as the reference engine's ``perform`` words it: the op, both (all) shapes and
    the user's variables, e.g. ``add: shapes (3,) and (4,) of (pos, vel) cannot be broadcast together``
    (other ops: ``... do not match: <exc>``), then where in the tape.  ``engine`` names the engine (the CPU,
    fused and CUDA engines share it)."""
    from tapegrad.tape.show import format_instr

    op = tape.ops[k]
    shapes = " and ".join(str(tuple(int(n) for n in s)) for s in in_shapes)
    names = ", ".join(str(x) for x in node.inputs)
    if getattr(op, "kind", None) == "elementwise":
        head = f"{_op_label(op)}: shapes {shapes} of ({names}) cannot be broadcast together"
    else:
        head = f"{_op_label(op)}: shapes {shapes} of ({names}) do not match: {exc}"
    ins = ", ".join(slot_label(tape, int(s)) for s in tape.instr_args(k))
    outs = ", ".join(slot_label(tape, int(s)) for s in tape.instr_outs(k))
    return ValueError(f"{head}\n  {engine}: while planning {op} on ({ins}) giving {outs}; tape instruction {k}: "
                      f"{format_instr(tape, k)}")
