"""pprint and debugprint."""

import io

import numpy as np

from tapegrad.compile.function import function
from tapegrad.graph import constant, shared, vector
from tapegrad.ops import cast, exp, neg, switch
from tapegrad.printing import debugprint, pprint


def test_pprint_infix():
    x = vector("x")
    assert pprint(exp(x) * 2.0) == "(exp(x) * 2.0)"
    y = vector("y")
    assert pprint((x + y) / (x - 1)) == "((x + y) / (x - 1))"
    assert pprint(neg(neg(x))) == "-(-x)"
    assert pprint(x > y) == "(x > y)"
    assert pprint(switch(x > 0, x, y)) == "switch((x > 0), x, y)"
    assert pprint(cast(x, "float32")) == "cast{dtype=float32}(x)"
    assert pprint(x * constant(np.array([1.0, 2.0]))) == "(x * [1., 2.])"
    assert pprint(vector() + 1.0) == "(<TensorType(float64, (?,))> + 1.0)"


def test_debugprint_tree():
    x = vector("x")
    e = exp(x)
    y = e * 2.0 + e
    y.name = "y"
    text = debugprint(y, file="str")
    assert text.splitlines() == [
        "add [id A] float64[?] 'y'",
        " |mul [id B] float64[?]",
        " | |exp [id C] float64[?]",
        " | | |x [id D] float64[?]",
        " | |2.0 [id E] float64[]",
        " |exp [id C] float64[?]",
    ]


def test_debugprint_to_file_stdout_and_function(capsys):
    x = vector("x")
    w = shared(np.zeros(2), name="w")
    buf = io.StringIO()
    debugprint(x + w, file=buf)
    assert "w [id C] float64[?] (shared)" in buf.getvalue()
    assert debugprint([x, exp(x)]) is None
    assert capsys.readouterr().out.splitlines()[1] == "exp [id B] float64[?]"
    f = function([x], exp(x), device="python")
    assert debugprint(f, file="str").startswith("exp [id A]")
