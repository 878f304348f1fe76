"""Numba scalar functions for the names used in elementwise ``expr`` strings.

Every name ``f`` of :data:`tapegrad.ops.elemwise.NUMPY_NAMESPACE` has a numba
counterpart ``s_f`` here; the dispatch generator rewrites ``exp(x0)`` into
``s_exp(x0[i])``.  They follow NumPy's scalar semantics (NaN propagation,
half-to-even rounding, floor division/modulo signs, ``0 * inf = 0`` in azmul).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

_J = dict(error_model="numpy")

s_LN2 = math.log(2.0)
s_LN10 = math.log(10.0)
s_PI = math.pi
s_SQRT_PI = math.sqrt(math.pi)

# NumPy ufuncs work on numba scalars with NumPy's own loop semantics.
s_exp, s_exp2, s_expm1 = np.exp, np.exp2, np.expm1
s_log, s_log2, s_log10, s_log1p = np.log, np.log2, np.log10, np.log1p
s_sqrt, s_sin, s_cos, s_tan = np.sqrt, np.sin, np.cos, np.tan
s_arcsin, s_arccos, s_arctan = np.arcsin, np.arccos, np.arctan
s_sinh, s_cosh, s_tanh = np.sinh, np.cosh, np.tanh
s_arcsinh, s_arccosh, s_arctanh = np.arcsinh, np.arccosh, np.arctanh
s_abs, s_sign, s_floor, s_ceil, s_round = np.abs, np.sign, np.floor, np.ceil, np.rint
s_arctan2, s_hypot = np.arctan2, np.hypot
s_logical_and, s_logical_or, s_logical_not = np.logical_and, np.logical_or, np.logical_not
s_square, s_reciprocal = np.square, np.reciprocal


@njit(**_J)
def s_power(a, b):
    # NumPy's fast paths for the common exponents (libm pow costs ~20 ns an element)
    if b == 2:
        return a * a
    if b == 1:
        return a + 0 * b
    return np.power(a, b)


# --------------------------------------------------------------------------- floor division and modulo
# NumPy's npy_divmod (and CPython's float divmod): the floor of the exact quotient, +-0 signed like x / y,
# x // +-inf = -1 where the signs differ, inf // y = nan, x // 0 = x / 0; x % y has y's sign (+-0 included),
# x % 0 = nan.  Integers: x // 0 = x % 0 = 0, INT64_MIN // -1 wraps to INT64_MIN and INT64_MIN % -1 is 0
# (the hardware division traps on both).
@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once, in the operands' float type (``llvm.fma``: one instruction with FMA3)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, a, a), codegen


def _float_of(a, b):
    """The NumPy scalar type a float floor division / modulo of numba types ``a``, ``b`` computes in (None: ints)."""
    fa, fb = isinstance(a, types.Float), isinstance(b, types.Float)
    if not (fa or fb):
        return None
    if (fa and a.bitwidth == 64) or (fb and b.bitwidth == 64) or not (fa and fb):
        return np.float64
    return np.float32


def s_floor_divide(a, b):
    """``np.floor_divide`` of two scalars (Python calls; compiled code uses the overload below)."""
    return np.floor_divide(a, b)


@overload(s_floor_divide, jit_options=_J)
def _floor_divide_impl(a, b):
    ft = _float_of(a, b)
    if ft is not None:
        zero, one = ft(0.0), ft(1.0)

        def float_floor_divide(a, b):
            # Branch-free and without fmod, so that the loops it is inlined in vectorise.  q = x / y rounds
            # to nearest, so the exact quotient's floor is floor(q) or one less: one less when x - floor(q) y
            # (exact, rounded once: its sign is right) has the sign opposite to y.  NumPy's value for
            # |x / y| < 2**51 (float32: 2**22), signed zeros and every inf/nan case included; above that
            # NumPy's own (x - fmod(x, y)) / y can miss the exact floor by one, and the exact one is returned.
            x, y = ft(a), ft(b)
            q = x / y
            f = np.floor(q)
            r = _fma(-f, y, x)
            r = x if f == zero else r  # y = +-inf: x / y is +-0 and the remainder is x (not 0 * inf)
            f = f - one if (r != zero and (r < zero) != (y < zero)) else f
            return r if (r != r and y != zero) else f  # x = +-inf: nan (NumPy's fmod(x, y) is nan); y = 0: x / y

        return float_floor_divide
    if isinstance(a, (types.Integer, types.Boolean)) and isinstance(b, (types.Integer, types.Boolean)):
        def int_floor_divide(a, b):
            if b == -1:
                return -a  # wraps for INT64_MIN, as NumPy
            return np.floor_divide(a, b)

        return int_floor_divide
    return None


def s_mod(a, b):
    """``np.mod`` of two scalars (Python calls; compiled code uses the overload below)."""
    return np.mod(a, b)


@overload(s_mod, jit_options=_J)
def _mod_impl(a, b):
    ft = _float_of(a, b)
    if ft is not None:
        def float_mod(a, b):
            # numba's float ``%`` is CPython's float_mod: fmod, then y added where the signs differ,
            # copysign(0, y) for a zero remainder, fmod(x, 0) = nan for y == 0 -- NumPy's npy_remainder
            return ft(a) % ft(b)

        return float_mod
    if isinstance(a, (types.Integer, types.Boolean)) and isinstance(b, (types.Integer, types.Boolean)):
        def int_mod(a, b):
            if b == -1:
                return a - a  # INT64_MIN % -1 traps in the hardware division; every x % -1 is 0
            return np.mod(a, b)

        return int_mod
    return None


@njit(**_J)
def s_where(c, a, b):
    return a if c else b


@njit(**_J)
def s_maximum(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(**_J)
def s_minimum(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@njit(**_J)
def s_azmul(a, b):
    if a == 0:
        return a - a
    return a * b


@njit(**_J)
def s_sigmoid(x):
    e = np.exp(-np.abs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


@njit(**_J)
def s_softplus(x):
    if x > 30:
        return x
    return np.log1p(np.exp(min(x, 30)))


@njit(**_J)
def s_erf(x):
    return math.erf(x)


@njit(**_J)
def s_erfc(x):
    return math.erfc(x)


@njit(**_J)
def s_gammaln(x):
    return math.lgamma(x)


@njit(**_J)
def _psi64(x):
    if x <= 0 and x == math.floor(x):
        return math.nan
    acc = 0.0
    if x < 0:  # reflection
        return _psi_pos(1 - x) - math.pi / math.tan(math.pi * x)
    return acc + _psi_pos(x)


@njit(**_J)
def _psi_pos(x):
    acc = 0.0
    while x < 10:
        acc -= 1 / x
        x += 1
    f = 1 / (x * x)
    return acc + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f * (1 / 132 - f * (691 / 32760 - f / 12))))))


@njit(**_J)
def s_psi(x):
    return _psi64(float(x))


@njit(**_J)
def _trigamma_pos(x):
    acc = 0.0
    while x < 10:
        acc += 1 / (x * x)
        x += 1
    f = 1 / (x * x)
    return acc + 1 / x + f / 2 + (1 / x) * f * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f * (1 / 30 - f * (5 / 66 - f * (691 / 2730 - f * 7 / 6))))))


@njit(**_J)
def s_trigamma(x):
    # no recursion here: numba's on-disk cache cannot hold recursive functions (segfault on load)
    x = float(x)
    if x <= 0 and x == math.floor(x):
        return math.inf
    if x < 0:  # reflection: psi1(1-x) + psi1(x) = pi^2 / sin^2(pi x)
        s = math.sin(math.pi * x)
        return -_trigamma_pos(1 - x) + math.pi * math.pi / (s * s)
    return _trigamma_pos(x)
