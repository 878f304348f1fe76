"""Indexing: basic slicing, integer-array indexing on one axis, and writes into both.

Two index kinds, each with a read, two writes and the transposes gradients need:

=====  ==========================  ===================================================
code   name                        value
=====  ==========================  ===================================================
400    SUBTENSOR                   ``x[idx]``, basic ``idx`` (ints, slices, None, ...)
401    INC_SUBTENSOR               ``x`` with ``x[idx] += y``
402    SET_SUBTENSOR               ``x`` with ``x[idx] = y``
403    SUBTENSOR_SCATTER           ``zeros(ref.shape)`` with ``[idx] = y``  (transpose of 400)
410    ADVANCED_SUBTENSOR1         ``take(x, i, axis)``, ``i`` an int array
411    ADVANCED_INC_SUBTENSOR1     ``x`` with ``np.add.at`` of ``y`` at ``i`` (repeats accumulate)
412    ADVANCED_SET_SUBTENSOR1     ``x`` with ``y`` set at ``i`` (repeats: the last write wins)
413    ADVANCED_SCATTER1           ``zeros(ref.shape)`` with ``np.add.at`` (transpose of 410)
414    ADVANCED_SCATTER1_SET       ``zeros(ref.shape)`` with ``y`` set at ``i`` (transpose of 415)
415    ADVANCED_SUBTENSOR1_LAST    ``take(x, i, axis)`` with every non-last repeat zeroed
=====  ==========================  ===================================================

Every op here is ``kind = "linear"`` in its float inputs (``x`` and ``y``; for
the scatters ``y`` only: ``ref`` gives a shape).  Index inputs are integers and
disconnected.  ``y`` broadcasts to the indexed shape; its gradient is summed
back with ``sum_like``.

Set with repeated indices (412): ``out[i[k]] = y[k]`` only for the *last* ``k``
writing each position, so only that ``y[k]`` receives gradient: ``dy =
take_last(g, i)`` (415), whose transpose is 414.  L_op and R_op are exact
transposes of each other for every op, repeats included.

Basic-index encoding (ops 400-403), shared by all four ops' ``__props__``:

``entries``
    one entry per axis of ``x`` (trailing ``:`` written out), each the 5-tuple
    ``(kind, v0, v1, v2, sym)``: ``kind`` 0 = integer index ``v0`` (the axis
    is dropped; ``v1 = v2 = 0``); ``kind`` 1 = slice ``v0:v1:v2`` (start,
    stop, step; ``None`` = omitted, as NumPy).  Bit ``j`` of ``sym`` set means
    ``v_j`` is not a value but ``k``: the value is the 0-d int input
    ``node.inputs[n_fixed + k]`` (``n_fixed`` = 1 for 400, 2 for 401-403).
``newaxes``
    sorted positions, in the *output*, of inserted length-1 axes (``None``).

``Op.encode()`` flattens them to ints: ``ndim, (5, kind, v0, v1, v2, sym) *
ndim, len(newaxes), *newaxes`` with ``None`` as ``-(2**62)``.  A kernel can
view ``x`` with strides: for each slice axis ``start, step, length =
slice.indices(n)``, offset += start * stride, new stride = stride * step; an
int axis adds ``(i % n) * stride`` (after the range check) and drops the
axis; new axes get length 1.  Advanced ops (410-415) encode ``(axis,)``.
"""

from __future__ import annotations

import numbers

import numpy as np

from tapegrad.graph import Constant, Variable, as_tensor, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, make_output
from tapegrad.registry import registered

__all__ = ["getitem", "inc_subtensor", "set_subtensor", "take"]

INDEX, SLICE = 0, 1
_FULL = (SLICE, None, None, None, 0)


