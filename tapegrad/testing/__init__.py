"""Public gradient checkers: ``verify_grad``, ``numeric_grad``, ``check_grads``,
``check_adjoint`` and ``compare_backends``.

``verify_grad``/``numeric_grad``/``GradientError`` reproduce ``aesara.gradient``
(a one-sided finite difference of a random projection ``sum(r * fun(x))``,
``r ~ U[0.5, 1.5)``; default step and tolerances by dtype).  The other three
follow JAX's ``check_grads`` style: directional central differences, forward
mode checked through ``Rop`` and reverse mode through ``Lop``, and the exact
dot-product test ``<v, J u> == <J^T v, u>`` that needs no step size.

Graph builders (``fun``/``f`` below) take symbolic Variables and return a
Variable (or, where stated, a list of Variables).  ``tapegrad.gradient`` and
``tapegrad.compile.function`` are imported lazily, inside the functions.
"""

from __future__ import annotations

import builtins

import numpy as np

__all__ = [
    "GradientError",
    "numeric_grad",
    "verify_grad",
    "check_grads",
    "check_adjoint",
    "compare_backends",
    "default_tolerance",
]

# Aesara's tables (aesara/gradient.py): finite-difference step and tolerances by dtype.
_TYPE_EPS = {"float64": 1e-7, "float32": 3e-4, "float16": 1e-1}
_TYPE_TOL = {"float64": 1e-4, "float32": 1e-2, "float16": 5e-2}
# check_grads: central-difference step and relative tolerance by dtype (JAX's defaults, with a
# float32 step large enough for single-precision round-off).
_CENTRAL_EPS = {"float64": 1e-5, "float32": 1e-2}
_CHECK_RTOL = {"float64": 1e-5, "float32": 2e-2}
# Same results across devices (SPEC section 3) and exact identities.
_BACKEND_RTOL = {"float64": 1e-12, "float32": 1e-5}
_ADJOINT_RTOL = {"float64": 1e-10, "float32": 1e-4}


def default_tolerance(dtype, kind="grad"):
    """Relative tolerance used by the checkers for ``dtype``.

    ``kind``: ``"grad"`` (verify_grad), ``"check"`` (check_grads), ``"backend"``
    (compare_backends) or ``"adjoint"`` (check_adjoint).
    """
    table = {"grad": _TYPE_TOL, "check": _CHECK_RTOL, "backend": _BACKEND_RTOL, "adjoint": _ADJOINT_RTOL}[kind]
    dtype = np.dtype(dtype).name
    return table.get(dtype, table["float64"])


# --------------------------------------------------------------------------- errors
class GradientError(Exception):
    """Raised when the analytic and numeric gradients differ beyond tolerance.

    Attributes
    ----------
    arg : int
        Index of the input whose gradient is wrong.
    err_pos : int
        Flat position of the worst element in that input.
    shape : tuple
        Shape of that input's gradient.
    val1, val2 : float
        Analytic (``val1``) and numeric (``val2``) values at ``err_pos``.
    abs_err, rel_err, abs_tol, rel_tol : float
        The errors found there and the tolerances they exceed.
    """

    def __init__(self, arg, err_pos, shape, val1, val2, abs_err, rel_err, abs_tol, rel_tol):
        super().__init__()
        self.arg = arg
        self.err_pos = err_pos
        self.shape = shape
        self.val1 = val1
        self.val2 = val2
        self.abs_err = abs_err
        self.rel_err = rel_err
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol

    def __str__(self):
        args_msg = ", ".join(str(a) for a in self.args)
        return (
            "GradientError: numeric gradient and analytic gradient exceed tolerance:\n"
            f"        At position {self.err_pos} of argument {self.arg} with shape {self.shape},\n"
            f"            val1 = {self.val1:f}      ,  val2 = {self.val2:f}\n"
            f"            abs. error = {self.abs_err:f},  abs. tolerance = {self.abs_tol:f}\n"
            f"            rel. error = {self.rel_err:f},  rel. tolerance = {self.rel_tol:f}\n"
            f"Exception args: {args_msg}"
        )


