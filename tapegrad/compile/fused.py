"""Tier 1 on CPU: one generated Numba loop per fused elementwise group.

* :func:`generate_source` turns a :class:`~tapegrad.tape.fuse.FuseGroup` into
  a module with one ``@njit(cache=True, fastmath=False)`` function
  ``kernel(n, shp, in0, [st0], in1, ..., out0, ...)``: a loop over the
  flattened output in which every member instruction is a local scalar
  assignment made from its table ``expr`` (names mapped to the ``s_*``
  functions of :mod:`tapegrad.compile.kernels.scalar`, the tier-0
  interpreter's own scalar semantics: NumPy's rounding, ``azmul``, ``pow``
  with exponent 2 as ``x * x``, ...).  Inputs are read contiguously (same
  shape), once before the loop (size 1) or through broadcast strides.
* The module is written to the cache folder (:func:`cache_dir`) under the
  hash of the group's structure key and imported with importlib, so numba's
  ``cache=True`` finds the machine code again in the next process.
* :class:`FusedKernel` compiles on a background thread
  (``ThreadPoolExecutor(1)``) or synchronously; ``ready()`` / ``run()``.
* :class:`FusedCPUEngine` runs a tape: fused groups through their kernels,
  every other instruction through its NumPy ``perform`` (the reference
  semantics), in the order :func:`tapegrad.tape.fuse.schedule` gives.
  ``tier="auto"`` starts the compiles in the background and runs the tier-0
  :class:`~tapegrad.compile.cpu.CPUEngine` until every group of the shape
  signature is ready; ``tier="fused"`` compiles synchronously.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tapegrad.compile.op_shapes import op_infer_shape
from tapegrad.tape.fuse import BCAST, CONTIG, ROLL, SCALAR, broadcast_strides, schedule

CODEGEN_VERSION = 3

# --------------------------------------------------------------------------- cache folder


def cache_dir():
    """Folder of generated modules: ``$TAPEGRAD_FUSED_DIR``, else ``$NUMBA_CACHE_DIR/tapegrad_fused``,
    else ``$XDG_CACHE_HOME/tapegrad/fused`` (``~/.cache/tapegrad/fused``); a temp folder if unwritable."""
    d = os.environ.get("TAPEGRAD_FUSED_DIR")
    if not d and os.environ.get("NUMBA_CACHE_DIR"):
        d = os.path.join(os.environ["NUMBA_CACHE_DIR"], "tapegrad_fused")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "tapegrad", "fused")
    try:
        os.makedirs(d, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise OSError
    except OSError:
        d = os.path.join(tempfile.gettempdir(), f"tapegrad_fused_{os.getuid() if hasattr(os, 'getuid') else 0}")
        os.makedirs(d, exist_ok=True)
    return d


_FINGERPRINT = None


def scalar_fingerprint():
    """Hash of kernels/scalar.py and vmath.py: generated modules call into them, and numba's cache keys on the
    module file only, so the module name carries this (a changed scalar.py or vmath.py gives new modules)."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        from tapegrad.compile import vmath
        from tapegrad.compile.kernels import scalar

        h = hashlib.sha1()
        for mod in (scalar, vmath):
            with open(mod.__file__, "rb") as f:
                h.update(f.read())
        _FINGERPRINT = h.hexdigest()[:12]
    return _FINGERPRINT


def module_name(key):
    h = hashlib.sha1(repr((CODEGEN_VERSION, scalar_fingerprint(), key)).encode()).hexdigest()[:20]
    return f"tg_fused_{h}"


# --------------------------------------------------------------------------- code generation
_NAMES = None


def _names():
    global _NAMES
    if _NAMES is None:
        from tapegrad.ops.elemwise import NUMPY_NAMESPACE

        _NAMES = set(NUMPY_NAMESPACE)
    return _NAMES


class _Rename(ast.NodeTransformer):
    """``exp(x0) * x1`` -> ``s_exp(<op0>) * <op1>``."""

    def __init__(self, operands):
        self.operands = operands

    def visit_Name(self, node):
        if node.id.startswith("x") and node.id[1:].isdigit():
            return ast.copy_location(ast.parse(self.operands[int(node.id[1:])], mode="eval").body, node)
        if node.id in _names():
            return ast.copy_location(ast.Name("s_" + node.id, ast.Load()), node)
        raise ValueError(f"elementwise expression uses unknown name {node.id!r}")