# --------------------------------------------------------------------------- index parsing
def _static_int(v):
    """``v`` as a Python int when it is a static integer (int, NumPy int, 0-d int constant), else None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iu":
        return int(v)
    if isinstance(v, Constant) and v.ndim == 0 and v.dtype not in ("bool",) and not is_float_dtype(v.dtype):
        return int(v.data)
    return None


def _int_scalar(v, what):
    """A symbolic 0-d integer Variable for a bound, or raise TypeError."""
    if not isinstance(v, Variable) or v.ndim != 0 or is_float_dtype(v.dtype) or v.dtype == "bool":
        raise TypeError(f"{what} must be an integer, None or a 0-d integer Variable, got {v!r}")
    return v


def _as_index_array(v):
    """An int Variable for an integer-array index (lists and ndarrays become constants)."""
    if isinstance(v, (list, tuple)) and len(v) == 0:
        v = np.zeros(0, dtype="int64")
    v = as_tensor(v)
    if v.dtype == "bool":
        raise TypeError(f"boolean mask indexing ({v}) is not supported; use tg.switch or integer indices")
    if is_float_dtype(v.dtype):
        raise TypeError(f"array indices must be integers, got {v} of dtype {v.dtype}")
    return v


def _parse(x, index):
    """Split ``index`` into (entries, newaxes, bounds, advanced) for ``x``.

    ``advanced`` is None or ``(position in x's axes after basic indexing, index Variable)``.
    """
    if not isinstance(index, tuple):
        index = (index,)
    items = []  # ("none",) | ("ellipsis",) | ("int", v) | ("slice", s) | ("array", var)
    for v in index:
        if v is None:
            items.append(("none",))
        elif v is Ellipsis:
            items.append(("ellipsis",))
        elif isinstance(v, slice):
            items.append(("slice", v))
        elif isinstance(v, (bool, np.bool_)):
            raise TypeError(f"boolean index {v!r} into {x!r} is not supported")
        elif _static_int(v) is not None or (isinstance(v, Variable) and v.ndim == 0):
            items.append(("int", v))
        elif isinstance(v, (list, np.ndarray, Variable)):
            items.append(("array", _as_index_array(v)))
        else:
            raise TypeError(f"invalid index {v!r} of type {type(v).__name__} into {x!r}")
    if sum(it[0] == "ellipsis" for it in items) > 1:
        raise IndexError(f"an index into {x!r} can only have a single ellipsis ('...')")
    used = sum(it[0] in ("int", "slice", "array") for it in items)
    if used > x.ndim:
        raise IndexError(f"too many indices for {x!r}: it is {x.ndim}-dimensional, but {used} were indexed")
    fill = [("slice", slice(None))] * (x.ndim - used)
    if any(it[0] == "ellipsis" for it in items):
        k = next(i for i, it in enumerate(items) if it[0] == "ellipsis")
        items = items[:k] + fill + items[k + 1 :]
    else:
        items = items + fill

    arrays = [it for it in items if it[0] == "array"]
    if len(arrays) > 1:
        raise NotImplementedError(f"indexing {x!r} with more than one integer array is not supported; index twice")
    if arrays and any(it[0] == "int" for it in items):
        raise NotImplementedError(
            f"indexing {x!r} with both an integer and an integer array is not supported; index twice"
        )

    entries, newaxes, bounds, advanced = [], [], [], None
    axis, out_pos = 0, 0
    for it in items:
        if it[0] == "none":
            newaxes.append(out_pos)
            out_pos += 1
            continue
        n = x.type.shape[axis]
        if it[0] == "array":
            advanced = (out_pos, it[1])
            entries.append(_FULL)
            out_pos += 1
        elif it[0] == "int":
            entries.append(_int_entry(x, axis, n, it[1], bounds))
        else:
            entries.append(_slice_entry(x, it[1], bounds))
            out_pos += 1
        axis += 1
    return tuple(entries), tuple(newaxes), bounds, advanced


def _bound(v, bounds, what):
    """(value, is_symbolic) of one index field; symbolic bounds are appended to ``bounds``."""
    if v is None:
        return None, False
    s = _static_int(v)
    if s is not None:
        return s, False
    bounds.append(_int_scalar(v, what))
    return len(bounds) - 1, True


def _int_entry(x, axis, n, v, bounds):
    i, sym = _bound(v, bounds, "an index")
    if not sym and n is not None and not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for axis {axis} of {x!r} with static length {n}")
    return (INDEX, i, 0, 0, int(sym))


def _slice_entry(x, s, bounds):
    start, s0 = _bound(s.start, bounds, "a slice start")
    stop, s1 = _bound(s.stop, bounds, "a slice stop")
    step, s2 = _bound(s.step, bounds, "a slice step")
    if not s2 and step == 0:
        raise ValueError(f"slice step cannot be zero (indexing {x!r})")
    if not s2 and step == 1:
        step = None
    if not s0 and start == 0 and step is None:
        start = None
    return (SLICE, start, stop, step, s0 | (s1 << 1) | (s2 << 2))


# --------------------------------------------------------------------------- basic index helpers
def _resolve(entries, bounds):
    """Python index tuple (no new axes) from entries and bound values."""
    out = []
    for kind, v0, v1, v2, sym in entries:
        vals = [int(bounds[v]) if (sym >> j) & 1 else v for j, v in enumerate((v0, v1, v2))]
        out.append(vals[0] if kind == INDEX else slice(*vals))
    return tuple(out)


def _basic_shape(entries, newaxes, shape):
    """Output shape (None where unknown) of a basic index over ``shape``."""
    out = []
    for (kind, v0, v1, v2, sym), n in zip(entries, shape):
        if kind == INDEX:
            continue
        if n is not None and sym == 0:
            out.append(len(range(*slice(v0, v1, v2).indices(n))))
        elif n is not None and (v0, v1, v2, sym) == (None, None, None, 0):
            out.append(n)
        else:
            out.append(None)
    for p in newaxes:
        out.insert(p, 1)
    return tuple(out)


def _view(op, node, x, bounds):
    """A NumPy view of ``x`` at the op's basic index (new axes inserted), after run-time checks."""
    idx = _resolve(op.entries, bounds)
    for axis, (i, n) in enumerate(zip(idx, x.shape)):
        if isinstance(i, slice):
            if i.step == 0:
                raise ValueError(f"{op.code}: slice step cannot be zero (indexing {node.inputs[0]!r})")
        elif not -n <= i < n:
            raise IndexError(
                f"{op.code}: index {i} is out of bounds for axis {axis} of {node.inputs[0]!r} with length {n}"
            )
    view = x[idx + (Ellipsis,)]  # a view even when every axis is an int (0-d)
    return np.expand_dims(view, op.newaxes) if op.newaxes else view


class _BasicIndexOp(Op):
    """Shared state of ops 400-403: the basic index ``entries`` and ``newaxes``."""

    __props__ = ("entries", "newaxes")
    kind = "linear"
    n_fixed = 1

    def __init__(self, entries, newaxes=()):
        self.entries = tuple(tuple(e) for e in entries)
        self.newaxes = tuple(newaxes)

    def indexed_shape(self, shape):
        return _basic_shape(self.entries, self.newaxes, shape)

    def connection_pattern(self, node):
        return [[i < self.n_fixed] for i in range(len(node.inputs))]

    def _no_grads(self, inputs):
        return [disconnected_type() for _ in inputs[self.n_fixed :]]

    def infer_shape(self, node, input_shapes):
        return [self._out_shape(input_shapes)]


# --------------------------------------------------------------------------- 400 SUBTENSOR
@registered(name="SUBTENSOR", code=400)
class Subtensor(_BasicIndexOp):
    """``x[idx]`` for a basic index (see the module docstring for ``entries``/``newaxes``).

    Inputs ``(x, *bounds)``.  Linear; transpose: ``SUBTENSOR_SCATTER``.
    """

    def make_node(self, x, *bounds):
        x = as_tensor(x)
        return Apply(self, [x, *bounds], [make_output(x.dtype, self.indexed_shape(x.type.shape))])

    def perform(self, node, inputs, output_storage):
        x, *bounds = inputs
        output_storage[0][0] = np.array(_view(self, node, np.asarray(x), bounds), dtype=node.outputs[0].dtype)

    def _out_shape(self, input_shapes):
        if any(e[4] for e in self.entries):
            raise NotImplementedError(f"{self.code}: the output shape depends on symbolic index values")
        return self.indexed_shape(input_shapes[0])

    def L_op(self, inputs, outputs, output_grads):
        x, *bounds = inputs
        (g,) = output_grads
        return [SubtensorScatter(self.entries, self.newaxes)(x, _float(g, x), *bounds), *self._no_grads(inputs)]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, *inputs[1:])]


