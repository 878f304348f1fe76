"""The program tier for tapes longer than one program takes: a chain of programs.

Numba's compile time grows faster than the tape (a 625-instruction program took 136 s), so one generated
function holds at most :data:`~tapegrad.compile.program_ir.MAX_INSTRUCTIONS` instructions.  An unrolled
time loop (fifty steps of a stencil, two hundred of an integrator, with their adjoint) is longer than that.
Such a tape is cut into consecutive pieces of at most :data:`CHUNK` instructions, and each piece becomes a
program of its own over a *sub-tape*:

* its instructions, in tape order (instructions whose value is known at plan time are left out: their
  values are constants of every piece that reads them);
* its inputs: every slot it reads that an earlier piece made, or that is an input or shared value of the
  function (live-in);
* its outputs: every slot it makes that a later piece reads, or that is a result of the function
  (live-out).

The slot numbering, shapes and dtypes are the whole tape's, so each piece is generated, cached on disk and
compiled exactly like a whole-tape program (:mod:`tapegrad.compile.program`), and it is exact for the same
reasons.  The pieces compile one after the other on the fused tier's background thread; the chain is ready
when all are.  A call runs them in order from Python, passing each piece the arrays it needs: one Python
step per piece instead of one per instruction.  A cut is placed, within the last :data:`SLACK`
instructions before each piece's limit, where the fewest values cross it (each one crossing is stored by one
piece and read by the next).
"""
from __future__ import annotations

import threading

import numpy as np

from tapegrad.compile.program_ir import Unsupported
from tapegrad.tape.format import SLOT_INPUT, Tape, csr_rows
from tapegrad.tape.fuse import shape_only_args

CHUNK = 200  # instructions per piece at most (compile time: a few seconds each)
SLACK = 60  # a cut may come this many instructions early, where fewer values cross it
MAX_CHAIN = 50_000  # instructions: longer tapes stay on tiers 0/1 (generating the pieces alone takes ~0.13 ms an
#                     instruction, on the background thread, before any compile)


# --------------------------------------------------------------------------- cutting the tape
def _liveness(tape, skip):
    """Per slot: the instruction that makes it (absent for inputs, constants, shared values and the slots of
    ``skip``) and the last instruction that reads its value (``len(tape)`` for results; a read of its shape
    only, as ``sum_like``'s reference, does not count: shapes are literals in the programs)."""
    n = len(tape)
    made, last = {}, {}
    for k in range(n):
        if k in skip:
            continue
        shape_only = shape_only_args(tape, k)
        for s in tape.instr_args(k):
            if int(s) not in shape_only:
                last[int(s)] = k
        for s in tape.instr_outs(k):
            made[int(s)] = k
    for s in list(tape.output_slots) + list(tape.update_slots):
        last[int(s)] = n
    return made, last


def cut_points(tape, skip=frozenset(), chunk=None, slack=None, liveness=None):
    """Boundaries ``[0, b1, ..., len(tape)]`` of the pieces: each at most ``chunk`` instructions long (instructions
    in ``skip`` do not count), each cut at the position in its last ``slack`` instructions that the fewest
    values made before it and read after it cross (the latest such position on a tie).  ``liveness``: what
    :func:`_liveness` returns for ``tape`` and ``skip``, when the caller has it."""
    chunk = CHUNK if chunk is None else chunk
    slack = SLACK if slack is None else slack
    n = len(tape)
    made, last = _liveness(tape, skip) if liveness is None else liveness
    crossing = np.zeros(n + 1, np.int64)  # crossing[b]: values made before b and read at or after b
    for s, k in made.items():
        e = last.get(s, -1)
        if e > k:
            crossing[k + 1:e + 1] += 1
    counted = np.cumsum([0] + [0 if k in skip else 1 for k in range(n)])  # counted[b]: instructions before b
    cuts = [0]
    while counted[n] - counted[cuts[-1]] > chunk:
        start = cuts[-1]
        hi = int(np.searchsorted(counted, counted[start] + chunk, side="right")) - 1
        lo = max(start + 1, int(np.searchsorted(counted, counted[hi] - slack, side="left")))
        window = crossing[lo:hi + 1]
        b = lo + int(np.flatnonzero(window == window.min())[-1])
        cuts.append(b)
    cuts.append(n)
    return cuts


