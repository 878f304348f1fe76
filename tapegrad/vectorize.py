"""Block Jacobians: a graph vectorized over a batch of directions.

``jacobian`` / ``hessian`` used to run one reverse sweep per row (``MAP_ROWS``).
Here the per-direction graph is rewritten once into its *batched* form, so a
single sweep carries a whole block of directions (PyTensor's ``vectorize_graph``):

* the seed (a cotangent row ``v`` in reverse mode, a tangent ``u`` in forward
  mode) is replaced by a batch of seeds -- ``eye(n)`` -- with the batch on a new
  leading axis;
* every op of the subgraph that depends on the seed is rebuilt in its batched
  form (:class:`Vectorizer`, with one rule per op family in
  :mod:`tapegrad.vectorize_rules`: elementwise ops pad their batched inputs with
  broadcastable axes, axis-carrying ops shift their axes, contractions become
  ``einsum`` with the batch in ``...``, shape references get a batched stand-in);
  everything else stays unbatched and is shared by the whole block;
* while rebuilding, identity seeds are simplified: a batched value that is
  structurally ``diag(d)`` (the seed, ``azmul`` of it with a vector of its
  shape, sums, casts, reshapes and transposes of those) is tracked, and a
  contraction with it is a scaled, transposed view of the other operand
  instead of an ``n^3`` matrix product.  Where a rewrite needs two shapes to
  agree, :class:`ShapeKeys` must prove it from the graph (shapes that may
  broadcast at run time are never assumed equal).

:func:`jacobian_blocks` builds the reverse block (rows: vector-Jacobian
products) and, when it could be cheaper, the forward block (columns:
Jacobian-vector products; only without ``consider_constant``, gradient
modifiers or integer ``wrt``, whose reverse semantics a tangent sweep does not
share).  It keeps the block with fewer dense contractions left after the
rewrites; on a tie, the one with fewer directions when the sizes are static,
else reverse.  An op without a batched form (or any error while building a
block) makes it return ``None``: the caller then falls back to ``MAP_ROWS``.

Values: every block computes the Jacobian the row-by-row route computes, to
rounding.  Where that route meets ``0 * inf`` (a kink: ``sqrt`` at 0, an
infinite entry multiplied by a zero seed entry inside a contraction) it gives
NaN; a block may give the zero-in-zero-out value there instead (a forward
block, or a contraction with a diagonal that skips the zero terms).
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Constant, as_tensor, is_float_dtype, toposort

__all__ = ["NotVectorizable", "ShapeKeys", "Vectorizer", "jacobian_blocks", "reverse_block", "forward_block"]


class NotVectorizable(Exception):
    """An op of the graph has no batched form here."""


STRICT = False
"""Re-raise unexpected errors met while building a block instead of falling back to ``MAP_ROWS`` (tests)."""


# --------------------------------------------------------------------------- shape keys
_OPS = None


def _ops():
    """``(None, alloc, broadcast, cumulative, elemwise, index, linalg, modifiers, nn, reduce, shape)`` modules."""
    global _OPS
    if _OPS is None:
        import importlib

        names = ("alloc", "broadcast", "cumulative", "elemwise", "index", "linalg", "modifiers", "nn", "reduce",
                 "shape")
        _OPS = (None,) + tuple(importlib.import_module(f"tapegrad.ops.{n}") for n in names)
    return _OPS


class ShapeKeys:
    """Keys such that two variables with equal keys have equal run-time shapes.

    ``key(v)`` is ``("s", shape)`` for fully static shapes; it follows ops that
    keep a shape (elementwise ops whose non-scalar inputs share a key,
    ``sum_like``/``broadcast_reduced`` to their reference, ``reshape(x,
    shape(y))``, ...), and otherwise keys a node by its op and its inputs' keys
    (congruence: the same op on inputs of the same shapes -- and the same
    values for integer shape arguments -- gives the same shape).  ``aliases``
    maps a variable to another known to have its shape (a seed placeholder to
    the variable it is a direction of).
    """

    def __init__(self, aliases=()):
        self.alias = {id(a): b for a, b in aliases}
        self.memo = {}  # id(var) -> (key, var)
        self._ids = {}  # structural tuple -> small int (keys stay flat: no deep hashing of shared subgraphs)

    def _i(self, t):
        return self._ids.setdefault(t, len(self._ids))

    def same(self, a, b):
        return a is b or self.key(a) == self.key(b)

    def key(self, v):
        memo = self.memo
        if id(v) in memo:
            return memo[id(v)][0]
        stack = [v]
        while stack:
            u = stack[-1]
            if id(u) in memo:
                stack.pop()
                continue
            pend = [d for d in self._deps(u) if id(d) not in memo]
            if pend:
                stack.extend(pend)
                continue
            stack.pop()
            memo[id(u)] = (self._compute(u), u)
        return memo[id(v)][0]

    def _deps(self, u):
        a = self.alias.get(id(u))
        if a is not None:
            return [a]
        if u.owner is None or None not in u.type.shape:
            return []
        deps = list(u.owner.inputs)
        for x in u.owner.inputs:
            if x.owner is not None and type(x.owner.op).__name__ in ("Shape", "ShapeI"):
                deps.append(x.owner.inputs[0])
        return deps

    def _k(self, x):
        return self.memo[id(x)][0]

    def _value_key(self, x):
        """Key of an integer argument's *value* (shape vectors, bounds)."""
        if isinstance(x, Constant):
            d = np.asarray(x.data)
            return self._i(("c", d.dtype.name, d.shape, d.tobytes()))
        node = x.owner
        if node is not None:
            name = type(node.op).__name__
            if name == "Shape":
                return self._i(("shape", self._k(node.inputs[0])))
            if name == "ShapeI":
                return self._i(("shape_i", node.op.i, self._k(node.inputs[0])))
        return self._i(("v", id(x)))

    def _compute(self, u):
        a = self.alias.get(id(u))
        if a is not None:
            return self._k(a)
        shp = u.type.shape
        if None not in shp:
            return self._i(("s", tuple(shp)))
        node = u.owner
        if node is None:
            return self._i(("v", id(u)))
        (ops, alloc, broadcast, cumulative, elemwise, index, linalg, modifiers, nn, reduce, shape) = _ops()
        op = node.op
        ins = node.inputs
        if isinstance(op, (elemwise.Elemwise, elemwise.Cast, broadcast.BroadcastLike)):
            cands = [x for x in ins if not (x.ndim <= u.ndim and all(n == 1 for n in x.type.shape))]
            keys = {self._k(x) for x in cands}
            if cands and len(keys) == 1 and all(x.ndim == u.ndim for x in cands):
                return keys.pop()
            return self._i(("n", op, u.index, tuple(self._k(x) for x in ins)))
        if isinstance(op, broadcast.SumLike):
            return self._k(ins[1])
        k = getattr(op, "output_shape_of", None)
        if k is not None and u.index == 0:
            return self._k(ins[k])
        if isinstance(op, modifiers._ViewOp):
            return self._k(ins[0])
        if isinstance(op, shape.Reshape):
            s = ins[1]
            if s.owner is not None and isinstance(s.owner.op, shape.Shape) and s.owner.inputs[0].ndim == u.ndim:
                return self._k(s.owner.inputs[0])
            return self._i(("n", op, 0, (self._k(ins[0]), self._value_key(s))))
        if isinstance(op, shape.Flatten) and ins[0].ndim == 1 and u.ndim == 1:
            return self._k(ins[0])
        if isinstance(op, shape.DimShuffle) and op.new_order == tuple(range(ins[0].ndim)):
            return self._k(ins[0])
        if isinstance(op, (linalg.Dot, linalg.Matmul, linalg.Einsum, linalg.TensorDot, linalg.Outer,
                           shape.DimShuffle, shape.Flatten, reduce._Reduction, linalg._DiagonalBase,
                           cumulative.CumSum, cumulative.CumProd)):
            return self._i(("n", op, u.index, tuple(self._k(x) for x in ins)))
        if isinstance(op, (index.Subtensor, alloc.Alloc, alloc.Roll, alloc.Repeat)):
            return self._i(("n", op, u.index, (self._k(ins[0]),) + tuple(self._value_key(x) for x in ins[1:])))
        return self._i(("v", id(u)))


