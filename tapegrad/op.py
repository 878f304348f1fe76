"""The Op contract.

An op builds Apply nodes (``make_node``), computes with NumPy (``perform``),
and declares its derivative rules: ``L_op`` (vector-Jacobian product, used by
``grad``/``Lop``) and ``R_op`` (Jacobian-vector product, used by ``Rop``).
``connection_pattern`` says which outputs depend on which inputs; a gradient
through an unconnected pair is *disconnected*, not zero.

Every built-in op also has

``code``
    its stable op code name in :mod:`tapegrad.registry` (the tape stores the
    integer);
``kind``
    ``"elementwise" | "linear" | "bilinear" | "general"`` -- what its engine
    kernels are derived from (see ARCHITECTURE.md);
``encode()``
    its parameters as a tuple of ints and a tuple of floats, stored in the
    tape's parameter pools.

User ops (SPEC section 5) only need ``make_node`` and ``perform``.
"""

from __future__ import annotations

import zlib

import numpy as np

from tapegrad.graph import Apply, Constant, TensorType, Type, Variable, as_tensor  # noqa: F401  (re-exported)


class Op:
    """Base class of all operations.

    Subclasses list their parameters in ``__props__``; two ops of the same
    class with equal props are equal (so common-subexpression elimination can
    merge their nodes).
    """

    __props__: tuple = ()
    kind = "general"
    code = None  # registry name; None for user ops (run by callback)
    default_output = None

    # -- identity
    def _props(self):
        return tuple(getattr(self, p) for p in self.__props__)

    def __eq__(self, other):
        return type(self) is type(other) and self._props() == other._props()

    def __hash__(self):
        return hash((type(self), self._props()))

    def __str__(self):
        name = type(self).__name__
        if self.__props__:
            return f"{name}{{{', '.join(_fmt_prop(v) for v in self._props())}}}"
        return name

    __repr__ = __str__

    # Aesara's declarative form: an op that sets ``itypes`` and ``otypes`` (lists of TensorType instances, or
    # of the type constructors such as ``tg.dvector``) gets ``make_node`` for free.
    itypes = None
    otypes = None

    # -- building
    def make_node(self, *inputs):
        """Build the Apply node; the default uses ``itypes``/``otypes`` when the op declares them (as Aesara)."""
        if self.itypes is None or self.otypes is None:
            missing = "itypes" if self.itypes is None and self.otypes is not None else (
                "otypes" if self.otypes is None and self.itypes is not None else None)
            hint = f" ({missing} is not set)" if missing else " (or declare itypes and otypes)"
            raise NotImplementedError(f"{type(self).__name__}.make_node: implement make_node{hint}")
        itypes = [_as_type(t, f"{type(self).__name__}.itypes[{i}]") for i, t in enumerate(self.itypes)]
        otypes = [_as_type(t, f"{type(self).__name__}.otypes[{i}]") for i, t in enumerate(self.otypes)]
        if len(inputs) != len(itypes):
            raise ValueError(f"{self}: expected {len(itypes)} input(s) (itypes), got {len(inputs)}")
        checked = []
        for i, (x, t) in enumerate(zip(inputs, itypes)):
            if not isinstance(x, Variable):
                if isinstance(t, TensorType):
                    data = t.filter(x, name=f"{self} input {i}")
                    x = Constant(TensorType(t.dtype, data.shape), data)
                else:
                    x = as_tensor(x)
            if isinstance(t, TensorType):
                ok = (isinstance(x.type, TensorType) and x.type.dtype == t.dtype and x.type.ndim == t.ndim
                      and all(a is None or b is None or a == b for a, b in zip(t.shape, x.type.shape)))
            else:
                ok = x.type == t
            if not ok:
                raise TypeError(f"Invalid input types for Op {self}: input {i} ({x}): expected {t}, got {x.type}")
            checked.append(x)
        return Apply(self, checked, [t() for t in otypes])

    def __call__(self, *inputs, return_list=False, **kwargs):
        """Apply the op: its output (or the ``default_output``), or the list of outputs when it has several.

        ``return_list=True`` always returns a list (as Aesara's ``Op.__call__``).
        """
        node = self.make_node(*inputs, **kwargs)
        if self.default_output is not None:
            out = node.outputs[self.default_output]
            return [out] if return_list else out
        if return_list:
            return list(node.outputs)
        if len(node.outputs) == 1:
            return node.outputs[0]
        return list(node.outputs)

    # -- computing
    def perform(self, node, inputs, output_storage):
        """Compute outputs with NumPy: write ``output_storage[i][0]``."""
        raise NotImplementedError(f"{type(self).__name__}.perform")

    def infer_shape(self, node, input_shapes):
        """Output shapes (tuples of ints or symbolic scalars) from input shapes."""
        raise NotImplementedError(f"{type(self).__name__}.infer_shape")

    # -- derivatives
    def connection_pattern(self, node):
        """``pattern[i][j]``: does output ``j`` depend on input ``i``."""
        return [[True] * len(node.outputs) for _ in node.inputs]

    def grad(self, inputs, output_grads):
        raise NotImplementedError

    def L_op(self, inputs, outputs, output_grads):
        """Vector-Jacobian product: one gradient (or Disconnected/Null) per input."""
        return self.grad(inputs, output_grads)

    def R_op(self, inputs, eval_points):
        """Jacobian-vector product: one tangent per output (None for an output no tangent reaches).

        ``Rop`` passes built-in ops ``None`` in ``eval_points`` for an input without a tangent (zero); user ops
        (no op code) get ``inputs[i].zeros_like()`` there instead, as Aesara's ``Rop`` does.
        """
        raise NotImplementedError

    # -- tape encoding
    def encode(self):
        """Parameters as ``(ints, floats)`` for the tape's pools."""
        ints, floats = [], []
        for v in self._props():
            _encode_value(v, ints, floats)
        return tuple(ints), tuple(floats)


