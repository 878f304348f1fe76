"""``scipy.optimize`` adapter: ``scipy_objective(cost, x)`` -> ``fun``, ``jac``, ``hessp``.

::

    import scipy.optimize as so
    obj = scipy_objective(cost, x)
    res = so.minimize(obj.fun, x0, jac=obj.jac, hessp=obj.hessp, method="Newton-CG")

Two functions are compiled: one returning ``(cost, grad)`` and one returning
the Hessian-vector product (``tg.hessian_vector_product``, forward over
reverse), the second only when ``hessp`` is first called.  ``fun`` and ``jac``
share one evaluation: the last point and its ``(cost, grad)`` are cached, so
SciPy's usual ``fun(x)`` then ``jac(x)`` costs one call.

SciPy itself is not imported here (only its calling convention is followed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ScipyObjective", "scipy_objective"]


def _label(v):
    return v.name if v.name is not None else repr(v)


class ScipyObjective:
    """Callables for ``scipy.optimize`` built from a scalar ``cost`` of a vector ``x``.

    Parameters
    ----------
    cost : Variable
        0-d float expression.
    x : Variable
        1-d float input Variable (a graph leaf) the optimizer moves.
    device : str, optional
        Device of the compiled functions (default ``tg.config.device``).
    args : sequence of Variable
        Further inputs of ``cost``, given values by SciPy's ``args=`` (passed
        after ``x`` to ``fun``, ``jac`` and ``hessp``, as SciPy does).

    Attributes
    ----------
    fun(x, *args) -> float
    jac(x, *args) -> ndarray (float64)
    hessp(x, p, *args) -> ndarray (float64)
    value_and_grad(x, *args) -> (float, ndarray)
        For ``minimize(obj.value_and_grad, x0, jac=True)``.
    nfev, ngev, nhev : int
        How many (cost, grad) evaluations and Hessian-vector products ran;
        ``nfev`` counts real evaluations, not cache hits.
    """

    def __init__(self, cost, x, device=None, args=()):
        from tapegrad.compile.function import function
        from tapegrad.graph import Variable

        if not isinstance(x, Variable):
            raise TypeError(f"scipy_objective: x must be a vector Variable, got {x!r} of type {type(x).__name__}")
        if not isinstance(cost, Variable):
            raise TypeError(f"scipy_objective: cost must be a scalar Variable, got {type(cost).__name__}")
        if x.owner is not None:
            raise ValueError(
                f"scipy_objective: x ({_label(x)}) must be an input variable (a graph leaf such as tg.vector('x')), "
                f"but it is computed by {x.owner.op}"
            )
        if x.ndim != 1 or x.dtype not in ("float64", "float32"):
            raise TypeError(
                f"scipy_objective: x ({_label(x)}) must be a float vector (scipy.optimize works on 1-d arrays); "
                f"got type {x.type}. Optimize a flattened vector and reshape it inside the graph."
            )
        if cost.ndim != 0:
            raise TypeError(
                f"scipy_objective: cost ({_label(cost)}) must be a scalar (0-d), got type {cost.type}; "
                "reduce it, e.g. cost.sum()"
            )
        self.cost, self.x, self.args = cost, x, list(args)
        self.device = device
        self._dtype = np.dtype(x.dtype)

        from tapegrad.gradient import grad

        g = grad(cost, x)
        self._f_vg = function([x] + self.args, [cost, g], device=device, name="value_and_grad")
        self._f_hvp = None
        self._last = None  # (x copy, args, cost, grad)
        self.nfev = self.ngev = self.nhev = 0

    # -- helpers
    def _point(self, xv):
        """A private copy of ``xv`` in ``x``'s dtype (SciPy may reuse its array in place)."""
        return np.array(xv, dtype=self._dtype, copy=True)

    def _evaluate(self, xv, args):
        xc = self._point(xv)
        last = self._last
        if (
            last is not None
            and last[0].shape == xc.shape
            and np.array_equal(last[0], xc)
            and len(last[1]) == len(args)
            and all(a is b or np.array_equal(a, b) for a, b in zip(last[1], args))
        ):
            return last[2], last[3]
        c, g = self._f_vg(xc, *args)
        self.nfev += 1
        self.ngev += 1
        c = float(c)
        g = np.asarray(g, dtype=np.float64)
        self._last = (xc, tuple(args), c, g)
        return c, g

    # -- the SciPy callables
    def value_and_grad(self, x, *args):
        """``(cost, grad)`` at ``x``: for ``minimize(obj.value_and_grad, x0, jac=True)``."""
        c, g = self._evaluate(x, args)
        return c, g.copy()

    def fun(self, x, *args):
        """The cost at ``x`` as a Python float."""
        return self._evaluate(x, args)[0]

    def jac(self, x, *args):
        """The gradient at ``x`` (a fresh float64 array)."""
        return self._evaluate(x, args)[1].copy()

    def hessp(self, x, p, *args):
        """The Hessian at ``x`` times ``p`` (a fresh float64 array)."""
        if self._f_hvp is None:
            from tapegrad.compile.function import function
            from tapegrad.graph import tensor
            from tapegrad.gradient import hessian_vector_product

            pv = tensor("p", dtype=self.x.dtype, shape=self.x.type.shape)
            hv = hessian_vector_product(self.cost, self.x, pv)
            self._f_hvp = function(
                [self.x, pv] + self.args, hv, device=self.device, name="hessp", on_unused_input="ignore"
            )
        self.nhev += 1
        out = self._f_hvp(self._point(x), np.asarray(p, dtype=self._dtype), *args)
        return np.asarray(out, dtype=np.float64)

    def __repr__(self):
        return (
            f"<ScipyObjective cost={_label(self.cost)} x={_label(self.x)} device={self._f_vg.device!r} "
            f"nfev={self.nfev} nhev={self.nhev}>"
        )


def scipy_objective(cost, x, device=None, args=()):
    """Build :class:`ScipyObjective` callables (``fun``, ``jac``, ``hessp``, ``value_and_grad``).

    Parameters
    ----------
    cost : Variable
        Scalar float expression to minimize.
    x : Variable
        The float vector input SciPy moves.
    device : str, optional
        ``"python"``, ``"cpu"`` or ``"cuda"`` (default ``tg.config.device``).
    args : sequence of Variable
        Other inputs of ``cost``; their values come from ``minimize(..., args=(...))``.

    Example
    -------
    >>> import numpy as np, scipy.optimize as so, tapegrad as tg
    >>> from tapegrad.ecosystem import scipy_objective
    >>> x = tg.vector("x")
    >>> obj = scipy_objective(((x - 3.0) ** 2).sum(), x)
    >>> res = so.minimize(obj.fun, np.zeros(2), jac=obj.jac, hessp=obj.hessp, method="Newton-CG")
    >>> np.allclose(res.x, 3.0)
    True
    """
    return ScipyObjective(cost, x, device=device, args=args)
