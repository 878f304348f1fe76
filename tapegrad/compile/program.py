"""Tier 2 on CPU: the whole tape as one generated Numba function, per input-shape signature.

Tier 0 (the interpreter) and tier 1 (fused loops between NumPy plan steps)
still cross from Python into compiled code once per step.  For a hot
function whose every instruction has a code template here, this module
writes one ``@njit(cache=True)`` function for the whole tape at the plan's
slot shapes::

    def program(x0, x1, c0):          # inputs and shared values (flat, C order), array constants
        b6 = np.empty(9, np.float64)  # a fresh buffer per materialized slot
        for i in range(9):            # one loop per fused elementwise group
            ...
        return b13.reshape(()), b33.reshape((10,))

* Shapes are literals (the program belongs to one shape signature); slots
  that are basic slices, transposes and reshapes of contiguous data are
  read in place through element offsets and strides (no copy); size-1
  constants are literals in the expressions.
* Elementwise groups (:func:`tapegrad.tape.fuse.schedule`) are one loop
  whose members are scalar temporaries made from the table's ``expr`` with
  the tier-0 scalar semantics (:mod:`tapegrad.compile.kernels.scalar`).
* Reductions, broadcasts back from reductions, basic-index writes and
  scatters, fills, ``roll``, ``concatenate`` and ``dot``/``matmul`` (BLAS
  through ``np.dot``) have templates; a tape with any other instruction gets
  no program (:class:`Unsupported`) and stays on tiers 0/1.
* The module is written to the fused-kernel cache folder under the hash of
  its source, so numba's disk cache finds the machine code in the next
  process; :class:`Program` compiles it on the background thread of the
  fused tier (or synchronously) and exposes ``fn`` (the numba dispatcher,
  callable from user ``@njit`` code) and ``__call__`` (a Python entry).

Returned arrays are fresh buffers, never inputs or constants.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import os
import sys
import threading

import numpy as np

from tapegrad.compile.kernels.steps import _dimshuffle_layout, _subtensor_layout, row_major, view_layout
from tapegrad.registry import CODE_DTYPES, name_of

PROGRAM_VERSION = 1
MAX_INSTRUCTIONS = 300  # numba compile time grows faster than the tape (625 instructions: 136 s): bigger tapes stay on tiers 0/1
_ACC = {"float32": "float64"}  # accumulate sums of these dtypes in a wider type


# LLVM may reassociate floating-point additions and multiplications (so sums vectorise); no flag lets it
# assume away NaN, inf or signed zeros, so ``x * 0``, ``x - x`` and the absolute-zero multiply stay IEEE.
FASTMATH = {"reassoc"}


def _fastmath_src():
    return "{" + ", ".join(repr(f) for f in sorted(FASTMATH)) + "}" if FASTMATH else "False"


class Unsupported(Exception):
    """The tape has an instruction (or a shape/dtype case) with no program template."""


def _lit(value, dt):
    """Source of the scalar ``value`` as a ``dt`` literal."""
    v = np.asarray(value).reshape(-1)[0]
    if dt == "bool":
        return "True" if bool(v) else "False"
    if dt in ("int64", "int32", "int16", "int8", "uint8"):
        return f"np.{dt}({int(v)})"
    f = float(v)
    if math.isnan(f):
        s = "np.nan"
    elif math.isinf(f):
        s = "np.inf" if f > 0 else "-np.inf"
    else:
        s = repr(f)
    return f"np.{dt}({s})"


class _Loc:
    """Where a slot's elements are: a literal, or a flat buffer with an element offset and strides."""

    __slots__ = ("lit", "buf", "off", "strides", "shape", "owned")

    def __init__(self, shape, lit=None, buf=None, off=0, strides=None, owned=False):
        self.shape = tuple(int(n) for n in shape)
        self.lit = lit
        self.buf = buf
        self.off = off if isinstance(off, str) else int(off)  # a str: a run-time offset (a loop row)
        self.strides = tuple(strides) if strides is not None else row_major(self.shape)
        self.owned = owned

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def contiguous(self):
        st = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != st:
                return False
            st *= n
        return True


def _off_add(a, b):
    """``a + b`` for offsets that may be source strings (run-time offsets)."""
    if isinstance(a, str) or isinstance(b, str):
        if b == 0:
            return a
        if a == 0:
            return b
        return f"({a} + {b})"
    return a + b


def _read_strides(loc, shape):
    """Element strides of ``loc`` read over the loop ``shape`` (right-aligned broadcasting: 0 on new axes)."""
    lead = len(shape) - len(loc.shape)
    if lead < 0:
        raise Unsupported("an operand has more dimensions than its loop")
    st = []
    for d, n in enumerate(shape):
        a = d - lead
        if a < 0 or loc.shape[a] == 1:
            st.append(0)
        elif loc.shape[a] != n:
            raise Unsupported(f"operand shape {loc.shape} does not broadcast to {shape}")
        else:
            st.append(loc.strides[a])
    return st


class _Loop:
    """A loop nest over ``shape``: ``index(off, strides)`` gives the flat index source of an operand."""

    def __init__(self, shape, operand_strides):
        self.shape = tuple(int(n) for n in shape)
        rm = row_major(self.shape)
        self.flat = all(list(s) == list(rm) or not any(s) for s in operand_strides)
        self.dims = [d for d, n in enumerate(self.shape) if n != 1]
        self.var = "i"  # the flat loop's index variable

    def open(self, emit, ind):
        """Emit the loop headers; returns the body indentation."""
        n = int(np.prod(self.shape, dtype=np.int64))
        if self.flat:
            emit(f"{ind}for i in range({n}):")
            return ind + "    "
        for d in self.dims:
            emit(f"{ind}for i{d} in range({self.shape[d]}):")
            ind += "    "
        return ind

    def index(self, off, strides):
        if self.flat:
            if not any(strides):
                return str(off)
            return self.var if off == 0 else f"{off} + {self.var}"
        terms = [f"i{d} * {strides[d]}" if strides[d] != 1 else f"i{d}" for d in self.dims if strides[d]]
        if off or not terms:
            terms.insert(0, str(off))
        return " + ".join(terms)

    def out_index(self):
        """Flat row-major index of the loop position (the index of a fresh output buffer)."""
        return self.index(0, row_major(self.shape))


