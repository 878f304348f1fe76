"""Aesara's shorthands over ``scan``: ``map``, ``reduce``, ``foldl``, ``foldr`` (``tg.map`` etc.).

In their own module because ``map`` and ``reduce`` hide Python's builtins of those names.
"""

from __future__ import annotations

from tapegrad.ops.scan import scan

__all__ = ["map", "reduce", "foldl", "foldr"]


def map(fn, sequences, non_sequences=None, truncate_gradient=-1, go_backwards=False, mode=None, name=None,
        return_updates=True):
    """``fn`` applied to the rows of ``sequences``: ``scan`` with no recurrent output (Aesara's ``map``).

    Returns ``(outputs, updates)`` as :func:`scan` does.

    >>> x = tg.dmatrix("x")
    >>> norms, _ = tg.map(lambda row: tg.sqrt(tg.sum(row ** 2)), sequences=x)
    """
    return scan(fn, sequences=sequences, outputs_info=None, non_sequences=non_sequences,
                truncate_gradient=truncate_gradient, go_backwards=go_backwards, mode=mode, name=name,
                return_updates=return_updates)


def reduce(fn, sequences, outputs_info, non_sequences=None, go_backwards=False, mode=None, name=None,
           return_updates=True):
    """The last step of ``scan(fn, sequences, outputs_info, ...)`` (Aesara's ``reduce``).

    Each output is ``traj[-1]``: a loop that keeps only the last step, so no trajectory is stored.
    Returns ``(outputs, updates)`` (one Variable or a list, as :func:`scan`).

    >>> x = tg.dvector("x")
    >>> total, _ = tg.reduce(lambda v, acc: acc + v, sequences=x, outputs_info=tg.constant(0.0))
    """
    outs, updates = scan(fn, sequences=sequences, outputs_info=outputs_info, non_sequences=non_sequences,
                         go_backwards=go_backwards, mode=mode, name=name)
    last = [o[-1] for o in outs] if isinstance(outs, list) else outs[-1]
    return (last, updates) if return_updates else last


def foldl(fn, sequences, outputs_info, non_sequences=None, mode=None, name=None, return_updates=True):
    """:func:`reduce` from the first row to the last (Aesara's ``foldl``)."""
    return reduce(fn, sequences, outputs_info, non_sequences=non_sequences, go_backwards=False, mode=mode,
                  name=name, return_updates=return_updates)


def foldr(fn, sequences, outputs_info, non_sequences=None, mode=None, name=None, return_updates=True):
    """:func:`reduce` from the last row to the first (Aesara's ``foldr``)."""
    return reduce(fn, sequences, outputs_info, non_sequences=non_sequences, go_backwards=True, mode=mode,
                  name=name, return_updates=return_updates)
