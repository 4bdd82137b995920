"""The archive half of the public API (API.md): the engine's functions, re-exported.

``archive_tool`` implements them with API.md's exact signatures; this package only
re-exports, so there is one definition of each (the engine never imports this package).
"""

from __future__ import annotations

from archive_tool.api import (
    archive_existing,
    archive_session_dir,
    restore_existing,
    restore_session_archive,
)

__all__ = [
    "archive_session_dir",
    "restore_session_archive",
    "archive_existing",
    "restore_existing",
]
