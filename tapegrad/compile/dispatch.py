"""Generate the CPU interpreter's dispatch chain from the op registry.

Numba cannot loop over a tuple of functions, so the interpreter body is a
literal ``if code == K:`` chain.  :func:`generate_sources` writes it from the
registry (elementwise rows: one scalar kernel and one block driver per op,
made from the row's ``expr`` string; other native ops: the entries of
:data:`NATIVE_OPS`) into three committed modules (:data:`GENERATED`):

* ``_generated_kernels.py``: the elementwise kernels, one function per group;
* ``_generated_tables.py``: ``NATIVE`` and ``GROUP``, the tables the engine
  plans with;
* ``_generated_dispatch.py``: the interpreter, ``interp`` (``cache=True``).

They are committed so that numba's disk cache keys on stable files. Numba
keys a cached function on its own file only, so the interpreter's file
carries a fingerprint of everything it inlines (the kernel modules, this
generator and the generated kernels). ``tools/gen_dispatch.py`` rewrites
them; ``tests/compile/test_dispatch_generated.py`` regenerates and diffs.

Which (op, dtype kind) pairs run natively is data too: the generated
``NATIVE`` maps each native code to the compute kinds it was compiled for
(0 float64, 1 float32, 2 int64, 3 bool; see ``kernels/core.py``).  Every
other instruction runs by callback (its NumPy ``perform``) between compiled
segments.
"""

from __future__ import annotations

import ast
import os

_HERE = os.path.dirname(__file__)
GENERATED = {part: os.path.join(_HERE, f"_generated_{part}.py") for part in ("kernels", "tables", "dispatch")}

F64, F32, I64, BOOL = 0, 1, 2, 3

# Non-elementwise ops with hand-written kernels: code name -> (kernel in kernels/core.py, compute kinds).
# The compute kind of these is the output's kind; the kernel gets the output arena then all arenas.
NATIVE_OPS = {
    "CAST": ("copy_convert", (F64, F32, I64, BOOL)),
    "BROADCAST_LIKE": ("copy_convert", (F64, F32, I64, BOOL)),
    "SUM_LIKE": ("sum_like", (F64, F32, I64)),
}

# int64 / bool compute kinds are compiled only for these rows (the rest of the int and bool
# elementwise work runs by callback): every (op, kind) pair costs compile time.
_INT_OK = {"neg", "abs", "sign", "sqr", "identity", "add", "sub", "mul", "int_div", "mod", "maximum", "minimum",
           "azmul", "switch", "clip"}


def elementwise_kinds(spec):
    """Compute kinds an elementwise row is compiled for."""
    if spec.out == "float":
        return (F64, F32)
    if spec.out == "bool":
        return (F64, F32, I64, BOOL)
    if spec.name == "switch":
        return (F64, F32, I64, BOOL)
    if spec.name in _INT_OK:
        return (F64, F32, I64)
    return (F64, F32)


def load_kinds(spec, cd):
    """Arena kind each input is loaded in (the compute kind; the switch condition is bool)."""
    if spec.name == "switch":
        return (BOOL, cd, cd)
    return (cd,) * spec.nin


def out_kind(spec, cd):
    return BOOL if spec.out == "bool" else cd


class _Scalarize(ast.NodeTransformer):
    """``exp(x0)`` -> ``s_exp(x0[i])``."""

    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        if node.id.startswith("x") and node.id[1:].isdigit():
            return ast.copy_location(
                ast.Subscript(value=ast.Name(node.id, ast.Load()), slice=ast.Name("i", ast.Load()), ctx=ast.Load()), node)
        if node.id in self.names:
            return ast.copy_location(ast.Name("s_" + node.id, ast.Load()), node)
        raise ValueError(f"elementwise expression uses unknown name {node.id!r}")


def scalar_source(expr, names):
    tree = ast.parse(expr, mode="eval")
    tree = _Scalarize(names).visit(tree)
    return ast.unparse(tree.body)


def _group_name(key):
    m, lks, ok = key
    return f"{m}_{''.join(map(str, lks))}_{ok}"


def _group_kernels(key, members, names):
    """One function with the loops of every op of the group: ``if c == CODE: for i ...``."""
    m = key[0]
    xs = ", ".join(f"x{j}" for j in range(m))
    L = ["@njit(**_J)", f"def _ew_{_group_name(key)}(c, n, {xs}, out):"]
    for i, (code, spec) in enumerate(members):
        kw = "if" if i == 0 else "elif"
        L.append(f"    {kw} c == {code}:  # {spec.name}")
        L.append("        for i in range(n):")
        L.append(f"            out[i] = {scalar_source(spec.expr, names)}")
    return "\n".join(L) + "\n"


