"""Where batches run: a local process pool (default), in-process (workers=1), or Dask.

All three are ``concurrent.futures.Executor``s; the sweep only calls ``submit`` and waits
on futures, so it does not know which one it has.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    # The sweeping process decides when to stop: Ctrl-C or a SIGTERM to the process group
    # must not kill a worker between writing archives and deleting sources of its batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class InlineExecutor(Executor):
    """Runs each task at submit time in this process: no start-up cost, easy to profile."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            f.set_exception(e)
        return f


def local_executor(workers: int) -> Executor:
    if workers <= 1:
        return InlineExecutor()
    # forkserver: workers start from a clean process, not a fork of a parent that may hold
    # threads (tqdm's monitor, a caller's) — fork-with-threads deadlocks are the classic.
    ctx = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)


class DaskUnavailable(RuntimeError):
    pass


class DaskExecutor(Executor):
    """Batches as tasks on a Dask distributed cluster (the ``dask`` extra)."""

    def __init__(self, address: str | Any) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise DaskUnavailable(
                "--scheduler needs the optional Dask extra: pip install 'scitex-session-tools[dask]'"
            ) from None
        if isinstance(address, Client):
            self.client, self._own = address, False
        else:
            self.client, self._own = Client(address), True
        self._ex = self.client.get_executor(pure=False)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._ex.shutdown(wait=wait)
        if self._own:
            self.client.close()
