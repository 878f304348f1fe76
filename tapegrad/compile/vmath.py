"""Vectorisable replacements for libm functions in generated loops (fused kernels and programs).

Numba lowers ``np.tanh`` on a scalar to a call of libm's ``tanh``, which LLVM cannot vectorise: a loop
over 262,144 elements takes 4.1 ms where NumPy's SIMD ``tanh`` takes 0.44 ms.  The functions here are
written with arithmetic, fused multiply-adds, ``floor``, ``copysign`` and integer shifts only, so a loop
calling them vectorises (AVX2/AVX-512); each stays within a few ulp of libm (tests/compile/test_vmath.py
measures it).  Generated modules import this after :mod:`tapegrad.compile.kernels.scalar`, so ``s_tanh``,
``s_exp``, ``s_expm1``, ``s_log``, ``s_log1p``, ``s_sigmoid``, ``s_softplus`` and ``s_azmul`` in their
expressions are the ``v_`` functions here (about 5x faster than libm's on a 10**6-element loop, 9x for log1p
and expm1); the interpreter (tier 0) keeps libm.  ``v_sin``/``v_cos`` are here and tested but not wired in
(see the end of the module).  Float32 arguments are computed in float64 and rounded once by the caller.
The module also holds ``v_tri_solve``, the triangular solve of the program tier, and the helpers of its long
loops: ``align_split`` (where a loop's vector loads start on a cache line) and ``prefetch``, and
``huge_empty`` (a large result on transparent huge pages).

They are inlined in Numba's IR (``inline="always"``): with numba 0.65 (LLVM 14) a large generated program
kept them as calls, and a loop with a call does not vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from tapegrad.compile.kernels import scalar as _scalar
from tapegrad.compile.trsm import trsm

_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # trailing zeros: k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = 1.90821492927058770002e-10
# Taylor coefficients 1/n! of expm1 on |r| <= ln(2)/2 (the n = 14 term is below 2**-56 relative)
(_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13) = (1.0 / math.factorial(n) for n in range(2, 14))


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``: one instruction on x86-64 with FMA3)."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        a_, b_, c_ = (context.cast(builder, v, t, types.float64) for v, t in zip(args, signature.args))
        return builder.fma(a_, b_, c_)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _add(typingctx, a, b):
    """``a + b`` without fast-math flags: generated programs compile with ``reassoc``, and the functions here
    are inlined in them, but their error-compensating sums must be evaluated as written."""
    if not (a == types.float64 and b == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return types.float64(types.float64, types.float64), codegen


@intrinsic
def _sub(typingctx, a, b):
    """``a - b`` without fast-math flags (see :func:`_add`)."""
    if not (a == types.float64 and b == types.float64):
        return None

    def codegen(context, builder, signature, args):
        return builder.fsub(*args)

    return types.float64(types.float64, types.float64), codegen


@njit(error_model="numpy", inline="always")
def _expm1_reduced(y):
    """``(k, expm1(r))`` with ``y = k ln2 + r``, ``|r| <= ln2 / 2`` (Cody-Waite: ``k * _LN2_HI`` is exact), the
    Taylor series to r**13 (the first dropped term is below 2**-56 relative)."""
    kf = np.floor(y * _INV_LN2 + 0.5)
    r = _fma(-kf, _LN2_LO, _fma(-kf, _LN2_HI, y))
    q = _fma(r, _E13, _E12)
    q = _fma(r, q, _E11)
    q = _fma(r, q, _E10)
    q = _fma(r, q, _E9)
    q = _fma(r, q, _E8)
    q = _fma(r, q, _E7)
    q = _fma(r, q, _E6)
    q = _fma(r, q, _E5)
    q = _fma(r, q, _E4)
    q = _fma(r, q, _E3)
    q = _fma(r, q, _E2)
    return np.int64(kf), _fma(r * r, q, r)


@njit(error_model="numpy", inline="always")  # inlined in Numba's IR: LLVM 14's inliner left big callers a call
def v_tanh(x):
    """tanh(x) = sign(x) * e / (e + 2) with e = expm1(2|x|) = 2**k (expm1(r) + 1) - 1; |x| is clamped at 20
    (where tanh is 1 to double precision).  At most 3 ulp from libm over the double range (tested)."""
    a = abs(x)
    k, p = _expm1_reduced(2.0 * (a if a < 20.0 else 20.0))
    s = np.float64(np.int64(1) << k)  # 2**k, 0 <= k <= 58
    e = _fma(s, p, s - 1.0)
    t = math.copysign(e / (e + 2.0), x)
    return x if x != x else t


@intrinsic
def radd(typingctx, a, b):
    """``a + b``, a float sum with LLVM's ``reassoc`` flag on that one addition (an integer one plain).
    Programs compile without fast-math flags, so nothing else in them is reassociated (``x / x * y`` stays
    ``(x / x) * y``); their sums are written ``s = radd(s, v)`` (``reassoc_sums``), and a loop-carried sum
    whose additions may be reassociated is one LLVM vectorises.  The result has the promoted type of
    ``a`` and ``b``, as ``a + b`` would."""
    a_, b_ = types.unliteral(a), types.unliteral(b)
    if not all(isinstance(t, (types.Float, types.Integer)) for t in (a_, b_)):
        return None
    res = typingctx.unify_types(a_, b_)
    if not isinstance(res, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        x = context.cast(builder, args[0], a_, res)
        y = context.cast(builder, args[1], b_, res)
        if isinstance(res, types.Float):
            return builder.fadd(x, y, flags=("reassoc",))
        return builder.add(x, y)

    return res(a, b), codegen


@intrinsic
def nn(typingctx, x):
    """``x``, with LLVM told it is not negative.  An index of a chunk of a ``prange`` loop (whose bounds come
    from the parallel scheduler) is otherwise not known to be, and the wraparound Numba emits for a negative
    index (``x < 0 ? x + n : x``) keeps the loop from vectorising."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (v,) = args
        assume = builder.module.declare_intrinsic("llvm.assume", fnty=ir.FunctionType(ir.VoidType(), [ir.IntType(1)]))
        builder.call(assume, [builder.icmp_signed(">=", v, ir.Constant(v.type, 0))])
        return v

    return x(x), codegen


