"""Program-tier templates of products: ``dot``/``matmul``/``einsum``/``tensordot``/``outer`` through BLAS
(``np.dot`` into buffers), batched products as loops of BLAS calls, short contractions as fused-group
members, and the linear algebra of one matrix through numba's ``np.linalg`` (a mixin of :class:`tapegrad.compile.program_gen._Gen`)."""

from __future__ import annotations

import numpy as np

from tapegrad.compile.gemm import MR, PAR_WORK_GEMM, use_own
from tapegrad.compile.kernels.steps import row_major
from tapegrad.compile.program_ir import (THIN_K, THIN_MIN, Unsupported, _axis_strides, _lit, _Loc, _Loop, _Nest,
                                         _nest_index, _off_add)
from tapegrad.registry import name_of


class _DotMember:
    """A product of matrices M x K and K x N with a short contraction (K <= ``THIN_K``, like ``dP @ W2.T`` of a
    small output layer's gradient) as a member of a fused group over M x N: its value at ``(i, j)`` is the sum
    of K products read from the operands' buffers, so the product is never stored and read back (BLAS spends
    most of such a call writing it).  ``a``/``b``: ``(buffer, offset, step per term, loop strides)``."""

    kind = "dot"
    data_args = ()
    load_dtypes = ()

    def __init__(self, k, out, out_dtype, a, b, n_terms):
        self.k, self.out, self.out_dtype = k, out, out_dtype
        self.a, self.b, self.n_terms = a, b, n_terms

    def strides(self):
        return [list(self.a[3]), list(self.b[3])]


