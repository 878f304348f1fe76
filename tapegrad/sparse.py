"""Sparse Jacobians and Hessians by index-set propagation, coloring and compressed forward mode.

``sparse_jacobian(expression, wrt)`` returns a :class:`SparseJacobian`; calling
it with input values returns the Jacobian of ``expression`` (flattened) with
respect to the vector ``wrt`` as a ``scipy.sparse.csr_matrix``:

1. **pattern** -- which output elements depend on which ``wrt`` elements, found
   once per input-shape signature by propagating index sets through the graph
   (each variable carries a boolean sparse matrix ``deps``: its flat elements x
   the ``wrt`` elements).  The rules (:func:`propagate`):

   ==========================  ==================================================
   elementwise, cast           union of the inputs' sets after broadcasting
   sum/mean/prod/max/... norm  union over the reduced axes
   sum_like                    union over the broadcast axes
   dot/matmul/tensordot/...    union over the contracted labels (einsum grid)
   other linear ops            probed: the op is run on ``k + 1`` ids, ones and
                               random weights; a "scaled gather" (subtensor,
                               inc/set_subtensor, join, reshape, flatten,
                               dimshuffle, roll, repeat, broadcast, ...) is
                               recovered exactly; anything else falls back
   gradient modifiers          identity
   anything else               dense: every output element depends on the union
                               of every connected input's sets
   ==========================  ==================================================

   The pattern is a superset of the true nonzeros (never a subset), so the
   values are always right; a coarser pattern only costs colors.
2. **colors** -- greedy distance-1 coloring of the column-intersection graph
   (columns sharing a row get different colors); for Hessians the same coloring
   of the Hessian's pattern, i.e. a distance-2 coloring of its adjacency graph
   (structurally orthogonal columns, direct recovery).
3. **values** -- one compiled function evaluates ``J s_c`` (``Rop``; for a
   Hessian the forward-over-reverse ``H s_c``) for the seed vector ``s_c`` of
   every color ``c`` (``s_c[j] = 1`` where ``color[j] == c``), then each nonzero
   ``(i, j)`` is read from ``(J s_{color[j]})[i]``.

SciPy is optional (the ``scipy`` extra): it is imported when first needed.
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Constant, SharedVariable, as_tensor, is_float_dtype, toposort

__all__ = ["SparseJacobian", "sparse_jacobian", "sparse_hessian", "propagate", "color_columns"]

_DENSE_GRID_LIMIT = 5_000_000  # einsum rule: beyond this many grid points, fall back to dense
_IDENTITY_OPS = {"ZERO_GRAD", "DISCONNECTED_GRAD", "CONSIDER_CONSTANT", "GRAD_CLIP", "GRAD_SCALE",
                 "UNDEFINED_GRAD", "SPECIFY_SHAPE"}


def _sp():
    try:
        import scipy.sparse as sp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tapegrad.sparse needs SciPy (the optional 'scipy' extra): pip install 'tapegrad[scipy]' "
            f"or pip install scipy ({e})"
        ) from None
    return sp


# --------------------------------------------------------------------------- index-set propagation
def _csr(rows, cols, shape):
    sp = _sp()
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _select(index_of_row, deps):
    """``deps`` rows gathered: row ``k`` of the result is row ``index_of_row[k]`` of ``deps``."""
    return deps[np.asarray(index_of_row, dtype=np.int64)]


def _group(sel_rows, sel_cols, out_size, in_size, deps):
    """``Sel @ deps`` with ``Sel[sel_rows[k], sel_cols[k]] = 1`` (a union of rows)."""
    sel = _csr(sel_rows, sel_cols, (out_size, in_size))
    out = (sel @ deps).tocsr()
    out.data[:] = 1.0
    return out


def _dense(deps_list, out_size, n):
    """Every output element depends on the union of all rows of every input's deps."""
    cols = set()
    for d in deps_list:
        cols.update(np.unique(d.indices).tolist())
    cols = np.array(sorted(cols), dtype=np.int64)
    rows = np.repeat(np.arange(out_size), len(cols))
    return _csr(rows, np.tile(cols, out_size), (out_size, n))