# --------------------------------------------------------------------------- numeric_grad (Aesara)
class numeric_grad:  # noqa: N801 - Aesara's name
    """Numeric derivative of a scalar-valued function ``f`` at ``pt`` (one-sided differences).

    ``gf[i][k] = (f(pt + eps e_k) - f(pt)) / eps`` for every element ``k`` of
    every argument ``i``; ``gf`` is a list mirroring ``pt`` (one array when
    ``pt`` is a single array).  All arguments share one working buffer of the
    most precise dtype among them; ``eps`` defaults to the largest step of
    their dtypes (float64 1e-7, float32 3e-4).
    """

    type_eps = {**_TYPE_EPS, **{np.dtype(k): v for k, v in _TYPE_EPS.items()}}

    def __init__(self, f, pt, eps=None, out_type=None):
        packed_pt = False
        if not isinstance(pt, (list, tuple)):
            pt = [pt]
            packed_pt = True
        apt = [np.array(p) for p in pt]
        shapes = [p.shape for p in apt]
        dtypes = [str(p.dtype) for p in apt]
        for i, dt in enumerate(dtypes):
            if dt not in self.type_eps:
                raise TypeError(f"numeric_grad: argument {i} has dtype {dt}; only float arguments can be perturbed")
        total_size = builtins.sum(int(np.prod(sh, dtype=np.int64)) for sh in shapes)
        working_dtype = builtins.min((self.type_eps[dt], dt) for dt in dtypes)[1]
        x = np.ndarray((total_size,), dtype=working_dtype)
        if out_type is not None and str(out_type).startswith("complex"):
            gx = np.ndarray((total_size,), dtype=out_type)
        else:
            gx = np.ndarray((total_size,), dtype=working_dtype)
        if eps is None:
            eps = builtins.max(self.type_eps[dt] for dt in dtypes)
        self.eps = eps

        cur = 0
        self.gf = []
        for i, p in enumerate(apt):
            size = int(np.prod(p.shape, dtype=np.int64))
            apt[i] = x[cur : cur + size].reshape(p.shape)
            self.gf.append(gx[cur : cur + size].reshape(p.shape))
            apt[i][...] = p
            cur += size

        f_x = f(*[p.copy() for p in apt])
        x_copy = x.copy()
        for i in range(total_size):
            x[:] = x_copy
            x[i] += eps
            f_eps = f(*[p.copy() for p in apt])
            gx[i] = (f_eps - f_x) / eps
        if packed_pt:
            self.gf = self.gf[0]

    @staticmethod
    def abs_rel_err(a, b):
        """``(abs(a - b), abs(a - b) / max(abs(a) + abs(b), 1e-8))`` as arrays."""
        abs_err = abs(a - b)
        rel_err = abs_err / np.maximum(abs(a) + abs(b), [1e-8])
        return np.asarray(abs_err), np.asarray(rel_err)

    def abs_rel_errors(self, g_pt):
        """Per-argument ``(abs_err, rel_err)`` of the gradient estimate ``g_pt`` against ``gf``.

        Raises ``ValueError`` when the lengths or the shapes differ.
        """
        gf = self.gf if isinstance(self.gf, list) else [self.gf]
        if not isinstance(g_pt, (list, tuple)):
            g_pt = [g_pt]
        if len(g_pt) != len(gf):
            raise ValueError("argument has wrong number of elements", len(g_pt))
        errs = []
        for i, (a, b) in enumerate(zip(g_pt, gf)):
            a = np.asarray(a)
            if a.shape != b.shape:
                raise ValueError(f"argument element {i} has wrong shapes {a.shape}, {b.shape}")
            errs.append(numeric_grad.abs_rel_err(a, b))
        return errs

    def max_err(self, g_pt, abs_tol, rel_tol):
        """``(max_arg, max_pos, abs_err, rel_err)`` where ``min(abs_err/abs_tol, rel_err/rel_tol)`` peaks.

        A scaled error above 1 means both tolerances are exceeded.  Raises
        ``ValueError`` when an error is not finite.  Empty arguments are skipped.
        """
        pos, errs, abs_errs, rel_errs = [], [], [], []
        for abs_err, rel_err in self.abs_rel_errors(g_pt):
            if not np.all(np.isfinite(abs_err)):
                raise ValueError("abs_err not finite", repr(abs_err))
            if not np.all(np.isfinite(rel_err)):
                raise ValueError("rel_err not finite", repr(rel_err))
            if abs_err.size == 0:
                pos.append(0)
                errs.append(-np.inf)
                abs_errs.append(0.0)
                rel_errs.append(0.0)
                continue
            scaled = np.minimum(abs_err / abs_tol, rel_err / rel_tol)
            max_i = int(scaled.argmax())
            pos.append(max_i)
            errs.append(scaled.flatten()[max_i])
            abs_errs.append(abs_err.flatten()[max_i])
            rel_errs.append(rel_err.flatten()[max_i])
        max_arg = int(np.argmax(errs))
        return max_arg, pos[max_arg], abs_errs[max_arg], rel_errs[max_arg]


