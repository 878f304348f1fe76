"""Global settings (``tg.config``)."""

from __future__ import annotations


class _Config:
    """Mutable library settings.

    Attributes
    ----------
    floatX : str
        Default float dtype of constructors and of gradients of integer inputs
        (``"float64"`` or ``"float32"``).
    nan_guard : bool
        When true, compiled functions check every instruction's outputs for
        NaN/inf and raise naming the op that produced them.
    device : str
        Default device of ``tg.function``.
    """

    def __init__(self):
        self._floatX = "float64"
        self.nan_guard = False
        self.device = "cpu"

    @property
    def floatX(self):
        return self._floatX

    @floatX.setter
    def floatX(self, value):
        if value not in ("float64", "float32"):
            raise ValueError(f"config.floatX must be 'float64' or 'float32', got {value!r}")
        self._floatX = value


config = _Config()
