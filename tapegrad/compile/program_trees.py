"""Program-tier placement of accumulation trees (``add`` nodes over zero-based scatters, the adjoint of slices, and
their dense leaves; found by ``_find_trees``): the buffer each write goes to, its deferred zero fill, and the
1-d writes kept until the tree's root and added in one pass (a mixin of :class:`tapegrad.compile.program_gen._Gen`)."""

from __future__ import annotations

import re

from tapegrad.compile.kernels.steps import row_major
from tapegrad.compile.program_ir import Unsupported, _Loop, _off_add
from tapegrad.compile.program_windows import segments


class TreeTemplates:
    """Which adds form accumulation trees (``_find_trees``, ``_final``), where writes into a tree go
    (``_write_target``), its adds (``_tree_add``) and the one-pass window sums (``_tree_defer``, ``_tree_flush``)."""

    def _find_trees(self, names):
        """Accumulation trees (called by ``_analyse``, with the op name of each instruction): ``add`` nodes over
        zero-based scatters whose every partial value is read once, so all of them can add into the root's
        buffer; sets ``tree_root``, ``tree_dense`` and the placement state."""
        tape = self.tape
        root = {}  # slot -> its tree's root slot
        members = {}  # root -> slots of the tree
        dense = {}  # add slot -> the full-shape value it adds to its tree's buffer
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
                if (a == b or any(len(self.readers.get(s, ())) != 1 or s in self.pinned for s in (a, b))
                        or not self.shapes[a] == self.shapes[b] == self.shapes[o]
                        or not self.dtypes[a] == self.dtypes[b] == self.dtypes[o]
                        or self.dtypes[o] not in ("float64", "float32")):
                    continue
                if a in root and b in root and root[a] == a and root[b] == b:
                    ms = members.pop(a) + members.pop(b) + [o]
                elif (a in root) != (b in root) and root.get(a, root.get(b)) in (a, b):
                    # a tree plus a value of the full shape (the gradient of ``u`` where ``u`` is also read
                    # through slices): the value is one more ``+=`` into the tree's buffer, a dense leaf
                    r, d = (a, b) if a in root else (b, a)
                    ms = members.pop(r) + [o]
                    dense[o] = d
                else:
                    continue
                for s in ms:
                    root[s] = o
                members[o] = ms
        self.tree_root = {s: r for s, r in root.items() if len(members[r]) > 1}
        self.tree_dense = {o: d for o, d in dense.items() if o in self.tree_root}
        self.tree_started = set()  # roots whose buffer exists (zero-filled)
        self.tree_done = set()  # roots whose last write has been placed (their buffer holds the tree's value)
        self.tree_zero_at = {}  # tree buffer -> index in self.lines of its zero fill

    def _final(self, s):
        """Slot ``s``'s buffer holds its final value: it is not a partial sum of an accumulation tree (whose root
        is complete only after its last write)."""
        return s not in self.tree_root or s in self.tree_done

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
                else:  # the zero fill, which the tree's flush may make its first assignment instead
                    self.tree_zero_at[self.loc[rt].buf] = len(self.lines) - 1
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
        last write has run).  An add of a dense leaf writes that value into the buffer with ``+=``: in the open
        group's loop when it has the tree's shape, else in a loop of its own."""
        rt = self.tree_root[o]
        if rt not in self.tree_started:
            raise Unsupported("accumulation tree without a write")
        self.loc[o] = self.loc[rt]
        d = self.tree_dense.get(o)
        if d is not None:
            buf, shape, G = self.loc[rt].buf, self.shapes[o], self.G
            if G is not None and tuple(G["shape"]) == shape and (self._in_group(d) or self._before(d)):
                G["epi"].append(("write", buf, 0, tuple(row_major(shape)), d, "+=", self.dtypes[o]))
                G["after"].add(rt)
                G["absorbed"].add(self.cur_k)  # the add reads the value in the loop: d need not be stored
            else:
                if G is not None:
                    self.close()
                if not self._tree_defer(buf, 0, shape, d, self.dtypes[o]):
                    loop = _Loop(shape, [self.strides_for(d, shape), row_major(shape)])
                    if self.loc[o].size:
                        ind = loop.open(self.emit, "    ")
                        self.emit(f"{ind}{buf}[{loop.out_index()}] += {self.read(d, loop, as_dt=self.dtypes[o])}")
        if o == rt:  # the tree's last write has been placed
            self._tree_flush(self.loc[rt].buf)
            self.tree_done.add(rt)
        if self.G is not None and rt in self.G["after"]:
            self.G["after"].add(o)

    def _tree_defer(self, buf, off, shape, y, dt, strides=None):
        """Keep a ``+=`` of 1-d ``y`` into the tree buffer ``buf`` at ``off`` for :meth:`_tree_flush`, which adds all
        of a tree's windows in one pass over the buffer (a stencil's gradient: ``u``'s own term and the scatters
        of ``u[1:]``, ``u[:-1]``, ... each made a pass of its own).  False when ``y`` is not a plain 1-d buffer."""
        ly = self.loc.get(y)
        if (len(shape) != 1 or not isinstance(off, int) or ly is None or ly.lit is not None or self.root is not self
                or self.hoist is not None):
            return False
        st = (self.strides_for(y, shape) if strides is None else strides)[0]
        from tapegrad.compile.fused import _convert

        def src(p, ly=ly, st=st, off=off, wrap=False):
            at = _off_add(ly.off, f"({p} - {off}) * {st}")
            at = f"nn({at})" if wrap else at
            return _convert(self._remat_src(ly.buf, at) or f"{ly.buf}[{at}]", self.dtypes[y], dt)

        self.tree_pending.setdefault(buf, []).append((off, shape[0], src))
        return True

    def _tree_flush(self, buf):
        """Emit the kept writes into ``buf``: one loop per segment between window edges, adding every window
        that covers it."""
        ws = self.tree_pending.pop(buf, [])
        if not ws:
            return
        assign = self._unzero(buf)
        G = self.G
        if (G is not None and not self.prefix and buf not in G["unfilled"] and len(G["shape"]) == 1
                and G["shape"][0] == self.loc[self._buffer_slot[buf]].size):
            writes = [e for e in G["epi"] if e[0] == "write" and e[1] == buf]
            if writes and all(e[2] == 0 and tuple(e[3]) == (1,) and e[5] == "+=" for e in writes):
                # the open group's loop adds dense leaves into this tree (``-2 * adj`` of a stencil): its loop adds
                # the windows too, segment by segment (``close``), instead of a pass of their own before it
                G.setdefault("windows", {})[buf] = (ws, assign)
                return
        self._emit_flush(buf, ws, assign)

    def _emit_flush(self, buf, ws, assign):
        """The loops of :meth:`_tree_flush`: windows ``ws`` added into (``assign``: assigned to) ``buf``."""
        spans = [(off, n) for off, n, _ in ws]
        if assign:  # the windows' sums are the buffer's first values: assigned, the gaps zeroed
            lo, hi = 0, self.loc[self._buffer_slot[buf]].size
        else:
            lo, hi = min(s for s, _ in spans), max(s + n for s, n in spans)
        for a, b, active in segments(spans, lo, hi):
            if active:
                self.emit(f"    for p in range({a}, {b}):")
                self.emit(f"        {buf}[p] {'=' if assign else '+='} {' + '.join(ws[j][2]('p') for j in active)}")
            elif assign:
                self.emit(f"    {buf}[{a}:{b}] = 0")

    def _unzero(self, buf):
        """Drop the zero fill of tree buffer ``buf`` when nothing has touched the buffer since (every write so far
        was kept for the flush): True when dropped.  (A stencil's gradient zeroed its buffer, then added the
        windows: a pass more than assigning them.)"""
        z = self.tree_zero_at.pop(buf, None)  # (only trees whose fill was not deferred to a group's loop)
        if z is None:
            return False
        line = self.lines[z].strip()
        word = re.compile(rf"\b{re.escape(buf)}\b")
        if any(word.search(ln) for ln in self.lines[z + 1:]):
            return False
        if line == f"{buf}[:] = 0":
            self.lines[z] = ""
        elif line.startswith(f"{buf} = np.zeros("):
            self.lines[z] = self.lines[z].replace(" = np.zeros(", " = np.empty(", 1)
        else:
            return False
        return True
