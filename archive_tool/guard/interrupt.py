"""SIGTERM / SIGINT: every command ends within 2 s of the signal, cleaning up as it unwinds.

Two stages, because a stop at an arbitrary bytecode is safe for the data (every state is
crash-safe: tests/test_reliability_crash.py SIGKILLs sweeps at random points) but not tidy:

1. The handler only records the signal. Long loops (members of a tar being written, read or
   extracted, files of a scan, archives of a catalog rebuild, sessions of a batch) call
   :func:`check`, which raises :class:`~archive_tool.errors.Interrupted` at that safe
   point; it unwinds through the existing ``finally`` blocks (temp dirs, tmp files,
   rebuild files, locks), and the CLI exits 128+N.
2. A backstop: if the process is still running :data:`GRACE` seconds later (stuck in code
   without a check, e.g. walking a huge parsed document), a SIGALRM raises Interrupted
   wherever the interpreter is. Inside :func:`shielded` (a batch's commit: fsync, link,
   delete of sources already archived, a few ms) it waits for the shield to end, so a
   signal never leaves a session with both its source and its archive half-done.

Pool workers run the same handlers (executors._worker_init); the pool's parent forwards the
signal to its own workers and, as the very last resort, kills the ones still busy at
:data:`KILL_AFTER` (what they leave is what a crash leaves, which the next run removes).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from archive_tool.errors import Interrupted

# Seconds from the signal to the backstop. Checks normally stop a command within
# milliseconds; the backstop must leave the pool's parent time to collect its workers
# (KILL_AFTER) and the interpreter time to exit, all within the promised 2 s.
GRACE = 0.6
WORKER_GRACE = 0.4
KILL_AFTER = 1.0

_signum = 0
_shield = 0
_pending = False
_grace = GRACE
_gated = False  # a pool worker: the backstop only cuts our own task (in_task)
_in_task = 0


def requested() -> int:
    """The signal that asked this process to stop, or 0."""
    return _signum


def check() -> None:
    """Raise Interrupted if a stop was requested (cheap: one global read); a no-op inside
    :func:`shielded` (whose end raises instead)."""
    if _signum and not _shield:
        raise Interrupted(_signum)


def reset() -> None:
    """Forget a request (tests; a long-lived process that handled one and goes on)."""
    global _signum, _pending
    _signum, _pending = 0, False
    with contextlib.suppress(ValueError):  # not the main thread: no timer of ours runs
        signal.setitimer(signal.ITIMER_REAL, 0)


def _on_signal(signum: int, _frame: Any) -> None:
    global _signum
    if _signum:
        return  # the backstop is already armed; a second Ctrl-C does not restart it
    _signum = signum
    signal.setitimer(signal.ITIMER_REAL, _grace)


def _on_alarm(_signum: int, _frame: Any) -> None:
    global _pending
    if not _signum:
        return
    if _shield or (_gated and not _in_task):
        # Shielded, or a worker between tasks (inside multiprocessing's own code, where an
        # exception kills the worker and breaks the pool): the next check stops it.
        _pending = True
        return
    raise Interrupted(_signum)


@contextlib.contextmanager
def shielded(reraise: bool = True) -> Iterator[None]:
    """A section the backstop must not cut (checks are not called inside it either); a
    signal that came meanwhile raises when it ends (unless not *reraise*: the caller
    looks at :func:`requested` itself)."""
    global _shield, _pending
    _shield += 1
    try:
        yield
    finally:
        _shield -= 1
    if not _shield and (_pending or _signum) and reraise:
        _pending = False
        raise Interrupted(_signum)


@contextlib.contextmanager
def in_task() -> Iterator[None]:
    """In a pool worker: the span where the backstop may raise (our batch function)."""
    global _in_task
    _in_task += 1
    try:
        yield
    finally:
        _in_task -= 1


def run_task(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` as a pool worker's task (picklable: executors submit this)."""
    with in_task():
        return fn(*args)


def install(grace: float = GRACE, *, worker: bool = False) -> dict[int, Any]:
    """Install the handlers (main thread only; elsewhere a no-op). Returns the previous
    ones for :func:`restore`. *worker*: a pool worker, whose backstop only raises inside
    :func:`in_task`."""
    global _grace, _gated
    if threading.current_thread() is not threading.main_thread():
        return {}
    _grace, _gated = grace, worker
    old = {}
    for s, h in ((signal.SIGINT, _on_signal), (signal.SIGTERM, _on_signal),
                 (signal.SIGALRM, _on_alarm)):
        old[s] = signal.signal(s, h)
    return old


def block() -> None:
    """Hold SIGINT/SIGTERM/SIGALRM pending from now on (a command that is exiting)."""
    with contextlib.suppress(ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM,
                                                  signal.SIGALRM})


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_signal


def restore(old: dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """The handlers for the duration of a block, unless they are installed already (the
    CLI installs them for the whole command)."""
    if installed():
        yield
        return
    old = install()
    try:
        yield
    finally:
        if old:
            # A library caller (no CLI): the stop was for this call; the next one starts
            # afresh. The timer goes first, or SIGALRM's default action would kill us.
            reset()
            restore(old)
