"""Step 5 of commit.py's order: once the archive is durable under its final name, rename
the source to a hidden trash name, check nothing in it changed since it was read, then
delete it (a crash mid-delete leaves only ``.<name>.deleting``, which the next sweep
removes because the archive exists)."""

from __future__ import annotations

import errno
import os
import stat

from archive_tool import fdwalk, fs
from archive_tool.engine import commit
from archive_tool.engine.scan import DIR, FILE, HARD, Entry
from archive_tool.errors import (
    SourceChanged,
)
from archive_tool.guard import interrupt
from archive_tool.names import trash_name


def _same(entry: Entry, st: os.stat_result) -> bool:
    if entry.kind == DIR:
        return stat.S_ISDIR(st.st_mode) and st.st_ino == entry.ino
    # A HARD entry is another name of a FILE entry's inode: a regular file whose size
    # the FILE entry checks (its own size is 0, as its tar member's).
    kind_ok = (stat.S_ISREG(st.st_mode) if entry.kind in (FILE, HARD)
               else stat.S_ISLNK(st.st_mode))
    return kind_ok and entry.fingerprint() == (
        st.st_ino,
        st.st_size if entry.kind == FILE else 0,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _unchanged(top_fd: int, entries: list[Entry], held: dict[str, int] | None = None,
               scanned: dict[str, int] | None = None) -> str | None:
    """None if the tree at *top_fd* is exactly *entries*; else the first difference.
    Walked by fds: a subdir swapped for a symlink shows as changed, never followed. Every
    dir is listed (an entry that appeared shows) and every entry lstat'ed against the
    manifest (inode, size, mtime, ctime). With *held*, the subdir fds opened here (each
    checked to be the inode its lstat showed) are kept for the delete (rel -> fd, up to
    fdwalk.HELD_DIRS_MAX): it then never looks a dir up by name again (issue 24).
    *scanned*: subdir fds the scan that made *entries* opened and checked (rel -> fd); a
    dir among them is lstat'ed by name and, if that is its inode (the fd pins it: the
    number cannot be reused), listed through that fd instead of opened and fstat'ed
    again; each one used moves from *scanned* to *held*."""
    expected = {e.rel: e for e in entries if e.rel}
    scanned = scanned if scanned is not None else {}
    seen = 0
    # (rel, fd, ours to close after listing); scandir dups the fd it lists.
    stack: list[tuple[str, int, bool]] = [("", top_fd, False)]
    try:
        while stack:
            rel, fd, close = stack.pop()
            try:
                # Unsorted: order does not matter for a lookup, and this runs per session.
                with os.scandir(fd) as it:
                    items = list(it)
                for item in items:
                    r = f"{rel}/{item.name}" if rel else item.name
                    e = expected.get(r)
                    if e is None:
                        return f"{r} appeared"
                    if e.kind == DIR and r in scanned and held is not None:
                        st = item.stat(follow_symlinks=False)
                        if not _same(e, st):
                            return f"{r} changed"
                        held[r] = sub = scanned.pop(r)
                        seen += 1
                        stack.append((r, sub, False))
                        continue
                    if e.kind == DIR and item.is_dir(follow_symlinks=False):
                        # Opened O_NOFOLLOW and compared by its own fstat: the inode we
                        # checked is the one we walk into (no lstat + open + fstat).
                        sub = fs.open_dir(item.name, fd)
                        try:
                            st = os.fstat(sub)
                        except OSError:
                            os.close(sub)
                            raise
                        if not _same(e, st):
                            os.close(sub)
                            return f"{r} changed"
                    else:
                        st = item.stat(follow_symlinks=False)
                        if not _same(e, st):
                            return f"{r} changed"
                        if e.kind == DIR:  # a dir by lstat, not by d_type (DT_UNKNOWN)
                            sub = fs.open_dir(item.name, fd, expect=st)
                    seen += 1
                    if e.kind == DIR:
                        keep = held is not None and len(held) < fdwalk.HELD_DIRS_MAX
                        if keep:
                            held[r] = sub  # type: ignore[index]
                        stack.append((r, sub, not keep))
            finally:
                if close:
                    os.close(fd)
    finally:
        for _, fd, close in stack:
            if close:
                os.close(fd)
    if seen != len(expected):
        return "an entry disappeared"
    return None


def remove_source(parent_fd: int, name: str, entries: list[Entry], archive_name: str,
                  where: str, *, keep_archive: bool = False, top_fd: int | None = None,
                  scanned: dict[str, int] | None = None) -> None:
    """Delete a source whose archive is committed — unless it changed since it was read.

    Every step is relative to *parent_fd*. On a change: the source goes back under its
    name, the (now stale) archive we just made is removed (kept with *keep_archive*: one we
    did not make is never deleted), and SourceChanged is raised. A later run archives the
    new content. *top_fd*: the session dir's fd held since it was locked (the caller's);
    once the trash name is seen to be that inode, it serves the re-check and the delete
    instead of an open and fstat of the trash name. *scanned* (with *top_fd*): the
    subdir fds its scan kept (_unchanged); remove_source owns and closes them.
    """
    # Once the source is renamed to its trash name it is deleted to the end: a signal
    # (interrupt.py) waits for it rather than leave a `.<name>.deleting` behind.
    try:
        with interrupt.shielded():
            _remove_source(parent_fd, name, entries, archive_name, where, keep_archive,
                           top_fd, scanned if top_fd is not None else None)
    finally:
        if scanned:
            fdwalk.close_held(scanned)


def _remove_source(parent_fd: int, name: str, entries: list[Entry], archive_name: str,
                   where: str, keep_archive: bool, top_fd: int | None,
                   scanned: dict[str, int] | None) -> None:
    trash = trash_name(name)
    # Rename without replacing instead of a stat of the trash name first: a trash left by a
    # crash mid-delete (its archive exists) shows as EEXIST, is removed, and the rename is
    # retried. One metadata call a session fewer (issue 24).
    try:
        fs.rename_noreplace_at(parent_fd, name, parent_fd, trash)
    except FileExistsError:
        fs.rmtree_at(parent_fd, trash)
        fs.rename_noreplace_at(parent_fd, name, parent_fd, trash)
    held: dict[str, int] = {}
    try:
        _remove_trash(parent_fd, name, trash, entries, archive_name, where, keep_archive, held,
                      top_fd, scanned)
    finally:
        fdwalk.close_held(held)


def _remove_trash(parent_fd: int, name: str, trash: str, entries: list[Entry],
                  archive_name: str, where: str, keep_archive: bool,
                  held: dict[str, int], top_fd: int | None,
                  scanned: dict[str, int] | None = None) -> None:
    top = -1
    diff: str | None = None
    try:
        if top_fd is not None:
            # The rename moved whatever the name held then: the trash must be the inode
            # we locked, scanned and archived (one lstat, not an open + fstat; the held fd
            # is that inode: the manifest's top entry is its fstat).
            st = fs.lstat_at(parent_fd, trash)
            if not (stat.S_ISDIR(st.st_mode) and st.st_ino == entries[0].ino):
                diff = "the session dir was replaced"
            else:
                top = os.dup(top_fd)
        else:
            top = fs.open_dir(trash, parent_fd)
            if os.fstat(top).st_ino != entries[0].ino:
                diff = "the session dir was replaced"
        if diff is None:
            diff = _unchanged(top, entries, held, scanned if top_fd is not None else None)
    except OSError as e:
        diff = f"re-check failed: {e.strerror or e}"
    if diff is not None:
        if top >= 0:
            os.close(top)
        fs.rename_noreplace_at(parent_fd, trash, parent_fd, name)
        if not keep_archive:
            fs.unlink_at(parent_fd, archive_name)
        commit.fsync_dir(parent_fd, os.path.dirname(where))
        raise SourceChanged(where, f"changed while being archived ({diff}); source kept, archive removed")
    fs.race_point("delete", where)
    try:
        _delete(top, "", _children(entries), held)
    finally:
        os.close(top)
    try:
        os.rmdir(trash, dir_fd=parent_fd)
    except FileNotFoundError:
        pass


def _children(entries: list[Entry]) -> dict[str, list[Entry]]:
    kids: dict[str, list[Entry]] = {}
    for e in entries[1:]:
        kids.setdefault(e.rel.rpartition("/")[0], []).append(e)
    return kids


def _delete(dir_fd: int, rel: str, kids: dict[str, list[Entry]],
            held: dict[str, int] | None = None) -> None:
    """Delete exactly the manifest's entries below *dir_fd* by unlinkat/rmdir on fds we
    opened without following links (a file added after the re-check survives, and its
    dir's rmdir fails: the source is not silently emptied). A subdir in *held* is the fd
    the re-check listed and checked: used as is, so a name swapped since then (for a
    symlink or another dir) is never entered; only its final rmdir goes by name, and
    rmdir removes nothing but an empty directory."""
    for e in kids.get(rel, ()):
        name = e.rel.rpartition("/")[2]
        try:
            if e.kind == DIR:
                sub = held.get(e.rel, -1) if held else -1
                if sub >= 0:
                    _delete(sub, e.rel, kids, held)
                else:
                    sub = fs.open_dir(name, dir_fd)
                    try:
                        if os.fstat(sub).st_ino != e.ino:
                            raise OSError(errno.ESTALE, "replaced during the delete", e.rel)
                        _delete(sub, e.rel, kids, held)
                    finally:
                        os.close(sub)
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