# --------------------------------------------------------------------------- helpers
def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _rng(rng, seed=20240607):
    if rng is None:
        return np.random.default_rng(seed)
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    return rng


def _uniform(rng, shape, low=0.0, high=1.0):
    if hasattr(rng, "uniform"):
        return rng.uniform(low, high, size=shape)
    return low + (high - low) * rng.random(shape)


def _normal(rng, shape):
    if hasattr(rng, "standard_normal"):
        return rng.standard_normal(shape)
    return rng.randn(*shape)


def _input_like(value, name):
    """A fresh input Variable with the dtype of ``value`` (length-1 axes static, as Aesara)."""
    from tapegrad.graph import TensorType, Variable

    value = np.asarray(value)
    shape = tuple(1 if n == 1 else None for n in value.shape)
    return Variable(TensorType(value.dtype, shape), name=name)


def _is_float(dtype):
    return np.dtype(dtype).kind == "f"


class _ReferenceFunction:
    """Stand-in for ``function(..., device="python")`` while the compile module is missing."""

    def __init__(self, inputs, outputs):
        self.inputs = list(inputs)
        self.outputs = outputs

    def __call__(self, *args):
        from tapegrad.compile.reference import evaluate

        if len(args) != len(self.inputs):
            raise TypeError(f"expected {len(self.inputs)} argument(s), got {len(args)}")
        values = {v: v.type.filter(a, name=str(v)) for v, a in zip(self.inputs, args)}
        outs = [np.array(o, copy=True) for o in evaluate(_as_list(self.outputs), values)]
        return outs if isinstance(self.outputs, (list, tuple)) else outs[0]


def compile_function(inputs, outputs, device=None):
    """``tapegrad.function(inputs, outputs, device=device, on_unused_input="ignore")``.

    ``device=None`` uses the library default.  Falls back to the reference
    evaluator for ``device in (None, "python")`` when ``tapegrad.compile.function``
    does not exist (during development).
    """
    try:
        from tapegrad.compile.function import function
    except ModuleNotFoundError as e:
        if e.name not in ("tapegrad.compile.function",) or device not in (None, "python"):
            raise
        return _ReferenceFunction(inputs, outputs)
    kwargs = {"on_unused_input": "ignore"}
    if device is not None:
        kwargs["device"] = device
    return function(list(inputs), outputs, **kwargs)


def _sum_all(x):
    """``x.sum()`` (a 0-d Variable)."""
    import tapegrad.ops as ops

    if x.ndim == 0:
        return x
    return ops.sum(x)


def _vdot(a, b):
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def _abs_vdot(a, b):
    return float(np.sum(np.abs(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64))))


