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

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from archive_tool import fs
from archive_tool.errors import (
    DISK_FULL_ERRNOS,
    DurabilityError,
    disk_error,
)
from archive_tool.names import TMP_SUFFIX

# Filesystems without O_TMPFILE answer with one of these (ext4/xfs/btrfs/tmpfs have it;
# NFS, Lustre, overlayfs on old kernels do not).
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
_no_tmpfile_devs: set[int] = set()


@dataclass(slots=True)
class TmpArchive:
    fd: int
    final: str  # full path: for messages and results only, never opened by path
    dir_fd: int  # the archive's directory; owned by this object (a dup)
    name: str  # final name in dir_fd
    tmp_name: str | None  # None: unnamed O_TMPFILE; else the named ``.tmp`` fallback
    dev: int
    gid: int = -1  # the tmp file's group once created (and chowned): archive_mode needs it
    mode: int = -1  # its permission bits then (umask applied): a caller skips an equal fchmod

    def discard(self) -> None:
        """Forget the tmp: an unnamed one vanishes with its fd; a named one is unlinked."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp_name is not None:
            fs.unlink_at(self.dir_fd, self.tmp_name)
            self.tmp_name = None

    def close(self) -> None:
        self.discard()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def remove_stale_tmp(dir_fd: int, final_name: str) -> None:
    """``<final>.tmp`` left by a crash of the named-tmp fallback: garbage by definition.
    Removed where that name is about to be used (open_tmp's fallback, which creates it
    O_EXCL) and where a source with an archive is finished (sweep's FINISH and CLEANUP):
    not on the O_TMPFILE path, where it was an unlink of a name that never exists, one
    metadata round trip per session on a parallel filesystem (issue 24)."""
    fs.unlink_at(dir_fd, final_name + TMP_SUFFIX)


def open_tmp(dir_fd: int, final: str, mode: int | None = 0o644,
             owner: tuple[int, int] | None = None, dir_st: os.stat_result | None = None,
             *, create_mode: int = 0o600) -> TmpArchive:
    """An unnamed tmp for the archive *final* (a path, for messages) in *dir_fd*.
    *dir_st*: the dir's fstat, when the caller has it; with *owner* the new file's device
    and group are then known, and it is not fstat'ed, nor chowned when it is born with
    that owner already (issue 24). *create_mode*: the unnamed file's mode at creation
    (the umask applies); no other process can open it by name before it is linked, so it
    may be the final mode and spare a chmod (issue 24). The named fallback is always
    created 0600."""
    name = os.path.basename(final)
    fd = -1
    tmp_name: str | None = None
    # The dir's device is needed only to skip O_TMPFILE where it already failed; the new
    # file's fstat below gives it otherwise (one stat a session fewer, issue 24).
    st_dev = os.fstat(dir_fd).st_dev if _no_tmpfile_devs else None
    if st_dev not in _no_tmpfile_devs:
        try:
            fd = fs.open_tmpfile(dir_fd, create_mode)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS or e.errno not in _NO_TMPFILE:
                raise disk_error(final, e, "cannot create archive") from None
            st_dev = os.fstat(dir_fd).st_dev
            _no_tmpfile_devs.add(st_dev)
    if fd < 0:
        tmp_name = name + TMP_SUFFIX
        remove_stale_tmp(dir_fd, name)
        try:
            fd = fs.create_file(tmp_name, dir_fd)
        except OSError as e:
            raise disk_error(final, e, "cannot create archive") from None
    try:
        if owner is not None and dir_st is not None:
            # Device and group known from the dir: no fstat of the new file.
            if not _born_as(owner, dir_st):
                os.fchown(fd, *owner)
            dev, gid, perm = dir_st.st_dev, owner[1], -1
        else:
            st = os.fstat(fd)
            dev, gid, perm = st.st_dev, st.st_gid, stat.S_IMODE(st.st_mode)
            # Chowned only when it differs (root archiving root's sessions: one call a
            # session fewer, issue 24); a chown by root changes no permission bit we set.
            if owner is not None and (st.st_uid, st.st_gid) != tuple(owner):
                os.fchown(fd, *owner)
                gid = owner[1]
        if mode is not None:
            os.fchmod(fd, mode)
            perm = mode
        own_dir = os.dup(dir_fd)
    except OSError:
        os.close(fd)
        if tmp_name:
            fs.unlink_at(dir_fd, tmp_name)
        raise
    return TmpArchive(fd, final, own_dir, name, tmp_name, dev, gid, perm)


def _born_as(owner: tuple[int, int], dir_st: os.stat_result) -> bool:
    """A file we create in the dir of *dir_st* belongs to *owner* from the start: our
    euid, and our egid (or, in a setgid dir, the dir's group)."""
    gid = dir_st.st_gid if dir_st.st_mode & stat.S_ISGID else os.getegid()
    return owner == (os.geteuid(), gid)


def _syncfs(fd: int) -> bool:
    return fs.syncfs(fd)


# How a batch of archives is made durable: "fsync" (one fsync per archive, issued in
# parallel) or "syncfs" (one syncfs per filesystem). Chosen by measurement (issue 15,
# benchmarks/RESULTS.md): syncfs also writes back every other process's dirty data on the
# filesystem, so with a writer beside the sweep (100 MB/s) it cost ~5x more a batch, while
# parallel fsyncs (which ext4/xfs fold into shared journal commits) barely noticed it.
# The environment variable is an internal knob for the benchmarks.
# Restores keep one syncfs per batch: fsyncing every restored file (9 opens + fsyncs a
# session) measured ~8 % slower, with or without the writer (RESULTS.md, issue 15).
DURABILITY_ENV = "SESSION_ARCHIVE_DURABILITY"
DEFAULT_DURABILITY = "fsync"
RESTORE_DURABILITY = "syncfs"


def durability(default: str = DEFAULT_DURABILITY) -> str:
    v = os.environ.get(DURABILITY_ENV, default)
    return v if v in ("syncfs", "fsync") else default


def _parallel_fsync(fds: list[int]) -> None:
    """fsync every fd, up to 16 at once: concurrent fsyncs on ext4/xfs share journal
    commits (the kernel's own group commit), serial ones pay one commit each."""
    # Imported here: concurrent.futures pulls in ~10 modules (logging, traceback, queue),
    # ~75 metadata calls at start-up for every command that imports this module only to
    # read (verify, catalog --rebuild: issue 24).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(fds))) as pool:
        for f in [pool.submit(os.fsync, fd) for fd in fds]:
            f.result()  # the first OSError fails the batch


def make_durable(tmps: list[TmpArchive]) -> None:
    """Flush the data of every tmp archive to stable storage.

    One file: fsync. Several: parallel fsyncs (default), or one syncfs per filesystem, which
    on ext4/xfs is one journal commit instead of N (see DEFAULT_DURABILITY and
    benchmarks/RESULTS.md). A failure is not retried — after a failed fsync Linux may have
    dropped the dirty pages — the batch fails whole.
    """
    try:
        if len(tmps) == 1:
            os.fsync(tmps[0].fd)
            return
        if durability() == "fsync":
            _parallel_fsync([t.fd for t in tmps])
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


def publish(tmp: TmpArchive) -> None:
    """Give the tmp archive its final name; FileExistsError if that name is taken.
    Both names are relative to the dir fd opened when the session was locked: a user who
    swaps the directory for a symlink meanwhile cannot redirect the link elsewhere."""
    fs.race_point("publish", tmp.final)
    try:
        if tmp.tmp_name is None:
            fs.link_fd(tmp.fd, tmp.dir_fd, tmp.name)
        else:
            try:
                fs.link_at(tmp.dir_fd, tmp.tmp_name, tmp.name)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here (some FUSE/SMB mounts): rename without replacing.
                fs.rename_noreplace_at(tmp.dir_fd, tmp.tmp_name, tmp.dir_fd, tmp.name)
            else:
                fs.unlink_at(tmp.dir_fd, tmp.tmp_name)
            tmp.tmp_name = None
    except FileExistsError:
        raise
    except OSError as e:
        raise disk_error(tmp.final, e, "cannot name archive") from None


def fsync_dir(fd: int, where: str) -> None:
    """Make the entries of the open directory *fd* durable (*where* names it in errors)."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise DurabilityError(where, f"directory fsync failed: {e.strerror or e}") from None


def fsync_dirs(tmps: Iterable[TmpArchive]) -> None:
    """One fsync per distinct archive directory of a batch."""
    seen: set[str] = set()
    for t in sorted(tmps, key=lambda t: t.final):
        d = os.path.dirname(t.final)
        if d not in seen:
            seen.add(d)
            fsync_dir(t.dir_fd, d)


def make_trees_durable(trees: list[tuple[int, int, str]]) -> None:
    """Group commit of restored trees, given as (tree fd, parent dir fd, path): one syncfs
    per filesystem (default; os.sync where there is no syncfs), or every file and dir of
    the trees fsynced in parallel; then one fsync per distinct parent dir.
    DurabilityError if any step fails: nothing may be deleted on the strength of it."""
    devs: set[int] = set()
    parents: dict[tuple[int, int], tuple[int, str]] = {}
    by_fsync = durability(RESTORE_DURABILITY) == "fsync"
    try:
        for tree_fd, parent_fd, where in trees:
            if by_fsync:
                _fsync_tree(tree_fd)
            else:
                dev = os.fstat(tree_fd).st_dev
                if dev not in devs:
                    devs.add(dev)
                    if not _syncfs(tree_fd):
                        os.sync()
            pst = os.fstat(parent_fd)
            parents.setdefault((pst.st_dev, pst.st_ino), (parent_fd, where))
    except OSError as e:
        what = "fsync" if by_fsync else "syncfs"
        raise DurabilityError(trees[0][2], f"{what} failed: {e.strerror or e}") from None
    for parent_fd, where in parents.values():
        fsync_dir(parent_fd, os.path.dirname(where))


def _fsync_tree(top_fd: int, chunk: int = 128) -> None:
    """fsync every regular file and dir below the open dir *top_fd* (and it), *chunk* at
    a time in parallel, so a tree of 100k files never holds 100k fds. Walked by fds
    without following symlinks (a symlink's target lives in its inode, made durable with
    its directory's entries)."""
    pending: list[int] = []

    def flush() -> None:
        try:
            _parallel_fsync(pending)
        finally:
            for fd in pending:
                os.close(fd)
            pending.clear()

    d = -1
    try:
        stack = [""]
        while stack:
            rel = stack.pop()
            d = os.dup(top_fd) if not rel else fs.open_beneath(top_fd, rel)
            with os.scandir(d) as it:
                items = list(it)
            for item in items:
                if item.is_dir(follow_symlinks=False):
                    stack.append(f"{rel}/{item.name}" if rel else item.name)
                elif item.is_file(follow_symlinks=False):
                    pending.append(fs.open_file(item.name, d))
                    if len(pending) >= chunk:
                        flush()
            pending.append(d)
            d = -1
            if len(pending) >= chunk:
                flush()
        flush()
    finally:
        if d >= 0:
            os.close(d)
        for fd in pending:
            os.close(fd)


