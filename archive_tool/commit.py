"""Making archives exist durably, and only then deleting sources.

The invariant (see ARCHITECTURE.md): at every instant a session is its source dir only,
its source dir plus a complete durable archive under the final name, or that archive only.

Order for one archive (and, batched, for many):
  1. write the archive into an unnamed O_TMPFILE file in the target directory
     (fallback: ``<final>.tmp``), verify it;
  2. make the data durable (fsync, or one syncfs for a whole batch);
  3. give it its final name with link(): atomic, and EEXIST instead of silently replacing
     an archive another process committed first (rename() would overwrite);
  4. make the directory entry durable (fsync of the parent dir);
  5. rename the source to a hidden trash name, check nothing in it changed since it was
     read, then delete it. A crash mid-delete leaves only ``.<name>.deleting``, which the
     next sweep removes because the archive exists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ArchiveError, DiskFull, DurabilityError, SourceChanged, SourceUnreadable
from .names import FORMATS, trash_name
from .scan import DIR, FILE, Entry

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Filesystems without O_TMPFILE answer with one of these (ext4/xfs/btrfs/tmpfs have it;
# NFS, Lustre, overlayfs on old kernels do not).
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
_no_tmpfile_devs: set[int] = set()


def disk_error(path: str, e: OSError, what: str) -> ArchiveError:
    if e.errno in _DISK_FULL:
        return DiskFull(path, f"{what}: {os.strerror(e.errno)}")
    return ArchiveError(path, f"{what}: {e.strerror or e}")


@dataclass(slots=True)
class TmpArchive:
    fd: int
    final: str
    path: str | None  # None: unnamed O_TMPFILE; else the named ``.tmp`` fallback
    dev: int

    def discard(self) -> None:
        """Forget the tmp: an unnamed one vanishes with its fd; a named one is unlinked."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def remove_stale_tmp(final: str) -> None:
    """``<final>.tmp`` left by a crash of the named-tmp fallback: garbage by definition.
    Removed whichever path this run takes (a run with O_TMPFILE would otherwise never
    notice the named leftover of an earlier run, or of another machine, without it)."""
    try:
        os.unlink(final + ".tmp")
    except FileNotFoundError:
        pass