# --------------------------------------------------------------------------- the vectorizer
def _scalar_like(x, ndim):
    return x.ndim <= ndim and all(n == 1 for n in x.type.shape)


class Vectorizer:
    """Rebuild a graph with the seed variables replaced by batched ones (batch on a new axis 0).

    ``B`` is the batch length (an int64 0-d Variable); ``keys`` a :class:`ShapeKeys`
    for the *unbatched* graph; ``square`` the batched identity seed (shape ``(B, B)``)
    when the seed is a vector, so diagonal structure can be tracked (``None``: no
    structure).  :meth:`run` returns, per output, ``(variable, batched)``.
    """

    def __init__(self, B, keys, square=None):
        self.B = B
        self.keys = keys
        self.square = square
        self.bmap = {}  # id(original) -> its batched variable
        self.sub = {}  # id(original) -> an unbatched replacement
        self._diag = {}  # id(batched var) -> (d, var): var equals diag(d) (d None: ones), i.e. azmul(square, d)
        self.contractions = []  # batched dense contractions made (for the cost of a block)
        self._zrefs = {}
        self._keep = []
        self._bvec = None

    # -- helpers
    def get(self, x):
        b = self.bmap.get(id(x))
        if b is not None:
            return b, True
        return self.sub.get(id(x), x), False

    def pad(self, xb, nd):
        """The batched ``xb`` with length-1 axes after the batch so it has ``1 + nd`` dimensions."""
        k = nd - (xb.ndim - 1)
        if k <= 0:
            return xb
        from tapegrad.ops.shape import DimShuffle

        return DimShuffle(xb.ndim, [0] + ["x"] * k + list(range(1, xb.ndim)))(xb)

    def bvec(self):
        """``[B]`` as an int64 vector."""
        if self._bvec is None:
            from tapegrad.ops.shape import DimShuffle

            self._bvec = DimShuffle(0, ["x"])(self.B)
        return self._bvec

    def bshape(self, shp):
        """The int vector ``[B, *shp]``."""
        from tapegrad.ops.shape import Stack, concatenate, stack

        if isinstance(shp, Constant):
            return stack([self.B] + [as_tensor(np.asarray(int(n), dtype="int64")) for n in np.ravel(shp.data)])
        if shp.owner is not None and isinstance(shp.owner.op, Stack) and all(x.ndim == 0 for x in shp.owner.inputs):
            return stack([self.B] + list(shp.owner.inputs))
        return concatenate([self.bvec(), shp])

    def zref(self, x):
        """A bool array of shape ``(B, *x.shape)``: a batched shape reference for ``x``.

        Only its shape is read (``sum_like``, scatters, ...).  It is a (reshaped) bool ``eye``, which the
        engines size from the input shapes before the run and fill without arithmetic (a value fixed per
        shape signature when small).
        """
        z = self._zrefs.get(id(x))
        if z is None:
            z = self._zrefs[id(x)] = self.ref_of_shape(x.type.shape, lambda i: _shape_i(x, i), lambda: _size(x))
            self._keep.append(x)
        return z

    def ref_of_shape(self, static, dim, size):
        """A bool ``(B, *shape)`` array; ``static``: the static shape, ``dim(i)``/``size()`` the symbolic ones."""
        from tapegrad.ops.alloc import Eye
        from tapegrad.ops.shape import Reshape, stack

        nd = len(static)
        z = Eye("bool")(self.B, dim(0) if nd == 1 else size(), 0)
        if nd != 1:
            dims = [self.B] + [as_tensor(np.asarray(n, dtype="int64")) if n is not None else dim(i)
                               for i, n in enumerate(static)]
            z = Reshape(nd + 1)(z, stack(dims))
        return z

    def batchify(self, x):
        """The unbatched ``x`` repeated along a new batch axis."""
        from tapegrad.ops.broadcast import broadcast_like
        from tapegrad.ops.shape import DimShuffle

        return broadcast_like(DimShuffle(x.ndim, ["x"] + list(range(x.ndim)))(x), self.zref(x))

    def as_batched(self, xr, isb):
        return xr if isb else self.batchify(xr)

    def ones_vec(self, dtype):
        """Ones of the seed's length (the column sums of the identity seed: known before the run)."""
        from tapegrad.ops.reduce import Sum

        return Sum(0, dtype=dtype)(self.square)

    def set_diag(self, var, d):
        """Record that the batched ``var`` equals ``diag(d)`` (``d`` None: the identity)."""
        self._diag[id(var)] = (d, var)

    def diag_of(self, var):
        """``(True, d)`` when the batched ``var`` is known to equal ``diag(d)``, else ``(False, None)``."""
        e = self._diag.get(id(var))
        if e is None or e[1] is not var:
            return False, None
        return True, e[0]

    def make_diag(self, d, dtype):
        """The batched ``diag(d)`` (``d`` a vector of the seed's length; None = ones), tracked as such."""
        from tapegrad.ops.elemwise import azmul, cast

        if d is None:
            out = self.square if self.square.dtype == dtype else cast(self.square, dtype)
        else:
            out = azmul(self.square, d)
            if out.dtype != dtype:
                out = cast(out, dtype)
        self.set_diag(out, d)
        return out

    # -- the walk
    def run(self, outputs, seeds):
        """``seeds``: ``[(original, batched)]``.  Returns ``[(variable, batched)]`` for ``outputs``."""
        from tapegrad.vectorize_rules import rule_for

        for o, b in seeds:
            self.bmap[id(o)] = b
            self._keep.append(o)
        blockers = [o for o, _ in seeds]
        for node in toposort(outputs, blockers=blockers):
            if not any(id(x) in self.bmap or id(x) in self.sub for x in node.inputs):
                continue
            self._keep.append(node)
            if not any(id(x) in self.bmap for x in node.inputs):
                new = node.clone_with_new_inputs([self.get(x)[0] for x in node.inputs])
                for o, n in zip(node.outputs, new.outputs):
                    self.sub[id(o)] = n
                continue
            rule = rule_for(node.op)
            if rule is None:
                raise NotVectorizable(f"no batched form for {node.op}")
            outs = rule(self, node, [self.get(x) for x in node.inputs])
            if len(outs) != len(node.outputs):
                raise NotVectorizable(f"batched {node.op}: wrong number of outputs")
            for o, (v, isb) in zip(node.outputs, outs):
                if isb:
                    if v.ndim != o.ndim + 1 or (is_float_dtype(o.dtype) and v.dtype != o.dtype):
                        raise NotVectorizable(f"batched {node.op} gave {v.type} for {o.type}")
                    self.bmap[id(o)] = v
                else:
                    self.sub[id(o)] = v
        return [self.get(o) for o in outputs]


