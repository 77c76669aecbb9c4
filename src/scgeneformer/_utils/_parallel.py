"""CPU parallelism: how many cores this process may use, and an ordered thread-pool map with bounded memory."""

from __future__ import annotations


def default_n_jobs() -> int:
    """Number of CPU cores this process may use."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_parallel_map(function, items, n_jobs: int):
    """``map(function, items)`` on a thread pool, in order, with at most ``2 * n_jobs`` items in flight.

    NumPy and scipy release the GIL in their kernels, so threads overlap chunk computations while ``items`` (e.g.
    reads from an HDF5 file) is consumed in the calling thread. Memory stays bounded by the items in flight.
    """
    if n_jobs <= 1:
        yield from map(function, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * n_jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
