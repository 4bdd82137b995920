"""Directory fds held along a walk: FdStack (the fds along one path, each dir checked to be
the inode the scan recorded) and the cap on fds a session keeps between passes."""

from __future__ import annotations

import errno
import os

from archive_tool.fs import O_DIR


def close_held(held: dict[str, int]) -> None:
    while held:
        os.close(held.popitem()[1])


def _ancestor(a: str, rel: str) -> bool:
    return a == "" or rel == a or rel.startswith(a + "/")


# At most this many subdir fds of one session are kept open from one pass of a walk to the
# next (scan -> tar, re-check -> delete); a session with more dirs reopens the rest.
HELD_DIRS_MAX = 256


class FdStack:
    """Directory fds along one path of a depth-first walk (parents before children):
    ``dir_for(rel)`` returns the fd of rel's parent, opening the dirs on the way with
    O_NOFOLLOW and checking each is the inode the manifest recorded. A dir in *held*
    (rel -> fd, opened and identity-checked by the scan that made the manifest) is used
    as is: no second open and fstat per dir (issue 24); those fds stay the caller's."""

    def __init__(self, top_fd: int, inodes: dict[str, int],
                 held: dict[str, int] | None = None) -> None:
        self.stack: list[tuple[str, int]] = [("", top_fd)]
        self.inodes = inodes
        self.held = held or {}
        self.own: set[int] = set()

    def dir_for(self, rel: str) -> tuple[int, str]:
        parent, _, name = rel.rpartition("/")
        while not _ancestor(self.stack[-1][0], parent):
            self._pop()
        while self.stack[-1][0] != parent:
            base = self.stack[-1][0]
            nxt = parent[len(base) + 1:] if base else parent
            part = nxt.split("/", 1)[0]
            sub = f"{base}/{part}" if base else part
            fd = self.held.get(sub, -1)
            if fd >= 0:
                self.stack.append((sub, fd))
                continue
            fd = os.open(part, O_DIR, dir_fd=self.stack[-1][1])
            self.own.add(fd)
            self.stack.append((sub, fd))
            if os.fstat(fd).st_ino != self.inodes.get(sub, -1):
                raise OSError(errno.ESTALE, f"{sub!r} was replaced while being read", sub)
        return self.stack[-1][1], name

    def _pop(self) -> None:
        _, fd = self.stack.pop()
        if fd in self.own:
            self.own.discard(fd)
            os.close(fd)

    def close(self) -> None:
        while len(self.stack) > 1:
            self._pop()