def _group_branch(gid, key):
    """Interpreter branch of one group: direct slices of contiguous same-size inputs, block gathers of the
    others (broadcast, strided or another dtype), then the group's kernel on each block."""
    m, lks, ok = key
    g = _group_name(key)
    q = f"_{gid}"  # unique local names per branch (numba types each name once)
    L = [f"        {'if' if gid == 1 else 'elif'} g == {gid}:"]
    L.append(f"            o{q} = out_slot(meta, k, 0)")
    L.append(f"            n{q} = s_size(meta, o{q})")
    L.append(f"            oo{q} = s_off(meta, o{q})")
    for j in range(m):
        L.append(f"            s{j}{q} = arg_slot(meta, k, {j})")
        L.append(f"            f{j}{q} = s_off(meta, s{j}{q})")
        L.append(f"            d{j}{q} = is_direct(meta, s{j}{q}, o{q}, {lks[j]})")
    alld = " and ".join(f"d{j}{q}" for j in range(m))
    L.append(f"            bl{q} = max(n{q}, 1) if {alld} else BLOCK")
    L.append(f"            for b0{q} in range(0, n{q}, bl{q}):")
    L.append(f"                nb{q} = min(bl{q}, n{q} - b0{q})")
    for j in range(m):
        L.append(f"                if d{j}{q}:")
        L.append(f"                    v{j}{q} = A{lks[j]}[f{j}{q} + b0{q}:f{j}{q} + b0{q} + nb{q}]")
        L.append("                else:")
        L.append(f"                    gather(meta, s{j}{q}, o{q}, b0{q}, nb{q}, G{lks[j]}_{j}, A0, A1, A2, A3)")
        L.append(f"                    v{j}{q} = G{lks[j]}_{j}[:nb{q}]")
    vs = ", ".join(f"v{j}{q}" for j in range(m))
    L.append(f"                _ew_{g}(c, nb{q}, {vs}, A{ok}[oo{q} + b0{q}:oo{q} + b0{q} + nb{q}])")
    return "\n".join(L)


def _branch_native(name, code, fn, kinds):
    lines = [f"            elif c == {code}:  # {name}"]
    for i, cd in enumerate(kinds):
        kw = "if" if i == 0 else "elif"
        lines.append(f"                {kw} cd == {cd}:")
        lines.append(f"                    {fn}(meta, k, A{cd}, A0, A1, A2, A3)")
    lines.append("                else:")
    lines.append("                    return -1 - k")
    return "\n".join(lines)


_HEADER = '''"""GENERATED by tools/gen_dispatch.py from the op registry: do not edit.

{what}
Regenerate with ``python tools/gen_dispatch.py`` after adding an op.
"""
# fmt: off
# flake8: noqa
'''

_WHAT = {
    "kernels": ("The tier-0 CPU interpreter's elementwise kernels: one function per group of\n"
                "ops with the same inputs and kinds, a loop per op (see ``_generated_dispatch``)."),
    "tables": ("Which ops and compute kinds the tier-0 CPU interpreter runs natively, and the\n"
               "group branch of each elementwise (code, kind)."),
    "dispatch": ("The tier-0 CPU interpreter: one numba function, compiled once and cached on\n"
                 "disk, that runs instructions ``k0 .. k1-1`` of a tape over flat arenas."),
}

_IMPORTS = {
    "kernels": """from numba import njit

from tapegrad.compile.kernels.scalar import *  # s_exp, s_where, ...

_J = dict(error_model="numpy")
""",
    "tables": "",
    "dispatch": """import numpy as np
from numba import njit

{kernel_imports}
from tapegrad.compile.kernels.core import (BLOCK, H_CODES, H_ICD, H_IGRP, arg_slot, copy_convert, gather, is_direct,
                                           out_slot, s_off, s_size, sum_like)
""",
}


