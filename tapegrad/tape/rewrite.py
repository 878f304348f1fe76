"""Rewrites applied while a graph is lowered to a tape.

The builder (:mod:`tapegrad.tape.build`) walks the graph once in topological
order and hands every Apply node to a :class:`Rewriter`, which decides what the
node becomes on the tape:

* **algebraic simplification** -- ``x * 1``, ``1 * x``, ``x / 1``, ``x - 0``,
  ``x + (-0.0)`` (and ``x + 0`` for integer ``x``), ``neg(neg(x))``,
  ``cast(x, x.dtype)`` and ``pow(x, 1)`` become ``x`` when ``x`` already has the
  result's dtype and the constant cannot change its shape by broadcasting.  Only rewrites
  that are exact for every IEEE value are made (SPEC section 6): ``x * 0``,
  ``x - x`` and ``x / x`` are never folded, and float ``x + 0.0`` is kept
  because ``-0.0 + 0.0`` is ``+0.0``;
* **strength reduction** -- ``pow(x, 2)`` becomes ``sqr(x)`` (exact: see
  :func:`strength_reduce`; ``pow(x, 0.5)`` is not ``sqrt(x)`` at ``-0.0`` and ``-inf``);
* **constant folding** -- a registered op whose inputs are all constants is
  run once with ``perform`` and its outputs become constants (not when a
  result would exceed :data:`FOLD_LIMIT` elements);
* **common-subexpression elimination** -- equal ops on the same input slots
  give one instruction; equal constants (same dtype, shape and bytes) share
  one slot;
* **dead-code elimination** -- :meth:`Rewriter.prune` keeps only the
  instructions the function's outputs and updates need.

The intermediate form is deliberately tiny: a :class:`Value` per future slot
and an :class:`Instr` per future instruction.
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import TensorType

FOLD_LIMIT = 100_000
"""Largest number of elements constant folding may create per output."""

_CONST_BYTES_KEY_LIMIT = 1_000_000  # constants larger than this merge only by identity


class Value:
    """A future tape slot: an input, a constant, a shared variable or a temporary."""

    __slots__ = ("kind", "type", "name", "var", "data", "instr", "index")

    def __init__(self, kind, type, name=None, var=None, data=None, instr=None, index=0):
        self.kind = kind  # "input" | "const" | "shared" | "temp"
        self.type = type
        self.name = name
        self.var = var  # the graph Variable (inputs, shared variables)
        self.data = data  # ndarray (constants)
        self.instr = instr  # producing Instr (temps)
        self.index = index  # output position in ``instr``

    def __repr__(self):
        return f"Value({self.kind}, {self.type}, {self.name!r})"


class Instr:
    """A future tape instruction: ``op`` applied to input Values, giving output Values."""

    __slots__ = ("op", "inputs", "outputs", "node")

    def __init__(self, op, inputs, outputs, node):
        self.op, self.inputs, self.outputs, self.node = op, inputs, outputs, node


def _const_key(data):
    if data.size > _CONST_BYTES_KEY_LIMIT:
        return ("id", id(data))
    return (data.dtype.name, data.shape, np.ascontiguousarray(data).tobytes())


def _op_name(op):
    return getattr(op, "name", None) if getattr(op, "code", None) is not None else None


class Rewriter:
    """Lowers Apply nodes to :class:`Instr`, rewriting on the way when ``enabled``."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.instrs: list[Instr] = []
        self._consts: dict = {}
        self._cse: dict = {}
        self._canon: dict = {}  # op -> the first equal op seen
        self._canon_by_id: dict = {}  # id(op) -> (op, canonical op): hashes each op instance once
        self.stats = {"simplified": 0, "reduced": 0, "folded": 0, "cse": 0, "dead": 0}

    # -- leaves
    def constant(self, data, type, name=None):
        """The Value of a constant ``data`` (equal constants share one Value when enabled)."""
        data = np.asarray(data)
        if not self.enabled:
            return Value("const", type, name, data=data)
        key = _const_key(data)
        v = self._consts.get(key)
        if v is None:
            v = self._consts[key] = Value("const", type, name, data=data)
        elif v.name is None and name is not None:
            v.name = name
        return v

    # -- nodes
    def apply(self, node, inputs):
        """Output Values of Apply ``node`` whose inputs are the Values ``inputs``."""
        op, key = node.op, None
        if self.enabled:
            if len(node.outputs) == 1:
                reduced = strength_reduce(node, inputs)
                if reduced is not None:
                    self.stats["reduced"] += 1
                    node, inputs = reduced
                    op = node.op

                v = simplify(op, inputs, node.outputs[0].type)
                if v is not None:
                    self.stats["simplified"] += 1
                    return [v]
            folded = self._fold(node, inputs)
            if folded is not None:
                self.stats["folded"] += 1
                return folded
            key = self._cse_key(op, inputs)
            if key is not None and key in self._cse:
                self.stats["cse"] += 1
                return self._cse[key].outputs
        instr = Instr(op, list(inputs), [], node)
        instr.outputs = [Value("temp", o.type, o.name, instr=instr, index=i) for i, o in enumerate(node.outputs)]
        self.instrs.append(instr)
        if self.enabled and key is not None:
            self._cse[key] = instr
        return instr.outputs

    def _cse_key(self, op, inputs):
        hit = self._canon_by_id.get(id(op))
        if hit is None:
            canon = None
            if getattr(op, "code", None) is not None:  # user ops: equality may not capture their state
                try:
                    canon = self._canon.setdefault(op, op)
                except TypeError:
                    pass
            hit = self._canon_by_id[id(op)] = (op, canon)
        if hit[1] is None:
            return None
        return (id(hit[1]), *map(id, inputs))

    def _fold(self, node, inputs):
        if getattr(node.op, "code", None) is None or not all(v.kind == "const" for v in inputs):
            return None
        for out in node.outputs:
            shape = getattr(out.type, "shape", None)
            if shape is None:
                return None
            if all(s is not None for s in shape) and int(np.prod(shape, dtype=np.int64)) > FOLD_LIMIT:
                return None
        storage = [[None] for _ in node.outputs]
        try:
            node.op.perform(node, [v.data for v in inputs], storage)
        except Exception:  # noqa: BLE001 - keep the node; the error is raised when the function runs
            return None
        results = []
        for out, (arr,) in zip(node.outputs, storage):
            arr = np.asarray(arr)
            if arr.dtype.name != out.type.dtype or arr.ndim != out.type.ndim or arr.size > FOLD_LIMIT:
                return None
            results.append(arr)
        values = []
        for out, arr in zip(node.outputs, results):
            arr = arr.copy()
            arr.setflags(write=False)
            values.append(self.constant(arr, TensorType(out.type.dtype, arr.shape), out.name))
        return values

    # -- dead code
    def prune(self, roots):
        """The instructions that ``roots`` (Values) need, in order."""
        live = {id(v) for v in roots}
        kept = []
        for instr in reversed(self.instrs):
            if any(id(o) in live for o in instr.outputs):
                kept.append(instr)
                live.update(id(v) for v in instr.inputs)
            else:
                self.stats["dead"] += 1
        kept.reverse()
        return kept


