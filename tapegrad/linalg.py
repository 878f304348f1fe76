"""``tg.linalg``: linear algebra with both derivative rules (see docs/linalg.md).

``solve``, ``solve_triangular``, ``inv``, ``det``, ``slogdet``, ``cholesky``,
``eigh``, ``norm``, ``tril``, ``triu`` (ops in :mod:`tapegrad.ops.solve`, codes
600-649; not exported at the top level), plus the dot family re-exported from
:mod:`tapegrad.ops.linalg` (``dot``, ``matmul``, ``outer``, ``tensordot``,
``diagonal``, ``diag``, ``trace``; also in the top-level namespace).
"""

from tapegrad.ops.linalg import dot, matmul, outer, tensordot, diagonal, diag, trace  # noqa: F401
from tapegrad.ops.solve import (  # noqa: F401
    cholesky,
    det,
    eigh,
    inv,
    norm,
    slogdet,
    solve,
    solve_triangular,
    tril,
    triu,
)

__all__ = [
    "solve", "solve_triangular", "inv", "det", "slogdet", "cholesky", "eigh", "norm", "tril", "triu",
    "dot", "matmul", "outer", "tensordot", "diagonal", "diag", "trace",
]
