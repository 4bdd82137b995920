"""Put archives back as session dirs across a whole tree: ``extract ROOT --tree`` (every
archive in a FINISHED_* dir) and ``extract ROOT --undo RUN`` (exactly the archives one
``sweep --execute`` wrote, from its manifest, see runlog.py).

Each archive is restored as ``restore_one`` does, on the sweep's process pool: into a temp
dir beside the destination, renamed into place, never over an existing dir; with
``remove_archive`` a batch's restored trees are made durable together (one syncfs) before
any of its archives is unlinked. Both
hold the root's lock, so a sweep cannot archive a session while it is being put back.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from archive_tool import fs
from archive_tool.catalog.catalogstate import forget_missing
from archive_tool.engine.restore import (
    Pending,
    remove_archives,
    remove_dead_temps,
    restore_pending,
)
from archive_tool.errors import ArchiveError, BadArgument, Interrupted
from archive_tool.guard import interrupt
from archive_tool.guard.lock import RootLock
from archive_tool.names import (
    split_archive_name,
)
from archive_tool.restore import packrestore
from archive_tool.restore.walk import iter_session_archives
from archive_tool.summary import (
    FAILED,
    RESTORED,
    SKIPPED,
    Result,
    count_restore,
    new_summary,
)
from archive_tool.sweep.discover import iter_archives
from archive_tool.sweep.executors import default_workers, run_batches
from archive_tool.sweep.plan import check_root


def new_restore_summary(root: str, dry_run: bool, mode: str) -> dict[str, Any]:
    return new_summary("restore", root, dry_run, mode=mode, restored=0, capped=0)


def run_jobs(jobs: list[tuple[str, str]], s: dict[str, Any], *, remove_archive: bool,
             workers: int | None, root: str | None, batch_size: int = 32,
             on_result: Callable[[Result], None] | None = None,
             executor: Executor | None = None) -> None:
    """Restore (archive, dest) pairs on the pool loop (executors.run_batches), accounting
    into summary *s*. With *root*, both are reached below it by dir fds (a tree restore
    as root); without, their dirs are operator input (a flat restore)."""
    if not jobs:
        return
    _clean_leftovers(jobs, root)
    n = workers or default_workers()
    size = max(1, min(batch_size, -(-len(jobs) // n)))
    batches = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    sent = 0

    def absorb(results: list[Result]) -> None:
        for r in results:
            count_restore(s, r, on_result)

    def lost(batch: list[tuple[str, str]], e: BaseException) -> list[Result]:
        if isinstance(e, Interrupted):
            return [Result(a, SKIPPED, "interrupted (SIGTERM/SIGINT): archive kept")
                    for a, _ in batch]
        # Each archive is kept (removed only after its restore is durable); a restore cut
        # short leaves only a hidden temp dir beside it.
        return [Result(a, FAILED, f"worker lost: {e!r}") for a, _ in batch]

    def count(batch: list[tuple[str, str]], k: int = 1) -> None:
        nonlocal sent
        sent += k * len(batch)

    out = run_batches(batches, restore_batch, (remove_archive, root), absorb=absorb, lost=lost,
                      executor=executor, workers=n, before_submit=count,
                      unsent=lambda b: count(b, -1))
    if sent < len(jobs):
        s["skipped"] += len(jobs) - sent  # not attempted: archives untouched
    if out.stopped:
        s["stopped"] = out.stopped
    if out.signal is not None:
        s["signal"] = out.signal


def _clean_leftovers(jobs: list[tuple[str, str]], root: str | None) -> None:
    """Temp dirs of restores that were killed, once per destination dir (one listing each;
    the workers skip the per-archive look)."""
    with fs.DirCache(root) as dirs:
        for parent in sorted({os.path.dirname(dest) for _, dest in jobs}):
            try:
                fd = dirs.parent(os.path.join(parent, "."))[0]
            except OSError:
                continue
            remove_dead_temps(fd, parent)


def restore_tree(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = True,
    remove_archive: bool = False,
    max_files: int | None = None,
    workers: int | None = None,
    on_jobs: Callable[[int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, Any]:
    """Restore every session archive under *root* into its FINISHED_* dir (beside it),
    and every session inside a pack there (packrestore.py; packs are kept even with
    *remove_archive*). An archive whose session dir already exists is skipped. *on_jobs*
    is told how many restores will run, before they start (a progress bar's total)."""
    t0 = time.monotonic()
    root_p = check_root(root)
    if max_files is not None and max_files < 0:
        raise BadArgument(f"max_files must be >= 0 (0 = no cap), got {max_files}")
    s = new_restore_summary(root_p, dry_run, "tree")
    with RootLock(root_p) if not dry_run else contextlib.nullcontext():
        jobs: list[tuple[str, str]] = []
        for e in iter_session_archives(root_p):
            s["scanned"] += 1
            dest = os.path.join(os.path.dirname(e.path), split_archive_name(e.name)[0])  # type: ignore[index]
            if os.path.lexists(dest):
                s["skipped"] += 1
                continue
            if max_files and s["candidates"] >= max_files:
                s["capped"] += 1
                continue
            s["candidates"] += 1
            try:
                s["bytes_in"] += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass
            jobs.append((e.path, dest))
        in_packs = packrestore.plan(root_p, s, max_files, {d for _, d in jobs})
        if not dry_run:
            if on_jobs is not None:
                on_jobs(len(jobs) + len(in_packs))
            run_jobs(jobs, s, remove_archive=remove_archive, workers=workers, root=root_p,
                     on_result=on_result)
            if not s["stopped"]:
                packrestore.restore(root_p, in_packs, s, on_result)
            if remove_archive:
                forget_removed(root_p, s)
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


# ------------------------------------------------------------------------ flat restore


def restore_many(
    root: str | os.PathLike[str],
    *,
    pattern: str | None = None,
    dest_root: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    dry_run: bool = True,
    max_files: int | None = None,
    track_bytes: bool = False,
    workers: int | None = None,
    executor: Executor | None = None,
    batch_size: int = 32,
    on_result: Callable[[Result], None] | None = None,
    accept: Callable[[str], bool] | None = None,
    on_jobs: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Bulk restore: archives directly under *root* -> ``dest_root/<name>/`` (default:
    beside the archive), on the same pool loop as the sweep, each through a temp dir and a
    rename. *accept(name)*, when given, must also be true for an archive to be considered.
    Returns the Summary (kind "restore")."""
    t0 = time.monotonic()
    root_p = check_root(root)
    if max_files is not None and max_files < 0:
        raise BadArgument(f"max_files must be >= 0 (0 = no cap), got {max_files}")
    dest_p = os.path.abspath(os.fspath(dest_root)) if dest_root is not None else None

    def matches(name: str) -> bool:
        if accept is not None and not accept(name):
            return False
        if pattern:
            return fnmatch.fnmatch(name, pattern)
        return split_archive_name(name) is not None

    s = new_summary("restore", root_p, dry_run, restored=0)
    jobs: list[tuple[str, str]] = []
    for path in iter_archives(root_p, matches):
        s["scanned"] += 1
        if max_files and s["candidates"] >= max_files:
            continue
        named = split_archive_name(os.path.basename(path))
        stem = named[0] if named else os.path.basename(path) + ".restored"
        dest = os.path.join(dest_p or os.path.dirname(path), stem)
        if os.path.lexists(dest):
            s["skipped"] += 1
            continue
        s["candidates"] += 1
        if track_bytes:
            s["bytes_in"] += os.path.getsize(path)
        jobs.append((path, dest))
    if not dry_run and jobs:
        if dest_p:
            os.makedirs(dest_p, exist_ok=True)
        if on_jobs is not None:
            on_jobs(len(jobs))
        run_jobs(jobs, s, remove_archive=remove_archive, workers=workers, root=None,
                 batch_size=batch_size, on_result=on_result, executor=executor)
        if not track_bytes:
            s["bytes_out"] = 0
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def restore_batch(jobs: list[tuple[str, str]], remove_archive: bool,
                  root: str | None = None) -> list[Result]:
    """Restore (archive, dest) pairs; with *root*, both are reached below it by dir fds.

    With *remove_archive* the batch commits as a group, like a sweep batch: every archive
    is extracted and renamed into place first, then one sync makes all the restored trees
    durable, and only then are the archives unlinked (their dirs fsynced once each). A
    failed sync keeps every archive of the batch."""
    out: list[Result | None] = []
    pending: list[tuple[int, Pending]] = []
    # A batch's archives mostly share their dirs: each walked from the root once.
    try:
        dirs = fs.DirCache(root) if root is not None else None
    except OSError:
        dirs = None  # each archive then reports the error itself
    try:
        for k, (archive, dest) in enumerate(jobs):
            if interrupt.requested():
                # Stop between archives; the rest stay archives (SIGTERM/SIGINT).
                out += [Result(a, SKIPPED, "interrupted (SIGTERM/SIGINT): archive kept")
                        for a, _ in jobs[k:]]
                break
            try:
                p = restore_pending(archive, dest, follow=False, root=root,
                                    finish_existing=remove_archive, clean=False, dirs=dirs)
            except Interrupted:
                # This one's temp dir is gone; those renamed into place are committed
                # below, so a signal leaves no restored dir beside its archive.
                out += [Result(a, SKIPPED, "interrupted (SIGTERM/SIGINT): archive kept")
                        for a, _ in jobs[k:]]
                break
            except FileExistsError:
                out.append(Result(archive, SKIPPED, "destination exists"))
                continue
            except Exception as e:  # noqa: BLE001 - plain data back, never raise
                out.append(_failed(archive, e))
                continue
            if remove_archive:
                pending.append((len(out), p))
                out.append(None)
            else:
                p.close()
                out.append(Result(archive, RESTORED, "", 0, p.total))
        if pending:
            with interrupt.shielded(reraise=False):  # the parent sees the signal itself
                try:
                    errs: list[Exception | None] = remove_archives([p for _, p in pending])
                except Exception as e:  # noqa: BLE001
                    errs = [e] * len(pending)
                for (i, p), err in zip(pending, errs, strict=True):
                    out[i] = (Result(p.archive, RESTORED, "", 0, p.total) if err is None
                              else _failed(p.archive, err))
    finally:
        for _, p in pending:
            p.close()
        if dirs is not None:
            dirs.close()
    return [r for r in out if r is not None]


def _failed(archive: str, e: BaseException) -> Result:
    if isinstance(e, ArchiveError):
        return Result(archive, FAILED, e.reason)
    return Result(archive, FAILED, f"{type(e).__name__}: {e}")


def forget_removed(root: str, s: dict[str, Any]) -> None:
    """The catalog step of a restore that removed archives (issue 26: `find` listed them
    and `show -s` said "no such archive" after an undo): their rows go, with those of any
    archive an earlier crash removed before this step. A catalog that cannot be written
    is a warning: the restored dirs are safe, and `catalog --rebuild` repairs it."""
    try:
        forget_missing(root)
    except (sqlite3.Error, OSError, ArchiveError) as e:
        s["warnings"].append(f"catalog not updated: {e}; `catalog --rebuild` repairs it")
