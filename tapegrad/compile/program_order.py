"""Program-tier instruction order: reductions moved up to where their operands are made.

A gradient tape lists each parameter's gradient where the graph's topological sort put it, often at the very
end: the gradient of a scalar ``k`` used in every step of an unrolled loop is a sum of one reduction per step,
``sum(azmul(adj_s, lap_s))``, and all of them come after the whole backward sweep.  Every ``adj_s`` then stays
alive to the end (a chain of programs passes each one to its last piece), and each reduction is a pass of its
own over arrays long gone from the cache.  :func:`eager_tape` moves each such *reduction cone* (an instruction
whose result is much smaller than its operands, with the elementwise instructions that only it reads) to just
after the last instruction its operands need.  There the program tier fuses it into the loop that is making
them (the next step's), and the operands die early.
"""

from __future__ import annotations

import numpy as np

from tapegrad.tape.format import Tape, csr_rows
from tapegrad.tape.fuse import _member

CONE_MAX = 8  # instructions in one cone (the reduction and the elementwise ones feeding it)
SHRINK = 8  # a reduction's result is at most 1/SHRINK of its largest operand's elements


def _size(shape):
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def eager_order(tape, shapes, dtypes, skip=frozenset()):
    """A topological order of ``tape``'s instructions with reduction cones moved up (see the module), or None
    when nothing moves.  ``skip``: instructions the program does not run (plan-time constants): never moved,
    and they count as made at the start."""
    n = len(tape)
    readers = {}
    producer = {}
    for k in range(n):
        for s in tape.instr_args(k):
            readers.setdefault(int(s), []).append(k)
        for s in tape.instr_outs(k):
            producer[int(s)] = k
    pinned = {int(s) for s in tape.output_slots} | {int(s) for s in tape.update_slots}
    in_cone = set()  # instructions in a cone
    cones = []  # the instructions of each cone, in tape order
    for r in range(n):
        if r in skip or r in in_cone:
            continue
        outs = [int(s) for s in tape.instr_outs(r)]
        args = [int(s) for s in tape.instr_args(r)]
        if len(outs) != 1 or not args or _member(tape, r, shapes, dtypes) is not None:
            continue
        big = max(_size(shapes[s]) for s in args)
        if big < 4096 or _size(shapes[outs[0]]) * SHRINK > big:
            continue
        members, stack = {r}, list(args)
        while stack and len(members) < CONE_MAX:
            s = stack.pop()
            p = producer.get(s)
            if (p is None or p in skip or p in members or p in in_cone or s in pinned
                    or len(tape.instr_outs(p)) != 1 or _member(tape, p, shapes, dtypes) is None
                    or any(q not in members for q in readers.get(s, ()))):
                continue
            members.add(p)
            stack.extend(int(a) for a in tape.instr_args(p))
        in_cone |= members
        cones.append(sorted(members))
    attach = {}  # instruction -> cones placed right after it (-1: at the start)
    moved = False
    for members in cones:
        mset = set(members)
        need = [producer[int(s)] for m in members for s in tape.instr_args(m)
                if int(s) in producer and producer[int(s)] not in mset]
        anchor = max((p for p in need if p not in skip), default=-1)
        if anchor < members[0] - 1 or any(m != members[0] + j for j, m in enumerate(members)):
            moved = moved or anchor < members[0] - 1
            attach.setdefault(anchor, []).append(members)
        else:
            in_cone -= mset
    if not moved:
        return None
    order = []

    def put(k):
        order.append(k)
        for members in attach.get(k, ()):
            for m in members:
                put(m)

    for members in attach.get(-1, ()):
        for m in members:
            put(m)
    for k in range(n):
        if k not in in_cone:
            put(k)
    assert sorted(order) == list(range(n))
    return order


def permuted(tape, order):
    """``tape`` with its instructions in ``order`` (slots unchanged)."""
    arg_ptr, args = csr_rows(tape.arg_ptr, tape.args, order)
    out_ptr, outs = csr_rows(tape.out_ptr, tape.outs, order)
    ip_ptr, iparams = csr_rows(tape.ip_ptr, tape.iparams, order)
    fp_ptr, fparams = csr_rows(tape.fp_ptr, tape.fparams, order)
    return Tape(
        codes=tape.codes[order], arg_ptr=arg_ptr, args=args, out_ptr=out_ptr, outs=outs, ip_ptr=ip_ptr,
        iparams=iparams, fp_ptr=fp_ptr, fparams=fparams, slot_dtype=tape.slot_dtype, slot_ndim=tape.slot_ndim,
        shape_ptr=tape.shape_ptr, static_shape=tape.static_shape, slot_kind=tape.slot_kind,
        input_slots=tape.input_slots, output_slots=tape.output_slots, const_slots=tape.const_slots,
        shared_slots=tape.shared_slots, update_slots=tape.update_slots, update_targets=tape.update_targets,
        ops=[tape.ops[k] for k in order] if tape.ops else [], consts=tape.consts, shared=tape.shared,
        slot_names=tape.slot_names, nodes=[tape.nodes[k] for k in order] if tape.nodes else [])


def eager_tape(tape, shapes, dtypes, const_instrs, node):
    """``(tape, const_instrs, node)`` for the program tier: reordered by :func:`eager_order` when something
    moves (the instruction indices of ``const_instrs`` and ``node(k)`` follow), else the arguments as given."""
    skip = {int(k) for k in const_instrs}
    order = eager_order(tape, shapes, dtypes, skip)
    if order is None:
        return tape, const_instrs, node
    new_of = {k: j for j, k in enumerate(order)}
    return permuted(tape, order), {new_of[k] for k in skip}, (lambda j: node(order[j]))
