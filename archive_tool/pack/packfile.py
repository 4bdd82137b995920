"""A pack: many sessions in one seekable zstd file, one frame per session.

Layout (``<period>.pack.tar.zst``)::

    frame 0 .. n-1   one zstd frame per session: that session's tar members, nothing else
    frame n          the tar end-of-archive blocks (padded to a 10 KiB record)
    frame n+1        skippable frame (magic 0x184D2A50): JSON index, the session names
                     in frame order
    seek table       skippable frame 0x184D2A5E (seekable.py), listing all n+2 frames

Decompressed end to end it is ONE tar stream (``tar --zstd -tf/-xf`` see every session);
frame i alone, plus two zero blocks, is session i's own archive. The index lets a reader
find a session by name from the last few KB of the file without a catalog.
"""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from archive_tool.engine import commit
from archive_tool.engine.formats import archive_size, zstd_level
from archive_tool.engine.read import verify_archive
from archive_tool.engine.tarwrite import iter_tar
from archive_tool.errors import (
    ArchiveError,
    CorruptArchive,
    UnsafeArchive,
    VerifyFailed,
)
from archive_tool.pack import entrypath, seekable

PACK_SUFFIX = ".pack.tar.zst"
INDEX_MAGIC = 0x184D2A50
INDEX_VERSION = 1
SPAN_VERSION = 2  # sessions below the pack (--pack auto): a version-1 reader refuses it
END_BLOCKS = tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def pack_file_name(period: str, n: int = 1) -> str:
    return f"{period}{PACK_SUFFIX}" if n == 1 else f"{period}.{n}{PACK_SUFFIX}"


def publish_free_name(tmp: commit.TmpArchive, base: str, where: str) -> None:
    """Link the durable tmp pack under its name, or if another process took it, the next
    free one (``<base>.2.pack.tar.zst``, ``.3`` ...): never a rename over a pack."""
    n = 1 if tmp.name == pack_file_name(base) else int(tmp.name[len(base) + 1:].split(".")[0])
    while True:
        try:
            commit.publish(tmp)
            return
        except FileExistsError:
            n += 1
            tmp.name = pack_file_name(base, n)
            tmp.final = os.path.join(where, tmp.name)


def is_pack_name(name: str) -> bool:
    return name.endswith(PACK_SUFFIX) and not name.startswith(".")


def is_pack_entry(e: os.DirEntry[str]) -> bool:
    """A listed pack file: a pack's name on a regular file (a symlink is never followed)."""
    return is_pack_name(e.name) and e.is_file(follow_symlinks=False)


def _digest(b: bytes) -> bytes:
    # A second check beside libzstd's XXH64 (which already proves the frame decodes to the
    # bytes the compressor hashed): CRC32 and length. BLAKE2b ran at 534 MB/s here, twice a
    # session (write, read-back), 11 % of a pack sweep (py-spy, issue 15); CRC32 at 2.6 GB/s.
    return zlib.crc32(b).to_bytes(4, "little") + len(b).to_bytes(8, "little")


@dataclass(slots=True)
class FrameInfo:
    name: str
    index: int
    offset: int
    csize: int
    dsize: int


