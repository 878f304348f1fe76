"""Tier 2 on CPU: the whole tape as one generated Numba function, per input-shape signature.

Tier 0 (the interpreter) and tier 1 (fused loops between NumPy plan steps)
still cross from Python into compiled code once per step.  For a hot
function whose every instruction has a code template here, this module
writes one ``@njit(cache=True)`` function for the whole tape at the plan's
slot shapes::

    def program(x0, x1, c0):          # inputs and shared values (flat, C order), array constants
        b6 = np.empty(9, np.float64)  # a fresh buffer per materialized slot
        for i in range(9):            # one loop per fused elementwise group
            ...
        return b13.reshape(()), b33.reshape((10,))

* Shapes are literals (the program belongs to one shape signature); slots
  that are basic slices, transposes and reshapes of contiguous data are
  read in place through element offsets and strides (no copy); size-1
  constants are literals in the expressions.
* Elementwise groups (:func:`tapegrad.tape.fuse.schedule`) are one loop
  whose members are scalar temporaries made from the table's ``expr`` with
  the tier-0 scalar semantics (:mod:`tapegrad.compile.kernels.scalar`).
* Reductions, broadcasts back from reductions, basic-index writes and
  scatters, fills, ``roll``, ``concatenate`` and ``dot``/``matmul`` (BLAS
  through ``np.dot``) have templates; a tape with any other instruction gets
  no program (:class:`Unsupported`) and stays on tiers 0/1.
* A tape longer than :data:`MAX_INSTRUCTIONS` runs as a chain of programs
  over its pieces (:mod:`tapegrad.compile.program_chain`).
* The module is written to the fused-kernel cache folder under the hash of
  its source, so numba's disk cache finds the machine code in the next
  process; :class:`Program` compiles it on the background thread of the
  fused tier (or synchronously) and exposes ``fn`` (the numba dispatcher,
  callable from user ``@njit`` code) and ``__call__`` (a Python entry).

Returned arrays are fresh buffers, never inputs or constants.
"""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

from tapegrad.compile.fused import CODEGEN_VERSION, GeneratedModule, cache_dir, scalar_fingerprint
from tapegrad.compile.program_gen import _Gen
from tapegrad.compile.program_ir import (  # noqa: F401  (the tier's limits and error, re-exported)
    FASTMATH, MAX_INSTRUCTIONS, PROGRAM_VERSION, Unsupported)

def generate(tape, shapes, dtypes, values, const_instrs, node, serial=False, into=()):
    """``(source, array constants, workspace)`` of the program of ``tape`` at these slot shapes (raises
    Unsupported); ``workspace`` lists ``(dtype, length)`` of the workspace parameters, after the constants.
    ``serial``: no parallel loops, whatever :func:`~tapegrad.compile.threads.program_threads` says.
    ``into``: slots (not results) the program writes into flat arrays the caller passes after the inputs and
    shared values, one per slot in this order (a chain's values for its later pieces)."""
    for rows in (True, False):  # a row region that fails to generate: the same tape without regions
        g = _Gen(tape, shapes, dtypes, values or {}, const_instrs or (), node)
        g.into = {int(s): f"y{j}" for j, s in enumerate(into)}
        g.row_regions = rows
        if serial:
            g.threads = 1
        try:
            src = g.generate()
        except Unsupported:
            if not g.region_skip:
                raise
            continue
        return src, [a for _, a in g.array_consts], sorted(g.ws_sizes.items())


# --------------------------------------------------------------------------- compiling
_PROGRAMS = {}  # module name -> Program (process-wide)
_LOCK = threading.Lock()