# --------------------------------------------------------------------------- verify_grad (Aesara)
def verify_grad(
    fun,
    pt,
    n_tests=2,
    rng=None,
    eps=None,
    out_type=None,
    abs_tol=None,
    rel_tol=None,
    mode=None,
    cast_to_output_type=False,
):
    """Check the gradient of ``fun`` at ``pt`` against finite differences; raise on failure.

    The output ``o = fun(*inputs)`` is projected to the scalar
    ``cost = sum(r * o)`` with ``r ~ U[0.5, 1.5)`` (redrawn for each of
    ``n_tests``), and ``grad(cost, inputs)`` is compared with
    :class:`numeric_grad` of ``cost``.  Failure is an element where both
    ``abs_err > abs_tol`` and ``rel_err > rel_tol``.

    Parameters
    ----------
    fun : callable
        ``fun(*variables) -> Variable`` (e.g. an Op instance); one output only.
    pt : list of ndarray
        Points (float arrays) where the gradient is checked.
    n_tests : int
        Number of random projections.
    rng : numpy Generator or RandomState, optional
        Source of the projections (default: a fixed-seed Generator).
    eps : float, optional
        Finite-difference step (default by dtype: float64 1e-7, float32 3e-4).
    out_type : str, optional
        Output dtype if complex (kept for Aesara compatibility).
    abs_tol, rel_tol : float, optional
        Tolerances (default by dtype: float64 1e-4, float32 1e-2; the largest
        over the inputs).
    mode : str, optional
        Device name passed to ``function`` (``"python"``, ``"cpu"``, ``"cuda"``).
    cast_to_output_type : bool
        Draw the projection in float32 when the output is float32.

    Raises
    ------
    GradientError
        With ``val1`` the analytic value and ``val2`` the numeric one.
    """
    from tapegrad.gradient import grad
    from tapegrad.graph import shared

    if not isinstance(pt, (list, tuple)):
        raise TypeError("`pt` should be a list or tuple")
    pt = [np.array(p) for p in pt]
    for i, p in enumerate(pt):
        if p.dtype.name not in ("float16", "float32", "float64"):
            raise TypeError(
                f'verify_grad can work only with floating point inputs, but input {i} has dtype "{p.dtype}".'
            )
    if abs_tol is None:
        abs_tol = builtins.max(_TYPE_TOL[str(p.dtype)] for p in pt)
    if rel_tol is None:
        rel_tol = builtins.max(_TYPE_TOL[str(p.dtype)] for p in pt)
    rng = _rng(rng)

    tensor_pt = [_input_like(p, f"input {i}") for i, p in enumerate(pt)]
    o_output = fun(*tensor_pt)
    if isinstance(o_output, (list, tuple)):
        raise NotImplementedError("Can't (yet) auto-test the gradient of a function with multiple outputs")
    o_fn = compile_function(tensor_pt, o_output, device=mode)
    o_fn_out = o_fn(*[p.copy() for p in pt])
    if isinstance(o_fn_out, (list, tuple)):
        raise TypeError(
            "It seems like you are trying to use verify_grad on an Op or a function which outputs a list: "
            "there should be a single (array-like) output instead"
        )
    o_fn_out = np.asarray(o_fn_out)

    def random_projection():
        plain = _uniform(rng, o_fn_out.shape) + 0.5
        if cast_to_output_type and o_output.dtype == "float32":
            return np.array(plain, dtype="float32")
        return np.array(plain, dtype="float64")

    t_r = shared(random_projection(), name="random_projection")

    def cost_of(*args):  # sum(r * fun(x)); numeric_grad works in the most precise dtype: cast back per input
        out = np.asarray(o_fn(*[np.asarray(a, dtype=p.dtype) for a, p in zip(args, pt)]))
        r = t_r.get_value(borrow=True)
        return np.sum(r * out, dtype=np.result_type(r, out, np.float32))

    symbolic_grad = grad(_sum_all(t_r * o_output), tensor_pt, disconnected_inputs="ignore")
    grad_fn = compile_function(tensor_pt, list(symbolic_grad), device=mode)

    for test_num in range(n_tests):
        num_grad = numeric_grad(cost_of, [p.copy() for p in pt], eps, out_type)
        analytic_grad = [np.asarray(g) for g in grad_fn(*[p.copy() for p in pt])]
        max_arg, max_err_pos, max_abs_err, max_rel_err = num_grad.max_err(analytic_grad, abs_tol, rel_tol)
        if max_abs_err > abs_tol and max_rel_err > rel_tol:
            raise GradientError(
                max_arg,
                max_err_pos,
                analytic_grad[max_arg].shape,
                analytic_grad[max_arg].flatten()[max_err_pos],
                num_grad.gf[max_arg].flatten()[max_err_pos],
                max_abs_err,
                max_rel_err,
                abs_tol,
                rel_tol,
            )
        if test_num < n_tests - 1:
            t_r.set_value(random_projection())


