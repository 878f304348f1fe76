"""``tg.linalg``: linear algebra (solve, inv, det, slogdet, cholesky, eigh, norm) -- see issue 5.

The dot family (``dot``, ``matmul``, ``outer``, ``tensordot``, ``diagonal``,
``trace``) lives in :mod:`tapegrad.ops.linalg` and the top-level namespace.
"""

from tapegrad.ops.linalg import *  # noqa: F401,F403
