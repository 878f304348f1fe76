"""Spec rows of the dot/matmul family (``tapegrad/ops/linalg.py``, codes 450-499)."""

from __future__ import annotations

import numpy as np

from tapegrad.ops import linalg as L
from tests.ops.rows import Row


def _ints(rng, shape, dtype):
    return rng.integers(-3, 4, size=shape)


def _dot(a, b):
    return np.dot(a, b)


ROWS = [
    # --- dot: every rank combination 0-2
    Row("DOT", L.dot, ((), ()), _dot, id="dot-0-0"),
    Row("DOT", L.dot, ((), (3,)), _dot, id="dot-0-1"),
    Row("DOT", L.dot, ((), (2, 3)), _dot, id="dot-0-2"),
    Row("DOT", L.dot, ((3,), ()), _dot, id="dot-1-0"),
    Row("DOT", L.dot, ((4,), (4,)), _dot, id="dot-1-1"),
    Row("DOT", L.dot, ((4,), (4, 3)), _dot, id="dot-1-2"),
    Row("DOT", L.dot, ((2, 3), ()), _dot, id="dot-2-0"),
    Row("DOT", L.dot, ((2, 4), (4,)), _dot, id="dot-2-1"),
    Row("DOT", L.dot, ((2, 4), (4, 3)), _dot, id="dot-2-2"),
    Row("DOT", L.dot, ((2, 4), (4, 3)), _dot, static=((2, 4), (4, 3)), id="dot-2-2-static"),
    Row("DOT", L.dot, ((1, 4), (4, 1)), _dot, static=((1, None), (None, 1)), id="dot-size1"),
    Row("DOT", L.dot, ((3, 0), (0, 2)), _dot, id="dot-size0-contracted"),
    Row("DOT", L.dot, ((0, 3), (3,)), _dot, id="dot-size0-free"),
    Row("DOT", L.dot, ((3, 4), (4,)), _dot, int_inputs=(0,), domain=(_ints, (-2.0, 2.0)), id="dot-int-float"),
    # --- matmul: 1-d promotion and broadcast batch dims
    Row("MATMUL", L.matmul, ((3, 4), (4, 2)), np.matmul, id="matmul-2-2"),
    Row("MATMUL", L.matmul, ((4,), (4,)), np.matmul, id="matmul-1-1"),
    Row("MATMUL", L.matmul, ((4,), (5, 4, 2)), np.matmul, id="matmul-1-3"),
    Row("MATMUL", L.matmul, ((2, 3, 4), (4,)), np.matmul, id="matmul-3-1"),
    Row("MATMUL", L.matmul, ((2, 1, 3, 4), (5, 4, 2)), np.matmul, id="matmul-batch-broadcast"),
    Row("MATMUL", L.matmul, ((1, 3, 4), (6, 4, 2)), np.matmul, static=((1, 3, 4), (None, 4, 2)),
        id="matmul-batch-size1-static"),
    Row("MATMUL", L.matmul, ((3, 4), (2, 4, 5)), np.matmul, id="matmul-2-3"),
    Row("MATMUL", L.matmul, ((0, 3, 4), (1, 4, 2)), np.matmul, id="matmul-batch-size0"),
    Row("MATMUL", L.matmul, ((2, 3, 0), (0, 2)), np.matmul, id="matmul-contract-size0"),
    Row("MATMUL", L.matmul, ((2, 3, 4), (4, 2)), np.matmul, int_inputs=(1,), domain=((-2.0, 2.0), _ints),
        id="matmul-float-int"),
    # --- outer (flattens like NumPy)
    Row("OUTER", L.outer, ((3,), (4,)), np.outer, id="outer-1-1"),
    Row("OUTER", L.outer, ((2, 3), ()), np.outer, id="outer-2-0"),
    Row("OUTER", L.outer, ((0,), (2, 2)), np.outer, id="outer-size0"),
    # --- tensordot
    Row("TENSORDOT", lambda a, b: L.tensordot(a, b), ((2, 3, 4), (3, 4, 2)), lambda a, b: np.tensordot(a, b),
        id="tensordot-default"),
    Row("TENSORDOT", lambda a, b: L.tensordot(a, b, axes=0), ((2,), (3, 1)),
        lambda a, b: np.tensordot(a, b, axes=0), id="tensordot-axes0"),
    Row("TENSORDOT", lambda a, b: L.tensordot(a, b, axes=([2, 0], [0, -2])), ((2, 3, 4), (4, 2, 5)),
        lambda a, b: np.tensordot(a, b, axes=([2, 0], [0, -2])), id="tensordot-pairs"),
    Row("TENSORDOT", lambda a, b: L.tensordot(a, b, axes=(1, 0)), ((3, 0), (0, 2)),
        lambda a, b: np.tensordot(a, b, axes=(1, 0)), id="tensordot-size0"),
    # --- diagonal, trace
    Row("DIAGONAL", lambda x: L.diagonal(x), ((3, 4),), lambda x: np.diagonal(x).copy(), id="diagonal"),
    Row("DIAGONAL", lambda x: L.diagonal(x, 1, 2, 0), ((3, 2, 4),), lambda x: np.diagonal(x, 1, 2, 0).copy(),
        id="diagonal-offset-axes"),
    Row("DIAGONAL", lambda x: L.diagonal(x, -1, -1, -2), ((2, 3, 3),),
        lambda x: np.diagonal(x, -1, -1, -2).copy(), id="diagonal-neg"),
    Row("DIAGONAL", lambda x: L.diagonal(x, 5), ((3, 4),), lambda x: np.diagonal(x, 5).copy(), id="diagonal-empty"),
    Row("TRACE", lambda x: L.trace(x), ((3, 3),), np.trace, id="trace"),
    Row("TRACE", lambda x: L.trace(x, -1, 1, 2), ((2, 3, 4),), lambda x: np.trace(x, -1, 1, 2), id="trace-batch"),
    Row("TRACE", lambda x: L.trace(x), ((0, 2),), np.trace, id="trace-size0"),
    # --- internal transposes (each is also reached by the rows above through L_op)
    Row("EINSUM", lambda a, b: L.einsum("...ij,...jk->...ik", a, b), ((2, 1, 3, 4), (3, 4, 2)),
        lambda a, b: np.einsum("...ij,...jk->...ik", a, b), id="einsum-batched"),
    Row("EINSUM", lambda a, b: L.einsum("j,...k->...jk", a, b), ((3,), (2, 4)),
        lambda a, b: np.einsum("j,...k->...jk", a, b), id="einsum-outer-batch"),
    Row("OUTER_T", lambda g, o, r: L.OuterT(0)(g, o, r), ((6, 4), (2, 2), (2, 3)),
        lambda g, o, r: (g @ o.ravel()).reshape(r.shape), wrt=(0, 1), id="outer_t-0"),
    Row("OUTER_T", lambda g, o, r: L.OuterT(1)(g, o, r), ((3, 2), (3,), (1, 2)),
        lambda g, o, r: (o.ravel() @ g).reshape(r.shape), wrt=(0, 1), id="outer_t-1-size1"),
    Row("DIAG_EMBED", lambda g, r: L.DiagEmbed(1, 0, 1, False)(g, r), ((2,), (2, 4)),
        lambda g, r: _embed(g, r.shape, 1, 0, 1, False), wrt=(0,),
        id="diag_embed"),
    Row("DIAG_EMBED", lambda g, r: L.DiagEmbed(0, 1, 2, True)(g, r), ((2,), (2, 3, 3)),
        lambda g, r: _embed(g, r.shape, 0, 1, 2, True), wrt=(0,), id="diag_embed-trace"),
    # --- diag (Aesara's) of a matrix: its diagonal (of a vector: tests/ops/test_linalg.py, not a single op)
    Row("DIAGONAL", lambda x: L.diag(x, 1), ((3, 4),), lambda x: np.diag(x, 1).copy(), id="diag-matrix"),
]


def _embed(g, shape, offset, axis1, axis2, trace):
    """Reference for DIAG_EMBED: the adjoint of diagonal/trace by brute force."""
    out = np.zeros(shape, dtype=g.dtype)
    idx = np.indices(shape).reshape(len(shape), -1).T
    for pos in idx:
        i, j = pos[axis1], pos[axis2]
        if j - i == offset:
            rest = tuple(p for k, p in enumerate(pos) if k not in (axis1, axis2))
            out[tuple(pos)] = g[rest] if trace else g[rest + (i if offset >= 0 else j,)]
    return out
