"""Elementwise fusion groups of a tape at concrete slot shapes.

:func:`find_groups` partitions the fusible instructions of a tape (elementwise
table rows, ``CAST``, and ``SUM_LIKE`` / ``BROADCAST_LIKE`` where they are pure
elementwise copies at these shapes) into groups that one generated loop can
run (``tapegrad.compile.fused``):

* every member's output has the group's run-time shape; a member's inputs may
  broadcast to it (size-1 axes, lower rank, 0-d);
* the members form a DAG, and the group can run as one unit: a list schedule
  of the whole tape is built (:func:`schedule`) in which each group is one
  step placed after every producer of its inputs and before every consumer of
  its outputs (the tape's own instruction order is not kept: an instruction
  that reads a group's output is simply scheduled after the group);
* group outputs are the member slots used outside the group, by the tape's
  outputs or by its updates; the other member slots live only in registers.

:meth:`FuseGroup.key` is the group's structure (op codes, wiring, dtypes,
the broadcast *pattern* of each input, rank; never lengths), so the same
structure reuses compiled code at any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tapegrad.registry import CODE_DTYPES, name_of

# dtypes the generated loops handle
FUSE_DTYPES = ("float64", "float32", "int64", "bool")
# int64 compute is fused only for these rows (as the tier-0 interpreter, see compile/dispatch.py)
INT_OK = frozenset({"neg", "abs", "sign", "sqr", "identity", "add", "sub", "mul", "int_div", "mod", "maximum",
                    "minimum", "azmul", "switch", "clip"})

# input patterns (ROLL: a 1-d input read at ``(i - shift) mod n``, for a ``roll`` member)
CONTIG, SCALAR, BCAST, ROLL = "c", "s", "b", "r"

_SPECS = None


def _specs():
    """op code -> elementwise ScalarSpec (table rows of ops/elemwise.py, nn's relu, ...)."""
    global _SPECS
    if _SPECS is None:
        from tapegrad.ops.elemwise import ScalarSpec
        from tapegrad.registry import all_codes

        _SPECS = {code: entry for _, code, entry in all_codes() if isinstance(entry, ScalarSpec)}
    return _SPECS


@dataclass
class Member:
    """One fused instruction: ``kind`` is ``"ew"`` (table row ``spec``) or ``"copy"`` (cast / sum_like /
    broadcast_like: the first input converted to the output dtype)."""

    k: int
    code: int
    kind: str
    spec: object
    data_args: tuple  # slots read by the loop
    shape_args: tuple  # slots used only for their shape (not read)
    out: int
    out_dtype: str
    compute_dtype: str  # operands are converted to this before the expression
    load_dtypes: tuple  # per data arg: dtype it is converted to
    special: str = ""  # "pow0" / "pow1" / "pow2": pow by a tape constant 0, 1 or 2 (part of the key)


@dataclass
class FuseGroup:
    shape: tuple
    members: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # external data slots read, in first-use order
    shape_inputs: list = field(default_factory=list)  # external slots used only for their shape
    outputs: list = field(default_factory=list)  # member slots needed outside
    patterns: list = field(default_factory=list)  # per input: CONTIG / SCALAR / BCAST
    input_shapes: list = field(default_factory=list)
    input_dtypes: list = field(default_factory=list)
    _key: tuple = None

    @property
    def instrs(self):
        return [m.k for m in self.members]

    def key(self):
        """Structure key: equal keys <=> the same generated code."""
        if self._key is None:
            where = {}
            for j, s in enumerate(self.inputs):
                where[s] = ("i", j)
            ms = []
            for j, s in enumerate(self.inputs):  # a slot read in place and rolled: in place wins for plain reads
                if self.patterns and self.patterns[j] != ROLL:
                    where[s] = ("i", j)
            for m_i, m in enumerate(self.members):
                refs = (("i", m.roll_input),) if m.kind == "roll" else tuple(where[s] for s in m.data_args)
                ms.append((m.code, m.kind, refs, m.out_dtype, m.compute_dtype, m.load_dtypes, m.special))
                where[m.out] = ("t", m_i)
            outs = tuple(where[s] for s in self.outputs)
            ins = tuple((d, p) for d, p in zip(self.input_dtypes, self.patterns))
            self._key = ("fused-v1", len(self.shape), ins, tuple(ms), outs)
        return self._key

    def __repr__(self):
        return (f"<FuseGroup shape={self.shape} instrs={self.instrs} inputs={self.inputs} "
                f"outputs={self.outputs}>")


def pattern_of(in_shape, out_shape):
    """How an input of ``in_shape`` is read by a loop over ``out_shape``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if len(in_shape) > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    if padded == out_shape:
        return CONTIG
    for a, b in zip(padded, out_shape):
        if a != b and a != 1:
            return None
    if int(np.prod(in_shape, dtype=np.int64)) == 1:
        return SCALAR
    return BCAST


def broadcast_strides(in_shape, out_shape):
    """Element strides of a C-contiguous ``in_shape`` array read over ``out_shape`` (0 on broadcast axes)."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    st = [0] * len(out_shape)
    acc = 1
    for d in range(len(out_shape) - 1, -1, -1):
        st[d] = 0 if padded[d] == 1 and out_shape[d] != 1 else acc
        acc *= padded[d]
    return st


def _const_value(tape, s):
    """The value of slot ``s`` when it is a tape constant, else None."""
    cache = getattr(tape, "_fuse_consts", None)
    if cache is None:
        cache = {int(c): np.asarray(v) for c, v in zip(tape.const_slots, tape.consts)}
        try:
            tape._fuse_consts = cache
        except AttributeError:  # pragma: no cover
            pass
    return cache.get(int(s))


# argument positions an op reads only for their shape (None: every argument)
_SHAPE_ONLY = {"SUM_LIKE": (1,), "BROADCAST_LIKE": (1,), "BROADCAST_REDUCED": (1,), "SUBTENSOR_SCATTER": (0,),
               "DIAG_EMBED": (1,), "ZEROS_LIKE": None, "ONES_LIKE": None, "SHAPE_I": None, "SHAPE": None}


def shape_only_args(tape, k):
    """The slots instruction ``k`` reads only for their shape (never their values): the reference of
    ``sum_like``/``broadcast_like``/``broadcast_reduced``/``diag_embed``, the base of a two-argument ``subtensor_scatter``
    (it scatters into zeros), the argument of ``zeros_like``/``ones_like``/``shape_i``.  A slot that the
    instruction also reads as a value is not among them."""
    name = name_of(int(tape.codes[k]))
    if name not in _SHAPE_ONLY:
        return frozenset()
    args = [int(s) for s in tape.instr_args(k)]
    pos = _SHAPE_ONLY[name]
    if name == "SUBTENSOR_SCATTER" and len(args) != 2:
        return frozenset()
    if pos is None:
        return frozenset(args)
    shape = {args[j] for j in pos if j < len(args)}
    return frozenset(shape - {a for j, a in enumerate(args) if j not in pos})


def _member(tape, k, shapes, dtypes, gather=False):
    """A :class:`Member` for instruction ``k`` when it is fusible at these shapes, else None.  ``gather``: also
    ``roll`` of a 1-d array by a constant shift (kind ``"roll"``: the loop reads its input at a shifted index,
    so the input must exist before the loop)."""
    code = int(tape.codes[k])
    outs = tape.instr_outs(k)
    if len(outs) != 1:
        return None
    out = int(outs[0])
    args = [int(s) for s in tape.instr_args(k)]
    odt = dtypes[out]
    if odt not in FUSE_DTYPES or any(dtypes[s] not in FUSE_DTYPES for s in args):
        return None
    oshape = tuple(shapes[out])
    spec = _specs().get(code)
    op = tape.ops[k] if k < len(tape.ops) else None
    if spec is not None:
        if getattr(op, "spec", spec) is not spec and getattr(op, "spec", None) is not None:
            spec = op.spec
        if len(args) != spec.nin:
            return None
        if any(pattern_of(shapes[s], oshape) is None for s in args):
            return None
        if spec.out == "bool":
            cd = np.result_type(*[dtypes[s] for s in args]).name
            if odt != "bool":
                return None
        else:
            cd = odt
            if spec.out == "float" and cd not in ("float64", "float32"):
                return None
            if cd == "bool" and spec.name != "switch":
                return None
            if cd == "int64" and spec.name not in INT_OK:
                return None
        if cd not in FUSE_DTYPES:
            return None
        loads = tuple("bool" if (spec.name == "switch" and j == 0) else cd for j in range(len(args)))
        special = ""
        if spec.name == "pow" and cd in ("float64", "float32"):
            e = _const_value(tape, args[1])
            if e is not None and e.size == 1 and float(e.reshape(-1)[0]) in (0.0, 1.0, 2.0):
                special = f"pow{int(float(e.reshape(-1)[0]))}"
        return Member(k, code, "ew", spec, tuple(args), (), out, odt, cd, loads, special)
    name = name_of(code)
    if name == "ROLL" and gather:
        x, sh = args
        e = _const_value(tape, sh)
        if (e is None or e.size != 1 or len(shapes[x]) != 1 or tuple(shapes[x]) != oshape or dtypes[x] != odt
                or getattr(tape.ops[k], "axis", None) not in (None, 0) or oshape[0] == 0):
            return None
        return Member(k, code, "roll", None, (x,), (), out, odt, odt, (odt,), f"roll{int(e.reshape(-1)[0])}")
    if name == "CAST":
        (x,) = args
        if dtypes[x] in ("float64", "float32") and odt in ("int64",):
            return None  # float -> int casts of NaN/inf are undefined in LLVM
        if tuple(shapes[x]) != oshape:
            return None
        return Member(k, code, "copy", None, (x,), (), out, odt, odt, (dtypes[x],))
    if name == "SUM_LIKE":
        g, ref = args
        if tuple(shapes[g]) != oshape or dtypes[g] == "bool" or odt == "bool":
            return None
        return Member(k, code, "copy", None, (g,), (ref,), out, odt, odt, (dtypes[g],))
    if name == "BROADCAST_LIKE":
        x, ref = args
        if pattern_of(shapes[x], oshape) is None:
            return None
        return Member(k, code, "copy", None, (x,), (ref,), out, odt, odt, (dtypes[x],))
    return None


def schedule(tape, slot_shapes, min_size=2, materialize_shape_args=False):
    """A run order of the whole tape: a list of ``("instr", k)`` and ``("group", FuseGroup)`` steps.

    List scheduling: instructions that are not fused run as soon as their
    inputs exist; the open group greedily takes every ready fusible
    instruction of its shape (a member may read any slot already computed or
    any slot of the group itself); when nothing more can join, the group is
    closed (its outputs now exist) and the next one opens on the earliest
    ready fusible instruction.  Groups of fewer than ``min_size``
    instructions are dissolved into plain steps.  Slots a member reads only
    for their shape (``sum_like``/``broadcast_like`` references) are not made
    group outputs unless ``materialize_shape_args``.
    """
    n = len(tape)
    n_slots = tape.n_slots
    shapes = [tuple(int(d) for d in s) for s in slot_shapes]
    dtypes = [CODE_DTYPES[int(c)] for c in tape.slot_dtype]
    members = [_member(tape, k, shapes, dtypes, gather=True) for k in range(n)]

    producer = {}
    for k in range(n):
        for s in tape.instr_outs(k):
            producer[int(s)] = k
    avail = np.zeros(n_slots, bool)  # slot value exists (for anyone)
    for arr in (tape.input_slots, tape.const_slots, tape.shared_slots):
        avail[np.asarray(arr, np.int64)] = True
    for s in range(n_slots):  # slots nobody writes (should not happen for read slots)
        if s not in producer:
            avail[s] = True
    in_group = np.zeros(n_slots, bool)  # produced by the open group
    done = np.zeros(n, bool)
    deps = [[int(s) for s in tape.instr_args(k)] for k in range(n)]
    # consumers by slot, to revisit only what may have become ready
    steps = []
    remaining = n
    open_group = None
    open_shape = None
    pending = list(range(n))  # not yet scheduled, in tape order

    def ready_plain(k):
        return all(avail[s] for s in deps[k])

    def ready_member(k):
        if members[k].kind == "roll":  # reads other positions of its input: the input must exist already
            return all(avail[s] for s in deps[k])
        return all(avail[s] or in_group[s] for s in deps[k])

    while remaining or open_group is not None:
        progress = True
        while progress:
            progress = False
            keep = []
            for k in pending:
                m = members[k]
                if m is None:
                    if ready_plain(k):
                        steps.append(("instr", k))
                        for s in tape.instr_outs(k):
                            avail[int(s)] = True
                        done[k] = True
                        remaining -= 1
                        progress = True
                        continue
                elif open_group is not None and shapes[m.out] == open_shape and ready_member(k):
                    open_group.append(m)
                    in_group[m.out] = True
                    done[k] = True
                    remaining -= 1
                    progress = True
                    continue
                keep.append(k)
            pending = keep
        if open_group is not None:
            steps.append(("group", open_group))
            for m in open_group:
                in_group[m.out] = False
                avail[m.out] = True
            open_group = None
            continue
        if not remaining:
            break
        # open a new group on the earliest ready fusible instruction
        for k in pending:
            if members[k] is not None and ready_plain(k):
                open_group = [members[k]]
                open_shape = shapes[members[k].out]
                in_group[members[k].out] = True
                done[k] = True
                remaining -= 1
                pending.remove(k)
                break
        else:  # pragma: no cover - a well-formed tape always has a ready instruction
            raise RuntimeError("fuse.schedule: no instruction is ready (the tape is not topologically valid)")

    # ---- turn member lists into FuseGroups (or plain steps when too small)
    used_outside = np.zeros(n_slots, bool)
    for arr in (tape.output_slots, tape.update_slots):
        used_outside[np.asarray(arr, np.int64)] = True
    group_of = {}
    for i, st in enumerate(steps):
        if st[0] == "group" and len(st[1]) >= min_size:
            for m in st[1]:
                group_of[m.out] = i
    for i, st in enumerate(steps):
        if st[0] == "instr" or len(st[1]) < min_size:
            ks = [st[1]] if st[0] == "instr" else [m.k for m in st[1]]
            for k in ks:
                for s in deps[k]:
                    used_outside[s] = True
        else:
            for m in st[1]:
                for s in m.data_args + (m.shape_args if materialize_shape_args else ()):
                    if group_of.get(s, i) != i:
                        used_outside[s] = True
    out = []
    for st in steps:
        if st[0] == "instr":
            out.append(st)
        elif len(st[1]) < min_size:
            out.extend(("instr", m.k) for m in st[1])
        else:
            out.append(("group", _make_group(st[1], shapes, dtypes, used_outside)))
    return out


def _make_group(ms, shapes, dtypes, used_outside):
    g = FuseGroup(shape=shapes[ms[0].out], members=list(ms))
    mine = {m.out for m in ms}
    seen = set()
    rolled = []
    for m in ms:
        if m.kind == "roll":  # its own input entry (pattern ROLL), even when the slot is also read in place
            m.roll_input = len(g.inputs)
            g.inputs.append(m.data_args[0])
            rolled.append(m.roll_input)
            continue
        for s in m.data_args:
            if s not in mine and s not in seen:
                seen.add(s)
                g.inputs.append(s)
        for s in m.shape_args:
            if s not in mine and s not in g.shape_inputs:
                g.shape_inputs.append(s)
    g.outputs = [m.out for m in ms if used_outside[m.out]]
    g.patterns = [ROLL if j in rolled else pattern_of(shapes[s], g.shape) for j, s in enumerate(g.inputs)]
    g.input_shapes = [shapes[s] for s in g.inputs]
    g.input_dtypes = [dtypes[s] for s in g.inputs]
    return g


def find_groups(tape, slot_shapes, min_size=2, materialize_shape_args=False):
    """The fusion groups of ``tape`` at the concrete ``slot_shapes`` (one shape per slot).

    Returns a list of :class:`FuseGroup`; see :func:`schedule` for the order to run them in.
    """
    return [st[1] for st in schedule(tape, slot_shapes, min_size=min_size,
                                         materialize_shape_args=materialize_shape_args) if st[0] == "group"]
