"""Reading archives back: verify against a manifest, full verify, list and cat members.

Every reader here streams (tarfile ``r|``) so a multi-GB archive costs flat memory, and
drains the decompressor to its end afterwards: tarfile stops at the end-of-archive blocks,
before gzip's CRC32 trailer, zstd's XXH64 frame checksum or xz's check would be read.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from archive_tool.engine import attrs
from archive_tool.engine.formats import (
    FdReader,
    OutputTooBig,
    archive_size,
    decompress_bytes,
    detect_format_fd,
    open_archive_fd,
    open_decompressed_reader,
)
from archive_tool.errors import ArchiveError, CorruptArchive, UnsafeArchive, VerifyFailed
from archive_tool.guard import interrupt

CHUNK = 1024 * 1024
# An archive this small on disk is read whole and decoded in one C call (its checksum
# checked before a member is read) while its tar stays under WHOLE_TAR_MAX; bigger ones,
# or ones that decode to more, stream. Python's gzip reader loop and tarfile's reads through
# it were ~30 % of a real-shape bulk restore's CPU (py-spy, issue 15).
WHOLE_ARCHIVE_MAX = 4 << 20
WHOLE_TAR_MAX = 64 << 20
_KIND = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
         tarfile.LNKTYPE: "h"}


# An extended header (PAX x/g, GNU long name/link) is read into memory whole by tarfile,
# whatever size it declares: a 32 KB archive claiming a 2 GB header cost 2.1 GB of RSS.
# Real ones hold a long path or a few attributes.
MAX_EXTENDED_HEADER = 1024 * 1024
_EXTENDED = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}


# CVE-2024-6232: tarfile's PAX parsing regexes backtrack quadratically on long digit runs
# (166 bytes cost 43 s of CPU on 3.11.7). Fixed in 3.11.10 / 3.12.6; before that, records
# are checked here first, in linear time.
_PAX_REGEX_FIXED = sys.version_info >= (3, 12, 6) or (3, 11, 10) <= sys.version_info < (3, 12)
_LONG_DIGITS = re.compile(rb"[0-9]{33}")


def check_pax_records(buf: bytes) -> str | None:
    """Why a PAX header payload is refused, or None: it must be a run of well-formed
    ``"<len> <key>=<value>\n"`` records, with no digit run longer than any real field."""
    pos, n = 0, len(buf)
    while pos < n:
        sp = buf.find(b" ", pos, pos + 21)
        if sp <= pos or not buf[pos:sp].isdigit():
            return "malformed PAX record"
        end = pos + int(buf[pos:sp])
        if end <= sp + 2 or end > n or buf[end - 1] != 0x0A or buf.find(b"=", sp, end) < 0:
            return "malformed PAX record"
        pos = end
    if _LONG_DIGITS.search(buf):
        return "PAX record with an absurd run of digits"
    return None


class _Replay:
    """The PAX payload we read to check it, handed to tarfile again, then its stream."""

    def __init__(self, buf: bytes, raw: Any) -> None:
        self.buf, self.raw = buf, raw

    def read(self, n: int = -1) -> bytes:
        if not self.buf:
            return self.raw.read(n)
        head, self.buf = (self.buf, b"") if n < 0 or n >= len(self.buf) else \
            (self.buf[:n], self.buf[n:])
        return head + (self.raw.read(n - len(head)) if 0 <= len(head) < n else b"")

    def tell(self) -> int:
        return self.raw.tell() - len(self.buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class SafeTarInfo(tarfile.TarInfo):
    """TarInfo that refuses an absurd extended header before tarfile reads it, and (on
    interpreters without the CVE-2024-6232 fix) a PAX payload that would stall its regex."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes "
                                      f"(more than {MAX_EXTENDED_HEADER}); refused")
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if _PAX_REGEX_FIXED:
            return super()._proc_pax(tarfile_)  # type: ignore[misc]
        raw = tarfile_.fileobj
        buf = raw.read(self._block(self.size))  # type: ignore[attr-defined]
        why = check_pax_records(buf[:self.size])
        if why:
            raise tarfile.HeaderError(f"{why}; refused")
        tarfile_.fileobj = _Replay(buf, raw)  # type: ignore[assignment]
        try:
            return super()._proc_pax(tarfile_)  # type: ignore[misc]
        finally:
            tarfile_.fileobj = raw