# --------------------------------------------------------------------------- algebraic simplification
def _const_all(v, pred):
    return v.kind == "const" and v.data.size > 0 and bool(np.all(pred(v.data)))


def _is_one(v):
    return _const_all(v, lambda d: d == 1)


def _is_zero(v):
    return _const_all(v, lambda d: d == 0)


def _is_neg_zero(v):
    """All ``-0.0`` (float) or all ``0`` (int/bool): ``x + c`` is then exactly ``x``."""
    if v.kind != "const":
        return False
    if v.data.dtype.kind == "f":
        return _const_all(v, lambda d: (d == 0) & np.signbit(d))
    return _is_zero(v)


def _passes_through(x, c, out_type):
    """``x`` combined elementwise with constant ``c`` keeps ``x``'s dtype and run-time shape."""
    xt = x.type
    if getattr(xt, "dtype", None) != out_type.dtype or xt.ndim != out_type.ndim:
        return False
    return c.data.ndim <= xt.ndim and all(n == 1 for n in c.data.shape)


def _is_real(v):
    """Float or integer (not complex, not bool) dtype."""
    return np.dtype(getattr(v.type, "dtype", "O")).kind in "fiu"


def strength_reduce(node, inputs):
    """``(node, inputs)`` of a cheaper op that certainly equals ``node`` bit for bit, or None.

    ``pow(x, 2)`` becomes ``sqr(x)`` (``x * x``) for a float or integer ``x`` of the result's dtype and a
    constant exponent of size one: ``x * x`` is the correctly rounded square, the value NumPy's ``power``
    returns for a size-1 exponent (its fast path is ``square``).  ``pow(x, 0.5)`` is *not* ``sqrt(x)``:
    they differ at ``-0.0`` (``+0.0`` vs ``-0.0``) and ``-inf`` (``+inf`` vs ``nan``).
    """
    if _op_name(node.op) != "pow" or len(inputs) != 2:
        return None
    a, b = inputs
    out_type = node.outputs[0].type
    if not (_is_real(a) and _const_all(b, lambda d: d == 2) and _passes_through(a, b, out_type)):
        return None
    from tapegrad.ops.elemwise import _elemwise_by_name

    new = _elemwise_by_name("sqr").make_node(node.inputs[0])
    nt = new.outputs[0].type
    if nt.dtype != out_type.dtype or nt.ndim != out_type.ndim:
        return None
    return new, [a]


