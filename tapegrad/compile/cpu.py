"""The tier-0 CPU engine: one numba interpreter over flat arenas.

``CPUEngine(tape).run(inputs, shared) -> (outputs, update_values)``.

* **One compiled interpreter** (``_generated_dispatch.interp``, generated from
  the registry, ``cache=True``) runs any tape: building or calling a new
  function compiles nothing.
* **Memory plan per input-shape signature** (:class:`Plan`): slot shapes come
  from each op's ``infer_shape`` (in Python, once per signature); every slot
  gets an offset in the arena of its dtype (float64, float32, int64, bool
  arenas go to numba; other dtypes live in Python-only arenas), with buffers
  reused by liveness.  Plans are cached in a dict keyed by the input shapes.
* **Segments**: instructions with a native kernel for their dtypes run in one
  interpreter call per run of consecutive native instructions; the others
  (user ops = code 0, ops not yet native, unusual dtypes) run their NumPy
  ``perform`` in Python between the compiled segments, reading and writing the
  same arenas.
* **Plan-time values**: SHAPE/SHAPE_I outputs (and cheap ops of them and of
  small constants: SUBTENSOR, JOIN, EYE, integer elementwise, ...) are computed
  once per plan and written into pinned arena slots; those instructions do not
  run at call time, and value-dependent shapes that only need them (RESHAPE to
  ``x.shape``-derived shapes, EYE(n), MAP_ROWS via ``infer_shape_values``) are
  known without a pre-pass.
* **Value-dependent shapes**: an instruction whose ``infer_shape`` raises
  ``NotImplementedError`` is *dynamic*; each call first evaluates it and its
  ancestors with ``perform`` (usually a few scalar shape ops) and keys the
  plan on those output shapes as well.

* **Fused tier** (``tier=``): ``"fused"`` builds each signature's plan on the fusion schedule of
  :func:`tapegrad.tape.fuse.schedule` (a topological order in which each elementwise group's members are
  consecutive; the interpreter's instruction arrays are permuted to it), each group's loop compiled before
  the first call (:mod:`tapegrad.compile.fused`, disk-cached by structure).  A group runs as one step on the
  arena views: its inputs stay live until the group's last member (the loop reads them while it writes), its
  internal slots get no arena block.  ``None``/``"auto"`` runs the interpreter plan and, after
  ``FUSE_AFTER_USES`` calls of a signature, compiles its groups on a background thread, swapping in the fused
  plan once all are done (a group that fails to compile runs in the interpreter).  ``"interp"`` never fuses.
* User ops (code 0, CALLBACK) run by ``perform`` warn once per op class.

Returned arrays are fresh copies, never views of an arena.  An engine is not
re-entrant: one call at a time per engine (arenas belong to the plan).
"""

from __future__ import annotations

import numpy as np

from tapegrad.compile import gc_paused, numba_ready
from tapegrad.compile.arena import BlockAllocator
from tapegrad.compile.kernels.core import (
    H_ARGP, H_ARGS, H_CODES, H_FPP, H_ICD, H_IGRP, H_IP, H_IPP, H_OUTP, H_OUTS, H_SAK, H_SCONT, H_SND, H_SOFF, H_SSHP,
    H_SSIZE, H_SSTR, KIND_OF_DTYPE, MAXD, NH,
)
from tapegrad.compile.kernels.steps import (STEP_CODES, VIEW_CODES, is_contiguous, make_step, row_major, strided,
                                            view_layout)
from tapegrad.compile.op_shapes import op_infer_shape
from tapegrad.compile.program import engine_program
from tapegrad.compile.reference import shape_error
from tapegrad.registry import CALLBACK, CODE_DTYPES, name_of

_ALIGN = 8  # elements
numba_ready()


def _interp():
    from tapegrad.compile._generated_dispatch import interp
    from tapegrad.compile._generated_tables import GROUP, NATIVE

    return interp, NATIVE, GROUP


