"""Where batches run: a local process pool (default), in-process (workers=1), or Dask.

All three are ``concurrent.futures.Executor``s; the sweep only calls ``submit`` and waits
on futures, so it does not know which one it has.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from dataclasses import dataclass
from typing import Any, TypeVar

from archive_tool import fs
from archive_tool.errors import (
    DaskUnavailable,  # noqa: F401 - raised here
    Interrupted,
)
from archive_tool.guard import interrupt

B = TypeVar("B")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    # Ctrl-C or a SIGTERM to the process group (or one forwarded by the parent) stops a
    # worker at its next safe point (interrupt.py): never between writing archives and
    # deleting sources of its batch (that commit is shielded), and within WORKER_GRACE
    # seconds, so the parent never has to wait minutes for a long member (issue 23).
    interrupt.install(interrupt.WORKER_GRACE, worker=True)


def _forked_worker_init(parent: int) -> None:
    """A forked worker dies with the process that forked it. An orphaned pool worker
    otherwise waits forever on its task queue (it holds that pipe's write end itself),
    and a forked one would keep whatever else it inherited open; the kill leaves what a
    crash leaves, which every state of a commit survives (tests/test_crash_points.py)."""
    fs.die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above: no signal comes
        os._exit(1)
    _worker_init()


def start_method() -> str:
    """How the local pool starts workers: ``fork`` while this process runs a single
    thread, else ``forkserver``.

    A forked worker has every module the sweep already imported; a forkserver worker
    imports them again (~1,300 metadata calls and ~0.3 s of CPU each, a round trip apiece
    on Lustre/GPFS/NFS, issue 24), and the forkserver and its resource tracker are two
    more interpreters. Fork's hazard is a lock another thread held at the fork (tqdm's
    monitor, a caller's threads: the child deadlocks on it), which is why the pool used
    a forkserver before; with one thread there is no other holder. The threads are
    counted by the kernel (``/proc/self/task``), so C-level threads count too; where
    that cannot be read, forkserver. What a forked worker inherits that it must not
    keep: the root lock (lock.py closes it in the child) and its parent's lifetime
    (:func:`_forked_worker_init`)."""
    try:
        threads = os.stat("/proc/self/task").st_nlink - 2  # "." and ".." + one per thread
    except OSError:
        return "forkserver"
    if threads == 1 and threading.active_count() == 1:
        return "fork"
    return "forkserver"


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
    if start_method() == "fork":
        # Python 3.11 forks every worker at the first submit, from the submitting thread:
        # this one (die_with_parent follows the thread that forked).
        return ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("fork"),
                                   initializer=_forked_worker_init, initargs=(os.getpid(),))
    # forkserver: workers start from a clean process, not a fork of a parent that holds
    # threads (tqdm's monitor, a caller's) — fork-with-threads deadlocks are the classic.
    ctx = multiprocessing.get_context("forkserver")
    _start_forkserver()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)


def _start_forkserver() -> None:
    """Start multiprocessing's forkserver with SIGTERM ignored (an ignored disposition
    survives its exec, and its forked workers inherit it).

    multiprocessing shields the forkserver from SIGINT only. A SIGTERM to the process group
    (``kill -TERM -PGID``, systemd, SLURM's scancel) killed it, and since each worker's exit
    status travels through the forkserver, the pool read every worker as dead: the sweep
    reported the in-flight batches as lost and then hung (tests/test_reliability_crash.py).
    """
    from multiprocessing import forkserver  # lazy: only a local process pool starts one

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may touch handlers; started lazily as before
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, old)


DASK_EXTRA_HINT = (
    "the optional 'dask' extra is not installed: "
    "pip install 'scitex-session-tools[dask]' (from a checkout: pip install '.[dask]')"
)


class DaskExecutor(Executor):
    """Batches as tasks on a Dask distributed cluster (the ``dask`` extra).

    *address* is a scheduler address (``tcp://host:8786``), a scheduler file written by
    ``dask scheduler --scheduler-file`` (the usual hand-off inside a SLURM allocation),
    a ``distributed.Client`` (not closed by :meth:`shutdown`) or a cluster object.

    ``submit`` returns ``concurrent.futures.Future`` s (distributed's ClientExecutor
    wraps its own futures), so the sweep's ``wait(..., FIRST_COMPLETED)`` works unchanged.
    Tasks are submitted with ``pure=False``: two batches with equal arguments are still two
    runs. Workers import ``archive_tool`` and must see the same filesystem paths.
    """

    # Sessions per task: a task costs ~1 ms of scheduler time plus a network round trip,
    # a batch of 256 sessions ~0.5 s of worker time, so overhead stays well under 1 %.
    default_batch_size = 256

    def __init__(self, address: str | os.PathLike[str] | Any, *,
                 timeout: float | None = None) -> None:
        try:
            from distributed import Client  # lazy, optional and heavy: the dask extra
        except ImportError:
            raise DaskUnavailable(DASK_EXTRA_HINT) from None
        kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if isinstance(address, Client):
            self.client, self._own = address, False
        else:
            where = os.fspath(address) if isinstance(address, (str, os.PathLike)) else address
            try:
                if isinstance(where, str) and os.path.isfile(where):
                    self.client = Client(scheduler_file=where, set_as_default=False, **kw)
                else:
                    self.client = Client(where, set_as_default=False, **kw)
            except (OSError, TimeoutError, ValueError) as e:
                raise DaskUnavailable(f"cannot reach the Dask scheduler at {where}: {e}") from None
            self._own = True
        self._ex = self.client.get_executor(pure=False)
        self._slots = 0
        self._slots_at = -1e9

    def slots(self) -> int:
        """Worker threads in the cluster now (refreshed at most every 2 s): the sweep
        keeps about two batches in flight per slot. Workers may join late (a
        dask-jobqueue job still queued); 0 means none yet."""
        now = time.monotonic()
        if now - self._slots_at > 2.0:
            try:
                self._slots = sum(self.client.nthreads().values())
            except Exception:  # noqa: BLE001 - a hint only; keep the last value
                pass
            self._slots_at = now
        return self._slots

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # After SIGTERM/SIGINT never wait for the cluster: its workers are not ours to
        # stop (a batch running there finishes, whole), and we promised to exit in 2 s.
        wait = wait and not cancel_futures and not interrupt.requested()
        self._ex.shutdown(wait=wait)
        if self._own:
            self.client.close()


# The usual causes, named: a user calling sweep() at the top level of a script makes every
# worker (which imports the script's main module) run it again and fail to start.
WORKER_DIED = ("a worker process died or could not start, stopped (killed, out of "
               "memory, or sweep()/restore called at a script's top level: put it under "
               "if __name__ == '__main__')")


def _signal_workers(ex: Executor, signum: int, sig: int | None = None) -> None:
    """Forward the stop to a pool we own (a SIGTERM sent to our PID alone does not reach
    them); *sig* = SIGKILL is the last resort at interrupt.KILL_AFTER."""
    procs = getattr(ex, "_processes", None) or {}
    for p in list(procs.values()):
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.kill(p.pid, sig or signum)


@dataclass
class Outcome:
    """How a run of batches ended: ``stopped`` says why it ended early (None: it did not)."""

    stopped: str | None = None
    signal: int | None = None


def run_batches(
    batches: Iterable[B],
    fn: Callable[..., list[R]],
    args: tuple[Any, ...],
    *,
    absorb: Callable[[list[R]], None],
    lost: Callable[[B, BaseException], list[R]],
    executor: Executor | None = None,
    workers: int | None = None,
    unsent: Callable[[B], None] = lambda _b: None,
    halt: Callable[[], str | None] = lambda: None,
    before_submit: Callable[[B], None] = lambda _b: None,
) -> Outcome:
    """The one pool loop (sweep, bulk restore, packs): submit ``fn(batch, *args)`` per
    batch with about two batches in flight per slot, hand each batch's results to
    *absorb* as they finish, and stop feeding on SIGINT/SIGTERM, a broken pool or when
    *halt* gives a reason; batches in flight are always settled. A lost batch (its worker
    died) is reported through *lost*; a batch that could not be sent through *unsent*.
    """
    # How many batches run at once: the pool's size, or a cluster's worker threads (which
    # may grow while the run goes on: dask-jobqueue workers join as their jobs start).
    slots: Callable[[], int] | None = getattr(executor, "slots", None)
    n = workers or (max(1, slots()) if slots else default_workers())
    own = executor is None
    ex = executor if executor is not None else local_executor(n)
    inflight: dict[Future, B] = {}
    broken = ""
    out = Outcome()

    def window() -> int:
        return 2 * (max(1, slots()) if slots and not workers else n)

    def settle(done: Iterable[Future]) -> None:
        nonlocal broken
        for f in done:
            batch = inflight.pop(f)
            try:
                results = f.result()
            except BaseException as e:  # noqa: BLE001 - a lost worker: its batch is unknown
                if isinstance(e, BrokenExecutor) and not broken:
                    broken = f"{WORKER_DIED}: {e}"
                results = lost(batch, e)
            absorb(results)

    forwarded = False
    stop_at = 0.0

    def stopping() -> bool:
        """A signal arrived: forward it to our workers once, start the kill clock."""
        nonlocal forwarded, stop_at
        sig = interrupt.requested()
        if sig and not forwarded:
            forwarded, stop_at = True, time.monotonic() + interrupt.KILL_AFTER
            if own:
                _signal_workers(ex, sig)
        return bool(sig)

    def collect(block: bool) -> None:
        """Settle finished batches: wait for at least one (polling, so a signal is seen
        at once even when no batch ends), or, once stopping, until the kill clock."""
        while inflight:
            done, _ = wait(list(inflight), timeout=0.1, return_when=FIRST_COMPLETED)
            settle(done)
            if stopping() and inflight and time.monotonic() >= stop_at:
                # Workers still busy KILL_AFTER s after the signal (a call that never
                # reaches a check): kill them; what they leave is a crash's leftover.
                if own:
                    _signal_workers(ex, 0, signal.SIGKILL)
                for f in list(inflight):
                    absorb(lost(inflight.pop(f), Interrupted(interrupt.requested())))
                return
            if done and not block:
                return

    try:
        with interrupt.handling():
            try:
                for batch in batches:
                    if stopping() or halt():
                        break
                    before_submit(batch)
                    try:
                        # run_task: the worker's SIGTERM backstop may cut fn, never
                        # the pool's own code around it (that would break the pool).
                        fut = (ex.submit(interrupt.run_task, fn, batch, *args) if own
                               else ex.submit(fn, batch, *args))
                    except BrokenExecutor as e:
                        # A worker died (OOM killer, kill -9): the pool takes no more work.
                        broken = broken or f"{WORKER_DIED}: {e}"
                        unsent(batch)
                        break
                    inflight[fut] = batch
                    while len(inflight) >= window() and not stopping():
                        collect(block=False)
                        if halt():
                            break
                collect(block=True)
            except Interrupted:
                # The backstop fired in this process (e.g. inside an in-process batch
                # that had no check): what is in flight is reported, not waited for.
                stopping()
                collect(block=True)
            sig = interrupt.requested()
            reason = halt()
            if sig:
                out.stopped = f"interrupted by {signal.Signals(sig).name}"
                out.signal = sig
            elif reason:
                out.stopped = reason
            elif broken:
                out.stopped = broken
    finally:
        if own:
            if interrupt.requested():
                # Never wait on a worker after a signal: the 2 s promise (issue 23).
                if inflight:
                    _signal_workers(ex, 0, signal.SIGKILL)
                ex.shutdown(wait=not inflight, cancel_futures=True)
            else:
                if broken:
                    _kill_stuck_workers(ex)
                ex.shutdown(wait=True)
    return out


def _kill_stuck_workers(ex: Executor) -> None:
    """A worker died: concurrent.futures has failed the batches in flight, SIGTERMed the
    other workers and joins them. One idle on the task queue may wait on the queue's read
    lock, which the dead one held while it waited for a task: it never runs our code
    again, the SIGTERM finds it between tasks (where the backstop leaves multiprocessing's
    code alone) and the join would wait forever. What is still alive KILL_AFTER s later
    is killed, as after a signal: a busy worker's SIGTERM has stopped it by then, and what
    a kill leaves is what a crash leaves."""
    manager = getattr(ex, "_executor_manager_thread", None)
    if manager is None:
        return
    manager.join(interrupt.KILL_AFTER)
    if manager.is_alive():
        _signal_workers(ex, 0, signal.SIGKILL)