@intrinsic
def opaque(typingctx, x):
    """``x``, hidden from LLVM's constant folding (an empty inline-asm statement).  A row region's products loop
    over a matrix's columns: with a constant count LLVM unrolled that loop fully and vectorised the loop over
    rows instead, reading the matrix with gathers (logistic regression's gradient: 10 ms against 1.1)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (v,) = args
        return builder.asm(ir.FunctionType(v.type, [v.type]), "", "=r,0", [v], side_effect=False)

    return x(x), codegen


@njit(error_model="numpy", inline="always")
def align_split(a, off, lo, hi):
    """The first index ``k`` in ``[lo, hi]`` at which ``a[off + k]`` (of the flat array ``a``) starts a 64-byte
    line: where a program's loop splits so that its vector loop loads whole lines (see
    :func:`tapegrad.compile.program_ir.loop_range`).  ``lo`` when no element does (an address that is not a
    multiple of the item size), ``hi`` when none in range does."""
    size = a.itemsize
    mis = (a.ctypes.data + (off + lo) * size) & 63
    if mis % size:
        return lo
    return min(lo + ((64 - mis) & 63) // size, hi)


@intrinsic
def prefetch(typingctx, a, k):
    """Ask the CPU to bring the cache line of ``a[k]`` (of a 1-d array) into L1 (``llvm.prefetch``: read, high
    locality); no effect on results, and an address past the array is never accessed."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr, idx = args
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, arr)
        if aty.layout == "C":  # a constant step (the item size)
            stride = ir.Constant(idx.type, context.get_abi_sizeof(context.get_data_type(aty.dtype)))
        else:
            (stride,) = cgutils.unpack_tuple(builder, ary.strides, 1)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        ptr = builder.gep(builder.bitcast(ary.data, i8p), [builder.mul(idx, stride)])
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(a, k), codegen


@intrinsic
def _madvise(typingctx, start, length, advice):
    """libc's ``madvise(start, length, advice)`` on integer addresses; returns its result.  Called by its symbol
    name, which the JIT linker resolves in each process (a cached program holds no address)."""
    if not all(isinstance(t, types.Integer) for t in (start, length, advice)):
        return None

    def codegen(context, builder, signature, args):
        a, n, adv = args
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [i8p, ir.IntType(64), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "madvise")
        return builder.call(fn, [builder.inttoptr(a, i8p), builder.sext(n, ir.IntType(64)) if n.type.width < 64 else n,
                                 builder.trunc(adv, ir.IntType(32)) if adv.type.width > 32 else adv])

    return types.int32(start, length, advice), codegen


