"""The CUDA engine: run a tape with numba.cuda kernels over device-resident buffers.

``CUDAEngine(tape).run(inputs, shared, return_device=False) -> (outputs, update_values)``

* **Plan per input-shape signature** (:class:`CUDAPlan`): slot shapes from each
  op's ``infer_shape`` (value-dependent shapes: a host pre-pass runs the
  dynamic instructions' ``perform``, as the CPU engine does, and keys the
  plan on their results); one flat device array per slot, reused by
  liveness (same dtype and size); constants uploaded once per plan.
* **Plan-time constants**: outputs that depend only on shapes (``SHAPE``,
  ``SHAPE_I``, ``ZEROS_LIKE``, ``ONES_LIKE``, small computations on them and
  on constants) are evaluated once per plan on the host and uploaded; their
  instructions cost nothing per call.
* **Kernels** (``cuda_kernels.py``, compiled lazily, cached in memory):
  elementwise rows generated from the table's ``expr`` strings (grid-stride,
  broadcasting by strides), ``CAST``, ``BROADCAST_LIKE``, ``SUM_LIKE``, the
  reductions (``SUM MEAN PROD MAX MIN ARGMAX ARGMIN ALL ANY LOGSUMEXP``,
  ``TILE_SUM``, ``SUM_BROADCAST``), ``SOFTMAX``/``LOG_SOFTMAX``, a tiled GEMM
  for every contraction (``DOT MATMUL TENSORDOT EINSUM OUTER OUTER_T``: each
  reduced on the host to a batched 2-D product plus index-map gathers),
  ``CUMSUM``/``CUMPROD`` scans, ``ADVANCED_SUBTENSOR1`` (take) and
  ``ADVANCED_INC_SUBTENSOR1``/``ADVANCED_SCATTER1`` (``cuda.atomic.add``).
* **Index maps for shape and index ops**: an op that moves elements without
  arithmetic (reshape, dimshuffle, basic subtensor and its inc/set/scatter,
  join, stack, split, roll, repeat, tile, diagonal, diag_embed, alloc, the
  gradient modifiers, ...) is run once per plan on *index arrays* through its
  own NumPy ``perform``; the result says which input element each output
  element is (0 = zero).  The map is verified on random values and then
  applied by a gather kernel.  Ops whose map cannot be derived fall back.
* **Fallback**: any other instruction copies its inputs to the host, runs
  ``perform`` and copies the results back (listed by :meth:`CUDAEngine.fallback_codes`).

Inputs may be NumPy arrays (copied in once per call) or CUDA device arrays
(anything with ``__cuda_array_interface__``: used in place).  Outputs are
copied to fresh NumPy arrays, or, with ``return_device=True``, returned as
fresh device arrays.  An engine is not re-entrant.
"""

from __future__ import annotations

import os

import numpy as np

from tapegrad.compile.op_shapes import op_infer_shape
from tapegrad.registry import CODE_DTYPES

NO_GPU = "device='cuda' needs an NVIDIA GPU or NUMBA_ENABLE_CUDASIM=1"

_cuda = None
_K = None


def _load():
    """Import numba.cuda and the kernels (lazily: importing tapegrad never needs numba-cuda)."""
    global _cuda, _K
    if _K is None:
        os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")  # tiny launches are expected
        if "row_stack" not in np.__dict__:  # numba-cuda <= 0.30 overloads np.row_stack, gone in NumPy 2.5
            np.row_stack = np.vstack
        try:
            from numba import cuda
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(f"{NO_GPU} (numba.cuda is not importable: {e}; pip install numba-cuda)") from e
        sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
        try:
            ok = cuda.is_available()
        except Exception:  # noqa: BLE001 - any driver problem means no GPU
            ok = False
        if not ok and not sim:
            raise RuntimeError(NO_GPU)
        from tapegrad.compile import cuda_kernels

        _cuda, _K = cuda, cuda_kernels
    return _cuda, _K


