"""The perf/ scripts run in a tiny mode (they are not tests of speed, only that they still work).

* ``perf/scan_memory.py --measure rss``: one fresh process per cell, gradients of ``"binomial"`` equal ``"all"``.
* ``perf/sparse_jacobian.py`` at n = 60 (reference engine): exact CSR, 3 colors, dense == sparse.
* ``perf/stream_loops.py`` at one size: a row of grad/HVP timings with the long-loop handling off and on.
* ``perf/row_regions.py`` at one small shape: a row of timings with row regions off and on.
* ``perf/compare.py``'s W6 (Rosenbrock Hessian) hand-written reference against ``tg.hessian``, and its W4 loop graph
  (``tg.scan``) against the anchors' NumPy adjoint, both on the reference engine (needs ``shared/perf/anchors.py``
  beside the repository, else skipped).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "perf"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _clear_refs_writable():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _clear_refs_writable(), reason="needs Linux /proc/self/clear_refs (RSS high-water reset)")
def test_scan_memory_rss_mode_runs():
    mod = _load("scan_memory")
    lines = []
    rows = mod.run([40], 64, out=lines.append, measure_with="rss")
    assert [r["mode"] for r in rows] == ["all", "binomial"]
    assert rows[1]["max_abs_diff"] is not None and rows[1]["rel_diff"] <= 1e-12
    assert all(r["peak"] >= 0 for r in rows)
    assert any("RSS" in line for line in lines)


def test_sparse_jacobian_script_tiny():
    pytest.importorskip("scipy")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(PERF / "sparse_jacobian.py"), "--n", "60", "--dense-n", "30", "60",
                          "--dense-repeat", "1", "--sparse-repeat", "2", "--device", "python"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exact CSR: yes" in out.stdout and "3 colors: yes" in out.stdout, out.stdout
    assert "max|sparse - dense|/max|dense| = 0.0e+00" in out.stdout, out.stdout


def _compare_module():
    anchors = Path(os.environ.get("TAPEGRAD_ANCHORS", ROOT.parent / "shared" / "perf" / "anchors.py"))
    if not anchors.is_file():
        pytest.skip(f"anchors.py not found at {anchors}")
    return _load("compare")


def test_compare_w6_reference_and_tapegrad_graph():
    c = _compare_module()
    import tapegrad as tg

    d = c.A.BENCHES["w6_rosen_hessian"].make_data()
    (H_ref,) = c.np_rosen_hessian(d["x"])
    assert H_ref.shape == (c.N_HESS, c.N_HESS)
    assert np.count_nonzero(H_ref) <= 3 * c.N_HESS - 2                     # tridiagonal
    ins, outs = c._g_rosen_hessian(tg)
    (H,) = tg.function(ins, outs, device="python")(d["x"])
    np.testing.assert_allclose(H, H_ref, rtol=1e-12, atol=1e-12 * np.abs(H_ref).max())


def test_compare_w4_loop_tapegrad_graph():
    c = _compare_module()
    import tapegrad as tg

    d = c.A.BENCHES["w4_l96_loop"].make_data()
    ref = c.A.np_l96_grad(d["u0"], d["F"])
    ins, outs = c._g_l96_loop(tg)
    got = tg.function(ins, outs, device="python")(d["u0"], d["F"])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10 * np.abs(r).max())


def test_blas_line_says_which_kernels_and_whether_the_environment_pins_them():
    mod = _load("one_core")
    pinned = mod.blas_line({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "numpy": "Haswell",
                            "scipy": "Haswell"})
    assert pinned.startswith("# OpenBLAS kernels: NumPy Haswell, SciPy Haswell")
    assert "pinned by OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=512" in pinned
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in pinned
    own = mod.blas_line({"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None, "numpy": "SkylakeX",
                         "scipy": "SkylakeX"})
    assert own.endswith("(OpenBLAS's own choice for this CPU)") and "pinned" not in own


def test_blas_kernels_reports_the_environment_it_ran_with(monkeypatch):
    pytest.importorskip("scipy")
    mod = _load("one_core")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    rep = mod.blas_kernels()
    assert rep["OPENBLAS_CORETYPE"] == "Haswell" and rep["OPENBLAS_L2_SIZE"] is None
    assert set(rep) >= {"numpy", "scipy"}
    if rep["scipy"] is not None:  # threadpoolctl installed (the perf extra): OpenBLAS obeys the variable
        assert rep["scipy"].lower() == "haswell"


def _tiny_run(script, args, tmp_path):
    """Run ``perf/<script>`` with ``args`` and ``--out``: its last printed row, split, which must also end the file."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out_file = tmp_path / "table.txt"
    out = subprocess.run([sys.executable, str(PERF / script), *args, "--rounds", "1", "--out", str(out_file)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    row = out.stdout.strip().splitlines()[-1].split()
    assert out_file.read_text().splitlines()[-1].split() == row
    return row


def test_stream_loops_script_tiny(tmp_path):
    """``perf/stream_loops.py`` at one size past ALIGN_MIN: a row of seven numbers, ratios computed from them."""
    row = _tiny_run("stream_loops.py", ["--sizes", "3000"], tmp_path)
    assert row[0] == "3000" and len(row) == 7, row
    g0, h0, r0, g1, h1, r1 = (float(v) for v in row[1:])
    assert min(g0, h0, g1, h1) > 0 and abs(r0 - h0 / g0) < 0.01 and abs(r1 - h1 / g1) < 0.01


def test_row_regions_script_tiny(tmp_path):
    """``perf/row_regions.py`` at one shape (the script asserts that only the "on" program has a region)."""
    row = _tiny_run("row_regions.py", ["--shapes", "3000x8"], tmp_path)
    assert row[:2] == ["3000", "8"] and row[-1] == "none" and len(row) == 7, row  # 188 KB: below the threshold
    off, on, ratio = (float(v) for v in row[3:6])
    assert min(off, on) > 0 and abs(ratio - on / off) < 0.02  # (printed to 0.1 us)
