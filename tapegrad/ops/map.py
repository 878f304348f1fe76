"""``map_rows``: apply an inner graph to every row of some arrays.

``MapRows`` holds an inner graph whose inputs are *row* placeholders (one row
of each mapped array) and *closure* placeholders (values shared by every row).
Its outputs are the inner outputs stacked along a new leading axis.  Jacobians
and Hessians use it to evaluate one vector-Jacobian product per unit vector.

Both derivative rules are maps again: ``R_op`` maps the inner ``Rop`` over the
rows and their tangents; ``L_op`` maps the inner ``Lop`` and sums the closure
gradients over rows.
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Variable, ancestors, as_tensor, clone_replace, toposort
from tapegrad.op import Apply, NullType, Op, DisconnectedType, disconnected_type, make_output
from tapegrad.registry import registered

__all__ = ["map_rows"]


@registered(name="MAP_ROWS", code=660)
class MapRows(Op):
    """Stacked ``inner_outputs`` over the rows of the mapped inputs.

    Inputs: ``n_seq`` mapped arrays (rows along axis 0), then closure values.
    """

    kind = "general"

    def __init__(self, inner_inputs, inner_outputs, n_seq):
        self.inner_inputs = list(inner_inputs)
        self.inner_outputs = list(inner_outputs)
        self.n_seq = n_seq
        self._fn = None
        deps = []
        for out in self.inner_outputs:
            anc = set(map(id, ancestors([out])))
            deps.append([id(x) in anc for x in self.inner_inputs])
        self._deps = deps  # deps[j][i]: inner output j depends on inner input i

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)

    def __str__(self):
        return f"MapRows{{{len(self.inner_outputs)} outputs, {len(toposort(self.inner_outputs))} inner nodes}}"

    def encode(self):
        return (self.n_seq, len(self.inner_inputs), len(self.inner_outputs)), ()

    def make_node(self, *inputs):
        inputs = [as_tensor(x) for x in inputs]
        if len(inputs) != len(self.inner_inputs):
            raise TypeError(f"{self}: expected {len(self.inner_inputs)} inputs, got {len(inputs)}")
        n = None
        for k, (outer, inner) in enumerate(zip(inputs, self.inner_inputs)):
            if k < self.n_seq:
                if outer.ndim != inner.ndim + 1:
                    raise ValueError(f"map_rows: mapped input {outer} must have one more dimension than its row")
                n = n if n is not None else outer.type.shape[0]
            elif outer.ndim != inner.ndim:
                raise ValueError(f"map_rows: closure input {outer} has {outer.ndim} dims, expected {inner.ndim}")
        outs = [make_output(o.dtype, (n,) + o.type.shape) for o in self.inner_outputs]
        return Apply(self, inputs, outs)

    def _inner_fn(self, device="python"):
        """The inner graph compiled for ``device`` ("python" or "cpu"); the python engine when the
        CPU engine cannot be built (no numba)."""
        fns = self.__dict__.setdefault("_fns", {})
        fn = fns.get(device)
        if fn is None:
            from tapegrad.compile.function import function

            try:
                fn = function(self.inner_inputs, self.inner_outputs, device=device, on_unused_input="ignore")
            except Exception:  # noqa: BLE001 - no compiled engine here: the reference engine always works
                if device == "python":
                    raise
                fn = self._inner_fn("python")
            fns[device] = fn
        if device == "python":
            self._fn = fn
        return fn

    def _check_rows(self, seqs):
        n = len(seqs[0])
        for s in seqs:
            if len(s) != n:
                raise ValueError(f"map_rows: mapped inputs have different lengths {[len(t) for t in seqs]}")
        return n

    def perform(self, node, inputs, output_storage):
        seqs, closure = inputs[: self.n_seq], inputs[self.n_seq :]
        n = self._check_rows(seqs)
        fn = self._inner_fn()
        rows = [fn(*[s[i] for s in seqs], *closure) for i in range(n)]
        for j, (out, st) in enumerate(zip(node.outputs, output_storage)):
            if n:
                st[0] = np.stack([np.asarray(r[j]) for r in rows]).astype(out.dtype)
            else:
                shape = self._empty_shape(j, seqs, closure)
                st[0] = np.zeros((0,) + shape, dtype=out.dtype)

    def run_rows(self, node, inputs, outs, device="cpu"):
        """Like :meth:`perform`, writing row ``i`` of each output straight into ``outs[j][i]`` (arrays of the
        planned output shapes), with the inner graph compiled for ``device`` and run by its engine."""
        seqs, closure = inputs[: self.n_seq], inputs[self.n_seq :]
        n = self._check_rows(seqs)
        fn = self._inner_fn(device)
        engine = fn._engine
        single = len(self.inner_outputs) == 1
        for i in range(n):
            vals = [s[i] for s in seqs] + list(closure)
            if fn.tape.shared:
                r = fn(*vals)
                r = [r] if single else r
            else:
                r, _ = engine.run(vals, ())
            for o, y in zip(outs, r):
                y = np.asarray(y)
                if y.shape != o.shape[1:]:
                    raise ValueError(f"map_rows: row {i} of output has shape {y.shape}, the plan expected "
                                     f"{o.shape[1:]}")
                np.copyto(o[i, ...], y, casting="unsafe")  # o[i, ...]: a view even for 0-d rows

    def infer_shape(self, node, input_shapes):
        return self.infer_shape_values(node, input_shapes, [None] * len(input_shapes))

    def infer_shape_values(self, node, input_shapes, input_values):
        """Output shapes from input shapes and the closure values known before the run (``None`` = unknown;
        the CPU engine's plan knows shapes and constants)."""
        if not self.n_seq:
            raise NotImplementedError("map_rows: no mapped input")
        n = input_shapes[0][0]
        inner = [o.type.shape for o in self.inner_outputs]
        if all(None not in s for s in inner):
            return [(n,) + tuple(s) for s in inner]
        fn = self._inner_fn("cpu")
        infer = getattr(fn._engine, "_infer_shapes", None)
        if infer is None or fn.tape.shared:
            raise NotImplementedError("map_rows: the inner output shapes depend on values")
        rows = [tuple(s[1:]) for s in input_shapes[: self.n_seq]] + [tuple(s) for s in input_shapes[self.n_seq :]]
        fake = [np.broadcast_to(np.zeros((), x.dtype), s) for x, s in zip(self.inner_inputs, rows)]
        try:
            shapes = infer(fake, [], None, [None] * self.n_seq + list(input_values[self.n_seq :]))
        except Exception:  # noqa: BLE001 - dynamic inner shapes: the engine evaluates this op first
            raise NotImplementedError("map_rows: the inner output shapes depend on values") from None
        return [(n,) + tuple(shapes[int(s)]) for s in fn.tape.output_slots]

    def _empty_shape(self, j, seqs, closure):
        inner = self.inner_outputs[j].type.shape
        if all(s is not None for s in inner):
            return inner
        fake = [np.zeros(s.shape[1:], s.dtype) for s in seqs]
        try:
            return np.shape(self._inner_fn()(*fake, *closure)[j])
        except Exception:  # noqa: BLE001 - best effort for empty maps
            return tuple(0 if s is None else s for s in inner)

    def connection_pattern(self, node):
        return [[self._deps[j][i] for j in range(len(self.inner_outputs))] for i in range(len(self.inner_inputs))]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.gradient import seeded_grad
        from tapegrad.ops import sum as _sum
        from tapegrad.ops import zeros_like

        rows, clos = self.inner_inputs[: self.n_seq], self.inner_inputs[self.n_seq :]
        gys = [o.type() for o in self.inner_outputs]
        known = {}
        for o, gy in zip(self.inner_outputs, gys):
            known[o] = gy if o not in known else known[o] + gy
        inner_g = seeded_grad(
            known, self.inner_inputs, disconnected_inputs="ignore",
            return_disconnected="disconnected", null_gradients="return",
        )
        result = [None] * len(inputs)
        live = [(i, g) for i, g in enumerate(inner_g) if not isinstance(g.type, (DisconnectedType, NullType))]
        for i, g in enumerate(inner_g):
            if isinstance(g.type, NullType):
                result[i] = g
        if live:
            replaced = clone_replace([g for _, g in live], dict(zip(clos, inputs[self.n_seq :])))
            stacked = map_rows(list(rows) + gys, replaced, list(inputs[: self.n_seq]) + list(output_grads))
            for (i, _), s in zip(live, stacked):
                result[i] = s if i < self.n_seq else _sum(s, axis=0)
        pattern = self.connection_pattern(None)
        from tapegrad.config import config
        from tapegrad.graph import is_float_dtype

        for i, r in enumerate(result):
            if not is_float_dtype(inputs[i].dtype) and (r is None or not isinstance(r.type, (DisconnectedType,
                                                                                                NullType))):
                # integer inputs (shapes, indices) get a float zero gradient, as every op gives them
                result[i] = zeros_like(inputs[i], dtype=config.floatX) if any(pattern[i]) else disconnected_type()
            elif r is None:
                result[i] = zeros_like(inputs[i]) if any(pattern[i]) else disconnected_type()
        return result

    def R_op(self, inputs, eval_points):
        from tapegrad.gradient import Rop

        rows, clos = self.inner_inputs[: self.n_seq], self.inner_inputs[self.n_seq :]
        tangents_in = [None if u is None else x.type() for x, u in zip(self.inner_inputs, eval_points)]
        wrt = [x for x, t in zip(self.inner_inputs, tangents_in) if t is not None]
        pts = [t for t in tangents_in if t is not None]
        inner_t = Rop(self.inner_outputs, wrt, pts, disconnected_outputs="ignore", return_disconnected="none")
        live = [(j, t) for j, t in enumerate(inner_t) if t is not None]
        if not live:
            return [None] * len(self.inner_outputs)
        replace = dict(zip(clos, inputs[self.n_seq :]))
        for k in range(self.n_seq, len(self.inner_inputs)):
            if tangents_in[k] is not None:
                replace[tangents_in[k]] = eval_points[k]
        replaced = clone_replace([t for _, t in live], replace)
        row_t = [(tangents_in[k], eval_points[k]) for k in range(self.n_seq) if tangents_in[k] is not None]
        stacked = map_rows(
            list(rows) + [t for t, _ in row_t], replaced, list(inputs[: self.n_seq]) + [u for _, u in row_t]
        )
        out = [None] * len(self.inner_outputs)
        for (j, _), s in zip(live, stacked):
            out[j] = s
        return out


def map_rows(row_vars, outputs, seqs):
    """Stack ``outputs`` evaluated with ``row_vars[k]`` bound to each row of ``seqs[k]``.

    Any other variable the outputs use (inputs, constants, intermediate
    results that do not depend on the rows) is computed once, outside the
    map, and shared by every row.
    """
    row_vars, outputs, seqs = list(row_vars), list(outputs), [as_tensor(s) for s in seqs]
    row_ids = set(map(id, row_vars))
    depends = set(row_ids)
    for node in toposort(outputs, blockers=row_vars):
        if any(id(x) in depends for x in node.inputs):
            depends.update(id(o) for o in node.outputs)
    closure, seen = [], set()

    def add_closure(v):
        if id(v) not in seen and id(v) not in depends:
            seen.add(id(v))
            closure.append(v)

    for node in toposort(outputs, blockers=row_vars):
        if any(id(o) in depends for o in node.outputs):
            for x in node.inputs:
                add_closure(x)
    for o in outputs:
        add_closure(o)
    closure = [c for c in closure if not _is_constant(c)]
    placeholders = [Variable(c.type, name=c.name) for c in closure]
    inner_outputs = clone_replace(outputs, dict(zip(closure, placeholders)))
    op = MapRows(row_vars + placeholders, inner_outputs, len(row_vars))
    outs = op(*seqs, *closure)
    return outs if isinstance(outs, list) else [outs]


def _is_constant(v):
    from tapegrad.graph import Constant

    return isinstance(v, Constant)
