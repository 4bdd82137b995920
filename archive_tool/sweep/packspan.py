"""The worker side of ``sweep --pack auto``: one spanning pack a job (PackJob.span).

The steps are packwork.py's (per session: lock, scan, tar in memory, compress as its own
frame into one unnamed O_TMPFILE; end the tar stream, index and seek table, read back;
fsync, link to the first free name, fsync the dir; per session: remove_source under the
lock), with the pack in an ancestor dir of its sessions: each session's dir is opened
below the pack's dir fd (entrypath.EntryDirs), its frame's members and index entry carry
its path below the pack, and the pack is closed at PackJob.max_bytes (the rest of the job
goes into the next pack of the same dir). A job is one pack, not packwork's batch of
packs: a spanning pack holds up to --pack-sessions (1,000) sessions, so the per-batch
savings of packwork (one listing per dir for many small packs) are not what it needs.

Sessions too big for memory, and, as root, sessions of another owner than the pack's
dir, get a per-session archive as without --pack. Crash leftovers (a source a pack
already holds, trash) are packresume.py's.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from archive_tool import fs
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
from archive_tool.sweep.packplan import PackJob, pack_dir_ok, start_name
from archive_tool.sweep.packresume import Out, packed_names, resume
from archive_tool.sweep.step import INTERRUPTED, commit_group, fail


@dataclass
class _Packed:
    path: str
    name: str
    rel: str  # its dir below the pack's ("" beside it)
    entries: list[Entry]
    frame: packfile.FrameInfo
    row: dict[str, Any]


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


def _rel_dir(root: str, d: str) -> str:
    rel = os.path.relpath(d, root)
    return "" if rel == "." else rel


def _pack(job: PackJob, opts: dict[str, Any], out: Out, dirs: fs.DirCache) -> list[str] | None:
    """One pack of *job*; returns the paths left for the next pack (a span job that
    reached its byte target), else None."""
    # The pack's dir: the sessions' own (job.dir is their parent) or, for a span job, their
    # common ancestor (its fd through the same cache: DirCache.parent of a name in it).
    parent_fd = dirs.parent(os.path.join(job.dir, "-"))[0]
    if job.span and any(os.path.dirname(p) != job.dir for p in job.paths) and not \
            pack_dir_ok(os.fstat(parent_fd), job.owner):
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
        with entrypath.EntryDirs(parent_fd) as edirs:
            return _pack_in(job, opts, out, dirs, parent_fd, edirs, holders)
    finally:
        for fd, _d, _n in holders[1:]:
            os.close(fd)


def _pack_in(job: PackJob, opts: dict[str, Any], out: Out, dirs: fs.DirCache,
             parent_fd: int, edirs: entrypath.EntryDirs,
             holders: list[tuple[int, str, dict[str, tuple[str, int]]]]) -> list[str] | None:
    root, level, cutoff_ns = opts["root"], opts["compresslevel"], opts["cutoff_ns"]
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
    rest: list[str] | None = None
    size = 0
    try:
        w = packfile.PackWriter(tmp, level)
        for i, path in enumerate(job.paths):
            interrupt.check()
            if job.max_bytes and size >= job.max_bytes:
                rest = job.paths[i:]  # this pack reached its byte target (span jobs)
                break
            # Its dir below the pack's ("" beside it) and its name in the pack.
            rel = os.path.relpath(os.path.dirname(path), job.dir) if job.span else ""
            rel = "" if rel == "." else rel
            name = os.path.basename(path)
            arc = f"{rel}/{name}" if rel else name
            try:
                sfd = edirs.get(rel)
            except OSError as e:
                out.append((fail(path, e), None))
                continue
            held = next(((hfd, a, names[a]) for hfd, h, names in holders
                         if (a := os.path.relpath(path, h)) in names), None)
            if held is not None:
                hfd, a, where = held
                resumed = resume(sfd, path, name, where, *((hfd, a) if "/" in a else ()))
                if resumed is not None:
                    out.append((resumed, None))
                    continue
                # The pack holds an earlier state of it: this state goes into a new pack.
            try:
                got = _add(w, sfd, path, name, cutoff_ns, as_root, dst,
                           _rel_dir(root, os.path.dirname(path)), opts.get("holds"), arc)
            except single.TooRecent as e:
                out.append((Result(path, SKIPPED, e.reason), None))
                continue
            except FileExistsError:
                out.append((Result(path, SKIPPED, "archived meanwhile by another process"), None))
                continue
            except (ArchiveError, OSError) as e:
                out.append((fail(path, e), None))
                if isinstance(e, DiskFull) or w.broken:
                    # The tmp pack is unusable (or the disk full): nothing of it is
                    # committed, every source stays; the rest is not attempted.
                    why = "disk full" if isinstance(e, DiskFull) else "pack write failed"
                    out += [(Result(p, SKIPPED, f"not attempted: {why}"), None)
                            for p in [q.path for q in packed] + job.paths[i + 1:]]
                    return None
                continue
            if got is None:
                big.append(path)
                continue
            entries, frame, bits, row = got
            mode &= bits
            size += frame.csize
            packed.append(_Packed(path, name, rel, entries, frame, row))
        if packed:
            with interrupt.shielded():  # written and read back: commit it whole
                _commit_pack(w, tmp, packed, mode, out, root, job, edirs)
    finally:
        tmp.close()
    if big:
        for r in _per_session(big, opts, dirs):
            row = None
            if r.status == ARCHIVED:  # its own archive: catalogued as `--rebuild` reads it
                with contextlib.suppress(ArchiveError, OSError, ValueError):
                    rel = _rel_dir(root, os.path.dirname(r.path))
                    fname = os.path.basename(r.path) + ".tar.zst"
                    row = next(rebuild.rows_of_file(root, rel, fname))
            out.append((r, row))
    return rest


def _add(w: packfile.PackWriter, parent_fd: int, path: str, name: str,
         cutoff_ns: int | None, as_root: bool, dst: os.stat_result, rel_dir: str,
         holds: Holds | None = None, arc: str | None = None
         ) -> tuple[list[Entry], packfile.FrameInfo, int, dict[str, Any]] | None:
    """Session *name* as the pack's next frame; None: it goes to a per-session archive
    (too big for memory, or, as root, owned by another user than the dir: a pack
    belongs to one user, and single.py gives each archive its session's owner). *arc*:
    its path in the pack (a span pack's entry path; default its name)."""
    arc = arc or name
    lock_fd = lock_session(parent_fd, name, path)
    try:
        entries = scan_fd(lock_fd, path)
        if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
            raise single.TooRecent(path)
        why = holds.reason(os.fstat(lock_fd).st_dev, entries) if holds is not None else None
        if why:
            raise single.TooRecent(path, why)  # a writer may still hold it (holds.py)
        size = content_bytes(entries)
        if size > single.IN_MEMORY_LIMIT or len(entries) > single.IN_MEMORY_MAX_ENTRIES:
            return None
        if as_root and entries[0].uid != dst.st_uid:
            return None
        bits = single.archive_mode(entries, dst.st_gid, path, as_root)
        parts: list[bytes] = []
        write_tar(lock_fd, path, arc, entries, parts.append, chunk=max(CHUNK, size + 1))
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        frame = w.add(arc, tar)
        fs.race_point("pack-frame", path)
        # The catalog row from the bytes in memory (the pack's name is set once published).
        row = session_row(tar, name, rel_dir, "", frame.index, frame.offset,
                                  frame.csize, top=arc)
        return entries, frame, bits, row
    finally:
        os.close(lock_fd)


def _commit_pack(w: packfile.PackWriter, tmp: commit.TmpArchive, packed: list[_Packed],
                 mode: int, out: Out, root: str, job: PackJob,
                 edirs: entrypath.EntryDirs) -> None:
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
        try:
            sfd = edirs.get(p.rel)  # tmp.dir_fd itself for a session beside the pack
            lock_fd = lock_session(sfd, p.name, p.path, archived_ok=True)
        except (FileExistsError, ArchiveError, OSError) as e:
            out.append((Result(p.path, FAILED, f"packed into {tmp.final} but the source could "
                               f"not be locked again: {getattr(e, 'reason', e)}"), row))
            continue
        try:
            removesource.remove_source(sfd, p.name, p.entries, tmp.name, p.path,
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


def _per_session(paths: list[str], opts: dict[str, Any], dirs: fs.DirCache) -> list[Result]:
    out: list[Result] = []
    prepared: list[single.Prepared] = []
    try:
        for path in paths:
            try:
                prepared.append(single.prepare(path, "tar.zst", opts["compresslevel"],
                                               cutoff_ns=opts["cutoff_ns"], dirs=dirs,
                                               holds=opts.get("holds")))
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
    return out