# --------------------------------------------------------------------------- Jacobian blocks
def _cast_to(v, dtype):
    from tapegrad.ops.elemwise import cast

    return v if v.dtype == dtype else cast(v, dtype)


def _batch_len(v):
    from tapegrad.ops.shape import shape_i

    n = v.type.shape[0]
    return as_tensor(np.asarray(n, dtype="int64")) if n is not None else shape_i(v, 0)


def _shape_i(x, i):
    from tapegrad.ops.shape import shape_i

    n = x.type.shape[i]
    return as_tensor(np.asarray(n, dtype="int64")) if n is not None else shape_i(x, i)


def _size(w):
    from tapegrad.ops.reduce import prod
    from tapegrad.ops.shape import shape

    if None not in w.type.shape:
        return as_tensor(np.asarray(int(np.prod(w.type.shape, dtype=np.int64)), dtype="int64"))
    if w.ndim == 1:
        return _batch_len(w)
    return prod(shape(w))


def _eye(n, dtype):
    from tapegrad.ops.alloc import eye

    return eye(n, dtype=dtype)


def _finish(vec, out, isb):
    """A block output as a batched variable (a seed-independent output is repeated along the batch)."""
    return out if isb else vec.batchify(out)


def _count(vec, outs):
    made = set(map(id, vec.contractions))
    return sum(1 for node in toposort(outs) for o in node.outputs if id(o) in made)


