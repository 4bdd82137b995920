"""One sweep per root (and shard) at a time: flock on a lock file in the root.

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
    def __init__(self, root: str, shard: tuple[int, int] | None = None) -> None:
        self.path = lock_path(root, shard)
        self.fd = -1

    def acquire(self) -> RootLock:
        try:
            # No O_TRUNC: a contender that loses must not truncate the holder's file.
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise BadRoot(self.path, f"cannot create lock file: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise LockBusy(self.path, "another sweep holds the lock") from None
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())
        except OSError:
            # The pid is informational; the flock is the lock. Raising here leaked the fd
            # (every later sweep in this process got LockBusy), and on a full disk the
            # sweep could not even start.
            pass
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __enter__(self) -> RootLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
