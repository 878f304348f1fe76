"""Array-creating, -repeating and -splitting ops: alloc (broadcast_to, full, zeros, ones), zeros_like,
ones_like, arange, eye, roll, repeat, tile, split, specify_shape.

``alloc``, ``roll``, ``repeat``, ``tile``, ``split`` and ``specify_shape`` are linear in their array input
(tangent = the op applied to the tangent; adjoint = its transpose:
``sum_like``, ``roll`` back, :class:`RepeatSum`, :class:`TileSum`, ``join``, itself).
``zeros_like``, ``ones_like``, ``arange`` and ``eye`` depend on no float
value: every gradient through them is disconnected.
"""

from __future__ import annotations

import numbers

import numpy as np

from tapegrad.config import config
from tapegrad.graph import Constant, Variable, as_tensor, constant, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, make_output
from tapegrad.ops.shape import (
    Join, _ShapeArgOp, _axis, _cast, _fmt, _gcast, _grad_dtype, _merge, _missing, _zeros, as_int_scalar,
    as_shape_vector, dimshuffle, flatten, static_entries, static_int, static_value,
)  # fmt: skip
from tapegrad.registry import registered

__all__ = [
    "alloc", "broadcast_to", "full", "zeros", "ones", "zeros_like", "ones_like", "arange", "eye", "roll",
    "repeat", "tile", "split", "specify_shape",
]  # fmt: skip


# --------------------------------------------------------------------------- alloc
@registered(name="ALLOC", code=306)
class Alloc(_ShapeArgOp):
    """``alloc(value, shape)``: ``value`` broadcast to ``shape`` (a fresh array), as ``np.broadcast_to``.

    Linear in ``value``: tangent ``alloc(u, shape)``; adjoint ``sum_like(g, value)``.
    The shape vector is not differentiated.
    """

    kind = "linear"

    def make_node(self, value, shp):
        value, shp = as_tensor(value), as_tensor(shp)
        entries = static_entries(shp) if shp.ndim == 1 else None
        if entries is None:
            raise ValueError(f"alloc: the shape {shp} must be an int vector of static length, got {shp.type}")
        nd, lead = len(entries), len(entries) - value.ndim
        if lead < 0:
            raise ValueError(f"alloc: cannot broadcast {value} of {value.type} to the shorter shape {_fmt(entries)}")
        out = []
        for a, e in enumerate(entries):
            if e is not None and e < 0:
                raise ValueError(f"alloc: negative length in shape {_fmt(entries)}")
            v = 1 if a < lead else value.type.shape[a - lead]
            if v is not None and v != 1 and e is not None and e != v:
                raise ValueError(
                    f"alloc: cannot broadcast {value} of static shape {_fmt(value.type.shape)} to shape {_fmt(entries)}"
                )
            out.append(e if e is not None else (v if v != 1 else None))
        return Apply(self, [value, shp], [make_output(value.dtype, out[:nd])])

    def perform(self, node, inputs, output_storage):
        value, shp = inputs
        shp = tuple(int(s) for s in np.ravel(shp))
        try:
            y = np.array(np.broadcast_to(value, shp), dtype=node.outputs[0].dtype)
        except ValueError:
            raise ValueError(
                f"alloc: cannot broadcast {node.inputs[0]} of shape {np.shape(value)} to shape {shp}"
            ) from None
        output_storage[0][0] = y

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.broadcast import sum_like

        value, _ = inputs
        (g,) = output_grads
        s, t = value.type.shape, outputs[0].type.shape
        if not (s == t and None not in s):
            g = sum_like(g, value)
        return [_gcast(g, value), disconnected_type()]


_alloc = Alloc()


def alloc(value, *shape):
    """Aesara's ``alloc(value, *shape)``: ``value`` broadcast to ``shape`` (ints or int scalars).

    ``alloc(value, (2, 3))`` and ``alloc(value, shape_vector)`` also work.
    """
    if len(shape) == 1 and (isinstance(shape[0], (tuple, list, np.ndarray)) or
                            (isinstance(shape[0], Variable) and shape[0].ndim == 1)):
        shape = shape[0]
    return _alloc(as_tensor(value), as_shape_vector(tuple(shape) if isinstance(shape, tuple) else shape, "alloc"))