def reverse_block(flat, v, rows):
    """Vectorize the rows ``rows`` (graphs of the cotangent ``v`` of the vector ``flat``) over ``v = eye``.

    Returns ``(blocks, cost)``: per row, the stacked rows ``(n, *row.shape)``.
    """
    B = _batch_len(flat)
    dtype = v.dtype
    seed = _eye(B, dtype)
    keys = ShapeKeys([(v, flat)])
    vec = Vectorizer(B, keys, square=seed)
    vec.set_diag(seed, None)
    outs = vec.run(rows, [(v, seed)])
    blocks = [_finish(vec, o, isb) for o, isb in outs]
    return blocks, _count(vec, blocks)


def forward_block(expression, w):
    """The Jacobian of ``expression`` w.r.t. ``w`` from one batched forward (tangent) sweep.

    Returns ``(jacobian, cost)`` or None when the forward block does not apply.
    """
    from tapegrad.gradient import Rop
    from tapegrad.ops.shape import Reshape, concatenate, shape, shape_i, stack

    u = w.type()
    try:
        t = Rop(expression, w, u, disconnected_outputs="ignore", return_disconnected="none")
    except Exception:  # noqa: BLE001 - no forward rule somewhere: the reverse block decides
        return None
    if t is None:
        return None
    N = _size(w)
    eye = _eye(N, w.dtype)
    if w.ndim == 1:
        seed, square = eye, eye
    else:
        dims = [n if n is not None else shape_i(w, i) for i, n in enumerate(w.type.shape)]
        seed, square = Reshape(w.ndim + 1)(eye, stack([N] + [as_tensor(np.asarray(d, "int64")) if isinstance(d, int)
                                                             else d for d in dims])), None
    keys = ShapeKeys([(u, w)])
    vec = Vectorizer(N, keys, square=square)
    if square is not None:
        vec.set_diag(seed, None)
    ((tb, isb),) = vec.run([t], [(u, seed)])
    tb = _finish(vec, tb, isb)
    e = expression.ndim
    cost = _count(vec, [tb])
    J = _move_batch_last(tb, e)
    if w.ndim != 1:
        J = Reshape(e + w.ndim)(J, concatenate([shape(expression), shape(w)]))
    return _cast_to(J, w.dtype), cost  # the dtype of a gradient w.r.t. w, as the rows of the reverse block


