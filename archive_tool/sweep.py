"""Drive many sessions: discover -> plan -> batches over an executor -> group commit ->
accounting. The worker side (:func:`process_batch`) returns plain tuples and never raises.

Per batch, in the worker: write and verify every archive into unnamed tmp files, make all
of them durable with one syncfs, link them to their final names, fsync the directories
once, and only then delete the batch's sources (each re-checked for changes first).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, wait
from itertools import islice
from typing import Any

from . import commit, single, stale
from .discover import Discovery
from .errors import ArchiveError, DiskFull, DurabilityError, SourceChanged
from .executors import default_workers, local_executor
from .lock import RootLock
from .names import normalize_format, split_archive_name
from .plan import CLEANUP, FINISH, Planner, Task, check_root, parse_shard
from .read import check_members, detect_format
from .scan import FILE, Entry, content_bytes, newest_mtime_ns, scan_session

ARCHIVED, SKIPPED, FAILED, RESUMED, CLEANED = "archived", "skipped", "failed", "resumed", "cleaned"
DEFAULT_BATCH = 128
MAX_FAILURES_LISTED = 1000

# (path, status, reason, bytes_in, bytes_out, inodes, fatal)
Result = tuple[str, str, str, int, int, int, bool]


# ---------------------------------------------------------------------------- worker side


def process_batch(tasks: list[Task], opts: dict[str, Any]) -> list[Result]:
    out: list[Result] = []
    try:
        _process(tasks, opts, out)
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r[0] for r in out}
        out += [(t.path, FAILED, f"internal error: {e!r}", 0, 0, 0, False)
                for t in tasks if t.path not in done]
    return out


def _fail(path: str, e: BaseException) -> Result:
    reason = e.reason if isinstance(e, ArchiveError) else (getattr(e, "strerror", None) or str(e))
    return (path, FAILED, reason, 0, 0, 0, isinstance(e, DiskFull))


def _process(tasks: list[Task], opts: dict[str, Any], out: list[Result]) -> None:
    fmt, level, cutoff_ns = opts["format"], opts["compresslevel"], opts["cutoff_ns"]
    prepared: list[single.Prepared] = []
    try:
        for i, t in enumerate(tasks):
            if t.kind == CLEANUP:
                out.append(_cleanup(t))
            elif t.kind == FINISH:
                if opts.get("remove_src", True):
                    out.append(_finish(t))
                else:
                    out.append((t.path, SKIPPED, "already archived", 0, 0, 0, False))
            else:
                try:
                    prepared.append(single.prepare(t.path, fmt, level, cutoff_ns=cutoff_ns))
                except single.TooRecent:
                    out.append((t.path, SKIPPED, "too recent", 0, 0, 0, False))
                except FileExistsError:
                    out.append((t.path, SKIPPED, "archive appeared meanwhile", 0, 0, 0, False))
                except (ArchiveError, OSError) as e:
                    out.append(_fail(t.path, e))
                    if isinstance(e, DiskFull):
                        # No point writing more archives into a full filesystem: the rest of
                        # the batch is reported as not attempted, sources untouched.
                        out += [(u.path, SKIPPED, "not attempted: disk full", 0, 0, 0, False)
                                for u in tasks[i + 1:]]
                        break
        if prepared:
            _commit(prepared, out, opts.get("remove_src", True))
    finally:
        for p in prepared:
            p.tmp.discard()
            p.unlock()


def _commit(prepared: list[single.Prepared], out: list[Result], remove_src: bool) -> None:
    try:
        commit.make_durable([p.tmp for p in prepared])
    except DurabilityError as e:
        out += [_fail(p.src, e) for p in prepared]
        return
    published: list[single.Prepared] = []
    for p in prepared:
        try:
            commit.publish(p.tmp)
            published.append(p)
        except FileExistsError:
            out.append((p.src, SKIPPED, "archived concurrently by another process", 0, 0, 0, False))
        except ArchiveError as e:
            out.append(_fail(p.src, e))
        finally:
            p.tmp.discard()
    try:
        commit.fsync_dirs(os.path.dirname(p.final) for p in published)
    except DurabilityError as e:
        # Archives are named but maybe not durable: keep every source (state: source +
        # archive; the next sweep verifies the archive and finishes).
        out += [_fail(p.src, e) for p in published]
        return
    for p in published:
        try:
            if remove_src:
                commit.remove_source(p.src, p.entries, p.final)
            out.append((p.src, ARCHIVED, "", p.bytes_in, p.bytes_out, p.inodes, False))
        except SourceChanged as e:
            out.append(_fail(p.src, e))
        except OSError as e:
            out.append((p.src, FAILED, f"archived to {p.final} but the source could not be "
                        f"removed: {e.strerror or e}", 0, 0, 0, False))


def _finish(t: Task) -> Result:
    """Source and an archive both exist (a crash between commit and delete, or a restore
    that kept its archive): delete the source only if the archive holds exactly it."""
    assert t.archive is not None
    try:
        lock_fd = commit.lock_session(t.path, archived_ok=True)
    except FileExistsError as e:
        return (t.path, SKIPPED, e.strerror, 0, 0, 0, False)
    except (ArchiveError, OSError) as e:
        return _fail(t.path, e)
    try:
        entries, expected = single.source_members(t.path)
        with open(t.archive, "rb") as f:
            check_members(f, detect_format(t.archive), expected, t.archive)
            os.fsync(f.fileno())
        commit.fsync_dir(os.path.dirname(t.archive))
        # A crash of the named-tmp fallback between link and unlink left <final>.tmp.
        commit.remove_stale_tmp(t.archive)
        commit.remove_source(t.path, entries, t.archive, keep_archive=True)
    except ArchiveError as e:
        return (t.path, FAILED, f"an archive already exists ({os.path.basename(t.archive)}) "
                f"and does not match the source; both kept: {e.reason}", 0, 0, 0, False)
    except OSError as e:
        return _fail(t.path, e)
    finally:
        os.close(lock_fd)
    size = os.path.getsize(t.archive)
    return (t.path, RESUMED, "", content_bytes(entries), size, len(entries), False)


def _cleanup(t: Task) -> Result:
    """A ``.<name>.deleting`` dir: a crash interrupted deleting a committed source."""
    parent = os.path.dirname(t.path)
    try:
        # The archiver that made this trash may still be deleting it (it holds the lock).
        lock_fd = commit.lock_session(t.path, archived_ok=True)
    except FileExistsError as e:
        return (t.path, SKIPPED, e.strerror, 0, 0, 0, False)
    except (ArchiveError, OSError) as e:
        return (t.path, FAILED, f"cannot clean up: {_fail(t.path, e)[2]}", 0, 0, 0, False)
    try:
        if t.archive is not None:
            import shutil

            shutil.rmtree(t.path)
            return (t.path, CLEANED, "leftover of an interrupted delete removed", 0, 0, 0, False)
        name = os.path.basename(t.path)[1:-len(".deleting")]
        commit.rename_noreplace(t.path, os.path.join(parent, name))
        return (t.path, CLEANED, "no archive found: restored the session dir", 0, 0, 0, False)
    except OSError as e:
        return (t.path, FAILED, f"cannot clean up: {e.strerror or e}", 0, 0, 0, False)
    finally:
        os.close(lock_fd)


# ----------------------------------------------------------------------- sweeping process


def _batches(tasks: Iterator[Task], size: int, workers: int) -> Iterator[list[Task]]:
    first = list(islice(tasks, size * workers))
    if len(first) < size * workers:
        # A small job: spread it over every worker instead of one full batch.
        k = max(1, min(workers, len(first)))
        for i in range(k):
            if first[i::k]:
                yield first[i::k]
        return
    for i in range(0, len(first), size):
        yield first[i:i + size]
    while chunk := list(islice(tasks, size)):
        yield chunk


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag instead of killing: stop feeding, settle what is in
    flight, leave every session whole. Only the main thread may install handlers."""
    caught: list[int] = []
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, _frame: Any) -> None:
            caught.append(signum)

        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def new_summary(root: str, flat: bool, dry_run: bool, fmt: str) -> dict[str, Any]:
    return {
        "root": root, "mode": "flat" if flat else "tree", "dry_run": dry_run, "format": fmt,
        "backend": "", "scanned": 0, "candidates": 0, "archived": 0, "skipped": 0,
        "failed": 0, "bytes_in": 0, "bytes_out": 0, "inodes_in": 0, "resumed": 0,
        "cleaned": 0, "elapsed": 0.0, "failures": [], "skipped_reasons": {},
        "stopped": None, "warnings": [], "shard": None,
    }


