"""The worker side of ``sweep --pack``: one worker builds, commits and deletes the packs of
a batch (consecutive packs, mostly of one dir: packsweep.pack_batches).

  1. lock the batch's sessions, then ONE listing per dir says which were archived
     meanwhile (single.lock_batch); a pack of over LOCK_AHEAD sessions locks by chunks
     and unlocks each after its frame (else 10,000 sessions held 10,000 dir fds);
  2. per session: scan, tar in memory, compress as its own frame into its pack's ONE
     unnamed O_TMPFILE in the FINISHED_* dir; then per pack: end the tar stream, write
     the index and seek table, read the tmp back (each frame against a digest);
  3. the batch's packs fsynced together, each linked to the first free name
     (``<period>.pack.tar.zst``, then ``<period>.2.pack.tar.zst`` ...: never overwrite),
     each dir fsynced once;
  4. per session: removesource.remove_source (rename to trash, re-check unchanged,
     delete) under the lock held since step 1 (or taken again). A source that changed
     is kept (its earlier bytes stay in the pack).

Sessions too big for memory (single.IN_MEMORY_LIMIT / IN_MEMORY_MAX_ENTRIES), and, as
root, sessions of another owner than their dir's, get a per-session archive as without
--pack. Crash leftovers (a source a pack already holds, trash) are packplan.py's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from archive_tool import fdwalk, fs
from archive_tool.catalog import rebuild
from archive_tool.catalog.rows import session_row
from archive_tool.engine import commit, removesource, single
from archive_tool.engine.scan import Entry, content_bytes, newest_mtime_ns, scan_fd
from archive_tool.engine.tarwrite import CHUNK, write_tar
from archive_tool.errors import ArchiveError, DiskFull, Interrupted, SourceChanged
from archive_tool.guard import interrupt
from archive_tool.guard.holds import Holds
from archive_tool.guard.lock import lock_session
from archive_tool.pack import entrypath, packfile
from archive_tool.summary import ARCHIVED, FAILED, SKIPPED, Result
from archive_tool.sweep.packplan import Out, PackJob, packed_names, resume
from archive_tool.sweep.step import INTERRUPTED, commit_group, fail, frame_failed, rel_dir


@dataclass
class Packed:
    path: str
    name: str
    entries: list[Entry]
    frame: packfile.FrameInfo
    row: dict[str, Any]
    lock_fd: int = -1  # the session's lock, kept until its delete (LOCK_AHEAD), else -1
    held: dict[str, int] = field(default_factory=dict)  # the scan's subdir fds, for the delete
    rel: str = ""  # its dir below the pack's (a spanning pack, packspan.py), "" beside it


@dataclass
class Written:
    """A pack written and read back, not yet durable or named."""

    job: PackJob
    tmp: commit.TmpArchive
    packed: list[Packed]
    below: entrypath.EntryDirs | None = None  # a spanning pack's: its sessions' dirs


@dataclass
class _Batch:
    """What the packs of one worker batch share: the parent dirs opened once (DirCache),
    each dir's fstat taken once, the sessions' locks (single.lock_batch) with the
    exception each session's lock gave instead, and what is written but not committed."""

    dirs: fs.DirCache
    locked: dict[str, single.Locked] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    dir_st: dict[str, os.stat_result] = field(default_factory=dict)
    written: list[Written] = field(default_factory=list)
    big: list[tuple[str, single.Locked | None]] = field(default_factory=list)
    n_held: int = 0  # subdir fds kept from the scans for the deletes (HELD_MAX)

    def lock(self, paths: list[str]) -> None:
        locked, errors = single.lock_batch(paths, self.dirs)
        self.locked.update(locked)
        self.errors.update(errors)

    def close(self) -> None:
        """Every fd still ours: tmps never named vanish, their sources stay untouched."""
        for x in self.written:
            x.tmp.close()
            for p in x.packed:
                release(p)
        for _, lk in self.big:
            if lk is not None:
                os.close(lk.fd)
        for lk in self.locked.values():
            os.close(lk.fd)
        self.written, self.big, self.locked = [], [], {}


def release(p: Packed) -> None:
    if p.lock_fd >= 0:
        os.close(p.lock_fd)
    p.lock_fd = -1
    fdwalk.close_held(p.held)


