"""The batched form of each op, for :class:`tapegrad.vectorize.Vectorizer`.

A rule ``rule(vec, node, ins)`` gets the node and, per input, ``(variable, batched)`` (a batched variable
has the batch on a new leading axis) and returns ``[(variable, batched)]`` per output.  Unbatched inputs
stay as they are (shared by the whole block); batched ones are padded, axes shift by one, shape references
get a batched stand-in (:meth:`Vectorizer.zref`).  Rules also keep track of ``diag(d)`` structure
(:meth:`Vectorizer.diag_of`) so contractions with identity seeds need no matrix product.  A rule raises
:class:`~tapegrad.vectorize.NotVectorizable` where there is no batched form.
"""

from __future__ import annotations

import copy

from tapegrad.graph import is_float_dtype
from tapegrad.vectorize import NotVectorizable, _cast_to, _ops, _scalar_like

__all__ = ["rule_for"]


def rule_for(op):
    """The batched-form rule of ``op``: ``rule(vec, node, [(input, batched)]) -> [(output, batched)]``, or None."""
    for cls, fn in _rules():
        if isinstance(op, cls):
            return fn
    return None


def _b(v):
    return (v, True)


def _r_elemwise(vec, node, ins):
    from tapegrad.ops.elemwise import Cast

    out = node.outputs[0]
    op = node.op
    if vec.square is not None and out.ndim == 1:
        r = _diag_elemwise(vec, node, ins)
        if r is not None:
            return [_b(r)]
    nd = out.ndim
    args = [vec.pad(x, nd) if b else x for x, b in ins]
    if isinstance(op, Cast):
        return [_b(op(args[0]))]
    return [_b(v) for v in op.make_node(*args).outputs]


def _diag_elemwise(vec, node, ins):
    """``diag(d)`` structure through ``azmul(diag, e)``, ``neg``, casts and sums of diagonals."""
    from tapegrad.ops.elemwise import Cast, azmul, cast, neg

    out = node.outputs[0]
    dt = out.dtype
    if not is_float_dtype(dt):
        return None
    op = node.op
    name = "cast" if isinstance(op, Cast) else getattr(op, "name", None)

    def dg(i):
        x, b = ins[i]
        return vec.diag_of(x) if b else (False, None)

    if name in ("cast", "identity", "neg") and len(ins) == 1:
        isd, d = dg(0)
        if not isd:
            return None
        if name == "neg":
            d = neg(vec.ones_vec(dt) if d is None else d)
        elif d is not None:
            d = cast(d, dt)
        return vec.make_diag(d, dt)
    if name == "azmul":
        isd, d = dg(0)
        e, eb = ins[1]
        if not isd or eb or e.ndim > 1:
            return None
        if _scalar_like(node.inputs[1], 1):
            d = azmul(vec.ones_vec(dt) if d is None else d, e)
        elif vec.keys.same(node.inputs[1], node.inputs[0]):  # e has the diagonal's length
            d = e if d is None else azmul(d, e)
        else:
            return None
        return vec.make_diag(_cast_to(d, dt), dt)
    if name in ("add", "sub"):
        (isd0, d0), (isd1, d1) = dg(0), dg(1)
        if not (isd0 and isd1):
            return None
        if not vec.keys.same(node.inputs[0], node.inputs[1]):
            return None
        d0 = vec.ones_vec(dt) if d0 is None else d0
        d1 = vec.ones_vec(dt) if d1 is None else d1
        return vec.make_diag(_cast_to(op(d0, d1), dt), dt)
    return None


def _r_sum_like(vec, node, ins):
    from tapegrad.ops.broadcast import sum_like
    from tapegrad.ops.reduce import Sum

    (g, gb), (x, xb) = ins
    if not gb:
        raise NotVectorizable("sum_like with a batched reference only")
    if vec.keys.same(node.inputs[0], node.inputs[1]):
        return [_b(g)]
    lead = node.inputs[0].ndim - node.inputs[1].ndim
    if lead:
        g = Sum(tuple(range(1, 1 + lead)), dtype=g.dtype)(g)
    return [_b(sum_like(g, x if xb else vec.zref(x)))]


