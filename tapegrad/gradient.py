"""Symbolic differentiation with Aesara's semantics.

``grad``/``Lop`` build reverse-mode graphs from each op's ``L_op``; ``Rop``
builds forward-mode graphs from each op's ``R_op`` (never by transposing a
Lop).  Whether a gradient is *disconnected* (the cost does not depend on the
variable) or *null* (undefined / not implemented) is decided here, when the
graph is built, from the ops' ``connection_pattern``.

Walks are iterative (no recursion), so graphs of unrolled loops with tens of
thousands of nodes differentiate without hitting Python's recursion limit.
"""

from __future__ import annotations

import warnings
from functools import reduce

import numpy as np

from tapegrad.config import config
from tapegrad.graph import Constant, Variable, ancestors, as_tensor, clone_replace, is_float_dtype, toposort
from tapegrad.op import (  # noqa: F401  (re-exported)
    DisconnectedType,
    NullType,
    disconnected_type,
    grad_not_implemented,
    grad_undefined,
    is_disconnected,
    is_null,
)
from tapegrad.ops.scan import full_loops
from tapegrad.ops.modifiers import (  # noqa: F401  (re-exported)
    consider_constant,
    disconnected_grad,
    grad_clip,
    grad_scale,
    undefined_grad,
    zero_grad,
)

__all__ = [
    "grad", "Lop", "Rop", "jacobian", "hessian", "hessian_vector_product", "subgraph_grad",
    "verify_grad", "numeric_grad", "GradientError", "DisconnectedType", "NullType", "DisconnectedInputError",
    "NullTypeGradError", "NullTypeGradNotImplementedError", "disconnected_type", "grad_not_implemented",
    "grad_undefined", "zero_grad",
    "disconnected_grad", "consider_constant", "grad_clip", "grad_scale", "undefined_grad",
]


class DisconnectedInputError(ValueError):
    """``grad`` was asked for the gradient w.r.t. a variable the cost does not depend on."""


class NullTypeGradError(TypeError):
    """A gradient passed through an undefined or not-implemented rule."""


class NullTypeGradNotImplementedError(NullTypeGradError, NotImplementedError):
    """The gradient passed through an op whose grad/L_op is not implemented.

    Both a :class:`NullTypeGradError` and a ``NotImplementedError`` (what Aesara raises for such an
    op), so code catching either works.
    """


class _MissingSourceError(ValueError, AssertionError):
    """Neither a cost nor known gradients: a ``ValueError`` as in Aesara (and an ``AssertionError``, as before)."""


class _HessianCostError(ValueError, TypeError):
    """``hessian`` of a cost that is not 0-d: a ``ValueError`` as in Aesara (and a ``TypeError``, as before)."""


def __getattr__(name):  # verify_grad & co. live in tapegrad.testing (imported lazily)
    if name in ("verify_grad", "numeric_grad", "GradientError"):
        import tapegrad.testing as t

        return getattr(t, name)
    raise AttributeError(name)


def null_type(why="(gradient is undefined)"):
    return Variable(NullType(why))


def _float_zeros_like(x):
    from tapegrad.ops import zeros_like

    return zeros_like(x, dtype=x.dtype if is_float_dtype(x.dtype) else config.floatX)


def _float_ones_like(x):
    from tapegrad.ops import ones_like

    return ones_like(x, dtype=x.dtype if is_float_dtype(x.dtype) else config.floatX)


def _mirror(template, values):
    if isinstance(template, tuple):
        return tuple(values)
    if isinstance(template, list):
        return list(values)
    (v,) = values
    return v


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_vars(seq, what):
    for v in seq:
        if not isinstance(v, Variable):
            raise TypeError(f"{what}: expected a Variable, got {v!r} of type {type(v).__name__}")


def _pattern(node):
    pattern = node.op.connection_pattern(node)
    if len(pattern) != len(node.inputs) or any(len(row) != len(node.outputs) for row in pattern):
        raise ValueError(f"{node.op}.connection_pattern has the wrong shape")
    return pattern


def _describe(var):
    name = var.name if var.name is not None else str(var)
    return f"{name} (type {var.type})"