def _convert(src, from_dt, to_dt):
    """Source converting the scalar ``src`` of dtype ``from_dt`` to ``to_dt``."""
    if from_dt == to_dt:
        return src
    if to_dt == "bool":
        return f"({src} != 0)"
    return f"np.{to_dt}({src})"


def _result(src, to_dt):
    """Source forcing an expression's value to dtype ``to_dt`` (as ``np.asarray(y, dtype=...)``)."""
    if to_dt == "bool":
        return f"(({src}) != 0)"
    return f"np.{to_dt}({src})"


def member_source(kind, code, ops, loads, out_dt, special):
    """``(source, note)`` of one fused member's value from the sources ``ops`` of its (converted) operands: a
    table row's ``expr`` over the tier-0 scalar functions, a dtype copy, a rolled read, or pow by a constant
    0, 1, 2 as NumPy's fast paths (exactly 1, x, x * x: a libm pow call would also keep the loop from
    vectorising).  The tier-1 loops and the program tier both build their members with it."""
    if kind == "roll":
        return ops[0], f"roll by {special[4:]}"
    if special:
        expr = {"pow0": "1", "pow1": f"{ops[0]}", "pow2": f"({ops[0]}) * ({ops[0]})"}[special]
        return _result(expr, out_dt), f"pow, constant exponent {special[3:]}"
    if kind == "copy":
        return _convert(ops[0], loads[0], out_dt), ""
    from tapegrad.registry import all_codes  # noqa: F401  (registry filled)
    from tapegrad.tape.fuse import _specs

    spec = _specs()[code]
    tree = _Rename(ops).visit(ast.parse(spec.expr, mode="eval"))
    return _result(ast.unparse(tree.body), out_dt), spec.name


def generate_source(group, name="kernel"):
    """Python source of the module holding ``kernel`` for ``group`` (depends only on ``group.key()``)."""
    key = group.key()
    _, ndim, ins, members, outs = key
    has_b = any(p == BCAST for _, p in ins)
    params = ["n", "shp"]
    for j, (_, p) in enumerate(ins):
        params.append(f"in{j}")
        if p == BCAST:
            params.append(f"st{j}")
    params += [f"out{q}" for q in range(len(outs))]
    L = [
        f'"""Generated by tapegrad.compile.fused (codegen v{CODEGEN_VERSION}, scalar.py {scalar_fingerprint()}).',
        "",
        f"structure key: {key!r}",
        '"""',
        "import numpy as np",
        "from numba import njit",
        "from tapegrad.compile.kernels.scalar import *  # noqa: F401,F403  s_exp, s_power, s_azmul, ...",
        "from tapegrad.compile.vmath import *  # noqa: F401,F403  vectorisable s_tanh",
        "",
        "",
        '@njit(cache=True, fastmath=False, error_model="numpy", nogil=True, boundscheck=False)',
        f"def {name}({', '.join(params)}):",
    ]
    ind = "    "
    # scalar inputs: read once; rolled inputs: their shift modulo the length, once
    shifts = {m[2][0][1]: int(m[6][4:]) for m in members if m[1] == "roll"}
    for j, (dt, p) in enumerate(ins):
        if p == SCALAR:
            L.append(f"{ind}a{j} = in{j}[0]")
        elif p == ROLL:
            L.append(f"{ind}r{j} = {shifts[j]} % n if n else 0")
    body = []
    for j, (dt, p) in enumerate(ins):
        if p == CONTIG:
            body.append(f"a{j} = in{j}[i]")
        elif p == BCAST:
            body.append(f"a{j} = in{j}[b{j} + jj * l{j}]")
        elif p == ROLL:  # np.roll: out[i] = x[(i - shift) mod n]
            body.append(f"q{j} = i - r{j}")
            body.append(f"a{j} = in{j}[q{j} + n if q{j} < 0 else q{j}]")
    dts = {("i", j): dt for j, (dt, _) in enumerate(ins)}
    for m_i, (code, kind, args, out_dt, cd, loads, special) in enumerate(members):
        ops = []
        for ref, ld in zip(args, loads):
            src = f"a{ref[1]}" if ref[0] == "i" else f"t{ref[1]}"
            ops.append(_convert(src, dts[ref], ld))
        src, note = member_source(kind, code, ops, loads, out_dt, special)
        body.append(f"t{m_i} = {src}" + (f"  # {note}" if note else ""))
        dts[("t", m_i)] = out_dt
    for q, ref in enumerate(outs):
        src = f"a{ref[1]}" if ref[0] == "i" else f"t{ref[1]}"
        body.append(f"out{q}[i] = {src}")
    if not has_b:
        L.append(f"{ind}for i in range(n):")
        L += [ind * 2 + b for b in body]
    else:
        L.append(f"{ind}nd = shp.shape[0]")
        L.append(f"{ind}inner = shp[nd - 1]")
        L.append(f"{ind}if n == 0 or inner == 0:")
        L.append(f"{ind * 2}return")
        L.append(f"{ind}outer = n // inner")
        for j, (_, p) in enumerate(ins):
            if p == BCAST:
                L.append(f"{ind}l{j} = st{j}[nd - 1]")
        L.append(f"{ind}for o in range(outer):")
        L.append(f"{ind * 2}rem = o")
        for j, (_, p) in enumerate(ins):
            if p == BCAST:
                L.append(f"{ind * 2}b{j} = 0")
        L.append(f"{ind * 2}for d in range(nd - 2, -1, -1):")
        L.append(f"{ind * 3}q = rem % shp[d]")
        L.append(f"{ind * 3}rem = rem // shp[d]")
        for j, (_, p) in enumerate(ins):
            if p == BCAST:
                L.append(f"{ind * 3}b{j} += q * st{j}[d]")
        L.append(f"{ind * 2}base = o * inner")
        L.append(f"{ind * 2}for jj in range(inner):")
        L.append(f"{ind * 3}i = base + jj")
        L += [ind * 3 + b for b in body]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- compiled kernels