# --------------------------------------------------------------------------- check_grads (JAX style)
def _build(f, args, names="x"):
    """Input Variables like ``args`` and ``f``'s outputs (always a list) on them."""
    xs = [_input_like(a, f"{names}{i}") for i, a in enumerate(args)]
    outs = f(*xs)
    return xs, _as_list(outs), isinstance(outs, (list, tuple))


def _float_outputs(outs):
    return [o for o in outs if o is not None and o.dtype is not None and _is_float(o.dtype)]


def _close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    if actual.size == 0:
        return
    bad = ~(np.abs(actual - expected) <= atol + rtol * np.abs(expected))
    bad &= ~(np.isnan(actual) & np.isnan(expected))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} element(s) differ beyond rtol={rtol:g}, atol={atol:g}; "
            f"first at flat index {k}: got {actual.flat[k]!r}, expected {expected.flat[k]!r}\n"
            f"got:      {actual!r}\nexpected: {expected!r}"
        )


def _central_jvp(fn, args, tangents, eps):
    """``(f(x + eps u) - f(x - eps u)) / (2 eps)`` for each output of the compiled ``fn``."""
    plus = _as_list(fn(*[a + eps * t.astype(a.dtype) for a, t in zip(args, tangents)]))
    minus = _as_list(fn(*[a - eps * t.astype(a.dtype) for a, t in zip(args, tangents)]))
    return [(np.asarray(p, np.float64) - np.asarray(m, np.float64)) / (2 * eps) for p, m in zip(plus, minus)]


