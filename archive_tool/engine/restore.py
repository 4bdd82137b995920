"""Restore ONE archive: extract into a fresh temp dir beside the destination, then rename.

Nothing is ever written outside that temp dir: members are checked by our own rules
(``read.unsafe_reason`` plus the checks in ``extract_into``, which enforce what tarfile's
``data`` filter of PEP 706 does), sizes are capped so a decompression bomb or an absurd
header cannot fill the disk, and on any error the temp dir is removed whole — no partial
destination is left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from archive_tool import fs
from archive_tool.engine import commit
from archive_tool.engine.extract import MultiTop, extract_into
from archive_tool.engine.formats import detect_format_fd
from archive_tool.engine.read import check_members
from archive_tool.engine.tarwrite import source_members
from archive_tool.errors import ArchiveError, ArchiveTooLarge, BadArgument
from archive_tool.guard import interrupt
from archive_tool.names import split_archive_name

# Keep this much of the destination filesystem free when sizing the extraction limit —
# at most 64 MiB and at most 1 % of the filesystem, so a small or nearly full test
# filesystem can still take a small session.
_HEADROOM = 64 * 1024 * 1024


def default_dest(archive: str) -> str:
    base = os.path.basename(archive)
    named = split_archive_name(base)
    stem = named[0] if named else base + ".restored"
    return os.path.join(os.path.dirname(archive), stem)


def _limits(parent_fd: int) -> tuple[int, int, int, int]:
    """(bytes we may write, inodes we may create, bytes free, reserve kept)."""
    st = os.fstatvfs(parent_fd)
    free = st.f_bavail * st.f_frsize
    reserve = min(_HEADROOM, st.f_blocks * st.f_frsize // 100)
    # Some filesystems (btrfs) report no inode limit: f_files == 0.
    inodes = st.f_favail if st.f_files else 1 << 62
    return max(0, free - reserve), inodes, free, reserve


def restore_one(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    *,
    max_bytes: int | None = None,
    stats: dict[str, int] | None = None,
    follow: bool = True,
    root: str | None = None,
    keep_special: bool = False,
    clean: bool = True,
) -> Path:
    """Extract *archive_path* to *dest_dir* (default: the archive path minus its suffix).

    An archive with one top-level directory (what we and GNU tar write for a session)
    restores that directory's contents as *dest_dir*; any other layout restores all its
    members below *dest_dir*. Never overwrites (FileExistsError). With *remove_archive*,
    the restored tree is made durable before the archive is unlinked. With
    ``follow=False`` (bulk restore of archives found in a tree) an archive name that is a
    symlink is refused: it could point at another user's archive. With *root* (a tree
    restore as root), the archive's and the destination's directories below *root* are
    reached one component at a time without following symlinks (fs.open_beneath).
    Modes are restored as GNU tar does for the user running it (archived bits less the
    umask); setuid/setgid/sticky only with *keep_special*, which only root may ask for.
    """
    r = restore_pending(archive_path, dest_dir, max_bytes=max_bytes, follow=follow, root=root,
                        keep_special=keep_special, finish_existing=remove_archive,
                        clean=clean)
    try:
        if remove_archive:
            err = remove_archives([r])[0]
            if err is not None:
                raise err
    finally:
        r.close()
    if stats is not None:
        stats["bytes"] = r.total
    return Path(r.dest)


@dataclass(slots=True)
class Pending:
    """A restore renamed into place whose archive still exists; owns its fds."""
    archive: str
    dest: str
    total: int  # content bytes restored
    tree_fd: int
    parent_fd: int  # the destination's directory
    adir_fd: int  # the archive's directory
    aname: str
    ast: os.stat_result  # the archive as opened: it is unlinked only if still this file

    def close(self) -> None:
        for fd in (self.tree_fd, self.parent_fd, self.adir_fd):
            if fd >= 0:
                os.close(fd)
        self.tree_fd = self.parent_fd = self.adir_fd = -1


def restore_pending(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int | None = None,
    follow: bool = True,
    root: str | None = None,
    keep_special: bool = False,
    finish_existing: bool = False,
    clean: bool = True,
    dirs: fs.DirCache | None = None,
) -> Pending:
    """Restore as :func:`restore_one` does, up to (not including) durability and the
    archive's removal, so a batch can make many restores durable with one sync. With
    *finish_existing*, a destination that holds exactly the archive's members (a restore
    with --remove-archive cut short between its rename and the unlink) is taken as done.
    With *clean*, temp dirs of killed restores of this destination are removed first.
    *dirs* (a DirCache below *root*) spares a batch the walk from the root per archive."""
    if keep_special and os.geteuid() != 0:
        raise BadArgument("keeping setuid/setgid/sticky bits needs root")
    archive = os.path.abspath(os.fspath(archive_path))
    dest = os.path.abspath(os.fspath(dest_dir)) if dest_dir is not None else default_dest(archive)
    with open_parent(archive, root, ArchiveError(archive, "no such archive"), dirs) \
            as (adir_fd, aname):
        afd = -1
        try:
            afd = os.open(aname, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
                          | (0 if follow else os.O_NOFOLLOW), dir_fd=adir_fd)
        except FileNotFoundError:
            raise ArchiveError(archive, "no such archive") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ArchiveError(archive, "is a symlink; refused") from None
            raise ArchiveError(archive, f"cannot open: {e.strerror or e}") from None
        try:
            ast = os.fstat(afd)
            if not stat.S_ISREG(ast.st_mode):
                raise ArchiveError(archive, "not a file")
            parent = os.path.dirname(dest)
            if root is None:
                os.makedirs(parent, exist_ok=True)
            with open_parent(dest, root, ArchiveError(dest, "no such directory: " + parent),
                         dirs) as (parent_fd, dname):
                if clean:
                    remove_dead_temps(parent_fd, os.path.dirname(dest), only=dname)
                try:
                    total, tree_fd = restore_at(archive, afd, parent_fd, dname, dest, ast,
                                                 max_bytes, keep_special)
                except FileExistsError:
                    if not finish_existing:
                        raise
                    total, tree_fd = _already_restored(archive, afd, parent_fd, dname, dest)
                try:
                    pfd = os.dup(parent_fd)
                    try:
                        return Pending(archive, dest, total, tree_fd, pfd, os.dup(adir_fd),
                                       aname, ast)
                    except BaseException:
                        os.close(pfd)
                        raise
                except BaseException:
                    os.close(tree_fd)
                    raise
        finally:
            if afd >= 0:
                os.close(afd)


def remove_archives(done: list[Pending]) -> list[Exception | None]:
    """Group commit of restores: make every restored tree durable (one syncfs per
    filesystem, one fsync per destination dir), and only then unlink each archive that is
    still the file we read, then fsync each archive dir once. Returns one error (or None)
    per item (ArchiveError, or the OSError of a failed unlink). If the sync fails, no
    archive is touched: every item gets the error."""
    if not done:
        return []
    try:
        commit.make_trees_durable([(p.tree_fd, p.parent_fd, p.dest) for p in done])
    except ArchiveError as e:
        return [e] * len(done)
    errs: list[Exception | None] = [None] * len(done)
    dirs: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(done):
        try:
            if not fs.same_file(fs.lstat_at(p.adir_fd, p.aname), p.ast):
                errs[i] = ArchiveError(p.archive, "restored, but the archive was replaced "
                                                  "meanwhile; not removed")
                continue
            fs.unlink_at(p.adir_fd, p.aname, missing_ok=False)
            st = os.fstat(p.adir_fd)
        except OSError as e:
            errs[i] = e  # the archive is kept (or its unlink may not be durable)
            continue
        dirs.setdefault((st.st_dev, st.st_ino), []).append(i)
    for members in dirs.values():
        first = done[members[0]]
        try:
            commit.fsync_dir(first.adir_fd, os.path.dirname(first.archive))
        except ArchiveError as e:
            for i in members:
                errs[i] = e
    return errs


def _already_restored(archive: str, afd: int, parent_fd: int, dname: str, dest: str
                      ) -> tuple[int, int]:
    """(content bytes, fd) of an existing *dest* that holds exactly the archive's members
    and bytes; FileExistsError when it differs (then nothing is removed)."""
    try:
        tree_fd = fs.open_dir(dname, parent_fd)
    except OSError:
        raise FileExistsError(17, "destination already exists; refusing to overwrite",
                              dest) from None
    try:
        entries, expected = source_members(tree_fd, dest)
        rfd = os.dup(afd)
        os.lseek(rfd, 0, os.SEEK_SET)
        with open(rfd, "rb") as f:
            check_members(f, detect_format_fd(rfd, archive), expected, archive)
    except (ArchiveError, OSError):
        os.close(tree_fd)
        raise FileExistsError(17, "destination already exists and differs from the archive; "
                                  "refusing to overwrite", dest) from None
    return sum(e.size for e in entries), tree_fd


@contextmanager
def open_parent(path: str, root: str | None, missing: Exception,
            dirs: fs.DirCache | None = None) -> Iterator[tuple[int, str]]:
    """(fd of *path*'s directory, basename): below *root* walked by fds (through *dirs*,
    a batch's cache of opened dirs, when given), else as given."""
    parent, name = os.path.split(path)
    try:
        if dirs is not None:
            fd = os.dup(dirs.parent(path)[0])
        elif root is None:
            fd = fs.open_trusted_dir(parent)
        else:
            with fs.DirCache(root, limit=1) as dc:
                fd = os.dup(dc.parent(path)[0])
    except FileNotFoundError:
        raise missing from None
    except OSError as e:
        raise ArchiveError(parent, f"cannot open: {e.strerror or e}") from None
    try:
        yield fd, name
    finally:
        os.close(fd)


def restore_at(archive: str, afd: int, parent_fd: int, dname: str, dest: str,
                ast: os.stat_result, max_bytes: int | None,
                keep_special: bool = False, prefix: str | None = None) -> tuple[int, int]:
    """Extract into a fresh temp dir in *parent_fd*, rename it to *dname*; returns
    (content bytes, fd of the restored dir). *prefix*: the session's path inside the
    archive (a spanning pack's frame, pack/entrypath.py), stripped from every member."""
    if fs.lexists_at(parent_fd, dname):
        raise FileExistsError(17, "destination already exists; refusing to overwrite", dest)
    space, inodes, free, reserve = _limits(parent_fd)
    limit = space if max_bytes is None else min(max_bytes, space)
    euid = os.geteuid()
    # Root restoring a user's archive gives the tree to the archive's owner (who could
    # not otherwise remove or use it); never the owners named inside the archive.
    owner = (ast.st_uid, ast.st_gid) if euid == 0 and ast.st_uid != 0 else None
    strips: tuple[bool | str, ...] = (True, False) if prefix is None else (prefix,)
    for strip in strips:
        tname = f".{dname}.restore-{secrets.token_hex(4)}"
        # The SIGTERM backstop (interrupt.py) must not land between the mkdir and the try
        # below that removes the temp dir: a signal meanwhile is seen by the first check.
        with interrupt.shielded(reraise=False):
            os.mkdir(tname, 0o700, dir_fd=parent_fd)
            tmp_fd = fs.open_dir(tname, parent_fd)
            mine = os.fstat(tmp_fd)
        try:
            # Held while we work in it: a later restore tells a dead run's leftover (lock
            # free) from a live one's (remove_dead_temps).
            fcntl.flock(tmp_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if mine.st_uid != euid or mine.st_nlink != 2:
                raise ArchiveError(dest, "the restore's temp dir was replaced by another "
                                         "process; refused")
            fs.race_point("restore-extract", os.path.join(os.path.dirname(dest), tname))
            rfd = os.dup(afd)  # extract_into closes what it reads; a dup shares the offset
            os.lseek(rfd, 0, os.SEEK_SET)
            try:
                total = extract_into(archive, rfd, tmp_fd, limit, inodes, strip, owner,
                                     keep_special)
            except ArchiveTooLarge as e:
                if limit == space and "bytes" in e.reason:
                    raise ArchiveTooLarge(archive, f"{e.reason} ({free} bytes free, {reserve} "
                                                   "kept in reserve)") from None
                raise
            fs.race_point("restore-rename", os.path.join(os.path.dirname(dest), tname))
            if not fs.same_file(fs.lstat_at(parent_fd, tname), mine):
                raise ArchiveError(dest, "the restore's temp dir was replaced by another "
                                         "process; refused")
            fs.rename_noreplace_at(parent_fd, tname, parent_fd, dname)
            if not fs.same_file(fs.lstat_at(parent_fd, dname), mine):
                raise ArchiveError(dest, "the restored dir was replaced by another process "
                                         "during the rename; refused")
            return total, tmp_fd
        except MultiTop:
            _remove_tmp(parent_fd, tname, mine)  # rare: not a one-session archive
            os.close(tmp_fd)
        except BaseException:
            # Not cut short by the SIGTERM backstop (interrupt.py): a half-removed temp
            # dir would be left for the next restore to find.
            with interrupt.shielded():
                _remove_tmp(parent_fd, tname, mine)
                os.close(tmp_fd)
            raise
    raise AssertionError("unreachable")


_TEMP_NAME = re.compile(r"^\.(?P<dest>.+)\.restore-[0-9a-f]{8}$")


def remove_dead_temps(parent_fd: int, where: str, only: str | None = None) -> int:
    """Remove the temp dirs that killed restores left in *parent_fd* (``.<dest>.restore-*``,
    for destination *only* if given); returns how many. A temp dir is ours to remove only
    if this uid made it and no live restore holds its flock; it is walked and deleted by
    fds (fs.rmtree_at), never followed."""
    removed = 0
    try:
        with os.scandir(parent_fd) as it:
            names = [e.name for e in it if e.name.startswith(".") and ".restore-" in e.name]
    except OSError:
        return 0
    for name in names:
        m = _TEMP_NAME.match(name)
        if m is None or (only is not None and m.group("dest") != only):
            continue
        try:
            fd = fs.open_dir(name, parent_fd)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a restore is working in it right now
            if fs.same_file(fs.lstat_at(parent_fd, name), os.fstat(fd)):
                fs.rmtree_at(parent_fd, name)
                removed += 1
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _remove_tmp(parent_fd: int, tname: str, mine: os.stat_result) -> None:
    """Remove our temp dir — only if the name still is the dir we made."""
    try:
        if fs.same_file(fs.lstat_at(parent_fd, tname), mine):
            fs.rmtree_at(parent_fd, tname)
    except OSError:
        pass