def _broadcast_rule(x_shape, out_shape, deps):
    idx = np.broadcast_to(np.arange(int(np.prod(x_shape, dtype=np.int64))).reshape(x_shape), out_shape)
    return _select(idx.ravel(), deps)


def _reduce_rule(x_shape, axes, keepdims, out_size, deps):
    coords = np.indices(x_shape).reshape(len(x_shape), -1) if len(x_shape) else np.zeros((0, 1), np.int64)
    kept = [i for i in range(len(x_shape)) if i not in axes]
    if kept:
        out_idx = np.ravel_multi_index(tuple(coords[i] for i in kept), tuple(x_shape[i] for i in kept))
    else:
        out_idx = np.zeros(coords.shape[1], dtype=np.int64)
    size = int(np.prod(x_shape, dtype=np.int64))
    return _group(out_idx, np.arange(size), out_size, size, deps)


def _sum_like_rule(g_shape, x_shape, deps):
    x_size = int(np.prod(x_shape, dtype=np.int64))
    target = np.broadcast_to(np.arange(x_size).reshape(x_shape), g_shape).ravel()
    size = int(np.prod(g_shape, dtype=np.int64))
    return _group(target, np.arange(size), x_size, size, deps)


def _einsum_rule(spec, shapes, out_shape, which, deps):
    """Rows of ``deps`` (operand ``which``) united over the labels ``spec`` contracts; None if too big."""
    from tapegrad.ops.linalg import _parse

    (ea, la), (eb, lb), (eo, lo) = _parse(spec)
    nb_out = len(out_shape) - len(lo)
    labels = {}  # label -> length (batch dims are ints 0.., letters otherwise)
    for c, n in zip(lo, out_shape[nb_out:]):
        labels[c] = n
    for (ell, lab), shape in zip(((ea, la), (eb, lb)), shapes):
        for c, n in zip(lab, shape[len(shape) - len(lab):]):
            labels.setdefault(c, n)
    for k in range(nb_out):
        labels[k] = out_shape[k]
    order = list(labels)
    grid = tuple(labels[c] for c in order)
    if int(np.prod(grid, dtype=np.int64)) > _DENSE_GRID_LIMIT:
        return None

    def flat(term_labels, shape, nb):
        idx = np.zeros(grid, dtype=np.int64) if grid else np.zeros((), np.int64)
        full = [nb_out - nb + k for k in range(nb)] + list(term_labels)
        stride = 1
        for c, n in reversed(list(zip(full, shape))):
            if n != 1:
                ax = order.index(c)
                ar = np.arange(n).reshape([-1 if q == ax else 1 for q in range(len(grid))])
                idx = idx + ar * stride
            stride *= n
        return np.broadcast_to(idx, grid).ravel()

    out_idx = flat(lo, out_shape, nb_out)
    (ell, lab), shape = ((ea, la), (eb, lb))[which], shapes[which]
    in_idx = flat(lab, shape, len(shape) - len(lab))
    return _group(out_idx, in_idx, int(np.prod(out_shape, dtype=np.int64)), int(np.prod(shape, dtype=np.int64)),
                  deps)


def _einsum_spec(op, a_ndim, b_ndim):
    if hasattr(op, "subscripts"):
        return op.subscripts
    if hasattr(op, "einsum_spec"):
        return op.einsum_spec(a_ndim, b_ndim)
    return None