# Sessions locked at once (then ONE listing per dir, not a stat per format per session),
# the most a batch holds. A pack of at most this many keeps each lock until its source is
# deleted, where the locked fd serves the delete (issue 24); a bigger one (alone in its
# batch) unlocks each after its frame and locks again to delete.
LOCK_AHEAD = 128
# Subdir fds a batch keeps from the scans for the deletes (whose re-check lstats such a
# dir instead of opening and fstat'ing it again): ~128 + 512 + 256 fds at most.
HELD_MAX = 512


def process_packs(jobs: list[PackJob], opts: dict[str, Any]) -> Out:
    """Write, verify, commit the packs of a batch, then delete their sources; never
    raises. A batch of at most LOCK_AHEAD sessions locks them all first: one listing per
    dir for the whole batch (packs of a day or a few sessions are the common case)."""
    out: Out = []
    paths = [p for job in jobs for p in job.paths]
    root = opts["root"]
    try:
        with fs.DirCache(opts.get("root")) as dirs:
            b = _Batch(dirs)
            try:
                if len(paths) <= LOCK_AHEAD:
                    b.lock(paths)
                for k, job in enumerate(jobs):
                    interrupt.check()
                    if not _write_pack(job, opts, out, b):
                        out += [(Result(p, SKIPPED, "not attempted: disk full"), None)
                                for j in jobs[k + 1:] for p in j.paths]
                        break
                if b.written:
                    with interrupt.shielded():  # written and read back: commit it whole
                        commit_packs(b.written, out, root)
                if b.big:
                    out += per_session(b.big, opts, dirs)
            finally:
                b.close()
    except Interrupted:
        # SIGTERM/SIGINT: the tmp packs were never named; every source not committed stays.
        done = {r.path for r, _ in out}
        out += [(Result(p, SKIPPED, INTERRUPTED), None) for p in paths if p not in done]
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r.path for r, _ in out}
        out += [(Result(p, FAILED, f"internal error: {e!r}"), None)
                for p in paths if p not in done]
    return out


def _write_pack(job: PackJob, opts: dict[str, Any], out: Out, b: _Batch) -> bool:
    """Every session of *job* as a frame of one unnamed tmp, read back; the pack goes to
    ``b.written``, sessions for per-session archives to ``b.big``. False: the disk is
    full, nothing more is to be attempted (this pack's sessions are reported)."""
    root, level, cutoff_ns = opts["root"], opts["compresslevel"], opts["cutoff_ns"]
    parent_fd = b.dirs.parent(job.paths[0])[0]
    in_packs = packed_names(parent_fd, job.dir, job.packs)
    n = 1
    # The first name free in the planner's listing (no stat per name); publish_free_name
    # takes the next one if that was taken since: its link never replaces.
    while (packfile.pack_file_name(job.period, n) in job.packs if job.packs is not None
           else fs.lexists_at(parent_fd, packfile.pack_file_name(job.period, n))):
        n += 1
    final = os.path.join(job.dir, packfile.pack_file_name(job.period, n))
    as_root = os.geteuid() == 0
    dst = b.dir_st.get(job.dir) or b.dir_st.setdefault(job.dir, os.fstat(parent_fd))
    keep = len(job.paths) <= LOCK_AHEAD
    locked, errors = b.locked, b.errors
    packed: list[Packed] = []
    tmp = commit.open_tmp(parent_fd, final, None, (dst.st_uid, dst.st_gid) if as_root else None,
                          dst)
    mode = 0o644
    try:
        w = packfile.PackWriter(tmp, level)
        for i, path in enumerate(job.paths):
            interrupt.check()
            if path not in locked and path not in errors:
                b.lock(job.paths[i:i + LOCK_AHEAD])
            name = os.path.basename(path)
            try:
                err = errors.pop(path, None)
                if err is not None:
                    raise err
                lk = locked.pop(path)
            except FileExistsError as e:
                why = e.strerror if name in in_packs else "archived meanwhile by another process"
                out.append((Result(path, SKIPPED, why), None))
                continue
            except (ArchiveError, OSError) as e:
                out.append((fail(path, e), None))
                continue
            if name in in_packs:
                resumed = resume(parent_fd, path, name, in_packs[name], lock=lk)
                if resumed is not None:
                    os.close(lk.fd)
                    out.append((resumed, None))
                    continue
                # The pack holds an earlier state of it: this state goes into a new pack.
            kept: dict[str, int] | None = {} if keep and b.n_held < HELD_MAX else None
            try:
                got = add_frame(w, path, name, lk, cutoff_ns, as_root, dst,
                           rel_dir(root, job.dir), opts.get("holds"), kept)
            except (single.TooRecent, ArchiveError, OSError) as e:
                if frame_failed(e, lk.fd, path, w.broken, out,
                                [q.path for q in packed] + job.paths[i + 1:]):
                    return not isinstance(e, DiskFull)
                continue
            if got is None:
                b.big.append((path, lk if keep else None))
                if not keep:
                    os.close(lk.fd)
                continue
            entries, frame, bits, row = got
            mode &= bits
            packed.append(Packed(path, name, entries, frame, row, lk.fd if keep else -1,
                                  kept or {}))
            b.n_held += len(kept or ())
            if not keep:
                os.close(lk.fd)
        if packed:
            try:
                w.finish()
                os.fchmod(tmp.fd, mode)
                w.verify()
                b.written.append(Written(job, tmp, packed))  # the batch's now
                tmp = None
            except (ArchiveError, OSError) as e:
                out += [(fail(p.path, e), None) for p in packed]
    finally:
        if tmp is not None:  # not handed to the batch (a failure, a signal): nothing named
            tmp.close()
            for q in packed:
                release(q)
    return True