class Plan:
    """Slot shapes, arena layout and segments for one input-shape signature."""

    def __init__(self, engine, shapes, values=None, const_instrs=(), schedule=None):
        tape = engine.tape
        self.engine = engine
        self.shapes = shapes
        self.uses = 0
        self.pending = None  # auto tier: FusedGroups compiling in the background for this signature
        # ---- run order: the tape's, or a fusion schedule (a topological order in which each fused group's
        #      members are consecutive); positions p index ``order``
        self.fused = []  # (p0, p1, FusedGroup)
        if schedule:
            order = []
            for st in schedule:
                if st[0] == "instr":
                    order.append(int(st[1]))
                else:
                    p0 = len(order)
                    order.extend(int(m.k) for m in st[1].group.members)
                    self.fused.append((p0, len(order), st[1]))
        else:
            order = list(range(len(tape)))
        self.order = order
        members = set()
        internal = np.zeros(tape.n_slots, bool)  # member slots of a fused group that live only in registers
        for p0, p1, fg in self.fused:
            members.update(order[p0:p1])
            internal[[m.out for m in fg.group.members]] = True
            internal[list(fg.group.outputs)] = False
        # plan-time values: slot -> ndarray known from the input shapes alone (SHAPE, SHAPE_I, and cheap ops of
        # them); the instructions in ``const_instrs`` are not run: their outputs are written once, below
        self.values = dict(values or {})
        self.const_instrs = frozenset(const_instrs)
        const_out = [int(s) for k in self.const_instrs for s in tape.instr_outs(k)]
        n_slots = tape.n_slots
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        dtypes = engine.slot_dtypes
        # ---- views: instructions whose output aliases its input's storage (no copy, no run-time work)
        #      layout[s] = (root slot, element offset from the root's start, element strides)
        pinned = np.zeros(n_slots, bool)
        for arr in (tape.input_slots, tape.const_slots, tape.shared_slots, tape.output_slots, tape.update_slots):
            pinned[arr] = True
        pinned[const_out] = True
        layout = {}
        self.view_of = {}  # view instruction k -> its output slot
        for k in order:
            if not engine.view_ok[k] or k in members:
                continue
            (o,) = tape.instr_outs(k)
            x = int(tape.instr_args(k)[0])
            o = int(o)
            if pinned[o] or dtypes[o] != dtypes[x] or sizes[o] == 0 or len(shapes[o]) > MAXD:
                continue
            root, off, st = layout.get(x, (x, 0, row_major(shapes[x])))
            r = view_layout(tape.ops[k], tuple(shapes[x]), st, tuple(shapes[o]))
            if r is None:
                continue
            layout[o] = (root, off + r[0], tuple(r[2]))
            self.view_of[k] = o
        # ---- liveness (a view's root lives until the view's last use)
        last_use = np.full(n_slots, -1, np.int64)
        for p, k in enumerate(order):
            for s in tape.instr_args(k):
                last_use[s] = p
        for p0, p1, fg in self.fused:  # the loop reads its inputs while it writes its outputs
            for s in list(fg.group.inputs) + list(fg.group.shape_inputs):
                last_use[s] = max(last_use[s], p1 - 1)
        for o, (root, _, _) in layout.items():
            last_use[root] = max(last_use[root], last_use[o])
        is_view = np.zeros(n_slots, bool)
        is_view[list(layout)] = True
        dies_at = {}
        for s in range(n_slots):
            if not pinned[s] and not is_view[s] and not internal[s] and last_use[s] >= 0:
                dies_at.setdefault(int(last_use[s]), []).append(s)
        # ---- allocation: one arena per dtype, best-fit reuse of freed blocks (arena.BlockAllocator)
        offsets = np.zeros(n_slots, np.int64)
        arena = BlockAllocator(_ALIGN)
        placed = is_view | internal  # internal fused slots get no block (offset 0, never read or written)

        def alloc(s):
            offsets[s], m = arena.alloc(dtypes[s], sizes[s])
            return m

        blocks = {}
        for s in np.concatenate([tape.input_slots, tape.const_slots, tape.shared_slots, const_out]).astype(np.int64):
            if not placed[s]:
                blocks[s] = alloc(s)
                placed[s] = True
        for p, k in enumerate(order):
            for s in tape.instr_outs(k):
                if not placed[s]:
                    blocks[s] = alloc(s)
                    placed[s] = True
            dead = list(dies_at.get(p, ()))
            dead += [s for s in tape.instr_outs(k) if last_use[s] == -1 and not pinned[s] and not is_view[s]
                     and not internal[s]]
            for s in sorted(set(int(s) for s in dead)):
                arena.release(dtypes[s], blocks[s], int(offsets[s]))
        for s in range(n_slots):  # slots nobody writes (unused temps)
            if not placed[s]:
                blocks[s] = alloc(s)
        for o, (root, off, _) in layout.items():
            offsets[o] = offsets[root] + off
        self.layout = layout
        self.arenas = {dt: np.zeros(max(top, 1), dtype=dt) for dt, top in arena.tops.items()}
        for dt in ("float64", "float32", "int64", "bool"):
            self.arenas.setdefault(dt, np.zeros(1, dtype=dt))
        self.offsets = offsets
        self.sizes = sizes
        self.native_arenas = tuple(self.arenas[d] for d in ("float64", "float32", "int64", "bool"))
        # ---- meta: tape arrays + plan
        shp = np.zeros((n_slots, MAXD), np.int64)
        strd = np.zeros((n_slots, MAXD), np.int64)
        cont = np.ones(n_slots, np.int64)
        for s, sh in enumerate(shapes):
            st = layout[s][2] if s in layout else row_major(sh)
            if s in layout and not is_contiguous(sh, st):
                cont[s] = 0
            for d in range(min(len(sh), MAXD)):
                shp[s, d] = sh[d]
                strd[s, d] = st[d]
        sections = [None] * NH
        if self.fused:  # the interpreter runs positions: instruction arrays in run order
            o = np.asarray(order, np.int64)
            sections[H_CODES] = tape.codes[o]
            sections[H_ARGP], sections[H_ARGS] = _csr(tape.arg_ptr, tape.args, o)
            sections[H_OUTP], sections[H_OUTS] = _csr(tape.out_ptr, tape.outs, o)
            sections[H_IPP], sections[H_IP] = _csr(tape.ip_ptr, tape.iparams, o)
            fpp, fpv = _csr(tape.fp_ptr, engine.fparams, o)
            sections[H_FPP] = fpp
            self.fparams = np.ascontiguousarray(fpv, np.float64)
            sections[H_ICD] = engine.icd[o]
            sections[H_IGRP] = engine.igrp[o]
        else:
            sections[H_CODES] = tape.codes
            sections[H_ARGP] = tape.arg_ptr
            sections[H_ARGS] = tape.args
            sections[H_OUTP] = tape.out_ptr
            sections[H_OUTS] = tape.outs
            sections[H_IPP] = tape.ip_ptr
            sections[H_IP] = tape.iparams
            sections[H_FPP] = tape.fp_ptr
            sections[H_ICD] = engine.icd
            sections[H_IGRP] = engine.igrp
            self.fparams = engine.fparams
        sections[H_SAK] = engine.slot_kind_native
        sections[H_SND] = tape.slot_ndim
        sections[H_SOFF] = offsets
        sections[H_SSIZE] = np.asarray(sizes, np.int64)
        sections[H_SCONT] = cont
        sections[H_SSHP] = shp.ravel()
        sections[H_SSTR] = strd.ravel()
        lens = [len(a) for a in sections]
        starts = NH + np.concatenate([[0], np.cumsum(lens)[:-1]])
        meta = np.empty(NH + sum(lens), np.int64)
        meta[:NH] = starts
        for st, a in zip(starts, sections):
            meta[st:st + len(a)] = a
        self.meta = meta
        # ---- views and constants
        self._views = {}
        for i, s in enumerate(tape.const_slots):
            np.copyto(self.view(s), tape.consts[i], casting="unsafe")
        for s in const_out:
            np.copyto(self.view(s), self.values[s], casting="unsafe")
        self.in_views = [self.view(s) for s in tape.input_slots]
        self.shared_views = [self.view(s) for s in tape.shared_slots]
        self.out_views = [self.view(s) for s in tape.output_slots]
        self.update_views = [self.view(s) for s in tape.update_slots]
        self._build_steps()

    def _segments(self):
        """``(True, p0, p1)`` runs of native positions and ``(False, p)`` single positions, fused ranges as
        ``("fused", p0, p1, FusedGroup)``."""
        if not self.fused:
            return self.engine.segments
        native = self.engine.native
        order = self.order
        starts = {p0: (p0, p1, fg) for p0, p1, fg in self.fused}
        segs = []
        p, n = 0, len(order)
        while p < n:
            if p in starts:
                p0, p1, fg = starts[p]
                segs.append(("fused", p0, p1, fg))
                p = p1
            elif native[order[p]]:
                q = p
                while q < n and native[order[q]] and q not in starts:
                    q += 1
                segs.append((True, p, q))
                p = q
            else:
                segs.append((False, p))
                p += 1
        return segs

    def _build_steps(self):
        """One no-argument callable per segment: interpreter runs, fused loops, prebound native steps,
        callbacks."""
        engine = self.engine
        tape = engine.tape
        interp = engine.interp
        A0, A1, A2, A3 = self.native_arenas
        meta, fp = self.meta, self.fparams
        order = self.order
        self.steps = []
        self.kinds = {}
        for seg in self._segments():
            if seg[0] == "fused":
                _, p0, p1, fg = seg
                self.steps.append(self._fused_step(fg))
                for p in range(p0, p1):
                    self.kinds[order[p]] = "fused"
                continue
            if seg[0]:
                k0, k1 = seg[1], seg[2]

                def run(k0=k0, k1=k1):
                    rc = interp(meta, fp, k0, k1, A0, A1, A2, A3)
                    if rc != 0:
                        k = order[-1 - rc]
                        raise RuntimeError(f"CPU engine: instruction {k} ({name_of(int(tape.codes[k]))}) has no "
                                           f"kernel for its dtypes")
                self.steps.append(run)
                for p in range(k0, k1):
                    self.kinds[order[p]] = "interp"
                continue
            k = order[seg[1]]
            if k in self.const_instrs:
                self.kinds[k] = "const"
                continue
            if k in self.view_of:
                self.kinds[k] = "view"
                continue
            step = None
            if engine.step_ok[k] and k not in engine._dynamic:
                try:
                    step = make_step(name_of(int(tape.codes[k])), tape.ops[k], engine.node(k),
                                     [self.view(s) for s in tape.instr_args(k)],
                                     [self.view(s) for s in tape.instr_outs(k)],
                                     known=[self.values.get(int(s)) for s in tape.instr_args(k)])
                except Exception:  # an unusual case the step does not cover: perform decides
                    step = None
            if step is not None:
                self.kinds[k] = "step"
                self.steps.append(step)
            else:
                self.kinds[k] = "callback"
                if int(tape.codes[k]) == CALLBACK:
                    _warn_callback(tape.ops[k])
                self.steps.append(lambda k=k: self._callback(k, self._known))

    def _fused_step(self, fg):
        """The fused loop of ``fg`` on this plan's arena views (arguments bound once when every input is
        C-contiguous, else made contiguous per call by ``FusedGroup.run``)."""
        g = fg.group
        ins = [self.view(s) for s in g.inputs]
        outs = [self.view(s) for s in g.outputs]
        fn = fg.kernel.fn
        if fn is not None and all(a.flags.c_contiguous for a in ins):
            args = [fg.size, fg.shp]
            for a, p, st in zip(ins, fg.patterns, fg.strides):
                args.append(a.reshape(-1))
                if st is not None:
                    args.append(st)
            args += [o.reshape(-1) for o in outs]
            args = tuple(args)
            return lambda: fn(*args)
        return lambda: fg.run(ins, outs)

    def view(self, s):
        """Writable array view of slot ``s`` in its arena."""
        s = int(s)
        v = self._views.get(s)
        if v is None:
            off = int(self.offsets[s])
            arena = self.arenas[self.engine.slot_dtypes[s]]
            if s in self.layout:
                v = strided(arena, off, self.shapes[s], self.layout[s][2])
            else:
                v = arena[off:off + self.sizes[s]].reshape(self.shapes[s])
            self._views[s] = v
        return v

    def execute(self, inputs, shared, known=None):
        for v, a in zip(self.in_views, inputs):
            np.copyto(v, a, casting="unsafe")
        for v, a in zip(self.shared_views, shared):
            np.copyto(v, a, casting="unsafe")
        self._known = known
        with np.errstate(all="ignore"):  # NumPy steps (BLAS products, callbacks): inf/NaN flow through silently
            for step in self.steps:
                step()
        outs = [v.copy() for v in self.out_views]
        ups = [v.copy() for v in self.update_views]
        return outs, ups

    def _callback(self, k, known):
        tape = self.engine.tape
        out_slots = tape.instr_outs(k)
        if known is not None and all(int(s) in known for s in out_slots):
            results = [known[int(s)] for s in out_slots]
        else:
            ins = []
            for s in tape.instr_args(k):
                v = self.view(s).view()
                v.flags.writeable = False
                ins.append(v)
            storage = [[None] for _ in out_slots]
            op = tape.ops[k]
            op.perform(self.engine.node(k), ins, storage)
            results = [st[0] for st in storage]
        user = getattr(tape.ops[k], "code", None) is None  # a user op: its perform is checked as on device="python"
        for s, r in zip(out_slots, results):
            r = np.asarray(r)
            v = self.view(s)
            if user and (r.dtype.name != self.engine.slot_dtypes[s] or r.ndim != v.ndim):
                raise TypeError(f"{tape.ops[k]}.perform produced {r.dtype.name} with shape {r.shape} for "
                                f"{self.engine.slot_name(s)}, whose type is {self.engine.slot_dtypes[s]} with "
                                f"{v.ndim} dimension(s)")
            if r.shape != v.shape:
                raise ValueError(f"CPU engine: {tape.ops[k]} (instruction {k}) produced shape {r.shape} for "
                                 f"{self.engine.slot_name(s)}, the plan expected {v.shape}")
            np.copyto(v, r, casting="unsafe")


