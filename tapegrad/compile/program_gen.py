"""The program tier's source generator (see :mod:`tapegrad.compile.program`): placement of each instruction
(literal, alias, fused-group member, absorbed reduction or write, hoisted instruction), the fused loops, and
the segmented loops of an adjoint's overlapping windows.  Op templates: :mod:`~tapegrad.compile.program_ops`;
loops: :mod:`~tapegrad.compile.program_loops`."""

from __future__ import annotations

import sys

import numpy as np

from tapegrad.compile.kernels.steps import _subtensor_layout, row_major
from tapegrad.compile.program_ir import (MAX_INSTRUCTIONS, PF_WORK, PROGRAM_VERSION, WS_MIN, _ACC, _WS_MARK, Unsupported,
                                         _axis_strides, _fastmath_src, _lit, _Loc, _Loop, _mean_count,
                                         _read_strides, _sum_like_strides, element_work, par_chunks, place_workspace,
                                         reassoc_sums)
from tapegrad.compile.program_body import BodyTemplates
from tapegrad.compile.program_groups import GroupTemplates
from tapegrad.compile.program_loops import LoopTemplates
from tapegrad.compile.program_ops import OpTemplates
from tapegrad.compile.program_products import ProductTemplates
from tapegrad.compile.program_remat import RematTemplates
from tapegrad.compile.program_rows import RowTemplates
from tapegrad.compile.program_trees import TreeTemplates
from tapegrad.compile.program_windows import WindowTemplates
from tapegrad.compile.threads import program_threads
from tapegrad.compile.vmath import HUGE_MIN
from tapegrad.ops.elemwise import _IMPLS
from tapegrad.registry import name_of

_COPIES = ("SUM_LIKE", "BROADCAST_LIKE", "CAST", "SPECIFY_SHAPE", "IDENTITY")  # same shape and dtype: a no-op


def _alloc_src(n, dt, zero=False):
    """Source of a new flat array of ``n`` elements of ``dt`` (zeroed with ``zero``): ``np.empty``/``np.zeros``,
    or on Linux from :data:`~tapegrad.compile.vmath.HUGE_MIN` bytes on ``huge_empty`` (huge pages)."""
    if sys.platform.startswith("linux") and n * np.dtype(dt).itemsize >= HUGE_MIN:
        return f"huge_{'zeros' if zero else 'empty'}({n}, np.{dt})"
    return f"np.{'zeros' if zero else 'empty'}({n}, np.{dt})"


