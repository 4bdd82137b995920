"""Exceptions raised by the engine. The CLI maps them to one-line messages and exit codes.

Every error that concerns one path keeps it as ``.path`` and pickles cleanly (workers in
other processes send them back as plain data, but a caller of the library may pickle them).
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "disk_error",
    "ArchiveError",
    "SourceChanged",
    "UnsafeSource",
    "SourceUnreadable",
    "VerifyFailed",
    "CorruptArchive",
    "UnsafeArchive",
    "ArchiveTooLarge",
    "DangerousRoot",
    "BadRoot",
    "LockBusy",
    "DurabilityError",
    "DiskFull",
    "UnsupportedFormat",
    "BadArgument",
    "DaskUnavailable",
    "UntrustedInput",
    "MountUnavailable",
    "Interrupted",
]

# Exit codes, as the CLI returns them (each exception carries its own: cli.py maps types).
EXIT_FAILED, EXIT_USAGE, EXIT_CAPPED, EXIT_LOCKED = 1, 2, 3, 75
# 3: a --max-dirs/--max-files cap stopped the run with work left (cron notices).
# GNU tar / BSD sysexits convention: 75 (EX_TEMPFAIL) is "try again later", what `flock -E 75`
# cron wrappers expect for "another run holds the lock".

# A full disk or quota: the sweep stops feeding work (DiskFull) instead of failing on.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_error(path: str, e: OSError, what: str) -> ArchiveError:
    """An OSError from writing *path* as ours: DiskFull for ENOSPC/EDQUOT, else ArchiveError."""
    if e.errno in DISK_FULL_ERRNOS:
        return DiskFull(path, f"{what}: {os.strerror(e.errno)}")
    return ArchiveError(path, f"{what}: {e.strerror or e}")


class BadArgument(ValueError):
    """A caller's argument is out of range or malformed (a usage error: exit 2). A
    ValueError, so API users who caught ValueError keep working."""

    exit_code = EXIT_USAGE


class UnsupportedFormat(BadArgument):
    """An archive format this tool does not write or read."""

    def __init__(self, fmt: object, valid: tuple[str, ...] = ()) -> None:
        self.format = fmt
        super().__init__(
            f"unknown archive format {fmt!r}; valid formats: {', '.join(valid)}"
        )


class DaskUnavailable(RuntimeError):
    """The ``dask`` extra is missing, or the scheduler cannot be reached."""

    exit_code = EXIT_USAGE


class MountUnavailable(RuntimeError):
    """``mount`` needs the ``mount`` extra (mfusepy) and libfuse 3, and one is missing."""

    exit_code = EXIT_USAGE


class ArchiveError(Exception):
    """Base class: something about one session or archive went wrong; nothing was lost."""

    exit_code = EXIT_FAILED

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SourceChanged(ArchiveError):
    """A file changed (size, mtime or ctime) while it was archived; the source is kept."""


class UnsafeSource(ArchiveError):
    """The session holds something that cannot be archived safely (a link that leaves the
    session, a FIFO, socket or device file); the source is kept."""


class SourceUnreadable(ArchiveError):
    """A file or directory of the session could not be read (e.g. permission denied)."""


class VerifyFailed(ArchiveError):
    """Reading the written archive back did not give what was read from the source."""


class CorruptArchive(ArchiveError):
    """An archive could not be read: truncated, bad checksum, not a tar stream."""


class UnsafeArchive(CorruptArchive):
    """An archive holds members that would land outside the destination (absolute paths,
    ``..``, escaping links) or that a safe restore refuses (devices, FIFOs)."""


class ArchiveTooLarge(CorruptArchive):
    """Extracting would exceed the size limit (decompression bomb or not enough space)."""


class DangerousRoot(ArchiveError):
    """A sweep root that must never be swept (``/``, ``/home``, ``/etc``, a ``.git`` path)."""

    exit_code = EXIT_USAGE


class BadRoot(ArchiveError):
    """The root does not exist, is not a directory, or cannot be read."""

    exit_code = EXIT_USAGE


class LockBusy(ArchiveError):
    """Another sweep holds the lock for this root."""

    exit_code = EXIT_LOCKED


class DurabilityError(ArchiveError):
    """fsync/syncfs failed. Not retryable (the kernel may have dropped the dirty pages):
    the whole batch is treated as failed and every source in it is kept."""


class DiskFull(ArchiveError):
    """ENOSPC/EDQUOT while writing an archive: the tmp is removed, the source kept, and a
    sweep stops feeding new work."""


class UntrustedInput(ArchiveError):
    """Something the tree's owner wrote (the state dir, a catalog row, a manifest line)
    names a path outside the tree, a symlink, a FIFO, a file of another user, or is not
    in the shape we write: refused (untrusted.py)."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT asked the command to stop (interrupt.py). A BaseException, as
    KeyboardInterrupt is: the ``except Exception`` that confines an error to one session
    must not swallow it; ``finally`` blocks still clean up on the way out. Exit 128+N."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signum)

    def __str__(self) -> str:
        import signal

        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        return f"interrupted by {name}"
