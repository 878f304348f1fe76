"""Shared checks of the program-tier tests: compile a function on ``tier="program"``, compare it with the python
engine, and read the generated source."""

from __future__ import annotations

import numpy as np

import tapegrad as tg


def program_source(f):
    """The source of ``f``'s one program (fails with the reason when the tape got none)."""
    (prog,) = f._engine._programs.values()
    assert prog is not False, f._engine.program_error
    return prog.program.source


def run_program(ins, outs, args, dtype="float64"):
    """Call ``ins -> outs`` on ``tier="program"``; assert dtype, shape and values match the python engine (1e-12
    relative to the largest finite value in float64, 1e-5 in float32, NaN where NaN); return the source."""
    ref = tg.function(ins, outs, device="python")(*args)
    f = tg.function(ins, outs, device="cpu", tier="program")
    got = f(*args)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for g, r in zip(got, ref):
        g, r = np.asarray(g), np.asarray(r)
        assert g.dtype == r.dtype and g.shape == r.shape
        scale = float(np.abs(r[np.isfinite(r)]).max(initial=1.0))
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * scale, equal_nan=True)
    return program_source(f)