class _Gen(OpTemplates, GroupTemplates, ProductTemplates, LoopTemplates, WindowTemplates, TreeTemplates,
           RowTemplates, RematTemplates, BodyTemplates):
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
        self.ws_bufs = {}  # buffer name -> (dtype, size): windows of the workspace (top-level code only)
        self.ws_sizes = {}  # dtype -> workspace length (elements), set by generate()
        self.pinned = set()
        self.into = {}  # slot -> parameter: a flat array the caller passes, which the slot's value is written into
        self.into_alias = {}  # slot -> the ``into`` parameter its buffer is (an ``into`` slot is a copy of it)
        self.buf_param = {}  # buffer name -> the ``into`` parameter it is
        self.tree_pending = {}  # tree buffer -> [(offset, length, source at position p)]: 1-d writes, summed at its root
        self.result_like = set()
        self.cur_k = -1  # the instruction being placed
        self.threads = program_threads()  # > 1: big top-level fused loops run as prange over chunks
        self.parallel = False  # a prange was emitted: the function is compiled with parallel=True
        self.region_skip = set()  # instructions of row regions (placed with their region)
        self.row_regions = True  # look for row regions (program_rows)
        self.seg_src = {}  # 1-d join/roll slot -> (first line, its lines, windows): see _segmented_reads
        self.remat = {}  # buffer -> (source of its element j, indices of its store lines): see program_remat
        self._remat_open = {}  # the closing group's candidates: buffer -> plan; their store lines

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

    def _new_array(self, name, n, dt, zero=False, workspace=True):
        """Emit the allocation of the flat array ``name``: in a loop body once before the loop (zeroed per
        step); in the top-level code a workspace window (:func:`~tapegrad.compile.program_ir.place_workspace`)
        when ``workspace`` and it is large; else ``np.empty``/``np.zeros``."""
        if self.hoist is not None:
            self.hoist.append(f"{name} = np.empty({n}, np.{dt})")
            if zero:
                self.emit(f"    {name}[:] = 0")
        elif workspace and self.root is self and n >= WS_MIN:
            self.ws_bufs[name] = (dt, n)
            self.emit(f"    {name} = {_WS_MARK}{name}")
            if zero:
                self.emit(f"    {name}[:] = 0")
        else:
            self.emit(f"    {name} = {_alloc_src(n, dt, zero)}")

    def fresh(self, s, zero=False, keep=False):
        """A new owned buffer for slot ``s``: a workspace window when it is a large intermediate of the
        top-level code, else its own array (results, ``keep``, loop bodies)."""
        dt = self.dtypes[s]
        if dt not in ("float64", "float32", "int64", "bool"):
            raise Unsupported(f"slot of dtype {dt}")
        shape = self.shapes[s]
        n = max(int(np.prod(shape, dtype=np.int64)), 1) if shape == () else int(np.prod(shape, dtype=np.int64))
        name = f"{self.prefix}b{s}"
        y = self.into.get(s, self.into_alias.get(s)) if self.root is self else None
        if y is not None and y not in self.buf_param.values():  # written straight into the caller's array
            self.emit(f"    {name} = {y}")
            if zero:
                self.emit(f"    {name}[:] = 0")
            self.loc[s] = _Loc(shape, buf=name, owned=True)
            self.buf_param[name] = y
            return name
        self._new_array(name, n, dt, zero, workspace=not keep and s not in self.result_like)
        self.loc[s] = _Loc(shape, buf=name, owned=True)
        return name

    def scratch(self, n, dt):
        """A temporary flat array of ``n`` elements for one template's own use (a workspace window when large)."""
        name = self.tmp("z")
        self._new_array(name, max(n, 1), dt)
        return name

    def read(self, s, loop, strides=None, as_dt=None):
        """Source reading slot ``s`` at the current position of ``loop`` (broadcast unless ``strides``)."""
        loc = self.loc[s]
        src = loc.lit if loc.lit is not None else None
        if src is None:
            st = _read_strides(loc, loop.shape) if strides is None else strides
            idx = loop.index(loc.off, st)
            src = self._remat_src(loc.buf, idx) if loc.buf in self.remat else None
            src = src or f"{loc.buf}[{idx}]"
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
        self.params += list(self.into.values())
        self.emit_tape()
        for s, y in self.into.items():  # values not made in their parameter (views, aliases, literals): copied in
            loc = self.loc[s]
            if not (loc.lit is None and self.buf_param.get(loc.buf) == y and loc.off == 0 and loc.contiguous()):
                self.copy_out(s, into=y)
        inputs = set(int(s) for s in tape.input_slots) | set(int(s) for s in tape.shared_slots)
        outs = []
        seen = set()
        returned = set()  # buffers already returned (two results never share an array)
        for s in list(tape.output_slots) + list(tape.update_slots):
            s = int(s)
            loc = self.loc[s]
            if (loc.owned and s not in seen and s not in inputs and loc.contiguous()
                    and self._buffer_slot.get(loc.buf, s) == s and loc.buf not in self.ws_bufs
                    and loc.buf not in returned):
                src = loc.buf
                returned.add(src)
            else:
                src = self.copy_out(s)
            seen.add(s)
            # 0-d results come back as scalars (boxing a 0-d array costs a microsecond): the caller wraps them
            outs.append(f"{src}[0]" if self.shapes[s] == () else f"{src}.reshape({self.shapes[s]!r})")
        self.lines.append("    return (" + "".join(o + ", " for o in outs) + ")")
        self._remat_drop()
        self.lines = reassoc_sums([line for line in self.lines if line])  # (dropped lines are blank)
        self.ws_sizes = place_workspace(self.lines, self.ws_bufs)
        self.parallel = any(" in prange(" in line for line in self.lines)
        self.params += [f"w_{dt}" for dt in sorted(self.ws_sizes)]
        gemms = [f for f in ("v_gemm", "v_gemm_par") if any(f"{f}(" in line for line in self.lines)]
        head = [
            f'"""Generated by tapegrad.compile.program (v{PROGRAM_VERSION}): {len(tape)} instructions."""',
            "import numpy as np",
            "from numba import njit, prange" if self.parallel else "from numba import njit",
            "from tapegrad.compile.kernels.scalar import *  # noqa: F401,F403",
            "from tapegrad.compile.vmath import *  # noqa: F401,F403",
            *([f"from tapegrad.compile.gemm import {', '.join(gemms)}"] if gemms else []),
            "",
            "",
            f'@njit(cache=True, fastmath={_fastmath_src()}, error_model="numpy", nogil=True, boundscheck=False'
            + (", parallel=True)" if self.parallel else ")"),
            f"def {name}({', '.join(self.params)}):",
        ]
        return "\n".join(head + self.lines) + "\n"

    def emit_tape(self):
        """Emit every instruction of the tape (its input slots already located): constants and plan-time
        values first, then each instruction in order, then the last open group's loop."""
        tape = self.tape
        for s, c in zip(tape.const_slots, tape.consts):
            self._constant(int(s), c)
        inputs = set(int(s) for s in tape.input_slots) | set(int(s) for s in tape.shared_slots)
        for s, v in self.values.items():  # plan-time values (constant instructions' outputs, ...)
            if s not in self.loc and s not in inputs:
                self._constant(int(s), v)
        self._analyse()
        self.G = None
        self.lit_instrs = set()  # instructions that became literals: they read their inputs' shapes only
        regions = self._row_regions() if self.row_regions else []
        for reg in regions:
            self.region_skip |= reg.members
        for k in self._order(regions):
            if isinstance(k, int):
                self.place(k)
            else:
                self._emit_region(k)
        self.close()
        for buf in list(self.tree_pending):  # (every tree's root flushes its own; kept for safety)
            self._tree_flush(buf)

    def copy_out(self, s, into=None):
        """A fresh flat array (or the parameter ``into``) holding slot ``s``'s value; returns its name."""
        loc = self.loc[s]
        dt = self.dtypes[s]
        n = max(loc.size, 1) if loc.shape == () else loc.size
        if into is None:
            name = self.tmp("o")
            self.emit(f"    {name} = {_alloc_src(n, dt)}")
        else:
            name = into
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
        from tapegrad.tape.fuse import shape_only_args

        self.pinned = set(int(s) for s in tape.output_slots) | set(int(s) for s in tape.update_slots) | set(self.into)
        # instructions whose values nothing needs: read only for their shapes (the gradient's sum_like
        # references, e.g. a loop body's forward product in its adjoint once the adjoint reads the new state);
        # they are not emitted, and their reads do not count
        live, self.dead = set(self.pinned), set()
        for k in range(len(tape) - 1, -1, -1):
            if not any(int(o) in live for o in tape.instr_outs(k)):
                self.dead.add(k)
                continue
            shape_only = shape_only_args(tape, k)
            live.update(int(a) for a in tape.instr_args(k) if int(a) not in shape_only)
        self.readers = {}
        self.value_readers = {}  # the readers that need the value, not only the shape (sum_like's reference)
        self.producer = {}  # slot -> the instruction that makes it
        for k in range(len(tape)):
            for s in tape.instr_outs(k):
                self.producer[int(s)] = k
            if k in self.dead:
                continue
            shape_only = shape_only_args(tape, k)
            for s in tape.instr_args(k):
                self.readers.setdefault(int(s), []).append(k)
                if int(s) not in shape_only:
                    self.value_readers.setdefault(int(s), []).append(k)
        self._buffer_slot = {}
        names = [name_of(int(c)) for c in tape.codes]
        # a value that a chain's later piece reads is often a same-shape copy (the gradient's sum_like) of a slot
        # made here (a stencil's adjoint tree): that slot's buffer is the caller's array itself, not a fresh
        # array copied into it at the end
        for k in range(len(tape) - 1, -1, -1):
            a, o = tape.instr_args(k), tape.instr_outs(k)
            if names[k] in _COPIES and len(o) == 1 and len(a) and k not in self.const_instrs:
                y = self.into.get(int(o[0]), self.into_alias.get(int(o[0])))
                if (y is not None and int(a[0]) not in self.into and int(a[0]) not in self.into_alias
                        and self.shapes[int(a[0])] == self.shapes[int(o[0])]
                        and self.dtypes[int(a[0])] == self.dtypes[int(o[0])] and y not in self.into_alias.values()):
                    self.into_alias[int(a[0])] = y
        # slots whose buffer a result shares through same-shape copies (the gradient's sum_like): they get
        # their own array, not a workspace window, so the result needs no copy
        self.result_like = set(self.pinned)
        for k in range(len(tape) - 1, -1, -1):
            a, o = tape.instr_args(k), tape.instr_outs(k)
            if (names[k] in _COPIES and len(o) == 1 and int(o[0]) in self.result_like and len(a)
                    and self.shapes[int(a[0])] == self.shapes[int(o[0])]
                    and self.dtypes[int(a[0])] == self.dtypes[int(o[0])]):
                self.result_like.add(int(a[0]))
        self._find_trees(names)

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
        self.cur_k = k
        if k in self.const_instrs:
            return
        outs = [int(s) for s in tape.instr_outs(k)]
        name = name_of(int(tape.codes[k]))
        if name == "ADD" and outs[0] in self.tree_root:  # (the root is located once its tree starts)
            self._tree_add(outs[0])
            return
        if all(s in self.loc for s in outs) or k in self.dead:
            return
        args = [int(s) for s in tape.instr_args(k)]
        if self._literal(k, name, args, outs):
            self.lit_instrs.add(k)
            return
        copy = (name in _COPIES and len(outs) == 1 and self.shapes[args[0]] == self.shapes[outs[0]]
                and self.dtypes[args[0]] == self.dtypes[outs[0]]
                and self._final(args[0]))
        if copy and self.G is not None and args[0] in self.G["after"]:
            self.close()  # (a value the open group's loop completes cannot be read in that loop)
        if copy and self._before(args[0]):
            # a same-shape, same-dtype copy: the value is the input's (buffers are never written after the
            # instruction that made them, so sharing one is safe; outputs are copied out if not owned).  Of an
            # accumulation tree, only its complete root: the buffer holds a partial sum until then (and the
            # gradient's same-shape sum_like of a stencil's tree was a pass writing two copies of it)
            lx = self.loc[args[0]]
            self.loc[outs[0]] = _Loc(lx.shape, lit=lx.lit, buf=lx.buf, off=lx.off, strides=lx.strides,
                                     owned=lx.owned and lx.buf not in self.ws_bufs)
            self.lit_instrs.add(k)
            return
        from tapegrad.tape.fuse import _member, shape_only_args

        thin = self._thin_dot(k, name, args, outs)
        if thin is not None:
            if self.G is not None and not (tuple(self.G["shape"]) == self.shapes[outs[0]]
                                           and all(self._before(s) for s in args)):
                self.close()
            self._join(self._dot_member(k, outs[0], thin))
            return
        m = _member(tape, k, self.shapes, self.dtypes)
        if m is not None:
            self._join(m)
            return
        if self.G is not None and self._absorb(k, name, args, outs):
            self.G["absorbed"].add(k)
            return
        # (a slot read for its shape only that has no location, as in a chain's piece where it is no input,
        # cannot be made available by closing the group: shapes are literals)
        so = shape_only_args(tape, k)
        if self.G is not None and not all(self._before(s) or (s in so and s not in self.loc) for s in args):
            self.close()
        self.instruction(k)  # emitted now: before the open group's loop, which does not feed it

    def _join(self, m):
        """Member ``m`` joins the open group (same shape, inputs available), or closes it and opens its own."""
        G = self.G
        self.loc[m.out] = _Loc(self.shapes[m.out], buf=None)  # a register while the loop runs
        if G is not None and tuple(G["shape"]) == self.shapes[m.out] and all(
                self._in_group(s) or self._before(s) for s in m.data_args):
            G["members"].append(m)
            G["in_loop"].add(m.out)
            return
        self.close()
        self.G = dict(shape=self.shapes[m.out], members=[m], in_loop={m.out}, after=set(), epi=[], pre=[],
                      absorbed=set(), unfilled={})

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
        if name == "POW" and len(args) == 2 and self._literal_value(args[1]) == 0 and dt in ("float64", "float32"):
            self.loc[o] = _Loc(self.shapes[o], lit=_lit(1, dt))  # x ** 0 is 1 for every x (NaN and inf too)
            return True
        if not args or self.loc.get(args[0]) is None or self.loc[args[0]].lit is None:
            return False
        src = self.loc[args[0]].lit
        op = self.tape.ops[k]
        impl = _IMPLS.get(getattr(op, "name", None)) if getattr(op, "spec", None) is not None else None
        if impl is not None and len(args) == op.spec.nin:
            # an elementwise op of literals is a literal: its value, computed as the python engine does
            vals = [self._literal_value(a) for a in args]
            if all(v is not None for v in vals):
                with np.errstate(all="ignore"):
                    v = np.asarray(impl(*[np.asarray(x).astype(self.dtypes[a]) for x, a in zip(vals, args)]))
                self.loc[o] = _Loc(self.shapes[o], lit=_lit(v.astype(dt), dt))
                return True
            return False
        if name in ("BROADCAST_LIKE", "ALLOC", "CAST") or (name == "SUM_LIKE"
                                                            and self.shapes[args[0]] == self.shapes[o]):
            from tapegrad.compile.fused import _convert

            self.loc[o] = _Loc(self.shapes[o], lit=f"({_convert(src, self.dtypes[args[0]], dt)})")
            return True
        if name == "BROADCAST_REDUCED" and dt in ("float64", "float32"):
            src = f"({src})"
            if op.mean:
                cnt = _mean_count(self.shapes[o], self._reduced_axes(k, op), op.ddof)
                if cnt is None:
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
        ws = _axis_strides(len(xshape), axes, row_major(oshape), op.keepdims)
        scale = None
        if getattr(op, "mean", False):
            scale = _mean_count(xshape, axes, getattr(op, "ddof", 0))
            if scale is None or self.dtypes[o] not in ("float64", "float32"):
                raise Unsupported("mean over an empty axis, or of integers")
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
                ws, scale = _sum_like_strides(shape, self.shapes[o]), None
                if ws is None:
                    return False
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

    # ------------------------------------------------------------------ the open group's loop
    def _absorb_ahead(self):
        """Reductions later in the tape whose operand is a member of the open group (the bias gradient
        ``sum_like(dz, b)`` after a ``dot`` that closed the group) are accumulated in the group's loop too:
        their operand is then never read again from memory."""
        tape, G = self.tape, self.G
        for k in range(self.cur_k + 1, len(tape)):
            if k in self.const_instrs or k in G["absorbed"] or k in self.region_skip:
                continue
            name = name_of(int(tape.codes[k]))
            args, outs = [int(s) for s in tape.instr_args(k)], [int(s) for s in tape.instr_outs(k)]
            if (name in ("SUM", "MEAN", "SUM_LIKE") and len(outs) == 1 and outs[0] not in self.loc
                    and self._in_group(args[0]) and self.shapes[args[0]] != self.shapes[outs[0]]
                    and self._absorb(k, name, args, outs)):
                G["absorbed"].add(k)

    def close(self):
        G = self.G
        if G is None:
            return
        self._absorb_ahead()
        self.G = None
        from tapegrad.compile.fused import _convert

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
                    or any(r not in self.lit_instrs for r in self.value_readers.get(e[-1], ()))]
        ks = {m.k for m in members}
        outs = [m.out for m in members if m.out in self.pinned
                or any(r not in ks and r not in G["absorbed"] and r not in self.lit_instrs
                       for r in self.value_readers.get(m.out, ()))]
        for s in mine:
            del self.loc[s]
        # a copy member that changes nothing (a same-shape sum_like, a same-dtype cast: the adjoint's
        # bookkeeping) shares the buffer of the member it copies instead of storing the value twice
        by_out = {m.out: m for m in members}
        share = {}
        for m in members:
            x = m.data_args[0] if m.kind == "copy" else None
            if x in by_out and self.dtypes[x] == m.out_dtype and tuple(self.shapes[x]) == shape:
                share[m.out] = share.get(x, x)
        # dense leaves of an accumulation tree whose windows are not all placed yet (the root comes after this
        # loop): kept for the tree's one-pass flush, which can then assign the buffer; added here, they made the
        # buffer a zero fill and two read-modify-write passes (``-2 * adj`` of a stencil's gradient)
        later = []
        if len(shape) == 1 and not self.prefix and self.hoist is None:
            for e in G["epi"]:
                if e[0] != "write" or e[2] != 0 or tuple(e[3]) != (1,) or e[5] != "+=" or e[1] in G["unfilled"]:
                    continue
                rt = self._buffer_slot.get(e[1])
                ly = None if e[4] in mine else self.loc.get(e[4])
                if (rt is None or rt not in self.tree_root or rt in self.tree_done
                        or (ly is not None and (ly.lit is not None or len(ly.shape) != 1))):
                    continue
                later.append(e)
                if e[4] in mine and e[4] not in outs:
                    outs.append(e[4])  # (a copy member shares its member's buffer: see aliases)
            kept = {id(e) for e in later}
            G["epi"] = [e for e in G["epi"] if id(e) not in kept]
        aliases = [s for s in outs if s in share]
        outs = [s for s in outs if s not in share]
        outs += [r for r in dict.fromkeys(share[s] for s in aliases) if r not in outs]
        for s in outs:
            self.fresh(s, keep=any(share.get(a) == s and a in self.pinned for a in aliases))
        for s in aliases:
            r = self.loc[share[s]]
            self.loc[s] = _Loc(r.shape, buf=r.buf, owned=True)
        self._remat_open = {buf: (plan, []) for buf, plan in self._remat_plan(members, ext, shape, outs).items()}
        for line in G["pre"]:
            self.emit(line)
        op_strides = [self.strides_for(s, shape) for s in ext] + [list(row_major(shape))]
        op_strides += [st for m in members if m.kind == "dot" for st in m.strides()]
        for e in G["epi"]:
            if e[0] == "sum":
                op_strides.append(list(e[3]))
            elif e[0] == "write":
                op_strides.append(list(e[3]))
        loop = _Loop(shape, op_strides)
        loop.par = 0 if self.prefix else par_chunks(self.threads, G, loop, members, ext)  # (not in loop bodies)
        if loop.flat and not self.prefix:
            loop.streams, loop.itemsize = self._streams(ext, shape)
            loop.prefetch = element_work(G, members, ext) >= PF_WORK
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
        windows = G.get("windows", {})  # tree buffer -> (its windows, assigned?): added in this loop, or first
        if windows and (shifted is not None or not loop.flat or len(shape) != 1 or not size
                        or any(k[0] in windows for k in deferred)):
            for buf, (ws, assign) in windows.items():
                self._emit_flush(buf, ws, assign)
            windows = {}
        if shifted is not None:
            self._emit_shifted(G, loop, members, ext, outs, shifted)
            deferred = {}
        elif size != 0:
            # partial sums that stay put along the innermost axis of a nest (a row sum) add up in a local
            # scalar over that axis and reach memory once a row: an add into memory per element is a
            # dependence through a store that keeps the innermost loop (exp, ... included) from vectorising
            inner = loop.dims[-1] if not loop.flat and len(loop.dims) > 1 else None
            rows = {id(e): self.tmp("r") for e in G["epi"] if inner is not None and e[0] == "sum" and not e[3][inner]}

            def body(ind, active=None):
                tn = self._emit_eval(ind, loop, members, ext)
                direct_vals, tree_vals = {}, {}
                oi = loop.out_index()
                for e in self._emit_primary(ind, loop, G, tn, outs, rows):
                    _, buf, off, rst, y, mode, dt = e
                    val = _convert(tn[y], self.dtypes[y], dt)
                    if (buf, off, rst) in deferred:  # to a contiguous temporary: added after the loop
                        tname, how = deferred[buf, off, rst]
                        self.emit(f"{ind}{tname}[{oi}] {how} {val}")
                    elif direct.get(buf) == (buf, off, rst):
                        direct_vals.setdefault(buf, []).append(val)
                    elif buf in windows:
                        tree_vals.setdefault(buf, []).append(val)
                    else:
                        self.emit(f"{ind}{buf}[{loop.index(off, list(rst))}] {mode} {val}")
                for buf, vals in direct_vals.items():
                    _, off, rst = direct[buf]
                    self.emit(f"{ind}{buf}[{loop.index(off, list(rst))}] = {' + '.join(vals)}")
                wrap = bool(loop.par or loop.split)
                for buf, vals in tree_vals.items():  # a tree's dense leaves and the windows covering here
                    ws, assign = windows[buf]
                    terms = vals + [ws[j][2](loop.var, wrap=wrap) for j in active[buf]]
                    self.emit(f"{ind}{buf}[{loop.out_index()}] {'=' if assign else '+='} {' + '.join(terms)}")

            segs = None if rows else self._segmented_reads(G, ext, loop, members, windows)
            if segs or not loop.flat:  # (an operand read in place per segment: no one recomputation)
                self._remat_open = {}
            if rows:
                ind_row = loop.open(self.emit, "    ", levels=len(loop.dims) - 1)
                for e in G["epi"]:
                    if id(e) in rows:
                        self.emit(f"{ind_row}{rows[id(e)]} = np.{e[4]}(0)")
                body(loop.open(self.emit, ind_row, start=len(loop.dims) - 1))
                for e in G["epi"]:
                    if id(e) in rows:
                        self.emit(f"{ind_row}{e[1]}[{loop.index(0, e[3])}] += {rows[id(e)]}")
            elif segs:
                saved = {sl: self.loc[sl] for sl in segs[0][2]}
                for a, b, over, active in segs:
                    self.loc.update(over)
                    loop.streams, loop.itemsize = self._streams(ext, shape)
                    body(loop.open(self.emit, "    ", lo=a, hi=b), active)
                self.loc.update(saved)
            else:
                body(loop.open(self.emit, "    "))
        if shifted is None:
            for buf, (plan, stores) in self._remat_open.items():
                if stores:
                    self.remat[buf] = (self._remat_fn(plan), stores, plan)
        self._remat_open = {}
        for e in later:
            if not self._tree_defer(e[1], 0, shape, e[4], e[6]):
                raise AssertionError("a kept dense leaf is a plain 1-d buffer")
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
