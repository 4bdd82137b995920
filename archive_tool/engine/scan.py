"""Read one session dir into a manifest: every entry, its type, size and stat fingerprint.

The manifest is what gets archived, what the archive is checked against, and what must
still be true of the source just before it is deleted.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from archive_tool import fdwalk, fs
from archive_tool.engine import attrs
from archive_tool.errors import SourceUnreadable, UnsafeSource
from archive_tool.guard import interrupt

FILE, DIR, LINK = "f", "d", "l"
# A second name of a regular file already in the manifest (a tar hard link; no content).
HARD = "h"


@dataclass(slots=True)
class Entry:
    rel: str  # path below the session dir ("" for the dir itself), "/"-separated
    kind: str  # FILE, DIR or LINK
    size: int  # bytes of content (0 for dirs and links)
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    uid: int
    gid: int
    linkname: str = ""  # a symlink's target; for HARD, the rel of the file it links to
    # Extended attributes that travel (attrs.py): read by scan for dirs, by tarwrite from
    # the open file for files (the ctime check there covers a change after the scan).
    xattrs: list[tuple[str, bytes]] | None = None
    blocks: int = 0  # st_blocks (512-byte units): what the inode costs on disk, as du counts

    def fingerprint(self) -> tuple[int, int, int, int]:
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns)


def _entry(rel: str, st: os.stat_result, kind: str, linkname: str = "") -> Entry:
    return Entry(
        rel,
        kind,
        st.st_size if kind == FILE else 0,
        st.st_mode,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_uid,
        st.st_gid,
        linkname,
        blocks=st.st_blocks,
    )


def scan_session(src: str, dirs: fs.DirCache | None = None) -> list[Entry]:
    """Manifest of the session dir *src* (see :func:`scan_fd`), opened without following a
    symlink at its last component (and, with *dirs*, at any component below the root)."""
    try:
        if dirs is not None:
            parent_fd, name = dirs.parent(src)
            fd = fs.open_dir(name, parent_fd)
        else:
            with fs.parent_of(src) as (parent_fd, name):
                fd = fs.open_dir(name, parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeSource(src, "not a directory") from None
        raise SourceUnreadable(src, e.strerror or str(e)) from None
    try:
        return scan_fd(fd, src)
    finally:
        os.close(fd)


def scan_fd(top_fd: int, where: str, held: dict[str, int] | None = None,
            top_st: os.stat_result | None = None) -> list[Entry]:
    """Manifest of the open session dir *top_fd*, parents before children, names sorted
    (deterministic archives). *where* names it in errors. With *held*, the subdir fds the
    walk opened (and checked) are kept there (rel -> fd, up to fdwalk.HELD_DIRS_MAX) for the
    tar writer, instead of being closed and opened again; the caller closes them.
    *top_st*: an fstat of *top_fd* the caller already has (the lock's).

    Walks by fds (fs.py): every subdir is opened O_NOFOLLOW relative to its parent and
    must be the inode its lstat showed, so a dir swapped for a symlink mid-walk is refused,
    never followed out of the session.

    Refuses (UnsafeSource) FIFOs, sockets and device files, and symlinks whose target is
    absolute or resolves outside the session: tarfile silently drops sockets, and the
    ``data`` extraction filter refuses the rest, so archiving them would produce an archive
    that cannot be restored safely — the one thing we must never delete a source for.
    """
    st = os.fstat(top_fd) if top_st is None else top_st
    entries = [_entry("", st, DIR)]
    as_root = os.geteuid() == 0
    entries[0].xattrs = _dir_xattrs(top_fd, where, as_root)
    links: dict[str, str] = {}
    _walk(top_fd, "", entries, links, where, {}, as_root, held)
    if links:
        bad = escaping_link({e.rel: e.kind for e in entries}, links)
        if bad is not None:
            rel, target = bad
            raise UnsafeSource(os.path.join(where, rel),
                               f"symlink {target!r} points outside the session; session kept")
    return entries


def _dir_xattrs(fd: int, where: str, as_root: bool) -> list[tuple[str, bytes]] | None:
    try:
        return attrs.read_fd(fd, as_root)
    except ValueError as e:
        raise UnsafeSource(where, f"{e}; session kept") from None
    except OSError as e:
        raise SourceUnreadable(where, e.strerror or str(e)) from None


def _walk(dir_fd: int, rel: str, out: list[Entry], links: dict[str, str], where: str,
          inodes: dict[tuple[int, int], str], as_root: bool,
          held: dict[str, int] | None = None) -> None:
    here = os.path.join(where, rel) if rel else where
    try:
        items = fs.scandir_sorted(dir_fd)
    except OSError as e:
        raise SourceUnreadable(here, e.strerror or str(e)) from None
    for item in items:
        interrupt.check()  # a scan of a huge session stops on SIGTERM too
        r = f"{rel}/{item.name}" if rel else item.name
        # A dir (by the listing's d_type: no call) is opened O_NOFOLLOW and its fstat is
        # its manifest entry: the stat is of the very inode we walk into, so no lstat
        # before the open and no identity check after it (one call per dir, issue 24).
        # Swapped for a symlink or a file since the listing: ELOOP/ENOTDIR, session kept.
        if item.is_dir(follow_symlinks=False):
            path = os.path.join(where, r)
            try:
                sub = fs.open_dir(item.name, dir_fd)
            except OSError as e:
                raise SourceUnreadable(path, e.strerror or str(e)) from None
            try:
                st = os.fstat(sub)
            except OSError as e:
                os.close(sub)
                raise SourceUnreadable(path, e.strerror or str(e)) from None
            ent = _entry(r, st, DIR)
            out.append(ent)
            _walk_sub(sub, ent, out, links, where, inodes, as_root, held)
            continue
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as e:
            raise SourceUnreadable(os.path.join(where, r), e.strerror or str(e)) from None
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                # Names of one inode after the first become tar hard links (as GNU tar
                # does), restored as links again instead of separate copies.
                first = inodes.setdefault((st.st_dev, st.st_ino), r)
                if first != r:
                    out.append(Entry(r, HARD, 0, st.st_mode, st.st_mtime_ns, st.st_ctime_ns,
                                     st.st_ino, st.st_uid, st.st_gid, first))
                    continue
            out.append(_entry(r, st, FILE))
            continue
        path = os.path.join(where, r)  # for messages; not built for the many plain files
        if stat.S_ISDIR(mode):  # d_type said otherwise (DT_UNKNOWN filesystems)
            ent = _entry(r, st, DIR)
            out.append(ent)
            try:
                sub = fs.open_dir(item.name, dir_fd, expect=st)
            except OSError as e:
                raise SourceUnreadable(path, e.strerror or str(e)) from None
            _walk_sub(sub, ent, out, links, where, inodes, as_root, held)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(item.name, dir_fd=dir_fd)
            except OSError as e:
                raise SourceUnreadable(path, e.strerror or str(e)) from None
            if os.path.isabs(target):
                raise UnsafeSource(path, f"symlink to absolute path {target!r}; session kept")
            links[r] = target
            out.append(_entry(r, st, LINK, target))
        else:
            what = (
                "FIFO" if stat.S_ISFIFO(mode)
                else "socket" if stat.S_ISSOCK(mode)
                else "device file"
            )
            raise UnsafeSource(path, f"{what} cannot be archived safely; session kept")


def _walk_sub(sub: int, ent: Entry, out: list[Entry], links: dict[str, str], where: str,
              inodes: dict[tuple[int, int], str], as_root: bool,
              held: dict[str, int] | None) -> None:
    """Read the xattrs of the opened subdir *sub* (its entry *ent*) and walk it; keep its fd
    in *held* (the caller closes those) or close it."""
    r = ent.rel
    keep = held is not None and len(held) < fdwalk.HELD_DIRS_MAX
    if keep:
        held[r] = sub  # type: ignore[index]
    try:
        ent.xattrs = _dir_xattrs(sub, os.path.join(where, r), as_root)
        _walk(sub, r, out, links, where, inodes, as_root, held)
    finally:
        if not keep:
            os.close(sub)


def escaping_link(kinds: dict[str, str], links: dict[str, str]) -> tuple[str, str] | None:
    """The first symlink (rel, target) that resolves outside the tree, or None.

    Resolved against the manifest itself, not the live filesystem: "a -> ." then
    "b -> a/../x" leaves the tree though it looks inside lexically, and a realpath() of
    the live tree would follow whatever a user swapped in meanwhile. Dangling targets
    inside the tree are allowed (they restore as the same dangling link).
    """
    for rel, target in links.items():
        if _resolve(rel.rpartition("/")[0], target, kinds, links, 0) is None:
            return rel, target
    return None


def _resolve(base: str, target: str, kinds: dict[str, str], links: dict[str, str],
             depth: int) -> str | None:
    if depth > 40:  # ELOOP, as the kernel would say: refuse rather than guess
        return None
    parts = base.split("/") if base else []
    pending = target.split("/")
    while pending:
        c = pending.pop(0)
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(c)
        cur = "/".join(parts)
        if kinds.get(cur) == LINK:
            parts.pop()
            resolved = _resolve("/".join(parts), links[cur], kinds, links, depth + 1)
            if resolved is None:
                return None
            parts = resolved.split("/") if resolved else []
    return "/".join(parts)


def newest_mtime_ns(entries: list[Entry]) -> int:
    return max(e.mtime_ns for e in entries)


# Above this many content bytes (content_bytes) a session streams instead of being built
# in memory (single.py); packs hold only sessions below it (packsalvage.py's bound). Here,
# not in single.py, so a pack reader does not load the archiver (issue 24).
IN_MEMORY_LIMIT = 32 * 1024 * 1024


def content_bytes(entries: list[Entry]) -> int:
    return sum(e.size for e in entries)
