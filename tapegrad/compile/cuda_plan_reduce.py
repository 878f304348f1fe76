"""The reduction, softmax and scan steps of :class:`tapegrad.compile.cuda_plan.CUDAPlan` (a mixin: the plan's
slots, shapes and kernels are ``self``'s)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.cuda import REDUCE_KIND, _L, _NoKernel, _size


class ReduceSteps:
    """Reductions (and their adjoints), softmax/log-softmax, cumsum/cumprod and the linear recurrence."""

    # -- reductions
    def _layout(self, shape, axes):
        """``(base, roff, contig)`` device maps of a reduction of a C-contiguous ``shape`` over ``axes``."""
        keep = [i for i in range(len(shape)) if i not in axes]
        ix = np.arange(_size(shape), dtype=np.int64).reshape(shape).transpose(keep + list(axes))
        nout = _size([shape[i] for i in keep])
        nred = _size([shape[i] for i in axes])
        ix = ix.reshape(nout, nred)
        if nred == 0 or nout == 0:
            base = np.zeros(max(nout, 1), np.int64)
            roff = np.zeros(1, np.int64)
        else:
            base = np.ascontiguousarray(ix[:, 0])
            roff = np.ascontiguousarray(ix[0, :] - ix[0, 0])
        contig = bool(nred == 0 or np.array_equal(roff, np.arange(nred)))
        d = self.cuda.to_device
        return d(base), d(roff), contig, nout, nred

    def _reducer(self, kind, xshape, axes, in_dtype, out_dtype, scale=1.0, aux=None):
        """A function ``run(x, out, aux)`` reducing flat ``x`` of ``xshape`` over ``axes`` into flat ``out``."""
        K, cuda = self.K, self.cuda
        base, roff, contig, nout, nred = self._layout(xshape, axes)
        acc = K._ACC.get(out_dtype, "float64")
        if kind in ("max", "min", "max_fix") and in_dtype.startswith("float"):
            acc = in_dtype if acc == in_dtype else acc
        if kind in ("all", "any"):
            acc = "int64"
        if nout == 0:
            return lambda x, out, aux: None
        nchunk = 1
        if nout < 64 and nred >= 16384 and not K.SIM:
            nchunk = max(1, min(1024 // max(nout, 1), nred // 4096))
        dummy = cuda.to_device(np.zeros(1, np.float64))
        if nchunk == 1:
            kern = K.reduce_kernel(kind, acc, contig, False)
            cfg = _L(kern, min(nout, 65535 if not K.SIM else 4), K.RTPB)

            def run(x, out, aux_arr):
                cfg(x, base, roff, nred, nout, out, dummy if aux_arr is None else aux_arr, scale, 1)

            return run
        # two passes: partials of nchunk chunks per output, then a reduction of the partials
        pkind = {"mean": "sum", "lse_sum": "lse_sum"}.get(kind, kind)
        fkind = {"mean": "mean", "lse_sum": "lse_fin"}.get(kind, kind)
        k1 = K.reduce_kernel(pkind if kind != "lse_sum" else "lse_sum", acc, contig, True)
        k2 = K.reduce_kernel(fkind if kind not in ("all", "any") else kind, acc, True, False)
        part = cuda.device_array(nout * nchunk, dtype=acc)
        base2 = cuda.to_device(np.arange(nout, dtype=np.int64) * nchunk)
        roff2 = cuda.to_device(np.zeros(1, np.int64))
        c1 = _L(k1, min(nout * nchunk, 65535), K.RTPB)
        c2 = _L(k2, min(nout, 65535), K.RTPB)
        if kind in ("all", "any"):
            pass  # partials are 0/1 ints: the same combine reduces them

        def run(x, out, aux_arr):
            a = dummy if aux_arr is None else aux_arr
            c1(x, base, roff, nred, nout, part, a, scale, nchunk)
            c2(part, base2, roff2, nchunk, nout, out, a, scale, 1)

        return run

    def _reduce_step(self, k, name):
        tape, engine = self.tape, self.engine
        op = tape.ops[k]
        x, o = int(tape.instr_args(k)[0]), int(tape.instr_outs(k)[0])
        xshape = self.shape(x)
        axes = tuple(int(a) for a in op._norm(engine.node(k).inputs[0]))
        nred = _size([xshape[a] for a in axes])
        xdt, odt = self.dtypes[x], self.dtypes[o]
        if self.n(o) == 0:
            return lambda buf: None
        if len(xshape) == 0:
            axes = ()
        if name in ("MAX", "MIN", "ARGMAX", "ARGMIN") and nred == 0:
            raise _NoKernel  # perform raises the error
        if name in ("ARGMAX", "ARGMIN"):
            base, roff, contig, nout, nred = self._layout(xshape, axes)
            kern = self.K.arg_kernel("max" if name == "ARGMAX" else "min", self.K._ACC.get(xdt, "float64")
                                     if not xdt.startswith("float") else xdt, contig)
            cfg = _L(kern, min(nout, 65535), self.K.RTPB)
            return lambda buf: cfg(buf[x], base, roff, max(nred, 0), nout, buf[o])
        if name == "LOGSUMEXP":
            m = self.cuda.device_array(max(self.n(o), 1), dtype=odt)
            rmax = self._reducer("max_fix", xshape, axes, xdt, odt)
            rsum = self._reducer("lse_sum", xshape, axes, xdt, odt)

            def step(buf):
                rmax(buf[x], m, None)
                rsum(buf[x], buf[o], m)

            return step
        kind = REDUCE_KIND[name]
        scale = 1.0
        if name == "MEAN":
            scale = float(max(nred - int(op.ddof), 0))
            if scale == 0:
                raise _NoKernel
        if name == "SUM" and getattr(op, "mean", False):
            kind = "mean"
            scale = float(max(nred - int(getattr(op, "ddof", 0)), 0))
            if scale == 0:
                raise _NoKernel
        r = self._reducer(kind, xshape, axes, xdt, odt, scale)
        return lambda buf: r(buf[x], buf[o], None)

    def _sum_adjoint_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        g, o = int(tape.instr_args(k)[0]), int(tape.instr_outs(k)[0])
        gshape, oshape = self.shape(g), self.shape(o)
        gdt, odt = self.dtypes[g], self.dtypes[o]
        if gdt == "bool" or not (odt.startswith("float") or odt.startswith("int")):
            raise _NoKernel
        if name == "SUM_LIKE":
            lead = len(gshape) - len(oshape)
            axes = tuple(range(lead)) + tuple(lead + i for i, (a, b) in enumerate(zip(oshape, gshape[lead:]))
                                              if a == 1 and b != 1)
            rshape = gshape
        elif name == "TILE_SUM":
            reps = tuple(int(r) for r in op.reps)
            rshape = tuple(d for r, n in zip(reps, oshape) for d in (r, n))
            if _size(rshape) != _size(gshape):
                raise _NoKernel
            axes = tuple(range(0, 2 * len(reps), 2))
        else:  # SUM_BROADCAST: sum over axes, broadcast back
            axes = tuple(int(a) for a in op.axis)
            rshape = gshape
        if self.n(o) == 0:
            return lambda buf: None
        if _size([rshape[a] for a in axes]) == 1 and name != "SUM_BROADCAST":  # nothing to sum: a (casting) copy
            return self._ew_step_raw("x0", [g], None, oshape, out_slot=o)
        r = self._reducer("sum", rshape, axes, gdt, odt)
        if name != "SUM_BROADCAST":
            return lambda buf: r(buf[g], buf[o], None)
        red_shape = tuple(1 if i in axes else n for i, n in enumerate(gshape))
        tmp = self.cuda.device_array(max(_size(red_shape), 1), dtype=odt)
        src = np.broadcast_to(np.arange(_size(red_shape), dtype=np.int64).reshape(red_shape), gshape)
        mp = self.cuda.to_device(np.ascontiguousarray(src).reshape(-1))
        kern, a = self.launch1(self.K.misc("gather_plain"), self.n(o))

        def step(buf):
            r(buf[g], tmp, None)
            kern(*a, buf[o], tmp, mp)

        return step

    # -- softmax
    def _softmax_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        x, o = int(tape.instr_args(k)[0]), int(tape.instr_outs(k)[0])
        xshape, odt = self.shape(x), self.dtypes[o]
        if self.n(o) == 0:
            return lambda buf: None
        axes = tuple(int(a) % max(len(xshape), 1) for a in op.axis)
        rshape = tuple(1 if i in axes else n for i, n in enumerate(xshape))
        nr = max(_size(rshape), 1)
        m = self.cuda.device_array(nr, dtype=odt)
        lse = self.cuda.device_array(nr, dtype=odt)
        rmax = self._reducer("max_fix", xshape, axes, self.dtypes[x], odt)
        rlse = self._reducer("lse_sum", xshape, axes, self.dtypes[x], odt)
        expr = "x0 - x1" if name == "LOG_SOFTMAX" else "exp(x0 - x1)"
        # broadcast strided access of lse over x's shape
        nd = len(xshape)
        st, acc = [0] * nd, 1
        for d in range(nd - 1, -1, -1):
            st[d] = 0 if rshape[d] == 1 else acc
            acc *= rshape[d]
        kern = self.K.elementwise_kernel(expr, ("f", "g"))
        d = self.cuda.to_device
        shp, std, dummy = d(np.asarray(xshape or (1,), np.int64)), d(np.asarray(st or [0], np.int64)), d(
            np.zeros(1, np.int64))
        n = self.n(o)
        cfg = _L(kern, self.K.grid1(n), self.K.TPB)

        def step(buf):
            rmax(buf[x], m, None)
            rlse(buf[x], lse, m)
            cfg(n, nd, shp, buf[o], buf[x], dummy, lse, std)

        return step

    # -- scans
    def _scan_step(self, k, name):
        tape = self.tape
        op = tape.ops[k]
        x, o = int(tape.instr_args(k)[0]), int(tape.instr_outs(k)[0])
        shape = self.shape(x)
        if self.n(o) == 0:
            return lambda buf: None
        if len(shape) == 0:
            raise _NoKernel
        axis = int(op.axis) % len(shape)
        n = shape[axis]
        inner = _size(shape[axis + 1:])
        outer = _size(shape[:axis])
        rev = bool(getattr(op, "reverse", False))
        prod = name == "CUMPROD"
        xdt = self.dtypes[x]
        if self.dtypes[o] != xdt:
            # accumulate in the output dtype: cast first
            tmp = self.cuda.device_array(max(self.n(x), 1), dtype=self.dtypes[o])
            cast = self._ew_step_raw("x0", [x], tmp, shape)
        else:
            tmp, cast = None, None
        init = (1 if prod else 0) if self.dtypes[o].startswith("int") else (1.0 if prod else 0.0)
        kern, a = self.launch1(self.K.misc("scan"), outer * inner)

        def step(buf):
            src = buf[x]
            if cast is not None:
                cast(buf)
                src = tmp
            kern(*a, buf[o], src, n, inner, rev, prod, init)

        return step

    def _linrec_step(self, k):
        """``s_i = b_i + a_i s_{i-1}`` (reversed: ``b_i + a_{i+1} s_{i+1}``): one thread per line along the axis."""
        tape = self.tape
        op = tape.ops[k] if tape.ops else None
        a, b = (int(v) for v in tape.instr_args(k)[:2])
        o = int(tape.instr_outs(k)[0])
        shape = self.shape(o)
        dt = self.dtypes[o]
        if op is None or not shape or self.dtypes[a] != dt or self.dtypes[b] != dt or self.n(a) != self.n(o) \
                or self.n(b) != self.n(o):
            raise _NoKernel
        if self.n(o) == 0:
            return lambda buf: None
        axis = int(op.axis) % len(shape)
        n, inner, outer = shape[axis], _size(shape[axis + 1:]), _size(shape[:axis])
        kern, la = self.launch1(self.K.misc("linrec"), outer * inner)

        def step(buf):
            kern(*la, buf[o], buf[a], buf[b], n, inner, bool(op.reverse))

        return step

    def _ew_step_raw(self, expr, args, out_arr, oshape, out_slot=None):
        """Elementwise ``expr`` of same-size ``args`` into the array ``out_arr`` (or slot ``out_slot``)."""
        n = _size(oshape)
        kern = self.K.elementwise_kernel(expr, ("f",) * len(args))
        dummy = self.cuda.to_device(np.zeros(1, np.int64))
        shp = self.cuda.to_device(np.asarray(oshape or (1,), np.int64))
        cfg = _L(kern, self.K.grid1(n), self.K.TPB)

        def run(buf):
            xs = []
            for s in args:
                xs += [buf[s], dummy]
            cfg(n, len(oshape), shp, out_arr if out_slot is None else buf[out_slot], *xs)

        return run