def _r_broadcast_like(vec, node, ins):
    from tapegrad.ops.broadcast import broadcast_like

    (x, xb), (r, rb) = ins
    if xb and vec.keys.same(node.inputs[0], node.outputs[0]):
        return [_b(x)]
    nd = node.outputs[0].ndim
    return [_b(broadcast_like(vec.pad(x, nd) if xb else x, vec.pad(r, nd) if rb else r))]


def _shift_axes(axis, x, opname):
    from tapegrad.ops.reduce import _axes

    return tuple(a + 1 for a in _axes(axis, x, opname))


def _r_reduction(vec, node, ins):
    (x, xb), = ins
    op = copy.copy(node.op)
    op.axis = _shift_axes(node.op.axis, node.inputs[0], "vectorize")
    return [_b(op(x))]


def _r_broadcast_reduced(vec, node, ins):
    from tapegrad.ops.reduce import BroadcastReduced

    (g, gb), (x, xb) = ins
    if not gb:
        raise NotVectorizable("broadcast_reduced with a batched reference only")
    op = node.op
    new = BroadcastReduced(_shift_axes(op.axis, node.inputs[1], "vectorize"), op.keepdims, op.mean, op.ddof)
    return [_b(new(g, x if xb else vec.zref(x)))]


def _r_reshape(vec, node, ins):
    from tapegrad.ops.shape import Reshape

    (x, xb), (s, sb) = ins
    if sb:
        raise NotVectorizable("reshape to a batched shape")
    out = Reshape(node.op.ndim + 1)(x, vec.bshape(s))
    isd, d = vec.diag_of(x)
    if isd and node.op.ndim == 1 and node.inputs[0].ndim == 1:
        vec.set_diag(out, d)  # (B, n) -> (B, m) with B == n: m == n, the same matrix
    return [_b(out)]


def _r_flatten(vec, node, ins):
    from tapegrad.ops.shape import DimShuffle, Flatten

    (x, _), = ins
    if node.inputs[0].ndim == 0:
        return [_b(DimShuffle(1, [0, "x"])(x))]
    out = Flatten(node.op.ndim + 1)(x)
    isd, d = vec.diag_of(x)
    if isd and node.inputs[0].ndim == 1:
        vec.set_diag(out, d)
    return [_b(out)]


def _r_dimshuffle(vec, node, ins):
    from tapegrad.ops.shape import DimShuffle

    (x, _), = ins
    op = node.op
    order = [0] + ["x" if a == -1 else a + 1 for a in op.new_order]
    out = DimShuffle(op.input_ndim + 1, order)(x)
    isd, d = vec.diag_of(x)
    if isd and op.new_order == (0,):
        vec.set_diag(out, d)
    return [_b(out)]


def _check_unbatched(ins, what):
    if any(b for _, b in ins):
        raise NotVectorizable(f"{what} with a batched index or shape argument")


_FULL = (1, None, None, None, 0)


def _r_subtensor(vec, node, ins):
    (x, _), *bounds = ins
    _check_unbatched(bounds, "subtensor")
    op = node.op
    new = type(op)((_FULL,) + op.entries, tuple(p + 1 for p in op.newaxes))
    return [_b(new(x, *[b for b, _ in bounds]))]


def _r_basic_write(vec, node, ins):
    (x, xb), (y, yb), *bounds = ins
    _check_unbatched(bounds, "a subtensor write")
    op = node.op
    x0 = node.inputs[0]
    if op.mode == "scatter":  # x only gives the shape
        x = x if xb else vec.zref(x)
    else:
        x = vec.as_batched(x, xb)
    if yb:
        y = vec.pad(y, len(op.indexed_shape(x0.type.shape)))
    new = type(op)((_FULL,) + op.entries, tuple(p + 1 for p in op.newaxes))
    return [_b(new(x, y, *[b for b, _ in bounds]))]


def _r_advanced_read(vec, node, ins):
    (x, _), (idx, ib) = ins
    if ib:
        raise NotVectorizable("take with a batched index")
    return [_b(type(node.op)(node.op.axis + 1)(x, idx))]