# The usual causes, named: a user calling sweep() at the top level of a script makes every
# worker (which imports the script's main module) run it again and fail to start.
WORKER_DIED = ("a worker process died or could not start, sweep stopped (killed, out of "
               "memory, or sweep() called at a script's top level: put it under "
               "if __name__ == '__main__')")


def record_failure(summary: dict[str, Any], path: str, reason: str) -> None:
    # The list is capped so a sweep of millions with a systematic failure stays small.
    summary["failed"] += 1
    if len(summary["failures"]) < MAX_FAILURES_LISTED:
        summary["failures"].append({"path": path, "reason": reason})


class _Accounts:
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


def sweep(
    root: str | os.PathLike[str],
    *,
    flat: bool = False,
    dry_run: bool = True,
    format: str = "tar.zst",  # noqa: A002 - matches the API's name
    compresslevel: int = 1,
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
) -> dict[str, Any]:
    """Archive every finished session under *root* (tree mode) or every session-shaped
    direct child of *root* (``flat=True``). Returns the Summary dict.

    With *finalize_stale*, RUNNING runs judged dead (:mod:`stale`; *stale_after* seconds)
    are first moved to FINISHED_ERROR/ (listed only, in a dry run): ``summary["stale"]``.

    With ``dry_run`` nothing on disk changes: the Summary says what would be archived
    (``candidates``; with ``track_bytes`` or ``older_than_days`` one stat walk per session
    gives bytes_in/inodes_in and the exact age filter).
    """
    t0 = time.monotonic()
    fmt = normalize_format(format)
    shard_t = parse_shard(shard)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_dirs is not None and max_dirs < 0:
        raise ValueError(f"max_dirs must be >= 0 (0 = no cap), got {max_dirs}")
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root_p = check_root(root)
    summary = new_summary(root_p, flat, dry_run, fmt)
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
    acc = _Accounts(summary, track_bytes, on_result)
    if dry_run:
        _dry_run(tasks, planner, summary, track_bytes, on_candidate)
    else:
        with RootLock(root_p, shard_t) if lock else contextlib.nullcontext():
            _execute(tasks, planner, acc, workers, executor, batch_size, on_candidate,
                     {"format": fmt, "compresslevel": compresslevel,
                      "cutoff_ns": planner.cutoff_ns, "remove_src": remove_src})
    summary["backend"] = disc.backend
    summary["warnings"] += disc.warnings
    summary["scanned"] = planner.scanned
    summary["candidates"] = planner.candidates
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
    for t in tasks:
        if t.kind == CLEANUP:
            counts["cleaned"] += 1  # would be cleaned
            continue
        entries = None
        if scan or cutoff_ns is not None:
            try:
                entries = scan_session(t.path)
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


