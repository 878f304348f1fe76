"""Spec rows of the reduction family (``tapegrad/ops/reduce.py``, codes 200-299)."""

from __future__ import annotations

import numpy as np

from tapegrad.ops import reduce as R
from tests.ops.rows import Row


def with_zeros(rng, shape, dtype):
    """Uniform in (-1.5, 1.5) with about a third of the entries exactly 0 (one group with two)."""
    x = rng.uniform(-1.5, 1.5, size=shape)
    x[rng.uniform(size=shape) < 0.3] = 0.0
    if x.ndim == 2 and x.shape[1] >= 3:
        x[0, :2] = 0.0  # a group with two zeros
        x[-1] = rng.uniform(0.5, 1.5, size=x.shape[1])  # and one with none
    return x.astype(dtype)


def _np_linrec(a, b, axis, reverse):
    """Reference for LINREC: ``s_i = b_i + a_i s_{i-1}`` (reverse: ``b_i + a_{i+1} s_{i+1}``) along ``axis``."""
    a, b = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
    s = np.empty(b.shape, b.dtype)
    order = range(len(b) - 1, -1, -1) if reverse else range(len(b))
    prev = None
    for i in order:
        s[i] = b[i] if prev is None else b[i] + s[prev] * a[prev if reverse else i]
        prev = i
    return np.moveaxis(s, 0, axis)


def _np_logsumexp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _first_mask(x, axis, which):
    """Reference for EXTREMUM_MASK: True at the first max/min of each group over ``axis``."""
    axes = tuple(range(x.ndim)) if axis is None else tuple(a % x.ndim for a in np.atleast_1d(axis))
    keep = [i for i in range(x.ndim) if i not in axes]
    xt = np.transpose(x, keep + list(axes))
    flat = xt.reshape(xt.shape[: len(keep)] + (-1,))
    idx = (np.argmax if which == "max" else np.argmin)(flat, axis=-1)
    m = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(m, idx[..., None], True, axis=-1)
    return m.reshape(xt.shape).transpose(np.argsort(keep + list(axes)))


