"""Spec rows of the indexing family (``tapegrad/ops/index.py``, codes 400-449).

Index inputs are int64 (``int_inputs``) with fixed values from ``ints(...)``:
repeated, negative (``-1`` next to ``n-1``: the same position) and empty
indices; size-1 and size-0 dimensions; symbolic slice bounds.
"""

from __future__ import annotations

import numpy as np

from tapegrad.ops import index as I
from tests.ops.rows import Row

F = (-2.0, 2.0)


def ints(*values):
    """Domain of an index input: always ``values`` (the row's shape must match)."""

    def make(rng, shape, dtype):
        out = np.array(values, dtype="int64").reshape(shape)
        return out.astype(dtype) if np.dtype(dtype).kind in "iu" else out

    return make


def _np_inc(x, y, i, axis=0):
    out = x.copy()
    np.add.at(out, (slice(None),) * axis + (i,), y)
    return out


def _np_set(x, y, i, axis=0):
    out = x.copy()
    pos = (slice(None),) * axis
    i = np.asarray(i) % x.shape[axis]
    y = np.broadcast_to(y, x[pos + (i,)].shape)
    y = y.reshape(x.shape[:axis] + (i.size,) + x.shape[axis + 1 :])
    for k in range(i.size):  # sequential writes: the last one wins
        out[pos + (i.flat[k],)] = np.take(y, k, axis=axis)
    return out


def _np_take_last(x, i, axis=0):
    out = np.take(x, i, axis=axis).copy()
    flat = np.asarray(i).ravel() % x.shape[axis]
    view = out.reshape(x.shape[:axis] + (flat.size,) + x.shape[axis + 1 :])
    for k in range(flat.size):
        if k != max(j for j in range(flat.size) if flat[j] == flat[k]):
            view[(slice(None),) * axis + (k,)] = 0
    return out


def _scatter(read, y):
    """The transpose op of ``read`` (``v[idx]``) applied to ``y``: zeros like ``v`` with ``y`` at ``idx``."""
    node = read.owner
    cls = I.SubtensorScatter if type(node.op) is I.Subtensor else I.AdvancedScatter1
    return cls(*node.op._props())(node.inputs[0], y, *node.inputs[1:])


def _np_scatter(x, y, idx):
    out = np.zeros_like(x)
    out[idx] = y
    return out


def _np_set_basic(x, y, idx):
    out = x.copy()
    out[idx] = y
    return out


