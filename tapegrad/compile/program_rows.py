"""Row-blocked regions of the program tier: a matrix read once by the products of a gradient (a mixin of
:class:`tapegrad.compile.program_gen._Gen`).

The gradient of a generalised linear model, ``f(w) = sum(l(X @ w, y))``, has two matrix-vector products
with the same ``X``: ``z = X @ w`` and ``g = X.T @ r``, with ``r`` computed from ``z`` row by row.  Done in
tape order, each product streams the whole ``X`` from memory: logistic regression on a 100,000 x 50
matrix (40 MB) read it twice per call.  A *row region* runs them, and every row-wise instruction between
them, over blocks of rows instead: ``z_b = X_b @ w``, the elementwise chain on the block, ``g += X_b.T @ r_b``,
while the block (:data:`ROW_BLOCK_BYTES`) is still in the cache, so ``X`` crosses the memory bus once.

A region is found per product ``X.T @ r`` (an ``einsum`` ``ij,i->j``, ``dot``/``matmul`` ``r @ X``) for the
products ``X @ w`` (``w`` a vector) of the same ``X`` that ``r`` depends on:

* its members are the instructions between them, each row-local: an elementwise instruction (or a same-shape
  copy, a broadcast of a scalar) whose every operand is a row vector of ``X``'s rows or a scalar;
* full sums of its members (the cost's ``sum``) are accumulated per block too;
* member values read after the region are also written into full-length buffers;
* instructions that read the region's values and sat before its last product in the tape move after it.

The elementwise part of a block is generated from the region's instructions as a sub-tape, like a loop
body (:meth:`~tapegrad.compile.program_loops.LoopTemplates.body`); a ragged last block gets its own.
With several threads the blocks are split between them (``prange``), each adding into its own partial
product, summed at the end in a fixed order.  Which matrices get regions: :func:`worth_a_region` (with one
thread nearly all; with more, large and narrow ones); docs/program.md has the measurements.
"""

from __future__ import annotations

import numpy as np

from tapegrad.compile.program_ir import _ACC, Unsupported, _lit, _Loc, _off_add
from tapegrad.registry import name_of
from tapegrad.tape.fuse import shape_only_args

ROW_MIN_BYTES = 512 << 10  # one thread: a matrix at least this large (and ROW_MIN_COLS wide) gets a region
ROW_MIN_COLS = 6  # ... narrower rows gained nothing (1e6 x 3: 4.29 against 4.25 ms; 1e5 x 3 lost 16 %)
ROW_MIN_BYTES_PAR = 24 << 20  # several threads: at least this large (BLAS's threaded passes over a matrix in
ROW_MAX_COLS_PAR = 512  # ... the L3 were faster) and at most this wide (1600 x 5000 lost 20 %)
ROW_BLOCK_BYTES = 32 << 10  # the rows of a block: about this many bytes of the matrix (in L1/L2 until reused)
ROW_MIN_BLOCKS = 4  # ... and at least this many blocks
_ROW_LOCAL = ("BROADCAST_REDUCED", "BROADCAST_LIKE", "SUM_LIKE", "CAST", "IDENTITY", "SPECIFY_SHAPE",
              "ONES_LIKE", "ZEROS_LIKE")


def worth_a_region(m, k, itemsize, threads):
    """Whether an ``m x k`` matrix of ``itemsize``-byte elements gets a row region in a program of ``threads``
    threads (the thresholds above; ``perf/row_regions.py`` measures both sides of them)."""
    size = m * k * itemsize
    if k < ROW_MIN_COLS or m < ROW_MIN_BLOCKS * block_rows(k, itemsize):
        return False
    if threads > 1:
        return size >= ROW_MIN_BYTES_PAR and k <= ROW_MAX_COLS_PAR
    return size >= ROW_MIN_BYTES


