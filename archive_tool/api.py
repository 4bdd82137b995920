"""The engine's functions under API.md's names and signatures (re-exported by
scitex_session). Flat mode and defaults as documented; extras are keyword-only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .restore import restore_one
from .single import archive_one
from .sweep import restore_many, sweep


def archive_session_dir(
    src_dir: str | os.PathLike[str],
    format: str = "tar.gz",  # noqa: A002
    remove_src: bool = True,
    compresslevel: int = 1,
) -> Path:
    return archive_one(src_dir, format=format, remove_src=remove_src, compresslevel=compresslevel)


def restore_session_archive(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
) -> Path:
    return restore_one(archive_path, dest_dir, remove_archive)


def archive_existing(
    root: str | os.PathLike[str],
    older_than_days: float | None = None,
    format: str = "tar.gz",  # noqa: A002
    pattern: str | None = None,
    dry_run: bool = True,
    max_dirs: int | None = None,
    track_bytes: bool = False,
    use_fd: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    return sweep(
        root, flat=True, dry_run=dry_run, format=format, older_than_days=older_than_days,
        pattern=pattern, max_dirs=max_dirs, track_bytes=track_bytes, use_fd=use_fd, **kwargs,
    )


def restore_existing(
    root: str | os.PathLike[str],
    pattern: str | None = None,
    dest_root: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    dry_run: bool = True,
    max_files: int | None = None,
    track_bytes: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    return restore_many(
        root, pattern=pattern, dest_root=dest_root, remove_archive=remove_archive,
        dry_run=dry_run, max_files=max_files, track_bytes=track_bytes, **kwargs,
    )