def add_frame(w: packfile.PackWriter, path: str, name: str, lk: single.Locked,
         cutoff_ns: int | None, as_root: bool, dst: os.stat_result, rel_dir: str,
         holds: Holds | None = None, kept: dict[str, int] | None = None,
         arc: str | None = None
         ) -> tuple[list[Entry], packfile.FrameInfo, int, dict[str, Any]] | None:
    """Session *name*, locked by *lk*, as the pack's next frame; None: it goes to a
    per-session archive (too big for memory, or, as root, owned by another user than the
    dir: a pack belongs to one user, and single.py gives each archive its session's owner).
    The lock stays the caller's. *kept*: once the frame is written, the subdir fds the
    scan opened move there (the caller's, for remove_source's re-check and delete).
    *arc*: its path in the pack (a spanning pack's entry path; default its name)."""
    arc = arc or name
    # Subdir fds the scan opened and checked serve the tar writer (as single.prepare's).
    held: dict[str, int] = {}
    try:
        entries = scan_fd(lk.fd, path, held, lk.st)
        if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
            raise single.TooRecent(path)
        why = holds.reason(lk.st.st_dev, entries) if holds is not None else None
        if why:
            raise single.TooRecent(path, why)  # a writer may still hold it (holds.py)
        size = content_bytes(entries)
        if size > single.IN_MEMORY_LIMIT or len(entries) > single.IN_MEMORY_MAX_ENTRIES:
            return None
        if as_root and entries[0].uid != dst.st_uid:
            return None
        bits = single.archive_mode(entries, dst.st_gid, path, as_root)
        parts: list[bytes] = []
        write_tar(lk.fd, path, arc, entries, parts.append, chunk=max(CHUNK, size + 1),
                  held=held)
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        frame = w.add(arc, tar)
        fs.race_point("pack-frame", path)
        # The catalog row from the bytes in memory (the pack's name is set once published).
        row = session_row(tar, name, rel_dir, "", frame.index, frame.offset, frame.csize,
                          top=arc)
        if kept is not None:
            kept.update(held)
            held.clear()
        return entries, frame, bits, row
    finally:
        fdwalk.close_held(held)


def commit_packs(ws: list[Written], out: Out, root: str) -> None:
    """Make the batch's packs durable together (parallel fsyncs), link each to a free
    name, fsync each dir once, then delete each pack's sources. A pack whose step fails
    is not named (or, once linked, its sources are kept): nothing is deleted on its
    strength; the next sweep finishes a linked one (packplan.resume)."""
    try:
        commit.make_durable([x.tmp for x in ws])
    except (ArchiveError, OSError) as e:
        out += [(fail(p.path, e), None) for x in ws for p in x.packed]
        return
    named: list[Written] = []
    for x in ws:
        fs.race_point("pack-publish", x.tmp.final)
        try:
            packfile.publish_free_name(x.tmp, x.job.period, x.job.dir)
        except (ArchiveError, OSError) as e:
            out += [(fail(p.path, e), None) for p in x.packed]
            continue
        finally:
            x.tmp.discard()
        named.append(x)
    try:
        commit.fsync_dirs([x.tmp for x in named])
    except (ArchiveError, OSError) as e:
        out += [(fail(p.path, e), None) for x in named for p in x.packed]
        return
    for x in named:
        fs.race_point("pack-published", x.tmp.final)
        delete_sources(x, out, root)


