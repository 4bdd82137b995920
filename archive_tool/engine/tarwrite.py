"""The tar stream of one session, written by us: headers built from our own lstat
(cached user/group names), file bytes read through dir fds (fs.py) with change detection.

tarfile's gettarinfo calls pwd/grp per member and spends ~40 us per header; a profile
showed that as a large share of per-session cost, so headers for ordinary members are one
struct.pack, byte-identical to tarfile's (tests/test_single.py checks this).
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import struct
import tarfile
import zlib
from collections.abc import Iterator

from archive_tool import fs
from archive_tool.engine.scan import DIR, FILE, LINK, Entry, scan_fd
from archive_tool.errors import SourceChanged, SourceUnreadable

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


def _copy_file(dir_fd: int, name: str, src: str, e: Entry, write, chunk: int,
               want_crc: bool = True) -> int:
    """Write exactly e.size bytes of *name* in *dir_fd* through *write*; return their CRC32
    (0 without *want_crc*). ``src/e.rel`` names it in errors (joined only then: this runs
    for every file of every session).

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
        path = os.path.join(src, e.rel)
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
                raise SourceChanged(os.path.join(src, e.rel), "grew while being archived")
            if n:
                if want_crc:
                    crc = zlib.crc32(data, crc)
                write(data)
                got += n
            if n < want:
                break
        if got != e.size:
            raise SourceChanged(os.path.join(src, e.rel), "shrank while being archived")
        after = os.fstat(fd)
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            e.ino, e.size, e.mtime_ns, e.ctime_ns
        ):
            raise SourceChanged(os.path.join(src, e.rel), "changed while being archived")
        return crc
    except OSError as err:
        raise SourceUnreadable(os.path.join(src, e.rel), err.strerror or str(err)) from None
    finally:
        os.close(fd)


def write_tar(top_fd: int, src: str, top: str, entries: list[Entry], write,
              chunk: int = CHUNK, *, crc: bool = True,
              held: dict[str, int] | None = None) -> list[int]:
    """Emit the tar stream of *entries* (read below the open session dir *top_fd*; *src*
    is its path, for messages) through *write*; return per-entry CRC32 (0 for non-files),
    which the streaming verify checks the read-back against. ``crc=False`` (the in-memory
    path, which verifies by comparing whole bytes) skips computing them. *held*: subdir
    fds the scan kept (fs.FdStack), so no dir is opened twice."""
    crcs = []
    dirs = fs.FdStack(top_fd, {e.rel: e.ino for e in entries if e.kind == DIR}, held)
    try:
        for e in entries:
            write(tar_header(e, top))
            c = 0
            if e.kind == FILE:
                try:
                    dir_fd, name = dirs.dir_for(e.rel)
                except OSError as err:
                    raise SourceChanged(os.path.join(src, e.rel),
                                        f"a directory changed while being archived: "
                                        f"{err.strerror or err}") from None
                c = _copy_file(dir_fd, name, src, e, write, chunk, crc)
                pad = -e.size % tarfile.BLOCKSIZE
                if pad:
                    write(tarfile.NUL * pad)
            crcs.append(c)
    finally:
        dirs.close()
    # End-of-archive: two zero blocks, padded to a full record as tar(1) and tarfile do.
    write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
    return crcs


def expected_members(
    top: str, entries: list[Entry], crcs: list[int]
) -> list[tuple[str, str, int, str, int]]:
    """(name, kind, size, linkname, crc32) per member, as ``read.check_members`` wants."""
    return list(iter_expected_members(top, entries, crcs))


def iter_expected_members(
    top: str, entries: list[Entry], crcs: list[int]
) -> Iterator[tuple[str, str, int, str, int]]:
    """:func:`expected_members` one at a time (no list of them beside the verify's own
    dict: ~10 MB for a session of 100k files)."""
    for e, crc in zip(entries, crcs, strict=True):
        yield (f"{top}/{e.rel}" if e.rel else top, e.kind, e.size, e.linkname, crc)


def source_members(top_fd: int, src: str) -> tuple[list[Entry], list[tuple[str, str, int, str, int]]]:
    """Manifest of the open session dir *top_fd* and what an archive of it must hold, by
    reading it (no writes)."""
    entries = scan_fd(top_fd, src)
    top = os.path.basename(src)
    return entries, expected_members(top, entries, write_tar(top_fd, src, top, entries, _discard))


def _discard(_b: bytes) -> None:
    pass
