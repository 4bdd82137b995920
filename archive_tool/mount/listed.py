"""Archived sessions listed from the catalog's ``listing`` table (catalog/listing.py):
what lets ``mount`` answer ``ls -R`` without decompressing a single archive.

The catalog is the tree owner's to forge (guard/untrusted.py), so it is used for listing
and nothing else:

- it is opened by ``catalog.connect_ro`` (owner, regular file, schema, query time limit);
  a catalog that is refused, missing, or older than the listing table means every session
  is listed by decoding it, as before;
- a row counts only for the archive the mount found on disk: same path and frame, same
  session name, and the size the archive has now (a pack frame's offset and compressed
  size from the pack's own seek table; a per-session archive's file size), so a stale row
  (a repack, a re-archive) is not used;
- its entries are checked (catalog/listing.parse) and become a tree *without bytes*: a
  read goes to the archive, whose decoded tree must match the listing entry for entry
  (view.View.verified) before any byte is served.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
from typing import Any, NamedTuple

from archive_tool.catalog import catalog, listing
from archive_tool.errors import ArchiveError
from archive_tool.mount.session import LRU, Entry, SessionTree, build_tree

log = logging.getLogger("archive_tool.mount")

# Trees listed from the catalog are cheap to make again (one indexed query, ~50 us) and
# cost ~3x their accounted size in Python objects: a small cache of its own, enough for
# the sessions a walk is inside at once, keeps 100k listed sessions from filling memory.
LISTED_CACHE = 4 << 20
# A sweep holds the catalog's write lock for a batch: the single-threaded mount waits at
# most this long, then lists that session by decoding it.
BUSY_MS = 20


class Source(NamedTuple):
    """Where an archived session lives: *file* in the same dir, its identity (inode,
    size, mtime) as listed, and for a pack the frame."""

    file: str
    fmt: str  # a FORMATS name, or "pack"
    ident: tuple[int, int, int]
    frame: int = -1
    pdir: str | None = None  # a --pack auto pack's dir (relative to ROOT), if not this one


class CatalogListings:
    """The read-only catalog of *root*, reopened when its file is replaced (a rebuild)
    or appears, looked at most once per *ttl* seconds."""

    def __init__(self, root: str, ttl: float) -> None:
        self.root, self.ttl = root, ttl
        self.path = catalog.catalog_path(root)
        self.conn: sqlite3.Connection | None = None
        self.ident: tuple[int, int, int] | None = None
        self.checked = float("-inf")
        self.has_table = False
        self.said: str | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _note(self, why: str) -> None:
        if why != self.said:  # once per reason, not once per session
            self.said = why
            log.info("%s: %s; archived sessions are listed by decoding them", self.path, why)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self.checked < self.ttl:
            return
        self.checked = now
        try:
            st = os.stat(self.path, follow_symlinks=False)
            ident = (st.st_dev, st.st_ino, st.st_ctime_ns)
        except OSError:
            ident = None
        if ident is not None and ident == self.ident and self.conn:
            return
        if ident is not None and self.ident and ident[:2] == self.ident[:2] and self.conn:
            # Written since (a sweep's rows; or the owner's hand): the schema checked again,
            # as connect_ro checked it, and a table added since picked up.
            self.ident = ident
            try:
                got = set(self.conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
            except sqlite3.Error:
                got = set()
            if got == catalog.expected_schema():
                self.has_table = True
                return
            if got == catalog.legacy_schema():
                self.has_table = False
                return
        self.close()
        self.ident = ident
        if ident is None:
            return
        try:
            conn = catalog.connect_ro(self.root)
        except (ArchiveError, sqlite3.Error, OSError) as e:
            self._note(f"catalog not used ({e})")
            return
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            self.has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='listing'"
            ).fetchone() is not None
        except sqlite3.Error as e:
            conn.close()
            self._note(f"catalog not used ({e})")
            return
        self.conn = conn
        if not self.has_table:
            self._note("catalog without member lists (written before them; "
                       "`catalog --rebuild` adds them)")

    def available(self) -> bool:
        self._refresh()
        return self.conn is not None and self.has_table

    def get(self, archive: str, frame: int, name: str, offset: int, size: int,
            root_only: bool = False) -> dict[str, listing.Member] | None:
        """The checked member list of session *name* in *archive* (relative to the root)
        at *frame* (-1: a per-session archive), if the catalog has one that matches the
        archive as found on disk (*offset*, compressed *size*); else None."""
        self._refresh()
        if self.conn is None or not self.has_table:
            return None
        try:
            row = self.conn.execute(
                "SELECT s.name, s.offset, s.bytes_out, l.data FROM sessions s JOIN listing l"
                " ON l.sid = s.sid WHERE s.archive=? AND s.frame=? ORDER BY s.sid DESC"
                " LIMIT 1", (archive, frame)).fetchone()
        except sqlite3.Error:
            return None  # busy (a sweep writing) or refused: decode this one
        if row is None or row[0] != name or row[1] != offset or row[2] != size:
            return None
        return listing.parse(row[3], root_only)


class ListedSessions:
    """View's half that lists archived sessions from the catalog (a mixin: it uses the
    view's cache, pack indexes and decoding)."""

    cache: LRU
    listed_cache: LRU
    packs: dict[str, Any]
    use_catalog: bool
    catalogs: dict[str, CatalogListings]
    catalog_chain: dict[str, tuple[float, list[CatalogListings]]]
    ttl: float
    bad_listing: set[tuple[str, str, Source]]
    root: str

    def _session_retry(self, rel: str, name: str, src: Source) -> SessionTree:
        raise NotImplementedError

    def resolve(self, path: str) -> Any:
        raise NotImplementedError

    def dir_state(self, rel: str) -> Any:
        raise NotImplementedError

    def listed(self, rel: str, name: str, src: Source, decode: bool = True
               ) -> SessionTree | None:
        """Session *name* of dir *rel* to list: its decoded tree if cached, else its
        listing from the catalog (no bytes: see :meth:`verified`), else (with *decode*)
        decoded now; None without *decode* when only decoding could list it."""
        key = (rel, name, src)
        tree = self.cache.get(key)
        if tree is not None:
            return tree
        lkey = ("listing", rel, name, src)
        if key not in self.bad_listing:
            tree = self.listed_cache.get(lkey)
            if tree is None and (tree := self._from_catalog(rel, name, src)) is not None:
                self.listed_cache.put(lkey, tree)
            if tree is not None:
                return tree
        return self._session_retry(rel, name, src) if decode else None

    def _from_catalog(self, rel: str, name: str, src: Source, root_only: bool = False
                      ) -> SessionTree | None:
        # A --pack auto pack's sessions (spans.py) are listed by decoding their frame:
        # their catalog rows are keyed by the pack's dir, not the session's.
        if not self.use_catalog or src.pdir is not None:
            return None
        if src.fmt == "pack":
            idx = self.packs.get(f"{rel}/{src.file}")
            if idx is None or idx.ident != src.ident:
                return None
            f = idx.frames[src.frame]
            frame, offset, size = src.frame, f.offset, f.csize
        else:
            frame, offset, size = -1, 0, src.ident[1]
        where = os.path.join(self.root, rel, src.file)
        for cat in self._catalogs_of(os.path.dirname(where)):
            # where is below cat.root (a dir above it): the row's path is the rest.
            members = cat.get(where[len(cat.root.rstrip("/")) + 1:], frame, name, offset,
                              size, root_only)
            if members is not None:
                break
        else:
            return None
        entries = {r: Entry(m.mode, m.size, m.mtime_ns, m.uid, m.gid, -1, m.link)
                   for r, m in members.items()}
        tree = build_tree(name, None, entries, src.ident[2])
        tree.key = (rel, name, src)
        return tree

    def _session_attrs(self, rel: str, name: str, src: Source) -> Entry | None:
        """The attributes of an archived session's own dir for a listing of the dir above:
        from a tree in a cache, else the first entry of its catalog listing alone (not
        kept: a walk of a 10k-session dir enters each session later, one at a time)."""
        key = (rel, name, src)
        tree = self.cache.get(key)
        if tree is None and key not in self.bad_listing:
            tree = self.listed_cache.get(("listing", *key))
            if tree is None:
                tree = self._from_catalog(rel, name, src, root_only=True)
        return tree.entries[""] if tree is not None else None

    def _catalogs_of(self, d: str) -> list[CatalogListings]:
        """The catalogs that may hold a row for an archive in dir *d*: the one of each
        sweep root it could have been swept from, i.e. *d* and every dir above it (also
        above ROOT: a mount of one project of a swept tree), nearest first; those without
        a catalog file cost a stat a second."""
        now = time.monotonic()
        hit = self.catalog_chain.get(d)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        out, start = [], d
        while True:
            c = self.catalogs.get(d)
            if c is None:
                c = self.catalogs[d] = CatalogListings(d, self.ttl)
            if c.available():
                out.append(c)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        self.catalog_chain[start] = (now, out)
        return out

    def verified(self, tree: SessionTree) -> SessionTree:
        """The decoded tree behind *tree*. For a tree listed from the catalog: decoded
        now, and every entry compared with the listing (the kernel checked permissions
        against the listed owner and mode): a difference is a forged or stale catalog,
        logged, the listing dropped for good, and EIO. The caller (fusefs) then checks
        the reader's permission against the decoded entries itself: the kernel checked it
        against listed attributes, which may have been the catalog's word."""
        if tree.blob is not None:
            return tree
        rel, name, src = tree.key  # type: ignore[misc]
        real = self._session_retry(rel, name, src)
        if not _same_entries(tree.entries, real.entries):
            self.bad_listing.add(tree.key)  # type: ignore[arg-type]
            self.listed_cache.discard(("listing", *tree.key))  # type: ignore[misc]
            where = os.path.join(self.root, rel, src.file)
            log.error("%s: catalog listing of %s does not match the archive; listed from "
                      "the archive from now on", where, name)
            raise OSError(errno.EIO, "catalog listing does not match the archive", name)
        return real

    def listdir_plus(self, path: str) -> list[tuple[str, int, os.stat_result | Entry | None]]:
        """(name, st_mode, attributes) of each entry of the directory at *path*, the
        attributes given for subdirectories only (what ``ls -R`` will enter: a kernel
        doing READDIRPLUS then needs no LOOKUP for them; files are left to a LOOKUP, so
        the kernel and libfuse keep no node for every file of a tree listed once). An
        archived session's attributes come only from a cached tree or the catalog: a
        listing never decodes a session."""
        node = self.resolve(path)
        if node.live:
            if not stat.S_ISDIR(node.st.st_mode):  # type: ignore[union-attr]
                raise OSError(errno.ENOTDIR, "not a directory", path)
            ds = self.dir_state(node.rel)
            out: list[tuple[str, int, os.stat_result | Entry | None]] = [
                (n, s.st_mode, s if stat.S_ISDIR(s.st_mode) else None)
                for n, s in ds.live.items()]
            for n, src in list(ds.archived.items()):
                out.append((n, stat.S_IFDIR | 0o755, self._session_attrs(node.rel, n, src)))
            return out
        tree, rel = node.tree, node.rel
        if not stat.S_ISDIR(node.entry.mode):  # type: ignore[union-attr]
            raise OSError(errno.ENOTDIR, "not a directory", path)
        pre = f"{rel}/" if rel else ""
        res = []
        for n in tree.children[rel]:  # type: ignore[union-attr]
            e = tree.entries[pre + n]  # type: ignore[union-attr]
            res.append((n, e.mode, e if stat.S_ISDIR(e.mode) else None))
        return res


def _same_entries(a: dict[str, Entry], b: dict[str, Entry]) -> bool:
    """Same paths with the same attributes (the data offset aside: a listing has none)."""
    return a.keys() == b.keys() and all(a[k][:5] == b[k][:5] and a[k].link == b[k].link
                                        for k in a)
