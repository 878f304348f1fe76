"""The program tier's building blocks (see :mod:`tapegrad.compile.program`): where a slot's elements live
(:class:`_Loc`), loop nests over a shape (:class:`_Loop`), literals, and the tier's limits."""

from __future__ import annotations

import math
import re

import numpy as np

from tapegrad.compile.kernels.steps import row_major
from tapegrad.compile.threads import EXPENSIVE, PAR_MIN, PAR_WORK

PROGRAM_VERSION = 1
MAX_INSTRUCTIONS = 300  # numba compile time grows faster than the tape (625 instructions: 136 s): bigger tapes stay on tiers 0/1
WS_MIN = 4096  # intermediates of at least this many elements live in the per-thread workspace
THIN_K = 16  # a matrix product with at most this many terms per element is a fused-group member (not BLAS)
THIN_MIN = 1024  # ... when its output has at least this many elements
_WS_MARK = "__workspace__."  # placeholder of a workspace window until offsets are assigned
_ACC = {"float32": "float64"}  # accumulate sums of these dtypes in a wider type


# No fast-math flag for the whole function: LLVM with ``reassoc`` on every operation turned ``x / x * y`` into
# ``x * y / x`` (0 instead of 1e-200) and ``x * 2 / 2`` into ``x`` (1e308 instead of inf).  Only the additions of
# sums carry ``reassoc`` (``radd``, placed by ``reassoc_sums``), so they still vectorise; no flag anywhere lets
# LLVM assume away NaN, inf or signed zeros, so ``x * 0``, ``x - x`` and the absolute-zero multiply stay IEEE.
FASTMATH = set()


def _fastmath_src():
    return "{" + ", ".join(repr(f) for f in sorted(FASTMATH)) + "}" if FASTMATH else "False"


_ACC_LINE = re.compile(r"^(\s+)(\S.*?) \+= (.+)$")
_PRANGE = re.compile(r"^(\s*)for \w+ in prange\(")


def _indent(line):
    return len(line) - len(line.lstrip())


def reassoc_sums(lines):
    """The generated lines with every accumulation ``x += v`` (a local sum, or an element summed in memory)
    written ``x = radd(x, v)``: the one addition that may be reassociated (see ``FASTMATH``).  A local sum
    inside a ``prange`` loop first becomes a sum local to the chunk, added to the outer one once per chunk
    with ``+=``, which Numba's parallel reduction needs to see."""
    out = list(lines)
    keep = set()  # ids of the per-chunk ``s += s_c`` lines: parfor reductions, left as they are
    j = 0
    while j < len(out):
        m = _PRANGE.match(out[j])
        if m is None:
            j += 1
            continue
        ind = _indent(out[j])
        end = j + 1
        while end < len(out) and (not out[end].strip() or _indent(out[end]) > ind):
            end += 1
        block = out[j + 1:end]
        names = []
        for line in block:
            a = _ACC_LINE.match(line)
            if a and re.fullmatch(r"[A-Za-z_]\w*", a.group(2)) and a.group(2) not in names:
                names.append(a.group(2))
        head, tail = [], []
        for name in names:
            if any(re.match(rf"^\s+{name} = ", line) for line in block):
                continue
            init = next((re.match(rf"^\s+{name} = (.+)$", line) for line in reversed(out[:j])
                         if re.match(rf"^\s+{name} = (.+)$", line)), None)
            if init is None:
                continue
            local = f"{name}_c"
            block = [re.sub(rf"^(\s+){name} \+= ", rf"\g<1>{local} += ", line) for line in block]
            head.append(f"{' ' * (ind + 4)}{local} = {init.group(1)}")
            tail.append(f"{' ' * (ind + 4)}{name} += {local}")
        keep.update(tail)
        out[j + 1:end] = head + block + tail
        j = j + 1 + len(head) + len(block) + len(tail)
    for k, line in enumerate(out):
        a = _ACC_LINE.match(line)
        if a and line not in keep:
            out[k] = f"{a.group(1)}{a.group(2)} = radd({a.group(2)}, {a.group(3)})"
    return out


class Unsupported(Exception):
    """The tape has an instruction (or a shape/dtype case) with no program template."""


