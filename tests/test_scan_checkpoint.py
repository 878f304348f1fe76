"""Binomial checkpointing of the reverse sweep through ``tg.scan``.

The schedule (``binomial_schedule``) is checked as data: adjoint steps in
reverse order, every step reversed from the right state, at most
``snapshots + 2`` states held, no step advanced more than ``r`` times
(``C(snapshots + r, r) >= n``).  Gradients and HVPs with ``"binomial"`` equal
those with ``"all"`` to 1e-12.  ``perf/scan_memory.py`` runs on tiny sizes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ops.scan import binomial_schedule, default_snapshots, repetitions, schedule_stats, store_all_schedule

DT = 0.01


def _simulate(schedule, n):
    """Replay a schedule on integer 'states' (the step index): check every action; return (advances per step, peak)."""
    slots, cur, peak = {0: 0}, None, 1
    advanced = np.zeros(n, int)
    order = []
    for act in schedule:
        if act[0] == "restore":
            assert slots[act[1]] == act[2]
            cur = act[2]
        elif act[0] == "advance":
            assert cur == act[1] and act[2] > act[1]
            advanced[act[1]: act[2]] += 1
            cur = act[2]
        elif act[0] == "store":
            assert act[1] not in slots and cur == act[2]
            slots[act[1]] = cur
        elif act[0] == "free":
            del slots[act[1]]
        else:
            assert cur == act[1]
            order.append(act[1])
        peak = max(peak, len(slots) + 1)
    assert order == list(range(n - 1, -1, -1))
    assert set(slots) == {0}
    return advanced, peak


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 37, 100, 1000])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 8, 20])
def test_binomial_schedule_is_valid_and_bounded(n, s):
    advanced, peak = _simulate(binomial_schedule(n, s), n)
    assert peak <= s + 2
    r = repetitions(n, s)
    assert advanced.max(initial=0) <= r
    assert schedule_stats("binomial", n, s)["advances"] == advanced.sum()


def test_zero_snapshots_is_quadratic_and_all_is_linear():
    advanced, peak = _simulate(binomial_schedule(6, 0), 6)
    assert peak == 2 and advanced.sum() == 15
    advanced, peak = _simulate(store_all_schedule(50), 50)
    assert peak == 51 and advanced.max() == 1


def test_default_snapshots_give_logarithmic_recomputation():
    for n in [100, 10_000, 100_000]:
        s = default_snapshots(n)
        st = schedule_stats("binomial", n, s)
        assert s <= np.ceil(np.log2(n)) and st["peak_states"] <= s + 2
        assert st["advances"] <= repetitions(n, s) * n
    assert repetitions(100_000, default_snapshots(100_000)) <= 6


def _l96(u, F):
    return u + DT * ((tg.roll(u, -1) - tg.roll(u, 2)) * tg.roll(u, 1) - u + F)


def _lorenz_grads(checkpoint, snapshots, n=60, size=12, hvp=False):
    u0, F = tg.dvector("u0"), tg.dscalar("F")
    traj, _ = tg.scan(_l96, outputs_info=u0, non_sequences=F, n_steps=n, checkpoint=checkpoint, snapshots=snapshots)
    loss = (traj[-1] ** 2).sum() + 0.1 * (traj ** 2).sum()
    outs = tg.grad(loss, [u0, F])
    ins = [u0, F]
    vals = [np.random.default_rng(3).uniform(-2, 2, size), 8.0]
    if hvp:
        pu, pF = tg.dvector("pu"), tg.dscalar("pF")
        outs = tg.hessian_vector_product(loss, [u0, F], [pu, pF])
        ins = ins + [pu, pF]
        vals = vals + [np.random.default_rng(4).standard_normal(size), 0.7]
    return tg.function(ins, outs, device="python")(*vals)


@pytest.mark.parametrize("snapshots", [1, 3, 7, None])
def test_binomial_gradient_equals_all(snapshots):
    want = _lorenz_grads("all", None)
    got = _lorenz_grads("binomial", snapshots)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_binomial_hvp_equals_all():
    want = _lorenz_grads("all", None, n=25, hvp=True)
    got = _lorenz_grads("binomial", 2, n=25, hvp=True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_binomial_with_sequences_and_matrix_state():
    rng = np.random.default_rng(5)
    vals = [rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (3, 3)), rng.uniform(-1, 1, (17, 3, 2))]
    res = {}
    for cp in ["all", "binomial"]:
        X0, W, S = tg.dmatrix("X0"), tg.dmatrix("W"), tg.dtensor3("S")
        out, _ = tg.scan(lambda s, X, W: tg.tanh(W @ X + s), sequences=S, outputs_info=X0, non_sequences=W,
                         checkpoint=cp, snapshots=2)
        res[cp] = tg.function([X0, W, S], tg.grad((out ** 2).sum(), [X0, W, S]), device="python")(*vals)
    for a, b in zip(res["binomial"], res["all"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_perf_script_runs_on_tiny_sizes():
    path = Path(__file__).resolve().parents[1] / "perf" / "scan_memory.py"
    spec = importlib.util.spec_from_file_location("scan_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.run([10], 16, out=lambda line: None)  # warm-up: first-use imports and caches are not the schedule's memory
    lines = []
    # big enough that stored states (200 x 512 float64 = 800 kB for "all") dominate fixed overheads
    rows = mod.run([200], 512, out=lines.append)
    assert [r["mode"] for r in rows] == ["all", "binomial"]
    assert rows[1]["ratio"] < 0.5 and rows[1]["states"] <= rows[1]["snapshots"] + 2
    assert any("binomial" in line for line in lines)
