"""``tg.function``: compile a graph into a callable :class:`Function` (SPEC section 3)."""

from __future__ import annotations

import importlib
import inspect
import os
import warnings

import numpy as np

from tapegrad.compile import gc_paused
from tapegrad.config import config
from tapegrad.graph import TensorType, Variable, ancestors, as_tensor, clone_replace
from tapegrad.tape.build import build_tape, check_computable, normalize_updates

_MISSING = object()
DEVICES = ("python", "cpu", "cuda")
TIERS = (None, "interp", "fused", "program")
ROUTES = ("symbolic", "sweep", "auto")
_ENGINES = {"cpu": ("tapegrad.compile.cpu", "CPUEngine"), "cuda": ("tapegrad.compile.cuda", "CUDAEngine")}


def _label(v):
    return v.name if v.name is not None else repr(v)


def _engine_class(device):
    if device == "python":
        from tapegrad.compile.reference import ReferenceEngine

        return ReferenceEngine
    if device not in _ENGINES:
        raise ValueError(f"unknown device {device!r}; valid devices are {', '.join(map(repr, DEVICES))}")
    module, cls = _ENGINES[device]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(
            f"device={device!r} needs the {module} engine, which is not available ({e}); "
            "use device='python' for the NumPy reference engine"
        ) from e
    try:
        return getattr(mod, cls)
    except AttributeError:
        raise RuntimeError(f"device={device!r}: {module} does not define {cls}") from None


