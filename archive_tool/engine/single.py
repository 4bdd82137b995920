"""Archive ONE session dir: manifest -> tar stream -> compressor -> tmp file -> verify.

Two paths, one tar layout:
- small sessions (the common case: a few configs and logs) are built in memory, compressed
  in one call, written with one write, and verified by decompressing the bytes read back
  from the file and comparing them with the tar stream built from the manifest: equality
  checks every member's name, type, size and content at once, for ~0.05 ms a session;
- large sessions stream through the compressor in 1 MiB chunks (flat memory) and are
  verified by reading the file back through tarfile, member by member, against the CRC32
  of each file's content computed while it was written.

Headers are built from our own lstat with cached user/group names: tarfile's gettarinfo
calls pwd/grp per member, which a profile showed as a large share of per-session cost.
"""

from __future__ import annotations

import errno
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from archive_tool import fdwalk, fs
from archive_tool.engine import commit, removesource
from archive_tool.engine.formats import compress_bytes, decompress_bytes, open_compressed_writer
from archive_tool.engine.read import check_members
from archive_tool.engine.scan import (
    IN_MEMORY_LIMIT,
    LINK,
    Entry,
    content_bytes,
    newest_mtime_ns,
    scan_fd,
)
from archive_tool.engine.tarwrite import CHUNK, iter_expected_members, write_tar
from archive_tool.errors import ArchiveError, SourceUnreadable, UnsafeSource, VerifyFailed
from archive_tool.guard.holds import Holds
from archive_tool.guard.lock import lock_session_stat, name_is
from archive_tool.levels import resolve_level
from archive_tool.names import FORMATS, archive_name, normalize_format

# IN_MEMORY_LIMIT (scan.py): above it a session streams instead of being built in memory
# ... and above this many entries (a 100k-file session cost 382 MB RSS in memory).
IN_MEMORY_MAX_ENTRIES = 4096
@dataclass(slots=True)
class Prepared:
    """A session whose archive is written and verified but not yet named or durable."""

    src: str
    final: str
    tmp: commit.TmpArchive  # holds the parent dir's fd: every later step is relative to it
    entries: list[Entry] = field(repr=False)
    bytes_in: int
    bytes_out: int
    lock_fd: int = -1  # commit.lock_session: held until the source is deleted

    @property
    def inodes(self) -> int:
        return len(self.entries)

    @property
    def name(self) -> str:
        return os.path.basename(self.src)

    def unlock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        self.tmp.close()


class TooRecent(Exception):
    """Internal: the session is to be left for now (a skip, not an error): a file newer
    than the age cutoff, inside the quiet period, or open for writing (holds.py)."""

    def __init__(self, path: str, reason: str = "too recent") -> None:
        super().__init__(path, reason)
        self.reason = reason


def archive_mode(entries: list[Entry], gid: int, where: str, as_root: bool) -> int:
    """Mode of an archive of *entries* that will belong to the session dir's owner and
    group *gid*: never more readable than what is in it.

    A 0600 file stays private once archived; a 0640 file of another group gives the
    archive no group read (its group's members are not the archive group's); and as root,
    a file of another user that is not world-readable refuses the session (UnsafeSource):
    handing its bytes to the dir's owner would let one user read another's file.
    """
    uid = entries[0].uid
    read_bits = 0o444
    for e in entries:
        if e.kind == LINK:
            continue
        bits = e.mode & 0o444
        if e.gid != gid and not e.mode & 0o004:
            bits &= ~0o040
        if as_root and e.uid != uid and not e.mode & 0o004:
            raise UnsafeSource(os.path.join(where, e.rel),
                               f"owned by uid {e.uid}, not the session owner's uid {uid}, and "
                               f"not world-readable: archiving it would hand it to uid {uid}; "
                               "session kept")
        read_bits &= bits
    return (read_bits & 0o444) | 0o600


@dataclass(slots=True)
class Locked:
    """A session dir opened and flock'ed by :func:`lock_batch`: (fd, its fstat)."""

    fd: int
    st: os.stat_result


def _archived_listing(parent_fd: int, sessions: int) -> dict[str, int] | None:
    """Names in the dir *parent_fd* with their d_ino, or None when it has more than a few
    per session (then a stat per format costs less than reading a huge listing) or cannot
    be read."""
    limit = max(1024, 256 * sessions)
    names: dict[str, int] = {}
    try:
        with os.scandir(parent_fd) as it:
            for e in it:
                names[e.name] = e.inode()  # from getdents: no call
                if len(names) > limit:
                    return None
    except OSError:
        return None
    return names


class ParentDirs(Protocol):
    """What lock_batch opens each session's dir through: fs.DirCache (below the root) or
    entrypath.EntryDirs (below a spanning pack's dir)."""

    def parent(self, path: str) -> tuple[int, str]: ...