def _probe_rule(node, i, values, out_values, deps):
    """Recover a scaled gather ``y[k] = c_k x[src_k]`` (or ``c_k = 0``) of input ``i`` for every output.

    Returns a list (one per output) of deps matrices, or None when the op is
    not such a gather for input ``i`` (then the caller falls back to dense).
    """
    from tapegrad.graph import TensorType, Variable

    x = np.asarray(values[i])
    size = x.size
    fake = []
    for k, (var, val) in enumerate(zip(node.inputs, values)):
        if is_float_dtype(var.dtype):
            fake.append(Variable(TensorType("float64", np.shape(val))))
        else:
            fake.append(var)
    try:
        fnode = node.op.make_node(*fake)
    except Exception:  # noqa: BLE001 - an op that cannot be rebuilt: no probe
        return None

    def run(xi):
        ins = []
        for k, (var, val) in enumerate(zip(node.inputs, values)):
            if k == i:
                ins.append(xi)
            elif is_float_dtype(var.dtype):
                ins.append(np.zeros(np.shape(val)))
            else:
                ins.append(val)
        st = [[None] for _ in fnode.outputs]
        fnode.op.perform(fnode, ins, st)
        return [np.asarray(s[0], dtype=np.float64).ravel() for s in st]

    rng = np.random.default_rng(size)
    weights = rng.uniform(1.0, 2.0, size)
    try:
        ids = run((np.arange(size, dtype=np.float64) + 1).reshape(x.shape))
        ones = run(np.ones(x.shape))
        rnd = run(weights.reshape(x.shape))
    except Exception:  # noqa: BLE001
        return None
    result = []
    for r1, r2, r3 in zip(ids, ones, rnd):
        live = r2 != 0
        src = np.zeros(r1.shape, dtype=np.int64)
        with np.errstate(all="ignore"):
            q = r1[live] / r2[live]
        s = np.rint(q).astype(np.int64) - 1
        if not (np.allclose(q, s + 1, rtol=0, atol=1e-6) and np.all((s >= 0) & (s < size))):
            return None
        if not np.allclose(r3[live], r2[live] * weights[s], rtol=1e-9, atol=0):
            return None
        src[live] = s
        rows = np.flatnonzero(live)
        sel = _csr(rows, src[live], (r1.size, size))
        out = (sel @ deps).tocsr()
        out.data[:] = 1.0
        result.append(out)
    return result


def propagate(outputs, wrt, values):
    """Index sets of ``outputs`` over the elements of ``wrt``.

    Parameters
    ----------
    outputs : list of Variable
    wrt : Variable
        The independent variable (any shape; its elements are numbered in C order).
    values : dict
        ``{Variable: array}`` for every input of the graph (shapes and index
        values decide the pattern).

    Returns
    -------
    list of ``scipy.sparse.csr_matrix`` of shape ``(output.size, wrt.size)``, 1 where an output
    element may depend on a ``wrt`` element.
    """
    sp = _sp()
    from tapegrad.ops.elemwise import Cast, Elemwise
    from tapegrad.ops.reduce import _Reduction
    from tapegrad.ops.broadcast import SumLike
    from tapegrad.ops.solve import Norm

    env = {id(k): np.asarray(v) for k, v in values.items()}
    n = int(env[id(wrt)].size)
    deps = {id(wrt): sp.identity(n, format="csr", dtype=np.float64)}

    def value_of(v):
        if id(v) in env:
            return env[id(v)]
        if isinstance(v, Constant):
            return np.asarray(v.data)
        if isinstance(v, SharedVariable):
            return np.asarray(v.get_value(borrow=True))
        raise ValueError(f"sparse: no value given for input {v}")

    for node in toposort(outputs, blockers=list(values)):
        ins = [value_of(x) for x in node.inputs]
        storage = [[None] for _ in node.outputs]
        node.op.perform(node, ins, storage)
        outs = [np.asarray(s[0]) for s in storage]
        for o, val in zip(node.outputs, outs):
            env[id(o)] = val
        live = [k for k, x in enumerate(node.inputs) if id(x) in deps]
        if not live:
            continue
        pattern = node.op.connection_pattern(node)
        for j, (o, val) in enumerate(zip(node.outputs, outs)):
            if not is_float_dtype(o.dtype):
                continue  # integer/bool values carry no derivative
            srcs = [k for k in live if pattern[k][j]]
            if not srcs:
                continue
            terms = _node_rule(node, j, srcs, ins, outs, deps, n, Elemwise, Cast, _Reduction, SumLike, Norm)
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            total = total.tocsr()
            total.data[:] = 1.0
            deps[id(o)] = total
    result = []
    for o in outputs:
        d = deps.get(id(o))
        size = int(np.asarray(value_of(o)).size)
        result.append(d if d is not None else sp.csr_matrix((size, n), dtype=np.float64))
    return result


