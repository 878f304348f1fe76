"""Bridges to the scientific-Python ecosystem.

- :func:`scipy_objective` (``tapegrad.ecosystem.scipy``): ``fun``/``jac``/``hessp``
  callables for ``scipy.optimize.minimize`` (SciPy is not imported by tapegrad).
- ``tapegrad.ecosystem.dask``: evaluate a compiled :class:`~tapegrad.Function`
  over many argument sets on a ``dask.distributed`` cluster (imported on use;
  needs the ``dask`` extra).
"""

from tapegrad.ecosystem.scipy import ScipyObjective, scipy_objective

__all__ = ["ScipyObjective", "scipy_objective"]
