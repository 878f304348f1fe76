"""Program-tier templates of ``scan`` and ``scan_grad``: loop bodies generated inline as sub-tapes
(a mixin of :class:`tapegrad.compile.program_gen._Gen`)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.kernels.steps import row_major
from tapegrad.compile.program_ir import Unsupported, _Loc, _Loop, _off_add, _read_strides
from tapegrad.registry import name_of


class LoopTemplates:
    """``op_scan`` / ``op_scan_grad`` and the loop-body machinery they share."""

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
        from tapegrad.compile.program_gen import _Gen

        g = _Gen(tape, shapes, eng.slot_dtypes, values, const_instrs, eng.node)
        g.prefix = f"q{root.n_sub}_"
        g.root = root
        g.hoist = hoist
        for s, loc, dt in zip(tape.input_slots, in_locs, in_dtypes):
            if eng.slot_dtypes[s] != dt:
                raise Unsupported("a loop body input of another dtype")
            g.loc[int(s)] = loc
        g.emit_tape()
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
        cots = args[1 + S.n_inner:1 + S.n_inner + len(op.cot_outputs)]
        traj = args[1 + S.n_inner + len(op.cot_outputs):]   # from_stored: the loop's stacked states
        seqs, inits, nonseqs = prim[:ns], prim[ns:ns + nk], prim[ns + nk:]
        dts = self.dtypes
        acts = []
        kinds = {"restore": 0, "advance": 1, "store": 2, "free": 3, "adjoint": 4}
        n_slots = 1
        # from_stored: no forward; before the adjoint of step t, load s(t) (kind 5: the initial state or row
        # t - 1 of the stored trajectory)
        schedule = ([a for t in range(n - 1, -1, -1) for a in (("load", t), ("adjoint", t))] if op.from_stored
                    else schedule_for(op.checkpoint, n, op.snapshots))
        kinds["load"] = 5
        for a in schedule:
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
        for i, o in zip(op.out_wrt, outs):
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
        # s(t+1) for an adjoint that reads the new states (ScanGrad.next_states): the state of the adjoint step
        # before, or one forward step for the last step
        after = [f"{p}y{j}" for j in range(nk)] if op.next_states and not op.from_stored else []
        for j, x in enumerate(inits[:len(after)]):
            self.emit(f"    {after[j]} = np.empty({sizes[j]}, np.{dts[x]})")
        after_locs = [_Loc(self.shapes[x], buf=after[j]) for j, x in enumerate(inits[:len(after)])]
        if op.from_stored:
            for x in traj:
                lt = self.loc[x]
                if lt.lit is not None or not lt.contiguous():
                    raise Unsupported("a stored scan trajectory that is not a contiguous buffer")
            if op.next_states:
                after_locs = [self._row(x, "t") for x in traj]
        adj_lines, adj_outs, adj_dts = self.body(
            op.adjoint_inputs, op.adjoint_outputs,
            [self._row(x, "t") for x in seqs] + st_locs + [self.loc[x] for x in nonseqs] + after_locs + cot_locs,
            [dts[x] for x in prim] + [dts[x] for x in inits[:len(after_locs)]] + cot_dts, hoist)
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

        def emit_step(dst):   # one forward step from ``cur`` into the buffers ``dst`` (inside a block at I * 4)
            self.emit(f"{I * 4}pass")
            for line in step_lines:
                self.emit(I * 3 + line)
            for j, loc in enumerate(step_outs):
                for line in self._copy_into(dst[j], 0, loc, step_dts[j], dts[inits[j]], I * 4):
                    self.emit(line)

        emit_step(nxt)
        if nk:
            self.emit(f"{I * 4}{', '.join(cur)}, {', '.join(nxt)} = {', '.join(nxt)}, {', '.join(cur)}")
        self.emit(f"{I * 2}elif kind == 2:")
        for j in range(nk):
            self.emit(f"{I * 3}{snap[j]}[p1 * {sizes[j]}:(p1 + 1) * {sizes[j]}] = {cur[j]}")
        self.emit(f"{I * 3}pass")
        if op.from_stored:
            self.emit(f"{I * 2}elif kind == 5:")
            for j, x in enumerate(traj):
                lt = self.loc[x]
                self.emit(f"{I * 3}if p1 == 0:")
                self.emit(f"{I * 4}{cur[j]}[:] = {snap[j]}[0:{sizes[j]}]")
                self.emit(f"{I * 3}else:")
                self.emit(f"{I * 4}{cur[j]}[:] = {lt.buf}[{_off_add(lt.off, f'(p1 - 1) * {sizes[j]}')}:"
                          f"{_off_add(lt.off, f'p1 * {sizes[j]}')}]")
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
        if after:
            self.emit(f"{I * 3}if t == {n - 1}:")
            emit_step(after)
        for line in adj_lines:
            self.emit(I * 2 + line)
        for j in range(len(after)):
            self.emit(f"{I * 3}{after[j]}[:] = {cur[j]}")
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
        for i, o in zip(op.out_wrt, outs):
            if ns <= i < ns + nk:
                j = i - ns
                if j in lam:
                    self.emit(f"    {self.prefix}b{o}_g = {lam[j]}.copy()")
                    self.loc[o] = _Loc(self.shapes[o], buf=f"{self.prefix}b{o}_g", owned=True)
                else:
                    self.fresh(o, zero=True)
