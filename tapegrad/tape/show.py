"""Printing and checking tapes.

``format_tape`` renders a tape like a jaxpr, one instruction a line::

    in     %0:f64[?] x
    const  %1:f64[] = 2.0
    %2:f64[?] = exp %0
    %3:f64[?] = mul %2 %1        # y
    out    %3

``validate_tape`` checks the structural invariants every engine relies on.
"""

from __future__ import annotations

import numpy as np

from tapegrad import registry
from tapegrad.tape.format import KIND_NAMES, SLOT_CONST, SLOT_INPUT, SLOT_SHARED, SLOT_TEMP

_SHORT = {"float64": "f64", "float32": "f32", "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
          "uint8": "u8", "bool": "bool"}


def slot_type_str(tape, s):
    """``f64[?,3]`` for slot ``s``."""
    dtype = registry.CODE_DTYPES.get(int(tape.slot_dtype[s]), "?")
    dims = ",".join("?" if n is None else str(n) for n in tape.slot_shape(s))
    return f"{_SHORT.get(dtype, dtype)}[{dims}]"


def _user_name(tape, s):
    name = tape.slot_names[s] if s < len(tape.slot_names) else None
    return None if name is None or name.startswith("%") else name


def _const_str(arr):
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return repr(arr.item())
    if arr.size <= 6:
        return np.array2string(arr, separator=", ").replace("\n", "")
    return f"<{arr.size} values>"


def _params(tape, k):
    op = tape.ops[k] if k < len(tape.ops) else None
    props = getattr(op, "__props__", ()) if op is not None else ()
    shown = [(p, getattr(op, p)) for p in props if p != "name"]
    if shown:
        return "[" + ", ".join(f"{p}={v}" for p, v in shown) + "]"
    ints, floats = tape.instr_iparams(k), tape.instr_fparams(k)
    if op is None and (len(ints) or len(floats)):
        parts = ([f"i={tuple(int(i) for i in ints)}"] if len(ints) else []) + (
            [f"f={tuple(float(f) for f in floats)}"] if len(floats) else [])
        return "[" + ", ".join(parts) + "]"
    return ""


def instr_name(tape, k):
    """Display name of instruction ``k``: the op code's name in lower case (user ops: the op)."""
    code = int(tape.codes[k])
    if code == registry.CALLBACK:
        op = tape.ops[k] if k < len(tape.ops) else None
        return f"callback<{op}>"
    try:
        return registry.name_of(code).lower()
    except KeyError:
        return f"code{code}"


def format_instr(tape, k):
    """One line: ``%5:f64[?,3] = mul %2 %4``."""
    outs = ", ".join(f"%{s}:{slot_type_str(tape, s)}" for s in tape.instr_outs(k))
    args = " ".join(f"%{s}" for s in tape.instr_args(k))
    line = f"{outs} = {instr_name(tape, k)}{_params(tape, k)} {args}".rstrip()
    names = [n for n in (_user_name(tape, s) for s in tape.instr_outs(k)) if n]
    if names:
        line = f"{line:<40s} # {', '.join(names)}"
    return line


