"""Spec rows: gradient modifiers (value only: their derivative rules are deliberately
not adjoint to each other; tests/test_gradient.py checks each rule) and map_rows."""

import numpy as np

import tapegrad as tg
from tapegrad.ops.map import map_rows
from tests.ops.rows import Row


def _modifier_row(code, fn):
    return Row(code, fn, ((3, 2),), reference=lambda x: x, wrt=(), id=code.lower())


def _mapped(A, x):
    v = A.type.clone(shape=A.type.shape[1:])()  # one row of A
    return map_rows([v], [tg.tanh(v * x) + x**2], [A])[0]


ROWS = [
    _modifier_row("ZERO_GRAD", tg.zero_grad),
    _modifier_row("DISCONNECTED_GRAD", tg.disconnected_grad),
    _modifier_row("CONSIDER_CONSTANT", tg.consider_constant),
    _modifier_row("GRAD_CLIP", lambda x: tg.grad_clip(x, -1.0, 1.0)),
    _modifier_row("GRAD_SCALE", lambda x: tg.grad_scale(x, 2.0)),
    _modifier_row("UNDEFINED_GRAD", tg.undefined_grad),
    Row("MAP_ROWS", _mapped, ((4, 3), (3,)), reference=lambda A, x: np.tanh(A * x) + x**2, id="map_rows"),
    Row("MAP_ROWS", _mapped, ((0, 3), (3,)), reference=lambda A, x: np.tanh(A * x) + x**2, id="map_rows_empty"),
]