class CPUEngine:
    """Run a :class:`~tapegrad.tape.format.Tape` with the compiled interpreter."""

    def __init__(self, tape, tier=None):
        if tier not in (None, "auto", "fused", "interp", "program"):
            raise ValueError(f"CPU engine: tier must be None, 'auto', 'fused', 'program' or 'interp', got {tier!r}")
        self.tape = tape
        self.tier = "auto" if tier is None else tier
        self.interp, native, self._groups = _interp()
        n = len(tape)
        self.slot_dtypes = [CODE_DTYPES[int(c)] for c in tape.slot_dtype]
        self.slot_kind_native = np.array([KIND_OF_DTYPE.get(d, -1) for d in self.slot_dtypes], np.int64)
        self.fparams = np.ascontiguousarray(tape.fparams, np.float64)
        self.icd = np.full(n, -1, np.int64)
        self.igrp = np.zeros(n, np.int64)
        self.native = np.zeros(n, bool)
        for k in range(n):
            cd = self._compute_kind(k, native)
            if cd is not None:
                self.icd[k] = cd
                self.igrp[k] = self._groups.get((int(tape.codes[k]), cd), 0)
                self.native[k] = True
        # instructions outside the interpreter that may alias their input or run as a prebound native step
        names = self.names = [name_of(int(c)) for c in tape.codes]
        self.view_ok = [not self.native[k] and names[k] in VIEW_CODES and bool(tape.ops) and tape.ops[k] is not None
                        and len(tape.instr_outs(k)) == 1 and len(tape.instr_args(k)) >= 1 for k in range(n)]
        self.step_ok = [not self.native[k] and names[k] in STEP_CODES and bool(tape.ops)
                        and tape.ops[k] is not None
                        for k in range(n)]
        self._last_plan = None
        self.segments = []
        k = 0
        while k < n:
            if self.native[k]:
                j = k
                while j < n and self.native[j]:
                    j += 1
                self.segments.append((True, k, j))
                k = j
            else:
                self.segments.append((False, k))
                k += 1
        self._plans = {}
        self._programs = {}  # signature -> EngineProgram, or False (no program: tiers 0/1)
        self._cache_probed = {}  # signature -> True once the disk cache was checked for its program
        self.program_error = None  # why the last program was not made (Unsupported, compile error)
        self.fast = None  # the program of the last signature run by one: Function's fast path
        self._standins = {}
        self._dynamic = set()
        self._producer = {}
        for k in range(n):
            for s in tape.instr_outs(k):
                self._producer[int(s)] = k

    # ---------------------------------------------------------------- nativeness
    def _compute_kind(self, k, native):
        """Compute kind of instruction ``k`` if a native kernel covers it, else None."""
        tape = self.tape
        code = int(tape.codes[k])
        if code == CALLBACK or code not in native:
            return None
        slots = list(tape.instr_args(k)) + list(tape.instr_outs(k))
        if any(self.slot_kind_native[s] < 0 or tape.slot_ndim[s] > MAXD for s in slots):
            return None
        if len(tape.instr_outs(k)) != 1:
            return None
        out_kind = int(self.slot_kind_native[tape.instr_outs(k)[0]])
        op = tape.ops[k] if tape.ops else None
        spec = getattr(op, "spec", None)
        if spec is not None and getattr(op, "kind", None) == "elementwise":
            if len(tape.instr_args(k)) != spec.nin:
                return None
            if spec.out == "bool":
                dt = np.result_type(*[self.slot_dtypes[s] for s in tape.instr_args(k)]).name
                cd = KIND_OF_DTYPE.get(dt)
            else:
                cd = out_kind
        else:
            cd = out_kind
            if name_of(code) == "SUM_LIKE" and self.slot_kind_native[tape.instr_args(k)[0]] != out_kind:
                return None
        if cd is None or cd not in native[code]:
            return None
        if spec is not None and (code, cd) not in self._groups:
            return None
        return cd

    def native_codes(self):
        """``{name: count}`` of native instructions (interpreter, views, prebound native steps) and of
        callback instructions (NumPy ``perform``) in this tape, as the last call's plan ran them."""
        nat, cb = {}, {}
        plan = self._last_plan
        for k in range(len(self.tape)):
            name = name_of(int(self.tape.codes[k]))
            native = self.native[k] if plan is None else plan.kinds.get(k) != "callback"
            d = nat if native else cb
            d[name] = d.get(name, 0) + 1
        return nat, cb

    def node(self, k):
        """The Apply of instruction ``k`` (a stand-in with typed variables when the tape lost its graph)."""
        node = self._standins.get(k)
        if node is None:
            from tapegrad.compile.reference import instr_node

            node = self._standins[k] = instr_node(self.tape, k)
        return node

    def slot_name(self, s):
        from tapegrad.compile.reference import slot_label

        return slot_label(self.tape, s)

    # ---------------------------------------------------------------- running
    def run(self, input_arrays, shared_arrays=()):
        tape = self.tape
        inputs = [np.asarray(a) for a in input_arrays]
        shared = [np.asarray(a) for a in shared_arrays]
        if len(inputs) != len(tape.input_slots):
            raise TypeError(f"CPU engine: expected {len(tape.input_slots)} inputs, got {len(inputs)}")
        if len(shared) != len(tape.shared_slots):
            raise TypeError(f"CPU engine: expected {len(tape.shared_slots)} shared values, got {len(shared)}")
        key = tuple(a.shape for a in inputs) + tuple(a.shape for a in shared)
        while True:
            known = None
            full_key = key
            if self._dynamic:
                known = self._prepass(inputs, shared)
                full_key = key + tuple(known[s].shape for s in sorted(known))
            plan = self._plans.get(full_key)
            if plan is None:
                with gc_paused():  # (the collections a big tape's planning triggers walk the user's graph)
                    try:
                        shapes = self._infer_shapes(inputs, shared, known)
                    except _Dynamic as d:
                        self._dynamic.add(d.k)
                        continue
                    values, const_instrs = self._plan_values
                    sched = None
                    if self.tier == "fused":
                        sched = self._fusion(shapes, const_instrs, background=False)
                    plan = self._plans[full_key] = Plan(self, shapes, values, const_instrs, sched)
            elif self.tier == "auto" and (self._dynamic or self._programs.get(full_key, True) is False):
                plan = self._auto(full_key, plan)
            plan.uses += 1
            self._last_plan = plan
            if self.tier in ("auto", "program") and not self._dynamic:
                prog = engine_program(self, full_key, plan)
                if prog is not None:
                    try:
                        return prog.run(inputs, shared)
                    except (IndexError, np.linalg.LinAlgError):
                        pass  # an index out of range, a singular matrix: tier 0 raises it with the reference message
            return plan.execute(inputs, shared, known)

    # ---------------------------------------------------------------- fused tier
    def _fusion(self, shapes, const_instrs, background):
        """The fusion schedule at these slot shapes with its groups bound to their kernels (compiled now, or
        started in the background), or None when nothing fuses."""
        from tapegrad.compile.fused import FusedGroup
        from tapegrad.tape.fuse import schedule

        try:
            sched = schedule(self.tape, shapes, min_size=FUSE_MIN_GROUP)
        except Exception:  # noqa: BLE001 - fusion is an optimization: tier 0 runs the tape as it is
            return None
        skip = set(const_instrs) | self._dynamic
        out = []
        for st in sched:
            if st[0] == "group":
                g = st[1]
                if not any(m.k in skip for m in g.members):
                    try:
                        out.append(("group", FusedGroup(g, background=background)))
                        continue
                    except Exception:  # noqa: BLE001 - a loop that does not compile: its members run in tier 0
                        pass
                out.extend(("instr", m.k) for m in g.members)
            else:
                out.append(st)
        return out if any(st[0] == "group" for st in out) else None

    def _auto(self, full_key, plan):
        """tier "auto": after FUSE_AFTER_USES calls of a signature, compile its groups in the background; once
        all are done, swap in a plan on the fused schedule."""
        if plan.pending is None:
            if plan.fused or plan.uses < FUSE_AFTER_USES:
                return plan
            sched = self._fusion(plan.shapes, plan.const_instrs, background=True)
            plan.pending = sched or ()
            return plan
        if not plan.pending or not all(st[1].kernel._done.is_set() for st in plan.pending if st[0] == "group"):
            return plan
        sched = []
        for st in plan.pending:
            if st[0] == "group" and st[1].kernel.fn is None:  # failed to compile: tier 0
                sched.extend(("instr", m.k) for m in st[1].group.members)
            else:
                sched.append(st)
        plan.pending = ()
        if not any(st[0] == "group" for st in sched):
            return plan
        new = Plan(self, plan.shapes, plan.values, plan.const_instrs, sched)
        new.uses = plan.uses
        new.pending = ()
        self._plans[full_key] = new
        return new

    def _infer_shapes(self, inputs, shared, known, input_values=None):
        """Slot shapes for these inputs (``input_values``: per input, its value where a caller knows it, else
        None: then only the input's shape matters); also sets ``self._plan_values``: ``(values, const_instrs)``, the
        slot values known from the input shapes alone (SHAPE, SHAPE_I and cheap ops of known values) and the
        non-native instructions they make unnecessary at run time."""
        tape = self.tape
        shapes = [None] * tape.n_slots
        for s, a in zip(tape.input_slots, inputs):
            if a.ndim != tape.slot_ndim[s]:
                raise ValueError(f"CPU engine: input {self.slot_name(s)} expects {tape.slot_ndim[s]} dimension(s), "
                                 f"got shape {a.shape}")
            shapes[s] = a.shape
        for s, a in zip(tape.shared_slots, shared):
            shapes[s] = a.shape
        vals = {}
        for s, c in zip(tape.const_slots, tape.consts):
            shapes[s] = np.shape(c)
            if np.size(c) <= _PLAN_VALUE_LIMIT:
                vals[int(s)] = np.asarray(c)
        for s, v in zip(tape.input_slots, input_values or ()):
            if v is not None:
                vals[int(s)] = np.asarray(v)
        const_instrs = []
        self._plan_values = (vals, const_instrs)
        for k in range(len(tape)):
            outs = tape.instr_outs(k)
            args = tape.instr_args(k)
            res = None
            if known is not None and all(int(s) in known for s in outs):
                # only the shapes: the pre-pass values belong to this call, not to the plan (made plan values,
                # they were pinned into later calls of the same signature)
                res = [known[int(s)].shape for s in outs]
            elif k in self._dynamic and input_values is None:
                raise _Dynamic(k)
            else:
                pv = self._plan_value(k, shapes, vals)
                if pv is not None:
                    res = [v.shape for v in pv]
                    for s, v in zip(outs, pv):
                        vals[int(s)] = v
                    if not self.native[k]:
                        const_instrs.append(k)
                else:
                    op = tape.ops[k]
                    node = self.node(k)
                    try:
                        res = op_infer_shape(op, node, [shapes[s] for s in args], [vals.get(int(s)) for s in args])
                    except ValueError as e:  # shapes that cannot go together (e.g. cannot broadcast)
                        raise shape_error(tape, k, node, [shapes[s] for s in args], e, "CPU engine") from None
                    except NotImplementedError:
                        in_shapes, in_vals = [shapes[s] for s in args], [vals.get(int(s)) for s in args]
                        res = _value_shape(self.names[k], in_shapes, in_vals)
                        by_values = getattr(op, "infer_shape_values", None)
                        if res is None and by_values is not None:
                            try:
                                res = by_values(node, in_shapes, in_vals)
                            except NotImplementedError:
                                res = None
                        if res is None:
                            raise _Dynamic(k) from None
            for s, sh in zip(outs, res):
                sh = tuple(int(n) for n in sh)
                if len(sh) != tape.slot_ndim[s]:
                    raise ValueError(f"CPU engine: {tape.ops[k]}.infer_shape gave {sh} for {self.slot_name(s)} "
                                     f"of rank {tape.slot_ndim[s]}")
                shapes[s] = sh
        for s in range(tape.n_slots):
            if shapes[s] is None:
                shapes[s] = tuple(0 for _ in range(tape.slot_ndim[s]))
        return shapes

    def _plan_value(self, k, shapes, vals):
        """Output values of instruction ``k`` when the plan can compute them from input shapes and known
        values (cheap, pure ops only), else None."""
        tape = self.tape
        name = self.names[k]
        args = tape.instr_args(k)
        outs = tape.instr_outs(k)
        if not tape.ops or tape.ops[k] is None or len(outs) != 1:
            return None
        o = int(outs[0])
        dt = self.slot_dtypes[o]
        if name == "SHAPE":
            return [np.asarray(shapes[args[0]], dtype=dt).reshape(-1)]
        if name == "SHAPE_I":
            return [np.asarray(shapes[args[0]][tape.ops[k].i], dtype=dt)]
        op = tape.ops[k]
        if not (name in _PLAN_EVAL or (getattr(op, "kind", None) == "elementwise" and np.dtype(dt).kind in "iub")):
            return None
        ins = [vals.get(int(s)) for s in args]
        if any(v is None for v in ins):
            return None
        storage = [[None]]
        try:
            with np.errstate(all="ignore"):
                op.perform(self.node(k), ins, storage)
        except Exception:  # noqa: BLE001 - the op's own run (callback) raises it with its message
            return None
        r = np.asarray(storage[0][0])
        if r.size > _PLAN_VALUE_LIMIT or r.ndim != tape.slot_ndim[o] or r.dtype.name != dt:
            return None
        r = r.copy()
        r.setflags(write=False)
        return [r]

    def _prepass(self, inputs, shared):
        """Values of the dynamic instructions' outputs (and their ancestors), by ``perform``."""
        tape = self.tape
        need = set()
        stack = list(self._dynamic)
        while stack:
            k = stack.pop()
            if k in need:
                continue
            need.add(k)
            for s in tape.instr_args(k):
                p = self._producer.get(int(s))
                if p is not None:
                    stack.append(p)
        env = {}
        for s, a in zip(tape.input_slots, inputs):
            env[int(s)] = a.astype(self.slot_dtypes[s], copy=False)
        for s, a in zip(tape.shared_slots, shared):
            env[int(s)] = a
        for s, c in zip(tape.const_slots, tape.consts):
            env[int(s)] = np.asarray(c)
        known = {}
        for k in sorted(need):
            storage = [[None] for _ in tape.instr_outs(k)]
            tape.ops[k].perform(self.node(k), [env[int(s)] for s in tape.instr_args(k)], storage)
            for s, st in zip(tape.instr_outs(k), storage):
                env[int(s)] = known[int(s)] = np.asarray(st[0])
        return known


