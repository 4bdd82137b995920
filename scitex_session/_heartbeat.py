"""Liveness of a running session: who runs it (host, PID, process start time, SLURM job)
and a heartbeat, so a sweep can tell a dead RUNNING dir from a live one (issue 13).

``<run>/.heartbeat`` holds the identity as JSON, written once at start; its *mtime* is the
heartbeat, refreshed every ``interval`` seconds by a daemon thread (one ``utime``). The
stale-run finalizer (``archive_tool.stale.finalize``; the file is defined in ``archive_tool.guard.liveness``) moves a run only
when that mtime is old *and*, on this host, the PID is gone or belongs to a process with
another start time (PIDs are reused; the start time, in clock ticks since boot, is not).

Nothing here may raise into the user's program or change its exit status: every failure
leaves the run without (or with an older) heartbeat, which only makes it look less dead.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from archive_tool.guard.liveness import (
    HEARTBEAT_NAME,
    MARKER_NAME,
    boot_id,
    hostname,
    pid_namespace,
    proc_stat,
)
from archive_tool.names import ERROR_STATE, RUNNING_STATE

INTERVAL_ENV = "SCITEX_SESSION_HEARTBEAT"
DEFAULT_INTERVAL = 60.0
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")

_beats: dict[str, _Heartbeat] = {}
_beats_lock = threading.Lock()


def _interval(value: float | None) -> float:
    """The keyword wins, then ``$SCITEX_SESSION_HEARTBEAT`` (seconds; 0 or ``off``
    disables), then 60 s. A bad env value is reported and ignored, never raised."""
    if value is not None:
        return max(0.0, float(value))
    raw = os.environ.get(INTERVAL_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_INTERVAL
    if raw in ("off", "no", "false"):
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        print(f"scitex_session: ignoring {INTERVAL_ENV}={raw!r} (seconds expected); "
              f"heartbeat every {DEFAULT_INTERVAL:g} s", file=sys.stderr)
        return DEFAULT_INTERVAL


def identity(interval: float) -> dict[str, Any]:
    """What CONFIG["LIVENESS"] and ``.heartbeat`` record about this process."""
    ident: dict[str, Any] = {
        "HOST": hostname(),
        "PID": os.getpid(),
        "PROC_START_TICKS": (proc_stat() or (None, None))[1],
        "BOOT_ID": boot_id(),
        "PID_NS": pid_namespace(),
        "HEARTBEAT_INTERVAL": interval or None,
        "HEARTBEAT_FILE": HEARTBEAT_NAME if interval else None,
    }
    for var in SLURM_VARS:
        if os.environ.get(var):
            ident[var] = os.environ[var]
    return ident


class _Heartbeat:
    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scitex-session-heartbeat",
                                       daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # dir moved or file removed: the run just looks older
        except BaseException:  # noqa: BLE001 - never print a thread traceback into a run
            pass

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)


def begin(session_id: str, run_dir: Path, interval: float | None = None) -> dict[str, Any]:
    """Write ``<run_dir>/.heartbeat`` and start beating; returns CONFIG["LIVENESS"]."""
    secs = _interval(interval)
    ident = identity(secs)
    if not secs:
        return ident
    path = run_dir / HEARTBEAT_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            os.write(fd, (json.dumps(ident, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)
        hb = _Heartbeat(path, secs)
        hb.thread.start()
    except Exception as e:  # noqa: BLE001 - a run without heartbeat is still a run
        print(f"scitex_session: no heartbeat for this run ({e})", file=sys.stderr)
        ident["HEARTBEAT_INTERVAL"] = ident["HEARTBEAT_FILE"] = None
        return ident
    with _beats_lock:
        _beats[session_id] = hb
    return ident


def end(session_id: str) -> None:
    """Stop the heartbeat (idempotent). The file stays until :func:`claim_run_dir`."""
    with _beats_lock:
        hb = _beats.pop(session_id, None)
    if hb is not None:
        hb.stop()


class RunDirClaim:
    """An exclusive flock on the run dir, held from before CONFIG is saved until after the
    move, so a stale-run finalizer (which takes the same lock) and close never interleave.
    ``path`` is where the dir is now: if a finalizer moved it to FINISHED_ERROR/ first,
    close follows it there and removes the finalizer's marker (the run did end)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim_run_dir(src: Path, sdir_out: Path) -> RunDirClaim:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = None
        moved = sdir_out / ERROR_STATE / src.name
        if src.parent.name == RUNNING_STATE and moved.is_dir() and not moved.is_symlink():
            try:
                fd = os.open(moved, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                fd = None
        if fd is None:
            return RunDirClaim(src, None)  # the caller's own checks report it
    try:
        # Blocking: a finalizer holds it for milliseconds; a sweep archiving the finalized
        # dir holds it while it packs, after which the dir is gone and close says so.
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.fstat(fd)
        for where in (src, sdir_out / ERROR_STATE / src.name):
            try:
                st = os.lstat(where)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                if where != src:
                    _unmark(fd, where)
                _remove_heartbeat(fd)
                return RunDirClaim(where, fd)
    except OSError:
        pass
    except BaseException:  # Ctrl-C while waiting for the lock: do not leak the fd
        os.close(fd)
        raise
    os.close(fd)
    return RunDirClaim(src, None)


def _unmark(fd: int, where: Path) -> None:
    try:
        os.unlink(MARKER_NAME, dir_fd=fd)
    except OSError:
        pass
    print(f"scitex_session: this run was finalized as stale while it was still running "
          f"(moved to {where}); it is finished normally now", file=sys.stderr)


def _remove_heartbeat(fd: int) -> None:
    # A finished dir needs no liveness file (one inode less per run); CONFIG keeps the
    # identity.
    try:
        os.unlink(HEARTBEAT_NAME, dir_fd=fd)
    except OSError:
        pass