_EXECUTOR = None
_LOCK = threading.Lock()
_KERNELS = {}  # module name -> FusedKernel (process-wide: the same structure compiles once)


_EXITING = threading.Event()


def _executor():
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix="tapegrad-fused")
        # at interpreter exit the executor's worker is joined after it has run every queued item: skip the
        # compiles that have not started (registered after the executor's own hook, so it runs first)
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            try:
                register(_EXITING.set)
            except RuntimeError:  # pragma: no cover - already shutting down
                _EXITING.set()
    return _EXECUTOR


def wait_background(timeout=None):
    """Block until every compile queued on the background thread so far has finished (a no-op queued behind
    them is waited for).  Numba's compiler enters ``warnings.catch_warnings``, which is process-wide before
    Python 3.14: a compile running across a caller's own ``catch_warnings`` block can restore the warning
    filters and ``showwarning`` under it, so code that records warnings waits here first."""
    with _LOCK:
        ex = _EXECUTOR
    if ex is not None:
        ex.submit(lambda: None).result(timeout)


def _write_module(path, src):
    """Write ``src`` to ``path`` unless it already holds exactly that (numba's cache keys on the file's
    mtime: rewriting an unchanged file would throw the machine code away)."""
    try:
        with open(path) as f:
            if f.read() == src:
                return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(src)
    os.replace(tmp, path)


def _dummy_args(key):
    _, ndim, ins, _, outs = key
    args = [0, np.zeros(max(ndim, 1), np.int64)]
    for dt, p in ins:
        args.append(np.zeros(1, dt))
        if p == BCAST:
            args.append(np.zeros(max(ndim, 1), np.int64))
    dts = {}
    for m_i, m in enumerate(key[3]):
        dts[("t", m_i)] = m[3]
    for j, (dt, _) in enumerate(ins):
        dts[("i", j)] = dt
    for ref in outs:
        args.append(np.zeros(1, dts[ref]))
    return args