# --------------------------------------------------------------------------- 401-403 writes
class _BasicWrite(_BasicIndexOp):
    """``x`` (or zeros shaped like ``ref``) with ``y`` added or set at a basic index.  Inputs ``(x, y, *bounds)``.

    ``mode``: ``"inc"`` (401), ``"set"`` (402) or ``"scatter"`` (403: ``x`` only
    gives the shape; the result has ``y``'s dtype and is zero elsewhere).
    Basic indices never repeat a position, so set into zeros equals scatter.
    """
    output_shape_of = 0  # output 0 has the run-time shape of input 0

    n_fixed = 2
    mode = "inc"

    def make_node(self, x, y, *bounds):
        x, y = as_tensor(x), as_tensor(y)
        return Apply(self, [x, y, *bounds], [_write_output(self, x, y, self.indexed_shape(x.type.shape))])

    def connection_pattern(self, node):
        return [[i == 1 or (i == 0 and self.mode != "scatter")] for i in range(len(node.inputs))]

    def perform(self, node, inputs, output_storage):
        x, y, *bounds = inputs
        out = _base(self, node, np.asarray(x))
        view = _view(self, node, out, bounds)
        _write(self, node, view, np.asarray(y), self.mode == "inc")
        output_storage[0][0] = out

    def _out_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def L_op(self, inputs, outputs, output_grads):
        x, y, *bounds = inputs
        g = _float(output_grads[0], y if self.mode == "scatter" else x)
        dy = _sum_to(Subtensor(self.entries, self.newaxes)(g, *bounds), y)
        if self.mode == "scatter":
            dx = disconnected_type()
        elif self.mode == "set":
            dx = SetSubtensor(self.entries, self.newaxes)(g, _zero(g.dtype), *bounds)
        else:
            dx = g
        return [dx, dy, *self._no_grads(inputs)]

    def R_op(self, inputs, eval_points):
        x, y, *bounds = inputs
        ux, uy = eval_points[0] if self.mode != "scatter" else None, eval_points[1]
        return [_write_tangent(self, SubtensorScatter, x, ux, uy, bounds)]


