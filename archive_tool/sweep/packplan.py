"""What a pack sweep plans, and what it finds left by a crash.

Planning: ``--pack daily|weekly|N|auto`` parsed, a session's period from its ID's
timestamp, and the packs of one sweep planned per FINISHED_* dir, or with ``auto`` across
dirs (plan_auto: one owner's dirs in path order until a pack reaches its target, the pack
in their deepest common dir).

Crash leftovers, finished by the next pack sweep (was packresume.py): a crash between a
pack's publish and its sources' delete leaves sessions that are both a source dir and a
frame of a complete pack: :func:`resume` deletes the source only if the frame is exactly
its tar bytes now (as a per-session sweep does for an archive beside its source). A crash
mid-delete leaves ``.<name>.deleting``: :func:`cleanup` removes it when a pack in its dir
(or an archive) holds the session, else puts it back.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archive_tool import fs
from archive_tool.engine import commit, removesource, single
from archive_tool.engine.scan import content_bytes, scan_fd
from archive_tool.engine.tarwrite import write_tar
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.guard.lock import lock_session, lock_session_stat
from archive_tool.names import FORMATS, TMP_SUFFIX, session_of_trash
from archive_tool.pack import entrypath, packfile
from archive_tool.summary import CLEANED, RESUMED, SKIPPED, Result
from archive_tool.sweep import step
from archive_tool.sweep.plan import Task

# A day's or week's sessions of one dir beyond this go to further packs (.2, .3 ...):
# bounds one worker's job and the index a reader loads.
MAX_PACK_SESSIONS = 10_000
AUTO = "auto"
# --pack auto's targets: a pack is closed once it holds this many sessions or this many
# compressed bytes (measured in RESULTS.md, "Pack size: --pack auto's targets").
DEFAULT_PACK_SESSIONS = 1_000
DEFAULT_PACK_BYTES = 256 * 1024 * 1024
_ID_DATE = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-")
_ID_TIME = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-(\d{2})h(\d{2})m(\d{2})s_")


def parse_pack(value: str | int) -> str | int:
    """``daily`` | ``weekly`` | ``auto`` | N (sessions per pack) -> the mode; BadArgument
    otherwise."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        n = int(value)
        if not 1 <= n <= MAX_PACK_SESSIONS:
            raise BadArgument(f"--pack N wants 1..{MAX_PACK_SESSIONS}, got {n}")
        return n
    v = str(value).strip().lower()
    if v not in ("daily", "weekly", AUTO):
        raise BadArgument(f"--pack wants auto, daily, weekly or a number of sessions, "
                          f"got {value!r}")
    return v


def period_of(name: str, mode: str | int) -> str:
    """The pack a session belongs to, from the date in its ID (when it started). *name*
    may be a spanning pack's entry path (``a/b/<ID>-main``)."""
    m = _ID_DATE.match(name.rpartition("/")[2])
    if not m:
        return "undated"
    d = _dt.date(int(m[1]), int(m[2]), int(m[3]))
    if mode == "weekly":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return d.isoformat()


@dataclass
class PackJob:
    """One pack to write: sessions (paths) of one dir, one period; or (``--pack auto``)
    sessions of one owner in dirs below *dir*, where the pack goes (*span*), closed at
    *max_bytes* of frames (the rest goes to the next pack of the same dir)."""

    dir: str
    period: str
    paths: list[str]
    span: bool = False
    owner: int = -1
    max_bytes: int = 0
    # Pack files and named-tmp packs the planner listed in *dir* (Planner.dir_packs): the
    # worker opens these, not a fresh listing's; None: unknown, the worker lists the dir.
    packs: tuple[str, ...] | None = None


def plan_packs(tasks: list[Task], mode: str | int) -> list[PackJob]:
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in tasks:
        d, name = os.path.split(t.path)
        by[(d, "" if isinstance(mode, int) else period_of(name, mode))].append(t.path)
    jobs = []
    for (d, period), paths in sorted(by.items()):
        paths.sort()
        size = mode if isinstance(mode, int) else MAX_PACK_SESSIONS
        for i in range(0, len(paths), size):
            chunk = paths[i:i + size]
            # N-packs are named by their first session's date and ID: unique and sortable.
            jobs.append(PackJob(d, period or start_name(chunk[0]), chunk))
    return jobs


