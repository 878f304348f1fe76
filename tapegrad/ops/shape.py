"""Shape ops: reshape, flatten, dimshuffle (transpose, expand_dims, squeeze), join, stack,
shape, shape_i (split and specify_shape are in :mod:`tapegrad.ops.alloc`).

Every op here that moves array data is *linear* in its array input: the
tangent is the op applied to the tangent, the adjoint is its transpose
(reshape <-> reshape back, dimshuffle <-> inverse dimshuffle, join <-> split,
stack <-> split + drop axis).  Shape arguments are int vectors (or scalars),
never differentiated: their connection is ``False``.

Shape arguments may be Python ints, symbolic int scalars (``shape_i(x, 0)``,
``x.shape[0]``) or int vectors (``x.shape``).  Whatever is known at graph
construction -- constants, static lengths behind ``shape``/``shape_i``, small
constant expressions of those -- is folded into the outputs' static shapes
(:func:`static_value`).
"""

from __future__ import annotations

import numbers

import numpy as np

from tapegrad.config import config
from tapegrad.graph import Constant, Variable, as_tensor, constant, is_float_dtype
from tapegrad.op import Apply, Op, disconnected_type, is_disconnected, is_null, make_output
from tapegrad.registry import registered

__all__ = [
    "reshape", "flatten", "dimshuffle", "transpose", "expand_dims", "squeeze", "concatenate", "join", "stack",
    "shape", "shape_i",
]  # fmt: skip


