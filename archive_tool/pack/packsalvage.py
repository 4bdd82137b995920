"""Salvage of a damaged pack: which sessions still read, found without trusting the
damaged part, and a reader of exactly those.

Each session of a pack is its own zstd frame with its own content checksum (XXH64), so
one bad byte costs one frame, never the pack (issue 26). Frames are located

- from the seek table when it reads (magics, sizes adding up to the file): each listed
  frame is decoded on its own; a table entry whose checksum or decompressed size is wrong
  is damage to the table, not to the session;
- otherwise by walking the file from its start: a frame starts at the zstd frame magic
  and ends where a decoder stops after a good checksum; skippable frames (the index, the
  table) are stepped over by their size; a frame that does not decode is stepped over by
  searching for the next frame magic.

A frame is a session's only if its tar members all lie below one session dir name (the
first member's); when the index reads it must name that same session at that place.
The sessions lost are the index's names that no good frame holds; with the index
damaged too, the unreadable byte ranges are reported instead of names.

Everything is read with pread in bounded chunks (no mmap: a file truncated under us must
give a short read, not SIGBUS).
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
from dataclasses import dataclass, field

import zstandard

from archive_tool.engine.scan import IN_MEMORY_LIMIT
from archive_tool.errors import ArchiveError, CorruptArchive
from archive_tool.names import is_session_name
from archive_tool.pack import entrypath, seekable
from archive_tool.pack.packfile import (
    END_BLOCKS,
    INDEX_MAGIC,
    INDEX_VERSION,
    SPAN_VERSION,
    FrameInfo,
    Pack,
    PackFd,
    find_session,
    iter_tar,
    memfd_of,
    read_index,
)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIP_LO, _SKIP_HI = 0x184D2A50, 0x184D2A5F
_CHUNK = 1 << 20
# A session frame holds at most the in-memory limit's tar (bigger sessions get their own
# archive); with headers, well below this. A frame that declares more, or no size, is not
# decoded: the scan must not be a decompression bomb's way in.
_MAX_OUT = 4 * IN_MEMORY_LIMIT


@dataclass
class Salvage:
    """What a pack holds that still reads, and what is lost."""

    path: str
    good: list[FrameInfo] = field(default_factory=list)  # readable sessions, file order
    lost: list[str] = field(default_factory=list)  # sessions whose frames do not read
    damage: list[str] = field(default_factory=list)  # what is damaged, one phrase each
    total: int | None = None  # sessions the index lists (None: the index is unreadable)
    located_by: str = "seek table"  # or "scan" (the table did not read)

    @property
    def clean(self) -> bool:
        return not self.damage

    def summary(self) -> str:
        """One line for an operator: what is damaged, what is lost, what still reads."""
        total = self.total if self.total is not None else len(self.good) + len(self.lost)
        parts = ["; ".join(self.damage) or "no damage found"]
        if self.lost:
            parts.append(f"lost {len(self.lost):,} of {total:,} sessions: "
                         + ", ".join(self.lost))
        else:
            parts.append("no session lost")
        parts.append(f"{len(self.good):,} sessions readable (unpack/extract restore them; "
                     "repack --salvage writes a clean pack of them)")
        return "; ".join(parts)


def _decode(fd: int, off: int, end: int) -> tuple[bytes, int] | None:
    """The frame starting at *off* (not reaching past *end*) decoded, and its compressed
    length; None if it does not decode to a checksummed end. Only frames that declare
    their content size (ours all do) up to _MAX_OUT: libzstd stops a frame that
    outgrows its declared size, so memory stays bounded."""
    try:
        declared = zstandard.get_frame_parameters(os.pread(fd, 18, off)).content_size
    except zstandard.ZstdError:
        return None
    if not 0 < declared <= _MAX_OUT:
        return None
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out: list[bytes] = []
    pos = off
    try:
        while pos < end:
            chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
            if not chunk:
                return None
            out.append(dobj.decompress(chunk))
            pos += len(chunk)
            if dobj.eof:
                break
    except zstandard.ZstdError:
        return None
    if not dobj.eof:
        return None
    return b"".join(out), pos - off - len(dobj.unused_data)


def _find(fd: int, magic: bytes, start: int, size: int) -> int:
    pos = start
    while pos < size:
        chunk = os.pread(fd, _CHUNK + len(magic) - 1, pos)
        k = chunk.find(magic)
        if k >= 0:
            return pos + k
        if len(chunk) < _CHUNK:
            return -1
        pos += _CHUNK
    return -1


def _next_frame(fd: int, start: int, size: int) -> int:
    """Where the next frame may start at or after *start*: a zstd frame magic or a
    skippable one (0x184D2A5?, little-endian ``5? 2A 4D 18``); -1 if none."""
    z = _find(fd, ZSTD_MAGIC, start, size)
    pos = start
    while True:
        k = _find(fd, b"\x2a\x4d\x18", pos + 1, size)
        if k < 0 or (z >= 0 and k - 1 >= z):
            return z
        if k - 1 >= start and os.pread(fd, 1, k - 1)[0] & 0xF0 == 0x50:
            return k - 1
        pos = k


def _session_of(members: bytes) -> str | None:
    """The one session dir all of a frame's members lie below, or None: its name, or in a
    spanning pack its path below the pack (entrypath.py; the frame's first member is the
    session dir itself, as tarwrite writes it)."""
    if not members or len(members) % tarfile.BLOCKSIZE:
        return None
    ms = iter_tar(members)
    if not ms:
        return None
    parts = ms[0][0].split("/")
    k = next((k for k, p in enumerate(parts) if is_session_name(p)), -1)
    name = "/".join(parts[:k + 1])
    if k < 0 or not entrypath.is_entry(name):
        return None
    for m, *_ in ms:
        if m.rstrip("/") != name and not m.startswith(name + "/"):
            return None
    return name


def _is_end(members: bytes) -> bool:
    return len(members) >= len(END_BLOCKS) and not members.strip(tarfile.NUL)


def _parse_index(raw: bytes) -> list[str] | None:
    try:
        doc = json.loads(raw)
        names = doc["sessions"]
        if doc.get("version") in (INDEX_VERSION, SPAN_VERSION) and isinstance(names, list) \
                and all(isinstance(n, str) for n in names):
            return names
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def salvage(path: str | os.PathLike[str], fd: int | None = None) -> Salvage:
    """Read every frame of the pack at *path* (or open as *fd*, not closed) and say which
    sessions read; raises only if the file cannot be opened."""
    path = os.fspath(path)
    own = fd is None
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ArchiveError(path, f"cannot open: {e.strerror or e}") from None
    try:
        return _salvage(path, fd)
    finally:
        if own:
            os.close(fd)


def _salvage(path: str, fd: int) -> Salvage:
    s = Salvage(path)
    size = os.fstat(fd).st_size
    table: seekable.SeekTable | None = None
    names: list[str] | None = None
    try:
        table = seekable.read_seek_table(fd, path)
    except CorruptArchive as e:
        s.damage.append(f"seek table: {e.reason}")
    if table is not None and len(table) >= 2:
        try:
            names = read_index(fd, table, path)
        except CorruptArchive as e:
            s.damage.append(f"index: {e.reason}")
    elif table is not None:
        s.damage.append("seek table lists no index frame")
        table = None
    found: list[tuple[int, int, int, str]] = []  # (offset, csize, dsize, name): no bytes kept
    if table is not None:
        _by_table(fd, s, table, names, found)
    else:
        s.located_by = "scan"
        names = _by_scan(fd, s, size, found)
    if names is not None:
        s.total = len(names)
        have = {n for *_, n in found}
        s.lost = [n for n in names if n not in have]
    where = {n: i for i, n in enumerate(names or ())}
    for k, (off, csize, dsize, name) in enumerate(found):
        s.good.append(FrameInfo(name, where.get(name, k), off, csize, dsize))
    return s


def _by_table(fd: int, s: Salvage, table: seekable.SeekTable, names: list[str] | None,
              found: list[tuple[int, int, int, str]]) -> None:
    n = len(table) - 2  # data frames of sessions; then the end blocks, then the index
    if names is not None and len(names) != n:
        s.damage.append("index and seek table disagree on the number of sessions")
        names = None
    for i in range(n + 1):
        off, csize = table.offset[i], table.csize[i]
        what = "the end-blocks frame" if i == n else \
            f"frame {i}" + (f" ({names[i]})" if names is not None else "")
        r = _decode(fd, off, off + csize)
        if r is None or r[1] != csize:
            s.damage.append(f"{what} at offset {off:,} does not decode")
            if i < n and names is None:
                s.lost.append(f"frame {i} at offset {off:,} (name unknown: index unreadable)")
            continue
        members = r[0]
        if table.dsize[i] != len(members) or (table.checksum is not None and
                                              table.checksum[i] != int.from_bytes(
                                                  os.pread(fd, 4, off + csize - 4), "little")):
            s.damage.append(f"seek table entry {i} is wrong (its frame reads)")
        if i == n:
            if not _is_end(members):
                s.damage.append("the last data frame is not the tar end blocks")
            continue
        name = _session_of(members)
        if name is None or (names is not None and name != names[i]):
            s.damage.append(f"{what} holds members outside one session dir")
            if names is None:
                s.lost.append(f"frame {i} at offset {off:,} (not one session's members)")
            continue
        found.append((off, csize, len(members), name))


def _by_scan(fd: int, s: Salvage, size: int, found: list[tuple[int, int, int, str]]
             ) -> list[str] | None:
    names: list[str] | None = None
    gaps: list[tuple[int, int]] = []
    end_at = -1
    pos = 0
    while pos < size:
        head = os.pread(fd, 8, pos)
        if head[:4] == ZSTD_MAGIC:
            r = _decode(fd, pos, size)
            if r is not None:
                members, used = r
                name = None if _is_end(members) else _session_of(members)
                if name is not None or _is_end(members):
                    if name is None:
                        end_at = pos
                    else:
                        found.append((pos, used, len(members), name))
                    pos += used
                    continue
        elif len(head) == 8:
            magic, n = struct.unpack("<II", head)
            if _SKIP_LO <= magic <= _SKIP_HI and pos + 8 + n <= size:
                if magic == INDEX_MAGIC and names is None:
                    names = _parse_index(os.pread(fd, n, pos + 8))
                pos += 8 + n
                continue
        nxt = _next_frame(fd, pos + 1, size)
        stop = size if nxt < 0 else nxt
        if gaps and gaps[-1][1] == pos:
            gaps[-1] = (gaps[-1][0], stop)
        else:
            gaps.append((pos, stop))
        pos = stop
    for a, b in gaps:
        s.damage.append(f"unreadable bytes at offsets {a:,}-{b:,}")
        if names is None and (end_at < 0 or a < end_at):
            s.lost.append(f"bytes {a:,}-{b:,} (session names unknown: index unreadable)")
    if names is None:
        s.damage.append("index: not found")
    return names


class SalvagedPack(PackFd):
    """The readable sessions of a damaged pack, with the reading side of :class:`Pack`
    (names, frame_fd, session_fd, find): restore code reads it as it reads a pack."""

    def __init__(self, path: str | os.PathLike[str], fd: int | None = None,
                 found: Salvage | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
        except OSError as e:
            raise ArchiveError(self.path, f"cannot open: {e.strerror or e}") from None
        try:
            self.salvage = found if found is not None else salvage(self.path, self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.good = self.salvage.good
        self.names = [f.name for f in self.good]
        self.csize = [f.csize for f in self.good]

    def __enter__(self) -> SalvagedPack:
        return self

    def find(self, session: str) -> int:
        i = find_session(self.names, session)
        if i >= 0:
            return i
        if find_session(self.salvage.lost, session) >= 0:
            raise CorruptArchive(self.path, f"session {session!r} is in a damaged frame "
                                            "of this pack; it cannot be restored")
        raise ArchiveError(self.path, f"no session {session!r} in this damaged pack")

    def members(self, i: int) -> bytes:
        f = self.good[i]
        r = _decode(self.fd, f.offset, f.offset + f.csize)
        if r is None or r[1] != f.csize:
            raise CorruptArchive(self.path, f"frame at {f.offset} no longer reads")
        return r[0]

    def frame_fd(self, i: int) -> int:
        return memfd_of(self.members(i) + END_BLOCKS)

    def session_fd(self, session: str) -> int:
        return self.frame_fd(self.find(session))


def open_pack(path: str | os.PathLike[str], fd: int | None = None) -> Pack | SalvagedPack:
    """A pack for reading sessions: the Pack when its seek table and index read, else
    the salvaged reader of the frames that still do. *fd* is owned by the result."""
    path = os.fspath(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArchiveError(path, "no such pack") from None
        except OSError as e:
            raise ArchiveError(path, f"cannot open: {e.strerror or e}") from None
    try:
        p = Pack(path, os.dup(fd))
    except CorruptArchive:
        return SalvagedPack(path, fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return p