def _r_advanced_write(vec, node, ins):
    (x, xb), (y, yb), (idx, ib) = ins
    if ib:
        raise NotVectorizable("an indexed write with a batched index")
    op = node.op
    if op.mode.startswith("scatter"):  # x only gives the shape
        x = x if xb else vec.zref(x)
    else:
        x = vec.as_batched(x, xb)
    if yb:
        y = vec.pad(y, len(op.indexed_shape(node.inputs[0].type.shape, node.inputs[2].type.shape)))
    return [_b(type(op)(op.axis + 1)(x, y, idx))]


def _r_contraction(vec, node, ins):
    from tapegrad.ops.linalg import Einsum

    op = node.op
    a0, b0 = node.inputs
    spec = op.subscripts if isinstance(op, Einsum) else op.einsum_spec(a0.ndim, b0.ndim)
    out = node.outputs[0]
    if vec.square is not None:
        r = _diag_contraction(vec, spec, ins, (a0, b0), out.dtype)
        if r is not None:
            return [_b(r)]
    return [_b(_batched_einsum(vec, spec, ins, (a0, b0), out.dtype))]


def _batched_einsum(vec, spec, ins, originals, dtype):
    from tapegrad.ops.linalg import Einsum, _parse
    from tapegrad.ops.shape import DimShuffle

    terms = _parse(spec)
    (eo, lo) = terms[2]
    nes = [x.ndim - len(l) for x, (_, l) in zip(originals, terms[:2])]
    ne_out = max(nes)
    new_terms, args = [], []
    for (x, isb), (e, l), ne in zip(ins, terms[:2], nes):
        if isb:
            k = ne_out - ne
            if k:
                x = DimShuffle(x.ndim, [0] + ["x"] * k + list(range(1, x.ndim)))(x)
            new_terms.append("..." + l)
        else:
            new_terms.append(("..." if e else "") + l)
        args.append(x)
    out = Einsum(f"{new_terms[0]},{new_terms[1]}->...{lo}")(*args)
    (_, la), (_, lb) = terms[:2]
    if any(c in lb and c not in lo for c in la):  # a summed label: work beyond the size of the result
        vec.contractions.append(out)
    return _cast_to(out, dtype)


def _diag_contraction(vec, spec, ins, originals, dtype):
    """``einsum(Q, diag(d))`` with the diagonal's label contracted: ``Q`` scaled along that axis by ``d``,
    the axis moved first (the batch).  No matrix product."""
    from tapegrad.ops.linalg import _parse
    from tapegrad.ops.shape import DimShuffle

    (ea, la), (eb, lb), (eo, lo) = _parse(spec)
    (xa, ab), (xb, bb) = ins
    if ab == bb:
        return None
    if ab:
        (P, lp, p0), (Q, lq, q0) = (xa, la, originals[0]), (xb, lb, originals[1])
    else:
        (P, lp, p0), (Q, lq, q0) = (xb, lb, originals[1]), (xa, la, originals[0])
    isd, d = vec.diag_of(P)
    if not isd or p0.ndim != 1 or len(lp) != 1:
        return None
    j = lp
    if q0.ndim != len(lq) or j not in lq or j in lo or sorted(lo) != sorted(c for c in lq if c != j):
        return None
    perm = [lq.index(j)] + [lq.index(c) for c in lo]
    Qt = Q if perm == list(range(Q.ndim)) else DimShuffle(Q.ndim, perm)(Q)
    if d is not None:
        Qt = Qt * DimShuffle(1, [0] + ["x"] * len(lo))(d)
    return _cast_to(Qt, dtype)


def _r_outer(vec, node, ins):
    from tapegrad.ops.shape import flatten

    flat = []
    for (x, isb), x0 in zip(ins, node.inputs):
        if isb:
            flat.append(_r_flatten_any(vec, x, x0))
        else:
            flat.append(flatten(x, 1))
    (fa, ab), (fb, bb) = (flat[0], ins[0][1]), (flat[1], ins[1][1])
    spec = "i,j->ij"
    return [_b(_batched_einsum(vec, spec, [(fa, ab), (fb, bb)], (_Fake(1), _Fake(1)), node.outputs[0].dtype))]


