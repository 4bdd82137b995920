"""The engine's functions under API.md's names and signatures (re-exported by
scitex_session). Flat mode and defaults as documented; extras are keyword-only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .restore import restore_many, restore_one
from .single import archive_one
from .sweep import sweep


def archive_session_dir(
    src_dir: str | os.PathLike[str],
    format: str = "tar.gz",  # noqa: A002
    remove_src: bool = True,
    compresslevel: int = 1,
) -> Path:
    """Compress one session dir into one archive file beside it.

    Writes to an unnamed temp file in the same directory, reads it back and compares it
    with what was read from the source, makes it durable (fsync), links it to its final
    name (never replacing an existing archive: FileExistsError) and fsyncs the directory.
    Only then, when *remove_src*, is the source deleted — after a re-check that nothing
    in it changed. On any error the source is untouched. *compresslevel* is on gzip's
    1..9 scale for every format. Returns the archive's absolute path.
    """
    return archive_one(src_dir, format=format, remove_src=remove_src, compresslevel=compresslevel)


def restore_session_archive(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
) -> Path:
    """Extract a session archive into *dest_dir* (default: the archive path without its
    suffix), through a temp dir beside it and an atomic rename; never overwrites.
    With *remove_archive* the archive is deleted only after the restored tree is durable.
    Returns the restored directory's absolute path.
    """
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
    """Bulk compress every session-shaped direct child of *root* (flat mode).

    *pattern* keeps names containing it. Keyword extras are forwarded to
    :func:`archive_tool.sweep.sweep` (``workers=``, ``executor=``, ``shard=``,
    ``compresslevel=``, ``remove_src=``, ``batch_size=``). Returns the Summary dict:
    scanned, candidates, archived, skipped, failed, bytes_in, bytes_out (0 unless
    *track_bytes*), inodes_in, elapsed, failures, ...
    """
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
    """Bulk restore every archive directly under *root* whose name matches the glob
    *pattern* — by default any ``.tar.gz``, ``.tar.zst``, ``.tar`` or ``.tar.xz`` (the
    published default ``"*.tar.gz"`` missed the other formats). Each restores to
    ``dest_root/<name>/`` (default: beside the archive). Returns scanned, candidates,
    restored, skipped, failed, ...
    """
    return restore_many(
        root, pattern=pattern, dest_root=dest_root, remove_archive=remove_archive,
        dry_run=dry_run, max_files=max_files, track_bytes=track_bytes, **kwargs,
    )
