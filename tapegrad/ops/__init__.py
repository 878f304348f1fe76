"""Every built-in op, by family.  Importing this module fills the op registry.

``__all__`` is the union of the families' public names (submodules such as
``tapegrad.ops.linalg`` are not re-exported, so ``tg.linalg`` stays the
public linear-algebra namespace).
"""

from tapegrad.ops import alloc as _alloc
from tapegrad.ops import elemwise as _elemwise
from tapegrad.ops import index as _index
from tapegrad.ops import linalg as _linalg
from tapegrad.ops import modifiers as _modifiers
from tapegrad.ops import nn as _nn
from tapegrad.ops import reduce as _reduce
from tapegrad.ops import cumulative as _cumulative  # noqa: I001  (after reduce, which loads it)
from tapegrad.ops import shape as _shape
from tapegrad.ops import solve as _solve  # noqa: F401  (registers tg.linalg ops; not top-level names)
from tapegrad.ops.alloc import *  # noqa: F401,F403
from tapegrad.ops.broadcast import broadcast_like, sum_like  # noqa: F401
from tapegrad.ops.cumulative import *  # noqa: F401,F403
from tapegrad.ops.elemwise import *  # noqa: F401,F403
from tapegrad.ops.elemwise import ELEMWISE, Cast, Elemwise, ScalarSpec, azmul, cast, upcast  # noqa: F401
from tapegrad.ops.index import *  # noqa: F401,F403
from tapegrad.ops.linalg import *  # noqa: F401,F403
from tapegrad.ops.map import map_rows  # noqa: F401
from tapegrad.ops.modifiers import *  # noqa: F401,F403
from tapegrad.ops.nn import *  # noqa: F401,F403
from tapegrad.ops.reduce import *  # noqa: F401,F403
from tapegrad.ops.scan import scan  # noqa: F401
from tapegrad.ops.scan_views import foldl, foldr  # noqa: F401
from tapegrad.ops.shape import *  # noqa: F401,F403


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return list(names)


__all__ = sorted(
    set().union(*(_public(m) for m in (_alloc, _cumulative, _elemwise, _index, _linalg, _modifiers, _nn, _reduce, _shape)))
    | {"broadcast_like", "sum_like", "azmul", "cast", "map_rows", "scan", "foldl", "foldr"}
)
