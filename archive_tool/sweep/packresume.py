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
from archive_tool.engine import commit, removesource, single
from archive_tool.engine.scan import content_bytes, scan_fd
from archive_tool.engine.tarwrite import write_tar
from archive_tool.errors import ArchiveError
from archive_tool.guard.lock import lock_session, lock_session_stat
from archive_tool.names import FORMATS, TMP_SUFFIX, session_of_trash
from archive_tool.pack import packfile
from archive_tool.summary import CLEANED, RESUMED, SKIPPED, Result
from archive_tool.sweep import step
from archive_tool.sweep.plan import Task

Out = list[tuple[Result, dict[str, Any] | None]]


def packed_names(parent_fd: int, d: str, packs: tuple[str, ...] | None = None
                 ) -> dict[str, tuple[str, int]]:
    """Session name -> (pack file, frame) for the packs already in the dir: *packs*, the
    pack names the planner listed before this sweep wrote any (a pack this sweep wrote
    holds no leftover source: reading those made a dir of n packs cost n^2/2 opens,
    issue 24), or, with None, the packs a listing of the dir shows now. A named-tmp pack
    (``<pack>.tmp``, the fallback where O_TMPFILE fails) seen in that listing is a
    crash's garbage and is removed: the caller holds the root's lock, so no live writer
    owns it (open_tmp no longer unlinks that name blindly, issue 24; with *packs* the
    sweeping process removes them first: :func:`remove_stale_pack_tmps`)."""
    found: dict[str, tuple[str, int]] = {}
    if packs is None:
        names = []
        for item in fs.scandir_sorted(parent_fd):
            if (item.name.endswith(TMP_SUFFIX)
                    and packfile.is_pack_name(item.name[:-len(TMP_SUFFIX)])
                    and item.is_file(follow_symlinks=False)):
                fs.unlink_at(parent_fd, item.name)
            elif packfile.is_pack_entry(item):
                names.append(item.name)
    else:
        names = [n for n in packs if packfile.is_pack_name(n)]
    for name in names:
        try:
            # open_file: O_NOFOLLOW and a regular file, as is_pack_entry asked of a listing.
            fd = fs.open_file(name, parent_fd)
            with packfile.Pack(os.path.join(d, name), fd) as p:
                for i, session in enumerate(p.names):
                    found[session] = (name, i)
        except (ArchiveError, OSError):
            continue  # not ours to judge here (gone, or not a pack); `verify` reports it
    return found


def remove_stale_pack_tmps(root: str, dir_packs: dict[str, tuple[str, ...] | None]) -> None:
    """Unlink the named-tmp packs (``<pack>.tmp``) the planner listed in the dirs a pack
    sweep writes to: what a killed fallback run left (O_TMPFILE leaves nothing). Called
    by the sweeping process once it holds the root's lock and before any worker starts,
    so neither another sweep nor one of ours owns such a file. No call where there is
    none."""
    todo = {d: [n for n in names if n.endswith(TMP_SUFFIX)]
            for d, names in dir_packs.items() if names}
    if not any(todo.values()):
        return
    with fs.DirCache(root) as dirs:
        for d, tmps in todo.items():
            for name in tmps:
                try:
                    fs.unlink_at(dirs.parent(os.path.join(d, name))[0], name)
                except OSError:
                    continue  # a dir of that name, or unreadable: not ours, left alone


def resume(parent_fd: int, path: str, name: str, where: tuple[str, int],
           pack_fd: int | None = None, arc: str | None = None,
           lock: single.Locked | None = None) -> Result | None:
    """Source and a pack holding it (a crash between publish and delete): delete the
    source only if the frame is exactly its tar bytes now; None if it differs (the source
    changed after it was packed: the caller packs it again). *pack_fd*, *arc*: the pack
    is in that ancestor dir and holds the session as *arc* (``--pack auto``). *lock*: the
    session already locked by the caller (single.lock_batch), who keeps it; else it is
    locked here."""
    pack_name, i = where
    pack_fd = parent_fd if pack_fd is None else pack_fd
    if lock is None:
        try:
            lock_fd, top_st = lock_session_stat(parent_fd, name, path, archived_ok=True)
        except FileExistsError as e:
            return Result(path, SKIPPED, e.strerror)
        except (ArchiveError, OSError) as e:
            return step.fail(path, e)
    else:
        lock_fd, top_st = lock.fd, lock.st
    try:
        entries = scan_fd(lock_fd, path, None, top_st)
        parts: list[bytes] = []
        write_tar(lock_fd, path, arc or name, entries, parts.append)
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        fd = fs.open_file(pack_name, pack_fd)
        with packfile.Pack(os.path.join(os.path.dirname(path), pack_name), fd) as p:
            if p.members(i) != tar:
                return None
            os.fsync(p.fd)
        commit.fsync_dir(pack_fd, os.path.dirname(path))
        # The locked fd is the inode scanned (its fstat is the manifest's top entry).
        removesource.remove_source(parent_fd, name, entries, pack_name, path, keep_archive=True,
                                   top_fd=lock_fd)
    except (ArchiveError, OSError) as e:
        return step.fail(path, e)
    finally:
        if lock is None:
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
