"""``sweep --pack``: many sessions per file (issue 14), with the per-session crash rules.

Per FINISHED_* dir and period (a day, an ISO week, or N sessions) one pack
``<period>.pack.tar.zst`` (packfile.py). One worker builds one pack:

  1. per session: lock, scan, tar in memory, compress as its own frame into ONE unnamed
     O_TMPFILE in the FINISHED_* dir, unlock (a pack of 10,000 sessions would otherwise
     hold 10,000 dir fds; the delete below re-checks every source against its manifest);
  2. end the tar stream, write the index and the seek table, read the whole tmp back
     (every frame against a digest of the bytes it was made from);
  3. one fsync, link() to the first free name (``<period>.pack.tar.zst``, then
     ``<period>.2.pack.tar.zst`` ...: never overwrite), fsync the dir;
  4. per session: lock again, commit.remove_source (rename to trash, re-check unchanged,
     delete). A source that changed is kept (its earlier bytes stay in the pack).

So at every instant a session is its source, or its source and a complete durable pack
holding it, or only that pack: never neither. A crash between 3 and 4 leaves sessions
that are both; the next pack sweep finds them in the dir's packs, checks the frame equals
the source's tar bytes, and only deletes the source (RESUMED), as a per-session sweep does
for an archive beside its source.

Sessions too big for memory (single.IN_MEMORY_LIMIT / IN_MEMORY_MAX_ENTRIES), and, as
root, sessions of another owner than their dir's, get a per-session archive as without
--pack.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from archive_tool import fs
from archive_tool.bulk import catalog, stale
from archive_tool.bulk import sweep as _sweep
from archive_tool.bulk.discover import Discovery
from archive_tool.bulk.executors import run_batches
from archive_tool.bulk.packplan import (  # noqa: F401 - part of this module's API
    MAX_PACK_SESSIONS,
    PackJob,
    parse_pack,
    period_of,
    plan_packs,
)
from archive_tool.bulk.plan import ARCHIVE, Planner, Task, check_days, check_root, parse_shard
from archive_tool.engine import commit, packfile, single
from archive_tool.engine.scan import Entry, content_bytes, newest_mtime_ns, scan_fd
from archive_tool.engine.tarwrite import CHUNK, write_tar
from archive_tool.errors import ArchiveError, BadArgument, DiskFull, SourceChanged
from archive_tool.lock import RootLock, lock_session
from archive_tool.names import FORMATS, session_of_trash
from archive_tool.summary import (
    ARCHIVED,
    CLEANED,
    FAILED,
    RESUMED,
    SKIPPED,
    Result,
    new_summary,
    record_failure,
)

# ---------------------------------------------------------------------------- worker side


@dataclass
class _Packed:
    path: str
    name: str
    entries: list[Entry]
    frame: packfile.FrameInfo
    row: dict[str, Any]


Out = list[tuple[Result, dict[str, Any] | None]]


def process_pack(job: PackJob, opts: dict[str, Any]) -> Out:
    """Write, verify, commit one pack and delete its sources; never raises."""
    out: Out = []
    try:
        with fs.DirCache(opts.get("root")) as dirs:
            _pack(job, opts, out, dirs)
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r.path for r, _ in out}
        out += [(Result(p, FAILED, f"internal error: {e!r}"), None)
                for p in job.paths if p not in done]
    return out


def _rel_dir(root: str, d: str) -> str:
    rel = os.path.relpath(d, root)
    return "" if rel == "." else rel


def _pack(job: PackJob, opts: dict[str, Any], out: Out, dirs: fs.DirCache) -> None:
    root, level, cutoff_ns = opts["root"], opts["compresslevel"], opts["cutoff_ns"]
    parent_fd = dirs.parent(job.paths[0])[0]
    in_packs = _packed_names(parent_fd, job.dir)
    n = 1
    while fs.lexists_at(parent_fd, packfile.pack_file_name(job.period, n)):
        n += 1
    final = os.path.join(job.dir, packfile.pack_file_name(job.period, n))
    as_root = os.geteuid() == 0
    dst = os.fstat(parent_fd)
    tmp = commit.open_tmp(parent_fd, final, None, (dst.st_uid, dst.st_gid) if as_root else None)
    big: list[str] = []
    packed: list[_Packed] = []
    mode = 0o644
    try:
        w = packfile.PackWriter(tmp, level)
        for i, path in enumerate(job.paths):
            name = os.path.basename(path)
            if name in in_packs:
                resumed = _resume(parent_fd, path, name, in_packs[name])
                if resumed is not None:
                    out.append((resumed, None))
                    continue
                # The pack holds an earlier state of it: this state goes into a new pack.
            try:
                got = _add(w, parent_fd, path, name, cutoff_ns, as_root, dst,
                           _rel_dir(root, job.dir))
            except single.TooRecent:
                out.append((Result(path, SKIPPED, "too recent"), None))
                continue
            except FileExistsError:
                out.append((Result(path, SKIPPED, "archived meanwhile by another process"), None))
                continue
            except (ArchiveError, OSError) as e:
                out.append((_sweep._fail(path, e), None))
                if isinstance(e, DiskFull) or w.broken:
                    # The tmp pack is unusable (or the disk full): nothing of it is
                    # committed, every source stays; the rest is not attempted.
                    why = "disk full" if isinstance(e, DiskFull) else "pack write failed"
                    out += [(Result(p, SKIPPED, f"not attempted: {why}"), None)
                            for p in [q.path for q in packed] + job.paths[i + 1:]]
                    return
                continue
            if got is None:
                big.append(path)
                continue
            entries, frame, bits, row = got
            mode &= bits
            packed.append(_Packed(path, name, entries, frame, row))
        if packed:
            _commit_pack(w, tmp, packed, mode, out, root, job)
    finally:
        tmp.close()
    if big:
        for r in _per_session(big, opts, dirs):
            row = None
            if r.status == ARCHIVED:  # its own archive: catalogued as `--rebuild` reads it
                with contextlib.suppress(ArchiveError, OSError, ValueError):
                    rel = _rel_dir(root, job.dir)
                    fname = os.path.basename(r.path) + ".tar.zst"
                    row = next(catalog.rows_of_file(root, rel, fname))
            out.append((r, row))


def _add(w: packfile.PackWriter, parent_fd: int, path: str, name: str,
         cutoff_ns: int | None, as_root: bool, dst: os.stat_result, rel_dir: str
         ) -> tuple[list[Entry], packfile.FrameInfo, int, dict[str, Any]] | None:
    """Session *name* as the pack's next frame; None: it goes to a per-session archive
    (too big for memory, or, as root, owned by another user than the dir: a pack
    belongs to one user, and single.py gives each archive its session's owner)."""
    lock_fd = lock_session(parent_fd, name, path)
    try:
        entries = scan_fd(lock_fd, path)
        if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
            raise single.TooRecent(path)
        size = content_bytes(entries)
        if size > single.IN_MEMORY_LIMIT or len(entries) > single.IN_MEMORY_MAX_ENTRIES:
            return None
        if as_root and entries[0].uid != dst.st_uid:
            return None
        bits = single.archive_mode(entries, dst.st_gid, path, as_root)
        parts: list[bytes] = []
        write_tar(lock_fd, path, name, entries, parts.append, chunk=max(CHUNK, size + 1))
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        frame = w.add(name, tar)
        fs.race_point("pack-frame", path)
        # The catalog row from the bytes in memory (the pack's name is set once published).
        row = catalog.session_row(tar, name, rel_dir, "", frame.index, frame.offset,
                                  frame.csize)
        return entries, frame, bits, row
    finally:
        os.close(lock_fd)


def _commit_pack(w: packfile.PackWriter, tmp: commit.TmpArchive, packed: list[_Packed],
                 mode: int, out: Out, root: str, job: PackJob) -> None:
    paths = [p.path for p in packed]
    try:
        w.finish()
        os.fchmod(tmp.fd, mode)
        w.verify()
        commit.make_durable([tmp])
        fs.race_point("pack-publish", tmp.final)
        while True:
            try:
                commit.publish(tmp)
                break
            except FileExistsError:  # another process took the name: take the next one
                k = int(tmp.name[len(job.period) + 1:].split(".")[0]) + 1 \
                    if tmp.name != packfile.pack_file_name(job.period) else 2
                tmp.name = packfile.pack_file_name(job.period, k)
                tmp.final = os.path.join(job.dir, tmp.name)
        commit.fsync_dir(tmp.dir_fd, job.dir)
    except (ArchiveError, OSError) as e:
        out += [(_sweep._fail(p, e), None) for p in paths]
        return
    finally:
        tmp.discard()
    fs.race_point("pack-published", tmp.final)
    arel = os.path.relpath(tmp.final, root)
    for p in packed:
        f = p.frame
        row = p.row
        row["archive"] = arel
        try:
            lock_fd = lock_session(tmp.dir_fd, p.name, p.path, archived_ok=True)
        except (FileExistsError, ArchiveError, OSError) as e:
            out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source could "
                               f"not be locked again: {getattr(e, 'reason', e)}"), row))
            continue
        try:
            commit.remove_source(tmp.dir_fd, p.name, p.entries, tmp.name, p.path,
                                 keep_archive=True)
            out.append((Result(p.path, ARCHIVED, "", row["bytes_in"], f.csize,
                               len(p.entries)), row))
        except SourceChanged as e:
            out.append((Result(p.path, FAILED, f"{e.reason.split(';')[0]}; source kept (the "
                               f"pack holds its earlier state)"), row))
        except OSError as e:
            out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source could "
                               f"not be removed: {e.strerror or e}"), row))
        finally:
            os.close(lock_fd)


