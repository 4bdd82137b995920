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
import functools
import grp
import io
import os
import pwd
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from . import commit, fs
from .errors import SourceChanged, SourceUnreadable, UnsafeSource, VerifyFailed
from .formats import compress_bytes, decompress_bytes, open_compressed_writer
from .lock import lock_session
from .names import archive_name, normalize_format
from .read import check_members
from .scan import DIR, FILE, LINK, Entry, content_bytes, newest_mtime_ns, scan_fd

# Above this many content bytes a session streams instead of being built in memory.
IN_MEMORY_LIMIT = 32 * 1024 * 1024
# ... and above this many entries (a 100k-file session cost 382 MB RSS in memory).
IN_MEMORY_MAX_ENTRIES = 4096
CHUNK = 1024 * 1024
_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, LINK: tarfile.SYMTYPE}

@functools.cache
def _uname(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.cache
def _gname(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _header_tarfile(e: Entry, name: str) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = _TYPES[e.kind]
    ti.size = e.size
    ti.mode = e.mode & 0o7777
    # Whole seconds: a float mtime makes tarfile emit a PAX header per member.
    ti.mtime = e.mtime_ns // 1_000_000_000
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname, ti.gname = _uname(e.uid), _gname(e.gid)
    ti.linkname = e.linkname
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_CHKSUM_BLANK = b"        "
_TYPECHAR = {FILE: b"0", DIR: b"5", LINK: b"2"}
# Largest values an octal field holds (digits - 1, NUL-terminated), like tarfile's itn().
_MAX8, _MAX12 = 8**7, 8**11


def tar_header(e: Entry, top: str) -> bytes:
    """One 512-byte ustar header, byte-identical to what tarfile's PAX_FORMAT writes for
    members that need no extended header (tests/test_single.py checks this).

    tarfile spends ~40 us per header (PAX probing, field-by-field encoding); sessions are
    mostly short ASCII names, for which one struct.pack does the same in ~3 us. Anything
    unusual (long or non-ASCII names, huge sizes, odd ids) goes through tarfile.
    """
    name = f"{top}/{e.rel}" if e.rel else top
    if e.kind == DIR:
        name += "/"
    uname, gname = _uname(e.uid), _gname(e.gid)
    mtime = e.mtime_ns // 1_000_000_000
    if (
        len(name) > 100
        or len(e.linkname) > 100
        or not name.isascii()
        or not e.linkname.isascii()
        or not (uname.isascii() and gname.isascii() and len(uname) < 32 and len(gname) < 32)
        or e.size >= _MAX12
        or not 0 <= mtime < _MAX12
        or not 0 <= e.uid < _MAX8
        or not 0 <= e.gid < _MAX8
    ):
        return _header_tarfile(e, name.rstrip("/") if e.kind == DIR else name)
    fields = [
        name.encode(),
        b"%07o\0" % (e.mode & 0o7777),
        b"%07o\0" % e.uid,
        b"%07o\0" % e.gid,
        b"%011o\0" % e.size,
        b"%011o\0" % mtime,
        _CHKSUM_BLANK,
        _TYPECHAR[e.kind],
        e.linkname.encode(),
        b"ustar\x0000",
        uname.encode(),
        gname.encode(),
        b"",  # devmajor/devminor: left NUL for non-devices, as tarfile does
        b"",
        b"",
    ]
    buf = _HEADER.pack(*fields)
    chksum = sum(buf)  # unsigned sum with the checksum field as spaces, as POSIX says
    return buf[:148] + b"%06o\0 " % chksum + buf[156:]


def _copy_file(dir_fd: int, name: str, path: str, e: Entry, write, chunk: int) -> int:
    """Write exactly e.size bytes of *name* in *dir_fd* through *write*; return their CRC32.
    *path* names it in errors.

    tarfile copies st_size bytes and silently truncates a file that grows (gh-89062);
    we detect growth, shrinkage and any rewrite (size/mtime/ctime/inode of the fd after
    reading differ from the manifest's lstat) and refuse. Empty files are opened too: one
    that gains data while the session is archived must not be stored empty. Opened
    O_NOFOLLOW|O_NONBLOCK relative to its dir's fd: a file swapped for a symlink is not
    followed, one swapped for a FIFO does not block, and the inode check catches both.
    """
    try:
        fd = os.open(name, fs.O_FILE | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        if isinstance(err, PermissionError):
            raise SourceUnreadable(path, "permission denied") from None
        if isinstance(err, FileNotFoundError):
            raise SourceChanged(path, "disappeared while being archived") from None
        if err.errno == errno.ELOOP:
            raise SourceChanged(path, "replaced by a symlink while being archived") from None
        raise SourceUnreadable(path, err.strerror or str(err)) from None
    try:
        crc = 0
        got = 0
        # Ask for one byte more than expected: a file that grew shows itself in the same
        # read. A short read means EOF on a regular file; the fstat below catches anything
        # a short read could hide (size, mtime, ctime or inode differ from the manifest).
        # 4 syscalls a file (open, read, fstat, close) instead of 7.
        while True:
            want = min(chunk, e.size + 1 - got)
            data = os.read(fd, want)
            n = len(data)
            if n > e.size - got:
                raise SourceChanged(path, "grew while being archived")
            if n:
                crc = zlib.crc32(data, crc)
                write(data)
                got += n
            if n < want:
                break
        if got != e.size:
            raise SourceChanged(path, "shrank while being archived")
        after = os.fstat(fd)
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            e.ino, e.size, e.mtime_ns, e.ctime_ns
        ):
            raise SourceChanged(path, "changed while being archived")
        return crc
    except OSError as err:
        raise SourceUnreadable(path, err.strerror or str(err)) from None
    finally:
        os.close(fd)


def write_tar(top_fd: int, src: str, top: str, entries: list[Entry], write,
              chunk: int = CHUNK) -> list[int]:
    """Emit the tar stream of *entries* (read below the open session dir *top_fd*; *src*
    is its path, for messages) through *write*; return per-entry CRC32 (0 for non-files),
    which the streaming verify checks the read-back against."""
    crcs = []
    dirs = fs.FdStack(top_fd, {e.rel: e.ino for e in entries if e.kind == DIR})
    try:
        for e in entries:
            write(tar_header(e, top))
            crc = 0
            if e.kind == FILE:
                path = os.path.join(src, e.rel)
                try:
                    dir_fd, name = dirs.dir_for(e.rel)
                except OSError as err:
                    raise SourceChanged(path, f"a directory changed while being archived: "
                                              f"{err.strerror or err}") from None
                crc = _copy_file(dir_fd, name, path, e, write, chunk)
                pad = -e.size % tarfile.BLOCKSIZE
                if pad:
                    write(tarfile.NUL * pad)
            crcs.append(crc)
    finally:
        dirs.close()
    # End-of-archive: two zero blocks, padded to a full record as tar(1) and tarfile do.
    write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
    return crcs


def expected_members(
    top: str, entries: list[Entry], crcs: list[int]
) -> list[tuple[str, str, int, str, int]]:
    """(name, kind, size, linkname, crc32) per member, as ``read.check_members`` wants."""
    return [
        (f"{top}/{e.rel}" if e.rel else top, e.kind, e.size, e.linkname, crc)
        for e, crc in zip(entries, crcs, strict=True)
    ]


def source_members(top_fd: int, src: str) -> tuple[list[Entry], list[tuple[str, str, int, str, int]]]:
    """Manifest of the open session dir *top_fd* and what an archive of it must hold, by
    reading it (no writes)."""
    entries = scan_fd(top_fd, src)
    top = os.path.basename(src)
    return entries, expected_members(top, entries, write_tar(top_fd, src, top, entries, _discard))


def _discard(_b: bytes) -> None:
    pass


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
    """Internal: the session has a file newer than the age cutoff (not an error)."""


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


def prepare(
    src: str | os.PathLike[str],
    fmt: str,
    compresslevel: int = 1,
    *,
    cutoff_ns: int | None = None,
    dirs: fs.DirCache | None = None,
) -> Prepared:
    """Write and verify the archive of *src* into an unnamed tmp beside it.

    The session's parent is opened once (below the sweep root by fds when *dirs* is given)
    and every later step — lock, scan, read, tmp, link, delete — is relative to it.
    Raises FileExistsError if the final archive name is taken, TooRecent if *cutoff_ns* is
    given and some entry is newer, and ArchiveError subclasses on any problem. On every
    error the tmp is gone and the source untouched.
    """
    fmt = normalize_format(fmt)
    src = os.path.abspath(os.fspath(src))
    parent, top = os.path.split(src)
    final = os.path.join(parent, archive_name(top, fmt))
    try:
        parent_fd = dirs.parent(src)[0] if dirs is not None else fs.open_trusted_dir(parent)
    except OSError as e:
        raise SourceUnreadable(parent, f"cannot open the session's directory: "
                                       f"{e.strerror or e}") from None
    try:
        return _prepare_at(parent_fd, src, top, final, fmt, compresslevel, cutoff_ns)
    finally:
        if dirs is None:
            os.close(parent_fd)


def _prepare_at(parent_fd: int, src: str, top: str, final: str, fmt: str, level: int,
                cutoff_ns: int | None) -> Prepared:
    if fs.lexists_at(parent_fd, os.path.basename(final)):
        raise FileExistsError(17, "archive already exists", final)
    fs.race_point("lock", src)
    lock_fd = lock_session(parent_fd, top, src)
    try:
        entries = scan_fd(lock_fd, src)
        if cutoff_ns is not None and newest_mtime_ns(entries) >= cutoff_ns:
            raise TooRecent(src)
        as_root = os.geteuid() == 0
        # Running as root from cron: hand the archive to the session's owner, who could
        # otherwise not delete or restore it.
        owner = (entries[0].uid, entries[0].gid) if as_root else None
        tmp = commit.open_tmp(parent_fd, final, None, owner)
    except BaseException:
        os.close(lock_fd)
        raise
    try:
        os.fchmod(tmp.fd, archive_mode(entries, os.fstat(tmp.fd).st_gid, src, as_root))
        size = content_bytes(entries)
        # Many small files cost memory per member in the in-memory path (a list of parts):
        # stream a session of very many entries even when its bytes are few.
        if size <= IN_MEMORY_LIMIT and len(entries) <= IN_MEMORY_MAX_ENTRIES:
            written = _write_in_memory(lock_fd, src, top, entries, fmt, level, tmp)
        else:
            written = _write_streaming(lock_fd, src, top, entries, fmt, level, tmp)
        return Prepared(src, final, tmp, entries, size, written, lock_fd)
    except BaseException:
        tmp.close()
        os.close(lock_fd)
        raise


def _write_all(fd: int, data: bytes, final: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as e:
        raise commit.disk_error(final, e, "cannot write archive") from None


def _write_in_memory(top_fd, src, top, entries, fmt, level, tmp: commit.TmpArchive) -> int:
    parts: list[bytes] = []
    write_tar(top_fd, src, top, entries, parts.append, chunk=max(CHUNK, content_bytes(entries) + 1))
    tar = b"".join(parts)
    tar += tarfile.NUL * (-len(tar) % tarfile.RECORDSIZE)
    packed = compress_bytes(tar, fmt, level)
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


def _write_streaming(top_fd, src, top, entries, fmt, level, tmp: commit.TmpArchive) -> int:
    raw = io.BufferedWriter(_FdWriter(tmp.fd, tmp.final), buffer_size=CHUNK)
    comp = open_compressed_writer(raw, fmt, level)
    crcs = write_tar(top_fd, src, top, entries, comp.write)
    comp.close()
    raw.flush()
    size = os.fstat(tmp.fd).st_size
    expected = expected_members(top, entries, crcs)
    os.lseek(tmp.fd, 0, os.SEEK_SET)
    with open(tmp.fd, "rb", buffering=CHUNK, closefd=False) as f:
        check_members(f, fmt, expected, tmp.final)
    return size


def archive_one(
    src_dir: str | os.PathLike[str],
    format: str = "tar.gz",  # noqa: A002 - API.md's name
    remove_src: bool = True,
    compresslevel: int = 1,
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
            commit.remove_source(p.tmp.dir_fd, p.name, p.entries, p.tmp.name, p.src)
    finally:
        p.unlock()
    return Path(p.final)