def block_rows(k, itemsize):
    """Rows per block of a ``k``-column matrix: :data:`ROW_BLOCK_BYTES` of it, a multiple of 8, 16 to 4096."""
    return max(16, min(4096, (ROW_BLOCK_BYTES // max(k * itemsize, 1)) // 8 * 8))


class _Region:
    """One matrix ``X``'s region: its backward products ``[(k, r, g)]``, forward products ``[(k, w, z)]``, the
    row-local instructions between them, the sums block by block, the slots also written whole (``fulls``),
    the instructions placed after it (``defer``) and where in the tape it is placed (``anchor``)."""

    __slots__ = ("X", "backs", "fwd", "inner", "sums", "fulls", "defer", "anchor", "members")

    def __init__(self, X, backs, fwd, inner, sums, fulls, defer, anchor):
        self.X, self.backs, self.fwd, self.inner, self.sums = X, backs, fwd, inner, sums
        self.fulls, self.defer, self.anchor = fulls, defer, anchor
        self.members = set(inner) | set(sums) | {k for k, _w, _z in fwd} | {k for k, _r, _g in backs}


class RowTemplates:
    """Finding row regions (:meth:`_row_regions`) and emitting one (:meth:`_emit_region`)."""

    # ------------------------------------------------------------------ analysis
    def _products(self):
        """``(forward, backward)``: ``X @ w`` as ``{k: (X, w, z)}`` and ``X.T @ r`` as ``{k: (X, r, g)}``, the
        matrix-vector products of the tape in floating point of one dtype."""
        tape, sh = self.tape, self.shapes
        fwd, back = {}, {}
        for k in range(len(tape)):
            if k in self.const_instrs:
                continue
            name = name_of(int(tape.codes[k]))
            args, outs = [int(s) for s in tape.instr_args(k)], [int(s) for s in tape.instr_outs(k)]
            if len(args) != 2 or len(outs) != 1:
                continue
            a, b, o = args[0], args[1], outs[0]
            if not (self.dtypes[a] == self.dtypes[b] == self.dtypes[o] and self.dtypes[o] in ("float64", "float32")):
                continue
            if name in ("MATMUL", "DOT"):
                if len(sh[a]) == 2 and len(sh[b]) == 1 and len(sh[o]) == 1:
                    fwd[k] = (a, b, o)
                elif len(sh[a]) == 1 and len(sh[b]) == 2 and len(sh[o]) == 1:
                    back[k] = (b, a, o)
            elif name == "EINSUM":
                op = tape.ops[k]
                la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
                if len(la) != len(sh[a]) or len(lb) != len(sh[b]) or len(lo) != len(sh[o]):
                    continue
                if len(la) == 2 and la[0] != la[1] and lb == (la[1],) and lo == (la[0],):
                    fwd[k] = (a, b, o)
                elif len(la) == 2 and la[0] != la[1] and lb == (la[0],) and lo == (la[1],):
                    back[k] = (a, b, o)
                elif len(lb) == 2 and lb[0] != lb[1] and la == (lb[0],) and lo == (lb[1],):
                    back[k] = (b, a, o)
        return fwd, back

    def _row_local(self, k, m):
        """Instruction ``k`` computes its one output, a vector of ``m`` rows, row by row from vectors of ``m``
        rows and scalars."""
        from tapegrad.tape.fuse import _member

        tape = self.tape
        outs = [int(s) for s in tape.instr_outs(k)]
        if len(outs) != 1 or self.shapes[outs[0]] != (m,) or k in self.const_instrs:
            return False
        if any(self.shapes[int(s)] not in ((m,), ()) for s in tape.instr_args(k)):
            return False
        if name_of(int(tape.codes[k])) in _ROW_LOCAL:
            return True
        mem = _member(tape, k, self.shapes, self.dtypes)
        return mem is not None and mem.kind != "roll"

    def _row_regions(self):
        """The row regions of this tape worth blocking (see the module), at most one per matrix."""
        if self.prefix or self.hoist is not None:
            return []
        fwd, back = self._products()
        if not fwd or not back:
            return []
        tape = self.tape
        n = len(tape)
        outs_of = [[int(s) for s in tape.instr_outs(k)] for k in range(n)]
        args_of = [[int(s) for s in tape.instr_args(k)] for k in range(n)]
        vargs = [[s for s in args_of[k] if s not in shape_only_args(tape, k)] for k in range(n)]
        regions = []
        for X in dict.fromkeys(X for X, _r, _g in back.values()):
            m, kc = self.shapes[X]
            itemsize = np.dtype(self.dtypes[X]).itemsize
            if not worth_a_region(m, kc, itemsize, self.threads):
                continue
            backs = sorted((kb, r, g) for kb, (Xb, r, g) in back.items() if Xb == X)
            anc = set()  # instructions whose values some r depends on
            todo = [r for _kb, r, _g in backs]
            while todo:
                s = todo.pop()
                k = self.producer.get(s)
                if k is None or k in anc or k in self.const_instrs:
                    continue
                anc.add(k)
                todo.extend(vargs[k])
            F = sorted(kf for kf, (Xf, _w, _z) in fwd.items() if Xf == X and kf in anc)
            if not F:
                continue
            made = {fwd[kf][2] for kf in F}  # slots computed from the forward products
            desc = set()
            for k in range(min(F), n):
                if k not in F and k not in self.const_instrs and any(s in made for s in vargs[k]):
                    desc.add(k)
                    made.update(outs_of[k])
            inner = sorted(desc & anc - {kb for kb, _r, _g in backs})
            if any(fwd[kf][1] in made for kf in F) or not all(self._row_local(k, m) for k in inner):
                continue
            mine = {fwd[kf][2] for kf in F} | {s for k in inner for s in outs_of[k]}
            backs = [(kb, r, g) for kb, r, g in backs if r in mine]  # (the others read no row of a product)
            if not backs:
                continue
            members = set(inner) | set(F) | {kb for kb, _r, _g in backs}
            gs = {g for _kb, _r, g in backs}
            # row-local instructions that read the region's values (and values made before it) join it: the
            # cost's terms, whose sum is then taken block by block
            dep = set(mine) | gs
            for k in range(min(F) + 1, n):
                if k in members or k in self.const_instrs or not any(s in dep for s in vargs[k]):
                    continue
                if self._row_local(k, m) and all(s in mine or s not in dep for s in vargs[k]):
                    inner.append(k)
                    members.add(k)
                    mine.update(outs_of[k])
                dep.update(outs_of[k])
            inner.sort()
            ext = {s for k in inner for s in vargs[k]} - mine
            if any(s in self.tree_root for s in mine | gs | ext):  # (a tree's value exists once it is flushed)
                continue
            sums = [k for k in range(n) if k not in members and k not in self.const_instrs
                    and name_of(int(tape.codes[k])) == "SUM" and len(args_of[k]) == 1 and args_of[k][0] in mine
                    and self.shapes[outs_of[k][0]] == () and self.dtypes[outs_of[k][0]] in ("float64", "float32")]
            members |= set(sums)
            fulls = sorted(s for s in mine if s in self.pinned
                           or any(k not in members for k in self.value_readers.get(s, ())))
            # instructions before the region's end that read its values move after it (by value: the
            # gradient's seed, ones_like(cost), reads the cost's shape only)
            last = max(members)
            produced = set(mine) | gs | {outs_of[k][0] for k in sums}
            defer = []
            for k in range(last):
                if k not in members and any(s in produced for s in vargs[k]):
                    defer.append(k)
                    produced.update(outs_of[k])
            # ... which must not feed the region itself (then it is not one)
            if any(self.producer.get(s) in defer for k in members for s in vargs[k]):
                continue
            regions.append(_Region(X, backs, [(kf, fwd[kf][1], fwd[kf][2]) for kf in F], inner, sums, fulls,
                                   defer, last))
        # regions must not overlap
        used, out = set(), []
        for reg in regions:
            mine = reg.members | set(reg.defer)
            if not mine & used:
                out.append(reg)
                used |= mine
        return out

    def _order(self, regions):
        """The instructions in the order they are placed: each region's members at its anchor (one entry,
        the region), the instructions it defers right after it, the rest as in the tape."""
        n = len(self.tape)
        skip = set()
        at = {}
        for reg in regions:
            skip |= reg.members | set(reg.defer)
            at[reg.anchor] = reg
        order = []
        for k in range(n):
            if k in at:
                order.append(at[k])
                order.extend(at[k].defer)
            elif k not in skip:
                order.append(k)
        return order

    # ------------------------------------------------------------------ emission
    def _elem(self, loc, idx):
        """Source of element ``idx`` (a source expression) of the 1-d ``loc``."""
        if loc.lit is not None:
            return loc.lit
        st = loc.strides[0] if loc.shape and loc.shape[0] != 1 else 0
        return f"{loc.buf}[nn({_off_add(loc.off, f'{idx} * {st}' if st else 0)})]"

    def _region_sub(self, reg):
        """The region's elementwise part as a sub-tape: ``(tape, slot map, its input slots, the inputs it reads
        only for their shape)``.  Its inputs are the forward products' outputs, then the slots made before."""
        from tapegrad.compile.program_chain import sub_tape

        tape = self.tape
        instrs = sorted(set(reg.inner) | set(reg.sums))
        zs = [z for _k, _w, z in reg.fwd]
        made = set(zs) | {int(s) for k in instrs for s in tape.instr_outs(k)}
        ext, by_value = [], set()
        for k in instrs:
            shape_only = shape_only_args(tape, k)
            for s in tape.instr_args(k):
                s = int(s)
                if s not in shape_only:
                    by_value.add(s)
                if s not in made and s not in ext:
                    ext.append(s)
        outputs = [r for _kb, r, _g in reg.backs] + [int(tape.instr_outs(k)[0]) for k in reg.sums] + list(reg.fulls)
        sub, used = sub_tape(tape, np.asarray(instrs, np.int64), zs + ext, outputs)
        return sub, used, zs + ext, set(ext) - by_value

    def _region_body(self, reg, part, nrows, r0, zbufs, hoist):
        """Lines of the elementwise part of one block of ``nrows`` rows from row ``r0`` (a source expression),
        and the locs of the sub-tape's outputs."""
        from tapegrad.compile.program_gen import _Gen

        sub, used, inputs, shape_only = part
        m = self.shapes[reg.X][0]
        shapes = [(nrows,) if self.shapes[s] == (m,) else self.shapes[s] for s in used]
        root = self.root
        root.n_sub += 1
        g = _Gen(sub, shapes, [self.dtypes[s] for s in used], {}, [], self.node)
        g.prefix = f"q{root.n_sub}_"
        g.root = root
        g.hoist = hoist
        views = []
        for j, s in enumerate(inputs):
            if s in zbufs:
                loc = _Loc((nrows,), buf=zbufs[s])
            elif s in shape_only:
                loc = _Loc(shapes[j], lit=_lit(0, self.dtypes[s]))
            elif self.shapes[s] == (m,):
                lx = self.loc[s]
                if lx.lit is not None:
                    loc = _Loc((nrows,), lit=lx.lit)
                elif m == 1 or lx.strides[0] == 0:
                    loc = _Loc((nrows,), buf=lx.buf, off=lx.off, strides=(0,))
                else:  # a view of the block's rows: its indices are known not to be negative (they vectorise)
                    st = lx.strides[0]
                    view = f"{g.prefix}v{j}"
                    start = _off_add(lx.off, f"{r0} * {st}")
                    views.append(f"{view} = {lx.buf}[{start}:{_off_add(start, (nrows - 1) * st + 1)}]")
                    loc = _Loc((nrows,), buf=view, strides=(st,))
            else:
                loc = self.loc[s]
            g.loc[j] = loc
        g.emit_tape()
        return [f"    {v}" for v in views] + g.lines, [g.loc[int(s)] for s in sub.output_slots]

    def _emit_region(self, reg):
        """Emit the region ``reg`` (at its anchor): the blocks of whole size (split between threads), the ragged
        last block, then the products and sums added up over the threads."""
        self.close()
        X = reg.X
        m, kc = self.shapes[X]
        dt = self.dtypes[X]
        acc = _ACC.get(dt, dt)
        rows = block_rows(kc, np.dtype(dt).itemsize)
        nb, tail = divmod(m, rows)
        lx = self.loc[X]
        if lx.lit is not None:
            raise Unsupported("a row region over a constant matrix")
        p = self.tmp("R")
        part = self._region_sub(reg)
        T = self.threads if nb >= 2 * self.threads else 1
        gnames = [self.fresh(g) for _kb, _r, g in reg.backs]
        for s in reg.fulls:
            self.fresh(s, keep=True)
        sums = [int(self.tape.instr_outs(k)[0]) for k in reg.sums]
        nback = len(reg.backs)
        self.emit(f"    {p}g = np.zeros(({T}, {nback}, {kc}), np.{acc})")  # per thread and product
        self.emit(f"    {p}s = np.zeros(({T}, {max(len(sums), 1)}), np.{acc})")
        self.emit(f"    {p}k = opaque({kc})")

        def block(header, ind, nrows, r0, t, hoist_at, hoist_ind):
            """Emit the ``header`` lines and a block under them at ``ind``; the block's allocations go before
            header line ``hoist_at``, at ``hoist_ind``."""
            start = len(self.lines)
            for line in header:
                self.emit(line)
            hoist = []
            self._region_block(reg, p, part, ind, nrows, r0, t, hoist)
            self.lines[start + hoist_at:start + hoist_at] = [hoist_ind + h for h in hoist]

        if nb > 0 and T > 1:  # (the block's buffers allocated per thread, inside the prange body)
            per = -(-nb // T)
            block([f"    for {p}t in prange({T}):",
                   f"        for {p}b in range({p}t * {per}, min({p}t * {per} + {per}, {nb})):",
                   f"            {p}r0 = {p}b * {rows}"], " " * 12, rows, f"{p}r0", f"{p}t", 1, " " * 8)
        elif nb > 0:
            block([f"    for {p}b in range({nb}):", f"        {p}r0 = {p}b * {rows}"], " " * 8, rows, f"{p}r0", 0, 0,
                  " " * 4)
        if tail:
            block([], " " * 4, tail, str(nb * rows), 0, 0, " " * 4)
        for q, gname in enumerate(gnames):  # the threads' partial products and sums, added in a fixed order
            self.emit(f"    for {p}j in range({kc}):")
            self.emit(f"        {p}a = np.{acc}(0)")
            self.emit(f"        for {p}t in range({T}):")
            self.emit(f"            {p}a += {p}g[{p}t, {q}, {p}j]")
            self.emit(f"        {gname}[{p}j] = np.{dt}({p}a)")
        for q, s in enumerate(sums):
            name = self.fresh(s)
            self.emit(f"    {p}a = np.{acc}(0)")
            self.emit(f"    for {p}t in range({T}):")
            self.emit(f"        {p}a += {p}s[{p}t, {q}]")
            self.emit(f"    {name}[0] = np.{self.dtypes[s]}({p}a)")

    def _region_block(self, reg, p, part, ind, nrows, r0, t, hoist_into):
        """Emit one block of ``nrows`` rows from row ``r0`` (source) at indentation ``ind``, adding into the
        partial products of thread ``t``; its allocations go to ``hoist_into``."""
        X = reg.X
        kc = self.shapes[X][1]
        dt = self.dtypes[X]
        acc = _ACC.get(dt, dt)
        lx = self.loc[X]
        x0, x1 = lx.strides
        zbufs = {z: f"{p}z{q}_{nrows}" for q, (_kf, _w, z) in enumerate(reg.fwd)}
        hoist_into.extend(f"{zb} = np.empty({nrows}, np.{dt})" for zb in zbufs.values())
        lines, out_locs = self._region_body(reg, part, nrows, r0, zbufs, hoist_into)
        i, j, a = f"{p}i", f"{p}j", f"{p}a"
        start = _off_add(lx.off, f"{r0} * {x0}")
        self.emit(f"{ind}{p}x = {lx.buf}[{start}:{_off_add(start, (nrows - 1) * x0 + (kc - 1) * x1 + 1)}]")
        xel = f"{p}x[{i} * {x0} + {j} * {x1}]"
        for _kf, w, z in reg.fwd:  # z_b = X_b @ w (over the opaque column count: see vmath.opaque)
            self.emit(f"{ind}for {i} in range({nrows}):")
            self.emit(f"{ind}    {a} = np.{acc}(0)")
            self.emit(f"{ind}    for {j} in range({p}k):")
            self.emit(f"{ind}        {a} += {xel} * {self._elem(self.loc[w], j)}")
            self.emit(f"{ind}    {zbufs[z]}[{i}] = {a}")
        for line in lines:
            self.emit(ind[4:] + line)
        # g += X_b.T @ r_b, eight rows per pass over g (one row at a time, the loads and stores of g were most
        # of the product's time: logistic regression, 1.1 ms against 0.7)
        main = nrows - nrows % 8
        for q, rloc in enumerate(out_locs[:len(reg.backs)]):
            if main:
                self.emit(f"{ind}for {i} in range(0, {main}, 8):")
                for u in range(8):
                    self.emit(f"{ind}    {a}{u} = {self._elem(rloc, f'({i} + {u})')}")
                terms = " + ".join(f"{a}{u} * {p}x[({i} + {u}) * {x0} + {j} * {x1}]" for u in range(8))
                self.emit(f"{ind}    for {j} in range({p}k):")
                self.emit(f"{ind}        {p}g[{t}, {q}, {j}] += {terms}")
            if main < nrows:
                self.emit(f"{ind}for {i} in range({main}, {nrows}):")
                self.emit(f"{ind}    {a} = {self._elem(rloc, i)}")
                self.emit(f"{ind}    for {j} in range({p}k):")
                self.emit(f"{ind}        {p}g[{t}, {q}, {j}] += {a} * {xel}")
        n_r = len(reg.backs)
        for q, loc in enumerate(out_locs[n_r:n_r + len(reg.sums)]):
            self.emit(f"{ind}{p}s[{t}, {q}] += {self._scalar(loc)}")
        for s, loc in zip(reg.fulls, out_locs[n_r + len(reg.sums):]):
            self.emit(f"{ind}for {i} in range({nrows}):")
            self.emit(f"{ind}    {self.loc[s].buf}[nn({_off_add(r0, i)})] = {self._elem(loc, i)}")

    def _scalar(self, loc):
        """Source of the value of the 0-d ``loc``."""
        return loc.lit if loc.lit is not None else f"{loc.buf}[{loc.off}]"
