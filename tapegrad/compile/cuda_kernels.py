"""numba.cuda kernels for the CUDA engine, generated from source templates.

Imported lazily by :mod:`tapegrad.compile.cuda` (importing tapegrad never
needs numba-cuda).  Every kernel is built on first use and cached in memory:

* elementwise: one kernel per (table row, input access modes) made from the
  row's ``expr`` string (``exp(x0)`` -> ``f_exp(v0)``); numba specialises it
  per dtype signature.  Access mode per input: ``f`` same shape as the output
  (``x[i]``), ``s`` one element (``x[0]``), ``g`` strided broadcast (the flat
  output index is decomposed with the output shape and per-input strides);
* reductions over an ``(outputs, reduced)`` layout given by ``base[o] + roff[r]``
  element offsets (one block per output, shared-memory tree; a two-pass
  split for few outputs with many reduced elements);
* a tiled batched GEMM ``C[b] = A[b] @ B[b]`` (contiguous operands);
* gathers by index maps (shape ops), take / atomic scatter-add along an
  axis, scans along an axis, fills.

Under ``NUMBA_ENABLE_CUDASIM=1`` the scalar math names resolve to NumPy
(NumPy's NaN/inf semantics in Python); on a GPU to ``math``/``libdevice``.
"""

from __future__ import annotations

import ast
import math

import numpy as np
from numba import config as _nconfig
from numba import cuda

SIM = bool(_nconfig.ENABLE_CUDASIM)
# threads per block (1-D kernels), per block in reductions, GEMM tile (small under the slow simulator)
TPB, RTPB, TILE = (16, 8, 4) if SIM else (256, 128, 16)

# --------------------------------------------------------------------------- scalar math
if SIM:
    def _erf(x):
        return math.erf(x) if x == x else x

    def _erfc(x):
        return math.erfc(x) if x == x else x

    def _lgamma(x):
        try:
            return math.lgamma(x)
        except (ValueError, OverflowError):
            return math.inf

    MATH = {
        "m_exp": np.exp, "m_expm1": np.expm1, "m_log": np.log, "m_log2": np.log2, "m_log10": np.log10,
        "m_log1p": np.log1p, "m_sqrt": np.sqrt, "m_sin": np.sin, "m_cos": np.cos, "m_tan": np.tan,
        "m_asin": np.arcsin, "m_acos": np.arccos, "m_atan": np.arctan, "m_sinh": np.sinh, "m_cosh": np.cosh,
        "m_tanh": np.tanh, "m_asinh": np.arcsinh, "m_acosh": np.arccosh, "m_atanh": np.arctanh,
        "m_atan2": np.arctan2, "m_hypot": np.hypot, "m_erf": _erf, "m_erfc": _erfc, "m_lgamma": _lgamma,
        "m_floor": np.floor, "m_ceil": np.ceil, "m_rint": np.rint, "m_fmod": np.fmod, "m_pow": np.power,
        "m_exp2": np.exp2, "m_isfinite": np.isfinite,
    }
    np.seterr(all="ignore")
else:
    from numba.cuda import libdevice as _ld

    MATH = {
        "m_exp": math.exp, "m_expm1": math.expm1, "m_log": math.log, "m_log2": math.log2, "m_log10": math.log10,
        "m_log1p": math.log1p, "m_sqrt": math.sqrt, "m_sin": math.sin, "m_cos": math.cos, "m_tan": math.tan,
        "m_asin": math.asin, "m_acos": math.acos, "m_atan": math.atan, "m_sinh": math.sinh, "m_cosh": math.cosh,
        "m_tanh": math.tanh, "m_asinh": math.asinh, "m_acosh": math.acosh, "m_atanh": math.atanh,
        "m_atan2": math.atan2, "m_hypot": math.hypot, "m_erf": math.erf, "m_erfc": math.erfc,
        "m_lgamma": math.lgamma, "m_floor": _ld.floor, "m_ceil": _ld.ceil, "m_rint": _ld.rint, "m_fmod": _ld.fmod,
        "m_pow": math.pow, "m_exp2": _ld.exp2, "m_isfinite": math.isfinite,
    }

