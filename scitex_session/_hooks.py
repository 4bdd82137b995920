"""Start/close hooks: the notification extension point the published package offers.

Start hooks are called as ``fn(session_id, script_path, metadata)``, close hooks as
``fn(status, exit_code)``. Each fires exactly once per session (the published package fires
them twice). A failing hook is reported on stderr and never breaks the run: a notifier is
not allowed to lose a finished experiment.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_start_hooks: list[Callable[..., Any]] = []
_close_hooks: list[Callable[..., Any]] = []


def register_session_start_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call *fn(session_id, script_path, metadata)* at every session start. Idempotent;
    returns *fn* so it can be used as a decorator."""
    with _lock:
        if fn not in _start_hooks:
            _start_hooks.append(fn)
    return fn


def register_session_close_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call *fn(status, exit_code)* at every session close. Idempotent; returns *fn*."""
    with _lock:
        if fn not in _close_hooks:
            _close_hooks.append(fn)
    return fn


def unregister_session_start_hook(fn: Callable[..., Any]) -> None:
    """Remove a start hook (no-op if absent)."""
    with _lock:
        if fn in _start_hooks:
            _start_hooks.remove(fn)


def unregister_session_close_hook(fn: Callable[..., Any]) -> None:
    """Remove a close hook (no-op if absent)."""
    with _lock:
        if fn in _close_hooks:
            _close_hooks.remove(fn)


def has_close_hooks() -> bool:
    with _lock:
        return bool(_close_hooks)


def _call_all(hooks: list[Callable[..., Any]], *args: Any) -> None:
    with _lock:
        todo = list(hooks)
    for fn in todo:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - see module docstring
            print(f"scitex_session: hook {fn!r} failed:\n{traceback.format_exc()}",
                  file=sys.stderr)


def fire_start(session_id: str, script_path: str | None, metadata: Any = None) -> None:
    _call_all(_start_hooks, session_id, script_path, metadata)


def fire_close(status: str, exit_code: int | None) -> None:
    _call_all(_close_hooks, status, exit_code)