def sub_tape(tape, instrs, inputs, outputs):
    """The tape of instructions ``instrs`` (global indices, in order) reading ``inputs`` (slots made elsewhere:
    they become the sub-tape's inputs) and returning ``outputs``, and the slot map: ``used[j]`` is the slot of
    the whole tape that is slot ``j`` of the sub-tape.  Slots are numbered afresh, inputs first and then in
    order of appearance, so two stretches of a tape that do the same thing (the steps of an unrolled loop)
    become the same sub-tape, the same program source and one compile.  Constants are the ones it reads."""
    used, new = [], {}

    def num(s):
        s = int(s)
        if s not in new:
            new[s] = len(used)
            used.append(s)
        return new[s]

    for s in inputs:
        num(s)

    arg_ptr, args = csr_rows(tape.arg_ptr, tape.args, instrs, num)
    out_ptr, outs = csr_rows(tape.out_ptr, tape.outs, instrs, num)
    ip_ptr, iparams = csr_rows(tape.ip_ptr, tape.iparams, instrs)
    fp_ptr, fparams = csr_rows(tape.fp_ptr, tape.fparams, instrs)
    out_slots = [num(s) for s in outputs]
    idx = np.asarray(used, np.int64)
    kinds = tape.slot_kind[idx].copy()
    kinds[:len(inputs)] = SLOT_INPUT
    shapes = [tape.static_shape[tape.shape_ptr[s]:tape.shape_ptr[s + 1]] for s in used]
    shape_ptr = np.zeros(len(used) + 1, np.int64)
    shape_ptr[1:] = np.cumsum([len(x) for x in shapes])
    keep = [j for j, s in enumerate(tape.const_slots) if int(s) in new]
    nodes = list(tape.nodes) if tape.nodes else []
    names = list(tape.slot_names) if tape.slot_names else []
    sub = Tape(
        codes=tape.codes[instrs], arg_ptr=arg_ptr, args=args, out_ptr=out_ptr, outs=outs, ip_ptr=ip_ptr,
        iparams=iparams, fp_ptr=fp_ptr, fparams=fparams, slot_dtype=tape.slot_dtype[idx],
        slot_ndim=tape.slot_ndim[idx], shape_ptr=shape_ptr,
        static_shape=np.concatenate(shapes) if shapes else tape.static_shape[:0], slot_kind=kinds,
        input_slots=list(range(len(inputs))), output_slots=out_slots,
        const_slots=[new[int(tape.const_slots[j])] for j in keep], shared_slots=[], update_slots=[],
        update_targets=[], ops=[tape.ops[k] for k in instrs] if tape.ops else [],
        consts=[tape.consts[j] for j in keep], shared=[], slot_names=[names[s] for s in used] if names else [],
        nodes=[nodes[k] for k in instrs] if nodes else [])
    return sub, used


# --------------------------------------------------------------------------- the engine side
class _Piece:
    """One piece of a chain: its program (an :class:`~tapegrad.compile.program.EngineProgram`), the slots it
    reads, returns (results of the function) and writes into the chain's arrays (values for later pieces)."""

    __slots__ = ("ep", "inputs", "ret", "into", "into_dtypes", "into_sizes", "into_shapes", "ret_scalar")

    def __init__(self, ep, inputs, ret, into, into_dtypes, into_sizes, into_shapes, ret_scalar):
        self.ep, self.inputs, self.ret, self.into = ep, inputs, ret, into
        self.into_dtypes, self.into_sizes, self.into_shapes, self.ret_scalar = (into_dtypes, into_sizes,
                                                                                into_shapes, ret_scalar)


