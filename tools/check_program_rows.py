"""Differential check of the program tier: every spec-table row (tests/ops/specs_*.py) compiled with
``tier="program"`` against ``device="python"``, value and a Lop, one dtype at a time.

    python tools/check_program_rows.py float64      # about 5 min on 2 cores
    python tools/check_program_rows.py float32
    python tools/check_program_rows.py float64 --chain   # every tape cut into pieces of 3 instructions

Prints ``BAD``/``ERR`` lines for mismatches and crashes, then counts (ok / fallback / bad / err) and why rows
fell back (no template for an op, dynamic shapes).  Not part of the test suite (each row compiles its own
program); run it after changing tapegrad/compile/program.py.
"""
import sys, zlib, traceback, time, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
import numpy as np
import tapegrad as tg
from tests.ops.specs import ROWS
from tests.ops.test_specs import _values, _variables, _as_list, _wrt, _mismatch
from tapegrad.gradient import Lop
if "--chain" in sys.argv:  # the chain of programs (tapegrad/compile/program_chain.py) on every row
    sys.argv.remove("--chain")
    import tapegrad.compile.program as _P
    import tapegrad.compile.program_chain as _C
    _P.MAX_INSTRUCTIONS, _C.CHUNK, _C.SLACK = 2, 3, 2
dtypes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["float64"]
stats = {"ok": 0, "fallback": 0, "bad": 0, "err": 0}
fallback_reasons = {}
t0 = time.time()
for row in ROWS:
    for dtype in row.dtypes:
        if dtype not in dtypes:
            continue
        try:
            rng = np.random.default_rng(zlib.crc32(f"{row.id}-{dtype}".encode()))
            vals = _values(row, dtype, rng)
            xs = _variables(row, [v.dtype.name for v in vals])
            outs = _as_list(row.build(*xs))
            wrt = [i for i in _wrt(row)]
            extra = []
            if row.differentiable and wrt and all(np.dtype(o.dtype).kind == "f" for o in outs):
                vs = [o.type(f"v{k}") for k, o in enumerate(outs)]
                g = Lop(outs if len(outs) > 1 else outs[0], [xs[i] for i in wrt], vs if len(outs) > 1 else vs[0])
                extra = list(g) if isinstance(g, (list, tuple)) else [g]
                vvals = []
                ref0 = tg.function(xs, outs, device="python", on_unused_input="ignore")(*vals)
                ref0 = ref0 if isinstance(ref0, list) else [ref0]
                for r in ref0:
                    vvals.append(rng.standard_normal(np.shape(r)).astype(np.asarray(r).dtype))
                ins = xs + vs
                args = vals + vvals
            else:
                ins, args = xs, vals
            allouts = outs + extra
            ref = tg.function(ins, allouts, device="python", on_unused_input="ignore")(*args)
            f = tg.function(ins, allouts, device="cpu", tier="program", on_unused_input="ignore")
            got = f(*args)
            progs = list(f._engine._programs.values())
            if not progs or progs[0] is False:
                stats["fallback"] += 1
                r = str(f._engine.program_error)[:60]
                fallback_reasons[r] = fallback_reasons.get(r, 0) + 1
                continue
            if type(progs[0]).__name__ == "ChainProgram":
                stats["chains"] = stats.get("chains", 0) + 1
                got2 = f(*args)  # the chain's fast path, with its arrays reused
                if any(_mismatch("again", a, b, 0) for a, b in zip(got2, got)):
                    stats["bad"] += 1
                    print("BAD", row.id, dtype, "second call differs", flush=True)
                    continue
            rt = 1e-9 if dtype == "float64" else 1e-5
            msgs = [m for m in (_mismatch(f"out{k}", a, b, rt) for k, (a, b) in enumerate(zip(got, ref))) if m]
            for a, b in zip(got, ref):
                if np.asarray(a).dtype != np.asarray(b).dtype:
                    msgs.append(f"dtype {np.asarray(a).dtype} vs {np.asarray(b).dtype}")
            if msgs:
                stats["bad"] += 1
                print("BAD", row.id, dtype, msgs[0][:300], flush=True)
            else:
                stats["ok"] += 1
        except Exception as e:
            stats["err"] += 1
            print("ERR", row.id, dtype, type(e).__name__, str(e)[:300], flush=True)
print(stats, time.time() - t0)
for r, c in sorted(fallback_reasons.items(), key=lambda x: -x[1]):
    print(c, r)