def _move_batch_last(tb, e):
    """``tb`` of shape ``(N, *s)`` (``len(s) == e``) as ``(*s, N)``, pushing the transpose into elementwise ops
    and transposes so that the result is computed in its final layout."""
    if e == 0:
        return tb
    clients = {}
    for node in toposort([tb]):
        for x in node.inputs:
            clients[id(x)] = clients.get(id(x), 0) + 1
    return _Permuter(clients).permute(tb, list(range(1, e + 1)) + [0])


class _Permuter:
    """``x.transpose(perm)`` built so that no transposed copy is needed where that can be avoided: the
    transpose moves into elementwise ops used only there, merges with transposes, and vanishes on a square
    identity.  Memoized; the push stops after ``MAX_DEPTH`` ops (Python recursion)."""

    MAX_DEPTH = 48

    def __init__(self, clients):
        self.clients = clients
        self.memo = {}

    def permute(self, x, perm, depth=0):
        key = (id(x), tuple(perm))
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0]
        out = self._permute(x, perm, depth)
        self.memo[key] = (out, x)
        return out

    def _permute(self, x, perm, depth):
        from tapegrad.ops.elemwise import Cast, Elemwise
        from tapegrad.ops.shape import DimShuffle

        nd = x.ndim
        if perm == list(range(nd)):
            return x
        node = x.owner
        if node is not None:
            op = node.op
            if isinstance(op, DimShuffle) and not op.drop:
                order = [op.new_order[p] for p in perm]
                y = node.inputs[0]
                if -1 in order:
                    return DimShuffle(y.ndim, ["x" if a == -1 else a for a in order])(y)
                return self.permute(y, order, depth + 1)
            if nd == 2 and _is_square_eye(x) is not None:
                return x
            if (isinstance(op, (Elemwise, Cast)) and len(node.outputs) == 1 and self.clients.get(id(x), 0) <= 1
                    and depth < self.MAX_DEPTH):
                args = []
                for a in node.inputs:
                    if a.ndim < nd:
                        a = DimShuffle(a.ndim, ["x"] * (nd - a.ndim) + list(range(a.ndim)))(a)
                        args.append(self.permute(a, perm, depth + 1))
                    elif self.clients.get(id(a), 0) <= 1 or a.owner is None or isinstance(a.owner.op, DimShuffle):
                        args.append(self.permute(a, perm, depth + 1))
                    else:
                        args.append(DimShuffle(nd, perm)(a))
                return op(args[0]) if isinstance(op, Cast) else op.make_node(*args).outputs[0]
        return DimShuffle(nd, perm)(x)