FUSE_MIN_GROUP = 2  # smallest fused group worth a loop of its own
FUSE_AFTER_USES = 3  # tier "auto": calls of a signature before its groups are compiled in the background
_WARNED_OPS = set()


def _warn_callback(op):
    """One UserWarning per user op class that the CPU engine runs by ``perform``."""
    import warnings

    cls = type(op)
    if cls in _WARNED_OPS or getattr(cls, "callback_by_design", False):   # tapegrad's own (``IfElse``)
        return
    _WARNED_OPS.add(cls)
    warnings.warn(f"user op {cls.__name__} runs in Python inside a compiled function (CPU engine callback: "
                  f"its NumPy perform, between compiled segments)", UserWarning, stacklevel=2)


def _csr(ptr, data, order):
    """CSR ``(ptr, data)`` with rows taken in ``order``."""
    ptr = np.asarray(ptr, np.int64)
    data = np.asarray(data)
    lens = ptr[order + 1] - ptr[order]
    new_ptr = np.zeros(len(order) + 1, np.int64)
    np.cumsum(lens, out=new_ptr[1:])
    idx = np.concatenate([np.arange(ptr[k], ptr[k + 1]) for k in order]) if len(order) else np.zeros(0, np.int64)
    return new_ptr, data[idx.astype(np.int64)]