def simplify(op, inputs, out_type):
    """The Value that ``op(*inputs)`` certainly equals bit for bit, or None."""
    if getattr(op, "code", None) == "CAST":
        (x,) = inputs
        same = getattr(x.type, "dtype", None) == out_type.dtype and x.type.ndim == out_type.ndim
        return x if same else None
    name = _op_name(op)
    if name == "mul":
        a, b = inputs
        if _is_one(b) and _passes_through(a, b, out_type):
            return a
        if _is_one(a) and _passes_through(b, a, out_type):
            return b
    elif name == "true_div":
        a, b = inputs
        if _is_one(b) and _passes_through(a, b, out_type):
            return a
    elif name == "add":
        a, b = inputs
        if _is_neg_zero(b) and _passes_through(a, b, out_type):
            return a
        if _is_neg_zero(a) and _passes_through(b, a, out_type):
            return b
    elif name == "sub":
        a, b = inputs
        # x - (+0.0) == x for every x (also -0.0); x - (-0.0) is not (gives +0.0 for -0.0)
        if b.kind == "const" and _const_all(b, lambda d: (d == 0) & ~np.signbit(d)) and _passes_through(a, b, out_type):
            return a
    elif name == "pow":
        a, b = inputs
        # pow(x, 1) is x for every IEEE x (nan, +-inf, -0.0 included)
        if _is_one(b) and _is_real(a) and _passes_through(a, b, out_type):
            return a
    elif name == "switch":
        c, a, b = inputs
        # switch(constant c, a, b) with one c for every element and a size-1 constant as the branch not taken
        # (the cotangents where(1.0, g, 0) of a switch's derivative rules): the taken branch, when it already
        # has the result's dtype and rank (the size-1 constants then broadcast nothing)
        if c.kind == "const" and c.data.size == 1 and all(n == 1 for n in c.data.shape):
            taken, other = (a, b) if bool(c.data.reshape(())) else (b, a)
            if (other.kind == "const" and other.data.size == 1 and all(n == 1 for n in other.data.shape)
                    and other.data.ndim <= out_type.ndim and _passes_through(taken, c, out_type)):
                return taken
    elif name == "neg":
        (a,) = inputs
        inner = a.instr
        if a.kind == "temp" and _op_name(inner.op) == "neg":
            x = inner.inputs[0]
            if getattr(x.type, "dtype", None) == out_type.dtype and x.type.ndim == out_type.ndim:
                return x
    return None