def _is_square_eye(x):
    from tapegrad.ops.alloc import Eye

    node = x.owner
    if node is not None and isinstance(node.op, Eye) and node.inputs[0] is node.inputs[1]:
        k = node.inputs[2]
        if isinstance(k, Constant) and int(k.data) == 0:
            return x
    return None


def _modifier_free(expression, wrt):
    from tapegrad.ops.modifiers import _ViewOp

    return not any(isinstance(n.op, _ViewOp) for n in toposort([expression], blockers=wrt))


def jacobian_blocks(expression, wrt_list, consider_constant=None, disconnected_inputs="raise", mode="auto"):
    """Jacobians of the vector-or-array ``expression`` (``ndim >= 1``) w.r.t. each of ``wrt_list``, each of
    shape ``expression.shape + w.shape``, from batched sweeps.

    Returns ``(jacobians, (flat, v, rows))``: ``jacobians`` is None when some op has no batched form;
    ``rows`` are the row graphs (gradients w.r.t. ``wrt_list`` of ``flat = flatten(expression)`` with the
    cotangent ``v``), for the caller's ``MAP_ROWS`` fallback.

    ``mode``: ``"reverse"`` (rows: one batched reverse sweep over ``eye(expression.size)``),
    ``"forward"`` (columns: one batched tangent sweep per ``w`` over ``eye(w.size)``; falls back to
    reverse where it does not apply) or ``"auto"`` (the block with fewer dense contractions left after the
    identity-seed rewrites; then the fewer directions when the sizes are static; reverse on a tie).
    The reverse row graph is always built first (it raises for disconnected inputs and undefined
    gradients exactly as ``grad`` does).
    """
    from tapegrad.gradient import grad
    from tapegrad.ops.shape import flatten

    flat = flatten(expression, 1)
    v = flat.type()
    rows = grad(None, wrt_list, consider_constant=consider_constant, known_grads={flat: v},
                disconnected_inputs=disconnected_inputs)
    jacs = _choose(expression, wrt_list, flat, v, rows, consider_constant, mode)
    return jacs, (flat, v, rows)


def _choose(expression, wrt_list, flat, v, rows, consider_constant, mode):
    from tapegrad.ops.shape import Reshape, concatenate, shape

    rev, rev_cost = None, None
    try:
        blocks, rev_cost = reverse_block(flat, v, rows)
        rev = []
        for w, j in zip(wrt_list, blocks):
            if expression.ndim == 1:
                rev.append(j)
            else:
                rev.append(Reshape(expression.ndim + w.ndim)(j, concatenate([shape(expression), shape(w)])))
    except Exception as e:  # noqa: BLE001 - NotVectorizable, or a batched op refused its inputs: MAP_ROWS is exact
        if STRICT and not isinstance(e, NotVectorizable):
            raise
        rev = None
    if mode == "reverse":
        return rev
    n_out = None if None in expression.type.shape else int(np.prod(expression.type.shape))
    shapes = [w.type.shape for w in wrt_list]
    n_in = None if any(None in s for s in shapes) else sum(int(np.prod(s)) for s in shapes)
    fewer_inputs = n_out is not None and n_in is not None and n_in < n_out
    if mode != "forward" and rev is not None and rev_cost == 0 and not fewer_inputs:
        return rev  # the forward block could not win: do not build it
    fwd_ok = (not consider_constant and all(is_float_dtype(w.dtype) for w in wrt_list)
              and _modifier_free(expression, wrt_list))
    fwd = None
    if fwd_ok:
        fwd, fwd_cost = [], 0
        for w in wrt_list:
            try:
                r = forward_block(expression, w)
            except Exception as e:  # noqa: BLE001 - as above: the reverse block (or MAP_ROWS) decides
                if STRICT and not isinstance(e, NotVectorizable):
                    raise
                r = None
            if r is None:
                fwd = None
                break
            fwd.append(r[0])
            fwd_cost += r[1]
    if fwd is None:
        return rev
    if mode == "forward" or rev is None:
        return fwd
    if fwd_cost != rev_cost:
        return fwd if fwd_cost < rev_cost else rev
    return fwd if fewer_inputs else rev