# --------------------------------------------------------------------------- grad
def _connected_subgraph(outputs, wrt, consider_constant):
    """Aesara's ``_populate_var_to_app_to_idx``: ``{var: {node: [input positions]}}``.

    Keeps only variables that depend on some element of ``wrt`` and that
    some output depends on, both through connected (op-declared) edges.
    """
    blockers = set(map(id, consider_constant))
    var_to_app = {}
    by_id = {}
    seen = set()
    stack = list(outputs)
    while stack:
        var = stack.pop()
        if id(var) in seen:
            continue
        seen.add(id(var))
        if isinstance(var, Constant) or var.owner is None or id(var) in blockers:
            continue
        node = var.owner
        pattern = _pattern(node)
        out_idx = var.index
        for i, x in enumerate(node.inputs):
            if not pattern[i][out_idx]:
                continue
            by_id[id(x)] = x
            apps = var_to_app.setdefault(id(x), {})
            idx = apps.setdefault(node, [])
            if i not in idx:
                idx.append(i)
            stack.append(x)

    visited = set()
    stack = [w for w in wrt if id(w) in var_to_app]
    while stack:
        var = stack.pop()
        if id(var) in visited or id(var) not in var_to_app:
            continue
        visited.add(id(var))
        for node, idxs in var_to_app[id(var)].items():
            pattern = _pattern(node)
            for i in idxs:
                for j, out in enumerate(node.outputs):
                    if pattern[i][j]:
                        stack.append(out)
    return {k: v for k, v in var_to_app.items() if k in visited}, by_id


def grad(
    cost,
    wrt,
    consider_constant=None,
    disconnected_inputs="raise",
    add_names=True,
    known_grads=None,
    return_disconnected="zero",
    null_gradients="raise",
):
    """Symbolic gradient of ``cost`` with respect to ``wrt`` (reverse mode).

    Parameters
    ----------
    cost : Variable or None
        A 0-d variable; may be None when ``known_grads`` is given.
    wrt : Variable or list/tuple of Variables
        The result mirrors this container.
    consider_constant : list of Variables
        Gradients do not flow through these.
    disconnected_inputs : {"raise", "warn", "ignore"}
        What to do when an element of ``wrt`` does not influence ``cost``.
    add_names : bool
        Name results ``(d<cost>/d<wrt>)`` when both are named.
    known_grads : dict Variable -> Variable
        Gradients to start from (``d cost / d key``), used as given.
    return_disconnected : {"zero", "none", "disconnected"}
        What a disconnected gradient is returned as.
    null_gradients : {"raise", "return"}
        Raise ``NullTypeGradError`` on a NullType (undefined) gradient, or return it.

    Returns
    -------
    Variable or list/tuple of Variables
        ``d cost / d wrt[i]``, each with ``wrt[i]``'s dtype (floatX for integer ``wrt``).
    """
    return _grad(cost, wrt, consider_constant, disconnected_inputs, add_names, known_grads, return_disconnected,
                 null_gradients)


def seeded_grad(known_grads, wrt, **kwargs):
    """Reverse mode from several seeded outputs, each seed ADDED to what flows into its variable from the others.

    ``grad(None, wrt, known_grads=...)`` follows Aesara: a seeded variable's gradient is its seed, whatever
    else depends on it.  That is right for a user's ``Lop`` and wrong for the adjoint of a loop body, whose
    outputs may feed one another (an RNN's new state is also read by its per-step output) or be the body's
    inputs themselves (``fn`` returning a state unchanged): there every path must count.  Same keywords as
    :func:`grad`.
    """
    return _grad(None, wrt, known_grads=known_grads, accumulate_known=True, **kwargs)