def check_grads(f, args, order=1, modes=("fwd", "rev"), eps=None, rtol=None, atol=None, rng=None, mode=None):
    """Check derivatives of ``f`` at ``args`` up to ``order`` against central differences.

    JAX's ``check_grads``: for a random direction ``u`` the finite-difference
    JVP ``(f(x + eps u) - f(x - eps u)) / (2 eps)`` is compared with
    ``Rop(f, x, u)`` (``"fwd"``), and ``<Lop(f, x, v), u>`` with
    ``<v, JVP>`` for a random cotangent ``v`` (``"rev"``).  With
    ``order=2`` the same checks run on ``x -> Rop(f, x, u')`` and
    ``x -> Lop(f, x, v')`` (derivatives of derivatives), and so on.

    Parameters
    ----------
    f : callable
        ``f(*variables) -> Variable`` or a list of Variables.
    args : sequence of ndarray
        The point (float arrays).
    order : int
        Highest derivative order checked (1 or 2; more works, slowly).
    modes : tuple of {"fwd", "rev"}
    eps : float, optional
        Central-difference step (default by dtype: float64 1e-5, float32 1e-2).
    rtol, atol : float, optional
        Tolerances (default rtol by dtype: float64 1e-5, float32 2e-2;
        ``atol`` 0).  ``"fwd"``: ``|Rop - fd| <= rtol * (max|fd| + |fd|) + atol``
        elementwise; ``"rev"``: ``|<Lop, u> - <v, fd>| <= rtol * (sum|v * fd| +
        sum|Lop * u|) + atol``.  ``atol`` is an absolute floor, for points where
        the derivatives are all (nearly) zero and rounding noise such as 1e-220
        would exceed any relative tolerance.
    rng : Generator, RandomState or int, optional
        Source of directions (default: fixed seed).
    mode : str, optional
        Device name for ``function``.

    Raises
    ------
    AssertionError
        Naming the mode, the order and the worst element.
    """
    from tapegrad.gradient import Lop, Rop

    args = [np.array(a) for a in args]
    for i, a in enumerate(args):
        if not _is_float(a.dtype):
            raise TypeError(f"check_grads: argument {i} has dtype {a.dtype}; only float arguments are checked")
    rng = _rng(rng)
    modes = tuple(modes)
    for m in modes:
        if m not in ("fwd", "rev"):
            raise ValueError(f"check_grads: unknown mode {m!r} (use 'fwd' and/or 'rev')")
    dtype = np.result_type(*args).name if args else "float64"
    eps = _CENTRAL_EPS.get(dtype, 1e-5) if eps is None else eps
    rtol = _CHECK_RTOL.get(dtype, 1e-5) if rtol is None else rtol

    xs, outs, _ = _build(f, args)
    fouts = _float_outputs(outs)
    if not fouts:
        raise ValueError("check_grads: f has no float output to differentiate")
    fn = compile_function(xs, fouts, device=mode)
    tangents = [_normal(rng, a.shape) for a in args]
    fd = _central_jvp(fn, args, tangents, eps)
    scale = builtins.max([float(np.max(np.abs(t))) if t.size else 0.0 for t in fd] + [1e-30])
    tol_abs = rtol * scale + (0.0 if atol is None else atol)

    if "fwd" in modes:
        us = [_input_like(a, f"u{i}") for i, a in enumerate(args)]
        jvp = Rop(fouts, xs, us, disconnected_outputs="ignore")
        jvp_fn = compile_function(xs + us, list(jvp), device=mode)
        got = jvp_fn(*args, *[t.astype(a.dtype) for t, a in zip(tangents, args)])
        for k, (g, e) in enumerate(zip(got, fd)):
            _close(g, e, rtol, tol_abs, f"check_grads: order-1 fwd (Rop) of output {k}")

    if "rev" in modes:
        cots = [_normal(rng, np.shape(e)) for e in fd]
        vs = [_input_like(np.zeros(c.shape, o.dtype), f"v{k}") for k, (c, o) in enumerate(zip(cots, fouts))]
        vjp = Lop(fouts, xs, vs, disconnected_inputs="ignore")
        vjp_fn = compile_function(xs + vs, list(vjp), device=mode)
        got = vjp_fn(*args, *[c.astype(o.dtype) for c, o in zip(cots, fouts)])
        lhs = builtins.sum(_vdot(g, t) for g, t in zip(got, tangents))
        rhs = builtins.sum(_vdot(c, e) for c, e in zip(cots, fd))
        mag = builtins.sum(_abs_vdot(c, e) for c, e in zip(cots, fd)) + builtins.sum(
            _abs_vdot(g, t) for g, t in zip(got, tangents)
        )
        tol = rtol * mag + (0.0 if atol is None else atol) + 1e-300  # atol adds a floor, as in "fwd"
        if not abs(lhs - rhs) <= tol:
            raise AssertionError(
                f"check_grads: order-1 rev (Lop): <Lop(f, x, v), u> = {lhs!r} but <v, finite-difference J u> = "
                f"{rhs!r} (difference {abs(lhs - rhs):.3g} > tolerance {tol:.3g})"
            )

    if order > 1:
        if "fwd" in modes:
            u_consts = [t.astype(a.dtype) for t, a in zip(tangents, args)]

            def f_jvp(*ys):
                return list(_as_list(Rop(_float_outputs(_as_list(f(*ys))), list(ys), u_consts,
                                         disconnected_outputs="ignore")))

            check_grads(f_jvp, args, order - 1, modes, eps, rtol, atol, rng, mode)
        if "rev" in modes:
            v_consts = [_normal(rng, np.shape(e)).astype(o.dtype) for e, o in zip(fd, fouts)]

            def f_vjp(*ys):
                return list(_as_list(Lop(_float_outputs(_as_list(f(*ys))), list(ys), v_consts,
                                         disconnected_inputs="ignore")))

            check_grads(f_vjp, args, order - 1, modes, eps, rtol, atol, rng, mode)


