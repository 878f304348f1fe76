"""tapegrad: automatic differentiation on a flat tape, run by Numba sweeps.

Build graphs with an Aesara/PyTensor-style API, differentiate them with
``grad``/``Lop``/``Rop``/``jacobian``/``hessian``/``hessian_vector_product``,
compile them with ``function``.  See SPEC.md for the contract.
"""

from tapegrad.config import config
from tapegrad.graph import (
    Apply,
    Constant,
    SharedVariable,
    TensorType,
    Type,
    Variable,
    as_tensor,
    as_tensor_variable,
    bscalar,
    bvector,
    constant,
    dmatrix,
    dscalar,
    dtensor3,
    dvector,
    fmatrix,
    fscalar,
    ftensor3,
    fvector,
    imatrix,
    iscalar,
    itensor3,
    ivector,
    lmatrix,
    lscalar,
    lvector,
    matrix,
    scalar,
    shared,
    tensor,
    tensor3,
    tensor4,
    vector,
)
from tapegrad.op import Op
from tapegrad.ops import *  # noqa: F401,F403
from tapegrad.gradient import (
    DisconnectedInputError,
    DisconnectedType,
    Lop,
    NullType,
    NullTypeGradError,
    NullTypeGradNotImplementedError,
    Rop,
    consider_constant,
    disconnected_grad,
    disconnected_type,
    grad,
    grad_clip,
    grad_not_implemented,
    grad_scale,
    grad_undefined,
    hessian,
    hessian_vector_product,
    jacobian,
    subgraph_grad,
    undefined_grad,
    zero_grad,
)
from tapegrad import gradient, ifelse, printing  # noqa: F401  (tapegrad.ifelse.ifelse: Aesara's module layout)
from tapegrad.compile.function import Function, function  # noqa: F401
from tapegrad.testing import GradientError, numeric_grad, verify_grad  # noqa: F401
from tapegrad.sparse import sparse_hessian, sparse_jacobian  # noqa: F401
from tapegrad.ecosystem import scipy_objective  # noqa: F401
import tapegrad.linalg as linalg  # noqa: E402  (the public namespace, not tapegrad.ops.linalg)

from tapegrad.ops.scan_views import map, reduce  # noqa: F401,A004  (Aesara's tg.map / tg.reduce; scan shorthands)
from tapegrad.printing import debugprint as dprint, pprint as pp  # noqa: F401  (Aesara's top-level names)

__version__ = "0.1.0"

# ``from tapegrad import *`` gives every public name but ``map`` and ``reduce``, which would hide the builtins
__all__ = sorted(n for n in list(globals()) if not n.startswith("_") and n not in ("map", "reduce"))
