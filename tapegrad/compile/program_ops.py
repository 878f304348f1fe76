"""Program-tier templates of the instructions that are not elementwise: views, fills, reductions,
basic-index writes, roll/join/stack, integer-array indexing, cumulative ops and tiles (a mixin of
:class:`tapegrad.compile.program_gen._Gen`; the products are :mod:`~tapegrad.compile.program_products`, the
per-group reductions (max/min, softmax, logsumexp, extremum masks, argmax) :mod:`~tapegrad.compile.program_groups`)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.kernels.steps import _dimshuffle_layout, _subtensor_layout, row_major
from tapegrad.compile.program_ir import (_ACC, Unsupported, _axis_strides, _Loc, _Loop, _lit, _mean_count, _Nest,
                                         _nest_index, _off_add, _read_strides, _sum_like_strides)


class OpTemplates:
    """``op_<name>(k, op, args, outs)`` per op code: emit the instruction's code and set its output locations."""

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

    def op_split(self, k, op, args, outs):
        """Each piece is a view of ``x`` along ``op.axis`` (the gradient of a ``join``)."""
        x = args[0]
        lx = self.loc[x]
        start = 0
        for o in outs:
            if lx.lit is not None:
                self.loc[o] = _Loc(self.shapes[o], lit=lx.lit)
                continue
            self._view(o, x, (start * lx.strides[op.axis], self.shapes[o], lx.strides))
            start += self.shapes[o][op.axis]

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
    def _identity_view(self, k, op, args, outs):
        self.loc[outs[0]] = self.loc[args[0]]

    op_specify_shape = _identity_view
    # gradient modifiers are the identity in values (the tape rewrites usually drop them already)
    op_zero_grad = op_disconnected_grad = op_consider_constant = _identity_view
    op_grad_clip = op_grad_scale = op_undefined_grad = _identity_view

    def _diag_layout(self, shape, strides, off, op):
        """``(offset, shape, strides)`` of the diagonal over ``(op.axis1, op.axis2)`` with ``op.offset`` of an array
        laid out as ``shape``/``strides`` from ``off``: the other axes, then the diagonal."""
        a1, a2, k = op.axis1, op.axis2, op.offset
        n = max(0, min(shape[a1], shape[a2] - k) if k >= 0 else min(shape[a1] + k, shape[a2]))
        start = k * strides[a2] if k >= 0 else -k * strides[a1]
        rest = [d for d in range(len(shape)) if d not in (a1, a2)]
        return (_off_add(off, start if n else 0), tuple(shape[d] for d in rest) + (n,),
                tuple(strides[d] for d in rest) + (strides[a1] + strides[a2],))

    def op_diagonal(self, k, op, args, outs):
        """``diagonal`` is a view (buffers are never written after they are made)."""
        x, o = args[0], outs[0]
        lx = self.loc[x]
        self._view(o, x, self._diag_layout(lx.shape, lx.strides, 0, op))

    def op_trace(self, k, op, args, outs):
        """The sum of the diagonal view, in the output dtype."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64") or self.loc[x].lit is not None:
            raise Unsupported(f"trace into {dt} or of a literal")
        lx = self.loc[x]
        off, shape, st = self._diag_layout(lx.shape, lx.strides, lx.off, op)
        buf = self.fresh(o, zero=True)
        if not int(np.prod(shape, dtype=np.int64)):
            return
        loop = _Nest(shape)
        ind = loop.open(self.emit)
        src = f"{lx.buf}[{loop.index(off, st)}]"
        self.emit(f"{ind}{buf}[{_nest_index(range(len(shape) - 1), shape)}] += np.{dt}({src})")

    def op_diag_embed(self, k, op, args, outs):
        """Zeros with ``g`` written on the diagonal (for ``trace``'s transpose, ``g`` along all of it)."""
        g, o = args[0], outs[0]
        oshape = self.shapes[o]
        buf = self.fresh(o, zero=True)
        off, shape, st = self._diag_layout(oshape, row_major(oshape), 0, op)
        if not int(np.prod(shape, dtype=np.int64)):
            return
        gst = self.strides_for(g, shape[:-1]) + [0] if op.trace else self.strides_for(g, shape)
        loop = _Nest(shape)
        ind = loop.open(self.emit)
        self.emit(f"{ind}{buf}[{loop.index(off, st)}] = {self.read(g, loop, strides=gst, as_dt=self.dtypes[o])}")

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

    def op_prod(self, k, op, args, outs):
        """``prod`` over axes: a product into a buffer of ones, in the output dtype (int64 wraps as NumPy)."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"prod into {dt}")
        ws, _ = self._sum_axes(k, op, x, o)
        xshape = self.loc[x].shape
        buf = self.fresh(o)
        self.emit(f"    {buf}[:] = 1")
        if int(np.prod(xshape, dtype=np.int64)):
            loop = _Loop(xshape, [self.strides_for(x, xshape), list(ws)])
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{loop.index(0, ws)}] *= {self.read(x, loop, as_dt=dt)}")

    def _scan_nest(self, o, axis, reverse, first, combine):
        """Fill ``o`` by a loop nest in C order over its shape (``axis`` counting down with ``reverse``) where each
        element is ``first(loop)`` at the start of the axis and ``combine(previous, loop)`` after it, so inner axes
        vectorise; the sources come from ``self.read`` at the loop's position."""
        shape = self.shapes[o]
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        step = int(np.prod(shape[axis + 1:], dtype=np.int64))
        loop = _Nest(shape)
        ind = loop.open(self.emit, reverse=axis if reverse else None)
        at = _nest_index(range(len(shape)), shape)
        prev = f"{buf}[{at} {'+' if reverse else '-'} {step}]"
        self.emit(f"{ind}if i{axis} == {shape[axis] - 1 if reverse else 0}:")
        self.emit(f"{ind}    {buf}[{at}] = {first(loop)}")
        self.emit(f"{ind}else:")
        self.emit(f"{ind}    {buf}[{at}] = {combine(prev, loop)}")

    def _cumulative(self, k, op, args, outs, how):
        """``cumsum``/``cumprod`` along ``op.axis`` (``reverse``: from the end): each element combines the previous
        one along the axis with its input (:meth:`_scan_nest`)."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"cumulative op into {dt}")
        shape = self.shapes[o]
        st = self.strides_for(x, shape)

        def val(loop):
            return self.read(x, loop, strides=st, as_dt=dt)

        self._scan_nest(o, op.axis % len(shape), getattr(op, "reverse", False), val,
                        lambda prev, loop: f"{prev} {how} {val(loop)}")

    def op_cumsum(self, k, op, args, outs):
        self._cumulative(k, op, args, outs, "+")

    def op_cumprod(self, k, op, args, outs):
        self._cumulative(k, op, args, outs, "*")

    def op_linrec(self, k, op, args, outs):
        """``s_i = b_i + a_i s_{i-1}`` (``reverse``: ``b_i + a_{i+1} s_{i+1}``) along ``op.axis``, the state's product
        an absolute-zero multiply (:meth:`_scan_nest`), the coefficient read one step ahead when reversed."""
        from tapegrad.compile.fused import _convert

        a, b, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32"):
            raise Unsupported(f"linrec into {dt}")
        shape = self.shapes[o]
        axis = op.axis % len(shape)
        sb, la, sa = self.strides_for(b, shape), self.loc[a], self.strides_for(a, shape)

        def bval(loop):
            return self.read(b, loop, strides=sb, as_dt=dt)

        ahead = sa[axis] if op.reverse else 0

        def aval(loop):
            src = la.lit if la.lit is not None else f"{la.buf}[{loop.index(la.off + ahead, sa)}]"
            return _convert(src, self.dtypes[a], dt)

        self._scan_nest(o, axis, op.reverse, bval, lambda prev, loop: f"{bval(loop)} + s_azmul({prev}, {aval(loop)})")

    def _tile_loops(self, reps, xshape):
        """Open loops ``r<d>, j<d>`` (tile, then position in it) per axis, in C order of the tiled array; returns
        ``(indent, flat index into the tiled array, per-axis index of the tile's element)``."""
        ind = "    "
        for d, (r, n) in enumerate(zip(reps, xshape)):
            self.emit(f"{ind}for r{d} in range({r}):")
            self.emit(f"{ind}    for j{d} in range({n}):")
            ind += "        "
        tshape = tuple(r * n for r, n in zip(reps, xshape))
        st = row_major(tshape)
        at = " + ".join([f"(r{d} * {n} + j{d}) * {st[d]}" for d, n in enumerate(xshape)] or ["0"])
        return ind, at

    def op_tile(self, k, op, args, outs):
        x, o = args[0], outs[0]
        xshape = self.shapes[x]
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        ind, at = self._tile_loops(op.reps, xshape)
        loc = self.loc[x]
        src = loc.lit if loc.lit is not None else \
            f"{loc.buf}[{' + '.join([str(loc.off)] + [f'j{d} * {s_}' for d, s_ in enumerate(loc.strides)])}]"
        self.emit(f"{ind}{buf}[{at}] = {src}")

    def op_tile_sum(self, k, op, args, outs):
        """The sum of ``g``'s tiles (the transpose of ``tile``), accumulated in tile order as NumPy's sum."""
        g, o = args[0], outs[0]
        xshape = self.shapes[o]
        if self.dtypes[o] not in ("float64", "float32", "int64"):
            raise Unsupported(f"tile_sum into {self.dtypes[o]}")
        buf = self.fresh(o, zero=True)
        if not self.loc[o].size or not all(op.reps):
            return
        lg = self._materialize(g)
        ind, at = self._tile_loops(op.reps, xshape)
        src = lg.lit if lg.lit is not None else f"{lg.buf}[{_off_add(lg.off, at)}]"
        self.emit(f"{ind}{buf}[{_nest_index(range(len(xshape)), xshape, 'j')}] += {src}")

    def _logical(self, k, op, args, outs, all_):
        x, o = args[0], outs[0]
        ws, _ = self._sum_axes(k, op, x, o)
        xshape = self.loc[x].shape
        buf = self.fresh(o)
        self.emit(f"    {buf}[:] = {all_}")
        if int(np.prod(xshape, dtype=np.int64)):
            loop = _Loop(xshape, [self.strides_for(x, xshape), list(ws)])
            ind = loop.open(self.emit, "    ")
            src = f"({self.read(x, loop)}) != 0"
            w = f"{buf}[{loop.index(0, ws)}]"
            self.emit(f"{ind}{w} = {w} and {src}" if all_ else f"{ind}{w} = {w} or {src}")

    def op_all(self, k, op, args, outs):
        self._logical(k, op, args, outs, True)

    def op_any(self, k, op, args, outs):
        self._logical(k, op, args, outs, False)

    def op_sum(self, k, op, args, outs):
        x, o = args[0], outs[0]
        ws, scale = self._sum_axes(k, op, x, o)
        self._accumulate(x, o, ws, scale)

    op_mean = op_sum

    def op_sum_like(self, k, op, args, outs):
        g, o = args[0], outs[0]
        ws = _sum_like_strides(self.loc[g].shape, self.shapes[o])
        if ws is None:
            raise Unsupported("sum_like to a bigger rank")
        self._accumulate(g, o, ws)

    def op_broadcast_reduced(self, k, op, args, outs):
        g, o = args[0], outs[0]
        axes = self._reduced_axes(k, op)
        oshape = self.shapes[o]
        lg = self.loc[g]
        if lg.lit is not None:
            st = [0] * len(oshape)
        else:
            st = _axis_strides(len(oshape), axes, [s if n != 1 else 0 for n, s in zip(lg.shape, lg.strides)],
                               op.keepdims)
        scale = None
        if op.mean:
            cnt = _mean_count(oshape, axes, op.ddof)
            if cnt is None:
                raise Unsupported("mean over an empty axis")
            scale = _lit(cnt, self.dtypes[o])
        elif self.dtypes[g] == self.dtypes[o] and self._final(g):
            # a view with stride 0 on the broadcast axes: the loops that read it read g (a softmax gradient's
            # row sums broadcast over a 2048 x 100 matrix were two passes writing the matrix)
            self.loc[o] = (_Loc(oshape, lit=lg.lit) if lg.lit is not None
                           else _Loc(oshape, buf=lg.buf, off=lg.off, strides=st))
            return
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
        if (how == "+=" and o in self.tree_root and list(rst) == [1]
                and self._tree_defer(buf, off, rshape, y, self.dtypes[o], strides=yst)):
            return  # added with the tree's other windows, in one pass (``_tree_flush``)
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
        n = int(np.prod(shape, dtype=np.int64))
        lit = self._literal_value(sh)
        if len(shape) == 1 and n and lit is not None and lit == int(lit):
            # a 1-d roll by a literal shift is the join of two windows of x: x[n - r:] then x[:n - r]
            r = int(lit) % n
            st = lx.strides[0]
            pieces = [(0, r, _Loc((r,), buf=lx.buf, off=_off_add(lx.off, (n - r) * st), strides=(st,))),
                      (r, n - r, _Loc((n - r,), buf=lx.buf, off=lx.off, strides=(st,)))]
            self._join_pieces(o, [p for p in pieces if p[1]], self._final(x))
            return
        buf = self.fresh(o)
        if n == 0:
            return
        sv = self.tmp("r")
        if op.axis is None:
            if not lx.contiguous():
                raise Unsupported("roll of a strided array over all axes")
            self.emit(f"    {sv} = np.int64({shift}) % {n}")
            self.emit(f"    for i in range({n}):")
            self.emit(f"        j = i - {sv}")
            self.emit("        if j < 0:")
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

    def _join_pieces(self, o, pieces, stable):
        """Copy the 1-d windows ``pieces`` (``(start, length, loc)``, in order, covering ``o``) into ``o``'s fresh
        buffer, and keep them in ``seg_src``: a fused group that is the only reader of ``o`` reads the windows
        in place instead, segment by segment, and the copy is dropped (``close``, ``_segmented_reads``).
        ``stable``: the windows' buffers hold their final values (not a partial accumulation tree)."""
        buf = self.fresh(o)
        lo = len(self.lines)
        for start, n, loc in pieces:
            src = loc.lit if loc.lit is not None else f"{loc.buf}[{_off_add(loc.off, f'i * {loc.strides[0]}')}]"
            self.emit(f"    for i in range({n}):")
            self.emit(f"        {buf}[{start} + i] = {src}")
        if stable and not self.prefix and self.hoist is None and self.lines[lo - 1].startswith(f"    {buf} = "):
            self.seg_src[o] = (lo - 1, tuple(self.lines[lo - 1:]), pieces)

    def op_join(self, k, op, args, outs):
        o = outs[0]
        shape = self.shapes[o]
        if len(shape) == 1 and all(self.dtypes[x] == self.dtypes[o] and len(self.loc[x].shape) == 1 for x in args):
            pieces, start = [], 0
            for x in args:
                lx = self.loc[x]
                if lx.shape[0]:
                    pieces.append((start, lx.shape[0], lx))
                start += lx.shape[0]
            if pieces:
                self._join_pieces(o, pieces, all(self._final(x) for x in args))
                return
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

    # ---- integer-array indexing along one axis (take, and its writes and scatters)
    def _take_loops(self, op, xshape, idx, shape):
        """Open loops ``i0, i1, ...`` over the indexed ``shape`` (``xshape[:axis] + idx.shape + xshape[axis+1:]``)
        and set ``j`` to the index at the current position, normalised (IndexError when out of range); returns
        ``(indent, flat index into a C-order array of xshape at j, flat position in idx)``."""
        axis, n = op.axis, xshape[op.axis]
        r_idx = len(self.shapes[idx])
        ind = _Nest(shape).open(self.emit)
        pre, mid, post = range(axis), range(axis, axis + r_idx), range(axis + r_idx, len(shape))
        li = self._materialize(idx)
        pos = _nest_index(mid, shape)
        self.emit(f"{ind}j = np.int64({li.lit if li.lit is not None else f'{li.buf}[{_off_add(li.off, pos)}]'})")
        self.emit(f"{ind}if j < 0:")
        self.emit(f"{ind}    j += {n}")
        self.emit(f"{ind}if j < 0 or j >= {n}:")
        self.emit(f"{ind}    raise IndexError({f'{op.code}: an index is out of bounds for axis {axis} with length {n}'!r})")
        q = int(np.prod(xshape[axis + 1:], dtype=np.int64))
        return ind, f"(({_nest_index(pre, shape)}) * {n} + j) * {q} + {_nest_index(post, shape)}", pos

    def op_advanced_subtensor1(self, k, op, args, outs):
        """``take(x, idx, axis)``; with ``last_only``, a repeated index keeps only its last position's value."""
        x, idx, o = args[0], args[1], outs[0]
        xshape, shape = self.shapes[x], self.shapes[o]
        lx = self._materialize(x)
        n = xshape[op.axis]
        last = None
        if op.last_only:  # the last position of each index value (out-of-range ones raise in the main loop)
            li = self._materialize(idx)
            last = self.tmp("last")
            self.emit(f"    {last} = np.full({max(n, 1)}, -1, np.int64)")
            self.emit(f"    for p in range({li.size}):")
            src = li.lit if li.lit is not None else f"{li.buf}[{_off_add(li.off, 'p')}]"
            self.emit(f"        j = np.int64({src})")
            self.emit(f"        j = j + {n} if j < 0 else j")
            self.emit(f"        if 0 <= j < {n}:")
            self.emit(f"            {last}[j] = p")
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        ind, at, pos = self._take_loops(op, xshape, idx, shape)
        val = lx.lit if lx.lit is not None else f"{lx.buf}[{_off_add(lx.off, at)}]"
        if last is not None:
            val = f"({val} if {last}[j] == {pos} else {_lit(0, self.dtypes[o])})"
        self.emit(f"{ind}{buf}[{_nest_index(range(len(shape)), shape)}] = {val}")

    op_advanced_subtensor1_last = op_advanced_subtensor1

    def _advanced_write(self, k, op, args, outs):
        """``x`` (zeros for the scatters) with ``y`` added (inc, scatter: repeats accumulate) or written (set,
        scatter_set: in index order, so the last repeat wins) at ``take(., idx, axis)``'s positions."""
        x, y, idx = args
        o = outs[0]
        xshape = self.shapes[o]
        shape = tuple(xshape[:op.axis]) + tuple(self.shapes[idx]) + tuple(xshape[op.axis + 1:])
        if op.mode.startswith("scatter"):
            buf = self.fresh(o, zero=True)
        else:
            self._broadcast_copy(x, o)
            buf = self.loc[o].buf
        if not int(np.prod(shape, dtype=np.int64)):
            return
        st = _read_strides(self.loc[y], shape) if self.loc[y].lit is None else [0] * len(shape)
        ind, at, _ = self._take_loops(op, xshape, idx, shape)
        val = self.read(y, _Nest(shape), strides=st, as_dt=self.dtypes[o])
        self.emit(f"{ind}{buf}[{at}] {'+=' if op.mode in ('inc', 'scatter') else '='} {val}")

    op_advanced_inc_subtensor1 = op_advanced_set_subtensor1 = _advanced_write
    op_advanced_scatter1 = op_advanced_scatter1_set = _advanced_write
