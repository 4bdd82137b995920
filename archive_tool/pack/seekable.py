"""The zstd seekable format (facebook/zstd contrib/seekable_format, spec 0.1.0), by hand.

A seekable file is ordinary zstd frames followed by one skippable frame (magic
0x184D2A5E) holding the seek table: per frame its compressed size, decompressed size and
the low 32 bits of the XXH64 of its content; then a 9-byte footer (frame count,
descriptor with the checksum flag, magic 0x8F92EAB1). Any zstd decoder reads the whole
file (skippable frames are ignored), so ``tar --zstd -xf`` works on it.

Written with python-zstandard (already a dependency) one frame at a time, the table
appended by the spec: pyzstd's SeekableZstdFile would do the same but is a new
dependency, and python-zstandard has no seekable writer (its issue #211). The checksum of
an entry is the frame's own content checksum (its last 4 bytes): every frame is written
with the checksum flag on, and that checksum is by definition the low 32 bits of XXH64.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
from dataclasses import dataclass

import zstandard

from archive_tool.errors import CorruptArchive

SEEK_TABLE_MAGIC = 0x184D2A5E  # the skippable frame the spec reserves for the table
SEEKABLE_MAGIC = 0x8F92EAB1
CHECKSUM_FLAG = 0x80
_RESERVED = 0x7C
FRAME_HEADER = struct.Struct("<II")  # skippable magic, payload size
ENTRY = struct.Struct("<III")  # compressed size, decompressed size, checksum
ENTRY_NO_CHECKSUM = struct.Struct("<II")
FOOTER = struct.Struct("<IBI")  # frame count, descriptor, magic
MAX_FRAME = 0xFFFFFFFF  # sizes are 4 bytes: a frame above 4 GiB cannot be listed


def frame_checksum(frame: bytes) -> int:
    """The content checksum a frame written with the checksum flag ends with."""
    return int.from_bytes(frame[-4:], "little")


# XXH64 of no bytes, low 32 bits: the checksum of a skippable frame (no content).
EMPTY_CHECKSUM = frame_checksum(zstandard.ZstdCompressor(write_checksum=True).compress(b""))


def skippable(magic: int, payload: bytes) -> bytes:
    """A skippable frame (magic 0x184D2A50..5F): every zstd decoder steps over it."""
    if not 0x184D2A50 <= magic <= 0x184D2A5F:
        raise ValueError(f"not a skippable magic: {magic:#x}")
    return FRAME_HEADER.pack(magic, len(payload)) + payload


def seek_table(entries: list[tuple[int, int, int]]) -> bytes:
    """The seek table frame for (compressed size, decompressed size, checksum) entries."""
    for c, d, _ in entries:
        if c > MAX_FRAME or d > MAX_FRAME:
            raise ValueError("a frame above 4 GiB cannot be listed in a seek table")
    body = b"".join(ENTRY.pack(*e) for e in entries)
    return skippable(SEEK_TABLE_MAGIC,
                     body + FOOTER.pack(len(entries), CHECKSUM_FLAG, SEEKABLE_MAGIC))


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int  # of the frame in the file
    csize: int
    dsize: int
    checksum: int | None


class SeekTable:
    """The frames of a seekable file as flat lists (a Frame object per entry cost ~30 ms
    for a 10k-frame table); indexing gives a Frame."""

    def __init__(self, raw: bytes, entry: struct.Struct) -> None:
        k = entry.size // 4
        if sys.byteorder == "little":
            # The table is little-endian uint32s: a strided view splits the columns in C.
            mv = memoryview(raw).cast("I")
            cols = [mv[i::k].tolist() for i in range(k)]
        else:
            cols = [list(c) for c in zip(*entry.iter_unpack(raw), strict=True)] or [[]] * k
        self.csize: list[int] = cols[0]
        self.dsize: list[int] = cols[1]
        self.checksum: list[int] | None = cols[2] if k == 3 else None
        self.offset = [0, *itertools.accumulate(self.csize)]

    def __len__(self) -> int:
        return len(self.csize)

    def __getitem__(self, i: int) -> Frame:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Frame(self.offset[i], self.csize[i], self.dsize[i],
                     None if self.checksum is None else self.checksum[i])

    def __iter__(self):  # noqa: ANN204 - an Iterator[Frame]
        return (self[i] for i in range(len(self)))


def read_seek_table(fd: int, where: str, size: int | None = None) -> SeekTable:
    """The frames of the seekable file open as *fd*; CorruptArchive if it has no valid
    seek table (checked: magics, reserved bits, sizes adding up to the table's offset).
    *size*: the file's size when the caller knows it (the writer of an unnamed tmp)."""
    if size is None:
        size = os.fstat(fd).st_size
    if size < FRAME_HEADER.size + FOOTER.size:
        raise CorruptArchive(where, "too short for a seekable zstd file")
    n, desc, magic = FOOTER.unpack(os.pread(fd, FOOTER.size, size - FOOTER.size))
    if magic != SEEKABLE_MAGIC:
        raise CorruptArchive(where, "no zstd seek table at the end (not a pack)")
    if desc & _RESERVED:
        raise CorruptArchive(where, "seek table descriptor has reserved bits set")
    entry = ENTRY if desc & CHECKSUM_FLAG else ENTRY_NO_CHECKSUM
    table = n * entry.size + FOOTER.size
    start = size - table - FRAME_HEADER.size
    if start < 0:
        raise CorruptArchive(where, "seek table larger than the file")
    head = os.pread(fd, FRAME_HEADER.size, start)
    if FRAME_HEADER.unpack(head) != (SEEK_TABLE_MAGIC, table):
        raise CorruptArchive(where, "seek table frame header does not match its footer")
    raw = os.pread(fd, n * entry.size, start + FRAME_HEADER.size)
    if len(raw) != n * entry.size:
        raise CorruptArchive(where, "seek table cut short")
    table = SeekTable(raw, entry)
    if table.offset[-1] != start:
        raise CorruptArchive(where, "seek table sizes do not add up to the file")
    return table


def read_frame(fd: int, frame: Frame, where: str) -> bytes:
    """Decompress one data frame (content checksum checked by libzstd)."""
    data = os.pread(fd, frame.csize, frame.offset)
    if len(data) != frame.csize:
        raise CorruptArchive(where, "file ends inside a frame")
    try:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(data)
        if not dobj.eof or dobj.unused_data:
            raise CorruptArchive(where, f"frame at {frame.offset} is not one whole zstd frame")
    except zstandard.ZstdError as e:
        raise CorruptArchive(where, f"frame at {frame.offset}: {e}") from None
    if len(out) != frame.dsize:
        raise CorruptArchive(where, f"frame at {frame.offset}: {len(out)} bytes, seek table "
                                    f"says {frame.dsize}")
    return out


def read_skippable(fd: int, frame: Frame, magic: int, where: str) -> bytes:
    """The payload of a skippable frame listed in the table (decompressed size 0)."""
    data = os.pread(fd, frame.csize, frame.offset)
    if len(data) < FRAME_HEADER.size or FRAME_HEADER.unpack_from(data) != (
            magic, frame.csize - FRAME_HEADER.size):
        raise CorruptArchive(where, f"expected a skippable frame at {frame.offset}")
    return data[FRAME_HEADER.size:]
