"""The per-session step both layouts share (one archive per session, and ``sweep --pack``):
what a failure becomes (:func:`fail`), the group commit of a batch's prepared archives and
the delete of their sources (:func:`commit_group`), a half-done delete found by a later run
(:func:`cleanup` of ``.<name>.deleting``), and the sweeping process's accounting of each
Result into the Summary (:class:`Accounts`).

The group commit: make every archive of the batch durable together (parallel fsyncs, or
one syncfs: commit.DURABILITY_ENV), link them to their final names, fsync the directories
once, and only then delete the batch's sources (each re-checked for changes first).
Everything here returns Results (plain NamedTuples); nothing raises across the pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from archive_tool import fs
from archive_tool.engine import commit, removesource, single
from archive_tool.errors import ArchiveError, DiskFull, DurabilityError, SourceChanged
from archive_tool.guard.lock import lock_session
from archive_tool.names import FORMATS, session_of_trash
from archive_tool.summary import (
    ARCHIVED,
    CLEANED,
    FAILED,
    RESUMED,
    SKIPPED,
    Result,
    record_failure,
)
from archive_tool.sweep.plan import Task

# The reason of a session a SIGTERM/SIGINT left unarchived (both layouts, interrupt.py).
INTERRUPTED = "interrupted (SIGTERM/SIGINT): source kept"


def fail(path: str, e: BaseException) -> Result:
    """*e* as *path*'s FAILED Result; a full disk is fatal (the sweep stops feeding work)."""
    reason = e.reason if isinstance(e, ArchiveError) else (getattr(e, "strerror", None) or str(e))
    return Result(path, FAILED, reason, fatal=isinstance(e, DiskFull))


def frame_failed(e: BaseException, lock_fd: int, path: str, broken: bool,
                 out: list[tuple[Result, Any]], unfinished: list[str]) -> bool:
    """Why a session did not become a pack frame, reported for *path* (its lock
    *lock_fd* closed): single.TooRecent is a skip; anything else a failure. True when
    the tmp pack is unusable (*broken*) or the disk full: nothing of that pack is
    committed, and *unfinished* (its other sessions and the job's rest) are reported not
    attempted; every source stays."""
    os.close(lock_fd)
    if isinstance(e, single.TooRecent):
        out.append((Result(path, SKIPPED, e.reason), None))
        return False
    out.append((fail(path, e), None))
    if not (isinstance(e, DiskFull) or broken):
        return False
    why = "disk full" if isinstance(e, DiskFull) else "pack write failed"
    out += [(Result(p, SKIPPED, f"not attempted: {why}"), None) for p in unfinished]
    return True


def commit_group(prepared: list[single.Prepared], out: list[Result], remove_src: bool) -> None:
    """Commit a batch's prepared archives together, then (with *remove_src*) delete their
    sources; one Result each, appended to *out*. A failed sync keeps every source."""
    try:
        commit.make_durable([p.tmp for p in prepared])
    except DurabilityError as e:
        out += [fail(p.src, e) for p in prepared]
        return
    published: list[single.Prepared] = []
    for p in prepared:
        try:
            commit.publish(p.tmp)
            published.append(p)
        except FileExistsError:
            out.append(Result(p.src, SKIPPED, "archived concurrently by another process"))
        except ArchiveError as e:
            out.append(fail(p.src, e))
        finally:
            p.tmp.discard()
    try:
        commit.fsync_dirs(p.tmp for p in published)
    except DurabilityError as e:
        # Archives are named but maybe not durable: keep every source (state: source +
        # archive; the next sweep verifies the archive and finishes).
        out += [fail(p.src, e) for p in published]
        return
    for p in published:
        try:
            if remove_src:
                removesource.remove_source(p.tmp.dir_fd, p.name, p.entries, p.tmp.name, p.src,
                                     top_fd=p.lock_fd)
            out.append(Result(p.src, ARCHIVED, "", p.bytes_in, p.bytes_out, p.inodes))
        except SourceChanged as e:
            out.append(fail(p.src, e))
        except OSError as e:
            out.append(Result(p.src, FAILED, f"archived to {p.final} but the source could not "
                              f"be removed: {e.strerror or e}"))


def cleanup(t: Task, dirs: fs.DirCache) -> Result:
    """A ``.<name>.deleting`` dir: a crash interrupted deleting a committed source."""
    try:
        parent_fd, trash = dirs.parent(t.path)
        # The archiver that made this trash may still be deleting it (it holds the lock).
        lock_fd = lock_session(parent_fd, trash, t.path, archived_ok=True)
    except FileExistsError as e:
        return Result(t.path, SKIPPED, e.strerror)
    except (ArchiveError, OSError) as e:
        return Result(t.path, FAILED, f"cannot clean up: {fail(t.path, e).reason}")
    try:
        name = session_of_trash(trash)
        assert name is not None
        if any(fs.lexists_at(parent_fd, f"{name}.{f}") for f in FORMATS):
            fs.rmtree_at(parent_fd, trash)
            return Result(t.path, CLEANED, "leftover of an interrupted delete removed")
        fs.rename_noreplace_at(parent_fd, trash, parent_fd, name)
        return Result(t.path, CLEANED, "no archive found: restored the session dir")
    except OSError as e:
        return Result(t.path, FAILED, f"cannot clean up: {e.strerror or e}")
    finally:
        os.close(lock_fd)


def rel_dir(root: str, d: str) -> str:
    """*d* below *root* ("" for the root itself), as catalog rows name a session's dir."""
    rel = os.path.relpath(d, root)
    return "" if rel == "." else rel


class Accounts:
    """The sweeping process's side: each Result into the Summary (counts, bytes, skip
    reasons, failures), passed on to *on_result*; ``fatal`` set by the first full disk."""

    def __init__(self, summary: dict[str, Any], track_bytes: bool,
                 on_result: Callable[[Result], None] | None) -> None:
        self.s = summary
        self.track_bytes = track_bytes
        self.on_result = on_result
        self.fatal: str | None = None

    def add(self, r: Result) -> None:
        path, status, reason, b_in, b_out, inodes, fatal = r
        s = self.s
        if status in (ARCHIVED, RESUMED):
            s[status] += 1
            s["inodes_in"] += inodes
            if self.track_bytes:
                s["bytes_in"] += b_in
                s["bytes_out"] += b_out
        elif status == SKIPPED:
            s["skipped"] += 1
            s["skipped_reasons"][reason] = s["skipped_reasons"].get(reason, 0) + 1
        elif status == CLEANED:
            s["cleaned"] += 1
        else:
            record_failure(s, path, reason)
            if fatal and self.fatal is None:
                self.fatal = f"{path}: {reason}"
        if self.on_result is not None:
            self.on_result(r)
