"""The symbolic graph: types, variables, constants, shared variables, Apply nodes.

A graph is a DAG of :class:`Variable` objects linked through :class:`Apply`
nodes (an op applied to input variables, producing output variables).  This
module knows nothing about particular ops: operator overloading forwards to
:mod:`tapegrad.ops`, imported lazily.
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np

from tapegrad.config import config

DTYPES = ("float64", "float32", "int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float64", "float32")
_ops_module = None


def _ops():
    """The op namespace (imported lazily: ops import this module)."""
    global _ops_module
    if _ops_module is None:
        import tapegrad.ops as m

        _ops_module = m
    return _ops_module


def is_float_dtype(dtype) -> bool:
    return str(dtype) in FLOAT_DTYPES


def is_int_dtype(dtype) -> bool:
    return str(dtype) not in FLOAT_DTYPES


# --------------------------------------------------------------------------- types
class Type:
    """Base of all variable types."""

    def __call__(self, name=None):
        return Variable(self, name=name)

    def make_variable(self, name=None):
        return self(name)


class TensorType(Type):
    """An n-dimensional array type: a dtype and a static shape.

    Parameters
    ----------
    dtype : str or numpy dtype
        One of ``float64 float32 int64 int32 bool`` (and a few other ints).
    shape : tuple of (int or None)
        Static lengths; ``None`` marks a length known only at run time.
    """

    def __init__(self, dtype, shape=()):
        dtype = np.dtype(dtype).name
        if dtype not in DTYPES:
            raise TypeError(f"unsupported dtype {dtype!r}; tapegrad supports {', '.join(DTYPES)}")
        self.dtype = dtype
        self.shape = tuple(None if s is None else int(s) for s in shape)
        for s in self.shape:
            if s is not None and s < 0:
                raise ValueError(f"negative static length in shape {self.shape}")

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def broadcastable(self):
        return tuple(s == 1 for s in self.shape)

    def __eq__(self, other):
        return type(other) is type(self) and other.dtype == self.dtype and other.shape == self.shape

    def __hash__(self):
        return hash((type(self), self.dtype, self.shape))

    def __repr__(self):
        shape = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"TensorType({self.dtype}, ({shape}{',' if self.ndim == 1 else ''}))"

    __str__ = __repr__

    def clone(self, dtype=None, shape=None):
        return TensorType(self.dtype if dtype is None else dtype, self.shape if shape is None else shape)

    def is_compatible_shape(self, shape) -> bool:
        return len(shape) == self.ndim and all(s is None or s == t for s, t in zip(self.shape, shape))

    def filter(self, value, name="input", allow_downcast=None):
        """Convert ``value`` to an ndarray of this type or raise naming ``name``.

        Lists and scalars convert like ``np.asarray``.  Casting is allowed when
        it loses nothing: an int into a float input, float32 into float64, a
        Python float into float32, a list whose values the cast keeps exactly;
        float into int, or a float64 array into a float32 input, raises
        ``TypeError``.  ``allow_downcast=True`` (Aesara's
        ``allow_input_downcast``) casts any number as ``astype`` does.
        """
        if isinstance(value, Variable):
            raise TypeError(f"{name}: expected a value, got the symbolic variable {value}")
        arr = np.asarray(value)
        if (isinstance(value, (list, tuple)) and arr.dtype.kind in "fiu" and arr.dtype.name != self.dtype
                and np.dtype(self.dtype).kind in ("f" if arr.dtype.kind == "f" else "iu")):
            with np.errstate(all="ignore"):
                cast = arr.astype(self.dtype)
            if np.array_equal(cast, arr, equal_nan=arr.dtype.kind == "f"):
                arr = cast  # Python numbers that the cast keeps exactly (as Aesara accepts)
        if arr.dtype == object:
            raise TypeError(f"{name}: cannot convert {type(value).__name__} to a {self.dtype} array")
        if allow_downcast and arr.dtype.name != self.dtype and arr.dtype.kind in "biuf":
            with np.errstate(all="ignore"):
                arr = arr.astype(self.dtype)
        if arr.dtype.name != self.dtype:
            src = arr.dtype
            python_scalar = isinstance(value, numbers.Number) and not isinstance(value, np.generic)
            ok = np.can_cast(src, self.dtype, casting="safe")
            if not ok and python_scalar and src.kind in "iub" and np.dtype(self.dtype).kind in "iu":
                ok = np.asarray(value).astype(self.dtype) == value
            if not ok and python_scalar and src.kind == "f" and np.dtype(self.dtype).kind == "f":
                ok = True
            if not ok and src.kind in "iu" and np.dtype(self.dtype).kind == "f":
                ok = True  # ints convert to floats as NumPy does
            if not ok:
                raise TypeError(
                    f"{name}: expected dtype {self.dtype}, got {src.name} which cannot be cast "
                    f"without loss (cast it explicitly with .astype({self.dtype!r}))"
                )
            arr = arr.astype(self.dtype)
        if arr.ndim != self.ndim:
            raise TypeError(
                f"{name}: expected an array with {self.ndim} dimension(s) (type {self}), "
                f"got {arr.ndim} dimension(s) with shape {arr.shape}"
            )
        for axis, (s, t) in enumerate(zip(self.shape, arr.shape)):
            if s is not None and s != t:
                raise ValueError(
                    f"{name}: static shape {_shape_str(self.shape)} requires length {s} on axis {axis}, "
                    f"got shape {arr.shape}"
                )
        return arr


def _shape_str(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- nodes
class Apply:
    """An op applied to input variables, producing output variables."""

    def __init__(self, op, inputs, outputs):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        for i, x in enumerate(self.inputs):
            if not isinstance(x, Variable):
                raise TypeError(f"{op}: input {i} is not a Variable: {x!r}")
        for i, out in enumerate(self.outputs):
            if out.owner is not None:
                raise ValueError(f"{op}: output {i} already belongs to another Apply")
            out.owner = self
            out.index = i

    @property
    def nin(self):
        return len(self.inputs)

    @property
    def nout(self):
        return len(self.outputs)

    @property
    def out(self):
        return self.outputs[0]

    def clone_with_new_inputs(self, inputs):
        """Rebuild this node on ``inputs`` through ``op.make_node`` (types re-inferred)."""
        node = self.op.make_node(*inputs)
        return node

    def __repr__(self):
        return f"Apply({self.op}, {self.inputs})"


_counter = itertools.count()


class Variable:
    """A symbolic array: a type, an optional name, and the Apply that made it."""

    __array_ufunc__ = None  # numpy defers to our reflected operators
    __array_priority__ = 1000

    def __init__(self, type, owner=None, index=None, name=None):
        self.type = type
        self.owner = owner
        self.index = index
        self.name = name
        self.auto_name = f"_{next(_counter)}"
        self.tag = {}

    # -- type shortcuts
    @property
    def dtype(self):
        return self.type.dtype

    @property
    def ndim(self):
        return self.type.ndim

    @property
    def broadcastable(self):
        return self.type.broadcastable

    @property
    def static_shape(self):
        return self.type.shape

    def clone(self):
        return type(self)(self.type, name=self.name)

    def __repr__(self):
        if self.name is not None:
            return self.name
        if self.owner is not None:
            op = self.owner.op
            suffix = f".{self.index}" if self.owner.nout > 1 else ""
            return f"{op}{suffix}"
        return f"<{self.type}>"

    __str__ = __repr__

    def __bool__(self):
        raise TypeError(
            f"the truth value of the symbolic variable {self!r} is unknown until it is computed; "
            "use tg.switch for conditionals"
        )

    def __iter__(self):
        raise TypeError(f"symbolic variable {self!r} is not iterable; index it instead")

    def __len__(self):
        raise TypeError(f"len() of symbolic variable {self!r} is unknown; use .shape[0]")

    # -- arithmetic
    def __add__(self, o):
        return _ops().add(self, o)

    def __radd__(self, o):
        return _ops().add(o, self)

    def __sub__(self, o):
        return _ops().sub(self, o)

    def __rsub__(self, o):
        return _ops().sub(o, self)

    def __mul__(self, o):
        return _ops().mul(self, o)

    def __rmul__(self, o):
        return _ops().mul(o, self)

    def __truediv__(self, o):
        return _ops().true_div(self, o)

    def __rtruediv__(self, o):
        return _ops().true_div(o, self)

    def __floordiv__(self, o):
        return _ops().int_div(self, o)

    def __rfloordiv__(self, o):
        return _ops().int_div(o, self)

    def __mod__(self, o):
        return _ops().mod(self, o)

    def __rmod__(self, o):
        return _ops().mod(o, self)

    def __pow__(self, o):
        return _ops().pow(self, o)

    def __rpow__(self, o):
        return _ops().pow(o, self)

    def __matmul__(self, o):
        return _ops().matmul(self, o)

    def __rmatmul__(self, o):
        return _ops().matmul(o, self)

    def __neg__(self):
        return _ops().neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops().abs(self)

    def __invert__(self):
        return _ops().logical_not(self)

    def __and__(self, o):
        return _ops().logical_and(self, o)

    def __rand__(self, o):
        return _ops().logical_and(o, self)

    def __or__(self, o):
        return _ops().logical_or(self, o)

    def __ror__(self, o):
        return _ops().logical_or(o, self)

    def __lt__(self, o):
        return _ops().lt(self, o)

    def __le__(self, o):
        return _ops().le(self, o)

    def __gt__(self, o):
        return _ops().gt(self, o)

    def __ge__(self, o):
        return _ops().ge(self, o)

    # == keeps identity semantics so Variables stay hashable
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def eq(self, o):
        return _ops().eq(self, o)

    def neq(self, o):
        return _ops().neq(self, o)

    # -- indexing
    def __getitem__(self, index):
        return _ops().getitem(self, index)

    # -- methods
    @property
    def T(self):
        return _ops().transpose(self)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    def dimshuffle(self, *pattern):
        if len(pattern) == 1 and isinstance(pattern[0], (tuple, list)):
            pattern = tuple(pattern[0])
        return _ops().dimshuffle(self, pattern)

    def reshape(self, *shape, ndim=None):
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = shape[0]
        return _ops().reshape(self, shape, ndim=ndim)

    def flatten(self, ndim=1):
        return _ops().flatten(self, ndim)

    def ravel(self):
        return _ops().flatten(self, 1)

    def squeeze(self, axis=None):
        return _ops().squeeze(self, axis)

    def astype(self, dtype):
        return _ops().cast(self, dtype)

    @property
    def shape(self):
        return _ops().shape(self)

    @property
    def size(self):
        return _ops().prod(_ops().shape(self))

    def zeros_like(self, dtype=None):
        return _ops().zeros_like(self, dtype=dtype)

    def ones_like(self, dtype=None):
        return _ops().ones_like(self, dtype=dtype)

    def copy(self, name=None):
        out = _ops().identity(self)
        out.name = name
        return out

    def clip(self, a, b):
        return _ops().clip(self, a, b)

    def dot(self, o):
        return _ops().dot(self, o)

    def sum(self, axis=None, keepdims=False, dtype=None, *, acc_dtype=None):
        return _ops().sum(self, axis=axis, keepdims=keepdims, dtype=dtype, acc_dtype=acc_dtype)

    def prod(self, axis=None, keepdims=False, *, no_zeros_in_input=False, acc_dtype=None):
        return _ops().prod(self, axis=axis, keepdims=keepdims, no_zeros_in_input=no_zeros_in_input,
                           acc_dtype=acc_dtype)

    def max(self, axis=None, keepdims=False):
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _ops().min(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, dtype=None):
        return _ops().mean(self, axis=axis, keepdims=keepdims, dtype=dtype)

    def var(self, axis=None, keepdims=False, ddof=0, *, corrected=False):
        return _ops().var(self, axis=axis, keepdims=keepdims, ddof=ddof, corrected=corrected)

    def std(self, axis=None, keepdims=False, ddof=0, *, corrected=False):
        return _ops().std(self, axis=axis, keepdims=keepdims, ddof=ddof, corrected=corrected)

    def all(self, axis=None, keepdims=False):
        return _ops().all(self, axis=axis, keepdims=keepdims)

    def any(self, axis=None, keepdims=False):
        return _ops().any(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, keepdims=False):
        return _ops().argmax(self, axis=axis, keepdims=keepdims)

    def argmin(self, axis=None, keepdims=False):
        return _ops().argmin(self, axis=axis, keepdims=keepdims)

    def cumsum(self, axis=None):
        return _ops().cumsum(self, axis=axis)

    def cumprod(self, axis=None):
        return _ops().cumprod(self, axis=axis)

    # Aesara's TensorVariable methods beyond the SPEC's list: the functions of the same names
    def round(self):
        return _ops().round(self)

    def take(self, indices, axis=None):
        return _ops().take(self, indices, axis=axis)

    def repeat(self, repeats, axis=None):
        return _ops().repeat(self, repeats, axis=axis)

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return _ops().diagonal(self, offset=offset, axis1=axis1, axis2=axis2)

    def trace(self, offset=0, axis1=0, axis2=1):
        return _ops().trace(self, offset=offset, axis1=axis1, axis2=axis2)

    def eval(self, givens=None):
        """Compile and run this variable; ``givens`` maps input Variables to values."""
        from tapegrad.compile.function import eval_variable

        return eval_variable(self, givens)


class Constant(Variable):
    """A Variable with a fixed value.

    ``weak`` is set for Python scalars: in mixed arithmetic they do not upcast
    (NumPy 2's rule), so ``float32_var * 2.0`` stays float32.
    """

    def __init__(self, type, data, name=None, weak=None):
        super().__init__(type, name=name)
        self.data = type.filter(data, name=name or "constant")
        self.data.setflags(write=False)
        self.weak = weak

    def clone(self):
        return Constant(self.type, self.data, name=self.name, weak=self.weak)

    def __repr__(self):
        if self.name is not None:
            return self.name
        if self.data.size <= 6:
            return np.array2string(self.data, separator=", ").replace("\n", "")
        return f"Constant{{{self.type}}}"


class SharedVariable(Variable):
    """A Variable whose value persists between function calls (``get_value``/``set_value``)."""

    def __init__(self, type, value, name=None, borrow=False, strict=False, allow_downcast=None):
        super().__init__(type, name=name)
        self.strict, self.allow_downcast = bool(strict), allow_downcast
        arr = type.filter(value, name=name or "shared", allow_downcast=allow_downcast)
        self._value = arr if borrow and arr is value else arr.copy()

    def get_value(self, borrow=False):
        return self._value if borrow else self._value.copy()

    def set_value(self, value, borrow=False):
        """Replace the value (converted like a function input; with ``strict=True`` only an ndarray of exactly
        the variable's dtype is accepted).  ``borrow=True`` keeps ``value`` itself when it needs no conversion."""
        label = self.name or "shared variable"
        if self.strict and not (isinstance(value, np.ndarray) and value.dtype.name == self.type.dtype):
            got = value.dtype.name if isinstance(value, np.ndarray) else type(value).__name__
            raise TypeError(f"{label}: strict shared variable of dtype {self.type.dtype} got {got}")
        arr = self.type.filter(value, name=label, allow_downcast=self.allow_downcast)
        self._value = arr if borrow and arr is value else arr.copy()

    @property
    def value(self):
        return self._value

    def clone(self):
        return self  # shared storage is identity


# --------------------------------------------------------------------------- constructors
def _python_scalar_dtype(x):
    if isinstance(x, (bool, np.bool_)):
        return "bool"
    if isinstance(x, numbers.Integral):
        return "int64"
    if isinstance(x, numbers.Real):
        return config.floatX
    raise TypeError(f"cannot make a tensor from {type(x).__name__} {x!r}")


def constant(value, name=None, dtype=None, ndim=None):
    """A :class:`Constant` holding ``value`` (static shape = its shape)."""
    weak = None
    if isinstance(value, (numbers.Number, np.bool_)) and not isinstance(value, np.generic):
        weak = value
        arr = np.asarray(value, dtype=dtype or _python_scalar_dtype(value))
    else:
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == object:
            raise TypeError(f"cannot make a tensor from {value!r}")
        if arr.dtype.kind == "f" and arr.dtype.name not in FLOAT_DTYPES:
            arr = arr.astype("float64")
        if arr.dtype.kind in "iu" and arr.dtype.name not in DTYPES:
            arr = arr.astype("int64")
    if ndim is not None and arr.ndim != ndim:
        if arr.ndim > ndim:
            raise ValueError(f"constant {value!r} has {arr.ndim} dims, expected {ndim}")
        arr = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
    return Constant(TensorType(arr.dtype, arr.shape), arr, name=name, weak=weak)


def as_tensor(x, name=None, ndim=None, dtype=None):
    """Convert a Variable, number, list or ndarray to a Variable."""
    if isinstance(x, Variable):
        if dtype is not None and x.dtype != np.dtype(dtype).name:
            x = _ops().cast(x, dtype)
        if ndim is not None and x.ndim != ndim:
            if x.ndim > ndim:
                raise ValueError(f"{x} has {x.ndim} dimensions, expected {ndim}")
            x = _ops().dimshuffle(x, ("x",) * (ndim - x.ndim) + tuple(range(x.ndim)))
        return x
    if isinstance(x, (list, tuple)) and any(isinstance(e, Variable) for e in _flat(x)):
        return _ops().stack([as_tensor(e) for e in x])
    return constant(x, name=name, dtype=dtype, ndim=ndim)


as_tensor_variable = as_tensor


def _flat(seq):
    for e in seq:
        if isinstance(e, (list, tuple)):
            yield from _flat(e)
        else:
            yield e


def shared(value, name=None, dtype=None, shape=None, borrow=False, strict=False, allow_downcast=None):
    """A :class:`SharedVariable` initialised with a copy of ``value`` (``borrow=True``: ``value`` itself when
    it is already an ndarray of the variable's dtype, as Aesara may alias it).

    Its static shape is unknown in every dimension (``set_value`` may change
    lengths) unless ``shape`` is given.  ``strict=True``: ``set_value`` takes only ndarrays of the variable's
    dtype; ``allow_downcast=True``: ``set_value`` casts any number (Aesara's keywords).
    """
    arr = value if borrow and isinstance(value, np.ndarray) and dtype is None else np.asarray(value, dtype=dtype)
    if arr.dtype.kind == "f" and arr.dtype.name not in FLOAT_DTYPES:
        arr = arr.astype("float64")
    if shape is None:
        shape = (None,) * arr.ndim
    return SharedVariable(TensorType(arr.dtype, shape), arr, name=name, borrow=borrow, strict=strict,
                          allow_downcast=allow_downcast)


def tensor(name=None, dtype=None, shape=None, ndim=None):
    """A new input Variable: ``tensor("t", dtype="float32", shape=(None, 3))``."""
    if isinstance(name, TensorType):
        return Variable(name)
    if shape is None:
        shape = (None,) * (ndim or 0)
    return Variable(TensorType(dtype or config.floatX, shape), name=name)


def _maker(ndim, dtype=None):
    def make(name=None, dtype=dtype, shape=None):
        if shape is None:
            shape = (None,) * ndim
        if len(shape) != ndim:
            raise ValueError(f"shape {shape} has {len(shape)} entries, expected {ndim}")
        return tensor(name, dtype=dtype or config.floatX, shape=shape)

    return make


scalar = _maker(0)
vector = _maker(1)
matrix = _maker(2)
tensor3 = _maker(3)
tensor4 = _maker(4)
dscalar = _maker(0, "float64")
dvector = _maker(1, "float64")
dmatrix = _maker(2, "float64")
dtensor3 = _maker(3, "float64")
fscalar = _maker(0, "float32")
fvector = _maker(1, "float32")
fmatrix = _maker(2, "float32")
ftensor3 = _maker(3, "float32")
iscalar = _maker(0, "int64")
ivector = _maker(1, "int64")
imatrix = _maker(2, "int64")
itensor3 = _maker(3, "int64")
lscalar, lvector, lmatrix = iscalar, ivector, imatrix
bscalar = _maker(0, "bool")
bvector = _maker(1, "bool")


# --------------------------------------------------------------------------- walks
def ancestors(outputs, blockers=()):
    """All variables the ``outputs`` depend on (outputs included), stopping at ``blockers``."""
    blockers = set(map(id, blockers))
    seen, order, stack = set(), [], list(outputs)
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        order.append(v)
        if v.owner is not None and id(v) not in blockers:
            stack.extend(v.owner.inputs)
    return order


def graph_inputs(outputs, blockers=()):
    """Variables with no owner (inputs, constants, shared) that ``outputs`` depend on."""
    return [v for v in ancestors(outputs, blockers) if v.owner is None or id(v) in set(map(id, blockers))]


def toposort(outputs, blockers=()):
    """Apply nodes needed for ``outputs``, each after the nodes producing its inputs."""
    blockers = set(map(id, blockers))
    order, done = [], set()
    stack = [(v, False) for v in reversed(list(outputs)) if v is not None]
    while stack:
        v, expanded = stack.pop()
        node = v.owner
        if node is None or id(v) in blockers or id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((v, True))
        for x in reversed(node.inputs):
            if x.owner is not None and id(x.owner) not in done:
                stack.append((x, False))
    return order


def clone_replace(outputs, replace):
    """Rebuild ``outputs`` with the variables in ``replace`` (dict old -> new) substituted."""
    memo = {id(k): as_tensor(v) for k, v in replace.items()}
    for node in toposort(outputs, blockers=list(replace)):
        new_inputs = [memo.get(id(x), x) for x in node.inputs]
        if all(a is b for a, b in zip(new_inputs, node.inputs)):
            continue
        new_node = node.clone_with_new_inputs(new_inputs)
        for old, new in zip(node.outputs, new_node.outputs):
            if old.name is not None:
                new.name = old.name
            memo[id(old)] = new
    return [memo.get(id(o), o) if o is not None else None for o in outputs]