class ChainProgram:
    """The programs of a long tape's pieces, run one after the other; the same interface as
    :class:`~tapegrad.compile.program.EngineProgram` (``run``, ``fast_call``, ``ready``, ``failed``, ``error``,
    ``parallel``), without an ``@njit`` entry."""

    def __init__(self, pieces, in_slots, results, result_values, in_dtypes, sh_dtypes, n_outputs, in_shapes,
                 scalar_dtypes):
        self.pieces = pieces  # [_Piece]
        self.in_slots = in_slots  # the function's input slots, then its shared slots
        self._given = set(in_slots)
        self.results = results  # slots of the outputs, then of the updates
        self.result_values = result_values  # slot -> plan-time value, for results known before any piece runs
        self.in_dtypes = [np.dtype(d) for d in in_dtypes]
        self.sh_dtypes = [np.dtype(d) for d in sh_dtypes]
        self.n_outputs = n_outputs
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.scalar_dtypes = [None if d is None else np.dtype(d) for d in scalar_dtypes]
        self._fast = None
        self._local = threading.local()  # .state: this thread's calls (see _state)

    @property
    def sources(self):
        """The pieces' program sources, in order (for inspection and tests)."""
        return [p.ep.program.source for p in self.pieces]

    @property
    def program(self):
        raise NotImplementedError(f"a tape cut into {len(self.pieces)} programs has no single program (and no njit "
                                  f"entry); its pieces are ChainProgram.pieces")

    @classmethod
    def make(cls, engine, plan, background, only_if_cached=False, serial=False):
        """The chain of ``engine``'s tape at ``plan``'s shapes.  ``background``: everything happens on the fused
        tier's background thread, the generation of the pieces' sources too (a few hundred ms per thousand
        instructions, which a call should not wait for), and a :class:`_PendingChain` comes back at once.
        ``only_if_cached``: None (the first-call probe of the disk cache is for single programs; a chain
        loads in the background a few calls later instead).  Raises Unsupported."""
        if only_if_cached:
            return None
        if len(engine.tape) > MAX_CHAIN:
            raise Unsupported(f"{len(engine.tape)} instructions (a chain of programs takes at most {MAX_CHAIN})")
        if background:
            from tapegrad.compile.fused import _EXITING, _executor

            def build():
                if _EXITING.is_set():
                    raise RuntimeError("chain of programs skipped: the interpreter is exiting")
                return cls._build(engine, plan, serial, worker=True)

            return _PendingChain(_executor().submit(build))
        return cls._build(engine, plan, serial)

    @classmethod
    def _build(cls, engine, plan, serial, worker=False):
        """Generate and compile the pieces on this thread.  ``worker``: this is the fused tier's background thread,
        where a piece whose compile another caller queued there is not waited for (it runs after this job)."""
        from tapegrad.compile.program import EngineProgram, _is_parallel, generate, get_program
        from tapegrad.compile.program_order import eager_tape

        tape, const_instrs, node = eager_tape(engine.tape, plan.shapes, engine.slot_dtypes, plan.const_instrs,
                                              engine.node)
        skip = set(int(k) for k in const_instrs)
        values = dict(plan.values or {})
        made, last = _liveness(tape, skip)
        cuts = cut_points(tape, skip, liveness=(made, last))
        given = set(int(s) for s in tape.input_slots) | set(int(s) for s in tape.shared_slots)
        consts = set(int(s) for s in tape.const_slots)
        results = [int(s) for s in tape.output_slots] + [int(s) for s in tape.update_slots]
        result_set = set(results)
        dts = engine.slot_dtypes
        pieces = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            instrs = [k for k in range(a, b) if k not in skip]
            reads, writes = [], set()
            for k in instrs:
                shape_only = shape_only_args(tape, k)
                for s in tape.instr_args(k):
                    s = int(s)
                    if (s not in writes and s not in reads and s not in values and s not in consts
                            and s not in shape_only):
                        reads.append(s)
                writes.update(int(s) for s in tape.instr_outs(k))
            outs = sorted(s for s in writes if last.get(s, -1) >= b and s not in values)
            if not outs:
                continue  # nothing of it is used (dead code the rewrites left): skipped
            inputs = sorted(reads)
            missing = [s for s in inputs if s not in given and made.get(s, b) >= a]
            if missing:
                raise Unsupported(f"slot {missing[0]} is read before any instruction makes it")
            ret = [s for s in outs if s in result_set]  # returned: fresh arrays, as results must be
            into = [s for s in outs if s not in result_set]  # written into the chain's arrays (reused per call)
            sub, used = sub_tape(tape, instrs, inputs, ret)
            local = {s: j for j, s in enumerate(used)}
            local_values = {local[s]: v for s, v in values.items() if s in local}
            sizes = [int(np.prod(plan.shapes[s], dtype=np.int64)) if len(plan.shapes[s]) else 1 for s in into]
            shapes = [plan.shapes[s] for s in inputs] + [(n,) for n in sizes]
            for serial_piece in ((True,) if serial else (False, True)):
                src, cvals, ws = generate(sub, [plan.shapes[s] for s in used], [dts[s] for s in used], local_values,
                                          (), lambda k, instrs=instrs: node(instrs[k]), serial=serial_piece,
                                          into=[local[s] for s in into])
                try:
                    prog = get_program(src, cvals, shapes, [dts[s] for s in inputs + into], len(ret),
                                       background=worker, workspace=ws, start=False)
                    if worker:
                        prog.wait_unless_queued()
                    break
                except Exception:  # noqa: BLE001 - as EngineProgram.make: a piece with parallel loops that Numba
                    if serial_piece or not _is_parallel(src):  # fails to compile is made again without them
                        raise
            ep = EngineProgram(prog, [dts[s] for s in inputs], [], len(ret), shapes, [None] * len(ret))
            pieces.append(_Piece(ep, inputs, ret, into, [np.dtype(dts[s]) for s in into], sizes,
                                 [tuple(plan.shapes[s]) for s in into],
                                 [np.dtype(dts[s]) if tuple(plan.shapes[s]) == () else None for s in ret]))
        in_slots = [int(s) for s in tape.input_slots] + [int(s) for s in tape.shared_slots]
        produced = set(s for p in pieces for s in p.ret)
        for s in results:
            if s not in produced and s not in given and s not in values and s not in consts:
                raise Unsupported(f"result slot {s} is made by no piece")
        result_values = {s: np.asarray(values[s] if s in values else
                                       tape.consts[list(tape.const_slots).index(s)]) for s in results
                         if s not in produced and s not in given}
        scalar = [dts[s] if tuple(plan.shapes[s]) == () else None for s in results]
        return cls(pieces, in_slots, results, result_values,
                   [dts[s] for s in tape.input_slots], [dts[s] for s in tape.shared_slots],
                   len(tape.output_slots), [plan.shapes[s] for s in tape.input_slots], scalar)

    # -- state
    @property
    def parallel(self):
        return any(p.ep.parallel for p in self.pieces)

    @property
    def error(self):
        for p in self.pieces:
            if p.ep.error is not None:
                return p.ep.error
        return None

    def ready(self):
        return all(p.ep.ready() for p in self.pieces)

    def failed(self):
        return any(p.ep.failed() for p in self.pieces)

    # -- running
    def _state(self):
        """This thread's calls, built on its first: per piece ``(fn, args, fills, ret, ret_scalar)`` where
        ``args`` holds the arrays that stay (the values passed between pieces, written into this thread's
        arrays; constants; the workspace) and ``fills`` the ``(position, slot)`` of the rest (the function's
        inputs, results returned by earlier pieces), set per call."""
        state = getattr(self._local, "state", None)
        if state is None:
            into = {}  # slot -> (flat array passed to its piece, the same in the slot's shape)
            state = []
            for p in self.pieces:
                prog = p.ep.program
                ys = [np.empty(n, d) for n, d in zip(p.into_sizes, p.into_dtypes)]
                args, fills = [], []
                for s in p.inputs:
                    if s in into:
                        args.append(into[s][1])
                    else:
                        fills.append((len(args), s))
                        args.append(None)
                args += ys + list(prog.consts) + list(p.ep.workspace())
                for s, y, shape in zip(p.into, ys, p.into_shapes):
                    into[s] = (y, y.reshape(shape))
                state.append((prog.fn, args, fills, p.ret, p.ret_scalar))
            self._local.state = state
        return state

    def _chain(self, given):
        """Results (outputs, then updates) from ``given``: the function's input and shared arrays, in order."""
        env = dict(zip(self.in_slots, given))
        state = self._state()
        try:
            for fn, args, fills, ret, ret_scalar in state:
                for j, s in fills:
                    args[j] = env[s]
                got = fn(*args)
                for s, r, d in zip(ret, got, ret_scalar):
                    env[s] = r if d is None else np.asarray(r, dtype=d)
        finally:
            for _, args, fills, _, _ in state:  # hold no reference to this call's arrays
                for j, _ in fills:
                    args[j] = None
        res, seen = [], set()
        for s in self.results:
            if s in self.result_values:
                v = np.array(self.result_values[s])
            else:
                v = env[s]
                if s in seen or s in self._given:
                    v = np.array(v)  # two results never share an array, and inputs are never returned
            seen.add(s)
            res.append(v)
        return res

    def run(self, inputs, shared):
        from tapegrad.compile.program import c_array

        given = [c_array(a, d) for a, d in zip(inputs, self.in_dtypes)]
        given += [c_array(a, d) for a, d in zip(shared, self.sh_dtypes)]
        res = [np.asarray(r, dtype=d) if d is not None else r for r, d in zip(self._chain(given), self.scalar_dtypes)]
        return res[:self.n_outputs], res[self.n_outputs:]

    def fast_call(self):
        """``call(args) -> outputs tuple`` when every argument is already an ndarray of exactly the input's dtype,
        shape and C order (and the function has no shared values), else None."""
        if self._fast is None:
            dts, shapes, n = self.in_dtypes, self.in_shapes, len(self.in_dtypes)
            chain, scalar, n_out = self._chain, self.scalar_dtypes[:self.n_outputs], self.n_outputs
            nd = np.ndarray

            def call(args):
                if len(args) != n or self.sh_dtypes:
                    return None
                for a, d, s in zip(args, dts, shapes):
                    if type(a) is not nd or a.dtype != d or a.shape != s or not a.flags.c_contiguous:
                        return None
                res = chain(list(args))[:n_out]
                return tuple(r if d is None else np.asarray(r, dtype=d) for r, d in zip(res, scalar))

            self._fast = call
        return self._fast


class _PendingChain:
    """A chain whose pieces are generated on the background thread: not ready (and not failed) until then;
    afterwards everything is the built :class:`ChainProgram`'s."""

    def __init__(self, future):
        self._future = future

    def ready(self):
        return self._future.done() and self._future.exception() is None and self._future.result().ready()

    def failed(self):
        return self._future.done() and (self._future.exception() is not None or self._future.result().failed())

    @property
    def error(self):
        if not self._future.done():
            return None
        return self._future.exception() or self._future.result().error

    @property
    def parallel(self):
        return self._future.done() and self._future.exception() is None and self._future.result().parallel

    def __getattr__(self, name):  # run, fast_call, pieces, sources, ...: the built chain's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._future.result(), name)