def _grad(cost, wrt, consider_constant=None, disconnected_inputs="raise", add_names=True, known_grads=None,
          return_disconnected="zero", null_gradients="raise", accumulate_known=False):
    if cost is None and not known_grads:
        raise _MissingSourceError("cost and known_grads can't both be None.")
    if cost is not None:
        cost = as_tensor(cost) if not isinstance(cost, Variable) else cost
        if isinstance(cost.type, NullType):
            raise ValueError(f"Can't differentiate a NaN cost. cost is NaN because {cost.type.why_null}")
        if cost.type.ndim != 0:
            raise TypeError(
                f"cost must be a scalar (0-d); {_describe(cost)} has {cost.type.ndim} dimension(s). "
                "Reduce it (e.g. cost.sum()) or use Lop/jacobian."
            )
    if disconnected_inputs not in ("ignore", "warn", "raise"):
        raise ValueError(
            "Invalid value for keyword 'disconnected_inputs', valid values are 'ignore', 'warn' and 'raise'."
        )
    if str(return_disconnected).lower() not in ("zero", "none", "disconnected"):
        raise ValueError("return_disconnected must be 'zero', 'none' or 'disconnected'")
    if null_gradients not in ("raise", "return"):
        raise ValueError("null_gradients must be 'raise' or 'return'")

    wrt_list = _as_list(wrt)
    _check_vars(wrt_list, "grad: wrt")
    if consider_constant is None:
        consider_constant = []
    else:
        try:
            consider_constant = list(consider_constant)
        except TypeError:
            raise TypeError(
                f"consider_constant must be an iterable collection, got {type(consider_constant).__name__}"
            ) from None
        for c in consider_constant:
            if not isinstance(c, Variable):
                raise TypeError(f"Elements of consider_constant must be variables, but got {type(c).__name__}")
        # a scan trajectory held constant holds its last step (``traj[-1]``, a sibling loop's output) too
        consider_constant += [last for c in consider_constant for last in [_last_step_of(c)] if last is not None]

    # ``traj[-1]`` is the output of a sibling loop that keeps only the last step, not a slice of ``traj``: the
    # gradient with respect to ``traj`` also gets the last step's gradient, in its last row (as Aesara's)
    last_of = {id(w): last for w in wrt_list for last in [_last_step_of(w)] if last is not None
               and not any(last is v for v in wrt_list)}
    extra = list(last_of.values())

    known_grads = dict(known_grads or {})
    if cost is not None and not known_grads:
        cost = _one_loop_per_scan(cost, wrt_list + list(consider_constant))
    outputs = ([cost] if cost is not None else []) + list(known_grads)
    var_to_app, _ = _connected_subgraph(outputs, wrt_list + extra, consider_constant)

    grad_dict, seeds = {}, {}
    if cost is not None:
        g_cost = known_grads.get(cost)
        if g_cost is None:
            g_cost = _float_ones_like(cost)
        grad_dict[id(cost)] = g_cost
    for var, g in known_grads.items():
        if not isinstance(var, Variable):
            raise TypeError(f"known_grads keys must be Variables, got {type(var).__name__}")
        if not isinstance(g, Variable):
            g = as_tensor(np.asarray(g, dtype=var.dtype if is_float_dtype(var.dtype) else config.floatX))
        # As Aesara, only the kind of the gradient is checked (its rank is the ops' business: a known
        # gradient of another rank is passed to the op's L_op as given).
        if not isinstance(g.type, (NullType, DisconnectedType)) and not is_float_dtype(g.dtype):
            raise TypeError(
                "Gradients must always be NullType, DisconnectedType, or continuous, but grad was "
                f"given a known_grad of type {g.type} for {var}"
            )
        if accumulate_known:
            seeds[id(var)] = seeds[id(var)] + g if id(var) in seeds else g
        else:
            grad_dict[id(var)] = g

    warned = set()

    def handle_disconnected(var):
        if disconnected_inputs == "ignore" or id(var) in warned:
            return
        warned.add(id(var))
        message = (
            "grad method was asked to compute the gradient with respect to a variable that is not part of "
            f"the computational graph of the cost, or is used only by a non-differentiable operator: {_describe(var)}"
        )
        if disconnected_inputs == "warn":
            warnings.warn(message, UserWarning, stacklevel=4)
        else:
            raise DisconnectedInputError(message)

    for w in wrt_list + extra:
        if id(w) not in var_to_app and w is not cost and id(w) not in grad_dict and id(w) not in seeds:
            last = last_of.get(id(w))
            if not any(w is e for e in extra) and (last is None or id(last) not in var_to_app):
                handle_disconnected(w)
            grad_dict[id(w)] = disconnected_type()

    cost_name = cost.name if (add_names and cost is not None) else None
    rval = _backprop(var_to_app, grad_dict, wrt_list + extra, outputs, cost_name, seeds)
    rval, g_last = rval[:len(wrt_list)], dict(zip((id(e) for e in extra), rval[len(wrt_list):]))
    last_rows = set()
    for i, w in enumerate(wrt_list):
        last = last_of.get(id(w))
        gl = None if last is None else g_last[id(last)]
        if gl is None or isinstance(gl.type, DisconnectedType):
            continue
        if isinstance(gl.type, NullType):
            rval[i] = gl
            continue
        from tapegrad.ops import inc_subtensor, zeros_like

        base = zeros_like(w) if isinstance(rval[i].type, DisconnectedType) else rval[i]
        rval[i] = inc_subtensor(base[-1], gl)
        last_rows.add(i)

    for i, g in enumerate(rval):
        if isinstance(g.type, NullType):
            if null_gradients == "raise":
                cls = NullTypeGradNotImplementedError if g.type.not_implemented else NullTypeGradError
                raise cls(f"grad encountered a NaN. {g.type.why_null}")
        elif isinstance(g.type, DisconnectedType):
            handle_disconnected(wrt_list[i])
            mode = str(return_disconnected).lower()
            if mode == "zero":
                rval[i] = _float_zeros_like(wrt_list[i])
                rval[i].tag["sweep"] = {"request": None, "why": "disconnected"}
            elif mode == "none":
                rval[i] = None
        else:
            w = wrt_list[i]
            want = w.dtype if is_float_dtype(w.dtype) else config.floatX
            if g.dtype != want:
                name = g.name
                g = g.astype(want)
                g.name = name
                rval[i] = g
    why = None
    if cost is None or known_grads:
        why = "known_grads"
    elif consider_constant:
        why = "consider_constant"
    _tag_results(rval, dict(kind="grad", f=[cost], wrt=list(wrt_list), points=[None]), why,
                 list(known_grads.values()), outputs + wrt_list + list(consider_constant))
    for i in last_rows:
        if rval[i] is not None:
            rval[i].tag["sweep"] = {"request": None, "why": "the gradient of a scan trajectory read as traj[-1]"}
    return _mirror(wrt, rval)


