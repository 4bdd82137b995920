"""Retention: delete old session archives, ``session-archive prune ROOT``.

Only archives a sweep made are considered: ``<ID>[-<name>].<format>`` regular files whose
parent is a FINISHED_* dir (``restore.many.iter_session_archives``). Session dirs, RUNNING/
and anything else are never touched.

Age is taken from the session ID (``2026Y-11M-23D-18h39m23s``, local time: when the run
started), not the archive's mtime: copying a tree without ``-t``, or a restore and
re-sweep, resets mtimes but never the ID. An ID that is not a real date falls back to the
archive's mtime.

Selection, per script (the ``<script>_out`` dir, i.e. the FINISHED_* dir's parent), newest
first: the ``keep_last`` newest archives are kept; the newest FINISHED_SUCCESS archive is
kept unless ``include_latest``; of the rest, an archive goes when it matches every given
filter (``older_than_days``, ``states``). Deletion holds the root's lock (a parallel prune
or sweep exits 75), unlinks each file relative to an ``O_NOFOLLOW`` fd of its directory
after checking it is still the file that was selected, fsyncs each directory once, and
appends a line per deleted archive to ``<root>/.session-archive/prune/<UTC time>.jsonl``.

Sessions inside packs (``<period>.pack.tar.zst`` in a FINISHED_* dir) are candidates like
session archives (``path`` is ``PACK::SESSION``, ``bytes`` its compressed frame), selected
by the same rules in the same per-script order. They go by a repack of each pack holding
one, without them (repack.py: new pack verified, durable, catalogued, then the old one
unlinked); the other sessions' frames are copied unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from archive_tool import fs
from archive_tool.catalog import catalog
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.guard import interrupt
from archive_tool.guard.lock import RootLock
from archive_tool.names import FINISHED_STATES, SUCCESS_STATE, split_archive_name
from archive_tool.restore.many import iter_session_archives
from archive_tool.retention.archived import Archived, started_at
from archive_tool.retention.prunepacks import drop_from_packs, scan_packs
from archive_tool.summary import new_summary, record_failure
from archive_tool.sweep.plan import check_root
from archive_tool.sweep.runlog import close_durably, open_stamped

PRUNE_DIR = os.path.join(".session-archive", "prune")
def scan(root: str, now: float | None = None) -> list[Archived]:
    now = time.time() if now is None else now
    out = []
    for e in iter_session_archives(root):
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished
        finished = os.path.dirname(e.path)
        session = split_archive_name(e.name)[0]  # type: ignore[index]
        t = started_at(session)
        if t is None:
            t = st.st_mtime
        script = os.path.relpath(os.path.dirname(finished), root)
        if script == ".." or script.startswith(".." + os.sep):
            script = os.path.dirname(finished)  # ROOT is itself a FINISHED_* dir
        out.append(Archived(
            path=e.path, script=script,
            state=os.path.basename(finished), started=t, age_days=(now - t) / 86400,
            bytes=st.st_size, dev=st.st_dev, ino=st.st_ino))
    return out + scan_packs(root, now)


def select(items: Iterable[Archived], *, older_than_days: float | None = None,
           keep_last: int | None = None, states: Iterable[str] | None = None,
           include_latest: bool = False) -> list[Archived]:
    """Mark every item kept or selected (``keep`` is "" for selected); returns them all,
    newest first within each script, scripts in name order."""
    states_set = set(states or ())
    bad = states_set - set(FINISHED_STATES)
    if bad:
        raise BadArgument(f"unknown state {sorted(bad)[0]!r}; valid: {', '.join(FINISHED_STATES)}")
    if older_than_days is None and keep_last is None and not states_set:
        raise BadArgument("prune needs at least one of --older-than, --keep-last, --state")
    if keep_last is not None and keep_last < 0:
        raise BadArgument(f"keep_last must be >= 0, got {keep_last}")
    by_script: dict[str, list[Archived]] = defaultdict(list)
    for a in items:
        by_script[a.script].append(a)
    out = []
    for script in sorted(by_script):
        group = sorted(by_script[script], key=lambda a: (a.started, a.path), reverse=True)
        latest_ok = next((a for a in group if a.state == SUCCESS_STATE), None)
        for i, a in enumerate(group):
            if keep_last is not None and i < keep_last:
                a.keep = "within --keep-last"
            elif a is latest_ok and not include_latest:
                a.keep = "newest success per script"
            elif states_set and a.state not in states_set:
                a.keep = "other state"
            elif older_than_days is not None and a.age_days < older_than_days:
                a.keep = "too recent"
            else:
                a.keep = ""
            out.append(a)
    return out


def _log(a: Archived, s: dict[str, Any], log: Any,
         on_deleted: Callable[[Archived], None] | None) -> None:
    s["deleted"] += 1
    s["bytes_freed"] += a.bytes
    log.write(json.dumps({"archive": a.path, "bytes": a.bytes, "state": a.state,
                          "started": a.started, "time": time.time()}) + "\n")
    log.flush()
    if on_deleted is not None:
        on_deleted(a)


def _delete(chosen: list[Archived], s: dict[str, Any], log: Any,
            on_deleted: Callable[[Archived], None] | None, root: str) -> None:
    in_packs = [a for a in chosen if a.pack]
    if in_packs:
        drop_from_packs(in_packs, s, root, lambda a: _log(a, s, log, on_deleted))
    by_dir: dict[str, list[Archived]] = defaultdict(list)
    for a in chosen:
        if not a.pack:
            by_dir[os.path.dirname(a.path)].append(a)
    if not by_dir:
        return
    gone: list[Archived] = []

    def deleted(a: Archived) -> None:
        gone.append(a)
        if on_deleted is not None:
            on_deleted(a)

    root_fd = fs.open_trusted_dir(root)
    try:
        _delete_in(by_dir, s, log, deleted, root, root_fd)
    finally:
        os.close(root_fd)
        _uncatalog(root, gone, s)


def _uncatalog(root: str, gone: list[Archived], s: dict[str, Any]) -> None:
    """Rows of deleted archives leave the catalog (if there is one): ``find`` and
    ``show ROOT -s ID`` must not point at a file that is gone. A failure is a warning:
    the deletions are done and logged, and ``catalog --rebuild`` repairs it."""
    if not gone or not os.path.exists(catalog.catalog_path(root)):
        return
    try:
        catalog.replace_archives(root, [os.path.relpath(a.path, root) for a in gone], [])
    except (sqlite3.Error, OSError, ArchiveError) as e:
        s["warnings"].append(f"catalog not updated: {e}")


def _delete_in(by_dir: dict[str, list[Archived]], s: dict[str, Any], log: Any,
               on_deleted: Callable[[Archived], None] | None, root: str, root_fd: int) -> None:
    for d, items in by_dir.items():
        try:
            # Walked from the root one component at a time, none a symlink (fs.py): a
            # dir swapped for a symlink since the scan is refused, not followed.
            dfd = fs.open_path_dir(d, root, root_fd)
        except OSError as e:
            for a in items:
                record_failure(s, a.path, f"cannot open its directory: {e.strerror}")
            continue
        try:
            done = []
            for a in items:
                if interrupt.requested():
                    break  # SIGTERM: what is unlinked so far is made durable and logged
                name = os.path.basename(a.path)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (a.dev, a.ino):
                        record_failure(s, a.path, "replaced since it was selected; kept")
                        continue
                    os.unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    record_failure(s, a.path, "vanished since it was selected")
                    continue
                except OSError as e:
                    record_failure(s, a.path, f"cannot delete: {e.strerror}")
                    continue
                done.append(a)
            with interrupt.shielded():  # raises Interrupted at its end after a signal
                if done:
                    os.fsync(dfd)  # the unlinks are durable before they are logged as done
                for a in done:
                    _log(a, s, log, on_deleted)
        finally:
            os.close(dfd)


def prune(
    root: str | os.PathLike[str],
    *,
    older_than_days: float | None = None,
    keep_last: int | None = None,
    states: Iterable[str] | None = None,
    include_latest: bool = False,
    dry_run: bool = True,
    now: float | None = None,
    on_deleted: Callable[[Archived], None] | None = None,
) -> dict[str, Any]:
    """Select (and unless *dry_run*, delete) session archives under *root*. Returns a
    summary: scanned, selected, bytes (of the selected), deleted, bytes_freed, failed,
    failures, kept (reason -> count), archives (the selected, as dicts), log."""
    t0 = time.monotonic()
    root_p = check_root(root)
    states = tuple(states or ())
    s = new_summary("prune", root_p, dry_run, selected=0, bytes=0, deleted=0, bytes_freed=0,
                    kept={}, archives=[], log=None, older_than_days=older_than_days,
                    keep_last=keep_last, states=list(states), include_latest=include_latest)
    # Validate before taking the lock or walking the tree.
    select([], older_than_days=older_than_days, keep_last=keep_last, states=states)
    lock = RootLock(root_p) if not dry_run else None
    if lock is not None:
        lock.acquire()
    try:
        items = select(scan(root_p, now), older_than_days=older_than_days, keep_last=keep_last,
                       states=states, include_latest=include_latest)
        s["scanned"] = len(items)
        chosen = [a for a in items if not a.keep]
        for a in items:
            if a.keep:
                s["kept"][a.keep] = s["kept"].get(a.keep, 0) + 1
        s["selected"] = len(chosen)
        s["bytes"] = sum(a.bytes for a in chosen)
        s["archives"] = [{k: v for k, v in asdict(a).items()
                          if k not in ("keep", "dev", "ino") and (k != "pack" or v)}
                         for a in chosen]
        if not dry_run and chosen:
            _name, s["log"], log = open_stamped(root_p, "prune", now)
            try:
                _delete(chosen, s, log, on_deleted, root_p)
            finally:
                close_durably(log)
    finally:
        if lock is not None:
            lock.release()
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s
