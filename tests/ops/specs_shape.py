"""Spec rows of the shape family (``tapegrad/ops/shape.py`` and ``tapegrad/ops/alloc.py``, codes 300-399)."""

from __future__ import annotations

import numpy as np

import importlib

# (the package attributes `shape` and `alloc` are the functions of the same names)
A = importlib.import_module("tapegrad.ops.alloc")
S = importlib.import_module("tapegrad.ops.shape")
from tapegrad.ops.elemwise import add, mul
from tests.ops.rows import Row

F = (-2.0, 2.0)


def ints(*values):
    """Domain entry of an int input with fixed ``values`` (a scalar when one value is given)."""
    arr = np.asarray(values[0] if len(values) == 1 else values, dtype="int64")
    return lambda rng, shape, dtype: arr.copy()


def _split_piece(x):
    return A.split(x, [2, 0, 1], 3, axis=1)[2]


def _repeat_sum_ref(g, x, reps, axis):
    idx = np.repeat(np.arange(x.shape[axis]), reps)
    out = np.zeros(np.moveaxis(x, axis, 0).shape, dtype=g.dtype)
    np.add.at(out, idx, np.moveaxis(g, axis, 0))
    return np.moveaxis(out, 0, axis)


def _tile_sum_ref(g, x, reps):
    inter = [d for r, n in zip(reps, x.shape) for d in (r, n)]
    return g.reshape(inter).sum(axis=tuple(range(0, 2 * g.ndim, 2)))


