"""Flat-buffer helpers shared by the generated interpreter.

The engine passes one int64 array ``meta`` holding the tape's integer arrays
and the memory plan (sections located through the header ``meta[0:NH]``), one
float64 array of float parameters, and one arena per native dtype kind:

====  =========  ==============================================
kind  arena      dtype
====  =========  ==============================================
0     ``A0``     float64
1     ``A1``     float32
2     ``A2``     int64
3     ``A3``     bool
====  =========  ==============================================

Slot ``s`` lives at ``A<kind>[off : off + size]`` with element strides
``stride[s, d]`` (row-major contiguous for every slot today; views only change
strides and offsets).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

BLOCK = 4096
MAXD = 8
_J = dict(error_model="numpy")

# header: section starts inside meta
(H_CODES, H_ARGP, H_ARGS, H_OUTP, H_OUTS, H_IPP, H_IP, H_FPP, H_ICD, H_IGRP,
 H_SAK, H_SND, H_SOFF, H_SSIZE, H_SCONT, H_SSHP, H_SSTR) = range(17)
NH = 17

NATIVE_DTYPES = ("float64", "float32", "int64", "bool")  # arena kind = index
KIND_OF_DTYPE = {d: i for i, d in enumerate(NATIVE_DTYPES)}


# --------------------------------------------------------------------------- meta accessors
@njit(**_J)
def arg_slot(meta, k, j):
    return meta[meta[H_ARGS] + meta[meta[H_ARGP] + k] + j]


@njit(**_J)
def n_args(meta, k):
    p = meta[H_ARGP] + k
    return meta[p + 1] - meta[p]


@njit(**_J)
def out_slot(meta, k, j):
    return meta[meta[H_OUTS] + meta[meta[H_OUTP] + k] + j]


@njit(**_J)
def iparam(meta, k, j):
    return meta[meta[H_IP] + meta[meta[H_IPP] + k] + j]


@njit(**_J)
def s_kind(meta, s):
    return meta[meta[H_SAK] + s]


@njit(**_J)
def s_ndim(meta, s):
    return meta[meta[H_SND] + s]


@njit(**_J)
def s_off(meta, s):
    return meta[meta[H_SOFF] + s]


@njit(**_J)
def s_size(meta, s):
    return meta[meta[H_SSIZE] + s]


@njit(**_J)
def s_shape(meta, s, d):
    return meta[meta[H_SSHP] + s * MAXD + d]


@njit(**_J)
def s_stride(meta, s, d):
    return meta[meta[H_SSTR] + s * MAXD + d]


@njit(**_J)
def is_direct(meta, s, o, kind):
    """Can input slot ``s`` be read as a flat run of output ``o``'s elements from arena ``kind``?"""
    return s_kind(meta, s) == kind and meta[meta[H_SCONT] + s] != 0 and s_size(meta, s) == s_size(meta, o)


# --------------------------------------------------------------------------- conversion on store
def store(dst, i, v):  # pragma: no cover - replaced by the overload inside numba
    dst[i] = v


@overload(store)
def _ov_store(dst, i, v):
    if isinstance(dst.dtype, types.Boolean) and not isinstance(v, types.Boolean):
        def impl(dst, i, v):
            dst[i] = v != 0
    elif isinstance(dst.dtype, types.Integer) and isinstance(v, types.Float):
        def impl(dst, i, v):
            dst[i] = np.int64(v)
    else:
        def impl(dst, i, v):
            dst[i] = v
    return impl


# --------------------------------------------------------------------------- gathers
@njit(**_J)
def _bcast_geometry(meta, s, o):
    """Output shape and the input's broadcast strides (0 along broadcast axes), right-aligned."""
    nd = s_ndim(meta, o)
    shp = np.empty(max(nd, 1), np.int64)
    est = np.zeros(max(nd, 1), np.int64)
    snd = s_ndim(meta, s)
    lead = nd - snd
    for d in range(nd):
        shp[d] = s_shape(meta, o, d)
        if d >= lead:
            n = s_shape(meta, s, d - lead)
            if n != 1:
                est[d] = s_stride(meta, s, d - lead)
    return nd, shp, est


@njit(**_J)
def _gather_loop(src, pos, nd, shp, est, b0, nb, dst, d0):
    if nb <= 0:
        return
    if nd == 0:
        store(dst, d0, src[pos])
        return
    idx = np.zeros(nd, np.int64)
    rem = b0
    for d in range(nd - 1, -1, -1):
        idx[d] = rem % shp[d]
        rem //= shp[d]
        pos += idx[d] * est[d]
    i = 0
    last = nd - 1
    st = est[last]
    while i < nb:
        run = min(shp[last] - idx[last], nb - i)
        if st == 0:
            v = src[pos]
            for j in range(run):
                store(dst, d0 + i + j, v)
        elif st == 1:
            for j in range(run):
                store(dst, d0 + i + j, src[pos + j])
        else:
            for j in range(run):
                store(dst, d0 + i + j, src[pos + j * st])
        i += run
        pos += run * st
        idx[last] += run
        d = last
        while d > 0 and idx[d] == shp[d]:
            pos -= idx[d] * est[d]
            idx[d] = 0
            d -= 1
            idx[d] += 1
            pos += est[d]


