"""Run a compiled :class:`~tapegrad.Function` over many argument sets with ``dask.distributed``.

A :class:`~tapegrad.Function` pickles (its tape and light stand-ins for the
graph ends; see ``Function.__getstate__``), so it can be shipped to worker
processes once (``client.scatter(f, broadcast=True)``) and called there on
chunks of argument sets::

    from dask.distributed import Client, LocalCluster
    from tapegrad.ecosystem.dask import map_function

    with LocalCluster(n_workers=2, processes=True) as cluster, Client(cluster) as client:
        results = map_function(client, f, arg_sets)   # == [f(*a) for a in arg_sets]

Each worker unpickles its own copy of the function (with its own copies of
any shared variables: updates made on a worker stay there).
"""

from __future__ import annotations

__all__ = ["map_function", "run_chunk"]


def run_chunk(f, chunk):
    """``[f(*args) for args in chunk]``: the task each worker runs."""
    return [f(*args) for args in chunk]


def map_function(client, f, arg_sets, chunks=None):
    """Evaluate ``f(*args)`` for every ``args`` in ``arg_sets`` on ``client``'s workers.

    Parameters
    ----------
    client : dask.distributed.Client
    f : Function
        A compiled tapegrad function (anything picklable and callable works).
    arg_sets : sequence of tuples
        One tuple of positional arguments per evaluation.
    chunks : int, optional
        Number of tasks (default: 4 per worker thread, at most one per argument set).

    Returns
    -------
    list
        The results in the order of ``arg_sets``.
    """
    arg_sets = [tuple(a) for a in arg_sets]
    if not arg_sets:
        return []
    if chunks is None:
        nthreads = sum(client.nthreads().values()) or 1
        chunks = 4 * nthreads
    chunks = max(1, min(int(chunks), len(arg_sets)))
    bounds = [len(arg_sets) * i // chunks for i in range(chunks + 1)]
    pieces = [arg_sets[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    [f_remote] = client.scatter([f], broadcast=True, hash=False)
    futures = client.map(run_chunk, [f_remote] * len(pieces), pieces, pure=False)
    out = []
    for part in client.gather(futures):
        out.extend(part)
    return out
