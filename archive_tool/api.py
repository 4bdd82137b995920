"""The engine's functions under API.md's names and signatures (re-exported by
scitex_session). Flat mode and defaults as documented; extras are keyword-only."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from archive_tool.engine.restore import restore_one
from archive_tool.engine.single import archive_one
from archive_tool.names import is_session_name, split_archive_name
from archive_tool.restore.many import restore_many
from archive_tool.sweep.plan import MAX_DAYS, check_days  # noqa: F401 - part of this module's API
from archive_tool.sweep.sessions import sweep


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
    in it changed. On any error the source is untouched. *compresslevel* is the format's
    own level (gzip 1..9, zstd 1..19, xz 0..9; ignored for tar), so API.md's default 1 is
    valid for every format; out of range is BadArgument (a ValueError) before anything is
    written. Returns the archive's absolute path.
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
    :func:`archive_tool.sweep.sessions.sweep` (``workers=``, ``executor=``, ``shard=``,
    ``compresslevel=``: the format's own level, default the format's default, as
    ``--level``; ``remove_src=``, ``batch_size=``). Returns the Summary dict:
    scanned, candidates, archived, skipped, failed, bytes_in, bytes_out (0 unless
    *track_bytes*), inodes_in, elapsed, failures, ...
    """
    check_days(older_than_days)
    _in_process_if_unguarded(kwargs)
    return sweep(
        root, flat=True, dry_run=dry_run, format=format, older_than_days=older_than_days,
        pattern=pattern, max_dirs=max_dirs, track_bytes=track_bytes, use_fd=use_fd, **kwargs,
    )


def restore_existing(
    root: str | os.PathLike[str],
    pattern: str | None = "*.tar.gz",
    dest_root: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    dry_run: bool = True,
    max_files: int | None = None,
    track_bytes: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Bulk restore every session archive directly under *root* whose name matches the
    glob *pattern* (API.md's default ``"*.tar.gz"``; ``None`` takes every format: .tar.gz,
    .tar.zst, .tar, .tar.xz). Only session-named archives (``<ID>[-<suffix>].<format>``)
    are considered: a ``dataset.tar.gz`` beside them is never restored, nor deleted by
    *remove_archive*. Each restores to ``dest_root/<name>/`` (default: beside the
    archive). Returns scanned, candidates, restored, skipped, failed, ...
    """
    _in_process_if_unguarded(kwargs)
    return restore_many(
        root, pattern=pattern, dest_root=dest_root, remove_archive=remove_archive,
        dry_run=dry_run, max_files=max_files, track_bytes=track_bytes,
        accept=_is_session_archive, **kwargs,
    )


def _is_session_archive(filename: str) -> bool:
    named = split_archive_name(filename)
    return named is not None and is_session_name(named[0])


def _in_process_if_unguarded(kwargs: dict[str, Any]) -> None:
    """Run in this process (workers=1) when called from a script's top level outside an
    ``if __name__ == "__main__":`` block, unless the caller chose workers or an executor.

    Pool workers start by importing the main script (multiprocessing's forkserver and
    spawn do); unguarded, that import calls us again in every worker, which found the
    root locked and died, so nothing was archived. The published package's users write
    such scripts; in-process they work, at the price of one core."""
    if kwargs.get("executor") is not None or kwargs.get("workers") is not None:
        return
    if called_unguarded_from_main():
        kwargs["workers"] = 1


def called_unguarded_from_main() -> bool:
    """True when the caller runs inside the main script's top-level code, at a statement
    not guarded by ``if __name__ == "__main__":`` (so a re-import would run it again)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return False  # -c, stdin, a REPL: there is no script for a worker to re-import
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            break
        frame = frame.f_back
    if frame is None:
        return False  # not under the script's import (a thread, an atexit hook)
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return not (_is_main_guard(node) and _in_body(node, line))
    return False


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    if len(t.ops) != 1 or not isinstance(t.ops[0], ast.Eq):
        return False
    sides = [t.left, t.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def _in_body(node: ast.If, line: int) -> bool:
    # The else branch of the guard is exactly what runs on re-import.
    last = node.body[-1]
    return node.body[0].lineno <= line <= (last.end_lineno or last.lineno)