def generate_sources():
    """``{path: source}`` of the three generated modules (:data:`GENERATED`)."""
    from tapegrad.ops.elemwise import NUMPY_NAMESPACE, ScalarSpec
    from tapegrad.registry import all_codes

    names = set(NUMPY_NAMESPACE)
    groups = {}  # (nin, load kinds, out kind) -> [(code, spec)]
    native, group_of, others = {}, {}, []
    for name, code, entry in all_codes():
        if isinstance(entry, ScalarSpec):
            kinds = elementwise_kinds(entry)
            for cd in kinds:
                groups.setdefault((entry.nin, load_kinds(entry, cd), out_kind(entry, cd)), []).append((code, entry))
            native[code] = kinds
        elif name in NATIVE_OPS:
            fn, kinds = NATIVE_OPS[name]
            others.append(_branch_native(name, code, fn, kinds))
            native[code] = kinds
    kernels, gbranches, fns = [], [], []
    for gid, key in enumerate(sorted(groups), start=1):
        members = groups[key]
        for code, spec in members:
            group_of[(code, key[1][-1])] = gid
        kernels.append(f"\n# group {gid}: {key[0]} input(s), load kinds {key[1]}, output kind {key[2]}: "
                       + " ".join(s.name for _, s in members))
        kernels.append(_group_kernels(key, members, names))
        gbranches.append(_group_branch(gid, key))
        fns.append(f"_ew_{_group_name(key)}")
    tables = ["# code -> compute kinds compiled natively (0 float64, 1 float32, 2 int64, 3 bool)",
              "NATIVE = {\n" + "".join(f"    {c}: {native[c]!r},\n" for c in sorted(native)) + "}\n",
              "# (elementwise code, compute kind) -> group id (the interpreter's per-instruction branch)",
              "GROUP = {\n" + "".join(f"    {k!r}: {v},\n" for k, v in sorted(group_of.items())) + "}\n"]
    body = "\n".join(gbranches)
    other = "\n".join(others).replace("            elif", "            if", 1)
    if others:
        other += "\n            else:\n                return -1 - k"
    else:
        other = "            return -1 - k"
    src = {part: _HEADER.format(what=_WHAT[part]) + _IMPORTS[part] for part in GENERATED}
    src["kernels"] += "\n".join(kernels)
    src["tables"] += "\n" + "\n".join(tables)
    kernel_imports = "from tapegrad.compile._generated_kernels import (_J, " + ", ".join(fns) + ")"
    src["dispatch"] = src["dispatch"].replace("{kernel_imports}", _wrap(kernel_imports))
    # numba's cache keys on this file only: the fingerprint of what the interpreter inlines makes it change
    src["dispatch"] += f"# kernels fingerprint: {kernels_fingerprint(src['kernels'])}\n"
    src["dispatch"] += f'''

@njit(cache=True, **_J)
def interp(meta, fp, k0, k1, A0, A1, A2, A3):
    """Run instructions ``k0 .. k1-1``; 0 on success, ``-1 - k`` if instruction ``k`` has no kernel here."""
    hc = meta[H_CODES]
    hi = meta[H_ICD]
    hg = meta[H_IGRP]
    # gather scratch: one block per (dtype kind, input position)
    G0_0 = np.empty(BLOCK, np.float64); G0_1 = np.empty(BLOCK, np.float64); G0_2 = np.empty(BLOCK, np.float64)
    G1_0 = np.empty(BLOCK, np.float32); G1_1 = np.empty(BLOCK, np.float32); G1_2 = np.empty(BLOCK, np.float32)
    G2_0 = np.empty(BLOCK, np.int64); G2_1 = np.empty(BLOCK, np.int64); G2_2 = np.empty(BLOCK, np.int64)
    G3_0 = np.empty(BLOCK, np.bool_); G3_1 = np.empty(BLOCK, np.bool_); G3_2 = np.empty(BLOCK, np.bool_)
    for k in range(k0, k1):
        c = meta[hc + k]
        cd = meta[hi + k]
        g = meta[hg + k]
{body}
        else:
{other}
    return 0
'''
    return {GENERATED[part]: text for part, text in src.items()}


def _wrap(line, width=120):
    """A long ``from m import (a, b, ...)`` line, wrapped under its parenthesis."""
    pad = " " * (line.index("(") + 1)
    out, cur = [], ""
    for word in line.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = pad + word
        else:
            cur = f"{cur} {word}" if cur else word
    return "\n".join(out + [cur])


def kernels_fingerprint(generated_kernels):
    """Hash of the sources the interpreter inlines (the kernel modules, this generator and the generated kernels),
    so that editing any of them changes the interpreter's file and with it numba's cache key."""
    import hashlib

    h = hashlib.sha1()
    for name in ("kernels/core.py", "kernels/scalar.py", "dispatch.py"):
        with open(os.path.join(_HERE, name), "rb") as f:
            h.update(f.read())
    h.update(generated_kernels.encode())
    return h.hexdigest()[:16]


def write():
    """Write the generated modules; their paths."""
    out = generate_sources()
    for path, src in out.items():
        with open(path, "w") as f:
            f.write(src)
    return list(out)
