"""The worker side of ``sweep --pack auto``: one spanning pack a job (PackJob.span).

The steps and their helpers are sweep/packwork.py's (lock_batch, add_frame, commit_packs,
per_session), with the pack in an ancestor dir of its sessions: each session's dir is
opened below the pack's dir fd (entrypath.EntryDirs, also what lock_batch opens through),
its frame's members and index entry carry its path below the pack, and the pack is closed
at PackJob.max_bytes (the rest of the job goes into the next pack of the same dir). A job
is one pack of up to --pack-sessions (1,000) sessions: they are locked LOCK_AHEAD at a
time (one listing per dir after the locks), and each lock, with the subdir fds its scan
opened, is kept until its source is deleted while the pack holds at most half the fd
limit (_fd_budget); past that a lock is closed after its frame and taken again to delete.

The pack's dir is checked again on its fd (pack_dir_ok); a pack has one owner: sessions
too big for memory, and, as root, sessions of another owner than the pack's dir, get a
per-session archive as without --pack. Crash leftovers (a source a pack here or in a dir
above already holds, trash) are packplan.py's.
"""

from __future__ import annotations

import os
from typing import Any

from archive_tool import fs
from archive_tool.engine import commit, single
from archive_tool.errors import ArchiveError, Interrupted
from archive_tool.guard import interrupt
from archive_tool.pack import entrypath, packfile
from archive_tool.summary import FAILED, SKIPPED, Result
from archive_tool.sweep.packplan import Out, PackJob, pack_dir_ok, packed_names, resume, start_name
from archive_tool.sweep.packwork import (
    LOCK_AHEAD,
    Packed,
    Written,
    add_frame,
    commit_packs,
    per_session,
    release,
)
from archive_tool.sweep.step import INTERRUPTED, fail, frame_failed, rel_dir


def process_pack(job: PackJob, opts: dict[str, Any]) -> Out:
    """Write, verify, commit one pack and delete its sources; never raises."""
    out: Out = []
    try:
        with fs.DirCache(opts.get("root")) as dirs:
            rest: list[str] | None = job.paths
            while rest:  # a span job closed at its byte target goes on in a new pack
                rest = _pack(PackJob(job.dir, _first_name(job, rest), rest, job.span,
                                     job.owner, job.max_bytes), opts, out, dirs)
    except Interrupted:
        # SIGTERM/SIGINT: the tmp pack was never named; every source not committed stays.
        done = {r.path for r, _ in out}
        out += [(Result(p, SKIPPED, INTERRUPTED), None)
                for p in job.paths if p not in done]
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r.path for r, _ in out}
        out += [(Result(p, FAILED, f"internal error: {e!r}"), None)
                for p in job.paths if p not in done]
    return out


def _first_name(job: PackJob, rest: list[str]) -> str:
    # A span pack is named by its first session's start time (packplan.start_name).
    return job.period if rest is job.paths or not job.span else start_name(rest[0])


def _fd_budget() -> int:
    """Session locks and scanned subdir fds a pack may keep from its frames to its
    deletes: half the soft fd limit (the other half covers the LOCK_AHEAD locks taken
    ahead, the dir caches, the pool), so a pack of 1,000 sessions keeps them all on a
    machine that allows it and still runs under a 1,024-fd limit (the rest lock again)."""
    import resource  # here: once a pack, not in every sweep's start-up

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2


def _pack(job: PackJob, opts: dict[str, Any], out: Out, dirs: fs.DirCache) -> list[str] | None:
    """One pack of *job*; returns the paths left for the next pack (a span job that
    reached its byte target), else None."""
    # The pack's dir: the sessions' own (job.dir is their parent) or, for a span job, their
    # common ancestor (its fd through the same cache: DirCache.parent of a name in it).
    parent_fd = dirs.parent(os.path.join(job.dir, "-"))[0]
    dst = os.fstat(parent_fd)  # the pack's owner and group, and pack_dir_ok's
    if job.span and any(os.path.dirname(p) != job.dir for p in job.paths) and not \
            pack_dir_ok(dst, job.owner):
        # Checked again on the fd the pack will be linked in (the plan saw paths).
        out += [(Result(p, SKIPPED, f"not packed: {job.dir} is not a dir only the sessions' "
                        "owner may write (changed since the plan); source kept"), None)
                for p in job.paths]
        return None
    holders = [(parent_fd, job.dir, packed_names(parent_fd, job.dir))]
    try:
        if job.span:
            # A crashed earlier run may have packed some of these sessions into a pack
            # higher up (its group was larger): its packs count as holders too.
            d = job.dir
            while d.startswith(opts["root"].rstrip("/") + "/"):
                d = os.path.dirname(d)
                fd = os.dup(dirs.parent(os.path.join(d, "-"))[0])
                holders.append((fd, d, packed_names(fd, d)))
        # Every session's dir opened below the pack's dir fd, never through a symlink.
        with entrypath.EntryDirs(parent_fd, limit=64, base=job.dir) as edirs:
            return _pack_in(job, opts, out, dirs, dst, edirs, holders)
    finally:
        for fd, _d, _n in holders[1:]:
            os.close(fd)