# --------------------------------------------------------------------------- helpers
def _fmt(shape):
    shape = tuple(shape)
    return "(" + ", ".join("?" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _prod(lengths):
    """Product of static lengths: None when unknown, except that a known 0 wins."""
    lengths = tuple(lengths)
    if 0 in lengths:
        return 0
    if None in lengths:
        return None
    return int(np.prod(lengths, dtype=np.int64))


def _merge(a, b, message):
    """Two static lengths of the same axis: the known one; ``ValueError(message)`` if they differ."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    raise ValueError(message)


def _grad_dtype(x):
    """Gradient dtype of input ``x``: its own when float, else floatX."""
    return x.dtype if is_float_dtype(x.dtype) else config.floatX


def _tangent_dtype(y):
    return y.dtype if is_float_dtype(y.dtype) else config.floatX


def _cast(v, dtype):
    from tapegrad.ops.elemwise import cast

    return cast(v, dtype)


def _gcast(g, x):
    """``g`` cast to the gradient dtype of ``x``."""
    return _cast(g, _grad_dtype(x))


def _missing(g):
    return g is None or is_disconnected(g) or is_null(g)


def _zeros(ref, dtype):
    from tapegrad.ops.alloc import zeros_like

    return zeros_like(ref, dtype=dtype)


def _axis(axis, ndim, opname):
    """One axis, normalised to ``0 <= axis < ndim``."""
    if isinstance(axis, Constant):
        axis = axis.data.item()
    if isinstance(axis, Variable):
        raise TypeError(f"{opname}: axis must be a constant int, got the symbolic {axis}")
    if not isinstance(axis, (numbers.Integral, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{opname}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{opname}: axis {axis} is out of bounds for an array of {ndim} dimension(s)")
    return int(axis) % ndim


# --------------------------------------------------------------------------- static folding of int arguments
_FOLD_LIMIT = 64


def static_value(v):
    """The value of the int Variable ``v`` if it is known at graph construction, else None.

    Known: Constants, ``shape(x)`` / ``shape_i(x, i)`` where ``x``'s static
    lengths are known, and small expressions of those (at most ``_FOLD_LIMIT``
    ops, evaluated with the reference engine).
    """
    if isinstance(v, Constant):
        return v.data
    if not isinstance(v, Variable) or v.owner is None or is_float_dtype(v.dtype):
        return None
    subs, stack, seen, count = {}, [v], set(), 0
    while stack:
        w = stack.pop()
        if id(w) in seen or isinstance(w, Constant):
            continue
        seen.add(id(w))
        node = w.owner
        if node is None:
            return None
        if isinstance(node.op, (Shape, ShapeI)):
            known = node.op.static_of(node.inputs[0])
            if known is None:
                return None
            subs[w] = known
            continue
        count += 1
        if count > _FOLD_LIMIT:
            return None
        stack.extend(node.inputs)
    if v in subs:
        return subs[v]
    from tapegrad.compile.reference import evaluate

    try:
        with np.errstate(all="ignore"):
            return np.asarray(evaluate([v], subs)[0])
    except Exception:  # noqa: BLE001 - an unfoldable expression is simply not static
        return None


def static_int(v):
    """``static_value`` of a 0-d int Variable as a Python int, or None."""
    val = static_value(v)
    return None if val is None or np.ndim(val) != 0 else int(val)


def static_entries(vec):
    """Static value of each entry of the int vector ``vec`` (None = unknown); None if its length is unknown."""
    val = static_value(vec)
    if val is not None:
        return tuple(int(e) for e in np.ravel(val))
    node = vec.owner
    if node is not None:
        if isinstance(node.op, Stack) and all(x.ndim == 0 for x in node.inputs):
            return tuple(static_int(x) for x in node.inputs)
        if isinstance(node.op, Shape):
            return node.inputs[0].type.shape
        if type(node.op).__name__ == "Cast" and not is_float_dtype(node.inputs[0].dtype):
            return static_entries(node.inputs[0])
    n = vec.type.shape[0]
    return None if n is None else (None,) * n


def _check_int(v, opname, what):
    if is_float_dtype(v.dtype) or v.dtype == "bool":
        raise TypeError(f"{opname}: {what} must be integers, got {v} of dtype {v.dtype}")
    return v if v.dtype == "int64" else _cast(v, "int64")


def as_int_scalar(v, opname, what="the argument"):
    """``v`` (int or 0-d int Variable) as an int64 0-d Variable."""
    if isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool):
        return constant(np.asarray(v, dtype="int64"))
    v = as_tensor(v)
    if v.ndim != 0:
        raise ValueError(f"{opname}: {what} must be a scalar, got {v} with {v.ndim} dimension(s)")
    return _check_int(v, opname, what)


def as_shape_vector(shp, opname, allow_none=False):
    """A shape argument (int, sequence of ints / int scalars, or int vector) as an int64 vector Variable.

    ``None`` entries (only where ``allow_none``) become ``-1``.
    """
    if isinstance(shp, (numbers.Integral, np.integer)) and not isinstance(shp, bool):
        shp = (shp,)
    if isinstance(shp, (Variable, np.ndarray)):
        v = as_tensor(shp)
        if v.ndim == 0:
            v = stack([v])
        elif v.ndim != 1:
            raise ValueError(f"{opname}: a shape must be a vector, got {v} with {v.ndim} dimensions")
        return _check_int(v, opname, "shape entries")
    if not isinstance(shp, (tuple, list)):
        raise TypeError(f"{opname}: a shape must be a tuple of ints or an int vector, got {shp!r}")
    items = []
    for e in shp:
        if e is None and allow_none:
            e = -1
        if isinstance(e, Constant) and e.ndim == 0 and not is_float_dtype(e.dtype):
            e = int(e.data)
        if isinstance(e, (bool, np.bool_)) or e is None or isinstance(e, (float, np.floating)):
            raise TypeError(f"{opname}: shape entries must be ints, got {e!r} in {shp!r}")
        items.append(e)
    if all(isinstance(e, (numbers.Integral, np.integer)) for e in items):
        return constant(np.asarray(items, dtype="int64").reshape(len(items)))
    return stack([as_int_scalar(e, opname, "shape entries") for e in items])


# --------------------------------------------------------------------------- shape, shape_i
@registered(name="SHAPE", code=307)
class Shape(Op):
    """``shape(x)``: the run-time shape of ``x`` as an int64 vector.  Not differentiable (disconnected)."""

    kind = "general"

    def make_node(self, x):
        x = as_tensor(x)
        return Apply(self, [x], [make_output("int64", (x.ndim,))])

    @staticmethod
    def static_of(x):
        return None if None in x.type.shape else np.asarray(x.type.shape, dtype="int64").reshape(x.ndim)

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.asarray(np.shape(inputs[0]), dtype="int64").reshape(-1)

    def infer_shape(self, node, input_shapes):
        return [(len(input_shapes[0]),)]

    def connection_pattern(self, node):
        return [[False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type()]

    def R_op(self, inputs, eval_points):
        return [None]


@registered(name="SHAPE_I", code=308)
class ShapeI(Op):
    """``shape_i(x, i)``: the run-time length of axis ``i`` of ``x`` (int64 scalar).  Disconnected."""

    __props__ = ("i",)
    kind = "general"

    def __init__(self, i):
        self.i = int(i)

    def make_node(self, x):
        x = as_tensor(x)
        if not 0 <= self.i < x.ndim:
            raise ValueError(f"shape_i: axis {self.i} is out of bounds for {x} with {x.ndim} dimension(s)")
        return Apply(self, [x], [make_output("int64", ())])

    def static_of(self, x):
        n = x.type.shape[self.i]
        return None if n is None else np.asarray(n, dtype="int64")

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.asarray(np.shape(inputs[0])[self.i], dtype="int64")

    def infer_shape(self, node, input_shapes):
        return [()]

    def connection_pattern(self, node):
        return [[False]]

    def L_op(self, inputs, outputs, output_grads):
        return [disconnected_type()]

    def R_op(self, inputs, eval_points):
        return [None]


_shape_op = Shape()


def shape(x):
    """The shape of ``x`` as a symbolic int64 vector (``x.shape``); ``shape(x)[i]`` indexes it."""
    return _shape_op(as_tensor(x))


def shape_i(x, i):
    """Length of axis ``i`` of ``x`` as a symbolic int64 scalar (static when ``x``'s length is)."""
    x = as_tensor(x)
    return ShapeI(_axis(i, x.ndim, "shape_i"))(x)


def shape_vector_of(x):
    """``x``'s shape as an int64 vector: a Constant when fully static, else ``shape(x)``."""
    val = Shape.static_of(x)
    return constant(val) if val is not None else shape(x)


# --------------------------------------------------------------------------- reshape, flatten
def _reshape_static(x, entries, opname="reshape"):
    """Output static shape of reshaping ``x`` to ``entries`` (ints, -1, None); ValueError on contradictions."""
    entries = list(entries)
    size = _prod(x.type.shape) if None not in x.type.shape else None

    def fail(why):
        raise ValueError(
            f"{opname}: cannot reshape {x} of static shape {_fmt(x.type.shape)} (size {size}) into shape "
            f"{_fmt(entries)}: {why}"
        )

    if any(e is not None and e < -1 for e in entries):
        fail("negative length")
    if entries.count(-1) > 1:
        fail("can only specify one unknown dimension (-1)")
    known = [e for e in entries if e is not None and e != -1]
    kprod = int(np.prod(known, dtype=np.int64)) if known else 1
    out = list(entries)
    if -1 in entries:
        i = entries.index(-1)
        out[i] = None
        if size is not None:
            if kprod == 0 or size % kprod:
                fail("the sizes do not match")
            if None not in entries:
                out[i] = size // kprod
    elif size is not None:
        unknown = [i for i, e in enumerate(entries) if e is None]
        if (kprod == 0 and size != 0) or (kprod and size % kprod) or (not unknown and kprod != size):
            fail("the sizes do not match")
        if len(unknown) == 1 and kprod:
            out[unknown[0]] = size // kprod
    return tuple(out)


class _ShapeArgOp(Op):
    """Base of the ops ``f(x, shape)`` whose second input is an int shape vector (``reshape``, ``alloc``).

    The output's static shape is known only where the shape argument folds to constants; no
    gradient flows to the shape argument; linear in ``x`` (tangent ``f(u, shape)``).
    """

    def infer_shape(self, node, input_shapes):
        out = node.outputs[0].type.shape
        if None in out:
            raise NotImplementedError(f"{self.code.lower()}: the output shape depends on the shape argument's value")
        return [out]

    def connection_pattern(self, node):
        return [[True], [False]]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u, inputs[1])]


