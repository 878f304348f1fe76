"""Stable op codes and the per-code tables derived from the ops.

Every built-in op declares its code name and number next to its definition
(``ops/<family>.py``) through :func:`register`.  Numbers are stable: a tape
saved today means the same thing tomorrow.  Families own ranges:

====================  =========
elementwise           1-199
reductions            200-299
shape                 300-399
indexing              400-449
dot / matmul family   450-499
nn                    500-549
gradient modifiers    550-599
linalg                600-649
scan                  650-699
internal helpers      700-799
====================  =========
"""

from __future__ import annotations

DTYPE_CODES = {"float64": 0, "float32": 1, "int64": 2, "int32": 3, "bool": 4, "int16": 5, "int8": 6, "uint8": 7}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
CALLBACK = 0  # op code of an op without a code (user ops: the engine calls perform)

_BY_NAME: dict[str, int] = {}
_BY_CODE: dict[int, str] = {}
_ENTRIES: dict[int, object] = {}  # code -> Op class or elementwise ScalarSpec


class _OpCodes:
    """Attribute access to codes: ``OpCode.EXP``."""

    def __getattr__(self, name):
        try:
            return _BY_NAME[name]
        except KeyError:
            raise AttributeError(f"no op code named {name}") from None

    def __iter__(self):
        return iter(sorted(_BY_NAME.items(), key=lambda kv: kv[1]))

    def __len__(self):
        return len(_BY_NAME)


OpCode = _OpCodes()


def register(name: str, code: int, entry=None):
    """Reserve op code ``code`` under ``name`` for ``entry`` (an Op class or spec)."""
    if code in _BY_CODE and _BY_CODE[code] != name:
        raise ValueError(f"op code {code} of {name} is already taken by {_BY_CODE[code]}")
    if name in _BY_NAME and _BY_NAME[name] != code:
        raise ValueError(f"op name {name} already has code {_BY_NAME[name]}")
    _BY_NAME[name] = code
    _BY_CODE[code] = name
    _ENTRIES[code] = entry
    return entry


def registered(cls_or_spec=None, *, name: str, code: int):
    """Class decorator form of :func:`register` that also sets ``cls.code``."""

    def deco(obj):
        obj.code = name
        register(name, code, obj)
        return obj

    return deco if cls_or_spec is None else deco(cls_or_spec)


def code_of(op) -> int:
    """The integer op code of an op instance (``CALLBACK`` for user ops)."""
    name = getattr(op, "code", None)
    if name is None:
        return CALLBACK
    return _BY_NAME[name]


def name_of(code: int) -> str:
    return "CALLBACK" if code == CALLBACK else _BY_CODE[code]


def all_codes():
    """``[(name, code, entry)]`` for every registered op, by code."""
    import tapegrad.ops  # noqa: F401  (fills the registry)

    return [(_BY_CODE[c], c, _ENTRIES[c]) for c in sorted(_BY_CODE)]