class ProductTemplates:
    """``op_<name>`` templates of the product ops (see :class:`~tapegrad.compile.program_ops.OpTemplates`)."""

    # ---- dot family (BLAS through np.dot; short contractions as fused-group members)
    def _thin_dot(self, k, name, args, outs):
        """For a product for :class:`_DotMember` (matrices of one float dtype as ``dot``/``matmul`` or an einsum of
        one contracted label, at most ``THIN_K`` terms, an output of at least ``THIN_MIN`` elements and 8 columns
        for the loop to vectorise over, operands in buffers): ``(left, right)``, each ``(slot, stride along
        the output axis, stride along the terms)``; else None."""
        if name not in ("DOT", "MATMUL", "EINSUM") or len(args) != 2 or len(outs) != 1:
            return None
        a, b, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if (dt not in ("float64", "float32") or self.dtypes[a] != dt or self.dtypes[b] != dt
                or any(len(self.shapes[s]) != 2 for s in (a, b, o))
                or any(s not in self.loc or self.loc[s].lit is not None for s in (a, b))):
            return None
        sa, sb = self.loc[a].strides, self.loc[b].strides
        if name != "EINSUM":
            left, right = (a, sa[0], sa[1]), (b, sb[1], sb[0])
        else:
            op = self.tape.ops[k]
            la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
            con = [c for c in la if c in lb]
            if len(la) != 2 or len(lb) != 2 or len(con) != 1 or con[0] in lo or len(set(la + lb)) != 3:
                return None
            (fa,), (fb,), c = [x for x in la if x != con[0]], [x for x in lb if x != con[0]], con[0]
            if lo not in ((fa, fb), (fb, fa)):
                return None
            pa = (a, sa[la.index(fa)], sa[la.index(c)])
            pb = (b, sb[lb.index(fb)], sb[lb.index(c)])
            left, right = (pa, pb) if lo == (fa, fb) else (pb, pa)
        m, n = self.shapes[o]
        kk = self.shapes[a][1] if name != "EINSUM" else self.shapes[a][la.index(c)]
        if not (1 <= kk <= THIN_K and m >= 2 and n >= 8 and m * n >= THIN_MIN):
            return None
        return left, right

    def _dot_member(self, k, o, thin):
        """The :class:`_DotMember` of instruction ``k`` from :meth:`_thin_dot`'s ``thin`` (operands available
        before the group's loop).  The right operand is first copied to a K x N C-order scratch when its rows
        are strided (a transposed weight matrix), so the loop reads it with unit stride."""
        (a, a_row, a_term), (b, b_col, b_term) = thin
        la, lb = self.loc[a], self.loc[b]
        m, n = self.shapes[o]
        kk = max(la.size // m, 1)
        b_buf, b_off = lb.buf, lb.off
        if b_col != 1:
            z = self.scratch(kk * n, self.dtypes[b])
            self.emit(f"    for q0 in range({kk}):")
            self.emit(f"        for q1 in range({n}):")
            self.emit(f"            {z}[q0 * {n} + q1] = {lb.buf}[{_off_add(lb.off, 'q0 * %d + q1 * %d' % (b_term, b_col))}]")
            b_buf, b_off, b_term, b_col = z, 0, n, 1
        return _DotMember(k, o, self.dtypes[o], (la.buf, la.off, a_term, [a_row, 0]),
                          (b_buf, b_off, b_term, [0, b_col]), kk)

    def _dot_member_source(self, m, loop):
        """The value of :class:`_DotMember` ``m`` at the position of ``loop``: its K products summed in order."""
        terms = []
        (ba, oa, ka, sa), (bb, ob, kb, sb) = m.a, m.b
        for j in range(m.n_terms):
            terms.append(f"{ba}[{loop.index(_off_add(oa, j * ka), sa)}] * {bb}[{loop.index(_off_add(ob, j * kb), sb)}]")
        return f"np.{m.out_dtype}({' + '.join(terms)})"

    def _buffer(self, x):
        """``x``'s loc in a C-order buffer: copied when strided, filled when a literal (the ones cotangent of a
        summed product), which stays a literal for everything else."""
        loc = self.loc[x]
        if loc.lit is None:
            return self._materialize(x)
        if self.dtypes[x] not in ("float64", "float32"):
            raise Unsupported("product of a non-float literal")
        z = self.scratch(loc.size, self.dtypes[x])
        self.emit(f"    {z}[:] = {loc.lit}")
        return _Loc(loc.shape, buf=z)

    def _as_array(self, x):
        """Source of a numba array (1-d or 2-d, 'C' or 'F' layout) holding ``x``'s value."""
        loc = self.loc[x]
        if loc.lit is not None:
            loc = self._buffer(x)
        shape = loc.shape
        n = loc.size
        if len(shape) == 1:
            if loc.strides[0] == 1 or shape[0] <= 1:
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}]"
        elif len(shape) == 2:
            a, b = shape
            if loc.contiguous():
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}].reshape(({a}, {b}))"
            if (b == 1 or loc.strides[0] == 1) and (a == 1 or loc.strides[1] == a):
                return f"{loc.buf}[{loc.off}:{_off_add(loc.off, n)}].reshape(({b}, {a})).T"
        else:
            raise Unsupported("dot of more than 2 dimensions")
        src = self.copy_out(x)
        if len(shape) == 2:
            return f"{src}.reshape({shape!r})"
        return src

    def op_dot(self, k, op, args, outs):
        a, b, o = args[0], args[1], outs[0]
        if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
            raise Unsupported("dot of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("dot of an empty operand")
        matrices = len(self.shapes[a]) == 2 and len(self.shapes[b]) == 2
        if matrices and self._diag_product(a, b, o):
            return
        self._dot_into(o, self._as_array(a), self._as_array(b), matrices, self.shapes[a][-1] if matrices else None)

    def _diag_of(self, s):
        """``v`` when slot ``s`` is ``diag_embed(v, ...)`` of a vector (a square matrix, ``v`` on its diagonal)."""
        k = self.producer.get(s)
        if k is None or name_of(int(self.tape.codes[k])) != "DIAG_EMBED":
            return None
        op, v = self.tape.ops[k], int(self.tape.instr_args(k)[0])
        if op.offset != 0 or op.trace or len(self.shapes[v]) != 1 or not self._before(v):
            return None
        return v

    def _diag_product(self, a, b, o):
        """``A @ diag(v)`` (or ``diag(v) @ B``): each column (row) of ``A`` (``B``) scaled, instead of a product
        with n - 1 zeros per term.  Exact: a product term with an off-diagonal zero is 0, or NaN where the other
        factor is inf or NaN, so an element is NaN when its row (column) has a non-finite value other than the
        one it scales; the sum of the zero terms is zero (its sign, as BLAS's, is unspecified)."""
        va, vb = self._diag_of(a), self._diag_of(b)
        if vb is not None:
            x, v, along = a, vb, "row"  # A @ diag(v): A[i, j] v[j], NaN rows of A spread along the row
        elif va is not None:
            x, v, along = b, va, "col"  # diag(v) @ B: v[i] B[i, j], NaN columns spread along the column
        else:
            return False
        dt = self.dtypes[o]
        if self.dtypes[x] != dt or self.dtypes[v] != dt:
            return False
        m, n = self.shapes[o]
        lx, lv = self.loc[x], self.loc[v]
        if lx.lit is not None or lv.lit is not None:
            return False
        name = self.fresh(o)
        xe = f"{lx.buf}[{_off_add(lx.off, f'i * {lx.strides[0]} + j * {lx.strides[1]}')}]"
        k = "j" if along == "row" else "i"  # the index v scales by
        ve = f"{lv.buf}[{_off_add(lv.off, f'{k} * {lv.strides[0]}')}]"
        bad = self.tmp("nf")
        outer, inner, n_outer, n_inner = ("i", "j", m, n) if along == "row" else ("j", "i", n, m)
        self.emit(f"    for {outer} in range({n_outer}):")
        self.emit(f"        {bad} = 0")
        self.emit(f"        for {inner} in range({n_inner}):")
        self.emit(f"            if not np.isfinite({xe}):")
        self.emit(f"                {bad} += 1")
        self.emit(f"        for {inner} in range({n_inner}):")
        self.emit(f"            xv = {xe}")
        self.emit(f"            y = xv * {ve}")
        self.emit(f"            if {bad} > (0 if np.isfinite(xv) else 1):")
        self.emit(f"                y = np.{dt}(np.nan)")
        self.emit(f"            {name}[i * {n} + j] = y")
        return True

    def _mm(self, sa, sb, out, m, n, k, dt):
        """The statement ``out = sa @ sb`` for ``m x k`` by ``k x n`` matrices: :func:`tapegrad.compile.gemm.v_gemm`
        where :func:`~tapegrad.compile.gemm.use_own` takes it (an AVX-512 CPU whose BLAS runs narrower kernels),
        else BLAS through ``np.dot``."""
        if use_own(m, n, k, dt, self.threads):
            if self.threads > 1 and m >= 2 * MR * self.threads and m * n * k >= PAR_WORK_GEMM:
                return f"v_gemm_par({sa}, {sb}, {out}, {self.threads})"
            return f"v_gemm({sa}, {sb}, {out})"
        return f"np.dot({sa}, {sb}, {out})"

    def _dot_into(self, o, sa, sb, matrices, k=None):
        """Emit ``np.dot(sa, sb)`` storing into a new buffer of slot ``o``: BLAS writes the buffer itself
        (``out=``), so a workspace window costs no allocation.  A thin product of two matrices (``o`` is M x N
        with N <= 16 < M / 4, like ``H @ W2`` or ``H.T @ dP`` of a small output layer) is computed transposed,
        ``(sb.T @ sa.T)`` into a scratch N x M, and copied: OpenBLAS runs that shape 20-35 % faster."""
        dt = self.dtypes[o]
        if self.shapes[o] == ():
            name = f"{self.prefix}b{o}"
            self.emit(f"    {name} = np.empty(1, np.{dt})")
            self.emit(f"    {name}[0] = np.dot({sa}, {sb})")
            self.loc[o] = _Loc(self.shapes[o], buf=name, owned=True)
            return
        name = self.fresh(o)
        if len(self.shapes[o]) == 1:
            self.emit(f"    np.dot({sa}, {sb}, {name})")
            return
        m, n = self.shapes[o]
        out = f"{name}.reshape({self.shapes[o]!r})"
        # a threaded program takes thin products to the own kernel too (see use_own): no transposed BLAS call
        own_thin = k is not None and self.threads > 1 and use_own(m, n, k, dt, self.threads)
        if matrices and 1 < n <= 16 and m > 4 * n and not own_thin:
            tmp = self.scratch(m * n, dt)
            self.emit(f"    np.dot(np.ascontiguousarray(({sb}).T), ({sa}).T, {tmp}.reshape(({n}, {m})))")
            # the transposed copy as a loop over constant bounds: numba's `out[:, :] = tmp.T` indexes with a
            # wraparound select per element, and LLVM vectorised it into gathers and scatters (14 % of W1)
            self.emit(f"    for q0 in range({m}):")
            self.emit(f"        for q1 in range({n}):")
            self.emit(f"            {name}[q0 * {n} + q1] = {tmp}[q1 * {m} + q0]")
        elif matrices and k is not None:
            self.emit(f"    {self._mm(sa, sb, out, m, n, k, dt)}")
        else:
            self.emit(f"    np.dot({sa}, {sb}, {out})")

    def op_einsum(self, k, op, args, outs):
        """Two-operand contractions over one label that are a (transposed) matrix/vector product."""
        a, b, o = args[0], args[1], outs[0]
        la, lb, lo = tuple(op.a_labels), tuple(op.b_labels), tuple(op.out_labels)
        if (len(la) == len(lb) == len(lo) == 2 and len(set(la + lb)) == 3 and len(self.shapes[o]) > 2
                and len(self.shapes[a]) >= 2 and len(self.shapes[b]) >= 2):
            return self._batched_einsum(a, b, o, la, lb, lo)  # "...ij,...kj->...ik" (a batched matmul's gradient)
        if (len(la) != len(self.shapes[a]) or len(lb) != len(self.shapes[b]) or len(lo) != len(self.shapes[o])
                or len(set(la)) != len(la) or len(set(lb)) != len(lb)):
            raise Unsupported("einsum with broadcast or repeated labels")
        con = [c for c in la if c in lb and c not in lo]
        fa = [c for c in la if c not in lb]
        fb = [c for c in lb if c not in la]
        if (con and max(len(la), len(lb)) > 2 and not any(c in la and c in lb for c in lo)
                and lo in (tuple(fa + fb), tuple(fb + fa))):  # a tensordot (its gradients are such einsums)
            return self._block_product(a, b, o, [la.index(c) for c in con], [lb.index(c) for c in con],
                                       swap=bool(fa and fb) and lo != tuple(fa + fb))
        if not con and len(la) == len(lb) == 1 and len(lo) == 2 and sorted(lo) == sorted(la + lb) and la != lb:
            if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
                raise Unsupported("outer product of non-float or mixed dtypes")
            sa, sb = self._as_array(a), self._as_array(b)
            first, second = (sa, sb) if lo == la + lb else (sb, sa)
            self.emit(f"    {self.prefix}b{o} = np.outer({first}, {second}).reshape(-1)")
            self.loc[o] = _Loc(self.shapes[o], buf=f"{self.prefix}b{o}", owned=True)
            return
        if len(con) != 1 or any(c in la and c in lb for c in lo) or sorted(fa + fb) != sorted(lo):
            return self._einsum_loops(a, b, o, la, lb, lo)
        if self.dtypes[o] not in ("float64", "float32") or any(self.dtypes[s] != self.dtypes[o] for s in (a, b)):
            raise Unsupported("einsum of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("einsum of an empty operand")
        sa, sb = self._as_array(a), self._as_array(b)
        if len(la) == 2 and la[0] == con[0]:
            sa = f"{sa}.T"
        if len(lb) == 2 and lb[1] == con[0]:
            sb = f"{sb}.T"
        matrices = len(la) == 2 and len(lb) == 2
        kc = self.shapes[a][la.index(con[0])]
        if lo == tuple(fa + fb):
            self._dot_into(o, sa, sb, matrices, kc)
        elif len(lo) == 2:  # (A B)^T = B^T A^T
            ta = f"{sa}.T" if len(la) == 2 else sa
            tb = f"{sb}.T" if len(lb) == 2 else sb
            self._dot_into(o, tb, ta, matrices, kc)
        else:
            raise Unsupported("einsum output order")

    def _einsum_loops(self, a, b, o, la, lb, lo):
        """Any two-operand einsum without broadcasting: a loop over every label, ``out += a * b``."""
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported("einsum loops of this dtype")
        size = {}
        for labels, s in ((la, a), (lb, b), (lo, o)):
            for c, n in zip(labels, self.shapes[s]):
                if size.setdefault(c, n) != n:
                    raise Unsupported("einsum with mismatched label lengths")
        labels = list(dict.fromkeys(lo + la + lb))
        buf = self.fresh(o, zero=True)
        if any(size[c] == 0 for c in labels):
            return
        ind = "    "
        for c in labels:
            self.emit(f"{ind}for l{c} in range({size[c]}):")
            ind += "    "

        def index(s, lab):
            loc = self.loc[s]
            st = loc.strides if s != o else row_major(self.shapes[o])
            off = loc.off if s != o else 0
            return " + ".join([str(off)] + [f"l{c} * {st[d]}" for d, c in enumerate(lab)])

        def src(s, lab):
            loc = self.loc[s]
            return loc.lit if loc.lit is not None else f"{loc.buf}[{index(s, lab)}]"

        self.emit(f"{ind}{buf}[{index(o, lo)}] += np.{dt}({src(a, la)}) * np.{dt}({src(b, lb)})")

    def op_tensordot(self, k, op, args, outs):
        self._block_product(args[0], args[1], outs[0], op.axes_a, op.axes_b)

    def _block_product(self, a, b, o, axes_a, axes_b, swap=False):
        """A contraction of ``a``'s ``axes_a`` with ``b``'s ``axes_b`` (paired in order) into ``o`` (``a``'s free axes
        then ``b``'s; ``swap``: ``b``'s then ``a``'s), when the contracted axes are a leading or trailing block of
        each operand (``tensordot(a, b, n)`` and its gradients): one BLAS product of 2-d views, no copy."""
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or any(self.dtypes[s] != dt for s in (a, b)):
            raise Unsupported("tensor product of non-float or mixed dtypes")
        if any(n == 0 for s in (a, b) for n in self.shapes[s]):
            raise Unsupported("tensor product of an empty operand")
        pairs = sorted(zip(axes_a, axes_b))
        if [q for _, q in pairs] != sorted(axes_b):
            raise Unsupported("tensor product pairing axes out of order")
        views = []
        for s, axes, free_first in ((a, axes_a, True), (b, axes_b, False)):
            shape, nd = self.shapes[s], len(self.shapes[s])
            con = sorted(axes)
            c = int(np.prod([shape[i] for i in con], dtype=np.int64))
            f = int(np.prod(shape, dtype=np.int64)) // c
            loc = self._buffer(s)
            flat = f"{loc.buf}[{loc.off}:{_off_add(loc.off, f * c)}]"
            if con == list(range(nd - len(con), nd)):  # (free, con) in memory
                v = f"{flat}.reshape(({f}, {c}))" if free_first else f"{flat}.reshape(({f}, {c})).T"
            elif con == list(range(len(con))):  # (con, free) in memory
                v = f"{flat}.reshape(({c}, {f})).T" if free_first else f"{flat}.reshape(({c}, {f}))"
            else:
                raise Unsupported("tensor product over axes in the middle of an operand")
            views.append((v, f))
        buf = self.fresh(o)
        (va, fa), (vb, fb) = views
        c = int(np.prod([self.shapes[a][i] for i in axes_a], dtype=np.int64))
        if swap:  # (A B)^T = B^T A^T
            self.emit(f"    {self._mm(f'({vb}).T', f'({va}).T', f'{buf}.reshape(({fb}, {fa}))', fb, fa, c, dt)}")
        else:
            self.emit(f"    {self._mm(va, vb, f'{buf}.reshape(({fa}, {fb}))', fa, fb, c, dt)}")

    def op_outer(self, k, op, args, outs):
        """``outer(a, b)`` of the flattened operands: a loop over the result."""
        a, b, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32", "int64"):
            raise Unsupported(f"outer into {dt}")
        m, n = self.shapes[o]
        srcs = []
        for s, var in ((a, "i0"), (b, "i1")):
            loc = self._materialize(s)
            srcs.append(loc.lit if loc.lit is not None else f"{loc.buf}[{_off_add(loc.off, var)}]")
        buf = self.fresh(o)
        self.emit(f"    for i0 in range({m}):")
        self.emit(f"        for i1 in range({n}):")
        self.emit(f"            {buf}[i0 * {n} + i1] = np.{dt}({srcs[0]}) * np.{dt}({srcs[1]})")

    def op_outer_t(self, k, op, args, outs):
        """The transposes of ``outer``: ``g @ other.ravel()`` (side 0) or ``other.ravel() @ g`` (side 1)."""
        g, other, o = args[0], args[1], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or any(self.dtypes[s] != dt for s in (g, other)):
            raise Unsupported("outer_t of non-float or mixed dtypes")
        if any(n == 0 for s in (g, other) for n in self.shapes[s]):
            raise Unsupported("outer_t of an empty operand")
        lo = self._buffer(other)
        vec = f"{lo.buf}[{lo.off}:{_off_add(lo.off, lo.size)}]"
        mat = self._as_array(g)
        buf = self.fresh(o)
        first, second = (mat, vec) if op.side == 0 else (vec, mat)
        self.emit(f"    np.dot({first}, {second}, {buf})")

    def op_matmul(self, k, op, args, outs):
        if all(len(self.shapes[s]) <= 2 for s in args[:2]):
            return self.op_dot(k, op, args, outs)
        a, b, o = args[0], args[1], outs[0]
        if any(len(self.shapes[s]) < 2 for s in (a, b)):
            raise Unsupported("batched matmul with a vector operand")
        ind, (va, vb), vo = self._batch_views(a, b, o)
        m, n = self.shapes[o][-2:]
        self.emit(f"{ind}{self._mm(va, vb, vo, m, n, self.shapes[a][-1], self.dtypes[o])}")

    def _batch_views(self, a, b, o):
        """Emit a loop over the (broadcast) batch axes of ``o`` (all but its last two); returns ``(indent, [view of
        a, view of b], view of o)``: each step's C-order matrices (see :meth:`_stack`)."""
        if self.dtypes[o] not in ("float64", "float32") or 0 in self.shapes[o]:
            raise Unsupported(f"batched product into {self.dtypes[o]} or of an empty result")
        ind, views, (vo,) = self._stack("batched product", self.shapes[o][:-2], [(a, 2), (b, 2)], [o])
        return ind, views, vo

    def _batched_einsum(self, a, b, o, la, lb, lo):
        """``...``-batched einsum of 2-d cores with one contracted label: per batch step, the core as a
        (transposed) matrix product."""
        (c,) = [x for x in la if x in lb]
        (fa,), (fb,) = [x for x in la if x != c], [x for x in lb if x != c]
        if c in lo or sorted(lo) != sorted((fa, fb)):
            raise Unsupported("batched einsum of this form")
        ind, (va, vb), vo = self._batch_views(a, b, o)
        va = f"{va}.T" if la[0] == c else va  # (fa, c)
        vb = f"{vb}.T" if lb[1] == c else vb  # (c, fb)
        m, n = self.shapes[o][-2:]
        kc = self.shapes[a][len(self.shapes[a]) - 2 + la.index(c)]
        if lo == (fa, fb):
            self.emit(f"{ind}{self._mm(va, vb, vo, m, n, kc, self.dtypes[o])}")
        else:  # (A B)^T = B^T A^T
            self.emit(f"{ind}{self._mm(f'({vb}).T', f'({va}).T', vo, m, n, kc, self.dtypes[o])}")

    # ---- linear algebra of one matrix (LAPACK through numba's np.linalg; batched stacks have no template)
    def _stack(self, what, batch, ins, outs):
        """Emit loops over the ``batch`` axes (broadcast, as NumPy's linalg stacks) for a LAPACK call per step;
        ``ins``: ``(slot, core ndim)``.  Returns ``(indent, input views, output targets)``: C-order views of each
        step's core arrays, and of each output's core (an element for a 0-d core)."""
        dt = None
        views = []
        steps_all = []
        for s, core in ins:
            if self.dtypes[s] not in ("float64", "float32") or dt not in (None, self.dtypes[s]):
                raise Unsupported(f"{what} of {self.dtypes[s]} or mixed dtypes")
            dt = self.dtypes[s]
            shape = self.shapes[s]
            if any(n == 0 for n in shape):
                raise Unsupported(f"{what} of an empty array")
            loc = self._buffer(s)
            lead = len(batch) - (len(shape) - core)
            if lead < 0:
                raise Unsupported(f"{what} operand with more batch axes than its result")
            size = int(np.prod(shape[len(shape) - core:], dtype=np.int64))
            st = row_major(shape[:len(shape) - core])
            steps = [0 if d < lead or shape[d - lead] == 1 else st[d - lead] * size for d in range(len(batch))]
            steps_all.append((loc, steps, shape[len(shape) - core:], size))
        targets = []
        flat = _nest_index(range(len(batch)), batch)
        for o in outs:
            buf = self.fresh(o)
            core = self.shapes[o][len(batch):]
            size = int(np.prod(core, dtype=np.int64))
            off = f"({flat}) * {size}"
            targets.append(f"{buf}[{flat}]" if not core else f"{buf}[{off}:{off} + {size}].reshape({core!r})")
        ind = _Nest(batch).open(self.emit)
        for loc, steps, core, size in steps_all:
            off = " + ".join([str(loc.off)] + [f"i{d} * {st_}" for d, st_ in enumerate(steps) if st_])
            views.append(f"{loc.buf}[{off}:{off} + {size}]" + (f".reshape({core!r})" if len(core) > 1 else ""))
        return ind, views, targets

    def _square(self, k, what):
        """``(indent, view of the matrix, output targets)`` for an op on the stack of square matrices
        ``args[0]``."""
        a = self.tape.instr_args(k)[0]
        return self._stack(what, self.shapes[int(a)][:-2], [(int(a), 2)],
                           [int(o) for o in self.tape.instr_outs(k)])

    def op_inv(self, k, op, args, outs):
        ind, (va,), (vo,) = self._square(k, "inv")
        self.emit(f"{ind}{vo}[...] = np.linalg.inv({va})")

    def op_det(self, k, op, args, outs):
        ind, (va,), (vo,) = self._square(k, "det")
        self.emit(f"{ind}{vo} = np.linalg.det({va})")

    def op_slogdet(self, k, op, args, outs):
        ind, (va,), (vs, vl) = self._square(k, "slogdet")
        sign, logdet = self.tmp("sg"), self.tmp("ld")
        self.emit(f"{ind}{sign}, {logdet} = np.linalg.slogdet({va})")
        self.emit(f"{ind}{vs} = {sign}")
        self.emit(f"{ind}{vl} = {logdet}")

    def op_solve(self, k, op, args, outs):
        a, b, o = args[0], args[1], outs[0]
        core = 1 if op.vector else 2
        ind, (va, vb), (vo,) = self._stack("solve", self.shapes[o][:len(self.shapes[o]) - core],
                                           [(a, 2), (b, core)], [o])
        if op.assume_a in ("lower", "upper"):  # substitution over the triangle (vmath.v_tri_solve)
            self.emit(f"{ind}v_tri_solve({va}, {vb}, {vo}, {op.assume_a == 'lower'})")
            return
        if op.assume_a == "pos":  # raises LinAlgError unless positive definite, as the reference engine
            self.emit(f"{ind}np.linalg.cholesky({va})")
        self.emit(f"{ind}{vo}[...] = np.linalg.solve({va}, {vb})")

    # (no eigh: eigenvectors are defined up to sign, and numba's LAPACK call picked other signs than NumPy's for
    # float32 spec rows, so the program would not compute what the reference engine computes)
    def op_cholesky(self, k, op, args, outs):
        """The lower factor of the symmetric matrix read from the lower triangle of each matrix."""
        n = self.shapes[args[0]][-1]
        sym = self.scratch(n * n, self.dtypes[args[0]])  # (allocated before the batch loops open)
        ind, (va,), (vo,) = self._square(k, "cholesky")
        m = self.tmp("m")  # the view once: a reshape in the loop is a call per element (numba does not hoist it)
        self.emit(f"{ind}{m} = {va}")
        self.emit(f"{ind}for q0 in range({n}):")
        self.emit(f"{ind}    for q1 in range({n}):")
        self.emit(f"{ind}        {sym}[q0 * {n} + q1] = {m}[q0, q1] if q1 <= q0 else {m}[q1, q0]")
        self.emit(f"{ind}{vo}[...] = np.linalg.cholesky({sym}[0:{n * n}].reshape(({n}, {n})))")

    def op_norm(self, k, op, args, outs):
        """The 2-norm over ``op.axis``: squares summed per output position, then square roots."""
        x, o = args[0], outs[0]
        dt = self.dtypes[o]
        if dt not in ("float64", "float32") or self.dtypes[x] != dt or self.loc[x].lit is not None:
            raise Unsupported(f"norm of {self.dtypes[x]} or of a literal")
        xshape = self.shapes[x]
        ws = _axis_strides(len(xshape), set(op.axis), row_major(self.shapes[o]), op.keepdims)
        buf = self.fresh(o, zero=True)
        if int(np.prod(xshape, dtype=np.int64)):
            loop = _Loop(xshape, [self.strides_for(x, xshape), list(ws)])
            v = self.tmp("v")
            ind = loop.open(self.emit, "    ")
            self.emit(f"{ind}{v} = {self.read(x, loop)}")
            self.emit(f"{ind}{buf}[{loop.index(0, ws)}] += {v} * {v}")
        self.emit(f"    for i in range({max(self.loc[o].size, 1)}):")
        self.emit(f"        {buf}[i] = np.sqrt({buf}[i])")

    def op_tri(self, k, op, args, outs):
        """``tril``/``triu`` over the last two axes: a masked copy."""
        x, o = args[0], outs[0]
        shape = self.shapes[o]
        buf = self.fresh(o)
        if not self.loc[o].size:
            return
        ind = _Nest(shape).open(self.emit)
        r, c = len(shape) - 2, len(shape) - 1
        keep = f"i{c} - i{r} <= {op.k}" if op.lower else f"i{c} - i{r} >= {op.k}"
        val = self.read(x, _Nest(shape), strides=self.strides_for(x, shape))
        self.emit(f"{ind}{buf}[{_nest_index(range(len(shape)), shape)}] = {val} if {keep} else {_lit(0, self.dtypes[o])}")
