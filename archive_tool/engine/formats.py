"""Compressors for tar, tar.gz, tar.zst and tar.xz: one-shot (small sessions) and streaming.

``compresslevel`` is the codec's own level (levels.py: zstd 1..19, gzip 1..9, xz 0..9;
None = the format's default). :func:`compress_bytes` and :func:`open_compressed_writer`
check it, so every writer sees a level valid for its codec.
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from archive_tool.engine.decoders import GzipMembersReader, ZstdFramesReader
from archive_tool.errors import ArchiveError, CorruptArchive
from archive_tool.levels import resolve_level
from archive_tool.names import FORMATS, normalize_format, split_archive_name


def zstd_level(compresslevel: int | None) -> int:
    """A zstd level (None = our default, 3), checked against zstd's range (levels.py)."""
    return resolve_level("tar.zst", compresslevel)


# One compressor per level and thread, reused: a fresh ZstdCompressor sets up its context
# on first use (0.5 % of a sweep, py-spy). Per thread because python-zstandard's objects
# must not be used by two threads at once, and a Dask worker runs tasks in threads.
_local = threading.local()


def _new_zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    # libzstd leaves the frame checksum off unless asked; the zstd CLI turns it on. We want
    # a corrupted archive to fail loudly on read, so it is always on.
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """The thread's compressor for one-shot use only: a stream left open on it would be
    interleaved with the next caller's (stream writers get their own)."""
    cache = _local.__dict__.setdefault("cctx", {})
    c = cache.get(level)
    if c is None:
        c = cache[level] = _new_zstd_compressor(level)
    return c


def _zstd_one() -> zstandard.ZstdDecompressor:
    d = _local.__dict__.get("dctx")
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


# Members that deflate cannot shrink, by their leading bytes: PNG, JPEG, GIF, WebP (RIFF
# checked below), gzip, zstd, xz, bzip2, 7z, lz4. zip is not here: np.savez and torch.save
# write *stored* zip members, which deflate does shrink.
_PACKED_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"\x1f\x8b",
                 b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh", b"7z\xbc\xaf\x27\x1c",
                 b"\x04\x22\x4d\x18")
_STORE_MIN = 4096  # below this a stored block saves too little to be worth a flush
_SAMPLE_MIN = 64 * 1024  # unknown data this big is sampled (2 KiB, ~50 us) before deflating
_STORED_MAX = 0xFFFF  # RFC 1951: a stored block holds at most 65,535 bytes


