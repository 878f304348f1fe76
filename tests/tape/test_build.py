"""build_tape: slots, instructions, errors."""

import numpy as np
import pytest

from tapegrad.graph import constant, matrix, shared, vector
from tapegrad.op import disconnected_type, grad_undefined
from tapegrad.ops import add, exp, mul, neg, sin
from tapegrad.registry import DTYPE_CODES, OpCode
from tapegrad.tape.build import MissingInputError, build_tape
from tapegrad.tape.format import SLOT_CONST, SLOT_INPUT, SLOT_SHARED, SLOT_TEMP


def test_slot_order_and_arrays():
    x, W = vector("x"), matrix("W")
    w = shared(np.ones(3), name="w")
    y = mul(exp(x), 2.0) + W + w
    t = build_tape([x, W], [y])
    assert list(t.input_slots) == [0, 1]
    assert list(t.slot_kind) == [SLOT_INPUT, SLOT_INPUT, SLOT_CONST, SLOT_SHARED] + [SLOT_TEMP] * 4
    assert list(t.codes) == [OpCode.EXP, OpCode.MUL, OpCode.ADD, OpCode.ADD]
    assert list(t.instr_args(0)) == [0]
    assert list(t.instr_args(1)) == [4, 2]
    assert list(t.output_slots) == [7]
    assert t.slot_names[:4] == ["x", "W", "%2", "w"]
    assert t.shared == [w]
    assert float(t.consts[0]) == 2.0
    assert t.slot_dtype[0] == DTYPE_CODES["float64"]
    assert list(t.slot_ndim) == [1, 2, 0, 1, 1, 1, 2, 2]
    assert t.slot_shape(1) == (None, None)
    assert t.nodes[0] is exp(x).owner or t.nodes[0].op == exp(x).owner.op
    t.validate()


def test_params_encoded():
    x = vector("x", dtype="float32")
    t = build_tape([x], [x.astype("float64")])
    assert list(t.codes) == [OpCode.CAST]
    assert list(t.instr_iparams(0)) == [DTYPE_CODES["float64"]]
    assert t.slot_shape(1) == (None,)


def test_outputs_that_are_leaves_and_repeated():
    x = vector("x")
    c = constant(np.arange(3.0))
    w = shared(np.zeros(2), name="w")
    y = exp(x)
    t = build_tape([x], [x, c, w, y, y])
    assert len(t) == 1
    s_c, s_w = t.const_slots[0], t.shared_slots[0]
    assert list(t.output_slots) == [0, s_c, s_w, 3, 3]
    t.validate()


def test_updates():
    x = vector("x")
    w = shared(np.zeros(3), name="w")
    v = shared(np.zeros(3), name="v")
    t = build_tape([x], [exp(x)], updates=[(w, w + x), (v, w)])
    assert [t.shared[i] for i in t.update_targets] == [w, v]
    assert t.update_slots[1] == t.shared_slots[list(t.shared).index(w)]
    t.validate()


def test_update_type_mismatch():
    x = vector("x")
    w = shared(np.zeros(3, dtype="float32"), name="w")
    with pytest.raises(TypeError, match="w"):
        build_tape([x], [x], updates=[(w, x)])
    with pytest.raises(TypeError, match="not a shared variable"):
        build_tape([x], [x], updates=[(x, x)])


def test_null_output():
    x = vector("x")
    g = grad_undefined(sin(x).owner.op, 0, x, "because I said so")
    with pytest.raises(TypeError, match="because I said so"):
        build_tape([x], [g])
    w = shared(np.zeros(3), name="w")
    with pytest.raises(TypeError, match="output 1 .*NullType"):
        build_tape([x], [x, g])
    with pytest.raises(TypeError, match="update of w.*because I said so"):
        build_tape([x], [x], updates=[(w, g)])


def test_disconnected_output():
    x = vector("x")
    with pytest.raises(TypeError, match="DisconnectedType"):
        build_tape([x], [disconnected_type()])


def test_missing_input_names_variable():
    x, y = vector("x"), vector("yy")
    with pytest.raises(MissingInputError, match="missing input.*yy") as e:
        build_tape([x], [x + y])
    assert isinstance(e.value, ValueError)


def test_bad_inputs():
    x = vector("x")
    with pytest.raises(TypeError, match="constant"):
        build_tape([constant(1.0)], [x])
    with pytest.raises(ValueError, match="more than once"):
        build_tape([x, x], [x])


def test_intermediate_input_cuts_graph():
    x = vector("x")
    h = exp(x)
    h.name = "h"
    t = build_tape([h], [neg(h) + 1.0])
    assert list(t.codes) == [OpCode.NEG, OpCode.ADD]
    assert t.slot_names[0] == "h"


def test_no_rewrite_keeps_everything():
    x = vector("x")
    y = add(exp(x), exp(x)) * 1.0
    assert len(build_tape([x], [y], rewrite=False)) == 4
    assert len(build_tape([x], [y])) == 2
