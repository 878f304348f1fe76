"""Engines that run tapes: reference (NumPy), cpu (Numba), cuda (numba.cuda)."""

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """Cyclic garbage collection off while a tape or a plan is built (restored after, also on error): the
    collections that the build's allocations trigger walk the user's whole graph each time (W4's 200-step
    unrolled gradient: ``function`` 0.31-0.39 s with the collector, 0.25 s without; its first call's plan
    0.31 s with, 0.13-0.15 s without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def numba_ready():
    """Load numba's lowering and typing registries now.  numba does it lazily on the first call of any compiled
    function (importing numba.np.*, scipy's BLAS bindings: 0.4-0.8 s on a 2-core machine), which would land on
    the first call of the first function; the CPU engine calls this at its import, so it is part of the import.
    ``TAPEGRAD_LAZY_NUMBA`` set: left to numba."""
    import os

    if os.environ.get("TAPEGRAD_LAZY_NUMBA"):
        return
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
        cpu_target.typing_context.refresh()
    except Exception:  # noqa: BLE001 - numba will do it on the first call
        pass