def start_name(first: str) -> str:
    """``2026-11-23T103158``: when the pack's first session started (never an ID, so no
    tool mistakes the pack for one session's archive)."""
    m = _ID_TIME.match(os.path.basename(first))
    return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}{m[5]}{m[6]}" if m else "undated"


def parse_targets(sessions: int | None, max_bytes: int | None) -> tuple[int, int]:
    """``--pack-sessions`` / ``--pack-bytes`` checked, defaults filled in."""
    n = DEFAULT_PACK_SESSIONS if sessions is None else sessions
    b = DEFAULT_PACK_BYTES if max_bytes is None else max_bytes
    if not 1 <= n <= MAX_PACK_SESSIONS:
        raise BadArgument(f"--pack-sessions wants 1..{MAX_PACK_SESSIONS}, got {n}")
    if b < 1:
        raise BadArgument(f"--pack-bytes wants a positive size, got {b}")
    return n, b


def pack_dir_ok(st: os.stat_result, owner: int) -> bool:
    """May a spanning pack of *owner*'s sessions go in the dir *st* (an lstat/fstat)? A
    dir of that owner that no one else may write: another user could otherwise rename
    the pack or its sessions' dirs away between a sweep and a restore."""
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == owner
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def plan_auto(tasks: list[Task], root: str, sessions: int, max_bytes: int,
              lstat: Callable[[str], os.stat_result] = os.lstat) -> list[PackJob]:
    """``--pack auto``: per owner (of the FINISHED_* dir: a pack never holds two users'
    sessions, and packwork gives a session of another owner its own archive), the
    sessions in path order, accumulated over consecutive dirs into one pack until it holds
    *sessions* of them (the worker closes it at *max_bytes*). The pack goes in the deepest
    common dir of its sessions (at or below *root*); a dir may join only while that dir is
    one :func:`pack_dir_ok` allows, and so is every dir between it and the session's
    FINISHED_* dir (else the pack is closed and a new one started). What the plan saw
    is advice: the worker opens the pack's dir by fds and checks it again."""
    root = root.rstrip("/") or "/"
    by_dir: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        by_dir[os.path.dirname(t.path)].append(t.path)
    info: dict[str, os.stat_result | None] = {}

    def st_of(d: str) -> os.stat_result | None:
        if d not in info:
            try:
                info[d] = lstat(d)
            except OSError:
                info[d] = None
        return info[d]

    def top_of(d: str, owner: int, dev: int) -> str:
        # The highest dir a pack of d's sessions may go in: up from d while allowed.
        top = d
        while top != root and top.startswith(root):
            up = os.path.dirname(top)
            st = st_of(up)
            if st is None or st.st_dev != dev or not pack_dir_ok(st, owner):
                break
            top = up
        return top

    jobs: list[PackJob] = []
    open_: dict[int, tuple[str, int, list[str]]] = {}  # owner -> (common dir, floor, paths)

    def close(owner: int) -> None:
        common, _floor, paths = open_.pop(owner)
        jobs.append(PackJob(common, start_name(paths[0]), paths, True, owner, max_bytes))

    for d in sorted(by_dir):
        st = st_of(d)
        if st is None:
            continue  # gone since the walk: nothing to pack there
        owner = st.st_uid
        # (and never so high that an entry path gets deeper than a reader accepts)
        floor = max(_depth(top_of(d, owner, st.st_dev)), _depth(d) + 1 - entrypath.MAX_DEPTH)
        for path in sorted(by_dir[d]):
            cur = open_.get(owner)
            if cur is not None:
                common = os.path.commonpath([cur[0], d])
                lowest = max(cur[1], floor)
                if _depth(common) >= lowest:
                    cur[2].append(path)
                    open_[owner] = (common, lowest, cur[2])
                else:
                    close(owner)
                    cur = None
            if cur is None:
                open_[owner] = (d, floor, [path])
            if len(open_[owner][2]) >= sessions:
                close(owner)
    for owner in sorted(open_):
        close(owner)
    return jobs


def _depth(d: str) -> int:
    return len([p for p in d.split("/") if p])


# Crash leftovers (was packresume.py).

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
