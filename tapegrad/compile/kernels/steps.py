"""Native steps of the CPU engine for the ops outside the interpreter: views and prebound calls.

The interpreter (``_generated_dispatch.interp``) covers elementwise work and a
few copies; compiling more ops into it costs minutes of cold compile.  The
ops here instead run, per memory plan, as one of

* **views** (:func:`view_layout`): SUBTENSOR (basic index), DIMSHUFFLE, and
  RESHAPE/FLATTEN of a contiguous input become an alias of their input's
  storage: an element offset and element strides inside the same arena, no
  instruction at run time.  The plan extends the base's liveness to the view's
  last use and puts the strides in ``meta``, where the interpreter's gathers
  read them.
* **prebound steps** (:func:`make_step`): a closure over arena views built
  once per plan that calls a NumPy ufunc, reduction or BLAS routine with
  ``out=`` the output's arena view (no ``perform``, no temporary array for the
  result, no per-call argument handling; about a microsecond of overhead).
  ``np.matmul`` calls the same BLAS ``gemm`` that ``np.dot`` inside numba
  would, without a per-dtype numba compile.

Both return None where they do not apply (unusual shapes, value-dependent
indices, zero-size extremum reductions whose ``perform`` raises, ...); the
engine then runs the op's ``perform`` by callback as before.  Nothing here is
compiled by numba, so the interpreter's cache key does not depend on it.
"""

from __future__ import annotations

import numpy as np


VIEW_CODES = ("SUBTENSOR", "DIMSHUFFLE", "RESHAPE", "FLATTEN")
STEP_CODES = ("SUM", "MEAN", "MAX", "MIN", "BROADCAST_REDUCED", "ZEROS_LIKE", "ONES_LIKE", "ALLOC", "SUBTENSOR",
              "SUBTENSOR_SCATTER", "INC_SUBTENSOR", "SET_SUBTENSOR", "DIMSHUFFLE", "RESHAPE", "FLATTEN", "DOT",
              "MATMUL", "EINSUM", "ROLL", "JOIN", "MAP_ROWS")


def row_major(shape):
    st, out = 1, []
    for n in reversed(shape):
        out.append(st)
        st *= n
    return tuple(reversed(out))


def is_contiguous(shape, strides):
    """Row-major contiguous, ignoring the strides of length-1 axes."""
    st = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != st:
            return False
        st *= n
    return True


# --------------------------------------------------------------------------- views
def _subtensor_layout(op, shape, strides):
    if any(e[4] for e in op.entries) or len(op.entries) != len(shape):
        return None
    off, oshape, ostr = 0, [], []
    for (kind, v0, v1, v2, _), n, st in zip(op.entries, shape, strides):
        if kind == 0:  # integer index: range-checked here, perform raises otherwise
            if not -n <= v0 < n:
                return None
            off += (v0 % n) * st
        else:
            if v2 == 0:
                return None
            start, stop, step = slice(v0, v1, v2).indices(n)
            m = len(range(start, stop, step))
            if m:
                off += start * st
            oshape.append(m)
            ostr.append(st * step)
    for p in op.newaxes:
        oshape.insert(p, 1)
        ostr.insert(p, 0)
    return off, tuple(oshape), tuple(ostr)


def _dimshuffle_layout(op, shape, strides):
    if any(shape[a] != 1 for a in op.drop):
        return None
    oshape = tuple(1 if a == -1 else shape[a] for a in op.new_order)
    ostr = tuple(0 if a == -1 else strides[a] for a in op.new_order)
    return 0, oshape, ostr


def view_layout(op, shape, strides, out_shape):
    """``(element offset, shape, strides)`` of the view instruction ``op`` of an input laid out as
    ``shape``/``strides`` (elements), or None when its output cannot alias the input."""
    name = op.code
    if name == "SUBTENSOR":
        r = _subtensor_layout(op, shape, strides)
    elif name == "DIMSHUFFLE":
        r = _dimshuffle_layout(op, shape, strides)
    elif name in ("RESHAPE", "FLATTEN"):
        if not is_contiguous(shape, strides) or int(np.prod(shape, dtype=np.int64)) != int(
                np.prod(out_shape, dtype=np.int64)):
            return None
        r = 0, tuple(out_shape), row_major(out_shape)
    else:
        return None
    if r is None or tuple(r[1]) != tuple(out_shape):
        return None
    return r


def strided(base, off, shape, strides):
    """NumPy view of ``base`` (a 1-d arena) at element offset ``off`` with element ``strides``."""
    isz = base.itemsize
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return base[:0].reshape(shape)
    return np.ndarray(shape, base.dtype, buffer=base, offset=off * isz, strides=tuple(s * isz for s in strides))