def is_device_array(a):
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


# codes whose op moves elements without arithmetic: their index maps come from perform on index arrays
SELECT_CODES = {
    "RESHAPE", "FLATTEN", "DIMSHUFFLE", "RAVEL", "SPECIFY_SHAPE", "SUBTENSOR", "INC_SUBTENSOR", "SET_SUBTENSOR",
    "SUBTENSOR_SCATTER", "JOIN", "STACK", "SPLIT", "ROLL", "REPEAT", "TILE", "DIAGONAL", "DIAG_EMBED",
    "BROADCAST_LIKE", "ALLOC", "ZERO_GRAD", "DISCONNECTED_GRAD", "CONSIDER_CONSTANT", "GRAD_CLIP", "GRAD_SCALE",
    "UNDEFINED_GRAD", "ADVANCED_SUBTENSOR1", "ADVANCED_SUBTENSOR1_LAST", "ADVANCED_INC_SUBTENSOR1",
    "ADVANCED_SET_SUBTENSOR1", "ADVANCED_SCATTER1", "ADVANCED_SCATTER1_SET", "BROADCAST_REDUCED",
}
SHAPE_ONLY = {"SHAPE", "SHAPE_I", "ZEROS_LIKE", "ONES_LIKE"}
REDUCE_KIND = {"SUM": "sum", "MEAN": "mean", "PROD": "prod", "MAX": "max", "MIN": "min", "ALL": "all",
               "ANY": "any"}
CONTRACTIONS = {"DOT", "MATMUL", "TENSORDOT", "EINSUM", "OUTER", "OUTER_T"}
_SMALL = 4096  # plan-time evaluation of instructions whose inputs are all known and output is this small


class _L:
    """A kernel with its launch configuration (configured at each call: the simulator's
    ``kernel[grid, block]`` mutates and returns the kernel itself)."""

    __slots__ = ("k", "g", "b")

    def __init__(self, k, g, b):
        self.k, self.g, self.b = k, g, b

    def __call__(self, *args):
        self.k[self.g, self.b](*args)


class _Dynamic(Exception):
    def __init__(self, k):
        self.k = k


class _NoKernel(Exception):
    """Raised by a step builder: the instruction runs by fallback."""


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