HUGE_MIN = 1 << 22  # bytes: results this large get transparent huge pages (NumPy's threshold for its arrays)
_MADV_HUGEPAGE = 14  # Linux


@njit(error_model="numpy", inline="always")
def huge_empty(n, dtype):
    """``np.empty(n, dtype)`` whose whole pages are advised ``MADV_HUGEPAGE`` before they are first touched (Linux;
    what NumPy does for its own arrays of 4 MB and more).  A program's large result is a fresh ``malloc`` per
    call, and above glibc's mmap threshold (32 MB at most) fresh pages: 4 KiB pages made W2's gradient at
    n = 1e7 take 37 ms (19,500 page faults per call), against 8.4 ms (625) with huge pages."""
    a = np.empty(n, dtype)
    lo = (a.ctypes.data + 4095) & ~4095
    hi = (a.ctypes.data + n * a.itemsize) & ~4095
    if hi > lo:
        _madvise(lo, hi - lo, _MADV_HUGEPAGE)
    return a


@njit(error_model="numpy", inline="always")
def huge_zeros(n, dtype):
    """``np.zeros(n, dtype)`` on huge pages (:func:`huge_empty`)."""
    a = huge_empty(n, dtype)
    a[:] = 0
    return a


@intrinsic
def _azmul_select(typingctx, a, b):
    """``a * b``, or ``+0`` where ``a == 0``, for two floats of one type, as ``select(a != 0, a * b, 0)``.
    With AVX-512 that is a compare and a zero-masked multiply; the Python form in kernels/scalar.py
    (``a - a`` where ``a == 0``) needs a compare, a multiply and a masked subtract, since LLVM cannot see that
    ``a - a`` is ``+0`` there.  Same bits: ``a - a`` is ``+0`` for ``a = +-0``, and ``a != 0`` is true for NaN."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        x, y = args
        zero = ir.Constant(x.type, 0.0)
        return builder.select(builder.fcmp_unordered("!=", x, zero), builder.fmul(x, y), zero)

    return a(a, b), codegen


_azmul_generic = njit(error_model="numpy", inline="always")(_scalar.s_azmul.py_func)


def v_azmul(a, b):
    """The absolute-zero multiply of kernels/scalar.py (``0 * inf = 0``) for generated loops: inlined in
    Numba's IR, so that it vectorises inside big generated functions too, and a select of ``+0`` for two
    floats of one type (:func:`_azmul_select`)."""
    return _scalar.s_azmul.py_func(a, b)


@overload(v_azmul, inline="always", jit_options={"error_model": "numpy"})
def _v_azmul_overload(a, b):
    if isinstance(a, types.Float) and a == b:
        return lambda a, b: _azmul_select(a, b)
    return lambda a, b: _azmul_generic(a, b)


@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float64 as an int64 (a bitcast: one vector move)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float64 whose IEEE bits are the int64 ``i``."""
    if i != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(error_model="numpy", inline="always")
def _pow2(k):
    """2**k for -1022 <= k <= 1023, built from its exponent bits."""
    return _from_bits((k + np.int64(1023)) << np.int64(52))


@njit(error_model="numpy", inline="always")
def v_exp(x):
    """exp(x) = 2**k (1 + expm1(r)), the power of two applied in two halves so that neither over- nor
    underflows before the product (results near the overflow bound and subnormal results come out right);
    ``x`` is clamped to [-746, 710], beyond which exp is 0 or inf.  Within 1 ulp of libm (tested)."""
    xd = np.float64(x)
    y = 0.0 if xd != xd else (-746.0 if xd < -746.0 else (710.0 if xd > 710.0 else xd))
    k, p = _expm1_reduced(y)
    kb = k >> np.int64(1)
    sa = _pow2(k - kb)
    return xd if xd != xd else _fma(sa, p, sa) * _pow2(kb)


@njit(error_model="numpy", inline="always")
def v_expm1(x):
    """expm1(x) = 2**k expm1(r) + (2**k - 1), one rounding (fma); ``x`` clamped to [-40, 710] (below -40 the
    result is -1 to double precision); +-0 returned as is.  Within 1 ulp of libm (tested)."""
    xd = np.float64(x)
    y = 0.0 if xd != xd else (-40.0 if xd < -40.0 else (710.0 if xd > 710.0 else xd))
    k, p = _expm1_reduced(y)
    kb = k >> np.int64(1)
    sa = _pow2(k - kb)
    s = _pow2(k if k < 1023 else np.int64(1023))
    big = _fma(sa, p, sa) * _pow2(kb)  # exp(x): where 2**k - 1 is 2**k to double precision, and 2**k overflows
    e = big if k > 60 else _fma(s, p, s - 1.0)
    return xd if (xd != xd or xd == 0.0) else e


