"""What a running session writes about itself and what the stale-run finalizer reads:
the one definition of the heartbeat file and of a process's identity (host, PID, start
time, boot). Shared by ``scitex_session`` (at every run's start, so kept to stdlib
modules a run imports anyway) and :mod:`stale`.
"""

from __future__ import annotations

import os

HEARTBEAT_NAME = ".heartbeat"
MARKER_NAME = "STALE_FINALIZED.json"


def proc_stat(pid: int | str = "self") -> tuple[str, int] | None:
    """(state, start time) of a process from /proc/<pid>/stat: field 3, and field 22 in
    clock ticks after boot (a reused PID has another start time). None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # The command name (field 2) may hold spaces and ')': split after the last ')'.
        rest = data[data.rindex(b")") + 2:].split()
        return rest[0].decode("ascii", "replace"), int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def hostname() -> str:
    # uname's nodename is what gethostname() returns on Linux, without importing socket
    # into every session's start-up.
    return os.uname().nodename


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where /proc lacks it.

    A PID is only meaningful inside its namespace: a run in a container that shares the
    host name but not the PID namespace looks "gone" from outside. The stale rule trusts
    a missing PID only when both sides share the namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