# --------------------------------------------------------------------------- check_adjoint
def check_adjoint(f, wrt, values=None, rng=None, n_tests=2, rtol=None, atol=None, mode=None):
    """Check ``<v, Rop(f, x, u)> == <Lop(f, x, v), u>`` for random ``u`` and ``v`` (exact, no step size).

    A tangent (``R_op``) and an adjoint (``L_op``) rule that disagree fail
    here whatever the step size of a finite-difference test would have been.

    Parameters
    ----------
    f : callable or Variable or list of Variables
        A builder ``f(*variables)`` (then ``wrt`` is the list of input arrays
        and ``values`` is unused), or output Variable(s) (then ``wrt`` is the
        list of input Variables and ``values`` their arrays: a list or a dict).
    rng : Generator, RandomState or int, optional
    n_tests : int
        Number of random ``(u, v)`` pairs.
    rtol, atol : float, optional
        Tolerance on the difference, relative to ``sum|v * Ju| + sum|J^T v * u|``
        (default float64 1e-10, float32 1e-4), plus ``1000 eps |u| |v|`` (a
        derivative that is exactly zero, computed exactly on one side and as
        rounding noise on the other; near inputs of tiny magnitude, where the
        noise is larger, pass ``atol``).
    mode : str, optional
        Device name for ``function``.

    Returns
    -------
    list of (lhs, rhs)
        The two inner products of every test.
    """
    from tapegrad.gradient import Lop, Rop

    if callable(f) and not hasattr(f, "owner"):
        args = [np.array(a) for a in _as_list(wrt)]
        xs, outs, _ = _build(f, args)
    else:
        xs = _as_list(wrt)
        outs = _as_list(f)
        if isinstance(values, dict):
            args = [np.asarray(values[x]) for x in xs]
        else:
            args = [np.asarray(v) for v in _as_list(values)]
        if len(args) != len(xs):
            raise ValueError(f"check_adjoint: {len(xs)} wrt variable(s) but {len(args)} value(s)")
        args = [np.asarray(a, dtype=x.dtype) for a, x in zip(args, xs)]
    rng = _rng(rng)
    fouts = _float_outputs(outs)
    fxs = [x for x in xs if _is_float(x.dtype)]
    fargs = [a for a, x in zip(args, xs) if _is_float(x.dtype)]
    if not fouts or not fxs:
        raise ValueError("check_adjoint: need at least one float output and one float input")
    dtype = np.result_type(*[o.dtype for o in fouts], *[x.dtype for x in fxs]).name
    rtol = _ADJOINT_RTOL.get(dtype, 1e-10) if rtol is None else rtol

    out_vals = _as_list(compile_function(xs, fouts, device=mode)(*args))
    us = [_input_like(a, f"u{i}") for i, a in enumerate(fargs)]
    vs = [_input_like(np.zeros(np.shape(v), o.dtype), f"v{k}") for k, (v, o) in enumerate(zip(out_vals, fouts))]
    jvp = _as_list(Rop(fouts, fxs, us, disconnected_outputs="ignore"))
    vjp = _as_list(Lop(fouts, fxs, vs, disconnected_inputs="ignore"))
    fn = compile_function(xs + us + vs, jvp + vjp, device=mode)
    results = []
    for _ in range(n_tests):
        u = [_normal(rng, a.shape).astype(a.dtype) for a in fargs]
        v = [_normal(rng, np.shape(o)).astype(x.dtype) for o, x in zip(out_vals, fouts)]
        got = fn(*args, *u, *v)
        ju, jtv = got[: len(fouts)], got[len(fouts):]
        lhs = builtins.sum(_vdot(a, b) for a, b in zip(v, ju))
        rhs = builtins.sum(_vdot(a, b) for a, b in zip(jtv, u))
        mag = builtins.sum(_abs_vdot(a, b) for a, b in zip(v, ju)) + builtins.sum(
            _abs_vdot(a, b) for a, b in zip(jtv, u)
        )
        # an exactly zero derivative (x * (1 / x)) is exact on one side and rounding noise on the other, and then
        # ``mag`` is that noise: a floor of 1000 eps |u| |v| keeps such a pair from failing
        floor = 1000.0 * float(np.finfo(dtype).eps) * float(
            np.sqrt(builtins.sum(_vdot(a, a) for a in u) * builtins.sum(_vdot(a, a) for a in v)))
        tol = rtol * mag + floor + (0.0 if atol is None else atol) + 1e-300
        if not abs(lhs - rhs) <= tol:
            raise AssertionError(
                f"check_adjoint: <v, Rop(f, x, u)> = {lhs!r} but <Lop(f, x, v), u> = {rhs!r} "
                f"(difference {abs(lhs - rhs):.3g} > tolerance {tol:.3g}); the R_op and L_op rules disagree"
            )
        results.append((lhs, rhs))
    return results


