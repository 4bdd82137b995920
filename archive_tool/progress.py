"""The progress bar: when to show one, and how it learns its total.

Shown on stderr only when a person is watching (stderr is a TTY) or asked for
(``--progress``); ``--quiet`` always wins. A cron log therefore never fills with
carriage-return noise, and ``--json`` stdout stays one object.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def want_progress(quiet: bool, progress: bool | None,
                  isatty: Callable[[], bool] | None = None) -> bool:
    """--quiet silences; an explicit --progress/--no-progress decides; else only when
    *isatty* (default: the current ``sys.stderr.isatty``, looked up at call time) says so."""
    if quiet:
        return False
    if progress is not None:
        return progress
    try:
        return bool((isatty or sys.stderr.isatty)())
    except (ValueError, OSError):  # a closed stderr
        return False


class Bar:
    """A tqdm bar whose total may arrive later, from another thread."""

    def __init__(self, desc: str, total: int | None) -> None:
        from tqdm import tqdm  # lazy, heavy: a quiet or piped run never draws a bar

        self._bar = tqdm(desc=desc, total=total, unit=" sessions", file=sys.stderr,
                         dynamic_ncols=True, smoothing=0.1)
        self._lock = threading.Lock()

    def tick(self, _result: Any = None, n: int = 1) -> None:
        with self._lock:
            self._bar.update(n)

    def set_total(self, total: int) -> None:
        with self._lock:
            self._bar.total = max(total, self._bar.n)
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._bar.close()


@contextmanager
def progress_bar(enabled: bool, desc: str, total: int | None = None,
                 count: Callable[[], int] | None = None) -> Iterator[Bar | None]:
    """Yield a Bar (or None when disabled). *count*, when given, runs in a daemon thread
    and sets the total when it returns: a sweep streams discovery into the pool, so its
    total is only known after a separate counting walk, which must not delay the work."""
    if not enabled:
        yield None
        return
    bar = Bar(desc, total)
    stop = threading.Event()
    counter = None
    if count is not None and total is None:
        def run() -> None:
            try:
                n = count()
            except Exception:  # noqa: BLE001 - a failed count only costs the ETA
                return
            if not stop.is_set():
                bar.set_total(n)

        counter = threading.Thread(target=run, name="progress-count", daemon=True)
        counter.start()
    try:
        yield bar
    finally:
        if counter is not None:
            counter.join(timeout=2)  # a small job can finish before its count: let it land
        stop.set()
        bar.close()
