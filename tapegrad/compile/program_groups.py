"""Program-tier templates of the per-group reductions (a mixin of :class:`tapegrad.compile.program_gen._Gen`):
``max``/``min`` (a row's extremum in a local scalar), the softmax family and ``logsumexp`` (per-group passes over
a scratch of one element per group), and the first extremum of each group (``extremum_mask``, the gradient of
``max``; ``argmax``/``argmin``)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.kernels.steps import row_major
from tapegrad.compile.program_ir import _ACC, Unsupported, _axis_strides, _Loop, _off_add


class GroupTemplates:
    """``op_max``/``op_min``, ``op_softmax``, ``op_logsumexp``, ``op_sum_broadcast``, ``op_extremum_mask`` and
    ``op_argmax``/``op_argmin``, with their per-group helpers."""

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
        if dt == "int64":
            fill = "np.int64(-9223372036854775808)" if op.which == "max" else "np.int64(9223372036854775807)"
        else:
            fill = f"np.{dt}({'-' if op.which == 'max' else ''}np.inf)"
        self.emit(f"    {buf}[:] = {fill}")
        loop = _Loop(xshape, [self.strides_for(x, xshape), list(ws)])
        self._extremum_into(buf, x, loop, ws, op.which, fill)

    def _extremum_into(self, buf, x, loop, ws, which, fill):
        """Emit ``buf[g] = max(buf[g], x)`` (``which`` "max" or "min") over ``loop``, NaN propagating, ties
        keeping the earlier value (as ``s_maximum``/``s_minimum`` in order).  When the innermost loop reduces
        (a row max: softmax's shift) the row's extremum is a local scalar by compare-and-select with a NaN
        flag beside it, combined with the buffer once a row: 2048 x 100 float32 took 58 us against 234 us
        for ``s_maximum`` through memory (its NaN branches kept the loop scalar, and each element waited
        for the store of the one before)."""
        fn = "s_maximum" if which == "max" else "s_minimum"
        idx = loop.index(0, ws)
        if loop.flat or len(loop.dims) < 2 or ws[loop.dims[-1]]:
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{buf}[{idx}] = {fn}({buf}[{idx}], {self.read(x, loop)})")
            return
        dt = self.dtypes[x]
        fl = dt in ("float64", "float32")
        r, v, nf = self.tmp("r"), self.tmp("v"), self.tmp("n")
        cmp = ">" if which == "max" else "<"
        ind_row = loop.open(self.emit, "    ", levels=len(loop.dims) - 1)
        self.emit(f"{ind_row}{r} = {fill}")
        if fl:
            self.emit(f"{ind_row}{nf} = False")
        ind = loop.open(self.emit, ind_row, start=len(loop.dims) - 1)
        self.emit(f"{ind}{v} = {self.read(x, loop)}")
        self.emit(f"{ind}{r} = {v} if {v} {cmp} {r} else {r}")
        if fl:
            self.emit(f"{ind}{nf} |= {v} != {v}")
            self.emit(f"{ind_row}{buf}[{idx}] = {fn}({buf}[{idx}], np.{dt}(np.nan) if {nf} else {r})")
        else:
            self.emit(f"{ind_row}{buf}[{idx}] = {fn}({buf}[{idx}], {r})")

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
        self._extremum_into(m, x, loop, ws, "max", f"np.{dt}(-np.inf)")
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

    def _first_extremum(self, x, axes, which, what, at=None):
        """One pass keeping, per reduction group of ``x`` over ``axes``, the first max (min) in C order, a NaN
        counting as the extremum; returns ``(at, n groups)`` with ``at`` (an int64 buffer, or a scratch) holding
        each group's position: the flat index into ``x`` for ``at=None``, else the index into the reduced axes
        flattened in C order (argmax)."""
        n, ws, loop = self._per_group(x, axes, what, ("float64", "float32", "int64"))
        if at is None:
            pos, at = loop.out_index(), self.scratch(n, "int64")
        else:
            shape = self.shapes[x]
            rs = _axis_strides(len(shape), [d for d in range(len(shape)) if d not in axes],
                               row_major(tuple(shape[d] for d in sorted(axes))), False)
            pos = loop.index(0, rs)
        best = self.scratch(n, self.dtypes[x])
        self.emit(f"    {at}[:] = -1")
        r, v = loop.index(0, ws), self.tmp("v")
        cmp = ">" if which == "max" else "<"
        ind = loop.open(self.emit, "    ")
        self.emit(f"{ind}{v} = {self.read(x, loop)}")
        self.emit(f"{ind}if {at}[{r}] < 0 or {v} {cmp} {best}[{r}] or ({v} != {v} and {best}[{r}] == {best}[{r}]):")
        self.emit(f"{ind}    {best}[{r}] = {v}")
        self.emit(f"{ind}    {at}[{r}] = {pos}")
        return at, n

    def op_extremum_mask(self, k, op, args, outs):
        """True at the first max (min) of each group in C order, a NaN counting as the extremum (the
        gradient of ``max``/``min``): one pass keeps each group's best value and flat index, a second marks."""
        from tapegrad.ops.reduce import _axes

        x, o = args[0], outs[0]
        if self.dtypes[o] != "bool" or self.shapes[x] == ():
            raise Unsupported(f"extremum_mask of {self.shapes[x]} into {self.dtypes[o]}")
        axes = _axes(op.axis, self.node(k).inputs[0], "extremum_mask")
        buf = self.fresh(o)
        if self._mask_from_extremum(x, set(axes), op.which, buf):
            return
        at, n = self._first_extremum(x, axes, op.which, "extremum_mask")
        self.emit(f"    {buf}[:] = False")
        self.emit(f"    for i in range({n}):")
        self.emit(f"        {buf}[{at}[i]] = True")

    def _mask_from_extremum(self, x, axes, which, buf):
        """``extremum_mask`` of a C-contiguous ``x`` over its trailing ``axes`` when the ``max`` (``min``) itself
        is already computed (the forward pass of the gradient of ``max``): each row is searched for its first
        element equal to that extremum (or its first NaN, when the extremum is NaN) and the search stops there.
        The same mask as :meth:`_first_extremum`, which compares every element with a running best: 2048 x 100
        float32 took 46 us against 113."""
        from tapegrad.ops.reduce import _axes
        from tapegrad.registry import name_of

        lx, shape = self.loc[x], self.shapes[x]
        nd = len(shape)
        if (lx.lit is not None or not lx.contiguous() or isinstance(lx.off, str) or not axes
                or axes != set(range(nd - len(axes), nd)) or self.dtypes[x] not in ("float64", "float32", "int64")):
            return False
        for j in self.readers.get(x, ()):
            if j in self.const_instrs or name_of(int(self.tape.codes[j])) not in ("MAX", "MIN"):
                continue
            opj = self.tape.ops[j]
            (m,) = [int(s) for s in self.tape.instr_outs(j)]
            lm = self.loc.get(m)
            if (opj is None or opj.which != which or lm is None or lm.lit is not None or not lm.contiguous()
                    or isinstance(lm.off, str) or not self._before(m) or m in self.tree_root
                    or set(_axes(opj.axis, self.node(j).inputs[0], "max")) != axes):
                continue
            rows = int(np.prod(shape[:nd - len(axes)], dtype=np.int64))
            n = int(np.prod(shape[nd - len(axes):], dtype=np.int64))
            mv, nan = self.tmp("m"), self.tmp("n")
            self.emit(f"    {buf}[:] = False")
            self.emit(f"    for r in range({rows}):")
            self.emit(f"        {mv} = {lm.buf}[{_off_add(lm.off, 'r')}]")
            self.emit(f"        {nan} = {mv} != {mv}")
            self.emit(f"        for j in range({n}):")
            self.emit(f"            v = {lx.buf}[{_off_add(lx.off, f'r * {n} + j')}]")
            self.emit(f"            if v == {mv} or ({nan} and v != v):")
            self.emit(f"                {buf}[r * {n} + j] = True")
            self.emit("                break")
            return True
        return False

    def op_argmax(self, k, op, args, outs):
        """The index of the first max (min) into the reduced axes flattened in C order (a NaN counts as the
        extremum, as NumPy's argmax)."""
        x, o = args[0], outs[0]
        if self.shapes[x] == () or self.dtypes[o] != "int64":
            raise Unsupported(f"{op.opname} of a 0-d array")
        axes = tuple(sorted(op._norm(self.node(k).inputs[0])))
        self._first_extremum(x, set(axes), op.which, op.opname, at=self.fresh(o))

    op_argmin = op_argmax