def _make_engine(cls, tape, **options):
    """``cls(tape, **options)``, passing only the options its constructor accepts."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    accepts_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if v is not None and (accepts_all or k in params)}
    engine = cls(tape, **kwargs)
    if options.get("nan_guard") and "nan_guard" not in kwargs:
        engine = _NanGuard(engine, tape)
    return engine


class _NanGuard:
    """``nan_guard`` for engines without a per-instruction check of their own.

    The engine runs at full speed; when an output or update holds NaN/inf, the
    call is replayed on the reference engine with its per-instruction guard,
    which raises ``FloatingPointError`` naming the first op that turned finite
    inputs into NaN/inf (forward code and the derivative code in the tape
    alike).  A NaN that never reaches an output is not reported on this path.
    """

    def __init__(self, engine, tape):
        from tapegrad.compile.reference import ReferenceEngine

        self.engine = engine
        self.reference = ReferenceEngine(tape, nan_guard=True)

    def run(self, input_arrays, shared_arrays, **kwargs):
        outputs, updates = self.engine.run(input_arrays, shared_arrays, **kwargs)
        if any(_non_finite(v) for v in list(outputs) + list(updates)):
            self.reference.run([_host(v) for v in input_arrays], [_host(v) for v in shared_arrays])
        return outputs, updates

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _host(v):
    return v.copy_to_host() if hasattr(v, "copy_to_host") else v


def _non_finite(v):
    v = _host(v)
    return np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()


def _as_list(outputs):
    if isinstance(outputs, (list, tuple)):
        return list(outputs), False
    return [outputs], True


def _normalize_givens(givens):
    if givens is None:
        return {}
    pairs = list(givens.items()) if isinstance(givens, dict) else list(givens)
    out = {}
    for old, new in pairs:
        if not isinstance(old, Variable):
            raise TypeError(f"givens keys must be Variables, got {old!r}")
        new = as_tensor(new)
        if isinstance(old.type, TensorType) and (new.dtype != old.dtype or new.ndim != old.ndim):
            raise TypeError(
                f"givens: {_label(old)} ({old.type}) cannot be replaced by {_label(new)} ({new.type}); "
                "dtype and ndim must match"
            )
        out[old] = new
    return out


class Function:
    """A compiled graph: call it with one value per input.

    Attributes
    ----------
    inputs, outputs : list of Variable
    tape : Tape
        The flattened program (``print(f.tape)``).
    name, device : str
    route : str
        How the derivative outputs were computed: "symbolic" (graphs from each op's L_op/R_op), "sweep"
        (every derivative output by the sweep route over the primal tape) or "mixed" (some of each;
        ``route_notes`` maps the output positions that took the symbolic route to the reason).
    """

    def __init__(self, inputs, outputs, tape, single, device, name=None, tier=None, nan_guard=None,
                 route="symbolic", route_notes=None, allow_input_downcast=None):
        self.allow_input_downcast = allow_input_downcast
        self.route = route
        self.route_notes = dict(route_notes or {})
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.tape = tape
        self.single = single
        self.device = device
        self.name = name
        self.tier = tier
        self.nan_guard = nan_guard
        self._input_types = [x.type for x in self.inputs]
        self._input_names = [_label(x) for x in self.inputs]
        self._engine = _make_engine(_engine_class(device), tape, nan_guard=nan_guard, tier=tier)
        self._fast = None  # set once the program tier runs this function: see __call__

    # -- calling
    def _filter_args(self, args, kwargs):
        n = len(self._input_types)
        if kwargs:
            if len(args) > n:
                raise TypeError(self._count_message(len(args) + len(kwargs)))
            filled = list(args) + [_MISSING] * (n - len(args))
            for key, value in kwargs.items():
                if key not in self._input_names:
                    raise TypeError(f"{self._what()} got an unexpected keyword argument {key!r}")
                i = self._input_names.index(key)
                if filled[i] is not _MISSING:
                    raise TypeError(f"{self._what()} got multiple values for input {key!r}")
                filled[i] = value
            missing = [self._input_names[i] for i, a in enumerate(filled) if a is _MISSING]
            if missing:
                raise TypeError(f"{self._what()} is missing a value for input(s) {', '.join(missing)}")
            args = filled
        if len(args) != n:
            raise TypeError(self._count_message(len(args)))
        out = []
        for i, (value, typ, name) in enumerate(zip(args, self._input_types, self._input_names)):
            if self.device == "cuda" and hasattr(value, "__cuda_array_interface__"):
                out.append(_check_device_array(value, typ, f"input {i} ({name})"))
            else:
                out.append(typ.filter(value, name=f"input {i} ({name})", allow_downcast=self.allow_input_downcast))
        return out

    def _count_message(self, got):
        names = ", ".join(self._input_names) or "none"
        return f"{self._what()} expects {len(self._input_names)} input(s) ({names}), got {got}"

    def _what(self):
        return f"function {self.name!r}" if self.name else "the function"

    def __call__(self, *args, return_device=False, **kwargs):
        fast = self._fast
        if fast is not None and not kwargs:
            try:
                res = fast(args)
            except (IndexError, np.linalg.LinAlgError):
                res = None  # raised by the generated program: the checked path below raises the reference message
            if res is not None:
                return res[0] if self.single else list(res)
        values = self._filter_args(args, kwargs)
        shared = [sv.get_value(borrow=True) for sv in self.tape.shared]
        if return_device and self.device == "cuda":
            outputs, updates = self._engine.run(values, shared, return_device=True)
        else:
            outputs, updates = self._engine.run(values, shared)
        if len(updates):
            # everything was read and computed: now write, all or nothing
            targets = [self.tape.shared[t] for t in self.tape.update_targets]
            checked = [sv.type.filter(v, name=f"update of {_label(sv)}") for sv, v in zip(targets, updates)]
            for sv, v in zip(targets, checked):
                sv.set_value(v, borrow=True)
        outputs = list(outputs)
        if (self._fast is None and not self.tape.shared and not isinstance(self._engine, _NanGuard)
                and getattr(self._engine, "fast", None) is not None):
            self._fast = self._engine.fast.fast_call()  # the program tier is ready: later calls skip the checks
        return outputs[0] if self.single else outputs

    # -- numba interop
    @property
    def njit(self):
        """An ``@njit``-callable entry for inputs shaped like the last call's (see :meth:`as_njit`)."""
        return self.as_njit()

    def as_njit(self, *example_args):
        """A Numba function ``entry(*inputs) -> tuple of outputs`` that user ``@njit`` code can call in a loop
        (an integrator, an optimizer) without returning to Python.

        It is this function's whole-tape program (the ``"program"`` tier) for one input-shape signature: that
        of ``example_args`` (which are evaluated once), else of the last call.  Inputs must be C-contiguous
        arrays of the input dtypes and exactly those shapes (a ValueError otherwise); 0-d outputs come back as
        scalars, the others as fresh arrays.  Needs ``device="cpu"``, no shared variables, and a tape whose
        every instruction has a program template (``NotImplementedError`` names the one that has none).
        """
        if self.device != "cpu":
            raise ValueError(f"njit entry of {self._what()}: needs device='cpu', this function runs on "
                             f"{self.device!r}")
        if self.tape.shared:
            raise NotImplementedError(f"njit entry of {self._what()}: functions with shared variables or updates have no "
                                      "njit entry (updates are applied by the Python wrapper)")
        engine = self._engine.engine if isinstance(self._engine, _NanGuard) else self._engine
        if example_args:
            self(*example_args)
        plan = getattr(engine, "_last_plan", None)
        if plan is None:
            raise ValueError(f"njit entry of {self._what()}: call the function once first, or pass example arguments to "
                             "as_njit(...), so the input shapes are known")
        from tapegrad.compile import program as _program

        if len(engine.tape) > _program.MAX_INSTRUCTIONS:
            raise NotImplementedError(f"njit entry of {self._what()}: its tape has {len(engine.tape)} instructions, more "
                                      f"than one program takes ({_program.MAX_INSTRUCTIONS}); it runs as a chain of "
                                      "programs, which has no single njit entry")
        shapes = tuple(tuple(plan.shapes[s]) for s in self.tape.input_slots)
        cache = self.__dict__.setdefault("_njit_entries", {})
        entry = cache.get(shapes)
        if entry is None:
            from tapegrad.compile.program import EngineProgram, njit_entry

            prog = EngineProgram.make(engine, plan, background=False)
            if prog is None:
                raise NotImplementedError(f"njit entry of {self._what()}: the tape has an instruction without a program "
                                          f"template ({engine.program_error})")
            entry = cache[shapes] = njit_entry(prog, self._input_names)
        return entry

    # -- inspection
    def __repr__(self):
        ins = ", ".join(self._input_names)
        outs = ", ".join(_label(o) for o in self.outputs)
        name = f" {self.name!r}" if self.name else ""
        return f"<Function{name} ({ins}) -> ({outs}) on {self.device!r}: {len(self.tape)} instructions>"

    # -- pickling: the tape and light stand-ins for the graph ends
    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_engine", "_fast", "_njit_entries")}
        state["inputs"] = [_standin(x) for x in self.inputs]
        state["outputs"] = [_standin(o) for o in self.outputs]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fast = None
        self._engine = _make_engine(_engine_class(self.device), self.tape, nan_guard=self.nan_guard, tier=self.tier)


def _standin(v):
    """``v`` itself when it is a graph leaf, else a fresh leaf of the same type and name."""
    if v.owner is None:
        return v
    return Variable(v.type, name=v.name)


def _check_device_array(value, typ, name):
    dtype, shape = np.dtype(value.dtype), tuple(value.shape)
    if dtype.name != typ.dtype:
        raise TypeError(f"{name}: expected dtype {typ.dtype}, got a device array of {dtype.name}")
    if len(shape) != typ.ndim:
        raise TypeError(f"{name}: expected {typ.ndim} dimension(s), got a device array of shape {shape}")
    for axis, (s, t) in enumerate(zip(typ.shape, shape)):
        if s is not None and s != t:
            raise ValueError(f"{name}: static length {s} on axis {axis}, got a device array of shape {shape}")
    return value


def _resolve_route(route):
    if route is None:
        route = os.environ.get("TAPEGRAD_ROUTE") or "auto"
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(map(repr, ROUTES))}, got {route!r}")
    return route