# Device functions for every name of tapegrad.ops.elemwise.NUMPY_NAMESPACE (f_<name>).
_DEVICE_SRC = '''
def f_exp(x):
    return m_exp(x)
def f_exp2(x):
    return m_exp2(x)
def f_expm1(x):
    return m_expm1(x)
def f_log(x):
    return m_log(x)
def f_log2(x):
    return m_log2(x)
def f_log10(x):
    return m_log10(x)
def f_log1p(x):
    return m_log1p(x)
def f_sqrt(x):
    return m_sqrt(x)
def f_sin(x):
    return m_sin(x)
def f_cos(x):
    return m_cos(x)
def f_tan(x):
    return m_tan(x)
def f_arcsin(x):
    return m_asin(x)
def f_arccos(x):
    return m_acos(x)
def f_arctan(x):
    return m_atan(x)
def f_sinh(x):
    return m_sinh(x)
def f_cosh(x):
    return m_cosh(x)
def f_tanh(x):
    return m_tanh(x)
def f_arcsinh(x):
    return m_asinh(x)
def f_arccosh(x):
    return m_acosh(x)
def f_arctanh(x):
    return m_atanh(x)
def f_arctan2(a, b):
    return m_atan2(a, b)
def f_hypot(a, b):
    return m_hypot(a, b)
def f_abs(x):
    return abs(x)
def f_sign(x):
    if x > 0:
        return x - x + 1
    if x < 0:
        return x - x - 1
    return x - x
def f_floor(x):
    return m_floor(x)
def f_ceil(x):
    return m_ceil(x)
def f_round(x):
    return m_rint(x)
def f_square(x):
    return x * x
def f_reciprocal(x):
    return 1.0 / x
def f_where(c, a, b):
    return a if c else b
def f_maximum(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b
def f_minimum(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b
def f_azmul(a, b):
    if a == 0:
        return a * 0
    return a * b
def f_logical_and(a, b):
    return (a != 0) and (b != 0)
def f_logical_or(a, b):
    return (a != 0) or (b != 0)
def f_logical_not(a):
    return a == 0
def f_power(a, b):
    return a ** b
def f_floor_divide(a, b):
    # numba's // and % are CPython's divmod (NumPy's npy_divmod: inf // y = nan, x // -inf = -1 where the
    # signs differ, signed zeros, x // 0 = x / 0; integers: x // 0 = 0); b == -1 as (-a) // 1, the same
    # value, so that INT64_MIN // -1 wraps to INT64_MIN (NumPy) instead of overflowing the division
    if b == -1:
        return (-a) // (-b)
    return a // b
def f_mod(a, b):
    if b == -1:
        return -((-a) % (-b))
    return a % b
def f_sigmoid(x):
    e = m_exp(-abs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)
def f_softplus(x):
    if x > 30:
        return x + 0.0
    return m_log1p(m_exp(x))
def f_erf(x):
    return m_erf(x)
def f_erfc(x):
    return m_erfc(x)
def f_gammaln(x):
    return m_lgamma(x)
def _psi_pos(x):
    acc = 0.0
    while x < 10:
        acc -= 1 / x
        x += 1
    f = 1 / (x * x)
    return acc + m_log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f * (1 / 132 - f * (691 / 32760 - f / 12))))))
def f_psi(x):
    x = float(x)
    if x <= 0 and x == m_floor(x):
        return math.nan
    if x < 0:
        return _psi_pos(1 - x) - math.pi / m_tan(math.pi * x)
    return _psi_pos(x)
def _trigamma_pos(x):
    acc = 0.0
    while x < 10:
        acc += 1 / (x * x)
        x += 1
    f = 1 / (x * x)
    return acc + 1 / x + f / 2 + (1 / x) * f * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f * (1 / 30 - f * (5 / 66 - f * (691 / 2730 - f * 7 / 6))))))
def f_trigamma(x):
    x = float(x)
    if x <= 0 and x == m_floor(x):
        return math.inf
    if x < 0:
        s = m_sin(math.pi * x)
        return -_trigamma_pos(1 - x) + math.pi * math.pi / (s * s)
    return _trigamma_pos(x)
'''

_DEV = None


def device_namespace():
    """Names usable in generated kernels: ``f_*`` device functions, ``m_*`` math, constants."""
    global _DEV
    if _DEV is None:
        ns = {"math": math, "cuda": cuda, "np": np}
        ns.update(MATH)
        exec(compile(_DEVICE_SRC, "<tapegrad-cuda-device>", "exec"), ns)  # noqa: S102 - our own source
        for name in [n for n in ns if n.startswith("f_") or n.startswith("_psi") or n.startswith("_trig")]:
            ns[name] = cuda.jit(device=True)(ns[name])
        ns.update({"LN2": math.log(2.0), "LN10": math.log(10.0), "PI": math.pi, "SQRT_PI": math.sqrt(math.pi)})
        _DEV = ns
    return _DEV