ROWS = [
    # --- sum
    Row("SUM", lambda x: R.sum(x), ((3, 4),), lambda x: np.sum(x), id="sum-all"),
    Row("SUM", lambda x: R.sum(x, axis=1), ((3, 4),), lambda x: np.sum(x, axis=1), id="sum-axis1"),
    Row("SUM", lambda x: R.sum(x, axis=-1, keepdims=True), ((2, 3, 4),),
        lambda x: np.sum(x, axis=-1, keepdims=True), id="sum-neg-keepdims"),
    Row("SUM", lambda x: R.sum(x, axis=(0, 2)), ((2, 3, 4),), lambda x: np.sum(x, axis=(0, 2)), id="sum-tuple"),
    Row("SUM", lambda x: R.sum(x, axis=(0, -1), keepdims=True), ((1, 3, 1),),
        lambda x: np.sum(x, axis=(0, -1), keepdims=True), static=((1, 3, 1),), id="sum-size1-static"),
    Row("SUM", lambda x: R.sum(x, axis=0), ((0, 3),), lambda x: np.sum(x, axis=0), id="sum-size0"),
    Row("SUM", lambda x: R.sum(x, axis=1), ((0, 3),), lambda x: np.sum(x, axis=1), id="sum-size0-kept"),
    Row("SUM", lambda x: R.sum(x), ((),), lambda x: np.sum(x), id="sum-0d"),
    Row("SUM", lambda x: R.sum(x, axis=0, dtype="float64"), ((3, 2),),
        lambda x: np.sum(x, axis=0, dtype="float64"), dtypes=("float32",), id="sum-f32-dtype-f64"),
    # --- mean / var / std
    Row("MEAN", lambda x: R.mean(x, axis=0), ((3, 4),), lambda x: np.mean(x, axis=0), id="mean-axis0"),
    Row("MEAN", lambda x: R.mean(x, axis=(1, 2), keepdims=True), ((2, 3, 2),),
        lambda x: np.mean(x, axis=(1, 2), keepdims=True), id="mean-tuple-keepdims"),
    Row("MEAN", lambda x: R.var(x, axis=1), ((3, 4),), lambda x: np.var(x, axis=1), id="var-axis1"),
    Row("MEAN", lambda x: R.var(x, axis=None, ddof=1), ((3, 4),), lambda x: np.var(x, ddof=1), id="var-ddof1"),
    Row("MEAN", lambda x: R.std(x, axis=-1, keepdims=True), ((2, 5),),
        lambda x: np.std(x, axis=-1, keepdims=True), id="std-keepdims"),
    Row("MEAN", lambda x: R.std(x, axis=(0, 1), ddof=1), ((2, 3),), lambda x: np.std(x, axis=(0, 1), ddof=1),
        id="std-ddof1"),
    # --- prod
    Row("PROD", lambda x: R.prod(x, axis=1), ((3, 4),), lambda x: np.prod(x, axis=1), domain=((0.5, 1.5),),
        id="prod-axis1"),
    Row("PROD", lambda x: R.prod(x, axis=-1, keepdims=True), ((4, 4),),
        lambda x: np.prod(x, axis=-1, keepdims=True), domain=(with_zeros,), id="prod-zeros"),
    Row("PROD", lambda x: R.prod(x), ((2, 3),), lambda x: np.prod(x), domain=((-1.5, 1.5),), id="prod-all"),
    Row("PROD", lambda x: R.prod(x, axis=(0, 2)), ((2, 1, 3),), lambda x: np.prod(x, axis=(0, 2)),
        domain=((0.5, 1.5),), id="prod-tuple-size1"),
    # --- max / min
    Row("MAX", lambda x: R.max(x, axis=1), ((3, 5),), lambda x: np.max(x, axis=1), id="max-axis1"),
    Row("MAX", lambda x: R.max(x, axis=(0, -1), keepdims=True), ((2, 3, 4),),
        lambda x: np.max(x, axis=(0, -1), keepdims=True), id="max-tuple-keepdims"),
    Row("MAX", lambda x: R.max(x), ((4,),), lambda x: np.max(x), id="max-all"),
    Row("MIN", lambda x: R.min(x, axis=0), ((4, 3),), lambda x: np.min(x, axis=0), id="min-axis0"),
    Row("MIN", lambda x: R.min(x, axis=None, keepdims=True), ((2, 1, 3),),
        lambda x: np.min(x, keepdims=True), id="min-all-keepdims"),
    # --- argmax / argmin (integer valued)
    Row("ARGMAX", lambda x: R.argmax(x, axis=1), ((3, 4),), lambda x: np.argmax(x, axis=1), differentiable=False,
        id="argmax-axis1"),
    Row("ARGMAX", lambda x: R.argmax(x), ((3, 4),), lambda x: np.argmax(x), differentiable=False, id="argmax-all"),
    Row("ARGMAX", lambda x: R.argmax(x, axis=-1, keepdims=True), ((2, 3),),
        lambda x: np.argmax(x, axis=-1, keepdims=True), differentiable=False, id="argmax-keepdims"),
    Row("ARGMIN", lambda x: R.argmin(x, axis=0), ((3, 4),), lambda x: np.argmin(x, axis=0), differentiable=False,
        id="argmin-axis0"),
    Row("ARGMIN", lambda x: R.argmin(x, axis=None, keepdims=True), ((2, 3),),
        lambda x: np.argmin(x, keepdims=True), differentiable=False, id="argmin-all-keepdims"),
    Row("EXTREMUM_MASK", lambda x: R.ExtremumMask((0, 2), "max")(x), ((2, 3, 2),),
        lambda x: _first_mask(x, (0, 2), "max"), differentiable=False, id="mask-max"),
    Row("EXTREMUM_MASK", lambda x: R.ExtremumMask(None, "min")(x), ((3, 2),),
        lambda x: _first_mask(x, None, "min"), differentiable=False, id="mask-min"),
    # --- all / any
    Row("ALL", lambda x: R.all(x > 0, axis=1), ((3, 4),), lambda x: np.all(x > 0, axis=1), differentiable=False,
        id="all-axis1"),
    Row("ALL", lambda x: R.all(x > 0, axis=0), ((0, 3),), lambda x: np.all(x > 0, axis=0), differentiable=False,
        id="all-size0"),
    Row("ANY", lambda x: R.any(x > 1, axis=(0, 1), keepdims=True), ((2, 3),),
        lambda x: np.any(x > 1, axis=(0, 1), keepdims=True), differentiable=False, id="any-tuple"),
    Row("ANY", lambda x: R.any(x > 0, axis=1), ((2, 0),), lambda x: np.any(x > 0, axis=1), differentiable=False,
        id="any-size0"),
    # --- logsumexp
    Row("LOGSUMEXP", lambda x: R.logsumexp(x, axis=1), ((3, 4),), lambda x: _np_logsumexp(x, axis=1),
        id="logsumexp-axis1"),
    Row("LOGSUMEXP", lambda x: R.logsumexp(x), ((2, 3),), lambda x: _np_logsumexp(x), id="logsumexp-all"),
    Row("LOGSUMEXP", lambda x: R.logsumexp(x, axis=(0, 2), keepdims=True), ((2, 2, 3),),
        lambda x: _np_logsumexp(x, axis=(0, 2), keepdims=True), id="logsumexp-tuple-keepdims"),
    # --- scans
    Row("CUMSUM", lambda x: R.cumsum(x, axis=1), ((3, 4),), lambda x: np.cumsum(x, axis=1), id="cumsum-axis1"),
    Row("CUMSUM", lambda x: R.cumsum(x, axis=-2), ((3, 2),), lambda x: np.cumsum(x, axis=-2), id="cumsum-neg"),
    Row("CUMSUM", lambda x: R.cumsum(x), ((2, 3),), lambda x: np.cumsum(x), also=("RAVEL",), id="cumsum-flat"),
    Row("CUMPROD", lambda x: R.cumprod(x, axis=1), ((3, 4),), lambda x: np.cumprod(x, axis=1),
        domain=((0.5, 1.5),), id="cumprod-axis1"),
    Row("CUMPROD", lambda x: R.cumprod(x, axis=0), ((4, 3),), lambda x: np.cumprod(x, axis=0),
        domain=(with_zeros,), id="cumprod-zeros"),
    Row("CUMPROD", lambda x: R.cumprod(x), ((2, 3),), lambda x: np.cumprod(x), domain=((-1.5, 1.5),),
        also=("RAVEL",), id="cumprod-flat"),
    Row("LINREC", lambda a, b: R.LinRec(1)(a, b), ((3, 4), (3, 4)), lambda a, b: _np_linrec(a, b, 1, False),
        domain=((-1.5, 1.5), (-1.0, 1.0)), id="linrec-axis1"),
    Row("LINREC", lambda a, b: R.LinRec(0, reverse=True)(a, b), ((4, 2, 3), (4, 2, 3)),
        lambda a, b: _np_linrec(a, b, 0, True), domain=(with_zeros, (-1.0, 1.0)), id="linrec-reverse-zeros"),
    Row("LINREC", lambda a, b: R.LinRec(-1, reverse=True)(a, b), ((5,), (5,)),
        lambda a, b: _np_linrec(a, b, 0, True), domain=((-1.5, 1.5), (-1.0, 1.0)), id="linrec-reverse-vector"),
    # --- internal linear helpers
    Row("BROADCAST_REDUCED", lambda g, x: R.BroadcastReduced((1,), False)(g, x), ((3,), (3, 4)),
        lambda g, x: np.broadcast_to(g[:, None], (3, 4)), wrt=(0,), id="broadcast-reduced"),
    Row("BROADCAST_REDUCED", lambda g, x: R.BroadcastReduced(None, True, True, 1)(g, x), ((1, 1), (2, 3)),
        lambda g, x: np.broadcast_to(g / 5, (2, 3)), wrt=(0,), id="broadcast-reduced-mean"),
    Row("RAVEL", lambda x: R.Ravel()(x), ((2, 3),), lambda x: x.ravel(), id="ravel"),
    Row("RAVEL", lambda g, x: R.Ravel()(g, x), ((6,), (2, 3)), lambda g, x: g.reshape(2, 3), wrt=(0,),
        id="ravel-like"),
]