ROWS = [
    # --- SUBTENSOR (400)
    Row("SUBTENSOR", lambda x: x[1], ((3, 4),), lambda x: x[1], id="index-int"),
    Row("SUBTENSOR", lambda x: x[1:-1:2], ((6, 3),), lambda x: x[1:-1:2], id="index-slice-step"),
    Row("SUBTENSOR", lambda x: x[:, None], ((3, 4),), lambda x: x[:, None], id="index-newaxis"),
    Row("SUBTENSOR", lambda x: x[..., 0], ((2, 3, 4),), lambda x: x[..., 0], id="index-ellipsis"),
    Row("SUBTENSOR", lambda x: x[::-1], ((4,),), lambda x: x[::-1], id="index-reverse"),
    Row("SUBTENSOR", lambda x: x[-1, ::-2], ((3, 5),), lambda x: x[-1, ::-2], static=((3, 5),), id="index-neg-static"),
    Row("SUBTENSOR", lambda x: x[1, -2], ((3, 4),), lambda x: x[1, -2], id="index-to-0d"),
    Row("SUBTENSOR", lambda x: x[None, 0, None, 0:1], ((1, 1),), lambda x: x[None, 0, None, 0:1],
        static=((1, 1),), id="index-size1-newaxes"),
    Row("SUBTENSOR", lambda x: x[2:2], ((4, 2),), lambda x: x[2:2], id="index-size0"),
    Row("SUBTENSOR", lambda x, i, j, k: x[i:j, k], ((5, 3), (), (), ()), lambda x, i, j, k: x[i:j, k],
        domain=(F, ints(-4), ints(4), ints(-1)), int_inputs=(1, 2, 3), id="index-symbolic-bounds"),
    Row("SUBTENSOR", lambda x, s: x[::s], ((5,), ()), lambda x, s: x[::s], domain=(F, ints(-2)),
        int_inputs=(1,), id="index-symbolic-step"),
    # --- INC_SUBTENSOR (401)
    Row("INC_SUBTENSOR", lambda x, y: I.inc_subtensor(x[1:3], y), ((4, 3), (2, 3)),
        lambda x, y: _np_inc(x, y, slice(1, 3)), id="index-inc-slice"),
    Row("INC_SUBTENSOR", lambda x, y: I.inc_subtensor(x[:, -1], y), ((4, 3), ()),
        lambda x, y: _np_inc(x, y, -1, axis=1), id="index-inc-bcast-scalar"),
    Row("INC_SUBTENSOR", lambda x, y: I.inc_subtensor(x[::-2], y), ((5, 3), (1, 3)),
        lambda x, y: _np_inc(x, y, slice(None, None, -2)), id="index-inc-bcast-size1"),
    Row("INC_SUBTENSOR", lambda x, y: I.inc_subtensor(x[None, 1:], y), ((4,), (1, 3)),
        lambda x, y: _np_inc(x, y[0], slice(1, None)), id="index-inc-newaxis"),
    Row("INC_SUBTENSOR", lambda x, y, i: I.inc_subtensor(x[i:], y), ((4,), (2,), ()),
        lambda x, y, i: _np_inc(x, y, slice(i, None)), domain=(F, F, ints(-2)), int_inputs=(2,),
        id="index-index-inc-symbolic"),
    # --- SET_SUBTENSOR (402)
    Row("SET_SUBTENSOR", lambda x, y: I.set_subtensor(x[::2, -1], y), ((5, 3), (3,)),
        lambda x, y: _np_set_basic(x, y, (slice(None, None, 2), -1)), id="index-set-step"),
    Row("SET_SUBTENSOR", lambda x, y: I.set_subtensor(x[1], y), ((2, 1, 3), (1,)),
        lambda x, y: _np_set_basic(x, y, 1), static=((2, 1, 3), (None,)), id="index-set-bcast-size1"),
    # --- SUBTENSOR_SCATTER (403)
    Row("SUBTENSOR_SCATTER", lambda x, y: _scatter(x[1:3, 0], y), ((4, 2), (2,)),
        lambda x, y: _np_scatter(x, y, (slice(1, 3), 0)), wrt=(1,), id="index-scatter-basic"),
    Row("SUBTENSOR_SCATTER", lambda x, y: _scatter(x[None, ::-1], y), ((3,), ()),
        lambda x, y: _np_scatter(x, y, slice(None, None, -1)), wrt=(1,), id="index-scatter-bcast"),
    # --- ADVANCED_SUBTENSOR1 (410)
    Row("ADVANCED_SUBTENSOR1", lambda x, i: x[i], ((5, 3), (4,)), lambda x, i: x[i],
        domain=(F, ints(0, 2, 2, -1)), int_inputs=(1,), id="index-adv-repeat-neg"),
    Row("ADVANCED_SUBTENSOR1", lambda x, i: x[:, i], ((3, 5), (3,)), lambda x, i: x[:, i],
        domain=(F, ints(4, -1, 0)), int_inputs=(1,), id="index-adv-axis1"),
    Row("ADVANCED_SUBTENSOR1", lambda x, i: I.take(x, i, axis=1), ((2, 4, 2), (2, 2)),
        lambda x, i: np.take(x, i, axis=1), domain=(F, ints(3, 0, 0, -4)), int_inputs=(1,), id="index-take-matrix"),
    Row("ADVANCED_SUBTENSOR1", lambda x: x[[0, 0, -1]], ((1, 3),), lambda x: x[[0, 0, -1]],
        static=((1, 3),), id="index-adv-const-size1"),
    Row("ADVANCED_SUBTENSOR1", lambda x, i: x[i], ((3,), (0,)), lambda x, i: x[i], domain=(F, ints()),
        int_inputs=(1,), id="index-adv-empty"),
    # --- ADVANCED_INC_SUBTENSOR1 (411): repeats accumulate (np.add.at)
    Row("ADVANCED_INC_SUBTENSOR1", lambda x, y, i: I.inc_subtensor(x[i], y), ((5, 3), (4, 3), (4,)),
        lambda x, y, i: _np_inc(x, y, i), domain=(F, F, ints(1, 4, 1, -1)), int_inputs=(2,), id="index-inc-repeat"),
    Row("ADVANCED_INC_SUBTENSOR1", lambda x, y, i: I.inc_subtensor(x[i], y), ((4, 2), (), (3,)),
        lambda x, y, i: _np_inc(x, y, i), domain=(F, F, ints(0, 0, 0)), int_inputs=(2,), id="index-inc-bcast-scalar"),
    Row("ADVANCED_INC_SUBTENSOR1", lambda x, y, i: I.inc_subtensor(x[:, i], y), ((2, 3), (2, 1), (2,)),
        lambda x, y, i: _np_inc(x, y, i, axis=1), domain=(F, F, ints(2, -1)), int_inputs=(2,),
        id="index-index-inc-axis1-size1"),
    Row("ADVANCED_INC_SUBTENSOR1", lambda x, y: I.inc_subtensor(x[1:, [1, 1]], y), ((3, 4), (2, 2)),
        lambda x, y: np.concatenate([x[:1], _np_inc(x[1:], y, [1, 1], axis=1)]),
        also=("SET_SUBTENSOR", "SUBTENSOR"), id="index-inc-basic-and-array"),
    # --- ADVANCED_SET_SUBTENSOR1 (412): repeats: the last write wins and alone gets the gradient
    Row("ADVANCED_SET_SUBTENSOR1", lambda x, y, i: I.set_subtensor(x[i], y), ((5, 2), (4, 2), (4,)),
        lambda x, y, i: _np_set(x, y, i), domain=(F, F, ints(4, 2, -1, 2)), int_inputs=(2,),
        also=("ADVANCED_SUBTENSOR1_LAST",), id="index-set-repeat-neg"),
    Row("ADVANCED_SET_SUBTENSOR1", lambda x, y, i: I.set_subtensor(x[:, i], y), ((2, 3), (1,), (3,)),
        lambda x, y, i: _np_set(x, y, i, axis=1), domain=(F, F, ints(0, 0, 1)), int_inputs=(2,),
        id="index-index-set-bcast-axis1"),
    # --- ADVANCED_SCATTER1 (413), ADVANCED_SCATTER1_SET (414), ADVANCED_SUBTENSOR1_LAST (415)
    Row("ADVANCED_SCATTER1", lambda x, y, i: _scatter(x[i], y), ((4, 2), (3, 2), (3,)),
        lambda x, y, i: _np_inc(np.zeros_like(x), y, i), domain=(F, F, ints(3, -1, 0)), int_inputs=(2,),
        wrt=(1,), id="index-scatter-add"),
    Row("ADVANCED_SCATTER1_SET", lambda x, y, i: I.AdvancedScatter1Set(1)(x, y, i), ((2, 3), (2, 4), (4,)),
        lambda x, y, i: _np_set(np.zeros_like(x), y, i, axis=1), domain=(F, F, ints(2, 0, 2, -1)),
        int_inputs=(2,), wrt=(1,), id="index-scatter-set"),
    Row("ADVANCED_SUBTENSOR1_LAST", lambda x, i: I.AdvancedSubtensor1Last(0)(x, i), ((3, 2), (2, 3)),
        lambda x, i: _np_take_last(x, i), domain=(F, ints(0, 2, -1, 0, 1, 2)), int_inputs=(1,), id="index-take-last"),
]