def _layout_of(a):
    isz = a.itemsize
    return a.shape, tuple(s // isz for s in a.strides)


def view_array(op, node, x, out_shape):
    """``op``'s view of the array ``x`` (metadata only, no copy), or None."""
    r = view_layout(op, *_layout_of(x), out_shape)
    if r is None:
        return None
    if op.code == "SUBTENSOR":
        from tapegrad.ops.index import _view

        try:
            v = _view(op, node, x, [])
        except (IndexError, ValueError):
            return None
        return v if v.shape == tuple(out_shape) else None
    off, shape, st = r
    return np.lib.stride_tricks.as_strided(x, shape, tuple(s * x.itemsize for s in st)) if off == 0 else None


# --------------------------------------------------------------------------- prebound steps
def _with_errstate(f):
    def g():
        with np.errstate(divide="ignore", invalid="ignore"):
            f()
    return g


def _contraction(spec, a, b, out):
    """``out[...] = einsum(spec, a, b)`` as one ``np.matmul`` on transposed views, or None."""
    from tapegrad.ops.linalg import _parse

    (ea, la), (eb, lb), (eo, lo) = _parse(spec)
    if set(la) & set(lb) & set(lo):
        return None
    na, nb, no = a.ndim - len(la), b.ndim - len(lb), out.ndim - len(lo)
    contr = [c for c in la if c in lb]
    afree = [c for c in lo if c in la]
    bfree = [c for c in lo if c in lb]
    if list(lo) == afree + bfree:
        (P, lp, npb, F1), (Q, lq, nqb, F2) = (a, la, na, afree), (b, lb, nb, bfree)
    elif list(lo) == bfree + afree:
        (P, lp, npb, F1), (Q, lq, nqb, F2) = (b, lb, nb, bfree), (a, la, na, afree)
    else:
        return None
    Pt = P.transpose(list(range(npb)) + [npb + lp.index(c) for c in F1] + [npb + lp.index(c) for c in contr])
    Qt = Q.transpose(list(range(nqb)) + [nqb + lq.index(c) for c in contr] + [nqb + lq.index(c) for c in F2])
    size = dict(zip(lp, P.shape[npb:]))
    size.update(zip(lq, Q.shape[nqb:]))
    I = int(np.prod([size[c] for c in F1], dtype=np.int64))
    J = int(np.prod([size[c] for c in contr], dtype=np.int64))
    K = int(np.prod([size[c] for c in F2], dtype=np.int64))
    psh, qsh = Pt.shape[:npb] + (I, J), Qt.shape[:nqb] + (J, K)
    try:
        o2 = np.reshape(out, out.shape[:no] + (I, K), copy=False)
    except ValueError:
        return None
    try:
        np.broadcast_shapes(Pt.shape[:npb], Qt.shape[:nqb], out.shape[:no])
    except ValueError:
        return None
    try:
        p2, q2 = np.reshape(Pt, psh, copy=False), np.reshape(Qt, qsh, copy=False)
    except ValueError:
        def step():
            np.matmul(Pt.reshape(psh), Qt.reshape(qsh), out=o2)
        return step
    mm = np.matmul
    return lambda: mm(p2, q2, out=o2)


def make_step(name, op, node, ins, outs, known=None):
    """A no-argument callable writing ``outs`` (arena views) from ``ins`` (arena views), or None.

    ``known``: per input, its value when the plan knows it (constants, shapes), else None.
    """
    if len(outs) != 1:
        return None
    ov = outs[0]
    dt = ov.dtype
    known = known if known is not None else [None] * len(ins)
    if name == "ROLL":
        return _roll_step(op, ins[0], ins[1], known[1], ov)
    if name == "JOIN":
        if not ins or any(x.ndim != ov.ndim for x in ins):
            return None
        ax = op.axis
        pieces, at = [], 0
        for x in ins:
            n = x.shape[ax]
            dst = ov[(slice(None),) * ax + (slice(at, at + n),)]
            if dst.shape != x.shape:
                return None
            pieces.append((dst, x))
            at += n
        if at != ov.shape[ax]:
            return None

        def join():
            for d, x in pieces:
                np.copyto(d, x, casting="unsafe")
        return join
    if name == "MAP_ROWS":
        run = getattr(op, "run_rows", None)
        if run is None:
            return None
        return lambda: run(node, ins, outs, device="cpu")
    if name in ("SUM", "MEAN"):
        from tapegrad.ops.reduce import _count

        x = ins[0]
        axes = tuple(op._norm(node.inputs[0]))
        kd = op.keepdims
        if not op.mean:
            return lambda: np.sum(x, axis=axes, dtype=dt, keepdims=kd, out=ov)
        n = np.asarray(max(_count(x.shape, axes) - op.ddof, 0), dtype=dt)

        def mean():
            np.sum(x, axis=axes, dtype=dt, keepdims=kd, out=ov)
            np.true_divide(ov, n, out=ov, dtype=dt)
        return _with_errstate(mean) if n == 0 else mean
    if name in ("MAX", "MIN"):
        x = ins[0]
        axes = tuple(op._norm(node.inputs[0]))
        if any(x.shape[a] == 0 for a in axes) or x.dtype != dt:
            return None
        f = np.max if name == "MAX" else np.min
        kd = op.keepdims
        return lambda: f(x, axis=axes, keepdims=kd, out=ov)
    if name == "BROADCAST_REDUCED":
        from tapegrad.ops.reduce import _axes, _count

        g, x = ins
        axes = tuple(_axes(op.axis, node.inputs[1], "broadcast_reduced"))
        ge = g if (op.keepdims or not axes) else np.expand_dims(g, axes)
        try:
            src = np.broadcast_to(ge, ov.shape)
        except ValueError:
            return None
        if op.mean:
            n = np.asarray(max(_count(x.shape, axes) - op.ddof, 0), dtype=dt)

            def bmean():
                np.true_divide(src, n, out=ov, dtype=dt)
            return _with_errstate(bmean) if n == 0 else bmean
        return lambda: np.copyto(ov, src, casting="unsafe")
    if name in ("ZEROS_LIKE", "ONES_LIKE"):
        v = op.fill
        return lambda: ov.fill(v)
    if name == "ALLOC":
        v = ins[0]
        try:
            if np.broadcast_shapes(v.shape, ov.shape) != ov.shape:
                return None
        except ValueError:
            return None
        return lambda: np.copyto(ov, v, casting="unsafe")
    if name in ("SUBTENSOR", "DIMSHUFFLE", "FLATTEN", "RESHAPE"):
        x = ins[0]
        src = view_array(op, node, x, ov.shape)
        if src is not None:
            return lambda: np.copyto(ov, src, casting="unsafe")
        if name in ("RESHAPE", "FLATTEN") and x.size == ov.size:
            o2 = ov.reshape(x.shape)
            return lambda: np.copyto(o2, x, casting="unsafe")
        return None
    if name in ("SUBTENSOR_SCATTER", "INC_SUBTENSOR", "SET_SUBTENSOR"):
        x, y = ins[0], ins[1]
        sub = _sub_of(op, ov)
        if sub is None:
            return None
        try:
            if np.broadcast_shapes(y.shape, sub.shape) != sub.shape:
                return None
        except ValueError:
            return None
        if name == "SUBTENSOR_SCATTER":
            def scatter():
                ov.fill(0)
                np.copyto(sub, y, casting="unsafe")
            return scatter
        if x.shape != ov.shape:
            return None
        if name == "SET_SUBTENSOR":
            def set_():
                np.copyto(ov, x, casting="unsafe")
                np.copyto(sub, y, casting="unsafe")
            return set_

        def inc():
            np.copyto(ov, x, casting="unsafe")
            np.add(sub, y, out=sub, casting="unsafe")
        return inc
    if name in ("DOT", "MATMUL", "EINSUM"):
        a, b = ins
        if name == "DOT" and (a.ndim == 0 or b.ndim == 0):
            return lambda: np.multiply(a, b, out=ov, casting="unsafe")
        if np.result_type(a.dtype, b.dtype) != dt:
            return None
        spec = op.subscripts if name == "EINSUM" else op.einsum_spec(a.ndim, b.ndim)
        return _contraction(spec, a, b, ov)
    return None


def _roll_pieces(x, ov, axis, shift):
    """``[(dst, src)]`` copies that make ``ov = np.roll(x, shift, axis)`` (``axis`` None: ``x``/``ov`` flat)."""
    n = x.shape[axis]
    if n == 0:
        return []
    s = shift % n
    if s == 0:
        return [(ov, x)]
    pre = (slice(None),) * axis
    return [(ov[pre + (slice(s, None),)], x[pre + (slice(0, n - s),)]),
            (ov[pre + (slice(0, s),)], x[pre + (slice(n - s, None),)])]


def _roll_step(op, x, sh, shift, ov):
    """``ov[...] = np.roll(x, shift, op.axis)`` as two slice copies; ``shift`` known at plan time or read from
    the 0-d arena view ``sh`` at run time."""
    if x.shape != ov.shape or sh.ndim != 0:
        return None
    if op.axis is None:
        if ov.size == 0:
            return lambda: None
        try:
            o = np.reshape(ov, -1, copy=False)
        except ValueError:
            return None
        try:
            xf = np.reshape(x, -1, copy=False)
            flat = None
        except ValueError:
            xf, flat = None, x  # a strided view: flattened (copied) at run time
        axis = 0
    else:
        o, xf, flat, axis = ov, x, None, op.axis
        if ov.size == 0:
            return lambda: None
    cp = np.copyto
    if shift is not None and flat is None:
        pieces = _roll_pieces(xf, o, axis, int(shift))

        def roll_static():
            for d, s in pieces:
                cp(d, s, casting="unsafe")
        return roll_static

    def roll_dynamic():
        src = xf if flat is None else flat.reshape(-1)
        for d, s in _roll_pieces(src, o, axis, int(sh)):
            cp(d, s, casting="unsafe")
    return roll_dynamic


def _sub_of(op, ov):
    """The writable view of the contiguous output ``ov`` at a write op's basic index, or None."""
    from tapegrad.ops.index import Subtensor

    sh, st = ov.shape, row_major(ov.shape)
    probe = Subtensor(op.entries, op.newaxes)
    r = _subtensor_layout(probe, sh, st)
    if r is None:
        return None
    off, shape, strides = r
    flat = ov.reshape(-1)
    return strided(flat, off, shape, strides)