def _node_rule(node, j, srcs, ins, outs, deps, n, Elemwise, Cast, _Reduction, SumLike, Norm):
    op, code = node.op, getattr(node.op, "code", None)
    out_shape = outs[j].shape
    out_size = outs[j].size
    if isinstance(op, (Elemwise, Cast)):
        return [_broadcast_rule(ins[k].shape, out_shape, deps[id(node.inputs[k])]) for k in srcs]
    if isinstance(op, _Reduction) or isinstance(op, Norm):
        x = node.inputs[0]
        axes = op.axis if isinstance(op, Norm) else op._norm(x)
        return [_reduce_rule(ins[0].shape, axes, op.keepdims, out_size, deps[id(x)])]
    if isinstance(op, SumLike):
        return [_sum_like_rule(ins[0].shape, ins[1].shape, deps[id(node.inputs[0])])]
    if code in _IDENTITY_OPS and ins[0].shape == out_shape:
        return [deps[id(node.inputs[0])]]
    spec = _einsum_spec(op, node.inputs[0].ndim, node.inputs[1].ndim) if len(node.inputs) == 2 else None
    if spec is not None and getattr(op, "kind", None) == "bilinear":
        terms = []
        for k in srcs:
            t = _einsum_rule(spec, [ins[0].shape, ins[1].shape], out_shape, k, deps[id(node.inputs[k])])
            if t is None:
                return [_dense([deps[id(node.inputs[q])] for q in srcs], out_size, n)]
            terms.append(t)
        return terms
    if code == "OUTER":
        sizes = [ins[0].size, ins[1].size]
        return [_einsum_rule("i,j->ij", [(sizes[0],), (sizes[1],)], out_shape, k, deps[id(node.inputs[k])])
                or _dense([deps[id(node.inputs[k])]], out_size, n) for k in srcs]
    if getattr(op, "kind", None) == "linear":
        terms = []
        for k in srcs:
            probed = _probe_rule(node, k, ins, outs, deps[id(node.inputs[k])])
            if probed is None:
                terms.append(_dense([deps[id(node.inputs[k])]], out_size, n))
            else:
                terms.append(probed[j])
        return terms
    return [_dense([deps[id(node.inputs[k])] for k in srcs], out_size, n)]


# --------------------------------------------------------------------------- coloring
def color_columns(pattern):
    """Greedy distance-1 coloring of the column-intersection graph of ``pattern`` (CSR, m x n).

    Columns ``j`` and ``k`` conflict when some row has both; each column gets
    the smallest color not used by an already-colored conflicting column
    (natural order: optimal, 2w+1 colors, for banded patterns of half-width w).
    Returns an int array of length ``n``.
    """
    pattern = pattern.tocsc().astype(np.float64)
    n = pattern.shape[1]
    adj = (pattern.T @ pattern).tocsr()
    colors = np.full(n, -1, dtype=np.int64)
    indptr, indices = adj.indptr, adj.indices
    for j in range(n):
        nb = indices[indptr[j]:indptr[j + 1]]
        used = set(colors[nb].tolist())
        c = 0
        while c in used:
            c += 1
        colors[j] = c
    return colors


