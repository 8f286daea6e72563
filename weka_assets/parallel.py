"""Independent trace shards on every core: an ordered, bounded process map.

Traces never depend on each other, so each long step (read + analyse, decode, replay) maps
one function over traces in worker processes and consumes the results in corpus order. At
most `window` items are in flight, so memory stays bounded by a few traces however large the
corpus is, and the same code scales from 1 core to many.

`WEKA_ASSETS_WORKERS` sets the number of worker processes (default: the CPUs this process
may use); 1 runs everything in this process. Workers are forked from a fork server (never a
fork of a threaded Dagster process; the server starts once per process, its modules
preloaded) and live for one map: a pool kept alive past the step would hold the step's
process open at exit.

A worker also imports the main script of the process that starts it (Python does so for
forkserver and spawn workers, as `__mp_main__`). Runs launched by Dagster and `python -m
pytest` name a module as main, which workers skip; the `weka-assets` script imports only the
command-line module (about 20 ms, its commands import lazily). A script of your own
that drives the core or materializes in process should keep its imports under
`if __name__ == "__main__":`: a top-level `import dagster` there was imported again by both
workers of every step (about 1 s of CPU each, measured in benchmarks/chain.py).

A daemonic process may not have children (Python refuses: "daemonic processes are not allowed
to have children"). A prefork Celery worker runs each task in such a process, so there the map
runs in process: the deployment's parallelism is then its workers, one step each.
"""

import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

from weka_assets import env

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# calls per worker task (whole traces): how the decoding and replay steps shard a dataset;
# here, at the bottom layer, so that both can import it without one importing the other
SHARD_CALLS = 2048

# the modules whose functions run in workers, imported once by the fork server; none of them
# imports pyarrow, pandas, matplotlib or dagster (each worker would carry them: test_parallel)
_PRELOAD = [
    "weka_assets.traces.scope",
    "weka_assets.traces.parsed",
    "weka_assets.decoding.decoder",
    "weka_assets.decoding.expand",
    "weka_assets.replay.unbounded",
]


def workers() -> int:
    """How many worker processes to use (WEKA_ASSETS_WORKERS, else the usable CPUs); 1 in a
    daemonic process, which may not start any."""
    n = env.get("WEKA_ASSETS_WORKERS")
    return 1 if n > 1 and _daemonic() else n


def _daemonic() -> bool:
    """True in a process that may not start children (a prefork Celery worker's child)."""
    return bool(mp.current_process().daemon)


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], n_workers: int | None = None, window: int = 0
) -> Iterator[R]:
    """`map(fn, items)` across worker processes, in order, with at most `window` in flight.

    `fn` must be a module-level function and items and results picklable. An exception in a
    worker is raised here, at that item's place in the order.
    """
    n = workers() if n_workers is None else n_workers
    if n > 1 and _daemonic():
        log.info("a daemonic process may not start workers: mapping in process")
        n = 1
    if n <= 1:
        yield from map(fn, items)
        return
    window = window or 2 * n
    pending: deque = deque()
    with ProcessPoolExecutor(max_workers=n, mp_context=_context()) as pool:
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


def on_threads(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """`fn(item)` for every item, on `workers()` threads, for numpy work on disjoint slices of
    shared arrays: numpy lets go of the GIL while it indexes, compares and computes, so the
    slices run on every core without copying the arrays to other processes. Each call must
    write only its own slice, and keep its temporaries to a few MB: a thread allocates from a
    malloc arena of its own, which keeps its high-water mark after the thread ends. An
    exception in one is raised here."""
    n = workers()
    if n <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=n) as pool:
        for _ in pool.map(fn, items):
            pass


def in_worker(fn: Callable[..., R], *args) -> R:
    """`fn(*args)` in a worker process of its own, when this process may start one: for work
    that loads something large it never needs again (a tokenizer), so that memory leaves with
    the worker instead of staying in a long-lived process (a Dagster run executes every step
    in one process). `fn` must be a module-level function, its arguments and result picklable."""
    if _daemonic() or workers() <= 1:
        return fn(*args)
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        return pool.submit(fn, *args).result()
