"""Writers that may still hold a finished session's files: a sweep leaves such a session.

A process can keep writing to a session's log after the session moved to FINISHED_*
(a forked child, a ``tee``, a job step that outlived its script). Archive-then-delete would
then lose every later write: they go to the unlinked inode (issue 23 item 8, "k1": 549
lines over 28 of 30 sessions). Two guards, both a skip with a reason, never a failure:

- **open for writing on this host**: one pass over ``/proc/*/fd`` per sweep
  (:func:`open_for_writing`); each fd that names a path is ``stat``-ed (dev, inode: a
  readlink text is not enough, it may be "(deleted)", renamed, or from another mount
  namespace) and its ``/proc/PID/fdinfo/N`` flags say whether it is open for writing. A
  session with any of its inodes in that set is skipped: "open for writing by PID n".
  Without root, only this user's processes are visible (the others' fds are EACCES);
  those are the ones that can write this user's 0600/0644 files.
- **a quiet period** (:data:`DEFAULT_QUIET_PERIOD`): the session's newest mtime (free: the
  scan already lstat-ed every inode) must be at least that old. It covers writers that
  /proc cannot show: processes on other nodes of a shared file system (NFS, Lustre), and
  a writer that opens the file after the /proc pass.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from archive_tool.errors import BadArgument

# 10 minutes. A job's last writes (stdout flushed at exit, a `tee` draining its pipe, a
# SLURM epilogue copying a log) land within seconds to a minute of its end; NFS clients
# cache attributes for up to 60 s (acregmax) and Lustre flushes dirty pages within 30 s,
# so a writer on another node can show its mtime that late. 10 minutes covers both with
# margin and costs a daily cron sweep nothing (a session finished 5 minutes before is
# taken by the next run). `--quiet-period 0` turns it off.
DEFAULT_QUIET_PERIOD = 600.0
# Read once per process: tests and operators can set the default without a flag (cron
# lines that cannot be edited, a test suite that sweeps sessions it just made).
QUIET_PERIOD_ENV = "SESSION_ARCHIVE_QUIET_PERIOD"

_ACCMODE = 0o3  # O_ACCMODE: O_RDONLY 0, O_WRONLY 1, O_RDWR 2
_FLAGS = re.compile(rb"^flags:\s*([0-7]+)\s*$", re.M)


def default_quiet_period() -> float:
    """The quiet period in seconds: $SESSION_ARCHIVE_QUIET_PERIOD (a duration: 10m, 600,
    0) or :data:`DEFAULT_QUIET_PERIOD`."""
    raw = os.environ.get(QUIET_PERIOD_ENV, "").strip()
    if not raw:
        return DEFAULT_QUIET_PERIOD
    return parse_period(raw)


def parse_period(raw: str | float) -> float:
    """``10m``, ``90s``, ``1h``, ``2d``, ``0``; a bare number is seconds. ValueError if
    malformed or negative."""
    if isinstance(raw, (int, float)):
        secs = float(raw)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", raw.lower())
        if m is None:
            raise ValueError(f"a quiet period looks like 10m, 90s, 1h or 0, got {raw!r}")
        secs = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 0 <= secs <= 10 * 365 * 86400:
        raise ValueError(f"a quiet period must be between 0 and 10 years, got {raw!r}")
    return secs


def check_quiet_period(value: float | str | None) -> float:
    """Seconds, from an API argument (None: the default) or BadArgument."""
    try:
        return default_quiet_period() if value is None else parse_period(value)
    except ValueError as e:
        raise BadArgument(str(e)) from None


def open_for_writing(proc: str = "/proc") -> dict[tuple[int, int], int]:
    """(st_dev, st_ino) -> PID of every regular file some process on this host has open
    for writing (O_WRONLY or O_RDWR), from one pass over ``/proc/*/fd``. Processes and fds
    that vanish or are not ours to read are skipped."""
    me = os.getpid()
    out: dict[tuple[int, int], int] = {}
    try:
        pids = [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return out
    for pid in pids:
        if pid == me:
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or another user's process without root
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                # Sockets, pipes, anon inodes ("socket:[123]") name no file: skip them
                # without a stat (a pass touches every fd on the host).
                if not os.readlink(link).startswith("/"):
                    continue
                st = os.stat(link)  # the magic link: the open file itself, even if unlinked
                if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in out:
                    continue
                with open(f"{proc}/{pid}/fdinfo/{fd}", "rb") as f:
                    m = _FLAGS.search(f.read())
            except OSError:
                continue
            if m is not None and int(m.group(1), 8) & _ACCMODE:
                out[(st.st_dev, st.st_ino)] = pid
    return out


@dataclass
class Holds:
    """What keeps a session from being archived now (sent to the workers with a batch)."""

    quiet_period: float = 0.0
    writers: Mapping[tuple[int, int], int] = field(default_factory=dict)
    now: float = field(default_factory=time.time)

    @classmethod
    def take(cls, quiet_period: float | None) -> Holds:
        """The /proc pass and the clock, once, at the start of a sweep."""
        qp = default_quiet_period() if quiet_period is None else float(quiet_period)
        return cls(qp, open_for_writing())

    def reason(self, dev: int, entries: Iterable[Any]) -> str | None:
        """Why the session whose manifest is *entries* (inodes on device *dev*) must be
        left now, or None."""
        entries = list(entries)
        if self.writers:
            for e in entries:
                pid = self.writers.get((dev, e.ino))
                if pid is not None:
                    return f"open for writing by PID {pid}"
        if self.quiet_period:
            cutoff_ns = int((self.now - self.quiet_period) * 1e9)
            if any(e.mtime_ns >= cutoff_ns for e in entries):
                return f"written within the quiet period ({_human(self.quiet_period)})"
        return None


def _human(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    return f"{secs:g}s"