def _one_loop_per_scan(cost, keep):
    """``cost`` with each ``traj[-1]`` read as the last row of ``traj`` where the cost uses both.

    ``traj[-1]`` is the output of a sibling loop that keeps only the last step (no stored trajectory); a cost
    that also uses ``traj`` itself would be differentiated through both loops (two reverse sweeps).  Read as a
    row of ``traj`` (the same values), one reverse sweep carries both.  Not done when a variable in ``keep``
    (``wrt``, ``consider_constant``) lies between the sibling and the cost (the rebuilt part of the graph).
    """
    nodes = toposort([cost])
    repl = {}
    for full in full_loops(nodes).values():
        for j, o in enumerate(full.__dict__["_scan_last"]):
            repl[o] = full.outputs[j] if full.op.keep_last[j] else Variable.__getitem__(full.outputs[j], -1)
    if not repl:
        return cost
    down = set(map(id, repl))
    for n in nodes:
        if any(id(x) in down for x in n.inputs):
            down.update(id(o) for o in n.outputs)
    if any(id(v) in down for v in keep):
        return cost
    new = clone_replace([cost], repl)[0]
    if new.name is None:
        new.name = cost.name
    return new


def _last_step_of(v):
    """The keep-last sibling output that ``traj[-1]`` returned for the scan trajectory ``v``, or None."""
    node = getattr(v, "owner", None)
    siblings = None if node is None else node.__dict__.get("_scan_last")
    if siblings is None:
        return None
    j = next((k for k, o in enumerate(node.outputs) if o is v), None)
    return None if j is None else siblings[j]


