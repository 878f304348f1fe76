"""Numba scalar functions for the names used in elementwise ``expr`` strings.

Every name ``f`` of :data:`tapegrad.ops.elemwise.NUMPY_NAMESPACE` has a numba
counterpart ``s_f`` here; the dispatch generator rewrites ``exp(x0)`` into
``s_exp(x0[i])``.  They follow NumPy's scalar semantics (NaN propagation,
half-to-even rounding, floor division/modulo signs, ``0 * inf = 0`` in azmul).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

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
s_floor_divide, s_mod = np.floor_divide, np.mod
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
