"""One sweep per root (and shard) at a time: flock on lock files in the root.

The kernel drops a flock when its holder dies, even by SIGKILL, so a crashed cron run
never blocks the next one. The lock file is left in place: unlinking it would let a
third process lock a fresh inode while a second still holds the old one. flock on NFS is
emulated with POSIX locks by the client and only as reliable as the server's lockd
(RELIABILITY.md).
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from .errors import BadRoot, LockBusy

LOCK_NAME = ".session-archive.lock"


def lock_path(root: str, shard: tuple[int, int] | None = None) -> str:
    if shard is None:
        return os.path.join(root, LOCK_NAME)
    k, n = shard
    return os.path.join(root, f".session-archive.shard-{k}-of-{n}.lock")


class RootLock:
    """The root's lock, exclusive for a whole-tree sweep. A shard ``(k, n)`` holds the
    root lock *shared* plus its own shard lock exclusively: shards of one root run side
    by side, but never beside a whole-tree sweep of that root, and one shard never twice."""

    def __init__(self, root: str, shard: tuple[int, int] | None = None) -> None:
        self.path = lock_path(root, shard)
        self.root_path = lock_path(root)
        self.shard = shard
        self.fds: list[int] = []

    def _take(self, path: str, how: int, busy: str) -> int:
        try:
            # No O_TRUNC: a contender that loses must not truncate the holder's file.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self.release()
            raise BadRoot(path, f"cannot create lock file: {e.strerror}") from None
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.release()
            raise LockBusy(path, busy) from None
        self.fds.append(fd)
        return fd

    def acquire(self) -> RootLock:
        if self.shard is not None:
            self._take(self.root_path, fcntl.LOCK_SH, "a whole-tree sweep holds the lock")
        fd = self._take(self.path, fcntl.LOCK_EX, "another sweep holds the lock")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            # The pid is informational; the flock is the lock. Raising here leaked the fd
            # (every later sweep in this process got LockBusy), and on a full disk the
            # sweep could not even start.
            pass
        return self

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())  # closing drops the flock

    def __enter__(self) -> RootLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
