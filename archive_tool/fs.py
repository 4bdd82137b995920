"""The one way the engine touches a tree: through directory file descriptors.

A cron sweep often runs as root over trees that users own. Every path-based call
re-resolves its path, so a user who can write a parent dir can swap any component for a
symlink between two calls (the logrotate / tmpreaper / systemd-tmpfiles CVE class) and
make root read, write, link or delete somewhere else. So:

- the path an operator typed (a sweep root, an archive named on the command line) is
  opened once, as given — symlinks in it are the operator's own;
- everything found below it is reached one component at a time from a directory fd with
  ``O_NOFOLLOW`` (:func:`open_beneath`), and every create, link, rename and delete is an
  ``*at()`` call relative to a dir fd we hold (``dir_fd=`` in Python);
- where a name is looked up again (a dir we listed, then open), (st_dev, st_ino) must match
  what we saw, or the entry was swapped and we refuse.

An fd stays bound to the directory we opened even if a user renames it away: the worst a
user can do is point our work at another directory they could already write themselves.
No other engine module calls path-based ``os`` functions on a swept tree.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Test hook: called at named points between a look and the act it guards, so the tests of
# tests/test_security_races.py can play a hostile user at exactly that instant instead of
# hoping to hit the window. None in production: one global load per call.
race_hook: Callable[[str, str], None] | None = None


def race_point(point: str, where: str) -> None:
    if race_hook is not None:
        race_hook(point, where)


O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_trusted_dir(path: str | os.PathLike[str]) -> int:
    """A directory the operator named: opened as given (its symlinks are theirs)."""
    return os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(name: str, dir_fd: int, expect: os.stat_result | None = None) -> int:
    """Open *name* below *dir_fd* as a directory, never through a symlink (ELOOP/ENOTDIR).
    With *expect* (an lstat taken earlier), refuse with ``ESTALE`` when the entry is no
    longer that inode: it was swapped between the look and the open."""
    fd = os.open(name, O_DIR, dir_fd=dir_fd)
    if expect is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, f"{name!r} was replaced while being read", name)
    return fd


def open_beneath(root_fd: int, rel: str) -> int:
    """Open the directory *rel* ("a/b/c", relative) below *root_fd*, component by
    component, none of them a symlink. ``O_NOFOLLOW`` alone guards only the last one."""
    fd = os.dup(root_fd)
    try:
        for part in rel.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EPERM, "'..' in a path below the root", rel)
            nxt = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_path_dir(path: str, root: str | None = None, root_fd: int | None = None) -> int:
    """Directory *path*: below *root* (opened as *root_fd*) it is walked by
    :func:`open_beneath`; a path outside any root is operator input, opened as given."""
    if root is not None and root_fd is not None:
        rel = os.path.relpath(path, root)
        if rel == ".":
            return os.dup(root_fd)
        if not rel.startswith(".."):
            return open_beneath(root_fd, rel)
    return open_trusted_dir(path)


class DirCache:
    """Parent directories of a batch's sessions, opened once each below one root.

    Sessions of a batch mostly share a ``FINISHED_*`` parent: one walk for all of them.
    Bounded so a batch spread over thousands of dirs cannot exhaust fds.
    """

    def __init__(self, root: str | None, limit: int = 64) -> None:
        self.root = root
        self.root_fd = open_trusted_dir(root) if root is not None else None
        self.limit = limit
        self._fds: OrderedDict[str, int] = OrderedDict()

    def parent(self, path: str) -> tuple[int, str]:
        """(fd of *path*'s parent, basename); the fd belongs to the cache."""
        parent, name = os.path.split(path)
        fd = self._fds.get(parent)
        if fd is None:
            fd = open_path_dir(parent, self.root, self.root_fd)
            self._fds[parent] = fd
            while len(self._fds) > self.limit:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(parent)
        return fd, name

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    def __enter__(self) -> DirCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def parent_of(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(fd of the parent dir, basename) for a path the operator named."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd = open_trusted_dir(parent or "/")
    try:
        yield fd, name
    finally:
        os.close(fd)


def lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def lexists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_file(name: str, dir_fd: int) -> int:
    """A regular file below *dir_fd* for reading, never through a symlink, never a FIFO
    (O_NONBLOCK: opening a FIFO would block the sweep until someone writes to it)."""
    fd = os.open(name, O_FILE | os.O_NONBLOCK, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", name)
    return fd


def create_file(name: str, dir_fd: int, mode: int = 0o600) -> int:
    """A new regular file: O_EXCL|O_NOFOLLOW, so an existing name or a planted symlink is
    EEXIST, never followed or truncated."""
    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   mode, dir_fd=dir_fd)


def open_tmpfile(dir_fd: int, mode: int = 0o600) -> int:
    """An unnamed O_TMPFILE in *dir_fd*'s directory (OSError where unsupported)."""
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=dir_fd)


_proc_fd: int | None = None
_proc_pid = -1


def _proc_self_fd() -> int:
    # /proc/self is resolved when it is opened: a forked child still holding its parent's
    # fd would link the PARENT's fd N — another file — under the archive's name, then
    # delete the source (found by the crash-point work of issue 18). Reopen per process.
    global _proc_fd, _proc_pid
    if _proc_fd is None or _proc_pid != os.getpid():
        _proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _proc_pid = os.getpid()
    return _proc_fd


def link_fd(fd: int, dir_fd: int, name: str) -> None:
    """Give the open file *fd* (an O_TMPFILE) the name *name* in *dir_fd*; FileExistsError
    if taken. linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE file without
    CAP_DAC_READ_SEARCH (which AT_EMPTY_PATH would need)."""
    os.link(str(fd), name, src_dir_fd=_proc_self_fd(), dst_dir_fd=dir_fd, follow_symlinks=True)


def link_at(dir_fd: int, src: str, dst: str) -> None:
    os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)