@njit(**_J)
def gather(meta, s, o, b0, nb, dst, A0, A1, A2, A3):
    """``dst[:nb]`` = elements ``b0 .. b0+nb`` (flat, row-major) of slot ``s`` broadcast to ``o``'s shape."""
    nd, shp, est = _bcast_geometry(meta, s, o)
    pos = s_off(meta, s)
    kind = s_kind(meta, s)
    if kind == 0:
        _gather_loop(A0, pos, nd, shp, est, b0, nb, dst, 0)
    elif kind == 1:
        _gather_loop(A1, pos, nd, shp, est, b0, nb, dst, 0)
    elif kind == 2:
        _gather_loop(A2, pos, nd, shp, est, b0, nb, dst, 0)
    else:
        _gather_loop(A3, pos, nd, shp, est, b0, nb, dst, 0)


@njit(**_J)
def copy_convert(meta, k, AO, A0, A1, A2, A3):
    """Output 0 of instruction ``k`` = input 0 broadcast to its shape, converted to its dtype (CAST, BROADCAST_LIKE)."""
    o = out_slot(meta, k, 0)
    s = arg_slot(meta, k, 0)
    n = s_size(meta, o)
    oo = s_off(meta, o)
    # b0 as a typed zero: a literal 0 would compile a second gather (and 16 more _gather_loop) for the engine
    gather(meta, s, o, np.int64(0), n, AO[oo:oo + n], A0, A1, A2, A3)


# --------------------------------------------------------------------------- sums
@njit(**_J)
def pairwise_sum(a, lo, n):
    """NumPy's pairwise summation of ``a[lo:lo+n]`` (in float64 for float32 data)."""
    if n < 8:
        r = 0.0
        for i in range(n):
            r += a[lo + i]
        return r
    if n <= 128:
        r0 = float(a[lo]); r1 = float(a[lo + 1]); r2 = float(a[lo + 2]); r3 = float(a[lo + 3])
        r4 = float(a[lo + 4]); r5 = float(a[lo + 5]); r6 = float(a[lo + 6]); r7 = float(a[lo + 7])
        i = 8
        m = n - n % 8
        while i < m:
            r0 += a[lo + i]; r1 += a[lo + i + 1]; r2 += a[lo + i + 2]; r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]; r5 += a[lo + i + 5]; r6 += a[lo + i + 6]; r7 += a[lo + i + 7]
            i += 8
        r = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            r += a[lo + i]
            i += 1
        return r
    n2 = n // 2
    n2 -= n2 % 8
    return pairwise_sum(a, lo, n2) + pairwise_sum(a, lo + n2, n - n2)


def acc_zeros(like, n):  # pragma: no cover
    return np.zeros(n)


@overload(acc_zeros)
def _ov_acc_zeros(like, n):
    if isinstance(like.dtype, types.Float):
        return lambda like, n: np.zeros(n, np.float64)
    return lambda like, n: np.zeros(n, np.int64)


@njit(**_J)
def sum_to(src, s, o, meta, AO):
    """``AO[slot o]`` = slot ``s`` of arena ``src`` summed down to ``o``'s shape (NumPy reverse broadcasting)."""
    n_out = s_size(meta, o)
    oo = s_off(meta, o)
    n_in = s_size(meta, s)
    if n_out == 0:
        return
    if n_out == 1 and meta[meta[H_SCONT] + s] != 0:
        if n_in == 0:
            AO[oo] = 0
        else:
            store(AO, oo, pairwise_sum(src, s_off(meta, s), n_in))
        return
    if n_out == n_in and meta[meta[H_SCONT] + s] != 0:  # nothing summed (a same-shape sum_like): a copy, with
        so = s_off(meta, s)  # no accumulator (a fresh one of 80 MB per call at n = 1e7 was 19,500 page faults)
        for k in range(n_out):
            store(AO, oo + k, src[so + k])
        return
    acc = acc_zeros(AO, n_out)
    # iterate over the input (row-major); output position through broadcast strides of o against s
    nd = s_ndim(meta, s)
    ond = s_ndim(meta, o)
    lead = nd - ond
    shp = np.empty(max(nd, 1), np.int64)
    ist = np.empty(max(nd, 1), np.int64)
    ost = np.zeros(max(nd, 1), np.int64)
    cstride = 1
    for d in range(ond - 1, -1, -1):  # row-major strides of the accumulator
        if s_shape(meta, o, d) != 1:
            ost[d + lead] = cstride
        cstride *= s_shape(meta, o, d)
    for d in range(nd):
        shp[d] = s_shape(meta, s, d)
        ist[d] = s_stride(meta, s, d)
    if n_in > 0:
        idx = np.zeros(max(nd, 1), np.int64)
        ip = s_off(meta, s)
        op = 0
        last = nd - 1
        if nd == 0:
            acc[0] += src[ip]
        else:
            i = 0
            while i < n_in:
                run = shp[last]
                a = ist[last]
                b = ost[last]
                if b == 0:
                    t = acc[op]
                    for j in range(run):
                        t += src[ip + j * a]
                    acc[op] = t
                else:
                    for j in range(run):
                        acc[op + j * b] += src[ip + j * a]
                i += run
                d = last - 1
                # advance the outer index
                while d >= 0:
                    idx[d] += 1
                    ip += ist[d]
                    op += ost[d]
                    if idx[d] < shp[d]:
                        break
                    ip -= idx[d] * ist[d]
                    op -= idx[d] * ost[d]
                    idx[d] = 0
                    d -= 1
    for j in range(n_out):
        store(AO, oo + j, acc[j])


@njit(**_J)
def sum_like(meta, k, AO, A0, A1, A2, A3):
    """SUM_LIKE: output = input 0 summed to input 1's shape (input 0 has the output's dtype)."""
    sum_to(AO, arg_slot(meta, k, 0), out_slot(meta, k, 0), meta, AO)
