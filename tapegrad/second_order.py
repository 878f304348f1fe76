"""Second-order derivatives and ``subgraph_grad`` (``tapegrad.gradient``'s public names, defined here).

Built on :func:`tapegrad.gradient.grad` and the tangent pass (``_rop``); :mod:`tapegrad.gradient` imports them
once its own names exist and re-exports them, so ``tapegrad.gradient.jacobian`` and ``tg.jacobian`` are these.
"""

from __future__ import annotations

from tapegrad.config import config
from tapegrad.graph import Variable, as_tensor, is_float_dtype
from tapegrad.gradient import (
    _as_list,
    _check_vars,
    _describe,
    _HessianCostError,
    _MissingSourceError,
    _mirror,
    _rop,
    grad,
)

# --------------------------------------------------------------------------- second order
def hessian_vector_product(cost, wrt, p, consider_constant=None, disconnected_inputs="raise"):
    """``H p`` by forward-over-reverse: ``Rop(grad(cost, wrt), wrt, p)``.

    ``wrt`` and ``p`` are a Variable or matching lists; the result mirrors ``wrt``.
    """
    wrt_list, p_list = _as_list(wrt), _as_list(p)
    if len(wrt_list) != len(p_list):
        raise ValueError(f"hessian_vector_product: {len(wrt_list)} wrt but {len(p_list)} vectors p")
    g = grad(cost, wrt_list, consider_constant=consider_constant, disconnected_inputs=disconnected_inputs)
    # consider_constant holds in both passes (as PyTensor): H p of the cost with those variables frozen
    cc = list(consider_constant or ())
    hv = _rop(g, wrt_list, p_list, disconnected_outputs="ignore", return_disconnected="zero", consider_constant=cc)
    sweepable = all(isinstance(gi, Variable) and (gi.tag.get("sweep") or {}).get("request") is not None for gi in g)
    request = None
    for h in hv:
        tag = h.tag.get("sweep") if isinstance(h, Variable) else None
        if tag is None or tag.get("request") is None or tag["request"]["kind"] != "Rop":
            continue
        if not sweepable:
            h.tag["sweep"] = {"request": None, "why": "the gradient is not a plain grad of the cost"}
            continue
        if request is None:
            request = dict(kind="hvp", f=[cost], wrt=list(wrt_list), points=tag["request"]["points"])
        h.tag["sweep"] = {"request": request, "index": tag["index"]}
    return _mirror(wrt, hv)


def jacobian(expression, wrt, consider_constant=None, disconnected_inputs="raise", vectorize=True):
    """Jacobian of ``expression`` w.r.t. ``wrt``: shape ``expression.shape + wrt.shape``.

    For a 0-d expression it is the gradient.  With ``vectorize`` (the default) the
    Jacobian is one batched sweep over a block of identity directions
    (:mod:`tapegrad.vectorize`: rows by a reverse block, or columns by a forward
    block when that is cheaper); where some op has no batched form, and with
    ``vectorize=False``, the rows are vector-Jacobian products with the unit
    vectors, evaluated by one mapped reverse sweep (``MAP_ROWS``).
    """
    from tapegrad.ops.map import map_rows

    expression = as_tensor(expression)
    wrt_list = _as_list(wrt)
    _check_vars(wrt_list, "jacobian: wrt")
    if expression.ndim == 0:
        g = grad(expression, wrt_list, consider_constant=consider_constant, disconnected_inputs=disconnected_inputs)
        return _mirror(wrt, g)
    from tapegrad.ops import concatenate, eye, flatten, reshape, shape

    if not is_float_dtype(expression.dtype):
        # an integer-valued expression passes no gradient (as grad of an integer cost): zeros, with grad's
        # handling of disconnected inputs
        from tapegrad.ops import zeros

        g = grad(expression.sum(), wrt_list, consider_constant=consider_constant,
                 disconnected_inputs=disconnected_inputs)
        return _mirror(wrt, [zeros(concatenate([shape(expression), shape(w)]), dtype=gi.dtype)
                             for w, gi in zip(wrt_list, g)])
    if vectorize:
        from tapegrad.vectorize import jacobian_blocks

        jacs, (flat, v, rows) = jacobian_blocks(expression, wrt_list, consider_constant, disconnected_inputs)
        if jacs is not None:
            return _mirror(wrt, jacs)
    else:
        flat = flatten(expression, 1)
        v = flat.type()  # one cotangent row
        rows = grad(
            None, wrt_list, consider_constant=consider_constant, known_grads={flat: v},
            disconnected_inputs=disconnected_inputs,
        )
    n = shape(flat)[0]
    basis = eye(n, dtype=flat.dtype if is_float_dtype(flat.dtype) else config.floatX)
    jacs = map_rows([v], rows, [basis])
    out = []
    for w, j in zip(wrt_list, jacs):
        target = concatenate([shape(expression), shape(w)])
        out.append(reshape(j, target, ndim=expression.ndim + w.ndim))
    return _mirror(wrt, out)


def hessian(cost, wrt, consider_constant=None, disconnected_inputs="raise", vectorize=True):
    """Hessian of the 0-d ``cost``: for each ``wrt[i]``, ``jacobian(grad(cost, wrt[i]), wrt[i])``.

    ``vectorize`` as in :func:`jacobian` (a batched reverse-over-reverse or forward-over-reverse block).
    """
    cost = as_tensor(cost)
    if cost.ndim != 0:
        raise _HessianCostError(
            f"hessian expects a 0 dimensional variable as `cost`; {_describe(cost)} has {cost.ndim} dimension(s)"
        )
    wrt_list = _as_list(wrt)
    _check_vars(wrt_list, "hessian: wrt")
    out = []
    for w in wrt_list:
        g = grad(cost, w, consider_constant=consider_constant, disconnected_inputs=disconnected_inputs)
        out.append(jacobian(g, w, consider_constant=consider_constant, disconnected_inputs="ignore",
                            vectorize=vectorize))
    return _mirror(wrt, out)


# --------------------------------------------------------------------------- subgraph_grad
def subgraph_grad(wrt, end, start=None, cost=None, details=False):
    """Aesara's ``subgraph_grad``: gradients on ``wrt`` and ``end`` from ``cost`` and/or ``start``.

    Returns ``(wrt_grads, end_grads)`` (plus the per-source terms when ``details``).
    """
    if cost is None and start is None:
        raise _MissingSourceError("subgraph_grad: `cost` or `start` must be specified (or both)")
    if not isinstance(end, list) or not isinstance(wrt, list):
        raise TypeError("subgraph_grad: wrt and end must be lists of Variables")
    if start is not None and not isinstance(start, dict):
        raise TypeError("subgraph_grad: start must be a dict {Variable: gradient}")
    params = list(set(wrt + end))
    start_grads = None
    cost_grads = None
    if start is not None:
        start_grads = list(grad(cost=None, wrt=params, known_grads=start, consider_constant=end,
                                disconnected_inputs="ignore"))
    if cost is not None:
        cost_grads = list(grad(cost=cost, wrt=params, consider_constant=end, disconnected_inputs="ignore"))
    if start_grads is None:
        grads = cost_grads
    elif cost_grads is None:
        grads = start_grads
    else:
        grads = [a + b for a, b in zip(start_grads, cost_grads)]
    pgrads = dict(zip(params, grads))
    wrt_grads = [pgrads[k] for k in wrt]
    end_grads = [pgrads[k] for k in end]
    if details:
        return wrt_grads, end_grads, start_grads, cost_grads
    return wrt_grads, end_grads
