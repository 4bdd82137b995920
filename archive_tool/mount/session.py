"""One archived session as a read-only directory tree: its tar decoded once, its headers
turned into an index (path -> attributes + data offset), file reads served from the
decoded tar by offset.

A session's tar comes from a per-session archive (decoded whole: in memory when small,
else streamed into an unlinked temp file) or from one frame of a pack. Everything in it
is untrusted: the members go through read.py's one rule (:class:`MemberRules`, the
``SafeTarInfo`` header caps) and must all lie below the session's own name, or the whole
session is refused (:class:`UnsafeArchive` / :class:`CorruptArchive`).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections import OrderedDict
from typing import IO, NamedTuple

from archive_tool.engine.formats import OutputTooBig, decompress_bytes, open_decompressed_reader
from archive_tool.engine.read import (
    WHOLE_ARCHIVE_MAX,
    WHOLE_TAR_MAX,
    MemberRules,
    SafeTarInfo,
    iter_members,
    member_path,
)
from archive_tool.engine.tarwrite import member_mtime_ns
from archive_tool.errors import ArchiveError, ArchiveTooLarge, CorruptArchive, UnsafeArchive
from archive_tool.pack import seekable

# A session's index costs ~200 B a member; a hostile archive of millions of empty members
# must not take the mount's memory with it. Real sessions hold tens to a few thousand.
MAX_MEMBERS = 100_000
# What the index of one member costs in the cache's accounting (tuple + path string).
MEMBER_COST = 200
# Pack frames hold sessions below single.IN_MEMORY_LIMIT (32 MiB) by construction; a
# frame whose table claims more is refused rather than decoded into memory.
MAX_FRAME = WHOLE_TAR_MAX
# Streaming a big archive into a temp file stops before it would leave less than this
# free on the temp file's filesystem (a decompression bomb fills no disk).
KEEP_FREE = 1 << 30
CHUNK = 1 << 20


class Entry(NamedTuple):
    mode: int  # st_mode, type bits included
    size: int
    mtime_ns: int
    uid: int
    gid: int
    offset: int  # data offset in the decoded tar (regular files), else -1
    link: str  # symlink target


class Blob:
    """The decoded tar of one session: bytes, or an unlinked temp file. Open handles keep
    a reference, so eviction from the cache never cuts a read short."""

    __slots__ = ("data", "file", "size")

    def __init__(self, data: bytes | None = None, file: IO[bytes] | None = None) -> None:
        self.data, self.file = data, file
        self.size = len(data) if data is not None else os.fstat(file.fileno()).st_size  # type: ignore[union-attr]

    def pread(self, n: int, off: int) -> bytes:
        if self.data is not None:
            return self.data[off:off + n]
        return os.pread(self.file.fileno(), n, off)  # type: ignore[union-attr]

    def fileobj(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        f = os.fdopen(os.dup(self.file.fileno()), "rb")  # type: ignore[union-attr]
        f.seek(0)  # a dup shares the offset, left at the end by the decode that wrote it
        return f

    def __del__(self) -> None:
        if self.file is not None:
            self.file.close()


class SessionTree:
    """The index of one session: ``entries[rel]`` ("" is the session dir itself) and
    ``children[rel]`` (names, in archive order) for each directory. *blob* is None for a
    tree listed from the catalog (catalog/listing.py): attributes only, no bytes; *key*
    says where the view found the session (its cache key)."""

    __slots__ = ("name", "blob", "entries", "children", "cost", "key")

    def __init__(self, name: str, blob: Blob | None, entries: dict[str, Entry],
                 children: dict[str, list[str]]) -> None:
        self.name, self.blob, self.entries, self.children = name, blob, entries, children
        self.cost = (blob.size if blob is not None else 0) + MEMBER_COST * len(entries)
        self.key: object = None




def index_session(name: str, blob: Blob, where: str, fallback_mtime_ns: int = 0) -> SessionTree:
    """Index the tar in *blob* as session *name*; refuse it whole if any member breaks the
    member rules, lies outside ``<name>/``, is of a kind a restore would not create, or
    points past the end of the data."""
    rules = MemberRules()
    entries: dict[str, Entry] = {}
    prefix = name + "/"
    try:
        with blob.fileobj() as f, tarfile.open(fileobj=f, mode="r:", tarinfo=SafeTarInfo) as tf:
            for m in iter_members(tf):
                why = rules.unsafe(m)
                if why:
                    raise UnsafeArchive(where, f"refused: {why}")
                path = member_path(m.name)
                if path == name:
                    rel = ""
                elif path.startswith(prefix):
                    rel = path[len(prefix):]
                else:
                    raise UnsafeArchive(where, f"member {m.name!r} is outside {name}/")
                if len(entries) >= MAX_MEMBERS:
                    raise ArchiveTooLarge(where, f"more than {MAX_MEMBERS} members")
                mtime = member_mtime_ns(m)
                perm = m.mode & 0o7777
                if m.isdir():
                    e = Entry(stat.S_IFDIR | perm, 0, mtime, m.uid, m.gid, -1, "")
                elif m.issym():
                    e = Entry(stat.S_IFLNK | 0o777, len(os.fsencode(m.linkname)), mtime,
                              m.uid, m.gid, -1, m.linkname)
                elif m.islnk():
                    target = member_path(m.linkname)
                    t_rel = "" if target == name else target[len(prefix):] \
                        if target.startswith(prefix) else None
                    t = entries.get(t_rel) if t_rel is not None else None
                    if t is None or not stat.S_ISREG(t.mode):
                        raise UnsafeArchive(where, f"hard link {m.name!r} to {m.linkname!r}, "
                                                   "not an earlier file of this session")
                    e = t
                elif m.isreg() and not m.issparse():
                    if m.offset_data + m.size > blob.size:
                        raise CorruptArchive(where, f"{m.name!r} runs past the end of the data")
                    e = Entry(stat.S_IFREG | perm, m.size, mtime, m.uid, m.gid, m.offset_data, "")
                else:
                    raise UnsafeArchive(where, f"member {m.name!r} of a kind not served")
                entries[rel] = e
    except ArchiveError:
        raise
    except Exception as e:  # tarfile and decoder errors: a damaged archive
        raise CorruptArchive(where, f"corrupt archive: {e}") from None
    if not entries:
        raise CorruptArchive(where, "empty archive")
    return build_tree(name, blob, entries, fallback_mtime_ns)


def build_tree(name: str, blob: Blob | None, entries: dict[str, Entry],
               fallback_mtime_ns: int) -> SessionTree:
    """The tree of *entries* (rel -> Entry): each directory's children, plus the
    directories the entries imply without a member of their own (e.g. written by another
    tar): shown 0755, root-owned; our writer always stores them."""
    children: dict[str, list[str]] = {}
    for rel in list(entries):
        while rel:
            parent, _, base = rel.rpartition("/")
            kids = children.setdefault(parent, [])
            kids.append(base)
            if parent in entries:
                break
            entries[parent] = Entry(stat.S_IFDIR | 0o755, 0, fallback_mtime_ns, 0, 0, -1, "")
            rel = parent
    for rel, e in entries.items():
        if stat.S_ISDIR(e.mode):
            children.setdefault(rel, [])
    if "" not in entries:
        entries[""] = Entry(stat.S_IFDIR | 0o755, 0, fallback_mtime_ns, 0, 0, -1, "")
        children.setdefault("", [])
    return SessionTree(name, blob, entries, children)


def decode_archive(fd: int, fmt: str, where: str, tmp_dir: str | None = None) -> Blob:
    """The tar of a per-session archive open as *fd* (closed here). Small ones decode in
    one call into memory (their checksum checked first); big ones stream into an unlinked
    temp file, read to the end so the format's checksum is checked too."""
    with open(fd, "rb", buffering=CHUNK) as raw:
        if os.fstat(fd).st_size <= WHOLE_ARCHIVE_MAX:
            data = raw.read(WHOLE_ARCHIVE_MAX + 1)
            try:
                return Blob(data=decompress_bytes(data, fmt, max_size=WHOLE_TAR_MAX))
            except OutputTooBig:
                raw.seek(0)
            except Exception as e:
                raise CorruptArchive(where, f"cannot decode: {e}") from None
        out = tempfile.TemporaryFile(dir=tmp_dir)
        try:
            reader = open_decompressed_reader(raw, fmt)
            free = shutil.disk_usage(tmp_dir or tempfile.gettempdir()).free
            written = 0
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written + KEEP_FREE > free:
                    raise ArchiveTooLarge(where, "decoding would fill the temp directory")
                out.write(chunk)
            out.flush()
        except ArchiveError:
            out.close()
            raise
        except Exception as e:
            out.close()
            raise CorruptArchive(where, f"cannot decode: {e}") from None
        return Blob(file=out)