def rename_at(dir_fd: int, src: str, dst: str, dst_dir_fd: int | None = None) -> None:
    os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd if dst_dir_fd is None else dst_dir_fd)


def unlink_at(dir_fd: int, name: str, missing_ok: bool = True) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree_at(dir_fd: int, name: str) -> None:
    """Delete the tree *name* below *dir_fd*. shutil.rmtree with dir_fd walks by fds and
    refuses a top that is a symlink (``rmtree.avoids_symlink_attacks`` is True on Linux)."""
    import shutil  # late: it loads fnmatch, bz2 and lzma; few commands delete a tree

    shutil.rmtree(name, dir_fd=dir_fd)


STATE_DIR = ".session-archive"  # our own files inside a root: run manifests, logs


def open_state_dir(root: str, sub: str | None = None) -> int:
    """fd of ``<root>/.session-archive/<sub>``, created (0755) if missing, never through a
    symlink, and only if each level is a directory owned by us or by the root's owner:
    as root in a user's tree, a planted ``.session-archive -> /etc`` must not make root
    create files elsewhere (a refusal is OSError EPERM)."""
    top = open_trusted_dir(root)
    fd = top
    try:
        tst = os.fstat(top)
        owners = {os.geteuid(), tst.st_uid}
        for name in (STATE_DIR, sub) if sub else (STATE_DIR,):
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            nxt = os.open(name, O_DIR, dir_fd=fd)
            if fd != top:
                os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if st.st_uid not in owners:
                raise OSError(errno.EPERM, f"{name} is owned by another user; refused", name)
            if made and st.st_uid == 0 and tst.st_uid != 0:
                # Root's cron made it: the tree's owner may keep logs there too.
                os.fchown(fd, tst.st_uid, tst.st_gid)
        return fd
    except BaseException:
        if fd != top:
            os.close(fd)
        raise
    finally:
        os.close(top)


def open_state_file(dir_fd: int, name: str) -> int:
    """Open (creating) the regular file *name* in a state dir read-write, never through a
    symlink, a FIFO or a hard link (one link), owned by us or by the dir's owner."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o644, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1
            or st.st_uid not in (os.geteuid(), os.fstat(dir_fd).st_uid)):
        os.close(fd)
        raise OSError(errno.EPERM, f"{name} is not a plain file of ours; refused", name)
    return fd


# --------------------------------------------------------------------- libc extras

_libc: object = None
_RENAME_NOREPLACE = 1


def _get_libc():
    global _libc
    if _libc is None:
        try:
            # The global namespace (dlopen(NULL)) rather than libc's own handle: the
            # calls then resolve like every other libc call of the process, so an
            # LD_PRELOAD shim (benchmarks/md_calls.py) sees syncfs and renameat2 too.
            _libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(_libc, "renameat"):
                # Late: ctypes.util loads subprocess, tempfile and shutil (~25 modules,
                # ~200 metadata calls at every start: issue 24) for this fallback alone.
                from ctypes.util import find_library

                _libc = ctypes.CDLL(find_library("c") or None, use_errno=True)
        except OSError:
            _libc = False
    return _libc


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when the thread
    that forked it ends (Linux; elsewhere nothing happens)."""
    libc = _get_libc()
    fn = getattr(libc, "prctl", None) if libc else None
    if fn is not None:
        fn(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def syncfs(fd: int) -> bool:
    """syncfs(2) of *fd*'s filesystem; False where libc has none (non-Linux)."""
    libc = _get_libc()
    fn = getattr(libc, "syncfs", None) if libc else None
    if fn is None:
        return False
    if fn(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return True


def rename_noreplace_at(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): FileExistsError instead of replacing *dst* (plain
    rename silently replaces an empty directory). Falls back to check-then-rename where
    the filesystem or libc lacks it."""
    libc = _get_libc()
    fn = getattr(libc, "renameat2", None) if libc else None
    if fn is not None:
        rc = fn(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "destination already exists", dst)
        if e not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(e, os.strerror(e), src)
    if lexists_at(dst_dir_fd, dst):
        raise FileExistsError(errno.EEXIST, "destination already exists", dst)
    os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


# ------------------------------------------------------------------ walking by fds


def scandir_sorted(dir_fd: int) -> list[os.DirEntry]:
    """Entries of *dir_fd* by name. ``os.scandir(fd)`` lstat()s relative to the fd, so
    ``entry.stat(follow_symlinks=False)`` is fstatat on the directory we hold; scandir
    takes its own dup, so *dir_fd* stays ours."""
    with os.scandir(dir_fd) as it:
        return sorted(it, key=lambda e: e.name)