@dataclass
class PackWriter:
    """Writes frames into an open tmp (commit.TmpArchive) as sessions arrive; keeps only a
    digest of each session's tar bytes, so a pack of 10,000 sessions needs no more memory
    than one session (the read-back compares digests)."""

    tmp: commit.TmpArchive
    compresslevel: int | None = None  # zstd's own level; None: our default (levels.py)
    frames: list[FrameInfo] = field(default_factory=list)
    _digests: list[bytes] = field(default_factory=list)
    _entries: list[tuple[int, int, int]] = field(default_factory=list)
    _pos: int = 0
    _tar_len: int = 0
    broken: bool = False  # a write failed: the tmp holds a partial frame, unusable

    def __post_init__(self) -> None:
        self._cctx = zstandard.ZstdCompressor(level=zstd_level(self.compresslevel),
                                              write_checksum=True, write_content_size=True)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.tmp.fd, view):]
        except OSError as e:
            self.broken = True
            raise commit.disk_error(self.tmp.final, e, "cannot write pack") from None
        self._pos += len(data)

    def _frame(self, data: bytes) -> tuple[int, int]:
        c = self._cctx.compress(data)
        off = self._pos
        self._write(c)
        self._entries.append((len(c), len(data), seekable.frame_checksum(c)))
        self._digests.append(_digest(data))
        return off, len(c)

    def add(self, name: str, tar: bytes) -> FrameInfo:
        """Append one session's tar members (no end blocks) as its own frame."""
        if len(tar) > seekable.MAX_FRAME or len(tar) % tarfile.BLOCKSIZE:
            raise ValueError("a pack frame is whole tar blocks below 4 GiB")
        off, clen = self._frame(tar)
        self._tar_len += len(tar)
        f = FrameInfo(name, len(self.frames), off, clen, len(tar))
        self.frames.append(f)
        return f

    def add_frame(self, name: str, frame: bytes, dsize: int) -> FrameInfo:
        """Append a frame copied, still compressed, from another pack (repack): no
        recompression. Its read-back is checked against a digest of the compressed bytes,
        and :func:`verify_pack` decompresses it (libzstd checks its XXH64)."""
        if dsize > seekable.MAX_FRAME or dsize % tarfile.BLOCKSIZE:
            raise ValueError("a pack frame is whole tar blocks below 4 GiB")
        off = self._pos
        self._write(frame)
        self._entries.append((len(frame), dsize, seekable.frame_checksum(frame)))
        self._digests.append(b"raw:" + _digest(frame))
        self._tar_len += dsize
        f = FrameInfo(name, len(self.frames), off, len(frame), dsize)
        self.frames.append(f)
        return f

    def finish(self) -> int:
        """End the tar stream, write the index and the seek table; returns the file size."""
        end = END_BLOCKS + tarfile.NUL * (-(self._tar_len + len(END_BLOCKS))
                                          % tarfile.RECORDSIZE)
        self._frame(end)
        span = any("/" in f.name for f in self.frames)
        index = json.dumps({"version": SPAN_VERSION if span else INDEX_VERSION,
                            "sessions": [f.name for f in self.frames]},
                           separators=(",", ":")).encode()
        skip = seekable.skippable(INDEX_MAGIC, index)
        self._write(skip)
        self._entries.append((len(skip), 0, seekable.EMPTY_CHECKSUM))
        self._digests.append(b"")
        self._write(seekable.seek_table(self._entries))
        return self._pos

    def verify(self) -> None:
        """Read the tmp back through its seek table: every frame decompresses (libzstd
        checks its XXH64) to exactly the bytes it was made from, and the index names the
        sessions in order. VerifyFailed otherwise."""
        where = self.tmp.final
        # An unnamed O_TMPFILE: its size is what we wrote, no fstat (issue 24).
        size = self._pos if self.tmp.tmp_name is None else None  # (named: the dir owner's)
        try:
            frames = seekable.read_seek_table(self.tmp.fd, where, size)
            if list(zip(frames.csize, frames.dsize, frames.checksum or [], strict=False)) \
                    != self._entries:
                raise VerifyFailed(where, "seek table read back differs from what was written")
            for i, want in enumerate(self._digests[:-1]):
                f = frames[i]
                if want.startswith(b"raw:"):
                    got = b"raw:" + _digest(os.pread(self.tmp.fd, f.csize, f.offset))
                else:
                    got = _digest(seekable.read_frame(self.tmp.fd, f, where))
                if got != want:
                    raise VerifyFailed(where, f"frame at {f.offset} read back differs")
            names = read_index(self.tmp.fd, frames, where)
        except CorruptArchive as e:
            raise VerifyFailed(where, f"read-back failed: {e.reason}") from None
        if names != [f.name for f in self.frames]:
            raise VerifyFailed(where, "pack index read back differs")