def decode_frame(fd: int, frame: seekable.Frame, where: str) -> Blob:
    """One pack frame's tar members (plus the end blocks tarfile wants), bounded by the
    seek table's size and :data:`MAX_FRAME` whatever the frame claims."""
    if frame.dsize > MAX_FRAME:
        raise ArchiveTooLarge(where, f"frame of {frame.dsize} bytes (more than {MAX_FRAME})")
    data = os.pread(fd, frame.csize, frame.offset)
    if len(data) != frame.csize:
        raise CorruptArchive(where, "file ends inside a frame")
    try:
        out = decompress_bytes(data, "tar.zst", max_size=frame.dsize)
    except Exception as e:
        raise CorruptArchive(where, f"frame at {frame.offset}: {e}") from None
    if len(out) != frame.dsize:
        raise CorruptArchive(where, f"frame at {frame.offset} decodes to {len(out)} bytes, "
                                    f"the seek table says {frame.dsize}")
    return Blob(data=out + tarfile.NUL * (2 * tarfile.BLOCKSIZE))


class LRU:
    """Decoded sessions, least recently used evicted first once their cost (decoded tar +
    index) passes *capacity*; the newest always stays."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[object, SessionTree] = OrderedDict()
        self.cost = 0

    def get(self, key: object) -> SessionTree | None:
        t = self.items.get(key)
        if t is not None:
            self.items.move_to_end(key)
        return t

    def discard(self, key: object) -> None:
        t = self.items.pop(key, None)
        if t is not None:
            self.cost -= t.cost

    def put(self, key: object, tree: SessionTree) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.cost -= old.cost
        self.items[key] = tree
        self.cost += tree.cost
        while self.cost > self.capacity and len(self.items) > 1:
            _k, t = self.items.popitem(last=False)
            self.cost -= t.cost