def iter_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one at a time without keeping them: TarFile appends every TarInfo to
    ``members`` (10 million empty members cost 4.9 GB of RSS in verify)."""
    while (m := tf.next()) is not None:
        tf.members.clear()
        interrupt.check()  # SIGTERM between members (a 10M-member archive took minutes)
        yield m


def drain(reader: IO[bytes]) -> None:
    while reader.read(CHUNK):
        interrupt.check()


def _crc(f: IO[bytes]) -> int:
    crc = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            return crc
        interrupt.check()
        crc = zlib.crc32(b, crc)


def check_members(
    f: IO[bytes], fmt: str, expected: Iterable[tuple[str, str, int, str, int]], where: str
) -> None:
    """Verify the archive in *f* holds exactly *expected* (name, kind, size, linkname,
    crc32[, attrs digest]), in any order (GNU tar orders members differently). Raises
    VerifyFailed naming the first difference. The optional sixth field (tarwrite's
    iter_expected_members) compares each member's ns mtime, xattrs and ACLs too."""
    want = {e[0]: e[1:] for e in expected}
    try:
        reader = open_decompressed_reader(f, fmt)
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=SafeTarInfo) as tf:
            for m in iter_members(tf):
                name = m.name[2:] if m.name.startswith("./") else m.name
                exp = want.pop(name, None)
                if exp is None:
                    raise VerifyFailed(where, f"unexpected member {m.name!r}")
                kind, size, linkname, crc, *digest = exp
                got = (_KIND.get(m.type, "?"), m.size if m.isfile() else 0, m.linkname)
                if got != (kind, size, linkname):
                    raise VerifyFailed(where, f"member {name!r} read back as {got}")
                if digest and attrs.digest(attrs.member_records(m.pax_headers)) != digest[0]:
                    raise VerifyFailed(where, f"attributes of {name!r} differ")
                if m.isfile() and _crc(tf.extractfile(m)) != crc:
                    raise VerifyFailed(where, f"content of {name!r} differs")
            if want:
                raise VerifyFailed(where, f"archive is missing {next(iter(want))!r}")
        drain(reader)
    except VerifyFailed:
        raise
    except Exception as e:  # decoder/tar errors all mean "not what we wrote"
        raise VerifyFailed(where, f"read-back failed: {e}") from None


@contextmanager
def open_tar(path: str | os.PathLike[str], fd: int | None = None, size: int | None = None
             ) -> Iterator[tuple[tarfile.TarFile, IO[bytes]]]:
    """Stream-open an archive of any supported format; errors become CorruptArchive.
    With *fd* (an archive opened by the caller, e.g. O_NOFOLLOW below a dir fd) *path*
    only names it in messages; the fd is closed on exit. *size*: from the caller's stat
    (then no fstat here); it only picks memory or streaming, _whole's read checks it."""
    path = os.fspath(path)
    fd = open_archive_fd(path) if fd is None else fd
    raw = io.BufferedReader(FdReader(fd), CHUNK)  # no io.FileIO: its fstat (FdReader)
    with raw:
        size = archive_size(fd, path) if size is None else size
        try:
            fmt = detect_format_fd(fd, path)
        except IsADirectoryError:  # a stat that said "file" before the open: a dir now
            raise ArchiveError(path, "is a directory, not an archive") from None
        try:
            reader = _whole(raw, fmt, size)
            if reader is None:
                reader = open_decompressed_reader(raw, fmt)
            tf = tarfile.open(fileobj=reader, mode="r|", tarinfo=SafeTarInfo)
        except Exception as e:
            raise CorruptArchive(path, f"cannot read archive: {e}") from None
        with tf:
            yield tf, reader


