"""Program-tier segmented loops (a mixin of :class:`tapegrad.compile.program_gen._Gen`): groups that write one 1-d
buffer at several shifted windows (the adjoint of ``x[1:]``, ``x[:-1]``, ...), evaluated per output position,
segment by segment; and flat loops that read 1-d joins in place or add accumulation trees' windows, segment by
segment between the pieces' and windows' edges."""

from __future__ import annotations

from tapegrad.compile.program_ir import _Loc, _off_add, loop_range


def segments(spans, lo, hi):
    """The consecutive ranges ``[a, b)`` of ``[lo, hi)`` between the edges of ``spans`` (``(start, length)`` pairs,
    clipped to the range), each with the indices of the spans that cover it whole."""
    cuts = sorted({lo, hi} | {min(max(c, lo), hi) for s, n in spans for c in (s, s + n)})
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a < b:
            yield a, b, [j for j, (s, n) in enumerate(spans) if s <= a and b <= s + n]


class WindowTemplates:
    """``_shifted_plan`` (does a fused group qualify) and ``_emit_shifted`` (its segments); ``_segmented_reads``
    (the segments of a loop that reads joins in place or adds trees' windows)."""

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
        for a, b, covering in segments([(w, m) for w in windows], 0, total):
            active = [windows[j] for j in covering]
            if not active:
                if assign:
                    self.emit(f"    {buf}[{a}:{b}] = 0")
                continue
            # the long segments run in chunks (the edges of the windows stay serial); the loop over output
            # positions p reads the primary window's operands at p - o_d: aligned there (see loop_range)
            chunks = loop.par if loop.par and (b - a) * 8 >= m else 0
            streams = [(sb, _off_add(so, -o_d)) for sb, so in loop.streams]
            ind, split = loop_range(self.emit, "    ", "p", a, b, chunks, streams, loop.itemsize, loop.prefetch)
            loop.split = loop.split or split
            vals = []
            for w in active:
                var = "i" if w == o_d else self.tmp("j")
                self.emit(f"{ind}{var} = p - {w}")
                loop.var = var
                if w == o_d:  # the primary evaluation: everything the group does, once per index
                    tn = self._emit_eval(ind, loop, members, ext)
                    self._emit_primary(ind, loop, G, tn, outs)  # (its writes all go to ``buf``: summed below)
                else:
                    ys = [e[4] for e in writes[w]]
                    ms, ex = needed(ys)
                    tn = self._emit_eval(ind, loop, ms, ex)
                vals += [_convert(tn[e[4]], self.dtypes[e[4]], e[6]) for e in writes[w]]
                loop.var = "i"
            self.emit(f"{ind}{buf}[{'nn(p)' if loop.par or loop.split else 'p'}] {'=' if assign else '+='} {' + '.join(vals)}")

    def _segmented_reads(self, G, ext, loop, members, windows):
        """Segments ``(a, b, {slot: loc}, {tree buffer: indices of its windows})`` of the open group's flat 1-d
        loop when some of its external operands are 1-d joins or rolls (``seg_src``) that only this loop reads,
        or when it adds the windows of accumulation trees (``windows``).  In each segment such an operand is read
        in place from the window that covers it (``concatenate([u[:1], u[:-1]])`` of a stencil is ``u[i - 1]``
        past its first element), and the copy emitted for it is dropped; a tree's store adds the windows that
        cover the segment.  None when there is nothing to segment."""
        if self.prefix or len(loop.shape) != 1 or not loop.flat or not loop.shape[0]:
            return None
        ks = {m.k for m in members} | G["absorbed"] | self.lit_instrs
        found = {}
        for s in ext:
            src = self.seg_src.get(s)
            if src is None or s in self.pinned or any(r not in ks for r in self.value_readers.get(s, ())):
                continue
            at, text, pieces = src
            if tuple(self.lines[at:at + len(text)]) != text or any(
                    lc.lit is None and (isinstance(lc.off, str) or lc.strides[0] != 1) for _, _, lc in pieces):
                continue
            found[s] = src
        if not found and not windows:
            return None
        n = loop.shape[0]
        for s, (at, text, _) in found.items():  # the copy (and its buffer) go: nothing else reads them
            for j in range(at, at + len(text)):
                self.lines[j] = ""
            self.ws_bufs.pop(self.loc[s].buf, None)
            del self.seg_src[s]
        spans = [(st, m) for _, _, pieces in found.values() for st, m, _ in pieces]
        spans += [(off, m) for ws, _ in windows.values() for off, m, _ in ws]
        segs = []
        for a, b, _ in segments(spans, 0, n):
            over = {}
            for s, (_, _, pieces) in found.items():
                st, _, lc = next(p for p in pieces if p[0] <= a < p[0] + p[1])
                over[s] = (_Loc((n,), lit=lc.lit) if lc.lit is not None
                           else _Loc((n,), buf=lc.buf, off=lc.off - st, strides=(1,)))
            active = {buf: [j for j, (off, m, _) in enumerate(ws) if off <= a and b <= off + m]
                      for buf, (ws, _) in windows.items()}
            segs.append((a, b, over, active))
        return segs
