"""Engines that run tapes: reference (NumPy), cpu (Numba), cuda (numba.cuda)."""


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
