"""``scan()``, the builder users call (Aesara's signature): traces ``fn`` on placeholders, cuts sequences for their
taps, turns outputs with taps into windows of states, finds the closure, and builds the :class:`Scan` node.

Split out of :mod:`tapegrad.ops.scan` (the op and its derivatives), which re-exports :func:`scan`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from tapegrad.graph import Constant, TensorType, Variable, as_tensor, constant, toposort
from tapegrad.ops.scan import CHECKPOINTS, Scan, _is_int_scalar

__all__ = ["scan"]


def _taps_of(entry, what, default):
    """A dict entry's ``taps`` as a list of ints (Aesara accepts one int; None means the default)."""
    taps = entry.get("taps", None)
    if taps is None:
        return list(default)
    taps = [taps] if _is_int_scalar(taps) else list(taps)
    bad = [t for t in taps if not _is_int_scalar(t)]
    if bad:
        raise TypeError(f"scan: {what}: taps must be ints, got {bad[0]!r}")
    return [int(t) for t in taps]


def _tap_name(name, k):
    if name is None:
        return None
    return f"{name}[t]" if k == 0 else f"{name}[t{k:+d}]"


def _sequence_slices(entry, k, go_backwards):
    """``[(slice of the outer sequence, tap)]`` for sequence ``k``: Aesara's cut for taps, so that row ``t`` of
    the slice of tap ``d`` is ``x[t + d - min(taps, 0)]``; each slice reversed for ``go_backwards``."""
    if isinstance(entry, dict):
        if entry.get("input") is None:
            raise ValueError(f"scan: sequence {k} is a dict without 'input': {entry!r}")
        taps = _taps_of(entry, f"sequence {k}", [0])
        x = as_tensor(entry["input"])
    else:
        taps, x = [0], as_tensor(entry)
    if x.ndim < 1:
        raise ValueError(f"scan: sequence {k} ({x}) must have at least one dimension, got a scalar")
    lo, hi = min(taps + [0]), max(taps + [0])
    out = []
    for d in taps:
        start = d - lo
        cut = x if lo == hi == d else x[start:] if d == hi else x[start:d - hi]
        out.append((cut[::-1] if go_backwards else cut, d))
    return x, out


def _output_entry(entry, k):
    """``(initial, taps)`` of ``outputs_info[k]``; ``(None, None)`` for an output that is not fed back."""
    if not isinstance(entry, dict):
        return (None, None) if entry is None else (as_tensor(entry), [-1])
    if entry.get("return_steps") is not None:
        raise ValueError("scan: 'return_steps' is not supported (as in Aesara, index the output instead)")
    init = entry.get("initial")
    if init is None:
        if entry.get("taps") is not None:
            raise ValueError(f"scan: outputs_info[{k}] has taps but no initial state: {entry!r} (give 'initial')")
        return None, None
    taps = _taps_of(entry, f"outputs_info[{k}]", [-1])
    if len(set(taps)) != len(taps):
        raise ValueError(f"scan: outputs_info[{k}]: the taps must be different, got {taps}")
    if any(t >= 0 for t in taps):
        raise ValueError(f"scan: outputs_info[{k}]: the taps of an output must be < 0 (past steps), got {taps}")
    if not taps:                       # Aesara: no tap reads the past; the initial value is not used
        return None, None
    init = as_tensor(init)
    if taps != [-1]:
        depth = -min(taps)
        if init.ndim < 1:
            raise ValueError(
                f"scan: outputs_info[{k}] with taps={taps} needs an initial value with a leading axis of at "
                f"least {depth} past steps, got a scalar")
        if init.type.shape[0] is not None and init.type.shape[0] < depth:
            raise ValueError(
                f"scan: outputs_info[{k}] with taps={taps} needs {depth} past steps in its initial value, "
                f"got {init.type.shape[0]} (shape {init.type.shape})")
    return init, taps


def _listify(x):
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _placeholder(type_, name):
    return Variable(type_, name=name)


