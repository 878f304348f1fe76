"""Spec rows of the loop family (``tapegrad/ops/scan.py``, codes 650-699).

``SCAN`` rows check values against a NumPy loop, and grad/Rop of the loop
against finite differences; ``SCAN_GRAD`` rows take the graph of a ``Lop``
through a loop as the function under test, so the runner checks the reverse
sweep's own ``L_op`` (reverse over reverse) and ``R_op`` (forward over
reverse, the HVP path), with ``checkpoint="all"`` and ``"binomial"``.
"""

from __future__ import annotations

import numpy as np

import tapegrad as tg
from tests.ops.rows import Row

DT = 0.01


def _scalar_rec(x0, xs):
    out, _ = tg.scan(lambda x, h: 0.8 * h + tg.sin(x) * h + 0.1 * x, sequences=xs, outputs_info=x0)
    return out


def _np_scalar_rec(x0, xs):
    h, out = x0, []
    for x in xs:
        h = 0.8 * h + np.sin(x) * h + 0.1 * x
        out.append(h)
    return np.array(out, dtype=x0.dtype).reshape((len(xs),) + np.shape(x0))


def _vec_param(x0, a):
    out, _ = tg.scan(lambda h, a: tg.tanh(a * h + 0.5), outputs_info=x0, non_sequences=a, n_steps=4)
    return out


def _np_vec_param(x0, a):
    h, out = x0, []
    for _ in range(4):
        h = np.tanh(a * h + 0.5)
        out.append(h)
    return np.array(out)


def _matrix_state(X0, W, S):
    out, _ = tg.scan(lambda s, X, W: tg.tanh(W @ X + s), sequences=S, outputs_info=X0, non_sequences=W)
    return out


def _np_matrix_state(X0, W, S):
    X, out = X0, []
    for s in S:
        X = np.tanh(W @ X + s)
        out.append(X)
    return np.array(out, dtype=X0.dtype).reshape((len(S),) + X0.shape)


def _l96(u, F):
    return u + DT * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)


def _np_l96_step(u, F):
    return u + DT * ((np.roll(u, -1) - np.roll(u, 2)) * np.roll(u, 1) - u + F)


def _lorenz(u0, F):
    out, _ = tg.scan(_l96, outputs_info=u0, non_sequences=F, n_steps=5)
    return out


def _np_lorenz(u0, F):
    u, out = u0, []
    for _ in range(5):
        u = _np_l96_step(u, F)
        out.append(u)
    return np.array(out)


def _closure_map(xs, b):
    out, _ = tg.scan(lambda x: tg.exp(0.3 * x) * b, sequences=xs)  # b: implicit non-sequence
    return out


def _two_outputs(x0, xs, c):
    (h, y), _ = tg.scan(lambda x, h, c: [h * tg.cos(x) + c, (h * x).sum()], sequences=xs,
                        outputs_info=[x0, None], non_sequences=c)
    return [h, y]


def _np_two_outputs(x0, xs, c):
    h, hs, ys = x0, [], []
    for x in xs:
        y = (h * x).sum()
        h = h * np.cos(x) + c
        hs.append(h)
        ys.append(y)
    return [np.array(hs).reshape((len(xs),) + x0.shape), np.array(ys, dtype=x0.dtype)]


def _n_steps_short(x0, xs):
    out, _ = tg.scan(lambda x, h: h * x + 1.0, sequences=xs, outputs_info=x0, n_steps=2)
    return out


def _np_n_steps_short(x0, xs):
    h, out = x0, []
    for x in xs[:2]:
        h = h * x + 1.0
        out.append(h)
    return np.array(out)


def _last(u0, F):
    out, _ = tg.scan(_l96, outputs_info=u0, non_sequences=F, n_steps=6)
    return out[-1]


def _np_last(u0, F):
    u = u0
    for _ in range(6):
        u = _np_l96_step(u, F)
    return u


def _grad_of_loop(checkpoint):
    def build(X0, W, V):
        out, _ = tg.scan(lambda X, W: tg.tanh(W @ X) + 0.1 * X, outputs_info=X0, non_sequences=W, n_steps=3,
                         checkpoint=checkpoint, snapshots=1)
        return tg.Lop(out, [X0, W], V)

    return build


def _grad_of_lorenz(checkpoint):
    def build(u0, F, v):
        out, _ = tg.scan(_l96, outputs_info=u0, non_sequences=F, n_steps=5, checkpoint=checkpoint, snapshots=2)
        return tg.Lop(out[-1], [u0, F], v)

    return build


def _grad_with_seq(xs, h0, c):
    out, _ = tg.scan(lambda x, h, c: tg.sin(h * x) + c, sequences=xs, outputs_info=h0, non_sequences=c,
                     checkpoint="binomial", snapshots=2)
    return tg.grad((out ** 2).sum(), [xs, h0, c])


ROWS = [
    Row("SCAN", _scalar_rec, ((), (5,)), _np_scalar_rec, id="scan-scalar-recurrence"),
    Row("SCAN", _vec_param, ((3,), (3,)), _np_vec_param, id="scan-vector-nonseq"),
    Row("SCAN", _matrix_state, ((2, 3), (2, 2), (4, 2, 3)), _np_matrix_state, domain=((-1.0, 1.0),),
        id="scan-matrix-state"),
    Row("SCAN", _matrix_state, ((2, 3), (2, 2), (4, 2, 3)), _np_matrix_state, domain=((-1.0, 1.0),),
        static=((2, 3), (2, 2), (4, 2, 3)), id="scan-matrix-state-static"),
    Row("SCAN", _lorenz, ((6,), ()), _np_lorenz, domain=((-2.0, 2.0), (7.0, 9.0)), id="scan-lorenz96"),
    Row("SCAN", _closure_map, ((4, 3), (3,)), lambda xs, b: np.exp(0.3 * xs) * b, id="scan-map-closure"),
    Row("SCAN", _two_outputs, ((3,), (4, 3), ()), _np_two_outputs, id="scan-state-and-output"),
    Row("SCAN", _two_outputs, ((0,), (4, 0), ()), _np_two_outputs, id="scan-size0-state"),
    Row("SCAN", _scalar_rec, ((), (0,)), _np_scalar_rec, id="scan-zero-steps"),
    Row("SCAN", _n_steps_short, ((2,), (5, 2)), _np_n_steps_short, domain=((-1.0, 1.0),), id="scan-n-steps"),
    Row("SCAN", _last, ((6,), ()), _np_last, domain=((-2.0, 2.0), (7.0, 9.0)), id="scan-last-only"),
    Row("SCAN_GRAD", _grad_of_loop("all"), ((2, 2), (2, 2), (3, 2, 2)), None, domain=((-1.0, 1.0),),
        id="scan_grad-all"),
    Row("SCAN_GRAD", _grad_of_loop("binomial"), ((2, 2), (2, 2), (3, 2, 2)), None, domain=((-1.0, 1.0),),
        id="scan_grad-binomial"),
    Row("SCAN_GRAD", _grad_of_lorenz("binomial"), ((5,), (), (5,)), None, domain=((-2.0, 2.0), (7.0, 9.0), (-1.0, 1.0)),
        id="scan_grad-lorenz-binomial"),
    Row("SCAN_GRAD", _grad_with_seq, ((4, 2), (2,), ()), None, domain=((-1.0, 1.0),), id="scan_grad-sequence"),
]