# log(1 + f) = f - f**2 / 2 + s (f**2 / 2 + R(s**2)), s = f / (2 + f), for 1 + f in [sqrt(1/2), sqrt(2)); R is
# the minimax polynomial of that range published with fdlibm (error below 2**-58.45)
_LG1, _LG2, _LG3, _LG4 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, \
    2.222219843214978396e-01
_LG5, _LG6, _LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
_SQRT2 = 1.4142135623730951


@njit(error_model="numpy", inline="always")
def v_log(x):
    """log(x) = e ln2 + log(m), ``m`` in [sqrt(1/2), sqrt(2)) from the IEEE bits (subnormals scaled by 2**54
    first), log(m) from fdlibm's polynomial R.  0 -> -inf, negative -> NaN, inf and NaN as they are.  Within
    1 ulp of libm (tested)."""
    xd = np.float64(x)
    sub = xd < 2.2250738585072014e-308
    xs = xd * 18014398509481984.0 if sub else xd  # 2**54
    b = _bits(xs)
    e = ((b >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1077 if sub else 1023)
    m = _from_bits((b & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    hi = m > _SQRT2
    m = m * 0.5 if hi else m
    ef = np.float64(e + np.int64(1) if hi else e)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * _fma(w, _fma(w, _fma(w, _LG7, _LG5), _LG3), _LG1) + w * _fma(w, _fma(w, _LG6, _LG4), _LG2)
    hfsq = 0.5 * f * f
    res = _sub(ef * _LN2_HI, _sub(_sub(hfsq, _add(s * (hfsq + r), ef * _LN2_LO)), f))
    if xd == 0.0:
        return -np.inf
    if xd < 0.0:
        return np.nan
    return xd if (xd != xd or xd == np.inf) else res


@njit(error_model="numpy", inline="always")
def v_log1p(x):
    """log1p(x) = log(u) + (x - (u - 1)) / u with ``u = 1 + x`` rounded: the quotient puts back what the rounding
    of ``u`` lost.  -1 -> -inf; +-0 and inf returned as they are.  Within 2 ulp of libm (tested)."""
    xd = np.float64(x)
    u = 1.0 + xd
    res = _add(v_log(u), _sub(xd, _sub(u, 1.0)) / u)
    if u == 0.0:
        return -np.inf
    return xd if (xd == 0.0 or xd == np.inf) else res


@njit(error_model="numpy", inline="always")
def v_sigmoid(x):
    """kernels/scalar.py's ``s_sigmoid`` with :func:`v_exp`."""
    e = v_exp(-np.abs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


@njit(error_model="numpy", inline="always")
def v_softplus(x):
    """kernels/scalar.py's ``s_softplus`` with :func:`v_log1p` and :func:`v_exp`."""
    if x > 30:
        return np.float64(x)
    return v_log1p(v_exp(min(x, 30)))


# BLAS's trsm from this many multiply-adds (n * n * k): below, its call costs more than substitution saves
TRSM_WORK = 1 << 12


@njit(error_model="numpy", nogil=True)
def _blas_ready(a, lower):
    """Whether BLAS may solve with the triangle of ``a``: a zero on the diagonal raises ``LinAlgError`` here, as
    substitution does, and a triangle with an inf or NaN is left to substitution, whose products with them
    (``inf * 0``) are the reference engine's."""
    n = a.shape[0]
    bad = False
    for i in range(n):
        if a[i, i] == 0:
            raise np.linalg.LinAlgError("Singular matrix")
        lo, hi = (0, i + 1) if lower else (i, n)
        row = False
        for j in range(lo, hi):  # no early exit: the loop vectorises (x - x is NaN for inf and NaN only)
            row |= (a[i, j] - a[i, j]) != 0
        bad |= row
    return not bad


@njit(error_model="numpy", nogil=True)
def v_tri_solve(a, b, out, lower):
    """``out = T^-1 b`` (``b`` a vector or a matrix of columns), ``T`` the lower (``lower``) or upper triangle of
    the square ``a``, by forward or back substitution with each row of ``out`` updated as a whole (the inner
    loop runs along the right-hand sides and vectorises); a zero on the diagonal raises ``LinAlgError``, as
    :func:`tapegrad.ops.solve._substitute` (the reference engine) and a singular LU do.  For the program tier's
    triangular solves (``solve_triangular`` and the derivatives of ``cholesky``).  From :data:`TRSM_WORK`
    multiply-adds on, float32/float64 C-order operands go to BLAS's ``trsm`` (:mod:`tapegrad.compile.trsm`)."""
    n = a.shape[0]
    x = out.reshape((n, -1))
    x[...] = b.reshape((n, -1))
    k = x.shape[1]
    if n * n * k >= TRSM_WORK and k < 2**31 and n < 2**31 and _blas_ready(a, lower):
        if trsm(a, x, lower):  # False where the layouts or the dtype do not allow BLAS (decided at compile time)
            return
    for t in range(n):
        i = t if lower else n - 1 - t
        d = a[i, i]
        if d == 0:
            raise np.linalg.LinAlgError("Singular matrix")
        lo, hi = (0, i) if lower else (i + 1, n)
        for j in range(lo, hi):
            c = a[i, j]
            for q in range(k):
                x[i, q] -= c * x[j, q]
        for q in range(k):
            x[i, q] /= d


# pi/2 in three parts (each the double nearest the rest): with fma, x - k (P1 + P2 + P3) keeps every bit of the
# reduced argument for |x| <= _TRIG_MAX (k * P1 is a multiple of 2**-52 like x, so the first step is exact)
_PIO2_1 = 1.5707963267948966
_PIO2_2 = 6.123233995736766e-17
_PIO2_3 = -1.4973849048591698e-33
_TWO_OVER_PI = 0.6366197723675814
_TRIG_MAX = 268435456.0  # 2**28; beyond it the reduction by the bits of 2/pi (_reduce_big)
# the minimax polynomials of sin and cos on [-pi/4, pi/4] published with fdlibm (error below 2**-58)
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11
_TWO_OVER_PI_24 = np.array([  # 2/pi = sum_j c_j 2**(-24 (j + 1)), computed with mpmath at 1600 bits
    0xA2F983, 0x6E4E44, 0x1529FC, 0x2757D1, 0xF534DD, 0xC0DB62, 0x95993C, 0x439041, 0xFE5163, 0xABDEBB,
    0xC561B7, 0x246E3A, 0x424DD2, 0xE00649, 0x2EEA09, 0xD1921C, 0xFE1DEB, 0x1CB129, 0xA73EE8, 0x8235F5,
    0x2EBB44, 0x84E99C, 0x7026B4, 0x5F7E41, 0x3991D6, 0x398353, 0x39F49C, 0x845F8B, 0xBDF928, 0x3B1FF8,
    0x97FFDE, 0x05980F, 0xEF2F11, 0x8B5A0A, 0x6D1F6D, 0x367ECF, 0x27CB09, 0xB74F46, 0x3F669E, 0x5FEA2D,
    0x7527BA, 0xC7EBE5, 0xF17B3D, 0x0739F7, 0x8A5292, 0xEA6BFB, 0x5FB11F, 0x8D5D08, 0x560330, 0x46FC7B,
    0x6BABF0, 0xCFBC20,
], dtype=np.float64)


@njit(error_model="numpy", inline="always")
def _two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly."""
    s = _add(a, b)
    bb = _sub(s, a)
    return s, _add(_sub(a, _sub(s, bb)), _sub(b, bb))


@njit(error_model="numpy", inline="always")
def _mod4(p):
    """``p mod 4``, exact for any double ``p`` (both terms are multiples of p's last bit)."""
    return _sub(p, 4.0 * np.floor(p * 0.25))


@njit(error_model="numpy", inline="always")
def _big_term(hi, lo, mh, ml, c, e):
    """``(hi, lo) + M c 2**e mod 4`` (``M = mh 2**24 + ml``; each product is exact: below 2**53)."""
    hi, err = _two_sum(hi, _mod4(mh * c * _pow2(e + np.int64(24))))
    lo = _add(lo, err)
    hi, err = _two_sum(hi, _mod4(ml * c * _pow2(e)))
    return hi, _add(lo, err)


@njit(error_model="numpy", inline="always")
def _reduce_big(ax):
    """``(n, r)`` with ``ax = (4 m + n) pi/2 + r``, ``|r| <= pi/4``, for finite ``ax >= 2**28``, branch-free
    (Payne-Hanek): ``ax = M 2**E``; of ``ax 2/pi = sum_j M c_j 2**(E - 24 (j + 1))`` the terms before chunk ``j0``
    are multiples of 4, the next seven (gathered from the table) are summed mod 4 in double-double."""
    b = _bits(ax)
    e0 = ((b >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1075)
    m = (b & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x0010000000000000)
    mh = np.float64(m >> np.int64(24))
    ml = np.float64(m & np.int64(0xFFFFFF))
    j0 = (e0 - np.int64(2)) // np.int64(24)
    j0 = j0 if j0 > 0 else np.int64(0)
    e = e0 - np.int64(24) - np.int64(24) * j0
    hi, lo = 0.0, 0.0
    for q in range(7):  # unrolled by LLVM (a constant trip count)
        hi, lo = _big_term(hi, lo, mh, ml, _TWO_OVER_PI_24[nn(j0 + np.int64(q))], e - np.int64(24 * q))
    hi = _mod4(hi)
    k = np.floor(hi + 0.5)
    f, flo = _two_sum(_sub(hi, k), lo)
    rh = f * _PIO2_1  # (f + flo) pi/2, rounded once more
    r = _add(rh, _add(_fma(f, _PIO2_1, -rh), _add(f * _PIO2_2, flo * _PIO2_1)))
    return np.int64(k) & np.int64(3), r


@njit(error_model="numpy", inline="always")
def _sincos_reduced(xd):
    """``(n, sin(r), cos(r))`` with ``x = k pi/2 + r``, ``|r| <= pi/4``, ``n = k mod 4``: Cody-Waite with fma for
    ``|x| <= 2**28``, :func:`_reduce_big` beyond (both computed, one selected: the loop stays branch-free)."""
    ax = np.abs(xd)
    big = ax > _TRIG_MAX
    xs = 0.0 if big else xd
    kf = np.floor(_fma(xs, _TWO_OVER_PI, 0.5))
    r = _fma(-kf, _PIO2_3, _fma(-kf, _PIO2_2, _fma(-kf, _PIO2_1, xs)))
    n = np.int64(kf) & np.int64(3)
    nb, rb = _reduce_big(ax if (big and ax < np.inf) else _TRIG_MAX)
    if big:
        n = nb if xd > 0 else (-nb) & np.int64(3)
        r = rb if xd > 0 else -rb
    z = r * r
    ps = _fma(z, _fma(z, _fma(z, _fma(z, _S6, _S5), _S4), _S3), _S2)
    sn = _fma(r * z, _fma(z, ps, _S1), r)
    pc = z * z * _fma(z, _fma(z, _fma(z, _fma(z, _fma(z, _C6, _C5), _C4), _C3), _C2), _C1)
    hz = 0.5 * z
    w = 1.0 - hz
    cs = _add(w, _add(_sub(_sub(1.0, w), hz), pc))
    return n, sn, cs


@njit(error_model="numpy", inline="always")
def v_sin(x):
    """sin(x): reduced by k pi/2 (:func:`_sincos_reduced`), fdlibm's polynomials, the quadrant picked by selects.
    Within 1 ulp of libm for |x| <= 2**28 and 8 ulp beyond (tested); inf and NaN give NaN."""
    xd = np.float64(x)
    n, sn, cs = _sincos_reduced(xd)
    v = cs if (n & np.int64(1)) else sn
    v = -v if (n & np.int64(2)) else v
    if not np.abs(xd) < np.inf:
        return xd - xd
    return xd if xd == 0.0 else v  # sin(-0) = -0


@njit(error_model="numpy", inline="always")
def v_cos(x):
    """cos(x), as :func:`v_sin`."""
    xd = np.float64(x)
    n, sn, cs = _sincos_reduced(xd)
    v = sn if (n & np.int64(1)) else cs
    v = -v if ((n + np.int64(1)) & np.int64(2)) else v
    return v if np.abs(xd) < np.inf else xd - xd


s_tanh = v_tanh
s_azmul = v_azmul
s_exp, s_expm1, s_log, s_log1p = v_exp, v_expm1, v_log, v_log1p
s_sigmoid, s_softplus = v_sigmoid, v_softplus
# v_sin/v_cos are not wired in: their inlined reduction multiplied numba's compile time of generated modules
# that call them (a clean-clone test run went from 8 to over 20 minutes); loops with sin/cos keep libm's