# --------------------------------------------------------------------------- provenance (the sweep route)
def _tag_results(results, request, why, seeds, given):
    """Record in ``result.tag["sweep"]`` how each result can be recomputed by the sweep route.

    ``{"request": {kind, f, wrt, points}, "index": i}`` when it can, ``{"request": None, "why": ...}``
    when it cannot (then ``tg.function`` uses the symbolic route for it).  Disconnected (zero) results
    say so; user variables passed through unchanged (the ``seeds`` -- known gradients, eval points -- and
    their ancestors, and the variables in ``given``) are left alone.  Only the tag is written: the results
    themselves are unchanged.
    """
    user = None
    for i, g in enumerate(results):
        if g is None or not isinstance(g, Variable) or isinstance(g.type, (NullType, DisconnectedType)):
            continue
        if user is None:
            user = {id(v) for v in ancestors([v for v in seeds if isinstance(v, Variable)])}
            user.update(id(v) for v in given)
        if id(g) in user or (g.tag.get("sweep") or {}).get("why") == "disconnected":
            continue
        if request is None or why is not None:
            g.tag["sweep"] = {"request": None, "why": why or "not a sweep request"}
        else:
            g.tag["sweep"] = {"request": request, "index": i}


def _retag(results, from_why, request, why_if_not):
    """Turn the provenance ``_tag_results`` wrote with reason ``from_why`` into ``request`` (or a new reason)."""
    for i, g in enumerate(results):
        tag = getattr(g, "tag", {}).get("sweep") if isinstance(g, Variable) else None
        if tag is None or tag.get("request") is not None or tag.get("why") != from_why:
            continue
        if why_if_not is not None:
            g.tag["sweep"] = {"request": None, "why": why_if_not}
        else:
            g.tag["sweep"] = {"request": request, "index": i}