def _whole(raw: IO[bytes], fmt: str, size: int) -> IO[bytes] | None:
    """The decoded tar of a small archive, or None (rewound) to stream it instead.
    *size* is a stat's, not learnt by reading up to the bound: that held 4 MiB for every
    bigger archive (20,000 empty members peaked at 5.2 MB: tests/test_hostile_bounds.py).
    A file that grew past the bound since that stat is streamed too (the read says so)."""
    if size > WHOLE_ARCHIVE_MAX:
        return None
    data = raw.read(WHOLE_ARCHIVE_MAX + 1)
    if len(data) > WHOLE_ARCHIVE_MAX:
        raw.seek(0)
        return None
    try:
        return io.BytesIO(decompress_bytes(data, fmt, max_size=WHOLE_TAR_MAX))
    except OutputTooBig:
        raw.seek(0)
        return None


def unsafe_reason(m: tarfile.TarInfo) -> str | None:
    """Why a member may not be restored, or None. Stricter than the ``data`` filter, which
    silently strips a leading "/" instead of refusing."""
    name = m.name
    if name.startswith("/") or name.startswith("\\"):
        return f"absolute path {name!r}"
    if ".." in name.replace("\\", "/").split("/"):
        return f"path with '..' {name!r}"
    if m.ischr() or m.isblk() or m.isfifo():
        return f"device or FIFO {name!r}"
    if m.issym() or m.islnk():
        target = m.linkname
        if target.startswith("/"):
            return f"link {name!r} to absolute path {target!r}"
        base = os.path.dirname(name) if m.issym() else ""
        norm = os.path.normpath(os.path.join(base, target))
        if norm == ".." or norm.startswith("../"):
            return f"link {name!r} escapes to {target!r}"
    return None


def member_path(name: str) -> str:
    """A member name as a path relative to the archive root ("./a/" -> "a", "." -> "")."""
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name.strip("/")


_DIR, _FILE, _OTHER = 0, 1, 2