@registered(name="INC_SUBTENSOR", code=401)
class IncSubtensor(_BasicWrite):
    __doc__ = _BasicWrite.__doc__
    mode = "inc"


@registered(name="SET_SUBTENSOR", code=402)
class SetSubtensor(_BasicWrite):
    __doc__ = _BasicWrite.__doc__
    mode = "set"


@registered(name="SUBTENSOR_SCATTER", code=403)
class SubtensorScatter(_BasicWrite):
    __doc__ = _BasicWrite.__doc__
    mode = "scatter"


# --------------------------------------------------------------------------- shared write helpers
def _write_output(op, x, y, indexed_shape):
    """Output variable of a write op; checks y's rank, dtype and static shape against the indexed shape."""
    name = op.code.lower()
    if y.ndim > len(indexed_shape):
        raise ValueError(
            f"{name}: y {y!r} has {y.ndim} dimensions, more than the {len(indexed_shape)} of the indexed "
            f"part of {x!r}"
        )
    pad = (1,) * (len(indexed_shape) - y.ndim) + y.type.shape
    for n, m in zip(indexed_shape, pad):
        if m not in (None, 1) and n is not None and n != m:
            raise ValueError(
                f"{name}: y {y!r} of static shape {y.type.shape} cannot be broadcast to the indexed shape "
                f"{indexed_shape} of {x!r}"
            )
    if op.mode.startswith("scatter"):
        return make_output(y.dtype, x.type.shape)
    if y.dtype != x.dtype:
        raise TypeError(f"{name}: y {y!r} has dtype {y.dtype} but {x!r} has dtype {x.dtype}")
    return make_output(x.dtype, x.type.shape)