def _lit(value, dt):
    """Source of the scalar ``value`` as a ``dt`` literal."""
    v = np.asarray(value).reshape(-1)[0]
    if dt == "bool":
        return "True" if bool(v) else "False"
    if dt in ("int64", "int32", "int16", "int8", "uint8"):
        return f"np.{dt}({int(v)})"
    f = float(v)
    if math.isnan(f):
        s = "np.nan"
    elif math.isinf(f):
        s = "np.inf" if f > 0 else "-np.inf"
    else:
        s = repr(f)
    return f"np.{dt}({s})"


class _Loc:
    """Where a slot's elements are: a literal, or a flat buffer with an element offset and strides."""

    __slots__ = ("lit", "buf", "off", "strides", "shape", "owned")

    def __init__(self, shape, lit=None, buf=None, off=0, strides=None, owned=False):
        self.shape = tuple(int(n) for n in shape)
        self.lit = lit
        self.buf = buf
        self.off = off if isinstance(off, str) else int(off)  # a str: a run-time offset (a loop row)
        self.strides = tuple(strides) if strides is not None else row_major(self.shape)
        self.owned = owned

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def contiguous(self):
        st = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != st:
                return False
            st *= n
        return True


def _axis_strides(ndim, axes, reduced_strides, keepdims):
    """Per axis of an ``ndim``-d operand, the element stride into its reduction over ``axes``: 0 on a reduced
    axis, else the next of ``reduced_strides`` (given per axis of the reduced array; with ``keepdims`` the reduced
    axes are present there too and are skipped)."""
    ws, j = [], 0
    for d in range(ndim):
        if d in axes:
            ws.append(0)
            if keepdims:
                j += 1
        else:
            ws.append(reduced_strides[j])
            j += 1
    return ws


def _off_add(a, b):
    """``a + b`` for offsets that may be source strings (run-time offsets)."""
    if isinstance(a, str) or isinstance(b, str):
        if b == 0:
            return a
        if a == 0:
            return b
        return f"({a} + {b})"
    return a + b


def _read_strides(loc, shape):
    """Element strides of ``loc`` read over the loop ``shape`` (right-aligned broadcasting: 0 on new axes)."""
    lead = len(shape) - len(loc.shape)
    if lead < 0:
        raise Unsupported("an operand has more dimensions than its loop")
    st = []
    for d, n in enumerate(shape):
        a = d - lead
        if a < 0 or loc.shape[a] == 1:
            st.append(0)
        elif loc.shape[a] != n:
            raise Unsupported(f"operand shape {loc.shape} does not broadcast to {shape}")
        else:
            st.append(loc.strides[a])
    return st