def read_index(fd: int, frames: seekable.SeekTable, where: str) -> list[str]:
    if len(frames) < 2:
        raise CorruptArchive(where, "pack has no index frame")
    raw = seekable.read_skippable(fd, frames[-1], INDEX_MAGIC, where)
    try:
        doc = json.loads(raw)
        names = doc["sessions"]
        # set(map(type, ...)) runs in C: a per-name generator was ~6 ms on 10k names.
        ok = (doc.get("version") in (INDEX_VERSION, SPAN_VERSION) and isinstance(names, list)
              and set(map(type, names)) <= {str})
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok or len(names) != len(frames) - 2:
        raise CorruptArchive(where, "pack index is not valid")
    return names


def find_session(names: list[str], session: str) -> int:
    """Index of *session* in *names*: its full dir name or its ID (``<ID>`` of ``<ID>-x``),
    the last one winning if a name occurs twice (a source changed after being packed and
    was packed again: never within one pack by construction); -1 if absent. Of a spanning
    pack's paths (entrypath.py) the whole or the last component matches."""
    prefix = session + "-"
    for i in range(len(names) - 1, -1, -1):
        n = names[i]
        if n == session or n.startswith(prefix):
            return i
        b = n.rpartition("/")[2]
        if b != n and (b == session or b.startswith(prefix)):
            return i
    return -1