def _base(op, node, x):
    """A fresh array the write op writes into: a copy of ``x``, or zeros shaped like it."""
    if op.mode.startswith("scatter"):
        return np.zeros(x.shape, dtype=node.outputs[0].dtype)
    return np.array(x, dtype=node.outputs[0].dtype, copy=True)


def _write(op, node, view, y, add):
    try:
        if add:
            view += y
        else:
            view[...] = y
    except ValueError:
        raise ValueError(
            f"{op.code}: y of shape {y.shape} cannot be broadcast to the indexed shape {view.shape} "
            f"of {node.inputs[0]!r}"
        ) from None


def _coerce_y(x, y, what):
    """``y`` cast to ``x``'s dtype when that loses nothing (Python scalars are weak), else TypeError."""
    from tapegrad.ops.elemwise import cast, upcast

    y = as_tensor(y)
    if y.dtype == x.dtype:
        return y
    if upcast(x, y) != x.dtype:
        raise TypeError(
            f"{what}: cannot write y {y!r} of dtype {y.dtype} into {x!r} of dtype {x.dtype} without loss; "
            f"cast y with .astype({x.dtype!r})"
        )
    if isinstance(y, Constant):
        return as_tensor(np.asarray(y.data, dtype=x.dtype))
    return cast(y, x.dtype)


def _zero(dtype):
    return as_tensor(np.zeros((), dtype=dtype))


def _float(g, like):
    """Cotangent ``g`` in the gradient dtype of ``like`` (its dtype if float, else floatX)."""
    from tapegrad.config import config
    from tapegrad.ops.elemwise import cast

    want = like.dtype if is_float_dtype(like.dtype) else config.floatX
    return g if g.dtype == want else cast(g, want)


def _sum_to(g, y):
    """``g`` summed to ``y``'s shape (skipped when the static shapes already agree)."""
    from tapegrad.ops.broadcast import sum_like

    if g.type.shape == y.type.shape and None not in g.type.shape:
        out = g
    else:
        out = sum_like(g, y)
    return _float(out, y)


def _write_tangent(op, scatter_cls, x, ux, uy, bounds):
    """R_op of a write op: the same write on tangents (a scatter when x's tangent is zero)."""
    if uy is None and ux is None:
        return None
    if op.mode.startswith("scatter"):
        return type(op)(*op._props())(x, uy, *bounds)
    if ux is None:
        return scatter_cls(*op._props())(x, uy, *bounds)
    if uy is None:
        if op.mode == "inc":
            return ux
        uy = _zero(ux.dtype)
    elif uy.dtype != ux.dtype:
        from tapegrad.ops.elemwise import cast

        uy = cast(uy, ux.dtype)
    return type(op)(*op._props())(ux, uy, *bounds)


# --------------------------------------------------------------------------- 410-415 integer-array indexing
def _check_idx(op, node, idx, n):
    """Run-time range check of an integer-array index; returns it normalised to ``[0, n)``."""
    idx = np.asarray(idx)
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise IndexError(
            f"{op.code}: index {int(idx[bad].flat[0])} is out of bounds for axis {op.axis} of "
            f"{node.inputs[0]!r} with length {n}"
        )
    return np.where(idx < 0, idx + n, idx)


def _last_writer(flat):
    """Mask of the positions ``k`` of ``flat`` that are the last occurrence of their value."""
    keep = np.zeros(flat.size, dtype=bool)
    _, first_in_rev = np.unique(flat[::-1], return_index=True)
    keep[flat.size - 1 - first_in_rev] = True
    return keep


