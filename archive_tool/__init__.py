"""archive_tool — find finished session dirs fast and turn each into one verified, durable
archive. The engine behind ``session-archive``; it never imports ``scitex_session``."""

from __future__ import annotations

__version__ = "0.1.0"

from archive_tool.errors import (  # noqa: E402
    ArchiveError,
    ArchiveTooLarge,
    BadRoot,
    CorruptArchive,
    DangerousRoot,
    DiskFull,
    DurabilityError,
    LockBusy,
    SourceChanged,
    SourceUnreadable,
    UnsafeArchive,
    UnsafeSource,
    UnsupportedFormat,
    VerifyFailed,
)

__all__ = [
    "__version__",
    "ArchiveError",
    "ArchiveTooLarge",
    "BadRoot",
    "CorruptArchive",
    "DangerousRoot",
    "DiskFull",
    "DurabilityError",
    "LockBusy",
    "SourceChanged",
    "SourceUnreadable",
    "UnsafeArchive",
    "UnsafeSource",
    "UnsupportedFormat",
    "VerifyFailed",
]
