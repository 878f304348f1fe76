"""nan_guard names the op that first produced NaN/inf, in forward and in derivative code."""

import numpy as np
import pytest

import tapegrad as tg


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_forward_nan_names_the_op_and_variable(device):
    x = tg.vector("x")
    lx = tg.log(x)
    lx.name = "logx"
    f = tg.function([x], (lx * 2.0).sum(), device=device, nan_guard=True)
    assert f(np.array([1.0, 2.0])) == pytest.approx(2 * np.log(2.0))
    with pytest.raises(FloatingPointError, match=r"log \(variable logx\) produced NaN.*x: \(2,\)"):
        f(np.array([-1.0, 2.0]))


@pytest.mark.parametrize("device", ["python", "cpu"])
def test_adjoint_inf_names_the_derivative_op(device):
    x = tg.vector("x")
    g = tg.grad(tg.sqrt(x).sum(), x)  # sqrt'(0) = inf appears only in the adjoint
    f = tg.function([x], g, device=device, nan_guard=True)
    with pytest.raises(FloatingPointError, match=r"true_div produced inf"):
        f(np.array([0.0, 2.0]))


def test_config_switch_and_nan_inputs_pass_through():
    x = tg.vector("x")
    tg.config.nan_guard = True
    try:
        f = tg.function([x], x * 2.0)
    finally:
        tg.config.nan_guard = False
    out = f(np.array([np.nan, 1.0]))  # NaN in the input is not the engine's doing
    assert np.isnan(out[0]) and out[1] == 2.0