@registered(name="RESHAPE", code=300)
class Reshape(_ShapeArgOp):
    """``reshape(x, shape)`` with ``shape`` an int64 vector of length ``ndim`` (one entry may be -1).

    Linear: tangent ``reshape(u, shape)``; adjoint ``reshape(g, shape(x))``.
    """

    __props__ = ("ndim",)
    kind = "linear"

    def __init__(self, ndim):
        self.ndim = int(ndim)

    def make_node(self, x, shp):
        x, shp = as_tensor(x), as_tensor(shp)
        if shp.ndim != 1 or is_float_dtype(shp.dtype) or shp.dtype == "bool":
            raise TypeError(f"reshape: the shape must be an int vector, got {shp} of type {shp.type}")
        if shp.type.shape[0] not in (None, self.ndim):
            raise ValueError(f"reshape: ndim={self.ndim} but the shape {shp} has {shp.type.shape[0]} entries")
        entries = static_entries(shp) or (None,) * self.ndim
        return Apply(self, [x, shp], [make_output(x.dtype, _reshape_static(x, entries))])

    def perform(self, node, inputs, output_storage):
        x, shp = inputs
        shp = tuple(int(s) for s in np.ravel(shp))
        if len(shp) != self.ndim:
            raise ValueError(f"reshape: expected a shape with {self.ndim} entries, got {shp}")
        try:
            y = np.array(np.reshape(x, shp), dtype=node.outputs[0].dtype)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape {node.inputs[0]} of shape {np.shape(x)} into shape {shp}"
            ) from None
        output_storage[0][0] = y

    def L_op(self, inputs, outputs, output_grads):
        x, _ = inputs
        g = Reshape(x.ndim)(output_grads[0], shape_vector_of(x))
        return [_gcast(g, x), disconnected_type()]