# --------------------------------------------------------------------------- the compiled object
class SparseJacobian:
    """A sparse Jacobian (or Hessian) of ``expression`` with respect to the vector ``wrt``.

    Attributes (after the first call, for the last input-shape signature seen)
    ---------------------------------------------------------------------------
    pattern : scipy.sparse.csr_matrix of bool, ``(expression.size, wrt.size)``
    colors : int array ``(wrt.size,)``
    n_colors : int

    Call it with values for ``inputs`` (default ``[wrt]``) to get a
    ``scipy.sparse.csr_matrix``.  The pattern, coloring and compiled
    compressed-derivative function are cached per tuple of input shapes.
    """

    def __init__(self, expression, wrt, inputs=None, device="python", kind="jacobian", cost=None):
        self.expression = as_tensor(expression)
        self.wrt = wrt
        if wrt.ndim != 1:
            raise ValueError(f"sparse_{kind}: wrt {wrt} must be a vector, got {wrt.ndim} dimensions")
        self.inputs = list(inputs) if inputs is not None else [wrt]
        if not any(x is wrt for x in self.inputs):
            raise ValueError(f"sparse_{kind}: wrt {wrt} must be one of the inputs")
        self.device, self.kind, self.cost = device, kind, cost
        self._cache = {}
        self.pattern = self.colors = None
        self.n_colors = 0

    def _flat(self):
        from tapegrad.ops import flatten

        e = self.expression
        return e if e.ndim == 1 else flatten(e, 1)

    def _setup(self, values):
        key = tuple(np.shape(v) for v in values)
        if key in self._cache:
            return self._cache[key]
        flat = self._flat()
        (pattern,) = propagate([flat], self.wrt, dict(zip(self.inputs, values)))
        pattern = pattern.astype(bool).tocsr()
        pattern.sort_indices()
        colors = color_columns(pattern)
        p = int(colors.max()) + 1 if colors.size else 0
        fn = self._compile(flat, p)
        entry = (pattern, colors, p, fn)
        self._cache[key] = entry
        return entry

    def _compile(self, flat, p):
        from tapegrad.compile.function import function
        from tapegrad.gradient import Rop
        from tapegrad.graph import tensor
        from tapegrad.ops import stack

        seed = tensor("seed", dtype=self.wrt.dtype, shape=(p, self.wrt.type.shape[0]))
        if p == 0:
            return None
        tangents = [Rop(flat, self.wrt, seed[c], disconnected_outputs="ignore") for c in range(p)]
        return function(self.inputs + [seed], stack(tangents), device=self.device, on_unused_input="ignore")

    def __call__(self, *values):
        sp = _sp()
        if len(values) != len(self.inputs):
            raise TypeError(f"sparse_{self.kind}: expected {len(self.inputs)} input values, got {len(values)}")
        values = [np.asarray(v) for v in values]
        pattern, colors, p, fn = self._setup(values)
        self.pattern, self.colors, self.n_colors = pattern, colors, p
        m, n = pattern.shape
        dtype = np.dtype(self.expression.dtype if is_float_dtype(self.expression.dtype) else "float64")
        if p == 0 or pattern.nnz == 0:
            return sp.csr_matrix((m, n), dtype=dtype)
        seeds = np.zeros((p, n), dtype=self.wrt.dtype)
        seeds[colors, np.arange(n)] = 1
        compressed = np.asarray(fn(*values, seeds))  # (p, m): row c = J s_c
        rows = np.repeat(np.arange(m), np.diff(pattern.indptr))
        data = compressed[colors[pattern.indices], rows].astype(dtype)
        return sp.csr_matrix((data, pattern.indices.copy(), pattern.indptr.copy()), shape=(m, n))

    def function(self):
        """This object as a plain callable ``f(*input_values) -> csr_matrix``."""
        return self.__call__


def sparse_jacobian(expression, wrt, inputs=None, device="python"):
    """The Jacobian of ``expression`` (flattened) with respect to the vector ``wrt``, as a sparse matrix.

    Parameters
    ----------
    expression : Variable
    wrt : Variable, 1-d
    inputs : list of Variable, optional
        The inputs the returned object is called with (default ``[wrt]``).
    device : str
        Device the compressed directional derivatives are compiled for.

    Returns
    -------
    SparseJacobian
        ``J = sj(*values)`` is a ``scipy.sparse.csr_matrix`` ``(expression.size, wrt.size)``;
        ``sj.pattern``, ``sj.colors`` and ``sj.n_colors`` describe the last call.
        Costs ``n_colors`` Jacobian-vector products (one compiled call) instead
        of one sweep per row.
    """
    return SparseJacobian(expression, wrt, inputs, device, "jacobian")


def sparse_hessian(cost, wrt, inputs=None, device="python"):
    """The Hessian of the 0-d ``cost`` with respect to the vector ``wrt``, as a sparse matrix.

    The pattern is the index-set pattern of ``grad(cost, wrt)`` (its Jacobian);
    columns are colored distance-2 (structurally orthogonal columns of ``H``),
    and each color costs one forward-over-reverse Hessian-vector product.
    Returns a :class:`SparseJacobian` (called like :func:`sparse_jacobian`).
    """
    from tapegrad.gradient import grad

    cost = as_tensor(cost)
    if cost.ndim != 0:
        raise TypeError(f"sparse_hessian: cost must be a scalar (0-d); {cost} has {cost.ndim} dimension(s)")
    g = grad(cost, wrt)
    return SparseJacobian(g, wrt, inputs, device, "hessian", cost=cost)
