"""The tar stream of one session, written by us: headers built from our own lstat
(cached user/group names), file bytes read through dir fds (fs.py) with change detection;
and :func:`iter_tar`, the minimal walk back over such bytes in memory (catalog rows, packs).

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
import re
import struct
import tarfile
import zlib
from collections.abc import Iterator

from archive_tool import fdwalk, fs
from archive_tool.engine import attrs
from archive_tool.engine.scan import DIR, FILE, HARD, LINK, Entry, scan_fd
from archive_tool.errors import SourceChanged, SourceUnreadable, UnsafeSource
from archive_tool.guard import interrupt

CHUNK = 1024 * 1024
_TYPES = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, LINK: tarfile.SYMTYPE,
          HARD: tarfile.LNKTYPE}

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


def _header_tarfile(e: Entry, name: str, records: attrs.Records | None = None) -> bytes:
    ti = tarfile.TarInfo(name)
    if records:
        # One extended header with tarfile's own records (long path, ...): two in a row
        # would make readers drop the first one's.
        ti.pax_headers = {k: v.decode("utf-8", "surrogateescape") for k, v in records}
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
_TYPECHAR = {FILE: b"0", DIR: b"5", LINK: b"2", HARD: b"1"}
# Largest values an octal field holds (digits - 1, NUL-terminated), like tarfile's itn().
_MAX8, _MAX12 = 8**7, 8**11


def tar_header(e: Entry, top: str, records: attrs.Records | None = None) -> bytes:
    """One 512-byte ustar header, byte-identical to what tarfile's PAX_FORMAT writes for
    members that need no extended header (tests/test_single.py checks this); with
    *records* (attrs.pax_records: ns mtime, xattrs, ACLs) preceded by a PAX header.

    tarfile spends ~40 us per header (PAX probing, field-by-field encoding); sessions are
    mostly short ASCII names, for which one struct.pack does the same in ~3 us. Anything
    unusual (long or non-ASCII names, huge sizes, odd ids) goes through tarfile.
    """
    name = f"{top}/{e.rel}" if e.rel else top
    if e.kind == DIR:
        name += "/"
    linkname = f"{top}/{e.linkname}" if e.kind == HARD else e.linkname
    uname, gname = _uname(e.uid), _gname(e.gid)
    mtime = e.mtime_ns // 1_000_000_000
    if (
        len(name) > 100
        or len(linkname) > 100
        or not name.isascii()
        or not linkname.isascii()
        or not (uname.isascii() and gname.isascii() and len(uname) < 32 and len(gname) < 32)
        or e.size >= _MAX12
        or not 0 <= mtime < _MAX12
        or not 0 <= e.uid < _MAX8
        or not 0 <= e.gid < _MAX8
    ):
        return _header_tarfile(e, name.rstrip("/") if e.kind == DIR else name, records)
    fields = [
        name.encode(),
        b"%07o\0" % (e.mode & 0o7777),
        b"%07o\0" % e.uid,
        b"%07o\0" % e.gid,
        b"%011o\0" % e.size,
        b"%011o\0" % mtime,
        _CHKSUM_BLANK,
        _TYPECHAR[e.kind],
        linkname.encode(),
        b"ustar\x0000",
        uname.encode(),
        gname.encode(),
        b"",  # devmajor/devminor: left NUL for non-devices, as tarfile does
        b"",
        b"",
    ]
    head = _pax_header(records) if records else b""
    return head + _checksummed(_HEADER.pack(*fields))


def _checksummed(buf: bytes) -> bytes:
    chksum = sum(buf)  # unsigned sum with the checksum field as spaces, as POSIX says
    return buf[:148] + b"%06o\0 " % chksum + buf[156:]


def _pax_header(records: attrs.Records) -> bytes:
    """A PAX extended header ('x') holding *records*, laid out as tarfile writes one
    (name ``././@PaxHeader``, mode 644, owner 0): built here because nearly every member
    has a sub-second mtime, and tarfile's header path costs ~40 us a member."""
    parts = []
    for key, value in records:
        kv = key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
        n = len(kv) + 1  # the space after the length
        length = n + len(str(n))
        if len(str(length)) > len(str(n)):
            length += 1
        parts.append(b"%d " % length + kv)
    payload = b"".join(parts)
    return _pax_block(len(payload)) + payload + tarfile.NUL * (-len(payload) % tarfile.BLOCKSIZE)


@functools.lru_cache(maxsize=512)
def _pax_block(size: int) -> bytes:
    # Only the size differs between the PAX headers of a session (mtime records are all
    # about as long): a cached block spares a checksum sum() per member.
    return _checksummed(_HEADER.pack(
        b"././@PaxHeader", b"%07o\0" % 0o644, b"%07o\0" % 0, b"%07o\0" % 0,
        b"%011o\0" % size, b"%011o\0" % 0, _CHKSUM_BLANK, tarfile.XHDTYPE, b"",
        b"ustar\x0000", b"", b"", b"", b"", b""))