def _backprop(var_to_app, grad_dict, wrt, outputs, cost_name, seeds=None):
    """Aesara's ``_populate_grad_dict``, iterative: nodes in reverse topological order.

    ``seeds`` (``seeded_grad``): gradients added to the terms a variable gets from its clients (a seed in
    ``grad_dict`` is used as given instead, Aesara's ``known_grads``)."""
    seeds = seeds or {}
    term_dict = {}

    def grad_of(var):
        key = id(var)
        if key in grad_dict:
            return grad_dict[key]
        seed = seeds.get(key)
        if key not in var_to_app:
            grad_dict[key] = disconnected_type() if seed is None else seed
            return grad_dict[key]
        null_terms, terms = [], []
        if seed is not None and not isinstance(seed.type, DisconnectedType):
            (null_terms if isinstance(seed.type, NullType) else terms).append(seed)
        for node, idxs in var_to_app[key].items():
            node_terms = terms_of(node)
            for i in idxs:
                term = node_terms[i]
                if isinstance(term.type, NullType):
                    null_terms.append(term)
                elif isinstance(term.type, DisconnectedType):
                    continue
                else:
                    if term.ndim != var.ndim:
                        raise ValueError(
                            f"{node.op}.L_op returned a term with {term.ndim} dimensions for input {i}, "
                            f"but {var.ndim} are required"
                        )
                    terms.append(term)
        if null_terms:
            g = null_terms[0]
        elif terms:
            g = reduce(lambda a, b: a + b, terms)
            if cost_name is not None and var.name is not None:
                g.name = f"(d{cost_name}/d{var.name})"  # in place, as Aesara: the term itself is returned
        else:
            g = disconnected_type()
        grad_dict[key] = g
        return g

    def terms_of(node):
        if node in term_dict:
            return term_dict[node]
        output_grads = [grad_of(o) for o in node.outputs]
        pattern = _pattern(node)
        outputs_connected = [not isinstance(g.type, DisconnectedType) for g in output_grads]
        ograd_is_nan = [isinstance(g.type, NullType) for g in output_grads]
        inputs_connected = [any(a and b for a, b in zip(row, outputs_connected)) for row in pattern]
        only_nan = [
            not any(a and b and not c for a, b, c in zip(row, outputs_connected, ograd_is_nan)) for row in pattern
        ]
        if not any(inputs_connected):
            input_grads = [disconnected_type() for _ in node.inputs]
        elif all(only_nan):
            input_grads = [null_type() if c else disconnected_type() for c in inputs_connected]
        else:
            new_output_grads = []
            for o, og in zip(node.outputs, output_grads):
                if isinstance(og.type, DisconnectedType):
                    og = _float_zeros_like(o)  # built-in ops get zeros for unused outputs
                elif isinstance(og.type, NullType):
                    og = _float_zeros_like(o)
                elif is_float_dtype(o.dtype) and og.dtype != o.dtype:
                    og = og.astype(o.dtype)
                new_output_grads.append(og)
            try:
                input_grads = node.op.L_op(list(node.inputs), list(node.outputs), new_output_grads)
            except NotImplementedError as e:
                input_grads = [
                    grad_not_implemented(node.op, i, x, str(e)) if c else disconnected_type()
                    for i, (x, c) in enumerate(zip(node.inputs, inputs_connected))
                ]
            if input_grads is None:
                raise TypeError(f"{node.op}.grad returned NoneType, expected iterable.")
            input_grads = list(input_grads)
            if len(input_grads) != len(node.inputs):
                raise ValueError(f"{node.op} returned the wrong number of gradient terms.")
        for i in range(len(input_grads)):
            for j, nan in enumerate(ograd_is_nan):
                if nan and pattern[i][j] and not isinstance(input_grads[i].type, DisconnectedType):
                    input_grads[i] = output_grads[j]
        for i, (x, term, connected) in enumerate(zip(node.inputs, input_grads, inputs_connected)):
            if term is None:
                raise TypeError(
                    f"{node.op}.grad returned None for a gradient term, this is prohibited. Instead of None, "
                    "return zeros_like(input), disconnected_type(), or a NullType variable such as those made "
                    "with the grad_undefined or grad_not_implemented helper functions."
                )
            if not isinstance(term, Variable):
                term = as_tensor(term)
                input_grads[i] = term
            if not isinstance(term.type, (NullType, DisconnectedType)) and not is_float_dtype(term.dtype):
                raise TypeError(
                    f"{node.op}.grad illegally returned an integer-valued variable. (Input index {i}, dtype {term.dtype})"
                )
            actually = not isinstance(term.type, DisconnectedType)
            if actually and not connected:
                if any(pattern[i]):
                    input_grads[i] = disconnected_type()  # connected input, but the cost ignores those outputs
                    continue
                raise TypeError(
                    f"{node.op}.grad returned {term} of type {term.type} for input {i}. Expected DisconnectedType "
                    "instance based on the output of the op's connection_pattern method."
                )
            if connected and not actually:
                raise TypeError(
                    f"{node.op}.grad returned DisconnectedType for input {i}. "
                    "Its connection_pattern method does not allow this."
                )
        term_dict[node] = input_grads
        return input_grads

    nodes = [n for n in toposort(outputs) if any(id(x) in var_to_app for x in n.inputs)]
    for node in reversed(nodes):
        if any(node in var_to_app.get(id(x), {}) for x in node.inputs):
            terms_of(node)
    return [grad_of(w) for w in wrt]


# --------------------------------------------------------------------------- Lop / Rop
def _names(seq):
    return "[" + ", ".join("None" if v is None else _describe(v) if isinstance(v, Variable) else repr(v)
                           for v in seq) + "]"


def _check_eval_points(f, points, what):
    if len(f) != len(points):
        raise ValueError(
            f"{what}: {len(f)} variable(s) {_names(f)} but {len(points)} eval_point(s) {_names(points)}; "
            "they must match one to one"
        )
    out = []
    for i, (v, p) in enumerate(zip(f, points)):
        if p is None:
            out.append(None)
            continue
        dtype = v.dtype if is_float_dtype(v.dtype) else config.floatX
        p = as_tensor(p) if isinstance(p, Variable) else as_tensor(np.asarray(p, dtype=dtype))
        if isinstance(p.type, (NullType, DisconnectedType)):
            out.append(p)
            continue
        if p.ndim != v.ndim:
            raise ValueError(
                f"{what}: element {i}: {_describe(v)} and its eval_point {_describe(p)} have mismatched "
                f"dimensionalities: {v.ndim} and {p.ndim}"
            )
        for axis, (a, b) in enumerate(zip(v.type.shape, p.type.shape)):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"{what}: element {i}: {_describe(v)} and its eval_point {_describe(p)} have mismatched "
                    f"static shapes on axis {axis}: {a} and {b}"
                )
        if p.dtype != dtype:
            p = p.astype(dtype)
        out.append(p)
    return out


