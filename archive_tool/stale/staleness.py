"""The staleness rule for one RUNNING run dir, judged through an fd: heartbeat age, and
for a run on this host whether its process is gone (PID, start time, boot ID). The walk
over a tree and the finalizing move live in :mod:`archive_tool.stale.finalize`."""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, NamedTuple

from archive_tool import fs
from archive_tool.errors import BadArgument
from archive_tool.guard.liveness import HEARTBEAT_NAME, boot_id, hostname, pid_namespace, proc_stat
from archive_tool.units import parse_age

DEFAULT_INTERVAL = 60.0
STALE_FACTOR = 10
LIVE, STALE, UNKNOWN = "live", "stale", "no heartbeat"
_MAX_IDENTITY = 64 * 1024
_DIR_FLAGS = fs.O_DIR


def process_gone(ident: dict[str, Any]) -> str | None:
    """Why the process *ident* describes (a run on this host) no longer runs, or None if
    it may still run."""
    pid = ident.get("PID")
    if not isinstance(pid, int) or pid <= 0:
        return "no PID recorded"
    then, now = ident.get("BOOT_ID"), boot_id()
    if then and now and then != now:
        return "the host rebooted since"
    st = proc_stat(pid)
    if st is None:
        if os.path.isdir("/proc/self"):
            return f"PID {pid} is gone"
        try:  # no /proc (not Linux): existence is all we can tell
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"PID {pid} is gone"
        except OSError:
            pass
        return None
    state, ticks = st
    want = ident.get("PROC_START_TICKS")
    if isinstance(want, int) and ticks != want:
        return f"PID {pid} now belongs to another process (start time {ticks} != {want})"
    if state in ("Z", "X"):
        return f"PID {pid} is a zombie"
    return None


# ---------------------------------------------------------------------------- classifying


class Verdict(NamedTuple):
    path: str
    state: str            # LIVE, STALE or UNKNOWN (no heartbeat and no stale_after)
    reason: str
    mark_ns: int          # heartbeat mtime, or the newest mtime without heartbeat
    heartbeat: bool
    identity: dict[str, Any] | None
    dev_ino: tuple[int, int] | None = None  # the run dir judged (set by the tree walk)


def _same_pid_namespace(ident: dict[str, Any]) -> bool:
    # A PID read in another PID namespace (a container sharing the host name) names another
    # process here, or none: only a run recorded in our namespace is judged by its PID
    # before its heartbeat ages. Identities written before PID_NS was recorded wait for
    # the threshold, as they always did.
    ns = ident.get("PID_NS")
    return isinstance(ns, str) and ns == pid_namespace()


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _read_heartbeat(dfd: int) -> tuple[dict[str, Any] | None, int | None]:
    """(identity or {} if unreadable, heartbeat mtime ns) — (None, None) without one."""
    try:
        fd = os.open(HEARTBEAT_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dfd)
    except FileNotFoundError:
        return None, None
    except OSError:
        st = os.stat(HEARTBEAT_NAME, dir_fd=dfd, follow_symlinks=False)
        return {}, st.st_mtime_ns  # e.g. a symlink: its own mtime is all we trust
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {}, st.st_mtime_ns
        try:
            ident = json.loads(os.read(fd, _MAX_IDENTITY))
        except ValueError:
            ident = {}
        return (ident if isinstance(ident, dict) else {}), st.st_mtime_ns
    finally:
        os.close(fd)


def _newest_mtime_ns(dfd: int) -> int:
    """Newest mtime of the dir and everything in it (no link followed): when a run without
    heartbeat last wrote anything."""
    newest = os.fstat(dfd).st_mtime_ns
    for _root, dirs, files, rfd in os.fwalk(".", dir_fd=dfd, follow_symlinks=False):
        for name in dirs + files:
            try:
                newest = max(newest, os.stat(name, dir_fd=rfd, follow_symlinks=False).st_mtime_ns)
            except OSError:
                continue
    return newest


def classify_fd(dfd: int, path: str, stale_after: float | None, now: float,
                 host: str) -> Verdict:
    ident, hb_ns = _read_heartbeat(dfd)
    if hb_ns is None:
        if stale_after is None:
            # Not walked: it could not be finalized anyway, and a nightly sweep should not
            # stat every file of every heartbeat-less run.
            return Verdict(path, UNKNOWN, "no heartbeat (published package?); only "
                           "--stale-after finalizes it", os.fstat(dfd).st_mtime_ns, False, None)
        mark = _newest_mtime_ns(dfd)
        age = now - mark / 1e9
        if age < stale_after:
            return Verdict(path, LIVE, f"no heartbeat; last write {_ago(age)} ago", mark,
                           False, None)
        return Verdict(path, STALE, f"no heartbeat and nothing written for {_ago(age)} "
                       f"(--stale-after {_ago(stale_after)})", mark, False, None)
    assert ident is not None
    interval = ident.get("HEARTBEAT_INTERVAL")
    if not isinstance(interval, (int, float)) or interval <= 0:
        interval = DEFAULT_INTERVAL
    threshold = stale_after if stale_after is not None else STALE_FACTOR * interval
    age = now - hb_ns / 1e9
    if ident.get("HOST") == host and _same_pid_namespace(ident):
        # On this host a dead process is known at once: waiting out the heartbeat
        # threshold showed a SIGKILLed run as "live" for 10 minutes (issue 26).
        gone = process_gone(ident)
        if gone is not None:
            return Verdict(path, STALE, f"{gone} (heartbeat {_ago(age)} ago)", hb_ns, True,
                           ident)
    if age < threshold:
        return Verdict(path, LIVE, f"heartbeat {_ago(age)} ago", hb_ns, True, ident)
    old = f"heartbeat {_ago(age)} old (threshold {_ago(threshold)})"
    run_host = ident.get("HOST")
    if run_host == host:
        gone = process_gone(ident)
        if gone is None:
            return Verdict(path, LIVE, f"{old} but PID {ident.get('PID')} still runs "
                           "(stopped or hung?)", hb_ns, True, ident)
        return Verdict(path, STALE, f"{old}; {gone}", hb_ns, True, ident)
    where = f"on host {run_host}" if isinstance(run_host, str) else "host unknown"
    return Verdict(path, STALE, f"{old}, {where}", hb_ns, True, ident)


def classify(path: str | os.PathLike[str], stale_after: float | None = None,
             now: float | None = None) -> Verdict:
    """Judge one RUNNING run dir (see the module doc). *stale_after* is in seconds."""
    p = os.fspath(path)
    dfd = os.open(p, _DIR_FLAGS)
    try:
        return classify_fd(dfd, p, stale_after, time.time() if now is None else now,
                            hostname())
    finally:
        os.close(dfd)


def parse_duration(text: str) -> float:
    """``"2d"``, ``"6h"``, ``"30m"``, ``"90s"`` -> seconds; a bare number is days (the
    --older-than syntax, units.parse_age). BadArgument on anything else."""
    try:
        return parse_age(str(text)) * 86400
    except BadArgument:
        raise BadArgument(f"stale-after must be a duration like 2d, 6h, 30m, 90s or a "
                          f"number of days, got {text!r}") from None


# ----------------------------------------------------------------------------- finalizing
