"""The worker side of ``sweep --pack``: one worker builds, commits and deletes one pack.

  1. per session: lock, scan, tar in memory, compress as its own frame into ONE unnamed
     O_TMPFILE in the FINISHED_* dir, unlock (a pack of 10,000 sessions would otherwise
     hold 10,000 dir fds; the delete below re-checks every source against its manifest);
  2. end the tar stream, write the index and the seek table, read the whole tmp back
     (every frame against a digest of the bytes it was made from);
  3. one fsync, link() to the first free name (``<period>.pack.tar.zst``, then
     ``<period>.2.pack.tar.zst`` ...: never overwrite), fsync the dir;
  4. per session: lock again, removesource.remove_source (rename to trash, re-check unchanged,
     delete). A source that changed is kept (its earlier bytes stay in the pack).

Sessions too big for memory (single.IN_MEMORY_LIMIT / IN_MEMORY_MAX_ENTRIES), and, as
root, sessions of another owner than their dir's, get a per-session archive as without
--pack. Crash leftovers (a source a pack already holds, trash) are packresume.py's.
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
from archive_tool.pack import packfile
from archive_tool.summary import ARCHIVED, FAILED, SKIPPED, Result
from archive_tool.sweep.packplan import PackJob
from archive_tool.sweep.packresume import Out, packed_names, resume
from archive_tool.sweep.step import INTERRUPTED, commit_group, fail


@dataclass
class _Packed:
    path: str
    name: str
    entries: list[Entry]
    frame: packfile.FrameInfo
    row: dict[str, Any]
    lock_fd: int = -1  # the session's lock, kept until its delete (LOCK_AHEAD), else -1
    held: dict[str, int] = field(default_factory=dict)  # the scan's subdir fds, for the delete


@dataclass
class _Batch:
    """What the packs of one worker batch share: the parent dirs opened once (DirCache),
    each dir's fstat taken once, and the sessions' locks (single.lock_batch) with the
    exception each session's lock gave instead."""

    dirs: fs.DirCache
    locked: dict[str, single.Locked] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    dir_st: dict[str, os.stat_result] = field(default_factory=dict)

    def lock(self, paths: list[str]) -> None:
        locked, errors = single.lock_batch(paths, self.dirs)
        self.locked.update(locked)
        self.errors.update(errors)

    def stat_dir(self, d: str, fd: int) -> os.stat_result:
        st = self.dir_st.get(d)
        if st is None:
            st = self.dir_st[d] = os.fstat(fd)
        return st


def process_packs(jobs: list[PackJob], opts: dict[str, Any]) -> Out:
    """Write, verify, commit the packs of a batch, each then deleting its sources; never
    raises. A batch of at most LOCK_AHEAD sessions locks them all first: one listing per
    dir for the whole batch (packs of a day or a few sessions are the common case)."""
    out: Out = []
    paths = [p for job in jobs for p in job.paths]
    b: _Batch | None = None
    try:
        with fs.DirCache(opts.get("root")) as dirs:
            b = _Batch(dirs)
            if len(paths) <= LOCK_AHEAD:
                b.lock(paths)
            for job in jobs:
                interrupt.check()
                _pack(job, opts, out, b)
    except Interrupted:
        # SIGTERM/SIGINT: the tmp pack was never named; every source not committed stays.
        done = {r.path for r, _ in out}
        out += [(Result(p, SKIPPED, INTERRUPTED), None) for p in paths if p not in done]
    except BaseException as e:  # noqa: BLE001 - a worker must never take the sweep down
        done = {r.path for r, _ in out}
        out += [(Result(p, FAILED, f"internal error: {e!r}"), None)
                for p in paths if p not in done]
    finally:
        if b is not None:  # locks of jobs not reached: their sources untouched
            for lk in b.locked.values():
                os.close(lk.fd)
    return out


def process_pack(job: PackJob, opts: dict[str, Any]) -> Out:
    """:func:`process_packs` of one pack."""
    return process_packs([job], opts)


def _rel_dir(root: str, d: str) -> str:
    rel = os.path.relpath(d, root)
    return "" if rel == "." else rel


# Sessions of a pack locked at once (single.lock_batch: then ONE listing of their dir says
# which were archived meanwhile, not a stat per format per session). A pack of at most
# this many keeps each lock until its source is deleted: no second lock, and the locked fd
# serves the delete (issue 24). A bigger pack closes each lock once its frame is written
# (10,000 sessions would otherwise hold 10,000 dir fds) and locks again to delete.
LOCK_AHEAD = 128
# Subdir fds a pack keeps from its sessions' scans for their deletes (whose re-check then
# lstats each dir by name instead of opening and fstat'ing it again); beyond, a session's
# are closed after its frame. With the locks: ~128 + 512 + one session's 256 at most.
HELD_PER_PACK = 512