def Lop(f, wrt, eval_points, consider_constant=None, disconnected_inputs="raise"):
    """Vector-Jacobian product ``sum_i eval_points[i] . d f[i] / d wrt``.

    ``f`` and ``eval_points`` are a Variable or matching lists; the result
    mirrors ``wrt``.
    """
    f_list = _as_list(f)
    _check_vars(f_list, "Lop: f")
    points = _check_eval_points(f_list, _as_list(eval_points), "Lop")
    known = {}
    for v, p in zip(f_list, points):
        if p is not None:
            known[v] = p if id(v) not in map(id, known) else known[v] + p
    if not known:
        raise ValueError("Lop: every eval_point is None")
    res = grad(
        None, wrt, consider_constant=consider_constant, known_grads=known, disconnected_inputs=disconnected_inputs
    )
    _retag(_as_list(res), "known_grads", dict(kind="Lop", f=list(f_list), wrt=_as_list(wrt), points=points),
           "consider_constant" if consider_constant else None)
    return res


def _zero_tangent(x):
    """``x.zeros_like()`` (what Aesara's Rop gives a user op for an input without a tangent), or None."""
    try:
        return x.zeros_like()
    except Exception:  # noqa: BLE001 - not a tensor: None, as Aesara does for non-differentiable inputs
        return None


def _tangent_pass(f_list, wrt_list, points, consider_constant=None):
    """The forward (tangent) sweep: ``{id(var): tangent}`` for ``wrt`` and every variable a tangent reaches.

    Built-in ops get None for an input without a tangent (zero, and cheaper); user ops (no op code) get
    ``zeros_like(input)`` there instead, as Aesara's ``Rop`` passes them.
    """
    tangent = {}
    for w, p in zip(wrt_list, points):   # a wrt listed twice: its first point (as Aesara's Rop)
        tangent.setdefault(id(w), p)
    stop = set(map(id, consider_constant or ()))
    order = toposort(f_list, blockers=wrt_list)
    full_of, done = full_loops(order), set()
    for node in order:
        full = full_of.get(id(node))
        if full is not None:
            # ``traj[-1]`` where ``traj`` is needed too: the last row of ``traj``'s tangent (one tangent loop)
            if id(full) not in done:
                _tangent_of_node(full, tangent)
                done.add(id(full))
            for j, o in enumerate(node.outputs):
                t = tangent.get(id(full.outputs[j]))
                if t is not None:
                    tangent[id(o)] = t if full.op.keep_last[j] else Variable.__getitem__(t, -1)
        elif id(node) not in done:
            _tangent_of_node(node, tangent)
        for o in node.outputs:   # held constant (hessian_vector_product's consider_constant): no tangent
            if id(o) in stop:
                tangent.pop(id(o), None)
    return tangent


def _tangent_of_node(node, tangent):
    """Add the tangents of ``node``'s outputs to ``tangent`` (nothing when no input has one)."""
    ins = [tangent.get(id(x)) for x in node.inputs]
    if all(u is None for u in ins):
        return
    if getattr(node.op, "code", None) is None:
        ins = [_zero_tangent(x) if u is None else u for x, u in zip(node.inputs, ins)]
    try:
        outs = node.op.R_op(list(node.inputs), ins)
    except NotImplementedError as e:
        detail = f": {e}" if str(e) else ""
        raise NotImplementedError(f"R_op of {node.op} is not implemented{detail}") from None
    if outs is None or len(outs) != len(node.outputs):
        raise ValueError(f"{node.op}.R_op returned the wrong number of tangents")
    for o, t in zip(node.outputs, outs):
        if t is not None and not isinstance(t, Variable):
            t = as_tensor(t)
        if t is not None and not isinstance(t.type, (DisconnectedType,)):
            if isinstance(t.type, NullType):
                raise NullTypeGradError(f"Rop encountered a NaN. {t.type.why_null}")
            want = o.dtype if is_float_dtype(o.dtype) else config.floatX
            if t.dtype != want:
                t = t.astype(want)
            tangent[id(o)] = t