def open_tmp(final: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> TmpArchive:
    dirpath = os.path.dirname(final) or "."
    st_dev = os.stat(dirpath).st_dev
    fd = -1
    path: str | None = None
    remove_stale_tmp(final)
    if st_dev not in _no_tmpfile_devs:
        try:
            fd = os.open(dirpath, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise disk_error(final, e, "cannot create archive") from None
            if e.errno not in _NO_TMPFILE:
                raise disk_error(final, e, "cannot create archive") from None
            _no_tmpfile_devs.add(st_dev)
    if fd < 0:
        path = final + ".tmp"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise disk_error(final, e, "cannot create archive") from None
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        if path:
            os.unlink(path)
        raise
    return TmpArchive(fd, final, path, st_dev)


_libc = None


def _syncfs(fd: int) -> bool:
    """syncfs(2) through libc; False where it is not available (non-Linux)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _libc.syncfs  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return True


def make_durable(tmps: list[TmpArchive]) -> None:
    """Flush the data of every tmp archive to stable storage.

    One file: fsync. Several: one syncfs per filesystem, which on ext4/xfs is one journal
    commit instead of N (measured here: see benchmarks/RESULTS.md). A failure is not retried
    — after a failed fsync Linux may have dropped the dirty pages — the batch fails whole.
    """
    try:
        if len(tmps) == 1:
            os.fsync(tmps[0].fd)
            return
        done: set[int] = set()
        for t in tmps:
            if t.dev in done:
                continue
            if not _syncfs(t.fd):
                for u in tmps:
                    os.fsync(u.fd)
                return
            done.add(t.dev)
    except OSError as e:
        raise DurabilityError(tmps[0].final, f"fsync failed: {e.strerror or e}") from None


_proc_fd: int | None = None
_proc_pid = -1


def _proc_self_fd() -> int:
    # /proc/self is resolved when opened: a forked child holding its parent's fd would
    # link the parent's fd N, another file, under the archive's name (tests/
    # test_safety_rules.py::test_archiving_in_a_forked_child_names_its_own_archive).
    global _proc_fd, _proc_pid
    if _proc_fd is None or _proc_pid != os.getpid():
        _proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _proc_pid = os.getpid()
    return _proc_fd


def publish(tmp: TmpArchive) -> None:
    """Give the tmp archive its final name; FileExistsError if that name is taken."""
    try:
        if tmp.path is None:
            # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE file
            # without CAP_DAC_READ_SEARCH (which AT_EMPTY_PATH would need).
            os.link(str(tmp.fd), tmp.final, src_dir_fd=_proc_self_fd(), follow_symlinks=True)
        else:
            try:
                os.link(tmp.path, tmp.final)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here (some FUSE/SMB mounts): rename, after checking the
                # name is free. The check-then-rename window is the price of such mounts.
                if os.path.lexists(tmp.final):
                    raise FileExistsError(errno.EEXIST, "File exists", tmp.final) from None
                os.rename(tmp.path, tmp.final)
            else:
                os.unlink(tmp.path)
            tmp.path = None
    except FileExistsError:
        raise
    except OSError as e:
        raise disk_error(tmp.final, e, "cannot name archive") from None


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise DurabilityError(path, f"directory fsync failed: {e.strerror or e}") from None


def fsync_dirs(paths: Iterable[str]) -> None:
    for p in sorted(set(paths)):
        fsync_dir(p)


def _same(entry: Entry, st: os.stat_result) -> bool:
    if entry.kind == DIR:
        return stat.S_ISDIR(st.st_mode)
    kind_ok = stat.S_ISREG(st.st_mode) if entry.kind == FILE else stat.S_ISLNK(st.st_mode)
    return kind_ok and entry.fingerprint() == (
        st.st_ino,
        st.st_size if entry.kind == FILE else 0,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _unchanged(root: str, entries: list[Entry]) -> str | None:
    """None if the tree at *root* is exactly *entries*; else the first difference."""
    expected = {e.rel: e for e in entries if e.rel}
    seen = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        with os.scandir(path) as it:
            for item in it:
                r = f"{rel}/{item.name}" if rel else item.name
                e = expected.get(r)
                if e is None:
                    return f"{r} appeared"
                if not _same(e, item.stat(follow_symlinks=False)):
                    return f"{r} changed"
                seen += 1
                if e.kind == DIR:
                    stack.append(r)
    if seen != len(expected):
        return "an entry disappeared"
    return None


def lock_session(src: str, *, archived_ok: bool = False) -> int:
    """Hold an exclusive flock on the session dir *src* while it is archived and deleted;
    returns the fd (close it to release).

    Two archivers of one session (a sweep, and the decorator's own close, possibly in
    another format) otherwise both wrote an archive: the link() EEXIST guard only covers
    one name. The loser gets FileExistsError: the lock is busy, or, once it is free, the
    dir is gone or (unless *archived_ok*) an archive of it exists in any format.
    """
    parent, name = os.path.split(src)

    def archived() -> bool:
        return any(os.path.lexists(os.path.join(parent, f"{name}.{f}")) for f in FORMATS)

    def gone() -> Exception:
        if archived():
            return FileExistsError(errno.EEXIST, "archived meanwhile by another process", src)
        return SourceUnreadable(src, os.strerror(errno.ENOENT))

    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise gone() from None
    except OSError as e:
        raise SourceUnreadable(src, e.strerror or str(e)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(errno.EEXIST, "being archived by another process", src) from None
        held = os.stat(fd)
        try:
            now = os.lstat(src)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise gone()
        if not archived_ok and archived():
            raise FileExistsError(errno.EEXIST, "archive already exists", src)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_source(src: str, entries: list[Entry], archive: str, *, keep_archive: bool = False) -> None:
    """Delete a source whose archive is committed — unless it changed since it was read.

    On a change: the source goes back under its name, the (now stale) archive we just made
    is removed (kept with *keep_archive*: one we did not make is never deleted), and
    SourceChanged is raised. A later run archives the new content.
    """
    parent, name = os.path.split(src)
    trash = os.path.join(parent, trash_name(name))
    if os.path.lexists(trash):
        shutil.rmtree(trash)  # a crash mid-delete earlier; the archive exists, so garbage
    os.rename(src, trash)
    try:
        diff = _unchanged(trash, entries)
    except OSError as e:
        diff = f"re-check failed: {e.strerror or e}"
    if diff is not None:
        os.rename(trash, src)
        if not keep_archive:
            try:
                os.unlink(archive)
            except FileNotFoundError:
                pass
        fsync_dir(parent)
        raise SourceChanged(src, f"changed while being archived ({diff}); source kept, archive removed")
    for e in reversed(entries):
        p = os.path.join(trash, e.rel) if e.rel else trash
        try:
            if e.kind == DIR:
                os.rmdir(p)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass



_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_noreplace(src: str, dst: str) -> None:
    """rename() that fails with FileExistsError instead of replacing *dst*.

    Plain rename() silently replaces an empty directory at *dst*; renameat2's
    RENAME_NOREPLACE makes the check and the rename one atomic step.
    """
    global _libc
    if _libc is None:
        _syncfs_probe()
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        e = ctypes.get_errno()
        if e == errno.EEXIST or e == errno.ENOTEMPTY:
            raise FileExistsError(errno.EEXIST, "destination already exists", dst)
        if e not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(e, os.strerror(e), src)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination already exists", dst)
    os.rename(src, dst)


def _syncfs_probe() -> None:
    try:
        _syncfs(-1)
    except OSError:
        pass


def make_tree_durable(path: str) -> None:
    """Data and names of a freshly written tree on stable storage (before deleting the
    only other copy of it): one syncfs of its filesystem plus the parent's entry."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not _syncfs(fd):
            os.sync()
    except OSError as e:
        raise DurabilityError(path, f"syncfs failed: {e.strerror or e}") from None
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path))
