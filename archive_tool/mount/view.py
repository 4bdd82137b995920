"""ROOT as it looked before the sweeps: the filesystem logic of ``session-archive mount``,
free of any FUSE binding (tests and benchmarks can drive it directly).

A path is resolved one component at a time. Real directories are read through fds
(fs.open_beneath: no symlink followed below ROOT) and listed into a :class:`DirState`:
the live entries as they are, plus, in a ``FINISHED_*`` dir, one directory per archived
session — from the per-session archives' names and each pack's own index (the tail of
the pack: seek table + names), nothing decompressed. Entering an archived session decodes
its tar once (a per-session archive whole; one frame of a pack) into a bounded LRU cache.

What wins when a name is found twice: the live dir (a session not swept yet, or restored),
then a per-session archive (in FORMATS order), then the last pack (in name order) and, in
a pack, the last frame — as ``Pack.find`` does.

Hidden, since they were not there before a sweep: the archives and packs that stand for
sessions, this tool's state (``.session-archive``, its lock files), the trash
``.<name>.deleting`` of an archived session and ``*.tmp`` leftovers of an archive write.

Changes (sweep, repack, prune while mounted) show within *ttl* seconds: a DirState older
than that is re-checked (the dir's fstat; a changed dir is listed again, an unchanged one
only re-lstats its live entries), and a pack is re-read only when its (inode, size,
mtime) changed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from archive_tool import fs
from archive_tool.errors import ArchiveError, BadRoot, UnsafeArchive
from archive_tool.guard.lock import LOCK_NAME
from archive_tool.mount.listed import LISTED_CACHE, CatalogListings, ListedSessions, Source
from archive_tool.mount.session import (
    LRU,
    Entry,
    SessionTree,
    decode_archive,
    decode_frame,
    index_session,
)
from archive_tool.mount.spans import Spans
from archive_tool.names import (
    FINISHED_STATES,
    FORMATS,
    TMP_SUFFIX,
    is_session_name,
    session_of_trash,
    split_archive_name,
)
from archive_tool.pack import entrypath, packfile, seekable

log = logging.getLogger("archive_tool.mount")
# Real dirs whose listing is kept (LRU); each holds an lstat per entry.
MAX_DIRS = 20_000
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class PackIndex:
    ident: tuple[int, int, int]
    frames: seekable.SeekTable
    names: list[str]


@dataclass
class DirState:
    checked: float
    ident: tuple[int, int, int, int]  # ino, mtime_ns, ctime_ns, size
    live: dict[str, os.stat_result] = field(default_factory=dict)
    archived: dict[str, Source] = field(default_factory=dict)


class Node(NamedTuple):
    """A resolved path: live (*rel* below ROOT, its lstat) or inside an archived session
    (*tree*, *rel* inside it)."""

    live: bool
    rel: str
    st: os.stat_result | None = None
    tree: SessionTree | None = None
    entry: Entry | None = None


def _ident(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _hidden_state(name: str) -> bool:
    return name in (fs.STATE_DIR, LOCK_NAME) or (
        name.startswith(fs.STATE_DIR + ".shard-") and name.endswith(".lock"))


class View(ListedSessions):
    def __init__(self, root: str | os.PathLike[str], cache_bytes: int = 64 << 20,
                 ttl: float = 1.0, tmp_dir: str | None = None, catalog: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        try:
            self.root_fd = fs.open_trusted_dir(self.root)
        except OSError as e:
            raise BadRoot(self.root, f"cannot open: {e.strerror or e}") from None
        self.ttl = ttl
        self.tmp_dir = tmp_dir
        # Bounded too: a live tree of millions of dirs must not pin a stat per entry.
        self.dirs: OrderedDict[str, DirState] = OrderedDict()
        self.packs: dict[str, PackIndex] = {}
        self.cache = LRU(cache_bytes)
        self.listed_cache = LRU(LISTED_CACHE)
        # Refused sessions by source identity: logged once, not decoded again until the
        # file changes.
        self.refused: dict[tuple[str, Source], str] = {}
        self.spans = Spans()  # sessions of --pack auto packs, by their dirs (spans.py)
        # Sessions listed from the catalog (listed.py), and those whose catalog listing
        # disagreed with their archive: listed by decoding from then on.
        self.use_catalog = catalog
        self.catalogs: dict[str, CatalogListings] = {}
        self.catalog_chain: dict[str, tuple[float, list[CatalogListings]]] = {}
        self.bad_listing: set[tuple[str, str, Source]] = set()
        self.decodes = 0  # archives decoded (what tests and benchmarks count)

    def close(self) -> None:
        for c in self.catalogs.values():
            c.close()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # -- real directories -------------------------------------------------------------

    def _open_dir(self, rel: str) -> int:
        return fs.open_beneath(self.root_fd, rel) if rel else os.dup(self.root_fd)

    def dir_state(self, rel: str) -> DirState:
        now = time.monotonic()
        ds = self.dirs.get(rel)
        if ds is not None:
            self.dirs.move_to_end(rel)
            if now - ds.checked < self.ttl:
                return ds
        try:
            fd = self._open_dir(rel)
        except OSError as e:
            self.dirs.pop(rel, None)
            raise OSError(e.errno, e.strerror, rel) from None
        try:
            st = os.fstat(fd)
            ident = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            if ds is not None and ds.ident == ident:
                ds.live = {n: s for n in ds.live if (s := _lstat(fd, n)) is not None}
                ds.checked = now
                return ds
            ds = self._list(rel, fd, ident, now)
        finally:
            os.close(fd)
        self.dirs[rel] = ds
        while len(self.dirs) > MAX_DIRS:
            self.dirs.popitem(last=False)
        return ds

    def _list(self, rel: str, fd: int, ident: tuple[int, int, int, int], now: float) -> DirState:
        ds = DirState(now, ident)
        self.spans.forget(rel)
        # ROOT itself may be a FINISHED_* dir (mount just one script's runs).
        finished = os.path.basename(rel or self.root) in FINISHED_STATES
        archives: dict[str, Source] = {}
        packs: list[tuple[str, os.stat_result]] = []
        trash: list[str] = []
        with os.scandir(fd) as it:
            for de in it:
                name = de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                if _hidden_state(name):
                    continue
                if stat.S_ISREG(st.st_mode) and packfile.is_pack_name(name) and not finished:
                    if self.spans.add(rel, name, self._pack_index(rel, fd, name, st), st.st_uid):
                        continue  # a --pack auto pack: not part of the tree as it was
                if finished and stat.S_ISREG(st.st_mode):
                    if packfile.is_pack_name(name):
                        packs.append((name, st))
                        continue
                    if name.endswith(TMP_SUFFIX) and split_archive_name(name[:-len(TMP_SUFFIX)]):
                        continue
                    split = split_archive_name(name)
                    if split and is_session_name(split[0]):
                        sess, fmt = split
                        old = archives.get(sess)
                        if old is None or FORMATS.index(fmt) < FORMATS.index(old.fmt):
                            archives[sess] = Source(name, fmt, _ident(st))
                        continue
                if finished and session_of_trash(name):
                    trash.append(name)
                ds.live[name] = st
        for name, st in sorted(packs):
            idx = self._pack_index(rel, fd, name, st)
            if idx is None or self.spans.add(rel, name, idx, st.st_uid):
                continue  # (a spanning pack here: its sessions are in dirs below)
            for i, sess in enumerate(idx.names):
                old = archives.get(sess)
                if old is None or old.fmt == "pack":
                    # tuple.__new__: Source(...)/_replace cost ~1 us each, 40 % of listing
                    # a 10k-session pack's dir (cProfile).
                    archives[sess] = tuple.__new__(Source, (name, "pack", idx.ident, i, None))
        uid = os.fstat(fd).st_uid if finished and self.spans.by_pack_dir else -1
        for sess, (pname, pident, i, prel, _u) in self.spans.above(rel, uid) if uid >= 0 else ():
            archives.setdefault(sess, Source(pname, "pack", pident, i, prel))
        for sess, src in archives.items():
            if sess not in ds.live:
                ds.archived[sess] = src
        for name in trash:
            if session_of_trash(name) in ds.archived:
                del ds.live[name]
        return ds

    def _pack_index(self, rel: str, dir_fd: int, name: str, st: os.stat_result
                    ) -> PackIndex | None:
        key = f"{rel}/{name}"
        idx = self.packs.get(key)
        if idx is not None and idx.ident == _ident(st):
            return idx
        where = os.path.join(self.root, rel, name)
        try:
            pfd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
        except OSError as e:
            log.error("%s: cannot open pack: %s", where, e.strerror)
            return None
        try:
            pst = os.fstat(pfd)
            if not stat.S_ISREG(pst.st_mode):
                return None
            with packfile.Pack(where, os.dup(pfd)) as p:
                bad = [n for n in p.names if not entrypath.is_entry(n)]
                if bad:
                    raise UnsafeArchive(where, f"index names {bad[0]!r}, not a session dir name")
                idx = PackIndex(_ident(pst), p.frames, p.names)
        except ArchiveError as e:
            log.error("%s: pack refused: %s", where, e.reason)
            self.packs.pop(key, None)
            return None
        finally:
            os.close(pfd)
        self.packs[key] = idx
        return idx

    # -- archived sessions ------------------------------------------------------------

    def session(self, rel: str, name: str, src: Source) -> SessionTree:
        """The decoded session *name* of dir *rel* (cached); ArchiveError if refused."""
        key = (rel, name, src)
        tree = self.cache.get(key)
        if tree is not None:
            return tree
        why = self.refused.get(key)
        if why is not None:
            raise ArchiveError(os.path.join(self.root, rel, src.file), why)
        where = os.path.join(self.root, rel, src.file)
        if src.fmt == "pack":
            where = f"{where}::{name}"
        try:
            self.decodes += 1
            tree = self._decode(rel, name, src, where)
        except ArchiveError as e:
            log.error("%s: session refused: %s", e.path, e.reason)
            self.refused[key] = e.reason
            raise
        tree.key = key
        self.cache.put(key, tree)
        return tree

    def _decode(self, rel: str, name: str, src: Source, where: str) -> SessionTree:
        prel = rel if src.pdir is None else src.pdir  # (the members: below the entry path)
        entry = name if src.pdir is None else os.path.relpath(os.path.join(rel, name), prel)
        dfd = self._open_dir(prel)
        try:
            fd = os.open(src.file, _OPEN_FILE, dir_fd=dfd)
        except FileNotFoundError:
            # Swept, repacked or pruned since the listing: the caller lists again.
            raise
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or _ident(st) != src.ident:
                raise FileNotFoundError(errno.ENOENT, "changed since listed", src.file)
            if src.fmt == "pack":
                idx = self.packs[f"{prel}/{src.file}"]
                blob = decode_frame(fd, idx.frames[src.frame], where)
            else:
                blob = decode_archive(os.dup(fd), src.fmt, where, self.tmp_dir)
        finally:
            os.close(fd)
        return index_session(entry, blob, where, st.st_mtime_ns)

    # -- paths ------------------------------------------------------------------------

    def resolve(self, path: str) -> Node:
        """The node at *path* ("/a/b"); OSError ENOENT/ENOTDIR/EIO as a filesystem would."""
        parts = [p for p in path.split("/") if p]
        rel = ""
        for i, part in enumerate(parts):
            ds = self.dir_state(rel)
            st = ds.live.get(part)
            here = f"{rel}/{part}" if rel else part
            if st is not None:
                if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.ENOTDIR, "not a directory", path)
                rel = here
                continue
            src = ds.archived.get(part)
            if src is None:
                raise OSError(errno.ENOENT, "no such file or directory", path)
            tree = self.listed(rel, part, src)
            inner = "/".join(parts[i + 1:])
            entry = tree.entries.get(inner)
            if entry is None:
                # Below a symlink or a file, or absent: a kernel walks symlinks itself.
                up = inner.rpartition("/")[0]
                parent = tree.entries.get(up)
                if parent is not None and not stat.S_ISDIR(parent.mode):
                    raise OSError(errno.ENOTDIR, "not a directory", path)
                raise OSError(errno.ENOENT, "no such file or directory", path)
            return Node(False, inner, None, tree, entry)
        if not rel:
            return Node(True, "", os.fstat(self.root_fd))
        return Node(True, rel, st)

    def _session_retry(self, rel: str, name: str, src: Source) -> SessionTree:
        try:
            return self.session(rel, name, src)
        except FileNotFoundError:
            pass
        except ArchiveError as e:
            raise OSError(errno.EIO, f"archive refused: {e.reason}", e.path) from None
        # The archive moved under us (a sweep/repack while mounted): list the dir now.
        self.dirs.pop(rel, None)
        ds = self.dir_state(rel)
        src2 = ds.archived.get(name)
        if src2 is None:
            raise OSError(errno.ENOENT, "no such file or directory", name)
        try:
            return self.session(rel, name, src2)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "no such file or directory", name) from None
        except ArchiveError as e:
            raise OSError(errno.EIO, f"archive refused: {e.reason}", e.path) from None

    def listdir(self, path: str) -> list[tuple[str, int]]:
        """(name, st_mode) of each entry of the directory at *path*."""
        node = self.resolve(path)
        if node.live:
            if not stat.S_ISDIR(node.st.st_mode):  # type: ignore[union-attr]
                raise OSError(errno.ENOTDIR, "not a directory", path)
            ds = self.dir_state(node.rel)
            out = [(n, s.st_mode) for n, s in ds.live.items()]
            out += [(n, stat.S_IFDIR | 0o755) for n in ds.archived]
            return out
        tree, rel = node.tree, node.rel
        if not stat.S_ISDIR(node.entry.mode):  # type: ignore[union-attr]
            raise OSError(errno.ENOTDIR, "not a directory", path)
        pre = f"{rel}/" if rel else ""
        return [(n, tree.entries[pre + n].mode) for n in tree.children[rel]]  # type: ignore[union-attr]

    def open_live(self, rel: str) -> int:
        """An fd on the live regular file *rel*, opened below ROOT without following any
        symlink (a swap between stat and open cannot redirect it)."""
        parent, _, name = rel.rpartition("/")
        dfd = self._open_dir(parent)
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=dfd)
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EACCES, "not a regular file", rel)
        return fd

    def readlink_live(self, rel: str) -> str:
        parent, _, name = rel.rpartition("/")
        dfd = self._open_dir(parent)
        try:
            return os.readlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
