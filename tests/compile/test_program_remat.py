"""Rematerialisation in the program tier (``program_remat.py``): a cheap value of one array that a loop stored
only for later loops is recomputed where it is read, and its store and buffer go, unless a reader names the
buffer itself (a BLAS product)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tapegrad as tg
from tests.compile.test_program_copies import program_source as _source

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_value_read_after_a_reduction_is_recomputed_not_stored(dtype):
    a, b, k = tg.vector("a", dtype=dtype), tg.vector("b", dtype=dtype), tg.scalar("k", dtype=dtype)
    h = a * k
    m = tg.sum(h * b)
    args = [RNG.standard_normal(5000).astype(dtype), RNG.standard_normal(5000).astype(dtype), np.asarray(0.3, dtype)]
    src = _source([a, b, k], [h * m, m], args, dtype)
    # the second loop multiplies a by k again; no loop stores h
    assert re.search(r"= \(np\.float(64|32)\(x0\[nn\(nn\(i\)\)\] \* x2\[0\]\)\)", src), src
    assert len(re.findall(r"\n +b\d+\[nn\(i\)\] = t\d+\n", src)) == 1, src  # only the result h * m


def test_a_buffer_a_blas_product_reads_stays_stored():
    a, b, k = tg.dvector("a"), tg.dvector("b"), tg.dscalar("k")
    h = a * k
    m = tg.sum(h * b)
    args = [RNG.standard_normal(5000), RNG.standard_normal(5000), np.float64(0.3)]
    src = _source([a, b, k], [h * m, m, tg.dot(h, b) * h], args, "float64")
    (store,) = re.findall(r"\n +(b\d+)\[nn\(i\)\] = t\d+\n(?: +\S.*\n)*? +(?:\S+ = )?\S*np\.dot\(\1\[", src) or [None]
    assert store is not None, src


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_stencil_adjoint_recomputes_k_times_adj(dtype):
    u, k = tg.tensor(dtype=dtype, shape=(None,)), tg.tensor(dtype=dtype, shape=())
    c = u
    for _ in range(4):
        c = c + 0.1 * k * (tg.concatenate([c[:1], c[:-1]]) - 2 * c + tg.concatenate([c[1:], c[-1:]]))
    c = tg.sum(c ** 2)
    args = [RNG.standard_normal(3000).astype(dtype), np.asarray(0.7, dtype)]
    src = _source([u, k], [c, *tg.grad(c, [u, k])], args, dtype)
    # backward steps read the previous adjoint at i - 1, i, i + 1 and multiply by k there
    assert len(re.findall(r"\] = t\d+ \+ .*s_azmul\(b\d+\[nn\(nn\(\(i - 1\) \* 1\)\)\]", src)) >= 2, src


def test_an_expensive_value_is_stored():
    a, b = tg.dvector("a"), tg.dvector("b")
    h = tg.exp(a)
    m = tg.sum(h * b)
    args = [RNG.standard_normal(5000), RNG.standard_normal(5000)]
    src = _source([a, b], [h * m, m], args, "float64")
    assert src.count("exp(") == 1, src