def _incompressible(part: bytes | memoryview) -> bool:
    n = len(part)
    if n < _STORE_MIN:
        return False
    head = bytes(part[:12])
    if head.startswith(_PACKED_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    if n < _SAMPLE_MIN:
        return False
    sample = bytes(part[n // 2:n // 2 + 2048])
    return len(zlib.compress(sample, 1)) >= len(sample)


class GzipWriter:
    """A gzip stream that stores what deflate cannot shrink instead of deflating it.

    zlib -1 crawls through incompressible bytes (41 MB/s on this box for a PNG, vs 99 MB/s
    on logs and ~1 GB/s to copy them into stored blocks), and the sessions we archive carry
    PNG figures: ~half of a real-shape session's gzip time went to the ~30 % of its bytes
    that stay the same size (benchmarks/RESULTS.md, issue 15). For such a part: a full flush
    (byte-aligned, and later data never refers back across it), then stored blocks written
    here by RFC 1951, then deflate resumes. One gzip member, one CRC32: every gzip reader
    (GNU gzip, tar -z, Python's gzip) reads it like any other.
    """

    def __init__(self, write: Callable[[Any], object], level: int) -> None:
        level = resolve_level("tar.gz", level)
        self._write = write
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        # RFC 1952 header as zlib writes it for wbits=31: no name, mtime 0 (reproducible),
        # XFL 4 ("fastest") at level 1, OS 3 (Unix).
        write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x04" if level == 1 else b"\x00")
              + b"\x03")

    def write(self, part: bytes | memoryview) -> int:
        n = len(part)
        self._crc = zlib.crc32(part, self._crc)
        self._size += n
        if not _incompressible(part):
            out = self._deflate.compress(part)
            if out:
                self._write(out)
            return n
        self._write(self._deflate.flush(zlib.Z_FULL_FLUSH))
        view = memoryview(part)
        for i in range(0, n, _STORED_MAX):
            block = view[i:i + _STORED_MAX]
            k = len(block)
            # BFINAL=0, BTYPE=00 in a byte of its own (we are byte-aligned), LEN, NLEN.
            self._write(struct.pack("<BHH", 0, k, k ^ 0xFFFF))
            self._write(block)
        return n

    def finish(self) -> None:
        self._write(self._deflate.flush())
        self._write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def _gzip_bytes(parts: Sequence[bytes], level: int) -> bytes:
    out: list[Any] = []
    w = GzipWriter(out.append, level)
    for p in parts:
        w.write(p)
    w.finish()
    return b"".join(out)


def _zstd_bytes(parts: Sequence[bytes], level: int) -> bytes:
    # A compressobj over the parts (tar headers, file contents) writes the same frame as a
    # one-shot compress of their join, as fast (0.27 ms a real-shape session both), and
    # saves the copy of the whole tar.
    c = _zstd_compressor(level).compressobj(size=sum(map(len, parts)))
    return b"".join([c.compress(p) for p in parts] + [c.flush()])


@dataclass(frozen=True)
class Codec:
    """Everything the engine needs to know of one archive format. A new codec is one
    entry in CODECS; nothing else branches on the format."""

    name: str  # canonical suffix without the dot: "tar.zst"
    magic: bytes | None  # leading bytes, for archives whose name does not say (or lies)
    # The level they get is checked for this codec (compress_bytes, open_compressed_writer).
    compress: Callable[[Sequence[bytes], int], bytes]  # in-memory tar stream (its parts)
    decompress: Callable[[bytes, int | None], bytes]  # whole stream, at most N bytes out
    writer: Callable[[IO[bytes], int], IO[bytes]]  # closing it leaves the raw file open
    reader: Callable[[IO[bytes]], IO[bytes]]  # must fail on a truncated stream


def _plain(parts: Sequence[bytes], level: int) -> bytes:
    return b"".join(parts)


class _GzipFileWriter(io.RawIOBase):
    """GzipWriter as a file object; closing it finishes the stream, not *raw*."""

    def __init__(self, raw: IO[bytes], level: int) -> None:
        self._gz = GzipWriter(raw.write, level)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        return self._gz.write(b)

    def close(self) -> None:
        if not self.closed:
            self._gz.finish()
        super().close()


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("tar.zst", b"\x28\xb5\x2f\xfd",
              _zstd_bytes,
              lambda d, m: _unzstd(d, m),
              lambda raw, lv: _new_zstd_compressor(lv).stream_writer(raw, closefd=False),
              lambda raw: ZstdFramesReader(raw)),
        Codec("tar.gz", b"\x1f\x8b", _gzip_bytes,
              lambda d, m: _gunzip(d, m),
              _GzipFileWriter,
              lambda raw: GzipMembersReader(raw)),
        Codec("tar.xz", b"\xfd7zXZ\x00",
              lambda parts, lv: lzma.compress(b"".join(parts), preset=lv),
              lambda d, m: _read_limited(lzma.LZMAFile(io.BytesIO(d)), m),
              lambda raw, lv: lzma.LZMAFile(raw, mode="wb", preset=lv),
              lambda raw: lzma.LZMAFile(raw, mode="rb")),
        Codec("tar", None,
              _plain,
              lambda d, m: _read_limited(io.BytesIO(d), m),
              lambda raw, lv: _NoClose(raw),
              lambda raw: _NoClose(raw)),
    )
}
assert tuple(CODECS) == FORMATS  # names.py's order (suffix matching) and this table agree


def codec(fmt: str | Codec) -> Codec:
    """The Codec of a format name or alias ("tgz"), or UnsupportedFormat."""
    return fmt if isinstance(fmt, Codec) else CODECS[normalize_format(fmt)]


def compress_bytes(data: bytes | Sequence[bytes], fmt: str | Codec,
                   compresslevel: int | None = None) -> bytes:
    """Compress a whole in-memory tar stream in one call: its bytes, or its parts in order
    (headers and file contents apart, so gzip can store what it cannot shrink).
    *compresslevel*: the codec's own level, None for the format's default (levels.py)."""
    parts = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    c = codec(fmt)
    return c.compress(parts, resolve_level(c.name, compresslevel))


def decompress_bytes(data: bytes, fmt: str | Codec, max_size: int | None = None) -> bytes:
    """Inverse of :func:`compress_bytes`; checks the format's own checksum."""
    return codec(fmt).decompress(data, max_size)


class OutputTooBig(ValueError):
    """More decompressed bytes than the caller's max_size."""


