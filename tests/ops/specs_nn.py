"""Spec rows of the neural-network family (``tapegrad/ops/nn.py``, codes 500-549)."""

from __future__ import annotations

import numpy as np

from tapegrad.ops import nn as N
from tests.ops.rows import Row


def np_softmax(x, axis=-1):
    if x.size == 0:
        return x.copy()
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    if x.size == 0:
        return x.copy()
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def away_from_zero(rng, shape, dtype):
    """Uniform in +-(0.1, 2): finite differences never cross relu's kink."""
    return (rng.uniform(0.1, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


ROWS = [
    # --- softmax
    Row("SOFTMAX", lambda x: N.softmax(x), ((3, 4),), np_softmax, id="softmax-last"),
    Row("SOFTMAX", lambda x: N.softmax(x, axis=0), ((3, 4),), lambda x: np_softmax(x, 0), id="softmax-axis0"),
    Row("SOFTMAX", lambda x: N.softmax(x, axis=None), ((2, 3),), lambda x: np_softmax(x, None), id="softmax-all"),
    Row("SOFTMAX", lambda x: N.softmax(x, axis=(0, 2)), ((2, 3, 2),), lambda x: np_softmax(x, (0, 2)),
        id="softmax-tuple"),
    Row("SOFTMAX", lambda x: N.softmax(x), ((5,),), np_softmax, domain=((-6.0, 6.0),), id="softmax-wide"),
    Row("SOFTMAX", lambda x: N.softmax(x, axis=1), ((3, 1),), lambda x: np_softmax(x, 1), static=((None, 1),),
        id="softmax-size1"),
    Row("SOFTMAX", lambda x: N.softmax(x), ((0, 3),), np_softmax, id="softmax-size0-batch"),
    Row("SOFTMAX", lambda x: N.softmax(x), ((3, 0),), np_softmax, id="softmax-size0-axis"),
    Row("SOFTMAX", lambda x: N.softmax(x), ((),), lambda x: np.ones_like(x), id="softmax-0d"),
    # --- log_softmax
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x), ((3, 4),), np_log_softmax, id="log_softmax-last"),
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x, axis=0), ((3, 4),), lambda x: np_log_softmax(x, 0),
        id="log_softmax-axis0"),
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x, axis=None), ((2, 3),), lambda x: np_log_softmax(x, None),
        id="log_softmax-all"),
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x), ((2, 6),), np_log_softmax, domain=((-10.0, 10.0),),
        id="log_softmax-wide"),
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x, axis=0), ((1, 3),), lambda x: np_log_softmax(x, 0),
        id="log_softmax-size1"),
    Row("LOG_SOFTMAX", lambda x: N.log_softmax(x), ((2, 0),), np_log_softmax, id="log_softmax-size0"),
    # --- relu
    Row("RELU", N.relu, ((3, 4),), lambda x: np.maximum(x, 0), domain=(away_from_zero,), id="relu"),
    Row("RELU", N.relu, ((),), lambda x: np.maximum(x, 0), domain=(away_from_zero,), id="relu-0d"),
    Row("RELU", N.relu, ((0, 2),), lambda x: np.maximum(x, 0), id="relu-size0"),
    # --- sum_broadcast (internal: the rules of softmax and log_softmax)
    Row("SUM_BROADCAST", lambda x: N.SumBroadcast((1,))(x), ((3, 4),),
        lambda x: np.broadcast_to(x.sum(1, keepdims=True), x.shape), id="sum_broadcast"),
    Row("SUM_BROADCAST", lambda x: N.SumBroadcast((0, 2))(x), ((2, 0, 3),),
        lambda x: np.broadcast_to(x.sum((0, 2), keepdims=True), x.shape), id="sum_broadcast-size0"),
]