def _as_type(t, what):
    """An ``itypes``/``otypes`` entry as a Type: a Type instance, or a constructor (``tg.dvector``) called once."""
    if isinstance(t, Type):
        return t
    if callable(t):
        v = t()
        if isinstance(v, Variable):
            return v.type
    raise TypeError(f"{what}: expected a Type (e.g. tg.TensorType('float64', (None,))) or a constructor "
                    f"such as tg.dvector, got {t!r}")


def _fmt_prop(v):
    if callable(v) and hasattr(v, "__name__"):
        return v.__name__
    return repr(v) if isinstance(v, str) else str(v)


def _encode_value(v, ints, floats):
    if v is None:
        ints.append(-(2**62))
    elif isinstance(v, (bool, np.bool_)):
        ints.append(int(v))
    elif isinstance(v, (int, np.integer)):
        ints.append(int(v))
    elif isinstance(v, (float, np.floating)):
        floats.append(float(v))
    elif isinstance(v, str):
        from tapegrad.registry import DTYPE_CODES

        ints.append(DTYPE_CODES[v] if v in DTYPE_CODES else zlib.crc32(v.encode()))
    elif isinstance(v, (tuple, list)):
        ints.append(len(v))
        for e in v:
            _encode_value(e, ints, floats)
    else:
        ints.append(zlib.crc32(repr(v).encode()))


def make_output(dtype, shape, name=None):
    """A fresh output Variable of ``TensorType(dtype, shape)``."""
    return Variable(TensorType(dtype, shape), name=name)


def static_broadcast_shape(shapes, opname="op"):
    """NumPy broadcasting of static shapes; raise ``ValueError`` when they cannot broadcast.

    ``None`` lengths broadcast with anything: the result is the other length
    unless that is 1 (then ``None``).
    """
    ndim = max((len(s) for s in shapes), default=0)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    out = []
    for axis in range(ndim):
        lengths = [s[axis] for s in padded]
        known = {n for n in lengths if n is not None and n != 1}
        if len(known) > 1:
            shown = " and ".join(_shape(s) for s in shapes)
            raise ValueError(f"{opname}: shapes {shown} cannot be broadcast together (axis {axis})")
        if known:
            out.append(known.pop())
        elif any(n is None for n in lengths):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def _shape(s):
    return "(" + ", ".join("?" if n is None else str(n) for n in s) + ("," if len(s) == 1 else "") + ")"


def normalize_axis(axis, ndim, opname="op"):
    """``axis`` (None, int or tuple) -> sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        a = int(a)
        if (ndim == 0 and a not in (0, -1)) or (ndim > 0 and not -ndim <= a < ndim):
            raise ValueError(f"{opname}: axis {a} is out of bounds for an array of {ndim} dimension(s)")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{opname}: repeated axis in {tuple(axis)}")
    return tuple(sorted(out))


# --------------------------------------------------------------------------- gradient placeholder types
class DisconnectedType(Type):
    """Type of a gradient that is zero because the output does not depend on the input.

    A symbolic placeholder for 0 that also says *why* it is zero.
    """

    dtype = None
    ndim = None
    shape = None

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return "DisconnectedType"

    def filter(self, value, name=None):
        raise AssertionError("a DisconnectedType variable has no value")


class NullType(Type):
    """Type of an undefined or not-implemented gradient; ``why_null`` says why."""

    dtype = None
    ndim = None
    shape = None

    not_implemented = False  # set by grad_not_implemented

    def __init__(self, why_null="(no explanation given)"):
        self.why_null = why_null

    def __eq__(self, other):
        return type(self) is type(other) and self.why_null == other.why_null

    def __hash__(self):
        return hash((type(self), self.why_null))

    def __repr__(self):
        return f"NullType({self.why_null!r})"

    def filter(self, value, name=None):
        raise ValueError(f"a NullType variable has no value: {self.why_null}")


def disconnected_type():
    """A fresh variable of :class:`DisconnectedType`."""
    return Variable(DisconnectedType())


def is_disconnected(v) -> bool:
    return v is not None and isinstance(v.type, DisconnectedType)


def is_null(v) -> bool:
    return v is not None and isinstance(v.type, NullType)


def grad_not_implemented(op, x_pos, x, comment=""):
    """A NullType gradient for input ``x_pos`` of ``op`` whose rule is not implemented.

    Its type has ``not_implemented = True``: ``grad`` then raises an error that is both a
    ``NullTypeGradError`` and a ``NotImplementedError`` (Aesara raises the latter for an op without grad).
    """
    t = NullType(
        f"This variable is Null because the grad method for input {x_pos} ({x}) of the {op} op "
        f"is not implemented. {comment}".rstrip()
    )
    t.not_implemented = True
    return Variable(t)


def grad_undefined(op, x_pos, x, comment=""):
    """A NullType gradient for input ``x_pos`` of ``op`` where the gradient is mathematically undefined."""
    return Variable(
        NullType(
            f"This variable is Null because the grad method for input {x_pos} ({x}) of the {op} op "
            f"is mathematically undefined. {comment}".rstrip()
        )
    )
