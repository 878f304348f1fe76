"""BLAS ``?trsm`` (triangular solve with many right-hand sides) for generated programs.

Numba's ``np.linalg`` has no triangular solve, and the program tier's substitution loop
(:func:`tapegrad.compile.vmath.v_tri_solve`) updates one row of the solution at a time: for a 200x200 triangle
and 200 right-hand sides (the two solves of ``cholesky``'s gradient) it takes 427 us where OpenBLAS's
``dtrsm`` takes about 60.  SciPy exports ``dtrsm``/``strsm`` to C as ``scipy.linalg.cython_blas`` capsules;
their addresses are registered with LLVM here under the names ``tapegrad_dtrsm``/``tapegrad_strsm``, and
:func:`trsm` calls them by name.  Compiled code keeps the name, not the address, so it stays valid in Numba's
disk cache: every process registers the addresses when it imports this module, before a generated module
(which imports :mod:`tapegrad.compile.vmath`, which imports this) is loaded.

Without SciPy nothing is registered and :func:`trsm` compiles to ``False`` (the caller substitutes); Numba's
products need SciPy anyway.
"""

from __future__ import annotations

import ctypes

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SYMBOLS = {}  # "d"/"s" -> registered symbol name


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _register():
    try:
        from scipy.linalg import cython_blas
    except Exception:  # noqa: BLE001 - no SciPy: trsm() compiles to False
        return
    for kind in ("d", "s"):
        capsule = cython_blas.__pyx_capi__.get(f"{kind}trsm")
        if capsule is None:
            continue
        name = f"tapegrad_{kind}trsm"
        llvm.add_symbol(name, _capsule_address(capsule))
        SYMBOLS[kind] = name


_register()


def _char(builder, value):
    p = cgutils.alloca_once(builder, ir.IntType(8))
    builder.store(value if isinstance(value, ir.Value) else ir.Constant(ir.IntType(8), ord(value)), p)
    return p


def _int(builder, value):
    p = cgutils.alloca_once(builder, ir.IntType(32))
    builder.store(builder.trunc(value, ir.IntType(32)), p)
    return p


@intrinsic
def trsm(typingctx, a, x, lower):
    """Overwrite ``x`` (``n x k``, C order) with ``T^-1 x``, ``T`` the lower (``lower``) or upper triangle of ``a``
    (``n x n``, C order), by BLAS; returns ``True``.  Compiles to ``False`` (nothing done) for other layouts and
    dtypes, or where SciPy's BLAS is not available.  The caller checks that ``n`` and ``k`` are positive and
    below 2**31, and that the diagonal has no zero."""
    ok = (isinstance(a, types.Array) and isinstance(x, types.Array) and a.ndim == 2 and x.ndim == 2
          and a.dtype == x.dtype and a.layout == "C" and x.layout == "C" and x.mutable
          and a.dtype in (types.float64, types.float32) and isinstance(lower, types.Boolean))
    kind = "d" if ok and a.dtype == types.float64 else "s"
    if not ok or kind not in SYMBOLS:
        return types.boolean(a, x, lower), lambda context, builder, signature, args: cgutils.false_bit

    def codegen(context, builder, signature, args):
        at, xt = signature.args[0], signature.args[1]
        aa = context.make_array(at)(context, builder, args[0])
        xa = context.make_array(xt)(context, builder, args[1])
        n = builder.extract_value(aa.shape, 0)
        k = builder.extract_value(xa.shape, 1)
        fp = context.get_value_type(at.dtype)
        # C order seen by Fortran is the transpose: x^T = b^T T^-T solves from the right with T^T, whose
        # triangle is the other one
        upper_f = builder.select(args[2], ir.Constant(ir.IntType(8), ord("U")), ir.Constant(ir.IntType(8), ord("L")))
        alpha = cgutils.alloca_once(builder, fp)
        builder.store(ir.Constant(fp, 1.0), alpha)
        i8p, i32p = ir.IntType(8).as_pointer(), ir.IntType(32).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 4 + [i32p, i32p, fp.as_pointer(), fp.as_pointer(), i32p,
                                                            fp.as_pointer(), i32p])
        fn = cgutils.get_or_insert_function(builder.module, fnty, SYMBOLS[kind])
        one = builder.icmp_signed("==", k, ir.Constant(k.type, 1))
        with builder.if_else(one) as (vector, matrix):
            with vector:  # one column: solve from the left with (T^T)^T (OpenBLAS's right-side path is 5x slower)
                builder.call(fn, [_char(builder, "L"), _char(builder, upper_f), _char(builder, "T"),
                                  _char(builder, "N"), _int(builder, n), _int(builder, k), alpha, aa.data,
                                  _int(builder, n), xa.data, _int(builder, n)])
            with matrix:
                builder.call(fn, [_char(builder, "R"), _char(builder, upper_f), _char(builder, "N"),
                                  _char(builder, "N"), _int(builder, k), _int(builder, n), alpha, aa.data,
                                  _int(builder, n), xa.data, _int(builder, k)])
        return cgutils.true_bit

    return types.boolean(a, x, lower), codegen
