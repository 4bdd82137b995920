"""SessionManager: an in-process registry of sessions and their states (thread-safe)."""

from __future__ import annotations

import copy
import datetime as _dt
import threading
from typing import Any


class SessionManager:
    """Manages experiment sessions with tracking and lifecycle management.

    Every method takes the one lock, and getters return copies, so threads that start and
    close sessions concurrently never see a half-updated record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, dict[str, Any]] = {}
        self._all: dict[str, dict[str, Any]] = {}

    def create_session(
        self, session_id: str, config: dict[str, Any], script_path: str | None = None
    ) -> None:
        """Register a new session."""
        info = {
            "session_id": session_id,
            "config": config,
            "script_path": script_path,
            "start_time": _dt.datetime.now(),
            "status": "running",
        }
        with self._lock:
            self._active[session_id] = info
            self._all[session_id] = info

    def close_session(self, session_id: str, status: str = "success", exit_code: int = 0) -> None:
        """Mark a session as closed (unknown IDs are ignored): ``status`` becomes
        ``"closed"`` as API.md documents; the outcome given as *status* is kept under
        ``final_status`` (the published package drops it)."""
        with self._lock:
            info = self._all.get(session_id)
            if info is None:
                return
            info["status"] = "closed"
            info["final_status"] = status
            info["exit_code"] = exit_code
            info["end_time"] = _dt.datetime.now()
            self._active.pop(session_id, None)

    def get_active_sessions(self) -> dict[str, Any]:
        """All sessions not yet closed."""
        with self._lock:
            return {k: dict(v) for k, v in self._active.items()}

    def get_session(self, session_id: str) -> dict[str, Any]:
        """One session's information (an empty dict if unknown)."""
        with self._lock:
            info = self._all.get(session_id)
            return dict(info) if info is not None else {}

    def list_sessions(self) -> dict[str, Any]:
        """All sessions, active and closed."""
        with self._lock:
            return {k: dict(v) for k, v in self._all.items()}

    def __deepcopy__(self, memo: dict[int, Any]) -> SessionManager:
        new = SessionManager()
        with self._lock:
            new._all = copy.deepcopy(self._all, memo)
            new._active = {k: new._all[k] for k in self._active}
        return new


# The registry start()/close() report to.
_global = SessionManager()


def get_global_session_manager() -> SessionManager:
    return _global