def _gunzip(data: bytes, max_size: int | None) -> bytes:
    """Every gzip member of in-memory *data*: the streaming reader fed the whole input in
    one read, so each bounded zlib call covers the archive. GzipFile's Python read loop
    was 14 % of a tar.gz sweep's time (py-spy, issue 15)."""
    return _read_limited(GzipMembersReader(io.BytesIO(data), chunk=max(len(data), 1)),
                         max_size)


def _unzstd(data: bytes, max_size: int | None) -> bytes:
    """One frame that says its size (what we write) in one C call: the streaming reader
    (then an 8 KiB-slice decompressobj loop) was 10 % of a sweep's time (py-spy, issue 15).
    Anything else — several frames, no content size, a cut or a bad
    checksum — goes through ZstdFramesReader, which gives the verdict."""
    # decompress() allocates the size the frame header declares, whatever max_output_size
    # says: a 9.6 KB frame declaring 300 MB took 300 MB of RSS. Only a declared size within
    # the caller's bound takes the one-call path.
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        declared = -1
    if max_size is not None and 0 <= declared <= max_size:
        try:
            return _zstd_one().decompress(data, max_output_size=max_size,
                                          allow_extra_data=False)
        except zstandard.ZstdError:
            pass  # several frames, a cut, a lie about the size: the frame reader says which
    return _read_limited(ZstdFramesReader(io.BytesIO(data)), max_size)



def _read_limited(f: IO[bytes], max_size: int | None) -> bytes:
    # Read to EOF, not just max_size + 1 bytes: a raw reader's read(n) is one readinto,
    # which hands over a frame's last bytes before it has seen the frame end. A tar.zst
    # with its 4-byte checksum cut off passed the in-memory verify that way (found in
    # issue 15; test_gzip_store's cut tests). The reader's end-of-input check runs only at EOF.
    out: list[bytes] = []
    got = 0
    while True:
        chunk = f.read(1 << 20 if max_size is None else max_size + 1 - got)
        if not chunk:
            return b"".join(out)
        got += len(chunk)
        if max_size is not None and got > max_size:
            raise OutputTooBig("decompressed data exceeds the expected size")
        out.append(chunk)


def open_compressed_writer(raw: IO[bytes], fmt: str | Codec,
                           compresslevel: int | None = None) -> IO[bytes]:
    """A file object that compresses into *raw*; closing it finishes the stream but leaves
    *raw* open. *compresslevel* as for :func:`compress_bytes`."""
    c = codec(fmt)
    return c.writer(raw, resolve_level(c.name, compresslevel))


def open_decompressed_reader(raw: IO[bytes], fmt: str | Codec) -> IO[bytes]:
    return codec(fmt).reader(raw)


class _NoClose(io.RawIOBase):
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def readinto(self, b: Any) -> int:
        return self.raw.readinto(b)

    def write(self, b: Any) -> int:
        return self.raw.write(b)


class FdReader(io.RawIOBase):
    """The raw reader of an archive's fd (closed with it): readv and lseek, nothing else.
    ``open(fd, "rb")``'s io.FileIO fstat()s the fd first, a metadata round trip per
    archive on a parallel filesystem (issue 24) that open_tar's one stat already took."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def readable(self) -> bool:
        return True

    seekable = readable

    def readinto(self, b: Any) -> int:  # noqa: ANN401 - any writable buffer
        return os.readv(self._fd, [b])

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, pos, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def sniff_format(head: bytes) -> str | None:
    """Format from magic bytes, for archives whose name does not say (or lies)."""
    for c in CODECS.values():
        if c.magic is not None and head.startswith(c.magic):
            return c.name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def open_archive_fd(path: str) -> int:
    """The archive *path* (operator input, opened as given) for reading: ArchiveError
    saying why not."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArchiveError(path, "no such archive") from None
    except PermissionError:
        raise ArchiveError(path, "permission denied") from None


def archive_size(fd: int, path: str) -> int:
    """Size of the open archive *fd* (its one fstat); ArchiveError for a directory."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise ArchiveError(path, "is a directory, not an archive")
    return st.st_size


def detect_format_fd(fd: int, where: str) -> str:
    """Format of the open archive *fd* (by magic, else by *where*'s suffix)."""
    return _format_of(os.pread(fd, 512, 0), where)


def _format_of(head: bytes, path: str) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        named = split_archive_name(os.path.basename(path))
        if named is None:
            raise CorruptArchive(path, "not a tar archive (unknown format)")
        fmt = named[1]
    return fmt