def reshape(x, shape, ndim=None):
    """``x`` with a new shape (NumPy ``reshape``; one entry may be -1).

    Parameters
    ----------
    x : Variable
    shape : int, tuple/list of ints and int scalars, or an int vector Variable
    ndim : int, optional
        Number of output dimensions; needed when ``shape`` is a vector of unknown length.
    """
    x = as_tensor(x)
    shp = as_shape_vector(shape, "reshape")
    n = shp.type.shape[0]
    if ndim is None:
        if n is None:
            raise ValueError(f"reshape: the length of the shape {shp} is unknown; pass ndim=")
        ndim = n
    elif n is not None and n != ndim:
        raise ValueError(f"reshape: ndim={ndim} but the shape {shp} has {n} entries")
    return Reshape(ndim)(x, shp)


@registered(name="FLATTEN", code=301)
class Flatten(Op):
    """``flatten(x, ndim)``: keep the first ``ndim - 1`` axes, flatten the rest into one (Aesara).

    Linear: tangent ``flatten(u)``; adjoint ``reshape(g, shape(x))``.
    """

    __props__ = ("ndim",)
    kind = "linear"

    def __init__(self, ndim):
        self.ndim = int(ndim)

    def make_node(self, x):
        x = as_tensor(x)
        if self.ndim < 1 or (self.ndim > 1 and self.ndim > x.ndim):
            raise ValueError(f"flatten: ndim={self.ndim} must be between 1 and {max(x.ndim, 1)} for {x} of {x.type}")
        keep = x.type.shape[: self.ndim - 1]
        return Apply(self, [x], [make_output(x.dtype, keep + (_prod(x.type.shape[self.ndim - 1 :]),))])

    def _out_shape(self, shp):
        return tuple(shp[: self.ndim - 1]) + (int(np.prod(shp[self.ndim - 1 :], dtype=np.int64)),)

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        output_storage[0][0] = np.array(x.reshape(self._out_shape(x.shape)), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        return [self._out_shape(input_shapes[0])]

    def L_op(self, inputs, outputs, output_grads):
        (x,) = inputs
        return [_gcast(Reshape(x.ndim)(output_grads[0], shape_vector_of(x)), x)]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u)]


def flatten(x, ndim=1):
    """``x`` with its axes from ``ndim - 1`` on merged into one (``ndim`` output dimensions)."""
    return Flatten(ndim)(as_tensor(x))


# --------------------------------------------------------------------------- dimshuffle
_NEW = -1  # the 'x' of a pattern, as stored in the op (ints encode stably)