def _copy_file(dir_fd: int, name: str, src: str, e: Entry, write, chunk: int,
               want_crc: bool = True, top: str = "", as_root: bool = False) -> int:
    """Write the member of *name* in *dir_fd* through *write*: its header (with the
    extended attributes read from the open file, kept in ``e.xattrs`` for the verify),
    then exactly e.size bytes; return their CRC32 (0 without *want_crc*). ``src/e.rel``
    names it in errors (joined only then: this runs for every file of every session).

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
        try:
            # flistxattr on the fd we read: one syscall for a file without attributes,
            # and the fstat below (ctime) catches any attribute changed since the scan.
            e.xattrs = attrs.read_fd(fd, as_root)
        except ValueError as err:
            raise UnsafeSource(os.path.join(src, e.rel), f"{err}; session kept") from None
        write(tar_header(e, top, attrs.pax_records(e.mtime_ns, e.xattrs)))
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
                interrupt.check()  # and inside a long member, every chunk
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
    fds the scan kept (fdwalk.FdStack), so no dir is opened twice."""
    crcs = []
    dirs = fdwalk.FdStack(top_fd, {e.rel: e.ino for e in entries if e.kind == DIR}, held)
    as_root = os.geteuid() == 0
    try:
        for e in entries:
            interrupt.check()  # SIGTERM between members
            c = 0
            if e.kind == FILE:
                try:
                    dir_fd, name = dirs.dir_for(e.rel)
                except OSError as err:
                    raise SourceChanged(os.path.join(src, e.rel),
                                        f"a directory changed while being archived: "
                                        f"{err.strerror or err}") from None
                c = _copy_file(dir_fd, name, src, e, write, chunk, crc, top, as_root)
                pad = -e.size % tarfile.BLOCKSIZE
                if pad:
                    write(tarfile.NUL * pad)
            else:
                # Symlinks and hard links carry no attributes (GNU tar's hard-link
                # members neither); a sub-second mtime still goes with them.
                write(tar_header(e, top, attrs.pax_records(
                    e.mtime_ns, e.xattrs if e.kind == DIR else None)))
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
    return [m[:5] for m in iter_expected_members(top, entries, crcs)]


def iter_expected_members(
    top: str, entries: list[Entry], crcs: list[int]
) -> Iterator[tuple[str, str, int, str, int, int]]:
    """:func:`expected_members` one at a time (no list of them beside the verify's own
    dict: ~10 MB for a session of 100k files), each with a sixth field: the CRC32 of its
    attribute records (attrs.digest), which ``check_members`` compares too."""
    for e, crc in zip(entries, crcs, strict=True):
        link = f"{top}/{e.linkname}" if e.kind == HARD else e.linkname
        recs = attrs.pax_records(e.mtime_ns, e.xattrs if e.kind in (FILE, DIR) else None)
        yield (f"{top}/{e.rel}" if e.rel else top, e.kind, e.size, link, crc,
               attrs.digest(recs) if recs else 0)


def source_members(top_fd: int, src: str) -> tuple[list[Entry], list[tuple[str, str, int, str, int]]]:
    """Manifest of the open session dir *top_fd* and what an archive of it must hold, by
    reading it (no writes)."""
    entries = scan_fd(top_fd, src)
    top = os.path.basename(src)
    return entries, expected_members(top, entries, write_tar(top_fd, src, top, entries, _discard))


def _discard(_b: bytes) -> None:
    pass


def iter_tar(buf: bytes) -> list[tuple[str, int, int, bytes]]:
    """(name, data offset, size, typeflag) of each member of in-memory tar bytes — a
    minimal walker (ustar + PAX ``path``), enough to find a config file in bytes the
    sweep already holds, without tarfile's per-member cost."""
    out = []
    pos = 0
    pax_name: str | None = None
    n = len(buf)
    while pos + tarfile.BLOCKSIZE <= n:
        h = buf[pos:pos + tarfile.BLOCKSIZE]
        if h == tarfile.NUL * tarfile.BLOCKSIZE:
            break
        try:
            size = int(h[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            break
        typ = h[156:157]
        data = pos + tarfile.BLOCKSIZE
        if typ == tarfile.XHDTYPE:
            pax_name = _pax_path(buf[data:data + size])
        else:
            name = h[0:100].split(b"\0", 1)[0]
            prefix = h[345:500].split(b"\0", 1)[0]
            full = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
            out.append((pax_name or full, data, size, typ))
            pax_name = None
        pos = data + size + (-size % tarfile.BLOCKSIZE)
    return out


def _pax_path(rec: bytes) -> str | None:
    for line in rec.split(b"\n"):
        _, _, kv = line.partition(b" ")
        k, _, v = kv.partition(b"=")
        if k == b"path":
            return v.decode("utf-8", "surrogateescape")
    return None


# A PAX time record as GNU tar and tarfile write it: decimal seconds, maybe a fraction.
_PAX_TIME = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def pax_time_ns(value: str) -> int:
    """A PAX time record (``1733350000.123456789``, maybe negative) in nanoseconds,
    truncated toward zero as ``int(Decimal(value) * 10**9)`` is, without loading decimal
    (~30 metadata calls at the start of every command that lists members, issue 24).
    ValueError for anything else: exponents, ``inf``, ``nan`` (which Decimal took, and
    ``inf`` then failed the int() with an OverflowError nobody caught)."""
    v = value.strip()
    if not _PAX_TIME.fullmatch(v):
        raise ValueError(f"not a PAX time: {value!r}")
    whole, _, frac = v.lstrip("+-").partition(".")
    ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if v.startswith("-") else ns


def member_mtime_ns(m: tarfile.TarInfo) -> int:
    """A member's mtime in ns: the PAX record's text when there is one (tarfile keeps it
    as a float, nanoseconds lost), else the header's seconds; 0 for a time no int holds
    (a forged ``mtime=inf``). The mount and the catalog's member lists both use it, so
    a listing and the decoded archive agree."""
    rec = m.pax_headers.get("mtime")
    if rec is not None:
        try:
            return pax_time_ns(rec)
        except ValueError:
            pass
    try:
        return int(m.mtime) * 1_000_000_000
    except (OverflowError, ValueError):
        return 0