def _build(src, name):
    ns = dict(device_namespace())
    exec(compile(src, f"<tapegrad-cuda-{name}>", "exec"), ns)  # noqa: S102 - generated from our own tables
    return cuda.jit(ns[name])


# --------------------------------------------------------------------------- elementwise
class _Vectorize(ast.NodeTransformer):
    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        if node.id.startswith("x") and node.id[1:].isdigit():
            return ast.copy_location(ast.Name("v" + node.id[1:], ast.Load()), node)
        if node.id in ("LN2", "LN10", "PI", "SQRT_PI"):
            return node
        if node.id in self.names:
            return ast.copy_location(ast.Name("f_" + node.id, ast.Load()), node)
        raise ValueError(f"CUDA engine: elementwise expression uses unknown name {node.id!r}")


def expr_source(expr):
    from tapegrad.ops.elemwise import NUMPY_NAMESPACE

    tree = _Vectorize(set(NUMPY_NAMESPACE)).visit(ast.parse(expr, mode="eval"))
    return ast.unparse(tree.body)


_EW = {}


def elementwise_kernel(expr, modes):
    """Kernel ``k(n, nd, shape, out, x0, st0, x1, st1, ...)`` computing ``expr`` with access ``modes``."""
    key = (expr, modes)
    k = _EW.get(key)
    if k is None:
        m = len(modes)
        args = ", ".join(f"x{j}, st{j}" for j in range(m))
        L = [f"def ew(n, nd, shape, out, {args}):",
             "    for i in range(cuda.grid(1), n, cuda.gridsize(1)):"]
        if "g" in modes:
            for j, md in enumerate(modes):
                if md == "g":
                    L.append(f"        o{j} = 0")
            L.append("        rem = i")
            L.append("        for d in range(nd - 1, -1, -1):")
            L.append("            c = rem % shape[d]")
            L.append("            rem = rem // shape[d]")
            for j, md in enumerate(modes):
                if md == "g":
                    L.append(f"            o{j} += c * st{j}[d]")
        for j, md in enumerate(modes):
            idx = {"f": "i", "s": "0", "g": f"o{j}"}[md]
            L.append(f"        v{j} = x{j}[{idx}]")
        L.append(f"        out[i] = {expr_source(expr)}")
        k = _EW[key] = _build("\n".join(L) + "\n", "ew")
    return k


# --------------------------------------------------------------------------- gathers, fills, copies
_SRC_MISC = '''
def gather_set(n, out, src, mp):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        m = mp[i]
        if m > 0:
            out[i] = src[m - 1]
        else:
            out[i] = 0
def gather_add(n, out, src, mp):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        m = mp[i]
        if m > 0:
            out[i] = out[i] + src[m - 1]
def gather_plain(n, out, src, mp):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = src[mp[i]]
def fill(n, out, v):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = v
def copy(n, out, src):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = src[i]
def scale_div(n, out, d):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = out[i] / d
def take(nout, out, x, idx, nidx, n, inner, err):
    # out (outer, nidx, inner) <- x (outer, n, inner) at idx
    for i in range(cuda.grid(1), nout, cuda.gridsize(1)):
        q = i // inner
        r = i - q * inner
        o = q // nidx
        j = q - o * nidx
        t = idx[j]
        if t < 0:
            t += n
        if t < 0 or t >= n:
            err[0] = 1
            out[i] = 0
        else:
            out[i] = x[(o * n + t) * inner + r]
def scatter_add(ny, out, y, idx, nidx, n, inner, err):
    # out (outer, n, inner) += y (outer, nidx, inner) at idx
    for i in range(cuda.grid(1), ny, cuda.gridsize(1)):
        q = i // inner
        r = i - q * inner
        o = q // nidx
        j = q - o * nidx
        t = idx[j]
        if t < 0:
            t += n
        if t < 0 or t >= n:
            err[0] = 1
        else:
            cuda.atomic.add(out, (o * n + t) * inner + r, y[i])
def scan(nlines, out, x, n, inner, rev, prod, init):
    for i in range(cuda.grid(1), nlines, cuda.gridsize(1)):
        o = i // inner
        r = i - o * inner
        base = o * n * inner + r
        acc = init
        for t in range(n):
            tt = n - 1 - t if rev else t
            p = base + tt * inner
            if prod:
                acc = acc * x[p]
            else:
                acc = acc + x[p]
            out[p] = acc
def linrec(nlines, out, a, b, n, inner, rev):
    for i in range(cuda.grid(1), nlines, cuda.gridsize(1)):
        o = i // inner
        r = i - o * inner
        base = o * n * inner + r
        for t in range(n):
            tt = n - 1 - t if rev else t
            p = base + tt * inner
            if t == 0:
                out[p] = b[p]
            else:
                q = p + inner if rev else p - inner
                s = out[q]
                out[p] = b[p] + (s - s if s == 0 else s * a[q if rev else p])
'''
_MISC = {}


