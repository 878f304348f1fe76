"""Long loops of the program tier: split where the vector loop loads whole cache lines, and prefetched when they
compute much per element and stream a lot (:func:`tapegrad.compile.program_ir.loop_range`,
:func:`tapegrad.compile.vmath.align_split`, :func:`tapegrad.compile.vmath.prefetch`); large results on
transparent huge pages (:func:`tapegrad.compile.vmath.huge_empty`).

Neither may change a value: every program here is compared with the python engine, on inputs that start at
every 8-byte offset of a cache line (a large NumPy array starts 16 bytes into one).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from numba import njit

import tapegrad as tg
from tapegrad.compile import program_gen, program_ir
from tapegrad.compile.vmath import HUGE_MIN, align_split, huge_empty, huge_zeros, prefetch
from tests.compile.program_checks import run_program
from tests.compile.test_program_parallel import _need_tbb

RNG = np.random.default_rng(29)
N = 5003  # elements: above ALIGN_MIN


def _at(values, mod):
    """A copy of ``values`` whose first element starts ``mod`` bytes past a 64-byte line."""
    values = np.asarray(values)
    raw = np.empty(values.nbytes + 128, np.uint8)
    start = (mod - raw.ctypes.data) % 64
    a = raw[start:start + values.nbytes].view(values.dtype)
    a[:] = values
    assert a.ctypes.data % 64 == mod
    return a


def _rosen(x):
    return tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_align_split_is_the_first_index_on_a_cache_line(dtype):
    size = np.dtype(dtype).itemsize
    for mod in range(0, 64, size):
        a = _at(np.arange(200, dtype=dtype), mod)
        k = align_split(a, 0, 0, 200)
        assert a[k:].ctypes.data % 64 == 0 and 0 <= k < 64 // size
        assert k == ((64 - mod) % 64) // size
        k = align_split(a, 3, 5, 200)  # a[3 + k] on a line, k >= 5
        assert a[3 + k:].ctypes.data % 64 == 0 and 5 <= k < 5 + 64 // size
        assert align_split(a, 0, 7, 7) == 7  # an empty range
        assert align_split(a, 0, 0, 1) == (0 if mod == 0 else 1)  # clamped at hi


def test_align_split_of_memory_off_the_item_size_is_lo():
    raw = np.zeros(8 * 100 + 64, np.uint8)
    start = (3 - raw.ctypes.data) % 64
    a = raw[start:start + 800].view(np.float64)  # an address that is no multiple of 8: no element on a line
    assert a.ctypes.data % 8 == 3
    assert align_split(a, 0, 4, 90) == 4


@njit
def _sum_with_prefetch(a, ahead):
    s = 0.0
    for i in range(a.size):
        prefetch(a, i + ahead)
        s += a[i]
    return s


def test_prefetch_changes_nothing_even_past_the_array():
    a = RNG.standard_normal(1000)
    for ahead in (0, 8, 10 ** 9):
        assert _sum_with_prefetch(a, ahead) == pytest.approx(a.sum(), rel=1e-13)
    assert _sum_with_prefetch(a[::3], 64) == pytest.approx(a[::3].sum(), rel=1e-13)  # strided: its real step


@pytest.mark.parametrize("mod", [0, 8, 16, 40, 56])
def test_a_long_loop_splits_at_an_aligned_index_whatever_the_inputs_offsets(mod):
    x, y = tg.dvector("x"), tg.dvector("y")
    c = tg.sum(tg.tanh(x) * y + x ** 2)
    args = [_at(RNG.standard_normal(N), mod), _at(RNG.standard_normal(N), (mod + 24) % 64)]
    src = run_program([x, y], [c, *tg.grad(c, [x, y])], args)
    assert f"q_al = align_split(x0, 0, 0, {N})" in src  # the first argument array is the anchor
    assert "prefetch(" not in src  # 80 KB: too little to prefetch


def test_float32_loop_splits_on_its_own_item_size():
    x, y = tg.vector("x", dtype="float32"), tg.vector("y", dtype="float32")
    c = tg.sum(tg.exp(-x * y))
    args = [_at(RNG.standard_normal(N).astype(np.float32), 20), _at(RNG.standard_normal(N).astype(np.float32), 52)]
    src = run_program([x, y], [c, *tg.grad(c, [x, y])], args, "float32")
    assert "align_split(x0, 0, 0," in src


def test_a_loop_over_one_array_splits_too():
    x = tg.dvector("x")
    c = tg.sum(tg.sin(x) * x)
    src = run_program([x], [c, tg.grad(c, x)], [_at(RNG.standard_normal(N), 16)])
    assert f"q_al = align_split(x0, 0, 0, {N})" in src


def test_a_short_loop_runs_as_one_range():
    x = tg.dvector("x")
    c = tg.sum(tg.tanh(x) * x)
    src = run_program([x], [c, tg.grad(c, x)], [_at(RNG.standard_normal(program_ir.ALIGN_MIN - 1), 16)])
    assert "align_split" not in src and "nn(" not in src


def test_heavy_streaming_loop_prefetches_and_a_light_one_does_not(monkeypatch):
    monkeypatch.setattr(program_ir, "PF_BYTES", 1 << 14)  # 16 KB: N elements of two streams qualify
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)
    x, v = tg.dvector("x"), tg.dvector("v")
    c = _rosen(x)
    xv, vv = _at(RNG.uniform(-1.5, 1.5, N), 16), _at(RNG.standard_normal(N), 48)
    hvp = run_program([x, v], [tg.hessian_vector_product(c, x, v)], [xv, vv])
    # the HVP's loop (element work 57 >= PF_WORK) prefetches both inputs, a line apart, 2 KB ahead, in blocks
    # of 64 elements; v (read first) is the anchor
    # (the anchor is whichever input the loop reads first: x or v, by the order of the tape's operands)
    assert re.search(rf"q_al = align_split\(x[01], 0, 1, {N - 1}\)", hvp), hvp
    assert "prefetch(x1, 256 + q_bk)" in hvp and "prefetch(x0, 256 + q_bk)" in hvp
    assert "prefetch(x1, 312 + q_bk)" in hvp and "prefetch(x1, 320 + q_bk)" not in hvp
    assert "for q_bk in range(q_a, q_b, 64):" in hvp
    grad = run_program([x], [c, tg.grad(c, x)], [xv])
    assert "align_split(" in grad and "prefetch(" not in grad  # light: 28 per element


def test_parallel_chunks_split_and_prefetch_each_chunk(monkeypatch):
    _need_tbb()
    monkeypatch.setattr(program_gen, "program_threads", lambda: 2)
    monkeypatch.setattr(program_ir, "PF_BYTES", 1 << 16)
    n = 70001
    x, v = tg.dvector("x"), tg.dvector("v")
    c = _rosen(x)
    xv, vv = _at(RNG.uniform(-1.5, 1.5, n), 16), _at(RNG.standard_normal(n), 16)
    hvp = run_program([x, v], [tg.hessian_vector_product(c, x, v)], [xv, vv])
    assert "for cq in prange(2):" in hvp and re.search(r"q_al = align_split\(x[01], 0, q_lo, q_hi\)", hvp)
    assert "prefetch(" in hvp
    # a prange reduction inside split loops: still one sum
    y = tg.dvector("y")
    c2 = tg.sum(tg.tanh(x) * y)
    grad = run_program([x, y], [c2, *tg.grad(c2, [x, y])], [xv, vv])
    assert "for cq in prange(2):" in grad and "align_split(x0, 0, q_lo, q_hi)" in grad


def _vm_flags(addr):
    """The ``VmFlags`` of the mapping of this process that holds ``addr``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_HUGEPAGE is Linux's")