def format_tape(tape, full=True):
    """The tape as text: inputs, constants, shared variables, instructions, outputs, updates; with ``full=False``
    the instructions only, one a line (``str(tape)``: as many lines as ``len(tape)``)."""
    if not full:
        return "\n".join(format_instr(tape, k) for k in range(len(tape)))
    lines = []
    for s in tape.input_slots:
        lines.append(f"in     %{s}:{slot_type_str(tape, s)} {tape.slot_names[s]}")
    for s, c in zip(tape.const_slots, tape.consts):
        name = _user_name(tape, s)
        lines.append(f"const  %{s}:{slot_type_str(tape, s)} = {_const_str(c)}" + (f"  # {name}" if name else ""))
    for s in tape.shared_slots:
        lines.append(f"shared %{s}:{slot_type_str(tape, s)} {tape.slot_names[s]}")
    for k in range(len(tape)):
        lines.append(format_instr(tape, k))
    lines.append("out    " + " ".join(f"%{s}" for s in tape.output_slots))
    for s, t in zip(tape.update_slots, tape.update_targets):
        target = tape.shared_slots[t]
        lines.append(f"update {tape.slot_names[target]} (%{target}) <- %{s}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- validation
def _check_csr(tape, ptr_name, data_name, n):
    ptr, data = getattr(tape, ptr_name), getattr(tape, data_name)
    if len(ptr) != n + 1:
        raise ValueError(f"{ptr_name} has length {len(ptr)}, expected {n + 1}")
    if n + 1 and ptr[0] != 0:
        raise ValueError(f"{ptr_name}[0] is {ptr[0]}, expected 0")
    if np.any(np.diff(ptr) < 0):
        raise ValueError(f"{ptr_name} is not non-decreasing")
    if ptr[-1] != len(data):
        raise ValueError(f"{ptr_name}[-1] is {ptr[-1]} but {data_name} has {len(data)} entries")


def validate_tape(tape):
    """Check the tape's invariants; raise ``ValueError`` describing the first problem.

    Checked: CSR pointer arrays, per-slot array lengths, slot indices in range,
    dtype and kind codes, the input/const/shared slot lists against the slot
    kinds and the Python-side lists, registered op codes, every temporary
    written exactly once and before it is read, outputs and updates readable.
    """
    n_instr, n_slots = len(tape.codes), len(tape.slot_dtype)
    for name in ("arg", "out", "ip", "fp"):
        data = {"arg": "args", "out": "outs", "ip": "iparams", "fp": "fparams"}[name]
        _check_csr(tape, f"{name}_ptr", data, n_instr)
    for name in ("slot_ndim", "slot_kind"):
        if len(getattr(tape, name)) != n_slots:
            raise ValueError(f"{name} has length {len(getattr(tape, name))}, expected {n_slots} (slots)")
    _check_csr(tape, "shape_ptr", "static_shape", n_slots)
    if np.any(np.diff(tape.shape_ptr) != tape.slot_ndim):
        s = int(np.nonzero(np.diff(tape.shape_ptr) != tape.slot_ndim)[0][0])
        raise ValueError(f"slot %{s}: static shape has {tape.shape_ptr[s + 1] - tape.shape_ptr[s]} entries "
                         f"but slot_ndim says {tape.slot_ndim[s]}")
    if len(tape.slot_names) != n_slots:
        raise ValueError(f"slot_names has {len(tape.slot_names)} entries, expected {n_slots}")
    for s in range(n_slots):
        if int(tape.slot_dtype[s]) not in registry.CODE_DTYPES:
            raise ValueError(f"slot %{s}: unknown dtype code {tape.slot_dtype[s]}")
        if int(tape.slot_kind[s]) not in KIND_NAMES:
            raise ValueError(f"slot %{s}: unknown slot kind {tape.slot_kind[s]}")
    for name in ("args", "outs", "input_slots", "output_slots", "const_slots", "shared_slots", "update_slots"):
        arr = getattr(tape, name)
        bad = arr[(arr < 0) | (arr >= n_slots)]
        if len(bad):
            raise ValueError(f"{name} refers to slot {bad[0]}, but the tape has {n_slots} slots")
    for name, kind in (("input_slots", SLOT_INPUT), ("const_slots", SLOT_CONST), ("shared_slots", SLOT_SHARED)):
        listed = list(getattr(tape, name))
        if len(set(listed)) != len(listed):
            raise ValueError(f"{name} lists a slot twice")
        actual = [s for s in range(n_slots) if tape.slot_kind[s] == kind]
        if sorted(listed) != actual:
            raise ValueError(f"{name} {listed} does not match the slots of kind {KIND_NAMES[kind]!r} {actual}")
    if len(tape.consts) != len(tape.const_slots):
        raise ValueError(f"{len(tape.consts)} constant values for {len(tape.const_slots)} constant slots")
    for s, c in zip(tape.const_slots, tape.consts):
        c = np.asarray(c)
        if c.dtype.name != registry.CODE_DTYPES[int(tape.slot_dtype[s])] or c.ndim != tape.slot_ndim[s]:
            raise ValueError(f"constant slot %{s} is {slot_type_str(tape, s)} but holds {c.dtype}{list(c.shape)}")
    if len(tape.shared) != len(tape.shared_slots):
        raise ValueError(f"{len(tape.shared)} shared variables for {len(tape.shared_slots)} shared slots")
    if tape.ops and len(tape.ops) != n_instr:
        raise ValueError(f"ops has {len(tape.ops)} entries for {n_instr} instructions")
    written = np.zeros(n_slots, dtype=bool)
    written[tape.slot_kind != SLOT_TEMP] = True
    for k in range(n_instr):
        code = int(tape.codes[k])
        if code == registry.CALLBACK:
            if not tape.ops or tape.ops[k] is None:
                raise ValueError(f"instruction {k}: a callback (user op) instruction needs its op in tape.ops")
        elif code not in registry._BY_CODE:
            raise ValueError(f"instruction {k}: op code {code} is not registered")
        for s in tape.instr_args(k):
            if not written[s]:
                raise ValueError(f"instruction {k} ({instr_name(tape, k)}) reads slot %{s} before it is written")
        for s in tape.instr_outs(k):
            if tape.slot_kind[s] != SLOT_TEMP:
                raise ValueError(f"instruction {k} ({instr_name(tape, k)}) writes slot %{s} of kind "
                                 f"{KIND_NAMES[int(tape.slot_kind[s])]!r}; only temporaries are written")
            if written[s]:
                raise ValueError(f"instruction {k} ({instr_name(tape, k)}) writes slot %{s} a second time")
            written[s] = True
    unwritten = np.nonzero(~written)[0]
    if len(unwritten):
        raise ValueError(f"temporary slot %{unwritten[0]} is never written")
    if len(tape.update_slots) != len(tape.update_targets):
        raise ValueError(f"{len(tape.update_slots)} update slots for {len(tape.update_targets)} update targets")
    t = tape.update_targets
    if len(t) and (t.min() < 0 or t.max() >= len(tape.shared_slots)):
        raise ValueError(f"update_targets {list(t)} out of range for {len(tape.shared_slots)} shared slots")
    if len(set(t.tolist())) != len(t):
        raise ValueError("a shared variable is updated twice")
    for s, ti in zip(tape.update_slots, t):
        target = tape.shared_slots[ti]
        if tape.slot_dtype[s] != tape.slot_dtype[target] or tape.slot_ndim[s] != tape.slot_ndim[target]:
            raise ValueError(f"update of %{target} reads %{s} of type {slot_type_str(tape, s)}, expected "
                             f"{slot_type_str(tape, target)}")
    return tape