def _packed_names(parent_fd: int, d: str) -> dict[str, tuple[str, int]]:
    """Session name -> (pack file, frame) for the packs already in the dir."""
    found: dict[str, tuple[str, int]] = {}
    for item in fs.scandir_sorted(parent_fd):
        if not packfile.is_pack_name(item.name) or not item.is_file(follow_symlinks=False):
            continue
        try:
            fd = fs.open_file(item.name, parent_fd)
            with packfile.Pack(os.path.join(d, item.name), fd) as p:
                for i, name in enumerate(p.names):
                    found[name] = (item.name, i)
        except (ArchiveError, OSError):
            continue  # not ours to judge here; `verify` reports it
    return found


def _resume(parent_fd: int, path: str, name: str, where: tuple[str, int]) -> Result | None:
    """Source and a pack holding it (a crash between publish and delete): delete the
    source only if the frame is exactly its tar bytes now; None if it differs (the source
    changed after it was packed: the caller packs it again)."""
    pack_name, i = where
    try:
        lock_fd = lock_session(parent_fd, name, path, archived_ok=True)
    except FileExistsError as e:
        return Result(path, SKIPPED, e.strerror)
    except (ArchiveError, OSError) as e:
        return _sweep._fail(path, e)
    try:
        entries = scan_fd(lock_fd, path)
        parts: list[bytes] = []
        write_tar(lock_fd, path, name, entries, parts.append)
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        fd = fs.open_file(pack_name, parent_fd)
        with packfile.Pack(os.path.join(os.path.dirname(path), pack_name), fd) as p:
            if p.members(i) != tar:
                return None
            os.fsync(p.fd)
        commit.fsync_dir(parent_fd, os.path.dirname(path))
        commit.remove_source(parent_fd, name, entries, pack_name, path, keep_archive=True)
    except (ArchiveError, OSError) as e:
        return _sweep._fail(path, e)
    finally:
        os.close(lock_fd)
    return Result(path, RESUMED, "", content_bytes(entries), 0, len(entries))