@registered(name="DIMSHUFFLE", code=302)
class DimShuffle(Op):
    """Permute axes, insert broadcastable axes (``'x'``, stored as -1) and drop length-1 axes.

    ``new_order[j]`` is the input axis that becomes output axis ``j``.  Input
    axes absent from ``new_order`` are dropped; the op checks at run time that
    their length is 1 (the public :func:`dimshuffle` requires it statically).
    Linear: tangent ``dimshuffle(u)``; adjoint the inverse dimshuffle.
    """

    __props__ = ("input_ndim", "new_order")
    kind = "linear"

    def __init__(self, input_ndim, new_order):
        self.input_ndim = int(input_ndim)
        self.new_order = tuple(_NEW if a == "x" else int(a) for a in new_order)
        kept = [a for a in self.new_order if a != _NEW]
        if len(set(kept)) != len(kept) or any(not 0 <= a < self.input_ndim for a in kept):
            raise ValueError(f"dimshuffle: invalid pattern {self._pattern()} for {self.input_ndim} input dimension(s)")
        self.drop = tuple(a for a in range(self.input_ndim) if a not in kept)

    def _pattern(self):
        return tuple("x" if a == _NEW else a for a in self.new_order)

    def __str__(self):
        return f"DimShuffle{{{', '.join(map(str, self._pattern()))}}}"

    def make_node(self, x):
        x = as_tensor(x)
        if x.ndim != self.input_ndim:
            raise TypeError(f"dimshuffle: expected {self.input_ndim} dimension(s), got {x} of {x.type}")
        for a in self.drop:
            if x.type.shape[a] not in (None, 1):
                raise ValueError(
                    f"dimshuffle: cannot drop axis {a} of {x} with static shape {_fmt(x.type.shape)}: "
                    f"its length is not 1 (pattern {self._pattern()})"
                )
        out = tuple(1 if a == _NEW else x.type.shape[a] for a in self.new_order)
        return Apply(self, [x], [make_output(x.dtype, out)])

    def perform(self, node, inputs, output_storage):
        x = np.asarray(inputs[0])
        for a in self.drop:
            if x.shape[a] != 1:
                raise ValueError(
                    f"dimshuffle: cannot drop axis {a} of {node.inputs[0]} with shape {x.shape}: its length is not 1"
                )
        kept = [a for a in range(x.ndim) if a not in self.drop]
        rank = {a: r for r, a in enumerate(kept)}
        t = np.transpose(x.reshape([x.shape[a] for a in kept]), [rank[a] for a in self.new_order if a != _NEW])
        out = self.infer_shape(node, [x.shape])[0]
        output_storage[0][0] = np.array(t.reshape(out), dtype=node.outputs[0].dtype)

    def infer_shape(self, node, input_shapes):
        (s,) = input_shapes
        return [tuple(1 if a == _NEW else s[a] for a in self.new_order)]

    def inverse(self):
        """The dimshuffle that maps this op's output back to its input's layout."""
        pos = {a: j for j, a in enumerate(self.new_order) if a != _NEW}
        return DimShuffle(len(self.new_order), [pos.get(a, "x") for a in range(self.input_ndim)])

    def L_op(self, inputs, outputs, output_grads):
        return [_gcast(self.inverse()(output_grads[0]), inputs[0])]

    def R_op(self, inputs, eval_points):
        u = eval_points[0]
        return [None if u is None else self(u)]


def dimshuffle(x, pattern):
    """Aesara's dimshuffle: ``pattern`` lists input axes in their new order and ``'x'`` for new length-1 axes.

    An input axis left out is dropped; only axes of static length 1 can be
    dropped (``ValueError`` otherwise).  ``dimshuffle(m, ('x', 1, 0))`` is ``m.T[None]``.
    """
    x = as_tensor(x)
    pattern = tuple(pattern)
    for a in pattern:
        if a != "x" and (not isinstance(a, (numbers.Integral, np.integer)) or isinstance(a, bool) or a < 0):
            raise ValueError(f"dimshuffle: pattern entries must be non-negative ints or 'x', got {pattern}")
    op = DimShuffle(x.ndim, pattern)
    for a in op.drop:
        if x.type.shape[a] != 1:
            raise ValueError(
                f"dimshuffle: cannot drop axis {a} of {x} with static shape {_fmt(x.type.shape)} "
                f"(pattern {pattern}): only axes of static length 1 can be dropped"
            )
    return op(x)


