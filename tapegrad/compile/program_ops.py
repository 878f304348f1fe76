"""Program-tier templates of the instructions that are not elementwise: views, fills, reductions,
basic-index writes, roll/join/stack and the dot family (a mixin of :class:`tapegrad.compile.program_gen._Gen`)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.kernels.steps import _dimshuffle_layout, _subtensor_layout, row_major
from tapegrad.compile.program_ir import (_ACC, THIN_K, THIN_MIN, Unsupported, _axis_strides, _Loc, _Loop, _lit,
                                         _mean_count, _off_add, _read_strides, _sum_like_strides)


class _DotMember:
    """A product of matrices M x K and K x N with a short contraction (K <= ``THIN_K``, like ``dP @ W2.T`` of a
    small output layer's gradient) as a member of a fused group over M x N: its value at ``(i, j)`` is the sum
    of K products read from the operands' buffers, so the product is never stored and read back (BLAS spends
    most of such a call writing it).  ``a``/``b``: ``(buffer, offset, step per term, loop strides)``."""

    kind = "dot"
    data_args = ()
    load_dtypes = ()

    def __init__(self, k, out, out_dtype, a, b, n_terms):
        self.k, self.out, self.out_dtype = k, out, out_dtype
        self.a, self.b, self.n_terms = a, b, n_terms

    def strides(self):
        return [list(self.a[3]), list(self.b[3])]


def _nest_index(dims, shape):
    """Flat C-order index over the loop variables ``i<d>`` of ``dims`` (axes of ``shape``)."""
    dims = list(dims)
    st = row_major(tuple(shape[d] for d in dims))
    return " + ".join([f"i{d} * {s_}" for d, s_ in zip(dims, st)] or ["0"])


class _Nest:
    """A loop nest ``i0, i1, ...`` over every axis of ``shape`` (for :meth:`_Gen.read`)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def index(self, off, strides):
        return " + ".join([str(off)] + [f"i{d} * {s_}" for d, s_ in enumerate(strides) if s_])


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

    def _cumulative(self, k, op, args, outs, how):
        """``cumsum``/``cumprod`` along ``op.axis`` (``reverse``: from the end): a loop nest in C order where each
        element combines the previous one along the axis with its input, so inner axes vectorise."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"cumulative op into {dt}")
        shape = self.shapes[o]
        axis = op.axis % len(shape)
        rev = getattr(op, "reverse", False)
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        st = self.strides_for(x, shape)
        step = int(np.prod(shape[axis + 1:], dtype=np.int64))
        ind = "    "
        for d, nd in enumerate(shape):
            rng = f"{nd - 1}, -1, -1" if rev and d == axis else f"{nd}"
            self.emit(f"{ind}for i{d} in range({rng}):")
            ind += "    "
        at = _nest_index(range(len(shape)), shape)
        val = self.read(x, _Nest(shape), strides=st, as_dt=dt)
        edge = f"{shape[axis] - 1}" if rev else "0"
        prev = f"{buf}[{at} {'+' if rev else '-'} {step}]"
        self.emit(f"{ind}if i{axis} == {edge}:")
        self.emit(f"{ind}    {buf}[{at}] = {val}")
        self.emit(f"{ind}else:")
        self.emit(f"{ind}    {buf}[{at}] = {prev} {how} {val}")

    def op_cumsum(self, k, op, args, outs):
        self._cumulative(k, op, args, outs, "+")

    def op_cumprod(self, k, op, args, outs):
        self._cumulative(k, op, args, outs, "*")

    def op_sum(self, k, op, args, outs):
        x, o = args[0], outs[0]
        ws, scale = self._sum_axes(k, op, x, o)
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

    # ---- softmax family, logsumexp, extremum_mask: per-group passes over a scratch of one element per group
    def _per_group(self, x, axes, what, dtypes=("float64", "float32")):
        """``(groups, strides into a group array per axis of x, loop over x)`` for a reduction of ``x`` over
        ``axes`` (the group array is row-major over the kept axes, with or without keepdims)."""
        lx = self.loc[x]
        if lx.lit is not None or self.dtypes[x] not in dtypes:
            raise Unsupported(f"{what} of {'a literal' if lx.lit is not None else self.dtypes[x]}")
        shape = lx.shape
        if int(np.prod(shape, dtype=np.int64)) == 0:
            raise Unsupported(f"zero-size {what}")
        axes = {a % len(shape) for a in axes} if shape else set()
        kept = [n for d, n in enumerate(shape) if d not in axes]
        ws = _axis_strides(len(shape), axes, row_major(tuple(kept)), False)
        loop = _Loop(shape, [self.strides_for(x, shape), list(ws), list(row_major(shape))])
        return max(int(np.prod(kept, dtype=np.int64)), 1), ws, loop

    def _group_shift(self, x, n, ws, loop):
        """A scratch of each group's max, made 0 where it is not finite (NumPy's reference shift); its name."""
        dt = self.dtypes[x]
        m = self.scratch(n, dt)
        self.emit(f"    {m}[:] = np.{dt}(-np.inf)")
        r = loop.index(0, ws)
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{m}[{r}] = s_maximum({m}[{r}], {self.read(x, loop)})")
        self.emit(f"    for i in range({n}):")
        self.emit(f"        {m}[i] = {m}[i] if np.isfinite({m}[i]) else np.{dt}(0)")
        return m

    def _group_sum(self, n, dt):
        """A zeroed scratch for per-group sums (float32 accumulates in float64); its name."""
        tot = self.scratch(n, _ACC.get(dt, dt))
        self.emit(f"    {tot}[:] = 0")
        return tot

    def op_sum_broadcast(self, k, op, args, outs):
        """``x.sum(axis, keepdims=True)`` broadcast back to ``x``'s shape (the softmax gradient's ``S``)."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        n, ws, loop = self._per_group(x, op.axis, "sum_broadcast", (dt,))
        buf = self.fresh(o)
        red = self._group_sum(n, dt)
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{red}[{loop.index(0, ws)}] += {self.read(x, loop, as_dt=_ACC.get(dt, dt))}")
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{buf}[{loop.out_index()}] = np.{dt}({red}[{loop.index(0, ws)}])")

    def op_softmax(self, k, op, args, outs):
        """``exp(z) / sum(exp(z))``, ``z = x - max`` per slice (a non-finite max shifts by 0, as NumPy's
        reference does), in three passes: max, exp and its sum, divide (or ``z - log(sum)`` for log_softmax)."""
        x, o = args[0], outs[0]
        log = op.code == "LOG_SOFTMAX"
        dt = self.dtypes[o]
        n, ws, loop = self._per_group(x, op.axis, "log_softmax" if log else "softmax", (dt,))
        buf = self.fresh(o)
        m = self._group_shift(x, n, ws, loop)
        tot = self._group_sum(n, dt)
        r, oi = loop.index(0, ws), loop.out_index()
        ind = loop.open(self.emit, "    ")
        z = f"({self.read(x, loop)} - {m}[{r}])"
        if log:
            self.emit(f"{ind}{tot}[{r}] += np.exp({z})")
            self.emit(f"    for i in range({n}):")
            self.emit(f"        {tot}[i] = np.log(np.{dt}({tot}[i]))")
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{oi}] = {z} - {tot}[{r}]")
        else:
            e = self.tmp("e")
            self.emit(f"{ind}{e} = np.exp({z})")
            self.emit(f"{ind}{buf}[{oi}] = {e}")
            self.emit(f"{ind}{tot}[{r}] += {e}")
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{oi}] = {buf}[{oi}] / np.{dt}({tot}[{r}])")

    op_log_softmax = op_softmax

    def op_logsumexp(self, k, op, args, outs):
        """``m + log(sum(exp(x - m)))`` per group, ``m`` the max (0 where it is not finite), as NumPy's
        reference computes it; the result's flat layout is the group order with or without kept dims."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        n, ws, loop = self._per_group(x, op._norm(self.node(k).inputs[0]), "logsumexp", (dt,))
        buf = self.fresh(o)
        m = self._group_shift(x, n, ws, loop)
        tot = self._group_sum(n, dt)
        r = loop.index(0, ws)
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{tot}[{r}] += np.exp({self.read(x, loop)} - {m}[{r}])")
        self.emit(f"    for i in range({n}):")
        self.emit(f"        {buf}[i] = np.{dt}(np.log(np.{dt}({tot}[i]))) + {m}[i]")

    def op_extremum_mask(self, k, op, args, outs):
        """True at the first max (min) of each group in C order, a NaN counting as the extremum (the
        gradient of ``max``/``min``): one pass keeps each group's best value and flat index, a second marks."""
        from tapegrad.ops.reduce import _axes

        x, o = args[0], outs[0]
        dt = self.dtypes[x]
        if self.dtypes[o] != "bool" or self.shapes[x] == ():
            raise Unsupported(f"extremum_mask of {self.shapes[x]} into {self.dtypes[o]}")
        axes = _axes(op.axis, self.node(k).inputs[0], "extremum_mask")
        n, ws, loop = self._per_group(x, axes, "extremum_mask", ("float64", "float32", "int64"))
        buf = self.fresh(o)
        best, at = self.scratch(n, dt), self.scratch(n, "int64")
        self.emit(f"    {at}[:] = -1")
        r, v = loop.index(0, ws), self.tmp("v")
        cmp = ">" if op.which == "max" else "<"
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{v} = {self.read(x, loop)}")
        self.emit(f"{ind}if {at}[{r}] < 0 or {v} {cmp} {best}[{r}] or ({v} != {v} and {best}[{r}] == {best}[{r}]):")
        self.emit(f"{ind}    {best}[{r}] = {v}")
        self.emit(f"{ind}    {at}[{r}] = {loop.out_index()}")
        self.emit(f"    {buf}[:] = False")
        self.emit(f"    for i in range({n}):")
        self.emit(f"        {buf}[{at}[i]] = True")

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

    # ---- integer-array indexing along one axis (take, and its writes and scatters)
    def _take_loops(self, op, xshape, idx, shape):
        """Open loops ``i0, i1, ...`` over the indexed ``shape`` (``xshape[:axis] + idx.shape + xshape[axis+1:]``)
        and set ``j`` to the index at the current position, normalised (IndexError when out of range); returns
        ``(indent, flat index into a C-order array of xshape at j, flat position in idx)``."""
        axis, n = op.axis, xshape[op.axis]
        r_idx = len(self.shapes[idx])
        ind = "    "
        for d, m in enumerate(shape):
            self.emit(f"{ind}for i{d} in range({m}):")
            ind += "    "
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

    # ---- dot family (BLAS through np.dot; short contractions as fused-group members)
    def _thin_dot(self, k, name, args, outs):
        """For a product for :class:`_DotMember` (matrices of one float dtype as ``dot``/``matmul`` or an einsum of
        one contracted label, at most ``THIN_K`` terms, an output of at least ``THIN_MIN`` elements and 8 columns
        for the loop to vectorise over, operands in buffers): ``(left, right)``, each ``(slot, stride along
        the output axis, stride along the terms)``; else None."""
        if name not in ("DOT", "MATMUL", "EINSUM") or len(args) != 2 or len(outs) != 1:
            return None
        a, b, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if (dt not in ("float64", "float32") or self.dtypes[a] != dt or self.dtypes[b] != dt
                or any(len(self.shapes[s]) != 2 for s in (a, b, o))
                or any(s not in self.loc or self.loc[s].lit is not None for s in (a, b))):
            return None
        sa, sb = self.loc[a].strides, self.loc[b].strides
        if name != "EINSUM":
            left, right = (a, sa[0], sa[1]), (b, sb[1], sb[0])
        else:
            op = self.tape.ops[k]
            la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
            con = [c for c in la if c in lb]
            if len(la) != 2 or len(lb) != 2 or len(con) != 1 or con[0] in lo or len(set(la + lb)) != 3:
                return None
            (fa,), (fb,), c = [x for x in la if x != con[0]], [x for x in lb if x != con[0]], con[0]
            if lo not in ((fa, fb), (fb, fa)):
                return None
            pa = (a, sa[la.index(fa)], sa[la.index(c)])
            pb = (b, sb[lb.index(fb)], sb[lb.index(c)])
            left, right = (pa, pb) if lo == (fa, fb) else (pb, pa)
        m, n = self.shapes[o]
        kk = self.shapes[a][1] if name != "EINSUM" else self.shapes[a][la.index(c)]
        if not (1 <= kk <= THIN_K and m >= 2 and n >= 8 and m * n >= THIN_MIN):
            return None
        return left, right

    def _dot_member(self, k, o, thin):
        """The :class:`_DotMember` of instruction ``k`` from :meth:`_thin_dot`'s ``thin`` (operands available
        before the group's loop).  The right operand is first copied to a K x N C-order scratch when its rows
        are strided (a transposed weight matrix), so the loop reads it with unit stride."""
        (a, a_row, a_term), (b, b_col, b_term) = thin
        la, lb = self.loc[a], self.loc[b]
        m, n = self.shapes[o]
        kk = max(la.size // m, 1)
        b_buf, b_off = lb.buf, lb.off
        if b_col != 1:
            z = self.scratch(kk * n, self.dtypes[b])
            self.emit(f"    for q0 in range({kk}):")
            self.emit(f"        for q1 in range({n}):")
            self.emit(f"            {z}[q0 * {n} + q1] = {lb.buf}[{_off_add(lb.off, 'q0 * %d + q1 * %d' % (b_term, b_col))}]")
            b_buf, b_off, b_term, b_col = z, 0, n, 1
        return _DotMember(k, o, self.dtypes[o], (la.buf, la.off, a_term, [a_row, 0]),
                          (b_buf, b_off, b_term, [0, b_col]), kk)

    def _dot_member_source(self, m, loop):
        """The value of :class:`_DotMember` ``m`` at the position of ``loop``: its K products summed in order."""
        terms = []
        for j in range(m.n_terms):
            (ba, oa, ka, sa), (bb, ob, kb, sb) = m.a, m.b
            terms.append(f"{ba}[{loop.index(_off_add(oa, j * ka), sa)}] * {bb}[{loop.index(_off_add(ob, j * kb), sb)}]")
        return f"np.{m.out_dtype}({' + '.join(terms)})"

    def _as_array(self, x):
        """Source of a numba array (1-d or 2-d, 'C' or 'F' layout) holding ``x``'s value."""
        loc = self.loc[x]
        if loc.lit is not None:  # (the cotangent of a summed product is ones): the filled array
            if self.dtypes[x] not in ("float64", "float32"):
                raise Unsupported("dot of a non-float literal")
            z = self.scratch(loc.size, self.dtypes[x])
            self.emit(f"    {z}[:] = {loc.lit}")
            loc = _Loc(loc.shape, buf=z)  # (the slot stays a literal for everything else)
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
        matrices = len(self.shapes[a]) == 2 and len(self.shapes[b]) == 2
        self._dot_into(o, self._as_array(a), self._as_array(b), matrices)

    def _dot_into(self, o, sa, sb, matrices):
        """Emit ``np.dot(sa, sb)`` storing into a new buffer of slot ``o``: BLAS writes the buffer itself
        (``out=``), so a workspace window costs no allocation.  A thin product of two matrices (``o`` is M x N
        with N <= 16 < M / 4, like ``H @ W2`` or ``H.T @ dP`` of a small output layer) is computed transposed,
        ``(sb.T @ sa.T)`` into a scratch N x M, and copied: OpenBLAS runs that shape 20-35 % faster."""
        dt = self.dtypes[o]
        if self.shapes[o] == ():
            name = f"{self.prefix}b{o}"
            self.emit(f"    {name} = np.empty(1, np.{dt})")
            self.emit(f"    {name}[0] = np.dot({sa}, {sb})")
            self.loc[o] = _Loc(self.shapes[o], buf=name, owned=True)
            return
        name = self.fresh(o)
        if len(self.shapes[o]) == 1:
            self.emit(f"    np.dot({sa}, {sb}, {name})")
            return
        m, n = self.shapes[o]
        out = f"{name}.reshape({self.shapes[o]!r})"
        if matrices and 1 < n <= 16 and m > 4 * n:
            tmp = self.scratch(m * n, dt)
            self.emit(f"    np.dot(np.ascontiguousarray(({sb}).T), ({sa}).T, {tmp}.reshape(({n}, {m})))")
            self.emit(f"    {out}[:, :] = {tmp}.reshape(({n}, {m})).T")
        else:
            self.emit(f"    np.dot({sa}, {sb}, {out})")

    def op_einsum(self, k, op, args, outs):
        """Two-operand contractions over one label that are a (transposed) matrix/vector product."""
        a, b, o = args[0], args[1], outs[0]
        la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
        if (len(la) == len(lb) == len(lo) == 2 and len(set(la + lb)) == 3 and len(self.shapes[o]) > 2
                and len(self.shapes[a]) >= 2 and len(self.shapes[b]) >= 2):
            return self._batched_einsum(a, b, o, la, lb, lo)  # "...ij,...kj->...ik" (a batched matmul's gradient)
        if (len(la) != len(self.shapes[a]) or len(lb) != len(self.shapes[b]) or len(lo) != len(self.shapes[o])
                or len(set(la)) != len(la) or len(set(lb)) != len(lb)):
            raise Unsupported("einsum with broadcast or repeated labels")
        con = [c for c in la if c in lb and c not in lo]
        fa = [c for c in la if c not in lb]
        fb = [c for c in lb if c not in la]
        if (con and max(len(la), len(lb)) > 2 and not any(c in la and c in lb for c in lo)
                and lo in (tuple(fa + fb), tuple(fb + fa))):  # a tensordot (its gradients are such einsums)
            return self._block_product(a, b, o, [la.index(c) for c in con], [lb.index(c) for c in con],
                                       swap=bool(fa and fb) and lo != tuple(fa + fb))
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
        matrices = len(la) == 2 and len(lb) == 2
        if lo == tuple(fa + fb):
            self._dot_into(o, sa, sb, matrices)
        elif len(lo) == 2:  # (A B)^T = B^T A^T
            ta = f"{sa}.T" if len(la) == 2 else sa
            tb = f"{sb}.T" if len(lb) == 2 else sb
            self._dot_into(o, tb, ta, matrices)
        else:
            raise Unsupported("einsum output order")

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

    def op_tensordot(self, k, op, args, outs):
        self._block_product(args[0], args[1], outs[0], op.axes_a, op.axes_b)

    def _block_product(self, a, b, o, axes_a, axes_b, swap=False):
        """A contraction of ``a``'s ``axes_a`` with ``b``'s ``axes_b`` (paired in order) into ``o`` (``a``'s free axes
        then ``b``'s; ``swap``: ``b``'s then ``a``'s), when the contracted axes are a leading or trailing block of
        each operand (``tensordot(a, b, n)`` and its gradients): one BLAS product of 2-d views, no copy."""
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or any(self.dtypes[s] != dt for s in (a, b)):
            raise Unsupported("tensor product of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("tensor product of an empty operand")
        pairs = sorted(zip(axes_a, axes_b))
        if [q for _, q in pairs] != sorted(axes_b):
            raise Unsupported("tensor product pairing axes out of order")
        views = []
        for s, axes, free_first in ((a, axes_a, True), (b, axes_b, False)):
            shape, nd = self.shapes[s], len(self.shapes[s])
            con = sorted(axes)
            c = int(np.prod([shape[i] for i in con], dtype=np.int64))
            f = int(np.prod(shape, dtype=np.int64)) // c
            loc = self._materialize(s)
            if loc.lit is not None:
                raise Unsupported("tensor product of a literal")
            flat = f"{loc.buf}[{loc.off}:{_off_add(loc.off, f * c)}]"
            if con == list(range(nd - len(con), nd)):  # (free, con) in memory
                v = f"{flat}.reshape(({f}, {c}))" if free_first else f"{flat}.reshape(({f}, {c})).T"
            elif con == list(range(len(con))):  # (con, free) in memory
                v = f"{flat}.reshape(({c}, {f})).T" if free_first else f"{flat}.reshape(({c}, {f}))"
            else:
                raise Unsupported("tensor product over axes in the middle of an operand")
            views.append((v, f))
        buf = self.fresh(o)
        (va, fa), (vb, fb) = views
        if swap:  # (A B)^T = B^T A^T
            self.emit(f"    np.dot(({vb}).T, ({va}).T, {buf}.reshape(({fb}, {fa})))")
        else:
            self.emit(f"    np.dot({va}, {vb}, {buf}.reshape(({fa}, {fb})))")

    def op_outer(self, k, op, args, outs):
        """``outer(a, b)`` of the flattened operands: a loop over the result."""
        a, b, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"outer into {dt}")
        m, n = self.shapes[o]
        srcs = []
        for s, var in ((a, "i0"), (b, "i1")):
            loc = self._materialize(s)
            srcs.append(loc.lit if loc.lit is not None else f"{loc.buf}[{_off_add(loc.off, var)}]")
        buf = self.fresh(o)
        self.emit(f"    for i0 in range({m}):")
        self.emit(f"        for i1 in range({n}):")
        self.emit(f"            {buf}[i0 * {n} + i1] = np.{dt}({srcs[0]}) * np.{dt}({srcs[1]})")

    def op_outer_t(self, k, op, args, outs):
        """The transposes of ``outer``: ``g @ other.ravel()`` (side 0) or ``other.ravel() @ g`` (side 1)."""
        g, other, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or any(self.dtypes[s] != dt for s in (g, other)):
            raise Unsupported("outer_t of non-float or mixed dtypes")
        if any(n == 0 for s in (g, other) for n in self.shapes[s]):
            raise Unsupported("outer_t of an empty operand")
        lo = self._materialize(other)
        if lo.lit is not None:
            raise Unsupported("outer_t of a literal")
        vec = f"{lo.buf}[{lo.off}:{_off_add(lo.off, lo.size)}]"
        mat = self._as_array(g)
        buf = self.fresh(o)
        first, second = (mat, vec) if op.side == 0 else (vec, mat)
        self.emit(f"    np.dot({first}, {second}, {buf})")

    def op_matmul(self, k, op, args, outs):
        if all(len(self.shapes[s]) <= 2 for s in args[:2]):
            return self.op_dot(k, op, args, outs)
        a, b, o = args[0], args[1], outs[0]
        if any(len(self.shapes[s]) < 2 for s in (a, b)):
            raise Unsupported("batched matmul with a vector operand")
        ind, (va, vb), vo = self._batch_views(a, b, o)
        self.emit(f"{ind}np.dot({va}, {vb}, {vo})")

    def _batch_views(self, a, b, o):
        """Emit a loop over the (broadcast) batch axes of ``o`` (all but its last two); returns ``(indent, [view of
        a, view of b], view of o)``: the sources of each step's contiguous matrices (operands copied to C order
        first when they are not)."""
        oshape = self.shapes[o]
        batch = oshape[:-2]
        m, n = oshape[-2:]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or any(self.dtypes[s] != dt for s in (a, b)):
            raise Unsupported("batched product of non-float or mixed dtypes")
        if any(x == 0 for s in (a, b, o) for x in self.shapes[s]):
            raise Unsupported("batched product of an empty operand")
        operands = []
        for s in (a, b):
            loc = self._materialize(s)
            shape = loc.shape
            lead = len(batch) - (len(shape) - 2)
            if lead < 0:
                raise Unsupported("batched product operand with more batch axes than its result")
            mat = shape[-2] * shape[-1]
            st = row_major(shape[:-2])
            steps = [0 if d < lead or shape[d - lead] == 1 else st[d - lead] * mat for d in range(len(batch))]
            operands.append((loc, steps, shape[-2:]))
        buf = self.fresh(o)
        ind = "    "
        for d, nb in enumerate(batch):
            self.emit(f"{ind}for i{d} in range({nb}):")
            ind += "    "
        views = []
        for loc, steps, (r, c) in operands:
            off = " + ".join([str(loc.off)] + [f"i{d} * {st_}" for d, st_ in enumerate(steps) if st_])
            views.append(f"{loc.buf}[{off}:{off} + {r * c}].reshape(({r}, {c}))")
        out_off = " + ".join(["0"] + [f"i{d} * {st_ * m * n}" for d, st_ in enumerate(row_major(batch))])
        return ind, views, f"{buf}[{out_off}:{out_off} + {m * n}].reshape(({m}, {n}))"

    def _batched_einsum(self, a, b, o, la, lb, lo):
        """``...``-batched einsum of 2-d cores with one contracted label: per batch step, the core as a
        (transposed) matrix product."""
        (c,) = [x for x in la if x in lb]
        (fa,), (fb,) = [x for x in la if x != c], [x for x in lb if x != c]
        if c in lo or sorted(lo) != sorted((fa, fb)):
            raise Unsupported("batched einsum of this form")
        ind, (va, vb), vo = self._batch_views(a, b, o)
        va = f"{va}.T" if la[0] == c else va  # (fa, c)
        vb = f"{vb}.T" if lb[1] == c else vb  # (c, fb)
        if lo == (fa, fb):
            self.emit(f"{ind}np.dot({va}, {vb}, {vo})")
        else:  # (A B)^T = B^T A^T
            self.emit(f"{ind}np.dot(({vb}).T, ({va}).T, {vo})")