def Rop(f, wrt, eval_points, disconnected_outputs="raise", return_disconnected="zero"):
    """Jacobian-vector product ``sum_j d f / d wrt[j] . eval_points[j]`` by a forward (tangent) pass.

    Built from each op's ``R_op``; the result mirrors ``f``.  A ``wrt`` listed twice takes its first point.
    """
    return _rop(f, wrt, eval_points, disconnected_outputs, return_disconnected)


def _rop(f, wrt, eval_points, disconnected_outputs="raise", return_disconnected="zero", consider_constant=None):
    """:func:`Rop`; ``consider_constant``: variables whose tangent is zero (``hessian_vector_product``'s)."""
    f_list = _as_list(f)
    wrt_list = _as_list(wrt)
    _check_vars(f_list, "Rop: f")
    _check_vars(wrt_list, "Rop: wrt")
    if len(wrt_list) != len(_as_list(eval_points)):
        raise ValueError(
            f"Rop: `wrt` must be the same length as `eval_points` ({len(wrt_list)} != "
            f"{len(_as_list(eval_points))}): wrt {_names(wrt_list)}, eval_points {_names(_as_list(eval_points))}"
        )
    points = _check_eval_points(wrt_list, _as_list(eval_points), "Rop")
    if disconnected_outputs not in ("ignore", "warn", "raise"):
        raise ValueError("disconnected_outputs must be 'ignore', 'warn' or 'raise'")
    tangent = _tangent_pass(f_list, wrt_list, points, consider_constant)
    # Aesara's Rop graph keeps the points it is taken at (``Rop(dot(x, W), W, V)`` is
    # ``dot(zeros_like(x), W) + dot(x, V)``), so ``function([W, V, x], Rop(...))`` does not report ``W`` as
    # unused; here built-in ops give ``dot(x, V)``, and each tangent records its root points instead (read by
    # ``function``'s unused-input check through every expression built on the tangent)
    roots = [w for w in wrt_list if w.owner is None and not isinstance(w, Constant)]
    rval = []
    for out in f_list:
        t = tangent.get(id(out))
        if t is None:
            message = (
                "Rop method was asked to compute the gradient with respect to a variable that is not part of the "
                f"computational graph of variables in wrt, or is used only by a non-differentiable operator: {_describe(out)}"
            )
            if disconnected_outputs == "raise":
                raise DisconnectedInputError(message)
            if disconnected_outputs == "warn":
                warnings.warn(message, UserWarning, stacklevel=3)
            mode = str(return_disconnected).lower()
            if mode == "zero":
                t = _float_zeros_like(out)
            elif mode == "none":
                t = None
            elif mode == "disconnected":
                t = disconnected_type()
            else:
                raise ValueError("return_disconnected must be 'zero', 'none' or 'disconnected'")
            if t is not None and not isinstance(t.type, DisconnectedType):
                t.tag["sweep"] = {"request": None, "why": "disconnected"}
        if roots and isinstance(t, Variable) and t.owner is not None:
            t.tag["rop_points"] = roots
        rval.append(t)
    request = dict(kind="Rop", f=list(f_list), wrt=list(wrt_list), points=points)
    connected = [t if id(out) in tangent else None for out, t in zip(f_list, rval)]
    _tag_results(connected, request, "consider_constant" if consider_constant else None,
                 [p for p in points if p is not None], list(f_list) + wrt_list)
    return _mirror(f, rval)


# second order and subgraph_grad live in tapegrad/second_order.py (built on grad / Rop above); re-exported here
from tapegrad.second_order import hessian, hessian_vector_product, jacobian, subgraph_grad  # noqa: E402,F401