class _Gen:
    """Source generator for one tape at one shape signature."""

    def __init__(self, tape, shapes, dtypes, values, const_instrs, node):
        if len(tape) > MAX_INSTRUCTIONS:
            raise Unsupported(f"{len(tape)} instructions (the program tier takes at most {MAX_INSTRUCTIONS})")
        self.tape = tape
        self.shapes = [tuple(int(n) for n in s) for s in shapes]
        self.dtypes = dtypes
        self.values = values
        self.const_instrs = set(const_instrs)
        self.node = node
        self.loc = {}
        self.lines = []
        self.params = []
        self.array_consts = []  # (param name, flat array) passed by the caller
        self.n_tmp = 0
        self.prefix = ""  # of every name this generator makes (loop bodies get their own)
        self.root = self  # the generator of the whole function (owns parameters and array constants)
        self.hoist = None  # loop bodies: allocation lines to run once before the loop
        self.n_sub = 0

    # ------------------------------------------------------------------ helpers
    def emit(self, line):
        self.lines.append(line)

    def tmp(self, stem="t"):
        self.n_tmp += 1
        return f"{self.prefix}{stem}{self.n_tmp}"

    def _constant(self, s, value):
        value = np.asarray(value)
        dt = self.dtypes[s]
        if dt not in ("float64", "float32", "int64", "bool"):
            raise Unsupported(f"constant of dtype {dt}")
        shape = self.shapes[s]
        if value.size == 1:
            self.loc[s] = _Loc(shape, lit=_lit(value, dt))
        else:
            name = self.array_param(np.ascontiguousarray(np.broadcast_to(value, shape), dtype=dt).reshape(-1))
            self.loc[s] = _Loc(shape, buf=name)

    def array_param(self, value):
        """Register an array constant passed by the caller; returns its parameter name."""
        root = self.root
        name = f"c{len(root.array_consts)}"
        root.array_consts.append((name, value))
        root.params.append(name)
        return name

    def fresh(self, s, zero=False):
        """A new owned buffer for slot ``s``."""
        dt = self.dtypes[s]
        if dt not in ("float64", "float32", "int64", "bool"):
            raise Unsupported(f"slot of dtype {dt}")
        shape = self.shapes[s]
        n = max(int(np.prod(shape, dtype=np.int64)), 1) if shape == () else int(np.prod(shape, dtype=np.int64))
        name = f"{self.prefix}b{s}"
        if self.hoist is not None:  # inside a loop body: allocate once before the loop, zero per step
            self.hoist.append(f"{name} = np.empty({n}, np.{dt})")
            if zero:
                self.emit(f"    {name}[:] = 0")
        else:
            self.emit(f"    {name} = np.{'zeros' if zero else 'empty'}({n}, np.{dt})")
        self.loc[s] = _Loc(shape, buf=name, owned=True)
        return name

    def read(self, s, loop, strides=None, as_dt=None):
        """Source reading slot ``s`` at the current position of ``loop`` (broadcast unless ``strides``)."""
        loc = self.loc[s]
        src = loc.lit if loc.lit is not None else None
        if src is None:
            st = _read_strides(loc, loop.shape) if strides is None else strides
            src = f"{loc.buf}[{loop.index(loc.off, st)}]"
        if as_dt is not None:
            from tapegrad.compile.fused import _convert

            src = _convert(src, self.dtypes[s], as_dt)
        return src

    def strides_for(self, s, shape):
        loc = self.loc[s]
        return [0] * len(shape) if loc.lit is not None else _read_strides(loc, shape)

    # ------------------------------------------------------------------ driver
    def generate(self, name="program"):
        tape = self.tape
        for stem, slots in (("x", tape.input_slots), ("h", tape.shared_slots)):
            for j, s in enumerate(slots):  # arguments come in their own shapes (C order): flatten them
                self.params.append(f"{stem}{j}")
                n = int(np.prod(self.shapes[s], dtype=np.int64))
                self.emit(f"    {stem}{j} = {stem}{j}.reshape({n})")
                self.loc[int(s)] = _Loc(self.shapes[s], buf=f"{stem}{j}")
        for s, c in zip(tape.const_slots, tape.consts):
            self._constant(int(s), c)
        inputs = set(int(s) for s in tape.input_slots) | set(int(s) for s in tape.shared_slots)
        for s, v in self.values.items():  # plan-time values (constant instructions' outputs, ...)
            if s not in self.loc and s not in inputs:
                self._constant(int(s), v)
        self._analyse()
        self.G = None
        self.lit_instrs = set()  # instructions that became literals: they read their inputs' shapes only
        for k in range(len(tape)):
            self.place(k)
        self.close()
        outs = []
        seen = set()
        for s in list(tape.output_slots) + list(tape.update_slots):
            s = int(s)
            loc = self.loc[s]
            if loc.owned and s not in seen and s not in inputs and loc.contiguous() and loc.size == len(
                    range(loc.size)) and self._buffer_slot.get(loc.buf, s) == s:
                src = loc.buf
            else:
                src = self.copy_out(s)
            seen.add(s)
            # 0-d results come back as scalars (boxing a 0-d array costs a microsecond): the caller wraps them
            outs.append(f"{src}[0]" if self.shapes[s] == () else f"{src}.reshape({self.shapes[s]!r})")
        head = [
            f'"""Generated by tapegrad.compile.program (v{PROGRAM_VERSION}): {len(tape)} instructions."""',
            "import numpy as np",
            "from numba import njit",
            "from tapegrad.compile.kernels.scalar import *  # noqa: F401,F403",
            "",
            "",
            f'@njit(cache=True, fastmath={_fastmath_src()}, error_model="numpy", nogil=True, boundscheck=False)',
            f"def {name}({', '.join(self.params)}):",
        ]
        ret = "    return (" + "".join(o + ", " for o in outs) + ")"
        return "\n".join(head + self.lines + [ret]) + "\n"

    def copy_out(self, s):
        loc = self.loc[s]
        dt = self.dtypes[s]
        name = self.tmp("o")
        n = max(loc.size, 1) if loc.shape == () else loc.size
        self.emit(f"    {name} = np.empty({n}, np.{dt})")
        loop = _Loop(loc.shape, [self.strides_for(s, loc.shape), row_major(loc.shape)])
        if loc.size:
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{name}[{loop.out_index()}] = {self.read(s, loop)}")
        return name

    # ------------------------------------------------------------------ analysis
    def _analyse(self):
        """Readers of each slot, and accumulation trees: ``add`` nodes over zero-based scatters whose
        every partial value is read once, so all of them can add into the root's buffer."""
        tape = self.tape
        self.readers = {}
        for k in range(len(tape)):
            for s in tape.instr_args(k):
                self.readers.setdefault(int(s), []).append(k)
        self.pinned = set(int(s) for s in tape.output_slots) | set(int(s) for s in tape.update_slots)
        self._buffer_slot = {}
        names = [name_of(int(c)) for c in tape.codes]
        root = {}  # slot -> its tree's root slot
        members = {}  # root -> slots of the tree
        for k in range(len(tape)):
            if k in self.const_instrs:
                continue
            (o,) = tape.instr_outs(k) if len(tape.instr_outs(k)) == 1 else (None,)
            if o is None:
                continue
            o = int(o)
            if names[k] == "SUBTENSOR_SCATTER" and len(tape.instr_args(k)) == 2:
                root[o] = o
                members[o] = [o]
            elif names[k] == "ADD":
                a, b = (int(s) for s in tape.instr_args(k))
                if (a != b and a in root and b in root and root[a] == a and root[b] == b
                        and all(len(self.readers.get(s, ())) == 1 and s not in self.pinned for s in (a, b))
                        and self.shapes[a] == self.shapes[b] == self.shapes[o]
                        and self.dtypes[a] == self.dtypes[b] == self.dtypes[o]
                        and self.dtypes[o] in ("float64", "float32")):
                    ms = members.pop(a) + members.pop(b) + [o]
                    for s in ms:
                        root[s] = o
                    members[o] = ms
        self.tree_root = {s: r for s, r in root.items() if len(members[r]) > 1}
        self.tree_started = set()  # roots whose buffer exists (zero-filled)

    # ------------------------------------------------------------------ placement
    def _before(self, s):
        """Slot ``s`` has its value before the open group's loop runs."""
        G = self.G
        return s in self.loc and (G is None or (s not in G["in_loop"] and s not in G["after"]))

    def _in_group(self, s):
        G = self.G
        return G is not None and s in G["in_loop"]

    def place(self, k):
        tape = self.tape
        if k in self.const_instrs:
            return
        outs = [int(s) for s in tape.instr_outs(k)]
        if all(s in self.loc for s in outs):
            return
        args = [int(s) for s in tape.instr_args(k)]
        name = name_of(int(tape.codes[k]))
        if self._literal(k, name, args, outs):
            self.lit_instrs.add(k)
            return
        if name == "ADD" and outs[0] in self.tree_root:
            self._tree_add(outs[0])
            return
        if (name in ("SUM_LIKE", "BROADCAST_LIKE", "CAST", "SPECIFY_SHAPE", "IDENTITY") and len(outs) == 1
                and self._before(args[0]) and self.shapes[args[0]] == self.shapes[outs[0]]
                and self.dtypes[args[0]] == self.dtypes[outs[0]] and args[0] not in self.tree_root):
            # a same-shape, same-dtype copy: the value is the input's (buffers are never written after the
            # instruction that made them, so sharing one is safe; outputs are copied out if not owned)
            lx = self.loc[args[0]]
            self.loc[outs[0]] = _Loc(lx.shape, lit=lx.lit, buf=lx.buf, off=lx.off, strides=lx.strides)
            self.lit_instrs.add(k)
            return
        from tapegrad.tape.fuse import _member

        m = _member(tape, k, self.shapes, self.dtypes)
        if m is not None:
            G = self.G
            if G is not None and tuple(G["shape"]) == self.shapes[m.out] and all(
                    self._in_group(s) or self._before(s) for s in m.data_args):
                G["members"].append(m)
                G["in_loop"].add(m.out)
                self.loc[m.out] = _Loc(self.shapes[m.out], buf=None)  # a register while the loop runs
                return
            self.close()
            self.G = dict(shape=self.shapes[m.out], members=[m], in_loop={m.out}, after=set(), epi=[], pre=[],
                          absorbed=set(), unfilled={})
            self.loc[m.out] = _Loc(self.shapes[m.out], buf=None)
            return
        if self.G is not None and self._absorb(k, name, args, outs):
            self.G["absorbed"].add(k)
            return
        if self.G is not None and not all(self._before(s) for s in args):
            self.close()
        self.instruction(k)  # emitted now: before the open group's loop, which does not feed it

    def _literal(self, k, name, args, outs):
        """Value-independent instructions of literal operands become literals."""
        if len(outs) != 1:
            return False
        o = outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64", "bool"):
            return False
        if name in ("ONES_LIKE", "ZEROS_LIKE"):
            self.loc[o] = _Loc(self.shapes[o], lit=_lit(1 if name == "ONES_LIKE" else 0, dt))
            return True
        if not args or self.loc.get(args[0]) is None or self.loc[args[0]].lit is None:
            return False
        src = self.loc[args[0]].lit
        op = self.tape.ops[k]
        if name in ("BROADCAST_LIKE", "ALLOC", "CAST") or (name == "SUM_LIKE"
                                                            and self.shapes[args[0]] == self.shapes[o]):
            from tapegrad.compile.fused import _convert

            self.loc[o] = _Loc(self.shapes[o], lit=f"({_convert(src, self.dtypes[args[0]], dt)})")
            return True
        if name == "BROADCAST_REDUCED" and dt in ("float64", "float32"):
            src = f"({src})"
            if op.mean:
                axes = self._reduced_axes(k, op)
                cnt = int(np.prod([self.shapes[o][a] for a in axes], dtype=np.int64)) - int(op.ddof)
                if cnt <= 0:
                    return False
                src = f"(np.{dt}({src}) / np.{dt}({cnt}))"
            self.loc[o] = _Loc(self.shapes[o], lit=src)
            return True
        return False

    def _reduced_axes(self, k, op):
        from tapegrad.ops.reduce import _axes

        return tuple(sorted(_axes(op.axis, self.node(k).inputs[1], "broadcast_reduced")))

    def _sum_axes(self, k, op, x, o):
        node = self.node(k)
        axes = tuple(sorted(op._norm(node.inputs[0])))
        xshape, oshape = self.shapes[x], self.shapes[o]
        ost = row_major(oshape)
        ws, j = [], 0
        for d in range(len(xshape)):
            if d in axes:
                ws.append(0)
                if op.keepdims:
                    j += 1
            else:
                ws.append(ost[j])
                j += 1
        scale = None
        if getattr(op, "mean", False):
            cnt = int(np.prod([xshape[a] for a in axes], dtype=np.int64)) - int(getattr(op, "ddof", 0))
            if cnt <= 0 or self.dtypes[o] not in ("float64", "float32"):
                raise Unsupported("mean over an empty axis, or of integers")
            scale = cnt
        return ws, scale

    def _absorb(self, k, name, args, outs):
        """Run instruction ``k`` inside the open group's loop (a reduction of a member, or a write of a
        member into a fresh buffer); its outputs exist after the loop."""
        G = self.G
        shape = tuple(G["shape"])
        tape = self.tape
        op = tape.ops[k]
        if op is None or len(outs) != 1:
            return False
        o = outs[0]
        if name in ("SUM", "MEAN", "SUM_LIKE"):
            x = args[0]
            if self.shapes[x] != shape or not (self._in_group(x) or self._before(x)):
                return False
            dt = self.dtypes[o]
            if dt not in ("float64", "float32", "int64") or self.dtypes[x] not in ("float64", "float32", "int64",
                                                                                     "bool"):
                return False
            if name == "SUM_LIKE":
                oshape = self.shapes[o]
                lead = len(shape) - len(oshape)
                if lead < 0:
                    return False
                ost = row_major(oshape)
                ws = [0 if d - lead < 0 or (oshape[d - lead] == 1 and n != 1) else ost[d - lead]
                      for d, n in enumerate(shape)]
                scale = None
            else:
                try:
                    ws, scale = self._sum_axes(k, op, x, o)
                except Unsupported:
                    return False
            buf = self.fresh(o, zero=True)
            if not any(ws):
                acc = self.tmp("s")
                G["pre"].append(f"    {acc} = np.{_ACC.get(dt, dt)}(0)")
                G["epi"].append(("acc", acc, x, _ACC.get(dt, dt), buf, scale, dt, o))
            else:
                G["epi"].append(("sum", buf, x, ws, dt, scale, o))
            G["after"].add(o)
            return True
        if name in ("SUBTENSOR_SCATTER", "INC_SUBTENSOR", "SET_SUBTENSOR") and len(args) == 2:
            x, y = args
            oshape = self.shapes[o]
            r = _subtensor_layout(op, oshape, row_major(oshape))
            if r is None or tuple(r[1]) != shape or self.shapes[y] != shape:
                return False
            if not (self._in_group(y) or self._before(y)):
                return False
            if name != "SUBTENSOR_SCATTER" and not self._before(x):
                return False
            buf, mode = self._write_target(k, name, x, o, in_group=True)
            G["epi"].append(("write", buf, r[0], tuple(r[2]), y, mode, self.dtypes[o]))
            G["after"].add(o)
            rt = self.tree_root.get(o)
            if rt is not None:
                G["after"].add(rt)
            return True
        return False

    def _write_target(self, k, name, x, o, in_group=False):
        """``(buffer, "=" or "+=")`` a basic-index write of instruction ``k`` writes into (its own fresh
        buffer, or its accumulation tree's).  A zero-based buffer started by a write inside the open group's
        loop is left unfilled until the loop is emitted: the loop then assigns its first window and only the
        rest is zeroed (see ``close``)."""
        rt = self.tree_root.get(o)
        lazy = in_group and self.G is not None and self.hoist is None
        if rt is not None:
            if rt not in self.tree_started:
                self.tree_started.add(rt)
                self.fresh(rt, zero=not lazy)
                self._buffer_slot[self.loc[rt].buf] = rt
                if lazy:
                    self.G["unfilled"][self.loc[rt].buf] = self.loc[rt].size
            elif not in_group:
                self._fill_now(self.loc[rt].buf)
            self.loc[o] = self.loc[rt]
            return self.loc[rt].buf, "+="
        if name == "SUBTENSOR_SCATTER":
            buf = self.fresh(o, zero=not lazy)
            if lazy:
                self.G["unfilled"][buf] = self.loc[o].size
            return buf, "+=" if lazy else "="
        self._broadcast_copy(x, o)
        return self.loc[o].buf, "+=" if name == "INC_SUBTENSOR" else "="

    def _fill_now(self, buf):
        """Zero a buffer whose fill the open group deferred, before a write outside the group's loop."""
        G = self.G
        if G is not None and buf in G["unfilled"]:
            del G["unfilled"][buf]
            self.emit(f"    {buf}[:] = 0")

    def _tree_add(self, o):
        """An ``add`` inside an accumulation tree: its value is the tree buffer (complete when the root's
        last write has run)."""
        rt = self.tree_root[o]
        if rt not in self.tree_started:
            raise Unsupported("accumulation tree without a write")
        self.loc[o] = self.loc[rt]
        if self.G is not None and rt in self.G["after"]:
            self.G["after"].add(o)

    # ------------------------------------------------------------------ the open group's loop
    def close(self):
        G = self.G
        if G is None:
            return
        self.G = None
        from tapegrad.compile.fused import _Rename, _convert, _result
        from tapegrad.tape.fuse import _specs

        shape = tuple(G["shape"])
        members = G["members"]
        mine = {m.out for m in members}
        ext = []
        for m in members:
            for s in m.data_args:
                if s not in mine and s not in ext:
                    ext.append(s)
        for e in G["epi"]:
            src = e[2] if e[0] in ("acc", "sum") else e[4]
            if src not in mine and src not in ext:
                ext.append(src)
        # reductions nobody reads (the cost inside an HVP's tape: only its shape was used)
        G["epi"] = [e for e in G["epi"] if e[0] not in ("acc", "sum") or e[-1] in self.pinned
                    or any(r not in self.lit_instrs for r in self.readers.get(e[-1], ()))]
        ks = {m.k for m in members}
        outs = [m.out for m in members if m.out in self.pinned
                or any(r not in ks and r not in G["absorbed"] and r not in self.lit_instrs
                       for r in self.readers.get(m.out, ()))]
        for s in mine:
            del self.loc[s]
        for s in outs:
            self.fresh(s)
        for line in G["pre"]:
            self.emit(line)
        op_strides = [self.strides_for(s, shape) for s in ext] + [list(row_major(shape))]
        for e in G["epi"]:
            if e[0] == "sum":
                op_strides.append(list(e[3]))
            elif e[0] == "write":
                op_strides.append(list(e[3]))
        loop = _Loop(shape, op_strides)
        # writes into one buffer at different windows (x[:-1] and x[1:] of an adjoint): a loop that
        # read-modify-writes overlapping windows carries a dependence and cannot be vectorised, so every
        # window but the first is stored to a contiguous temporary and added in a second, simple loop
        deferred = {}
        deferred_alloc = []
        first_window = {}
        size = int(np.prod(shape, dtype=np.int64))
        for e in G["epi"]:
            if e[0] == "write" and e[5] == "+=":
                key = (e[1], e[2], e[3])
                if first_window.setdefault(e[1], key) != key and key not in deferred:
                    n_writes = sum(1 for f in G["epi"] if f[0] == "write" and (f[1], f[2], f[3]) == key)
                    tname = self.tmp("w")
                    deferred[key] = (tname, "=" if n_writes == 1 else "+=")
                    fill = "empty" if n_writes == 1 else "zeros"
                    deferred_alloc.append(f"    {tname} = np.{fill}({max(size, 1)}, np.{e[6]})")
        # buffers whose zero fill was deferred: a 1-d first window with unit stride is assigned by the loop
        # (the sum of its writes) and only the rest is zeroed; otherwise zero everything now
        direct = {}
        for buf, total in G["unfilled"].items():
            key = first_window.get(buf)
            if key is not None and size and len(key[2]) == 1 and key[2][0] == 1 and isinstance(key[1], int):
                direct[buf] = key
        shifted_ok = self._shifted_plan(G, loop, shape, size, direct, deferred) is not None
        if not shifted_ok:
            for line in deferred_alloc:
                self.emit(line)
            for buf, total in G["unfilled"].items():
                if buf in direct:
                    off = direct[buf][1]
                    if off > 0:
                        self.emit(f"    {buf}[0:{off}] = 0")
                    if off + size < total:
                        self.emit(f"    {buf}[{off + size}:{total}] = 0")
                else:
                    self.emit(f"    {buf}[:] = 0")
        shifted = self._shifted_plan(G, loop, shape, size, direct, deferred)
        if shifted is not None:
            self._emit_shifted(G, loop, members, ext, outs, shifted)
            deferred = {}
        elif size != 0:
            ind = loop.open(self.emit, "    ")
            tn = self._emit_eval(ind, loop, members, ext)
            direct_vals = {}
            oi = loop.out_index()
            for s in outs:
                self.emit(f"{ind}{self.loc[s].buf}[{oi}] = {tn[s]}")
            for e in G["epi"]:
                if e[0] == "acc":
                    _, acc, x, acc_dt, buf, scale, dt, _o = e
                    self.emit(f"{ind}{acc} += {_convert(tn[x], self.dtypes[x], acc_dt)}")
                elif e[0] == "sum":
                    _, buf, x, ws, dt, scale, _o = e
                    self.emit(f"{ind}{buf}[{loop.index(0, ws)}] += {_convert(tn[x], self.dtypes[x], dt)}")
                else:
                    _, buf, off, rst, y, mode, dt = e
                    val = _convert(tn[y], self.dtypes[y], dt)
                    if (buf, off, rst) in deferred:  # to a contiguous temporary: added after the loop
                        tname, how = deferred[buf, off, rst]
                        self.emit(f"{ind}{tname}[{oi}] {how} {val}")
                    elif direct.get(buf) == (buf, off, rst):
                        direct_vals.setdefault(buf, []).append(val)
                    else:
                        self.emit(f"{ind}{buf}[{loop.index(off, list(rst))}] {mode} {val}")
            for buf, vals in direct_vals.items():
                _, off, rst = direct[buf]
                self.emit(f"{ind}{buf}[{loop.index(off, list(rst))}] = {' + '.join(vals)}")
        for (buf, off, rst), (tname, _) in deferred.items():
            if size:
                ind = loop.open(self.emit, "    ")
                self.emit(f"{ind}{buf}[{loop.index(off, list(rst))}] += {tname}[{loop.out_index()}]")
        for e in G["epi"]:
            if e[0] == "acc":
                _, acc, x, acc_dt, buf, scale, dt, _o = e
                self.emit(f"    {buf}[0] = {acc}")
                if scale is not None:
                    self.emit(f"    {buf}[0] = {buf}[0] / np.{dt}({float(scale)!r})")
            elif e[0] == "sum" and e[5] is not None:
                _, buf, x, ws, dt, scale, _o = e
                self.emit(f"    for i in range(len({buf})):")
                self.emit(f"        {buf}[i] = {buf}[i] / np.{dt}({float(scale)!r})")

    def _emit_eval(self, ind, loop, members, ext, suffix=""):
        """Emit the loads of ``ext`` and the scalar expressions of ``members`` at the loop's position;
        returns slot -> source of its value."""
        from tapegrad.compile.fused import _Rename, _convert, _result
        from tapegrad.tape.fuse import _specs

        tn = {}
        for s in ext:
            if self.loc[s].lit is not None:
                tn[s] = self.loc[s].lit
            else:
                v = self.tmp("a")
                self.emit(f"{ind}{v} = {self.read(s, loop)}")
                tn[s] = v
        for m in members:
            ops = [_convert(tn[s], self.dtypes[s], ld) for s, ld in zip(m.data_args, m.load_dtypes)]
            if m.special:
                expr = {"pow0": "1", "pow1": f"{ops[0]}", "pow2": f"({ops[0]}) * ({ops[0]})"}[m.special]
                src = _result(expr, m.out_dtype)
            elif m.kind == "copy":
                src = _convert(ops[0], m.load_dtypes[0], m.out_dtype)
            elif m.spec.name == "azmul" and self._azmul_is_product(m.data_args):
                # azmul(a, b) = (a == 0 ? 0 : a * b) is a plain product (up to the sign of a zero) when a is a
                # nonzero literal or b a finite literal; the multiply vectorises where the branch does not
                src = _result(f"({ops[0]}) * ({ops[1]})", m.out_dtype)
            else:
                spec = _specs()[m.code]
                tree = _Rename(ops).visit(ast.parse(spec.expr, mode="eval"))
                src = _result(ast.unparse(tree.body), m.out_dtype)
            v = self.tmp("t")
            self.emit(f"{ind}{v} = {src}")
            tn[m.out] = v
        return tn

    def _literal_value(self, s):
        loc = self.loc.get(s)
        if loc is None or loc.lit is None:
            return None
        try:
            return float(eval(loc.lit, {"np": np, "__builtins__": {}}))  # noqa: S307 - literals we generated
        except Exception:  # noqa: BLE001
            return None

    def _azmul_is_product(self, args):
        """``azmul(a, b)`` equals ``a * b`` (but for the sign of a zero): ``a`` a finite nonzero literal (the
        product branch is always taken) or ``b`` a finite literal (``0 * b`` is then 0)."""
        a, b = (self._literal_value(s) for s in args)
        return (a is not None and math.isfinite(a) and a != 0) or (b is not None and math.isfinite(b))

    def _shifted_plan(self, G, loop, shape, size, direct, deferred):
        """When every write of the group goes to one 1-d buffer at several unit-stride windows (the adjoint
        of ``x[1:]``, ``x[:-1]``, ...), the windows are evaluated per *output position* instead: the loop
        runs over the buffer in segments, and at each position evaluates the members at the index each
        active window needs (recomputing them for the shifted windows) and stores the sum once (assigned
        into a buffer whose zero fill was deferred, else added).  No temporary, no read-modify-write
        carried between iterations: vectorisable.  Returns ``(buffer, length, offsets, assign)`` or None."""
        if not deferred or not size or len(shape) != 1 or not loop.flat:
            return None
        writes = [e for e in G["epi"] if e[0] == "write"]
        bufs = {e[1] for e in writes}
        if len(bufs) != 1:
            return None
        (buf,) = bufs
        if any(e[3] != (1,) or not isinstance(e[2], int) or e[5] != "+=" for e in writes):
            return None
        slot = self._buffer_slot.get(buf)
        if buf in G["unfilled"]:
            total, assign = G["unfilled"][buf], True
        elif slot is not None and len(self.shapes[slot]) == 1:
            total, assign = self.shapes[slot][0], False
        else:
            return None
        windows = []
        for e in writes:
            if e[2] not in windows:
                windows.append(e[2])
        return buf, total, windows, assign

    def _emit_shifted(self, G, loop, members, ext, outs, plan):
        from tapegrad.compile.fused import _convert

        buf, total, windows, assign = plan
        m = loop.shape[0]
        o_d = windows[0]
        cuts = sorted({0, total} | {min(max(w, 0), total) for w in windows} | {min(max(w + m, 0), total)
                                                                               for w in windows})
        by_member = {mm.out: mm for mm in members}

        def needed(slots):
            """Members (in order) and external slots the values of ``slots`` need."""
            need, stack = set(), list(slots)
            while stack:
                sl = stack.pop()
                mm = by_member.get(sl)
                if mm is not None and sl not in need:
                    need.add(sl)
                    stack.extend(mm.data_args)
            ms = [mm for mm in members if mm.out in need]
            ex = []
            for mm in ms:
                for sl in mm.data_args:
                    if sl not in by_member and sl not in ex:
                        ex.append(sl)
            for sl in slots:
                if sl not in by_member and sl not in ex:
                    ex.append(sl)
            return ms, ex

        writes = {w: [e for e in G["epi"] if e[0] == "write" and e[1] == buf and e[2] == w] for w in windows}
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a >= b:
                continue
            active = [w for w in windows if w <= a and b <= w + m]
            if not active:
                if assign:
                    self.emit(f"    {buf}[{a}:{b}] = 0")
                continue
            self.emit(f"    for p in range({a}, {b}):")
            ind = "        "
            vals = []
            for w in active:
                var = "i" if w == o_d else self.tmp("j")
                self.emit(f"{ind}{var} = p - {w}")
                loop.var = var
                if w == o_d:  # the primary evaluation: everything the group does, once per index
                    tn = self._emit_eval(ind, loop, members, ext)
                    oi = loop.out_index()
                    for sl in outs:
                        self.emit(f"{ind}{self.loc[sl].buf}[{oi}] = {tn[sl]}")
                    for e in G["epi"]:
                        if e[0] == "acc":
                            _, acc, x, acc_dt, _b, scale, dt, _o = e
                            self.emit(f"{ind}{acc} += {_convert(tn[x], self.dtypes[x], acc_dt)}")
                        elif e[0] == "sum":
                            _, sb, x, ws, dt, scale, _o = e
                            self.emit(f"{ind}{sb}[{loop.index(0, ws)}] += {_convert(tn[x], self.dtypes[x], dt)}")
                        elif e[1] != buf:
                            _, wb, off, rst, y, mode, dt = e
                            self.emit(f"{ind}{wb}[{loop.index(off, list(rst))}] {mode} "
                                      f"{_convert(tn[y], self.dtypes[y], dt)}")
                else:
                    ys = [e[4] for e in writes[w]]
                    ms, ex = needed(ys)
                    tn = self._emit_eval(ind, loop, ms, ex)
                vals += [_convert(tn[e[4]], self.dtypes[e[4]], e[6]) for e in writes[w]]
                loop.var = "i"
            self.emit(f"{ind}{buf}[p] {'=' if assign else '+='} {' + '.join(vals)}")

    def instruction(self, k):
        tape = self.tape
        name = name_of(int(tape.codes[k]))
        op = tape.ops[k] if tape.ops else None
        if op is None:
            raise Unsupported(f"instruction {k} ({name}) has no op")
        args = [int(s) for s in tape.instr_args(k)]
        outs = [int(s) for s in tape.instr_outs(k)]
        fn = getattr(self, "op_" + name.lower(), None)
        if fn is None:
            raise Unsupported(f"no program template for {name}")
        fn(k, op, args, outs)

    def _view(self, o, x, layout):
        """Slot ``o`` as a view of ``x`` given ``(offset, shape, strides)`` relative to ``x``'s layout."""
        lx = self.loc[x]
        if lx.lit is not None:
            self.loc[o] = _Loc(self.shapes[o], lit=lx.lit)
            return
        off, shape, st = layout
        self.loc[o] = _Loc(shape, buf=lx.buf, off=_off_add(lx.off, off), strides=st)

    def _materialize(self, x):
        """Make ``x`` contiguous (a copy) when it is not; returns its loc."""
        loc = self.loc[x]
        if loc.lit is None and not loc.contiguous():
            src = self.copy_out(x)
            self.loc[x] = loc = _Loc(loc.shape, buf=src, owned=True)
        return loc

    def op_subtensor(self, k, op, args, outs):
        x, o = args[0], outs[0]
        lx = self.loc[x]
        r = None if lx.lit is not None else _subtensor_layout(op, lx.shape, lx.strides)
        if lx.lit is not None:
            if self.shapes[o] != () and int(np.prod(self.shapes[o])) != 1:
                raise Unsupported("subtensor of a literal")
            self.loc[o] = _Loc(self.shapes[o], lit=lx.lit)
            return
        if r is None or tuple(r[1]) != self.shapes[o]:
            raise Unsupported("subtensor that is not a static basic index")
        self._view(o, x, r)

    def op_dimshuffle(self, k, op, args, outs):
        x, o = args[0], outs[0]
        lx = self.loc[x]
        if lx.lit is not None:
            self.loc[o] = _Loc(self.shapes[o], lit=lx.lit)
            return
        r = _dimshuffle_layout(op, lx.shape, lx.strides)
        if r is None:
            raise Unsupported("dimshuffle")
        self._view(o, x, r)

    def op_reshape(self, k, op, args, outs):
        x, o = args[0], outs[0]
        if self.loc[x].lit is not None:
            self.loc[o] = _Loc(self.shapes[o], lit=self.loc[x].lit)
            return
        lx = self._materialize(x)
        self._view(o, x, (0, self.shapes[o], row_major(self.shapes[o])))
        assert lx.buf == self.loc[o].buf

    op_flatten = op_reshape
    op_ravel = op_reshape
    op_specify_shape = None  # set below (same as identity view)

    def _identity_view(self, k, op, args, outs):
        self.loc[outs[0]] = self.loc[args[0]]

    def _fill(self, o, value_src):
        loop = _Loop(self.shapes[o], [row_major(self.shapes[o])])
        buf = self.fresh(o)
        if self.loc[o].size:
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{loop.out_index()}] = {value_src}")

    def op_ones_like(self, k, op, args, outs):
        self._fill(outs[0], _lit(1, self.dtypes[outs[0]]))

    def op_zeros_like(self, k, op, args, outs):
        self.fresh(outs[0], zero=True)

    def op_alloc(self, k, op, args, outs):
        self._broadcast_copy(args[0], outs[0])

    def op_broadcast_like(self, k, op, args, outs):
        self._broadcast_copy(args[0], outs[0])

    def _broadcast_copy(self, x, o, strides=None, scale=None):
        shape = self.shapes[o]
        st = self.strides_for(x, shape) if strides is None else strides
        loop = _Loop(shape, [st, row_major(shape)])
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        ind = loop.open(self.emit, "    ")
        src = self.read(x, loop, strides=st, as_dt=self.dtypes[o])
        if scale is not None:
            src = f"{src} / {scale}"
        self.emit(f"{ind}{buf}[{loop.out_index()}] = {src}")

    def op_cast(self, k, op, args, outs):
        self._broadcast_copy(args[0], outs[0])

    # ---- reductions
    def _accumulate(self, x, o, write_strides, scale=None):
        """``out[write index] += x`` over ``x``'s shape (``write_strides``: out element strides per x axis)."""
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"sum into {dt}")
        xshape = self.loc[x].shape
        n = int(np.prod(xshape, dtype=np.int64))
        buf = self.fresh(o, zero=True)
        if n == 0:
            if scale is not None:
                self._scale(o, scale)
            return
        acc_dt = _ACC.get(dt, dt)
        loop = _Loop(xshape, [self.strides_for(x, xshape), list(write_strides)])
        if not any(write_strides):  # a full reduction: a scalar accumulator
            acc = self.tmp("s")
            self.emit(f"    {acc} = np.{acc_dt}(0)")
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{acc} += {self.read(x, loop, as_dt=acc_dt)}")
            self.emit(f"    {buf}[0] = {acc}")
        else:
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{loop.index(0, write_strides)}] += {self.read(x, loop, as_dt=dt)}")
        if scale is not None:
            self._scale(o, scale)

    def _scale(self, o, count):
        buf = self.loc[o].buf
        n = max(self.loc[o].size, 1)
        dt = self.dtypes[o]
        self.emit(f"    for i in range({n}):")
        self.emit(f"        {buf}[i] = {buf}[i] / np.{dt}({float(count)!r})")

    def op_sum(self, k, op, args, outs):
        x, o = args[0], outs[0]
        node = self.node(k)
        axes = tuple(sorted(op._norm(node.inputs[0])))
        xshape = self.shapes[x]
        oshape = self.shapes[o]
        ost = row_major(oshape)
        ws, j = [], 0
        for d in range(len(xshape)):
            if d in axes:
                ws.append(0)
                if op.keepdims:
                    j += 1
            else:
                ws.append(ost[j])
                j += 1
        scale = None
        if getattr(op, "mean", False):
            cnt = int(np.prod([xshape[a] for a in axes], dtype=np.int64)) - int(getattr(op, "ddof", 0))
            if cnt <= 0:
                raise Unsupported("mean over an empty axis")
            scale = cnt
        if self.dtypes[o] not in ("float64", "float32") and scale is not None:
            raise Unsupported("integer mean")
        self._accumulate(x, o, ws, scale)

    op_mean = op_sum

    def op_max(self, k, op, args, outs):
        """``max``/``min`` over axes: NaN propagates (as NumPy), started from the first element's value."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64") or self.dtypes[x] != dt:
            raise Unsupported(f"{op.opname} of {self.dtypes[x]}")
        xshape = self.loc[x].shape
        if int(np.prod(xshape, dtype=np.int64)) == 0:
            raise Unsupported("zero-size extremum")
        ws, _ = self._sum_axes(k, op, x, o)
        buf = self.fresh(o)
        fn = "s_maximum" if op.which == "max" else "s_minimum"
        if dt == "int64":
            fill = "np.int64(-9223372036854775808)" if op.which == "max" else "np.int64(9223372036854775807)"
        else:
            fill = f"np.{dt}({'-' if op.which == 'max' else ''}np.inf)"
        self.emit(f"    {buf}[:] = {fill}")
        loop = _Loop(xshape, [self.strides_for(x, xshape), list(ws)])
        ind = loop.open(self.emit, "    ")
        idx = loop.index(0, ws)
        self.emit(f"{ind}{buf}[{idx}] = {fn}({buf}[{idx}], {self.read(x, loop)})")

    op_min = op_max

    def op_sum_like(self, k, op, args, outs):
        g, o = args[0], outs[0]
        gshape, oshape = self.loc[g].shape, self.shapes[o]
        lead = len(gshape) - len(oshape)
        if lead < 0:
            raise Unsupported("sum_like to a bigger rank")
        ost = row_major(oshape)
        ws = []
        for d, n in enumerate(gshape):
            a = d - lead
            ws.append(0 if a < 0 or (oshape[a] == 1 and n != 1) else ost[a])
        self._accumulate(g, o, ws)

    def op_broadcast_reduced(self, k, op, args, outs):
        g, x, o = args[0], args[1], outs[0]
        node = self.node(k)
        from tapegrad.ops.reduce import _axes

        axes = tuple(sorted(_axes(op.axis, node.inputs[1], "broadcast_reduced")))
        oshape = self.shapes[o]
        lg = self.loc[g]
        if lg.lit is not None:
            st = [0] * len(oshape)
        else:
            st, j = [], 0
            for d in range(len(oshape)):
                if d in axes:
                    st.append(0)
                    if op.keepdims:
                        j += 1
                else:
                    st.append(lg.strides[j] if lg.shape[j] != 1 else 0)
                    j += 1
        scale = None
        if op.mean:
            cnt = int(np.prod([oshape[a] for a in axes], dtype=np.int64)) - int(op.ddof)
            if cnt <= 0:
                raise Unsupported("mean over an empty axis")
            scale = _lit(cnt, self.dtypes[o])
        self._broadcast_copy(g, o, strides=st, scale=scale)

    # ---- basic-index writes
    def _write(self, k, op, args, outs, mode):
        x, y, o = args[0], args[1], outs[0]
        if len(args) > 2:
            raise Unsupported("write with dynamic bounds")
        oshape = self.shapes[o]
        buf, how = self._write_target(k, op.code, x, o)
        r = _subtensor_layout(op, oshape, row_major(oshape))
        if r is None:
            raise Unsupported("write at a non-static index")
        off, rshape, rst = r
        rshape = tuple(rshape)
        if int(np.prod(rshape, dtype=np.int64)) == 0:
            return
        yst = self.strides_for(y, rshape)
        loop = _Loop(rshape, [yst, list(rst)])
        ind = loop.open(self.emit, "    ")
        src = self.read(y, loop, strides=yst, as_dt=self.dtypes[o])
        idx = loop.index(off, list(rst))
        self.emit(f"{ind}{buf}[{idx}] {how} {src}")

    def op_subtensor_scatter(self, k, op, args, outs):
        self._write(k, op, args, outs, "scatter")

    def op_inc_subtensor(self, k, op, args, outs):
        self._write(k, op, args, outs, "inc")

    def op_set_subtensor(self, k, op, args, outs):
        self._write(k, op, args, outs, "set")

    # ---- roll, join
    def op_roll(self, k, op, args, outs):
        x, sh, o = args[0], args[1], outs[0]
        lx = self.loc[x]
        shape = self.shapes[o]
        if lx.lit is not None:
            raise Unsupported("roll of a literal")
        shift = self.loc[sh].lit if self.loc[sh].lit is not None else f"{self.loc[sh].buf}[{self.loc[sh].off}]"
        buf = self.fresh(o)
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return
        sv = self.tmp("r")
        if op.axis is None:
            if not lx.contiguous():
                raise Unsupported("roll of a strided array over all axes")
            self.emit(f"    {sv} = np.int64({shift}) % {n}")
            self.emit(f"    for i in range({n}):")
            self.emit(f"        j = i - {sv}")
            self.emit(f"        if j < 0:")
            self.emit(f"            j += {n}")
            self.emit(f"        {buf}[i] = {lx.buf}[{lx.off} + j]")
            return
        ax = op.axis
        m = shape[ax]
        self.emit(f"    {sv} = np.int64({shift}) % {m}")
        loop = _Loop(shape, [[1] * len(shape)])  # forces nested loops
        loop.flat = False
        loop.dims = list(range(len(shape)))
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}j = i{ax} - {sv}")
        self.emit(f"{ind}if j < 0:")
        self.emit(f"{ind}    j += {m}")
        terms = [str(lx.off)] + [f"{'j' if d == ax else f'i{d}'} * {lx.strides[d]}" for d in range(len(shape))]
        self.emit(f"{ind}{buf}[{loop.out_index()}] = {lx.buf}[{' + '.join(terms)}]")

    def op_join(self, k, op, args, outs):
        o = outs[0]
        shape = self.shapes[o]
        buf = self.fresh(o)
        ost = row_major(shape)
        start = 0
        for x in args:
            xs = self.loc[x].shape
            if int(np.prod(xs, dtype=np.int64)):
                st = self.strides_for(x, xs)
                loop = _Loop(xs, [st, ost])
                loop.flat = False
                loop.dims = [d for d, n in enumerate(xs) if n != 1]
                ind = loop.open(self.emit, "    ")
                self.emit(f"{ind}{buf}[{loop.index(start * ost[op.axis], ost)}] = "
                          f"{self.read(x, loop, strides=st, as_dt=self.dtypes[o])}")
            start += xs[op.axis]

    def op_stack(self, k, op, args, outs):
        """``stack`` = ``join`` of the inputs seen with a length-1 axis at ``axis`` (stride 0: no copy)."""
        ax = op.axis
        saved = {}
        for x in args:
            if x in saved:
                continue
            lx = saved[x] = self.loc[x]
            shape = lx.shape[:ax] + (1,) + lx.shape[ax:]
            if lx.lit is not None:
                self.loc[x] = _Loc(shape, lit=lx.lit)
            else:
                self.loc[x] = _Loc(shape, buf=lx.buf, off=lx.off, strides=lx.strides[:ax] + (0,) + lx.strides[ax:],
                                   owned=False)
        try:
            self.op_join(k, op, args, outs)
        finally:
            self.loc.update(saved)

    # ---- loops (scan): loop bodies are sub-tapes generated inline
    def body(self, inputs, outputs, in_locs, in_dtypes, hoist):
        """Generate the sub-tape ``inputs -> outputs`` (a loop body) with its inputs at ``in_locs``: returns
        ``(lines, out_locs, out_dtypes)``; allocations go to ``hoist`` (run once, before the loop)."""
        from tapegrad.compile.cpu import CPUEngine, _Dynamic
        from tapegrad.tape.build import build_tape

        tape = build_tape(list(inputs), list(outputs))
        if tape.shared_slots.size or any(name_of(int(c)) in ("SCAN", "SCAN_GRAD") for c in tape.codes):
            raise Unsupported("a loop body with shared variables or nested loops")
        eng = CPUEngine(tape, tier="interp")
        dummies = [np.zeros(loc.shape, dt) for loc, dt in zip(in_locs, in_dtypes)]
        try:
            shapes = eng._infer_shapes(dummies, [], None)
        except _Dynamic:
            raise Unsupported("a loop body with run-time shapes") from None
        values, const_instrs = eng._plan_values
        root = self.root
        root.n_sub += 1
        g = _Gen(tape, shapes, eng.slot_dtypes, values, const_instrs, eng.node)
        g.prefix = f"q{root.n_sub}_"
        g.root = root
        g.hoist = hoist
        for s, loc, dt in zip(tape.input_slots, in_locs, in_dtypes):
            if eng.slot_dtypes[s] != dt:
                raise Unsupported("a loop body input of another dtype")
            g.loc[int(s)] = loc
        inputs_set = set(int(s) for s in tape.input_slots)
        for s, c in zip(tape.const_slots, tape.consts):
            g._constant(int(s), c)
        for s, v in values.items():
            if s not in g.loc and s not in inputs_set:
                g._constant(int(s), v)
        g._analyse()
        g.G = None
        g.lit_instrs = set()
        for k in range(len(tape)):
            g.place(k)
        g.close()
        outs = [g.loc[int(s)] for s in tape.output_slots]
        return g.lines, outs, [eng.slot_dtypes[s] for s in tape.output_slots]

    def _copy_into(self, dst, dst_off, loc, dt_src, dt_dst, ind):
        """Lines copying the value at ``loc`` into the contiguous ``dst`` from element ``dst_off`` on."""
        n = loc.size
        if n == 0:
            return []
        loop = _Loop(loc.shape, [row_major(loc.shape) if loc.lit is not None else _read_strides(loc, loc.shape),
                                 row_major(loc.shape)])
        lines = []
        body_ind = loop.open(lines.append, ind)
        from tapegrad.compile.fused import _convert

        src = loc.lit if loc.lit is not None else f"{loc.buf}[{loop.index(loc.off, _read_strides(loc, loc.shape))}]"
        lines.append(f"{body_ind}{dst}[{loop.index(dst_off, row_major(loc.shape))}] = {_convert(src, dt_src, dt_dst)}")
        return lines

    def _static_steps(self, op, args):
        lx = self.loc.get(args[0])
        if op.n_steps_given:
            if lx is None or lx.lit is None:
                raise Unsupported("scan with a run-time number of steps")
            n = int(float(lx.lit.split("(")[-1].rstrip(")")))
        else:
            n = min(self.shapes[s][0] for s in args[1:1 + op.n_seq])
        if n <= 0:
            raise Unsupported("scan of zero steps")
        return n

    def _row(self, s, t):
        """Row ``t`` (a source expression) of the stacked slot ``s`` as a loc."""
        loc = self.loc[s]
        if loc.lit is not None:
            return _Loc(loc.shape[1:], lit=loc.lit)
        return _Loc(loc.shape[1:], buf=loc.buf, off=_off_add(loc.off, f"{t} * {loc.strides[0]}"),
                    strides=loc.strides[1:])

    def _state_buffers(self, name, loc, dt, ind="    "):
        """Emit a contiguous state buffer ``name`` holding the value at ``loc``."""
        n = max(loc.size, 1) if loc.shape == () else loc.size
        self.emit(f"{ind}{name} = np.empty({n}, np.{dt})")
        for line in self._copy_into(name, 0, loc, dt, dt, ind):
            self.emit(line)

    def op_scan(self, k, op, args, outs):
        n = self._static_steps(op, args)
        ns, nk = op.n_seq, op.n_state
        seqs, inits, nonseqs = args[1:1 + ns], args[1 + ns:1 + ns + nk], args[1 + ns + nk:]
        dts = self.dtypes
        p = self.tmp("L")
        st = [f"{p}s{j}" for j in range(nk)]
        nst = [f"{p}n{j}" for j in range(nk)]
        for j, x in enumerate(inits):
            self._state_buffers(st[j], self.loc[x], dts[x])
            self._state_buffers(nst[j], self.loc[x], dts[x])
        in_locs = ([self._row(x, "t") for x in seqs] + [_Loc(self.shapes[x], buf=st[j]) for j, x in enumerate(inits)]
                   + [self.loc[x] for x in nonseqs])
        in_dts = [dts[x] for x in seqs] + [dts[x] for x in inits] + [dts[x] for x in nonseqs]
        hoist = []
        lines, out_locs, out_dts = self.body(op.inner_inputs, op.inner_outputs, in_locs, in_dts, hoist)
        stacked = {}
        for j, o in enumerate(outs):
            if not op.keep_last[j]:
                stacked[j] = self.fresh(o)
            elif j >= nk:
                self.fresh(o)
        for line in hoist:
            self.emit("    " + line)
        self.emit(f"    for t in range({n}):")
        self.emit("        pass")
        for line in lines:
            self.emit("    " + line)
        for j, loc in enumerate(out_locs):
            o = outs[j]
            if j < nk:
                for line in self._copy_into(nst[j], 0, loc, out_dts[j], dts[o], "        "):
                    self.emit(line)
            if j in stacked:
                size = loc.size
                for line in self._copy_into(stacked[j], f"t * {size}" if size else 0, loc, out_dts[j], dts[o],
                                            "        "):
                    self.emit(line)
            elif j >= nk:  # the last step's value of a per-step output
                for line in self._copy_into(self.loc[o].buf, 0, loc, out_dts[j], dts[o], "        "):
                    self.emit(line)
        if nk:
            self.emit(f"        {', '.join(st)}, {', '.join(nst)} = {', '.join(nst)}, {', '.join(st)}")
        for j in range(nk):
            o = outs[j]
            if op.keep_last[j]:
                self.emit(f"    {self.prefix}b{o}_last = {st[j]}.copy()")
                self.loc[o] = _Loc(self.shapes[o], buf=f"{self.prefix}b{o}_last", owned=True)

    def op_scan_grad(self, k, op, args, outs):
        from tapegrad.ops.checkpoint import schedule_for

        S = op.scan_op
        n = self._static_steps(S, args)
        if op.null is not None:
            raise Unsupported("scan gradient with a null gradient")
        ns, nk = S.n_seq, S.n_state
        prim = args[1:1 + S.n_inner]
        cots = args[1 + S.n_inner:]
        seqs, inits, nonseqs = prim[:ns], prim[ns:ns + nk], prim[ns + nk:]
        dts = self.dtypes
        acts = []
        kinds = {"restore": 0, "advance": 1, "store": 2, "free": 3, "adjoint": 4}
        n_slots = 1
        for a in schedule_for(op.checkpoint, n, op.snapshots):
            v = [kinds[a[0]]] + [int(x) for x in a[1:]]
            v += [0] * (3 - len(v))
            acts.append(v)
            if a[0] == "store":
                n_slots = max(n_slots, int(a[1]) + 1)
        acts_name = self.array_param(np.asarray(acts, np.int64).reshape(-1))
        p = self.tmp("G")
        cur = [f"{p}c{j}" for j in range(nk)]
        nxt = [f"{p}x{j}" for j in range(nk)]
        snap = [f"{p}p{j}" for j in range(nk)]
        sizes = [max(self.loc[x].size, 1) if self.shapes[x] == () else self.loc[x].size for x in inits]
        for j, x in enumerate(inits):
            self._state_buffers(cur[j], self.loc[x], dts[x])
            self._state_buffers(nxt[j], self.loc[x], dts[x])
            self.emit(f"    {snap[j]} = np.empty({n_slots * sizes[j]}, np.{dts[x]})")
            self.emit(f"    {snap[j]}[0:{sizes[j]}] = {cur[j]}")
        cot_of = dict(zip(op.cot_outputs, cots))
        state_cots = [j for j in op.cot_outputs if j < nk]
        nit_cots = [j for j in op.cot_outputs if j >= nk]
        lam = {j: f"{p}l{j}" for j in state_cots}
        lin = {j: f"{p}i{j}" for j in state_cots}
        for j in state_cots:
            self.emit(f"    {lam[j]} = np.zeros({sizes[j]}, np.{dts[inits[j]]})")
            self.emit(f"    {lin[j]} = np.empty({sizes[j]}, np.{dts[inits[j]]})")
        grads = {}
        for i, o in zip(op.wrt, outs):
            if i < ns or i >= ns + nk:
                grads[i] = self.fresh(o, zero=True)
        # the bodies
        hoist = []
        st_locs = [_Loc(self.shapes[x], buf=cur[j]) for j, x in enumerate(inits)]
        step_lines, step_outs, step_dts = [], [], []
        if nk:
            step_lines, step_outs, step_dts = self.body(
                S.inner_inputs, S.inner_outputs[:nk],
                [self._row(x, "t") for x in seqs] + st_locs + [self.loc[x] for x in nonseqs],
                [dts[x] for x in prim], hoist)
        # cotangent inputs of the adjoint body at step t
        cot_locs, cot_dts, pre = [], [], []
        for j in state_cots:
            cot_locs.append(_Loc(self.shapes[inits[j]], buf=lin[j]))
            cot_dts.append(dts[inits[j]])
        for j in nit_cots:
            c = cot_of[j]
            if not S.keep_last[j]:
                cot_locs.append(self._row(c, "t"))
            else:
                lc = self.loc[c]
                if lc.lit is not None or not lc.contiguous():
                    src = self.copy_out(c)
                    lc = self.loc[c] = _Loc(lc.shape, buf=src, owned=True)
                zname = f"{p}z{j}"
                self.emit(f"    {zname} = np.zeros({max(lc.size, 1)}, np.{dts[c]})")
                cname = f"{p}k{j}"
                pre.append(f"{cname} = {lc.buf}[{lc.off}:{_off_add(lc.off, max(lc.size, 1))}] if t == {n - 1} "
                           f"else {zname}")
                cot_locs.append(_Loc(lc.shape, buf=cname))
            cot_dts.append(dts[c])
        adj_lines, adj_outs, adj_dts = self.body(
            op.adjoint_inputs, op.adjoint_outputs,
            [self._row(x, "t") for x in seqs] + st_locs + [self.loc[x] for x in nonseqs] + cot_locs,
            [dts[x] for x in prim] + cot_dts, hoist)
        for line in hoist:
            self.emit("    " + line)
        I = "    "
        self.emit(f"{I}for a in range({len(acts)}):")
        self.emit(f"{I * 2}kind = {acts_name}[3 * a]")
        self.emit(f"{I * 2}p1 = {acts_name}[3 * a + 1]")
        self.emit(f"{I * 2}p2 = {acts_name}[3 * a + 2]")
        self.emit(f"{I * 2}if kind == 0:")
        for j in range(nk):
            self.emit(f"{I * 3}{cur[j]}[:] = {snap[j]}[p1 * {sizes[j]}:(p1 + 1) * {sizes[j]}]")
        self.emit(f"{I * 3}pass")
        self.emit(f"{I * 2}elif kind == 1:")
        self.emit(f"{I * 3}for t in range(p1, p2):")
        self.emit(f"{I * 4}pass")
        for line in step_lines:
            self.emit(I * 3 + line)
        for j, loc in enumerate(step_outs):
            for line in self._copy_into(nxt[j], 0, loc, step_dts[j], dts[inits[j]], I * 4):
                self.emit(line)
        if nk:
            self.emit(f"{I * 4}{', '.join(cur)}, {', '.join(nxt)} = {', '.join(nxt)}, {', '.join(cur)}")
        self.emit(f"{I * 2}elif kind == 2:")
        for j in range(nk):
            self.emit(f"{I * 3}{snap[j]}[p1 * {sizes[j]}:(p1 + 1) * {sizes[j]}] = {cur[j]}")
        self.emit(f"{I * 3}pass")
        self.emit(f"{I * 2}elif kind == 4:")
        self.emit(f"{I * 3}t = p1")
        for j in state_cots:  # lambda_in = lambda + c_state[t]
            c = cot_of[j]
            cl = self._row(c, "t") if not S.keep_last[j] else self.loc[c]
            src = cl.lit if cl.lit is not None else None
            self.emit(f"{I * 3}for e in range({sizes[j]}):")
            if src is None:
                idx = _off_add(cl.off, "e") if cl.contiguous() or cl.shape == () else None
                if idx is None:
                    raise Unsupported("a strided state cotangent")
                src = f"{cl.buf}[{idx}]"
            keep = f" if t == {n - 1} else 0" if S.keep_last[j] else ""
            self.emit(f"{I * 4}{lin[j]}[e] = {lam[j]}[e] + ({src}{keep})")
        for line in pre:
            self.emit(f"{I * 3}{line}")
        for line in adj_lines:
            self.emit(I * 2 + line)
        for i, loc, dt in zip(op.wrt, adj_outs, adj_dts):
            if i < ns:
                x = seqs[i]
                size = int(np.prod(self.shapes[x][1:], dtype=np.int64))
                for line in self._copy_into(grads[i], f"t * {size}", loc, dt, dts[x], I * 3):
                    self.emit(line)
            elif i < ns + nk:
                j = i - ns
                if j in lam:
                    for line in self._copy_into(lam[j], 0, loc, dt, dts[inits[j]], I * 3):
                        self.emit(line)
            else:
                x = nonseqs[i - ns - nk]
                if loc.size:
                    lines = []
                    loop = _Loop(loc.shape, [row_major(loc.shape)])
                    loop.flat, loop.dims = False, [d for d, m in enumerate(loc.shape) if m != 1]
                    bi = loop.open(lines.append, I * 3)
                    src = loc.lit if loc.lit is not None else \
                        f"{loc.buf}[{loop.index(loc.off, _read_strides(loc, loc.shape))}]"
                    from tapegrad.compile.fused import _convert

                    lines.append(f"{bi}{grads[i]}[{loop.out_index()}] += {_convert(src, dt, dts[x])}")
                    for line in lines:
                        self.emit(line)
        for i, o in zip(op.wrt, outs):
            if ns <= i < ns + nk:
                j = i - ns
                if j in lam:
                    self.emit(f"    {self.prefix}b{o}_g = {lam[j]}.copy()")
                    self.loc[o] = _Loc(self.shapes[o], buf=f"{self.prefix}b{o}_g", owned=True)
                else:
                    self.fresh(o, zero=True)

    # ---- dot family (BLAS through np.dot)
    def _as_array(self, x):
        """Source of a numba array (1-d or 2-d, 'C' or 'F' layout) holding ``x``'s value."""
        loc = self.loc[x]
        if loc.lit is not None:
            raise Unsupported("dot of a literal")
        shape = loc.shape
        n = loc.size
        if len(shape) == 1:
            if loc.strides[0] == 1 or shape[0] <= 1:
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}]"
        elif len(shape) == 2:
            a, b = shape
            if loc.contiguous():
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}].reshape(({a}, {b}))"
            if (b == 1 or loc.strides[0] == 1) and (a == 1 or loc.strides[1] == a):
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}].reshape(({b}, {a})).T"
        else:
            raise Unsupported("dot of more than 2 dimensions")
        src = self.copy_out(x)
        if len(shape) == 2:
            return f"{src}.reshape({shape!r})"
        return src

    def op_dot(self, k, op, args, outs):
        a, b, o = args[0], args[1], outs[0]
        if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
            raise Unsupported("dot of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("dot of an empty operand")
        sa, sb = self._as_array(a), self._as_array(b)
        name = f"{self.prefix}b{o}"
        if self.shapes[o] == ():
            self.emit(f"    {name} = np.empty(1, np.{self.dtypes[o]})")
            self.emit(f"    {name}[0] = np.dot({sa}, {sb})")
        else:
            self.emit(f"    {name} = np.ascontiguousarray(np.dot({sa}, {sb})).reshape(-1)")
        self.loc[o] = _Loc(self.shapes[o], buf=name, owned=True)

    def op_einsum(self, k, op, args, outs):
        """Two-operand contractions over one label that are a (transposed) matrix/vector product."""
        a, b, o = args[0], args[1], outs[0]
        la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
        if (len(la) != len(self.shapes[a]) or len(lb) != len(self.shapes[b]) or len(lo) != len(self.shapes[o])
                or len(set(la)) != len(la) or len(set(lb)) != len(lb)):
            raise Unsupported("einsum with broadcast or repeated labels")
        con = [c for c in la if c in lb and c not in lo]
        fa = [c for c in la if c not in lb]
        fb = [c for c in lb if c not in la]
        if not con and len(la) == len(lb) == 1 and len(lo) == 2 and sorted(lo) == sorted(la + lb) and la != lb:
            if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
                raise Unsupported("outer product of non-float or mixed dtypes")
            sa, sb = self._as_array(a), self._as_array(b)
            first, second = (sa, sb) if lo == la + lb else (sb, sa)
            self.emit(f"    {self.prefix}b{o} = np.outer({first}, {second}).reshape(-1)")
            self.loc[o] = _Loc(self.shapes[o], buf=f"{self.prefix}b{o}", owned=True)
            return
        if len(con) != 1 or any(c in la and c in lb for c in lo) or sorted(fa + fb) != sorted(lo):
            return self._einsum_loops(a, b, o, la, lb, lo)
        if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
            raise Unsupported("einsum of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("einsum of an empty operand")
        sa, sb = self._as_array(a), self._as_array(b)
        if len(la) == 2 and la[0] == con[0]:
            sa = f"{sa}.T"
        if len(lb) == 2 and lb[1] == con[0]:
            sb = f"{sb}.T"
        name = f"{self.prefix}b{o}"
        if lo == tuple(fa + fb):
            expr = f"np.dot({sa}, {sb})"
        elif len(lo) == 2:  # (A B)^T = B^T A^T
            ta = f"{sa}.T" if len(la) == 2 else sa
            tb = f"{sb}.T" if len(lb) == 2 else sb
            expr = f"np.dot({tb}, {ta})"
        else:
            raise Unsupported("einsum output order")
        if self.shapes[o] == ():
            self.emit(f"    {name} = np.empty(1, np.{self.dtypes[o]})")
            self.emit(f"    {name}[0] = {expr}")
        else:
            self.emit(f"    {name} = np.ascontiguousarray({expr}).reshape(-1)")
        self.loc[o] = _Loc(self.shapes[o], buf=name, owned=True)

    def _einsum_loops(self, a, b, o, la, lb, lo):
        """Any two-operand einsum without broadcasting: a loop over every label, ``out += a * b``."""
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported("einsum loops of this dtype")
        size = {}
        for labels, s in ((la, a), (lb, b), (lo, o)):
            for c, n in zip(labels, self.shapes[s]):
                if size.setdefault(c, n) != n:
                    raise Unsupported("einsum with mismatched label lengths")
        labels = list(dict.fromkeys(lo + la + lb))
        buf = self.fresh(o, zero=True)
        if any(size[c] == 0 for c in labels):
            return
        ind = "    "
        for c in labels:
            self.emit(f"{ind}for l{c} in range({size[c]}):")
            ind += "    "

        def index(s, lab):
            loc = self.loc[s]
            st = loc.strides if s != o else row_major(self.shapes[o])
            off = loc.off if s != o else 0
            return " + ".join([str(off)] + [f"l{c} * {st[d]}" for d, c in enumerate(lab)])

        def src(s, lab):
            loc = self.loc[s]
            return loc.lit if loc.lit is not None else f"{loc.buf}[{index(s, lab)}]"

        self.emit(f"{ind}{buf}[{index(o, lo)}] += np.{dt}({src(a, la)}) * np.{dt}({src(b, lb)})")

    def op_matmul(self, k, op, args, outs):
        if any(len(self.shapes[s]) > 2 for s in args[:2]):
            raise Unsupported("batched matmul")
        self.op_dot(k, op, args, outs)


_Gen.op_specify_shape = _Gen._identity_view


def generate(tape, shapes, dtypes, values, const_instrs, node):
    """``(source, array constants)`` of the program of ``tape`` at these slot shapes (raises Unsupported)."""
    g = _Gen(tape, shapes, dtypes, values or {}, const_instrs or (), node)
    src = g.generate()
    return src, [a for _, a in g.array_consts]


# --------------------------------------------------------------------------- compiling
_PROGRAMS = {}  # module name -> Program (process-wide)
_LOCK = threading.Lock()


class Program:
    """The compiled program of one tape at one shape signature: ``ready()``, ``wait()``, ``fn``, ``__call__``."""

    def __init__(self, source, consts, input_shapes, input_dtypes, n_outputs):
        from tapegrad.compile.fused import CODEGEN_VERSION, cache_dir, scalar_fingerprint

        h = hashlib.sha1(repr((PROGRAM_VERSION, CODEGEN_VERSION, scalar_fingerprint(), source)).encode())
        self.name = "tg_program_" + h.hexdigest()[:20]
        self.source = source
        self.consts = tuple(consts)
        self.input_shapes = tuple(input_shapes)
        self.input_dtypes = tuple(np.dtype(d) for d in input_dtypes)
        self.n_outputs = n_outputs
        self.path = os.path.join(cache_dir(), self.name + ".py")
        self.fn = None
        self.error = None
        self.compile_s = None
        self.from_cache = None
        self._future = None
        self._done = threading.Event()

    def _dummy(self):
        args = [np.zeros(s, d) for s, d in zip(self.input_shapes, self.input_dtypes)]
        return args + list(self.consts)

    def _compile(self):
        import time

        from tapegrad.compile.fused import _EXITING, _write_module

        t0 = time.perf_counter()
        try:
            if _EXITING.is_set() and self._future is not True:
                raise RuntimeError("program compile skipped: the interpreter is exiting")
            _write_module(self.path, self.source)
            mod = sys.modules.get(self.name)
            if mod is None:
                spec = importlib.util.spec_from_file_location(self.name, self.path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                sys.modules[self.name] = mod
            fn = mod.program
            # compile (or load from numba's disk cache) for the argument types of real calls
            fn.compile(tuple(_numba_type(a) for a in self._dummy()))
            self.from_cache = bool(fn.stats.cache_hits)
            self.fn = fn
            if not self.cached():
                try:
                    with open(self.path + ".ok", "w") as f:
                        f.write(os.environ.get("NUMBA_CACHE_DIR", ""))
                except OSError:
                    pass
        except BaseException as e:  # noqa: BLE001 - reported through .error; the engine stays on tier 0/1
            self.error = e
        finally:
            self.compile_s = time.perf_counter() - t0
            self._done.set()

    def start(self):
        from tapegrad.compile.fused import _executor

        with _LOCK:
            if self._future is None and not self._done.is_set():
                self._future = _executor().submit(self._compile)
        return self

    def wait(self, timeout=None):
        if self._future is None and not self._done.is_set():
            with _LOCK:
                run_here = self._future is None and not self._done.is_set()
                if run_here:
                    self._future = True
            if run_here:
                self._compile()
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.fn

    def ready(self):
        return self._done.is_set() and self.fn is not None

    def cached(self):
        """True when an earlier process compiled this program into numba's disk cache (loading is quick)."""
        try:
            with open(self.path + ".ok") as f:
                return f.read() == os.environ.get("NUMBA_CACHE_DIR", "") and os.path.exists(self.path)
        except OSError:
            return False

    def done(self):
        return self._done.is_set()

    def __call__(self, *flat_inputs):
        return self.fn(*flat_inputs, *self.consts)


def _numba_type(a):
    from numba import typeof

    return typeof(a)


def get_program(source, consts, input_shapes, input_dtypes, n_outputs, background=False, only_if_cached=False):
    p = Program(source, consts, input_shapes, input_dtypes, n_outputs)
    with _LOCK:
        q = _PROGRAMS.get(p.name)
        if q is None or len(q.consts) != len(p.consts) or not all(
                np.array_equal(a, b) for a, b in zip(q.consts, p.consts)):
            if only_if_cached and not p.cached():
                return None
            _PROGRAMS[p.name] = q = p
    if only_if_cached and not q.done():
        background = False
    if background:
        q.start()
    else:
        q.wait()
    return q


# --------------------------------------------------------------------------- engine side
class EngineProgram:
    """A :class:`Program` bound to a CPU engine's signature: ``run(inputs, shared)`` like ``Plan.execute``,
    and ``fast_call(args)`` for :class:`~tapegrad.compile.function.Function`'s fast path."""

    def __init__(self, program, in_dtypes, sh_dtypes, n_outputs, in_shapes, scalar_dtypes):
        self.program = program
        self.scalar_dtypes = [None if d is None else np.dtype(d) for d in scalar_dtypes]  # per result: 0-d?
        self.in_dtypes = [np.dtype(d) for d in in_dtypes]
        self.sh_dtypes = [np.dtype(d) for d in sh_dtypes]
        self.n_outputs = n_outputs
        self.in_shapes = [tuple(s) for s in in_shapes]
        self._fast = None

    @classmethod
    def make(cls, engine, plan, background, only_if_cached=False):
        """The engine's program for ``plan``'s signature, or None when the tape has no program (or, with
        ``only_if_cached``, when no earlier process left it in the disk cache)."""
        tape = engine.tape
        try:
            src, consts = generate(tape, plan.shapes, engine.slot_dtypes, plan.values, plan.const_instrs,
                                   engine.node)
        except Unsupported as e:
            engine.program_error = e
            return None
        in_dt = [engine.slot_dtypes[s] for s in tape.input_slots]
        sh_dt = [engine.slot_dtypes[s] for s in tape.shared_slots]
        shapes = [plan.shapes[s] for s in tape.input_slots] + [plan.shapes[s] for s in tape.shared_slots]
        prog = get_program(src, consts, shapes, in_dt + sh_dt, len(tape.output_slots), background=background,
                           only_if_cached=only_if_cached)
        if prog is None:
            return None
        res = list(tape.output_slots) + list(tape.update_slots)
        scalar = [engine.slot_dtypes[s] if tuple(plan.shapes[s]) == () else None for s in res]
        return cls(prog, in_dt, sh_dt, len(tape.output_slots), shapes[:len(in_dt)], scalar)

    @property
    def error(self):
        return self.program.error

    def ready(self):
        return self.program.ready()

    def failed(self):
        return self.program.done() and self.program.fn is None

    def run(self, inputs, shared):
        args = [np.ascontiguousarray(a, dtype=d) for a, d in zip(inputs, self.in_dtypes)]
        args += [np.ascontiguousarray(a, dtype=d) for a, d in zip(shared, self.sh_dtypes)]
        res = [np.asarray(r, dtype=d) if d is not None else r
               for r, d in zip(self.program.fn(*args, *self.program.consts), self.scalar_dtypes)]
        return res[:self.n_outputs], res[self.n_outputs:]

    def fast_call(self):
        """A Python function ``call(args) -> outputs tuple`` that runs the program when every argument is
        already an ndarray of exactly the input's dtype, shape and C order, else returns None."""
        if self._fast is None:
            n = len(self.in_dtypes)
            names = [f"a{j}" for j in range(n)]
            conds = [f"type({a}) is nd and {a}.dtype is D{j} and {a}.shape == S{j} and {a}.flags.c_contiguous"
                     for j, a in enumerate(names)]
            src = [f"def call(args):",
                   f"    if len(args) != {n}:",
                   f"        return None",
                   f"    {''.join(a + ', ' for a in names)}= args" if n else "    pass",
                   f"    if {' and '.join(conds) if conds else 'True'}:",
                   f"        r = fn({''.join(a + ', ' for a in names)}{''.join(f'C{j}, ' for j in range(len(self.program.consts)))})",
                   "        return (" + "".join(f"r[{j}], " if d is None else f"arr(r[{j}], R{j}), "
                                          for j, d in enumerate(self.scalar_dtypes[:self.n_outputs])) + ")",
                   f"    return None"]
            env = {"nd": np.ndarray, "fn": self.program.fn, "arr": np.array}
            for j, c in enumerate(self.program.consts):
                env[f"C{j}"] = c
            for j, d in enumerate(self.scalar_dtypes):
                env[f"R{j}"] = d
            for j, (d, s) in enumerate(zip(self.in_dtypes, self.in_shapes)):
                env[f"D{j}"] = d
                env[f"S{j}"] = s
            exec("\n".join(src), env)  # noqa: S102 - generated from dtypes and shapes only
            self._fast = env["call"]
        return self._fast


def njit_entry(engine_program, input_names=None):
    """A ``numba.njit`` function ``entry(*inputs)`` calling the program with its array constants bound; it
    checks each input's shape (the program's literals) and raises ValueError naming the input otherwise."""
    from numba import njit

    prog = engine_program.program
    prog.wait()
    n = len(engine_program.in_shapes)
    names = [f"a{j}" for j in range(n)]
    labels = list(input_names or [f"input {j}" for j in range(n)])
    lines = [f"def entry({', '.join(names)}):"]
    for j, (a, shp) in enumerate(zip(names, engine_program.in_shapes)):
        msg = f"tapegrad njit entry: input {j} ({labels[j]}) must have shape {tuple(shp)}"
        lines.append(f"    if {a}.shape != {tuple(shp)!r}:")
        lines.append(f"        raise ValueError({msg!r})")
    args = names + [f"C{j}" for j in range(len(prog.consts))]
    lines.append(f"    return fn({', '.join(args)})")
    env = {"fn": prog.fn}
    for j, c in enumerate(prog.consts):
        env[f"C{j}"] = c
    exec("\n".join(lines), env)  # noqa: S102 - generated from shapes and names only
    return njit(nogil=True)(env["entry"])