class CUDAEngine:
    """Run a :class:`~tapegrad.tape.format.Tape` on a CUDA device (or the numba simulator)."""

    def __init__(self, tape, **options):
        self.cuda, self.K = _load()
        self.tape = tape
        self.slot_dtypes = [CODE_DTYPES[int(c)] for c in tape.slot_dtype]
        self._plans = {}
        self._standins = {}
        self._dynamic = set()
        self._producer = {}
        for k in range(len(tape)):
            for s in tape.instr_outs(k):
                self._producer[int(s)] = k
        self.fallback_calls = 0

    # ---------------------------------------------------------------- reporting
    def fallback_codes(self):
        """Sorted names of the op codes that ran by host fallback in the plans built so far."""
        names = set()
        for plan in self._plans.values():
            names.update(plan.fallback_names)
        return sorted(names)

    def native_codes(self):
        """Sorted names of the op codes that ran with device kernels (or as plan constants) so far."""
        names = set()
        for plan in self._plans.values():
            names.update(plan.native_names)
        return sorted(names)

    def node(self, k):
        node = self._standins.get(k)
        if node is None:
            from tapegrad.compile.reference import instr_node

            node = self._standins[k] = instr_node(self.tape, k)
        return node

    def slot_name(self, s):
        from tapegrad.compile.reference import slot_label

        return slot_label(self.tape, s)

    # ---------------------------------------------------------------- running
    def run(self, input_arrays, shared_arrays=(), return_device=False):
        tape = self.tape
        inputs = [a if is_device_array(a) else np.asarray(a) for a in input_arrays]
        shared = [a if is_device_array(a) else np.asarray(a) for a in shared_arrays]
        if len(inputs) != len(tape.input_slots):
            raise TypeError(f"CUDA engine: expected {len(tape.input_slots)} inputs, got {len(inputs)}")
        if len(shared) != len(tape.shared_slots):
            raise TypeError(f"CUDA engine: expected {len(tape.shared_slots)} shared values, got {len(shared)}")
        key = tuple(tuple(a.shape) for a in inputs) + tuple(tuple(a.shape) for a in shared)
        while True:
            known = None
            full_key = key
            if self._dynamic:
                known = self._prepass(inputs, shared)
                full_key = key + tuple(known[s].shape for s in sorted(known))
            plan = self._plans.get(full_key)
            if plan is None:
                try:
                    shapes = self._infer_shapes(inputs, shared, known)
                except _Dynamic as d:
                    self._dynamic.add(d.k)
                    continue
                plan = self._plans[full_key] = CUDAPlan(self, shapes, known)
            return plan.execute(inputs, shared, known, return_device)

    def _infer_shapes(self, inputs, shared, known):
        tape = self.tape
        shapes = [None] * tape.n_slots
        for s, a in zip(tape.input_slots, inputs):
            if len(a.shape) != tape.slot_ndim[s]:
                raise ValueError(f"CUDA engine: input {self.slot_name(s)} expects {tape.slot_ndim[s]} dimension(s), "
                                 f"got shape {tuple(a.shape)}")
            shapes[s] = tuple(int(n) for n in a.shape)
        for s, a in zip(tape.shared_slots, shared):
            shapes[s] = tuple(int(n) for n in a.shape)
        for s, c in zip(tape.const_slots, tape.consts):
            shapes[s] = np.shape(c)
        for k in range(len(tape)):
            outs = tape.instr_outs(k)
            if known is not None and all(int(s) in known for s in outs):
                res = [known[int(s)].shape for s in outs]
            elif k in self._dynamic:
                raise _Dynamic(k)
            else:
                in_shapes = [shapes[s] for s in tape.instr_args(k)]
                try:
                    res = op_infer_shape(tape.ops[k], self.node(k), in_shapes)
                except NotImplementedError:
                    raise _Dynamic(k) from None
                except ValueError as e:  # shapes that cannot go together: worded as the other engines word it
                    from tapegrad.compile.reference import shape_error

                    raise shape_error(tape, k, self.node(k), in_shapes, e, "CUDA engine") from None
            for s, sh in zip(outs, res):
                shapes[s] = tuple(int(n) for n in sh)
        for s in range(tape.n_slots):
            if shapes[s] is None:
                shapes[s] = tuple(0 for _ in range(tape.slot_ndim[s]))
        return shapes

    def _prepass(self, inputs, shared):
        """Values of the dynamic instructions' outputs (and their ancestors), by ``perform`` on the host."""
        tape = self.tape
        need, stack = set(), list(self._dynamic)
        while stack:
            k = stack.pop()
            if k in need:
                continue
            need.add(k)
            for s in tape.instr_args(k):
                p = self._producer.get(int(s))
                if p is not None:
                    stack.append(p)
        env = {}
        used = {int(s) for k in need for s in tape.instr_args(k)}
        for s, a in zip(tape.input_slots, inputs):
            if int(s) in used:
                a = a.copy_to_host() if is_device_array(a) else a
                env[int(s)] = np.asarray(a).astype(self.slot_dtypes[s], copy=False)
        for s, a in zip(tape.shared_slots, shared):
            if int(s) in used:
                env[int(s)] = a.copy_to_host() if is_device_array(a) else a
        for s, c in zip(tape.const_slots, tape.consts):
            env[int(s)] = np.asarray(c)
        known = {}
        for k in sorted(need):
            storage = [[None] for _ in tape.instr_outs(k)]
            tape.ops[k].perform(self.node(k), [env[int(s)] for s in tape.instr_args(k)], storage)
            for s, st in zip(tape.instr_outs(k), storage):
                env[int(s)] = known[int(s)] = np.asarray(st[0])
        return known


