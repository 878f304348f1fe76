"""Vectorisable replacements for libm functions in generated loops (fused kernels and programs).

Numba lowers ``np.tanh`` on a scalar to a call of libm's ``tanh``, which LLVM cannot vectorise: a loop
over 262,144 elements takes 4.1 ms where NumPy's SIMD ``tanh`` takes 0.44 ms.  The functions here are
written with arithmetic, fused multiply-adds, ``floor``, ``copysign`` and integer shifts only, so a loop
calling them vectorises (AVX2/AVX-512); each stays within a few ulp of libm.  Generated modules import this after
:mod:`tapegrad.compile.kernels.scalar`, so ``s_tanh`` in their expressions is :func:`v_tanh`; the
interpreter (tier 0) keeps libm.  They are inlined in Numba's IR (``inline="always"``): with numba 0.65
(LLVM 14) a large generated program kept them as calls, and a loop with a call does not vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from tapegrad.compile.kernels import scalar as _scalar

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


@njit(error_model="numpy", inline="always")  # inlined in Numba's IR: LLVM 14's inliner left big callers a call
def v_tanh(x):
    """tanh(x) = sign(x) * e / (e + 2) with e = expm1(2|x|) = 2**k (expm1(r) + 1) - 1; |x| is clamped at 20
    (where tanh is 1 to double precision).  At most 3 ulp from libm over the double range (tested)."""
    a = abs(x)
    y = 2.0 * (a if a < 20.0 else 20.0)
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
    p = _fma(r * r, q, r)  # expm1(r)
    s = np.float64(np.int64(1) << np.int64(kf))  # 2**k, 0 <= k <= 58
    e = _fma(s, p, s - 1.0)
    t = math.copysign(e / (e + 2.0), x)
    return x if x != x else t


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


s_tanh = v_tanh
s_azmul = v_azmul