AESARA_MODES = ("FAST_RUN", "FAST_COMPILE", "DebugMode", "NanGuardMode", "JAX", "NUMBA", "C", "C|PY", "PY", "Mode")


def function(inputs, outputs=None, updates=None, givens=None, device=None, on_unused_input="raise", name=None,
             tier=None, nan_guard=None, route=None, mode=None, allow_input_downcast=None, no_default_updates=False,
             accept_inplace=False, rebuild_strict=True, profile=None):
    """Compile ``outputs`` as a function of ``inputs``.

    Parameters
    ----------
    inputs : list of Variable
        Arguments in call order.
    outputs : Variable or list/tuple of Variable, or None
        A single Variable gives one array per call, a list gives a list; None (a function run for its
        ``updates``) gives an empty list.
    updates : list of (SharedVariable, Variable) pairs, or dict
        New values of shared variables, applied after the outputs are
        computed (all read before any is written).
    givens : dict or pairs
        Variables replaced (by Variables or values) before compiling.
    device : {"python", "cpu", "cuda"} or None
        None means ``tg.config.device``.
    on_unused_input : {"raise", "warn", "ignore"}
        What to do when an input does not affect any output or update.
    name : str, optional
    tier : {None, "interp", "fused", "program"}
        Execution tier for the CPU engine.  None: start on the interpreter, then move up on its own (after a
        few calls, a whole-tape program or fused loops compiled in the background).  "interp" pins the
        interpreter; "fused" compiles the fused elementwise loops now; "program" compiles the whole tape
        into one Numba function now (falling back to the interpreter when the tape has an instruction the
        program tier has no template for).
    nan_guard : bool, optional
        Raise when an instruction turns finite values into NaN/inf
        (default ``tg.config.nan_guard``).
    route : {"symbolic", "sweep", "auto"} or None
        How outputs returned by ``grad``/``Lop``/``Rop``/``hessian_vector_product`` are computed
        (docs/sweep.md).  "auto" (the default; None reads the ``TAPEGRAD_ROUTE`` environment variable): by
        the sweep where it applies, the symbolic route elsewhere.  "symbolic": from their graphs.  "sweep":
        by adjoint/tangent sweeps over the primal tape; a derivative output the sweep cannot reproduce
        raises ``ValueError`` saying why.  ``Function.route`` says which route was taken.
    mode : str, optional
        Aesara's keyword: a device name (``"cpu"``, ``"python"``, ``"cuda"``) selects that device (when
        ``device`` is not given); Aesara's mode names (``"FAST_RUN"``, ``"FAST_COMPILE"``, ``"NanGuardMode"``
        ...) are accepted, and ``"NanGuardMode"`` turns ``nan_guard`` on.
    allow_input_downcast : bool, optional
        True: inputs of another numeric dtype are cast (``astype``) even when that loses precision, as in
        Aesara.  None/False: only casts that lose nothing (see ``TensorType.filter``).
    no_default_updates, accept_inplace, rebuild_strict, profile
        Aesara's keywords, accepted for ported code; they change nothing here (tapegrad has no default updates
        and no in-place graphs, rebuilds are strict, and there is no profiler).

    Returns
    -------
    Function
    """
    if mode is not None:
        if not isinstance(mode, str) or (mode not in DEVICES and mode not in AESARA_MODES):
            raise ValueError(f"mode must be a device name ({', '.join(map(repr, DEVICES))}) or one of Aesara's "
                             f"mode names ({', '.join(AESARA_MODES)}), got {mode!r}")
        if mode in DEVICES and device is None:
            device = mode
        if mode == "NanGuardMode" and nan_guard is None:
            nan_guard = True
    device = config.device if device is None else device
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid devices are {', '.join(map(repr, DEVICES))}")
    if on_unused_input not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_unused_input must be 'raise', 'warn' or 'ignore', got {on_unused_input!r}")
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    if nan_guard is None:
        nan_guard = config.nan_guard
    route = _resolve_route(route)
    if isinstance(inputs, Variable):
        raise TypeError("inputs must be a list of Variables (wrap a single input in a list)")
    inputs = list(inputs)
    outs, single = ([], False) if outputs is None else _as_list(outputs)
    outs = [o if isinstance(o, Variable) else as_tensor(o) for o in outs]
    upd = normalize_updates(updates)
    given = _normalize_givens(givens)
    outs0, upd0 = outs, upd  # as given: the gradient provenance (route="sweep"/"auto") is on these
    if given:
        exprs = clone_replace(outs + [e for _, e in upd], given)
        outs, upd = exprs[: len(outs)], [(t, e) for (t, _), e in zip(upd, exprs[len(outs) :])]
    for i, o in enumerate(outs):
        check_computable(o, f"output {i}")
    tape, taken, notes = None, "symbolic", {}
    with gc_paused():  # building allocates many small objects; the collector would rescan the whole graph
        if route != "symbolic":
            from tapegrad.tape.sweep import compile_outputs

            tape, taken, notes = compile_outputs(inputs, outs0, upd0, given, strict=route == "sweep")
        if tape is None:
            tape = build_tape(inputs, outs, upd)
    _check_unused(inputs, outs + [e for _, e in upd], on_unused_input, given=outs0 + [e for _, e in upd0])
    return Function(inputs, outs, tape, single, device, name=name, tier=tier, nan_guard=nan_guard,
                    route=taken, route_notes=notes, allow_input_downcast=allow_input_downcast)