ROWS = [
    # --- reshape
    Row("RESHAPE", lambda x: S.reshape(x, (2, 6)), ((3, 4),), lambda x: x.reshape(2, 6), id="reshape"),
    Row("RESHAPE", lambda x: S.reshape(x, (4, -1, 2)), ((2, 3, 4),), lambda x: x.reshape(4, -1, 2),
        static=((2, 3, 4),), id="reshape-minus1-static"),
    Row("RESHAPE", lambda x: S.reshape(x, (3, 0)), ((0, 3),), lambda x: x.reshape(3, 0), id="reshape-size0"),
    Row("RESHAPE", lambda x: S.reshape(x, ()), ((1, 1),), lambda x: x.reshape(()), id="reshape-size1-to-0d"),
    Row("RESHAPE", lambda x: S.reshape(x, (S.shape_i(x, 1), -1)), ((2, 3),), lambda x: x.reshape(3, -1),
        also=("SHAPE_I", "STACK"), id="reshape-shape_i"),
    Row("RESHAPE", lambda x, n: S.reshape(x, (n, -1)), ((6, 2), ()), lambda x, n: x.reshape(n, -1),
        domain=(F, ints(4)), int_inputs=(1,), also=("STACK",), id="reshape-symbolic-int"),
    # --- flatten
    Row("FLATTEN", lambda x: S.flatten(x), ((2, 3, 4),), lambda x: x.reshape(-1), id="flatten"),
    Row("FLATTEN", lambda x: S.flatten(x, 2), ((2, 3, 4),), lambda x: x.reshape(2, -1), id="flatten-2"),
    Row("FLATTEN", lambda x: S.flatten(x, 2), ((2, 0, 4),), lambda x: x.reshape(2, 0), id="flatten-size0"),
    Row("FLATTEN", lambda x: S.flatten(x), ((),), lambda x: x.reshape(1), id="flatten-0d"),
    # --- dimshuffle / transpose / expand_dims / squeeze
    Row("DIMSHUFFLE", lambda x: S.dimshuffle(x, ("x", 1, 0)), ((2, 3),), lambda x: x.T[None], id="dimshuffle"),
    Row("DIMSHUFFLE", lambda x: S.dimshuffle(x, (2, "x", 0)), ((3, 1, 2),), lambda x: x[:, 0].T[:, None],
        static=((None, 1, None),), id="dimshuffle-drop-static1"),
    Row("DIMSHUFFLE", lambda x: S.transpose(x, (1, 2, 0)), ((2, 3, 4),), lambda x: x.transpose(1, 2, 0),
        id="transpose"),
    Row("DIMSHUFFLE", lambda x: S.transpose(x), ((2, 0, 1),), lambda x: x.T, id="transpose-size0"),
    Row("DIMSHUFFLE", lambda x: S.expand_dims(x, (0, -1)), ((3,),), lambda x: x[None, :, None],
        id="expand_dims"),
    Row("DIMSHUFFLE", lambda x: S.squeeze(x, 1), ((3, 1),), lambda x: x[:, 0], id="squeeze-runtime1"),
    Row("DIMSHUFFLE", lambda x: S.squeeze(x), ((1, 3, 1),), lambda x: x.reshape(3), static=((1, 3, 1),),
        id="squeeze-static"),
    # --- join / concatenate
    Row("JOIN", lambda x, y: S.concatenate([x, y], axis=1), ((2, 3), (2, 0)),
        lambda x, y: np.concatenate([x, y], 1), id="concatenate-size0"),
    Row("JOIN", lambda x, y, z: S.join(0, x, y, z), ((1, 2), (3, 2), (2, 2)),
        lambda x, y, z: np.concatenate([x, y, z]), id="join"),
    Row("JOIN", lambda x, y: S.concatenate([x, y], axis=-1), ((2, 2), (2, 3)),
        lambda x, y: np.concatenate([x, y.astype(x.dtype)], -1), domain=(F, ints([[1, 2, 3], [4, 5, 6]])),
        int_inputs=(1,), id="join-int-float"),
    # --- stack
    Row("STACK", lambda x, y: S.stack([x, y]), ((2, 3), (2, 3)), lambda x, y: np.stack([x, y]), id="stack"),
    Row("STACK", lambda x, y: S.stack([x, y], axis=-1), ((1, 0), (1, 0)),
        lambda x, y: np.stack([x, y], -1), id="stack-size0"),
    Row("STACK", lambda x, y: S.stack([x, y, x]), ((), ()), lambda x, y: np.stack([x, y, x]), id="stack-scalars"),
    # --- split
    Row("SPLIT", _split_piece, ((2, 3),), lambda x: x[:, 2:], id="split-piece"),
    Row("SPLIT", lambda x: S.join(1, *reversed(A.split(x, [2, 0, 1], 3, axis=1))), ((2, 3),),
        lambda x: np.concatenate([x[:, 2:], x[:, 2:2], x[:, :2]], 1), also=("JOIN",), id="split-all"),
    Row("SPLIT", lambda x, s: A.split(x, s, 2)[0], ((5, 2), (2,)), lambda x, s: x[: s[0]],
        domain=(F, ints(3, 2)), int_inputs=(1,), id="split-symbolic"),
    Row("SPLIT", lambda x: A.split(x, [1], 1)[0], ((1,),), lambda x: x.copy(), id="split-one"),
    # --- alloc / broadcast_to / full / zeros / ones
    Row("ALLOC", lambda x: A.broadcast_to(x, (2, 3)), ((3,),), lambda x: np.broadcast_to(x, (2, 3)),
        id="broadcast_to"),
    Row("ALLOC", lambda x: A.broadcast_to(x, (4, 3)), ((1, 3),), lambda x: np.broadcast_to(x, (4, 3)),
        static=((1, 3),), id="broadcast_to-size1"),
    Row("ALLOC", lambda x: A.broadcast_to(x, (0, 3)), ((1, 3),), lambda x: np.broadcast_to(x, (0, 3)),
        static=((1, 3),), id="broadcast_to-size0"),
    Row("ALLOC", lambda x: A.alloc(x, 2, 3), ((),), lambda x: np.full((2, 3), x), id="alloc-scalar"),
    Row("ALLOC", lambda x, y: A.alloc(x, S.shape_i(y, 0), 2), ((2,), (3, 1)), lambda x, y: np.tile(x, (3, 1)),
        wrt=(0,), also=("SHAPE_I",), id="alloc-symbolic"),
    Row("ALLOC", lambda x: A.full((2, 2), x), ((),), lambda x: np.full((2, 2), x), id="full"),
    Row("ALLOC", lambda x: add(A.zeros((3,), x.dtype), mul(A.ones((3,), x.dtype), x)), ((3,),),
        lambda x: x.copy(), id="zeros-ones"),
    # --- shape, shape_i, specify_shape
    Row("SHAPE", lambda x, y: S.reshape(x, S.shape(y)), ((6,), (2, 3)), lambda x, y: x.reshape(2, 3), wrt=(0,),
        id="reshape-to-shape"),
    Row("SHAPE", lambda x: S.shape(x), ((2, 0, 3),), lambda x: np.array(x.shape), differentiable=False,
        id="shape-value"),
    Row("SHAPE_I", lambda x: S.shape_i(x, -1), ((2, 5),), lambda x: np.array(5), differentiable=False,
        id="shape_i-value"),
    Row("SPECIFY_SHAPE", lambda x: mul(A.specify_shape(x, (None, 3)), 2.0), ((2, 3),), lambda x: 2 * x,
        id="specify_shape"),
    # --- roll
    Row("ROLL", lambda x: A.roll(x, 2, axis=1), ((2, 3),), lambda x: np.roll(x, 2, 1), id="roll"),
    Row("ROLL", lambda x: A.roll(x, -1), ((2, 3),), lambda x: np.roll(x, -1), id="roll-flat"),
    Row("ROLL", lambda x, s: A.roll(x, s, axis=0), ((4, 2), ()), lambda x, s: np.roll(x, s, 0),
        domain=(F, ints(3)), int_inputs=(1,), id="roll-symbolic"),
    Row("ROLL", lambda x: A.roll(x, 1, axis=0), ((0, 2),), lambda x: x.copy(), id="roll-size0"),
    # --- repeat
    Row("REPEAT", lambda x: A.repeat(x, 2, axis=0), ((2, 3),), lambda x: np.repeat(x, 2, 0),
        also=("REPEAT_SUM",), id="repeat"),
    Row("REPEAT", lambda x: A.repeat(x, [1, 0, 3], axis=1), ((2, 3),), lambda x: np.repeat(x, [1, 0, 3], 1),
        also=("REPEAT_SUM",), id="repeat-vector"),
    Row("REPEAT", lambda x: A.repeat(x, 2), ((2, 2),), lambda x: np.repeat(x, 2), also=("FLATTEN",),
        id="repeat-flat"),
    Row("REPEAT", lambda x, r: A.repeat(x, r, axis=0), ((3, 2), (3,)), lambda x, r: np.repeat(x, r, 0),
        domain=(F, ints(2, 0, 1)), int_inputs=(1,), id="repeat-symbolic"),
    Row("REPEAT_SUM", lambda g, x: A.RepeatSum(0)(g, [1, 0, 2], x), ((3, 2), (3, 2)),
        lambda g, x: _repeat_sum_ref(g, x, [1, 0, 2], 0), wrt=(0,), id="repeat_sum"),
    # --- tile
    Row("TILE", lambda x: A.tile(x, (2, 1)), ((2, 3),), lambda x: np.tile(x, (2, 1)), also=("TILE_SUM",),
        id="tile"),
    Row("TILE", lambda x: A.tile(x, (2, 1, 3)), ((2,),), lambda x: np.tile(x, (2, 1, 3)), id="tile-promote"),
    Row("TILE", lambda x: A.tile(x, (0, 2)), ((2, 1),), lambda x: np.tile(x, (0, 2)), id="tile-zero"),
    Row("TILE_SUM", lambda g, x: A.TileSum((2, 3))(g, x), ((4, 3), (2, 1)),
        lambda g, x: _tile_sum_ref(g, x, (2, 3)), wrt=(0,), id="tile_sum"),
    # --- arange / eye / zeros_like / ones_like (not connected to float derivatives)
    Row("ARANGE", lambda x: mul(A.arange(1, 6, 2, dtype=x.dtype), x), ((),), lambda x: np.arange(1, 6, 2) * x,
        id="arange-times-x"),
    Row("ARANGE", lambda n: A.arange(n), ((),), lambda n: np.arange(n), domain=(ints(4),), int_inputs=(0,),
        differentiable=False, id="arange-symbolic"),
    Row("EYE", lambda x: mul(A.eye(3, 4, 1, dtype=x.dtype), x), ((),), lambda x: np.eye(3, 4, 1) * x,
        id="eye-times-x"),
    Row("EYE", lambda n: A.eye(n, k=-1), ((),), lambda n: np.eye(n, k=-1), domain=(ints(3),), int_inputs=(0,),
        differentiable=False, id="eye-symbolic"),
    Row("ZEROS_LIKE", lambda x: add(A.zeros_like(x), x), ((2, 0),), lambda x: x.copy(), id="zeros_like-size0"),
    Row("ZEROS_LIKE", lambda x: add(A.zeros_like(x), x), ((2, 3),), lambda x: x.copy(), id="zeros_like"),
    Row("ONES_LIKE", lambda x, y: mul(A.ones_like(x), y), ((2, 3), (1, 3)), lambda x, y: np.ones((2, 3)) * y,
        id="ones_like"),
    Row("ONES_LIKE", lambda i: A.ones_like(i, dtype="float64"), ((3,),), lambda i: np.ones(3), domain=(ints(1, 2, 3),),
        int_inputs=(0,), differentiable=False, id="ones_like-int-input"),
]