# --------------------------------------------------------------------------- compare_backends
def _device_available(device):
    if device == "python":
        return True
    if device == "cpu":
        try:
            import tapegrad.compile.cpu  # noqa: F401
        except ImportError:
            return False
        return True
    if device == "cuda":
        try:
            import tapegrad.compile.cuda  # noqa: F401
            from numba import cuda
        except ImportError:
            return False
        return bool(cuda.is_available())
    return True


def compare_backends(outputs, inputs, values, devices=("python", "cpu"), rtol=None, atol=None,
                     skip_unavailable=False):
    """Compile ``outputs`` on every device and check they agree with the first.

    Parameters
    ----------
    outputs : Variable, list of Variables, or callable
        The graph; a callable is called as ``outputs(*inputs)``.
    inputs : list of Variable
    values : list of ndarray
        One value per input.
    devices : tuple of str
        The first is the reference (default ``("python", "cpu")``).
    rtol : float, optional
        Default by dtype (SPEC section 3): float64 1e-12, float32 1e-5;
        elements are compared with ``atol + rtol * max|reference|`` per output.
    skip_unavailable : bool
        Skip devices whose engine cannot be imported (or CUDA without a GPU)
        instead of raising.

    Returns
    -------
    dict
        ``{device: list of output arrays}`` for the devices that ran.
    """
    inputs = list(inputs)
    if callable(outputs) and not hasattr(outputs, "owner"):
        outputs = outputs(*inputs)
    outs = _as_list(outputs)
    results = {}
    for device in devices:
        if skip_unavailable and not _device_available(device):
            continue
        fn = compile_function(inputs, outs, device=device)
        results[device] = [np.asarray(o) for o in fn(*[np.array(v, copy=True) for v in values])]
    names = list(results)
    if not names:
        return results
    ref_name = names[0]
    for device in names[1:]:
        for k, (got, ref, var) in enumerate(zip(results[device], results[ref_name], outs)):
            what = f"compare_backends: output {k} ({var}) on {device!r} vs {ref_name!r}"
            if got.dtype != ref.dtype:
                raise AssertionError(f"{what}: dtype {got.dtype} != {ref.dtype}")
            if got.shape != ref.shape:
                raise AssertionError(f"{what}: shape {got.shape} != {ref.shape}")
            if not _is_float(ref.dtype):
                if not np.array_equal(got, ref):
                    bad = np.flatnonzero(got != ref)
                    raise AssertionError(f"{what}: {bad.size} element(s) differ; first at flat index {bad[0]}")
                continue
            r = default_tolerance(ref.dtype, "backend") if rtol is None else rtol
            finite = np.abs(ref[np.isfinite(ref)])
            scale = float(finite.max()) if finite.size else 0.0
            a = r * scale if atol is None else atol
            same_special = (np.isnan(got) & np.isnan(ref)) | (np.isinf(ref) & (got == ref))
            ok = same_special | (np.abs(got.astype(np.float64) - ref) <= a + r * np.abs(ref))
            if not ok.all():
                _close(got[~ok], ref[~ok], r, a, what)
    return results
