"""Checkpoint schedules of the ``scan`` reverse sweep (``ScanGrad``).

``checkpoint="all"`` keeps every state; ``"binomial"`` keeps ``snapshots``
states and recomputes the rest by a revolve-type (Griewank binomial)
schedule.  A schedule is a list of actions the reverse sweep runs; see
:func:`schedule_for` and :func:`schedule_stats`.  Split out of
:mod:`tapegrad.ops.scan`, which re-exports these names.
"""

from __future__ import annotations

import math

CHECKPOINTS = ("all", "binomial")


# --------------------------------------------------------------------------- schedules
def _beta(s, r):
    """Steps a reverse sweep with ``s`` snapshots and ``r`` repetitions can cover: C(s + r, s)."""
    return math.comb(s + r, s)


def repetitions(n, snapshots):
    """Least ``r`` with ``C(snapshots + r, snapshots) >= n``: no step is advanced more than ``r`` times."""
    r = 0
    while _beta(snapshots, r) < n:
        r += 1
    return r


def default_snapshots(n):
    """Default snapshot count of ``checkpoint="binomial"``: ``ceil(log2 n)`` (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def store_all_schedule(n):
    """The ``checkpoint="all"`` reverse sweep as actions (see :func:`binomial_schedule`)."""
    if n <= 0:
        return
    yield ("restore", 0, 0)
    for t in range(1, n):
        yield ("advance", t - 1, t)
        yield ("store", t, t)
    for t in range(n - 1, -1, -1):
        yield ("restore", t, t)
        yield ("adjoint", t)
        if t:
            yield ("free", t)


def binomial_schedule(n, snapshots):
    """The binomial-checkpointing reverse sweep over ``n`` steps with ``snapshots`` stored states.

    Yields actions on a current state and numbered snapshot slots (slot 0
    holds the initial state):

    ``("restore", slot, t)``  current state := slot (the state before step ``t``)
    ``("advance", t0, t1)``   run forward steps ``t0 .. t1-1`` on the current state
    ``("store", slot, t)``    slot := current state (the state before step ``t``)
    ``("free", slot)``        slot is no longer needed
    ``("adjoint", t)``        the adjoint of step ``t`` (current state = state before ``t``)

    Adjoint steps come in the order ``n-1, ..., 0``.  A segment of ``m`` steps
    with ``s`` free slots is split after ``k = max(1, m - C(s - 1 + r, s - 1))``
    steps, ``r = repetitions(m, s)`` (Griewank's binomial bound): the right part
    is reversed first with ``s - 1`` slots, then the left with ``s``.  At most
    ``snapshots + 1`` states are held and no step is advanced more than
    ``repetitions(n, snapshots)`` times.
    """
    if n <= 0:
        return
    if snapshots < 0:
        raise ValueError(f"scan: snapshots must be >= 0, got {snapshots}")
    free = list(range(snapshots, 0, -1))
    tasks = [("sweep", 0, n, 0)]
    while tasks:
        task = tasks.pop()
        if task[0] == "free":
            free.append(task[1])
            yield ("free", task[1])
            continue
        _, t0, t1, slot = task
        s, m = len(free), t1 - t0
        yield ("restore", slot, t0)
        if m == 1:
            yield ("adjoint", t0)
            continue
        if s == 0:  # no slot left: recompute from t0 for every step (quadratic)
            for t in range(t1 - 1, t0 - 1, -1):
                if t < t1 - 1:
                    yield ("restore", slot, t0)
                if t > t0:
                    yield ("advance", t0, t)
                yield ("adjoint", t)
            continue
        k = max(1, m - _beta(s - 1, repetitions(m, s)))
        new = free.pop()
        yield ("advance", t0, t0 + k)
        yield ("store", new, t0 + k)
        tasks.append(("sweep", t0, t0 + k, slot))
        tasks.append(("free", new))
        tasks.append(("sweep", t0 + k, t1, new))


def schedule_for(checkpoint, n, snapshots):
    """The action list the reverse sweep of a ``ScanGrad`` runs for ``n`` steps."""
    if checkpoint == "all":
        return store_all_schedule(n)
    return binomial_schedule(n, default_snapshots(n) if snapshots is None else snapshots)


def schedule_stats(checkpoint, n, snapshots=None):
    """``{"advances", "adjoints", "peak_states"}`` of a schedule, without running it.

    ``advances``: forward steps run by the reverse sweep (the forward pass
    included); ``peak_states``: most states held at once (slots + current).
    """
    slots, peak, adv, adj = {0}, 1, 0, 0
    for act in schedule_for(checkpoint, n, snapshots):
        if act[0] == "advance":
            adv += act[2] - act[1]
        elif act[0] == "store":
            slots.add(act[1])
        elif act[0] == "free":
            slots.discard(act[1])
        elif act[0] == "adjoint":
            adj += 1
        peak = max(peak, len(slots) + 1)
    return {"advances": adv, "adjoints": adj, "peak_states": peak}
