"""Engines that run tapes: reference (NumPy), cpu (Numba), cuda (numba.cuda)."""
