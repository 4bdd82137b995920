"""Restore ONE archive: extract into a fresh temp dir beside the destination, then rename.

Nothing is ever written outside that temp dir: members are checked by our own rules
(``read.unsafe_reason``) and by tarfile's ``data`` filter (PEP 706), sizes are capped so a
decompression bomb or an absurd header cannot fill the disk, and on any error the temp dir
is removed whole — no partial destination is left behind.
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
from .read import _drain, open_tar, unsafe_reason

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


def extract_into(archive: str, tmp: str, max_bytes: int, max_members: int) -> int:
    """Extract every member of *archive* below *tmp*; returns the content bytes written."""
    if not hasattr(tarfile, "data_filter"):
        raise ArchiveError(archive, "this Python lacks tarfile's data filter; use >= 3.10.12/3.11.4")
    total = 0
    count = 0

    def guard(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        nonlocal total, count
        why = unsafe_reason(member)
        if why:
            raise UnsafeArchive(archive, f"refused: {why}")
        try:
            member = tarfile.data_filter(member, dest)
        except tarfile.FilterError as e:
            raise UnsafeArchive(archive, f"refused: {e}") from None
        total += member.size
        count += 1
        if total > max_bytes:
            raise ArchiveTooLarge(
                archive, f"extracting would need more than {max_bytes} bytes; refused"
            )
        if count > max_members:
            raise ArchiveTooLarge(archive, f"more than {max_members} members; refused")
        return member

    with open_tar(archive) as (tf, reader):
        tf.errorlevel = 1
        try:
            tf.extractall(tmp, filter=guard)
            # tarfile stops at the end-of-archive blocks, before the gzip CRC32 / zstd
            # XXH64 / xz check: without reading on, a damaged .tar.gz restored silently
            # altered bytes (tests/test_reliability_hostile_archives.py).
            try:
                _drain(reader)
            except Exception as e:
                raise CorruptArchive(archive, f"corrupt archive: {e}") from None
        except ArchiveError:
            raise
        except OSError as e:
            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise commit.disk_error(archive, e, "cannot restore") from None
            if isinstance(e, tarfile.TarError) or "unexpected end" in str(e):
                raise CorruptArchive(archive, f"corrupt archive: {e}") from None
            raise ArchiveError(archive, f"cannot restore: {e.strerror or e}") from None
        except Exception as e:
            raise CorruptArchive(archive, f"corrupt archive: {e}") from None
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
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.restore-", dir=parent)
    try:
        total = extract_into(archive, tmp, limit, inodes)
        if stats is not None:
            stats["bytes"] = total
        children = os.listdir(tmp)
        only = os.path.join(tmp, children[0]) if len(children) == 1 else None
        if only and os.path.isdir(only) and not os.path.islink(only):
            commit.rename_noreplace(only, dest)
            os.rmdir(tmp)
        else:
            commit.rename_noreplace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if remove_archive:
        commit.make_tree_durable(dest)
        os.unlink(archive)
        commit.fsync_dir(os.path.dirname(archive))
    return Path(dest)