def delete_sources(x: Written, out: Out, root: str) -> None:
    tmp = x.tmp
    arel = os.path.relpath(tmp.final, root)
    for p in x.packed:
        row = p.row
        row["archive"] = arel
        # The lock held since the scan: its fd is the inode scanned and packed, so it
        # serves the re-check and delete (remove_source's top_fd). One closed after its
        # frame (a big pack) is taken again; then the trash is opened by name as before.
        lock_fd, top_fd, p.lock_fd = p.lock_fd, p.lock_fd, -1
        try:  # a spanning pack's session is in its dir below the pack's (packspan.py)
            dir_fd = x.below.get(p.rel) if x.below is not None else tmp.dir_fd
            if lock_fd < 0:
                top_fd = None
                lock_fd = lock_session(dir_fd, p.name, p.path, archived_ok=True)
        except (FileExistsError, ArchiveError, OSError) as e:
            if lock_fd >= 0:
                os.close(lock_fd)
            out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source "
                               f"could not be locked again: {getattr(e, 'reason', e)}"), row))
            continue
        scanned, p.held = p.held, {}  # remove_source owns (and closes) them from here
        try:
            removesource.remove_source(dir_fd, p.name, p.entries, tmp.name, p.path,
                                       keep_archive=True, top_fd=top_fd, scanned=scanned)
            out.append((Result(p.path, ARCHIVED, "", row["bytes_in"], p.frame.csize,
                               len(p.entries)), row))
        except SourceChanged as e:
            out.append((Result(p.path, FAILED, f"{e.reason.split(';')[0]}; source kept (the "
                               f"pack holds its earlier state)"), row))
        except OSError as e:
            out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source could "
                               f"not be removed: {e.strerror or e}"), row))
        finally:
            os.close(lock_fd)


def per_session(big: list[tuple[str, single.Locked | None]], opts: dict[str, Any],
                dirs: fs.DirCache) -> list[tuple[Result, dict[str, Any] | None]]:
    """Per-session archives for the sessions a pack does not take (too big for memory, or
    of another owner), each catalogued as ``--rebuild`` reads it; a session still locked
    (*big*'s Locked) is handed to single.prepare as lock_batch's are (whose lock is then
    prepare's), the others lock anew; what is still in *big* on an exception is the
    caller's to close. Both pack workers' (this one and packspan.py)."""
    out: list[Result] = []
    prepared: list[single.Prepared] = []
    try:
        for i, (path, lk) in enumerate(big):
            big[i] = (path, None)  # prepare owns the lock from here (closes it on error)
            try:
                prepared.append(single.prepare(path, "tar.zst", opts["compresslevel"],
                                               cutoff_ns=opts["cutoff_ns"], dirs=dirs,
                                               holds=opts.get("holds"), locked=lk))
            except single.TooRecent as e:
                out.append(Result(path, SKIPPED, e.reason))
            except FileExistsError:
                out.append(Result(path, SKIPPED, "archive appeared meanwhile"))
            except (ArchiveError, OSError) as e:
                out.append(fail(path, e))
        if prepared:
            with interrupt.shielded():
                commit_group(prepared, out, True)
    finally:
        for p in prepared:
            p.unlock()
    rows: list[tuple[Result, dict[str, Any] | None]] = []
    for r in out:
        row = None
        if r.status == ARCHIVED:  # its own archive: catalogued as `--rebuild` reads it
            with contextlib.suppress(ArchiveError, OSError, ValueError):
                rel = rel_dir(opts["root"], os.path.dirname(r.path))
                row = next(rebuild.rows_of_file(opts["root"], rel,
                                                os.path.basename(r.path) + ".tar.zst"))
        rows.append((r, row))
    return rows