def _r_outer_t(vec, node, ins):
    from tapegrad.ops.shape import Reshape, flatten, shape

    (g, gb), (o, ob), (r, rb) = ins
    fo = _r_flatten_any(vec, o, node.inputs[1]) if ob else flatten(o, 1)
    if node.op.side == 0:
        y = _batched_einsum(vec, "ij,j->i", [(g, gb), (fo, ob)], (_Fake(2), _Fake(1)), node.outputs[0].dtype)
    else:
        y = _batched_einsum(vec, "i,ij->j", [(fo, ob), (g, gb)], (_Fake(1), _Fake(2)), node.outputs[0].dtype)
    target = shape(r) if rb else vec.bshape(shape(r))
    return [_b(Reshape(node.inputs[2].ndim + 1)(y, target))]


class _Fake:
    def __init__(self, ndim):
        self.ndim = ndim


def _r_flatten_any(vec, xb, x0):
    from tapegrad.ops.shape import DimShuffle, Flatten

    if x0.ndim == 0:
        return DimShuffle(1, [0, "x"])(xb)
    return Flatten(2)(xb)


def _r_diagonal(vec, node, ins):
    (x, _), = ins
    op = node.op
    return [_b(type(op)(op.offset, op.axis1 + 1, op.axis2 + 1)(x))]


def _r_diag_embed(vec, node, ins):
    from tapegrad.ops.linalg import DiagEmbed

    (g, gb), (r, rb) = ins
    if not gb:
        raise NotVectorizable("diag_embed with a batched reference only")
    op = node.op
    return [_b(DiagEmbed(op.offset, op.axis1 + 1, op.axis2 + 1, op.trace)(g, r if rb else vec.zref(r)))]


def _r_same_op(vec, node, ins):
    """Ops that act on each element independently of the layout (fills, identity views)."""
    (x, _), = ins
    return [_b(node.op(x))]


def _r_alloc(vec, node, ins):
    from tapegrad.ops.broadcast import broadcast_like
    from tapegrad.ops.reduce import prod

    (v, vb), (s, sb) = ins
    if sb:
        raise NotVectorizable("alloc to a batched shape")
    nd = node.outputs[0].ndim
    static = node.outputs[0].type.shape
    ref = vec.ref_of_shape(static, lambda i: s[i], lambda: prod(s))
    return [_b(broadcast_like(vec.pad(v, nd), ref))]


def _r_join(vec, node, ins):
    op = node.op
    args = [vec.as_batched(x, b) for x, b in ins]
    return [_b(type(op)(op.axis + 1)(*args))]


def _r_split(vec, node, ins):
    from tapegrad.ops.alloc import Split

    (x, _), (s, sb) = ins
    if sb:
        raise NotVectorizable("split with batched sizes")
    return [_b(o) for o in Split(node.op.n_splits, node.op.axis + 1).make_node(x, s).outputs]


def _r_roll(vec, node, ins):
    from tapegrad.ops.alloc import Roll
    from tapegrad.ops.shape import Flatten, Reshape, shape

    (x, _), (sh, shb) = ins
    if shb:
        raise NotVectorizable("roll by a batched shift")
    op = node.op
    x0 = node.inputs[0]
    if op.axis is not None:
        return [_b(Roll(op.axis + 1)(x, sh))]
    if x0.ndim == 0:
        return [_b(x)]
    if x0.ndim == 1:
        return [_b(Roll(1)(x, sh))]
    r = Roll(1)(Flatten(2)(x), sh)
    return [_b(Reshape(x.ndim)(r, shape(x)))]


def _r_repeat(vec, node, ins):
    (x, _), (r, rb) = ins
    if rb:
        raise NotVectorizable("repeat by batched repeats")
    return [_b(type(node.op)(node.op.axis + 1)(x, r))]


def _r_repeat_sum(vec, node, ins):
    (g, gb), (r, rb), (x, xb) = ins
    if rb or not gb:
        raise NotVectorizable("repeat_sum")
    return [_b(type(node.op)(node.op.axis + 1)(g, r, x if xb else vec.zref(x)))]


def _r_tile(vec, node, ins):
    (x, _), = ins
    return [_b(type(node.op)((1,) + node.op.reps)(x))]


