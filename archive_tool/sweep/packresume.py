"""Crash leftovers of ``sweep --pack``, finished by the next pack sweep.

A crash between a pack's publish and its sources' delete leaves sessions that are both a
source dir and a frame of a complete pack: :func:`resume` deletes the source only if the
frame is exactly its tar bytes now (as a per-session sweep does for an archive beside its
source). A crash mid-delete leaves ``.<name>.deleting``: :func:`cleanup` removes it when a
pack in its dir (or an archive) holds the session, else puts it back.
"""

from __future__ import annotations

import os
from typing import Any

from archive_tool import fs
from archive_tool.engine import commit, removesource
from archive_tool.engine.scan import content_bytes, scan_fd
from archive_tool.engine.tarwrite import write_tar
from archive_tool.errors import ArchiveError
from archive_tool.guard.lock import lock_session
from archive_tool.names import FORMATS, TMP_SUFFIX, session_of_trash
from archive_tool.pack import packfile
from archive_tool.summary import CLEANED, RESUMED, SKIPPED, Result
from archive_tool.sweep import step
from archive_tool.sweep.plan import Task

Out = list[tuple[Result, dict[str, Any] | None]]


def packed_names(parent_fd: int, d: str) -> dict[str, tuple[str, int]]:
    """Session name -> (pack file, frame) for the packs already in the dir. A named-tmp
    pack (``<pack>.tmp``, the fallback where O_TMPFILE fails) seen in the same listing is
    a crash's garbage and is removed: the caller holds the root's lock, so no live writer
    owns it (open_tmp no longer unlinks that name blindly, issue 24)."""
    found: dict[str, tuple[str, int]] = {}
    for item in fs.scandir_sorted(parent_fd):
        if (item.name.endswith(TMP_SUFFIX) and packfile.is_pack_name(item.name[:-len(TMP_SUFFIX)])
                and item.is_file(follow_symlinks=False)):
            fs.unlink_at(parent_fd, item.name)
            continue
        if not packfile.is_pack_entry(item):
            continue
        try:
            fd = fs.open_file(item.name, parent_fd)
            with packfile.Pack(os.path.join(d, item.name), fd) as p:
                for i, name in enumerate(p.names):
                    found[name] = (item.name, i)
        except (ArchiveError, OSError):
            continue  # not ours to judge here; `verify` reports it
    return found


def resume(parent_fd: int, path: str, name: str, where: tuple[str, int],
           pack_fd: int | None = None, arc: str | None = None) -> Result | None:
    """Source and a pack holding it (a crash between publish and delete): delete the
    source only if the frame is exactly its tar bytes now; None if it differs (the source
    changed after it was packed: the caller packs it again). *pack_fd*, *arc*: the pack
    is in that ancestor dir and holds the session as *arc* (``--pack auto``)."""
    pack_name, i = where
    pack_fd = parent_fd if pack_fd is None else pack_fd
    try:
        lock_fd = lock_session(parent_fd, name, path, archived_ok=True)
    except FileExistsError as e:
        return Result(path, SKIPPED, e.strerror)
    except (ArchiveError, OSError) as e:
        return step.fail(path, e)
    try:
        entries = scan_fd(lock_fd, path)
        parts: list[bytes] = []
        write_tar(lock_fd, path, arc or name, entries, parts.append)
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        fd = fs.open_file(pack_name, pack_fd)
        with packfile.Pack(os.path.join(os.path.dirname(path), pack_name), fd) as p:
            if p.members(i) != tar:
                return None
            os.fsync(p.fd)
        commit.fsync_dir(pack_fd, os.path.dirname(path))
        removesource.remove_source(parent_fd, name, entries, pack_name, path, keep_archive=True)
    except (ArchiveError, OSError) as e:
        return step.fail(path, e)
    finally:
        os.close(lock_fd)
    return Result(path, RESUMED, "", content_bytes(entries), 0, len(entries))


def held_above(dirs: fs.DirCache, root: str | None, trash: str, name: str) -> bool:
    """Does a ``--pack auto`` pack in a dir above the trash's (up to *root*) hold the
    session, as its path below that dir (pack/entrypath.py)? A trash is half deleted: it
    must never be renamed back over a session a pack holds whole."""
    d = os.path.dirname(trash)
    session = os.path.join(d, name)
    top = (root or "").rstrip("/")
    while root and d.startswith(top + "/"):
        d = os.path.dirname(d)
        if os.path.relpath(session, d) in packed_names(dirs.parent(os.path.join(d, "-"))[0], d):
            return True
    return False


def cleanup(t: Task, opts: dict[str, Any]) -> Out:
    """``.<name>.deleting``: removed if a pack in its dir (or an archive) holds the
    session, else renamed back (step.cleanup's rule, packs included)."""
    with fs.DirCache(opts.get("root")) as dirs:
        try:
            parent_fd, trash = dirs.parent(t.path)
            name = session_of_trash(trash)
            if name and (name in packed_names(parent_fd, os.path.dirname(t.path))
                         or held_above(dirs, opts.get("root"), t.path, name)) and not any(
                    fs.lexists_at(parent_fd, f"{name}.{f}") for f in FORMATS):
                lock_fd = lock_session(parent_fd, trash, t.path, archived_ok=True)
                try:
                    fs.rmtree_at(parent_fd, trash)
                finally:
                    os.close(lock_fd)
                return [(Result(t.path, CLEANED, "leftover of an interrupted delete removed "
                                "(the session is in a pack)"), None)]
        except FileExistsError as e:
            return [(Result(t.path, SKIPPED, e.strerror), None)]
        except (ArchiveError, OSError) as e:
            return [(step.fail(t.path, e), None)]
        return [(step.cleanup(t, dirs), None)]
