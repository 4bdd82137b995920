"""Restore ONE archive: extract into a fresh temp dir beside the destination, then rename.

Nothing is ever written outside that temp dir: members are checked by our own rules
(``read.unsafe_reason`` plus the checks in ``extract_into``, which enforce what tarfile's
``data`` filter of PEP 706 does), sizes are capped so a decompression bomb or an absurd
header cannot fill the disk, and on any error the temp dir is removed whole — no partial
destination is left behind.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import secrets
import stat
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import commit, fs
from .errors import ArchiveError, ArchiveTooLarge, BadArgument, CorruptArchive, UnsafeArchive
from .executors import default_workers, run_batches
from .names import split_archive_name
from .plan import check_root
from .read import (
    CHUNK,
    MemberRules,
    check_members,
    detect_format_fd,
    drain,
    iter_members,
    member_path,
    open_tar,
)
from .scan import DIR, FILE, LINK, escaping_link
from .summary import FAILED, RESTORED, SKIPPED, Result, new_summary, record_failure

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


class _MultiTop(Exception):
    """Internal: the archive has more than one top-level entry; extract unstripped."""


def _umask() -> int:
    # /proc says it without changing it (os.umask would, briefly, for every thread).
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def restore_mode(mode: int, umask: int, keep_special: bool = False) -> int:
    """Permissions of a restored entry, as GNU tar gives them to the user running it: the
    archived bits less the umask (000 stays 000, 664 under umask 022 becomes 644).
    setuid/setgid/sticky only when root asks for them explicitly (*keep_special*)."""
    bits = mode & 0o777 & ~umask
    if keep_special:
        bits |= mode & 0o7000
    return bits


class _Dirs:
    """fds of directories created below the restore's temp dir, by relative path.

    Everything is created relative to these fds, never by path: a user who can write the
    destination's parent may rename the temp dir away and put a symlink in its place, but
    our fds still point into the dir we made (mode 0700, ours), so nothing lands elsewhere.
    """

    def __init__(self, top_fd: int, limit: int = 32) -> None:
        self.top_fd = top_fd
        self.limit = limit
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.made: set[str] = {""}

    def get(self, rel: str) -> int:
        if rel == "":
            return self.top_fd
        fd = self.fds.get(rel)
        if fd is None:
            if rel not in self.made:
                self.makedirs(rel)
            fd = fs.open_beneath(self.top_fd, rel)
            self.fds[rel] = fd
            while len(self.fds) > self.limit:
                os.close(self.fds.popitem(last=False)[1])
        else:
            self.fds.move_to_end(rel)
        return fd

    def makedirs(self, rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.made:
                parent, _, name = sub.rpartition("/")
                os.mkdir(name, 0o700, dir_fd=self.get(parent))
                self.made.add(sub)

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])


def extract_into(archive: str, afd: int, tmp_fd: int, max_bytes: int, max_members: int,
                 strip: bool, owner: tuple[int, int] | None = None,
                 keep_special: bool = False) -> int:
    """Extract every member of the open archive *afd* below the open dir *tmp_fd*;
    returns the content bytes written. *archive* names it in messages; *afd* is closed.

    With *strip*, the archive's single top-level directory becomes the temp dir itself
    (its members land directly in it), so the caller renames it into place — one rename
    instead of a rename, a listdir and an rmdir per restore. Raises _MultiTop when the
    archive turns out to have more than one top-level entry.

    Safety without tarfile's extraction machinery, whose ``data`` filter resolves the
    realpath of every member (~10 lstat calls each: most of a small restore's cost):
    the temp dir is new and empty, every member passes ``read.MemberRules``, every entry
    is created by us relative to a dir fd (O_EXCL / O_NOFOLLOW / mkdirat / symlinkat),
    hard links only to regular files this restore extracted, and every created symlink
    must resolve inside the tree (resolved over what was extracted, not the live fs).
    With *owner* (root restoring a user's archive) every entry is given to that owner.
    """
    total = count = 0
    top: str | None = None
    root_attrs: tuple[int, int] | None = None
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    dir_attrs: list[tuple[str, int, int]] = []
    dirs = _Dirs(tmp_fd)
    # The member rules verify and show apply too: no absolute names or "..", no devices,
    # no path or hard-link target through a symlink the archive made, no link escaping
    # through earlier links.
    rules = MemberRules()
    umask = _umask()
    try:
        with open_tar(archive, afd) as (tf, reader):
            for m in iter_members(tf):
                why = rules.unsafe(m)
                if why:
                    raise UnsafeArchive(archive, f"refused: {why}")
                rel = member_path(m.name)
                if strip:
                    first, _, rest = rel.partition("/")
                    if top is None:
                        top = first
                    if first != top or (not rest and not m.isdir()):
                        raise _MultiTop
                    if not rest:
                        root_attrs = (m.mode, int(m.mtime))
                        continue
                    rel = rest
                elif not rel:
                    continue
                count += 1
                total += m.size if m.isreg() else 0
                if total > max_bytes:
                    raise ArchiveTooLarge(archive, f"extracting would need more than "
                                                   f"{max_bytes} bytes; refused")
                if count > max_members:
                    raise ArchiveTooLarge(archive, f"more than {max_members} members; refused")
                parent, _, name = rel.rpartition("/")
                pfd = dirs.get(parent)
                mtime = int(m.mtime)
                if m.isdir():
                    if rel not in dirs.made:
                        os.mkdir(name, 0o700, dir_fd=pfd)
                        dirs.made.add(rel)
                    elif kinds.get(rel) == DIR:
                        raise FileExistsError(errno.EEXIST, "exists", m.name)
                    kinds[rel] = DIR
                    dir_attrs.append((rel, restore_mode(m.mode, umask, keep_special), mtime))
                elif m.isreg():
                    _write_member(tf, m, name, pfd, mtime, owner,
                                  restore_mode(m.mode, umask, keep_special))
                    kinds[rel] = FILE
                elif m.issym():
                    os.symlink(m.linkname, name, dir_fd=pfd)
                    kinds[rel] = LINK
                    links[rel] = m.linkname
                    os.utime(name, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
                elif m.islnk():
                    target = member_path(m.linkname)
                    if strip:
                        first, _, target = target.partition("/")
                        if first != top or not target:
                            raise UnsafeArchive(archive, f"refused: hard link {m.name!r} leaves the archive")
                    if kinds.get(target) != FILE:
                        raise UnsafeArchive(archive, f"refused: hard link {m.name!r} to {m.linkname!r}")
                    tparent, _, tname = target.rpartition("/")
                    os.link(tname, name, src_dir_fd=dirs.get(tparent), dst_dir_fd=dirs.get(parent),
                            follow_symlinks=False)
                    kinds[rel] = FILE
                else:
                    raise UnsafeArchive(archive, f"refused: unsupported member type {m.name!r}")
            # tarfile stops at the end-of-archive blocks, before the gzip CRC32 / zstd
            # XXH64 / xz check: without reading on, a damaged .tar.gz restored silently
            # altered bytes (tests/test_reliability_hostile_archives.py).
            drain(reader)
        bad = escaping_link(kinds, links)
        if bad is not None:
            raise UnsafeArchive(archive, f"refused: symlink {bad[0]!r} resolves outside the restore")
        for rel, mode, mtime in reversed(dir_attrs):  # children first: setting mtime is final
            fd = dirs.get(rel)
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            os.utime(fd, (mtime, mtime))
    except (ArchiveError, _MultiTop):
        raise
    except FileExistsError as e:
        raise UnsafeArchive(archive, f"refused: duplicate member {e.filename!r}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise commit.disk_error(archive, e, "cannot restore") from None
        if isinstance(e, tarfile.TarError) or "unexpected end" in str(e):
            raise CorruptArchive(archive, f"corrupt archive: {e}") from None
        raise ArchiveError(archive, f"cannot restore: {e.strerror or e}") from None
    except Exception as e:
        raise CorruptArchive(archive, f"corrupt archive: {e}") from None
    finally:
        dirs.close()
    if owner is not None:
        os.fchown(tmp_fd, *owner)
    if root_attrs is not None:
        os.fchmod(tmp_fd, restore_mode(root_attrs[0], umask, keep_special))
        os.utime(tmp_fd, (root_attrs[1], root_attrs[1]))
    return total


def _write_member(tf: tarfile.TarFile, m: tarfile.TarInfo, name: str, pfd: int, mtime: int,
                  owner: tuple[int, int] | None, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)
    try:
        src = tf.extractfile(m)
        hole = False
        while chunk := src.read(CHUNK):
            # A run of zeros as big as a read becomes a hole: a 10 GiB sparse file (stored
            # as 10 GiB of zeros, which compress to nothing) must not restore as 10 GiB of
            # real disk.
            if len(chunk) == CHUNK and chunk == _ZEROS:
                os.lseek(fd, CHUNK, os.SEEK_CUR)
                hole = True
                continue
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if hole:
            os.ftruncate(fd, m.size)  # a hole at the end: the size still says so
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


_ZEROS = bytes(CHUNK)


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
    if keep_special and os.geteuid() != 0:
        raise BadArgument("keeping setuid/setgid/sticky bits needs root")
    archive = os.path.abspath(os.fspath(archive_path))
    dest = os.path.abspath(os.fspath(dest_dir)) if dest_dir is not None else default_dest(archive)
    with _parent(archive, root, missing=ArchiveError(archive, "no such archive")) \
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
            with _parent(dest, root, missing=ArchiveError(dest, "no such directory: "
                                                                 + parent)) as (parent_fd, dname):
                try:
                    total, tree_fd = _restore_at(archive, afd, parent_fd, dname, dest, ast,
                                                 max_bytes, keep_special)
                except FileExistsError:
                    if not remove_archive:
                        raise
                    # A restore with --remove-archive cut short between its rename and the
                    # unlink: the tree is there. Finish only if it holds exactly the archive.
                    total, tree_fd = _already_restored(archive, afd, parent_fd, dname, dest)
                try:
                    if remove_archive:
                        commit.make_tree_durable(tree_fd, parent_fd, dest)
                        if not fs.same_file(fs.lstat_at(adir_fd, aname), ast):
                            raise ArchiveError(archive, "restored, but the archive was replaced "
                                                        "meanwhile; not removed")
                        fs.unlink_at(adir_fd, aname, missing_ok=False)
                        commit.fsync_dir(adir_fd, os.path.dirname(archive))
                finally:
                    os.close(tree_fd)
        finally:
            if afd >= 0:
                os.close(afd)
    if stats is not None:
        stats["bytes"] = total
    return Path(dest)


def _already_restored(archive: str, afd: int, parent_fd: int, dname: str, dest: str
                      ) -> tuple[int, int]:
    """(content bytes, fd) of an existing *dest* that holds exactly the archive's members
    and bytes; FileExistsError when it differs (then nothing is removed)."""
    from .single import source_members

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
def _parent(path: str, root: str | None, missing: Exception) -> Iterator[tuple[int, str]]:
    """(fd of *path*'s directory, basename): below *root* walked by fds, else as given."""
    parent, name = os.path.split(path)
    try:
        if root is None:
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


def _restore_at(archive: str, afd: int, parent_fd: int, dname: str, dest: str,
                ast: os.stat_result, max_bytes: int | None,
                keep_special: bool = False) -> tuple[int, int]:
    """Extract into a fresh temp dir in *parent_fd*, rename it to *dname*; returns
    (content bytes, fd of the restored dir)."""
    if fs.lexists_at(parent_fd, dname):
        raise FileExistsError(17, "destination already exists; refusing to overwrite", dest)
    space, inodes, free, reserve = _limits(parent_fd)
    limit = space if max_bytes is None else min(max_bytes, space)
    euid = os.geteuid()
    # Root restoring a user's archive gives the tree to the archive's owner (who could
    # not otherwise remove or use it); never the owners named inside the archive.
    owner = (ast.st_uid, ast.st_gid) if euid == 0 and ast.st_uid != 0 else None
    for strip in (True, False):
        tname = f".{dname}.restore-{secrets.token_hex(4)}"
        os.mkdir(tname, 0o700, dir_fd=parent_fd)
        tmp_fd = fs.open_dir(tname, parent_fd)
        mine = os.fstat(tmp_fd)
        try:
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
        except _MultiTop:
            _remove_tmp(parent_fd, tname, mine)  # rare: not a one-session archive
            os.close(tmp_fd)
        except BaseException:
            _remove_tmp(parent_fd, tname, mine)
            os.close(tmp_fd)
            raise
    raise AssertionError("unreachable")


def _remove_tmp(parent_fd: int, tname: str, mine: os.stat_result) -> None:
    """Remove our temp dir — only if the name still is the dir we made."""
    try:
        if fs.same_file(fs.lstat_at(parent_fd, tname), mine):
            fs.rmtree_at(parent_fd, tname)
    except OSError:
        pass


# ------------------------------------------------------------------------ bulk restore


def restore_many(
    root: str | os.PathLike[str],
    *,
    pattern: str | None = None,
    dest_root: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    dry_run: bool = True,
    max_files: int | None = None,
    track_bytes: bool = False,
    workers: int | None = None,
    executor: Executor | None = None,
    batch_size: int = 32,
    on_result: Callable[[Result], None] | None = None,
    accept: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Bulk restore: archives directly under *root* -> ``dest_root/<name>/`` (default:
    beside the archive), on the same pool loop as the sweep, each through a temp dir and a
    rename. *accept(name)*, when given, must also be true for an archive to be considered.
    Returns the Summary (kind "restore")."""
    from .discover import iter_archives

    t0 = time.monotonic()
    root_p = check_root(root)
    if max_files is not None and max_files < 0:
        raise BadArgument(f"max_files must be >= 0 (0 = no cap), got {max_files}")
    dest_p = os.path.abspath(os.fspath(dest_root)) if dest_root is not None else None

    def matches(name: str) -> bool:
        if accept is not None and not accept(name):
            return False
        if pattern:
            return fnmatch.fnmatch(name, pattern)
        return split_archive_name(name) is not None

    s = new_summary("restore", root_p, dry_run, restored=0)
    jobs: list[tuple[str, str]] = []
    for path in iter_archives(root_p, matches):
        s["scanned"] += 1
        if max_files and s["candidates"] >= max_files:
            continue
        named = split_archive_name(os.path.basename(path))
        stem = named[0] if named else os.path.basename(path) + ".restored"
        dest = os.path.join(dest_p or os.path.dirname(path), stem)
        if os.path.lexists(dest):
            s["skipped"] += 1
            continue
        s["candidates"] += 1
        if track_bytes:
            s["bytes_in"] += os.path.getsize(path)
        jobs.append((path, dest))
    if not dry_run and jobs:
        if dest_p:
            os.makedirs(dest_p, exist_ok=True)
        n = workers or default_workers()
        size = max(1, min(batch_size, -(-len(jobs) // n)))
        batches = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        sent = 0

        def absorb(results: list[Result]) -> None:
            for r in results:
                if r.status == RESTORED:
                    s["restored"] += 1
                    if track_bytes:
                        s["bytes_out"] += r.bytes_out
                elif r.status == SKIPPED:
                    s["skipped"] += 1
                else:
                    record_failure(s, r.path, r.reason)
                if on_result is not None:
                    on_result(r)

        def lost(batch: list[tuple[str, str]], e: BaseException) -> list[Result]:
            # Each archive is kept (removed only after its restore is durable); a restore
            # cut short leaves only a hidden temp dir beside it.
            return [Result(path, FAILED, f"worker lost: {e!r}") for path, _ in batch]

        def count(batch: list[tuple[str, str]], k: int = 1) -> None:
            nonlocal sent
            sent += k * len(batch)

        out = run_batches(batches, restore_batch, (remove_archive,), absorb=absorb, lost=lost,
                          executor=executor, workers=n, before_submit=count,
                          unsent=lambda b: count(b, -1))
        if out.stopped:
            s["stopped"] = out.stopped
            s["skipped"] += len(jobs) - sent  # never sent: left as they are
        if out.signal is not None:
            s["signal"] = out.signal
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def restore_batch(jobs: list[tuple[str, str]], remove_archive: bool,
                  root: str | None = None) -> list[Result]:
    """Restore (archive, dest) pairs; with *root*, both are reached below it by dir fds."""
    out = []
    for archive, dest in jobs:
        try:
            stats: dict[str, int] = {}
            restore_one(archive, dest, remove_archive=remove_archive, stats=stats, follow=False,
                        root=root)
            out.append(Result(archive, RESTORED, "", 0, stats.get("bytes", 0)))
        except FileExistsError:
            out.append(Result(archive, SKIPPED, "destination exists"))
        except ArchiveError as e:
            out.append(Result(archive, FAILED, e.reason))
        except Exception as e:  # noqa: BLE001 - plain data back, never raise
            out.append(Result(archive, FAILED, f"{type(e).__name__}: {e}"))
    return out