def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` (``np.broadcast_to``, but a fresh array)."""
    return _alloc(as_tensor(x), as_shape_vector(shape, "broadcast_to"))


def _typed_scalar(value, dtype, opname):
    if isinstance(value, Variable):
        if value.ndim != 0 and opname != "full":
            raise ValueError(f"{opname}: the fill value must be a scalar, got {value}")
        return value if dtype is None else _cast(value, dtype)
    if dtype is None:
        return as_tensor(value)
    return constant(np.asarray(value, dtype=np.dtype(dtype).name))


def full(shape, fill_value, dtype=None):
    """An array of ``shape`` filled with ``fill_value`` (broadcast if it is an array), as ``np.full``."""
    return _alloc(_typed_scalar(fill_value, dtype, "full"), as_shape_vector(shape, "full"))


def zeros(shape, dtype=None):
    """An array of ``shape`` filled with 0 (dtype floatX by default)."""
    return full(shape, 0, dtype or config.floatX)


def ones(shape, dtype=None):
    """An array of ``shape`` filled with 1 (dtype floatX by default)."""
    return full(shape, 1, dtype or config.floatX)


# --------------------------------------------------------------------------- zeros_like / ones_like
class _FillLike(Op):
    """An array of ``x``'s run-time shape filled with ``fill`` in ``dtype``.  Disconnected from ``x``."""
    output_shape_of = 0  # output 0 has the run-time shape of input 0

    __props__ = ("dtype",)
    kind = "general"
    fill = 0

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, x):
        x = as_tensor(x)
        return Apply(self, [x], [make_output(self.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.full(np.shape(inputs[0]), self.fill, dtype=self.dtype)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]

    def connection_pattern(self, node):
        return [[False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type()]

    def R_op(self, inputs, eval_points):
        return [None]


@registered(name="ZEROS_LIKE", code=317)
class ZerosLike(_FillLike):
    fill = 0


@registered(name="ONES_LIKE", code=318)
class OnesLike(_FillLike):
    fill = 1


def zeros_like(x, dtype=None):
    """Zeros of ``x``'s shape and ``dtype`` (default ``x``'s).  Its gradient w.r.t. ``x`` is disconnected."""
    x = as_tensor(x)
    return ZerosLike(dtype or x.dtype)(x)


def ones_like(x, dtype=None):
    """Ones of ``x``'s shape and ``dtype`` (default ``x``'s).  Its gradient w.r.t. ``x`` is disconnected."""
    x = as_tensor(x)
    return OnesLike(dtype or x.dtype)(x)


# --------------------------------------------------------------------------- arange, eye
@registered(name="ARANGE", code=315)
class Arange(Op):
    """``arange(start, stop, step)`` in ``dtype`` (three scalar inputs).  Disconnected from all of them."""

    __props__ = ("dtype",)
    kind = "general"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, start, stop, step):
        ins = [as_tensor(v) for v in (start, stop, step)]
        for v in ins:
            if v.ndim != 0 or v.dtype == "bool":
                raise TypeError(f"arange: start, stop and step must be numeric scalars, got {v} of {v.type}")
        vals = [static_value(v) for v in ins]
        length = None
        if vals[2] is not None and vals[2] == 0:
            raise ValueError("arange: step must not be 0")
        if all(v is not None for v in vals):
            length = len(np.arange(*[v.item() for v in vals], dtype=self.dtype))
        return Apply(self, ins, [make_output(self.dtype, (length,))])

    def perform(self, node, inputs, output_storage):
        start, stop, step = (np.asarray(v).item() for v in inputs)
        if step == 0:
            raise ValueError("arange: step must not be 0")
        output_storage[0][0] = np.arange(start, stop, step, dtype=self.dtype)

    def infer_shape(self, node, input_shapes):
        if node.outputs[0].type.shape[0] is None:
            raise NotImplementedError("arange: the length depends on the values of start, stop and step")
        return [node.outputs[0].type.shape]

    def connection_pattern(self, node):
        return [[False], [False], [False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type() for _ in inputs]

    def R_op(self, inputs, eval_points):
        return [None]


def arange(start, stop=None, step=1, dtype=None):
    """``np.arange``: values ``start, start + step, ...`` below ``stop`` (scalars, possibly symbolic).

    The default dtype is int64 for integer arguments, else the promoted float
    dtype (floatX when every argument is a Python number).
    """
    from tapegrad.ops.elemwise import upcast

    if stop is None:
        start, stop = 0, start
    ins = [as_tensor(v) for v in (start, stop, step)]
    if dtype is None:
        dtype = upcast(*ins)
        if is_float_dtype(dtype) and all(isinstance(v, Constant) and v.weak is not None for v in ins):
            dtype = config.floatX
        elif not is_float_dtype(dtype):
            dtype = "int64" if dtype != "int32" else dtype
    return Arange(dtype)(*ins)


@registered(name="EYE", code=316)
class Eye(Op):
    """``eye(n, m, k)``: ones on the ``k``-th diagonal of an ``n x m`` matrix (int scalar inputs).  Disconnected."""

    __props__ = ("dtype",)
    kind = "general"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name

    def make_node(self, n, m, k):
        ins = [as_int_scalar(v, "eye", "n, m and k") for v in (n, m, k)]
        shp = tuple(static_int(v) for v in ins[:2])
        if any(s is not None and s < 0 for s in shp):
            raise ValueError(f"eye: negative dimensions {_fmt(shp)}")
        return Apply(self, ins, [make_output(self.dtype, shp)])

    def perform(self, node, inputs, output_storage):
        n, m, k = (int(v) for v in inputs)
        output_storage[0][0] = np.eye(n, m, k, dtype=self.dtype)

    def infer_shape(self, node, input_shapes):
        if None in node.outputs[0].type.shape:
            raise NotImplementedError("eye: the shape depends on the values of n and m")
        return [node.outputs[0].type.shape]

    def connection_pattern(self, node):
        return [[False], [False], [False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type() for _ in inputs]

    def R_op(self, inputs, eval_points):
        return [None]


def eye(n, m=None, k=0, dtype=None):
    """An ``n x m`` matrix (``m`` defaults to ``n``) with ones on diagonal ``k`` (dtype floatX by default)."""
    n = as_int_scalar(n, "eye", "n")
    return Eye(dtype or config.floatX)(n, n if m is None else m, k)


# --------------------------------------------------------------------------- roll
@registered(name="ROLL", code=310)
class Roll(Op):
    """``roll(x, shift, axis)`` (``axis=None`` rolls the flattened array), as ``np.roll``.

    Linear: tangent ``roll(u, shift)``; adjoint ``roll(g, -shift)``.  ``shift`` is an int64 scalar input.
    """

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis):
        self.axis = None if axis is None else int(axis)

    def make_node(self, x, shift):
        x, shift = as_tensor(x), as_int_scalar(shift, "roll", "shift")
        if self.axis is not None and not 0 <= self.axis < x.ndim:
            raise ValueError(f"roll: axis {self.axis} is out of bounds for {x} with {x.ndim} dimension(s)")
        return Apply(self, [x, shift], [make_output(x.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x, shift = inputs
        output_storage[0][0] = np.array(np.roll(x, int(shift), axis=self.axis), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.elemwise import neg

        x, shift = inputs
        return [_gcast(self(output_grads[0], neg(shift)), x), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


def roll(x, shift, axis=None):
    """Elements of ``x`` shifted by ``shift`` (int or int scalar) along ``axis``; they wrap around.  As in
    NumPy, ``shift`` and ``axis`` may be tuples (broadcast against each other): one roll per pair."""
    x = as_tensor(x)
    if isinstance(axis, (list, tuple)) or isinstance(shift, (list, tuple)):
        if axis is None:
            raise ValueError("roll: a tuple shift needs an axis for each entry (NumPy rolls the flattened array "
                             "by their sum; pass axis=...)")
        shifts = list(shift) if isinstance(shift, (list, tuple)) else [shift]
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if len(shifts) == 1:
            shifts = shifts * len(axes)
        if len(axes) == 1:
            axes = axes * len(shifts)
        if len(shifts) != len(axes):
            raise ValueError(f"roll: shift {shift!r} and axis {axis!r} do not broadcast")
        for sh, ax in zip(shifts, axes):
            x = roll(x, sh, ax)
        return x
    if axis is not None:
        axis = _axis(axis, x.ndim, "roll")
    return Roll(axis)(x, shift)


# --------------------------------------------------------------------------- repeat
def _repeats_input(repeats):
    if isinstance(repeats, (numbers.Integral, np.integer)) and not isinstance(repeats, bool):
        return constant(np.asarray(repeats, dtype="int64"))
    r = as_tensor(repeats) if isinstance(repeats, Variable) else constant(np.asarray(repeats, dtype="int64"))
    if r.ndim > 1 or is_float_dtype(r.dtype) or r.dtype == "bool":
        raise TypeError(f"repeat: repeats must be an int or an int vector, got {r} of {r.type}")
    return r if r.dtype == "int64" else _cast(r, "int64")


@registered(name="REPEAT", code=311)
class Repeat(Op):
    """``repeat(x, repeats, axis)`` as ``np.repeat`` (``repeats``: int64 scalar or vector input).

    Linear: tangent ``repeat(u)``; adjoint :class:`RepeatSum` (sums each group of copies).
    """

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis):
        self.axis = int(axis)

    def make_node(self, x, repeats):
        x, r = as_tensor(x), _repeats_input(repeats)
        if not 0 <= self.axis < x.ndim:
            raise ValueError(f"repeat: axis {self.axis} is out of bounds for {x} with {x.ndim} dimension(s)")
        n = x.type.shape[self.axis]
        val = static_value(r)
        if val is not None and np.any(val < 0):
            raise ValueError(f"repeat: negative repeats {val.tolist()}")
        if r.ndim == 1 and r.type.shape[0] is not None and n is not None and r.type.shape[0] not in (1, n):
            raise ValueError(
                f"repeat: {r.type.shape[0]} repeats for {x} of static shape {_fmt(x.type.shape)} "
                f"(length {n} on axis {self.axis})"
            )
        length = None
        if val is not None:
            if val.size == 1 and n is not None:
                length = n * int(val.ravel()[0])
            elif val.ndim == 1 and val.size != 1:
                if n is not None and val.size != n:
                    raise ValueError(f"repeat: {val.size} repeats for {x} of length {n} on axis {self.axis}")
                length = int(val.sum())
        out = list(x.type.shape)
        out[self.axis] = length
        return Apply(self, [x, r], [make_output(x.dtype, out)])

    def perform(self, node, inputs, output_storage):
        x, r = inputs
        try:
            y = np.repeat(x, r, axis=self.axis)
        except ValueError:
            raise ValueError(
                f"repeat: cannot repeat {node.inputs[0]} of shape {np.shape(x)} by {np.asarray(r).tolist()} "
                f"along axis {self.axis}"
            ) from None
        output_storage[0][0] = np.array(y, dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        if None in node.outputs[0].type.shape:
            raise NotImplementedError("repeat: the output length depends on the values of repeats")
        return [node.outputs[0].type.shape]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        x, r = inputs
        return [_gcast(RepeatSum(self.axis)(output_grads[0], r, x), x), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


@registered(name="REPEAT_SUM", code=312)
class RepeatSum(Op):
    """``repeat_sum(g, repeats, x)``: the transpose of ``repeat`` -- sums each run of copies of ``g``
    back to one element, giving ``x``'s shape (``x`` is only a shape reference).

    Linear in ``g``: tangent ``repeat_sum(u)``; adjoint ``repeat(g)``.
    """

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis):
        self.axis = int(axis)

    def make_node(self, g, repeats, x):
        g, r, x = as_tensor(g), _repeats_input(repeats), as_tensor(x)
        if g.ndim != x.ndim or not 0 <= self.axis < x.ndim:
            raise ValueError(f"repeat_sum: {g} and {x} must have the same number of dimensions (axis {self.axis})")
        out = [x.type.shape[a] if a == self.axis else _merge(x.type.shape[a], g.type.shape[a], (
            f"repeat_sum: static shapes {_fmt(g.type.shape)} and {_fmt(x.type.shape)} differ on axis {a}"))
            for a in range(x.ndim)]
        return Apply(self, [g, r, x], [make_output(g.dtype, out)])

    def perform(self, node, inputs, output_storage):
        g, r, x = inputs
        n = np.shape(x)[self.axis]
        idx = np.repeat(np.arange(n), r)
        gm = np.moveaxis(np.asarray(g), self.axis, 0)
        if len(idx) != gm.shape[0]:
            raise ValueError(f"repeat_sum: {node.inputs[0]} of shape {np.shape(g)} does not match the repeats")
        out = np.zeros((n,) + gm.shape[1:], dtype=node.outputs[0].dtype)
        np.add.at(out, idx, gm)
        output_storage[0][0] = np.ascontiguousarray(np.moveaxis(out, 0, self.axis))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[2])]

    def connection_pattern(self, node):
        return [[True], [False], [False]]

    def L_op(self, inputs, outputs, output_grads):
        g, r, _ = inputs
        return [_gcast(Repeat(self.axis)(output_grads[0], r), g), disconnected_type(), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1], inputs[2])]


def repeat(x, repeats, axis=None):
    """Each element of ``x`` repeated ``repeats`` times (int or int vector) along ``axis`` (None: flattened)."""
    x = as_tensor(x)
    if axis is None:
        x, axis = flatten(x, 1), 0
    return Repeat(_axis(axis, x.ndim, "repeat"))(x, repeats)


# --------------------------------------------------------------------------- tile
@registered(name="TILE", code=313)
class Tile(Op):
    """``tile(x, reps)`` with ``len(reps) == x.ndim``, as ``np.tile``.

    Linear: tangent ``tile(u)``; adjoint :class:`TileSum` (sums the tiles).
    """

    __props__ = ("reps",)
    kind = "linear"

    def __init__(self, reps):
        self.reps = tuple(int(r) for r in reps)
        if any(r < 0 for r in self.reps):
            raise ValueError(f"tile: negative reps {self.reps}")

    def make_node(self, x):
        x = as_tensor(x)
        if x.ndim != len(self.reps):
            raise ValueError(f"tile: reps {self.reps} must have one entry per dimension of {x} ({x.ndim})")
        out = [0 if r == 0 else (None if n is None else n * r) for n, r in zip(x.type.shape, self.reps)]
        return Apply(self, [x], [make_output(x.dtype, out)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.array(np.tile(inputs[0], self.reps), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [tuple(n * r for n, r in zip(input_shapes[0], self.reps))]

    def L_op(self, inputs, outputs, output_grads):
        (x,) = inputs
        return [_gcast(TileSum(self.reps)(output_grads[0], x), x)]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u)]


@registered(name="TILE_SUM", code=314)
class TileSum(Op):
    """``tile_sum(g, x)``: the transpose of ``tile`` -- the sum of ``g``'s tiles, in ``x``'s shape.

    Linear in ``g`` (``x`` is only a shape reference): tangent ``tile_sum(u)``; adjoint ``tile(g)``.
    """

    __props__ = ("reps",)
    kind = "linear"

    def __init__(self, reps):
        self.reps = tuple(int(r) for r in reps)

    def make_node(self, g, x):
        g, x = as_tensor(g), as_tensor(x)
        if g.ndim != len(self.reps) or x.ndim != len(self.reps):
            raise ValueError(f"tile_sum: reps {self.reps} must match the dimensions of {g} and {x}")
        return Apply(self, [g, x], [make_output(g.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        g, x = np.asarray(inputs[0]), inputs[1]
        inter = [d for r, n in zip(self.reps, np.shape(x)) for d in (r, n)]
        y = g.reshape(inter).sum(axis=tuple(range(0, 2 * g.ndim, 2))) if g.ndim else g
        output_storage[0][0] = np.array(y, dtype=node.outputs[0].dtype).reshape(np.shape(x))

    def infer_shape(self, node, input_shapes):
        return [tuple(input_shapes[1])]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        g, _ = inputs
        return [_gcast(Tile(self.reps)(output_grads[0]), g), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


def tile(x, reps):
    """``x`` repeated ``reps`` times along each axis (``np.tile``; ``reps`` constant ints)."""
    x = as_tensor(x)
    if isinstance(reps, (numbers.Integral, np.integer, Variable)):
        reps = (reps,)
    vals = []
    for r in reps:
        v = static_int(r) if isinstance(r, Variable) else r
        if v is None or not isinstance(v, (numbers.Integral, np.integer)) or isinstance(v, bool):
            raise TypeError(f"tile: reps must be constant ints, got {r!r}")
        vals.append(int(v))
    if len(vals) > x.ndim:
        x = dimshuffle(x, ("x",) * (len(vals) - x.ndim) + tuple(range(x.ndim)))
    vals = [1] * (x.ndim - len(vals)) + vals
    return Tile(vals)(x)


# --------------------------------------------------------------------------- split
@registered(name="SPLIT", code=305)
class Split(Op):
    """``split(x, splits_size, n_splits, axis)``: ``n_splits`` consecutive pieces along ``axis``.

    Inputs ``x`` and the int vector of piece lengths (must sum to the axis length).
    Linear: tangent splits ``u``; adjoint joins the cotangents (zeros for unused pieces).
    """

    __props__ = ("n_splits", "axis")
    kind = "linear"

    def __init__(self, n_splits, axis):
        self.n_splits = int(n_splits)
        self.axis = int(axis)
        if self.n_splits < 1:
            raise ValueError(f"split: n_splits must be at least 1, got {n_splits}")

    def make_node(self, x, splits):
        x, splits = as_tensor(x), as_tensor(splits)
        if not 0 <= self.axis < x.ndim:
            raise ValueError(f"split: axis {self.axis} is out of bounds for {x} with {x.ndim} dimension(s)")
        if splits.ndim != 1 or is_float_dtype(splits.dtype) or splits.dtype == "bool":
            raise TypeError(f"split: splits_size must be an int vector, got {splits} of {splits.type}")
        entries = static_entries(splits) or (None,) * self.n_splits
        if len(entries) != self.n_splits:
            raise ValueError(f"split: n_splits={self.n_splits} but splits_size has {len(entries)} entries")
        if any(e is not None and e < 0 for e in entries):
            raise ValueError(f"split: negative piece length in splits_size {_fmt(entries)}")
        n = x.type.shape[self.axis]
        if n is not None and None not in entries and sum(entries) != n:
            raise ValueError(
                f"split: splits_size {_fmt(entries)} sums to {sum(entries)} but {x} of static shape "
                f"{_fmt(x.type.shape)} has length {n} on axis {self.axis}"
            )
        outs = []
        for e in entries:
            s = list(x.type.shape)
            s[self.axis] = e
            outs.append(make_output(x.dtype, s))
        return Apply(self, [x, splits], outs)

    def perform(self, node, inputs, output_storage):
        x, sizes = np.asarray(inputs[0]), [int(s) for s in np.ravel(inputs[1])]
        n = x.shape[self.axis]
        if not self._fits(sizes, n):
            raise ValueError(
                f"split: splits_size {sizes} must have {self.n_splits} non-negative entries summing to the "
                f"length {n} of axis {self.axis} of {node.inputs[0]} (shape {x.shape})"
            )
        bounds = np.cumsum(sizes)[:-1]
        for st, piece in zip(output_storage, np.split(x, bounds, axis=self.axis)):
            st[0] = np.array(piece, dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        out = [o.type.shape for o in node.outputs]
        if any(None in s for s in out):
            raise NotImplementedError("split: output shapes depend on the value of splits_size")
        return out

    def _fits(self, sizes, n):
        """``sizes`` are ``n_splits`` non-negative piece lengths summing to the axis length ``n``."""
        return len(sizes) == self.n_splits and all(s >= 0 for s in sizes) and sum(sizes) == n

    def infer_shape_values(self, node, input_shapes, input_values):
        """Output shapes when the piece lengths are known before the run (the CPU engine's plan knows
        ``stack(shape_i(a), shape_i(b))``, the sizes in a ``join``'s gradient), else None."""
        sizes = input_values[1]
        if sizes is None:
            return None
        sizes = [int(n) for n in np.ravel(sizes)]
        shape = tuple(input_shapes[0])
        if not self._fits(sizes, shape[self.axis]):
            return None  # the run raises perform's error
        return [shape[:self.axis] + (n,) + shape[self.axis + 1:] for n in sizes]

    def connection_pattern(self, node):
        return [[True] * self.n_splits, [False] * self.n_splits]

    def L_op(self, inputs, outputs, output_grads):
        x, _ = inputs
        dt = _grad_dtype(x)
        gs = [_zeros(o, dt) if _missing(g) else _cast(g, dt) for o, g in zip(outputs, output_grads)]
        g = gs[0] if len(gs) == 1 else Join(self.axis)(*gs)
        return [g, disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        if u is None:
            return [None] * self.n_splits
        return list(self.make_node(u, inputs[1]).outputs)


def split(x, splits_size, n_splits, axis=0):
    """Aesara's split: ``x`` cut along ``axis`` into ``n_splits`` pieces of lengths ``splits_size``.

    Returns a list of ``n_splits`` Variables (also when ``n_splits == 1``).
    """
    x = as_tensor(x)
    if x.ndim == 0:
        raise ValueError(f"split: cannot split the zero-dimensional {x}")
    sizes = as_shape_vector(splits_size, "split")
    return list(Split(n_splits, _axis(axis, x.ndim, "split")).make_node(x, sizes).outputs)


# --------------------------------------------------------------------------- specify_shape
@registered(name="SPECIFY_SHAPE", code=309)
class SpecifyShape(Op):
    """``specify_shape(x, shape)``: ``x`` unchanged, its shape checked at run time (-1 = not checked).

    Refines the static shape.  Linear (identity): tangent and adjoint are ``specify_shape`` of them.
    """

    kind = "linear"

    def make_node(self, x, shp):
        x, shp = as_tensor(x), as_tensor(shp)
        entries = static_entries(shp) if shp.ndim == 1 else None
        if entries is None or len(entries) != x.ndim:
            raise ValueError(f"specify_shape: {x} has {x.ndim} dimension(s); the shape {shp} must have as many")
        out = []
        for a, (n, e) in enumerate(zip(x.type.shape, entries)):
            e = None if e is None or e < 0 else e
            out.append(_merge(n, e, f"specify_shape: {x} has static shape {_fmt(x.type.shape)}, "
                                    f"which contradicts the specified shape {_fmt(entries)} on axis {a}"))
        return Apply(self, [x, shp], [make_output(x.dtype, out)])

    def perform(self, node, inputs, output_storage):
        x, shp = np.asarray(inputs[0]), [int(s) for s in np.ravel(inputs[1])]
        if len(shp) != x.ndim or any(e >= 0 and e != n for e, n in zip(shp, x.shape)):
            want = tuple(None if e < 0 else e for e in shp)
            raise ValueError(f"specify_shape: {node.inputs[0]} has shape {x.shape}, expected {_fmt(want)}")
        output_storage[0][0] = np.array(x, dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]

    def connection_pattern(self, node):
        return [[True], [False]]

    def L_op(self, inputs, outputs, output_grads):
        return [_gcast(self(output_grads[0], inputs[1]), inputs[0]), disconnected_type()]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


def specify_shape(x, shape):
    """``x``, with its shape asserted to be ``shape`` (ints, int scalars or None = any length)."""
    x = as_tensor(x)
    return SpecifyShape()(x, as_shape_vector(shape, "specify_shape", allow_none=True))
