#!/usr/bin/env python
"""Minimize the n-dimensional Rosenbrock function with SciPy's Newton-CG and tapegrad derivatives.

    python examples/rosenbrock_newton_cg.py                   # n = 1,000 on tg.config.device
    python examples/rosenbrock_newton_cg.py --n 200 --device python

``tapegrad.ecosystem.scipy_objective(cost, x)`` compiles one function for the cost and its
gradient (``fun`` and ``jac`` share one evaluation per point) and one for the Hessian-vector
product (forward over reverse), which Newton-CG uses for its inner conjugate-gradient solves.
Prints the iterations, the final cost, the distance to the minimum (all ones) and the time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapegrad as tg  # noqa: E402
from tapegrad.ecosystem import scipy_objective  # noqa: E402


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def solve(n=1000, device=None, tol=1e-10, maxiter=500):
    """Run Newton-CG from SciPy's tutorial start (1.3, 0.7, 0.8, 1.9, 1.2) tiled to ``n``.

    Returns ``(result, objective, seconds)``; the time covers compiling and solving.
    """
    x = tg.vector("x")
    cost = rosenbrock(x)
    cost.name = "rosenbrock"
    t0 = time.perf_counter()
    obj = scipy_objective(cost, x, device=device)
    x0 = np.tile([1.3, 0.7, 0.8, 1.9, 1.2], n // 5 + 1)[:n]
    res = scipy.optimize.minimize(obj.fun, x0, jac=obj.jac, hessp=obj.hessp, method="Newton-CG",
                                  options=dict(xtol=tol, maxiter=maxiter))
    return res, obj, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--device", default=None, help="python, cpu or cuda (default: tg.config.device)")
    a = p.parse_args(argv)
    res, obj, seconds = solve(a.n, a.device)
    err = float(np.max(np.abs(res.x - 1.0)))
    print(f"Rosenbrock n={a.n}, Newton-CG on device {obj._f_vg.device!r}: {res.message}")
    print(f"iterations {res.nit}, cost/grad evaluations {obj.nfev} (scipy asked {res.nfev} + {res.njev}), "
          f"Hessian-vector products {obj.nhev}")
    print(f"final cost {res.fun:.3e}, max |x - 1| = {err:.2e}, time {seconds:.2f} s")
    return 0 if res.success or err < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
