"""Aesara's shorthands over ``scan``: ``tg.map``, ``tg.reduce``, ``tg.foldl``, ``tg.foldr``."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

import tapegrad as tg

RNG = np.random.default_rng(3)


def test_map_rows_with_non_sequence_and_gradient():
    X, w = tg.dmatrix("X"), tg.dvector("w")
    out, upd = tg.map(lambda row, w: tg.tanh(tg.dot(row, w)), sequences=X, non_sequences=w)
    assert upd == {} and out.ndim == 1
    Xv, wv = RNG.standard_normal((5, 3)), RNG.standard_normal(3)
    f = tg.function([X, w], [out, tg.grad(tg.sum(out), w)])
    val, gw = f(Xv, wv)
    np.testing.assert_allclose(val, np.tanh(Xv @ wv), rtol=1e-14)
    np.testing.assert_allclose(gw, ((1 - np.tanh(Xv @ wv) ** 2)[:, None] * Xv).sum(0), rtol=1e-13)
    only = tg.map(lambda row: row * 2.0, sequences=X, return_updates=False)
    np.testing.assert_array_equal(tg.function([X], only)(Xv), 2 * Xv)


@pytest.mark.parametrize("which", ["reduce", "foldl", "foldr"])
def test_folds_keep_the_last_step(which):
    x, c = tg.dvector("x"), tg.dscalar("c")
    fn = lambda v, acc, c: acc * c + v   # noqa: E731  (order matters: a fold from the left and one from the right differ)
    if which == "reduce":
        res, upd = tg.reduce(fn, sequences=x, outputs_info=tg.constant(0.0), non_sequences=c)
    else:
        res, upd = getattr(tg, which)(fn, sequences=x, outputs_info=tg.constant(0.0), non_sequences=c)
    assert upd == {} and res.ndim == 0
    xv = np.array([1.0, 2.0, 3.0, 4.0])
    seq = xv[::-1] if which == "foldr" else xv
    acc = 0.0
    for v in seq:
        acc = acc * 0.5 + v
    f = tg.function([x, c], [res, tg.grad(res, x)])
    val, gx = f(xv, 0.5)
    assert float(val) == acc
    # d acc / d x_k = c ** (number of later steps)
    steps_after = np.arange(len(xv))[::-1] if which != "foldr" else np.arange(len(xv))
    np.testing.assert_allclose(gx, 0.5 ** steps_after, rtol=1e-15)
    value_only = tg.function([x, c], res)
    loop = next(line for line in str(value_only._engine.tape).splitlines() if "= scan " in line)
    assert loop.split(" = ")[0].endswith("f64[]")    # the value alone: the last step only, no trajectory


def test_reduce_with_several_outputs_returns_a_list():
    x = tg.dvector("x")
    (s, m), _ = tg.reduce(lambda v, s, m: [s + v, tg.maximum(m, v)], sequences=x,
                          outputs_info=[tg.constant(0.0), tg.constant(-np.inf)])
    assert tuple(float(a) for a in tg.function([x], [s, m])(np.array([3.0, -1.0, 7.0, 2.0]))) == (11.0, 7.0)


def test_star_import_keeps_the_builtins():
    ns = {}
    exec("from tapegrad import *", ns)
    assert "map" not in ns and "reduce" not in ns and "scan" in ns and "foldl" in ns and "grad" in ns
    assert tg.map is not builtins.map and tg.dprint is tg.printing.debugprint and tg.pp is tg.printing.pprint