def _pack(job: PackJob, opts: dict[str, Any], out: Out, b: _Batch) -> None:
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
    dst = b.stat_dir(job.dir, parent_fd)
    keep = len(job.paths) <= LOCK_AHEAD
    n_held = 0  # subdir fds kept from the scans for the deletes (HELD_PER_PACK)
    locked, errors = b.locked, b.errors
    big: list[tuple[str, single.Locked | None]] = []
    packed: list[_Packed] = []
    tmp = commit.open_tmp(parent_fd, final, None, (dst.st_uid, dst.st_gid) if as_root else None,
                          dst.st_dev)
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
                resumed = resume(parent_fd, path, name, in_packs[name], lk)
                if resumed is not None:
                    os.close(lk.fd)
                    out.append((resumed, None))
                    continue
                # The pack holds an earlier state of it: this state goes into a new pack.
            kept: dict[str, int] | None = {} if keep and n_held < HELD_PER_PACK else None
            try:
                got = _add(w, path, name, lk, cutoff_ns, as_root, dst,
                           _rel_dir(root, job.dir), opts.get("holds"), kept)
            except single.TooRecent as e:
                os.close(lk.fd)
                out.append((Result(path, SKIPPED, e.reason), None))
                continue
            except (ArchiveError, OSError) as e:
                os.close(lk.fd)
                out.append((fail(path, e), None))
                if isinstance(e, DiskFull) or w.broken:
                    # The tmp pack is unusable (or the disk full): nothing of it is
                    # committed, every source stays; the rest is not attempted.
                    why = "disk full" if isinstance(e, DiskFull) else "pack write failed"
                    out += [(Result(p, SKIPPED, f"not attempted: {why}"), None)
                            for p in [q.path for q in packed] + job.paths[i + 1:]]
                    return
                continue
            if got is None:
                big.append((path, lk if keep else None))
                if not keep:
                    os.close(lk.fd)
                continue
            entries, frame, bits, row = got
            mode &= bits
            packed.append(_Packed(path, name, entries, frame, row, lk.fd if keep else -1,
                                  kept or {}))
            n_held += len(kept or ())
            if not keep:
                os.close(lk.fd)
        if packed:
            with interrupt.shielded():  # written and read back: commit it whole
                _commit_pack(w, tmp, packed, mode, out, root, job)
        tmp.close()
        if big:
            for r in _per_session(big, opts, b.dirs):
                row = None
                if r.status == ARCHIVED:  # its own archive: catalogued as `--rebuild` reads it
                    with contextlib.suppress(ArchiveError, OSError, ValueError):
                        rel = _rel_dir(root, job.dir)
                        fname = os.path.basename(r.path) + ".tar.zst"
                        row = next(rebuild.rows_of_file(root, rel, fname))
                out.append((r, row))
    finally:
        tmp.close()
        # Locks not handed on (disk full, a signal): their sources untouched.
        rest = [locked.pop(p) for p in job.paths if p in locked]
        for fd in ([p.lock_fd for p in packed] + [lk.fd for _, lk in big if lk is not None]
                   + [lk.fd for lk in rest]):
            if fd >= 0:
                os.close(fd)
        for p in packed:
            fdwalk.close_held(p.held)


def _add(w: packfile.PackWriter, path: str, name: str, lk: single.Locked,
         cutoff_ns: int | None, as_root: bool, dst: os.stat_result, rel_dir: str,
         holds: Holds | None = None, kept: dict[str, int] | None = None
         ) -> tuple[list[Entry], packfile.FrameInfo, int, dict[str, Any]] | None:
    """Session *name*, locked by *lk*, as the pack's next frame; None: it goes to a
    per-session archive (too big for memory, or, as root, owned by another user than the
    dir: a pack belongs to one user, and single.py gives each archive its session's owner).
    The lock stays the caller's. *kept*: once the frame is written, the subdir fds the
    scan opened move there (the caller's, for remove_source's re-check and delete)."""
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
        write_tar(lk.fd, path, name, entries, parts.append, chunk=max(CHUNK, size + 1),
                  held=held)
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        frame = w.add(name, tar)
        fs.race_point("pack-frame", path)
        # The catalog row from the bytes in memory (the pack's name is set once published).
        row = session_row(tar, name, rel_dir, "", frame.index, frame.offset,
                                  frame.csize)
        if kept is not None:
            kept.update(held)
            held.clear()
        return entries, frame, bits, row
    finally:
        fdwalk.close_held(held)


def _commit_pack(w: packfile.PackWriter, tmp: commit.TmpArchive, packed: list[_Packed],
                 mode: int, out: Out, root: str, job: PackJob) -> None:
    paths = [p.path for p in packed]
    try:
        w.finish()
        os.fchmod(tmp.fd, mode)
        w.verify()
        commit.make_durable([tmp])
        fs.race_point("pack-publish", tmp.final)
        packfile.publish_free_name(tmp, job.period, job.dir)
        commit.fsync_dir(tmp.dir_fd, job.dir)
    except (ArchiveError, OSError) as e:
        out += [(fail(p, e), None) for p in paths]
        return
    finally:
        tmp.discard()
    fs.race_point("pack-published", tmp.final)
    arel = os.path.relpath(tmp.final, root)
    for p in packed:
        f = p.frame
        row = p.row
        row["archive"] = arel
        # The lock held since the scan: its fd is the inode scanned and packed, so it
        # serves the re-check and delete (remove_source's top_fd). One closed after its
        # frame (a big pack) is taken again; then the trash is opened by name as before.
        lock_fd, top_fd, p.lock_fd = p.lock_fd, p.lock_fd, -1
        if lock_fd < 0:
            top_fd = None
            try:
                lock_fd = lock_session(tmp.dir_fd, p.name, p.path, archived_ok=True)
            except (FileExistsError, ArchiveError, OSError) as e:
                out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source "
                                   f"could not be locked again: {getattr(e, 'reason', e)}"),
                            row))
                continue
        scanned, p.held = p.held, {}  # remove_source owns (and closes) them from here
        try:
            removesource.remove_source(tmp.dir_fd, p.name, p.entries, tmp.name, p.path,
                                       keep_archive=True, top_fd=top_fd, scanned=scanned)
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


def _per_session(big: list[tuple[str, single.Locked | None]], opts: dict[str, Any],
                 dirs: fs.DirCache) -> list[Result]:
    """Per-session archives for the sessions a pack does not take; a session still locked
    (*big*'s Locked) is handed to single.prepare as lock_batch's are, the others lock anew."""
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
        for _path, lk in big:
            if lk is not None:
                os.close(lk.fd)
    return out