def _check_unused(inputs, roots, policy, given=()):
    """Raise or warn about inputs no root depends on.  A Jacobian-vector product uses the points it was taken
    at (``Rop``'s ``rop_points`` tag, on the roots' graph or on ``given``, the outputs before ``givens``), as
    Aesara's Rop graph does, even where its value does not read them (``Rop(dot(x, W), W, V)`` is
    ``dot(x, V)``)."""
    if policy == "ignore" or not inputs:
        return
    found = ancestors(roots, blockers=inputs)
    used = {id(v) for v in found}
    tagged = found if not given else found + ancestors(list(given), blockers=inputs)
    used |= {id(p) for v in tagged for p in v.tag.get("rop_points", ())}
    for i, x in enumerate(inputs):
        if isinstance(x, Variable) and id(x) not in used:
            msg = (
                f"input {i} ({_label(x)}) is not used to compute any output or update; "
                "pass on_unused_input='warn' or 'ignore' to allow this"
            )
            if policy == "raise":
                raise ValueError(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- Variable.eval
def eval_variable(var, givens=None):
    """Value of ``var`` with ``givens`` (dict Variable -> value); compiled functions are cached."""
    givens = dict(givens or {})
    keys = list(givens)
    for k in keys:
        if not isinstance(k, Variable):
            raise TypeError(f"eval: givens keys must be Variables, got {k!r}")
    device = config.device
    cache_key = (device, config.nan_guard, tuple(id(k) for k in keys))
    per_var = var.tag.setdefault("eval_cache", {})  # lives and dies with the variable
    hit = per_var.get(cache_key)
    if hit is not None and all(a is b for a, b in zip(hit[0], keys)):
        fn = hit[1]
    else:
        fn = function(keys, var, device=device, on_unused_input="ignore")
        per_var[cache_key] = (tuple(keys), fn)
    return fn(*[givens[k] for k in keys])


__all__ = ["Function", "function", "eval_variable", "DEVICES"]
