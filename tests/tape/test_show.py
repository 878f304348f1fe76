"""format_tape and validate_tape."""

import copy

import numpy as np
import pytest

from tapegrad.graph import matrix, shared, tensor, vector
from tapegrad.ops import exp, mul
from tapegrad.tape.build import build_tape
from tapegrad.tape.show import format_tape, validate_tape


def example():
    x = vector("x")
    W = tensor("W", shape=(None, 3))
    w = shared(np.zeros(3), name="w")
    y = mul(exp(x), 2.0)
    y.name = "y"
    return build_tape([x, W], [y, W * y], updates=[(w, w + y)])


def test_format_tape_text():
    text = format_tape(example())
    assert text.splitlines() == [
        "in     %0:f64[?] x",
        "in     %1:f64[?,3] W",
        "const  %2:f64[] = 2.0",
        "shared %3:f64[?] w",
        "%4:f64[?] = exp %0",
        "%5:f64[?] = mul %4 %2                    # y",
        "%6:f64[?,3] = mul %1 %5",
        "%7:f64[?] = add %3 %5",
        "out    %5 %6",
        "update w (%3) <- %7",
    ]
    assert example().show() == text
    assert str(example()).splitlines() == text.splitlines()[4:8]


def test_params_shown():
    x = vector("x", dtype="float32")
    assert "%1:f64[?] = cast[dtype=float64] %0" in format_tape(build_tape([x], [x.astype("float64")]))


def test_validate_accepts_built_tapes():
    assert example().validate() is not None


def _broken(**changes):
    t = copy.deepcopy(example())
    for k, v in changes.items():
        setattr(t, k, np.asarray(v, dtype=getattr(t, k).dtype))
    return t


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(arg_ptr=[0, 1, 2, 4, 5]), "arg_ptr"),
        (dict(arg_ptr=[0, 1, 3, 5]), "arg_ptr has length"),
        (dict(args=[0, 4, 2, 1, 99, 3, 5]), "refers to slot 99"),
        (dict(args=[0, 6, 2, 1, 5, 3, 5]), "reads slot %6 before it is written"),
        (dict(outs=[4, 5, 5, 7]), "writes slot %5 a second time"),
        (dict(outs=[4, 5, 0, 7]), "only temporaries are written"),
        (dict(codes=[4, 52, 52, 999]), "op code 999 is not registered"),
        (dict(slot_dtype=[0, 0, 0, 0, 0, 0, 0, 42]), "unknown dtype code"),
        (dict(output_slots=[5, 12]), "refers to slot 12"),
        (dict(update_targets=[3]), "out of range"),
        (dict(shape_ptr=[0, 1, 3, 3, 4, 5, 7, 8, 9]), "static shape has"),
        (dict(input_slots=[0]), "input_slots"),
    ],
)
def test_validate_reports_problems(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_tape(_broken(**changes))


def test_validate_unwritten_temp_and_const_mismatch():
    t = copy.deepcopy(example())
    t.consts = [np.zeros(2)]
    with pytest.raises(ValueError, match="constant slot %2"):
        t.validate()
    t = copy.deepcopy(example())
    t.codes, t.arg_ptr, t.out_ptr = t.codes[:3], t.arg_ptr[:4], t.out_ptr[:4]
    t.ip_ptr, t.fp_ptr, t.ops = t.ip_ptr[:4], t.fp_ptr[:4], t.ops[:3]
    t.args, t.outs = t.args[: t.arg_ptr[-1]], t.outs[:3]
    t.iparams, t.fparams = t.iparams[: t.ip_ptr[-1]], t.fparams[: t.fp_ptr[-1]]
    with pytest.raises(ValueError, match="%7 is never written"):
        t.validate()


def test_len_and_nbytes():
    x = matrix("x")
    t = build_tape([x], [exp(x)])
    assert len(t) == 1 and t.nbytes > 0 and "1 instructions" in repr(t)


def test_str_of_a_tape_is_one_instruction_a_line_and_show_has_the_rest():
    import tapegrad as tg

    x = tg.dvector("x")
    w = tg.shared(np.array([1.0, 2.0]), name="w")
    f = tg.function([x], [(tg.exp(x) * w).sum() + 2.0, x * 3])
    text = str(f.tape)
    assert len(text.splitlines()) == len(f.tape) == 5
    assert text.splitlines()[0] == "%4:f64[?] = exp %0"
    full = f.tape.show().splitlines()
    assert full[0] == "in     %0:f64[?] x" and full[-1] == "out    %7 %8"
    assert full[4:-1] == text.splitlines()
