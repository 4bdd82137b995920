"""Where a pack's session lives, relative to the pack's own dir (issue 26, ``--pack auto``).

A pack written per FINISHED_* dir (``--pack daily|weekly|N``) sits beside its sessions:
its index names each session by its dir name (``<ID>-main``) and each frame's tar members
start with that name. A pack of ``--pack auto`` spans dirs: it sits in the deepest common
dir of its sessions, and its index and tar members use each session's path relative to
that dir (``proj/a_out/FINISHED_SUCCESS/<ID>-main``), so ``tar -xf PACK`` run in the pack's
dir puts every session back where it was. The per-dir pack is the special case of a path
with one component.

The index is the tree owner's to forge (an archive is hostile input), so an entry path
becomes a path only through :func:`check_entry` and is walked only by
:func:`open_entry_dir`: one component at a time from the pack's dir fd, never through a
symlink, never above the pack's dir.
"""

from __future__ import annotations

import errno
import os

from archive_tool import fs
from archive_tool.errors import UnsafeArchive
from archive_tool.names import RUNNING_STATE, is_session_name

# A spanning pack's entry is at most this deep below the pack (a tree of projects, scripts
# and states is 3-6 deep): bounds what a forged index can make a restore walk or create.
MAX_DEPTH = 32


def is_entry(path: object) -> bool:
    """A plain relative path whose last component is a session dir name and whose dirs are
    neither hidden, ``.``/``..``, empty, session dirs nor RUNNING/ (a session is never
    inside another, nor packed from RUNNING/)."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
        return False
    parts = path.split("/")
    if len(parts) > MAX_DEPTH or not is_session_name(parts[-1]):
        return False
    return all(p and not p.startswith(".") and p != RUNNING_STATE and not is_session_name(p)
               for p in parts[:-1])


def check_entry(pack: str, path: object) -> str:
    """*path* if :func:`is_entry`; UnsafeArchive naming *pack* otherwise."""
    if not is_entry(path):
        shown = path if isinstance(path, str) and len(path) < 200 else repr(path)[:200]
        raise UnsafeArchive(pack, f"index names {shown!r}, not a session dir name (or path "
                                   "below the pack); refused")
    return path  # type: ignore[return-value]


def split(path: str) -> tuple[str, str]:
    """(dir relative to the pack's dir, "" when beside it; session dir name)."""
    d, _, name = path.rpartition("/")
    return d, name


def name_of(path: str) -> str:
    """The session dir name of an entry path."""
    return path.rpartition("/")[2]


def open_entry_dir(pack_dir_fd: int, rel_dir: str, create: bool = False,
                   owner: tuple[int, int] | None = None, only_uid: int | None = None) -> int:
    """The dir *rel_dir* below the pack's dir fd, walked one component at a time with
    O_NOFOLLOW (a symlinked component is ELOOP, never followed). With *create*, missing
    dirs are made (mode 0o755 less the umask, as ``tar -xf`` makes them) and, with
    *owner*, given to that owner (root restoring a user's pack). With *only_uid*, the
    pack's dir and every dir walked must belong to that uid (EPERM otherwise): root
    restoring a user's spanning pack must not write into a dir of someone else, which a
    pack the user planted in a shared dir could otherwise name."""
    fd = os.dup(pack_dir_fd)
    try:
        _owned(fd, only_uid, rel_dir)
        for part in rel_dir.split("/") if rel_dir else ():
            if part in ("", ".", ".."):
                raise OSError(errno.EPERM, "not a plain path below the pack", rel_dir)
            try:
                nxt = fs.open_dir(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                made = True
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    made = False  # made meanwhile: opened below like any dir, not ours
                nxt = fs.open_dir(part, fd)
                if made and owner is not None:
                    os.fchown(nxt, *owner)
            os.close(fd)
            fd = nxt
            _owned(fd, only_uid, rel_dir)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owned(fd: int, uid: int | None, rel_dir: str) -> None:
    if uid is not None and os.fstat(fd).st_uid != uid:
        raise OSError(errno.EPERM, "a dir on the way belongs to another user than the pack",
                      rel_dir)


class EntryDirs:
    """The dirs of a spanning pack's sessions, opened below the pack's dir fd by
    :func:`open_entry_dir` (so a session reached through it truly is at its entry path
    below the pack), at most *limit* open at once: a pack may span hundreds of dirs."""

    def __init__(self, pack_dir_fd: int, create: bool = False,
                 owner: tuple[int, int] | None = None, limit: int = 32, base: str = "") -> None:
        self.pack_dir_fd, self.create, self.owner, self.limit = pack_dir_fd, create, owner, limit
        self.base = base  # the pack's dir as a path, for parent()
        self._fds: dict[str, int] = {}

    def parent(self, path: str) -> tuple[int, str]:
        """(fd of *path*'s dir, opened below the pack's dir *base*; basename): what
        fs.DirCache.parent gives, for single.lock_batch. The fd belongs to the cache."""
        d, name = os.path.split(path)
        rel = os.path.relpath(d, self.base)
        if rel.startswith("../") or rel == "..":
            raise OSError(errno.EPERM, "not below the pack's dir", path)
        return self.get("" if rel == "." else rel), name

    def get(self, rel_dir: str) -> int:
        """The fd of *rel_dir* ("" = the pack's dir itself); the fd belongs to the cache."""
        if not rel_dir:
            return self.pack_dir_fd
        fd = self._fds.pop(rel_dir, None)
        if fd is None:
            fd = open_entry_dir(self.pack_dir_fd, rel_dir, self.create, self.owner)
            while len(self._fds) >= self.limit:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[rel_dir] = fd  # re-inserted: the dict's order is the LRU order
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __enter__(self) -> EntryDirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def by_dir(names: list[str]) -> dict[str, dict[str, int]] | None:
    """A spanning pack's index as {dir below the pack: {session name: frame}} (the last
    frame of a name winning, as packfile.find_session picks); None for a per-dir pack."""
    if not any("/" in n for n in names):
        return None
    out: dict[str, dict[str, int]] = {}
    for i, n in enumerate(names):
        d, _, name = n.rpartition("/")
        out.setdefault(d, {})[name] = i
    return out
