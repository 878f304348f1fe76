"""Program-tier rematerialisation (a mixin of :class:`tapegrad.compile.program_gen._Gen`): a value that a flat
1-d loop stores only for later loops, and that is a cheap function of one array read at the same position (and
of scalars), is recomputed where it is read instead of stored.

The stencil's adjoint is the case it is for: each backward step's first loop stored ``h = k * adj`` and the
next loop read ``h[i - 1]``, ``h[i]`` and ``h[i + 1]``; that loop now reads ``adj`` (which it reads anyway)
and multiplies, and the first loop keeps only its reduction.  Reading the one array instead of the stored value
is never more traffic, and the store goes.

How: when a group's loop stores such a value, ``close`` records how to recompute its buffer's element ``j``
(:meth:`_remat_plan`), and the lines of that loop that store it.  Every later read of the buffer that goes
through :meth:`read` (and the accumulation trees' window sums) recomputes it.  When the source is complete,
a buffer that no line reads any more loses its stores and its allocation (:meth:`_remat_drop`); a reader that
does not recompute (a BLAS call, a view passed to a template that names the buffer) keeps it stored, and the
recomputed reads stay correct beside it.  The values are the same expressions over the same operands, which
are immutable once made (every buffer is written only by the instruction that creates it)."""

from __future__ import annotations

import re

from tapegrad.compile.program_ir import _WS_MARK
from tapegrad.compile.threads import EXPENSIVE

REMAT_MEMBERS = 2  # at most this many cheap member operations are recomputed per read


class RematTemplates:
    """``_remat_plan`` (which stored values of a closing group can be recomputed), ``_remat_src`` (a read of a
    recomputed buffer), ``_remat_drop`` (the stores and buffers nothing reads any more)."""

    def _remat_plan(self, members, ext, shape, outs):
        """Buffer name -> ``f(j)`` (the source of its element ``j``) for the ``outs`` of a closing flat 1-d group
        whose value is at most ``REMAT_MEMBERS`` cheap elementwise members of one array read at unit stride
        and of scalars."""
        if len(shape) != 1 or self.prefix or self.hoist is not None or self.root is not self:
            return {}
        by_out = {m.out: m for m in members}
        plans = {}
        for s in outs:
            if (s in self.pinned or s in self.into or s in self.into_alias or s not in by_out
                    or self.dtypes[s] not in ("float64", "float32")):
                continue
            need, stack = set(), [s]
            while stack:
                sl = stack.pop()
                if sl in by_out and sl not in need:
                    need.add(sl)
                    stack.extend(by_out[sl].data_args)
            ms = [m for m in members if m.out in need]
            if len(ms) > REMAT_MEMBERS or any(
                    m.kind not in ("ew", "copy") or (m.kind == "ew" and m.spec.name in EXPENSIVE) for m in ms):
                continue
            exs = list(dict.fromkeys(sl for m in ms for sl in m.data_args if sl not in by_out))
            reads, arrays = {}, 0
            for x in exs:
                loc = self.loc.get(x)
                if loc is None or x in self.seg_src or not self._final(x):
                    break
                if loc.lit is not None:
                    reads[x] = (loc.lit, None)
                    continue
                st = self.strides_for(x, shape)
                if not isinstance(loc.off, int) or st not in ([0], [1]) or not loc.buf:
                    break
                if st == [1]:
                    arrays += 1
                reads[x] = (loc.buf, loc.off if st == [0] else (loc.off,))
            else:
                if arrays == 1:
                    plans[self.loc[s].buf if s in self.loc else None] = (s, ms, reads)
        return {buf: p for buf, p in plans.items() if buf is not None}

    def _remat_fn(self, plan):
        s, ms, reads = plan
        from tapegrad.compile.fused import _convert

        def src(j):
            tn = {}
            for x, (what, off) in reads.items():
                if off is None:
                    tn[x] = what
                elif isinstance(off, tuple):
                    tn[x] = f"{what}[nn({off[0]} + {j})]" if off[0] else f"{what}[nn({j})]"
                else:
                    tn[x] = f"{what}[{off}]"
            for m in ms:
                ops = [_convert(tn[a], self.dtypes[a], ld) for a, ld in zip(m.data_args, m.load_dtypes)]
                tn[m.out] = f"({self._member_src(m, ops)})"
            return tn[s]

        return src

    def _remat_stream(self, buf, off):
        """``(array, offset)`` a flat loop reading recomputed ``buf`` at ``off`` streams instead (for its
        alignment and prefetch: ``_streams``)."""
        _, ms, reads = self.remat[buf][2]
        ((arr, (o,)),) = [(w, o) for w, o in reads.values() if isinstance(o, tuple)]
        return arr, o + off if isinstance(off, int) else off

    def _remat_src(self, buf, index):
        """Source of element ``index`` of ``buf`` recomputed, or None when ``buf`` is stored as usual."""
        r = self.remat.get(buf)
        return None if r is None else r[0](index)

    def _remat_drop(self):
        """Blank the stores and the allocation of every recomputed buffer that no other line names."""
        for buf, (_, stores, _) in self.remat.items():
            word = re.compile(rf"\b{re.escape(buf)}\b")
            alloc = re.compile(rf"^\s+{re.escape(buf)} = ({re.escape(_WS_MARK + buf)}|np\.empty\(.*\))$")
            named = [j for j, line in enumerate(self.lines) if word.search(line)]
            keep = [j for j in named if j not in stores and not alloc.match(self.lines[j])]
            if keep:
                continue
            for j in named:
                self.lines[j] = ""
            self.ws_bufs.pop(buf, None)