def _chunk_range(lo, hi, chunks):
    """``range(...)`` source of chunk ``cq`` of ``chunks`` contiguous chunks of ``range(lo, hi)``."""
    ch = -(-(hi - lo) // chunks)
    start = f"{lo} + cq * {ch}" if lo else f"cq * {ch}"
    return f"range({start}, min({start} + {ch}, {hi}))"


ALIGN_MIN = 2048  # elements: a loop (or a chunk of one) at least this long starts its vector loop on a cache line
PF_WORK = 40  # element_work of a loop heavy enough to prefetch (W2's HVP loop: 57; its gradient's, 28, lost 10 %)
PF_BYTES = 8 << 20  # ... and streaming this many bytes per range (the W2 HVP's at n = 1e5, 1.6 MB, lost 15 %)
PF_BLOCK = 512  # bytes of the anchor's elements per block (64 float64): one prefetch per stream and cache line
PF_AHEAD = 2048  # bytes ahead of the block that the prefetches reach (32 cache lines)
PF_STREAMS = 4  # at most this many arrays prefetched


def loop_range(emit, ind, var, lo, hi, chunks=0, streams=(), itemsize=8, prefetch=False):
    """Emit ``for <var> in range(lo, hi)``; returns ``(body indentation, split)``.  The body must index through
    :func:`~tapegrad.compile.vmath.nn` (see there) when ``chunks`` is set or ``split`` is true.

    * ``chunks``: the range is split into that many contiguous chunks, run by ``prange``.
    * ``streams``: ``(buffer, offset)`` pairs of the arrays the body reads as ``buffer[offset + var]``, the first
      one (of item size ``itemsize``) the *anchor*.  With :data:`ALIGN_MIN` iterations or more per range, each
      range runs in two pieces, split at the first index whose anchor element starts a 64-byte line
      (:func:`~tapegrad.compile.vmath.align_split`): the vector loop that LLVM makes of the second piece then
      loads whole lines.  A large NumPy array starts 16 bytes into a page, so without the split every AVX-512
      load of it spans two lines (a loop streaming two such arrays: 0.44 ns/element, against 0.29 aligned).
    * With ``prefetch`` (a loop that computes much per element, :data:`PF_WORK`) and :data:`PF_BYTES` or more of
      streams per range, the pieces run in blocks of :data:`PF_BLOCK` bytes and each block first prefetches its
      streams :data:`PF_AHEAD` bytes ahead (:func:`~tapegrad.compile.vmath.prefetch`).  Such a loop keeps
      too few misses in flight for the hardware prefetcher when its arrays come from memory: W2's HVP (n = 1e6,
      two 8 MB inputs) went from 0.45 to 0.31 ns/element, at n = 4e6 from 0.58 to 0.47.  A light loop loses
      (W2's gradient: 0.18 -> 0.20 at 1e6, 0.30 -> 0.34 at 4e6), so it runs unblocked."""
    per = -(-(hi - lo) // chunks) if chunks else hi - lo
    streams = list(streams)[:PF_STREAMS]
    # split: W2's gradient, one input and its result, ran 0.94-0.98x split at n = 1e6 to 4e6 (same arrays,
    # interleaved); its HVP, two inputs, 0.6-0.8x
    split = bool(streams) and per >= ALIGN_MIN
    if chunks:
        emit(f"{ind}for cq in prange({chunks}):")
        ind += "    "
        if not split:
            emit(f"{ind}for {var} in {_chunk_range(lo, hi, chunks)}:")
            return ind + "    ", False
        emit(f"{ind}q_lo = {f'{lo} + cq * {per}' if lo else f'cq * {per}'}")
        emit(f"{ind}q_hi = min(q_lo + {per}, {hi})")
        start, stop = "q_lo", "q_hi"
    else:
        if not split:
            emit(f"{ind}for {var} in range({f'{lo}, ' if lo else ''}{hi}):")
            return ind + "    ", False
        start, stop = str(lo), str(hi)
    buf, off = streams[0]
    emit(f"{ind}q_al = align_split({buf}, {off}, {start}, {stop})")
    emit(f"{ind}for q_sg in range(2):")
    lo_src, hi_src = f"{start} if q_sg == 0 else q_al", f"q_al if q_sg == 0 else {stop}"
    if not prefetch or per * itemsize * len(streams) < PF_BYTES:
        emit(f"{ind}    for {var} in range({lo_src}, {hi_src}):")
        return ind + "        ", True
    block, ahead = max(PF_BLOCK // itemsize, 1), max(PF_AHEAD // itemsize, 1)
    emit(f"{ind}    q_a = {lo_src}")
    emit(f"{ind}    q_b = {hi_src}")
    emit(f"{ind}    for q_bk in range(q_a, q_b, {block}):")
    line = max(64 // itemsize, 1)
    for buf, off in streams:  # one per cache line (a loop of them, prefetch_span, was 8 % slower)
        for j in range(0, block, line):
            emit(f"{ind}        prefetch({buf}, {_off_add(off, ahead + j)} + q_bk)")
    emit(f"{ind}        for {var} in range(q_bk, min(q_bk + {block}, q_b)):")
    return ind + "            ", True


class _Loop:
    """A loop nest over ``shape``: ``index(off, strides)`` gives the flat index source of an operand.  With
    ``par`` (a chunk count) set, the flat loop or axis ``par_dim`` of the nest is split into that many chunks
    run in parallel, and each index is marked non-negative (``nn``) so that a chunk's loop still vectorises."""

    def __init__(self, shape, operand_strides):
        self.shape = tuple(int(n) for n in shape)
        rm = row_major(self.shape)
        self.flat = all(list(s) == list(rm) or not any(s) for s in operand_strides)
        self.dims = [d for d, n in enumerate(self.shape) if n != 1]
        self.var = "i"  # the flat loop's index variable
        self.par = 0  # chunks run in parallel (0: a serial loop)
        self.par_dim = self.dims[0] if self.dims else 0  # the axis a loop nest splits into chunks
        self.streams = []  # a flat loop's (buffer, offset) reads along it, to align to and prefetch (loop_range)
        self.itemsize = 8  # the item size of the first of them
        self.prefetch = False  # ... and whether it computes enough per element to prefetch them
        self.split = False  # a loop was split at an aligned index: its indices are marked non-negative too

    def open(self, emit, ind, levels=None, start=0, lo=0, hi=None):
        """Emit the loop headers; returns the body indentation.  A loop nest may be opened in two steps:
        ``levels`` headers from axis ``start`` of ``dims`` (the ``prange`` header comes with ``start == 0``).
        A flat loop may run over the part ``[lo, hi)`` of its range (a segment: in chunks only when long)."""
        n = int(np.prod(self.shape, dtype=np.int64))
        if self.flat:
            hi = n if hi is None else hi
            chunks = self.par if self.par and (hi - lo) * 8 >= n else 0
            ind, split = loop_range(emit, ind, "i", lo, hi, chunks, self.streams, self.itemsize, self.prefetch)
            self.split = self.split or split
            return ind
        if self.par and start == 0:
            emit(f"{ind}for cq in prange({self.par}):")
            ind += "    "
        for d in self.dims[start:None if levels is None else start + levels]:
            split = self.par and d == self.par_dim
            emit(f"{ind}for i{d} in {_chunk_range(0, self.shape[d], self.par) if split else f'range({self.shape[d]})'}:")
            ind += "    "
        return ind

    def index(self, off, strides):
        if self.flat:
            if not any(strides):
                return str(off)
            src = self.var if off == 0 else f"{off} + {self.var}"
            return f"nn({src})" if self.par or self.split else src
        terms = [f"i{d} * {strides[d]}" if strides[d] != 1 else f"i{d}" for d in self.dims if strides[d]]
        if off or not terms:
            terms.insert(0, str(off))
        src = " + ".join(terms)
        return f"nn({src})" if self.par and any(strides[d] for d in self.dims) else src

    def out_index(self):
        """Flat row-major index of the loop position (the index of a fresh output buffer)."""
        return self.index(0, row_major(self.shape))


def element_work(G, members, ext):
    """Operations per element of fused group ``G``'s loop, roughly: a load per external operand, one per
    epilogue entry and member, ``2 n`` for an ``n``-term dot member, 10 more for an expensive function."""
    return len(ext) + len(G["epi"]) + sum(
        (m.n_terms * 2 if m.kind == "dot" else 1) + (10 if m.kind == "ew" and m.spec.name in EXPENSIVE else 0)
        for m in members)


def par_chunks(threads, G, loop, members, ext):
    """Chunks (one per thread) for fused group ``G``'s top-level ``loop`` to run in parallel, or 0; sets
    ``loop.par_dim``, the split axis of a loop nest.  Only loops whose work (elements times operations, see
    :mod:`~tapegrad.compile.threads`) reaches ``PAR_WORK``, split along an axis on which no two iterations
    write the same element: every write moves along every loop axis (no broadcast store), no buffer is
    assigned at two windows, and an in-loop partial sum (the bias gradient: a sum over rows) keeps the split
    axis.  Scalar sums become ``prange`` reductions."""
    size = int(np.prod(loop.shape, dtype=np.int64))
    if threads < 2 or size < PAR_MIN or not loop.dims:
        return 0
    if size * element_work(G, members, ext) < PAR_WORK:
        return 0
    writes = [e for e in G["epi"] if e[0] == "write"]
    if any(any(e[3][d] == 0 for d in loop.dims) for e in writes):
        return 0
    # assignments into one buffer at two windows: where they overlap, the later iteration's value wins
    if any(e[5] != "+=" and any(f[1] == e[1] and f[2:4] != e[2:4] for f in writes) for e in writes):
        return 0
    sums = [e[3] for e in G["epi"] if e[0] == "sum"]
    if loop.flat:
        return 0 if sums else min(threads, size)
    for d in loop.dims:  # outermost first: the longest contiguous runs per chunk
        if loop.shape[d] >= 2 and all(ws[d] != 0 for ws in sums):
            loop.par_dim = d
            return min(threads, loop.shape[d])
    return 0


def _nest_index(dims, shape, var="i"):
    """Flat C-order index over the loop variables ``<var><d>`` of ``dims`` (axes of ``shape``)."""
    dims = list(dims)
    st = row_major(tuple(shape[d] for d in dims))
    return " + ".join([f"{var}{d} * {s_}" for d, s_ in zip(dims, st)] or ["0"])


class _Nest:
    """A loop nest ``i0, i1, ...`` over every axis of ``shape`` (for :meth:`_Gen.read`)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def open(self, emit, reverse=None):
        """Emit the loop headers (axis ``reverse`` counting down); returns the body indentation."""
        ind = "    "
        for d, n in enumerate(self.shape):
            emit(f"{ind}for i{d} in range({f'{n - 1}, -1, -1' if d == reverse else n}):")
            ind += "    "
        return ind

    def index(self, off, strides):
        return " + ".join([str(off)] + [f"i{d} * {s_}" for d, s_ in enumerate(strides) if s_])


def _mean_count(shape, axes, ddof):
    """The divisor of a mean over ``axes`` of ``shape`` (``ddof`` subtracted), or None when it is not positive."""
    cnt = int(np.prod([shape[a] for a in axes], dtype=np.int64)) - int(ddof)
    return cnt if cnt > 0 else None


def _sum_like_strides(gshape, oshape):
    """Per axis of ``gshape``: the element stride of a C-contiguous ``oshape`` result that ``sum_like`` adds it
    into (0 on the axes it sums over), or None when ``oshape`` has more dimensions."""
    lead = len(gshape) - len(oshape)
    if lead < 0:
        return None
    ost = row_major(oshape)
    return [0 if d - lead < 0 or (oshape[d - lead] == 1 and n != 1) else ost[d - lead] for d, n in enumerate(gshape)]


def place_workspace(lines, bufs):
    """Give each workspace buffer of ``bufs`` (name -> (dtype, length)) a window of its dtype's workspace
    ``w_<dtype>`` (a parameter the caller passes, kept per thread between calls) and rewrite its placeholder line
    in ``lines``; returns ``{dtype: workspace length}``.  A buffer lives from its first to its last top-level
    statement, or the last of any name assigned from it (directly or through other names: a view may outlive the
    line that made it).  Buffers whose lives overlap get disjoint windows (first fit), each starting on a 4 KiB
    page.  Large intermediates then cost no allocation (page faults on fresh memory) and reuse cache-warm memory."""
    if not bufs:
        return {}
    stmt = []  # statement index of each line (a line indented by 4 starts a statement)
    k = -1
    for line in lines:
        if line.startswith("    ") and not line.startswith("     "):
            k += 1
        stmt.append(max(k, 0))
    word = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    first, last, viewers = {}, {}, {}
    for line, i in zip(lines, stmt):
        names = set(word.findall(line))
        for n in names:
            last[n] = i
            first.setdefault(n, i)
        m = re.match(r"^    ([A-Za-z_][A-Za-z0-9_]*) = (.*)$", line)
        if m and _WS_MARK not in line and not m.group(2).startswith("align_split("):  # (an index is no view)
            # a name bound to an expression of others may be a view of them
            for n in names - {m.group(1)}:
                viewers.setdefault(n, set()).add(m.group(1))

    def end(b):
        seen, stack, e = {b}, [b], last[b]
        while stack:
            for v in viewers.get(stack.pop(), ()):
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
                    e = max(e, last[v])
        return e

    offsets, sizes = {}, {}
    for dt in sorted({d for d, _ in bufs.values()}):
        placed = []  # (offset, size, last statement)
        page = 4096 // np.dtype(dt).itemsize  # windows start on pages of the page-aligned workspace
        for start, b in sorted((first[b], b) for b, (d, _) in bufs.items() if d == dt):
            n = bufs[b][1]
            off = 0
            for lo, hi in sorted((o, o + sz) for o, sz, e in placed if e >= start):  # first fit below each busy one
                if off + n <= lo:
                    break
                off = max(off, -(-hi // page) * page)
            placed.append((off, n, end(b)))
            offsets[b] = off
        sizes[dt] = max(o + sz for o, sz, _ in placed)
    for j, line in enumerate(lines):
        if _WS_MARK in line:
            lhs, b = line.split(f" = {_WS_MARK}")
            dt, n = bufs[b]
            lines[j] = f"{lhs} = w_{dt}[{offsets[b]}:{offsets[b] + n}]"
    return sizes