def _substitute_non_sequences(outs, outer, inner):
    """``outs`` with each (non-constant) outer non-sequence replaced by its inner placeholder."""
    from tapegrad.graph import clone_replace

    replace = {}
    for p, q in zip(outer, inner):
        if p is not q and id(p) not in replace:
            replace[id(p)] = (p, q)
    if not replace:
        return outs
    return clone_replace(outs, dict(replace.values()))


def _split_result(result):
    """``fn``'s return value -> (list of outputs, updates dict)."""
    updates = {}
    if isinstance(result, dict):
        return [], result
    if isinstance(result, (list, tuple)) and len(result) == 2 and any(isinstance(r, dict) for r in result):
        a, b = result
        outs, updates = (b, a) if isinstance(a, dict) else (a, b)
        result = outs
    if result is None:
        return [], updates
    if isinstance(result, (list, tuple)):
        return list(result), updates
    return [result], updates


def scan(fn, sequences=None, outputs_info=None, non_sequences=None, n_steps=None, truncate_gradient=-1,
         go_backwards=False, mode=None, name=None, profile=False, allow_gc=None, strict=False, return_list=False,
         checkpoint="all", snapshots=None, return_updates=True):
    """Loop ``fn`` over steps, Aesara's ``scan``.

    Parameters
    ----------
    fn : callable
        Called once, symbolically, with per-step arguments in this order: the
        slice ``seq[t]`` of each sequence, the previous value of each recurrent
        output (``outputs_info`` entries that are not None), each non-sequence.
        Returns one Variable or a list/tuple (one per ``outputs_info`` entry).
        Variables it uses without receiving them become implicit non-sequences.
    sequences : Variable or list
        Iterated along axis 0.  ``dict(input=x, taps=[d1, ..])``: ``fn`` gets
        ``x[t + d - min(taps, 0)]`` for each tap ``d``, in the order given
        (Aesara's cut: ``max(taps, 0) - min(taps, 0)`` fewer steps).
    outputs_info : None, Variable or list
        Per output: its initial value (fed back: ``fn`` gets the previous
        value), ``dict(initial=y0, taps=[-k1, ..])`` (``fn`` gets the values
        ``k1, ..`` steps back, in the order given; ``y0[K - k]`` is the value
        ``k`` steps before the first, ``K = max k``), or None (not fed back).
    non_sequences : Variable or list
        Passed unchanged to every step.  As in Aesara, ``fn`` receives these
        variables themselves (numbers and arrays after ``as_tensor``), and
        they are replaced by the loop's inner inputs once ``fn`` has returned,
        so ``tg.grad(y[i], x)`` inside ``fn`` with ``non_sequences=[y, x]``
        differentiates through the outer graph (Jacobian / Hessian by scan).
    n_steps : int or int scalar Variable, optional
        Number of steps; the first ``n_steps`` entries of every sequence are
        used.  Default: the length of the shortest sequence.
    go_backwards : bool
        Iterate the sequences from the end.
    strict : bool
        Raise if ``fn`` uses variables not passed in ``non_sequences``
        (expressions of constants only are allowed).
    return_list : bool
        Return a list even for one output.
    checkpoint : {"all", "binomial"}
        How the reverse sweep of the gradient keeps states: ``"all"`` stores
        every step's state; ``"binomial"`` stores ``snapshots`` states and
        recomputes the others (revolve schedule; memory O(snapshots) states,
        each step recomputed at most ``r`` times, ``C(snapshots + r, r) >= n``).
    snapshots : int, optional
        States kept by ``"binomial"`` (default ``ceil(log2 n_steps)``).
    return_updates : bool
        True (Aesara's convention): return ``(outputs, updates)``; False
        (PyTensor's newer option): return ``outputs`` only.
    truncate_gradient, mode, name, profile, allow_gc
        Aesara's; only ``truncate_gradient=-1`` is supported, the others are
        accepted and ignored (``name`` labels the op).

    Returns
    -------
    (outputs, updates)
        ``outputs``: one Variable (a single output) or a list, each stacked
        over steps with shape ``(n_steps,) + step shape``; ``outputs[-1]`` is
        the final value (computed by a loop that keeps only the last step).
        ``updates``: an empty ``OrderedDict`` (shared-variable updates inside
        ``fn`` are not supported).

    Examples
    --------
    >>> x0 = tg.dvector("x0"); W = tg.dmatrix("W")
    >>> traj, _ = tg.scan(lambda x, W: tg.tanh(W @ x), outputs_info=x0, non_sequences=W, n_steps=10)
    >>> loss = (traj[-1] ** 2).sum()
    """
    del mode, profile, allow_gc
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"scan: checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if snapshots is not None and (not _is_int_scalar(snapshots) or snapshots < 1):
        raise ValueError(f"scan: snapshots must be a positive int, got {snapshots!r}")
    if truncate_gradient != -1:
        raise NotImplementedError("scan: truncate_gradient is not supported (only -1, the full gradient)")
    if not callable(fn):
        raise TypeError(f"scan: fn must be callable, got {type(fn).__name__}")

    # -- sequences: one sliced sequence per tap (Aesara's cut), fn gets their rows in the taps' order
    seqs, x_in = [], []
    for k, entry in enumerate(_listify(sequences)):
        x, cuts = _sequence_slices(entry, k, go_backwards)
        for cut, d in cuts:
            seqs.append(cut)
            x_in.append(_placeholder(TensorType(x.dtype, x.type.shape[1:]), _tap_name(x.name, d)))

    # -- recurrent outputs: taps [-1] carry the state itself; other taps carry the last ``depth`` values as
    # ``depth`` states w_1 = y[t-1] .. w_depth = y[t-depth] (w_i' = w_{i-1}), fn gets w_{-d} for each tap d
    entries = None if outputs_info is None else [_output_entry(e, k) for k, e in enumerate(_listify(outputs_info))]
    windows = {}                     # user output j -> [(initial value of w_i, placeholder w_i)] for i = 1..depth
    s_args = []                      # fn's arguments for the recurrent outputs, in Aesara's order
    for j, (init, taps) in enumerate(entries or []):
        if init is None:
            continue
        if taps == [-1]:
            w = [(init, _placeholder(init.type, None if init.name is None else f"{init.name}[t-1]"))]
        else:
            depth = -min(taps)
            step_type = TensorType(init.dtype, init.type.shape[1:])
            w = [(init[depth - i], _placeholder(step_type, _tap_name(init.name, -i))) for i in range(1, depth + 1)]
        windows[j] = w
        s_args += [w[-d - 1][1] for d in taps]
    s_in = [ph for j in windows for _, ph in windows[j]]
    inits = None if entries is None else [None if j not in windows else windows[j][0][0] for j in range(len(entries))]

    explicit = [as_tensor(p) for p in _listify(non_sequences)]

    if n_steps is None:
        if not seqs:
            raise ValueError("scan: give n_steps when there are no sequences")
        n_var, given = constant(np.asarray(-1, dtype="int64")), False
    else:
        if _is_int_scalar(n_steps) and n_steps < 0:
            raise NotImplementedError(f"scan: negative n_steps ({n_steps}) is not supported; use go_backwards")
        from tapegrad.ops.shape import as_int_scalar

        n_var, given = as_int_scalar(n_steps, "scan", "n_steps"), True

    # -- trace fn on placeholders
    p_in = [p if isinstance(p, Constant) else _placeholder(p.type, p.name) for p in explicit]
    # fn gets the non-sequences themselves (Aesara's convention: so ``tg.grad(y[i], x)`` inside fn sees how the
    # outer ``y`` depends on the outer ``x``); the inner placeholders replace them once fn has returned
    result = fn(*x_in, *s_args, *explicit)
    outs, updates = _split_result(result)
    if updates:
        raise NotImplementedError("scan: updates of shared variables returned by fn are not supported")
    outs = [as_tensor(o) for o in outs]
    outs = _substitute_non_sequences(outs, explicit, p_in)
    if not outs:
        raise ValueError("scan: fn returned no outputs")
    if inits is None:
        inits = [None] * len(outs)
    if len(inits) != len(outs):
        raise ValueError(
            f"scan: fn returned {len(outs)} output(s) but outputs_info has {len(inits)} entr"
            f"{'y' if len(inits) == 1 else 'ies'}"
        )
    state_idx = [j for j, v in enumerate(inits) if v is not None]
    nit_idx = [j for j, v in enumerate(inits) if v is None]
    for k, j in enumerate(state_idx):
        o, init = outs[j], windows[j][0][1]
        if o.dtype != init.dtype or o.ndim != init.ndim:
            raise TypeError(
                f"scan: output {j} of fn has type {o.type} but its initial value in outputs_info ({init}) has "
                f"type {init.type}; they must have the same dtype and number of dimensions (cast one with "
                f".astype({o.dtype!r}) or .astype({init.dtype!r}))"
            )
        for axis, (a, b) in enumerate(zip(o.type.shape, init.type.shape)):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"scan: output {j} of fn has static shape {o.type.shape} but its initial value has "
                    f"{init.type.shape} (axis {axis})"
                )

    # -- closure: outer variables fn used without receiving them
    inner_in = x_in + s_in + [p for p in p_in if not isinstance(p, Constant)]
    # new states: w_1' = fn's output, w_i' = w_{i-1} (a window moves by one step)
    ordered = [outs[j] if i == 0 else windows[j][i - 1][1] for j in state_idx for i in range(len(windows[j]))]
    ordered += [outs[j] for j in nit_idx]
    depends = set(map(id, inner_in))
    nodes = toposort(ordered, blockers=inner_in)
    for node in nodes:
        if any(id(x) in depends for x in node.inputs):
            depends.update(id(o) for o in node.outputs)
    closure, seen = [], set()

    def add_closure(v):
        if id(v) not in seen and id(v) not in depends and not isinstance(v, Constant):
            seen.add(id(v))
            closure.append(v)

    for node in nodes:
        if any(id(o) in depends for o in node.outputs):
            for x in node.inputs:
                add_closure(x)
    for o in ordered:
        add_closure(o)
    if strict and closure:
        from tapegrad.graph import graph_inputs

        # expressions of constants only (e.g. ``2 - 1`` in a gradient built inside fn) are not missing inputs
        free = [v for v in graph_inputs(closure) if not isinstance(v, Constant)]
        if free:
            raise ValueError(f"scan: strict=True but fn uses {free[0]} without receiving it in non_sequences")
    from tapegrad.graph import clone_replace

    c_in = [_placeholder(c.type, c.name) for c in closure]
    inner_out = clone_replace(ordered, dict(zip(closure, c_in))) if closure else ordered

    outer_p = [p for p in explicit if not isinstance(p, Constant)]
    op = Scan(inner_in + c_in, inner_out, len(x_in), len(s_in), checkpoint=checkpoint, snapshots=snapshots,
              n_steps_given=given, name=name)
    res = op.make_node(n_var, *seqs, *[v for j in state_idx for v, _ in windows[j]], *outer_p, *closure).outputs
    first = [0]
    for j in state_idx:
        first.append(first[-1] + len(windows[j]))
    by_user = {j: res[first[k]] for k, j in enumerate(state_idx)}
    by_user.update({j: res[first[-1] + k] for k, j in enumerate(nit_idx)})
    for j, v in by_user.items():
        if outs[j].name is not None:
            v.name = outs[j].name
    outputs = [by_user[j] for j in range(len(outs))]
    if len(outputs) == 1 and not return_list:
        outputs = outputs[0]
    return (outputs, OrderedDict()) if return_updates else outputs
