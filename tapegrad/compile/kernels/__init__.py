"""Numba kernels of the CPU engine (scalar namespace, gathers, reductions)."""