class _AdvancedOp(Op):
    """Shared state of ops 410-415: the indexed ``axis``."""

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis=0):
        self.axis = int(axis)

    def _check(self, x, idx):
        x, idx = as_tensor(x), _as_index_array(idx)
        if not 0 <= self.axis < x.ndim:
            raise IndexError(f"{self.code}: axis {self.axis} is out of bounds for {x!r} with {x.ndim} dimension(s)")
        n = x.type.shape[self.axis]
        if isinstance(idx, Constant) and n is not None and idx.data.size:
            bad = (idx.data < -n) | (idx.data >= n)
            if bad.any():
                raise IndexError(
                    f"index {int(idx.data[bad].flat[0])} is out of bounds for axis {self.axis} of {x!r} "
                    f"with static length {n}"
                )
        return x, idx

    def indexed_shape(self, shape, idx_shape):
        return tuple(shape[: self.axis]) + tuple(idx_shape) + tuple(shape[self.axis + 1 :])

    def _pos(self, idx):
        return (slice(None),) * self.axis + (idx,)


@registered(name="ADVANCED_SUBTENSOR1", code=410)
class AdvancedSubtensor1(_AdvancedOp):
    """``take(x, idx, axis)`` (= ``x[idx]`` for ``axis=0``); ``idx`` an int array of any rank.

    Inputs ``(x, idx)``; output shape ``x.shape[:axis] + idx.shape + x.shape[axis+1:]``.
    Linear in ``x``; transpose: ``ADVANCED_SCATTER1`` (repeats accumulate).
    """

    last_only = False

    def make_node(self, x, idx):
        x, idx = self._check(x, idx)
        return Apply(self, [x, idx], [make_output(x.dtype, self.indexed_shape(x.type.shape, idx.type.shape))])

    def perform(self, node, inputs, output_storage):
        x, idx = np.asarray(inputs[0]), inputs[1]
        idx = _check_idx(self, node, idx, x.shape[self.axis])
        out = np.array(np.take(x, idx, axis=self.axis), dtype=node.outputs[0].dtype)
        if self.last_only and idx.size:
            flat = out.reshape(x.shape[: self.axis] + (idx.size,) + x.shape[self.axis + 1 :])
            flat[self._pos(~_last_writer(idx.ravel()))] = 0
        output_storage[0][0] = out

    def infer_shape(self, node, input_shapes):
        return [self.indexed_shape(input_shapes[0], input_shapes[1])]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        x, idx = inputs
        scatter = AdvancedScatter1Set if self.last_only else AdvancedScatter1
        return [scatter(self.axis)(x, _float(output_grads[0], x), idx), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


@registered(name="ADVANCED_SUBTENSOR1_LAST", code=415)
class AdvancedSubtensor1Last(AdvancedSubtensor1):
    """``take(x, idx, axis)`` where only the last of repeated indices keeps its value (others are 0).

    The gradient of ``ADVANCED_SET_SUBTENSOR1`` w.r.t. ``y``.  Linear; transpose: ``ADVANCED_SCATTER1_SET``.
    Repeats are judged after normalising negative indices (``-1`` and ``n-1`` repeat).
    """

    last_only = True


class _AdvancedWrite(_AdvancedOp):
    """``x`` (or zeros shaped like ``ref``) with ``y`` written at ``take(., idx, axis)`` positions.

    Inputs ``(x, y, idx)``; ``y`` broadcasts to ``x.shape[:axis] + idx.shape +
    x.shape[axis+1:]``.  ``mode``: ``"inc"`` (411, ``np.add.at``: repeats
    accumulate), ``"set"`` (412: the last write of a repeated index wins),
    ``"scatter"`` (413: zeros + ``np.add.at``), ``"scatter_set"`` (414: zeros,
    last write wins).  For the scatters ``x`` only gives the shape and the
    output has ``y``'s dtype.
    """
    output_shape_of = 0  # output 0 has the run-time shape of input 0

    mode = "inc"

    def make_node(self, x, y, idx):
        x, idx = self._check(x, idx)
        y = as_tensor(y)
        shape = self.indexed_shape(x.type.shape, idx.type.shape)
        return Apply(self, [x, y, idx], [_write_output(self, x, y, shape)])

    def perform(self, node, inputs, output_storage):
        x, y, idx = np.asarray(inputs[0]), np.asarray(inputs[1]), inputs[2]
        idx = _check_idx(self, node, idx, x.shape[self.axis])
        out = _base(self, node, x)
        shape = self.indexed_shape(x.shape, idx.shape)
        try:
            y = np.broadcast_to(y, shape)
        except ValueError:
            raise ValueError(
                f"{self.code}: y of shape {y.shape} cannot be broadcast to the indexed shape {shape} "
                f"of {node.inputs[0]!r}"
            ) from None
        if self.mode in ("inc", "scatter"):
            np.add.at(out, self._pos(idx), y)
        elif idx.size:
            flat = idx.ravel()
            keep = _last_writer(flat)
            y = y.reshape(x.shape[: self.axis] + (idx.size,) + x.shape[self.axis + 1 :])
            out[self._pos(flat[keep])] = y[self._pos(keep)]
        output_storage[0][0] = out

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[0])]

    def connection_pattern(self, node):
        return [[not self.mode.startswith("scatter")], [True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        x, y, idx = inputs
        g = _float(output_grads[0], y if self.mode.startswith("scatter") else x)
        take_cls = AdvancedSubtensor1 if self.mode in ("inc", "scatter") else AdvancedSubtensor1Last
        dy = _sum_to(take_cls(self.axis)(g, idx), y)
        if self.mode.startswith("scatter"):
            dx = disconnected_type()
        elif self.mode == "set":
            dx = AdvancedSetSubtensor1(self.axis)(g, _zero(g.dtype), idx)
        else:
            dx = g
        return [dx, dy, disconnected_type()]

    def R_op(self, inputs, eval_points):
        x, y, idx = inputs
        ux, uy = eval_points[0] if not self.mode.startswith("scatter") else None, eval_points[1]
        scatter = AdvancedScatter1 if self.mode == "inc" else AdvancedScatter1Set
        return [_write_tangent(self, scatter, x, ux, uy, [idx])]


@registered(name="ADVANCED_INC_SUBTENSOR1", code=411)
class AdvancedIncSubtensor1(_AdvancedWrite):
    __doc__ = _AdvancedWrite.__doc__
    mode = "inc"


@registered(name="ADVANCED_SET_SUBTENSOR1", code=412)
class AdvancedSetSubtensor1(_AdvancedWrite):
    __doc__ = _AdvancedWrite.__doc__
    mode = "set"


@registered(name="ADVANCED_SCATTER1", code=413)
class AdvancedScatter1(_AdvancedWrite):
    __doc__ = _AdvancedWrite.__doc__
    mode = "scatter"


@registered(name="ADVANCED_SCATTER1_SET", code=414)
class AdvancedScatter1Set(_AdvancedWrite):
    __doc__ = _AdvancedWrite.__doc__
    mode = "scatter_set"


# --------------------------------------------------------------------------- public functions
def getitem(x, index):
    """``x[index]`` (``Variable.__getitem__``): basic indexing, or one integer array on one axis.

    Basic entries: ints (static or 0-d int Variables; negative counts from the
    end), slices (bounds ints, None or 0-d int Variables), ``None`` (new axis)
    and ``...``.  One entry may be an integer array (a list, ndarray or int
    Variable of any rank), combined with slices, ``None`` and ``...`` but not
    with ints: the result is ``take`` along that axis, as NumPy.  Static
    out-of-range ints raise ``IndexError`` here, others when the graph runs.
    """
    x = as_tensor(x)
    entries, newaxes, bounds, advanced = _parse(x, index)
    trivial = not newaxes and all(e == _FULL for e in entries)
    if advanced is None:
        return Subtensor(entries, newaxes)(x, *bounds)
    axis, idx = advanced
    base = x if trivial else Subtensor(entries, newaxes)(x, *bounds)
    out = AdvancedSubtensor1(axis)(base, idx)
    if base is not x:
        out.tag["index_base"] = base  # lets inc_subtensor write through both steps
    return out


def take(x, indices, axis=None):
    """``np.take(x, indices, axis)``: ``axis=None`` indexes the flattened ``x``.

    A scalar index drops the axis (a basic index); an index array of any rank
    replaces it by the index's shape (``ADVANCED_SUBTENSOR1``).
    """
    x = as_tensor(x)
    if axis is None:
        if x.ndim != 1:
            x = x.flatten()
        axis = 0
    if not -x.ndim <= axis < max(x.ndim, 1) or x.ndim == 0:
        raise IndexError(f"take: axis {axis} is out of bounds for {x!r} with {x.ndim} dimension(s)")
    axis %= x.ndim
    if _static_int(indices) is not None or (isinstance(indices, Variable) and indices.ndim == 0):
        return getitem(x, (slice(None),) * axis + (indices,))
    idx = _as_index_array(indices)
    if idx.ndim == 0:
        return getitem(x, (slice(None),) * axis + (idx,))
    return AdvancedSubtensor1(axis)(x, idx)


_WRITES = {  # read op class -> (inc op, set op)
    Subtensor: (IncSubtensor, SetSubtensor),
    AdvancedSubtensor1: (AdvancedIncSubtensor1, AdvancedSetSubtensor1),
}


def inc_subtensor(x, y, inplace=False, set_instead_of_inc=False, tolerate_inplace_aliasing=False,
                  ignore_duplicates=False):
    """The variable indexed by ``x`` (``x`` must be ``v[idx]``) with ``y`` added at ``idx``.

    ``y`` broadcasts to ``x``'s shape.  Repeated integer indices accumulate,
    as ``np.add.at``; with ``ignore_duplicates=True`` they do not (NumPy's
    ``v[idx] += y``: ``set_subtensor(v[idx], v[idx] + y)``).  ``inplace`` and
    ``tolerate_inplace_aliasing`` are accepted for Aesara compatibility; the
    result is always a new variable.  As in Aesara, only the last indexing step
    is undone: ``inc_subtensor(v[1:][0], y)`` is ``v[1:]`` with ``y`` added at
    ``0``; ``v[1:, idx]`` (one indexing expression) writes back into ``v``.
    """
    what = "set_subtensor" if set_instead_of_inc else "inc_subtensor"
    node = x.owner if isinstance(x, Variable) else None
    if node is None or type(node.op) not in _WRITES:
        made_by = "an input or constant" if node is None else f"the op {node.op}"
        raise TypeError(
            f"{what}: the first argument must be the result of indexing a variable (e.g. v[1:3] or v[idx]); "
            f"got {x!r}, made by {made_by}"
        )
    if ignore_duplicates and not set_instead_of_inc and type(node.op) is AdvancedSubtensor1:
        return inc_subtensor(x, x + y, set_instead_of_inc=True)
    v = node.inputs[0]
    y = _coerce_y(v, y, what)
    inc_cls, set_cls = _WRITES[type(node.op)]
    cls = set_cls if set_instead_of_inc else inc_cls
    out = cls(*node.op._props())(v, y, *node.inputs[1:])
    if "index_base" in x.tag:  # v[basic, idx] was two steps: write the updated slab back into v
        return set_subtensor(x.tag["index_base"], out)
    return out


def set_subtensor(x, y, inplace=False, tolerate_inplace_aliasing=False):
    """The variable indexed by ``x`` (``x`` must be ``v[idx]``) with ``y`` written at ``idx``.

    ``y`` broadcasts to ``x``'s shape.  With repeated integer indices the last
    write wins (NumPy), and only that element of ``y`` receives a gradient.
    """
    return inc_subtensor(x, y, set_instead_of_inc=True)
