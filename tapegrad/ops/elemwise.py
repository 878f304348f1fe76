"""Elementwise ops: one table row per op.

A row declares the op's name, stable code, arity, output dtype rule, its value
as an expression in ``x0, x1, ...`` and its first partials as expressions in
``x0, x1, ..., y`` (``y`` is the output; ``None`` = passes no gradient).  The
same expression strings are evaluated three ways:

* over NumPy arrays (``perform``, the reference engine),
* over symbolic Variables (``L_op`` builds ``sum_like(azmul(g, df_i), x_i)``,
  ``R_op`` builds ``sum_i azmul(u_i, df_i)``), so the symbolic route needs no
  hand-written rule per op,
* as scalar source code (the compiled engines generate their kernels from it).

``azmul(a, b)`` is the absolute-zero multiply ``0 if a == 0 else a * b``: a zero
cotangent or tangent never turns into NaN through an infinite partial.

A row whose derivative is not that product declares its rules: ``adjoint``
(per input, an expression in ``x0, .., y`` and the output's cotangent ``g``)
and ``tangent`` (per input, an expression in ``x0, .., y`` and that input's
tangent ``u``, the terms summed; or one expression in the tangents ``u0, u1,
..``, 0 where an input has none) replace the ``azmul`` rules.  ``switch``
selects: ``where(x0, g, 0)`` is an exact zero wherever the branch was not
taken, whatever ``g`` holds there, where ``azmul(g, mask)`` is NaN for an inf
``g`` (a Hessian's inner cotangent, the tangent of ``log(x)`` at 0).
``azmul(a, b)`` is 0 for every ``b`` where ``a == 0``, so its derivative in
``b`` is an exact zero there, even for an infinite tangent or cotangent.
:func:`adjoint_term` and :func:`tangent_sum` are the one implementation of
these rules, used by ``L_op``/``R_op`` here and by the sweep route
(``tapegrad/tape/sweep_rules.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tapegrad.graph import Constant, as_tensor, is_float_dtype
from tapegrad.config import config
from tapegrad.op import Apply, Op, grad_not_implemented, make_output, static_broadcast_shape
from tapegrad.registry import register

# --------------------------------------------------------------------------- special functions (NumPy)
try:  # scipy is optional; these are only the reference implementations
    from scipy import special as _sp

    _erf, _erfc, _gammaln, _psi = _sp.erf, _sp.erfc, _sp.gammaln, _sp.digamma

    def _trigamma(x):
        return _sp.polygamma(1, x)

except ImportError:  # pragma: no cover - exercised only without scipy
    _erf = np.vectorize(math.erf, otypes=[float])
    _erfc = np.vectorize(math.erfc, otypes=[float])
    _gammaln = np.vectorize(math.lgamma, otypes=[float])

    def _psi_scalar(x):
        if x <= 0 and x == math.floor(x):
            return math.nan
        acc = 0.0
        if x < 0:  # reflection
            return _psi_scalar(1 - x) - math.pi / math.tan(math.pi * x)
        while x < 10:
            acc -= 1 / x
            x += 1
        f = 1 / (x * x)
        return acc + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f * (1 / 132 - f * (691 / 32760 - f / 12))))))

    def _trigamma_scalar(x):
        if x <= 0 and x == math.floor(x):
            return math.inf
        acc = 0.0
        while x < 10:
            acc += 1 / (x * x)
            x += 1
        f = 1 / (x * x)
        return acc + 1 / x + f / 2 + (1 / x) * f * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f * (1 / 30 - f * (5 / 66 - f * (691 / 2730 - f * 7 / 6))))))

    _psi = np.vectorize(_psi_scalar, otypes=[float])
    _trigamma = np.vectorize(_trigamma_scalar, otypes=[float])


def _keep(f):
    """Wrap a float64-only special function so float32 inputs give float32."""

    def g(x):
        x = np.asarray(x)
        return np.asarray(f(x), dtype=x.dtype if x.dtype.kind == "f" else "float64")

    g.__name__ = getattr(f, "__name__", "special")
    return g


def _azmul(a, b):
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.multiply(a, b)
    return np.where(np.asarray(a) == 0, np.zeros((), dtype=out.dtype), out)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _softplus(x):
    with np.errstate(over="ignore"):
        return np.where(x > 30, x, np.log1p(np.exp(np.minimum(x, 30))))


NUMPY_NAMESPACE = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2, "log10": np.log10,
    "log1p": np.log1p, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos, "tan": np.tan, "arcsin": np.arcsin,
    "arccos": np.arccos, "arctan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "arcsinh": np.arcsinh, "arccosh": np.arccosh, "arctanh": np.arctanh, "abs": np.abs, "sign": np.sign,
    "floor": np.floor, "ceil": np.ceil, "round": np.round, "sigmoid": _sigmoid, "softplus": _softplus,
    "erf": _keep(_erf), "erfc": _keep(_erfc), "gammaln": _keep(_gammaln), "psi": _keep(_psi),
    "trigamma": _keep(_trigamma), "where": np.where, "maximum": np.maximum, "minimum": np.minimum,
    "arctan2": np.arctan2, "hypot": np.hypot, "floor_divide": np.floor_divide, "mod": np.mod,
    "azmul": _azmul, "logical_and": np.logical_and, "logical_or": np.logical_or,
    "logical_not": np.logical_not, "power": np.power, "square": np.square, "reciprocal": np.reciprocal,
    "LN2": math.log(2.0), "LN10": math.log(10.0), "PI": math.pi, "SQRT_PI": math.sqrt(math.pi),
}


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ScalarSpec:
    """One elementwise op.

    ``out`` is the output dtype rule: ``"same"`` (NumPy promotion of the
    inputs), ``"float"`` (promotion, integers become float64), ``"bool"``.
    ``domain`` is ``(low, high)`` of the test inputs, per input.
    """

    name: str
    code: int
    nin: int
    expr: str
    partials: tuple
    out: str = "float"
    domain: tuple = ((-2.0, 2.0),)
    doc: str = ""
    adjoint: tuple = None  # per input: cotangent expression in x0.., y, g (replaces azmul(g, partial))
    tangent: object = None  # per input in x0.., y, u (replaces azmul(u, partial)); or a str in u0, u1, ..

    @property
    def differentiable(self):
        return self.out != "bool" and any(p is not None for p in self.partials)


_ANY = (-3.0, 3.0)
_POS = (0.2, 3.0)
_UNIT = (-0.9, 0.9)

ELEMWISE = [
    # name        code nin value                      partials (x0, x1.., y)                             out     domain
    ScalarSpec("neg", 1, 1, "-x0", ("-1",), "same", (_ANY,)),
    ScalarSpec("abs", 2, 1, "abs(x0)", ("sign(x0)",), "same", (_ANY,), "abs'(0) = 0"),
    ScalarSpec("sign", 3, 1, "sign(x0)", (None,), "same", (_ANY,)),
    ScalarSpec("exp", 4, 1, "exp(x0)", ("y",), "float", (_ANY,)),
    ScalarSpec("exp2", 5, 1, "exp2(x0)", ("y * LN2",), "float", (_ANY,)),
    ScalarSpec("expm1", 6, 1, "expm1(x0)", ("y + 1",), "float", (_ANY,)),
    ScalarSpec("log", 7, 1, "log(x0)", ("1 / x0",), "float", (_POS,)),
    ScalarSpec("log2", 8, 1, "log2(x0)", ("1 / (x0 * LN2)",), "float", (_POS,)),
    ScalarSpec("log10", 9, 1, "log10(x0)", ("1 / (x0 * LN10)",), "float", (_POS,)),
    ScalarSpec("log1p", 10, 1, "log1p(x0)", ("1 / (1 + x0)",), "float", ((-0.8, 3.0),)),
    ScalarSpec("sqrt", 11, 1, "sqrt(x0)", ("0.5 / y",), "float", (_POS,), "sqrt'(0) = inf"),
    ScalarSpec("sqr", 12, 1, "x0 * x0", ("2 * x0",), "same", (_ANY,)),
    ScalarSpec("reciprocal", 13, 1, "1 / x0", ("-(y * y)",), "float", (_POS,)),
    ScalarSpec("sin", 14, 1, "sin(x0)", ("cos(x0)",), "float", (_ANY,)),
    ScalarSpec("cos", 15, 1, "cos(x0)", ("-sin(x0)",), "float", (_ANY,)),
    ScalarSpec("tan", 16, 1, "tan(x0)", ("1 + y * y",), "float", ((-1.2, 1.2),)),
    ScalarSpec("arcsin", 17, 1, "arcsin(x0)", ("1 / sqrt(1 - x0 * x0)",), "float", (_UNIT,)),
    ScalarSpec("arccos", 18, 1, "arccos(x0)", ("-1 / sqrt(1 - x0 * x0)",), "float", (_UNIT,)),
    ScalarSpec("arctan", 19, 1, "arctan(x0)", ("1 / (1 + x0 * x0)",), "float", (_ANY,)),
    ScalarSpec("sinh", 20, 1, "sinh(x0)", ("cosh(x0)",), "float", (_ANY,)),
    ScalarSpec("cosh", 21, 1, "cosh(x0)", ("sinh(x0)",), "float", (_ANY,)),
    ScalarSpec("tanh", 22, 1, "tanh(x0)", ("1 - y * y",), "float", (_ANY,)),
    ScalarSpec("arcsinh", 23, 1, "arcsinh(x0)", ("1 / sqrt(x0 * x0 + 1)",), "float", (_ANY,)),
    ScalarSpec("arccosh", 24, 1, "arccosh(x0)", ("1 / sqrt(x0 * x0 - 1)",), "float", ((1.2, 4.0),)),
    ScalarSpec("arctanh", 25, 1, "arctanh(x0)", ("1 / (1 - x0 * x0)",), "float", (_UNIT,)),
    ScalarSpec("sigmoid", 26, 1, "sigmoid(x0)", ("y * (1 - y)",), "float", (_ANY,)),
    ScalarSpec("softplus", 27, 1, "softplus(x0)", ("sigmoid(x0)",), "float", (_ANY,)),
    ScalarSpec("erf", 28, 1, "erf(x0)", ("(2 / SQRT_PI) * exp(-(x0 * x0))",), "float", (_ANY,)),
    ScalarSpec("erfc", 29, 1, "erfc(x0)", ("(-2 / SQRT_PI) * exp(-(x0 * x0))",), "float", (_ANY,)),
    ScalarSpec("gammaln", 30, 1, "gammaln(x0)", ("psi(x0)",), "float", (_POS,)),
    ScalarSpec("psi", 31, 1, "psi(x0)", ("trigamma(x0)",), "float", (_POS,), "digamma"),
    ScalarSpec("trigamma", 32, 1, "trigamma(x0)", ("NotImplemented",), "float", (_POS,)),
    ScalarSpec("floor", 33, 1, "floor(x0)", (None,), "same", (_ANY,)),
    ScalarSpec("ceil", 34, 1, "ceil(x0)", (None,), "same", (_ANY,)),
    ScalarSpec("round", 35, 1, "round(x0)", (None,), "same", (_ANY,), "half to even, as NumPy"),
    ScalarSpec("logical_not", 36, 1, "logical_not(x0)", (None,), "bool", (_ANY,)),
    ScalarSpec("identity", 37, 1, "x0 + 0", ("1",), "same", (_ANY,)),
    # binary
    ScalarSpec("add", 50, 2, "x0 + x1", ("1", "1"), "same", (_ANY, _ANY)),
    ScalarSpec("sub", 51, 2, "x0 - x1", ("1", "-1"), "same", (_ANY, _ANY)),
    ScalarSpec("mul", 52, 2, "x0 * x1", ("x1", "x0"), "same", (_ANY, _ANY)),
    ScalarSpec("true_div", 53, 2, "x0 / x1", ("1 / x1", "-(y / x1)"), "float", (_ANY, _POS)),
    ScalarSpec("int_div", 54, 2, "floor_divide(x0, x1)", (None, None), "same", (_ANY, _POS)),
    ScalarSpec("mod", 55, 2, "mod(x0, x1)", ("1", "-floor_divide(x0, x1)"), "same", (_ANY, _POS)),
    ScalarSpec("pow", 56, 2, "power(x0, x1)", ("x1 * power(x0, x1 - 1)", "log(x0) * y"), "same", (_POS, _ANY)),
    ScalarSpec("maximum", 57, 2, "maximum(x0, x1)", ("x0 >= x1", "x0 < x1"), "same", (_ANY, _ANY), "ties go to a"),
    ScalarSpec("minimum", 58, 2, "minimum(x0, x1)", ("x0 <= x1", "x0 > x1"), "same", (_ANY, _ANY), "ties go to a"),
    ScalarSpec("arctan2", 59, 2, "arctan2(x0, x1)", ("x1 / (x0 * x0 + x1 * x1)", "-x0 / (x0 * x0 + x1 * x1)"),
               "float", (_ANY, _POS)),
    ScalarSpec("hypot", 60, 2, "hypot(x0, x1)", ("x0 / y", "x1 / y"), "float", (_ANY, _ANY)),
    ScalarSpec("azmul", 61, 2, "azmul(x0, x1)", ("x1", "x0"), "same", (_ANY, _ANY),
               "absolute-zero multiply: 0 * inf = 0; where x0 == 0 the derivative in x1 is an exact zero",
               adjoint=("azmul(g, x1)", "where(x0, azmul(g, x0), 0)"),
               tangent=("azmul(u, x1)", "where(x0, azmul(u, x0), 0)")),
    ScalarSpec("eq", 62, 2, "x0 == x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("neq", 63, 2, "x0 != x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("lt", 64, 2, "x0 < x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("le", 65, 2, "x0 <= x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("gt", 66, 2, "x0 > x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("ge", 67, 2, "x0 >= x1", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("logical_and", 68, 2, "logical_and(x0, x1)", (None, None), "bool", (_ANY, _ANY)),
    ScalarSpec("logical_or", 69, 2, "logical_or(x0, x1)", (None, None), "bool", (_ANY, _ANY)),
    # ternary
    # partials: the masks x0 != 0 and x0 == 0 (a float or int condition too); the rules select, never multiply
    ScalarSpec("switch", 80, 3, "where(x0, x1, x2)", (None, "where(x0, True, False)", "where(x0, False, True)"),
               "same", (_ANY, _ANY, _ANY),
               "the branch not taken gets an exact zero, even where the cotangent or tangent is NaN or inf",
               adjoint=(None, "where(x0, g, 0)", "where(x0, 0, g)"), tangent="where(x0, u1, u2)"),
    ScalarSpec("clip", 81, 3, "minimum(maximum(x0, x1), x2)",
               ("logical_and(x0 >= x1, x0 <= x2)", "x0 < x1", "x0 > x2"), "same", (_ANY, (-1.0, -0.5), (0.5, 1.0))),
]
SPECS = {s.name: s for s in ELEMWISE}
for _s in ELEMWISE:
    register(_s.name.upper(), _s.code, _s)


def _compile_numpy(spec):
    args = ", ".join(f"x{i}" for i in range(spec.nin))
    return eval(f"lambda {args}: {spec.expr}", dict(NUMPY_NAMESPACE))  # noqa: S307 - our own table


_IMPLS = {s.name: _compile_numpy(s) for s in ELEMWISE}


# --------------------------------------------------------------------------- dtype promotion
def _promote_key(v):
    if isinstance(v, Constant) and v.weak is not None:
        return v.weak  # Python scalars are weak (NEP 50)
    return np.dtype(v.dtype)


def upcast(*variables):
    """NumPy 2 result dtype of ``variables`` (Python-scalar constants do not upcast)."""
    keys = [_promote_key(v) for v in variables]
    if all(not isinstance(k, np.dtype) for k in keys):
        keys = [np.asarray(k).dtype for k in keys]
    dt = np.result_type(*keys).name
    if dt == "float16":
        dt = "float32"
    if np.dtype(dt).kind in "iu":  # a weak Python int must fit the integer dtype it takes (NumPy 2 raises)
        info = np.iinfo(dt)
        for k in keys:
            if isinstance(k, int) and not isinstance(k, bool) and not info.min <= k <= info.max:
                raise OverflowError(f"Python integer {k} out of bounds for {dt}")
    return dt


def float_dtype(dtype):
    """``dtype`` if float, else float64 (as NumPy's float functions of ints)."""
    return dtype if is_float_dtype(dtype) else "float64"


# NumPy 2 on bool operands: these keep bool (add is logical or, mul logical and, ...)
BOOL_KEEPS = frozenset({"abs", "floor", "ceil", "identity", "add", "mul", "maximum", "minimum", "azmul", "switch",
                        "clip"})
# ... these have no bool loop in NumPy (TypeError there, and here at graph construction)
BOOL_REFUSES = {
    "neg": "The numpy boolean negative, the `-` operator, is not supported, use the `~` operator or the "
           "logical_not function instead",
    "sub": "numpy boolean subtract, the `-` operator, is not supported, use the bitwise_xor, the `^` operator, "
           "or the logical_xor function instead",
    "sign": "sign of a bool is not supported (NumPy has no bool loop for it); cast the operand first",
}
# The rest give int8 (sqr, int_div, mod, pow) or float16 (round) in NumPy, dtypes tapegrad does not have:
# int64 here, computed from the values 0/1 on every device.


def _bool_result(name):
    """Result dtype of op ``name`` on bool operands (NumPy 2's, where tapegrad has that dtype)."""
    if name in BOOL_REFUSES:
        raise TypeError(f"{name} of bool operands: {BOOL_REFUSES[name]}")
    return "bool" if name in BOOL_KEEPS else "int64"


# --------------------------------------------------------------------------- the op
class Elemwise(Op):
    """An elementwise op given by a :class:`ScalarSpec` row, with NumPy broadcasting."""

    __props__ = ("name",)
    kind = "elementwise"

    def __init__(self, spec):
        self.spec = spec
        self.name = spec.name
        self.code = spec.name.upper()

    def __str__(self):
        return self.name

    def __reduce__(self):
        return (_elemwise_by_name, (self.name,))

    def encode(self):
        return (), ()  # the op code says everything

    def make_node(self, *inputs):
        spec = self.spec
        if len(inputs) != spec.nin:
            raise TypeError(f"{spec.name} takes {spec.nin} input(s), got {len(inputs)}")
        inputs = [as_tensor(x) for x in inputs]
        if spec.name == "switch":
            dtype = upcast(inputs[1], inputs[2])
        elif spec.name == "clip":
            dtype = upcast(*inputs)
        else:
            dtype = upcast(*inputs)
        if spec.out == "bool":
            dtype = "bool"
        elif spec.out == "float":
            dtype = float_dtype(dtype)
        elif dtype == "bool":
            dtype = _bool_result(spec.name)
        shape = static_broadcast_shape([x.type.shape for x in inputs], spec.name)
        return Apply(self, inputs, [make_output(dtype, shape)])

    def perform(self, node, inputs, output_storage):
        out_type = node.outputs[0].type
        try:
            with np.errstate(all="ignore"):
                y = _IMPLS[self.name](*inputs)
        except ValueError as e:
            if "broadcast" in str(e):
                shapes = " and ".join(str(np.shape(x)) for x in inputs)
                names = ", ".join(str(x) for x in node.inputs)
                raise ValueError(f"{self.name}: shapes {shapes} of ({names}) cannot be broadcast together") from None
            raise
        y = np.asarray(y, dtype=out_type.dtype)
        if y.ndim != out_type.ndim:
            y = y.reshape(y.shape)
        output_storage[0][0] = y

    def infer_shape(self, node, input_shapes):
        return [tuple(np.broadcast_shapes(*input_shapes))]

    # -- derivatives from the table
    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops import zeros_like
        from tapegrad.ops.broadcast import sum_like

        (gz,) = output_grads
        (y,) = outputs
        grads = []
        for i, x in enumerate(inputs):
            gdtype = x.dtype if is_float_dtype(x.dtype) else config.floatX
            p = self.spec.partials[i]
            if p is None or not is_float_dtype(y.dtype):
                grads.append(zeros_like(x, dtype=gdtype))
                continue
            if p == "NotImplemented":
                grads.append(grad_not_implemented(self, i, x, "(the next derivative is not in the table)"))
                continue
            g = adjoint_term(self.spec, i, inputs, y, gz)
            if not _same_static_shape(x, y):
                g = sum_like(g, x)
            if g.dtype != gdtype:
                g = g.astype(gdtype)
            grads.append(g)
        return grads

    def R_op(self, inputs, eval_points):
        from tapegrad.ops import zeros_like
        from tapegrad.ops.broadcast import broadcast_like

        y = self(*inputs)
        out_dtype = y.dtype if is_float_dtype(y.dtype) else config.floatX
        if not is_float_dtype(y.dtype):
            return [zeros_like(y, dtype=out_dtype)]
        for i, u in enumerate(eval_points):
            if u is not None and self.spec.partials[i] == "NotImplemented":
                raise NotImplementedError(f"R_op of {self.name} for input {i} is not implemented")
        total = tangent_sum(self.spec, inputs, y, eval_points)
        if total is None:
            return [zeros_like(y, dtype=out_dtype)]
        if not _same_static_shape(total, y):
            total = broadcast_like(total, y)
        if total.dtype != out_dtype:
            total = total.astype(out_dtype)
        return [total]


def _eval_rule(expr, inputs, y, **extra):
    ns = _symbolic_namespace()
    ns.update({f"x{k}": x for k, x in enumerate(inputs)})
    ns["y"] = y
    ns.update(extra)
    return eval(expr, ns)  # noqa: S307 - our own table


def partial_var(spec, i, inputs, y):
    """The partial ``d y / d x_i`` of row ``spec`` as a symbolic Variable."""
    return _eval_rule(spec.partials[i], inputs, y)


def adjoint_term(spec, i, inputs, y, g):
    """Cotangent of input ``i`` (at the output's shape, before any reduction to the input's) from the output's
    cotangent ``g``: the row's ``adjoint`` selection where it declares one, else ``azmul(g, partial_i)``.

    The caller has checked that ``partials[i]`` is neither None nor ``"NotImplemented"``."""
    if spec.adjoint is not None:
        return _eval_rule(spec.adjoint[i], inputs, y, g=g)
    p = spec.partials[i]
    if p == "1":
        return g
    if p == "-1":
        return neg(g)
    return azmul(g, partial_var(spec, i, inputs, y))


def tangent_sum(spec, inputs, y, tangents):
    """Tangent of the output from the inputs' tangents (None = zero), at the broadcast shape of the terms; None
    when no differentiable input has a tangent.  The caller has checked for ``"NotImplemented"`` partials."""
    live = [u if (u is not None and spec.partials[i] is not None) else None for i, u in enumerate(tangents)]
    if all(u is None for u in live):
        return None
    if isinstance(spec.tangent, str):
        us = {f"u{i}": (0 if u is None else u) for i, u in enumerate(live)}
        return _eval_rule(spec.tangent, inputs, y, **us)
    total = None
    for i, u in enumerate(live):
        if u is None:
            continue
        p = spec.partials[i]
        if spec.tangent is not None:
            t = _eval_rule(spec.tangent[i], inputs, y, u=u)
        else:
            t = u if p == "1" else neg(u) if p == "-1" else azmul(u, partial_var(spec, i, inputs, y))
        total = t if total is None else add(total, t)
    return total


def _same_static_shape(a, b):
    """True when ``a`` and ``b`` certainly have the same run-time shape.

    Either every length is statically known and equal, or both variables
    trace back (through elementwise ops with scalar-like partners,
    ``sum_like`` and ``broadcast_like``) to one variable whose shape they share.
    """
    sa, sb = a.type.shape, b.type.shape
    if len(sa) != len(sb):
        return False
    if a is b or all(x is not None and x == y for x, y in zip(sa, sb)):
        return True
    return shape_root(a) is shape_root(b)


def _scalar_like(v, ndim):
    return v.ndim <= ndim and all(n == 1 for n in v.type.shape)


def shape_root(v):
    """A variable known to have ``v``'s run-time shape, as far up the graph as that is provable.

    Iterative with memoisation in ``var.tag`` (graphs of unrolled loops are deep).
    """
    stack = [v]
    while stack:
        u = stack[-1]
        if "shape_root" in u.tag:
            stack.pop()
            continue
        deps = _shape_deps(u)
        pending = [d for d in deps if "shape_root" not in d.tag]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        roots = {id(d.tag["shape_root"]): d.tag["shape_root"] for d in deps}
        u.tag["shape_root"] = next(iter(roots.values())) if len(roots) == 1 else u
    return v.tag["shape_root"]


def _shape_deps(v):
    """Variables that all share ``v``'s shape by construction (empty: ``v`` is a root)."""
    from tapegrad.ops.broadcast import BroadcastLike, SumLike

    node = v.owner
    if node is None:
        return []
    op = node.op
    if isinstance(op, SumLike):
        cands = [node.inputs[1]]
    elif isinstance(op, (Elemwise, Cast, BroadcastLike)):
        cands = [x for x in node.inputs if not _scalar_like(x, v.ndim)]
    elif getattr(op, "code", None) in _VIEW_CODES:
        cands = [node.inputs[0]]
    elif getattr(op, "output_shape_of", None) is not None and v.index == 0:
        cands = [node.inputs[op.output_shape_of]]
    else:
        return []
    if not cands or any(x.ndim != v.ndim for x in cands):
        return []
    return cands


_VIEW_CODES = {"ZERO_GRAD", "DISCONNECTED_GRAD", "CONSIDER_CONSTANT", "GRAD_CLIP", "GRAD_SCALE", "UNDEFINED_GRAD"}


_BY_NAME = {s.name: Elemwise(s) for s in ELEMWISE}


def _elemwise_by_name(name):
    return _BY_NAME[name]


_SYMBOLIC = None


def _symbolic_namespace():
    """Names used in partial expressions, bound to symbolic ops."""
    global _SYMBOLIC
    if _SYMBOLIC is None:
        ns = {k: v for k, v in NUMPY_NAMESPACE.items() if isinstance(v, float)}
        for name in ("exp", "log", "sqrt", "sin", "cos", "sinh", "cosh", "sign", "sigmoid", "psi", "trigamma",
                     "floor_divide", "azmul", "logical_and", "logical_not", "power", "where"):
            ns[name] = _fn(_BY_NAME[_ALIASES.get(name, name)])
        _SYMBOLIC = ns
    return dict(_SYMBOLIC)


_ALIASES = {"floor_divide": "int_div", "power": "pow", "where": "switch"}


def _fn(op):
    def call(*args):
        return op(*args)

    call.__name__ = op.name
    return call


def _make_public(spec):
    op = _BY_NAME[spec.name]
    args = ", ".join(f"x{i}" for i in range(spec.nin)) or ""

    def f(*xs):
        return op(*xs)

    f.__name__ = spec.name
    f.__qualname__ = spec.name
    f.__doc__ = (
        f"Elementwise ``{spec.expr}`` of ({args}) with NumPy broadcasting.\n\n"
        f"Partials: {', '.join(str(p) for p in spec.partials)}. {spec.doc}"
    )
    return f


_PUBLIC = {s.name: _make_public(s) for s in ELEMWISE}
globals().update(_PUBLIC)
azmul = _PUBLIC["azmul"]
where = _PUBLIC["switch"]
true_divide = _PUBLIC["true_div"]
floor_div = _PUBLIC["int_div"]
power = _PUBLIC["pow"]
digamma = _PUBLIC["psi"]
square = _PUBLIC["sqr"]
invert = _PUBLIC["logical_not"]


# --------------------------------------------------------------------------- cast
class Cast(Op):
    """``x.astype(dtype)``.  Casting to an integer dtype passes no gradient."""

    __props__ = ("dtype",)
    kind = "elementwise"
    code = "CAST"

    def __init__(self, dtype):
        self.dtype = resolve_dtype(dtype)

    def make_node(self, x):
        x = as_tensor(x)
        return Apply(self, [x], [make_output(self.dtype, x.type.shape)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = np.asarray(inputs[0]).astype(self.dtype)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.ops import zeros_like

        (x,) = inputs
        gdtype = x.dtype if is_float_dtype(x.dtype) else config.floatX
        if not is_float_dtype(self.dtype):
            return [zeros_like(x, dtype=gdtype)]
        return [cast(output_grads[0], gdtype)]

    def R_op(self, inputs, eval_points):
        from tapegrad.ops import zeros_like

        (x,), (u,) = inputs, eval_points
        if not is_float_dtype(self.dtype):
            return [zeros_like(self(x), dtype=config.floatX)]
        if u is None:
            return [None]
        return [cast(u, self.dtype)]


register("CAST", 90, Cast)


def resolve_dtype(dtype):
    """The dtype name ``dtype`` stands for; ``"floatX"`` is :attr:`tg.config.floatX` (as in Aesara)."""
    if isinstance(dtype, str) and dtype == "floatX":
        return config.floatX
    return np.dtype(dtype).name


def cast(x, dtype):
    """``x`` converted to ``dtype`` (a no-op when it already has it); ``"floatX"`` means ``tg.config.floatX``."""
    x = as_tensor(x)
    dtype = resolve_dtype(dtype)
    if x.dtype == dtype:
        return x
    return Cast(dtype)(x)


__all__ = sorted(
    set(_PUBLIC) | {"cast", "where", "true_divide", "floor_div", "power", "digamma", "square", "invert"}
)
