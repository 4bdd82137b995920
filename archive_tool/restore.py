"""Restore ONE archive: extract into a fresh temp dir beside the destination, then rename.

Nothing is ever written outside that temp dir: members are checked by our own rules
(``read.unsafe_reason`` plus the checks in ``extract_into``, which enforce what tarfile's
``data`` filter of PEP 706 does), sizes are capped so a decompression bomb or an absurd
header cannot fill the disk, and on any error the temp dir is removed whole — no partial
destination is left behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from . import commit
from .errors import ArchiveError, ArchiveTooLarge, CorruptArchive, UnsafeArchive
from .names import split_archive_name
from .read import CHUNK, MemberRules, drain, member_path, open_tar

# Keep this much of the destination filesystem free when sizing the extraction limit.
_HEADROOM = 64 * 1024 * 1024


def default_dest(archive: str) -> str:
    base = os.path.basename(archive)
    named = split_archive_name(base)
    stem = named[0] if named else base + ".restored"
    return os.path.join(os.path.dirname(archive), stem)


def _limits(parent: str) -> tuple[int, int]:
    st = os.statvfs(parent)
    space = max(0, st.f_bavail * st.f_frsize - _HEADROOM)
    # Some filesystems (btrfs) report no inode limit: f_files == 0.
    inodes = st.f_favail if st.f_files else 1 << 62
    return space, inodes


class _MultiTop(Exception):
    """Internal: the archive has more than one top-level entry; extract unstripped."""


def _file_mode(mode: int) -> int:
    # What tarfile's "data" filter allows: no setuid/setgid/sticky, no group/other write,
    # owner can read and write, group/other exec only where the owner has it.
    mode = (mode & 0o755) | 0o600
    if not mode & 0o100:
        mode &= ~0o011
    return mode


def extract_into(archive: str, tmp: str, max_bytes: int, max_members: int, strip: bool) -> int:
    """Extract every member of *archive* below *tmp*; returns the content bytes written.

    With *strip*, the archive's single top-level directory becomes *tmp* itself (its
    members land directly in it), so the caller renames *tmp* into place — one rename
    instead of a rename, a listdir and an rmdir per restore. Raises _MultiTop when the
    archive turns out to have more than one top-level entry.

    Safety without tarfile's extraction machinery, whose ``data`` filter resolves the
    realpath of every member (~10 lstat calls each: most of a small restore's cost):
    *tmp* is new and empty, every member passes ``read.MemberRules``, we create every
    entry ourselves with O_EXCL / O_NOFOLLOW / mkdir, hard links only to regular files
    already extracted, and after extraction every created symlink must resolve inside
    *tmp*.
    """
    total = count = 0
    top: str | None = None
    root_attrs: tuple[int, int] | None = None
    links: set[str] = set()
    dirs: list[tuple[str, int, int]] = []
    made: set[str] = {""}
    # The member rules verify and show apply too: no absolute names or "..", no devices,
    # no path or hard-link target through a symlink the archive made, no link escaping
    # through earlier links. Entries are then created only below *tmp*.
    rules = MemberRules()
    with open_tar(archive) as (tf, reader):
        try:
            for m in tf:
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
                parts = rel.split("/")
                count += 1
                total += m.size if m.isreg() else 0
                if total > max_bytes:
                    raise ArchiveTooLarge(
                        archive, f"extracting would need more than {max_bytes} bytes; refused")
                if count > max_members:
                    raise ArchiveTooLarge(archive, f"more than {max_members} members; refused")
                parent = rel.rpartition("/")[0]
                if parent not in made:
                    os.makedirs(os.path.join(tmp, parent), exist_ok=True)
                    made.update("/".join(parts[:i]) for i in range(1, len(parts)))
                path = os.path.join(tmp, rel)
                mtime = int(m.mtime)
                if m.isdir():
                    if rel not in made:
                        os.mkdir(path, 0o700)
                        made.add(rel)
                    dirs.append((path, (m.mode & 0o755) | 0o700, mtime))
                elif m.isreg():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600)
                    try:
                        src = tf.extractfile(m)
                        while chunk := src.read(CHUNK):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view):]
                        os.fchmod(fd, _file_mode(m.mode))
                        os.utime(fd, (mtime, mtime))
                    finally:
                        os.close(fd)
                elif m.issym():
                    os.symlink(m.linkname, path)
                    links.add(rel)
                    os.utime(path, (mtime, mtime), follow_symlinks=False)
                elif m.islnk():
                    target = member_path(m.linkname)
                    if strip:
                        first, _, target = target.partition("/")
                        if first != top or not target:
                            raise UnsafeArchive(archive, f"refused: hard link {m.name!r} leaves the archive")
                    src_path = os.path.join(tmp, target)
                    if not os.path.isfile(src_path):
                        raise UnsafeArchive(archive, f"refused: hard link {m.name!r} to {m.linkname!r}")
                    os.link(src_path, path, follow_symlinks=False)
                else:
                    raise UnsafeArchive(archive, f"refused: unsupported member type {m.name!r}")
            # tarfile stops at the end-of-archive blocks, before the gzip CRC32 / zstd
            # XXH64 / xz check: without reading on, a damaged .tar.gz restored silently
            # altered bytes (tests/test_reliability_hostile_archives.py).
            drain(reader)
        except (ArchiveError, _MultiTop):
            raise
        except FileExistsError as e:
            raise UnsafeArchive(archive, f"refused: duplicate member {e.filename!r}") from None
        except OSError as e:
            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise commit.disk_error(archive, e, "cannot restore") from None
            if isinstance(e, tarfile.TarError) or "unexpected end" in str(e):
                raise CorruptArchive(archive, f"corrupt archive: {e}") from None
            raise ArchiveError(archive, f"cannot restore: {e.strerror or e}") from None
        except Exception as e:
            raise CorruptArchive(archive, f"corrupt archive: {e}") from None
    real_tmp = os.path.realpath(tmp)
    for rel in links:
        real = os.path.realpath(os.path.join(tmp, rel))
        if real != real_tmp and not real.startswith(real_tmp + os.sep):
            raise UnsafeArchive(archive, f"refused: symlink {rel!r} resolves outside the restore")
    for path, mode, mtime in reversed(dirs):  # children first: setting mtime is final
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    if root_attrs is not None:
        os.chmod(tmp, (root_attrs[0] & 0o755) | 0o700)
        os.utime(tmp, (root_attrs[1], root_attrs[1]))
    return total


def restore_one(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    remove_archive: bool = False,
    *,
    max_bytes: int | None = None,
    stats: dict[str, int] | None = None,
) -> Path:
    """Extract *archive_path* to *dest_dir* (default: the archive path minus its suffix).

    An archive with one top-level directory (what we and GNU tar write for a session)
    restores that directory's contents as *dest_dir*; any other layout restores all its
    members below *dest_dir*. Never overwrites (FileExistsError). With *remove_archive*,
    the restored tree is made durable before the archive is unlinked.
    """
    archive = os.path.abspath(os.fspath(archive_path))
    if not os.path.isfile(archive):
        raise ArchiveError(archive, "no such archive" if not os.path.exists(archive) else "not a file")
    dest = os.path.abspath(os.fspath(dest_dir)) if dest_dir is not None else default_dest(archive)
    if os.path.lexists(dest):
        raise FileExistsError(17, "destination already exists; refusing to overwrite", dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    space, inodes = _limits(parent)
    limit = space if max_bytes is None else min(max_bytes, space)
    total = 0
    for strip in (True, False):
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.restore-", dir=parent)
        try:
            total = extract_into(archive, tmp, limit, inodes, strip)
            commit.rename_noreplace(tmp, dest)
            break
        except _MultiTop:
            shutil.rmtree(tmp, ignore_errors=True)  # rare: not a one-session archive
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if stats is not None:
        stats["bytes"] = total
    if remove_archive:
        commit.make_tree_durable(dest)
        os.unlink(archive)
        commit.fsync_dir(os.path.dirname(archive))
    return Path(dest)