class Program(GeneratedModule):
    """The compiled program of one tape at one shape signature (a :class:`~tapegrad.compile.fused.GeneratedModule`:
    ``start()``, ``wait()``, ``ready()``, ``fn``), plus ``cached()`` and ``__call__``."""

    entry = "program"
    what = "program"

    def __init__(self, source, consts, input_shapes, input_dtypes, n_outputs, workspace=()):
        h = hashlib.sha1(repr((PROGRAM_VERSION, CODEGEN_VERSION, scalar_fingerprint(), source)).encode())
        name = "tg_program_" + h.hexdigest()[:20]
        super().__init__(name, source, os.path.join(cache_dir(), name + ".py"))
        self.consts = tuple(consts)
        self.input_shapes = tuple(input_shapes)
        self.input_dtypes = tuple(np.dtype(d) for d in input_dtypes)
        self.n_outputs = n_outputs
        self.workspace_spec = tuple((np.dtype(d), int(n)) for d, n in workspace)

    def new_workspace(self):
        """Fresh workspace arrays (the program's last parameters): one flat array per dtype of its large
        intermediates, starting on a 4 KiB page (BLAS ran 1-2 % faster on page-aligned operands than on
        ``np.empty``'s 16-byte offset).  Callers keep one per thread and pass it on every call."""
        out = []
        for d, n in self.workspace_spec:
            per = 4096 // d.itemsize
            raw = np.empty(n + per, d)
            start = (-(raw.ctypes.data // d.itemsize)) % per
            out.append(raw[start:start + n])
        return tuple(out)

    def _dummy(self):
        args = [np.zeros(s, d) for s, d in zip(self.input_shapes, self.input_dtypes)]
        return args + list(self.consts) + [np.zeros(1, d) for d, _ in self.workspace_spec]

    def _build(self, fn):
        # compile (or load from numba's disk cache) for the argument types of real calls, and mark the
        # program as on disk for the next process
        fn.compile(tuple(_numba_type(a) for a in self._dummy()))
        if not self.cached():
            try:
                with open(self.path + ".ok", "w") as f:
                    f.write(os.environ.get("NUMBA_CACHE_DIR", ""))
            except OSError:
                pass

    def cached(self):
        """True when an earlier process compiled this program into numba's disk cache (loading is quick)."""
        try:
            with open(self.path + ".ok") as f:
                return f.read() == os.environ.get("NUMBA_CACHE_DIR", "") and os.path.exists(self.path)
        except OSError:
            return False

    def __call__(self, *flat_inputs):
        return self.fn(*flat_inputs, *self.consts, *self.new_workspace())


def _numba_type(a):
    from numba import typeof

    return typeof(a)


def get_program(source, consts, input_shapes, input_dtypes, n_outputs, background=False, only_if_cached=False,
                workspace=(), start=True):
    """The process-wide :class:`Program` of this source and constants: compiled here (``background`` False) or
    queued on the background thread (True; with ``start`` False, neither: the caller decides).  With
    ``only_if_cached``: None unless an earlier process left it in the disk cache."""
    p = Program(source, consts, input_shapes, input_dtypes, n_outputs, workspace)
    with _LOCK:
        q = _PROGRAMS.get(p.name)
        if q is None or len(q.consts) != len(p.consts) or not all(
                np.array_equal(a, b) for a, b in zip(q.consts, p.consts)):
            if only_if_cached and not p.cached():
                return None
            _PROGRAMS[p.name] = q = p
    if only_if_cached and not q.done():
        background = False
    if background:
        if start:
            q.start()
    else:
        q.wait()
    return q


# --------------------------------------------------------------------------- engine side
def c_array(a, dtype):
    """``a`` as a C-contiguous array of ``dtype``, keeping its rank (``np.ascontiguousarray`` makes 0-d arrays 1-d,
    which is another Numba type: the program would be compiled a second time, on the calling thread)."""
    return np.asarray(a, dtype=dtype, order="C")


class EngineProgram:
    """A :class:`Program` bound to a CPU engine's signature: ``run(inputs, shared)`` like ``Plan.execute``,
    and ``fast_call(args)`` for :class:`~tapegrad.compile.function.Function`'s fast path."""

    def __init__(self, program, in_dtypes, sh_dtypes, n_outputs, in_shapes, scalar_dtypes):
        self.program = program
        self.scalar_dtypes = [None if d is None else np.dtype(d) for d in scalar_dtypes]  # per result: 0-d?
        self.in_dtypes = [np.dtype(d) for d in in_dtypes]
        self.sh_dtypes = [np.dtype(d) for d in sh_dtypes]
        self.n_outputs = n_outputs
        self.in_shapes = [tuple(s) for s in in_shapes]
        self._fast = None
        self._local = threading.local()  # .w: this thread's workspace (the program's large intermediates)

    def workspace(self):
        """This thread's workspace arrays, allocated on its first call and kept while the function lives (a
        program's calls on one thread never overlap; other threads get their own)."""
        w = getattr(self._local, "w", None)
        if w is None:
            w = self._local.w = self.program.new_workspace()
        return w

    @classmethod
    def make(cls, engine, plan, background, only_if_cached=False, serial=False):
        """The engine's program for ``plan``'s signature, or None when the tape has no program (or, with
        ``only_if_cached``, when no earlier process left it in the disk cache).  A program with parallel loops
        that fails to compile here is made again without them (``serial``): Numba's parfor passes have had
        bugs its serial compile does not share."""
        tape = engine.tape
        if len(tape) > MAX_INSTRUCTIONS:  # too long for one program: a chain of programs over its pieces
            from tapegrad.compile.program_chain import ChainProgram

            try:  # (a piece with parallel loops that fails to compile is made serial there, piece by piece)
                return ChainProgram.make(engine, plan, background, only_if_cached, serial)
            except Unsupported as e:
                engine.program_error = e
                return None
        try:
            from tapegrad.compile.program_order import eager_tape

            ptape, const_instrs, node = eager_tape(tape, plan.shapes, engine.slot_dtypes, plan.const_instrs,
                                                   engine.node)
            src, consts, ws = generate(ptape, plan.shapes, engine.slot_dtypes, plan.values, const_instrs, node,
                                       serial=serial)
        except Unsupported as e:
            engine.program_error = e
            return None
        in_dt = [engine.slot_dtypes[s] for s in tape.input_slots]
        sh_dt = [engine.slot_dtypes[s] for s in tape.shared_slots]
        shapes = [plan.shapes[s] for s in tape.input_slots] + [plan.shapes[s] for s in tape.shared_slots]
        try:
            prog = get_program(src, consts, shapes, in_dt + sh_dt, len(tape.output_slots), background=background,
                               only_if_cached=only_if_cached, workspace=ws)
        except Exception as e:  # noqa: BLE001 - a compile error (raised when compiled here)
            if serial or not _is_parallel(src):
                raise
            engine.program_error = e
            return cls.make(engine, plan, background, only_if_cached, serial=True)
        if prog is None:
            return None
        res = list(tape.output_slots) + list(tape.update_slots)
        scalar = [engine.slot_dtypes[s] if tuple(plan.shapes[s]) == () else None for s in res]
        return cls(prog, in_dt, sh_dt, len(tape.output_slots), shapes[:len(in_dt)], scalar)

    @property
    def parallel(self):
        return _is_parallel(self.program.source)

    @property
    def error(self):
        return self.program.error

    def ready(self):
        return self.program.ready()

    def failed(self):
        return self.program.done() and self.program.fn is None

    def run(self, inputs, shared):
        args = [c_array(a, d) for a, d in zip(inputs, self.in_dtypes)]
        args += [c_array(a, d) for a, d in zip(shared, self.sh_dtypes)]
        res = [np.asarray(r, dtype=d) if d is not None else r
               for r, d in zip(self.program.fn(*args, *self.program.consts, *self.workspace()), self.scalar_dtypes)]
        return res[:self.n_outputs], res[self.n_outputs:]

    def fast_call(self):
        """A Python function ``call(args) -> outputs tuple`` that runs the program when every argument is
        already an ndarray of exactly the input's dtype, shape and C order, else returns None."""
        if self._fast is None:
            n = len(self.in_dtypes)
            names = [f"a{j}" for j in range(n)]
            conds = [f"type({a}) is nd and {a}.dtype is D{j} and {a}.shape == S{j} and {a}.flags.c_contiguous"
                     for j, a in enumerate(names)]
            nw = len(self.program.workspace_spec)
            src = ["def call(args):",
                   f"    if len(args) != {n}:",
                   "        return None",
                   f"    {''.join(a + ', ' for a in names)}= args" if n else "    pass",
                   f"    if {' and '.join(conds) if conds else 'True'}:",
                   "        w = getattr(L, 'w', None) or W()" if nw else "        pass",
                   f"        r = fn({''.join(a + ', ' for a in names)}{''.join(f'C{j}, ' for j in range(len(self.program.consts)))}"
                   f"{''.join(f'w[{j}], ' for j in range(nw))})",
                   "        return (" + "".join(f"r[{j}], " if d is None else f"arr(r[{j}], R{j}), "
                                          for j, d in enumerate(self.scalar_dtypes[:self.n_outputs])) + ")",
                   "    return None"]
            env = {"nd": np.ndarray, "fn": self.program.fn, "arr": np.array, "L": self._local,
                   "W": self.workspace}
            for j, c in enumerate(self.program.consts):
                env[f"C{j}"] = c
            for j, d in enumerate(self.scalar_dtypes):
                env[f"R{j}"] = d
            for j, (d, s) in enumerate(zip(self.in_dtypes, self.in_shapes)):
                env[f"D{j}"] = d
                env[f"S{j}"] = s
            exec("\n".join(src), env)  # noqa: S102 - generated from dtypes and shapes only
            self._fast = env["call"]
        return self._fast


def njit_entry(engine_program, input_names=None):
    """A ``numba.njit`` function ``entry(*inputs)`` calling the program with its array constants bound; it
    checks each input's shape (the program's literals) and raises ValueError naming the input otherwise."""
    from numba import njit

    prog = engine_program.program
    prog.wait()
    n = len(engine_program.in_shapes)
    names = [f"a{j}" for j in range(n)]
    labels = list(input_names or [f"input {j}" for j in range(n)])
    lines = [f"def entry({', '.join(names)}):"]
    for j, (a, shp) in enumerate(zip(names, engine_program.in_shapes)):
        msg = f"tapegrad njit entry: input {j} ({labels[j]}) must have shape {tuple(shp)}"
        lines.append(f"    if {a}.shape != {tuple(shp)!r}:")
        lines.append(f"        raise ValueError({msg!r})")
    args = names + [f"C{j}" for j in range(len(prog.consts))]
    for j, (d, size) in enumerate(prog.workspace_spec):  # a workspace per call: entries may run in parallel
        lines.append(f"    w{j} = np.empty({size}, np.{d.name})")
        args.append(f"w{j}")
    lines.append(f"    return fn({', '.join(args)})")
    env = {"fn": prog.fn, "np": np}
    for j, c in enumerate(prog.consts):
        env[f"C{j}"] = c
    exec("\n".join(lines), env)  # noqa: S102 - generated from shapes and names only
    return njit(nogil=True)(env["entry"])


# --------------------------------------------------------------------------- the CPU engine's tier policy
def _program_after(default=3):
    """``$TAPEGRAD_PROGRAM_AFTER``: calls of a signature (tier "auto") before its whole-tape program is compiled
    in the background; ``never`` (or a negative number) keeps tier "auto" on the interpreter and fused loops."""
    v = os.environ.get("TAPEGRAD_PROGRAM_AFTER", "").strip().lower()
    if not v:
        return default
    if v in ("never", "off", "no", "false"):
        return None
    try:
        n = int(v)
    except ValueError:
        return default
    return None if n < 0 else n


PROGRAM_AFTER_USES = _program_after()  # None: tier "auto" never compiles programs


def _is_parallel(source):
    return ", parallel=True)" in source


def _serial_instead(engine, key, plan, prog, background):
    """``prog`` failed to compile: a program with parallel loops is made again without them (compiled in the
    background when ``background``); otherwise, or when that fails too, the signature has no program."""
    engine.program_error = prog.error
    new = False
    if prog.parallel:
        new = EngineProgram.make(engine, plan, background=background, serial=True) or False
        if new is not False and new.error is not None:
            engine.program_error = new.error
            new = False
    engine._programs[key] = new
    return new


def engine_program(engine, key, plan):
    """The ready whole-tape program of ``engine``'s signature ``key`` (tier "program": compiled now; "auto":
    after PROGRAM_AFTER_USES calls, in the background, or from the first call when an earlier process left it
    in the disk cache), or None (not ready yet, or the tape has no program).  Keeps ``engine._programs``
    (signature -> EngineProgram or False), ``engine.program_error`` and ``engine.fast`` up to date."""
    prog = engine._programs.get(key)
    if prog is None:
        auto = engine.tier == "auto"
        if auto and PROGRAM_AFTER_USES is None:
            engine._programs[key] = False
            return None
        if auto and plan.uses < PROGRAM_AFTER_USES:
            if plan.uses != 1 or engine._cache_probed.get(key):
                return None
            # a program an earlier process compiled loads from the disk cache in a fraction of a second: use it
            # from the first call on instead of warming up on the interpreter
            engine._cache_probed[key] = True
            try:
                prog = EngineProgram.make(engine, plan, background=False, only_if_cached=True)
            except Exception:  # noqa: BLE001 - a failed load: the usual path decides
                prog = None
            if prog is None or not prog.ready():
                return None
            engine._programs[key] = prog
        else:
            prog = engine._programs[key] = EngineProgram.make(engine, plan, background=auto) or False
            if prog is not False and prog.error is not None:
                prog = _serial_instead(engine, key, plan, prog, auto)
    if prog is False:
        return None
    if not prog.ready():
        if not prog.failed():
            return None
        prog = _serial_instead(engine, key, plan, prog, True)
        if prog is False or not prog.ready():
            return None
    engine.fast = prog
    return prog
