"""``CUDAPlan``: the per-shape-signature plan of the CUDA engine (:mod:`tapegrad.compile.cuda`).

Slot shapes, device buffers reused by liveness, plan-time constants, and one
step per tape instruction (kernel launches, index-map gathers or the host
fallback).  Split out of :mod:`tapegrad.compile.cuda`, which re-exports
``CUDAPlan``; see that module's docstring for the design.
"""

from __future__ import annotations

import numpy as np

from tapegrad.compile.cuda import (_SMALL, CONTRACTIONS, REDUCE_KIND, SELECT_CODES, SHAPE_ONLY, _contraction_plan, _L,
                                    _NoKernel, _size, is_device_array)
from tapegrad.compile.cuda_plan_reduce import ReduceSteps
from tapegrad.registry import CALLBACK, name_of


class CUDAPlan(ReduceSteps):
    """Device buffers, plan-time constants and one step per instruction for one shape signature."""

    def __init__(self, engine, shapes, known):
        self.engine = engine
        self.cuda, self.K = engine.cuda, engine.K
        tape = engine.tape
        self.tape = tape
        self.shapes = shapes
        self.dtypes = engine.slot_dtypes
        self.fallback_names, self.native_names = set(), set()
        n_slots = tape.n_slots
        # ---- plan-time constants (host values), instructions they replace
        self.hostval = {int(s): np.asarray(c, dtype=self.dtypes[s]).reshape(shapes[s])
                        for s, c in zip(tape.const_slots, tape.consts)}
        if known:
            for s, v in known.items():
                self.hostval[s] = np.asarray(v, dtype=self.dtypes[s])
        skip = set()
        for k in range(len(tape)):
            if self._try_constant(k):
                skip.add(k)
        # ---- buffers: one flat device array per slot, reused by liveness (same dtype and size)
        cuda = self.cuda
        pinned = np.zeros(n_slots, bool)
        for arr in (tape.input_slots, tape.const_slots, tape.shared_slots, tape.output_slots, tape.update_slots):
            pinned[arr] = True
        for s in self.hostval:
            pinned[s] = True
        last_use = np.full(n_slots, -1, np.int64)
        for k in range(len(tape)):
            if k not in skip:
                for s in tape.instr_args(k):
                    last_use[s] = k
        self.buf = [None] * n_slots
        free = {}

        def alloc(s):
            key = (self.dtypes[s], max(_size(shapes[s]), 1))
            fl = free.get(key)
            self.buf[s] = fl.pop() if fl else cuda.device_array(key[1], dtype=key[0])

        for s, v in self.hostval.items():
            self.buf[s] = cuda.to_device(np.ascontiguousarray(v).reshape(-1) if v.size else np.zeros(1, v.dtype))
        for s in list(tape.input_slots) + list(tape.shared_slots):
            if self.buf[s] is None:
                alloc(s)
        for k in range(len(tape)):
            if k in skip:
                continue
            for s in tape.instr_outs(k):
                if self.buf[s] is None:
                    alloc(s)
            dead = {int(s) for s in tape.instr_args(k) if last_use[s] == k and not pinned[s]}
            dead |= {int(s) for s in tape.instr_outs(k) if last_use[s] == -1 and not pinned[s]}
            for s in dead:
                free.setdefault((self.dtypes[s], max(_size(shapes[s]), 1)), []).append(self.buf[s])
        for s in range(n_slots):
            if self.buf[s] is None:
                alloc(s)
        self.err = cuda.to_device(np.zeros(1, np.int32))
        self.check_err = []  # instructions whose kernels may set the error flag
        # ---- steps
        self.steps = []
        for k in range(len(tape)):
            if k in skip:
                self.native_names.add(name_of(int(tape.codes[k])))
                continue
            name = name_of(int(tape.codes[k]))
            try:
                step = self._build_step(k, name)
                self.native_names.add(name)
            except _NoKernel:
                step = self._fallback_step(k)
                self.fallback_names.add(name)
            self.steps.append((k, step))

    # ---------------------------------------------------------------- helpers
    def shape(self, s):
        return self.shapes[int(s)]

    def n(self, s):
        return _size(self.shapes[int(s)])

    def launch1(self, kernel, n, *args):
        K = self.K
        return _L(kernel, K.grid1(n), K.TPB), (n,) + args

    def _try_constant(self, k):
        """Evaluate instruction ``k`` at plan time when its outputs depend only on shapes and known values."""
        tape, engine = self.tape, self.engine
        name = name_of(int(tape.codes[k]))
        args = [int(s) for s in tape.instr_args(k)]
        outs = [int(s) for s in tape.instr_outs(k)]
        if all(s in self.hostval for s in outs):
            return True
        op = tape.ops[k]
        if name in SHAPE_ONLY:
            ins = [self.hostval.get(s, np.broadcast_to(np.zeros((), self.dtypes[s]), self.shapes[s])) for s in args]
        elif name != "CALLBACK" and args and all(s in self.hostval for s in args) and \
                all(self.n(s) <= _SMALL for s in outs):
            ins = [self.hostval[s] for s in args]
        else:
            return False
        storage = [[None] for _ in outs]
        try:
            with np.errstate(all="ignore"):
                op.perform(engine.node(k), ins, storage)
        except Exception:  # noqa: BLE001 - leave errors to run time (fallback raises them there)
            return False
        for s, st in zip(outs, storage):
            self.hostval[s] = np.asarray(st[0], dtype=self.dtypes[s])
        return True

    # ---------------------------------------------------------------- running
    def execute(self, inputs, shared, known, return_device):
        cuda, tape = self.cuda, self.tape
        buf = list(self.buf)
        for s, a in zip(tape.input_slots, inputs):
            self._put(buf, int(s), a)
        for s, a in zip(tape.shared_slots, shared):
            self._put(buf, int(s), a)
        if self.check_err:
            self.err.copy_to_device(np.zeros(1, np.int32))
        for k, step in self.steps:
            step(buf)
        if self.check_err and int(self.err.copy_to_host()[0]):
            for k in self.check_err:  # run the failing op on the host for its own error message
                self._fallback_step(k)(buf)
            raise RuntimeError("CUDA engine: an index was out of bounds")
        outs = [self._get(buf, int(s), return_device) for s in tape.output_slots]
        ups = [self._get(buf, int(s), False) for s in tape.update_slots]
        return outs, ups

    def _put(self, buf, s, a):
        dt = self.dtypes[s]
        if is_device_array(a):
            if np.dtype(a.dtype) != np.dtype(dt):
                raise TypeError(f"CUDA engine: device array for {self.engine.slot_name(s)} has dtype {a.dtype}, "
                                f"expected {dt}")
            d = a if hasattr(a, "copy_to_host") else self.cuda.as_cuda_array(a)
            n = self.n(s)
            if n == 0:
                return
            try:
                buf[s] = d.reshape(n)
            except Exception:  # noqa: BLE001 - not contiguous: copy on the host side
                buf[s] = self.cuda.to_device(np.ascontiguousarray(d.copy_to_host()).reshape(n))
            return
        a = np.asarray(a)
        if a.size:
            buf[s].copy_to_device(np.ascontiguousarray(a, dtype=dt).reshape(-1))

    def _get(self, buf, s, device):
        shape = self.shapes[s]
        n = _size(shape)
        if device:
            out = self.cuda.device_array(max(n, 1), dtype=self.dtypes[s])
            if n:
                out.copy_to_device(buf[s][:n])
            return out[:n].reshape(shape) if n else out[:0].reshape(shape)
        if n == 0:
            return np.zeros(shape, self.dtypes[s])
        return buf[s].copy_to_host()[:n].reshape(shape)

    # ---------------------------------------------------------------- fallback
    def _fallback_step(self, k):
        tape, engine = self.tape, self.engine
        args = [int(s) for s in tape.instr_args(k)]
        outs = [int(s) for s in tape.instr_outs(k)]
        op = tape.ops[k]

        def step(buf):
            engine.fallback_calls += 1
            ins = []
            for s in args:
                if s in self.hostval:
                    ins.append(self.hostval[s])
                else:
                    n = self.n(s)
                    v = buf[s].copy_to_host()[:n].reshape(self.shapes[s]) if n else np.zeros(self.shapes[s],
                                                                                              self.dtypes[s])
                    v.flags.writeable = False
                    ins.append(v)
            storage = [[None] for _ in outs]
            op.perform(engine.node(k), ins, storage)
            for s, st in zip(outs, storage):
                r = np.asarray(st[0])
                if r.shape != self.shapes[s]:
                    raise ValueError(f"CUDA engine: {op} (instruction {k}) produced shape {r.shape} for "
                                     f"{engine.slot_name(s)}, the plan expected {self.shapes[s]}")
                if r.size:
                    buf[s].copy_to_device(np.ascontiguousarray(r, dtype=self.dtypes[s]).reshape(-1))

        return step

    # ---------------------------------------------------------------- native steps
    def _build_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        spec = getattr(op, "spec", None)
        if int(tape.codes[k]) == CALLBACK:
            raise _NoKernel
        if spec is not None and getattr(op, "kind", None) == "elementwise":
            return self._ew_step(k, spec.expr, [int(s) for s in tape.instr_args(k)])
        if name == "CAST":
            return self._ew_step(k, "x0", [int(tape.instr_args(k)[0])])
        if name in REDUCE_KIND or name in ("ARGMAX", "ARGMIN", "LOGSUMEXP"):
            return self._reduce_step(k, name)
        if name in ("SUM_LIKE", "TILE_SUM", "SUM_BROADCAST"):
            return self._sum_adjoint_step(k, name)
        if name in CONTRACTIONS:
            return self._contraction_step(k, name)
        if name in ("SOFTMAX", "LOG_SOFTMAX"):
            return self._softmax_step(k, name)
        if name in ("CUMSUM", "CUMPROD"):
            return self._scan_step(k, name)
        if name == "LINREC":
            return self._linrec_step(k)
        if name in ("ADVANCED_INC_SUBTENSOR1", "ADVANCED_SCATTER1"):
            return self._advanced_step(k, name)
        if name == "ADVANCED_SUBTENSOR1" and int(tape.instr_args(k)[-1]) not in self.hostval:
            return self._advanced_step(k, name)
        if name in SELECT_CODES:
            return self._select_step(k, name)
        raise _NoKernel

    # -- elementwise
    def _ew_step(self, k, expr, args):
        K = self.K
        o = int(self.tape.instr_outs(k)[0])
        oshape = self.shape(o)
        n = _size(oshape)
        nd = len(oshape)
        modes, strides = [], []
        for s in args:
            sh = self.shape(s)
            if tuple(sh) == tuple(oshape):
                modes.append("f")
                strides.append(None)
            elif _size(sh) == 1:
                modes.append("s")
                strides.append(None)
            else:
                full = (1,) * (nd - len(sh)) + tuple(sh)
                st, acc = [0] * nd, 1
                for d in range(nd - 1, -1, -1):
                    st[d] = 0 if full[d] == 1 else acc
                    acc *= full[d]
                modes.append("g")
                strides.append(self.cuda.to_device(np.asarray(st or [0], np.int64)))
        if n == 0:
            return lambda buf: None
        kern = K.elementwise_kernel(expr, tuple(modes))
        dummy = self.cuda.to_device(np.zeros(1, np.int64))
        shp = self.cuda.to_device(np.asarray(oshape or (1,), np.int64))
        cfg = _L(kern, K.grid1(n), K.TPB)
        sts = [dummy if st is None else st for st in strides]

        def step(buf):
            xs = []
            for s, st in zip(args, sts):
                xs += [buf[s], st]
            cfg(n, nd, shp, buf[o], *xs)

        return step

    # -- contractions
    def _contraction_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        args = [int(s) for s in tape.instr_args(k)]
        o = int(tape.instr_outs(k)[0])
        odt = self.dtypes[o]
        if odt not in ("float64", "float32", "int64"):
            raise _NoKernel
        a, b = args[0], args[1]
        ash, bsh = self.shape(a), self.shape(b)
        if name == "OUTER":
            spec, ash, bsh = "i,j->ij", (_size(ash),), (_size(bsh),)
        elif name == "OUTER_T":
            g, other = args[0], args[1]
            if op.side == 0:
                spec, a, b, ash, bsh = "ij,j->i", g, other, self.shape(g), (self.n(other),)
            else:
                spec, a, b, ash, bsh = "i,ij->j", other, g, (self.n(other),), self.shape(g)
        else:
            spec = op.einsum_spec(len(ash), len(bsh))
        try:
            plan = _contraction_plan(spec, ash, bsh)
        except _NoKernel:
            raise
        nb, M, N, Kd, amap, bmap, cmap, out_shape = plan
        if _size(out_shape) != self.n(o):
            raise _NoKernel
        if self.n(o) == 0:
            return lambda buf: None
        cuda, K = self.cuda, self.K
        d = cuda.to_device

        def prep(src_slot, mp, size):
            if mp is None and self.dtypes[src_slot] == odt:
                return None, None
            tmp = cuda.device_array(max(size, 1), dtype=odt)
            if mp is None:
                mp = np.arange(size, dtype=np.int64)
            return tmp, d(mp)

        atmp, amapd = prep(a, amap, nb * M * Kd)
        btmp, bmapd = prep(b, bmap, nb * Kd * N)
        ctmp = cuda.device_array(max(nb * M * N, 1), dtype=odt) if cmap is not None else None
        cmapd = d(cmap) if cmap is not None else None
        gp = K.misc("gather_plain")
        gemm = K.gemm_kernel(odt)
        T = K.TILE
        grid = ((N + T - 1) // T, (M + T - 1) // T, min(nb, 65535))
        cfg = _L(gemm, grid, (T, T))
        ga = _L(gp, K.grid1(nb * M * Kd), K.TPB) if atmp is not None else None
        gb = _L(gp, K.grid1(nb * Kd * N), K.TPB) if btmp is not None else None
        gc = _L(gp, K.grid1(self.n(o)), K.TPB) if ctmp is not None else None
        na, nbb, no = nb * M * Kd, nb * Kd * N, self.n(o)
        if Kd == 0:
            fill = _L(K.misc("fill"), K.grid1(no), K.TPB)
            return lambda buf: fill(no, buf[o], 0)

        def step(buf):
            A = buf[a]
            B = buf[b]
            if ga is not None and na:
                ga(na, atmp, A, amapd)
                A = atmp
            if gb is not None and nbb:
                gb(nbb, btmp, B, bmapd)
                B = btmp
            C = ctmp if ctmp is not None else buf[o]
            cfg(A, B, C, nb, M, N, Kd)
            if gc is not None:
                gc(no, buf[o], ctmp, cmapd)

        return step

    # -- integer-array indexing with device indices
    def _advanced_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        args = [int(s) for s in tape.instr_args(k)]
        o = int(tape.instr_outs(k)[0])
        x = args[0]
        idx = args[-1]
        if self.dtypes[idx] not in ("int64",):
            raise _NoKernel
        xshape = self.shape(x)
        axis = int(op.axis)
        n = xshape[axis]
        inner = _size(xshape[axis + 1:])
        nidx = self.n(idx)
        K = self.K
        self.check_err.append(k)
        err = self.err
        no = self.n(o)
        if name == "ADVANCED_SUBTENSOR1":
            if no == 0:
                return lambda buf: None
            kern, a = self.launch1(K.misc("take"), no)
            return lambda buf: kern(*a, buf[o], buf[x], buf[idx], nidx, n, inner, err)
        # inc / scatter: y broadcast to the indexed shape
        y = args[1]
        odt = self.dtypes[o]
        if odt not in ("float64", "float32", "int64") or self.dtypes[y] != odt:
            raise _NoKernel
        ishape = tuple(xshape[:axis]) + tuple(self.shape(idx)) + tuple(xshape[axis + 1:])
        ny = _size(ishape)
        ycopy = None
        if tuple(self.shape(y)) != ishape:
            ytmp = self.cuda.device_array(max(ny, 1), dtype=odt)
            ysh = self.shape(y)
            try:
                src = np.broadcast_to(np.arange(_size(ysh), dtype=np.int64).reshape(ysh), ishape)
            except ValueError:
                raise _NoKernel from None
            ymap = self.cuda.to_device(np.ascontiguousarray(src).reshape(-1))
            gk, ga = self.launch1(K.misc("gather_plain"), ny)
            ycopy = (gk, ga, ytmp, ymap)
        scat, sa = self.launch1(K.misc("scatter_add"), ny)
        if name == "ADVANCED_SCATTER1":
            init, ia = self.launch1(K.misc("fill"), no)
        else:
            init, ia = self.launch1(K.misc("copy"), no)

        def step(buf):
            if no == 0:
                return
            if name == "ADVANCED_SCATTER1":
                init(*ia, buf[o], 0)
            else:
                init(*ia, buf[o], buf[x])
            if ny == 0:
                return
            yy = buf[y]
            if ycopy is not None:
                gk, ga, ytmp, ymap = ycopy
                gk(*ga, ytmp, yy, ymap)
                yy = ytmp
            scat(*sa, buf[o], yy, buf[idx], nidx, n, inner, err)

        return step

    # -- index-map ops
    def _select_step(self, k, name):
        """Derive, per output, which element of which input each output element is (perform on index arrays)."""
        tape, engine = self.tape, self.engine
        op = tape.ops[k]
        args = [int(s) for s in tape.instr_args(k)]
        outs = [int(s) for s in tape.instr_outs(k)]
        node = engine.node(k)
        scale = None
        if name == "BROADCAST_REDUCED":
            if op.mean:
                axes = tuple(int(a) for a in op._norm(node.inputs[1])) if hasattr(op, "_norm") else None
                if axes is None:
                    from tapegrad.ops.reduce import _axes

                    axes = _axes(op.axis, node.inputs[1], "mean")
                xsh = self.shape(args[1])
                scale = float(max(_size([xsh[a] for a in axes]) - int(op.ddof), 0))
                if scale == 0:
                    raise _NoKernel
                op = type(op)(op.axis, op.keepdims, False, 0)
        try:
            pattern = op.connection_pattern(node)
        except Exception:  # noqa: BLE001
            pattern = [[True] * len(outs) for _ in args]
        # index-like inputs (not connected, integer or bool): must be known at plan time; the rest are probed
        aux = {j for j, s in enumerate(args) if not any(pattern[j]) and self.dtypes[s] not in ("float64", "float32")}
        data = [j for j in range(len(args)) if j not in aux]
        for j in aux:
            if args[j] not in self.hostval:
                raise _NoKernel  # an index input only known at run time
        from tapegrad.compile.reference import _Node
        from tapegrad.graph import TensorType, Variable

        def ivar(v):
            return Variable(TensorType("int64", v.type.shape), name=v.name)

        inode = _Node(op, [ivar(v) if j in data else v for j, v in enumerate(node.inputs)],
                      [ivar(v) for v in node.outputs])
        maps = {}  # (j) -> list per output of maps (0 = not from input j)
        for j in data:
            ins = []
            for jj, s in enumerate(args):
                if jj == j:
                    ins.append(np.arange(1, self.n(s) + 1, dtype=np.int64).reshape(self.shape(s)))
                elif jj in data:
                    ins.append(np.zeros(self.shape(s), np.int64))
                else:
                    ins.append(self.hostval[s])
            storage = [[None] for _ in outs]
            try:
                with np.errstate(all="ignore"):
                    op.perform(inode, ins, storage)
            except Exception:  # noqa: BLE001 - e.g. a bad index: perform raises it at run time
                raise _NoKernel from None
            res = [np.asarray(st[0]) for st in storage]
            for r, s in zip(res, outs):
                if r.shape != self.shape(s) or r.dtype.kind not in "iu":
                    raise _NoKernel
            maps[j] = [np.ascontiguousarray(r, dtype=np.int64).reshape(-1) for r in res]
        # verify on random values with the real node
        rng = np.random.default_rng(k)
        vals = []
        for j, s in enumerate(args):
            if j in data:
                dt = self.dtypes[s]
                if dt == "bool":
                    v = rng.random(self.shape(s)) < 0.5
                elif dt.startswith("float"):
                    v = rng.standard_normal(self.shape(s)).astype(dt)
                else:
                    v = rng.integers(1, 100, self.shape(s)).astype(dt)
                vals.append(v)
            else:
                vals.append(self.hostval[s])
        storage = [[None] for _ in outs]
        try:
            with np.errstate(all="ignore"):
                tape.ops[k].perform(node, vals, storage)
        except Exception:  # noqa: BLE001
            raise _NoKernel from None
        for i, s in enumerate(outs):
            want = np.asarray(storage[i][0]).reshape(-1).astype(np.float64)
            got = np.zeros(self.n(s), np.float64)
            for j in data:
                mp = maps[j][i]
                src = vals[j].reshape(-1).astype(np.float64)
                if mp.size and (mp.min() < 0 or mp.max() > src.size):
                    raise _NoKernel
                got += np.where(mp > 0, src[np.maximum(mp - 1, 0)] if src.size else 0.0, 0.0)
            if scale is not None:
                got = got / scale
            if want.shape != got.shape or not np.allclose(got, want, rtol=1e-6, atol=1e-12, equal_nan=True):
                raise _NoKernel
        # device steps
        K, d = self.K, self.cuda.to_device
        plans = []
        for i, s in enumerate(outs):
            n = self.n(s)
            if n == 0:
                continue
            nonzero = [(j, maps[j][i]) for j in data if maps[j][i].any()]
            parts = [(args[j], d(m)) for j, m in nonzero]
            identity = (len(nonzero) == 1 and scale is None and self.dtypes[args[nonzero[0][0]]] == self.dtypes[s]
                        and self.n(args[nonzero[0][0]]) == n and np.array_equal(nonzero[0][1], np.arange(1, n + 1)))
            plans.append((s, n, parts, identity))
        gs, ga = K.misc("gather_set"), K.misc("gather_add")
        fill, copyk, sdiv = K.misc("fill"), K.misc("copy"), K.misc("scale_div")
        cfgs = []
        for s, n, parts, identity in plans:
            g = K.grid1(n)
            cfgs.append((s, n, parts, identity, _L(gs, g, K.TPB), _L(ga, g, K.TPB), _L(fill, g, K.TPB), _L(copyk, g, K.TPB),
                         _L(sdiv, g, K.TPB)))

        def step(buf):
            for s, n, parts, identity, cgs, cga, cfill, ccopy, cdiv in cfgs:
                out = buf[s]
                if identity:
                    ccopy(n, out, buf[parts[0][0]])
                    continue
                if not parts:
                    cfill(n, out, 0)
                    continue
                for i, (src, mp) in enumerate(parts):
                    (cgs if i == 0 else cga)(n, out, buf[src], mp)
                if scale is not None:
                    cdiv(n, out, scale)

        return step


# --------------------------------------------------------------------------- contraction planning