class PackFd:
    """The open fd of a pack file, closed by ``close`` or at the end of a ``with`` (the
    part every pack reader shares: Pack here, packsalvage.SalvagedPack)."""

    fd: int

    def __enter__(self) -> PackFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Pack(PackFd):
    """An open pack, for reading single sessions: seek table + index, nothing else read
    until a session is asked for. *size*: the file's, from the caller's fstat of *fd*."""

    def __init__(self, path: str | os.PathLike[str], fd: int | None = None,
                 size: int | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
        except FileNotFoundError:
            raise ArchiveError(self.path, "no such pack") from None
        except OSError as e:
            raise ArchiveError(self.path, f"cannot open: {e.strerror or e}") from None
        try:
            self.frames = seekable.read_seek_table(self.fd, self.path, size)
            self.names = read_index(self.fd, self.frames, self.path)
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> Pack:
        return self

    def find(self, session: str) -> int:
        """Frame index of *session* (:func:`find_session`); ArchiveError if absent."""
        i = find_session(self.names, session)
        if i < 0:
            raise ArchiveError(self.path, f"no session {session!r} in this pack")
        return i

    def frame_info(self, i: int) -> FrameInfo:
        f = self.frames[i]
        return FrameInfo(self.names[i], i, f.offset, f.csize, f.dsize)

    def members(self, i: int) -> bytes:
        """Session *i*'s tar members (one frame decompressed; no end blocks)."""
        return seekable.read_frame(self.fd, self.frames[i], self.path)

    def session_tar(self, session: str) -> bytes:
        """A whole, plain tar archive of one session, read from its frame alone."""
        return self.members(self.find(session)) + END_BLOCKS

    def session_fd(self, session: str) -> int:
        """An anonymous file (memfd) holding :meth:`session_tar`: every reader of the
        engine that takes an archive fd (list, cat, extract) reads it as a plain tar."""
        return memfd_of(self.session_tar(session))

    def frame_fd(self, i: int) -> int:
        """:meth:`session_fd` of frame *i* (a caller that knows the exact frame)."""
        return memfd_of(self.members(i) + END_BLOCKS)


def memfd_of(data: bytes) -> int:
    fd = os.memfd_create("session", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def session_fd_at(pack: str, name: str, offset: int, csize: int, dsize: int,
                  fd: int | None = None) -> int:
    """Session *name* of *pack* from where the catalog says its frame is: one pread and
    one decompression, no seek table or index read. The frame must start with *name*'s
    own members (a catalog older than the pack falls back to the index). *fd*: the pack
    opened by the caller (below a root by dir fds); stays the caller's."""
    if fd is not None:
        own = os.dup(fd)
        try:
            return _session_fd_at(pack, name, offset, csize, dsize, own)
        finally:
            os.close(own)
    try:
        fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ArchiveError(pack, f"cannot open: {e.strerror or e}") from None
    try:
        return _session_fd_at(pack, name, offset, csize, dsize, fd)
    finally:
        os.close(fd)


def _session_fd_at(pack: str, name: str, offset: int, csize: int, dsize: int,
                   fd: int) -> int:
    # Catalog numbers are the tree owner's to forge: a frame outside the file is not read
    # (os.pread would allocate a forged size up front); read_frame checks the rest.
    size = os.fstat(fd).st_size
    try:
        if not (0 <= offset and 0 < csize <= size - offset and 0 <= dsize):
            raise CorruptArchive(pack, "catalog frame outside the pack")
        data = seekable.read_frame(fd, seekable.Frame(offset, csize, dsize, None), pack)
        first = iter_tar(data[:tarfile.BLOCKSIZE * 8])[:1]
        top = first[0][0].rstrip("/") if first else ""
        # (A spanning pack's frame starts with the session's path below the pack.)
        if top == name or top.endswith("/" + name):
            return memfd_of(data + END_BLOCKS)
    except CorruptArchive:
        pass
    with Pack(pack, os.dup(fd)) as p:
        return p.session_fd(name)


def session_fd(pack: str | os.PathLike[str], session: str) -> int:
    """A memfd holding one session of *pack* as a plain tar (seek table + one frame read)."""
    with Pack(pack) as p:
        return p.session_fd(session)


def verify_pack(path: str | os.PathLike[str], fd: int | None = None,
                on_frame: Callable[[int, str, bytes], None] | None = None) -> Any:
    """``verify`` of a pack: the whole tar stream as for any archive (read.verify_archive:
    every byte, checksums, member rules), plus what only a pack has: a valid seek table
    and index, every listed frame one whole zstd frame of the size the table says, and
    each session's frame holding only members below that session's own name (a reader
    of one session must get that session and nothing else).

    With *fd* the open file is read (not closed; an unnamed tmp has no path) and *path*
    only names it. *on_frame(i, name, members)* sees each session's checked tar bytes
    (repack makes the catalog rows from them instead of decompressing twice)."""
    path, stream, size = os.fspath(path), None, None
    if fd is not None:  # one fstat serves the stream and the seek table (issue 24)
        stream, size = os.dup(fd), archive_size(fd, path)  # verify_archive closes it
        os.lseek(stream, 0, os.SEEK_SET)  # the stream is read from the fd's offset
    info = verify_archive(path, stream, size)
    with Pack(path, None if fd is None else os.dup(fd), size) as p:
        for i, name in enumerate(p.names):
            if not entrypath.is_entry(name):
                raise UnsafeArchive(path, f"index names {name!r}, not a session dir name")
            f = p.frames[i]
            if f.checksum is not None and f.checksum != int.from_bytes(
                    os.pread(p.fd, 4, f.offset + f.csize - 4), "little"):
                raise CorruptArchive(path, f"seek table entry {i} ({name}): wrong checksum")
            members = p.members(i)
            for member, _off, _size, _typ in iter_tar(members):
                if member.rstrip("/") != name and not member.startswith(name + "/"):
                    raise CorruptArchive(path, f"frame {i} ({name}) holds {member!r}")
            if on_frame is not None:
                on_frame(i, name, members)
        end = p.members(len(p.names))
        if end.strip(tarfile.NUL) or len(end) < len(END_BLOCKS):
            raise CorruptArchive(path, "the last data frame is not the tar end blocks")
    return info


def split_pack_ref(ref: str) -> tuple[str, str] | None:
    """``PACK::SESSION`` -> (PACK, SESSION); None for a plain archive path."""
    pack, sep, session = ref.rpartition("::")
    if not sep or not pack or not session:
        return None
    return pack, session
