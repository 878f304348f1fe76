"""Showing graphs: ``pprint`` (one infix expression) and ``debugprint`` (an indented tree)."""

from __future__ import annotations

import sys

import numpy as np

from tapegrad.graph import Constant, SharedVariable, Variable, toposort

_INFIX = {"add": "+", "sub": "-", "mul": "*", "true_div": "/", "int_div": "//", "mod": "%", "pow": "**",
          "eq": "==", "neq": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "logical_and": "&",
          "logical_or": "|"}
_PREFIX = {"neg": "-", "logical_not": "~"}


def _const_str(c):
    if c.name is not None:
        return c.name
    if getattr(c, "weak", None) is not None:
        return repr(c.weak)
    data = np.asarray(c.data)
    if data.ndim == 0:
        return repr(data.item())
    if data.size <= 6:
        return np.array2string(data, separator=", ").replace("\n", "")
    return f"Constant{{{c.type}}}"


def _leaf_str(v):
    if isinstance(v, Constant):
        return _const_str(v)
    if v.name is not None:
        return v.name
    return f"<{v.type}>"


def _op_str(op):
    """``cast{dtype=float32}`` for registered ops; the op's own ``str`` for user ops."""
    code = getattr(op, "code", None)
    if code is None:
        return str(op)
    props = ", ".join(f"{p}={getattr(op, p)}" for p in getattr(op, "__props__", ()))
    return f"{code.lower()}{{{props}}}" if props else code.lower()


def pprint(var):
    """An infix string for ``var``'s graph, e.g. ``(exp(x) * 2.0)``.

    Elementwise binary ops print infix and parenthesised, unary minus as
    ``-x``; other ops as ``op(args)`` with their parameters; multi-output ops
    with ``.i``.  Inputs print by name (unnamed ones by type).
    """
    if isinstance(var, (list, tuple)):
        return "\n".join(pprint(v) for v in var)
    memo = {}

    def show(v):
        return memo[id(v)] if id(v) in memo else _leaf_str(v)

    for node in toposort([var]):  # iterative: deep graphs do not hit the recursion limit
        op = node.op
        name = getattr(op, "name", None) if getattr(op, "code", None) is not None else None
        args = [show(x) for x in node.inputs]
        for v in node.outputs:
            if name in _INFIX and len(args) == 2:
                s = f"({args[0]} {_INFIX[name]} {args[1]})"
            elif name in _PREFIX and len(args) == 1:
                arg = args[0]
                s = f"{_PREFIX[name]}({arg})" if arg[:1] in "-~" else f"{_PREFIX[name]}{arg}"
            else:
                s = f"{name or _op_str(op)}({', '.join(args)})"
                if node.nout > 1:
                    s = f"{s}.{v.index}"
            memo[id(v)] = s
    return show(var)


def _type_str(v):
    t = v.type
    if getattr(t, "shape", None) is None:
        return str(t)
    dims = ",".join("?" if n is None else str(n) for n in t.shape)
    return f"{t.dtype}[{dims}]"


def _ids():
    n = 0
    while True:
        s, k = "", n
        while True:
            s = chr(ord("A") + k % 26) + s
            k = k // 26 - 1
            if k < 0:
                break
        yield s
        n += 1


def debugprint(var, file=None, depth=-1, print_type=True):
    """An indented tree of ``var``'s graph, Aesara style.

    Each line shows the op (or the variable), ``[id X]`` and the type; a
    node already shown prints only its id.  ``var`` may be a Variable, a list
    of them or a compiled Function (its outputs).

    Parameters
    ----------
    file : None, "str" or a text file
        None prints to stdout; ``"str"`` returns the text; a file gets it written.
    depth : int
        Maximum depth (-1: unlimited).
    """
    roots = getattr(var, "outputs", None) if not isinstance(var, (Variable, list, tuple)) else None
    if roots is None:
        roots = list(var) if isinstance(var, (list, tuple)) else [var]
    ids, gen, lines = {}, _ids(), []

    def ident(v):
        key = id(v.owner) if v.owner is not None else id(v)
        if key not in ids:
            ids[key] = next(gen)
        return ids[key], key

    done = set()
    stack = [(r, "", 0) for r in reversed(roots)]
    while stack:  # depth-first, children in order, without recursion
        v, prefix, level = stack.pop()
        tag, key = ident(v)
        typ = f" {_type_str(v)}" if print_type else ""
        if v.owner is None:
            kind = " (shared)" if isinstance(v, SharedVariable) else ""
            lines.append(f"{prefix}{_leaf_str(v)} [id {tag}]{typ}{kind}")
            continue
        node = v.owner
        out = f".{v.index}" if node.nout > 1 else ""
        name = f" '{v.name}'" if v.name is not None else ""
        lines.append(f"{prefix}{node.op}{out} [id {tag}]{typ}{name}")
        if key in done or level == depth:
            continue
        done.add(key)
        stack.extend((x, prefix + " |", level + 1) for x in reversed(node.inputs))

    text = "\n".join(lines) + "\n"
    if file == "str":
        return text
    stream = sys.stdout if file is None else file
    stream.write(text)
    return stream if file is not None else None
