"""``sweep --pack``: many sessions per file (issue 14), with the per-session crash rules.

Per FINISHED_* dir and period (a day, an ISO week, or N sessions) one pack
``<period>.pack.tar.zst`` (packfile.py), planned by packplan.py and built by one worker
each (packwork.py: frames into an unnamed tmp, read back, fsync, link to a free name,
fsync the dir, then delete the sources). So at every instant a session is its source, or
its source and a complete durable pack holding it, or only that pack: never neither.
A crash between link and delete leaves sessions that are both; the next pack sweep
deletes such sources when the frame equals their tar bytes (packplan.resume).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from archive_tool.catalog import catalog
from archive_tool.errors import ArchiveError, BadArgument, Interrupted
from archive_tool.guard.holds import Holds, check_quiet_period
from archive_tool.guard.lock import RootLock
from archive_tool.levels import resolve_level
from archive_tool.pack import packfile
from archive_tool.stale import finalize as stale
from archive_tool.summary import FAILED, SKIPPED, Result, new_summary, record_failure
from archive_tool.sweep.discover import Discovery
from archive_tool.sweep.executors import default_workers, run_batches
from archive_tool.sweep.packplan import (
    AUTO,
    PackJob,
    cleanup,
    parse_pack,
    parse_targets,
    plan_auto,
    plan_packs,
    remove_stale_pack_tmps,
)
from archive_tool.sweep.packspan import process_pack
from archive_tool.sweep.packwork import LOCK_AHEAD, Out, process_packs
from archive_tool.sweep.plan import ARCHIVE, Planner, Task, check_days, check_root, parse_shard
from archive_tool.sweep.sessions import process_batch
from archive_tool.sweep.step import Accounts


def process_job(job: list[PackJob] | list[Task], opts: dict[str, Any]) -> Out:
    if job and isinstance(job[0], PackJob):
        if job[0].span:  # --pack auto: one spanning pack a job
            return process_pack(job[0], opts)
        return process_packs(job, opts)  # type: ignore[arg-type]
    out: Out = []
    for t in job:
        assert isinstance(t, Task)
        if t.kind == ARCHIVE:
            continue
        if t.kind == "cleanup":
            out += cleanup(t, opts)
        else:
            out += [(r, None) for r in process_batch([t], opts)]
    return out


def pack_batches(jobs: list[PackJob], size: int, workers: int) -> list[list[PackJob]]:
    """Consecutive packs (plan_packs sorts them by dir) as worker batches of at most *size*
    sessions (a bigger pack alone), smaller for a small sweep so each worker gets about
    two: a batch opens each dir once, takes its locks and one listing per dir at once
    (packwork.process_packs), where a pack of a day of one dir is often one session."""
    total = sum(len(j.paths) for j in jobs)
    size = max(1, min(size, -(-total // (2 * workers))))
    out: list[list[PackJob]] = []
    cur: list[PackJob] = []
    n = 0
    for j in jobs:
        if cur and n + len(j.paths) > size:
            out.append(cur)
            cur, n = [], 0
        cur.append(j)
        n += len(j.paths)
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------- sweeping process


def pack_sweep(
    root: str | os.PathLike[str],
    pack: str | int,
    *,
    dry_run: bool = True,
    compresslevel: int | None = None,
    workers: int | None = None,
    older_than_days: float | None = None,
    pattern: str | None = None,
    max_dirs: int | None = None,
    use_fd: bool = True,
    shard: str | tuple[int, int] | None = None,
    executor: Executor | None = None,
    on_result: Callable[[Result], None] | None = None,
    lock: bool = True,
    catalog_rows: bool = True,
    finalize_stale: bool = False,
    stale_after: float | None = None,
    on_packed: Callable[[Result, dict[str, Any] | None], None] | None = None,
    quiet_period: float | None = None,
    pack_sessions: int | None = None,
    pack_bytes: int | None = None,
) -> dict[str, Any]:
    """Sweep *root* into packs (see the module doc). Returns the Summary dict, with
    ``packs`` (files written). The catalog (catalog.py) gets a row per packed session.
    *on_packed(result, row)*: each result with its catalog row, whose ``archive`` names
    the pack (runlog.RunLog.packed writes the run's manifest from it). *pack_sessions*,
    *pack_bytes*: ``--pack auto``'s targets (packplan.plan_auto)."""
    t0 = time.monotonic()
    mode = parse_pack(pack)
    compresslevel = resolve_level("tar.zst", compresslevel)  # zstd's own; None: 3
    targets = parse_targets(pack_sessions, pack_bytes)
    check_days(older_than_days)
    if workers is not None and workers < 1:
        raise BadArgument(f"workers must be >= 1, got {workers}")
    shard_t = parse_shard(shard)
    root_p = check_root(root)
    holds = check_quiet_period(quiet_period)
    summary = new_summary("sweep", root_p, dry_run, mode="pack", format="tar.zst",
                          backend="", archived=0, inodes_in=0, resumed=0, cleaned=0,
                          shard=None, pack=str(mode), packs=0)
    if shard_t:
        summary["shard"] = f"{shard_t[0]}/{shard_t[1]}"
    if finalize_stale:
        # Dead RUNNING runs move to FINISHED_ERROR/ first, so this sweep packs them.
        summary["stale"] = stale.finalize_stale(root_p, dry_run=dry_run, stale_after=stale_after)
        for f in summary["stale"]["failures"]:
            record_failure(summary, f["path"], f["reason"])
    disc = Discovery(root_p, False, use_fd)
    planner = Planner(root_p, False, "tar.zst", pattern, older_than_days, max_dirs, shard_t,
                      packs=packfile.is_pack_name)
    tasks = list(planner.tasks(disc.paths()))
    jobs: list[list[PackJob] | list[Task]] = []
    others = [t for t in tasks if t.kind != ARCHIVE]
    if others:
        jobs.append(others)
    todo = [t for t in tasks if t.kind == ARCHIVE]
    if mode == AUTO:
        # A spanning pack is one job of its own (packspan.py): the pack sits above its
        # sessions' dirs, which the batched path (packwork.py) does not handle.
        packs = plan_auto(todo, root_p, *targets)
        jobs += [[job] for job in packs]
    else:
        packs = plan_packs(todo, mode)
        for job in packs:
            job.packs = planner.dir_packs.get(job.dir)
        slots: Callable[[], int] | None = getattr(executor, "slots", None)
        jobs += pack_batches(packs, LOCK_AHEAD,
                             workers or (max(1, slots()) if slots else default_workers()))
    acc = Accounts(summary, True, on_result)
    if dry_run:
        summary["packs"] = len(packs)
    else:
        opts = {"format": "tar.zst", "compresslevel": compresslevel, "root": root_p,
                "cutoff_ns": planner.cutoff_ns, "remove_src": True,
                "holds": Holds.take(holds)}
        rows: list[dict[str, Any]] = []
        written: set[str] = set()

        def absorb(results: Out) -> None:
            for r, row in results:
                acc.add(r)
                if on_packed is not None:
                    on_packed(r, row)
                if row is not None:
                    rows.append(row)
                    written.add(row["archive"])
            if catalog_rows and len(rows) >= 1000:
                _catalog(root_p, rows, summary)
                rows.clear()

        def lost(job: list[PackJob] | list[Task], e: BaseException) -> Out:
            paths = [p for j in job for p in (j.paths if isinstance(j, PackJob) else [j.path])]
            if isinstance(e, Interrupted):
                return [(Result(p, SKIPPED, "interrupted (SIGTERM/SIGINT): source kept"), None)
                        for p in paths]
            return [(Result(p, FAILED, f"worker lost: {e!r}"), None) for p in paths]

        with RootLock(root_p, shard_t) if lock else contextlib.nullcontext():
            remove_stale_pack_tmps(root_p, planner.dir_packs)
            res = run_batches(iter(jobs), process_job, (opts,), absorb=absorb, lost=lost,
                              executor=executor, workers=workers,
                              halt=lambda: f"disk full, sweep stopped: {acc.fatal}"
                              if acc.fatal else None)
            if catalog_rows:
                _catalog(root_p, rows, summary)
        if res.stopped:
            summary["stopped"] = res.stopped
        if res.signal is not None:
            summary["signal"] = res.signal
        summary["packs"] = len(written)
    summary["backend"] = disc.backend
    summary["warnings"] += disc.warnings
    summary["scanned"] = planner.scanned
    summary["candidates"] = planner.candidates
    summary["capped"] = planner.capped
    summary["skipped"] += planner.skipped
    for k, v in planner.skipped_reasons.items():
        summary["skipped_reasons"][k] = summary["skipped_reasons"].get(k, 0) + v
    summary["elapsed"] = round(time.monotonic() - t0, 3)
    return summary


def _catalog(root: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Rows into the catalog; a catalog that cannot take them (a forged file refused by
    untrusted.guard_catalog, a full disk) is a warning: the packs are already safe and
    ``catalog --rebuild`` makes the rows again."""
    try:
        catalog.add_sessions(root, rows)
    except (ArchiveError, OSError, sqlite3.Error) as e:
        msg = (f"catalog not updated: {e}; `session-archive catalog {root} --rebuild` "
               f"lists every pack")
        if msg not in summary["warnings"]:
            summary["warnings"].append(msg)