def transpose(x, axes=None):
    """``x`` with its axes permuted (reversed when ``axes`` is None), as ``np.transpose``."""
    x = as_tensor(x)
    if axes is None:
        axes = tuple(range(x.ndim))[::-1]
    axes = tuple(axes)
    if len(axes) != x.ndim:
        raise ValueError(f"transpose: axes {axes} do not match {x} with {x.ndim} dimension(s)")
    norm = tuple(_axis(a, x.ndim, "transpose") for a in axes)
    if sorted(norm) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} axes of {x}")
    return DimShuffle(x.ndim, norm)(x)


def expand_dims(x, axis):
    """``x`` with new length-1 axes at ``axis`` (int or tuple, positions in the output), as NumPy."""
    x = as_tensor(x)
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    nd = x.ndim + len(axes)
    new = {_axis(a, nd, "expand_dims") for a in axes}
    if len(new) != len(axes):
        raise ValueError(f"expand_dims: repeated axis in {axes}")
    it = iter(range(x.ndim))
    return DimShuffle(x.ndim, ["x" if j in new else next(it) for j in range(nd)])(x)


def squeeze(x, axis=None):
    """``x`` without length-1 axes.

    ``axis=None`` drops the axes whose *static* length is 1.  Named axes must
    have length 1: statically when known (``ValueError`` otherwise), else
    checked at run time.
    """
    x = as_tensor(x)
    if axis is None:
        drop = {a for a, n in enumerate(x.type.shape) if n == 1}
    else:
        axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
        drop = {_axis(a, x.ndim, "squeeze") for a in axes}
        for a in drop:
            if x.type.shape[a] not in (None, 1):
                raise ValueError(
                    f"squeeze: cannot select axis {a} of {x} with static shape {_fmt(x.type.shape)}: "
                    "its length is not 1"
                )
    return DimShuffle(x.ndim, [a for a in range(x.ndim) if a not in drop])(x)


# --------------------------------------------------------------------------- join / stack / split
def _upcast(tensors):
    from tapegrad.ops.elemwise import upcast

    return upcast(*tensors)


def _merged_shape(tensors, skip, opname):
    """Static lengths common to ``tensors`` on every axis but ``skip`` (ValueError when they differ)."""
    shapes = [t.type.shape for t in tensors]
    out = list(shapes[0])
    for s in shapes[1:]:
        for a in range(len(out)):
            if a != skip:
                msg = f"{opname}: shapes {' and '.join(_fmt(s) for s in shapes)} differ on axis {a}"
                out[a] = _merge(out[a], s[a], msg)
    return out


class _JoinOp(Op):
    """Base of ``Join`` and ``Stack``: ``op(*tensors)`` along ``axis``, linear in every input."""

    __props__ = ("axis",)
    kind = "linear"

    def __init__(self, axis):
        self.axis = int(axis)

    @staticmethod
    def _inputs(tensors, opname, same):
        """The inputs as tensors, and their common rank (ValueError when none or when the ranks differ)."""
        tensors = [as_tensor(t) for t in tensors]
        if not tensors:
            raise ValueError(f"{opname}: need at least one tensor")
        nd = tensors[0].ndim
        if any(t.ndim != nd for t in tensors):
            raise ValueError(f"{opname}: all inputs must have the same {same}, got "
                             f"{', '.join(f'{t} {t.type}' for t in tensors)}")
        return tensors, nd

    def R_op(self, inputs, eval_points):
        if all(u is None for u in eval_points):
            return [None]
        dt = _tangent_dtype(self(*inputs))
        return [self(*[_zeros(x, dt) if u is None else _cast(u, dt) for x, u in zip(inputs, eval_points)])]