def _per_session(paths: list[str], opts: dict[str, Any], dirs: fs.DirCache) -> list[Result]:
    out: list[Result] = []
    prepared: list[single.Prepared] = []
    try:
        for path in paths:
            try:
                prepared.append(single.prepare(path, "tar.zst", opts["compresslevel"],
                                               cutoff_ns=opts["cutoff_ns"], dirs=dirs))
            except single.TooRecent:
                out.append(Result(path, SKIPPED, "too recent"))
            except FileExistsError:
                out.append(Result(path, SKIPPED, "archive appeared meanwhile"))
            except (ArchiveError, OSError) as e:
                out.append(_sweep._fail(path, e))
        if prepared:
            _sweep._commit(prepared, out, True)
    finally:
        for p in prepared:
            p.unlock()
    return out


def _cleanup(t: Task, opts: dict[str, Any]) -> Out:
    """``.<name>.deleting``: removed if a pack in its dir (or an archive) holds the
    session, else renamed back (sweep._cleanup's rule, packs included)."""
    with fs.DirCache(opts.get("root")) as dirs:
        try:
            parent_fd, trash = dirs.parent(t.path)
            name = session_of_trash(trash)
            if name and name in _packed_names(parent_fd, os.path.dirname(t.path)) and not any(
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
            return [(_sweep._fail(t.path, e), None)]
        return [(_sweep._cleanup(t, dirs), None)]


def process_job(job: PackJob | list[Task], opts: dict[str, Any]) -> Out:
    if isinstance(job, PackJob):
        return process_pack(job, opts)
    out: Out = []
    for t in job:
        if t.kind == ARCHIVE:
            continue
        if t.kind == "cleanup":
            out += _cleanup(t, opts)
        else:
            out += [(r, None) for r in _sweep.process_batch([t], opts)]
    return out


# ----------------------------------------------------------------------- sweeping process


def pack_sweep(
    root: str | os.PathLike[str],
    pack: str | int,
    *,
    dry_run: bool = True,
    compresslevel: int = 1,
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
) -> dict[str, Any]:
    """Sweep *root* into packs (see the module doc). Returns the Summary dict, with
    ``packs`` (files written). The catalog (catalog.py) gets a row per packed session."""
    import time

    t0 = time.monotonic()
    mode = parse_pack(pack)
    check_days(older_than_days)
    if workers is not None and workers < 1:
        raise BadArgument(f"workers must be >= 1, got {workers}")
    shard_t = parse_shard(shard)
    root_p = check_root(root)
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
    planner = Planner(root_p, False, "tar.zst", pattern, older_than_days, max_dirs, shard_t)
    tasks = list(planner.tasks(disc.paths()))
    jobs: list[PackJob | list[Task]] = []
    others = [t for t in tasks if t.kind != ARCHIVE]
    if others:
        jobs.append(others)
    packs = plan_packs([t for t in tasks if t.kind == ARCHIVE], mode)
    jobs += packs
    acc = _sweep._Accounts(summary, True, on_result)
    if dry_run:
        summary["packs"] = len(packs)
    else:
        opts = {"format": "tar.zst", "compresslevel": compresslevel, "root": root_p,
                "cutoff_ns": planner.cutoff_ns, "remove_src": True}
        rows: list[dict[str, Any]] = []
        written: set[str] = set()

        def absorb(results: Out) -> None:
            for r, row in results:
                acc.add(r)
                if row is not None:
                    rows.append(row)
                    written.add(row["archive"])
            if catalog_rows and len(rows) >= 1000:
                catalog.add_sessions(root_p, rows)
                rows.clear()

        def lost(job: PackJob | list[Task], e: BaseException) -> Out:
            paths = job.paths if isinstance(job, PackJob) else [t.path for t in job]
            return [(Result(p, FAILED, f"worker lost: {e!r}"), None) for p in paths]

        with RootLock(root_p, shard_t) if lock else contextlib.nullcontext():
            res = run_batches(iter(jobs), process_job, (opts,), absorb=absorb, lost=lost,
                              executor=executor, workers=workers,
                              halt=lambda: f"disk full, sweep stopped: {acc.fatal}"
                              if acc.fatal else None)
            if catalog_rows:
                catalog.add_sessions(root_p, rows)
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
