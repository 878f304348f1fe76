"""Calling an op's ``infer_shape`` from the engines' memory planners.

Built-in ops take ``infer_shape(node, input_shapes)`` and return int tuples
(docs/CONTRIBUTING.md).  User ops (SPEC section 5) may instead follow
Aesara's contract:

* the signature ``infer_shape(self, fgraph, node, input_shapes)`` (``fgraph``
  is passed as None: there is no FunctionGraph at plan time); the two-argument
  form stays supported, told apart by the method's signature;
* symbolic results: an entry (or a whole shape) may be a Variable, e.g.
  ``node.inputs[0].shape[0] * 2``.  The planner passes the input shapes as
  Python ints, so expressions of them are ints already; a Variable that comes
  back is evaluated against the actual input shapes (``shape(x)`` /
  ``shape_i`` of an input read from its shape, other inputs from the values
  the plan knows, constants and shared variables from their data);
* an ``infer_shape`` that raises, or returns something that is not a shape of
  the right rank, does not break the function: :func:`op_infer_shape` raises
  ``NotImplementedError``, which every engine treats as a value-dependent
  shape (the op's ``perform`` runs before planning and its output shape is
  used).
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

__all__ = ["op_infer_shape", "takes_fgraph"]

_TAKES_FGRAPH: dict = {}  # op class -> bool


def takes_fgraph(op):
    """Does ``op.infer_shape`` have Aesara's signature ``(fgraph, node, input_shapes)``?

    Decided from the signature: a first parameter named ``fgraph``, or three or
    more required positional parameters (or only ``*args``).  Cached per class
    unless the instance carries its own ``infer_shape``.
    """
    own = "infer_shape" in getattr(op, "__dict__", {})
    if not own:
        hit = _TAKES_FGRAPH.get(type(op))
        if hit is not None:
            return hit
    hit = _signature_takes_fgraph(op.infer_shape)
    if not own:
        _TAKES_FGRAPH[type(op)] = hit
    return hit


def _signature_takes_fgraph(fn):
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[0].name == "fgraph":
        return True
    required = [p for p in positional if p.default is p.empty]
    if len(required) >= 3:
        return True
    return len(positional) < 2 and any(p.kind == p.VAR_POSITIONAL for p in params)


def op_infer_shape(op, node, input_shapes, input_values=None):
    """Output shapes of ``node`` (an Apply of ``op``) for concrete ``input_shapes``.

    Built-in ops: their ``infer_shape`` result, errors unchanged (``ValueError``
    for shapes that cannot go together, ``NotImplementedError`` for
    value-dependent shapes).  User ops: a list of int tuples, one per output,
    checked against the outputs' ranks; anything else (an exception, a wrong
    rank, a symbolic entry that cannot be evaluated from the shapes and the
    known ``input_values``) raises ``NotImplementedError`` so the engine takes
    the shape from ``perform``.

    ``input_values``: per input, its value where the planner knows it (plan-time
    values), else None.
    """
    fgraph = takes_fgraph(op)
    if getattr(op, "code", None) is not None:  # built-in op
        return op.infer_shape(None, node, input_shapes) if fgraph else op.infer_shape(node, input_shapes)
    try:
        shapes = [tuple(int(n) for n in s) for s in input_shapes]
        res = op.infer_shape(None, node, shapes) if fgraph else op.infer_shape(node, shapes)
        return _concrete(res, node, shapes, input_values)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 - a user op's shape rule that fails: perform gives the shape
        raise NotImplementedError(f"{op}.infer_shape: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- user results -> int tuples
def _concrete(res, node, in_shapes, in_values):
    from tapegrad.graph import Variable

    if isinstance(res, Variable) or res is None:
        raise NotImplementedError("infer_shape must return one shape per output")
    res = list(res)
    outs = node.outputs
    if len(res) != len(outs):
        raise NotImplementedError(f"infer_shape gave {len(res)} shape(s) for {len(outs)} output(s)")
    ev = _Evaluator(node, in_shapes, in_values)
    out = []
    for o, sh in zip(outs, res):
        if isinstance(sh, Variable):  # a whole shape as a symbolic vector (e.g. ``x.shape``)
            sh = np.ravel(ev.value(sh)).tolist()
        elif isinstance(sh, np.ndarray):
            sh = np.ravel(sh).tolist()
        dims = tuple(_dim(ev.value(d) if isinstance(d, Variable) else d) for d in sh)
        static = getattr(o.type, "shape", None)
        ndim = getattr(o.type, "ndim", None)
        if ndim is not None and len(dims) != ndim:
            raise NotImplementedError(f"infer_shape gave {dims} for an output of rank {ndim}")
        if static is not None and any(s is not None and s != d for s, d in zip(static, dims)):
            raise NotImplementedError(f"infer_shape gave {dims} for an output of static shape {static}")
        out.append(dims)
    return out


def _dim(v):
    """One length as an int (ints, integral floats and 0-d/size-1 arrays of them)."""
    if isinstance(v, (bool, np.bool_)):
        raise NotImplementedError(f"infer_shape gave a boolean length {v!r}")
    if isinstance(v, np.ndarray):
        if v.size != 1:
            raise NotImplementedError(f"infer_shape gave a length of shape {v.shape}")
        v = v.reshape(()).item()
    if isinstance(v, numbers.Integral):
        n = int(v)
    elif isinstance(v, numbers.Real) and float(v).is_integer():
        n = int(v)
    else:
        raise NotImplementedError(f"infer_shape gave a length {v!r} that is not an integer")
    if n < 0:
        raise NotImplementedError(f"infer_shape gave a negative length {n}")
    return n


class _Evaluator:
    """Values of symbolic shape expressions over ``node``'s inputs, from their shapes (and known values)."""

    _DEPTH = 200

    def __init__(self, node, in_shapes, in_values):
        self.shapes = {id(x): tuple(s) for x, s in zip(node.inputs, in_shapes)}
        self.env = {}
        for x, v in zip(node.inputs, in_values or ()):
            if v is not None:
                self.env[id(x)] = np.asarray(v)
        self.inputs = {id(x) for x in node.inputs}

    def shape_of(self, x):
        shp = self.shapes.get(id(x))
        if shp is None:
            static = getattr(x.type, "shape", None)
            if static is not None and all(n is not None for n in static):
                shp = tuple(static)
        return shp

    def value(self, v, depth=0):
        from tapegrad.graph import Constant, SharedVariable
        from tapegrad.ops.shape import Shape, ShapeI

        hit = self.env.get(id(v))
        if hit is not None:
            return hit
        if isinstance(v, Constant):
            return np.asarray(v.data)
        if isinstance(v, SharedVariable):
            return np.asarray(v.get_value(borrow=True))
        node = v.owner
        if node is None or id(v) in self.inputs or depth > self._DEPTH:
            raise NotImplementedError(f"infer_shape: the shape expression needs the value of {v}")
        if isinstance(node.op, (Shape, ShapeI)):
            shp = self.shape_of(node.inputs[0])
            if shp is not None:
                r = np.asarray(shp if isinstance(node.op, Shape) else shp[node.op.i], dtype="int64")
                self.env[id(v)] = r
                return r
        ins = [self.value(x, depth + 1) for x in node.inputs]
        storage = [[None] for _ in node.outputs]
        with np.errstate(all="ignore"):
            node.op.perform(node, ins, storage)
        for o, st in zip(node.outputs, storage):
            self.env[id(o)] = np.asarray(st[0])
        return self.env[id(v)]
