"""``ifelse``: Aesara's scalar conditional, ``from tapegrad.ifelse import ifelse``.

``ifelse(condition, then_branch, else_branch)`` is ``then_branch`` where the 0-d ``condition`` is true and
``else_branch`` otherwise; the branches may be lists (one output per pair) and, unlike ``switch``, may have
different shapes (only dtype and rank must agree).  Derivatives follow Aesara's ``IfElse``: the gradient of the
taken branch is the output's gradient, that of the other branch is zeros (never a NaN or inf from the branch not
taken), the condition has none (disconnected); the tangent is the taken branch's tangent.

Unlike Aesara's, tapegrad's tapes are not lazy: both branches are computed and one is returned.  ``IfElse`` is
an op without an op code, so engines run it by callback (the cpu interpreter; the whole-tape program tier does
not take graphs that contain it) and derivatives take the symbolic route.
"""

from __future__ import annotations

import numpy as np

from tapegrad.graph import Constant, TensorType, Variable, as_tensor
from tapegrad.op import Apply, Op

__all__ = ["IfElse", "ifelse"]


class IfElse(Op):
    """``n_outs`` outputs: ``then_j`` if ``condition`` else ``else_j``.

    Inputs ``[condition, then_1 .. then_n, else_1 .. else_n]``; output ``j`` is a copy of the chosen input.
    """

    __props__ = ("n_outs", "name")
    callback_by_design = True   # run by ``perform`` on purpose: no "user op runs in Python" warning

    def __init__(self, n_outs, name=None):
        self.n_outs, self.name = int(n_outs), name

    def make_node(self, condition, *branches):
        c = as_tensor(condition)
        if c.ndim != 0:
            raise TypeError(f"ifelse: the condition must be a scalar (0-d), got {c.type}")
        if len(branches) != 2 * self.n_outs:
            raise TypeError(f"{self}: expected {2 * self.n_outs} branch inputs, got {len(branches)}")
        thens, elses = list(branches[: self.n_outs]), list(branches[self.n_outs:])
        outs = []
        for j, (a, b) in enumerate(zip(thens, elses)):
            shape = tuple(p if p == q else None for p, q in zip(a.type.shape, b.type.shape))
            outs.append(Variable(TensorType(a.dtype, shape), name=None if self.name is None else f"{self.name}[{j}]"))
        return Apply(self, [c] + thens + elses, outs)

    def perform(self, node, inputs, output_storage):
        take = bool(np.asarray(inputs[0]))
        chosen = inputs[1: 1 + self.n_outs] if take else inputs[1 + self.n_outs:]
        for j, v in enumerate(chosen):
            output_storage[j][0] = np.array(v, dtype=node.outputs[j].dtype, copy=True)

    def connection_pattern(self, node):
        n = self.n_outs
        return [[False] * n] + [[i % n == j for j in range(n)] for i in range(2 * n)]

    def L_op(self, inputs, outputs, output_grads):
        from tapegrad.op import disconnected_type
        from tapegrad.ops import zeros_like

        c, n = inputs[0], self.n_outs
        thens, elses = inputs[1: 1 + n], inputs[1 + n:]
        g_then = [_select(c, g, zeros_like(a, dtype=g.dtype)) for g, a in zip(output_grads, thens)]
        g_else = [_select(c, zeros_like(b, dtype=g.dtype), g) for g, b in zip(output_grads, elses)]
        return [disconnected_type()] + g_then + g_else

    def R_op(self, inputs, eval_points):
        from tapegrad.ops import zeros_like

        c, n = inputs[0], self.n_outs
        thens, elses = inputs[1: 1 + n], inputs[1 + n:]
        pt, pe = eval_points[1: 1 + n], eval_points[1 + n:]
        out = []
        for a, b, u, w in zip(thens, elses, pt, pe):
            if u is None and w is None:
                out.append(None)
                continue
            u = zeros_like(a) if u is None else u
            w = zeros_like(b) if w is None else w
            out.append(_select(c, u, w))
        return out


def _select(c, a, b):
    dtype = np.result_type(a.dtype, b.dtype)
    return IfElse(1)(c, a.astype(dtype) if a.dtype != dtype else a, b.astype(dtype) if b.dtype != dtype else b)


def _branch_pair(a, b, j):
    a, b = as_tensor(a), as_tensor(b)
    if a.dtype != b.dtype:
        # Aesara converts a branch to the other's type where that loses nothing (a constant); else TypeError
        if isinstance(b, Constant) and np.can_cast(b.data, a.dtype, casting="same_kind"):
            b = b.astype(a.dtype)
        elif isinstance(a, Constant) and np.can_cast(a.data, b.dtype, casting="same_kind"):
            a = a.astype(b.dtype)
        else:
            raise TypeError(
                f"ifelse: branch pair {j} has different dtypes ({a.type} and {b.type}); the two branches must have "
                f"the same type (cast one with .astype)")
    if a.ndim != b.ndim:
        raise TypeError(
            f"ifelse: branch pair {j} has different numbers of dimensions ({a.type} and {b.type}); the two "
            f"branches must have the same type")
    return a, b


def ifelse(condition, then_branch, else_branch, name=None):
    """``then_branch`` if the scalar ``condition`` is true, else ``else_branch`` (Aesara's ``ifelse``).

    Parameters
    ----------
    condition : scalar Variable or number
        Any dtype; nonzero is true.
    then_branch, else_branch : Variable or list of Variables
        The same number of each, pairwise of the same dtype and rank (shapes may differ).
    name : str, optional

    Returns
    -------
    Variable or list
        One output per pair (a list when the branches are lists).

    Both branches are computed (tapegrad's tapes are not lazy); gradients reach only the taken branch.

    >>> x = tg.dvector("x")
    >>> y = ifelse(tg.sum(x) > 0, tg.sqrt(x), -x)
    """
    listed = isinstance(then_branch, (list, tuple))
    thens = list(then_branch) if listed else [then_branch]
    elses = list(else_branch) if isinstance(else_branch, (list, tuple)) else [else_branch]
    if len(thens) != len(elses):
        raise ValueError(
            f"ifelse: then_branch has {len(thens)} output(s) but else_branch has {len(elses)}; they must match")
    if not thens:
        raise ValueError("ifelse: no branches given")
    pairs = [_branch_pair(a, b, j) for j, (a, b) in enumerate(zip(thens, elses))]
    outs = IfElse(len(pairs), name)(condition, *[a for a, _ in pairs], *[b for _, b in pairs], return_list=True)
    return outs if listed else outs[0]
