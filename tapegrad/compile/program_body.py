"""Program-tier loop bodies (a mixin of :class:`tapegrad.compile.program_gen._Gen`): what a fused group's loop
emits at each position -- the streams it reads (``_streams``, for alignment and prefetch), the loads and member
expressions (``_emit_eval``, ``_member_src``), the stores and in-loop sums (``_emit_primary``) -- and when
``azmul`` is a plain product (``_azmul_is_product``)."""

from __future__ import annotations

import math

import numpy as np

from tapegrad.compile.kernels.steps import row_major


class BodyTemplates:
    """The per-position emission of a fused group's loop (see the module docstring)."""

    def _streams(self, ext, shape):
        """The arrays a flat loop over ``shape`` reads along it at unit stride, as ``(buffer, offset)`` (the lowest
        offset of each), and the item size of the first: what :func:`~tapegrad.compile.program_ir.loop_range`
        aligns to and prefetches.  Argument arrays come first (a caller's array may start anywhere; the
        program's own buffers start on 32 or 64 bytes)."""
        rm = list(row_major(shape))
        found = {}
        for s in ext:
            loc = self.loc[s]
            if loc.lit is not None or not loc.buf or self.strides_for(s, shape) != rm:
                continue
            buf, off = self._remat_stream(loc.buf, loc.off) if loc.buf in self.remat else (loc.buf, loc.off)
            old = found.get(buf)
            if old is None or (isinstance(off, int) and isinstance(old[0], int) and off < old[0]):
                found[buf] = (off, np.dtype(self.dtypes[s]).itemsize)
        arg = [b for b in found if b[:1] in "xh" and b[1:].isdigit()]
        order = arg + [b for b in found if b not in arg]
        if not order:
            return [], 8
        return [(b, found[b][0]) for b in order], found[order[0]][1]

    def _emit_primary(self, ind, loop, G, tn, outs, rows=None):
        """Emit, at the loop's position, the stores of the group's outputs and its in-loop reductions (a partial
        sum in ``rows``, by id, into that local scalar); returns the group's writes, which the caller places
        (directly, deferred, or summed per position)."""
        from tapegrad.compile.fused import _convert

        oi = loop.out_index()
        for s in outs:
            self.emit(f"{ind}{self.loc[s].buf}[{oi}] = {tn[s]}")
            if self.loc[s].buf in self._remat_open:
                self._remat_open[self.loc[s].buf][1].append(len(self.lines) - 1)
        for e in G["epi"]:
            if e[0] == "acc":
                _, acc, x, acc_dt, buf, scale, dt, _o = e
                self.emit(f"{ind}{acc} += {_convert(tn[x], self.dtypes[x], acc_dt)}")
            elif e[0] == "sum":
                _, buf, x, ws, dt, scale, _o = e
                to = rows[id(e)] if rows and id(e) in rows else f"{buf}[{loop.index(0, ws)}]"
                self.emit(f"{ind}{to} += {_convert(tn[x], self.dtypes[x], dt)}")
        return [e for e in G["epi"] if e[0] == "write"]

    def _emit_eval(self, ind, loop, members, ext):
        """Emit the loads of ``ext`` and the scalar expressions of ``members`` at the loop's position;
        returns slot -> source of its value."""
        from tapegrad.compile.fused import _convert

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
            src = self._dot_member_source(m, loop) if m.kind == "dot" else self._member_src(m, ops)
            v = self.tmp("t")
            self.emit(f"{ind}{v} = {src}")
            tn[m.out] = v
        return tn

    def _member_src(self, m, ops):
        """Source of elementwise (or copy) member ``m``'s value from its operands' sources ``ops``."""
        from tapegrad.compile.fused import _result, member_source

        if m.kind == "ew" and m.spec.name == "azmul" and self._azmul_is_product(m.data_args):
            # azmul(a, b) = (a == 0 ? 0 : a * b) is a plain product (up to the sign of a zero) when a is a
            # nonzero literal or b a finite literal; the multiply vectorises where the branch does not
            return _result(f"({ops[0]}) * ({ops[1]})", m.out_dtype)
        return member_source(m.kind, m.code, ops, m.load_dtypes, m.out_dtype, m.special)[0]

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