_PLAN_VALUE_LIMIT = 100_000  # elements: larger plan-time values are computed at run time
_PLAN_EVAL = frozenset(("SUBTENSOR", "JOIN", "STACK", "EYE", "ARANGE", "ALLOC", "RESHAPE", "DIMSHUFFLE", "FLATTEN",
                        "SPECIFY_SHAPE", "SUM", "PROD", "MAX", "MIN", "TRI", "ZEROS_LIKE", "ONES_LIKE", "REPEAT",
                        "TILE"))
"""Ops the plan may evaluate (``perform``) when all their inputs are plan-time values."""


def _value_shape(name, in_shapes, in_vals):
    """Output shapes of a value-dependent-shape op whose shape-giving inputs are plan-time values, or None."""
    if name == "RESHAPE" and in_vals[1] is not None:
        shp = [int(n) for n in np.ravel(in_vals[1])]
        size = int(np.prod(in_shapes[0], dtype=np.int64))
        if shp.count(-1) == 1:
            rest = int(np.prod([n for n in shp if n != -1], dtype=np.int64))
            if rest == 0 or size % rest:
                return None
            shp[shp.index(-1)] = size // rest
        if any(n < 0 for n in shp) or int(np.prod(shp, dtype=np.int64)) != size:
            return None  # perform raises its own error
        return [tuple(shp)]
    if name == "EYE" and in_vals[0] is not None and in_vals[1] is not None:
        n, m = int(in_vals[0]), int(in_vals[1])
        return [(n, m)] if n >= 0 and m >= 0 else None
    return None


class _Dynamic(Exception):
    def __init__(self, k):
        self.k = k