@registered(name="JOIN", code=303)
class Join(_JoinOp):
    """``concatenate(tensors, axis)``.  Linear: tangent joins the tangents; adjoint splits ``g``."""

    def make_node(self, *tensors):
        tensors, nd = self._inputs(tensors, "concatenate", "number of dimensions")
        if not 0 <= self.axis < nd:
            raise ValueError(f"concatenate: axis {self.axis} is out of bounds for {nd} dimension(s)")
        out = _merged_shape(tensors, self.axis, "concatenate")
        lengths = [t.type.shape[self.axis] for t in tensors]
        out[self.axis] = None if None in lengths else sum(lengths)
        return Apply(self, tensors, [make_output(_upcast(tensors), out)])

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        try:
            y = np.concatenate([np.asarray(a, dtype=dtype) for a in inputs], axis=self.axis)
        except ValueError:
            shapes = ", ".join(str(np.shape(a)) for a in inputs)
            raise ValueError(f"concatenate: shapes {shapes} cannot be joined along axis {self.axis}") from None
        output_storage[0][0] = y

    def infer_shape(self, node, input_shapes):
        out = list(input_shapes[0])
        out[self.axis] = sum(s[self.axis] for s in input_shapes)
        return [tuple(out)]

    def L_op(self, inputs, outputs, output_grads):
        (g,) = output_grads
        if len(inputs) == 1:
            return [_gcast(g, inputs[0])]
        from tapegrad.ops.alloc import Split

        sizes = as_shape_vector([shape_i(x, self.axis) for x in inputs], "concatenate")
        pieces = Split(len(inputs), self.axis).make_node(g, sizes).outputs
        return [_gcast(p, x) for p, x in zip(pieces, inputs)]


def concatenate(tensors, axis=0):
    """Join ``tensors`` along an existing ``axis`` (``np.concatenate``); dtype by NumPy promotion."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: need at least one tensor")
    if tensors[0].ndim == 0:
        raise ValueError(f"concatenate: zero-dimensional inputs cannot be concatenated ({tensors[0]})")
    return Join(_axis(axis, tensors[0].ndim, "concatenate"))(*tensors)


def join(axis, *tensors):
    """Aesara's ``join(axis, *tensors)``: :func:`concatenate` with the axis first."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    return concatenate(tensors, axis)


@registered(name="STACK", code=304)
class Stack(_JoinOp):
    """``stack(tensors, axis)``: join along a new axis (also builds int vectors from scalars).

    Linear: tangent stacks the tangents; adjoint splits ``g`` and drops the axis.
    """

    def make_node(self, *tensors):
        tensors, nd = self._inputs(tensors, "stack", "shape")
        if not 0 <= self.axis <= nd:
            raise ValueError(f"stack: axis {self.axis} is out of bounds for {nd + 1} dimension(s)")
        out = _merged_shape(tensors, None, "stack")
        out.insert(self.axis, len(tensors))
        return Apply(self, tensors, [make_output(_upcast(tensors), out)])

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        try:
            y = np.stack([np.asarray(a, dtype=dtype) for a in inputs], axis=self.axis)
        except ValueError:
            shapes = ", ".join(str(np.shape(a)) for a in inputs)
            raise ValueError(f"stack: all inputs must have the same shape, got {shapes}") from None
        output_storage[0][0] = y

    def infer_shape(self, node, input_shapes):
        out = list(input_shapes[0])
        out.insert(self.axis, len(input_shapes))
        return [tuple(out)]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops.alloc import Split

        (g,) = output_grads
        n = len(inputs)
        drop = DimShuffle(g.ndim, [a for a in range(g.ndim) if a != self.axis])
        pieces = [g] if n == 1 else Split(n, self.axis).make_node(g, constant(np.ones(n, "int64"))).outputs
        return [_gcast(drop(p), x) for p, x in zip(pieces, inputs)]


def stack(tensors, *more, axis=0):
    """Join ``tensors`` (all of one shape) along a new ``axis`` (``np.stack``).  Aesara's older form
    ``stack(a, b, c, axis=0)`` (the tensors as separate arguments) works too; with a list first, one more
    positional argument is the axis."""
    if isinstance(tensors, (list, tuple)):
        if len(more) > 1:
            raise TypeError(f"stack: expected (tensors, axis), got {1 + len(more)} positional arguments")
        if more:
            axis = more[0]
    else:
        tensors = [tensors, *more]
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: need at least one tensor")
    return Stack(_axis(axis, tensors[0].ndim + 1, "stack"))(*tensors)
