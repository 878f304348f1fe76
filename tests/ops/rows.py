"""The spec-row format shared by every op family's table (``tests/ops/specs_<family>.py``).

One :class:`Row` is one op applied to inputs of given shapes.  The runner in
``tests/ops/test_specs.py`` checks every row, in every dtype of ``dtypes``:

* value: ``build(*vars)`` compiled with ``device="python"`` equals
  ``reference(*arrays)`` (NumPy);
* grad vs central differences of a random projection ``<v, f(x)>``;
* Rop vs the finite-difference JVP;
* the exact adjoint identity ``<v, Rop(f, x, u)> == <Lop(f, x, v), u>``.

A registered op code with no row fails ``test_every_op_has_a_row``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Row:
    code: str
    """Op code name this row covers (``"EXP"``); a row may list more in ``also``."""
    build: Callable
    """``build(*input_variables) -> Variable`` (the graph under test)."""
    shapes: tuple
    """Run-time shape of each input, e.g. ``((3, 4), (4,))``."""
    reference: Callable | None = None
    """NumPy function of the input arrays giving the expected output (None: skip value check)."""
    domain: tuple = ((-2.0, 2.0),)
    """Per input: ``(low, high)`` for uniform floats, or ``callable(rng, shape, dtype) -> ndarray``.
    A single entry is used for every input."""
    static: tuple | None = None
    """Static shape of each symbolic input (default: every length unknown)."""
    int_inputs: tuple = ()
    """Indices of inputs that are int64 (indices, repeats); their domain gives their values."""
    wrt: tuple | None = None
    """Inputs to differentiate (default: every float input)."""
    dtypes: tuple = ("float64", "float32")
    differentiable: bool = True
    """False for ops whose output is integer/bool: only the value is checked (and grad == 0)."""
    rtol: float | None = None
    """Override the finite-difference tolerance (relative)."""
    id: str = ""
    also: tuple = field(default_factory=tuple)
    """Other op codes this row exercises (counted by the coverage test)."""