def misc(name):
    k = _MISC.get(name)
    if k is None:
        if not _MISC.get("_ns"):
            ns = dict(device_namespace())
            exec(compile(_SRC_MISC, "<tapegrad-cuda-misc>", "exec"), ns)  # noqa: S102
            _MISC["_ns"] = ns
        k = _MISC[name] = cuda.jit(_MISC["_ns"][name])
    return k


# --------------------------------------------------------------------------- reductions
# kind -> (init, load(v), combine(a, b), final(acc))   (aux[o] is available in load / final)
_RED = {
    "sum": ("0", "v", "a + b", "acc"),
    "mean": ("0", "v", "a + b", "acc / scale"),
    "prod": ("1", "v", "a * b", "acc"),
    "max": ("-INF", "v", "f_maximum(a, b)", "acc"),
    "min": ("INF", "v", "f_minimum(a, b)", "acc"),
    "max_fix": ("-INF", "v", "f_maximum(a, b)", "acc if m_isfinite(acc) else acc * 0"),
    "all": ("1", "1 if v != 0 else 0", "a if a < b else b", "acc"),
    "any": ("0", "1 if v != 0 else 0", "a if a > b else b", "acc"),
    "lse_sum": ("0", "m_exp(v - aux[o])", "a + b", "m_log(acc) + aux[o]"),
    "lse_fin": ("0", "v", "a + b", "m_log(acc) + aux[o]"),
}
_ACC = {"float64": "float64", "float32": "float32", "int64": "int64", "bool": "int64", "int32": "int64",
        "int16": "int64", "int8": "int64", "uint8": "int64"}
_RK = {}


def _inits(kind, acc):
    init = _RED[kind][0]
    if init in ("INF", "-INF"):
        if acc.startswith("float"):
            return init.replace("INF", "math.inf")
        return "-9223372036854775807" if init == "-INF" else "9223372036854775807"
    return init


def reduce_kernel(kind, acc, contig, partial):
    """Block-per-output reduction.  ``partial``: block (o, c) reduces chunk c of output o into part[o*C+c]."""
    key = (kind, acc, contig, partial)
    k = _RK.get(key)
    if k is None:
        init, load, comb, final = _RED[kind]
        init = _inits(kind, acc)
        off = "b + r" if contig else "b + roff[r]"
        L = ["def red(x, base, roff, nred, nout, out, aux, scale, nchunk):",
             f"    sm = cuda.shared.array({RTPB}, np.{acc})",
             "    tid = cuda.threadIdx.x",
             "    blk = cuda.blockIdx.x",
             "    while blk < nout * nchunk:",
             "        o = blk // nchunk",
             "        c = blk - o * nchunk",
             "        chunk = (nred + nchunk - 1) // nchunk",
             "        lo = c * chunk",
             "        hi = min(nred, lo + chunk)",
             "        b = base[o]",
             f"        acc = {init}",
             "        r = lo + tid",
             "        while r < hi:",
             f"            v = x[{off}]",
             f"            a = acc",
             f"            b2 = {load}",
             f"            acc = {comb.replace('b', 'b2').replace('a', 'a', 1)}",
             f"            r += {RTPB}",
             "        sm[tid] = acc",
             "        cuda.syncthreads()",
             f"        s = {RTPB // 2}",
             "        while s > 0:",
             "            if tid < s:",
             "                a = sm[tid]",
             "                b2 = sm[tid + s]",
             f"                sm[tid] = {comb.replace('b', 'b2')}",
             "            cuda.syncthreads()",
             "            s = s // 2",
             "        if tid == 0:",
             "            acc = sm[0]"]
        if partial:
            L.append("            out[blk] = acc")
        else:
            L.append(f"            out[o] = {final}")
        L += ["        cuda.syncthreads()",
              "        blk += cuda.gridDim.x"]
        src = "\n".join(L) + "\n"
        src = src.replace("f_maximum(a, b2)", "f_maximum(a, b2)")
        k = _RK[key] = _build(src, "red")
    return k