def _r_tile_sum(vec, node, ins):
    (g, gb), (x, xb) = ins
    if not gb:
        raise NotVectorizable("tile_sum with a batched reference only")
    return [_b(type(node.op)((1,) + node.op.reps)(g, x if xb else vec.zref(x)))]


def _r_specify_shape(vec, node, ins):
    from tapegrad.ops.alloc import SpecifyShape

    (x, _), (s, sb) = ins
    if sb:
        raise NotVectorizable("specify_shape with a batched shape")
    return [_b(SpecifyShape()(x, vec.bshape(s)))]


def _r_scan_axis(vec, node, ins):
    """A scan along its axis (one further in): cumsum, cumprod, and the linear recurrence, whose unbatched
    operand is repeated along the batch."""
    op = copy.copy(node.op)
    op.axis = op.axis + 1 if op.axis >= 0 else op.axis
    return [_b(op(*(vec.as_batched(x, b) for x, b in ins)))]


def _r_axes_tuple(vec, node, ins):
    (x, _), = ins
    nd = node.inputs[0].ndim
    op = copy.copy(node.op)
    op.axis = tuple((a % nd) + 1 if nd else a for a in node.op.axis)
    return [_b(op(x))]


def _r_ravel(vec, node, ins):
    from tapegrad.ops.shape import Reshape, shape

    if len(ins) == 1:
        (x, _), = ins
        return [_b(_r_flatten_any(vec, x, node.inputs[0]))]
    (g, gb), (like, lb) = ins
    if not gb:
        raise NotVectorizable("ravel with a batched reference only")
    target = shape(like) if lb else vec.bshape(shape(like))
    return [_b(Reshape(node.inputs[1].ndim + 1)(g, target))]


def _r_shape(vec, node, ins):
    from tapegrad.ops.shape import shape

    (x, _), = ins
    return [(shape(x)[1:], False)]


def _r_shape_i(vec, node, ins):
    from tapegrad.ops.shape import ShapeI

    (x, _), = ins
    return [(ShapeI(node.op.i + 1)(x), False)]


_RULES = None


def _rules():
    global _RULES
    if _RULES is None:
        (ops, alloc, broadcast, cumulative, elemwise, index, linalg, modifiers, nn, reduce, shape) = _ops()
        _RULES = [
            ((elemwise.Elemwise, elemwise.Cast), _r_elemwise),
            (broadcast.SumLike, _r_sum_like),
            (broadcast.BroadcastLike, _r_broadcast_like),
            (reduce.BroadcastReduced, _r_broadcast_reduced),
            ((reduce._Reduction, reduce.ExtremumMask), _r_reduction),
            (shape.Reshape, _r_reshape),
            (shape.Flatten, _r_flatten),
            (shape.DimShuffle, _r_dimshuffle),
            (index.Subtensor, _r_subtensor),
            (index._BasicWrite, _r_basic_write),
            (index.AdvancedSubtensor1, _r_advanced_read),
            (index._AdvancedWrite, _r_advanced_write),
            ((linalg.Einsum, linalg.Dot, linalg.Matmul, linalg.TensorDot), _r_contraction),
            (linalg.Outer, _r_outer),
            (linalg.OuterT, _r_outer_t),
            (linalg._DiagonalBase, _r_diagonal),
            (linalg.DiagEmbed, _r_diag_embed),
            ((alloc.ZerosLike, alloc.OnesLike, modifiers._ViewOp), _r_same_op),
            (alloc.Alloc, _r_alloc),
            ((shape.Join, shape.Stack), _r_join),
            (alloc.Split, _r_split),
            (alloc.Roll, _r_roll),
            (alloc.Repeat, _r_repeat),
            (alloc.RepeatSum, _r_repeat_sum),
            (alloc.Tile, _r_tile),
            (alloc.TileSum, _r_tile_sum),
            (alloc.SpecifyShape, _r_specify_shape),
            ((cumulative.CumSum, cumulative.CumProd, cumulative.LinRec), _r_scan_axis),
            ((nn._Normalized, nn.SumBroadcast), _r_axes_tuple),
            (cumulative.Ravel, _r_ravel),
            (shape.Shape, _r_shape),
            (shape.ShapeI, _r_shape_i),
        ]
    return _RULES
