"""tapegrad's own matrix product for generated programs, for CPUs whose BLAS runs narrower kernels than they have.

Numba's ``np.dot`` calls SciPy's OpenBLAS, which picks its kernels for the CPU when it loads, unless
``OPENBLAS_CORETYPE`` names them.  On the AMD Zen 5 machine this project is measured on, the environment pins
``Haswell`` (AVX2) kernels for the sake of older OpenBLAS builds, and a 1024x256 @ 256x256 float64 product runs
at 58 GFLOP/s where the CPU's AVX-512 units give 120.  JAX brings its own kernels and is not slowed.

:func:`v_gemm` is a blocked product in the manner of BLIS/GotoBLAS: the right operand is packed in panels of
``NR`` columns (``KC`` rows at a time, about 36 KB, for the L1 cache), the left one in panels of ``MR`` rows
(``MC`` x ``KC``, for L2), and a micro-kernel written in LLVM IR (:func:`_micro`) keeps an ``MR x NR`` block of
the product in 24 vector registers while it runs along ``KC`` (one broadcast and three fused multiply-adds per
row and step).  On that machine: 113 GFLOP/s on W1's 1024x256 @ 256x256 (OpenBLAS there 58; OpenBLAS's own
AVX-512 kernels 103), 111 on the transposed 256x1024 @ 1024x256, 100 on 200^3; float32 217 on 1024x256 @
256x256 (OpenBLAS-Haswell 125).  The packing loops are written per layout, with indices LLVM knows are not
negative: with numba's wraparound select per element they became vector gathers and scatters, and the
transposed product ran at 71.  Packing costs about ``10 / m`` and ``10 / n`` of the multiply-adds, so products of
fewer than 48 rows or ``2 NR`` columns (matrix-vector, W1's 10-wide layer: BLAS-Haswell 197 us, this product
282 us on 10x256 @ 256x1024) stay with BLAS; from 64 rows and columns it is ahead (128^3: 56 us against 74).

:func:`decide` decides once per process whether programs use it: the CPU has AVX-512 F and SciPy's OpenBLAS
reports kernels without AVX-512 (``Haswell``, ``Zen``, ``Sandybridge``, ...).  A program on several threads
runs every product of ``MIN_WORK`` or more on :func:`v_gemm_par` (blocks of rows on each thread), thin ones
included, so that OpenBLAS's threads never wake.  ``TAPEGRAD_GEMM=own`` or ``=blas`` overrides it
(``own`` on a CPU without AVX-512 should work, LLVM splitting the vectors, but no machine here lacks AVX-512 to
test it).  Sums run in another order than BLAS's: results agree to rounding, and an inf or NaN operand spreads
as in BLAS (no zero is skipped).
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from tapegrad.compile.vmath import nn  # an index LLVM is told is not negative

MR = 8  # rows of the micro-kernel's block
NV = 3  # vectors per row: NR = NV * lanes (24 float64, 48 float32 columns)
KC = 192  # rows of a packed right panel: 192 x 24 x 8 bytes = 36 KB
MC = 256  # rows of a packed left block: 256 x 192 x 8 bytes = 384 KB
NC = 4096  # columns of a packed right block
LANES = {"float64": 8, "float32": 16}  # one 512-bit register
NARROW = ("haswell", "zen", "sandybridge", "nehalem", "core2", "penryn", "prescott", "barcelona", "bulldozer",
          "piledriver", "steamroller", "excavator", "atom", "generic")
MIN_WORK = 1 << 15  # multiply-adds (m n k) below which a BLAS call costs less than packing
PAR_WORK_GEMM = 1 << 21  # multiply-adds from which a threaded program splits a product (about 20 us of work for
#                          one core; launching a parallel region costs about 8 us)
_DECIDED = None


@intrinsic
def _micro(typingctx, kc, ap, aoff, bp, boff, c, coff, ldc, acc):
    """``c[coff + i ldc + j] (+)= sum_k ap[aoff + k MR + i] bp[boff + k NR + j]`` for the ``MR x NR`` block: the
    packed panels are read in order, the block is accumulated in ``MR * NV`` vector registers (LLVM phi nodes of
    one loop over ``kc``) and added to (``acc``) or stored into ``c`` at the end."""
    if not (isinstance(ap, types.Array) and ap.dtype in (types.float64, types.float32) and bp.dtype == ap.dtype
            and c.dtype == ap.dtype):
        return None
    w = LANES[str(ap.dtype)]
    nr = NV * w

    def codegen(context, builder, signature, args):
        kc_, ap_, aoff_, bp_, boff_, c_, coff_, ldc_, acc_ = args
        a_arr = context.make_array(signature.args[1])(context, builder, ap_)
        b_arr = context.make_array(signature.args[3])(context, builder, bp_)
        c_arr = context.make_array(signature.args[5])(context, builder, c_)
        ft = context.get_value_type(signature.args[1].dtype)
        vt = ir.VectorType(ft, w)
        i64 = ir.IntType(64)
        a0 = builder.gep(a_arr.data, [aoff_])
        b0 = builder.gep(b_arr.data, [boff_])
        c0 = builder.gep(c_arr.data, [coff_])
        suffix = "v%df%d" % (w, 64 if ft == ir.DoubleType() else 32)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma." + suffix)
        zero = ir.Constant(vt, [0.0] * w)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), w), [0] * w)
        pre = builder.block
        loop = builder.append_basic_block("micro.loop")
        done = builder.append_basic_block("micro.done")
        builder.cbranch(builder.icmp_signed(">", kc_, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(ir.Constant(i64, 0), pre)
        accs = []
        for _ in range(MR * NV):
            p = builder.phi(vt)
            p.add_incoming(zero, pre)
            accs.append(p)
        bk = builder.gep(b0, [builder.mul(k, ir.Constant(i64, nr))])
        bv = [builder.load(builder.bitcast(builder.gep(bk, [ir.Constant(i64, j * w)]), vt.as_pointer()), align=4)
              for j in range(NV)]
        ak = builder.gep(a0, [builder.mul(k, ir.Constant(i64, MR))])
        new = []
        for i in range(MR):
            s = builder.insert_element(ir.Constant(vt, ir.Undefined), builder.load(builder.gep(ak, [ir.Constant(i64, i)])),
                                       ir.Constant(ir.IntType(32), 0))
            s = builder.shuffle_vector(s, ir.Constant(vt, ir.Undefined), splat)
            new.extend(builder.call(fma, [s, bv[j], accs[i * NV + j]]) for j in range(NV))
        k1 = builder.add(k, ir.Constant(i64, 1))
        end = builder.block
        k.add_incoming(k1, end)
        for p, v in zip(accs, new):
            p.add_incoming(v, end)
        builder.cbranch(builder.icmp_signed("<", k1, kc_), loop, done)
        builder.position_at_end(done)
        res = []
        for v_ in new:  # all phi nodes first: LLVM wants them at the top of the block
            p = builder.phi(vt)
            p.add_incoming(zero, pre)
            p.add_incoming(v_, end)
            res.append(p)
        for i in range(MR):
            row = builder.gep(c0, [builder.mul(ir.Constant(i64, i), ldc_)])
            for j in range(NV):
                v = res[i * NV + j]
                ptr = builder.bitcast(builder.gep(row, [ir.Constant(i64, j * w)]), vt.as_pointer())
                with builder.if_else(acc_) as (add, put):  # no load of c unless it is added to
                    with add:
                        builder.store(builder.fadd(builder.load(ptr, align=4), v), ptr, align=4)
                    with put:
                        builder.store(v, ptr, align=4)
        return context.get_dummy_value()

    return types.none(kc, ap, aoff, bp, boff, c, coff, ldc, acc), codegen


@intrinsic
def _lanes(typingctx, arr):
    """The lanes of one 512-bit register of ``arr``'s dtype, a compile-time constant."""
    if not (isinstance(arr, types.Array) and str(arr.dtype) in LANES):
        return None
    lanes = LANES[str(arr.dtype)]
    return types.intp(arr), lambda context, builder, signature, args: context.get_constant(types.intp, lanes)