class MemberRules:
    """The member rules of restore, verify and show — one rule, so verify never says "ok"
    for an archive restore refuses. Per member: unsafe_reason, plus what one member cannot
    show alone: a path or hard-link target running through a symlink seen earlier, and a
    symlink escaping through earlier symlinks (``a -> .`` then ``b -> a/../../x`` escapes
    although ``b``'s target looks inside)."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}
        # Hashes, not names: a hostile archive of millions of members must not cost a
        # string per member (a collision only refuses an archive, never accepts one).
        # One dict, hash -> _DIR / _FILE (regular, or hard link to one) / _OTHER:
        # ~100 B a member, against ~500 B for the TarInfo list tarfile would keep.
        self.seen: dict[int, int] = {}

    def unsafe(self, m: tarfile.TarInfo) -> str | None:
        why = unsafe_reason(m)
        if why:
            return why
        if m.pax_headers:
            why = attrs.check_member(m.pax_headers)
            if why:
                return f"{m.name!r}: {why}"
        if "\0" in m.name or "\0" in m.linkname:
            return f"NUL byte in member name {m.name!r}"
        name = member_path(m.name)
        key = hash(name)
        if key in self.seen:
            return f"duplicate member {m.name!r}"
        parts = name.split("/")
        if any(self.seen.get(hash("/".join(parts[:i])), _DIR) != _DIR
               for i in range(1, len(parts))):
            return f"{m.name!r} is below a member that is not a directory"
        # A hard link names a regular file that came before it (restore links to what it
        # has extracted; a later member, a dir or a name outside is nothing to link to).
        if m.islnk() and self.seen.get(hash(member_path(m.linkname))) != _FILE:
            return f"hard link {m.name!r} to {m.linkname!r}, not a file before it"
        self.seen[key] = _DIR if m.isdir() else _FILE if m.isreg() or m.islnk() else _OTHER
        # Restore refuses these too: a path through a symlink the archive made could
        # land outside the destination, and a hard link through one could pin a file
        # outside it.
        if self._through_link(name.split("/")[:-1]):
            return f"{m.name!r} runs through a symlink"
        if m.islnk() and self._through_link(member_path(m.linkname).split("/")):
            return f"hard link {m.name!r} to {m.linkname!r} runs through a symlink"
        if not m.issym():
            return None
        if self._escapes(name, m.linkname):
            return f"link {m.name!r} escapes to {m.linkname!r} through another link"
        self.links[name] = m.linkname
        return None

    def _through_link(self, parts: list[str]) -> bool:
        return any("/".join(parts[:i]) in self.links for i in range(1, len(parts) + 1))

    def _escapes(self, name: str, target: str) -> bool:
        parts = [p for p in name.split("/")[:-1] if p not in ("", ".")]
        todo = [p for p in target.split("/") if p not in ("", ".")]
        hops = 0
        while todo:
            p = todo.pop(0)
            if p == "..":
                if not parts:
                    return True
                parts.pop()
                continue
            parts.append(p)
            t = self.links.get("/".join(parts))
            if t is not None:
                hops += 1
                if hops > 40 or t.startswith("/"):
                    return True
                parts.pop()
                todo = [q for q in t.split("/") if q not in ("", ".")] + todo
        return False


@dataclass
class ArchiveInfo:
    path: str
    members: int
    files: int
    bytes: int
    top: str | None


def verify_archive(path: str | os.PathLike[str], fd: int | None = None,
                   size: int | None = None) -> ArchiveInfo:
    """Read an archive completely: every header, every byte, the compressor's checksum,
    and every member's safety for restore. Raises CorruptArchive / UnsafeArchive.
    With *fd* (closed on return) that open file is read; *path* only names it. *size*:
    the file's size from a stat the caller took (open_tar)."""
    path = os.fspath(path)
    members = files = total = 0
    tops: set[str] = set()
    seen = MemberRules()
    with open_tar(path, fd, size) as (tf, reader):
        try:
            for m in iter_members(tf):
                members += 1
                why = seen.unsafe(m)
                if why:
                    raise UnsafeArchive(path, why)
                first = m.name.lstrip("./").split("/", 1)[0] if m.name not in (".", "./") else ""
                if first and len(tops) < 2:  # only "one top or several" matters
                    tops.add(first)
                if m.isfile():
                    files += 1
                    total += m.size
                    drain(tf.extractfile(m))
            drain(reader)
        except ArchiveError:
            raise
        except Exception as e:
            raise CorruptArchive(path, f"corrupt archive: {e}") from None
    if members == 0:
        raise CorruptArchive(path, "empty archive")
    return ArchiveInfo(path, members, files, total, tops.pop() if len(tops) == 1 else None)


@dataclass
class MemberInfo:
    name: str
    kind: str  # f, d, l, h (hard link), ? (other)
    size: int
    mtime: int
    linkname: str


def list_members(path: str | os.PathLike[str], fd: int | None = None) -> Iterator[MemberInfo]:
    """*fd*: an archive opened by the caller (a session read out of a pack); closed."""
    path = os.fspath(path)
    seen = MemberRules()
    with open_tar(path, fd) as (tf, _reader):
        try:
            for m in iter_members(tf):
                why = seen.unsafe(m)
                if why:  # listing it as fine would hide what restore refuses
                    raise UnsafeArchive(path, f"refused on restore: {why}")
                kind = "h" if m.islnk() else _KIND.get(m.type, "?")
                yield MemberInfo(m.name, kind, m.size if m.isfile() else 0, int(m.mtime), m.linkname)
        except ArchiveError:
            raise
        except Exception as e:
            raise CorruptArchive(path, f"corrupt archive: {e}") from None
