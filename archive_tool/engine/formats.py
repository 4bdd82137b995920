"""Compressors for tar, tar.gz, tar.zst and tar.xz: one-shot (small sessions) and streaming.

``compresslevel`` follows gzip's 1..9 scale everywhere, so one knob means "faster" or
"smaller" whatever the format. zstd gets a mapped level (gzip 1 -> zstd 3, zstd's own
default, which is both faster and smaller than gzip -1 on logs and configs).
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from archive_tool.errors import BadArgument
from archive_tool.names import FORMATS, normalize_format

_ZSTD_LEVELS = {1: 3, 2: 4, 3: 5, 4: 6, 5: 7, 6: 9, 7: 12, 8: 15, 9: 19}
LEVELS = range(1, 10)  # gzip's scale, for every codec


def check_level(level: int) -> int:
    """*level* if it is an int in 1..9, else BadArgument (checked at the edge, once)."""
    if not isinstance(level, int) or isinstance(level, bool):
        raise BadArgument(f"compresslevel must be an integer 1..9, got {level!r}")
    if level not in LEVELS:
        raise BadArgument(f"compresslevel must be 1..9, got {level}")
    return level


def zstd_level(compresslevel: int) -> int:
    return _ZSTD_LEVELS[check_level(compresslevel)]


# One compressor per level and thread, reused: a fresh ZstdCompressor sets up its context
# on first use (0.5 % of a sweep, py-spy). Per thread because python-zstandard's objects
# must not be used by two threads at once, and a Dask worker runs tasks in threads.
_local = threading.local()


def _new_zstd_compressor(compresslevel: int) -> zstandard.ZstdCompressor:
    # libzstd leaves the frame checksum off unless asked; the zstd CLI turns it on. We want
    # a corrupted archive to fail loudly on read, so it is always on.
    return zstandard.ZstdCompressor(level=zstd_level(compresslevel), write_checksum=True,
                                    write_content_size=True)


def _zstd_compressor(compresslevel: int) -> zstandard.ZstdCompressor:
    """The thread's compressor for one-shot use only: a stream left open on it would be
    interleaved with the next caller's (stream writers get their own)."""
    level = zstd_level(compresslevel)
    cache = _local.__dict__.setdefault("cctx", {})
    c = cache.get(level)
    if c is None:
        c = cache[level] = _new_zstd_compressor(compresslevel)
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
        level = check_level(level)
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
    compress: Callable[[Sequence[bytes], int], bytes]  # in-memory tar stream (its parts)
    decompress: Callable[[bytes, int | None], bytes]  # whole stream, at most N bytes out
    writer: Callable[[IO[bytes], int], IO[bytes]]  # closing it leaves the raw file open
    reader: Callable[[IO[bytes]], IO[bytes]]  # must fail on a truncated stream


def _plain(parts: Sequence[bytes], level: int) -> bytes:
    check_level(level)  # same argument rules for every codec
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
              lambda parts, lv: lzma.compress(b"".join(parts), preset=check_level(lv)),
              lambda d, m: _read_limited(lzma.LZMAFile(io.BytesIO(d)), m),
              lambda raw, lv: lzma.LZMAFile(raw, mode="wb", preset=check_level(lv)),
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
                   compresslevel: int = 1) -> bytes:
    """Compress a whole in-memory tar stream in one call: its bytes, or its parts in order
    (headers and file contents apart, so gzip can store what it cannot shrink)."""
    parts = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return codec(fmt).compress(parts, compresslevel)


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


def open_compressed_writer(raw: IO[bytes], fmt: str | Codec, compresslevel: int = 1) -> IO[bytes]:
    """A file object that compresses into *raw*; closing it finishes the stream but leaves
    *raw* open."""
    return codec(fmt).writer(raw, compresslevel)


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


def sniff_format(head: bytes) -> str | None:
    """Format from magic bytes, for archives whose name does not say (or lies)."""
    for c in CODECS.values():
        if c.magic is not None and head.startswith(c.magic):
            return c.name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None




class _Decoder(io.RawIOBase):
    """A decompressing reader: subclasses give _read(n), at most n bytes, b"" at the end."""

    done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        # tarfile reads through read(): serving bytes directly skips RawIOBase's
        # bytearray + readinto round trip per call.
        if self.done:
            return b""
        if n is None or n < 0:
            out = []
            while chunk := self._read(1 << 20):
                out.append(chunk)
            return b"".join(out)
        return self._read(n)

    def _read(self, n: int) -> bytes:
        raise NotImplementedError


class GzipMembersReader(_Decoder):
    """Every gzip member of *raw*, as GzipFile reads them (NUL padding after the last one
    allowed, anything else refused), with 128 KiB input reads and each read(n) one zlib
    call bounded to n bytes out. Python 3.11's GzipFile reads its input 8 KiB at a time
    through a Python loop: the cost of a big tar.gz's verify or restore. zlib checks each
    member's CRC32 and length; input that ends inside a member is an error."""

    def __init__(self, raw: IO[bytes], chunk: int = 128 << 10) -> None:
        self.raw = raw
        self.chunk = chunk
        self.d: Any = zlib.decompressobj(31)
        self.tail = b""  # input read but not yet given to the decoder
        self.started = False  # the current member has had input

    def _read(self, n: int) -> bytes:
        while n and not self.done:
            if self.d.eof:
                self._next_member()
                continue
            if not self.tail:
                self.tail = self.raw.read(self.chunk)
                if not self.tail:
                    if self.started:
                        raise EOFError("compressed file ended before the end-of-stream "
                                       "marker was reached")
                    self.done = True  # no input at all: an empty stream, as GzipFile says
                    break
            self.started = True
            data = self.d.decompress(self.tail, n)
            # At a member's end zlib leaves the input after it in unused_data AND in
            # unconsumed_tail (when the output cap was hit in the same call): one copy.
            self.tail = b"" if self.d.eof else self.d.unconsumed_tail
            if data:
                return data
        return b""

    def _next_member(self) -> None:
        rest = self.d.unused_data + self.tail
        while True:
            rest = rest.lstrip(b"\0")  # NUL padding between or after members, as GzipFile
            if len(rest) >= 2:
                break
            more = self.raw.read(self.chunk)
            if not more:
                if rest:
                    raise gzip.BadGzipFile("trailing garbage after the gzip stream")
                self.done = True
                return
            rest += more
        if not rest.startswith(b"\x1f\x8b"):
            raise gzip.BadGzipFile("trailing garbage after the gzip stream")
        self.d = zlib.decompressobj(31)
        self.tail = rest