_ARGK = {}


def arg_kernel(which, acc, contig):
    """Index (into the reduced elements, C order) of the first max/min; NaN counts as the extremum."""
    key = (which, acc, contig)
    k = _ARGK.get(key)
    if k is None:
        better = "v > bv" if which == "max" else "v < bv"
        off = "b + r" if contig else "b + roff[r]"
        init = ("-math.inf" if which == "max" else "math.inf") if acc.startswith("float") else \
            ("-9223372036854775807" if which == "max" else "9223372036854775807")
        src = f'''
def argred(x, base, roff, nred, nout, out):
    sv = cuda.shared.array({RTPB}, np.{acc})
    si = cuda.shared.array({RTPB}, np.int64)
    tid = cuda.threadIdx.x
    o = cuda.blockIdx.x
    while o < nout:
        b = base[o]
        bv = {init}
        bi = nred
        r = tid
        while r < nred:
            v = x[{off}]
            if bi == nred:
                bv = v
                bi = r
            elif bv == bv and (v != v or {better}):
                bv = v
                bi = r
            r += {RTPB}
        sv[tid] = bv
        si[tid] = bi
        cuda.syncthreads()
        s = {RTPB // 2}
        while s > 0:
            if tid < s:
                v = sv[tid + s]
                vi = si[tid + s]
                bv = sv[tid]
                bi = si[tid]
                take = False
                if vi < nred:
                    if bi == nred:
                        take = True
                    elif bv != bv:
                        take = v != v and vi < bi
                    elif v != v:
                        take = True
                    elif {better}:
                        take = True
                    elif v == bv and vi < bi:
                        take = True
                if take:
                    sv[tid] = v
                    si[tid] = vi
            cuda.syncthreads()
            s = s // 2
        if tid == 0:
            out[o] = si[0] if si[0] < nred else 0
        cuda.syncthreads()
        o += cuda.gridDim.x
'''
        k = _ARGK[key] = _build(src, "argred")
    return k


# --------------------------------------------------------------------------- GEMM
_GK = {}


def gemm_kernel(dtype):
    """``C[b] = A[b] @ B[b]``: A (nb, M, K), B (nb, K, N), C (nb, M, N), all contiguous."""
    k = _GK.get(dtype)
    if k is None:
        src = f'''
def gemm(A, B, C, nb, M, N, K):
    sA = cuda.shared.array(({TILE}, {TILE}), np.{dtype})
    sB = cuda.shared.array(({TILE}, {TILE}), np.{dtype})
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * {TILE} + tx
    row = cuda.blockIdx.y * {TILE} + ty
    bb = cuda.blockIdx.z
    ntile = (K + {TILE} - 1) // {TILE}
    while bb < nb:
        acc = ZERO
        ao = bb * M * K
        bo = bb * K * N
        for t in range(ntile):
            ka = t * {TILE} + tx
            kb = t * {TILE} + ty
            if row < M and ka < K:
                sA[ty, tx] = A[ao + row * K + ka]
            else:
                sA[ty, tx] = 0
            if col < N and kb < K:
                sB[ty, tx] = B[bo + kb * N + col]
            else:
                sB[ty, tx] = 0
            cuda.syncthreads()
            for j in range({TILE}):
                acc += sA[ty, j] * sB[j, tx]
            cuda.syncthreads()
        if row < M and col < N:
            C[bb * M * N + row * N + col] = acc
        bb += cuda.gridDim.z
'''
        src = src.replace("ZERO", "0.0" if dtype.startswith("float") else "0")
        k = _GK[dtype] = _build(src, "gemm")
    return k


def grid1(n, tpb=TPB, cap=8 if SIM else 8192):
    """Blocks for a grid-stride loop over ``n`` elements."""
    return max(1, min(cap, (n + tpb - 1) // tpb))