def _execute(tasks: Iterator[Task], planner: Planner, acc: _Accounts, workers: int | None,
             executor: Executor | None, batch_size: int,
             on_candidate: Callable[[str], None] | None, opts: dict[str, Any]) -> None:
    # How many batches run at once: the pool's size, or a cluster's worker threads (which
    # may grow while the sweep runs: dask-jobqueue workers join as their jobs start).
    slots: Callable[[], int] | None = getattr(executor, "slots", None)
    n = workers or (max(1, slots()) if slots else default_workers())
    own = executor is None
    ex = executor if executor is not None else local_executor(n)
    inflight: set[Future] = set()
    broken = ""

    def window() -> int:
        return 2 * (max(1, slots()) if slots and not workers else n)

    def absorb(done: Iterable[Future]) -> None:
        nonlocal broken
        for f in done:
            try:
                results = f.result()
            except BaseException as e:  # noqa: BLE001 - a lost worker: its batch is unknown
                if isinstance(e, BrokenExecutor) and not broken:
                    broken = f"{WORKER_DIED}: {e}"
                results = [(t.path, FAILED, f"worker lost: {e!r}", 0, 0, 0, False)
                           for t in getattr(f, "_batch", [])]
            for r in results:
                acc.add(r)

    try:
        with _stop_on_signals() as caught:
            for batch in _batches(tasks, batch_size, n):
                if caught or acc.fatal:
                    break
                if on_candidate is not None:
                    for t in batch:
                        on_candidate(t.path)
                try:
                    fut = ex.submit(process_batch, batch, opts)
                except BrokenExecutor as e:
                    # A worker died (OOM killer, kill -9): the pool takes no more work. Its
                    # batch comes back as "worker lost" below; stop instead of a traceback.
                    broken = broken or f"{WORKER_DIED}: {e}"
                    acc.s["skipped"] += len(batch)
                    break
                fut._batch = batch  # type: ignore[attr-defined]
                inflight.add(fut)
                while len(inflight) >= window():
                    done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    absorb(done)
                    if caught or acc.fatal:
                        break
            while inflight:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                absorb(done)
            if caught:
                acc.s["stopped"] = f"interrupted by {signal.Signals(caught[0]).name}"
                acc.s["signal"] = caught[0]
            elif acc.fatal:
                acc.s["stopped"] = f"disk full, sweep stopped: {acc.fatal}"
            elif broken:
                acc.s["stopped"] = broken
    finally:
        if own:
            ex.shutdown(wait=True)


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
) -> dict[str, Any]:
    """Bulk restore: archives directly under *root* -> ``dest_root/<name>/`` (default:
    beside the archive), on the same pool, each through a temp dir and a rename."""
    import fnmatch

    from .discover import iter_archives

    t0 = time.monotonic()
    root_p = check_root(root)
    if max_files is not None and max_files < 0:
        raise ValueError(f"max_files must be >= 0 (0 = no cap), got {max_files}")
    dest_p = os.path.abspath(os.fspath(dest_root)) if dest_root is not None else None

    def matches(name: str) -> bool:
        if pattern:
            return fnmatch.fnmatch(name, pattern)
        return split_archive_name(name) is not None

    s = {"root": root_p, "dry_run": dry_run, "scanned": 0, "candidates": 0, "restored": 0,
         "skipped": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0, "elapsed": 0.0,
         "failures": [], "stopped": None}
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
        n = workers or default_workers()
        own = executor is None
        ex = executor if executor is not None else local_executor(n)
        try:
            with _stop_on_signals() as caught:
                size = max(1, min(batch_size, -(-len(jobs) // n)))
                futs: list[tuple[Future, list[tuple[str, str]]]] = []
                broken = ""
                for i in range(0, len(jobs), size):
                    if caught:
                        break
                    batch = jobs[i:i + size]
                    try:
                        futs.append((ex.submit(restore_batch, batch, remove_archive), batch))
                    except BrokenExecutor as e:
                        broken = f"{WORKER_DIED}: {e}"
                        s["skipped"] += len(jobs) - i
                        break
                for f, batch in futs:
                    try:
                        results = f.result()
                    except BaseException as e:  # noqa: BLE001 - a lost worker: its batch is unknown
                        if isinstance(e, BrokenExecutor) and not broken:
                            broken = f"{WORKER_DIED}: {e}"
                        # Each archive is kept (removed only after its restore is durable);
                        # a restore cut short leaves only a hidden temp dir beside it.
                        results = [(path, FAILED, f"worker lost: {e!r}", 0) for path, _ in batch]
                    for path, status, reason, b_out in results:
                        if status == "restored":
                            s["restored"] += 1
                            if track_bytes:
                                s["bytes_out"] += b_out
                        elif status == SKIPPED:
                            s["skipped"] += 1
                        else:
                            record_failure(s, path, reason)
                if caught:
                    s["stopped"] = f"interrupted by {signal.Signals(caught[0]).name}"
                    s["signal"] = caught[0]
                elif broken:
                    s["stopped"] = broken
        finally:
            if own:
                ex.shutdown(wait=True)
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def restore_batch(jobs: list[tuple[str, str]], remove_archive: bool) -> list[tuple[str, str, str, int]]:
    from .restore import restore_one

    out = []
    for archive, dest in jobs:
        try:
            stats: dict[str, int] = {}
            restore_one(archive, dest, remove_archive=remove_archive, stats=stats)
            out.append((archive, "restored", "", stats.get("bytes", 0)))
        except FileExistsError:
            out.append((archive, SKIPPED, "destination exists", 0))
        except ArchiveError as e:
            out.append((archive, FAILED, e.reason, 0))
        except Exception as e:  # noqa: BLE001 - plain data back, never raise
            out.append((archive, FAILED, f"{type(e).__name__}: {e}", 0))
    return out
