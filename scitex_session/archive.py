"""The archive half of the public API: thin wrappers over :mod:`archive_tool`.

Signatures are API.md's; the work is done by the engine, which never imports this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archive_tool import api as _api


def archive_session_dir(
    src_dir: str | Path,
    format: str = "tar.gz",  # noqa: A002 - API.md's parameter name
    remove_src: bool = True,
    compresslevel: int = 1,
) -> Path:
    """Compress one session dir into one archive file beside it (verified, durable,
    then the source removed when *remove_src*). Returns the archive's absolute path."""
    return _api.archive_session_dir(
        src_dir, format=format, remove_src=remove_src, compresslevel=compresslevel
    )


def restore_session_archive(
    archive_path: str | Path,
    dest_dir: str | Path | None = None,
    remove_archive: bool = False,
) -> Path:
    """Extract a session archive into *dest_dir* (default: the archive path without its
    suffix) through a temp dir and an atomic rename. Returns the restored dir."""
    return _api.restore_session_archive(
        archive_path, dest_dir=dest_dir, remove_archive=remove_archive
    )


def archive_existing(
    root: str | Path,
    older_than_days: float | None = None,
    format: str = "tar.gz",  # noqa: A002
    pattern: str | None = None,
    dry_run: bool = True,
    max_dirs: int | None = None,
    track_bytes: bool = False,
    use_fd: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Bulk compress every session-shaped direct child of *root* (flat mode).

    Extra keyword arguments (``workers=``, ``executor=``, ``shard=``, ``compresslevel=``,
    ``progress=``) are forwarded to :func:`archive_tool.sweep.sweep`."""
    return _api.archive_existing(
        root,
        older_than_days=older_than_days,
        format=format,
        pattern=pattern,
        dry_run=dry_run,
        max_dirs=max_dirs,
        track_bytes=track_bytes,
        use_fd=use_fd,
        **kwargs,
    )


def restore_existing(
    root: str | Path,
    pattern: str | None = None,
    dest_root: str | Path | None = None,
    remove_archive: bool = False,
    dry_run: bool = True,
    max_files: int | None = None,
    track_bytes: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Bulk restore every archive directly under *root* whose name matches the glob
    *pattern* (default: any of ``*.tar.gz``, ``*.tar.zst``, ``*.tar``, ``*.tar.xz``)."""
    return _api.restore_existing(
        root,
        pattern=pattern,
        dest_root=dest_root,
        remove_archive=remove_archive,
        dry_run=dry_run,
        max_files=max_files,
        track_bytes=track_bytes,
        **kwargs,
    )
