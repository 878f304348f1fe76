"""The tape: a frozen struct of arrays that every engine runs.

Slots are the tape's variables (one per graph variable that survives the
rewrites); instructions are op applications.  All per-instruction data lives
in flat arrays indexed through CSR pointer arrays, so the Numba engines can
loop over any tape without Python objects:

===============  =======  ====================================================
field            dtype    meaning
===============  =======  ====================================================
codes            int32    ``[n_instr]`` op code of each instruction (registry)
arg_ptr, args    int32    CSR: input slots of instruction ``k`` are
                          ``args[arg_ptr[k]:arg_ptr[k+1]]``
out_ptr, outs    int32    CSR: output slots
ip_ptr, iparams  int64    CSR: integer parameters (``Op.encode()[0]``)
fp_ptr, fparams  float64  CSR: float parameters (``Op.encode()[1]``)
slot_dtype       int8     ``[n_slots]`` dtype code (``registry.DTYPE_CODES``)
slot_ndim        int8     ``[n_slots]`` rank
shape_ptr,       int64    CSR: static shape of each slot, ``-1`` = unknown
static_shape
slot_kind        int8     ``[n_slots]`` one of ``SLOT_INPUT SLOT_CONST
                          SLOT_SHARED SLOT_TEMP``
input_slots      int32    slots of the function's inputs, in call order
output_slots     int32    slots of the function's outputs, in order
const_slots      int32    slots holding constants; values in ``consts``
shared_slots     int32    slots holding shared variables (``shared``)
update_slots     int32    ``[n_updates]`` slot of the new value of
                          ``shared[update_targets[i]]``
update_targets   int32    index into ``shared_slots``
===============  =======  ====================================================

Python-side (not used by compiled sweeps): ``ops`` (the Op of each
instruction: the reference engine calls ``perform``; user ops run by
callback), ``consts`` (ndarrays), ``shared`` (SharedVariable objects),
``slot_names`` (for printing and error messages) and ``nodes`` (the Apply
of each instruction, or None after pickling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SLOT_INPUT, SLOT_CONST, SLOT_SHARED, SLOT_TEMP = 0, 1, 2, 3
KIND_NAMES = {SLOT_INPUT: "in", SLOT_CONST: "const", SLOT_SHARED: "shared", SLOT_TEMP: "tmp"}

_ARRAY_FIELDS = (
    ("codes", np.int32), ("arg_ptr", np.int32), ("args", np.int32), ("out_ptr", np.int32), ("outs", np.int32),
    ("ip_ptr", np.int32), ("iparams", np.int64), ("fp_ptr", np.int32), ("fparams", np.float64),
    ("slot_dtype", np.int8), ("slot_ndim", np.int8), ("shape_ptr", np.int32), ("static_shape", np.int64),
    ("slot_kind", np.int8), ("input_slots", np.int32), ("output_slots", np.int32), ("const_slots", np.int32),
    ("shared_slots", np.int32), ("update_slots", np.int32), ("update_targets", np.int32),
)


def csr_rows(ptr, flat, rows, remap=None):
    """``(ptr, flat)`` of the CSR rows ``rows`` (in that order) of ``(ptr, flat)``, each element passed through
    ``remap`` when given (sub-tapes and reordered tapes)."""
    parts = [flat[ptr[k]:ptr[k + 1]] for k in rows]
    if remap is not None:
        parts = [np.array([remap(x) for x in part], flat.dtype) for part in parts]
    p = np.zeros(len(rows) + 1, np.int64)
    p[1:] = np.cumsum([len(x) for x in parts])
    return p, (np.concatenate(parts) if parts else flat[:0])


@dataclass
class Tape:
    codes: np.ndarray
    arg_ptr: np.ndarray
    args: np.ndarray
    out_ptr: np.ndarray
    outs: np.ndarray
    ip_ptr: np.ndarray
    iparams: np.ndarray
    fp_ptr: np.ndarray
    fparams: np.ndarray
    slot_dtype: np.ndarray
    slot_ndim: np.ndarray
    shape_ptr: np.ndarray
    static_shape: np.ndarray
    slot_kind: np.ndarray
    input_slots: np.ndarray
    output_slots: np.ndarray
    const_slots: np.ndarray
    shared_slots: np.ndarray
    update_slots: np.ndarray
    update_targets: np.ndarray
    ops: list = field(default_factory=list)
    consts: list = field(default_factory=list)
    shared: list = field(default_factory=list)
    slot_names: list = field(default_factory=list)
    nodes: list = field(default_factory=list)

    def __post_init__(self):
        for name, dtype in _ARRAY_FIELDS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))

    # -- sizes
    def __len__(self):
        return len(self.codes)

    @property
    def n_slots(self):
        return len(self.slot_dtype)

    @property
    def nbytes(self):
        """Bytes held by the tape's arrays (constants included)."""
        return sum(getattr(self, n).nbytes for n, _ in _ARRAY_FIELDS) + sum(c.nbytes for c in self.consts)

    # -- per-instruction views
    def instr_args(self, k):
        return self.args[self.arg_ptr[k] : self.arg_ptr[k + 1]]

    def instr_outs(self, k):
        return self.outs[self.out_ptr[k] : self.out_ptr[k + 1]]

    def instr_iparams(self, k):
        return self.iparams[self.ip_ptr[k] : self.ip_ptr[k + 1]]

    def instr_fparams(self, k):
        return self.fparams[self.fp_ptr[k] : self.fp_ptr[k + 1]]

    def slot_shape(self, s):
        """Static shape of slot ``s`` as a tuple (None = unknown)."""
        return tuple(None if n < 0 else int(n) for n in self.static_shape[self.shape_ptr[s] : self.shape_ptr[s + 1]])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["nodes"] = [None] * len(self.codes)  # graphs are not part of a saved tape
        return state

    def __str__(self):
        """One instruction a line (``len(str(tape).splitlines()) == len(tape)``); :meth:`show` adds the inputs,
        constants, shared variables, outputs and updates."""
        from tapegrad.tape.show import format_tape

        return format_tape(self, full=False)

    def show(self):
        """The whole tape as text: inputs, constants and shared variables, then the instructions (as ``str``),
        then the outputs and updates."""
        from tapegrad.tape.show import format_tape

        return format_tape(self)

    def __repr__(self):
        return f"<Tape: {len(self)} instructions, {self.n_slots} slots, {self.nbytes} bytes>"

    def validate(self):
        from tapegrad.tape.show import validate_tape

        validate_tape(self)
        return self
