"""Exceptions raised by the engine. The CLI maps them to one-line messages and exit codes.

Every error that concerns one path keeps it as ``.path`` and pickles cleanly (workers in
other processes send them back as plain data, but a caller of the library may pickle them).
"""

from __future__ import annotations

from .names import UnsupportedFormat

__all__ = [
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
]


class ArchiveError(Exception):
    """Base class: something about one session or archive went wrong; nothing was lost."""

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


class BadRoot(ArchiveError):
    """The root does not exist, is not a directory, or cannot be read."""


class LockBusy(ArchiveError):
    """Another sweep holds the lock for this root."""


class DurabilityError(ArchiveError):
    """fsync/syncfs failed. Not retryable (the kernel may have dropped the dirty pages):
    the whole batch is treated as failed and every source in it is kept."""


class DiskFull(ArchiveError):
    """ENOSPC/EDQUOT while writing an archive: the tmp is removed, the source kept, and a
    sweep stops feeding new work."""