class _FrameTap:
    """Follows the frame structure of a zstd stream as its bytes go by (RFC 8878: frame
    header, 3-byte block headers, block sizes, the optional 4-byte checksum; skippable
    frames by their size) without decoding anything, to tell whether the input ended on a
    frame boundary. A few dozen bytes of Python per block."""

    _ZSTD = 0xFD2FB528

    def __init__(self) -> None:
        self.state = "magic"
        self.need = 4  # header bytes to collect in this state
        self.acc = bytearray()
        self.skip = 0  # bytes to pass over (block content, checksum, skippable payload)
        self.checksum = False
        self.last = False

    @property
    def complete(self) -> bool:
        return self.state == "magic" and not self.acc and not self.skip

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                if not self.skip:
                    self._skipped()
                continue
            k = min(self.need - len(self.acc), n - i)
            self.acc += data[i:i + k]
            i += k
            if len(self.acc) == self.need:
                head = bytes(self.acc)
                self.acc.clear()
                self._header(head)

    def _to(self, state: str, need: int = 0, skip: int = 0) -> None:
        self.state, self.need, self.skip = state, need, skip
        if skip == 0 and need == 0:
            self._skipped()

    def _header(self, h: bytes) -> None:
        v = int.from_bytes(h, "little")
        if self.state == "magic":
            if v == self._ZSTD:
                self._to("fhd", need=1)
            elif v & 0xFFFFFFF0 == 0x184D2A50:
                self._to("skipsize", need=4)
            else:
                raise zstandard.ZstdError("not a zstd frame (bad magic number)")
        elif self.state == "fhd":
            if v & 0x08:
                raise zstandard.ZstdError("zstd frame header: reserved bit set")
            single = (v >> 5) & 1
            self.checksum = bool(v & 0x04)
            rest = ((0 if single else 1) + (0, 1, 2, 4)[v & 3]
                    + ((1 if single else 0), 2, 4, 8)[v >> 6])
            self._to("fhrest", need=rest) if rest else self._to("bhdr", need=3)
        elif self.state == "fhrest":
            self._to("bhdr", need=3)
        elif self.state == "bhdr":
            btype = (v >> 1) & 3
            if btype == 3:
                raise zstandard.ZstdError("zstd block of reserved type")
            self.last = bool(v & 1)
            self._to("block", skip=1 if btype == 1 else v >> 3)
        elif self.state == "skipsize":
            self._to("skippable", skip=v)

    def _skipped(self) -> None:
        if self.state == "block":
            if not self.last:
                self._to("bhdr", need=3)
            elif self.checksum:
                self._to("checksum", skip=4)
            else:
                self._to("magic", need=4)
        elif self.state in ("checksum", "skippable"):
            self._to("magic", need=4)


class _Tapped:
    """*raw* as the decoder reads it, every byte shown to a _FrameTap on the way."""

    def __init__(self, raw: IO[bytes], tap: _FrameTap) -> None:
        self.raw = raw
        self.tap = tap

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.tap.feed(data)
        return data


class ZstdFramesReader(_Decoder):
    """Decompress every zstd frame of *raw* in turn, in bounded memory; an input that ends
    inside a frame is an error.

    python-zstandard's stream_reader returns EOF quietly when the input stops mid-frame:
    an archive cut by 1-4 bytes (its XXH64 trailer) or inside the tar's end blocks still
    read as complete, so ``verify`` said ok and a sweep deleted the source beside it
    (issue 11). A _FrameTap on the input says whether the stream ended between frames.
    The decoding itself is stream_reader's, whose read(n) never returns more than n bytes:
    decompressobj(), used before, has no output bound, and a 10 KB frame of RLE blocks
    came out of one 8 KiB call as 300 MB (found in issue 15).
    """

    # 128 KiB input reads: a restore reads archives of tens of KB from files, and a 1 MiB
    # read buffer cost ~10 % of its CPU (benchmarks/bench_zstd_reader.py).
    def __init__(self, raw: IO[bytes], chunk: int = 128 << 10) -> None:
        self.tap = _FrameTap()
        self.src = _Tapped(raw, self.tap)
        self.chunk = chunk
        self.dec = zstandard.ZstdDecompressor().stream_reader(
            self.src, read_size=chunk, read_across_frames=True, closefd=False)

    def _read(self, n: int) -> bytes:
        data = self.dec.read(n) if n else b""
        if data or not n:
            return data
        # The decoder says EOF: all input must have gone by, ending between frames.
        while self.src.read(self.chunk):
            pass
        if not self.tap.complete:
            raise zstandard.ZstdError("truncated archive: input ends inside a zstd frame")
        self.done = True
        return b""