def test_huge_empty_advises_huge_pages_before_the_first_touch():
    n = HUGE_MIN // 8 * 4  # 16 MB: past glibc's default mmap threshold, a mapping of its own
    a = huge_empty(n, np.float64)
    assert a.shape == (n,) and a.dtype == np.float64 and a.flags.c_contiguous
    assert "hg" in _vm_flags(a.ctypes.data + 8192)  # hg: MADV_HUGEPAGE
    z = huge_zeros(n // 2, np.float32)
    assert z.dtype == np.float32 and z.shape == (n // 2,) and not z.any()
    a[:] = 1.5  # usable memory
    assert a.sum() == 1.5 * n


def test_a_large_result_is_allocated_on_huge_pages_and_a_small_one_is_not():
    x = tg.dvector("x")
    c = _rosen(x)
    n = HUGE_MIN // 8 + 1000  # the gradient (a result) just over 4 MB
    src = run_program([x], [c, tg.grad(c, x)], [RNG.uniform(-1.5, 1.5, n)])
    if sys.platform.startswith("linux"):
        assert f"huge_empty({n}, np.float64)" in src
    else:
        assert "huge_empty" not in src
    src = run_program([x], [c, tg.grad(c, x)], [RNG.uniform(-1.5, 1.5, 1000)])
    assert "huge_empty" not in src and "np.empty(1000, np.float64)" in src


@pytest.mark.parametrize("mod", [0, 16, 24])
def test_shifted_windows_split_and_prefetch_at_the_primary_window(monkeypatch, mod):
    # the gradient of a stencil writes x's adjoint at three windows; the loop over output positions p reads the
    # primary window's operands at p - offset: the split and the prefetches are placed for that index
    monkeypatch.setattr(program_ir, "PF_BYTES", 1 << 12)
    monkeypatch.setattr(program_gen, "PF_WORK", 1)
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)
    x = tg.dvector("x")
    c = tg.sum((x[2:] - x[:-2]) ** 2 * tg.tanh(x[1:-1]))
    xv = _at(RNG.uniform(-1.5, 1.5, N), mod)
    src = run_program([x], [c, tg.grad(c, x)], [xv])
    assert "q_al = align_split(x0, " in src and "prefetch(x0, " in src
    heads = [line.strip() for line in src.splitlines() if "align_split(" in line]
    assert any(", -" in h for h in heads), heads  # a window at an offset: the anchor's offset is shifted
