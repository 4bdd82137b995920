"""Every lock of the engine: one sweep per root (and shard) at a time, by flock on lock
files in the root (RootLock); and one archiver per session at a time, by flock on the
session dir itself (lock_session), which the decorator's close and a stale-run finalizer
take too.

The kernel drops a flock when its holder dies, even by SIGKILL, so a crashed cron run
never blocks the next one. The lock file is left in place: unlinking it would let a
third process lock a fresh inode while a second still holds the old one. flock on NFS is
emulated with POSIX locks by the client and only as reliable as the server's lockd
(RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import weakref
from types import TracebackType

from archive_tool import fs
from archive_tool.errors import BadRoot, LockBusy, SourceUnreadable
from archive_tool.guard.liveness import hostname
from archive_tool.names import FORMATS

LOCK_NAME = ".session-archive.lock"


def lock_path(root: str, shard: tuple[int, int] | None = None) -> str:
    if shard is None:
        return os.path.join(root, LOCK_NAME)
    k, n = shard
    return os.path.join(root, f".session-archive.shard-{k}-of-{n}.lock")


def open_lock_file(dir_fd: int, name: str, where: str) -> int:
    """Open (creating if needed) the lock file *name* in *dir_fd* safely when acting as
    root in a directory a user owns.

    A planted symlink is not followed (O_NOFOLLOW: ELOOP), a FIFO does not block
    (O_NONBLOCK), and the file must be a regular file with one link owned by us or by the
    directory's owner: a hard link to /etc/shadow (possible where protected_hardlinks is
    off) has two links and is refused before anything is written to it. One file serves
    root's cron sweep and the tree's owner alike: root hands a lock file it creates to the
    directory's owner, and flock needs only a read-only fd, so neither locks the other
    out of their own tree (the pid written into it is informational).
    """
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, os.O_RDWR | flags, 0o644, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, os.O_RDONLY | flags, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadRoot(where, "lock file is a symlink; refused (remove it)") from None
        raise BadRoot(where, f"cannot create lock file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        dst = os.fstat(dir_fd)
        euid = os.geteuid()
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise BadRoot(where, "lock file is not a plain file (a link or special file); "
                                 "refused (remove it)")
        if st.st_uid not in (euid, dst.st_uid):
            raise BadRoot(where, f"lock file belongs to uid {st.st_uid}, neither us nor the "
                                 "directory's owner; refused (remove it)")
        if euid == 0 and st.st_uid == 0 and dst.st_uid != 0 and st.st_size == 0:
            os.fchown(fd, dst.st_uid, dst.st_gid)  # fresh: the tree's owner may use it too
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """" (PID n on host h, started T)" from a held lock file, or "" when it says nothing
    usable (an older writer wrote the PID alone; a file of someone else's is just text
    we print, never trust)."""
    try:
        parts = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if not parts or not parts[0].isdigit():
        return ""
    if len(parts) < 3:
        return f" (PID {parts[0]})"
    host = "".join(c for c in parts[1] if c.isprintable())[:64]
    start = parts[2].replace("T", " ").replace("Z", " UTC")[:32]
    return f" (PID {parts[0]} on host {host}, started {start})"


# Root locks this process holds. A forked child (a pool worker, executors.start_method)
# inherits their fds, and with them the flock: a worker that outlived its sweep would keep
# the root locked and every later sweep refused. The child closes its copies at once (the
# parent's lock stands: a flock is dropped only when its last fd closes).
_held: weakref.WeakSet[RootLock] = weakref.WeakSet()


def _drop_inherited() -> None:
    for lk in list(_held):
        for fd in lk.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        lk.fds = []
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited)


class RootLock:
    """The root's lock, exclusive for a whole-tree sweep. A shard ``(k, n)`` holds the
    root lock *shared* plus its own shard lock exclusively: shards of one root run side
    by side, but never beside a whole-tree sweep of that root, and one shard never twice."""

    def __init__(self, root: str, shard: tuple[int, int] | None = None) -> None:
        self.root = root
        self.path = lock_path(root, shard)
        self.root_path = lock_path(root)
        self.shard = shard
        self.fds: list[int] = []

    def _take(self, path: str, how: int, busy: str) -> int:
        try:
            dir_fd = fs.open_trusted_dir(self.root)
        except OSError as e:
            self.release()
            raise BadRoot(self.root, f"cannot open: {e.strerror}") from None
        try:
            # No O_TRUNC: a contender that loses must not truncate the holder's file.
            fd = open_lock_file(dir_fd, os.path.basename(path), path)
        except BaseException:
            self.release()
            raise
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            self.release()
            err = LockBusy(path, busy + holder)
            err.holder = holder  # type: ignore[attr-defined]
            raise err from None
        self.fds.append(fd)
        _held.add(self)
        return fd

    def acquire(self) -> RootLock:
        if self.shard is not None:
            self._take(self.root_path, fcntl.LOCK_SH, "a whole-tree sweep holds the lock")
        fd = self._take(self.path, fcntl.LOCK_EX, "another sweep holds the lock")
        try:
            # "PID HOST START": what a contender's error names (issue 26); PID first, as
            # before, for whoever reads only that.

            start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {hostname()} {start}\n".encode(), 0)
        except OSError:
            # The pid is informational; the flock is the lock (a read-only fd when the file
            # is another's). Raising here leaked the fd, and on a full disk the sweep could
            # not even start.
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


def name_is(parent_fd: int, name: str, held: os.stat_result) -> bool:
    """*name* in *parent_fd* is (still) the dir whose fstat is *held*: one lstat."""
    try:
        return fs.same_file(fs.lstat_at(parent_fd, name), held)
    except FileNotFoundError:
        return False


def lock_session(parent_fd: int, name: str, where: str, *, archived_ok: bool = False) -> int:
    """See :func:`lock_session_stat`; returns only the fd."""
    return lock_session_stat(parent_fd, name, where, archived_ok=archived_ok)[0]


def lock_session_stat(parent_fd: int, name: str, where: str, *, archived_ok: bool = False,
                      check_name: bool = True) -> tuple[int, os.stat_result]:
    """Open the session dir *name* in *parent_fd* (never through a symlink) and hold an
    exclusive flock on it while it is archived and deleted; returns the fd (close it to
    release). *where* is its path, for messages.

    Two archivers of one session (a sweep, and the decorator's own close, possibly in
    another format) otherwise both wrote an archive: the link() EEXIST guard only covers
    one name. The loser gets FileExistsError: the lock is busy, or, once it is free, the
    dir is gone or (unless *archived_ok*) an archive of it exists in any format.
    Also returns the fstat of the locked dir (the scan's top entry: not stat'ed twice).
    *check_name* False: no lstat that the name still is the locked dir; the caller makes
    that check itself once the lock is held (single.lock_batch, from its listing).
    """
    def archived() -> bool:
        return any(fs.lexists_at(parent_fd, f"{name}.{f}") for f in FORMATS)

    def gone() -> Exception:
        if archived():
            return FileExistsError(errno.EEXIST, "archived meanwhile by another process", where)
        return SourceUnreadable(where, os.strerror(errno.ENOENT))

    try:
        fd = fs.open_dir(name, parent_fd)
    except FileNotFoundError:
        raise gone() from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SourceUnreadable(where, "not a directory (a symlink or file); refused") from None
        raise SourceUnreadable(where, e.strerror or str(e)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(errno.EEXIST, "being archived by another process", where) from None
        held = os.fstat(fd)
        if check_name and not name_is(parent_fd, name, held):
            raise gone()
        if not archived_ok and archived():
            raise FileExistsError(errno.EEXIST, "archive already exists", where)
    except BaseException:
        os.close(fd)
        raise
    return fd, held