def lock_batch(srcs: list[str], dirs: ParentDirs
               ) -> tuple[dict[str, Locked], dict[str, BaseException]]:
    """Lock every session of a batch, then answer "was it archived meanwhile?" (an
    archive in any format beside it) from ONE listing per parent dir taken after all
    those locks are held, instead of a stat per format per session: on Lustre/GPFS/NFS
    each stat is a round trip to the metadata server (issue 24). Taken after the locks,
    the listing sees every archive another archiver finished before we locked, exactly
    as the stats did. The same listing says each name still is the dir we locked (its
    d_ino; where that differs, as overlayfs may report, one lstat decides), instead of an
    lstat per session. Returns (Locked by path, the exception prepare would have raised
    by path: FileExistsError or an ArchiveError); the caller owns the locks' fds."""
    locked: dict[str, Locked] = {}
    errors: dict[str, BaseException] = {}
    # By dir path, not fd: *dirs* may close an fd it holds (a bounded cache) and the
    # number go to another dir before the listing below.
    parents: dict[str, list[tuple[str, str]]] = {}

    def unreadable(src: str, e: OSError) -> SourceUnreadable:
        return SourceUnreadable(os.path.dirname(src), "cannot open the session's directory: "
                                f"{e.strerror or e}")

    for src in srcs:
        try:
            parent_fd, name = dirs.parent(src)
        except OSError as e:
            errors[src] = unreadable(src, e)
            continue
        fs.race_point("lock", src)
        try:
            fd, st = lock_session_stat(parent_fd, name, src, archived_ok=True, check_name=False)
        except (FileExistsError, ArchiveError, OSError) as e:
            errors[src] = e
            continue
        locked[src] = Locked(fd, st)
        parents.setdefault(os.path.dirname(src), []).append((src, name))
    for members in parents.values():
        try:
            parent_fd = dirs.parent(members[0][0])[0]  # reopened if the cache closed it
        except OSError as e:
            for src, _name in members:
                os.close(locked.pop(src).fd)
                errors[src] = unreadable(src, e)
            continue
        names = _archived_listing(parent_fd, len(members))
        for src, name in members:
            wanted = [f"{name}.{f}" for f in FORMATS]
            held = locked[src].st
            if names is None:
                hit = any(fs.lexists_at(parent_fd, n) for n in wanted)
                same = name_is(parent_fd, name, held)
            else:
                hit = any(n in names for n in wanted)
                ino = names.get(name)
                same = ino == held.st_ino or (ino is not None and name_is(parent_fd, name, held))
            if not same:  # renamed away (or replaced) before we locked: lock_session's gone()
                os.close(locked.pop(src).fd)
                errors[src] = (FileExistsError(errno.EEXIST, "archived meanwhile by another "
                                               "process", src) if hit
                               else SourceUnreadable(src, os.strerror(errno.ENOENT)))
            elif hit:
                os.close(locked.pop(src).fd)
                errors[src] = FileExistsError(17, "archive already exists", src)
    return locked, errors


def prepare(
    src: str | os.PathLike[str],
    fmt: str,
    compresslevel: int | None = None,
    *,
    cutoff_ns: int | None = None,
    dirs: fs.DirCache | None = None,
    holds: Holds | None = None,
    locked: Locked | None = None,
) -> Prepared:
    """Write and verify the archive of *src* into an unnamed tmp beside it.

    The session's parent is opened once (below the sweep root by fds when *dirs* is given)
    and every later step — lock, scan, read, tmp, link, delete — is relative to it.
    Raises FileExistsError if the final archive name is taken, TooRecent if *cutoff_ns* is
    given and some entry is newer, and ArchiveError subclasses on any problem. On every
    error the tmp is gone and the source untouched. *locked* (from :func:`lock_batch`,
    with the same *dirs*): the session is already locked and checked; its fd is handed
    over (closed on error, else held by the Prepared).
    """
    fmt = normalize_format(fmt)
    compresslevel = resolve_level(fmt, compresslevel)  # before anything is opened
    src = os.path.abspath(os.fspath(src))
    parent, top = os.path.split(src)
    final = os.path.join(parent, archive_name(top, fmt))
    try:
        parent_fd = dirs.parent(src)[0] if dirs is not None else fs.open_trusted_dir(parent)
    except OSError as e:
        if locked is not None:
            os.close(locked.fd)
        raise SourceUnreadable(parent, f"cannot open the session's directory: "
                                       f"{e.strerror or e}") from None
    try:
        return _prepare_at(parent_fd, src, top, final, fmt, compresslevel, cutoff_ns, holds,
                           locked)
    finally:
        if dirs is None:
            os.close(parent_fd)


