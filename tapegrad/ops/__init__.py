"""Every built-in op, by family.  Importing this module fills the op registry."""

from tapegrad.ops.elemwise import *  # noqa: F401,F403
from tapegrad.ops.elemwise import ELEMWISE, Cast, Elemwise, ScalarSpec, azmul, cast, upcast  # noqa: F401
from tapegrad.ops.broadcast import broadcast_like, sum_like  # noqa: F401
from tapegrad.ops.reduce import *  # noqa: F401,F403
from tapegrad.ops.shape import *  # noqa: F401,F403
from tapegrad.ops.alloc import *  # noqa: F401,F403
from tapegrad.ops.index import *  # noqa: F401,F403
from tapegrad.ops.linalg import *  # noqa: F401,F403
from tapegrad.ops.nn import *  # noqa: F401,F403
from tapegrad.ops.modifiers import *  # noqa: F401,F403
from tapegrad.ops.map import map_rows  # noqa: F401
from tapegrad.ops.scan import scan  # noqa: F401