_LET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _contraction_plan(spec, ash, bsh):
    """Reduce two-operand einsum ``spec`` to ``C[nb, M, N] = A[nb, M, K] @ B[nb, K, N]`` with gather maps.

    Returns ``(nb, M, N, K, amap, bmap, cmap, out_shape)``; a map is None when the
    operand (or output) already has that layout.
    """
    ins, lo = spec.split("->")
    la, lb = ins.split(",")
    ea, eb, eo = la.startswith("..."), lb.startswith("..."), lo.startswith("...")
    la, lb, lo = la.replace("...", ""), lb.replace("...", ""), lo.replace("...", "")
    na_ell, nb_ell = len(ash) - len(la), len(bsh) - len(lb)
    if (na_ell and not ea) or (nb_ell and not eb) or na_ell < 0 or nb_ell < 0:
        raise _NoKernel
    ell_a, ell_b = tuple(ash[:na_ell]), tuple(bsh[:nb_ell])
    try:
        ell = np.broadcast_shapes(ell_a, ell_b) if eo else ()
    except ValueError:
        raise _NoKernel from None
    if not eo and (ell_a or ell_b):
        raise _NoKernel
    lens = {}
    for labels, shape in ((la, ash[na_ell:]), (lb, bsh[nb_ell:])):
        for c, n in zip(labels, shape):
            if lens.get(c, n) != n:
                raise _NoKernel
            lens[c] = n
    batch = [c for c in la if c in lb and c in lo]
    Ml = [c for c in la if c not in lb]
    Nl = [c for c in lb if c not in la]
    Kl = [c for c in la if c in lb and c not in lo]
    if any(c not in lo for c in Ml + Nl):
        raise _NoKernel  # a label summed in one operand only
    ne = len(ell)
    nbatch = _size(ell) * _size([lens[c] for c in batch])
    M, N, Kd = _size([lens[c] for c in Ml]), _size([lens[c] for c in Nl]), _size([lens[c] for c in Kl])

    def operand_map(shape, labels, nell, first, second):
        ix = np.arange(_size(shape), dtype=np.int64).reshape(shape)
        ix = ix.reshape((1,) * (ne - nell) + tuple(shape))  # left-pad the ellipsis dims
        full_ell = tuple(ell)
        pos = {c: ne + i for i, c in enumerate(labels)}
        ix = np.broadcast_to(ix, full_ell + tuple(shape[nell:])) if ne else ix
        order = list(range(ne)) + [pos[c] for c in batch] + [pos[c] for c in first] + [pos[c] for c in second]
        ix = ix.transpose(order).reshape(-1)
        if ix.size == _size(shape) and np.array_equal(ix, np.arange(ix.size)):
            return None
        return np.ascontiguousarray(ix)

    amap = operand_map(ash, la, na_ell, Ml, Kl)
    bmap = operand_map(bsh, lb, nb_ell, Kl, Nl)
    # C layout: ell + batch + M + N; output: ell + lo
    cshape = tuple(ell) + tuple(lens[c] for c in batch) + tuple(lens[c] for c in Ml) + tuple(lens[c] for c in Nl)
    cl = list(batch) + Ml + Nl
    ic = np.arange(_size(cshape), dtype=np.int64).reshape(cshape)
    ic = ic.transpose(list(range(ne)) + [ne + cl.index(c) for c in lo]).reshape(-1)
    out_shape = tuple(ell) + tuple(lens[c] for c in lo)
    cmap = None if np.array_equal(ic, np.arange(ic.size)) else np.ascontiguousarray(ic)
    return nbatch, M, N, Kd, amap, bmap, cmap, out_shape


__all__ = ["CUDAEngine", "CUDAPlan", "NO_GPU"]

# the plan lives in tapegrad/compile/cuda_plan.py (which imports the helpers above)
from tapegrad.compile.cuda_plan import CUDAPlan  # noqa: E402