def _pack(x, dst, base, t0, k0, kc, h, width):
    """``dst[base + k width + t] = x[t0 + t, k0 + k]`` for ``t < h`` and ``k < kc``, zero for ``h <= t < width``:
    one panel, ``k``-major.  Compiled per layout of ``x`` (:func:`_pack_impl`) so that no loop reads or writes
    through vector gathers or scatters, which LLVM picked for the generic form (14 % of W1's program)."""


@overload(_pack, inline="always", jit_options={"boundscheck": False})
def _pack_impl(x, dst, base, t0, k0, kc, h, width):
    if not isinstance(x, types.Array):
        return None
    if x.layout == "F":  # t contiguous: copy rows of x.T
        def impl(x, dst, base, t0, k0, kc, h, width):
            xt = x.T
            for k in range(kc):
                o = nn(base + k * width)
                src = xt[nn(k0 + k)]
                for t in range(h):
                    dst[o + t] = src[nn(t0 + t)]
                for t in range(h, width):
                    dst[o + t] = 0
        return impl
    if x.layout == "C":  # k contiguous: eight rows at a time, each read along k; their eight values stored together
        def impl(x, dst, base, t0, k0, kc, h, width):
            full = h - h % 8
            for t8 in range(0, full, 8):
                r = nn(t0 + t8)
                r0, r1, r2, r3 = x[r], x[r + 1], x[r + 2], x[r + 3]
                r4, r5, r6, r7 = x[r + 4], x[r + 5], x[r + 6], x[r + 7]
                for k in range(kc):
                    o = nn(base + k * width + t8)
                    q = nn(k0 + k)
                    dst[o] = r0[q]
                    dst[o + 1] = r1[q]
                    dst[o + 2] = r2[q]
                    dst[o + 3] = r3[q]
                    dst[o + 4] = r4[q]
                    dst[o + 5] = r5[q]
                    dst[o + 6] = r6[q]
                    dst[o + 7] = r7[q]
            for t in range(full, h):
                row = x[nn(t0 + t)]
                for k in range(kc):
                    dst[nn(base + k * width + t)] = row[nn(k0 + k)]
            for k in range(kc):
                o = nn(base + k * width)
                for t in range(h, width):
                    dst[o + t] = 0
        return impl

    def impl(x, dst, base, t0, k0, kc, h, width):  # any strides
        for k in range(kc):
            o = base + k * width
            for t in range(h):
                dst[o + t] = x[t0 + t, k0 + k]
            for t in range(h, width):
                dst[o + t] = 0
    return impl


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True)  # cached: about 1.5 s of compile per layout
def v_gemm(a, b, c):
    """``c[...] = a @ b`` for 2-d float64 or float32 operands of any strides and a C-order ``c``."""
    m, kk = a.shape
    n = b.shape[1]
    nr = NV * _lanes(c)
    ldc = c.shape[1]
    cf = c.reshape(-1)
    bp = np.empty(KC * (min(NC, n) + nr), c.dtype)
    ap = np.empty((MC + MR) * KC, c.dtype)
    ct = np.empty(MR * nr, c.dtype)
    if kk == 0:
        cf[:] = 0
        return
    bt = b.T  # the right operand's panels are rows of b.T
    for jc in range(0, n, NC):
        nc = min(NC, n - jc)
        for pc in range(0, kk, KC):
            kc = min(KC, kk - pc)
            acc = pc > 0
            for jr in range(0, nc, nr):  # right block: panels of nr columns, k-major, zero-padded
                _pack(bt, bp, (jr // nr) * kc * nr, jc + jr, pc, kc, min(nr, nc - jr), nr)
            for ic in range(0, m, MC):
                mc = min(MC, m - ic)
                for ir_ in range(0, mc, MR):  # left block: panels of MR rows, k-major, zero-padded
                    _pack(a, ap, (ir_ // MR) * kc * MR, ic + ir_, pc, kc, min(MR, mc - ir_), MR)
                for jr in range(0, nc, nr):
                    wd = min(nr, nc - jr)
                    for ir_ in range(0, mc, MR):
                        h = min(MR, mc - ir_)
                        ao, bo = (ir_ // MR) * kc * MR, (jr // nr) * kc * nr
                        if h == MR and wd == nr:
                            _micro(kc, ap, ao, bp, bo, cf, (ic + ir_) * ldc + jc + jr, ldc, acc)
                        else:  # an edge block: into a tile, then its valid part
                            _micro(kc, ap, ao, bp, bo, ct, 0, nr, False)
                            for i in range(h):
                                o, t = nn((ic + ir_ + i) * ldc + jc + jr), nn(i * nr)
                                if acc:
                                    for j in range(wd):
                                        cf[o + j] += ct[t + j]
                                else:
                                    for j in range(wd):
                                        cf[o + j] = ct[t + j]


@njit(nogil=True, boundscheck=False, error_model="numpy", cache=True, parallel=True)
def v_gemm_par(a, b, c, parts):
    """:func:`v_gemm` on ``parts`` threads: each computes a block of rows of ``c`` (a multiple of ``MR``; each
    packs the whole right operand).  W1's 1024x256 @ 256x256 on two cores: 205 GFLOP/s (OpenBLAS-Haswell on
    two threads: 108); the transposed 256x1024 @ 1024x256: 150 (91)."""
    m = a.shape[0]
    step = -(-m // parts)
    step = -(-step // MR) * MR
    for t in prange(parts):
        r0 = t * step
        r1 = min(r0 + step, m)
        if r1 > r0:
            v_gemm(a[r0:r1], b, c[r0:r1])


def _openblas_corename():
    """The kernels SciPy's OpenBLAS runs, lower case; ``None`` where that cannot be asked."""
    import ctypes

    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401 - loaded, so that the library below is the one in use

        libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
        names = sorted(n for n in os.listdir(libs) if "openblas" in n and ".so" in n)
    except Exception:  # noqa: BLE001 - not SciPy's wheel (a distribution's BLAS): left to it
        return None
    for name in names:
        try:
            lib = ctypes.CDLL(os.path.join(libs, name), mode=getattr(os, "RTLD_NOLOAD", 4))
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename", "scipy_openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode("ascii", "replace").strip().lower()
    return None


def _avx512():
    try:
        from llvmlite import binding as ll

        return bool(ll.get_host_cpu_features().get("avx512f"))
    except Exception:  # noqa: BLE001
        return False


def decide():
    """``(use own kernel, why)``, decided once per process (see the module's docstring)."""
    global _DECIDED
    if _DECIDED is not None:
        return _DECIDED
    env = os.environ.get("TAPEGRAD_GEMM", "auto").strip().lower()
    if env in ("own", "1", "on"):
        _DECIDED = (True, "TAPEGRAD_GEMM=own")
    elif env in ("blas", "0", "off"):
        _DECIDED = (False, "TAPEGRAD_GEMM=blas")
    elif not _avx512():
        _DECIDED = (False, "no AVX-512: BLAS")
    else:
        from tapegrad.compile.threads import program_threads

        core = _openblas_corename()
        if core is None or not any(core.startswith(nm) for nm in NARROW):
            _DECIDED = (False, f"BLAS runs {core or 'unknown'} kernels")
        elif program_threads() > 1:
            _DECIDED = (True, f"BLAS runs {core} kernels on an AVX-512 CPU (own product on {program_threads()} threads)")
        else:
            _DECIDED = (True, f"BLAS runs {core} kernels on an AVX-512 CPU")
    return _DECIDED


def use_own(m, n, k, dtype, threads=1):
    """Whether a program on ``threads`` threads computes an ``m x k`` by ``k x n`` product of ``dtype`` with
    :func:`v_gemm` (or :func:`v_gemm_par`).  A serial program keeps thin products (fewer than ``2 MR`` rows or
    one micro-panel ``NV * lanes`` of columns) on BLAS (packing costs more there; the small square products of a
    loop body, 64 x 32 by 32 x 32 in any transposition, run 5-20 % faster on :func:`v_gemm`: 2.37 vs 2.77 us); a threaded one takes every product of ``MIN_WORK`` or more: OpenBLAS's threads spin for a while after
    each threaded call and take the cores from the program's parallel parts (W1 on two threads ran 3.25 ms with
    its two 10-wide products on OpenBLAS, 1.95 ms with OpenBLAS on one thread)."""
    if dtype not in LANES or k < 1 or m * n * k < MIN_WORK or not decide()[0]:
        return False
    return threads > 1 or (m >= 2 * MR and n >= NV * LANES[dtype])