def _prepare_at(parent_fd: int, src: str, top: str, final: str, fmt: str, level: int,
                cutoff_ns: int | None, holds: Holds | None = None,
                locked: Locked | None = None) -> Prepared:
    # No stat of the final name here: lock_session (or lock_batch) looks for an archive in
    # every format (this one included) once the lock is held; publish's link never replaces.
    if locked is not None:
        lock_fd, top_st = locked.fd, locked.st
    else:
        fs.race_point("lock", src)
        lock_fd, top_st = lock_session_stat(parent_fd, top, src)
    # Subdir fds the scan opened and checked, kept for the tar writer: each dir of the
    # session is opened once, not once to scan and again to read (issue 24).
    held: dict[str, int] = {}
    try:
        try:
            entries = scan_fd(lock_fd, src, held, top_st)
            if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
                raise TooRecent(src)
            why = holds.reason(top_st.st_dev, entries) if holds is not None else None
            if why:
                raise TooRecent(src, why)  # a writer may still hold it (issue 23, k1)
            as_root = os.geteuid() == 0
            # Running as root from cron: hand the archive to the session's owner, who could
            # otherwise not delete or restore it.
            owner = (entries[0].uid, entries[0].gid) if as_root else None
            # The mode for the group the archive will most likely get (the owner's, or
            # ours): created with it, the tmp needs no chmod unless the umask or a setgid
            # dir made it differ, which its fstat shows (one call a session, issue 24).
            gid = owner[1] if owner is not None else os.getegid()
            mode = archive_mode(entries, gid, src, as_root)
            tmp = commit.open_tmp(parent_fd, final, None, owner, create_mode=mode)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            if tmp.gid != gid:
                mode = archive_mode(entries, tmp.gid, src, as_root)
            if tmp.mode != mode:
                os.fchmod(tmp.fd, mode)
            size = content_bytes(entries)
            # Many small files cost memory per member in the in-memory path (a list of
            # parts): stream a session of very many entries even when its bytes are few.
            if size <= IN_MEMORY_LIMIT and len(entries) <= IN_MEMORY_MAX_ENTRIES:
                written = _write_in_memory(lock_fd, src, top, entries, fmt, level, tmp, held)
            else:
                written = _write_streaming(lock_fd, src, top, entries, fmt, level, tmp, held)
            return Prepared(src, final, tmp, entries, size, written, lock_fd)
        except BaseException:
            tmp.close()
            os.close(lock_fd)
            raise
    finally:
        fdwalk.close_held(held)


def _write_all(fd: int, data: bytes, final: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        raise commit.disk_error(final, e, "cannot write archive") from None


def _write_in_memory(top_fd, src, top, entries, fmt, level, tmp: commit.TmpArchive,
                     held: dict[str, int] | None = None) -> int:
    parts: list[bytes] = []
    write_tar(top_fd, src, top, entries, parts.append,
              chunk=max(CHUNK, content_bytes(entries) + 1), crc=False, held=held)
    length = sum(map(len, parts))
    parts.append(tarfile.NUL * (-length % tarfile.RECORDSIZE))
    packed = compress_bytes(parts, fmt, level)
    tar = b"".join(parts)
    _write_all(tmp.fd, packed, tmp.final)
    back = os.pread(tmp.fd, len(packed) + 1, 0)
    try:
        ok = decompress_bytes(back, fmt, max_size=len(tar)) == tar
    except Exception as e:  # any decoder error means the bytes on disk are wrong
        raise VerifyFailed(tmp.final, f"read-back failed: {e}") from None
    if not ok:
        raise VerifyFailed(tmp.final, "read-back differs from what was archived")
    return len(packed)


class _FdWriter(io.RawIOBase):
    def __init__(self, fd: int, final: str) -> None:
        self.fd = fd
        self.final = final

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        _write_all(self.fd, bytes(b), self.final)
        return len(b)


def _write_streaming(top_fd, src, top, entries, fmt, level, tmp: commit.TmpArchive,
                     held: dict[str, int] | None = None) -> int:
    raw = io.BufferedWriter(_FdWriter(tmp.fd, tmp.final), buffer_size=CHUNK)
    comp = open_compressed_writer(raw, fmt, level)
    crcs = write_tar(top_fd, src, top, entries, comp.write, held=held)
    comp.close()
    raw.flush()
    size = os.fstat(tmp.fd).st_size
    # A generator: check_members makes its own dict of it, and a list beside that dict
    # was ~10 MB more peak for a session of 100k files.
    expected = iter_expected_members(top, entries, crcs)
    os.lseek(tmp.fd, 0, os.SEEK_SET)
    with open(tmp.fd, "rb", buffering=CHUNK, closefd=False) as f:
        check_members(f, fmt, expected, tmp.final)
    return size


def archive_one(
    src_dir: str | os.PathLike[str],
    format: str = "tar.gz",  # noqa: A002 - API.md's name
    remove_src: bool = True,
    compresslevel: int | None = None,
) -> Path:
    """The single-session path: prepare -> fsync -> link -> fsync dir -> delete source."""
    src = os.path.abspath(os.fspath(src_dir))
    p = prepare(src, format, compresslevel)
    try:
        try:
            commit.make_durable([p.tmp])
            commit.publish(p.tmp)
        finally:
            p.tmp.discard()
        commit.fsync_dir(p.tmp.dir_fd, os.path.dirname(p.final))
        if remove_src:
            removesource.remove_source(p.tmp.dir_fd, p.name, p.entries, p.tmp.name, p.src,
                                 top_fd=p.lock_fd)
    finally:
        p.unlock()
    return Path(p.final)
