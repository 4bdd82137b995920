"""Compressors for tar, tar.gz, tar.zst and tar.xz: one-shot (small sessions) and streaming.

``compresslevel`` follows gzip's 1..9 scale everywhere, so one knob means "faster" or
"smaller" whatever the format. zstd gets a mapped level (gzip 1 -> zstd 3, zstd's own
default, which is both faster and smaller than gzip -1 on logs and configs).
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from typing import IO, Any

import zstandard

from .errors import BadArgument
from .names import normalize_format

_ZSTD_LEVELS = {1: 3, 2: 4, 3: 5, 4: 6, 5: 7, 6: 9, 7: 12, 8: 15, 9: 19}


def zstd_level(compresslevel: int) -> int:
    return _ZSTD_LEVELS[_clamp(compresslevel)]


def _clamp(level: int) -> int:
    if not isinstance(level, int) or isinstance(level, bool):
        raise BadArgument(f"compresslevel must be an integer 1..9, got {level!r}")
    if not 1 <= level <= 9:
        raise BadArgument(f"compresslevel must be 1..9, got {level}")
    return level


def _zstd_compressor(compresslevel: int) -> zstandard.ZstdCompressor:
    # libzstd leaves the frame checksum off unless asked; the zstd CLI turns it on. We want
    # a corrupted archive to fail loudly on read, so it is always on.
    return zstandard.ZstdCompressor(
        level=zstd_level(compresslevel), write_checksum=True, write_content_size=True
    )


def compress_bytes(data: bytes, fmt: str, compresslevel: int = 1) -> bytes:
    """Compress a whole in-memory tar stream in one call."""
    fmt = normalize_format(fmt)
    if fmt == "tar":
        return data
    if fmt == "tar.zst":
        return _zstd_compressor(compresslevel).compress(data)
    if fmt == "tar.gz":
        # wbits=31 -> gzip container (header + CRC32 trailer); mtime 0 keeps output
        # reproducible for identical input.
        c = zlib.compressobj(_clamp(compresslevel), zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    return lzma.compress(data, preset=_clamp(compresslevel))


def decompress_bytes(data: bytes, fmt: str, max_size: int | None = None) -> bytes:
    """Inverse of :func:`compress_bytes`; checks the format's own checksum."""
    fmt = normalize_format(fmt)
    if fmt == "tar":
        return data
    if fmt == "tar.zst":
        return _read_limited(ZstdFramesReader(io.BytesIO(data)), max_size)
    if fmt == "tar.gz":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            return _read_limited(g, max_size)
    with lzma.LZMAFile(io.BytesIO(data)) as x:
        return _read_limited(x, max_size)


class _TooBig(ValueError):
    """Internal: more bytes than the archive should hold."""


def _read_limited(f: IO[bytes], max_size: int | None) -> bytes:
    if max_size is None:
        return f.read()
    out = f.read(max_size + 1)
    if len(out) > max_size:
        raise _TooBig("decompressed data exceeds the expected size")
    return out


class _Counting(io.RawIOBase):
    """Counts bytes written through to an underlying binary file (bytes_out)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = self.raw.write(b)
        n = len(b) if n is None else n
        self.count += n
        return n


def open_compressed_writer(raw: IO[bytes], fmt: str, compresslevel: int = 1) -> IO[bytes]:
    """A file object that compresses into *raw*; closing it finishes the stream but leaves
    *raw* open."""
    fmt = normalize_format(fmt)
    if fmt == "tar":
        return _NoClose(raw)
    if fmt == "tar.zst":
        return _zstd_compressor(compresslevel).stream_writer(raw, closefd=False)
    if fmt == "tar.gz":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_clamp(compresslevel), mtime=0)
    return lzma.LZMAFile(raw, mode="wb", preset=_clamp(compresslevel))


def open_decompressed_reader(raw: IO[bytes], fmt: str) -> IO[bytes]:
    fmt = normalize_format(fmt)
    if fmt == "tar":
        return _NoClose(raw)
    if fmt == "tar.zst":
        return ZstdFramesReader(raw)
    if fmt == "tar.gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return lzma.LZMAFile(raw, mode="rb")


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


def sniff_format(head: bytes) -> str | None:
    """Format from magic bytes, for archives whose name does not say (or lies)."""
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "tar.zst"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


class ZstdFramesReader(io.RawIOBase):
    """Decompress every zstd frame of *raw* in turn; an input that ends inside a frame is
    an error.

    python-zstandard's stream_reader returns EOF quietly when the input stops mid-frame:
    an archive cut by 1-4 bytes (its XXH64 trailer) or inside the tar's end blocks still
    read as complete, so ``verify`` said ok and a sweep deleted the source beside it
    (issue 11). decompressobj() says whether its frame ended (``eof``).
    """

    def __init__(self, raw: IO[bytes], chunk: int = 1 << 20) -> None:
        self.raw = raw
        self.chunk = chunk
        self.dctx = zstandard.ZstdDecompressor()
        self.obj: Any = None  # the frame being decoded; None between frames
        self.buf = b""
        self.pos = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self.pos >= len(self.buf) and not self.done:
            self._fill()
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n

    def _fill(self) -> None:
        data = self.raw.read(self.chunk)
        if not data:
            if self.obj is not None:
                raise zstandard.ZstdError("truncated archive: input ends inside a zstd frame")
            self.done = True
            return
        out = []
        while data:
            if self.obj is None:
                self.obj = self.dctx.decompressobj()
            out.append(self.obj.decompress(data))
            if self.obj.eof:
                data = self.obj.unused_data
                self.obj = None
            else:
                data = b""
        self.buf = b"".join(out)
        self.pos = 0
