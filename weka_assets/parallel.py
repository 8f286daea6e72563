"""Independent trace shards on every core: an ordered, bounded process map.

Traces never depend on each other, so each long step (read + analyse, decode, replay) maps
one function over traces in worker processes and consumes the results in corpus order. At
most `window` items are in flight, so memory stays bounded by a few traces however large the
corpus is, and the same code scales from 1 core to many.

`WEKA_ASSETS_WORKERS` sets the number of worker processes (default: the CPUs this process
may use); 1 runs everything in this process. Workers come from a fork server (no fork of a
threaded Dagster process) and are kept for the life of the process, so a chain of steps pays
their start once.
"""

import atexit
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# the modules whose functions run in workers, imported once by the fork server
_PRELOAD = [
    "weka_assets.traces.scope",
    "weka_assets.decoding.decoder",
    "weka_assets.replay.unbounded",
]
_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def workers() -> int:
    """How many worker processes to use (WEKA_ASSETS_WORKERS, else the usable CPUs)."""
    value = os.environ.get("WEKA_ASSETS_WORKERS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"WEKA_ASSETS_WORKERS={value!r} is not an integer") from None
        if n < 1:
            raise ValueError(f"WEKA_ASSETS_WORKERS={value!r} must be 1 or more")
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _executor(n: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size != n:
        shutdown()
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _pool, _pool_size = ProcessPoolExecutor(max_workers=n, mp_context=ctx), n
    return _pool


def shutdown() -> None:
    """Stop the worker processes (they are started again on the next use)."""
    global _pool, _pool_size
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    _pool, _pool_size = None, 0


atexit.register(shutdown)


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], n_workers: int | None = None, window: int = 0
) -> Iterator[R]:
    """`map(fn, items)` across worker processes, in order, with at most `window` in flight.

    `fn` must be a module-level function and items and results picklable. An exception in a
    worker is raised here, at that item's place in the order.
    """
    n = workers() if n_workers is None else n_workers
    if n <= 1:
        yield from map(fn, items)
        return
    pool = _executor(n)
    window = window or 2 * n
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