def _pack_in(job: PackJob, opts: dict[str, Any], out: Out, dirs: fs.DirCache,
             dst: os.stat_result, edirs: entrypath.EntryDirs,
             holders: list[tuple[int, str, dict[str, tuple[str, int]]]]) -> list[str] | None:
    """packwork's steps for one pack (lock_batch, add_frame, commit_packs, per_session),
    each session's dir below the pack's (*edirs*), named in the pack by its entry path."""
    root, level, cutoff_ns = opts["root"], opts["compresslevel"], opts["cutoff_ns"]
    parent_fd = edirs.pack_dir_fd
    n = 1
    while fs.lexists_at(parent_fd, packfile.pack_file_name(job.period, n)):
        n += 1
    final = os.path.join(job.dir, packfile.pack_file_name(job.period, n))
    as_root = os.geteuid() == 0
    tmp = commit.open_tmp(parent_fd, final, None, (dst.st_uid, dst.st_gid) if as_root else None,
                          dst)
    budget = _fd_budget()
    kept_fds = 0
    locked: dict[str, single.Locked] = {}
    errors: dict[str, BaseException] = {}
    big: list[tuple[str, single.Locked | None]] = []
    packed: list[Packed] = []
    mode = 0o644
    rest: list[str] | None = None
    size = 0
    try:
        w = packfile.PackWriter(tmp, level)
        for i, path in enumerate(job.paths):
            interrupt.check()
            if job.max_bytes and size >= job.max_bytes:
                rest = job.paths[i:]  # this pack reached its byte target (span jobs)
                break
            if path not in locked and path not in errors:
                # LOCK_AHEAD sessions locked, then ONE listing per dir (single.lock_batch).
                got_l, got_e = single.lock_batch(job.paths[i:i + LOCK_AHEAD], edirs)
                locked.update(got_l)
                errors.update(got_e)
            # Its dir below the pack's ("" beside it) and its name in the pack.
            rel = rel_dir(job.dir, os.path.dirname(path)) if job.span else ""
            name = os.path.basename(path)
            arc = f"{rel}/{name}" if rel else name
            held = next(((hfd, a, names[a]) for hfd, h, names in holders
                         if (a := os.path.relpath(path, h)) in names), None)
            try:
                err = errors.pop(path, None)
                if err is not None:
                    raise err
                lk = locked.pop(path)
            except FileExistsError as e:
                why = e.strerror if held is not None else "archived meanwhile by another process"
                out.append((Result(path, SKIPPED, why), None))
                continue
            except (ArchiveError, OSError) as e:
                out.append((fail(path, e), None))
                continue
            if held is not None:
                hfd, a, where = held
                try:
                    resumed = resume(edirs.get(rel), path, name, where,
                                     *((hfd, a) if "/" in a else ()), lock=lk)
                except OSError as e:
                    resumed = fail(path, e)
                if resumed is not None:
                    os.close(lk.fd)
                    out.append((resumed, None))
                    continue
                # The pack holds an earlier state of it: this state goes into a new pack.
            keep = kept_fds < budget  # its lock (and scanned subdirs) kept for its delete
            kept: dict[str, int] | None = {} if keep else None
            try:
                got = add_frame(w, path, name, lk, cutoff_ns, as_root, dst,
                                rel_dir(root, os.path.dirname(path)), opts.get("holds"), kept,
                                arc)
            except (single.TooRecent, ArchiveError, OSError) as e:
                if frame_failed(e, lk.fd, path, w.broken, out,
                                [q.path for q in packed] + job.paths[i + 1:]):
                    return None
                continue
            if got is None:
                big.append((path, lk if keep else None))
                if not keep:
                    os.close(lk.fd)
                continue
            entries, frame, bits, row = got
            mode &= bits
            size += frame.csize
            packed.append(Packed(path, name, entries, frame, row, lk.fd if keep else -1,
                                 kept or {}, rel))
            kept_fds += 1 + len(kept or ()) if keep else 0
            if not keep:
                os.close(lk.fd)
        for lk in locked.values():  # locked ahead for a session the next pack takes
            os.close(lk.fd)
        locked = {}
        if packed:
            with interrupt.shielded():  # written and read back: commit it whole
                try:
                    w.finish()
                    os.fchmod(tmp.fd, mode)
                    w.verify()
                except (ArchiveError, OSError) as e:
                    out += [(fail(p.path, e), None) for p in packed]
                else:
                    commit_packs([Written(job, tmp, packed, edirs)], out, root)
        tmp.close()  # (idempotent) its dir fd back before the per-session archives
        if big:  # after the pack, as packwork's batch: their own archives
            out += per_session(big, opts, dirs)
    finally:
        tmp.close()  # never named (a failure, a signal): every source stays
        for q in packed:
            release(q)
        for lk in locked.values():
            os.close(lk.fd)
        for _, blk in big:
            if blk is not None:
                os.close(blk.fd)
    return rest
