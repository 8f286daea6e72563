"""The process map works in every kind of worker process, a daemonic one included (a prefork
Celery worker runs each task in a daemonic process, which may not start children)."""

import multiprocessing as mp

from weka_assets.parallel import ordered_map, workers


def _square(x: int) -> int:
    return x * x


def _map_in_child(queue, n_workers) -> None:
    try:
        queue.put(("ok", list(ordered_map(_square, range(20), n_workers)), workers()))
    except BaseException as exc:  # reported to the test, which names it
        queue.put(("error", f"{type(exc).__name__}: {exc}", None))


def _run_in(daemon: bool, n_workers: int | None, monkeypatch) -> tuple:
    monkeypatch.setenv("WEKA_ASSETS_WORKERS", "2")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_map_in_child, args=(queue, n_workers), daemon=daemon)
    child.start()
    out = queue.get(timeout=120)
    child.join(timeout=60)
    return out


def test_map_in_a_daemonic_process_runs_in_process(monkeypatch):
    for n_workers in (None, 2):  # the configured count, and an explicit one
        status, result, n = _run_in(True, n_workers, monkeypatch)
        assert status == "ok", result
        assert result == [x * x for x in range(20)]
        assert n == 1


def test_map_in_an_ordinary_process_uses_workers(monkeypatch):
    status, result, n = _run_in(False, None, monkeypatch)
    assert status == "ok", result
    assert result == [x * x for x in range(20)]
    assert n == 2


def test_the_worker_modules_leave_heavy_libraries_out():
    """The fork server preloads the modules whose functions run in workers; pyarrow, pandas,
    matplotlib or dagster among their imports would make the server and every worker forked
    from it tens of MB larger (pyarrow alone: about 60 MB each)."""
    import subprocess
    import sys

    from weka_assets.parallel import _PRELOAD

    code = (
        "import importlib, sys\n"
        f"for m in {_PRELOAD!r}: importlib.import_module(m)\n"
        "heavy = ('pyarrow', 'pandas', 'matplotlib', 'dagster', 'transformers')\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_on_threads_fills_every_slice_off_the_calling_thread(monkeypatch):
    """Each item's slice is written once; with workers the calls run on other threads, with
    WEKA_ASSETS_WORKERS=1 on the calling one; an exception in a call reaches the caller."""
    import threading

    import numpy as np
    import pytest

    from weka_assets.parallel import on_threads

    for count, off_main in (("2", True), ("1", False)):
        monkeypatch.setenv("WEKA_ASSETS_WORKERS", count)
        out = np.full(1000, -1)
        threads = set()

        def fill(a: int, out=out, threads=threads) -> None:
            threads.add(threading.get_ident())
            out[a : a + 10] = np.arange(a, a + 10)

        on_threads(fill, range(0, 1000, 10))
        assert (out == np.arange(1000)).all()
        assert (threading.get_ident() not in threads) == off_main, threads

        def fail_at_500(a: int) -> None:
            if a == 500:
                raise ValueError("slice 500")

        with pytest.raises(ValueError, match="slice 500"):
            on_threads(fail_at_500, range(0, 1000, 10))