class GeneratedModule:
    """A generated Numba module compiled once per process, on the background thread or here: ``start()``,
    ``wait()``, ``ready()``, ``done()``, ``fn``, ``error``, ``compile_s``, ``from_cache``.

    The source is written to ``path`` (unless it already holds exactly that) and imported as ``name``;
    subclasses say which function it holds (``entry``) and how to compile it (``_build(fn)``)."""

    entry = "kernel"
    what = "fused kernel"

    def __init__(self, name, source, path):
        self.name, self.source, self.path = name, source, path
        self.fn = None
        self.error = None
        self.compile_s = None
        self.from_cache = None
        self._future = None
        self._done = threading.Event()

    def _build(self, fn):  # pragma: no cover - subclasses
        raise NotImplementedError

    def _compile(self):
        import time

        t0 = time.perf_counter()
        try:
            if _EXITING.is_set() and self._future is not True:
                raise RuntimeError(f"{self.what} compile skipped: the interpreter is exiting")
            _write_module(self.path, self.source)
            mod = sys.modules.get(self.name)
            if mod is None:
                spec = importlib.util.spec_from_file_location(self.name, self.path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                sys.modules[self.name] = mod
            fn = getattr(mod, self.entry)
            self._build(fn)  # compile, or load the machine code from numba's disk cache
            self.from_cache = bool(fn.stats.cache_hits)
            self.fn = fn
        except BaseException as e:  # noqa: BLE001 - reported through .error; the engine falls back
            self.error = e
        finally:
            self.compile_s = time.perf_counter() - t0
            self._done.set()

    def start(self):
        """Compile on the background thread (idempotent)."""
        with _LOCK:
            if self._future is None and not self._done.is_set():
                self._future = _executor().submit(self._compile)
        return self

    def wait(self, timeout=None):
        if self._future is None and not self._done.is_set():
            with _LOCK:
                run_here = self._future is None and not self._done.is_set()
                if run_here:
                    self._future = True  # compiling here
            if run_here:
                self._compile()
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.fn

    def ready(self):
        return self._done.is_set() and self.fn is not None

    def done(self):
        return self._done.is_set()

    def wait_unless_queued(self):
        """For work already running on the background thread: compile here, or wait for a compile running on
        another thread, but not for one queued on the background thread (it would wait forever)."""
        with _LOCK:
            queued = self._future is not None and self._future is not True
        if not queued:
            self.wait()
        return self


class FusedKernel(GeneratedModule):
    """The compiled loop of one group structure."""

    def __init__(self, group):
        self.key = group.key()
        name = module_name(self.key)
        super().__init__(name, generate_source(group), os.path.join(cache_dir(), name + ".py"))

    def _build(self, fn):
        fn(*_dummy_args(self.key))


def get_kernel(group, background=False):
    """The process-wide :class:`FusedKernel` of ``group``'s structure, compiling it now or in the background."""
    name = module_name(group.key())
    with _LOCK:
        k = _KERNELS.get(name)
        if k is None:
            k = _KERNELS[name] = FusedKernel(group)
    if background:
        k.start()
    else:
        k.wait()
    return k


class FusedGroup:
    """A :class:`~tapegrad.tape.fuse.FuseGroup` bound to its kernel: ``ready()``, ``run(arrays)``."""

    def __init__(self, group, background=False):
        self.group = group
        self.kernel = get_kernel(group, background=background)
        self.shape = tuple(group.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.shp = np.array(self.shape if self.shape else (1,), np.int64)
        self.patterns = list(group.patterns)
        self.in_shapes = [tuple(s) for s in group.input_shapes]
        self.in_dtypes = [np.dtype(d) for d in group.input_dtypes]
        self.strides = [np.array(broadcast_strides(s, self.shape), np.int64) if p == BCAST else None
                        for s, p in zip(self.in_shapes, self.patterns)]
        dts = {m.out: m.out_dtype for m in group.members}
        self.out_dtypes = [np.dtype(dts[s]) for s in group.outputs]

    def ready(self):
        return self.kernel.ready()

    def matches(self, arrays):
        """True when ``arrays`` (the group inputs) have the shapes and dtypes the kernel was made for."""
        for a, s, d in zip(arrays, self.in_shapes, self.in_dtypes):
            if a.shape != s or a.dtype != d:
                return False
        return True

    def run(self, arrays, outs=None):
        """Run the loop on ``arrays`` (one per group input); returns the group outputs (``outs`` if given)."""
        fn = self.kernel.fn if self.kernel.fn is not None else self.kernel.wait()
        args = [self.size, self.shp]
        for a, p, st in zip(arrays, self.patterns, self.strides):
            a = a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)
            if not a.flags.writeable:  # numba types read-only arrays apart: keep one specialization
                a = a.copy() if a.size <= 64 else a
            args.append(a)
            if p == BCAST:
                args.append(st)
        if outs is None:
            outs = [np.empty(self.shape, d) for d in self.out_dtypes]
        args += [o.reshape(-1) for o in outs]
        fn(*args)
        return outs


# --------------------------------------------------------------------------- the executor
class _Plan:
    def __init__(self, steps, fused, shapes):
        self.steps = steps  # ("instr", k) | ("group", FusedGroup, out_buffers_or_None)
        self.fused = fused
        self.shapes = shapes

    def ready(self):
        return all(g.ready() for g in self.fused)


class FusedCPUEngine:
    """Run a tape with fused groups compiled per structure, every other instruction by ``perform``.

    ``FusedCPUEngine(tape, tier="fused").run(inputs, shared) -> (outputs, update_values)`` computes the
    same results as :class:`~tapegrad.compile.reference.ReferenceEngine` (to 1e-12 relative in float64,
    1e-5 in float32).

    Parameters
    ----------
    tape : Tape
    tier : {"fused", "auto", "interp"}
        ``"fused"``: compile each shape signature's groups before its first run (synchronously).
        ``"auto"`` (also ``None``): compile them on a background thread and run the tier-0
        :class:`~tapegrad.compile.cpu.CPUEngine` until they are all ready.  ``"interp"``: always tier 0.
    min_group : int
        Smallest group worth a loop of its own.
    """

    def __init__(self, tape, tier="fused", min_group=2, nan_guard=False):
        if tier is None:
            tier = "auto"
        if tier not in ("fused", "auto", "interp"):
            raise ValueError(f"FusedCPUEngine: tier must be 'fused', 'auto' or 'interp', got {tier!r}")
        from tapegrad.registry import CODE_DTYPES

        self.tape = tape
        self.tier = tier
        self.min_group = int(min_group)
        self.nan_guard = bool(nan_guard)
        self.slot_dtypes = [np.dtype(CODE_DTYPES[int(c)]) for c in tape.slot_dtype]
        self._plans = {}
        self._inner = None
        self._standins = {}
        self._dynamic = False
        self.last_tier = None  # "fused" or "interp": what the last run used
        self._out_slots = [int(s) for s in tape.output_slots]
        self._up_slots = [int(s) for s in tape.update_slots]

    # ---------------------------------------------------------------- helpers
    def node(self, k):
        node = self._standins.get(k)
        if node is None:
            from tapegrad.compile.reference import instr_node

            node = self._standins[k] = instr_node(self.tape, k)
        return node

    def _tier0(self):
        if self._inner is None:
            from tapegrad.compile.cpu import CPUEngine

            self._inner = CPUEngine(self.tape)
        return self._inner

    def _infer_shapes(self, inputs, shared):
        tape = self.tape
        shapes = [None] * tape.n_slots
        for s, a in zip(tape.input_slots, inputs):
            shapes[s] = a.shape
        for s, a in zip(tape.shared_slots, shared):
            shapes[s] = a.shape
        for s, c in zip(tape.const_slots, tape.consts):
            shapes[s] = np.shape(c)
        for k in range(len(tape)):
            in_shapes = [shapes[s] for s in tape.instr_args(k)]
            try:
                res = op_infer_shape(tape.ops[k], self.node(k), in_shapes)
            except ValueError as e:  # shapes that cannot go together: worded as the other engines word it
                from tapegrad.compile.reference import shape_error

                raise shape_error(tape, k, self.node(k), in_shapes, e, "fused engine") from None
            for s, sh in zip(tape.instr_outs(k), res):
                shapes[s] = tuple(int(n) for n in sh)
        for s in range(tape.n_slots):
            if shapes[s] is None:
                shapes[s] = (0,) * int(tape.slot_ndim[s])
        return shapes

    def _make_plan(self, inputs, shared, background):
        try:
            shapes = self._infer_shapes(inputs, shared)
        except NotImplementedError:  # value-dependent shapes: take them from one reference run
            self._dynamic = True
            shapes = self._shapes_by_running(inputs, shared)
        steps = []
        fused = []
        for st in schedule(self.tape, shapes, min_size=self.min_group, materialize_shape_args=self._dynamic):
            if st[0] == "instr":
                steps.append(st)
                continue
            fg = FusedGroup(st[1], background=background)
            fused.append(fg)
            # buffers reused call after call, except for what the caller gets back
            pinned = set(self._out_slots) | set(self._up_slots)
            bufs = None if any(s in pinned for s in st[1].outputs) else \
                [np.empty(fg.shape, d) for d in fg.out_dtypes]
            steps.append(("group", fg, bufs))
        return _Plan(steps, fused, shapes)

    def _shapes_by_running(self, inputs, shared):
        store = self._load(inputs, shared)
        for k in range(len(self.tape)):
            self._perform(k, store)
        return [tuple(np.shape(v)) if v is not None else (0,) * int(self.tape.slot_ndim[s])
                for s, v in enumerate(store)]

    def _load(self, inputs, shared):
        t = self.tape
        store = [None] * t.n_slots
        for s, a in zip(t.input_slots, inputs):
            store[s] = a
        for s, c in zip(t.const_slots, t.consts):
            store[s] = np.asarray(c)
        for s, a in zip(t.shared_slots, shared):
            store[s] = a
        return store

    def _perform(self, k, store):
        t = self.tape
        outs = t.instr_outs(k)
        storage = [[None] for _ in outs]
        ins = [store[s] for s in t.instr_args(k)]
        op = t.ops[k]
        try:
            op.perform(self.node(k), ins, storage)
        except Exception as e:
            from tapegrad.compile.reference import _add_context
            from tapegrad.tape.show import format_instr

            _add_context(e, f"  while running {op}; tape instruction {k}: {format_instr(t, k)}")
            raise
        for s, (v,) in zip(outs, storage):
            v = np.asarray(v)
            if v.dtype != self.slot_dtypes[s]:
                v = v.astype(self.slot_dtypes[s])
            store[s] = v
        if self.nan_guard:
            def bad(a):
                return a.dtype.kind == "f" and not np.all(np.isfinite(a))

            if any(bad(store[s]) for s in outs) and not any(bad(np.asarray(i)) for i in ins):
                raise FloatingPointError(f"nan_guard: NaN or inf produced from finite inputs at instruction {k}")

    # ---------------------------------------------------------------- running
    def run(self, input_arrays, shared_arrays=()):
        tape = self.tape
        inputs = [np.asarray(a, dtype=self.slot_dtypes[s]) for s, a in zip(tape.input_slots, input_arrays)]
        shared = [np.asarray(a, dtype=self.slot_dtypes[s]) for s, a in zip(tape.shared_slots, shared_arrays)]
        if len(inputs) != len(tape.input_slots) or len(input_arrays) != len(tape.input_slots):
            raise TypeError(f"fused engine: expected {len(tape.input_slots)} inputs, got {len(input_arrays)}")
        if len(shared) != len(tape.shared_slots) or len(shared_arrays) != len(tape.shared_slots):
            raise TypeError(f"fused engine: expected {len(tape.shared_slots)} shared values, "
                            f"got {len(shared_arrays)}")
        if self.tier == "interp":
            self.last_tier = "interp"
            return self._tier0().run(inputs, shared)
        key = tuple(a.shape for a in inputs) + tuple(a.shape for a in shared)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(inputs, shared, background=self.tier == "auto")
        if self.tier == "auto" and not plan.ready():
            self.last_tier = "interp"
            return self._tier0().run(inputs, shared)
        self.last_tier = "fused"
        return self._execute(plan, inputs, shared)

    def _execute(self, plan, inputs, shared):
        store = self._load(inputs, shared)
        fresh = set()
        for st in plan.steps:
            if st[0] == "instr":
                self._perform(st[1], store)
                continue
            fg, bufs = st[1], st[2]
            g = fg.group
            arrays = [store[s] for s in g.inputs]
            if fg.kernel.fn is None or not fg.matches(arrays):
                for m in g.members:  # not compiled (failed) or shapes moved: reference semantics
                    self._perform(m.k, store)
                continue
            outs = fg.run(arrays, bufs)
            for s, o in zip(g.outputs, outs):
                store[s] = o
            if bufs is None:
                fresh.update(g.outputs)
            if self.nan_guard:
                self._guard_group(g, arrays, outs)
        outputs = []
        for s in self._out_slots:
            if s in fresh:
                fresh.discard(s)
                outputs.append(store[s])
            else:
                outputs.append(np.array(store[s], copy=True))
        updates = []
        for s in self._up_slots:
            if s in fresh:
                fresh.discard(s)
                updates.append(store[s])
            else:
                updates.append(np.array(store[s], copy=True))
        return outputs, updates

    def _guard_group(self, g, arrays, outs):
        def bad(a):
            return a.dtype.kind == "f" and not np.all(np.isfinite(a))

        if any(bad(o) for o in outs) and not any(bad(a) for a in arrays):
            raise FloatingPointError(f"nan_guard: NaN or inf produced from finite inputs in the fused group "
                                     f"of instructions {g.instrs}")

    # ---------------------------------------------------------------- introspection
    def groups(self, input_shapes=None):
        """The FusedGroups of the last (or the given) shape signature's plan."""
        if input_shapes is not None:
            plan = self._plans.get(tuple(tuple(s) for s in input_shapes))
        else:
            plan = next(reversed(self._plans.values()), None)
        return [] if plan is None else list(plan.fused)

    def wait_ready(self, timeout=None):
        """Block until every started compile is done (for tests and benchmarks)."""
        for plan in self._plans.values():
            for g in plan.fused:
                g.kernel._done.wait(timeout)
        return all(p.ready() for p in self._plans.values())
