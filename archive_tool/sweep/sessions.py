"""The sweep with one archive per session: discover -> plan -> batches over an executor ->
accounting (step.Accounts). The worker side (:func:`process_batch`) prepares each archive,
then hands the batch to step.commit_group; it returns plain tuples and never raises.

Per batch, in the worker: write and verify every archive into unnamed tmp files, make all
of them durable together (parallel fsyncs, or one syncfs: commit.DURABILITY_ENV), link
them to their final names, fsync the directories once, and only then delete the batch's
sources (each re-checked for changes first).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from itertools import islice
from typing import Any

from archive_tool import fs
from archive_tool.engine import commit, removesource, single, tarwrite
from archive_tool.engine.formats import detect_format_fd
from archive_tool.engine.read import check_members
from archive_tool.engine.scan import FILE, Entry, content_bytes, newest_mtime_ns, scan_session
from archive_tool.errors import (
    ArchiveError,
    BadArgument,
    DiskFull,
    Interrupted,
)
from archive_tool.guard import interrupt
from archive_tool.guard.holds import Holds, check_quiet_period
from archive_tool.guard.lock import RootLock, lock_session
from archive_tool.levels import resolve_level
from archive_tool.names import normalize_format
from archive_tool.stale import finalize as stale
from archive_tool.summary import (
    FAILED,
    RESUMED,
    SKIPPED,
    Result,
    new_summary,
    record_failure,
)
from archive_tool.sweep.discover import Discovery
from archive_tool.sweep.executors import default_workers, run_batches
from archive_tool.sweep.latency import adaptive_workers
from archive_tool.sweep.plan import (
    CLEANUP,
    FINISH,
    Planner,
    Task,
    check_days,
    check_root,
    parse_shard,
)
from archive_tool.sweep.step import INTERRUPTED, Accounts, cleanup, commit_group, fail

DEFAULT_BATCH = 128
SWEEP_FORMAT = "tar.zst"  # sweep()'s default format


# ---------------------------------------------------------------------------- worker side


def process_batch(tasks: list[Task], opts: dict[str, Any]) -> list[Result]:
    out: list[Result] = []
    try:
        with fs.DirCache(opts.get("root")) as dirs:
            _process(tasks, opts, out, dirs)
    except Interrupted:
        # SIGTERM/SIGINT (interrupt.py): the sessions not committed yet keep their source
        # and lose their unnamed tmp archive; reported as skipped, not failed.
        done = {r.path for r in out}
        out += [Result(t.path, SKIPPED, INTERRUPTED) for t in tasks if t.path not in done]
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r.path for r in out}
        out += [Result(t.path, FAILED, f"internal error: {e!r}")
                for t in tasks if t.path not in done]
    return out


def _process(tasks: list[Task], opts: dict[str, Any], out: list[Result],
             dirs: fs.DirCache) -> None:
    fmt, level, cutoff_ns = opts["format"], opts["compresslevel"], opts["cutoff_ns"]
    prepared: list[single.Prepared] = []
    # Every session to archive is locked first, then one listing per parent dir says which
    # were archived meanwhile (single.lock_batch: no stat per format per session).
    locked, lock_errors = single.lock_batch(
        [t.path for t in tasks if t.kind not in (CLEANUP, FINISH)], dirs)
    try:
        for i, t in enumerate(tasks):
            interrupt.check()
            if t.kind == CLEANUP:
                out.append(cleanup(t, dirs))
            elif t.kind == FINISH:
                if opts.get("remove_src", True):
                    out.append(_finish(t, dirs))
                else:
                    out.append(Result(t.path, SKIPPED, "already archived"))
            else:
                try:
                    err = lock_errors.get(t.path)
                    if err is not None:
                        raise err
                    for tmp in t.stale_tmps:  # garbage by definition (names.TMP_SUFFIX)
                        fs.unlink_at(dirs.parent(t.path)[0], tmp)
                    prepared.append(single.prepare(t.path, fmt, level, cutoff_ns=cutoff_ns,
                                                   dirs=dirs, holds=opts.get("holds"),
                                                   locked=locked.pop(t.path)))
                except single.TooRecent as e:
                    out.append(Result(t.path, SKIPPED, e.reason))
                except FileExistsError:
                    out.append(Result(t.path, SKIPPED, "archive appeared meanwhile"))
                except (ArchiveError, OSError) as e:
                    out.append(fail(t.path, e))
                    if isinstance(e, DiskFull):
                        # No point writing more archives into a full filesystem: the rest of
                        # the batch is reported as not attempted, sources untouched.
                        out += [Result(u.path, SKIPPED, "not attempted: disk full")
                                for u in tasks[i + 1:]]
                        break
        if prepared:
            # Written and verified: the commit (fsync, link, delete) runs to its end so a
            # signal never leaves a batch half-committed (it takes milliseconds).
            with interrupt.shielded():
                commit_group(prepared, out, opts.get("remove_src", True))
    finally:
        for p in prepared:
            p.unlock()
        for lk in locked.values():  # not reached (disk full): their sources untouched
            os.close(lk.fd)


def _finish(t: Task, dirs: fs.DirCache) -> Result:
    """Source and an archive both exist (a crash between commit and delete, or a restore
    that kept its archive): delete the source only if the archive holds exactly it."""
    assert t.archive is not None
    arch_name = os.path.basename(t.archive)
    try:
        parent_fd, name = dirs.parent(t.path)
        lock_fd = lock_session(parent_fd, name, t.path, archived_ok=True)
    except FileExistsError as e:
        return Result(t.path, SKIPPED, e.strerror)
    except (ArchiveError, OSError) as e:
        return fail(t.path, e)
    try:
        entries, expected = tarwrite.source_members(lock_fd, t.path)
        afd = fs.open_file(arch_name, parent_fd)
        with open(afd, "rb") as f:
            check_members(f, detect_format_fd(afd, t.archive), expected, t.archive)
            os.fsync(afd)
            size = os.fstat(afd).st_size
        commit.fsync_dir(parent_fd, os.path.dirname(t.path))
        # A crash of the named-tmp fallback between link and unlink left <final>.tmp.
        commit.remove_stale_tmp(parent_fd, arch_name)
        removesource.remove_source(parent_fd, name, entries, arch_name, t.path, keep_archive=True,
                             top_fd=lock_fd)
    except ArchiveError as e:
        return Result(t.path, FAILED, f"an archive already exists ({arch_name}) and does not "
                      f"match the source; both kept: {e.reason}")
    except OSError as e:
        return fail(t.path, e)
    finally:
        os.close(lock_fd)
    return Result(t.path, RESUMED, "", content_bytes(entries), size, len(entries))


# ----------------------------------------------------------------------- sweeping process


# How far ahead the first batches look: a job of up to this many full rounds (workers x
# size) is cut into equal batches, a whole number per worker.
_BALANCE_ROUNDS = 4


def _batches(tasks: Iterator[Task], size: int, workers: int) -> Iterator[list[Task]]:
    first = list(islice(tasks, size * workers * _BALANCE_ROUNDS))
    if len(first) < size * workers * _BALANCE_ROUNDS:
        # A job of a few rounds: equal batches (at most *size*), the same number for every
        # worker. Full batches left one worker 512 sessions and the other 414 of 926: under
        # metadata latency the wall is the slower worker's (issue 24).
        # Contiguous slices: discovery lists a dir's sessions together, and a batch of one
        # parent dir opens and lists that dir once.
        rounds = max(1, -(-len(first) // (size * workers)))
        k = max(1, min(workers * rounds, len(first)))
        for i in range(k):
            chunk = first[len(first) * i // k:len(first) * (i + 1) // k]
            if chunk:
                yield chunk
        return
    for i in range(0, len(first), size):
        yield first[i:i + size]
    while chunk := list(islice(tasks, size)):
        yield chunk


def sweep(
    root: str | os.PathLike[str],
    *,
    flat: bool = False,
    dry_run: bool = True,
    format: str = SWEEP_FORMAT,  # noqa: A002 - matches the API's name
    compresslevel: int | None = None,
    workers: int | None = None,
    older_than_days: float | None = None,
    pattern: str | None = None,
    max_dirs: int | None = None,
    track_bytes: bool = False,
    use_fd: bool = True,
    shard: str | tuple[int, int] | None = None,
    executor: Executor | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_result: Callable[[Result], None] | None = None,
    on_candidate: Callable[[str], None] | None = None,
    lock: bool = True,
    remove_src: bool = True,
    finalize_stale: bool = False,
    stale_after: float | None = None,
    quiet_period: float | None = None,
) -> dict[str, Any]:
    """Archive every finished session under *root* (tree mode) or every session-shaped
    direct child of *root* (``flat=True``). Returns the Summary dict.

    With *finalize_stale*, RUNNING runs judged dead (:mod:`stale`; *stale_after* seconds)
    are first moved to FINISHED_ERROR/ (listed only, in a dry run): ``summary["stale"]``.

    An executed sweep leaves (skipped, with the reason) a session that a process on this
    host has open for writing, or whose newest file is younger than *quiet_period*
    seconds (None: holds.default_quiet_period(), 10 minutes; 0: off). See holds.py.

    With ``dry_run`` nothing on disk changes: the Summary says what would be archived
    (``candidates``; with ``track_bytes`` or ``older_than_days`` one stat walk per session
    gives bytes_in/inodes_in and the exact age filter).
    """
    t0 = time.monotonic()
    fmt = normalize_format(format)
    # The codec's own level (None: its default), refused before anything is read or
    # written, dry run included (issue 26).
    compresslevel = resolve_level(fmt, compresslevel)
    shard_t = parse_shard(shard)
    if workers is not None and workers < 1:
        raise BadArgument(f"workers must be >= 1, got {workers}")
    if max_dirs is not None and max_dirs < 0:
        raise BadArgument(f"max_dirs must be >= 0 (0 = no cap), got {max_dirs}")
    check_days(older_than_days)
    if batch_size < 1:
        raise BadArgument(f"batch_size must be >= 1, got {batch_size}")
    root_p = check_root(root)
    quiet = check_quiet_period(quiet_period)
    summary = new_summary("sweep", root_p, dry_run, mode="flat" if flat else "tree",
                          format=fmt, backend="", archived=0, inodes_in=0, resumed=0,
                          cleaned=0, shard=None)
    if shard_t:
        summary["shard"] = f"{shard_t[0]}/{shard_t[1]}"
    if finalize_stale and not flat:
        # Dead RUNNING runs move to FINISHED_ERROR/ first, so this sweep archives them.
        summary["stale"] = stale.finalize_stale(root_p, dry_run=dry_run, stale_after=stale_after)
        for f in summary["stale"]["failures"]:
            record_failure(summary, f["path"], f["reason"])
    disc = Discovery(root_p, flat, use_fd)
    planner = Planner(root_p, flat, fmt, pattern, older_than_days, max_dirs, shard_t)
    tasks = planner.tasks(disc.paths())
    acc = Accounts(summary, track_bytes, on_result)
    if dry_run:
        _dry_run(tasks, planner, summary, track_bytes, on_candidate)
    else:
        with RootLock(root_p, shard_t) if lock else contextlib.nullcontext():
            _execute(tasks, planner, acc, workers, executor, batch_size, on_candidate,
                     {"format": fmt, "compresslevel": compresslevel, "root": root_p,
                      "cutoff_ns": planner.cutoff_ns, "remove_src": remove_src,
                      "holds": Holds.take(quiet)})
    summary["backend"] = disc.backend
    summary["warnings"] += disc.warnings
    summary["scanned"] = planner.scanned
    summary["candidates"] = planner.candidates
    summary["capped"] = planner.capped  # left out by max_dirs: the CLI exits 3 (issue 16)
    summary["skipped"] += planner.skipped
    for k, v in planner.skipped_reasons.items():
        summary["skipped_reasons"][k] = summary["skipped_reasons"].get(k, 0) + v
    summary["elapsed"] = round(time.monotonic() - t0, 3)
    return summary


def scan_candidates(tasks: Iterable[Task], planner: Planner, counts: dict[str, Any],
                    scan: bool = True) -> Iterator[tuple[Task, list[Entry] | None]]:
    """What a dry run does per session, shared by sweep and report: trash would be cleaned
    (counted), each candidate stat-walked once (with *scan*) for the exact age check;
    an unreadable one is recorded as failed in *counts* (a Summary-like dict)."""
    cutoff_ns = planner.cutoff_ns
    with fs.DirCache(planner.root) as dirs:
        yield from _scan_each(tasks, planner, counts, scan, cutoff_ns, dirs)


def _scan_each(tasks: Iterable[Task], planner: Planner, counts: dict[str, Any], scan: bool,
               cutoff_ns: int | None, dirs: fs.DirCache
               ) -> Iterator[tuple[Task, list[Entry] | None]]:
    for t in tasks:
        if t.kind == CLEANUP:
            counts["cleaned"] += 1  # would be cleaned
            continue
        entries = None
        if scan or cutoff_ns is not None:
            try:
                entries = scan_session(t.path, dirs)
            except ArchiveError as e:
                record_failure(counts, t.path, e.reason)
                continue
            if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
                planner.candidates -= 1
                planner.skip("too recent")
                continue
        yield t, entries


def _dry_run(tasks: Iterable[Task], planner: Planner, summary: dict[str, Any],
             track_bytes: bool, on_candidate: Callable[[str], None] | None) -> None:
    for t, entries in scan_candidates(tasks, planner, summary, scan=track_bytes):
        if entries is not None:
            summary["inodes_in"] += len(entries)
            if track_bytes:
                summary["bytes_in"] += sum(e.size for e in entries if e.kind == FILE)
        if on_candidate is not None:
            on_candidate(t.path)


def _execute(tasks: Iterator[Task], planner: Planner, acc: Accounts, workers: int | None,
             executor: Executor | None, batch_size: int,
             on_candidate: Callable[[str], None] | None, opts: dict[str, Any]) -> None:
    slots: Callable[[], int] | None = getattr(executor, "slots", None)
    if workers is None and executor is None:
        # The default pool follows the filesystem's metadata latency (sweep/latency.py):
        # one worker per core on a local disk, more where each call is a round trip.
        workers = adaptive_workers(opts["root"], default_workers())
    n = workers or (max(1, slots()) if slots else default_workers())
    acc.s["workers"] = n  # what the default chose, for the log (--json)

    def absorb(results: list[Result]) -> None:
        for r in results:
            acc.add(r)

    def lost(batch: list[Task], e: BaseException) -> list[Result]:
        if isinstance(e, Interrupted):
            return [Result(t.path, SKIPPED, INTERRUPTED) for t in batch]
        return [Result(t.path, FAILED, f"worker lost: {e!r}") for t in batch]

    def unsent(batch: list[Task]) -> None:
        acc.s["skipped"] += len(batch)

    def halt() -> str | None:
        return f"disk full, sweep stopped: {acc.fatal}" if acc.fatal else None

    def announce(batch: list[Task]) -> None:
        if on_candidate is not None:
            for t in batch:
                on_candidate(t.path)

    out = run_batches(_batches(tasks, batch_size, n), process_batch, (opts,), absorb=absorb,
                      lost=lost, executor=executor, workers=workers, unsent=unsent,
                      halt=halt, before_submit=announce)
    if out.stopped:
        acc.s["stopped"] = out.stopped
    if out.signal is not None:
        acc.s["signal"] = out.signal

