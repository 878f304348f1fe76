"""Parallel loops in the program tier (:mod:`tapegrad.compile.threads`).

With more than one Numba thread and a safe threading layer (tbb, from the ``parallel`` extra, which the
``test`` extra installs), a top-level fused loop with enough work (``PAR_WORK``) runs as a ``prange``
over one chunk per thread, its indices marked non-negative (``nn``) so each chunk still vectorises.  These
tests check which loops go parallel, that the values match the python engine, and that the layer chosen
is safe for concurrent calls from Python threads and for ``fork``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.compile import program_gen, threads
from tests.compile.program_checks import run_program

RNG = np.random.default_rng(11)
N = 70001  # elements: work above PAR_WORK for every loop below
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TBB_WHEELS = platform.machine() in ("x86_64", "AMD64")  # where the test extra installs tbb (setup.py)


def _need_tbb():
    if not threads._load_tbb():
        if TBB_WHEELS:
            pytest.fail("the test extra installs tbb")
        pytest.skip(f"no tbb wheel for {platform.machine()}: programs stay serial")


@pytest.fixture
def two_threads(monkeypatch):
    """Programs written for two threads, run on the tbb layer (loaded first: the pytest process must not
    start GNU OpenMP, which would make every later ``fork`` in it unsafe)."""
    _need_tbb()
    monkeypatch.setattr(program_gen, "program_threads", lambda: 2)


def _rosen(x):
    return tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_flat_loop_with_a_sum_runs_in_parallel(two_threads, dtype):
    x = tg.vector("x", dtype=dtype)
    c = tg.sum(tg.exp(-x * x) * tg.sin(x))
    src = run_program([x], [c, tg.grad(c, x)], [RNG.standard_normal(N).astype(dtype)], dtype)
    assert "for cq in prange(2):" in src and "parallel=True" in src
    assert "nn(" in src


def test_rosenbrock_grad_and_hvp_windows_run_in_parallel(two_threads):
    x, v = tg.dvector("x"), tg.dvector("v")
    c = _rosen(x)
    xv, vv = RNG.uniform(-1.5, 1.5, N), RNG.standard_normal(N)
    src = run_program([x], [c, tg.grad(c, x)], [xv])
    assert src.count("prange(") == 1  # the middle segment; the one-element edges stay serial
    src = run_program([x, v], [tg.hessian_vector_product(c, x, v)], [xv, vv])
    assert "prange(" in src


def test_two_dimensional_loop_with_a_bias_gradient_splits_along_the_columns(two_threads):
    X, Y, b = tg.dmatrix("X"), tg.dmatrix("Y"), tg.dvector("b")
    H = tg.tanh(X + b)
    c = tg.sum((H - Y) ** 2)
    rows, cols = 300, 241
    args = [RNG.standard_normal((rows, cols)), RNG.standard_normal((rows, cols)), RNG.standard_normal(cols)]
    src = run_program([X, Y, b], [c, *tg.grad(c, [X, b])], args)
    assert "prange(" in src
    half = -(-cols // 2)  # split along the columns: the bias gradient sums over the rows
    assert f"for i1 in range(cq * {half}, min(cq * {half} + {half}, {cols})):" in src


def test_partial_sums_split_another_axis_small_loops_and_one_thread_stay_serial(two_threads, monkeypatch):
    X = tg.dmatrix("X")
    big = RNG.standard_normal((400, 200))
    # a sum over axis 0 accumulates into a row: the loop splits along the columns instead
    src = run_program([X], [tg.sum(tg.exp(X), axis=0)], [big])
    assert "for i1 in range(cq * 100, min(cq * 100 + 100, 200)):" in src
    # sums over both axes in one loop: every axis has iterations that share an element of one of them
    src = run_program([X], [tg.sum(tg.exp(X), axis=0), tg.sum(tg.exp(X), axis=1)], [big])
    assert "prange(" not in src and "parallel=True" not in src
    x = tg.dvector("x")
    n_small = threads.PAR_WORK // 40  # a loop of a few operations per element: too little work to split
    src = run_program([x], [tg.exp(x) * 2.0], [RNG.standard_normal(n_small)])
    assert "prange(" not in src
    src = run_program([x], [tg.tanh(tg.exp(x) * tg.sin(x)) + tg.cos(x)], [RNG.standard_normal(n_small)])  # 4 functions
    assert "prange(" in src
    monkeypatch.setattr(program_gen, "program_threads", lambda: 1)
    src = run_program([x], [tg.exp(x) * 3.0], [RNG.standard_normal(N)])
    assert "prange(" not in src


def _python(code, **env):
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    e.pop("TAPEGRAD_PARALLEL", None)
    e.update({k: v for k, v in env.items() if v is not None})
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=e, capture_output=True, text=True,
                       timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_layer_choice_follows_the_environment():
    _need_tbb()
    code = "from tapegrad.compile.threads import parallel_info; print(parallel_info())"
    assert _python(code, NUMBA_NUM_THREADS="2").strip() == "(2, 'tbb')"
    assert _python(code, NUMBA_NUM_THREADS="1").strip() == "(1, 'one thread (NUMBA_NUM_THREADS)')"
    assert _python(code, NUMBA_NUM_THREADS="2", TAPEGRAD_PARALLEL="0").strip() == "(1, 'off (TAPEGRAD_PARALLEL=0)')"
    out = _python(code, NUMBA_NUM_THREADS="2", NUMBA_THREADING_LAYER="workqueue").strip()
    assert out == "(1, 'workqueue layer named (not safe for concurrent calls)')"


@pytest.mark.slow
def test_parallel_program_is_safe_for_threads_fork_and_njit_callers():
    _need_tbb()
    out = _python("""
        import multiprocessing as mp, threading
        import numpy as np
        from numba import njit
        import tapegrad as tg
        from tapegrad.compile.threads import parallel_info

        x = tg.dvector("x")
        c = tg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1] ) ** 2)
        f = tg.function([x], [c, tg.grad(c, x)], tier="program")
        xs = [np.random.default_rng(k).uniform(-1, 1, 200000) for k in range(4)]
        want = [tg.function([x], [c, tg.grad(c, x)], device="python")(v) for v in xs]
        got = [f(v) for v in xs]
        (prog,) = f._engine._programs.values()
        assert "prange(" in prog.program.source, prog.program.source[:400]

        def same(a, b):
            return all(np.allclose(p, q, rtol=1e-12, atol=1e-9) for p, q in zip(a, b))

        assert all(same(g, w) for g, w in zip(got, want))
        res = [None] * 8
        def work(j):
            res[j] = [f(xs[(j + r) % 4]) for r in range(5)]
        ts = [threading.Thread(target=work, args=(j,)) for j in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert all(same(r, want[(j + k) % 4]) for j in range(8) for k, r in enumerate(res[j]))

        def child(k):
            return float(f(xs[k])[0])
        with mp.get_context("fork").Pool(2) as pool:  # GNU OpenMP would terminate these children
            vals = pool.map(child, range(4))
        assert np.allclose(vals, [float(w[0]) for w in want], rtol=1e-12)

        entry = f.as_njit(xs[0])
        @njit
        def twice(v):
            a = entry(v)
            b = entry(v)
            return a[0] + b[0]
        assert np.isclose(twice(xs[0]), 2 * float(want[0][0]), rtol=1e-12)
        print(parallel_info())
        """, NUMBA_NUM_THREADS="2")
    assert out.strip().endswith("(2, 'tbb')")


@pytest.fixture
def parfor_bug(two_threads, monkeypatch):
    """Programs are written with parallel loops, and Numba "fails" to compile those; tier auto compiles after the
    library's default number of calls (the suite sets "never")."""
    from tapegrad.compile import program as P

    monkeypatch.setattr(P, "PROGRAM_AFTER_USES", 3)
    build = P.Program._build

    def fail_parallel(self, fn):
        if "parallel=True" in self.source:
            raise RuntimeError("simulated parfor lowering error")
        return build(self, fn)

    monkeypatch.setattr(P.Program, "_build", fail_parallel)


@pytest.mark.parametrize("tier", ["program", None])
def test_a_parallel_program_that_fails_to_compile_is_made_serial(parfor_bug, tier):
    x = tg.dvector("x")
    c = tg.sum(tg.exp(x) * tg.cos(x / 3.0))  # a tape no other test compiles: the failure is not cached
    xv = RNG.standard_normal(N)
    ref = tg.function([x], [c, tg.grad(c, x)], device="python")(xv)
    f = tg.function([x], [c, tg.grad(c, x)], tier=tier)
    from tapegrad.compile.fused import _executor

    for _ in range(5):
        out = f(xv)
    # tier auto compiles on the background thread: let the parallel compile fail there, then the serial one
    # it queues on the next call finish (under load, e.g. beside another pytest worker, 5 calls can come first)
    _executor().submit(lambda: None).result()
    f(xv)
    _executor().submit(lambda: None).result()
    (prog,) = f._engine._programs.values()
    prog.program.wait()
    out = f(xv)
    assert prog.ready() and "prange(" not in prog.program.source
    assert "simulated parfor lowering error" in str(f._engine.program_error)
    assert f._engine.fast is prog
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_a_chain_piece_with_parallel_loops_that_fails_to_compile_is_made_serial(parfor_bug, monkeypatch):
    from tapegrad.compile import program as P
    from tapegrad.compile import program_chain as C

    monkeypatch.setattr(P, "MAX_INSTRUCTIONS", 6)  # a chain of small pieces, built on the background thread
    monkeypatch.setattr(C, "CHUNK", 5)
    monkeypatch.setattr(C, "SLACK", 2)
    x = tg.dvector("x")
    y = x
    for j in range(2):
        y = tg.exp(-y * y) * tg.cos(y / (3.0 + j))  # tapes no other test compiles: the failures are not cached
    c = tg.sum(y)
    xv = RNG.standard_normal(N)
    ref = tg.function([x], [c, tg.grad(c, x)], device="python")(xv)
    f = tg.function([x], [c, tg.grad(c, x)])
    for _ in range(5):
        out = f(xv)
    from tapegrad.compile.fused import _executor

    _executor().submit(lambda: None).result()
    out = f(xv)
    (prog,) = f._engine._programs.values()
    assert prog.ready() and len(prog.pieces) > 1
    assert not any("prange(" in src for src in prog.sources)
    assert f._engine.fast is prog
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)
